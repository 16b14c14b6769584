//! What one shard holds between its request path and its committer: the log, the durable
//! indexes, the cache, and the *accepted* view (the writes queued in the log but not yet
//! durable, with whoever waits for each).
//!
//! The request path (`write.rs`) checks a write against durable state plus the accepted view
//! and queues it; the committer (`committer.rs`) moves it from the accepted view into the
//! durable indexes once the log says it is durable, and answers its caller.

use std::cell::{Cell, RefCell};
use std::collections::{BTreeMap, VecDeque};
use std::hash::BuildHasherDefault;
use std::rc::Rc;
use std::task::Waker;

use tradeshard_cache::ReadThrough;
use tradeshard_wal::disk::Disk;
use tradeshard_wal::{Ticket, Wal};

use crate::account_write::InFlightAccounts;
use crate::accounts::AccountReceipt;
use crate::checkpoints::{Checkpoints, OpenReport};
use crate::command::Command;
use crate::currency::Currency;
use crate::doubts::ClaimDoubts;
use crate::error::{LogError, TradeError};
use crate::id_hash::{IdHasher, IdMap};
use crate::index::ShardIndex;
use crate::key_runs::{KeyRuns, RunRead};
use crate::lifecycle::Lifecycle;
use crate::message_book::MessageReceipt;
use crate::message_write::InFlightMessages;
use crate::reply::Reply;
use crate::system_record::{ClaimOutcome, LogRecord};
use crate::tcc_book::StepAnswer;
use crate::tcc_write::InFlightTcc;
use crate::trade::{Receipt, TradeId};
use crate::trade_cache::CachedTrade;

/// A shard's answer to one request: the result, or why not.
pub type ShardReply<T> = Reply<Result<T, TradeError>>;

/// Requests of a batch started between two chances for the executor's other tasks to run.
const STARTS_PER_TURN: usize = 256;

/// Starts each of `items` as a request of its own (`start`, which answers its reply once the
/// request is durable or refused), in turns of `STARTS_PER_TURN` so that a large batch never
/// holds the executor for one long turn; `reply` is answered once every one was, with each
/// one's answer in the order given.
pub(crate) fn start_each<D: Disk + 'static, I: 'static, T: Send + 'static>(
    inner: &Rc<Inner<D>>,
    items: Vec<I>,
    start: fn(&Rc<Inner<D>>, I, ShardReply<T>),
    reply: ShardReply<Vec<Result<T, TradeError>>>,
) {
    let inner = inner.clone();
    glommio::spawn_local(async move {
        let mut answers = Vec::with_capacity(items.len());
        for (n, item) in items.into_iter().enumerate() {
            if n > 0 && n % STARTS_PER_TURN == 0 {
                glommio::yield_if_needed().await;
            }
            let (one, answer) = crate::reply::channel();
            start(&inner, item, one);
            answers.push(answer);
        }
        let mut made = Vec::with_capacity(answers.len());
        for answer in answers {
            made.push(answer.await.unwrap_or(Err(TradeError::Log(LogError::Closed))));
        }
        reply.send(Ok(made))
    })
    .detach();
}

/// A trade with writes in flight: its accepted (not yet durable) state.
#[derive(Clone, Copy)]
pub(crate) struct InFlight {
    pub lifecycle: Lifecycle,
    pub last_seq: u64,
    pub user_id: u64,
    pub merchant_id: u64,
    pub currency: Currency,
}

/// Who waits for a write, and for what.
pub(crate) enum Waiter {
    Trade(ShardReply<Receipt>),
    Offset(ShardReply<u64>),
    /// A claim: answered with the trade it was confirmed with (none for a new claim).
    Claim(ShardReply<Option<TradeId>>),
    /// A claim's settlement.
    Settled(ShardReply<()>),
    /// An account request.
    Account(ShardReply<AccountReceipt>),
    /// A local transaction of flexible-transaction steps, with every step's answer as checked
    /// (the record holds only the steps that were not repeats) and what they change.
    Tcc(ShardReply<Vec<StepAnswer>>, Vec<StepAnswer>, crate::tcc_write::TccChanges),
    /// A message write.
    Message(ShardReply<MessageReceipt>),
    /// A `ClaimsKnown` record (`doubts.rs`): nobody waits for it.
    Mark,
}

impl Waiter {
    pub(crate) fn fail(self, error: TradeError) {
        match self {
            Waiter::Trade(reply) => reply.send(Err(error)),
            Waiter::Offset(reply) => reply.send(Err(error)),
            Waiter::Claim(reply) => reply.send(Err(error)),
            Waiter::Settled(reply) => reply.send(Err(error)),
            Waiter::Account(reply) => reply.send(Err(error)),
            Waiter::Tcc(reply, ..) => reply.send(Err(error)),
            Waiter::Message(reply) => reply.send(Err(error)),
            Waiter::Mark => {}
        }
    }
}

/// The keys a write claimed in the accepted view, computed once when it was checked.
#[derive(Clone, Copy)]
pub(crate) enum EffectKeys {
    None,
    /// A create's order key and body hash.
    Order {
        key: u128,
        body: u64,
    },
    /// A refund's refund key.
    Refund {
        key: u128,
    },
}

/// A write waiting for its trade to come back from the table on disk, or for its order key
/// to be read from the runs on disk.
pub(crate) struct WaitingWrite {
    pub command: Command,
    pub reply: ShardReply<Receipt>,
    /// A create whose order number's claim in another shard is not known durable yet
    /// (`doubts.rs`).
    pub in_doubt: bool,
    /// The order key's state read from the runs, if it was.
    pub read: Option<RunRead>,
}

/// A write queued in the log, waiting to become durable.
pub(crate) struct Effect {
    pub seq: u64,
    pub ticket: Option<Ticket>,
    pub record: LogRecord,
    pub keys: EffectKeys,
    pub waiter: Waiter,
}

#[derive(Default)]
pub(crate) struct Accepted {
    pub trades: IdMap<TradeId, InFlight>,
    /// Order key → (trade id, body hash, seq of its create).
    pub orders: IdMap<u128, (TradeId, u64, u64)>,
    /// Refund key → (trade id, amount, seq of its refund).
    pub refunds: IdMap<u128, (TradeId, u64, u64)>,
    pub effects: VecDeque<Effect>,
    /// Requests that repeated a write still in flight, by the seq of that write: answered
    /// with its receipt, marked as a repeat, once it is durable.
    pub repeats: BTreeMap<u64, Vec<ShardReply<Receipt>>>,
    /// Order key → (body hash, seq) of claims in flight.
    pub claims: IdMap<u128, (u64, u64)>,
    /// Claims that repeated one in flight, by the seq of that claim.
    pub claim_repeats: BTreeMap<u64, Vec<ShardReply<Option<TradeId>>>>,
    /// Order keys whose claim settlement is in flight, with its outcome.
    pub settling: IdMap<u128, ClaimOutcome>,
    /// Writes waiting for their trade to come back from the table on disk, by trade, in the
    /// order they came (`write.rs`).
    pub thawing: IdMap<TradeId, Vec<WaitingWrite>>,
    /// Creates waiting for their order key to be read from the runs on disk, by key, in the
    /// order they came (`write.rs`).
    pub reading: IdMap<u128, Vec<WaitingWrite>>,
    /// Account requests in flight (`account_write.rs`).
    pub accounts: InFlightAccounts,
    /// Local transactions in flight (`tcc_write.rs`).
    pub tcc: InFlightTcc,
    /// Message writes in flight (`message_write.rs`).
    pub messages: InFlightMessages,
    /// The shard's scheduler, waiting for the next message due (`message_write.rs`).
    pub scheduler: Option<Waker>,
    pub next_counter: u64,
    /// Trades created with their order number's claim in doubt (`doubts.rs`).
    pub doubts: ClaimDoubts,
    pub committer: Option<Waker>,
    pub failed: Option<TradeError>,
    pub closing: bool,
}

impl Accepted {
    /// Notes that the record at `seq`, and every one before it, is applied to the books: what
    /// it left in the maps of writes in flight stops counting (`in_flight.rs`).
    pub(crate) fn note_applied(&mut self, seq: u64) {
        self.accounts.note_applied(seq);
        self.tcc.note_applied(seq);
        self.messages.note_applied(seq);
    }

    /// Sweeps the maps of writes in flight (`InFlightMap::sweep`).
    pub(crate) fn sweep_in_flight(&mut self) {
        self.accounts.sweep();
        self.tcc.sweep();
        self.messages.sweep();
    }

    pub(crate) fn push(&mut self, effect: Effect) {
        self.effects.push_back(effect);
        self.wake();
    }

    /// Answers `reply` with the receipt of the write at `seq` once that is durable.
    pub(crate) fn repeat_of(&mut self, seq: u64, reply: ShardReply<Receipt>) {
        self.repeats.entry(seq).or_default().push(reply);
    }

    pub(crate) fn wake(&mut self) {
        if let Some(waker) = self.committer.take() {
            waker.wake();
        }
    }
}

pub(crate) struct Inner<D: Disk> {
    pub shard_id: u32,
    /// Where users' accounts live: the shard of a merchant that a trade paid from a balance
    /// credits when it settles (`Shard::set_routing`; `None`: every user in this shard).
    pub routing: std::cell::Cell<Option<crate::routing::UserRouting>>,
    pub wal: Wal<D>,
    pub checkpoints: Checkpoints<D>,
    pub opened: OpenReport,
    pub index: RefCell<ShardIndex>,
    /// The order keys and confirmed claims that checkpoints moved to disk.
    pub key_runs: RefCell<KeyRuns<D>>,
    pub accepted: RefCell<Accepted>,
    /// Whole trades, read by callers on other threads too (`trade_cache.rs`).
    pub trade_cache: ReadThrough<TradeId, CachedTrade, TradeError, BuildHasherDefault<IdHasher>>,
    /// The committer's turns (`committer.rs`), by how long each held the executor.
    pub apply_turns: Cell<TurnTimes>,
}

/// Turns of one kind by their length: `micros[i]` counts those under 2^i microseconds
/// (`tradeshard_wal::log2_bucket`), and `micros_sum` their total. A turn holds the executor:
/// nothing else of the shard runs, and no completion of the device is taken, until it ends.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct TurnTimes {
    pub micros: [u64; tradeshard_wal::HISTOGRAM_BUCKETS],
    pub micros_sum: u64,
}

impl TurnTimes {
    pub(crate) fn record(&mut self, micros: u64) {
        self.micros[tradeshard_wal::log2_bucket(micros)] += 1;
        self.micros_sum += micros;
    }
}
