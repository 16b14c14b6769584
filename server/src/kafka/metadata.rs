//! Metadata and FindCoordinator: one broker (node 0) that leads every partition and
//! coordinates every group.

use kafka_protocol::messages::find_coordinator_response::Coordinator;
use kafka_protocol::messages::metadata_response::{
    MetadataResponseBroker, MetadataResponsePartition, MetadataResponseTopic,
};
use kafka_protocol::messages::{
    BrokerId, FindCoordinatorRequest, FindCoordinatorResponse, MetadataRequest, MetadataResponse, RequestHeader,
    TopicName,
};
use kafka_protocol::protocol::StrBytes;
use kafka_protocol::ResponseError;
use tradeshard_engine::TRADES_TOPIC;

use crate::Shared;

const NODE: BrokerId = BrokerId(0);

fn advertised(shared: &Shared) -> (String, u16) {
    shared.kafka.advertised.lock().expect("advertised lock").clone()
}

/// Whether `topic` names a topic: `trades`, or any valid application topic name (a topic is
/// a filter over the partitions' logs, so every valid name has every partition).
pub(crate) fn topic_error(topic: &str) -> Option<ResponseError> {
    if topic == TRADES_TOPIC {
        return None;
    }
    tradeshard_engine::validate_topic(topic).err().map(|_| ResponseError::InvalidTopicException)
}

pub(crate) fn metadata(shared: &Shared, _header: &RequestHeader, request: MetadataRequest) -> MetadataResponse {
    let (host, port) = advertised(shared);
    let broker = MetadataResponseBroker::default()
        .with_node_id(NODE)
        .with_host(StrBytes::from_string(host))
        .with_port(port as i32);
    let names: Vec<String> = match request.topics {
        // Each name once, and at most as many as a listing of all topics holds, so that a
        // small request cannot ask for an answer of hundreds of megabytes.
        Some(topics) => {
            let unique: std::collections::BTreeSet<String> = topics
                .into_iter()
                .filter_map(|t| t.name.map(|n| n.0.to_string()))
                .take(super::TOPICS_LISTED_MAX)
                .collect();
            unique.into_iter().collect()
        }
        None => {
            let mut all = vec![TRADES_TOPIC.to_string()];
            all.extend(shared.kafka.topics.lock().expect("topics lock").iter().cloned());
            all
        }
    };
    let partitions = shared.handle.routing().physical_shards;
    let topics = names
        .into_iter()
        .map(|name| {
            let topic =
                MetadataResponseTopic::default().with_name(Some(TopicName(StrBytes::from_string(name.clone()))));
            match topic_error(&name) {
                Some(error) => topic.with_error_code(error.code()),
                None => topic.with_partitions(
                    (0..partitions as i32)
                        .map(|index| {
                            MetadataResponsePartition::default()
                                .with_partition_index(index)
                                .with_leader_id(NODE)
                                .with_replica_nodes(vec![NODE])
                                .with_isr_nodes(vec![NODE])
                        })
                        .collect(),
                ),
            }
        })
        .collect();
    MetadataResponse::default()
        .with_brokers(vec![broker])
        .with_cluster_id(Some(StrBytes::from_static_str("tradeshard")))
        .with_controller_id(NODE)
        .with_topics(topics)
}

pub(crate) fn find_coordinator(
    shared: &Shared,
    header: &RequestHeader,
    request: FindCoordinatorRequest,
) -> FindCoordinatorResponse {
    let (host, port) = advertised(shared);
    // Key type 0 is a group; 1 a transactional id, which this server does not coordinate.
    if request.key_type != 0 {
        let code = ResponseError::CoordinatorNotAvailable.code();
        return FindCoordinatorResponse::default().with_error_code(code).with_node_id(BrokerId(-1));
    }
    let host = StrBytes::from_string(host);
    let answer = FindCoordinatorResponse::default().with_node_id(NODE).with_host(host.clone()).with_port(port as i32);
    match header.request_api_version {
        // From version 4 the keys come and go as a list (this server offers up to 3).
        4.. => answer.with_coordinators(vec![Coordinator::default()
            .with_key(request.key)
            .with_node_id(NODE)
            .with_host(host)
            .with_port(port as i32)]),
        _ => answer,
    }
}
