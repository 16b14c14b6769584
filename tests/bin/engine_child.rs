//! The child process of the engine's process-level tests: a real engine in a process of its
//! own, that a test kills, or that holds a directory while a test opens it.
//!
//! - `engine_child crash-writer DIR OFFSET`: eight writers create trades (and pay every
//!   other), printing `ACK created ID AMOUNT` / `ACK paid ID` after each acknowledgement,
//!   until killed; a failed write ends the process at once with status 6 and the reason on
//!   stderr (`engine_crash.rs`).
//! - `engine_child transfer-writer DIR`: deposits 1,000 CNY to each of users 1..=16
//!   (`ACK deposit USER`, then `FUNDED`), then eight threads transfer between them, within
//!   and across shards (one request in four a batch of four, `transfer_many`), printing `ACK
//!   transfer FROM TO AMOUNT REQUEST` or `ACK cancelled FROM TO AMOUNT REQUEST` after each
//!   answer, and one request in four buy a trade from
//!   another of them paid from the balance, half refunded now and then, and settled (`ACK
//!   paid ID`, `ACK refunded ID`, `ACK settled ID`), until killed (`engine_crash.rs`). Activities
//!   time out after 50 ms, so that an open after the kill finds some past their deadline.
//! - `engine_child message-writer DIR CYCLE`: four idempotent producers publish to topic `t`
//!   (`ACK publish PAYLOAD`), one thread prepares half messages and commits or rolls back
//!   most (`ACK prepared PAYLOAD`; the payload says what it should become), and a consumer of
//!   group `billing` nacks the messages whose payload asks for it (`ACK nack PAYLOAD`, or
//!   `ACK dead PAYLOAD` once dead-lettered) and tells each retry it receives (`ACK retried
//!   PAYLOAD`), until killed (`engine_crash.rs`).
//! - `engine_child hold DIR`: opens DIR, prints `READY`, and holds it until stdin closes
//!   (`engine_open_errors.rs`).
//! - `engine_child try-open DIR`: opens DIR and prints `OUTCOME opened` or `OUTCOME <error>`
//!   (`engine_open_errors.rs`, run under another uid).

use std::io::Write;
use std::path::Path;

use tradeshard_engine::{ConsumerConfig, Engine, MessageOutcome, Options, OutgoingMessage};
use tradeshard_tests::{engine_options, new_trade};

fn main() {
    let args: Vec<String> = std::env::args().collect();
    match args.get(1).map(String::as_str) {
        Some("crash-writer") if args.len() == 4 => {
            let offset = args[3].parse().expect("OFFSET is a number");
            crash_writer(Path::new(&args[2]), offset)
        }
        Some("transfer-writer") if args.len() == 3 => transfer_writer(Path::new(&args[2])),
        Some("message-writer") if args.len() == 4 => message_writer(Path::new(&args[2]), &args[3]),
        Some("hold") if args.len() == 3 => hold(Path::new(&args[2])),
        Some("try-open") if args.len() == 3 => try_open(Path::new(&args[2])),
        _ => {
            eprintln!(
                "usage: engine_child crash-writer DIR OFFSET | transfer-writer DIR | message-writer DIR CYCLE | \
                 hold DIR | try-open DIR"
            );
            std::process::exit(2)
        }
    }
}

/// The options of the directories `engine_open_errors.rs` makes.
fn open_errors_options(dir: &Path) -> Options {
    Options { segment_bytes: 1 << 20, ..engine_options(dir, 1, 1) }
}

fn crash_writer(dir: &Path, offset: u64) {
    let engine = Engine::open(engine_options(dir, 2, 2)).unwrap_or_else(exit_with);
    let handle = engine.handle();
    let writers: Vec<_> = (0..8u64)
        .map(|writer| {
            let handle = handle.clone();
            std::thread::spawn(move || {
                for order in 0.. {
                    // User id 0 is refused (`ZeroUserId`): buyers count from 1.
                    let buyer = offset + writer * 1_000_000 + order + 1;
                    let receipt =
                        handle.create_trade_blocking(new_trade(buyer, order, 100 + order)).unwrap_or_else(exit_with);
                    println!("ACK created {} {}", receipt.id.0, receipt.amount);
                    if order % 2 == 0 {
                        handle.pay_blocking(receipt.id).unwrap_or_else(exit_with);
                        println!("ACK paid {}", receipt.id.0);
                    }
                }
            })
        })
        .collect();
    for writer in writers {
        writer.join().expect("writers end only by exiting the process");
    }
}

fn transfer_writer(dir: &Path) {
    let options = Options { activity_timeout: std::time::Duration::from_millis(50), ..engine_options(dir, 2, 2) };
    let engine = Engine::open(options).unwrap_or_else(exit_with);
    let handle = engine.handle();
    for user in 1..=16u64 {
        handle.deposit_blocking(user, "CNY", 1_000, "fund").unwrap_or_else(exit_with);
        println!("ACK deposit {user}");
    }
    println!("FUNDED");
    let writers: Vec<_> = (0..8u64)
        .map(|writer| {
            let handle = handle.clone();
            std::thread::spawn(move || {
                for n in 0u64.. {
                    let from = 1 + (writer * 7 + n * 3) % 16;
                    let to = 1 + (from + n % 15) % 16;
                    let amount = 1 + (n * 37 + writer) % 90;
                    let request_no = format!("w{writer}-{n}");
                    if n % 4 == 3 {
                        buy(&handle, from, to, amount, &request_no);
                        continue;
                    }
                    if n % 4 == 1 {
                        transfer_batch(&handle, from, amount, &request_no);
                        continue;
                    }
                    let answer = handle.transfer_blocking(from, to, "CNY", amount, &request_no);
                    acknowledge_transfer(from, to, amount, &request_no, answer);
                }
            })
        })
        .collect();
    for writer in writers {
        writer.join().expect("writers end only by exiting the process");
    }
}

/// Prints a transfer's answer: `ACK transfer` once made, `ACK cancelled` once its activity
/// was cancelled; too little money is no answer to check, anything else ends the process.
fn acknowledge_transfer(
    from: u64,
    to: u64,
    amount: u64,
    request_no: &str,
    answer: tradeshard_engine::Result<tradeshard_engine::TransferReceipt>,
) {
    use tradeshard_engine::{Error, Refusal};
    match answer {
        Ok(_) => println!("ACK transfer {from} {to} {amount} {request_no}"),
        Err(Error::Refused(Refusal::TransferCancelled { .. })) => {
            println!("ACK cancelled {from} {to} {amount} {request_no}")
        }
        Err(Error::Refused(Refusal::InsufficientFunds { .. })) => {}
        Err(error) => exit_with(error),
    }
}

/// Four transfers from `from` to four others, within and across shards, in one batch
/// (`transfer_many`), each answer printed as a lone transfer's is.
fn transfer_batch(handle: &tradeshard_engine::EngineHandle, from: u64, amount: u64, request_no: &str) {
    let numbers: Vec<String> = (0..4).map(|k| format!("{request_no}-{k}")).collect();
    let requests: Vec<tradeshard_engine::TransferRequest> = (0..4u64)
        .map(|k| tradeshard_engine::TransferRequest {
            from_user: from,
            to_user: 1 + (from + 1 + k * 4) % 16,
            currency: "CNY",
            amount: amount / 4 + 1,
            request_no: &numbers[k as usize],
        })
        .collect();
    let answers = handle.transfer_many_blocking(&requests).unwrap_or_else(exit_with);
    for (t, answer) in requests.iter().zip(answers) {
        acknowledge_transfer(t.from_user, t.to_user, t.amount, t.request_no, answer);
    }
}

/// A trade of `buyer` to `merchant` paid from the buyer's balance (`ACK paid ID`), now and
/// then half refunded (`ACK refunded ID`), then settled (`ACK settled ID`).
fn buy(handle: &tradeshard_engine::EngineHandle, buyer: u64, merchant: u64, amount: u64, order: &str) {
    use tradeshard_engine::{Error, Refusal};
    let trade = tradeshard_engine::NewTrade {
        buyer_id: buyer,
        merchant_id: merchant,
        merchant_order_no: order.into(),
        amount,
        currency: "CNY".into(),
        memo: String::new(),
    };
    let id = handle.create_trade_blocking(trade).unwrap_or_else(exit_with).id;
    match handle.pay_from_balance_blocking(id) {
        Ok(_) => println!("ACK paid {}", id.0),
        Err(Error::Refused(Refusal::InsufficientFunds { .. })) => return,
        Err(error) => exit_with(error),
    }
    if amount > 1 && id.0.is_multiple_of(2) {
        handle.refund_blocking(id, "half", amount / 2).unwrap_or_else(exit_with);
        println!("ACK refunded {}", id.0);
    }
    handle.settle_blocking(id).unwrap_or_else(exit_with);
    println!("ACK settled {}", id.0);
}

fn message_writer(dir: &Path, cycle: &str) {
    let engine = Engine::open(tradeshard_tests::message_options(dir)).unwrap_or_else(exit_with);
    let handle = engine.handle();
    let mut threads: Vec<_> = (0..4u64)
        .map(|writer| {
            let handle = handle.clone();
            let cycle = cycle.to_string();
            std::thread::spawn(move || {
                let mut producer = handle.producer();
                for n in 0u64.. {
                    let suffix = ["", "", "", "-nack", "", "", "", "-dead", "", ""][n as usize % 10];
                    let payload = format!("p{cycle}.{writer}.{n}{suffix}");
                    let message = producer.message("t", format!("k{}", n % 5).as_bytes(), payload.as_bytes());
                    handle.publish_blocking(&message).unwrap_or_else(exit_with);
                    println!("ACK publish {payload}");
                }
            })
        })
        .collect();
    let preparer = handle.clone();
    let cycle_of_halves = cycle.to_string();
    threads.push(std::thread::spawn(move || {
        for n in 0u64.. {
            let outcome = if n % 3 == 0 { "r" } else { "c" };
            let open = if n % 5 == 0 { "-open" } else { "" };
            let payload = format!("h{cycle_of_halves}.{n}-{outcome}{open}");
            let message = OutgoingMessage::new("t", format!("h{}", n % 7), payload.clone());
            let id = preparer.prepare_blocking(&message).unwrap_or_else(exit_with);
            println!("ACK prepared {payload}");
            if open.is_empty() {
                let resolved = match outcome {
                    "c" => preparer.commit_message_blocking(id),
                    _ => preparer.rollback_message_blocking(id),
                };
                resolved.unwrap_or_else(exit_with);
            }
        }
    }));
    let mut consumer = handle.consumer(ConsumerConfig::topics("billing", &["t"])).unwrap_or_else(exit_with);
    threads.push(std::thread::spawn(move || loop {
        for message in
            consumer.poll_messages_blocking(256, std::time::Duration::from_millis(50)).unwrap_or_else(exit_with)
        {
            let payload = String::from_utf8(message.payload.clone()).expect("UTF-8 payloads");
            if message.attempt > 0 {
                println!("ACK retried {payload}");
            }
            if payload.ends_with("-dead") || (payload.ends_with("-nack") && message.attempt == 0) {
                match consumer.nack_blocking(&message).unwrap_or_else(exit_with).outcome {
                    MessageOutcome::DeadLettered { .. } => println!("ACK dead {payload}"),
                    _ => println!("ACK nack {payload}"),
                }
            }
        }
        consumer.commit_blocking().unwrap_or_else(exit_with);
    }));
    for thread in threads {
        thread.join().expect("threads end only by exiting the process");
    }
}

/// A failed write ends the child at once (no unwinding, no backtrace to print first), so the
/// parent sees the acknowledgements stop and reads the reason on stderr instead of the other
/// writers hiding it.
fn exit_with<T>(error: tradeshard_engine::Error) -> T {
    eprintln!("write failed: {error:?}");
    std::process::exit(6)
}

fn hold(dir: &Path) {
    let _engine = Engine::open(open_errors_options(dir)).expect("the holder opens the directory");
    println!("READY");
    std::io::stdout().flush().expect("stdout");
    // Hold it until the parent closes our stdin.
    let _ = std::io::stdin().lines().count();
}

fn try_open(dir: &Path) {
    match Engine::open(open_errors_options(dir)) {
        Ok(_) => println!("OUTCOME opened"),
        Err(error) => println!("OUTCOME {error}"),
    }
}
