//! The child process of a stress cycle: opens the engine, says `READY` on stdout, then runs a
//! random trade workload (creates, pays, settles, closes, partial refunds) on `workers` threads,
//! deposits and transfers on one more (`money.rs`), and a settlement consumer that polls and
//! commits, journaling every intent before it is sent
//! and every acknowledgement after it arrives, until the parent kills it.
//!
//! The child checks what only it can see: the consumer's events come in log order per
//! partition and in lifecycle order per trade; and it journals, at each commit, the span of
//! each partition it read and the digest of the events it took there, which the parent checks
//! against the recovered log (`delivered.rs`). Anything unexpected (an error that is not
//! backpressure, an event out of order) is journaled as a failure and the child exits with a
//! non-zero status, which the parent reports as a violation.

use std::collections::HashMap;
use std::io::Write;
use std::path::PathBuf;
use std::time::Duration;

use super::delivered::event_digest;

use tradeshard_engine::{
    ConsumerConfig, Engine, EngineHandle, Error, NewTrade, RecordKind, Refusal, StartPosition, TradeId, TradeStatus,
};

use super::journal::{Change, Entry, JournalWriter};

/// The file in the cycle's journal directory holding the kicks the child sent so far.
pub const KICKS_FILE: &str = "kicks";

/// Arguments of the child; the parent builds them.
#[derive(clap::Args, Clone, Debug)]
pub struct ChildArgs {
    #[arg(long)]
    pub dir: PathBuf,
    /// Directory of this cycle's journal files (one per thread).
    #[arg(long)]
    pub journal: PathBuf,
    #[arg(long)]
    pub seed: u64,
    #[arg(long)]
    pub workers: usize,
    /// The first buyer id of this cycle; worker `w` uses buyers `base + w * 1000 + 0..50`.
    #[arg(long)]
    pub buyer_base: u64,
    /// The first buyer id of an earlier cycle on the same directory: each worker also changes
    /// that cycle's trades of its buyers that are not final, many of them in the table on disk
    /// by now (out of memory).
    #[arg(long)]
    pub old_buyer_base: Option<u64>,
}

/// Runs until killed; returns only if the engine does not open.
pub fn run(args: ChildArgs) -> anyhow::Result<()> {
    // A panic in any thread ends the process at once, which the parent reports as a violation
    // (a panicking worker would otherwise die alone while the others go on).
    std::panic::set_hook(Box::new(|info| {
        eprintln!("stress child: {info}");
        std::process::exit(6);
    }));
    // The executor kicks this process sent, kept current in a file for the parent's report of
    // a child that stopped answering (the count dies with the child otherwise).
    let kicks_path = args.journal.join(KICKS_FILE);
    std::thread::spawn(move || loop {
        let _ = std::fs::write(&kicks_path, tradeshard_engine::kicks_in_process().to_string());
        std::thread::sleep(Duration::from_millis(500));
    });
    let engine = Engine::open(super::common::engine_options(&args.dir))?;
    let handle = engine.handle();
    println!("READY");
    std::io::stdout().flush()?;
    let mut threads = Vec::new();
    for worker in 0..args.workers {
        let (handle, args) = (handle.clone(), args.clone());
        threads.push(std::thread::spawn(move || trade_worker(&handle, &args, worker)));
    }
    let (money_handle, money_args) = (handle.clone(), args.clone());
    threads.push(std::thread::spawn(move || {
        let mut journal = JournalWriter::create(&money_args.journal.join("money.log")).unwrap_or_else(|e| {
            eprintln!("stress child: {e:#}");
            std::process::exit(4)
        });
        super::money::run_child(&money_handle, &mut journal, money_args.seed, money_args.buyer_base)
    }));
    let consumer_args = args.clone();
    threads.push(std::thread::spawn(move || settlement_consumer(&handle, &consumer_args)));
    for thread in threads {
        let _ = thread.join();
    }
    std::process::exit(5)
}

fn fail(journal: &mut JournalWriter, text: String) -> ! {
    journal.write(&Entry::Failure(text.clone()));
    eprintln!("stress child: {text}");
    std::process::exit(3)
}

/// Calls `op` until it is not refused for backpressure.
fn retrying<T>(journal: &mut JournalWriter, what: &str, mut op: impl FnMut() -> tradeshard_engine::Result<T>) -> T {
    loop {
        match op() {
            Ok(value) => return value,
            Err(e) if e.is_retryable() => std::thread::sleep(Duration::from_micros(200)),
            Err(e) => fail(journal, format!("{what}: {e}")),
        }
    }
}

struct OpenTrade {
    id: TradeId,
    status: TradeStatus,
    amount: u64,
    refunded: u64,
}

fn trade_worker(handle: &EngineHandle, args: &ChildArgs, worker: usize) {
    let path = args.journal.join(format!("worker-{worker}.log"));
    let mut journal = JournalWriter::create(&path).unwrap_or_else(|e| {
        eprintln!("stress child: {e:#}");
        std::process::exit(4)
    });
    let mut rng = fastrand::Rng::with_seed(args.seed ^ (worker as u64 + 1).wrapping_mul(0x9E37_79B9_7F4A_7C15));
    let mut open: Vec<OpenTrade> = Vec::new();
    if let Some(old_base) = args.old_buyer_base {
        for buyer in (0..50).map(|n| old_base + worker as u64 * 1000 + n) {
            let trades = retrying(&mut journal, "list", || handle.list_user_trades_blocking(buyer, 1024, None));
            let not_final =
                trades.into_iter().filter(|t| !matches!(t.status, TradeStatus::Settled | TradeStatus::Closed));
            open.extend(not_final.map(|t| OpenTrade {
                id: t.id,
                status: t.status,
                amount: t.amount,
                refunded: t.refunded_amount,
            }));
        }
    }
    for order in 1.. {
        if open.is_empty() || rng.u64(..10) < 4 {
            let buyer = args.buyer_base + worker as u64 * 1000 + rng.u64(..50);
            let amount = 1 + rng.u64(..100_000);
            journal.write(&Entry::CreateSent { buyer, order, amount });
            let receipt = retrying(&mut journal, "create", || {
                handle.create_trade_blocking(super::common::new_trade(buyer, order, amount))
            });
            journal.write(&Entry::CreateAcked { buyer, order, id: receipt.id.0 });
            if rng.u64(..16) == 0 {
                // The same order number for another buyer (of another shard, mostly): refused,
                // naming the trade that holds it, and nothing written.
                let taken = NewTrade { buyer_id: buyer + 1, ..super::common::new_trade(buyer, order, amount) };
                match handle.create_trade_blocking(taken) {
                    Err(Error::Refused(Refusal::IdempotencyConflict { existing: Some(id), .. }))
                        if id == receipt.id => {}
                    other => fail(&mut journal, format!("order {order} of buyer {buyer} taken again: {other:?}")),
                }
            }
            open.push(OpenTrade { id: receipt.id, status: TradeStatus::Created, amount, refunded: 0 });
            continue;
        }
        let at = rng.u64(..open.len() as u64) as usize;
        let trade = &mut open[at];
        let refundable = trade.amount - trade.refunded;
        let change = match trade.status {
            TradeStatus::Created if rng.u64(..5) == 0 => Change::Close,
            TradeStatus::Created => Change::Pay,
            TradeStatus::Paid if rng.u64(..3) == 0 => Change::Refund(1 + rng.u64(..refundable)),
            TradeStatus::Paid => Change::Settle,
            TradeStatus::Refunded if refundable > 0 => Change::Refund(1 + rng.u64(..refundable)),
            _ => {
                open.swap_remove(at);
                continue;
            }
        };
        let (id, refunded_before) = (trade.id, trade.refunded);
        journal.write(&Entry::ChangeSent { id: id.0, change });
        let receipt = retrying(&mut journal, "change", || match change {
            Change::Pay => handle.pay_blocking(id),
            Change::Settle => handle.settle_blocking(id),
            Change::Close => handle.close_trade_blocking(id),
            Change::Refund(amount) => {
                handle.refund_blocking(id, &super::common::refund_no(id, refunded_before), amount)
            }
        });
        journal.write(&Entry::ChangeAcked { id: id.0 });
        trade.status = receipt.status;
        trade.refunded = receipt.refunded_amount;
        if matches!(receipt.status, TradeStatus::Settled | TradeStatus::Closed) {
            open.swap_remove(at);
        }
    }
}

/// Whether a trade whose last event was `previous` may have an event of `kind` next.
fn follows(previous: RecordKind, kind: RecordKind) -> bool {
    use RecordKind::*;
    matches!((previous, kind), (Created, Paid | Closed) | (Paid, Settled | Refunded) | (Refunded, Refunded))
}

fn settlement_consumer(handle: &EngineHandle, args: &ChildArgs) {
    let mut journal = JournalWriter::create(&args.journal.join("consumer.log")).unwrap_or_else(|e| {
        eprintln!("stress child: {e:#}");
        std::process::exit(4)
    });
    let config = ConsumerConfig { start: StartPosition::Committed, ..ConsumerConfig::new(super::common::GROUP) };
    let mut consumer = retrying(&mut journal, "consumer", || handle.consumer(config.clone()));
    let mut rng = fastrand::Rng::with_seed(args.seed ^ 0xC0FFEE);
    let mut last_offset: HashMap<u32, u64> = HashMap::new();
    let mut last_kind: HashMap<TradeId, RecordKind> = HashMap::new();
    // Per partition since the last commit (or the group's offset at the start): where it
    // began, the events taken and their digest, journaled at each commit (`delivered.rs`).
    // A partition the group never committed starts its first span at the first commit.
    let mut spans: HashMap<u32, (Option<u64>, u64, u64)> =
        retrying(&mut journal, "committed", || consumer.committed_blocking())
            .into_iter()
            .map(|(partition, committed)| (partition, (committed, 0, 0)))
            .collect();
    loop {
        let events = retrying(&mut journal, "poll", || consumer.poll_blocking(2000, Duration::from_millis(20)));
        for event in &events {
            let record = &event.record;
            let span = spans.entry(event.partition).or_insert((None, 0, 0));
            span.1 += 1;
            span.2 = event_digest(span.2, event.offset, record.trade_id, record.kind, record.amount, record.user_id);
            if let Some(previous) = last_offset.insert(event.partition, event.offset) {
                if event.offset <= previous {
                    fail(
                        &mut journal,
                        format!("partition {}: offset {} after {previous}", event.partition, event.offset),
                    );
                }
            }
            // A change to a trade created before this consumer's start has nothing to follow.
            match last_kind.insert(record.trade_id, record.kind) {
                Some(previous) if !follows(previous, record.kind) => {
                    fail(&mut journal, format!("trade {}: event {:?} after {previous:?}", record.trade_id, record.kind))
                }
                _ => {}
            }
        }
        if !events.is_empty() && rng.u64(..3) == 0 {
            let positions = consumer.assignment();
            for (partition, offset) in &positions {
                journal.write(&Entry::CommitSent { partition: *partition, offset: *offset });
            }
            retrying(&mut journal, "commit", || futures_lite::future::block_on(consumer.commit_offsets(&positions)));
            for (partition, offset) in &positions {
                journal.write(&Entry::CommitAcked { partition: *partition, offset: *offset });
                if let Some((Some(from), count, digest)) = spans.get(partition).copied() {
                    journal.write(&Entry::Consumed { partition: *partition, from, to: *offset, count, digest });
                }
                spans.insert(*partition, (Some(*offset), 0, 0));
            }
        }
    }
}
