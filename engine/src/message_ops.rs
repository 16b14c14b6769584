//! The operations of application messages an executor runs (see `ops.rs`): a message write
//! on one shard, and the half messages and dead letters of every shard of an executor.

use tradeshard_shard::reply::Reply;
use tradeshard_shard::{
    DeadEntry, DiskShard, HalfEntry, LogError, MessageCommand, MessageReceipt, ShardReply, TradeError,
};

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

/// Message writes to one shard, made one after another in one turn of its executor: those
/// written lie at consecutive offsets (a Kafka client's record batch, whose records' offsets
/// its producer takes as the first plus their index). Once one is refused as it is checked,
/// the ones after it are refused unsent, so that a retry of the batch finds no later message
/// stored before an earlier one.
pub(crate) struct Messages(pub Vec<MessageCommand>);

impl ShardOp for Messages {
    type Output = Vec<Result<MessageReceipt, TradeError>>;
    fn start(self, shard: &DiskShard, reply: ShardReply<Self::Output>) {
        let mut answers = Vec::with_capacity(self.0.len());
        let mut refused: Option<TradeError> = None;
        for command in self.0 {
            if let Some(error) = &refused {
                answers.push(Answer::Now(Err(error.clone())));
                continue;
            }
            let (sent, mut answer) = tradeshard_shard::reply::channel();
            shard.message_in_order(command, sent);
            answers.push(match answer.try_take() {
                Some(Err(error)) => {
                    refused = Some(error.clone());
                    Answer::Now(Err(error))
                }
                Some(receipt) => Answer::Now(receipt),
                None => Answer::Later(answer),
            });
        }
        let gather = async move {
            let mut receipts = Vec::with_capacity(answers.len());
            for answer in answers {
                receipts.push(match answer {
                    Answer::Now(receipt) => receipt,
                    Answer::Later(waiting) => waiting.await.unwrap_or(Err(TradeError::Log(LogError::Closed))),
                });
            }
            reply.send(Ok(receipts))
        };
        glommio::spawn_local(gather).detach();
    }
}

/// A message write's answer: given as it was checked, or to come once durable.
enum Answer {
    Now(Result<MessageReceipt, TradeError>),
    Later(tradeshard_shard::reply::ReplyFuture<Result<MessageReceipt, TradeError>>),
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
