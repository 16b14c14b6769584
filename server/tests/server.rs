//! `Server` against raw sockets: the Kafka protocol's answers and refusals on the wire, the
//! limits and a clean stop. (The stats and metrics faces are in `monitoring.rs`; real Kafka
//! clients are driven by tests/kafka/e2e.py.)

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::Duration;

use bytes::{BufMut, Bytes, BytesMut};
use kafka_protocol::messages::fetch_request::{FetchPartition, FetchTopic};
use kafka_protocol::messages::produce_request::{PartitionProduceData, TopicProduceData};
use kafka_protocol::messages::*;
use kafka_protocol::protocol::{Decodable, Encodable, HeaderVersion, Request, StrBytes};
use kafka_protocol::records::{
    Compression, Record, RecordBatchDecoder, RecordBatchEncoder, RecordEncodeOptions, TimestampType,
};
use kafka_protocol::ResponseError;
use tradeshard_engine::{Engine, NewTrade, Options};
use tradeshard_server::{Server, ServerOptions};

mod common;

use common::{http, loopback, Running};

/// Sends `request` and reads its answer's body.
fn call<R: Request>(stream: &mut TcpStream, version: i16, request: &R) -> R::Response {
    let mut out = BytesMut::new();
    out.put_i32(0);
    let header = RequestHeader::default()
        .with_request_api_key(R::KEY)
        .with_request_api_version(version)
        .with_correlation_id(42)
        .with_client_id(Some(StrBytes::from_static_str("test")));
    header.encode(&mut out, R::header_version(version)).unwrap();
    request.encode(&mut out, version).unwrap();
    let len = (out.len() - 4) as i32;
    out[..4].copy_from_slice(&len.to_be_bytes());
    stream.write_all(&out).unwrap();
    let mut body = read_frame(stream).expect("an answer");
    let header = ResponseHeader::decode(&mut body, R::Response::header_version(version)).unwrap();
    assert_eq!(header.correlation_id, 42);
    R::Response::decode(&mut body, version).unwrap()
}

fn read_frame(stream: &mut TcpStream) -> Option<Bytes> {
    let mut size = [0u8; 4];
    stream.read_exact(&mut size).ok()?;
    let mut body = vec![0u8; i32::from_be_bytes(size) as usize];
    stream.read_exact(&mut body).ok()?;
    Some(Bytes::from(body))
}

/// Whether the server closed the connection (rather than answering or waiting).
fn closed(stream: &mut TcpStream) -> bool {
    let mut byte = [0u8; 1];
    matches!(stream.read(&mut byte), Ok(0) | Err(_))
}

fn raw(stream: &mut TcpStream, bytes: &[u8]) {
    stream.write_all(bytes).unwrap();
}

#[test]
fn malformed_oversized_and_unknown_requests_close_their_connection_and_nothing_else() {
    let running = Running::start(ServerOptions { request_bytes_max: 1024, ..ServerOptions::default() });
    let mut negative = running.kafka();
    raw(&mut negative, &(-1i32).to_be_bytes());
    assert!(closed(&mut negative));
    let mut oversized = running.kafka();
    raw(&mut oversized, &2048i32.to_be_bytes());
    assert!(closed(&mut oversized), "a request over request_bytes_max");
    let mut unknown = running.kafka();
    raw(&mut unknown, &[0, 0, 0, 10, 0x7f, 0x7f, 0, 0, 0, 0, 0, 1, 0xff, 0xff]);
    assert!(closed(&mut unknown), "an unknown API key");
    let mut garbage = running.kafka();
    raw(&mut garbage, &[0, 0, 0, 12, 0, 3, 0, 9, 0, 0, 0, 1, 0x7f, 0x7f, 0xff, 0xff]);
    assert!(closed(&mut garbage), "a Metadata request that does not decode");
    let mut truncated = running.kafka();
    raw(&mut truncated, &[0, 0, 0, 100, 0, 18, 0, 3]);
    truncated.shutdown(std::net::Shutdown::Write).unwrap();
    assert!(closed(&mut truncated), "a frame cut short");
    // ApiVersions newer than the server's is answered at version 0 with the error and the
    // versions there are.
    let mut newer = running.kafka();
    raw(&mut newer, &[0, 0, 0, 10, 0, 18, 0, 99, 0, 0, 0, 5, 0xff, 0xff]);
    let mut body = read_frame(&mut newer).unwrap();
    assert_eq!(ResponseHeader::decode(&mut body, 0).unwrap().correlation_id, 5);
    let answer = ApiVersionsResponse::decode(&mut body, 0).unwrap();
    assert_eq!(answer.error_code, ResponseError::UnsupportedVersion.code());
    assert!(answer.api_keys.iter().any(|k| k.api_key == ApiKey::Fetch as i16));
    // The server goes on.
    let answer = call(&mut running.kafka(), 3, &ApiVersionsRequest::default());
    assert_eq!(answer.error_code, 0);
}

fn record(key: &str, value: &str, sequence: i32) -> Record {
    Record {
        transactional: false,
        control: false,
        delete_horizon: false,
        partition_leader_epoch: 0,
        producer_id: 7,
        producer_epoch: 0,
        timestamp_type: TimestampType::Creation,
        offset: sequence as i64,
        sequence,
        timestamp: 0,
        key: Some(Bytes::copy_from_slice(key.as_bytes())),
        value: Some(Bytes::copy_from_slice(value.as_bytes())),
        headers: Default::default(),
    }
}

fn produce(topic: &str, partition: i32, records: &[Record]) -> ProduceRequest {
    let mut batch = BytesMut::new();
    let options = RecordEncodeOptions { version: 2, compression: Compression::None };
    RecordBatchEncoder::encode(&mut batch, records.iter(), &options).unwrap();
    let data = PartitionProduceData::default().with_index(partition).with_records(Some(batch.freeze()));
    let topic = TopicProduceData::default()
        .with_name(TopicName(StrBytes::from_string(topic.into())))
        .with_partition_data(vec![data]);
    ProduceRequest::default().with_acks(-1).with_timeout_ms(5000).with_topic_data(vec![topic])
}

fn fetch(topic: &str, partition: i32, offset: i64) -> FetchRequest {
    let asked =
        FetchPartition::default().with_partition(partition).with_fetch_offset(offset).with_partition_max_bytes(1 << 20);
    let topic =
        FetchTopic::default().with_topic(TopicName(StrBytes::from_string(topic.into()))).with_partitions(vec![asked]);
    FetchRequest::default().with_max_wait_ms(0).with_min_bytes(0).with_max_bytes(1 << 20).with_topics(vec![topic])
}

/// A Fetch naming one partition many times with tiny limits: each read answers at least one
/// message, so each is charged a floor against the request's budget and the partitions past it
/// are answered empty, unread; the answer stays near the budget, not a message per entry.
#[test]
fn a_fetch_of_many_partitions_with_tiny_limits_stays_within_its_budget() {
    let running = Running::start(ServerOptions::default());
    let mut stream = running.kafka();
    let payload = "p".repeat(30_000);
    let answer = call(&mut stream, 9, &produce("wide", 0, &[record("k", &payload, -1)]));
    assert_eq!(answer.responses[0].partition_responses[0].error_code, 0);
    let asked: Vec<FetchPartition> = (0..2_000)
        .map(|_| FetchPartition::default().with_partition(0).with_fetch_offset(0).with_partition_max_bytes(1))
        .collect();
    let topic =
        FetchTopic::default().with_topic(TopicName(StrBytes::from_string("wide".into()))).with_partitions(asked);
    let request =
        FetchRequest::default().with_max_wait_ms(0).with_min_bytes(0).with_max_bytes(1 << 20).with_topics(vec![topic]);
    let answer = call(&mut stream, 4, &request);
    let partitions = &answer.responses[0].partitions;
    assert_eq!(partitions.len(), 2_000, "every entry answered");
    assert!(partitions.iter().all(|p| p.error_code == 0), "none refused");
    let read = partitions.iter().filter(|p| p.records.as_ref().is_some_and(|r| !r.is_empty())).count();
    assert!((1..=16).contains(&read), "{read} entries read: the budget is 1 MiB, at least 64 KiB a read");
}

/// A client that sends requests and never reads their answers: once its socket's buffers are
/// full the server's write waits, and a stop still ends the connection at once.
#[test]
fn a_client_that_never_reads_does_not_hold_a_stop() {
    let mut running = Running::start(ServerOptions::default());
    let mut stats = TcpStream::connect(running.server().stats_addr().unwrap()).unwrap();
    stats.set_write_timeout(Some(Duration::from_secs(2))).unwrap();
    // Far more answers than the socket buffers hold; the writes stop once the server stops
    // reading (its own write waits), or when the test has sent enough.
    for _ in 0..20_000 {
        if stats.write_all(b"stats\n").is_err() {
            break;
        }
    }
    std::thread::sleep(Duration::from_millis(300));
    let started = std::time::Instant::now();
    assert!(running.server.take().unwrap().stop(), "every connection ended in time");
    assert!(started.elapsed() < Duration::from_secs(10), "a stop waits for no reader: {:?}", started.elapsed());
    running.server = Some(
        Server::start(
            running.engine.as_ref().unwrap().handle(),
            ServerOptions { kafka: loopback(), stats: None, metrics: None, ..ServerOptions::default() },
        )
        .unwrap(),
    );
}

/// A JoinGroup whose protocols carry more than 64 KiB is refused: a member's protocols are
/// kept while it is a member.
#[test]
fn a_join_with_oversized_protocol_metadata_is_refused() {
    use kafka_protocol::messages::join_group_request::JoinGroupRequestProtocol;
    let running = Running::start(ServerOptions::default());
    let mut stream = running.kafka();
    let join = |metadata: usize| {
        let protocol = JoinGroupRequestProtocol::default()
            .with_name(StrBytes::from_static_str("range"))
            .with_metadata(Bytes::from(vec![0u8; metadata]));
        JoinGroupRequest::default()
            .with_group_id(GroupId(StrBytes::from_static_str("wide")))
            .with_session_timeout_ms(10_000)
            .with_rebalance_timeout_ms(10_000)
            .with_member_id(StrBytes::from_static_str(""))
            .with_protocol_type(StrBytes::from_static_str("consumer"))
            .with_protocols(vec![protocol])
    };
    let refused = call(&mut stream, 5, &join(100_000));
    assert_eq!(refused.error_code, ResponseError::InvalidRequest.code());
    let joined = call(&mut stream, 5, &join(100));
    assert_eq!(joined.error_code, 0, "a member with its metadata within bounds joins");
}

#[test]
fn produced_messages_are_stored_once_and_fetched_with_their_errors_where_they_belong() {
    let running = Running::start(ServerOptions::default());
    let mut stream = running.kafka();
    let records = [record("k1", "first", 0), record("k1", "second", 1)];
    let answer = call(&mut stream, 9, &produce("payments", 1, &records));
    let partition = &answer.responses[0].partition_responses[0];
    assert_eq!(partition.error_code, 0);
    let base = partition.base_offset;
    // The same batch again (an idempotent producer's retry): the first answer, nothing new.
    let again = call(&mut stream, 9, &produce("payments", 1, &records));
    assert_eq!(again.responses[0].partition_responses[0].base_offset, base);
    // A trade in the same partition's log, between the messages and the end.
    let handle = running.engine.as_ref().unwrap().handle();
    let buyer = (1..).find(|u| handle.routing().physical_of_user(*u) == 1).unwrap();
    handle
        .create_trade_blocking(NewTrade {
            buyer_id: buyer,
            merchant_id: 9,
            merchant_order_no: "o-1".into(),
            amount: 100,
            currency: "CNY".into(),
            memo: String::new(),
        })
        .unwrap();
    let answer = call(&mut stream, 12, &fetch("payments", 1, 0));
    let data = &answer.responses[0].partitions[0];
    assert_eq!(data.error_code, 0);
    let mut bytes = data.records.clone().unwrap();
    let sets = RecordBatchDecoder::decode_all(&mut bytes).unwrap();
    let all: Vec<&Record> = sets.iter().flat_map(|s| &s.records).collect();
    let messages: Vec<&Record> = all.iter().copied().filter(|r| !r.control).collect();
    let values: Vec<&[u8]> = messages.iter().map(|r| r.value.as_deref().unwrap()).collect();
    assert_eq!(values, vec![&b"first"[..], &b"second"[..]], "stored once, in order");
    let last = all.last().unwrap();
    assert!(last.control, "the trade after them is passed over with a marker");
    assert_eq!(last.offset + 1, data.high_watermark, "and the next fetch starts at the end");
    // The trade, as the topic `trades` carries it.
    let answer = call(&mut stream, 12, &fetch("trades", 1, 0));
    let mut bytes = answer.responses[0].partitions[0].records.clone().unwrap();
    let trade = RecordBatchDecoder::decode_all(&mut bytes).unwrap().remove(0).records.remove(0);
    assert_eq!(trade.key.as_deref(), Some(buyer.to_string().as_bytes()));
    let json = String::from_utf8(trade.value.unwrap().to_vec()).unwrap();
    assert!(json.starts_with("{\"kind\":\"created\"") && json.contains("\"merchant_order_no\":\"o-1\""), "{json}");
    // Errors where they belong.
    let code = |answer: FetchResponse| answer.responses[0].partitions[0].error_code;
    assert_eq!(code(call(&mut stream, 12, &fetch("payments", 9, 0))), ResponseError::UnknownTopicOrPartition.code());
    assert_eq!(code(call(&mut stream, 12, &fetch("payments", 1, 1 << 40))), ResponseError::OffsetOutOfRange.code());
    assert_eq!(code(call(&mut stream, 12, &fetch("bad topic", 1, 0))), ResponseError::UnknownTopicOrPartition.code());
    let refused = call(&mut stream, 9, &produce("trades", 0, &records));
    assert_eq!(refused.responses[0].partition_responses[0].error_code, ResponseError::InvalidTopicException.code());
    let refused = call(&mut stream, 9, &produce("payments", 5, &records));
    assert_eq!(refused.responses[0].partition_responses[0].error_code, ResponseError::UnknownTopicOrPartition.code());
}

#[test]
fn connections_past_the_limit_are_closed_as_they_come() {
    let running = Running::start(ServerOptions { connections_max: 2, ..ServerOptions::default() });
    // Idle monitoring connections are counted apart (each of those listeners holds at most
    // `connections_max` too here): they take no room from Kafka clients.
    let metrics = running.server().metrics_addr().unwrap();
    let idle_monitors = [TcpStream::connect(metrics).unwrap(), TcpStream::connect(metrics).unwrap()];
    let mut third_monitor = TcpStream::connect(metrics).unwrap();
    assert!(closed(&mut third_monitor), "the metrics listener's own limit");
    let mut held = [running.kafka(), running.kafka()];
    for stream in &mut held {
        assert_eq!(call(stream, 3, &ApiVersionsRequest::default()).error_code, 0);
    }
    let mut third = running.kafka();
    assert!(closed(&mut third));
    drop(held);
    for monitor in idle_monitors {
        let page = http(monitor, b"GET /metrics HTTP/1.1\r\n\r\n");
        assert!(page.starts_with("HTTP/1.1 200 OK\r\n"), "{page}");
    }
    // Room again once they are gone (the server notices a closed peer at its next read).
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        let mut stream = running.kafka();
        raw(&mut stream, &[0, 0, 0, 10, 0, 18, 0, 2, 0, 0, 0, 42, 0xff, 0xff]);
        if read_frame(&mut stream).is_some() {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "the limit never made room again");
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn a_stop_ends_idle_connections_and_leaves_what_was_acknowledged() {
    let mut running = Running::start(ServerOptions::default());
    let mut idle = running.kafka();
    let mut producer = running.kafka();
    let answer = call(&mut producer, 9, &produce("audit", 0, &[record("k", "kept", 0)]));
    assert_eq!(answer.responses[0].partition_responses[0].error_code, 0);
    let started = std::time::Instant::now();
    assert!(running.server.take().unwrap().stop(), "connections still open ended");
    assert!(started.elapsed() < Duration::from_secs(5), "a stop waits for no client");
    assert!(closed(&mut idle) && closed(&mut producer));
    let handle = running.engine.as_ref().unwrap().handle();
    let mut consumer = handle.consumer(tradeshard_engine::ConsumerConfig::topics("after-stop", &["audit"])).unwrap();
    let messages = consumer.poll_messages_blocking(10, Duration::from_secs(5)).unwrap();
    assert_eq!(messages.iter().map(|m| m.payload.as_slice()).collect::<Vec<_>>(), vec![&b"kept"[..]]);
    running.server = Some(
        Server::start(
            handle,
            ServerOptions { kafka: loopback(), stats: None, metrics: None, ..ServerOptions::default() },
        )
        .unwrap(),
    );
}

fn produce_sequenced(topic: &str, partition: i32, count: i32) -> ProduceRequest {
    let records: Vec<Record> = (0..count).map(|i| record("k", &format!("{topic}-{i}"), i)).collect();
    produce(topic, partition, &records)
}

fn values_of(stream: &mut TcpStream, topic: &str, partition: i32) -> Vec<String> {
    let answer = call(stream, 12, &fetch(topic, partition, 0));
    let mut bytes = answer.responses[0].partitions[0].records.clone().unwrap();
    let sets = RecordBatchDecoder::decode_all(&mut bytes).unwrap();
    sets.iter()
        .flat_map(|s| &s.records)
        .filter(|r| !r.control)
        .map(|r| String::from_utf8(r.value.as_deref().unwrap().to_vec()).unwrap())
        .collect()
}

#[test]
fn an_idempotent_producer_numbers_each_topic_apart_and_a_retried_large_batch_is_never_stored_twice() {
    let running = Running::start(ServerOptions::default());
    let mut stream = running.kafka();
    // The same producer, epoch and sequence numbers in two topics of one partition: Kafka
    // numbers them per topic-partition, so both are new.
    for topic in ["orders", "refunds"] {
        let answer = call(&mut stream, 9, &produce_sequenced(topic, 0, 3));
        assert_eq!(answer.responses[0].partition_responses[0].error_code, 0, "{topic}");
    }
    assert_eq!(values_of(&mut stream, "orders", 0), ["orders-0", "orders-1", "orders-2"]);
    assert_eq!(values_of(&mut stream, "refunds", 0), ["refunds-0", "refunds-1", "refunds-2"]);
    // A batch larger than the engine's window of remembered sequence numbers, sent again:
    // its first records are older than the window, which the engine cannot tell stored, so
    // the retry is refused (never answered as a success it cannot vouch for), and nothing is
    // stored twice.
    let first = call(&mut stream, 9, &produce_sequenced("ledger", 1, 300));
    assert_eq!(first.responses[0].partition_responses[0].error_code, 0);
    let again = call(&mut stream, 9, &produce_sequenced("ledger", 1, 300));
    let code = again.responses[0].partition_responses[0].error_code;
    assert!(code != 0 && code != ResponseError::DuplicateSequenceNumber.code(), "answered {code}");
    assert_eq!(values_of(&mut stream, "ledger", 1).len(), 300, "stored once");
}

/// Kafka numbers a producer's records from 0 and wraps to 0 after `i32::MAX`: the records
/// after the wrap are stored, also in a batch that crosses it, and retries of the batches are
/// stored once.
#[test]
fn an_idempotent_producer_goes_on_past_the_wrap_of_its_sequence_numbers() {
    let running = Running::start(ServerOptions::default());
    let mut stream = running.kafka();
    // One batch: its records numbered from its first one's number by their offsets in it, as
    // clients send them (the codec puts records apart in two batches otherwise).
    let batch = |first_offset: i64, first: i32, count: i32| -> Vec<Record> {
        let records = (0..count).map(|i| (first.wrapping_add(i), first_offset + i64::from(i)));
        let kafka_number = |sequence: i32| sequence as u32 & i32::MAX as u32;
        records
            .map(|(sequence, offset)| Record {
                offset,
                ..record("k", &format!("v{}", kafka_number(sequence)), sequence)
            })
            .collect()
    };
    let (across, after) = (batch(0, i32::MAX - 1, 3), batch(3, 1, 2));
    for records in [&across, &after, &after, &across] {
        let answer = call(&mut stream, 9, &produce("wrapping", 0, records));
        let code = answer.responses[0].partition_responses[0].error_code;
        assert!(code == 0 || code == ResponseError::DuplicateSequenceNumber.code(), "answered {code}");
    }
    let stored = values_of(&mut stream, "wrapping", 0);
    assert_eq!(stored, ["v2147483646", "v2147483647", "v0", "v1", "v2"], "each stored once, in order");
}

fn list_offsets(topic: &str, partition: i32, timestamp: i64) -> ListOffsetsRequest {
    use kafka_protocol::messages::list_offsets_request::{ListOffsetsPartition, ListOffsetsTopic};
    let asked = ListOffsetsPartition::default().with_partition_index(partition).with_timestamp(timestamp);
    let topic = ListOffsetsTopic::default()
        .with_name(TopicName(StrBytes::from_string(topic.into())))
        .with_partitions(vec![asked]);
    ListOffsetsRequest::default().with_replica_id(BrokerId(-1)).with_topics(vec![topic])
}

#[test]
fn list_offsets_answers_the_earliest_the_latest_and_the_first_at_or_after_a_time() {
    let running = Running::start(ServerOptions::default());
    let mut stream = running.kafka();
    let mut offsets = Vec::new();
    for i in 0..3 {
        let answer = call(&mut stream, 9, &produce("clock", 0, &[record("k", &format!("m{i}"), -1)]));
        offsets.push(answer.responses[0].partition_responses[0].base_offset);
        std::thread::sleep(Duration::from_millis(20));
    }
    let offset_at = |stream: &mut TcpStream, timestamp: i64| {
        let answer = call(stream, 7, &list_offsets("clock", 0, timestamp));
        let partition = &answer.topics[0].partitions[0];
        assert_eq!(partition.error_code, 0);
        (partition.offset, partition.timestamp)
    };
    assert_eq!(offset_at(&mut stream, -2).0, 0, "the earliest: the log's first offset");
    let (latest, _) = offset_at(&mut stream, -1);
    assert_eq!(latest, offsets[2] + 1, "the latest: the durable end");
    // Each message's own time finds it; a time before all finds the first, after all the end.
    let times: Vec<i64> = values_with_times(&mut stream, "clock");
    for (i, time) in times.iter().enumerate() {
        // 20 ms apart, each message has a millisecond of its own.
        assert_eq!(offset_at(&mut stream, *time), (offsets[i], *time), "message {i}");
    }
    assert_eq!(offset_at(&mut stream, 0).0, offsets[0]);
    assert_eq!(offset_at(&mut stream, times[2] + 60_000).0, latest);
    let unknown = call(&mut stream, 7, &list_offsets("clock", 7, -1));
    assert_eq!(unknown.topics[0].partitions[0].error_code, ResponseError::UnknownTopicOrPartition.code());
}

/// The write time of each record of `topic` in partition 0.
fn values_with_times(stream: &mut TcpStream, topic: &str) -> Vec<i64> {
    let answer = call(stream, 12, &fetch(topic, 0, 0));
    let mut bytes = answer.responses[0].partitions[0].records.clone().unwrap();
    let sets = RecordBatchDecoder::decode_all(&mut bytes).unwrap();
    sets.iter().flat_map(|s| &s.records).filter(|r| !r.control).map(|r| r.timestamp).collect()
}

fn offset_commit(group: &str, commits: &[(&str, i32, i64)]) -> OffsetCommitRequest {
    use kafka_protocol::messages::offset_commit_request::{OffsetCommitRequestPartition, OffsetCommitRequestTopic};
    let topics = commits
        .iter()
        .map(|(topic, partition, offset)| {
            let asked =
                OffsetCommitRequestPartition::default().with_partition_index(*partition).with_committed_offset(*offset);
            OffsetCommitRequestTopic::default()
                .with_name(TopicName(StrBytes::from_string(topic.to_string())))
                .with_partitions(vec![asked])
        })
        .collect();
    OffsetCommitRequest::default()
        .with_group_id(GroupId(StrBytes::from_string(group.into())))
        .with_generation_id_or_member_epoch(-1)
        .with_topics(topics)
}

#[test]
fn committed_offsets_are_exact_per_topic_across_a_restart_and_the_group_keeps_the_smallest() {
    use kafka_protocol::messages::offset_fetch_request::OffsetFetchRequestTopic;
    let dir = tempfile::tempdir().unwrap();
    let options = || {
        let mut options = Options::new(dir.path());
        options.physical_shards = Some(2);
        options.executors = Some(2);
        options
    };
    let server_options = || ServerOptions { kafka: loopback(), stats: None, metrics: None, ..ServerOptions::default() };
    let connect = |server: &Server| {
        let stream = TcpStream::connect(server.kafka_addr().unwrap()).unwrap();
        stream.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
        stream
    };
    let fetch_offsets = |stream: &mut TcpStream| -> Vec<i64> {
        let topics = ["audit", "payments"]
            .iter()
            .map(|t| {
                OffsetFetchRequestTopic::default()
                    .with_name(TopicName(StrBytes::from_string(t.to_string())))
                    .with_partition_indexes(vec![0])
            })
            .collect();
        let request = OffsetFetchRequest::default()
            .with_group_id(GroupId(StrBytes::from_static_str("billing")))
            .with_topics(Some(topics));
        let answer = call(stream, 7, &request);
        answer.topics.iter().map(|t| t.partitions[0].committed_offset).collect()
    };
    let engine = Engine::open(options()).unwrap();
    let server = Server::start(engine.handle(), server_options()).unwrap();
    let mut stream = connect(&server);
    let records: Vec<Record> = (0..5).map(|i| record("k", "v", i)).collect();
    call(&mut stream, 9, &produce("audit", 0, &records));
    let answer = call(&mut stream, 8, &offset_commit("billing", &[("audit", 0, 4), ("payments", 0, 2)]));
    assert!(answer.topics.iter().all(|t| t.partitions[0].error_code == 0));
    assert_eq!(fetch_offsets(&mut stream), [4, 2]);
    // A commit the engine refuses (past the log's end) is not fetched afterwards.
    let refused = call(&mut stream, 8, &offset_commit("billing", &[("audit", 0, 1_000_000)]));
    assert_ne!(refused.topics[0].partitions[0].error_code, 0, "past the end");
    assert_eq!(fetch_offsets(&mut stream), [4, 2], "the refused offset is not answered");
    assert!(server.stop());
    engine.close().unwrap();

    let engine = Engine::open(options()).unwrap();
    let position = futures_lite::future::block_on(engine.handle().partition_position("billing", 0)).unwrap();
    assert_eq!(position.committed, Some(2), "the group's own offset: the smallest of its topics");
    let server = Server::start(engine.handle(), server_options()).unwrap();
    let mut stream = connect(&server);
    assert_eq!(fetch_offsets(&mut stream), [4, 2], "each topic's own offset, after a restart");
    assert!(server.stop());
    engine.close().unwrap();
}
