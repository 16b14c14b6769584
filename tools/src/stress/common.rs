//! What the campaign's parent and child agree on: the engine's options, the consumer group,
//! and how order numbers name their buyer and order.

use std::path::Path;
use std::time::Duration;

use tradeshard_engine::{NewTrade, Options, Upkeep};

/// The consumer group whose commits the campaign checks.
pub(super) const GROUP: &str = "stress-settlement";

/// Engine options of both the child and the checking parent: small segments so that the
/// campaign crosses segment rolls, four shards on two executors, and checkpoints every
/// 256 KiB of log, 200 ms or 64 KiB of memory held for recent work, so that kills land in
/// checkpoints (each trigger among them), in the removal of the segments the settlement group
/// consumed, and in the writes of the table of trades.
pub(super) fn engine_options(dir: &Path) -> Options {
    let upkeep = Upkeep {
        checkpoint_log_bytes: 256 << 10,
        checkpoint_interval: Duration::from_millis(200),
        checkpoint_memory_bytes: 64 << 10,
        // 256 trades a shard in memory, fewer than a data directory's shard gathers (about
        // 700 over its 20 cycles): the campaign's trades leave memory, its changes and reads
        // find them in the table on disk, and the table's old blocks freeze into copies.
        trade_memory_bytes: 256 * 88,
        ..Upkeep::default()
    };
    Options {
        // Transfers across shards that a kill leaves undecided are cancelled soon after the
        // next open, so that the check after it waits little for recovery.
        activity_timeout: Duration::from_millis(200),
        activity_recovery_interval: Duration::from_millis(50),
        physical_shards: Some(4),
        executors: Some(2),
        pin: false,
        segment_bytes: 1 << 20,
        io_memory_bytes: 4 << 20,
        cache_bytes: 16 << 20,
        upkeep,
        ..Options::new(dir)
    }
}

fn order_no(buyer: u64, order: u64) -> String {
    format!("S-{buyer}-{order}")
}

/// The (buyer, order) of an order number made by [`order_no`].
pub(super) fn order_of(order_no: &str) -> Option<(u64, u64)> {
    let (buyer, order) = order_no.strip_prefix("S-")?.split_once('-')?;
    Some((buyer.parse().ok()?, order.parse().ok()?))
}

pub(super) fn new_trade(buyer: u64, order: u64, amount: u64) -> NewTrade {
    NewTrade {
        buyer_id: buyer,
        merchant_id: 1 + buyer % 5,
        merchant_order_no: order_no(buyer, order),
        amount,
        currency: "CNY".into(),
        // Every third memo too long to be held inline in the table's record: its created part
        // is stored apart, and read with a second device read once the trade leaves memory.
        memo: match order % 3 {
            0 => format!("stress order {order} of buyer {buyer}, with a memo longer than a table record keeps inline"),
            _ => format!("stress order {order}"),
        },
    }
}

/// The refund request number of a refund of trade `id` sent when `refunded_before` of it was
/// refunded: unique per trade and refund, and known again from the journal and the model, so
/// that a refund whose answer was lost can be sent again under its own number.
pub(super) fn refund_no(id: tradeshard_engine::TradeId, refunded_before: u64) -> String {
    format!("RF-{}-{refunded_before}", id.0)
}

/// How long the checking parent sends one request again while the engine refuses it for a
/// full queue (a reopened engine's recovery can fill them) before it gives up.
const RETRYABLE_FOR: Duration = Duration::from_secs(30);

/// `request` until it is not refused for a full queue (`Error::is_retryable`), for at most
/// [`RETRYABLE_FOR`]: the checking parent's requests and reads, whose refusal for a full queue
/// says nothing about the engine's state.
pub(super) fn retrying<T>(mut request: impl FnMut() -> tradeshard_engine::Result<T>) -> tradeshard_engine::Result<T> {
    let started = std::time::Instant::now();
    loop {
        match request() {
            Err(error) if error.is_retryable() && started.elapsed() < RETRYABLE_FOR => {
                std::thread::sleep(Duration::from_micros(200))
            }
            answer => return answer,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tradeshard_engine::{Error, FullQueue};

    #[test]
    fn requests_refused_for_a_full_queue_are_sent_again_and_others_answer_at_once() {
        let full = || Error::Backpressure { queue: FullQueue::Executor { executor: 0 } };
        let mut sent = 0;
        let answer = retrying(|| {
            sent += 1;
            if sent < 3 {
                Err(full())
            } else {
                Ok(sent)
            }
        });
        assert_eq!(answer.unwrap(), 3, "sent until it was not refused");
        let mut sent = 0;
        let answer: tradeshard_engine::Result<()> = retrying(|| {
            sent += 1;
            Err(Error::Closed)
        });
        assert!(matches!(answer, Err(Error::Closed)) && sent == 1, "another error answers at once");
    }
}
