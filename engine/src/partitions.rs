//! The partitions as a server reads and writes them: a group's position in a partition, raw
//! reads and offset commits by partition, with none of a [`Consumer`](crate::Consumer)'s
//! membership (a server keeps its own, the Kafka group protocol's); and tasks of a service
//! run on the engine's own executors, so that its connections are served thread-per-core
//! beside the shards rather than by threads of their own.

use std::future::Future;
use std::pin::Pin;

use tradeshard_shard::{validate_group, EventBatch, InputError, PollQuery};

use crate::error::Result;
use crate::handle::EngineHandle;
pub use crate::ops::PartitionPosition;
use crate::ops::{CommitOffset, ExecutorOp, ExecutorShards, PollEvents, Position};

/// What [`EngineHandle::spawn_on`] runs: made on the caller's thread, run on the executor.
type MakeTask = Box<dyn FnOnce() -> Pin<Box<dyn Future<Output = ()>>> + Send>;

struct Spawn(MakeTask);

impl ExecutorOp for Spawn {
    type Output = ();
    fn start(self, _shards: &ExecutorShards, reply: tradeshard_shard::reply::Reply<()>) {
        glommio::spawn_local((self.0)()).detach();
        reply.send(())
    }
}

impl EngineHandle {
    /// How many executors the engine runs (see [`spawn_on`](Self::spawn_on)).
    pub fn executors(&self) -> usize {
        self.routing().executors
    }

    /// Runs the future `make_task` makes as a task of executor `executor`, beside its shards;
    /// resolves once it is spawned. The task must end by itself before the engine closes (a
    /// service stops its tasks, then closes the engine); it may call this handle, as any task,
    /// and its requests for this executor's own shards then run in place, with no hand-off
    /// between threads (`local.rs`).
    pub async fn spawn_on<F, Fut>(&self, executor: usize, make_task: F) -> Result<()>
    where
        F: FnOnce() -> Fut + Send + 'static,
        Fut: Future<Output = ()> + 'static,
    {
        if executor >= self.executors() {
            let executors = self.executors() as u32;
            return Err(InputError::BadPartition { partition: executor as u32, partitions: executors }.into());
        }
        let make: MakeTask = Box::new(move || Box::pin(make_task()));
        let answer = self.submit_waiting(executor, Spawn(make)).await?;
        answer.await.ok_or(crate::Error::Closed)
    }

    fn check_partition(&self, partition: u32) -> Result<()> {
        let partitions = self.routing().physical_shards;
        if partition >= partitions {
            return Err(InputError::BadPartition { partition, partitions }.into());
        }
        Ok(())
    }

    /// Where `group` stands in `partition`: its committed offset (if any), the first offset
    /// the log still holds, and its durable end.
    pub async fn partition_position(&self, group: &str, partition: u32) -> Result<PartitionPosition> {
        validate_group(group)?;
        self.check_partition(partition)?;
        self.on_shard(partition, Position { group: group.to_string() }).await
    }

    /// One read of `partition` per `query` (long poll included), as the log holds the records
    /// taken; `EventBatch::next_offset` is where the next read starts, past records of other
    /// topics. An offset outside the log is `Refusal::OffsetOutOfRange`, naming the range.
    pub async fn read_partition(&self, partition: u32, query: PollQuery) -> Result<EventBatch> {
        self.check_partition(partition)?;
        self.on_shard(partition, PollEvents(query)).await
    }

    /// Commits `group`'s position in `partition`, durable when this resolves (the same offsets
    /// an embedded [`Consumer`](crate::Consumer) of the group commits and resumes from).
    pub async fn commit_partition_offset(&self, group: &str, partition: u32, offset: u64) -> Result<u64> {
        validate_group(group)?;
        self.check_partition(partition)?;
        self.on_shard(partition, CommitOffset { group: group.to_string(), offset }).await
    }
}
