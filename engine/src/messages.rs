//! Application messages through the engine: topics, idempotent producers, delayed publishes,
//! half messages (prepare, then commit or roll back), and each group's dead letters.
//!
//! A message goes to the partition (physical shard) of its key, `xxh3_64(key)` as a user's
//! trades do, so a key's messages are in one log, in order; a message with an empty key goes
//! to the partitions in turn. A message's id is its partition and the offset of the record
//! that stored it. Every write is one record, durable with the shard's group commit before it
//! is answered, and can be repeated: a producer's sequence number, a half message's
//! resolution, a nack and the end of a dead letter each answer their first answer.

use std::collections::HashMap;
use std::fmt;
use std::str::FromStr;
use std::sync::atomic::Ordering;

use tradeshard_shard::{
    DeadEntry, HalfEntry, InputError, MessageBody, MessageCommand, MessageOutcome, MessageReceipt, RollbackReason,
    SEQUENCE_WRAPS,
};

use crate::blocking::blocking;
use crate::error::Result;
use crate::handle::EngineHandle;
use crate::message_ops as ops;

/// Where a message lies: its partition and the offset of the record that stored it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct MessageId {
    pub partition: u32,
    pub offset: u64,
}

impl fmt::Display for MessageId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.partition, self.offset)
    }
}

impl FromStr for MessageId {
    type Err = String;
    /// `partition:offset`.
    fn from_str(text: &str) -> std::result::Result<MessageId, String> {
        let (partition, offset) = text.split_once(':').ok_or("a message id is partition:offset")?;
        let partition = partition.parse().map_err(|_| format!("bad partition in '{text}'"))?;
        let offset = offset.parse().map_err(|_| format!("bad offset in '{text}'"))?;
        Ok(MessageId { partition, offset })
    }
}

/// The answer of a message write: the message's id (for a resolution, a nack or a dead
/// letter's end: where the record doing it lies), what it did, and whether it repeated one.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Published {
    pub id: MessageId,
    pub outcome: MessageOutcome,
    pub replayed: bool,
}

impl Published {
    fn of(partition: u32, receipt: MessageReceipt) -> Published {
        Published {
            id: MessageId { partition, offset: receipt.offset },
            outcome: receipt.outcome,
            replayed: receipt.replayed,
        }
    }
}

/// A message to publish.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct OutgoingMessage {
    pub body: MessageBody,
    /// Not delivered before this time (milliseconds since the Unix epoch); `None` or a time
    /// past: at once.
    pub deliver_at_ms: Option<u64>,
    /// An idempotent producer's (id, sequence number in the partition), and the partition
    /// they were taken for (see [`Producer`]).
    producer: Option<(u32, u64, u64)>,
    /// The partition chosen by the sender instead of the key's hash.
    partition: Option<u32>,
}

impl OutgoingMessage {
    /// A message of `topic` under `key`.
    pub fn new(topic: impl Into<String>, key: impl Into<Vec<u8>>, payload: impl Into<Vec<u8>>) -> OutgoingMessage {
        let body = MessageBody { topic: topic.into(), key: key.into(), headers: Vec::new(), payload: payload.into() };
        OutgoingMessage { body, deliver_at_ms: None, producer: None, partition: None }
    }

    /// This message sent to `partition` rather than to its key's: for senders that choose
    /// partitions themselves (a Kafka client's partitioner).
    pub fn to_partition(mut self, partition: u32) -> OutgoingMessage {
        self.partition = Some(partition);
        self
    }

    /// This message sent to `partition` as the `sequence`th of producer `producer_id` there:
    /// for an idempotent producer that numbers its messages itself. Sent again, it is stored
    /// once, as with a [`Producer`]. Numbers from 2^63 on are refused
    /// (`InputError::BadSequence`).
    pub fn sequenced(mut self, partition: u32, producer_id: u64, sequence: u64) -> OutgoingMessage {
        let sequence = if sequence >= SEQUENCE_WRAPS { u64::MAX } else { sequence };
        self.producer = Some((partition, producer_id, sequence));
        self
    }

    /// [`sequenced`](Self::sequenced) for a producer whose numbers wrap, as a Kafka producer's
    /// do: `sequence` counts from 0 and goes back to 0 after `i32::MAX`. The shard takes it as
    /// the number nearest the producer's highest so far that agrees with it modulo 2^31, so
    /// the producer goes on past the wrap and a repeat across it is still stored once (as long
    /// as the producer's messages in flight span less than 2^30 numbers).
    pub fn sequenced_wrapping(mut self, partition: u32, producer_id: u64, sequence: u32) -> OutgoingMessage {
        let sequence = u64::from(sequence & (i32::MAX as u32)) + 1;
        self.producer = Some((partition, producer_id, SEQUENCE_WRAPS | sequence));
        self
    }

    /// This message with a header added.
    pub fn header(mut self, name: impl Into<String>, value: impl Into<Vec<u8>>) -> OutgoingMessage {
        self.body.headers.push((name.into(), value.into()));
        self
    }

    /// This message, delivered not before `at_ms`.
    pub fn deliver_at(mut self, at_ms: u64) -> OutgoingMessage {
        self.deliver_at_ms = Some(at_ms);
        self
    }
}

/// A half message, as a shard holds it until it is committed or rolled back.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HalfMessage {
    pub id: MessageId,
    pub entry: HalfEntry,
}

/// A message that failed its last attempt for a group.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeadLetter {
    pub id: MessageId,
    pub entry: DeadEntry,
}

/// An idempotent producer: an id of its own, and a sequence number per partition that its
/// every message takes when it is made ([`message`](Producer::message)). Publishing the same
/// made message again (after a timeout, a full queue, a restart of the engine) stores it once
/// and answers where it was stored (Kafka's idempotent producer). A message refused (a full
/// queue) holds none of the producer's later ones back: sending it again, or not, is the
/// caller's choice, and one sent again after later ones lies after them. A shard remembers the
/// last `PRODUCER_WINDOW` sequence numbers of each of its last `PRODUCERS_MAX` producers.
pub struct Producer {
    handle: EngineHandle,
    id: u64,
    next: HashMap<u32, u64>,
}

impl Producer {
    /// This producer's id.
    pub fn id(&self) -> u64 {
        self.id
    }

    /// A message of `topic` under `key`, with this producer's next sequence number in the
    /// key's partition: publish it (again, if need be) with `EngineHandle::publish`, or
    /// prepare it as a half message with `EngineHandle::prepare`.
    pub fn message(&mut self, topic: &str, key: &[u8], payload: &[u8]) -> OutgoingMessage {
        let partition = self.handle.partition_of_key(key);
        let next = self.next.entry(partition).or_insert(1);
        let mut message = OutgoingMessage::new(topic, key, payload);
        message.producer = Some((partition, self.id, *next));
        *next += 1;
        message
    }

    /// Makes and publishes a message (see [`message`](Self::message)).
    pub async fn send(&mut self, topic: &str, key: &[u8], payload: &[u8]) -> Result<Published> {
        let message = self.message(topic, key, payload);
        self.handle.publish(&message).await
    }

    blocking!(send_blocking = send(&mut self, topic: &str, key: &[u8], payload: &[u8]) -> Result<Published>);
}

impl EngineHandle {
    /// The partition of a message key: the key's hash, or the partitions in turn for an empty
    /// key.
    pub fn partition_of_key(&self, key: &[u8]) -> u32 {
        let routing = self.routing();
        if key.is_empty() {
            let turn = self.inner.next_partition.fetch_add(1, Ordering::Relaxed);
            return turn % routing.physical_shards;
        }
        let logical = (xxhash_rust::xxh3::xxh3_64(key) % routing.logical_shards as u64) as u32;
        routing.physical_of_logical(logical)
    }

    /// A new idempotent producer (see [`Producer`]).
    pub fn producer(&self) -> Producer {
        use std::time::{SystemTime, UNIX_EPOCH};
        let nanos = SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_nanos());
        let turn = self.inner.next_partition.fetch_add(1, Ordering::Relaxed);
        let seed = [nanos.to_le_bytes().as_slice(), &std::process::id().to_le_bytes(), &turn.to_le_bytes()].concat();
        Producer { handle: self.clone(), id: xxhash_rust::xxh3::xxh3_64(&seed), next: HashMap::new() }
    }

    async fn message_write(&self, partition: u32, command: MessageCommand) -> Result<Published> {
        let partitions = self.routing().physical_shards;
        if partition >= partitions {
            return Err(InputError::BadPartition { partition, partitions }.into());
        }
        let receipt = self.on_shard(partition, ops::Message(command)).await?;
        Ok(Published::of(partition, receipt))
    }

    /// Publishes `message` to its topic, durable when this resolves; delivered at once, or
    /// not before its `deliver_at_ms`. Bounds (`MessageBody::validate`) are checked first.
    pub async fn publish(&self, message: &OutgoingMessage) -> Result<Published> {
        message.body.validate()?;
        let (partition, producer) = self.partition_and_producer(message);
        let command = MessageCommand::Publish { body: message.body.clone(), producer, due_ms: message.deliver_at_ms };
        self.message_write(partition, command).await
    }

    /// Publishes every message of `messages` (a Kafka client's record batch), in order: all
    /// are checked first, and one out of bounds refuses them all with nothing written; then
    /// all are queued before any answer is awaited, so that they share group commits, and
    /// consecutive ones to one partition are written one after another, at consecutive
    /// offsets (Kafka's producers take a record's offset as its batch's first plus its
    /// index). Each has its own answer, in order; once one is refused, those after it are
    /// refused too, unsent.
    pub async fn publish_all(&self, messages: &[OutgoingMessage]) -> Result<Vec<Result<Published>>> {
        let partitions = self.routing().physical_shards;
        let mut runs: Vec<(u32, Vec<MessageCommand>)> = Vec::new();
        for message in messages {
            message.body.validate()?;
            let (partition, producer) = self.partition_and_producer(message);
            if partition >= partitions {
                return Err(InputError::BadPartition { partition, partitions }.into());
            }
            let command =
                MessageCommand::Publish { body: message.body.clone(), producer, due_ms: message.deliver_at_ms };
            match runs.last_mut() {
                Some((last, run)) if *last == partition => run.push(command),
                _ => runs.push((partition, vec![command])),
            }
        }
        // Each run of one partition is one job, which the shard writes in one turn (within it,
        // the shard refuses those after a refused one). Once a job is refused at the queue, the
        // later ones are not sent: a client retrying the batch must not find later records
        // stored before an earlier one.
        let mut answers = Vec::with_capacity(runs.len());
        let mut refused = false;
        for (partition, run) in runs {
            let (executor, count) = (self.routing().executor_of_physical(partition), run.len());
            let answer = match refused {
                true => Err(crate::Error::Backpressure { queue: crate::FullQueue::Executor { executor } }),
                false => self.submit_to_shard(partition, ops::Messages(run)).await,
            };
            refused |= answer.is_err();
            answers.push((partition, count, answer));
        }
        let mut published = Vec::with_capacity(messages.len());
        for (partition, count, answer) in answers {
            let receipts = match answer {
                Ok(reply) => match reply.await {
                    Some(receipts) => receipts.map_err(Into::into),
                    None => Err(crate::Error::Closed),
                },
                Err(error) => Err(error),
            };
            match receipts {
                Ok(receipts) => published.extend(
                    receipts
                        .into_iter()
                        .map(|receipt| receipt.map(|r| Published::of(partition, r)).map_err(Into::into)),
                ),
                Err(error) => published.extend(std::iter::repeat_n(Err(error), count)),
            }
        }
        Ok(published)
    }

    /// Stores a half message: durable, never delivered until [`commit_message`]; its id is
    /// what to commit or roll back (and what the topic's checker is asked about).
    ///
    /// [`commit_message`]: Self::commit_message
    ///
    /// A message made by a [`Producer`] is prepared once however often this is repeated (the
    /// repeat answers the same id); any other is a new half message each time.
    pub async fn prepare(&self, message: &OutgoingMessage) -> Result<MessageId> {
        message.body.validate()?;
        let (partition, producer) = self.partition_and_producer(message);
        let command = MessageCommand::Prepare { body: message.body.clone(), producer };
        Ok(self.message_write(partition, command).await?.id)
    }

    /// Where `message` goes, and its producer's (id, sequence number) if a producer made it.
    fn partition_and_producer(&self, message: &OutgoingMessage) -> (u32, Option<(u64, u64)>) {
        match message.producer {
            Some((partition, id, sequence)) => (partition, Some((id, sequence))),
            None => (message.partition.unwrap_or_else(|| self.partition_of_key(&message.body.key)), None),
        }
    }

    /// Commits the half message `id`: delivered from where the commit lies. A repeat answers
    /// the first commit; after a rollback it is `Refusal::Resolved`.
    pub async fn commit_message(&self, id: MessageId) -> Result<Published> {
        let command = MessageCommand::Resolve { half: id.offset, commit: true, reason: RollbackReason::Asked };
        self.message_write(id.partition, command).await
    }

    /// Rolls the half message `id` back: never delivered. A repeat answers the first
    /// rollback; after a commit it is `Refusal::Resolved`.
    pub async fn rollback_message(&self, id: MessageId) -> Result<Published> {
        let command = MessageCommand::Resolve { half: id.offset, commit: false, reason: RollbackReason::Asked };
        self.message_write(id.partition, command).await
    }

    pub(crate) async fn resolve_checked(&self, id: MessageId, commit: bool, reason: RollbackReason) -> Result<()> {
        self.message_write(id.partition, MessageCommand::Resolve { half: id.offset, commit, reason }).await.map(drop)
    }

    pub(crate) async fn note_check(&self, id: MessageId, checks: u8) -> Result<()> {
        self.message_write(id.partition, MessageCommand::Checked { half: id.offset, checks }).await.map(drop)
    }

    /// `group` failed on the message delivered at `id`: it is delivered to the group again
    /// after the next delay of `Upkeep::messages`, or set aside in the group's dead letters
    /// after the last. Repeats answer the first nack.
    pub async fn nack(&self, group: &str, id: MessageId) -> Result<Published> {
        self.message_write(id.partition, MessageCommand::Nack { group: group.to_string(), offset: id.offset }).await
    }

    /// Every half message not yet resolved, in partition and offset order.
    pub async fn half_messages(&self) -> Result<Vec<HalfMessage>> {
        self.halves(ops::HalfMessages(None)).await
    }

    /// The half messages due for a check at `now_ms`.
    pub(crate) async fn halves_due(&self, now_ms: u64) -> Result<Vec<HalfMessage>> {
        self.halves(ops::HalfMessages(Some((now_ms, self.inner.half_checks)))).await
    }

    async fn halves(&self, op: ops::HalfMessages) -> Result<Vec<HalfMessage>> {
        let mut halves = Vec::new();
        for per_executor in self.on_every_executor(op).await? {
            for (partition, offset, entry) in per_executor {
                halves.push(HalfMessage { id: MessageId { partition, offset }, entry });
            }
        }
        halves.sort_by_key(|half| half.id);
        Ok(halves)
    }

    /// The dead letters of `group`, in partition and offset order.
    pub async fn dead_letters(&self, group: &str) -> Result<Vec<DeadLetter>> {
        tradeshard_shard::validate_group(group)?;
        let mut dead = Vec::new();
        for per_executor in self.on_every_executor(ops::DeadLetters(group.to_string())).await? {
            for (partition, offset, entry) in per_executor {
                dead.push(DeadLetter { id: MessageId { partition, offset }, entry });
            }
        }
        dead.sort_by_key(|letter| letter.id);
        Ok(dead)
    }

    /// Sends the dead letter `id` back to `group` (delivered to it alone, as a first attempt),
    /// or drops it (`replay: false`). Repeats answer the first.
    pub async fn end_dead_letter(&self, group: &str, id: MessageId, replay: bool) -> Result<Published> {
        tradeshard_shard::validate_group(group)?;
        let command = MessageCommand::EndDeadLetter { group: group.to_string(), dead: id.offset, replay };
        self.message_write(id.partition, command).await
    }

    blocking!(publish_blocking = publish(&self, message: &OutgoingMessage) -> Result<Published>);
    blocking!(prepare_blocking = prepare(&self, message: &OutgoingMessage) -> Result<MessageId>);
    blocking!(commit_message_blocking = commit_message(&self, id: MessageId) -> Result<Published>);
    blocking!(rollback_message_blocking = rollback_message(&self, id: MessageId) -> Result<Published>);
    blocking!(nack_blocking = nack(&self, group: &str, id: MessageId) -> Result<Published>);
    blocking!(half_messages_blocking = half_messages(&self) -> Result<Vec<HalfMessage>>);
    blocking!(dead_letters_blocking = dead_letters(&self, group: &str) -> Result<Vec<DeadLetter>>);
    blocking!(end_dead_letter_blocking = end_dead_letter(&self, group: &str, id: MessageId, replay: bool) -> Result<Published>);
}
