//! The Kafka wire protocol: frames read, requests decoded and answered one at a time per
//! connection (as a Kafka broker does: a connection's answers go out in its requests' order),
//! with the `kafka-protocol` crate's codecs.
//!
//! The mapping (ARCHITECTURE.md has it whole): one broker, node 0; a topic's partitions are
//! the physical shards, every topic having them all; a Kafka offset is the log's offset of
//! the record that delivers the event, so a topic's offsets have gaps where other records lie
//! (record batches say where they end, as compacted Kafka topics do); consumer groups'
//! offsets are the engine's durable group offsets.

mod bounds;
pub(crate) mod fetch;
mod group_api;
pub(crate) mod groups;
mod metadata;
mod produce;
pub mod records;
mod versions;

use std::collections::BTreeSet;
use std::sync::Mutex;
use std::time::Instant;

use bytes::{BufMut, Bytes, BytesMut};
use kafka_protocol::messages::{ApiKey, RequestHeader, RequestKind, ResponseHeader, ResponseKind};
use kafka_protocol::protocol::{Decodable, Encodable};
use kafka_protocol::ResponseError;

use crate::conn::Conn;

/// What the Kafka connections of every executor share.
pub(crate) struct KafkaShared {
    /// The host and port clients are told to connect to.
    pub advertised: Mutex<(String, u16)>,
    pub groups: Mutex<groups::Coordinator>,
    /// Application topics produced to since the start (listed by Metadata for all topics).
    pub topics: Mutex<BTreeSet<String>>,
    /// Each group's offsets per topic and partition committed since the start.
    pub offsets: Mutex<group_api::TopicOffsets>,
}

impl Default for KafkaShared {
    fn default() -> KafkaShared {
        KafkaShared {
            advertised: Mutex::new(("127.0.0.1".into(), 9092)),
            groups: Mutex::new(groups::Coordinator::default()),
            topics: Mutex::new(BTreeSet::new()),
            offsets: Mutex::new(group_api::TopicOffsets::default()),
        }
    }
}

/// Most application topics remembered for Metadata's list of all topics.
pub(crate) const TOPICS_LISTED_MAX: usize = 10_000;

/// A request read off the wire.
#[derive(Debug)]
pub struct DecodedRequest {
    pub api_key: ApiKey,
    pub version: i16,
    pub header: RequestHeader,
    pub body: RequestKind,
}

/// Why a frame is not a request this server answers.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RequestError {
    #[error("frame of {0} bytes is too short for a request header")]
    Short(usize),
    #[error("unknown API key {0}")]
    UnknownApiKey(i16),
    #[error("API key {api_key} version {version} is not supported")]
    UnsupportedVersion { api_key: i16, version: i16, correlation_id: i32 },
    #[error("malformed request: {0}")]
    Malformed(String),
}

/// Decodes one request frame (without its length prefix); never panics, whatever the bytes.
pub fn decode_request(frame: Bytes) -> Result<DecodedRequest, RequestError> {
    if frame.len() < 8 {
        return Err(RequestError::Short(frame.len()));
    }
    let api_key_code = i16::from_be_bytes([frame[0], frame[1]]);
    let version = i16::from_be_bytes([frame[2], frame[3]]);
    let correlation_id = i32::from_be_bytes([frame[4], frame[5], frame[6], frame[7]]);
    let api_key = ApiKey::try_from(api_key_code).map_err(|_| RequestError::UnknownApiKey(api_key_code))?;
    match versions::supported(api_key) {
        Some((min, max)) if (min..=max).contains(&version) => {}
        _ => return Err(RequestError::UnsupportedVersion { api_key: api_key_code, version, correlation_id }),
    }
    // The codecs answer errors for what they can tell is wrong; a panic on bytes they did not
    // foresee is taken as one more malformed request, never as the end of the executor.
    let decoded = std::panic::catch_unwind(move || {
        let mut bytes = frame;
        let header = RequestHeader::decode(&mut bytes, api_key.request_header_version(version))?;
        let body = RequestKind::decode(api_key, &mut bytes, version)?;
        Ok::<_, anyhow::Error>((header, body))
    });
    match decoded {
        Ok(Ok((header, body))) => Ok(DecodedRequest { api_key, version, header, body }),
        Ok(Err(error)) => Err(RequestError::Malformed(error.to_string())),
        Err(_) => Err(RequestError::Malformed("the decoder panicked".into())),
    }
}

/// Serves one Kafka connection until the peer closes, sends what cannot be answered, or the
/// server stops.
pub(crate) async fn serve(conn: &mut Conn) {
    let limit = conn.shared.options.request_bytes_max;
    let mut size = [0u8; 4];
    loop {
        if conn.read_exact(&mut size).await.is_err() {
            return;
        }
        let len = i32::from_be_bytes(size);
        if len < 0 || len as usize > limit {
            // Kafka closes a connection whose request is over `socket.request.max.bytes`.
            return;
        }
        let mut frame = vec![0u8; len as usize];
        if conn.read_exact(&mut frame).await.is_err() {
            return;
        }
        let started = Instant::now();
        let request = match decode_request(Bytes::from(frame)) {
            Ok(request) => request,
            Err(RequestError::UnsupportedVersion { api_key, correlation_id, .. })
                if api_key == ApiKey::ApiVersions as i16 =>
            {
                // A client asking with a version newer than ours is told ours, at version 0
                // (KIP-511), so that it can ask again.
                let mut answer = versions::api_versions();
                answer.error_code = ResponseError::UnsupportedVersion.code();
                if send(conn, ApiKey::ApiVersions, 0, correlation_id, &ResponseKind::ApiVersions(answer)).await.is_err()
                {
                    return;
                }
                continue;
            }
            // Anything else a broker cannot answer closes the connection, as Kafka does.
            Err(_) => return,
        };
        let DecodedRequest { api_key, version, header, body } = request;
        let answer = match answer(conn, &header, body).await {
            Some(answer) => answer,
            // Nothing to send (acks=0): on to the next request, unless the server stops.
            None if conn.shared.shutdown.is_stopping() => return,
            None => continue,
        };
        if send(conn, api_key, version, header.correlation_id, &answer).await.is_err() {
            return;
        }
        conn.shared.metrics.request(api_name(api_key), started.elapsed());
        if conn.shared.shutdown.is_stopping() {
            return;
        }
    }
}

/// The answer to one request; `None` for a request answered with nothing (a produce with
/// `acks=0`).
async fn answer(conn: &mut Conn, header: &RequestHeader, body: RequestKind) -> Option<ResponseKind> {
    let shared = conn.shared.clone();
    Some(match body {
        RequestKind::ApiVersions(_) => ResponseKind::ApiVersions(versions::api_versions()),
        RequestKind::Metadata(request) => ResponseKind::Metadata(metadata::metadata(&shared, header, request)),
        RequestKind::FindCoordinator(request) => {
            ResponseKind::FindCoordinator(metadata::find_coordinator(&shared, header, request))
        }
        RequestKind::Produce(request) => {
            let acks = request.acks;
            let answer = produce::produce(&shared, header, request).await;
            if acks == 0 {
                return None;
            }
            ResponseKind::Produce(answer)
        }
        RequestKind::InitProducerId(request) => {
            ResponseKind::InitProducerId(produce::init_producer_id(&shared, request))
        }
        RequestKind::Fetch(request) => ResponseKind::Fetch(fetch::fetch(&shared, header, request).await),
        RequestKind::ListOffsets(request) => {
            ResponseKind::ListOffsets(fetch::list_offsets(&shared, header, request).await)
        }
        RequestKind::JoinGroup(request) => ResponseKind::JoinGroup(group_api::join(&shared, header, request).await),
        RequestKind::SyncGroup(request) => ResponseKind::SyncGroup(group_api::sync(&shared, header, request).await),
        RequestKind::Heartbeat(request) => ResponseKind::Heartbeat(group_api::heartbeat(&shared, request)),
        RequestKind::LeaveGroup(request) => ResponseKind::LeaveGroup(group_api::leave(&shared, header, request)),
        RequestKind::OffsetCommit(request) => {
            ResponseKind::OffsetCommit(group_api::offset_commit(&shared, header, request).await)
        }
        RequestKind::OffsetFetch(request) => {
            ResponseKind::OffsetFetch(group_api::offset_fetch(&shared, header, request).await)
        }
        // `versions::supported` lets no other key through.
        _ => return None,
    })
}

/// Writes one answer: its size, its header, its body.
async fn send(
    conn: &mut Conn,
    api_key: ApiKey,
    version: i16,
    correlation_id: i32,
    answer: &ResponseKind,
) -> Result<(), crate::conn::ReadEnd> {
    // Sized first: a fetch's answer runs to megabytes, which growing by doubling would copy
    // over and over.
    let size = match answer {
        ResponseKind::Fetch(fetch) => fetch.compute_size(version).unwrap_or(0),
        _ => 0,
    };
    let mut out = BytesMut::with_capacity(size + 64);
    out.put_i32(0);
    // ApiVersions answers with header version 0 whatever its version (KIP-511).
    let header_version = match api_key {
        ApiKey::ApiVersions => 0,
        _ => api_key.response_header_version(version),
    };
    let header = ResponseHeader::default().with_correlation_id(correlation_id);
    let encoded = header.encode(&mut out, header_version).and_then(|()| answer.encode(&mut out, version));
    if let Err(error) = encoded {
        // A field this version cannot carry: a bug of this server, told where it shows.
        eprintln!("tradeshard-server: cannot encode the answer to {api_key:?} v{version}: {error}");
        return Err(crate::conn::ReadEnd::Closed);
    }
    let len = (out.len() - 4) as i32;
    out[..4].copy_from_slice(&len.to_be_bytes());
    conn.write_all(&out).await
}

fn api_name(api_key: ApiKey) -> &'static str {
    match api_key {
        ApiKey::ApiVersions => "api_versions",
        ApiKey::Metadata => "metadata",
        ApiKey::FindCoordinator => "find_coordinator",
        ApiKey::Produce => "produce",
        ApiKey::InitProducerId => "init_producer_id",
        ApiKey::Fetch => "fetch",
        ApiKey::ListOffsets => "list_offsets",
        ApiKey::JoinGroup => "join_group",
        ApiKey::SyncGroup => "sync_group",
        ApiKey::Heartbeat => "heartbeat",
        ApiKey::LeaveGroup => "leave_group",
        ApiKey::OffsetCommit => "offset_commit",
        ApiKey::OffsetFetch => "offset_fetch",
        _ => "other",
    }
}

/// A future of a request's part, boxed so that parts of one request can be awaited together.
pub(crate) type Pending<'a, T> = std::pin::Pin<Box<dyn std::future::Future<Output = T> + 'a>>;

/// Awaits every future of `futures` together, answering in their order.
pub(crate) async fn join_all<T>(futures: Vec<Pending<'_, T>>) -> Vec<T> {
    let mut pending: Vec<Option<Pending<'_, T>>> = futures.into_iter().map(Some).collect();
    let mut answers: Vec<Option<T>> = pending.iter().map(|_| None).collect();
    std::future::poll_fn(|cx| {
        let mut waiting = false;
        for (slot, answer) in pending.iter_mut().zip(answers.iter_mut()) {
            let Some(future) = slot else { continue };
            match future.as_mut().poll(cx) {
                std::task::Poll::Ready(value) => {
                    *answer = Some(value);
                    *slot = None;
                }
                std::task::Poll::Pending => waiting = true,
            }
        }
        if waiting {
            std::task::Poll::Pending
        } else {
            std::task::Poll::Ready(())
        }
    })
    .await;
    answers.into_iter().map(|answer| answer.expect("every future answered")).collect()
}

/// A Kafka partition index as the engine's partition, if it is one.
pub(crate) fn partition_of(shared: &crate::Shared, index: i32) -> Option<u32> {
    let partitions = shared.handle.routing().physical_shards;
    u32::try_from(index).ok().filter(|p| *p < partitions)
}

/// The error code for an engine error met while serving a partition.
pub(crate) fn error_code(error: &tradeshard_engine::Error) -> i16 {
    use tradeshard_engine::{Error, InputError, Refusal};
    let code = match error {
        Error::Refused(Refusal::OffsetOutOfRange { .. }) => ResponseError::OffsetOutOfRange,
        Error::Invalid(InputError::BadPartition { .. }) => ResponseError::UnknownTopicOrPartition,
        Error::Invalid(InputError::BadTopic { .. } | InputError::ReservedTopic) => ResponseError::InvalidTopicException,
        Error::Invalid(InputError::BadGroup { .. }) => ResponseError::InvalidGroupId,
        Error::Invalid(InputError::PayloadTooLarge { .. }) => ResponseError::MessageTooLarge,
        Error::Invalid(_) => ResponseError::InvalidRecord,
        Error::Closed => ResponseError::NotLeaderOrFollower,
        Error::Backpressure { .. } => ResponseError::RequestTimedOut,
        _ => ResponseError::KafkaStorageError,
    };
    code.code()
}
