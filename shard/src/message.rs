//! Application messages in a shard's log (system record kind 21): what was published,
//! prepared (a half message), committed or rolled back, checked, negatively acknowledged,
//! released when due, dead-lettered, replayed or dropped. Layout in `docs/FORMAT.md`.
//!
//! One record type serves every step, so the one decoder ([`MessageView::decode`], in place,
//! never panicking) checks them all. A record that consumers see (a publish due at once, a
//! commit, a release, a replay) carries the whole message, so a consumer reads it where it
//! lies and nothing else: a committed half message is delivered at its commit, a retry at its
//! release.

use crate::bytes::Reader;
use crate::message_body::{headers_of, push_body, read_body, BodyView};
pub use crate::message_body::{
    validate_topic, MessageBody, HEADERS_MAX, HEADER_BYTES_MAX, KEY_BYTES_MAX, PAYLOAD_BYTES_MAX, TOPIC_BYTES_MAX,
    TRADES_TOPIC,
};
use crate::record::RECORD_VERSION;
use crate::system_record::{OffsetCommit, GROUP_BYTES_MAX};

/// The kind of a message record.
pub const KIND_MESSAGE: u8 = 21;

const FIXED_BYTES: usize = 16;
/// Largest message record: the fixed part, every optional field, a group, and a message of
/// the largest topic, key, headers and payload.
pub const MESSAGE_RECORD_BYTES_MAX: usize = FIXED_BYTES
    + 4 * 8
    + GROUP_BYTES_MAX
    + (1 + TOPIC_BYTES_MAX)
    + (2 + KEY_BYTES_MAX)
    + (1 + HEADERS_MAX * 3 + HEADER_BYTES_MAX)
    + (4 + PAYLOAD_BYTES_MAX);
const FLAG_REFERENCE: u8 = 1;
const FLAG_PRODUCER: u8 = 2;
const FLAG_BODY: u8 = 4;
const FLAG_DUE: u8 = 8;

/// What a message record records.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum MessageOp {
    /// A message published: delivered here, or scheduled when it has a due time.
    Publish = 1,
    /// A half message: stored, not delivered, until committed or rolled back (with a
    /// producer's sequence number, a repeat is stored once).
    Prepare = 2,
    /// The half message at `reference` committed: delivered here.
    Commit = 3,
    /// The half message at `reference` rolled back (`detail`: a [`RollbackReason`]).
    Rollback = 4,
    /// The half message at `reference` was checked `detail` times, without an answer.
    Checked = 5,
    /// The message delivered at `reference` failed for `group`: delivered again when due.
    Nack = 6,
    /// The scheduled record at `reference` came due: delivered here (to `group` alone, if set).
    Release = 7,
    /// The message delivered at `reference` failed its last attempt: set aside for `group`.
    DeadLetter = 8,
    /// The dead letter at `reference` sent back to its group: delivered here to it.
    Replay = 9,
    /// The dead letter at `reference` dropped.
    Drop = 10,
}

impl MessageOp {
    fn from_u8(byte: u8) -> Option<MessageOp> {
        use MessageOp::*;
        Some(match byte {
            1 => Publish,
            2 => Prepare,
            3 => Commit,
            4 => Rollback,
            5 => Checked,
            6 => Nack,
            7 => Release,
            8 => DeadLetter,
            9 => Replay,
            10 => Drop,
            _ => return None,
        })
    }

    /// Which fields a record of this op has: (reference, body), and whether a producer or a
    /// due time may come with it (its group: `group_needed`, `group_allowed`).
    fn shape(self) -> (bool, bool, bool, bool) {
        use MessageOp::*;
        match self {
            Publish => (false, true, true, true),
            Prepare => (false, true, true, false),
            Commit => (true, true, false, false),
            Rollback | Checked => (true, false, false, false),
            Nack => (true, true, false, true),
            Release | DeadLetter | Replay => (true, true, false, false),
            Drop => (true, false, false, false),
        }
    }
}

/// Why a half message was rolled back.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum RollbackReason {
    /// Its producer asked.
    Asked = 1,
    /// The topic's checker answered that it is not valid.
    Checker = 2,
    /// It was checked the most times allowed without an answer.
    ChecksExhausted = 3,
}

impl RollbackReason {
    pub(crate) fn from_u8(byte: u8) -> Option<RollbackReason> {
        Some(match byte {
            1 => RollbackReason::Asked,
            2 => RollbackReason::Checker,
            3 => RollbackReason::ChecksExhausted,
            _ => return None,
        })
    }
}

/// One message record, owned (what the write path encodes).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MessageRecord {
    pub op: MessageOp,
    pub at_ms: u64,
    /// The offset of the record this one is about.
    pub reference: Option<u64>,
    /// The delivery attempt this record leads to (0: the first).
    pub attempt: u8,
    /// `Rollback`: the reason; `Checked`: how many checks so far.
    pub detail: u8,
    /// An idempotent producer's id and sequence number.
    pub producer: Option<(u64, u64)>,
    /// Not delivered before this time (milliseconds since the Unix epoch).
    pub due_ms: Option<u64>,
    /// The consumer group the record is for (empty: every group).
    pub group: String,
    pub body: Option<MessageBody>,
}

impl MessageRecord {
    /// A record of `op` at `at_ms` with no optional field set.
    pub fn new(op: MessageOp, at_ms: u64) -> MessageRecord {
        MessageRecord {
            op,
            at_ms,
            reference: None,
            attempt: 0,
            detail: 0,
            producer: None,
            due_ms: None,
            group: String::new(),
            body: None,
        }
    }

    pub fn encode(&self) -> Vec<u8> {
        let body_len = self.body.as_ref().map_or(0, |b| b.held_bytes());
        let mut out = Vec::with_capacity(FIXED_BYTES + 32 + self.group.len() + body_len);
        let flags = [
            (self.reference.is_some(), FLAG_REFERENCE),
            (self.producer.is_some(), FLAG_PRODUCER),
            (self.body.is_some(), FLAG_BODY),
            (self.due_ms.is_some(), FLAG_DUE),
        ]
        .iter()
        .fold(0, |flags, (set, flag)| if *set { flags | flag } else { flags });
        let fixed = [RECORD_VERSION, KIND_MESSAGE, self.op as u8, flags, self.attempt, self.detail];
        out.extend_from_slice(&fixed);
        out.extend_from_slice(&[self.group.len() as u8, 0]);
        out.extend_from_slice(&self.at_ms.to_le_bytes());
        let optional = [self.reference, self.producer.map(|p| p.0), self.producer.map(|p| p.1), self.due_ms];
        for field in optional.into_iter().flatten() {
            out.extend_from_slice(&field.to_le_bytes());
        }
        out.extend_from_slice(self.group.as_bytes());
        if let Some(body) = &self.body {
            push_body(&mut out, body);
        }
        out
    }
}

impl MessageRecord {
    /// True when consumers see this record as a message.
    pub fn is_delivered(&self) -> bool {
        delivered(self.op, self.due_ms)
    }
}

/// A message record read in place: every field checked, strings and bytes borrowed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MessageView<'a> {
    pub op: MessageOp,
    pub at_ms: u64,
    pub reference: Option<u64>,
    pub attempt: u8,
    pub detail: u8,
    pub producer: Option<(u64, u64)>,
    pub due_ms: Option<u64>,
    pub group: &'a str,
    /// Empty when the record carries no message.
    pub topic: &'a str,
    pub key: &'a [u8],
    headers: &'a [u8],
    header_count: u8,
    pub payload: &'a [u8],
    has_body: bool,
}

impl<'a> MessageView<'a> {
    /// Decodes a message record, checking every byte; never panics.
    pub fn decode(bytes: &'a [u8]) -> Result<MessageView<'a>, &'static str> {
        let mut reader = Reader::new(bytes, 0, "message record cut short");
        let fixed = reader.take(8)?;
        if fixed[0] != RECORD_VERSION || fixed[1] != KIND_MESSAGE {
            return Err("not a message record");
        }
        let op = MessageOp::from_u8(fixed[2]).ok_or("message record of an unknown op")?;
        let flags = fixed[3];
        let (attempt, detail, group_len) = (fixed[4], fixed[5], fixed[6] as usize);
        if fixed[7] != 0 {
            return Err("message record with a reserved byte set");
        }
        let at_ms = reader.u64()?;
        let (reference, body, producer_ok, due_ok) = op.shape();
        let has = |flag| flags & flag != 0;
        if flags & !(FLAG_REFERENCE | FLAG_PRODUCER | FLAG_BODY | FLAG_DUE) != 0
            || has(FLAG_REFERENCE) != reference
            || has(FLAG_BODY) != body
            || (has(FLAG_PRODUCER) && !producer_ok)
            || (has(FLAG_DUE) && !due_ok)
            || (op == MessageOp::Nack && !has(FLAG_DUE))
        {
            return Err("message record with fields its op does not have");
        }
        let reference = if reference { Some(reader.u64()?) } else { None };
        let producer = if has(FLAG_PRODUCER) { Some((reader.u64()?, reader.u64()?)) } else { None };
        let due_ms = if has(FLAG_DUE) { Some(reader.u64()?) } else { None };
        let group = std::str::from_utf8(reader.take(group_len)?).map_err(|_| "message group is not UTF-8")?;
        if !group.is_empty() && !OffsetCommit::valid_group(group) {
            return Err("message group out of bounds");
        }
        if (group.is_empty() && group_needed(op)) || (!group.is_empty() && !group_allowed(op)) {
            return Err("message record with a group its op does not have");
        }
        let mut view = MessageView {
            op,
            at_ms,
            reference,
            attempt,
            detail,
            producer,
            due_ms,
            group,
            topic: "",
            key: &[],
            headers: &[],
            header_count: 0,
            payload: &[],
            has_body: body,
        };
        match op {
            MessageOp::Rollback if RollbackReason::from_u8(detail).is_none() => {
                return Err("rollback of an unknown reason");
            }
            MessageOp::Checked if detail == 0 => return Err("a check record counts at least one check"),
            MessageOp::Rollback | MessageOp::Checked => {}
            _ if detail != 0 => return Err("message record with a detail its op does not have"),
            _ => {}
        }
        let attempt_fits = match op {
            MessageOp::Nack | MessageOp::DeadLetter => attempt > 0,
            // A release of a delayed publish is a first attempt, of a retry a later one.
            MessageOp::Release => (attempt == 0) == group.is_empty(),
            _ => attempt == 0,
        };
        if !attempt_fits || producer.is_some_and(|(_, sequence)| sequence == u64::MAX) {
            return Err("message record with an attempt or a sequence number its op does not have");
        }
        if body {
            let BodyView { topic, key, headers, header_count, payload } = read_body(&mut reader)?;
            (view.topic, view.key, view.headers, view.header_count, view.payload) =
                (topic, key, headers, header_count, payload);
        }
        if !reader.done() {
            return Err("message record longer than its fields");
        }
        Ok(view)
    }

    /// True when consumers see this record as a message (of its topic, to its group or all).
    pub fn is_delivered(&self) -> bool {
        delivered(self.op, self.due_ms)
    }

    /// The headers, in order (checked by `decode`).
    pub fn headers(&self) -> impl Iterator<Item = (&'a str, &'a [u8])> {
        headers_of(self.headers, self.header_count)
    }

    /// The message this record carries, owned.
    pub fn body(&self) -> Option<MessageBody> {
        self.has_body.then(|| MessageBody {
            topic: self.topic.to_string(),
            key: self.key.to_vec(),
            headers: self.headers().map(|(name, value)| (name.to_string(), value.to_vec())).collect(),
            payload: self.payload.to_vec(),
        })
    }

    /// The record, owned.
    pub fn to_record(&self) -> MessageRecord {
        MessageRecord {
            op: self.op,
            at_ms: self.at_ms,
            reference: self.reference,
            attempt: self.attempt,
            detail: self.detail,
            producer: self.producer,
            due_ms: self.due_ms,
            group: self.group.to_string(),
            body: self.body(),
        }
    }

    /// The rollback's reason (`Rollback` records only).
    pub fn rollback_reason(&self) -> Option<RollbackReason> {
        (self.op == MessageOp::Rollback).then(|| RollbackReason::from_u8(self.detail)).flatten()
    }
}

/// What a poll needs of a message record to choose it: whether it is delivered, to which
/// group, of which topic (raw bytes); read off the header without checking the rest (a
/// consumer's decode checks every byte of what it is given).
pub(crate) fn route(bytes: &[u8]) -> Result<(bool, &[u8], &[u8]), &'static str> {
    let short = "message record cut short";
    let fixed = bytes.get(..8).ok_or(short)?;
    let (op, flags, group_len) =
        (MessageOp::from_u8(fixed[2]).ok_or("message record of an unknown op")?, fixed[3], fixed[6]);
    // The optional u64 fields before the group: a reference, a producer's id and sequence
    // number (two), a due time.
    let optional_u64s = usize::from(flags & FLAG_REFERENCE != 0)
        + 2 * usize::from(flags & FLAG_PRODUCER != 0)
        + usize::from(flags & FLAG_DUE != 0);
    let group_at = FIXED_BYTES + 8 * optional_u64s;
    let topic_at = group_at + group_len as usize;
    let group = bytes.get(group_at..topic_at).ok_or(short)?;
    let due = (flags & FLAG_DUE != 0).then_some(0);
    if flags & FLAG_BODY == 0 || !delivered(op, due) {
        return Ok((false, group, &[]));
    }
    let topic_len = *bytes.get(topic_at).ok_or(short)? as usize;
    Ok((true, group, bytes.get(topic_at + 1..topic_at + 1 + topic_len).ok_or(short)?))
}

fn delivered(op: MessageOp, due_ms: Option<u64>) -> bool {
    match op {
        MessageOp::Publish => due_ms.is_none(),
        MessageOp::Commit | MessageOp::Release | MessageOp::Replay => true,
        _ => false,
    }
}

fn group_needed(op: MessageOp) -> bool {
    matches!(op, MessageOp::Nack | MessageOp::DeadLetter | MessageOp::Replay | MessageOp::Drop)
}

fn group_allowed(op: MessageOp) -> bool {
    group_needed(op) || op == MessageOp::Release
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::error::InputError;
    use proptest::prelude::*;

    fn body() -> MessageBody {
        MessageBody {
            topic: "orders".into(),
            key: b"user-7".to_vec(),
            headers: vec![("trace".into(), b"abc".to_vec()), ("x".into(), Vec::new())],
            payload: vec![9; 300],
        }
    }

    fn samples() -> Vec<MessageRecord> {
        let mut publish = MessageRecord::new(MessageOp::Publish, 5);
        publish.body = Some(body());
        publish.producer = Some((77, 3));
        let mut delayed = publish.clone();
        delayed.due_ms = Some(9_000);
        let mut prepare = MessageRecord::new(MessageOp::Prepare, 6);
        prepare.body = Some(body());
        let mut commit = MessageRecord::new(MessageOp::Commit, 7);
        commit.reference = Some(41);
        commit.body = Some(body());
        let mut rollback = MessageRecord::new(MessageOp::Rollback, 8);
        rollback.reference = Some(41);
        rollback.detail = RollbackReason::ChecksExhausted as u8;
        let mut nack = commit.clone();
        nack.op = MessageOp::Nack;
        nack.group = "billing".into();
        nack.attempt = 2;
        nack.due_ms = Some(20_000);
        let mut release = nack.clone();
        release.op = MessageOp::Release;
        release.due_ms = None;
        let mut drop = MessageRecord::new(MessageOp::Drop, 9);
        drop.reference = Some(3);
        drop.group = "billing".into();
        vec![publish, delayed, prepare, commit, rollback, nack, release, drop]
    }

    #[test]
    fn every_op_round_trips_and_says_whether_it_is_delivered() {
        let delivered: Vec<bool> = samples()
            .iter()
            .map(|record| {
                let bytes = record.encode();
                let view = MessageView::decode(&bytes).unwrap();
                assert_eq!(&view.to_record(), record);
                view.is_delivered()
            })
            .collect();
        assert_eq!(delivered, [true, false, false, true, false, false, true, false]);
    }

    #[test]
    fn the_largest_message_record_is_what_the_bound_says() {
        let name = |c: char, len: usize| std::iter::repeat_n(c, len).collect::<String>();
        let mut record = MessageRecord::new(MessageOp::Publish, 1);
        let headers = (0..HEADERS_MAX).map(|i| (name('h', 1), vec![i as u8; HEADER_BYTES_MAX / HEADERS_MAX - 1]));
        let body = MessageBody {
            topic: name('t', TOPIC_BYTES_MAX),
            key: vec![1; KEY_BYTES_MAX],
            headers: headers.collect(),
            payload: vec![2; PAYLOAD_BYTES_MAX],
        };
        body.validate().unwrap();
        (record.producer, record.due_ms, record.body) = (Some((1, 2)), Some(3), Some(body));
        let bytes = record.encode();
        assert!(bytes.len() <= MESSAGE_RECORD_BYTES_MAX, "{} > {MESSAGE_RECORD_BYTES_MAX}", bytes.len());
        assert_eq!(MessageView::decode(&bytes).unwrap().to_record(), record);
    }

    #[test]
    fn bounds_are_checked_on_input_and_on_decode() {
        let mut big = body();
        big.payload = vec![0; PAYLOAD_BYTES_MAX + 1];
        assert!(matches!(big.validate(), Err(InputError::PayloadTooLarge { .. })));
        let mut trades = body();
        trades.topic = TRADES_TOPIC.into();
        assert_eq!(trades.validate(), Err(InputError::ReservedTopic));
        let mut spaced = body();
        spaced.topic = "a b".into();
        assert!(matches!(spaced.validate(), Err(InputError::BadTopic { .. })));
        let mut rollback = samples()[4].encode();
        rollback[5] = 9;
        assert!(MessageView::decode(&rollback).is_err(), "an unknown reason is refused");
        let mut nack = samples()[5].encode();
        nack[3] &= !FLAG_DUE;
        assert!(MessageView::decode(&nack).is_err());
    }

    proptest! {
        #[test]
        fn arbitrary_bytes_never_panic_and_what_decodes_round_trips(
            which in 0usize..8, cut in 0usize..400, flip in 0usize..400, bit in 0u8..8,
        ) {
            let mut bytes = samples()[which].encode();
            if flip < bytes.len() {
                bytes[flip] ^= 1 << bit;
            }
            bytes.truncate(cut.max(1));
            let routed = route(&bytes);
            if let Ok(view) = MessageView::decode(&bytes) {
                let (delivered, group, topic) = routed.expect("what decodes routes");
                prop_assert_eq!((delivered, group), (view.is_delivered(), view.group.as_bytes()));
                prop_assert!(!delivered || topic == view.topic.as_bytes());
                let record = view.to_record();
                prop_assert_eq!(MessageView::decode(&record.encode()).unwrap().to_record(), record);
            }
        }
    }
}
