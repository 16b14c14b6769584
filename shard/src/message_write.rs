//! The write path of application messages: every step of `message.rs` checked against the
//! durable [`MessageBook`] and the writes in flight, queued in the log as one record, and
//! answered by the committer once durable. A refusal leaves no trace.
//!
//! Every write can be repeated: a producer's sequence number, a half message's resolution, a
//! group's nack of a delivered message and the end of a dead letter are each answered once
//! and then answered again from the book (`replayed`). A write whose key has a write in
//! flight waits until that one is durable and is checked afresh, so it sees its answer.

use std::collections::{BTreeMap, HashMap};
use std::rc::Rc;
use std::time::Duration;

use tradeshard_wal::disk::Disk;

use crate::error::{InputError, LogError, Refusal, TradeError};
use crate::in_flight::{Applied, InFlightMap};
use crate::message::{MessageBody, MessageOp, MessageRecord, MessageView, RollbackReason};
use crate::message_book::{
    group_hash, AnswerKey, MessageBook, MessageOutcome, MessagePolicy, MessageReceipt, SEQUENCE_NONE,
};
use crate::shard::Shard;
use crate::state::{Effect, EffectKeys, Inner, ShardReply, Waiter};
use crate::system_record::LogRecord;
use crate::trade::now_ms;
use crate::validate::validate_group;

/// Latest a delayed publish may be due, from now.
pub const DELAY_MAX: Duration = Duration::from_secs(40 * 24 * 3600);

/// A message write, as the engine hands it to the shard of its key or offset.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MessageCommand {
    /// Publishes `body`; with a producer's (id, sequence number), a repeat is stored once;
    /// with `due_ms`, it is delivered not before then.
    Publish { body: MessageBody, producer: Option<(u64, u64)>, due_ms: Option<u64> },
    /// Stores a half message: not delivered until committed; with a producer's (id, sequence
    /// number), a repeat is stored once.
    Prepare { body: MessageBody, producer: Option<(u64, u64)> },
    /// Commits (delivers) or rolls back the half message at offset `half`.
    Resolve { half: u64, commit: bool, reason: RollbackReason },
    /// Records the `checks`th check of the half message at `half`, which had no answer.
    Checked { half: u64, checks: u8 },
    /// `group` failed on the message delivered at `offset`: it comes back after the next
    /// delay of the policy, or goes to the group's dead letters after the last.
    Nack { group: String, offset: u64 },
    /// Delivers the scheduled record at `scheduled` (the shard's scheduler sends it when due).
    Release { scheduled: u64 },
    /// Sends the dead letter at `dead` back to `group` (`replay`) or drops it.
    EndDeadLetter { group: String, dead: u64, replay: bool },
}

/// A command waiting for a write in flight on its key, and whether its producer's order is
/// kept across refusals ([`Shard::message_in_order`]).
pub(crate) type ParkedMessage = (MessageCommand, ShardReply<MessageReceipt>, bool);

/// What a write in flight holds: producers' sequence numbers, halves, scheduled entries,
/// dead letters, nacks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum Key {
    Producer(u64, u64),
    Half(u64),
    Scheduled(u64),
    Dead(u64),
    Nack(u64, u64),
}

/// The message writes in flight.
#[derive(Default)]
pub(crate) struct InFlightMessages {
    /// The keys the writes in flight hold, each counted until the committer applies the
    /// write (`in_flight.rs`).
    keys: InFlightMap<Key, ()>,
    /// Which records the committer applied.
    applied: Applied,
    /// Bytes of bodies the writes in flight will add to the book, by seq.
    held: BTreeMap<u64, usize>,
    held_bytes: usize,
    parked: BTreeMap<u64, Vec<ParkedMessage>>,
    /// Per producer writing in order ([`Shard::message_in_order`]), the sequence number of a
    /// write the log's queue refused, and the refusal: writes of that producer numbered after
    /// it are refused alike until one numbered at or before it comes (the retry), so that a
    /// retried batch never finds a later message stored before an earlier one. At most
    /// `REFUSED_PRODUCERS_MAX` (then all are forgotten).
    refused_from: HashMap<u64, (u64, TradeError)>,
    /// Per producer whose numbers wrap, the highest number taken for its writes
    /// ([`unwrapped`]). At most `REFUSED_PRODUCERS_MAX` (then all are forgotten, and the
    /// book's highest serves alone).
    unwrapped_high: HashMap<u64, u64>,
}

/// Producers whose refusal at the queue is remembered ([`InFlightMessages::refused_from`]).
const REFUSED_PRODUCERS_MAX: usize = 1024;

impl InFlightMessages {
    /// Notes that the record at `seq`, and every one before it, is applied to the books: the
    /// keys its write held stop counting.
    pub(crate) fn note_applied(&mut self, seq: u64) {
        self.applied.note(seq);
    }

    /// Removes the keys of applied writes, if enough are held (`InFlightMap::sweep`).
    pub(crate) fn sweep(&mut self) {
        self.keys.sweep(self.applied);
    }

    /// The seq of the write in flight that holds `key`, if any.
    fn in_flight(&self, key: &Key) -> Option<u64> {
        self.keys.get(key, self.applied).map(|(_, seq)| seq)
    }

    /// Retires the durable write at `seq`; returns the commands that waited for it.
    pub(crate) fn retire(&mut self, seq: u64) -> Vec<ParkedMessage> {
        self.held_bytes -= self.held.remove(&seq).unwrap_or(0);
        self.parked.remove(&seq).unwrap_or_default()
    }

    /// The refusal a write of `producer` numbered `sequence` takes because an earlier write of
    /// the producer was refused at the log's queue; a write numbered at or before that one
    /// ends the refusals.
    fn refused_after_earlier(&mut self, producer: Option<(u64, u64)>) -> Option<TradeError> {
        let (id, sequence) = producer?;
        let (from, refusal) = self.refused_from.get(&id)?;
        if sequence > *from {
            return Some(refusal.clone());
        }
        self.refused_from.remove(&id);
        None
    }

    /// Notes that the log's queue refused the write of `producer` (if any) with `refusal`.
    fn note_refused(&mut self, producer: Option<(u64, u64)>, refusal: &TradeError) {
        let Some((id, sequence)) = producer else { return };
        if self.refused_from.len() >= REFUSED_PRODUCERS_MAX {
            self.refused_from.clear();
        }
        self.refused_from.insert(id, (sequence, refusal.clone()));
    }

    /// After the log failed: forgets everything and fails whoever waits.
    pub(crate) fn fail(&mut self, error: &TradeError) {
        self.refused_from.clear();
        self.unwrapped_high.clear();
        self.keys.clear();
        self.held.clear();
        self.held_bytes = 0;
        for (_, reply, _) in std::mem::take(&mut self.parked).into_values().flatten() {
            reply.send(Err(error.clone()));
        }
    }
}

/// What checking a command decided.
enum Decision {
    Answer(MessageReceipt),
    Write { record: MessageRecord, keys: Vec<Key>, held: usize },
}

fn replayed(offset: u64, outcome: MessageOutcome) -> MessageReceipt {
    MessageReceipt { offset, outcome, replayed: true }
}

/// Checks `command` against the durable book (the keys in flight are checked before).
fn check(book: &MessageBook, command: &MessageCommand) -> Result<Decision, TradeError> {
    let now = now_ms();
    let mut record = MessageRecord::new(MessageOp::Publish, now);
    let write = |record, keys, held| Ok(Decision::Write { record, keys, held });
    match command {
        MessageCommand::Publish { body, producer, due_ms } => {
            body.validate()?;
            let due_ms = due_ms.filter(|due| *due > now);
            if due_ms.is_some_and(|due| due - now > DELAY_MAX.as_millis() as u64) {
                return Err(InputError::DelayTooLong { max_ms: DELAY_MAX.as_millis() as u64 }.into());
            }
            let keys = match producer_seen(book, *producer)? {
                Some((offset, 0)) => return Ok(Decision::Answer(replayed(offset, MessageOutcome::Published))),
                Some((offset, due_ms)) => {
                    return Ok(Decision::Answer(replayed(offset, MessageOutcome::Scheduled { due_ms })));
                }
                None => producer.iter().map(|(id, sequence)| Key::Producer(*id, *sequence)).collect(),
            };
            (record.producer, record.due_ms, record.body) = (*producer, due_ms, Some(body.clone()));
            let held = due_ms.map_or(0, |_| body.held_bytes());
            write(record, keys, held)
        }
        MessageCommand::Prepare { body, producer } => {
            body.validate()?;
            let keys = match producer_seen(book, *producer)? {
                Some((offset, _)) => return Ok(Decision::Answer(replayed(offset, MessageOutcome::Prepared))),
                None => producer.iter().map(|(id, sequence)| Key::Producer(*id, *sequence)).collect(),
            };
            (record.op, record.producer, record.body) = (MessageOp::Prepare, *producer, Some(body.clone()));
            write(record, keys, body.held_bytes())
        }
        MessageCommand::Resolve { half, commit, reason } => {
            if let Some(answer) = book.answer_of(AnswerKey::Half(*half)) {
                return match (answer.outcome, commit) {
                    (MessageOutcome::Committed, true) | (MessageOutcome::RolledBack(_), false) => {
                        Ok(Decision::Answer(MessageReceipt { replayed: true, ..answer }))
                    }
                    (outcome, _) => Err(Refusal::Resolved { offset: *half, outcome: outcome_name(outcome) }.into()),
                };
            }
            let entry = book.half(*half).ok_or(Refusal::UnknownMessage { offset: *half })?;
            record.reference = Some(*half);
            match commit {
                true => (record.op, record.body) = (MessageOp::Commit, Some(entry.body.clone())),
                false => (record.op, record.detail) = (MessageOp::Rollback, *reason as u8),
            }
            write(record, vec![Key::Half(*half)], 0)
        }
        MessageCommand::Checked { half, checks } => {
            if let Some(answer) = book.answer_of(AnswerKey::Half(*half)) {
                return Err(Refusal::Resolved { offset: *half, outcome: outcome_name(answer.outcome) }.into());
            }
            let entry = book.half(*half).ok_or(Refusal::UnknownMessage { offset: *half })?;
            if *checks <= entry.checks {
                return Ok(Decision::Answer(replayed(*half, MessageOutcome::Checked { checks: entry.checks })));
            }
            (record.op, record.reference, record.detail) = (MessageOp::Checked, Some(*half), *checks);
            write(record, vec![Key::Half(*half)], 0)
        }
        MessageCommand::Nack { .. } => unreachable!("a nack is checked once its message is read"),
        MessageCommand::Release { scheduled } => {
            let entry = book.scheduled(*scheduled).ok_or(Refusal::UnknownMessage { offset: *scheduled })?;
            (record.op, record.reference, record.attempt) = (MessageOp::Release, Some(*scheduled), entry.attempt);
            (record.group, record.body) = (entry.group.clone(), Some(entry.body.clone()));
            write(record, vec![Key::Scheduled(*scheduled)], 0)
        }
        MessageCommand::EndDeadLetter { group, dead, replay } => {
            if let Some(answer) = book.answer_of(AnswerKey::Dead { group: group_hash(group), offset: *dead }) {
                return match (answer.outcome, replay) {
                    (MessageOutcome::Replayed, true) | (MessageOutcome::Dropped, false) => {
                        Ok(Decision::Answer(MessageReceipt { replayed: true, ..answer }))
                    }
                    (outcome, _) => Err(Refusal::Resolved { offset: *dead, outcome: outcome_name(outcome) }.into()),
                };
            }
            let entry = book.dead(*dead).filter(|entry| entry.group == *group);
            let entry = entry.ok_or(Refusal::UnknownMessage { offset: *dead })?;
            (record.reference, record.group) = (Some(*dead), group.clone());
            match replay {
                true => (record.op, record.body) = (MessageOp::Replay, Some(entry.body.clone())),
                false => record.op = MessageOp::Drop,
            }
            write(record, vec![Key::Dead(*dead)], 0)
        }
    }
}

/// Refuses a write that would take the bodies held past the policy's bound, counting those
/// the writes in flight will add.
fn within_budget(
    checked: Result<Decision, TradeError>,
    book: &MessageBook,
    in_flight: &InFlightMessages,
    policy: &MessagePolicy,
) -> Result<Decision, TradeError> {
    match checked? {
        Decision::Write { held, .. }
            if held > 0 && book.held_bytes() + in_flight.held_bytes + held > policy.held_bytes_max =>
        {
            Err(Refusal::MessagesFull { held: book.held_bytes() + in_flight.held_bytes, max: policy.held_bytes_max }
                .into())
        }
        checked => Ok(checked),
    }
}

/// What a producer's sequence number stored, if it did; a sequence number too old to tell,
/// or `u64::MAX`, is refused.
fn producer_seen(book: &MessageBook, producer: Option<(u64, u64)>) -> Result<Option<(u64, u64)>, TradeError> {
    let Some((id, sequence)) = producer else { return Ok(None) };
    if sequence == SEQUENCE_NONE {
        return Err(InputError::BadSequence.into());
    }
    match book.producer(id).map(|window| window.lookup(sequence)) {
        Some(Ok(stored)) => Ok(stored),
        Some(Err(())) => Err(Refusal::StaleSequence { producer: id, sequence }.into()),
        None => Ok(None),
    }
}

/// Checks a nack of the message `delivered` (read at `offset`) for `group`.
fn check_nack(
    book: &MessageBook,
    policy: &MessagePolicy,
    group: &str,
    offset: u64,
    delivered: &MessageView<'_>,
) -> Result<Decision, TradeError> {
    let key = AnswerKey::Nack { group: group_hash(group), offset };
    if let Some(answer) = book.answer_of(key) {
        return Ok(Decision::Answer(MessageReceipt { replayed: true, ..answer }));
    }
    if book.nack_too_old(group_hash(group), offset) {
        return Err(Refusal::NackTooOld { offset, group: group.to_string() }.into());
    }
    if !delivered.is_delivered() || !(delivered.group.is_empty() || delivered.group == group) {
        return Err(Refusal::NotDelivered { offset, group: group.to_string() }.into());
    }
    let now = now_ms();
    let attempt = delivered.attempt.saturating_add(1);
    let mut record = MessageRecord::new(MessageOp::DeadLetter, now);
    (record.reference, record.attempt, record.group) = (Some(offset), attempt, group.to_string());
    record.body = delivered.body();
    if let Some(delay) = policy.delay_of(attempt) {
        (record.op, record.due_ms) = (MessageOp::Nack, Some(now + delay.as_millis() as u64));
    }
    let held = record.body.as_ref().map_or(0, MessageBody::held_bytes);
    Ok(Decision::Write { record, keys: vec![Key::Nack(group_hash(group), offset)], held })
}

fn outcome_name(outcome: MessageOutcome) -> &'static str {
    match outcome {
        MessageOutcome::Committed => "committed",
        MessageOutcome::RolledBack(_) => "rolled back",
        MessageOutcome::Replayed => "replayed",
        MessageOutcome::Dropped => "dropped",
        _ => "resolved",
    }
}

impl<D: Disk> Shard<D> {
    /// Makes a message write durable; `reply` is answered once it is, or with why not. A
    /// producer's message the log's queue refused is the caller's to send again or not; its
    /// later messages are stored meanwhile.
    pub fn message(&self, command: MessageCommand, reply: ShardReply<MessageReceipt>) {
        message_on(&self.inner, command, reply, false);
    }

    /// [`message`](Self::message) for a producer that sends its messages again from the first
    /// one a full queue refused (a Kafka client's batches, several in flight): once one is
    /// refused at the queue, the producer's later ones are refused too, until the refused one
    /// comes again, so that none is stored before an earlier one.
    pub fn message_in_order(&self, command: MessageCommand, reply: ShardReply<MessageReceipt>) {
        message_on(&self.inner, command, reply, true);
    }

    /// The durable message state.
    pub fn with_messages<T>(&self, read: impl FnOnce(&MessageBook) -> T) -> T {
        read(self.inner.index.borrow().messages())
    }
}

/// [`Shard::message`] on the shard's state.
pub(crate) fn message_on<D: Disk>(
    inner: &Rc<Inner<D>>,
    command: MessageCommand,
    reply: ShardReply<MessageReceipt>,
    in_order: bool,
) {
    if let MessageCommand::Nack { group, offset } = &command {
        if let Err(error) = validate_group(group) {
            return reply.send(Err(error.into()));
        }
        // The nacked message is read from the log: the shard is the one to say what it was.
        let (inner, group, offset) = (inner.clone(), group.clone(), *offset);
        let read = async move {
            let (first, end) = (inner.wal.first_seq(), inner.wal.durable_end());
            if offset < first || offset >= end {
                return reply.send(Err(Refusal::OffsetOutOfRange { offset, first, end }.into()));
            }
            let mut reader = match inner.wal.reader(offset) {
                Ok(reader) => reader,
                Err(error) => return reply.send(Err(error.into())),
            };
            match reader.next().await {
                Ok(Some((seq, bytes))) if seq == offset => nack_read(&inner, group, offset, bytes, reply),
                Ok(_) => reply.send(Err(Refusal::NotDelivered { offset, group }.into())),
                Err(error) => reply.send(Err(error.into())),
            }
        };
        glommio::spawn_local(read).detach();
        return;
    }
    let mut accepted = inner.accepted.borrow_mut();
    if let Some(error) = refused_now(&accepted.failed, accepted.closing) {
        return reply.send(Err(error));
    }
    let command = unwrapped(inner.index.borrow().messages(), &mut accepted.messages, command);
    if let Some(refusal) = accepted.messages.refused_after_earlier(producer_of(&command).filter(|_| in_order)) {
        return reply.send(Err(refusal));
    }
    if let Some(seq) = in_flight_key(&accepted.messages, &command) {
        return accepted.messages.parked.entry(seq).or_default().push((command, reply, in_order));
    }
    let index = inner.index.borrow();
    let policy = inner.checkpoints.upkeep.messages;
    let checked = check(index.messages(), &command);
    let checked = within_budget(checked, index.messages(), &accepted.messages, &policy);
    drop(index);
    enqueue(inner, &mut accepted, checked, reply, in_order);
}

/// The second half of a nack, once the message is read.
fn nack_read<D: Disk>(
    inner: &Rc<Inner<D>>,
    group: String,
    offset: u64,
    bytes: &[u8],
    reply: ShardReply<MessageReceipt>,
) {
    let mut accepted = inner.accepted.borrow_mut();
    if let Some(error) = refused_now(&accepted.failed, accepted.closing) {
        return reply.send(Err(error));
    }
    let key = Key::Nack(group_hash(&group), offset);
    if let Some(seq) = accepted.messages.in_flight(&key) {
        let command = MessageCommand::Nack { group, offset };
        return accepted.messages.parked.entry(seq).or_default().push((command, reply, false));
    }
    let Ok(view) = MessageView::decode(bytes) else {
        return reply.send(Err(Refusal::NotDelivered { offset, group }.into()));
    };
    let index = inner.index.borrow();
    let policy = inner.checkpoints.upkeep.messages;
    let checked = check_nack(index.messages(), &policy, &group, offset, &view);
    let checked = within_budget(checked, index.messages(), &accepted.messages, &policy);
    drop(index);
    enqueue(inner, &mut accepted, checked, reply, false);
}

fn refused_now(failed: &Option<TradeError>, closing: bool) -> Option<TradeError> {
    match (failed, closing) {
        (Some(failure), _) => Some(failure.clone()),
        (None, true) => Some(TradeError::Log(LogError::Closed)),
        (None, false) => None,
    }
}

/// `command` with a wrapping sequence number ([`crate::SEQUENCE_WRAPS`]) replaced by the one
/// it stands for, from here on: in the checks, the keys in flight and the record written. The
/// producer's highest so far is the greater of the book's and of the numbers taken for its
/// writes since, which may not be durable yet.
fn unwrapped(book: &MessageBook, in_flight: &mut InFlightMessages, mut command: MessageCommand) -> MessageCommand {
    if let MessageCommand::Publish { producer: Some((id, sequence)), .. }
    | MessageCommand::Prepare { producer: Some((id, sequence)), .. } = &mut command
    {
        // No sequence (refused by the check) is not a number to remember.
        if *sequence & crate::SEQUENCE_WRAPS == 0 || *sequence == SEQUENCE_NONE {
            return command;
        }
        let durable = book.producer(*id).map_or(0, |window| window.high);
        let taken = in_flight.unwrapped_high.get(id).copied().unwrap_or(0);
        *sequence = crate::message_book::unwrap_sequence(*sequence, durable.max(taken));
        if in_flight.unwrapped_high.len() >= REFUSED_PRODUCERS_MAX && !in_flight.unwrapped_high.contains_key(id) {
            // Those the book has caught up with tell nothing more; if every one is still ahead
            // of it, all are forgotten.
            let book_high = |id: &u64| book.producer(*id).map_or(0, |window| window.high);
            in_flight.unwrapped_high.retain(|id, high| *high > book_high(id));
            if in_flight.unwrapped_high.len() >= REFUSED_PRODUCERS_MAX {
                in_flight.unwrapped_high.clear();
            }
        }
        let high = in_flight.unwrapped_high.entry(*id).or_default();
        *high = (*high).max(*sequence);
    }
    command
}

/// The producer and sequence number of a publish or prepare made by a producer.
fn producer_of(command: &MessageCommand) -> Option<(u64, u64)> {
    match command {
        MessageCommand::Publish { producer, .. } | MessageCommand::Prepare { producer, .. } => *producer,
        _ => None,
    }
}

/// The seq of a write in flight on the command's key, if there is one.
fn in_flight_key(in_flight: &InFlightMessages, command: &MessageCommand) -> Option<u64> {
    let key = match command {
        MessageCommand::Publish { producer: Some((id, sequence)), .. }
        | MessageCommand::Prepare { producer: Some((id, sequence)), .. } => Key::Producer(*id, *sequence),
        MessageCommand::Resolve { half, .. } | MessageCommand::Checked { half, .. } => Key::Half(*half),
        MessageCommand::Release { scheduled } => Key::Scheduled(*scheduled),
        MessageCommand::EndDeadLetter { dead, .. } => Key::Dead(*dead),
        _ => return None,
    };
    in_flight.in_flight(&key)
}

fn enqueue<D: Disk>(
    inner: &Inner<D>,
    accepted: &mut crate::state::Accepted,
    checked: Result<Decision, TradeError>,
    reply: ShardReply<MessageReceipt>,
    in_order: bool,
) {
    let (record, keys, held) = match checked {
        Ok(Decision::Answer(receipt)) => return reply.send(Ok(receipt)),
        Ok(Decision::Write { record, keys, held }) => (record, keys, held),
        Err(error) => return reply.send(Err(error)),
    };
    let ticket = match inner.wal.enqueue(&record.encode()) {
        Ok(ticket) => ticket,
        Err(error) => {
            let error = TradeError::from(error);
            if in_order && matches!(error, TradeError::Log(LogError::Backpressure { .. })) {
                accepted.messages.note_refused(record.producer, &error);
            }
            return reply.send(Err(error));
        }
    };
    let seq = ticket.seq();
    let in_flight = &mut accepted.messages;
    for key in keys {
        in_flight.keys.insert(key, (), seq);
    }
    if held > 0 {
        in_flight.held.insert(seq, held);
        in_flight.held_bytes += held;
    }
    let record = LogRecord::Message(record);
    let (keys, waiter) = (EffectKeys::None, Waiter::Message(reply));
    accepted.push(Effect { seq, ticket: Some(ticket), record, keys, waiter });
}
