//! The group requests: membership through the coordinator (`groups.rs`), offsets through the
//! engine's durable group offsets.
//!
//! A Kafka group's offsets are the engine's durable group offsets. Each commit is written
//! twice in one group commit: exactly, under the engine group `group#topic` (a topic's own
//! offsets, as Kafka keeps them), and under the group itself, one offset per partition for
//! every topic it reads there (the engine's model, which embedded consumers of the group and
//! its lag see): the smallest of its topics' offsets there. OffsetFetch answers the exact
//! offset; a name too long for `group#topic` (over 64 bytes) has only the smallest, which
//! resumes every topic at or before where it stood (at least once).

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use kafka_protocol::messages::join_group_response::JoinGroupResponseMember;
use kafka_protocol::messages::leave_group_response::MemberResponse;
use kafka_protocol::messages::offset_commit_response::{OffsetCommitResponsePartition, OffsetCommitResponseTopic};
use kafka_protocol::messages::offset_fetch_response::{OffsetFetchResponsePartition, OffsetFetchResponseTopic};
use kafka_protocol::messages::{
    HeartbeatRequest, HeartbeatResponse, JoinGroupRequest, JoinGroupResponse, LeaveGroupRequest, LeaveGroupResponse,
    OffsetCommitRequest, OffsetCommitResponse, OffsetFetchRequest, OffsetFetchResponse, RequestHeader,
    SyncGroupRequest, SyncGroupResponse, TopicName,
};
use kafka_protocol::protocol::StrBytes;
use kafka_protocol::ResponseError;
use tradeshard_engine::reply::ReplyFuture;

use super::groups::{JoinRequest, Joined};
use super::{error_code, partition_of};
use crate::shutdown::CHECK_INTERVAL;
use crate::Shared;

/// Bounds on the timeouts a client may ask for.
const SESSION_TIMEOUT: std::ops::RangeInclusive<Duration> = Duration::from_secs(1)..=Duration::from_secs(300);
const REBALANCE_TIMEOUT_MAX: Duration = Duration::from_secs(600);

/// A Kafka group id the engine can keep offsets for: a valid engine group name without `#`,
/// which separates a group from a topic in the names of the topics' exact offsets.
fn valid_group(group: &str) -> bool {
    tradeshard_engine::validate_group(group).is_ok() && !group.contains('#')
}

/// Waits for a coordinator's answer, moving the group's clock meanwhile (the first waiter to
/// see a deadline pass completes the rebalance); a stop answers `stopped`. `None`: the
/// coordinator dropped the question (it cannot: every waiting slot is answered or replaced).
async fn wait_for<T>(shared: &Shared, group: &str, mut answer: ReplyFuture<T>, stopped: T) -> Option<T> {
    loop {
        if shared.shutdown.is_stopping() {
            return Some(stopped);
        }
        let answered = futures_lite::future::or(async { Some((&mut answer).await) }, async {
            glommio::timer::sleep(CHECK_INTERVAL).await;
            None
        })
        .await;
        match answered {
            Some(value) => return value,
            None => shared.kafka.groups.lock().expect("groups lock").tick(group, Instant::now()),
        }
    }
}

/// Protocols one member may offer, and the bytes of their names and metadata together (a
/// consumer's subscription and assignment data: a few hundred bytes in practice).
const PROTOCOLS_MAX: usize = 16;
const PROTOCOL_BYTES_MAX: usize = 64 << 10;

pub(crate) async fn join(shared: &Shared, header: &RequestHeader, request: JoinGroupRequest) -> JoinGroupResponse {
    let group = request.group_id.0.to_string();
    let refuse =
        |error: ResponseError| JoinGroupResponse::default().with_error_code(error.code()).with_generation_id(-1);
    if !valid_group(&group) {
        return refuse(ResponseError::InvalidGroupId);
    }
    // A member's protocols are kept while it is a member: bounded, and copied out of the
    // request's frame (a slice of it would keep the whole frame alive).
    let metadata_bytes: usize = request.protocols.iter().map(|p| p.name.len() + p.metadata.len()).sum();
    if request.protocols.len() > PROTOCOLS_MAX || metadata_bytes > PROTOCOL_BYTES_MAX {
        return refuse(ResponseError::InvalidRequest);
    }
    let session = Duration::from_millis(request.session_timeout_ms.max(0) as u64);
    if !SESSION_TIMEOUT.contains(&session) {
        return refuse(ResponseError::InvalidSessionTimeout);
    }
    // Version 0 has no rebalance timeout: Kafka takes the session timeout.
    let rebalance = match request.rebalance_timeout_ms {
        ms if ms > 0 => Duration::from_millis(ms as u64).min(REBALANCE_TIMEOUT_MAX),
        _ => session,
    };
    let join = JoinRequest {
        member_id: request.member_id.to_string(),
        // A member id is the client's id (bounded) and a number.
        client_id: header.client_id.as_ref().map_or("client".to_string(), |c| c.chars().take(64).collect()),
        protocol_type: request.protocol_type.to_string(),
        protocols: request
            .protocols
            .into_iter()
            .map(|p| (p.name.to_string(), bytes::Bytes::copy_from_slice(&p.metadata)))
            .collect(),
        session_timeout: session,
        rebalance_timeout: rebalance,
    };
    let answer = shared.kafka.groups.lock().expect("groups lock").join(&group, join, Instant::now());
    let answer = match answer {
        Ok(answer) => wait_for(shared, &group, answer, Err(ResponseError::CoordinatorNotAvailable)).await,
        Err(error) => return refuse(error),
    };
    match answer {
        Some(Ok(Joined { generation, protocol, leader, member_id, members })) => JoinGroupResponse::default()
            .with_generation_id(generation)
            .with_protocol_type(Some(StrBytes::from_string(request.protocol_type.to_string())))
            .with_protocol_name(Some(StrBytes::from_string(protocol)))
            .with_leader(StrBytes::from_string(leader))
            .with_member_id(StrBytes::from_string(member_id))
            .with_members(
                members
                    .into_iter()
                    .map(|(id, metadata)| {
                        JoinGroupResponseMember::default()
                            .with_member_id(StrBytes::from_string(id))
                            .with_metadata(metadata)
                    })
                    .collect(),
            ),
        Some(Err(error)) => refuse(error),
        None => refuse(ResponseError::UnknownServerError),
    }
}

pub(crate) async fn sync(shared: &Shared, _header: &RequestHeader, request: SyncGroupRequest) -> SyncGroupResponse {
    let group = request.group_id.0.to_string();
    let refuse = |error: ResponseError| SyncGroupResponse::default().with_error_code(error.code());
    let assignments = request.assignments.into_iter().map(|a| (a.member_id.to_string(), a.assignment)).collect();
    let answer = shared.kafka.groups.lock().expect("groups lock").sync(
        &group,
        request.generation_id,
        &request.member_id,
        assignments,
        Instant::now(),
    );
    let answer = match answer {
        Ok(answer) => wait_for(shared, &group, answer, Err(ResponseError::RebalanceInProgress)).await,
        Err(error) => return refuse(error),
    };
    match answer {
        Some(Ok(assignment)) => SyncGroupResponse::default()
            .with_protocol_type(request.protocol_type)
            .with_protocol_name(request.protocol_name)
            .with_assignment(assignment),
        Some(Err(error)) => refuse(error),
        None => refuse(ResponseError::UnknownServerError),
    }
}

pub(crate) fn heartbeat(shared: &Shared, request: HeartbeatRequest) -> HeartbeatResponse {
    let group = request.group_id.0.to_string();
    let answer = shared.kafka.groups.lock().expect("groups lock").heartbeat(
        &group,
        request.generation_id,
        &request.member_id,
        Instant::now(),
    );
    HeartbeatResponse::default().with_error_code(answer.err().map_or(0, |e| e.code()))
}

pub(crate) fn leave(shared: &Shared, _header: &RequestHeader, request: LeaveGroupRequest) -> LeaveGroupResponse {
    let group = request.group_id.0.to_string();
    let mut coordinator = shared.kafka.groups.lock().expect("groups lock");
    let now = Instant::now();
    if request.members.is_empty() {
        // Versions 0 to 2: one member, named at the top.
        let answer = coordinator.leave(&group, &request.member_id, now);
        return LeaveGroupResponse::default().with_error_code(answer.err().map_or(0, |e| e.code()));
    }
    let members = request
        .members
        .into_iter()
        .map(|member| {
            let code = coordinator.leave(&group, &member.member_id, now).err().map_or(0, |e| e.code());
            MemberResponse::default().with_member_id(member.member_id).with_error_code(code)
        })
        .collect();
    LeaveGroupResponse::default().with_members(members)
}

/// Most (group, topic, partition) offsets remembered exactly.
const EXACT_OFFSETS_MAX: usize = 100_000;

/// The offsets a group committed per (topic, partition) since the start, beside the durable
/// smallest per partition.
#[derive(Default)]
pub(crate) struct TopicOffsets(BTreeMap<(String, String, u32), i64>);

pub(crate) async fn offset_commit(
    shared: &Shared,
    _header: &RequestHeader,
    request: OffsetCommitRequest,
) -> OffsetCommitResponse {
    let group = request.group_id.0.to_string();
    let allowed = if valid_group(&group) {
        shared.kafka.groups.lock().expect("groups lock").may_commit(
            &group,
            request.generation_id_or_member_epoch,
            &request.member_id,
            Instant::now(),
        )
    } else {
        Err(ResponseError::InvalidGroupId)
    };
    let mut topics = Vec::with_capacity(request.topics.len());
    for topic in request.topics {
        let name = topic.name.0.to_string();
        let mut partitions = Vec::with_capacity(topic.partitions.len());
        for asked in topic.partitions {
            let answer = OffsetCommitResponsePartition::default().with_partition_index(asked.partition_index);
            let code =
                match (&allowed, partition_of(shared, asked.partition_index), super::metadata::topic_error(&name)) {
                    (Err(error), _, _) => error.code(),
                    (_, None, _) | (_, _, Some(_)) => ResponseError::UnknownTopicOrPartition.code(),
                    (Ok(()), Some(_), None) if asked.committed_offset < 0 => ResponseError::OffsetOutOfRange.code(),
                    (Ok(()), Some(partition), None) => {
                        commit(shared, &group, &name, partition, asked.committed_offset as u64).await
                    }
                };
            partitions.push(answer.with_error_code(code));
        }
        topics.push(OffsetCommitResponseTopic::default().with_name(topic.name).with_partitions(partitions));
    }
    OffsetCommitResponse::default().with_topics(topics)
}

/// The engine group that keeps `group`'s exact offsets of `topic` (`group#topic`), when the
/// name fits a group name's bounds.
fn topic_group(group: &str, topic: &str) -> Option<String> {
    let key = format!("{group}#{topic}");
    tradeshard_engine::validate_group(&key).is_ok().then_some(key)
}

/// Commits `offset` of `topic`, durably twice in one group commit: exactly, under the group's
/// topic group (`group#topic`), and as the group's offset in the partition, the smallest of
/// its topics there (what embedded consumers of the group and its lag see). Answers an error
/// code (0: none).
async fn commit(shared: &Shared, group: &str, topic: &str, partition: u32, offset: u64) -> i16 {
    let key = (group.to_string(), topic.to_string(), partition);
    let (smallest, before) = {
        let mut offsets = shared.kafka.offsets.lock().expect("offsets lock");
        // Past the bound, a new (group, topic, partition) is not remembered here: the
        // smallest is then taken over those remembered, and its own offset.
        let before = match offsets.0.len() < EXACT_OFFSETS_MAX || offsets.0.contains_key(&key) {
            true => Some(offsets.0.insert(key.clone(), offset as i64)),
            false => None,
        };
        let smallest = offsets
            .0
            .range((group.to_string(), String::new(), 0)..)
            .take_while(|((g, _, _), _)| g == group)
            .filter(|((_, _, p), _)| *p == partition)
            .map(|(_, o)| *o)
            .min()
            .map_or(offset, |smallest| smallest.min(offset as i64) as u64);
        (smallest, before)
    };
    let handle = &shared.handle;
    let whole = handle.commit_partition_offset(group, partition, smallest);
    let answers = match topic_group(group, topic) {
        Some(exact) => {
            let (whole, exact) =
                futures_lite::future::zip(whole, handle.commit_partition_offset(&exact, partition, offset)).await;
            whole.and(exact)
        }
        None => whole.await,
    };
    match answers {
        Ok(_) => 0,
        Err(error) => {
            // Not durable: the offset remembered before stands again (unless a later commit
            // of the same key replaced this one meanwhile), so that no fetch answers it.
            if let Some(before) = before {
                let mut offsets = shared.kafka.offsets.lock().expect("offsets lock");
                if offsets.0.get(&key) == Some(&(offset as i64)) {
                    match before {
                        Some(earlier) => offsets.0.insert(key, earlier),
                        None => offsets.0.remove(&key),
                    };
                }
            }
            error_code(&error)
        }
    }
}

/// The offset a group has for `topic` in `partition`: the one committed since the start,
/// else the durable one of its topic group, else the group's own (at or before it), else -1.
/// What is found is remembered as this topic's, so that the group's own offset is never
/// carried past a topic it reads.
async fn committed(shared: &Shared, group: &str, topic: &str, partition: u32) -> Result<i64, i16> {
    let key = (group.to_string(), topic.to_string(), partition);
    if let Some(offset) = shared.kafka.offsets.lock().expect("offsets lock").0.get(&key).copied() {
        return Ok(offset);
    }
    let durable = |name: String| async move {
        match shared.handle.partition_position(&name, partition).await {
            Ok(position) => Ok(position.committed),
            Err(error) => Err(error_code(&error)),
        }
    };
    let exact = match topic_group(group, topic) {
        Some(name) => durable(name).await?,
        None => None,
    };
    let found = match exact {
        Some(offset) => Some(offset),
        None => durable(group.to_string()).await?,
    };
    let Some(found) = found else { return Ok(-1) };
    let mut offsets = shared.kafka.offsets.lock().expect("offsets lock");
    if offsets.0.len() < EXACT_OFFSETS_MAX {
        offsets.0.entry(key).or_insert(found as i64);
    }
    Ok(found as i64)
}

pub(crate) async fn offset_fetch(
    shared: &Shared,
    _header: &RequestHeader,
    request: OffsetFetchRequest,
) -> OffsetFetchResponse {
    let group = request.group_id.0.to_string();
    if !valid_group(&group) {
        return OffsetFetchResponse::default().with_error_code(ResponseError::InvalidGroupId.code());
    }
    // All topics (`None`): those this server saw the group commit.
    let asked: Vec<(String, Vec<i32>)> = match request.topics {
        Some(topics) => topics.into_iter().map(|t| (t.name.0.to_string(), t.partition_indexes)).collect(),
        None => {
            let offsets = shared.kafka.offsets.lock().expect("offsets lock");
            let mut by_topic: BTreeMap<String, Vec<i32>> = BTreeMap::new();
            for (g, topic, partition) in offsets.0.keys() {
                if *g == group {
                    by_topic.entry(topic.clone()).or_default().push(*partition as i32);
                }
            }
            by_topic.into_iter().collect()
        }
    };
    let mut topics = Vec::with_capacity(asked.len());
    for (name, indexes) in asked {
        let mut partitions = Vec::with_capacity(indexes.len());
        for index in indexes {
            let answer = OffsetFetchResponsePartition::default().with_partition_index(index).with_committed_offset(-1);
            partitions.push(match (partition_of(shared, index), super::metadata::topic_error(&name)) {
                (Some(partition), None) => match committed(shared, &group, &name, partition).await {
                    Ok(offset) => answer.with_committed_offset(offset),
                    Err(code) => answer.with_error_code(code),
                },
                _ => answer.with_error_code(ResponseError::UnknownTopicOrPartition.code()),
            });
        }
        topics.push(
            OffsetFetchResponseTopic::default()
                .with_name(TopicName(StrBytes::from_string(name)))
                .with_partitions(partitions),
        );
    }
    OffsetFetchResponse::default().with_topics(topics)
}
