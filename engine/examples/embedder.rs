//! An embedder's view of tradeshard, through `tradeshard-engine` alone: open a data directory,
//! create and pay a trade, read it back, consume the settlement events, move money between two
//! users' accounts, and tell the errors a payment service acts on apart with one `match`.
//!
//!     cargo run -p tradeshard-engine --example embedder [DIR]
//!
//! Without DIR it works in a temporary directory under the current one.

use std::time::Duration;

use tradeshard_engine::{ConsumerConfig, Engine, Error, NewTrade, Options, RecordKind};

fn main() -> Result<(), Error> {
    let scratch;
    let dir = match std::env::args().nth(1) {
        Some(dir) => std::path::PathBuf::from(dir),
        None => {
            scratch = std::env::current_dir()
                .map(|cwd| cwd.join(format!("embedder-{}", std::process::id())))
                .expect("a current directory");
            scratch.clone()
        }
    };
    let engine = Engine::open(Options { cache_bytes: 16 << 20, ..Options::new(&dir) })?;
    let handle = engine.handle();

    // A create is idempotent on (merchant, order number): a retry answers the original.
    let order = NewTrade {
        buyer_id: 42,
        merchant_id: 7,
        merchant_order_no: "ORDER-1".into(),
        amount: 1999,
        currency: "CNY".into(),
        memo: "two coffees".into(),
    };
    let created = act_on(handle.create_trade_blocking(order.clone()))?;
    let retried = act_on(handle.create_trade_blocking(order))?;
    assert_eq!((retried.id, retried.replayed), (created.id, true));
    act_on(handle.pay_blocking(created.id))?;

    let trade = act_on(handle.get_blocking(created.id))?;
    println!("trade {} of buyer {}: {:?}, {} {}", trade.id, trade.buyer_id, trade.status, trade.amount, trade.currency);

    // Settlement reads the same logs: a consumer group with durable offsets.
    let mut consumer = handle.consumer(ConsumerConfig::new("settlement"))?;
    for event in consumer.poll_blocking(100, Duration::from_millis(100))? {
        if event.record.kind == RecordKind::Paid {
            println!("settle {} minor units to merchant {}", event.record.amount, event.record.merchant_id);
        }
    }
    consumer.commit_blocking()?;
    drop(consumer);

    // Accounts: a deposit and a transfer, each idempotent on its request number; across shards
    // a transfer is a TCC activity that recovery finishes if the process stops midway.
    act_on(handle.deposit_blocking(42, "CNY", 10_000, "TOPUP-1"))?;
    let moved = act_on(handle.transfer_blocking(42, 7, "CNY", 2_500, "PAYOUT-1"))?;
    let again = act_on(handle.transfer_blocking(42, 7, "CNY", 2_500, "PAYOUT-1"))?;
    assert!(again.replayed && again.activity == moved.activity);
    let (payer, payee) = (handle.balance_blocking(42, "CNY")?, handle.balance_blocking(7, "CNY")?);
    println!("user 42 holds {}, user 7 holds {} (across shards: {})", payer.available, payee.available, !moved.local);

    // A transactional message: prepared with the service's own transaction, committed after
    // it; a consumer of the topic sees it only then, where the commit lies.
    let mut producer = handle.producer();
    let notice = producer.message("payouts", b"user-42", b"{\"payout\":2500}");
    let half = act_on(handle.prepare_blocking(&notice))?;
    act_on(handle.commit_message_blocking(half))?;
    let mut accounting = handle.consumer(ConsumerConfig::topics("accounting", &["payouts"]))?;
    let delivered = accounting.poll_messages_blocking(10, Duration::from_secs(1))?;
    println!("accounting received {} message(s) of topic payouts", delivered.len());
    accounting.commit_blocking()?;
    drop(accounting);

    engine.close()?;
    if std::env::args().nth(1).is_none() {
        let _ = std::fs::remove_dir_all(&dir);
    }
    Ok(())
}

/// What a payment service does with each class of failure: one `match` on the engine's error.
fn act_on<T>(outcome: Result<T, Error>) -> Result<T, Error> {
    match outcome {
        Ok(value) => Ok(value),
        // Retry as it is, later.
        Err(error) if error.is_retryable() => {
            eprintln!("busy, retry: {error}");
            Err(error)
        }
        // The caller's request is wrong, or the trade's state does not allow it.
        Err(error @ (Error::Invalid(_) | Error::NotFound(_) | Error::Refused(_))) => {
            eprintln!("refused: {error}");
            Err(error)
        }
        // Free space, then reopen the engine: nothing unacknowledged was kept, nothing
        // acknowledged was lost.
        Err(error @ (Error::DiskFull { .. } | Error::Poisoned { .. })) => {
            eprintln!("the disk failed; free space and reopen: {error}");
            Err(error)
        }
        // Bytes on disk fail their checks: a person must look; the engine dropped nothing.
        Err(error @ (Error::Corrupt { .. } | Error::BadRecord { .. })) => {
            eprintln!("corruption, stop and investigate: {error}");
            Err(error)
        }
        Err(error) => Err(error),
    }
}
