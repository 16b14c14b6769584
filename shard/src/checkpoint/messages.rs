//! The checkpoint's entries of application messages: producers' windows, half messages,
//! scheduled messages, dead letters, the answers kept for repeats and the groups' floors of
//! nacks (kinds 13 to 18; `docs/FORMAT.md`). The decoder takes only what the encoder writes.

use crate::bytes::Reader;
use crate::index::Item;
use crate::message::RollbackReason;
use crate::message_body::{push_body, read_body, MessageBody};
use crate::message_book::{
    AnswerKey, DeadEntry, HalfEntry, MessageItem, MessageOutcome, MessageReceipt, ScheduledEntry, PRODUCER_WINDOW,
};
use crate::system_record::OffsetCommit;

pub(super) const KIND_PRODUCER: u8 = 13;
const KIND_HALF: u8 = 14;
const KIND_SCHEDULED: u8 = 15;
const KIND_DEAD: u8 = 16;
const KIND_ANSWER: u8 = 17;
pub(super) const KIND_NACK_FLOOR: u8 = 18;

fn u64s(out: &mut Vec<u8>, values: &[u64]) {
    values.iter().for_each(|v| out.extend_from_slice(&v.to_le_bytes()));
}

fn push_group(out: &mut Vec<u8>, group: &str) {
    out.push(group.len() as u8);
    out.extend_from_slice(group.as_bytes());
}

/// Appends a message entry.
pub(super) fn encode(item: &Item, out: &mut Vec<u8>) {
    let Item::Message(item) = item else { unreachable!("the checkpoint's codec encodes the other entries") };
    match item {
        MessageItem::Producer { id, last_ms, entries } => {
            out.push(KIND_PRODUCER);
            u64s(out, &[*id, *last_ms]);
            out.extend_from_slice(&(entries.len() as u16).to_le_bytes());
            for (sequence, offset, due) in entries {
                u64s(out, &[*sequence, *offset, *due]);
            }
        }
        MessageItem::Half(offset, half) => {
            out.push(KIND_HALF);
            u64s(out, &[*offset, half.prepared_ms, half.checked_ms]);
            out.push(half.checks);
            push_body(out, &half.body);
        }
        MessageItem::Scheduled(offset, entry) => {
            out.push(KIND_SCHEDULED);
            u64s(out, &[*offset, entry.due_ms]);
            out.push(entry.attempt);
            push_group(out, &entry.group);
            push_body(out, &entry.body);
        }
        MessageItem::Dead(offset, entry) => {
            out.push(KIND_DEAD);
            u64s(out, &[*offset, entry.at_ms, entry.origin]);
            out.push(entry.attempts);
            push_group(out, &entry.group);
            push_body(out, &entry.body);
        }
        MessageItem::Answer(key, receipt) => {
            out.push(KIND_ANSWER);
            let (tag, a, b) = match *key {
                AnswerKey::Half(offset) => (1, offset, 0),
                AnswerKey::Nack { group, offset } => (2, group, offset),
                AnswerKey::Dead { group, offset } => (3, group, offset),
            };
            out.push(tag);
            u64s(out, &[a, b, receipt.offset]);
            let (tag, small, value) = outcome_fields(receipt.outcome);
            out.extend_from_slice(&[tag, small]);
            u64s(out, &[value]);
        }
        MessageItem::NackFloor(group, floor) => {
            out.push(KIND_NACK_FLOOR);
            u64s(out, &[*group, *floor]);
        }
    }
}

fn outcome_fields(outcome: MessageOutcome) -> (u8, u8, u64) {
    match outcome {
        MessageOutcome::Published => (1, 0, 0),
        MessageOutcome::Scheduled { due_ms } => (2, 0, due_ms),
        MessageOutcome::Prepared => (3, 0, 0),
        MessageOutcome::Committed => (4, 0, 0),
        MessageOutcome::RolledBack(reason) => (5, reason as u8, 0),
        MessageOutcome::Checked { checks } => (6, checks, 0),
        MessageOutcome::Retrying { attempt, due_ms } => (7, attempt, due_ms),
        MessageOutcome::DeadLettered { attempts } => (8, attempts, 0),
        MessageOutcome::Released => (9, 0, 0),
        MessageOutcome::Replayed => (10, 0, 0),
        MessageOutcome::Dropped => (11, 0, 0),
    }
}

fn outcome_of(tag: u8, small: u8, value: u64) -> Result<MessageOutcome, &'static str> {
    let outcome = match tag {
        1 => MessageOutcome::Published,
        2 => MessageOutcome::Scheduled { due_ms: value },
        3 => MessageOutcome::Prepared,
        4 => MessageOutcome::Committed,
        5 => MessageOutcome::RolledBack(RollbackReason::from_u8(small).ok_or("checkpoint rollback of no reason")?),
        6 => MessageOutcome::Checked { checks: small },
        7 => MessageOutcome::Retrying { attempt: small, due_ms: value },
        8 => MessageOutcome::DeadLettered { attempts: small },
        9 => MessageOutcome::Released,
        10 => MessageOutcome::Replayed,
        11 => MessageOutcome::Dropped,
        _ => return Err("checkpoint answer of an unknown outcome"),
    };
    if outcome_fields(outcome) != (tag, small, value) {
        return Err("checkpoint answer with fields its outcome does not have");
    }
    Ok(outcome)
}

fn group(reader: &mut Reader<'_>, may_be_empty: bool) -> Result<String, &'static str> {
    let len = reader.u8()? as usize;
    let name = std::str::from_utf8(reader.take(len)?).map_err(|_| "checkpoint message group is not UTF-8")?;
    if !(OffsetCommit::valid_group(name) || (may_be_empty && name.is_empty())) {
        return Err("checkpoint message group is not valid");
    }
    Ok(name.to_string())
}

fn body(reader: &mut Reader<'_>) -> Result<MessageBody, &'static str> {
    Ok(read_body(reader)?.to_body())
}

/// Reads an entry of kind `kind` (13..=17), its kind byte already read.
pub(super) fn decode(kind: u8, reader: &mut Reader<'_>) -> Result<Item, &'static str> {
    let item = match kind {
        KIND_PRODUCER => {
            let (id, last_ms) = (reader.u64()?, reader.u64()?);
            let n = reader.u16()? as usize;
            if n > PRODUCER_WINDOW {
                return Err("checkpoint producer with more sequence numbers than its window");
            }
            let entries = (0..n)
                .map(|_| Ok((reader.u64()?, reader.u64()?, reader.u64()?)))
                .collect::<Result<_, &'static str>>()?;
            MessageItem::Producer { id, last_ms, entries }
        }
        KIND_HALF => {
            let (offset, prepared_ms, checked_ms) = (reader.u64()?, reader.u64()?, reader.u64()?);
            let checks = reader.u8()?;
            MessageItem::Half(offset, HalfEntry { body: body(reader)?, prepared_ms, checks, checked_ms })
        }
        KIND_SCHEDULED => {
            let (offset, due_ms, attempt) = (reader.u64()?, reader.u64()?, reader.u8()?);
            let group = group(reader, true)?;
            if (attempt == 0) != group.is_empty() {
                return Err("checkpoint scheduled message: a retry names its group, a delayed publish none");
            }
            MessageItem::Scheduled(offset, ScheduledEntry { body: body(reader)?, due_ms, group, attempt })
        }
        KIND_DEAD => {
            let (offset, at_ms, origin, attempts) = (reader.u64()?, reader.u64()?, reader.u64()?, reader.u8()?);
            let group = group(reader, false)?;
            if attempts == 0 {
                return Err("checkpoint dead letter of no attempt");
            }
            MessageItem::Dead(offset, DeadEntry { body: body(reader)?, group, attempts, at_ms, origin })
        }
        KIND_ANSWER => {
            let (tag, a, b, offset) = (reader.u8()?, reader.u64()?, reader.u64()?, reader.u64()?);
            let key = match (tag, b) {
                (1, 0) => AnswerKey::Half(a),
                (2, _) => AnswerKey::Nack { group: a, offset: b },
                (3, _) => AnswerKey::Dead { group: a, offset: b },
                _ => return Err("checkpoint answer of an unknown key"),
            };
            let (tag, small, value) = (reader.u8()?, reader.u8()?, reader.u64()?);
            let receipt = MessageReceipt { offset, outcome: outcome_of(tag, small, value)?, replayed: false };
            if !key.answers(receipt.outcome) {
                return Err("checkpoint answer of an outcome its key does not have");
            }
            MessageItem::Answer(key, receipt)
        }
        KIND_NACK_FLOOR => MessageItem::NackFloor(reader.u64()?, reader.u64()?),
        _ => return Err("checkpoint entry of an unknown kind"),
    };
    Ok(Item::Message(item))
}
