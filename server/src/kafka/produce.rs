//! Produce and InitProducerId: a producer's record batches become the engine's messages of
//! the topic, in the partition the client chose; an answer with `acks` 1 or all is sent only
//! once every record of the request is durable (the engine acknowledges nothing sooner, so
//! both wait for the group commit; `acks=0` is answered with nothing, as Kafka does).
//! An idempotent producer's retried batch is stored once and answers the first offsets. A
//! batch's records lie at consecutive offsets (`publish_all`), so the base offset answered
//! places every record of it, as Kafka's clients take it.

use kafka_protocol::messages::produce_response::{PartitionProduceResponse, TopicProduceResponse};
use kafka_protocol::messages::{
    InitProducerIdRequest, InitProducerIdResponse, ProduceRequest, ProduceResponse, ProducerId, RequestHeader,
};
use kafka_protocol::ResponseError;
use tradeshard_engine::TRADES_TOPIC;

use super::records::{decode_produced, ProduceRefusal};
use super::{error_code, partition_of, TOPICS_LISTED_MAX};
use crate::Shared;

pub(crate) async fn produce(shared: &Shared, _header: &RequestHeader, request: ProduceRequest) -> ProduceResponse {
    let mut responses = Vec::with_capacity(request.topic_data.len());
    if request.transactional_id.is_some() {
        // Refused whole: Kafka transactions are not served (the engine's own half messages are).
        for topic in request.topic_data {
            let partitions = topic
                .partition_data
                .iter()
                .map(|p| partition_error(p.index, ResponseError::TransactionalIdAuthorizationFailed))
                .collect();
            responses.push(TopicProduceResponse::default().with_name(topic.name).with_partition_responses(partitions));
        }
        return ProduceResponse::default().with_responses(responses);
    }
    // Every partition's batch is sent before any answer is awaited, so that batches for
    // partitions of different shards are made durable side by side, not one after another.
    let mut names = Vec::with_capacity(request.topic_data.len());
    let mut plan = Vec::new();
    for (topic_index, topic) in request.topic_data.into_iter().enumerate() {
        let name = topic.name.0.to_string();
        for data in topic.partition_data {
            plan.push((topic_index, name.clone(), data.index, data.records));
        }
        names.push(topic.name);
    }
    let writes = plan
        .iter()
        .map(|(_, name, index, records)| {
            Box::pin(produce_partition(shared, name, *index, records.clone()))
                as super::Pending<'_, PartitionProduceResponse>
        })
        .collect();
    let mut partitions: Vec<Vec<PartitionProduceResponse>> = names.iter().map(|_| Vec::new()).collect();
    for ((topic_index, ..), answer) in plan.iter().zip(super::join_all(writes).await) {
        partitions[*topic_index].push(answer);
    }
    for (name, partitions) in names.into_iter().zip(partitions) {
        responses.push(TopicProduceResponse::default().with_name(name).with_partition_responses(partitions));
    }
    ProduceResponse::default().with_responses(responses)
}

fn partition_error(index: i32, error: ResponseError) -> PartitionProduceResponse {
    PartitionProduceResponse::default().with_index(index).with_error_code(error.code()).with_base_offset(-1)
}

async fn produce_partition(
    shared: &Shared,
    topic: &str,
    index: i32,
    records: Option<bytes::Bytes>,
) -> PartitionProduceResponse {
    if topic == TRADES_TOPIC || super::metadata::topic_error(topic).is_some() {
        // Trade events come from trades, never from a producer.
        return partition_error(index, ResponseError::InvalidTopicException);
    }
    let Some(partition) = partition_of(shared, index) else {
        return partition_error(index, ResponseError::UnknownTopicOrPartition);
    };
    let messages = match decode_produced(records.unwrap_or_default(), topic, partition) {
        Ok(messages) => messages,
        Err(ProduceRefusal::Corrupt) => return partition_error(index, ResponseError::CorruptMessage),
        Err(ProduceRefusal::Compressed) => return partition_error(index, ResponseError::UnsupportedCompressionType),
        Err(ProduceRefusal::Transactional) => return partition_error(index, ResponseError::InvalidRecord),
    };
    if messages.is_empty() {
        return partition_error(index, ResponseError::InvalidRecord);
    }
    let published = match shared.handle.publish_all(&messages).await {
        Ok(published) => published,
        Err(error) => {
            return PartitionProduceResponse::default()
                .with_index(index)
                .with_error_code(error_code(&error))
                .with_base_offset(-1)
        }
    };
    let mut base_offset = None;
    for answer in published {
        match answer {
            Ok(published) => {
                base_offset.get_or_insert(published.id.offset as i64);
            }
            // A record refused after others were stored: the client retries the batch, and an
            // idempotent producer's stored records answer as repeats. A repeat older than the
            // producer's window (128 numbers) is refused too: the engine cannot tell it was
            // stored (it does not require a producer's numbers without gaps), so it is never
            // answered as a success.
            Err(error) => {
                return PartitionProduceResponse::default()
                    .with_index(index)
                    .with_error_code(error_code(&error))
                    .with_base_offset(-1)
            }
        }
    }
    let mut topics = shared.kafka.topics.lock().expect("topics lock");
    if topics.len() < TOPICS_LISTED_MAX && !topics.contains(topic) {
        topics.insert(topic.to_string());
    }
    PartitionProduceResponse::default()
        .with_index(index)
        .with_base_offset(base_offset.unwrap_or(-1))
        .with_log_append_time_ms(-1)
}

/// A new producer id for an idempotent producer (epoch 0); transactional ids are refused.
pub(crate) fn init_producer_id(shared: &Shared, request: InitProducerIdRequest) -> InitProducerIdResponse {
    if request.transactional_id.is_some() {
        let code = ResponseError::TransactionalIdAuthorizationFailed.code();
        return InitProducerIdResponse::default()
            .with_error_code(code)
            .with_producer_id(ProducerId(-1))
            .with_producer_epoch(-1);
    }
    // Kafka's producer ids are non-negative.
    let id = (shared.handle.producer().id() >> 1) as i64;
    InitProducerIdResponse::default().with_producer_id(ProducerId(id)).with_producer_epoch(0)
}
