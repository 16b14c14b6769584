//! The APIs and versions this server speaks, and the ApiVersions answer that tells clients.
//!
//! Versions are capped below the newest where a newer one would change the model: Fetch and
//! Metadata before topic ids (Fetch 13), FindCoordinator before batched keys (4), JoinGroup
//! before its reasons (8); the floors are the first versions with record batches (Produce 3,
//! Fetch 4) and with the semantics described in `kafka/mod.rs`.

use kafka_protocol::messages::api_versions_response::ApiVersion;
use kafka_protocol::messages::{ApiKey, ApiVersionsResponse};

const SUPPORTED: &[(ApiKey, i16, i16)] = &[
    (ApiKey::Produce, 3, 9),
    (ApiKey::Fetch, 4, 12),
    (ApiKey::ListOffsets, 1, 7),
    (ApiKey::Metadata, 1, 9),
    (ApiKey::OffsetCommit, 2, 8),
    (ApiKey::OffsetFetch, 1, 7),
    (ApiKey::FindCoordinator, 0, 3),
    (ApiKey::JoinGroup, 0, 7),
    (ApiKey::Heartbeat, 0, 4),
    (ApiKey::LeaveGroup, 0, 4),
    (ApiKey::SyncGroup, 0, 5),
    (ApiKey::ApiVersions, 0, 3),
    (ApiKey::InitProducerId, 0, 4),
];

/// The versions of `api_key` this server answers, if it answers it at all.
pub(crate) fn supported(api_key: ApiKey) -> Option<(i16, i16)> {
    SUPPORTED.iter().find(|(key, _, _)| *key == api_key).map(|(_, min, max)| (*min, *max))
}

pub(crate) fn api_versions() -> ApiVersionsResponse {
    let api_keys = SUPPORTED
        .iter()
        .map(|(key, min, max)| {
            ApiVersion::default().with_api_key(*key as i16).with_min_version(*min).with_max_version(*max)
        })
        .collect();
    ApiVersionsResponse::default().with_api_keys(api_keys)
}

#[cfg(test)]
mod tests {
    use kafka_protocol::messages::*;
    use kafka_protocol::protocol::Message;

    use super::*;

    #[test]
    fn every_version_offered_is_one_the_codecs_know() {
        for (key, min, max) in SUPPORTED {
            let range = match key {
                ApiKey::Produce => ProduceRequest::VERSIONS,
                ApiKey::Fetch => FetchRequest::VERSIONS,
                ApiKey::ListOffsets => ListOffsetsRequest::VERSIONS,
                ApiKey::Metadata => MetadataRequest::VERSIONS,
                ApiKey::OffsetCommit => OffsetCommitRequest::VERSIONS,
                ApiKey::OffsetFetch => OffsetFetchRequest::VERSIONS,
                ApiKey::FindCoordinator => FindCoordinatorRequest::VERSIONS,
                ApiKey::JoinGroup => JoinGroupRequest::VERSIONS,
                ApiKey::Heartbeat => HeartbeatRequest::VERSIONS,
                ApiKey::LeaveGroup => LeaveGroupRequest::VERSIONS,
                ApiKey::SyncGroup => SyncGroupRequest::VERSIONS,
                ApiKey::ApiVersions => ApiVersionsRequest::VERSIONS,
                ApiKey::InitProducerId => InitProducerIdRequest::VERSIONS,
                other => panic!("{other:?} offered but not checked"),
            };
            assert!(range.min <= *min && *max <= range.max, "{key:?} {min}..={max} outside {range:?}");
        }
    }
}
