//! A producer's messages under a full log queue. Written in order (a Kafka client's batches),
//! once the queue refuses one, the shard refuses the producer's later ones too, until the
//! refused one comes again, so that a retried batch never finds a later message stored before
//! an earlier one; written one by one (the engine's `Producer`), a refused one holds nothing
//! back. A producer whose numbers wrap (a Kafka client's) goes on past the wrap with writes in
//! flight on both sides of it.

use tradeshard_shard::{LogError, MessageBody, MessageCommand, MessageReceipt, Shard, TradeError, SEQUENCE_WRAPS};
use tradeshard_tests::{call, run, small_config};
use tradeshard_wal::disk::SimDisk;
use tradeshard_wal::WalConfig;

fn publish(sequence: u64, payload_bytes: usize) -> MessageCommand {
    let body = MessageBody {
        topic: "t".into(),
        key: b"k".to_vec(),
        headers: Vec::new(),
        payload: vec![b'a' + sequence as u8; payload_bytes],
    };
    MessageCommand::Publish { body, producer: Some((7, sequence)), due_ms: None }
}

/// Record sizes a little above 31 KiB, and a queue that holds one such record and not much
/// more: a small message, a large one and a small one sent at once find the large one refused.
fn config() -> WalConfig {
    WalConfig {
        segment_bytes: 1 << 20,
        frame_payload_bytes_max: 64 << 10,
        record_bytes_max: 31 << 10,
        pending_bytes_max: (31 << 10) + 64,
        ..small_config()
    }
}

type Outcome = Result<MessageReceipt, TradeError>;

/// Publishes messages `1..` of producer 7 with the payload sizes `sizes`, all sent before any
/// answer is awaited, in order (`message_in_order`) or one by one (`message`); their outcomes.
async fn publish_at_once(shard: &Shard<SimDisk>, sizes: &[usize], in_order: bool) -> Vec<Outcome> {
    let answers: Vec<_> = sizes
        .iter()
        .enumerate()
        .map(|(n, &size)| {
            let (reply, answer) = tradeshard_shard::reply::channel::<Outcome>();
            match in_order {
                true => shard.message_in_order(publish(1 + n as u64, size), reply),
                false => shard.message(publish(1 + n as u64, size), reply),
            }
            answer
        })
        .collect();
    let mut outcomes = Vec::new();
    for answer in answers {
        outcomes.push(answer.await.unwrap());
    }
    outcomes
}

#[test]
fn a_producers_messages_after_one_the_queue_refused_wait_for_its_retry() {
    run(async {
        let shard = Shard::open(SimDisk::new(), config(), 0).await.unwrap();
        let sizes = [500, 31_500, 500];
        let outcomes = publish_at_once(&shard, &sizes, true).await;
        assert!(outcomes[0].is_ok(), "{:?}", outcomes[0]);
        for (n, outcome) in outcomes.iter().enumerate().skip(1) {
            assert!(matches!(outcome, Err(TradeError::Log(LogError::Backpressure { .. }))), "message {n}: {outcome:?}");
        }
        // The client sends the batch again, in order: each lands once, in the batch's order.
        let mut offsets = Vec::new();
        for (n, &size) in sizes.iter().enumerate() {
            let receipt = call(|reply| shard.message_in_order(publish(1 + n as u64, size), reply)).await.unwrap();
            assert_eq!(receipt.replayed, n == 0, "message {n}");
            offsets.push(receipt.offset);
        }
        assert!(offsets.windows(2).all(|pair| pair[0] < pair[1]), "stored in order: {offsets:?}");
        shard.close().await.unwrap();
    });
}

/// A producer that sends each message once, as the engine's `Producer::send` does (a refused
/// one is the caller's to send again or to give up): a refusal at the queue does not hold its
/// later messages back once the queue has room.
#[test]
fn a_producer_not_writing_in_order_goes_on_after_a_refusal() {
    run(async {
        let shard = Shard::open(SimDisk::new(), config(), 0).await.unwrap();
        let outcomes = publish_at_once(&shard, &[500, 31_500], false).await;
        assert!(outcomes[0].is_ok(), "{:?}", outcomes[0]);
        assert!(matches!(outcomes[1], Err(TradeError::Log(LogError::Backpressure { .. }))), "{:?}", outcomes[1]);
        // The queue is empty again: the next message is stored, the refused one given up.
        let receipt = call(|reply| shard.message(publish(3, 500), reply)).await.unwrap();
        assert!(!receipt.replayed);
        shard.close().await.unwrap();
    });
}

/// A new producer whose numbers wrap (Kafka's, plus one) sends a batch up to the wrap and one
/// after it before the first is durable: the second is numbered after the first, not taken
/// for a producer starting over, so its retry finds it stored.
#[test]
fn a_wrapping_producer_numbers_writes_in_flight_across_the_wrap_in_order() {
    run(async {
        let shard = Shard::open(SimDisk::new(), config(), 0).await.unwrap();
        let wrapping = |kafka: u64| {
            let MessageCommand::Publish { body, .. } = publish(kafka % 26, 100) else { unreachable!() };
            MessageCommand::Publish { body, producer: Some((9, SEQUENCE_WRAPS | (kafka + 1))), due_ms: None }
        };
        let last = (1u64 << 31) - 1;
        let batches = [(last - 9..=last).collect::<Vec<u64>>(), (0..10).collect()];
        let answers: Vec<_> = batches
            .iter()
            .flatten()
            .map(|kafka| {
                let (reply, answer) = tradeshard_shard::reply::channel::<Outcome>();
                shard.message_in_order(wrapping(*kafka), reply);
                answer
            })
            .collect();
        for answer in answers {
            assert!(!answer.await.unwrap().unwrap().replayed);
        }
        for kafka in &batches[1] {
            let again = call(|reply| shard.message_in_order(wrapping(*kafka), reply)).await.unwrap();
            assert!(again.replayed, "number {kafka} after the wrap is found stored");
        }
        shard.close().await.unwrap();
    });
}
