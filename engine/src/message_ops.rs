//! The operations of application messages an executor runs (see `ops.rs`): a message write
//! on one shard, and the half messages and dead letters of every shard of an executor.

use tradeshard_shard::reply::Reply;
use tradeshard_shard::{DeadEntry, DiskShard, HalfEntry, MessageCommand, MessageReceipt, ShardReply};

use crate::checkers::HalfChecks;
use crate::ops::{ExecutorOp, ExecutorShards, ShardOp};

/// A message write (publish, prepare, resolve, check, nack, the end of a dead letter).
pub(crate) struct Message(pub MessageCommand);

impl ShardOp for Message {
    type Output = MessageReceipt;
    fn start(self, shard: &DiskShard, reply: ShardReply<MessageReceipt>) {
        shard.message(self.0, reply)
    }
}

/// The half messages not resolved of every shard of the executor (with a time and a policy of
/// checks, only those due for a check then): (shard, offset, entry).
#[derive(Clone, Copy)]
pub(crate) struct HalfMessages(pub Option<(u64, HalfChecks)>);

impl ExecutorOp for HalfMessages {
    type Output = Vec<(u32, u64, HalfEntry)>;
    fn start(self, shards: &ExecutorShards, reply: Reply<Self::Output>) {
        let mut halves = Vec::new();
        for (id, shard) in &shards.shards {
            shard.with_messages(|book| {
                let taken = book.halves().filter(|(_, half)| self.0.is_none_or(|(now, checks)| checks.due(half, now)));
                halves.extend(taken.map(|(at, half)| (*id, at, half.clone())))
            });
        }
        reply.send(halves)
    }
}

/// The dead letters of one group in every shard of the executor: (shard, offset, entry).
#[derive(Clone)]
pub(crate) struct DeadLetters(pub String);

impl ExecutorOp for DeadLetters {
    type Output = Vec<(u32, u64, DeadEntry)>;
    fn start(self, shards: &ExecutorShards, reply: Reply<Self::Output>) {
        let mut dead = Vec::new();
        for (id, shard) in &shards.shards {
            shard.with_messages(|book| {
                let of_group = book.dead_letters().filter(|(_, entry)| entry.group == self.0);
                dead.extend(of_group.map(|(at, entry)| (*id, at, entry.clone())));
            });
        }
        reply.send(dead)
    }
}
