//! A shard's durable state of application messages, changed only by message records
//! (`message.rs`), by the committer and by replay through the one [`MessageBook::apply`]:
//! the idempotent producers' recent sequence numbers, the half messages not yet resolved, the
//! messages scheduled (delayed publishes and retries), the dead letters, and the answers of
//! recent resolutions, so that a repeat answers the original.
//!
//! Everything here is bounded by configuration, not by history: the bodies held (halves,
//! scheduled, dead) by [`MessagePolicy::held_bytes_max`], the producers by
//! [`PRODUCERS_MAX`] (the least recently used goes), each producer's window by
//! [`PRODUCER_WINDOW`], the answers kept by [`ANSWERS_KEPT`] of resolutions and as many of
//! nacks (oldest first). A nack's answer that went leaves its group a floor: a nack of a
//! delivery below it can no longer tell whether it repeats one, and is refused rather than
//! risk a second retry.

use std::collections::{BTreeMap, BTreeSet, HashMap, VecDeque};
use std::time::Duration;

use crate::message::{MessageBody, MessageOp, MessageRecord, RollbackReason};

/// Producers a shard remembers; a new one past this replaces the least recently used.
pub const PRODUCERS_MAX: usize = 1024;
/// Sequence numbers of one producer a shard remembers, back from its highest (a retry of an
/// older one is refused: whether it was stored can no longer be told).
/// Kafka keeps a producer's last five batches; this bounds a producer's messages in flight to
/// one partition that can still be retried.
pub const PRODUCER_WINDOW: usize = 128;
/// Answers a shard keeps for repeats: of half messages' resolutions and dead letters' ends,
/// and as many again of nacks.
pub const ANSWERS_KEPT: usize = 65_536;
/// Most retries a policy may schedule.
pub const RETRIES_MAX: usize = 32;

/// How a shard retries and what it holds of messages.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MessagePolicy {
    /// The delay before each retry: attempt `n` (1-based) waits `retry_delays[n - 1]`. After
    /// `retries` retries a failed message goes to its group's dead letters.
    pub retry_delays: [Duration; RETRIES_MAX],
    pub retries: u8,
    /// Bytes of message bodies the shard holds in memory: half messages, scheduled ones and
    /// dead letters. A prepare, a delayed publish or a nack past it is refused.
    pub held_bytes_max: usize,
}

impl Default for MessagePolicy {
    /// RocketMQ's schedule of consumer retries: 16 attempts from 10 s to 2 h.
    fn default() -> Self {
        let minutes = |m: u64| Duration::from_secs(60 * m);
        let mut retry_delays = [Duration::from_secs(7200); RETRIES_MAX];
        let schedule = [
            Duration::from_secs(10),
            Duration::from_secs(30),
            minutes(1),
            minutes(2),
            minutes(3),
            minutes(4),
            minutes(5),
            minutes(6),
            minutes(7),
            minutes(8),
            minutes(9),
            minutes(10),
            minutes(20),
            minutes(30),
            minutes(60),
            minutes(120),
        ];
        retry_delays[..schedule.len()].copy_from_slice(&schedule);
        MessagePolicy { retry_delays, retries: schedule.len() as u8, held_bytes_max: 64 << 20 }
    }
}

impl MessagePolicy {
    /// The delay before retry `attempt` (1-based), or `None` past the last.
    pub fn delay_of(&self, attempt: u8) -> Option<Duration> {
        (attempt >= 1 && attempt <= self.retries.min(RETRIES_MAX as u8))
            .then(|| self.retry_delays[attempt as usize - 1])
    }
}

/// What a message write did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MessageOutcome {
    /// Stored, and delivered where it lies.
    Published,
    /// Stored, delivered once due.
    Scheduled {
        due_ms: u64,
    },
    /// A half message stored: invisible until committed.
    Prepared,
    Committed,
    RolledBack(RollbackReason),
    /// A check without an answer, the `checks`th.
    Checked {
        checks: u8,
    },
    /// Failed for its group: delivered to it again as attempt `attempt` once due.
    Retrying {
        attempt: u8,
        due_ms: u64,
    },
    /// Failed its last attempt: set aside in its group's dead letters.
    DeadLettered {
        attempts: u8,
    },
    /// A scheduled message came due and was delivered.
    Released,
    /// A dead letter sent back to its group.
    Replayed,
    /// A dead letter dropped.
    Dropped,
}

/// The answer of a message write: the offset of the record it wrote (a published or
/// prepared message's id within its partition), and what it did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MessageReceipt {
    pub offset: u64,
    pub outcome: MessageOutcome,
    /// True when the write repeated one already made: nothing new was written.
    pub replayed: bool,
}

/// A half message waiting for its commit or rollback.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HalfEntry {
    pub body: MessageBody,
    pub prepared_ms: u64,
    /// Checks made without an answer, and when the last was made.
    pub checks: u8,
    pub checked_ms: u64,
}

/// A message to be delivered when due: a delayed publish (to every group), or a retry (to
/// one group).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ScheduledEntry {
    pub body: MessageBody,
    pub due_ms: u64,
    /// Empty: every group.
    pub group: String,
    pub attempt: u8,
}

/// A message that failed its last attempt for its group.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeadEntry {
    pub body: MessageBody,
    pub group: String,
    pub attempts: u8,
    pub at_ms: u64,
    /// The offset it was last delivered at.
    pub origin: u64,
}

/// What a repeat is keyed by: the resolution of a half message, a group's nack of a delivered
/// message, the end of a group's dead letter (groups by `group_hash`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum AnswerKey {
    Half(u64),
    Nack { group: u64, offset: u64 },
    Dead { group: u64, offset: u64 },
}

impl AnswerKey {
    /// Whether `outcome` is one a write under this key answers.
    pub(crate) fn answers(&self, outcome: MessageOutcome) -> bool {
        use MessageOutcome::*;
        match self {
            AnswerKey::Half(_) => matches!(outcome, Committed | RolledBack(_)),
            AnswerKey::Nack { .. } => matches!(outcome, Retrying { .. } | DeadLettered { .. }),
            AnswerKey::Dead { .. } => matches!(outcome, Replayed | Dropped),
        }
    }
}

/// A sequence number no producer may use: it marks an empty slot.
pub const SEQUENCE_NONE: u64 = u64::MAX;

/// Set on a [`MessageCommand`](crate::MessageCommand)'s sequence number: the rest is a number
/// that wraps, as a Kafka producer's do (from 1 to 2^31, the record's sequence plus one, read
/// modulo 2^31); the shard takes the number nearest the producer's highest so far (written or
/// in flight) that agrees with it modulo 2^31 ([`unwrap_sequence`]), so a producer goes on past
/// the wrap and a repeat across it is still found. The record written holds the number taken.
/// The engine refuses an embedder's own numbers from 2^63 on.
pub const SEQUENCE_WRAPS: u64 = 1 << 63;

/// The period of wrapping sequence numbers ([`SEQUENCE_WRAPS`]).
const WRAP_PERIOD: u64 = 1 << 31;

/// The sequence number `sequence` stands for, given the producer's highest so far (`high`, 0
/// for none): itself, or for a wrapping one, the number nearest `high` that agrees with it
/// modulo 2^31 (at least 1).
pub(crate) fn unwrap_sequence(sequence: u64, high: u64) -> u64 {
    if sequence & SEQUENCE_WRAPS == 0 || sequence == SEQUENCE_NONE {
        return sequence;
    }
    let wrapped = sequence & (WRAP_PERIOD - 1);
    let base = high - high % WRAP_PERIOD;
    [base.checked_sub(WRAP_PERIOD), Some(base), base.checked_add(WRAP_PERIOD)]
        .into_iter()
        .flatten()
        .filter_map(|start| start.checked_add(wrapped))
        .filter(|candidate| *candidate >= 1)
        .min_by_key(|candidate| candidate.abs_diff(high))
        .unwrap_or(WRAP_PERIOD)
}

/// What a producer's sequence number stored: the record's offset, and its due time (0: none).
pub(crate) type Stored = (u64, u64);

/// An idempotent producer's recent sequence numbers and what each stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct ProducerWindow {
    /// (seq, offset, due time) in slot `seq % PRODUCER_WINDOW`; a slot keeps the highest
    /// sequence number that came to it.
    slots: Box<[(u64, u64, u64); PRODUCER_WINDOW]>,
    pub high: u64,
    pub last_ms: u64,
}

impl ProducerWindow {
    fn new() -> ProducerWindow {
        ProducerWindow { slots: Box::new([(SEQUENCE_NONE, 0, 0); PRODUCER_WINDOW]), high: 0, last_ms: 0 }
    }

    /// What `seq` stored: `Ok(Some(stored))`, `Ok(None)` if it never was, `Err(())` if it is
    /// too old to tell.
    pub(crate) fn lookup(&self, seq: u64) -> Result<Option<Stored>, ()> {
        let slot = self.slots[seq as usize % PRODUCER_WINDOW];
        if slot.0 == seq {
            return Ok(Some((slot.1, slot.2)));
        }
        if self.high >= PRODUCER_WINDOW as u64 && seq <= self.high - PRODUCER_WINDOW as u64 {
            return Err(());
        }
        Ok(None)
    }

    fn note(&mut self, seq: u64, (offset, due): Stored, at_ms: u64) {
        let slot = &mut self.slots[seq as usize % PRODUCER_WINDOW];
        if slot.0 == SEQUENCE_NONE || slot.0 < seq {
            *slot = (seq, offset, due);
        }
        self.high = self.high.max(seq);
        self.last_ms = self.last_ms.max(at_ms);
    }

    /// The slots in use, for a checkpoint.
    pub(crate) fn entries(&self) -> impl Iterator<Item = (u64, u64, u64)> + '_ {
        self.slots.iter().copied().filter(|(seq, _, _)| *seq != SEQUENCE_NONE)
    }
}

/// One entry of the book, as a checkpoint holds it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum MessageItem {
    Producer {
        id: u64,
        last_ms: u64,
        entries: Vec<(u64, u64, u64)>,
    },
    Half(u64, HalfEntry),
    Scheduled(u64, ScheduledEntry),
    Dead(u64, DeadEntry),
    Answer(AnswerKey, MessageReceipt),
    /// A group's nacks below this delivered offset can no longer tell whether they repeat one.
    NackFloor(u64, u64),
}

/// The durable message state of one shard.
#[derive(Debug, Clone, Default)]
pub struct MessageBook {
    producers: HashMap<u64, ProducerWindow>,
    /// (last use, id) of every producer: the least recently used first.
    producers_by_use: BTreeSet<(u64, u64)>,
    halves: BTreeMap<u64, HalfEntry>,
    scheduled: BTreeMap<u64, ScheduledEntry>,
    /// (due time, offset) of every scheduled entry: the next one due first.
    due: BTreeSet<(u64, u64)>,
    dead: BTreeMap<u64, DeadEntry>,
    answers: HashMap<AnswerKey, MessageReceipt>,
    /// The keys of the answers kept, oldest first: resolutions and dead letters' ends; nacks.
    answer_order: VecDeque<AnswerKey>,
    nack_order: VecDeque<AnswerKey>,
    /// Per group: nacks of deliveries below this offset can no longer tell.
    nack_floors: HashMap<u64, u64>,
    held_bytes: usize,
}

/// A hash of a group's name, the key of its answers.
pub(crate) fn group_hash(group: &str) -> u64 {
    xxhash_rust::xxh3::xxh3_64(group.as_bytes())
}

impl MessageBook {
    /// Applies a durable message record at `seq`; an error means the record cannot follow
    /// the state (a log this build did not write).
    pub(crate) fn apply(&mut self, seq: u64, record: &MessageRecord) -> Result<MessageReceipt, &'static str> {
        let receipt = |outcome| MessageReceipt { offset: seq, outcome, replayed: false };
        let body = || record.body.clone().ok_or("a message record without its message");
        let reference = record.reference.unwrap_or(u64::MAX);
        Ok(match record.op {
            MessageOp::Publish => {
                let body = body()?;
                if let Some((id, sequence)) = record.producer {
                    self.note_producer(id, sequence, (seq, record.due_ms.unwrap_or(0)), record.at_ms);
                }
                match record.due_ms {
                    None => receipt(MessageOutcome::Published),
                    Some(due_ms) => {
                        self.schedule(seq, ScheduledEntry { body, due_ms, group: String::new(), attempt: 0 });
                        receipt(MessageOutcome::Scheduled { due_ms })
                    }
                }
            }
            MessageOp::Prepare => {
                let entry = HalfEntry { body: body()?, prepared_ms: record.at_ms, checks: 0, checked_ms: 0 };
                if let Some((id, sequence)) = record.producer {
                    self.note_producer(id, sequence, (seq, 0), record.at_ms);
                }
                self.held_bytes += entry.body.held_bytes();
                self.halves.insert(seq, entry);
                receipt(MessageOutcome::Prepared)
            }
            MessageOp::Commit | MessageOp::Rollback => {
                let outcome = match record.op {
                    MessageOp::Commit => MessageOutcome::Committed,
                    _ => MessageOutcome::RolledBack(
                        RollbackReason::from_u8(record.detail).ok_or("a rollback of no reason")?,
                    ),
                };
                let half = self.halves.remove(&reference).ok_or("a resolution of no half message")?;
                self.held_bytes -= half.body.held_bytes();
                self.answer(AnswerKey::Half(reference), receipt(outcome))
            }
            MessageOp::Checked => {
                let half = self.halves.get_mut(&reference).ok_or("a check of no half message")?;
                (half.checks, half.checked_ms) = (record.detail, record.at_ms);
                receipt(MessageOutcome::Checked { checks: record.detail })
            }
            MessageOp::Nack => {
                let due_ms = record.due_ms.ok_or("a nack without its due time")?;
                let entry =
                    ScheduledEntry { body: body()?, due_ms, group: record.group.clone(), attempt: record.attempt };
                self.schedule(seq, entry);
                let key = AnswerKey::Nack { group: group_hash(&record.group), offset: reference };
                self.answer(key, receipt(MessageOutcome::Retrying { attempt: record.attempt, due_ms }))
            }
            MessageOp::Release => {
                let entry = self.scheduled.remove(&reference).ok_or("a release of nothing scheduled")?;
                self.due.remove(&(entry.due_ms, reference));
                self.held_bytes -= entry.body.held_bytes();
                receipt(MessageOutcome::Released)
            }
            MessageOp::DeadLetter => {
                let entry = DeadEntry {
                    body: body()?,
                    group: record.group.clone(),
                    attempts: record.attempt,
                    at_ms: record.at_ms,
                    origin: reference,
                };
                self.held_bytes += entry.body.held_bytes();
                self.dead.insert(seq, entry);
                let key = AnswerKey::Nack { group: group_hash(&record.group), offset: reference };
                self.answer(key, receipt(MessageOutcome::DeadLettered { attempts: record.attempt }))
            }
            MessageOp::Replay | MessageOp::Drop => {
                let dead = self.dead.get(&reference).ok_or("the end of no dead letter")?;
                if dead.group != record.group {
                    return Err("the end of another group's dead letter");
                }
                let dead = self.dead.remove(&reference).expect("checked");
                self.held_bytes -= dead.body.held_bytes();
                let outcome = match record.op {
                    MessageOp::Replay => MessageOutcome::Replayed,
                    _ => MessageOutcome::Dropped,
                };
                let key = AnswerKey::Dead { group: group_hash(&record.group), offset: reference };
                self.answer(key, receipt(outcome))
            }
        })
    }

    fn schedule(&mut self, seq: u64, entry: ScheduledEntry) {
        self.held_bytes += entry.body.held_bytes();
        self.due.insert((entry.due_ms, seq));
        self.scheduled.insert(seq, entry);
    }

    fn note_producer(&mut self, id: u64, sequence: u64, stored: Stored, at_ms: u64) {
        match self.producers.get_mut(&id) {
            Some(window) => {
                self.producers_by_use.remove(&(window.last_ms, id));
                window.note(sequence, stored, at_ms);
                self.producers_by_use.insert((window.last_ms, id));
            }
            None => {
                if self.producers.len() >= PRODUCERS_MAX {
                    let (_, oldest) = self.producers_by_use.pop_first().expect("full");
                    self.producers.remove(&oldest);
                }
                let mut window = ProducerWindow::new();
                window.note(sequence, stored, at_ms);
                self.producers_by_use.insert((window.last_ms, id));
                self.producers.insert(id, window);
            }
        }
    }

    fn answer(&mut self, key: AnswerKey, receipt: MessageReceipt) -> MessageReceipt {
        let order = match key {
            AnswerKey::Nack { .. } => &mut self.nack_order,
            _ => &mut self.answer_order,
        };
        if self.answers.insert(key, receipt).is_none() {
            order.push_back(key);
        }
        while order.len() > ANSWERS_KEPT {
            let oldest = order.pop_front().expect("over the bound");
            self.answers.remove(&oldest);
            if let AnswerKey::Nack { group, offset } = oldest {
                let floor = self.nack_floors.entry(group).or_insert(0);
                *floor = (*floor).max(offset + 1);
            }
        }
        receipt
    }

    /// Forgets the floors at or below `first` (the log's first offset, which retention moves
    /// on): they refuse only nacks of offsets the log no longer holds, which are refused as out
    /// of range anyway, and a floor per group ever nacked would otherwise stay forever.
    pub(crate) fn forget_nack_floors_below(&mut self, first: u64) {
        self.nack_floors.retain(|_, floor| *floor > first);
    }

    /// Whether a nack by `group` (its hash) of the delivery at `offset` can no longer tell
    /// whether it repeats one whose answer went.
    pub(crate) fn nack_too_old(&self, group: u64, offset: u64) -> bool {
        self.nack_floors.get(&group).is_some_and(|floor| offset < *floor)
    }

    pub(crate) fn producer(&self, id: u64) -> Option<&ProducerWindow> {
        self.producers.get(&id)
    }

    pub fn half(&self, offset: u64) -> Option<&HalfEntry> {
        self.halves.get(&offset)
    }

    pub fn halves(&self) -> impl Iterator<Item = (u64, &HalfEntry)> {
        self.halves.iter().map(|(offset, half)| (*offset, half))
    }

    pub fn scheduled(&self, offset: u64) -> Option<&ScheduledEntry> {
        self.scheduled.get(&offset)
    }

    /// The scheduled entries due at `now_ms`, the earliest first.
    pub fn due(&self, now_ms: u64) -> impl Iterator<Item = u64> + '_ {
        self.due.iter().take_while(move |(due, _)| *due <= now_ms).map(|(_, offset)| *offset)
    }

    /// When the next scheduled entry is due.
    pub fn next_due(&self) -> Option<u64> {
        self.due.first().map(|(due, _)| *due)
    }

    pub fn dead(&self, offset: u64) -> Option<&DeadEntry> {
        self.dead.get(&offset)
    }

    pub fn dead_letters(&self) -> impl Iterator<Item = (u64, &DeadEntry)> {
        self.dead.iter().map(|(offset, dead)| (*offset, dead))
    }

    pub fn answer_of(&self, key: AnswerKey) -> Option<MessageReceipt> {
        self.answers.get(&key).copied()
    }

    /// Bytes of message bodies held (halves, scheduled, dead letters).
    pub fn held_bytes(&self) -> usize {
        self.held_bytes
    }

    /// (half messages, scheduled, dead letters, producers).
    pub fn counts(&self) -> (usize, usize, usize, usize) {
        (self.halves.len(), self.scheduled.len(), self.dead.len(), self.producers.len())
    }

    /// Every entry, for a checkpoint (answers oldest first).
    pub(crate) fn items(&self) -> impl Iterator<Item = MessageItem> + '_ {
        let producers = self.producers.iter().map(|(id, window)| MessageItem::Producer {
            id: *id,
            last_ms: window.last_ms,
            entries: window.entries().collect(),
        });
        let halves = self.halves.iter().map(|(offset, half)| MessageItem::Half(*offset, half.clone()));
        let scheduled = self.scheduled.iter().map(|(offset, entry)| MessageItem::Scheduled(*offset, entry.clone()));
        let dead = self.dead.iter().map(|(offset, entry)| MessageItem::Dead(*offset, entry.clone()));
        let keys = self.answer_order.iter().chain(&self.nack_order);
        let answers = keys.map(|key| MessageItem::Answer(*key, self.answers[key]));
        let floors = self.nack_floors.iter().map(|(group, floor)| MessageItem::NackFloor(*group, *floor));
        producers.chain(halves).chain(scheduled).chain(dead).chain(answers).chain(floors)
    }

    /// Adds an entry read from a checkpoint; one that contradicts those before it is an error.
    pub(crate) fn restore(&mut self, item: MessageItem) -> Result<(), &'static str> {
        let twice = "a message entry twice in a checkpoint";
        match item {
            MessageItem::Producer { id, last_ms, entries } => {
                let mut window = ProducerWindow::new();
                window.last_ms = last_ms;
                for (sequence, offset, due) in entries {
                    if sequence == SEQUENCE_NONE || window.slots[sequence as usize % PRODUCER_WINDOW].0 != SEQUENCE_NONE
                    {
                        return Err("a producer's sequence numbers out of their window in a checkpoint");
                    }
                    window.note(sequence, (offset, due), last_ms);
                }
                if self.producers.insert(id, window).is_some() || self.producers.len() > PRODUCERS_MAX {
                    return Err(twice);
                }
                self.producers_by_use.insert((last_ms, id));
            }
            MessageItem::Half(offset, half) => {
                self.held_bytes += half.body.held_bytes();
                if self.halves.insert(offset, half).is_some() {
                    return Err(twice);
                }
            }
            MessageItem::Scheduled(offset, entry) => {
                if self.scheduled.contains_key(&offset) {
                    return Err(twice);
                }
                self.schedule(offset, entry);
            }
            MessageItem::Dead(offset, entry) => {
                self.held_bytes += entry.body.held_bytes();
                if self.dead.insert(offset, entry).is_some() {
                    return Err(twice);
                }
            }
            MessageItem::Answer(key, receipt) => {
                let kept = match key {
                    AnswerKey::Nack { .. } => self.nack_order.len(),
                    _ => self.answer_order.len(),
                };
                if self.answers.contains_key(&key) || kept >= ANSWERS_KEPT || !key.answers(receipt.outcome) {
                    return Err("an answer twice, too many, or not of its key in a checkpoint");
                }
                self.answer(key, receipt);
            }
            MessageItem::NackFloor(group, floor) => {
                if self.nack_floors.insert(group, floor).is_some() {
                    return Err(twice);
                }
            }
        }
        Ok(())
    }
}

#[cfg(test)]
#[path = "message_book_tests.rs"]
mod tests;
