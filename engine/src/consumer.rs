//! Settlement consumers: the shards' logs read as partitions of a message queue, with MetaQ /
//! Kafka semantics.
//!
//! - A partition is a physical shard; an event's offset is its sequence number in that log;
//!   events come in log order, so order per partition (and per user) is total.
//! - A consumer group's position in a partition is committed durably in that partition's own
//!   log (an offset-commit record), so a commit that returned survives any crash.
//! - Delivery is at least once: after a crash, a reopen or a reassignment, a consumer resumes
//!   at the committed offset, and whatever was delivered but not committed is delivered again.
//! - Clustered mode: the members of a group in this process split the partitions (partition
//!   `p` goes to the `p % n`th member by join order); when one joins or leaves, every member
//!   takes its new share at its next poll, each new partition from its committed offset.
//!   Broadcast mode: the consumer reads every partition, with offsets of its own (the group
//!   name plus `/` plus its `instance`).
//! - `poll` answers at once when events are there and otherwise waits (a long poll, woken by
//!   the logs, no busy loop) up to its timeout; events and bytes per poll are bounded. A
//!   clustered member with no partition (more members than partitions) waits too, for its
//!   timeout or a change of its group, whichever comes first.
//! - The shards answer polls with record bytes ([`EventBatch`]); `poll` decodes them into
//!   owned [`Event`]s on the caller's thread, `poll_raw` hands them over as they are, to be
//!   read in place (`EventBatch::views`) with no allocation per event.
//! - A poll that delivered events from a partition sends the next poll of that partition
//!   ahead, so the executor reads while the caller handles what it got; the next call takes
//!   that answer when it asks from the same offset (a seek or a rebalance drops it). At most
//!   one poll ahead per partition, of at most `max_bytes_per_poll`.

use std::collections::BTreeMap;
use std::future::Future;
use std::pin::Pin;
use std::task::Poll;
use std::time::Duration;

use tradeshard_shard::{
    validate_group, validate_topic, Event, EventBatch, InputError, Message, PollQuery, Refusal, ReplyFuture,
    Subscription, TradeError, TRADES_TOPIC,
};

use crate::blocking::blocking;
use crate::error::{Error, Result};
use crate::handle::EngineHandle;
use crate::messages::{MessageId, Published};
use crate::ops::{self, CommitOffset, PartitionPosition, PollEvents, Position};

/// How a consumer shares a group's partitions.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ConsumerMode {
    /// The group's members in this process split the partitions between them.
    Clustered,
    /// This consumer reads every partition, with its own offsets, kept under `instance`.
    Broadcast { instance: String },
}

/// Where a consumer starts in a partition its group has no committed offset for (or always,
/// for `Earliest`/`Latest`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StartPosition {
    /// The group's committed offset; the earliest event if it has none. A committed offset
    /// that retention removed is kept: the first poll is refused with
    /// `Refusal::OffsetOutOfRange` naming the first offset kept (the partition is the one
    /// [`Consumer::assignment`] places at the refused offset; seek it there to go on).
    Committed,
    /// The first event still in the log.
    Earliest,
    /// The durable end when the consumer takes the partition, at its first call (a poll, a
    /// lag): only events written from then on. A caller that must see everything after a
    /// point makes a first call at that point.
    Latest,
}

/// What a consumer is.
#[derive(Debug, Clone)]
pub struct ConsumerConfig {
    /// The consumer group: 1..=64 printable ASCII bytes (with `/instance` in broadcast mode).
    pub group: String,
    pub mode: ConsumerMode,
    pub start: StartPosition,
    /// Record bytes one poll reads at most per partition (at least one event always).
    pub max_bytes_per_poll: usize,
    /// The topics read: `trades` (trade events, the default) and application topics. The
    /// group's offsets in a partition cover every topic it reads there.
    pub topics: Vec<String>,
}

impl ConsumerConfig {
    /// A clustered consumer of `group` starting at its committed offsets.
    pub fn new(group: impl Into<String>) -> ConsumerConfig {
        ConsumerConfig {
            group: group.into(),
            mode: ConsumerMode::Clustered,
            start: StartPosition::Committed,
            max_bytes_per_poll: 4 << 20,
            topics: vec![TRADES_TOPIC.to_string()],
        }
    }

    /// A clustered consumer of `group` reading `topics`, starting at its committed offsets.
    pub fn topics(group: impl Into<String>, topics: &[&str]) -> ConsumerConfig {
        ConsumerConfig { topics: topics.iter().map(|topic| topic.to_string()).collect(), ..ConsumerConfig::new(group) }
    }
}

/// A poll sent to one partition, awaiting its answer.
type PendingPoll = Pin<Box<ReplyFuture<Result<EventBatch, TradeError>>>>;

/// What a poll took: the events, and each partition's position after them.
struct Polled {
    batches: Vec<EventBatch>,
    /// (partition, next offset) past everything read, events or not.
    moves: Vec<(u32, u64)>,
}

impl Polled {
    /// The partitions that delivered events (a consumer catching up reads ahead in them).
    fn busy(&self) -> Vec<u32> {
        self.batches.iter().filter(|batch| !batch.is_empty()).map(|batch| batch.partition).collect()
    }
}

/// Largest number of events one poll returns.
pub const POLL_EVENTS_MAX: usize = tradeshard_shard::POLL_EVENTS_MAX;

/// A consumer of the settlement events; `Send`, usable from any thread or async runtime.
pub struct Consumer {
    handle: EngineHandle,
    config: ConsumerConfig,
    /// The name offsets are committed under.
    offsets_key: String,
    member: Option<u64>,
    generation: u64,
    /// Assigned partitions → offset of the next event to deliver.
    positions: BTreeMap<u32, u64>,
    /// Where the next poll starts among the partitions, so that none starves.
    next_first: usize,
    /// What the shards deliver to this consumer.
    subscription: Subscription,
    /// Polls sent ahead, by partition, with the offset each reads from: after a poll that
    /// delivered events, the next one is on its way while the caller handles these, and the
    /// next call takes its answer if it asks from that offset.
    ahead: BTreeMap<u32, (u64, PendingPoll)>,
}

impl Consumer {
    fn new(handle: EngineHandle, config: ConsumerConfig) -> Result<Consumer> {
        let offsets_key = match &config.mode {
            ConsumerMode::Clustered => config.group.clone(),
            ConsumerMode::Broadcast { instance } => format!("{}/{instance}", config.group),
        };
        validate_group(&offsets_key)?;
        if config.topics.is_empty() {
            return Err(InputError::NoTopics.into());
        }
        let mut topics = Vec::new();
        for topic in &config.topics {
            validate_topic(topic)?;
            if topic != TRADES_TOPIC && !topics.contains(topic) {
                topics.push(topic.clone());
            }
        }
        let subscription = Subscription {
            trades: config.topics.iter().any(|topic| topic == TRADES_TOPIC),
            topics: topics.into(),
            group: offsets_key.as_str().into(),
        };
        let member = (config.mode == ConsumerMode::Clustered).then(|| handle.inner.groups.join(&config.group));
        let positions = BTreeMap::new();
        let ahead = BTreeMap::new();
        Ok(Consumer {
            handle,
            config,
            offsets_key,
            member,
            generation: 0,
            positions,
            next_first: 0,
            subscription,
            ahead,
        })
    }

    /// The partitions this consumer reads now, with the offset of the next event of each
    /// (taken at the first poll, and after each change of the group).
    pub fn assignment(&self) -> Vec<(u32, u64)> {
        self.positions.iter().map(|(p, o)| (*p, *o)).collect()
    }

    /// Follows the group's membership: at each new generation, takes every partition it owns
    /// at its start position again. A partition it kept may have been another member's in a
    /// generation between (one it made no call in), read further and committed there: its own
    /// older position would commit the group's offset backwards.
    async fn rebalance(&mut self) -> Result<()> {
        let partitions = self.handle.routing().physical_shards;
        let (generation, owned) = match self.member {
            Some(member) => self.handle.inner.groups.assignment(&self.config.group, member, partitions),
            // Broadcast: every partition, once.
            None => (1, (0..partitions).collect()),
        };
        if generation == self.generation {
            return Ok(());
        }
        self.positions.clear();
        self.ahead.clear();
        self.take_partitions(owned).await?;
        self.generation = generation;
        Ok(())
    }

    async fn take_partitions(&mut self, partitions: Vec<u32>) -> Result<()> {
        for partition in partitions {
            let PartitionPosition { committed, first, end, .. } = self.position_of(partition).await?;
            // A committed offset that retention removed stays the position: the first poll is
            // refused naming the first offset kept, so the group learns it missed events.
            let start = match (self.config.start, committed) {
                (StartPosition::Committed, Some(committed)) => committed,
                (StartPosition::Committed | StartPosition::Earliest, _) => first,
                (StartPosition::Latest, _) => end,
            };
            self.positions.insert(partition, start);
        }
        Ok(())
    }

    async fn position_of(&self, shard: u32) -> Result<PartitionPosition> {
        self.handle.on_shard(shard, Position { group: self.offsets_key.clone() }).await
    }

    async fn send_poll(&self, partition: u32, from: u64, max_events: usize, wait: Duration) -> Result<PendingPoll> {
        let query = PollQuery {
            from,
            max_events,
            max_bytes: self.config.max_bytes_per_poll,
            wait,
            subscription: self.subscription.clone(),
        };
        let answer = self.handle.submit_to_shard(partition, PollEvents(query)).await?;
        Ok(Box::pin(answer))
    }

    /// Up to `max_events` durable events, in log order per partition, waiting up to `timeout`
    /// for the first when none is there yet. Delivered events move this consumer's positions;
    /// they are committed only by [`commit`](Self::commit). A clustered member with no
    /// partition (more members than partitions) waits for its group to change, up to
    /// `timeout`, then polls what it owns then without waiting more.
    /// A consumer of application topics is refused (`InputError::NotTradeEvents`): it polls
    /// with [`poll_messages`](Self::poll_messages).
    pub async fn poll(&mut self, max_events: usize, timeout: Duration) -> Result<Vec<Event>> {
        if !self.subscription.topics.is_empty() {
            return Err(InputError::NotTradeEvents.into());
        }
        let polled = self.poll_undelivered(max_events, timeout).await?;
        let mut delivered = Vec::with_capacity(polled.batches.iter().map(EventBatch::len).sum());
        for batch in &polled.batches {
            // A bad record fails the poll before any position moves.
            delivered.extend(batch.decode()?);
        }
        self.take(&polled, max_events).await;
        Ok(delivered)
    }

    /// [`poll`](Self::poll) for every topic subscribed: each event as a [`Message`] (trade
    /// events as the topic `trades` carries them), in log order per partition. A message of
    /// one key comes after every earlier message of that key, except a retry, which comes
    /// where its release lies: after the messages published before it came due.
    pub async fn poll_messages(&mut self, max_events: usize, timeout: Duration) -> Result<Vec<Message>> {
        let polled = self.poll_undelivered(max_events, timeout).await?;
        let mut delivered = Vec::with_capacity(polled.batches.iter().map(EventBatch::len).sum());
        for batch in &polled.batches {
            delivered.extend(batch.decode_messages()?);
        }
        self.take(&polled, max_events).await;
        Ok(delivered)
    }

    /// This consumer's group failed on `message`: it comes back to the group after the next
    /// delay of the shards' retry policy, or goes to the group's dead letters after the last
    /// (see `EngineHandle::nack`). The rest of the partition is not held back. Trade events
    /// are not retried (`Refusal::NotDelivered`): seek back to read them again.
    pub async fn nack(&self, message: &Message) -> Result<Published> {
        let id = MessageId { partition: message.partition, offset: message.offset };
        self.handle.nack(&self.offsets_key, id).await
    }

    /// [`poll`](Self::poll), delivering each partition's events as the log holds them: read
    /// them in place with `events.views()` (or forward the bytes). Positions move exactly as
    /// `poll` moves them, past every event delivered, including one whose record `views()`
    /// then reports as bad (`seek` back to read it again).
    pub async fn poll_raw(&mut self, max_events: usize, timeout: Duration) -> Result<Vec<EventBatch>> {
        let polled = self.poll_undelivered(max_events, timeout).await?;
        self.take(&polled, max_events).await;
        Ok(polled.batches)
    }

    /// The events a poll would deliver, and the positions delivering them moves to.
    async fn poll_undelivered(&mut self, max_events: usize, timeout: Duration) -> Result<Polled> {
        self.rebalance().await?;
        if self.positions.is_empty() && !timeout.is_zero() {
            // A member with no partition: wait for the group to change (a member leaving may
            // hand it some) or for the timeout, then poll what it owns then, once.
            self.wait_for_partitions(timeout).await?;
            self.rebalance().await?;
            return self.poll_once(max_events.clamp(1, POLL_EVENTS_MAX), Duration::ZERO).await;
        }
        let max_events = max_events.clamp(1, POLL_EVENTS_MAX);
        let mut polled = self.poll_once(max_events, Duration::ZERO).await?;
        if polled.batches.is_empty() && !timeout.is_zero() {
            // Nothing delivered: moving past the system records read (offset commits at the
            // end of a log) is safe, and needed for the long poll to wait at the end.
            self.move_positions(&polled.moves);
            polled = self.poll_once(max_events, timeout).await?;
        }
        Ok(polled)
    }

    /// Waits until this member's group changes or `timeout` passes. The timer runs on an
    /// executor (a consumer may be polled from any thread or runtime); a closed engine ends
    /// the wait at once.
    async fn wait_for_partitions(&self, timeout: Duration) -> Result<()> {
        let Some(_) = self.member else { return Ok(()) };
        let timer = self.handle.submit(0, ops::Sleep(timeout)).await?;
        let changed = self.handle.inner.groups.changed_since(&self.config.group, self.generation);
        futures_lite::future::or(changed, async move {
            let _ = timer.await;
        })
        .await;
        Ok(())
    }

    /// Moves the positions past what `polled` delivers, and sends the next poll ahead in each
    /// partition that delivered events. A poll ahead that cannot be sent is simply not sent.
    async fn take(&mut self, polled: &Polled, max_events: usize) {
        self.move_positions(&polled.moves);
        for partition in polled.busy() {
            let Some(&from) = self.positions.get(&partition) else { continue };
            if let Ok(pending) = self.send_poll(partition, from, max_events, Duration::ZERO).await {
                self.ahead.insert(partition, (from, pending));
            }
        }
    }

    fn move_positions(&mut self, moves: &[(u32, u64)]) {
        for (partition, next) in moves {
            if let Some(position) = self.positions.get_mut(partition) {
                *position = (*position).max(*next);
            }
        }
    }

    /// One round: a poll to every assigned partition; without `wait`, gathers all answers,
    /// with it, returns as soon as one partition has events (the others' answers are dropped:
    /// undelivered, they are read again next time).
    async fn poll_once(&mut self, max_events: usize, wait: Duration) -> Result<Polled> {
        let partitions: Vec<(u32, u64)> = self.assignment();
        if partitions.is_empty() {
            return Ok(Polled { batches: Vec::new(), moves: Vec::new() });
        }
        let first = self.next_first % partitions.len();
        self.next_first = self.next_first.wrapping_add(1);
        let mut pending: Vec<(u32, PendingPoll)> = Vec::new();
        for (partition, from) in partitions[first..].iter().chain(&partitions[..first]) {
            // A poll sent ahead from this offset answers a round that does not wait; a round
            // that waits asks afresh (an answer sent ahead may be empty, and must not end it).
            let poll = match self.ahead.remove(partition) {
                Some((at, poll)) if at == *from && wait.is_zero() => poll,
                _ => self.send_poll(*partition, *from, max_events, wait).await?,
            };
            pending.push((*partition, poll));
        }
        let mut batches: Vec<EventBatch> = Vec::new();
        let wait_for_all = wait.is_zero();
        std::future::poll_fn(|cx| {
            let mut index = 0;
            while index < pending.len() {
                match pending[index].1.as_mut().poll(cx) {
                    Poll::Ready(answer) => {
                        pending.remove(index);
                        match answer {
                            Some(Ok(batch)) => batches.push(batch),
                            Some(Err(error)) => return Poll::Ready(Err(error.into())),
                            None => return Poll::Ready(Err(Error::Closed)),
                        }
                    }
                    Poll::Pending => index += 1,
                }
            }
            let any_events = batches.iter().any(|b| !b.is_empty());
            if pending.is_empty() || (!wait_for_all && any_events) {
                Poll::Ready(Ok(()))
            } else {
                Poll::Pending
            }
        })
        .await?;
        Ok(self.deliver(batches, max_events))
    }

    /// Takes up to `max_events` from the batches in the order they were asked for, and the
    /// positions past what is taken (and past system records read along). Partitions with
    /// nothing to deliver are left out of the events.
    fn deliver(&self, batches: Vec<EventBatch>, max_events: usize) -> Polled {
        let mut polled = Polled { batches: Vec::new(), moves: Vec::new() };
        let mut room = max_events;
        for mut batch in batches {
            if !self.positions.contains_key(&batch.partition) || (room == 0 && !batch.is_empty()) {
                continue;
            }
            batch.truncate(room);
            polled.moves.push((batch.partition, batch.next_offset));
            room -= batch.len();
            if !batch.is_empty() {
                polled.batches.push(batch);
            }
        }
        polled
    }

    /// Commits the current positions (everything delivered so far) durably.
    pub async fn commit(&mut self) -> Result<()> {
        self.rebalance().await?;
        let positions = self.assignment();
        self.commit_offsets(&positions).await
    }

    /// Commits explicit (partition, next offset) pairs durably, read in the group's current
    /// generation, of partitions this consumer owns in it. Offsets read before the group
    /// changed are refused with `Refusal::StaleGeneration` (another member may have read and
    /// committed further meanwhile), a partition another member owns with
    /// `Refusal::NotAssigned`; either way nothing is committed, as Kafka refuses a commit of
    /// a past generation, and the next poll reads the current assignment.
    pub async fn commit_offsets(&mut self, offsets: &[(u32, u64)]) -> Result<()> {
        let read_in = self.generation;
        self.rebalance().await?;
        // Generation 0: nothing read yet, so nothing read in a past generation.
        if read_in != 0 && read_in != self.generation {
            return Err(Refusal::StaleGeneration { read: read_in, current: self.generation }.into());
        }
        if let Some((partition, _)) = offsets.iter().find(|(partition, _)| !self.positions.contains_key(partition)) {
            return Err(Refusal::NotAssigned { partition: *partition }.into());
        }
        let mut waiting = Vec::new();
        for (partition, offset) in offsets {
            let commit = CommitOffset { group: self.offsets_key.clone(), offset: *offset };
            waiting.push(self.handle.submit_to_shard(*partition, commit).await?);
        }
        for answer in waiting {
            answer.await.ok_or(Error::Closed)??;
        }
        Ok(())
    }

    /// Moves the position in an assigned partition (the next poll reads from `offset`).
    pub async fn seek(&mut self, partition: u32, offset: u64) -> Result<()> {
        self.rebalance().await?;
        self.ahead.remove(&partition);
        match self.positions.get_mut(&partition) {
            Some(position) => {
                *position = offset;
                Ok(())
            }
            None => Err(Refusal::NotAssigned { partition }.into()),
        }
    }

    /// Per assigned partition: the durable end of its events minus the group's committed
    /// offset (the earliest offset when it has none); the group's own offset commits, which are
    /// records of the log but no events, do not count.
    pub async fn lag(&mut self) -> Result<Vec<(u32, u64)>> {
        self.rebalance().await?;
        let mut lags = Vec::new();
        for (partition, _) in self.assignment() {
            let PartitionPosition { committed, first, events_end, .. } = self.position_of(partition).await?;
            lags.push((partition, events_end.saturating_sub(committed.unwrap_or(first))));
        }
        Ok(lags)
    }

    /// The group's durable committed offset of every partition (`None` where it has committed
    /// nothing), whatever this consumer is assigned: what a restarted member would resume from.
    pub async fn committed(&self) -> Result<Vec<(u32, Option<u64>)>> {
        let mut committed = Vec::new();
        for partition in 0..self.handle.routing().physical_shards {
            committed.push((partition, self.position_of(partition).await?.committed));
        }
        Ok(committed)
    }

    /// Every partition's end: the offset the next record of its log will get (events and
    /// offset commits alike), as Kafka's end offsets.
    pub async fn end_offsets(&self) -> Result<Vec<(u32, u64)>> {
        let mut ends = Vec::new();
        for partition in 0..self.handle.routing().physical_shards {
            ends.push((partition, self.position_of(partition).await?.end));
        }
        Ok(ends)
    }

    blocking!(poll_blocking = poll(&mut self, max_events: usize, timeout: Duration) -> Result<Vec<Event>>);
    blocking!(poll_messages_blocking = poll_messages(&mut self, max_events: usize, timeout: Duration) -> Result<Vec<Message>>);
    blocking!(nack_blocking = nack(&self, message: &Message) -> Result<Published>);
    blocking!(poll_raw_blocking = poll_raw(&mut self, max_events: usize, timeout: Duration) -> Result<Vec<EventBatch>>);
    blocking!(commit_blocking = commit(&mut self) -> Result<()>);
    blocking!(commit_offsets_blocking = commit_offsets(&mut self, offsets: &[(u32, u64)]) -> Result<()>);
    blocking!(seek_blocking = seek(&mut self, partition: u32, offset: u64) -> Result<()>);
    blocking!(lag_blocking = lag(&mut self) -> Result<Vec<(u32, u64)>>);
    blocking!(committed_blocking = committed(&self) -> Result<Vec<(u32, Option<u64>)>>);
    blocking!(end_offsets_blocking = end_offsets(&self) -> Result<Vec<(u32, u64)>>);

    /// Leaves the group (its partitions go to the other members); nothing is committed.
    pub fn close(self) {}
}

impl EngineHandle {
    /// A settlement consumer (see [`Consumer`]).
    pub fn consumer(&self, config: ConsumerConfig) -> Result<Consumer> {
        Consumer::new(self.clone(), config)
    }
}

impl Drop for Consumer {
    fn drop(&mut self) {
        if let Some(member) = self.member.take() {
            self.handle.inner.groups.leave(&self.config.group, member);
        }
    }
}
