//! Application messages through the public handle: topics and keys in order, idempotent
//! producers, bounds, half messages (never seen until committed, seen where the commit lies,
//! resolutions idempotent, checked back by the topic's checker), delayed publishes, retries
//! after a nack with dead letters after the last, and all of it across a reopen.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tradeshard_engine::{
    CheckAnswer, CheckFuture, ConsumerConfig, Engine, EngineHandle, Error, HalfMessage, InputError, Message,
    MessageChecker, MessageCheckers, MessageOutcome, MessagePolicy, Options, OutgoingMessage, Refusal, KEY_BYTES_MAX,
    PAYLOAD_BYTES_MAX,
};
use tradeshard_tests::engine_options;

fn drain(consumer: &mut tradeshard_engine::Consumer, want: usize, within: Duration) -> Vec<Message> {
    let deadline = Instant::now() + within;
    let mut got = Vec::new();
    while got.len() < want && Instant::now() < deadline {
        got.extend(consumer.poll_messages_blocking(1024, Duration::from_millis(50)).unwrap());
    }
    got
}

fn payloads(messages: &[Message]) -> Vec<String> {
    messages.iter().map(|m| String::from_utf8(m.payload.clone()).unwrap()).collect()
}

fn publish(h: &EngineHandle, topic: &str, key: &str, payload: &str) {
    h.publish_blocking(&OutgoingMessage::new(topic, key, payload)).unwrap();
}

/// Messages of one key arrive in the order published, each once, with their headers; other
/// topics and trade events are not delivered to a consumer of one topic.
#[test]
fn a_keys_messages_are_delivered_in_order_and_only_to_their_topic() {
    let dir = tempfile::tempdir().unwrap();
    let engine = Engine::open(engine_options(dir.path(), 4, 2)).unwrap();
    let h = engine.handle();
    h.create_trade_blocking(tradeshard_tests::new_trade(7, 1, 100)).unwrap();
    for i in 0..200 {
        let key = format!("k{}", i % 7);
        let message = OutgoingMessage::new("orders", key.clone(), format!("{key}-{i}")).header("seq", i.to_string());
        h.publish_blocking(&message).unwrap();
        publish(&h, "other", &key, "not for orders");
    }
    let mut consumer = h.consumer(ConsumerConfig::topics("g", &["orders"])).unwrap();
    let got = drain(&mut consumer, 200, Duration::from_secs(10));
    assert_eq!(got.len(), 200, "each message once, nothing of other topics or trades");
    let mut last: BTreeMap<Vec<u8>, usize> = BTreeMap::new();
    for message in &got {
        assert_eq!(message.topic, "orders");
        let seq: usize = String::from_utf8(message.headers[0].1.clone()).unwrap().parse().unwrap();
        if let Some(before) = last.insert(message.key.clone(), seq) {
            assert!(before < seq, "key {:?}: {seq} after {before}", message.key);
        }
        assert_eq!(message.attempt, 0);
    }
    assert!(matches!(consumer.poll_blocking(10, Duration::ZERO), Err(Error::Invalid(InputError::NotTradeEvents))));
    let mut both = h.consumer(ConsumerConfig::topics("both", &["orders", "trades"])).unwrap();
    let all = drain(&mut both, 201, Duration::from_secs(10));
    assert_eq!(all.iter().filter(|m| m.topic == "trades").count(), 1, "the trade event, as the topic carries it");
    assert_eq!(all.iter().find(|m| m.topic == "trades").unwrap().key, 7u64.to_le_bytes());
    engine.close().unwrap();
}

/// A producer's message published again (a retry) is stored once and answers where it was
/// stored; bad input is refused and leaves no trace.
#[test]
fn a_retried_publish_is_stored_once_and_bad_input_leaves_no_trace() {
    let dir = tempfile::tempdir().unwrap();
    let engine = Engine::open(engine_options(dir.path(), 2, 2)).unwrap();
    let h = engine.handle();
    let mut producer = h.producer();
    let message = producer.message("orders", b"k", b"once");
    let first = h.publish_blocking(&message).unwrap();
    assert_eq!((first.outcome, first.replayed), (MessageOutcome::Published, false));
    for _ in 0..3 {
        let again = h.publish_blocking(&message).unwrap();
        assert_eq!((again.id, again.replayed), (first.id, true));
    }
    producer.send_blocking("orders", b"k", b"twice").unwrap();
    let mut too_big = OutgoingMessage::new("orders", "k", vec![0; PAYLOAD_BYTES_MAX + 1]);
    assert!(matches!(h.publish_blocking(&too_big), Err(Error::Invalid(InputError::PayloadTooLarge { .. }))));
    too_big.body.payload.clear();
    too_big.body.topic = "trades".into();
    assert!(matches!(h.publish_blocking(&too_big), Err(Error::Invalid(InputError::ReservedTopic))));
    too_big.body.topic = "a topic".into();
    assert!(matches!(h.publish_blocking(&too_big), Err(Error::Invalid(InputError::BadTopic { .. }))));
    // Sequence numbers from 2^63 on are not an embedder's (the top bit marks wrapping ones).
    let numbered = OutgoingMessage::new("orders", "k", "numbered").sequenced(0, 9, 1 << 63);
    assert!(matches!(h.publish_blocking(&numbered), Err(Error::Invalid(InputError::BadSequence))));
    let largest = OutgoingMessage::new("orders", vec![b'k'; KEY_BYTES_MAX], vec![b'z'; PAYLOAD_BYTES_MAX]);
    h.publish_blocking(&largest).unwrap();
    let mut consumer = h.consumer(ConsumerConfig::topics("g", &["orders", "a", "trades"])).unwrap();
    let got = drain(&mut consumer, 4, Duration::from_secs(2));
    assert_eq!(got.len(), 3, "each stored once, nothing refused stored");
    // Order holds per key (per partition), not across partitions.
    let of_k: Vec<_> = got.iter().filter(|m| m.key == b"k").cloned().collect();
    assert_eq!(payloads(&of_k), ["once", "twice"]);
    let big = got.iter().find(|m| m.key != b"k").expect("the largest message");
    assert!(big.payload == largest.body.payload && big.key == largest.body.key, "the largest message whole");
    engine.close().unwrap();
}

/// A half message is never delivered until committed, and then where its commit lies;
/// a rolled-back one never; resolutions repeat their first answer and refuse the other one;
/// unresolved half messages survive a reopen (from the log and from a checkpoint).
#[test]
fn half_messages_are_delivered_only_once_committed_and_where_the_commit_lies() {
    let dir = tempfile::tempdir().unwrap();
    let options = || Options { half_check_delay: Duration::from_secs(3600), ..engine_options(dir.path(), 1, 1) };
    let engine = Engine::open(options()).unwrap();
    let h = engine.handle();
    let committed = h.prepare_blocking(&OutgoingMessage::new("pay", "k", "committed")).unwrap();
    let rolled_back = h.prepare_blocking(&OutgoingMessage::new("pay", "k", "rolled back")).unwrap();
    let pending = h.prepare_blocking(&OutgoingMessage::new("pay", "k", "pending")).unwrap();
    publish(&h, "pay", "k", "plain");
    let mut consumer = h.consumer(ConsumerConfig::topics("g", &["pay"])).unwrap();
    assert_eq!(payloads(&drain(&mut consumer, 2, Duration::from_millis(300))), ["plain"]);
    let commit = h.commit_message_blocking(committed).unwrap();
    assert_eq!(commit.outcome, MessageOutcome::Committed);
    assert_eq!(
        h.commit_message_blocking(committed).unwrap(),
        tradeshard_engine::Published { replayed: true, ..commit }
    );
    assert!(matches!(
        h.rollback_message_blocking(committed),
        Err(Error::Refused(Refusal::Resolved { outcome: "committed", .. }))
    ));
    h.rollback_message_blocking(rolled_back).unwrap();
    assert!(matches!(h.commit_message_blocking(rolled_back), Err(Error::Refused(Refusal::Resolved { .. }))));
    let got = drain(&mut consumer, 2, Duration::from_millis(300));
    assert_eq!(payloads(&got), ["committed"]);
    assert_eq!(got[0].offset, commit.id.offset, "delivered where the commit lies");
    consumer.commit_blocking().unwrap();
    drop(consumer);
    engine.close().unwrap();
    for _ in 0..2 {
        let engine = Engine::open(options()).unwrap();
        let h = engine.handle();
        let halves: Vec<_> = h.half_messages_blocking().unwrap().into_iter().map(|half| half.id).collect();
        assert_eq!(halves, [pending]);
        assert!(h.commit_message_blocking(committed).unwrap().replayed, "answers survive a reopen");
        engine.close().unwrap();
    }
    let engine = Engine::open(options()).unwrap();
    let h = engine.handle();
    h.commit_message_blocking(pending).unwrap();
    let mut consumer = h.consumer(ConsumerConfig::topics("g", &["pay"])).unwrap();
    assert_eq!(payloads(&drain(&mut consumer, 2, Duration::from_millis(500))), ["pending"]);
    engine.close().unwrap();
}

/// Answers by key: "yes" commit, "no" roll back, anything else unknown; counts its calls.
struct KeyChecker(Arc<AtomicUsize>);

impl MessageChecker for KeyChecker {
    fn check(&self, message: &HalfMessage) -> CheckFuture<'_> {
        self.0.fetch_add(1, Ordering::Relaxed);
        let answer = match message.entry.body.key.as_slice() {
            b"yes" => CheckAnswer::Commit,
            b"no" => CheckAnswer::Rollback,
            _ => CheckAnswer::Unknown,
        };
        Box::pin(async move { answer })
    }
}

/// Half messages left unresolved are checked after the delay, again at the interval, and
/// rolled back after the most checks; the checker's answers resolve them.
#[test]
fn unresolved_half_messages_are_checked_back_and_rolled_back_after_the_last_check() {
    let dir = tempfile::tempdir().unwrap();
    let calls = Arc::new(AtomicUsize::new(0));
    let options = Options {
        checkers: MessageCheckers::default().with("pay", KeyChecker(calls.clone())),
        half_check_delay: Duration::from_millis(100),
        half_check_interval: Duration::from_millis(100),
        half_checks_max: 3,
        activity_recovery_interval: Duration::from_millis(20),
        ..engine_options(dir.path(), 2, 2)
    };
    let engine = Engine::open(options).unwrap();
    let h = engine.handle();
    for key in ["yes", "no", "maybe"] {
        h.prepare_blocking(&OutgoingMessage::new("pay", key, key)).unwrap();
    }
    // A topic with no checker: every check unanswered.
    h.prepare_blocking(&OutgoingMessage::new("unchecked", "yes", "unchecked")).unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    while !h.half_messages_blocking().unwrap().is_empty() {
        assert!(Instant::now() < deadline, "half messages left: {:?}", h.half_messages_blocking().unwrap());
        std::thread::sleep(Duration::from_millis(20));
    }
    let mut consumer = h.consumer(ConsumerConfig::topics("g", &["pay", "unchecked"])).unwrap();
    assert_eq!(payloads(&drain(&mut consumer, 2, Duration::from_millis(500))), ["yes"]);
    assert_eq!(calls.load(Ordering::Relaxed), 1 + 1 + 3, "yes and no once each, maybe three times");
    engine.close().unwrap();
}

fn fast_retries(retries: u8) -> MessagePolicy {
    let mut policy = MessagePolicy { retries, ..MessagePolicy::default() };
    policy.retry_delays.iter_mut().for_each(|delay| *delay = Duration::from_millis(50));
    policy
}

/// A nacked message comes back to its group alone, as the next attempt, without holding back
/// the partition; after the last retry it is a dead letter, which stays until replayed (then
/// delivered to the group once more) or dropped; a repeated nack answers the first.
#[test]
fn nacked_messages_are_retried_then_dead_lettered_then_replayed() {
    let dir = tempfile::tempdir().unwrap();
    let mut options = engine_options(dir.path(), 1, 1);
    options.upkeep.messages = fast_retries(2);
    let engine = Engine::open(options).unwrap();
    let h = engine.handle();
    publish(&h, "jobs", "k", "fails");
    publish(&h, "jobs", "k", "works");
    let mut failing = h.consumer(ConsumerConfig::topics("failing", &["jobs"])).unwrap();
    let mut other = h.consumer(ConsumerConfig::topics("other", &["jobs"])).unwrap();
    let first = drain(&mut failing, 2, Duration::from_secs(2));
    assert_eq!(payloads(&first), ["fails", "works"], "a failure holds nothing back");
    let nacked = failing.nack_blocking(&first[0]).unwrap();
    assert!(matches!(nacked.outcome, MessageOutcome::Retrying { attempt: 1, .. }), "{nacked:?}");
    assert!(failing.nack_blocking(&first[0]).unwrap().replayed, "a repeated nack answers the first");
    let mut attempts = Vec::new();
    for attempt in 1..=2 {
        let again = drain(&mut failing, 1, Duration::from_secs(5));
        assert_eq!((payloads(&again), again[0].attempt), (vec!["fails".to_string()], attempt));
        attempts.push(failing.nack_blocking(&again[0]).unwrap().outcome);
    }
    assert_eq!(attempts[1], MessageOutcome::DeadLettered { attempts: 3 });
    assert!(drain(&mut failing, 1, Duration::from_millis(300)).is_empty());
    assert_eq!(payloads(&drain(&mut other, 3, Duration::from_millis(500))), ["fails", "works"], "once per group");
    let dead = h.dead_letters_blocking("failing").unwrap();
    assert_eq!(dead.len(), 1);
    assert_eq!(dead[0].entry.body.payload, b"fails");
    assert!(h.dead_letters_blocking("other").unwrap().is_empty());
    drop((failing, other));
    engine.close().unwrap();

    let mut options = engine_options(dir.path(), 1, 1);
    options.upkeep.messages = fast_retries(2);
    let engine = Engine::open(options).unwrap();
    let h = engine.handle();
    assert_eq!(h.dead_letters_blocking("failing").unwrap(), dead, "dead letters survive a reopen");
    let replayed = h.end_dead_letter_blocking("failing", dead[0].id, true).unwrap();
    assert_eq!(replayed.outcome, MessageOutcome::Replayed);
    assert!(h.end_dead_letter_blocking("failing", dead[0].id, true).unwrap().replayed);
    assert!(matches!(h.end_dead_letter_blocking("failing", dead[0].id, false), Err(Error::Refused(_))));
    let mut failing = h.consumer(ConsumerConfig::topics("failing", &["jobs"])).unwrap();
    let mut other = h.consumer(ConsumerConfig::topics("other", &["jobs"])).unwrap();
    let after = drain(&mut failing, 4, Duration::from_millis(500));
    assert_eq!(payloads(&after).last().map(String::as_str), Some("fails"), "the replay, to its group");
    assert_eq!(after.last().unwrap().attempt, 0);
    let others = drain(&mut other, 4, Duration::from_millis(500));
    assert!(others.iter().all(|m| m.attempt == 0) && others.len() == 2, "no retry reaches another group");
    engine.close().unwrap();
}

/// A delayed publish is not delivered before its time, and is after it, also when the engine
/// was closed in between (the schedule is in the checkpoint and the log).
#[test]
fn a_delayed_publish_is_delivered_once_due_also_after_a_reopen() {
    let dir = tempfile::tempdir().unwrap();
    let engine = Engine::open(engine_options(dir.path(), 2, 2)).unwrap();
    let h = engine.handle();
    let now_ms = || std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_millis() as u64;
    // Due far enough ahead that a slow start still leaves seconds of polling before the first,
    // and that the second is still scheduled when the engine closes.
    let now = now_ms();
    let (soon_due, later_due) = (now + 3_000, now + 5_000);
    let soon = h.publish_blocking(&OutgoingMessage::new("later", "a", "soon").deliver_at(soon_due)).unwrap();
    assert!(matches!(soon.outcome, MessageOutcome::Scheduled { .. }));
    h.publish_blocking(&OutgoingMessage::new("later", "b", "after reopen").deliver_at(later_due)).unwrap();
    let mut consumer = h.consumer(ConsumerConfig::topics("g", &["later"])).unwrap();
    // Polled until a second before it is due, however long the steps above took: a poll begun
    // just before then waits 50 ms, well inside that second.
    let until_early = Duration::from_millis((soon_due - 1_000).saturating_sub(now_ms()));
    assert!(drain(&mut consumer, 1, until_early).is_empty(), "not before its time");
    let got = drain(&mut consumer, 1, Duration::from_secs(10));
    assert_eq!(payloads(&got), ["soon"]);
    assert!(got[0].at_ms >= soon_due, "released once due");
    consumer.commit_blocking().unwrap();
    drop(consumer);
    engine.close().unwrap();
    let engine = Engine::open(engine_options(dir.path(), 2, 2)).unwrap();
    let mut consumer = engine.handle().consumer(ConsumerConfig::topics("g", &["later"])).unwrap();
    let got = drain(&mut consumer, 1, Duration::from_secs(10));
    assert_eq!(payloads(&got), ["after reopen"]);
    assert!(got[0].at_ms >= later_due, "released once due");
    engine.close().unwrap();
}

/// Broadcast consumers of a topic each read every message under offsets of their own; a
/// clustered group's members split the partitions and read each message once between them.
#[test]
fn broadcast_consumers_each_read_every_message_and_a_group_reads_each_once() {
    use tradeshard_engine::ConsumerMode;
    let dir = tempfile::tempdir().unwrap();
    let engine = Engine::open(engine_options(dir.path(), 4, 2)).unwrap();
    let h = engine.handle();
    for i in 0..100 {
        publish(&h, "config", &format!("node-{}", i % 10), &format!("invalidate {i}"));
    }
    let broadcast = |instance: &str| {
        let mode = ConsumerMode::Broadcast { instance: instance.into() };
        h.consumer(ConsumerConfig { mode, ..ConsumerConfig::topics("caches", &["config"]) }).unwrap()
    };
    let (mut a, mut b) = (broadcast("a"), broadcast("b"));
    assert_eq!(drain(&mut a, 100, Duration::from_secs(5)).len(), 100);
    assert_eq!(drain(&mut b, 100, Duration::from_secs(5)).len(), 100);
    let mut one = h.consumer(ConsumerConfig::topics("workers", &["config"])).unwrap();
    let mut two = h.consumer(ConsumerConfig::topics("workers", &["config"])).unwrap();
    let (mut seen_one, mut seen_two) = (Vec::new(), Vec::new());
    let deadline = Instant::now() + Duration::from_secs(5);
    while seen_one.len() + seen_two.len() < 100 && Instant::now() < deadline {
        seen_one.extend(payloads(&one.poll_messages_blocking(100, Duration::from_millis(20)).unwrap()));
        seen_two.extend(payloads(&two.poll_messages_blocking(100, Duration::from_millis(20)).unwrap()));
    }
    assert!(!seen_one.is_empty() && !seen_two.is_empty(), "the members split the partitions");
    let mut all: Vec<_> = seen_one.into_iter().chain(seen_two).collect();
    all.sort();
    all.dedup();
    assert_eq!(all.len(), 100, "each message once between the members");
    drop((a, b, one, two));
    engine.close().unwrap();
}

/// Past the bytes of bodies a shard may hold, a prepare (or a delayed publish) is refused
/// with a typed error and leaves no trace; once half messages resolve there is room again.
#[test]
fn held_message_bodies_are_bounded_and_a_refusal_leaves_no_trace() {
    let dir = tempfile::tempdir().unwrap();
    let mut options = engine_options(dir.path(), 1, 1);
    options.upkeep.messages.held_bytes_max = 4096;
    let engine = Engine::open(options).unwrap();
    let h = engine.handle();
    let big = |i: usize| OutgoingMessage::new("pay", "k", vec![b'x'; 1000 + i]);
    let mut prepared = Vec::new();
    let refused = loop {
        match h.prepare_blocking(&big(prepared.len())) {
            Ok(id) => prepared.push(id),
            Err(error) => break error,
        }
        assert!(prepared.len() < 10, "the bound must refuse");
    };
    assert!(matches!(refused, Error::Refused(Refusal::MessagesFull { max: 4096, .. })), "{refused:?}");
    let end = h.stats_blocking().unwrap().shards[0].log_end;
    let later = OutgoingMessage::new("pay", "k", vec![b'y'; 2000]).deliver_at(u64::MAX / 2);
    assert!(matches!(h.publish_blocking(&later), Err(Error::Invalid(InputError::DelayTooLong { .. }))));
    let soon = OutgoingMessage::new("pay", "k", vec![b'y'; 2000]).deliver_at(now_ms() + 60_000);
    assert!(matches!(h.publish_blocking(&soon), Err(Error::Refused(Refusal::MessagesFull { .. }))));
    assert_eq!(h.stats_blocking().unwrap().shards[0].log_end, end, "refusals write nothing");
    assert_eq!(h.half_messages_blocking().unwrap().len(), prepared.len());
    h.commit_message_blocking(prepared[0]).unwrap();
    h.prepare_blocking(&big(0)).unwrap();
    engine.close().unwrap();
}

fn now_ms() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_millis() as u64
}

/// A half message made by a producer is prepared once however often it is sent; a delayed
/// publish repeated after its release answers as it first did; a consumer of no topic is
/// refused.
#[test]
fn a_producers_prepare_and_delayed_publish_answer_their_first_answer() {
    let dir = tempfile::tempdir().unwrap();
    let engine = Engine::open(engine_options(dir.path(), 2, 2)).unwrap();
    let h = engine.handle();
    let mut producer = h.producer();
    let half = producer.message("pay", b"k", b"once");
    let id = h.prepare_blocking(&half).unwrap();
    assert_eq!(h.prepare_blocking(&half).unwrap(), id);
    assert_eq!(h.half_messages_blocking().unwrap().len(), 1);
    h.commit_message_blocking(id).unwrap();
    assert_eq!(h.prepare_blocking(&half).unwrap(), id, "a repeat after the commit: the same id");
    assert!(h.half_messages_blocking().unwrap().is_empty());
    let delayed = producer.message("later", b"k", b"soon").deliver_at(now_ms() + 100);
    let first = h.publish_blocking(&delayed).unwrap();
    let mut consumer = h.consumer(ConsumerConfig::topics("g", &["later", "pay"])).unwrap();
    assert_eq!(payloads(&drain(&mut consumer, 2, Duration::from_secs(3))), ["once", "soon"]);
    let again = h.publish_blocking(&delayed).unwrap();
    assert_eq!(again, tradeshard_engine::Published { replayed: true, ..first }, "still the first answer");
    assert!(matches!(first.outcome, MessageOutcome::Scheduled { .. }));
    let nothing = ConsumerConfig { topics: Vec::new(), ..ConsumerConfig::new("g") };
    assert!(matches!(h.consumer(nothing), Err(Error::Invalid(InputError::NoTopics))));
    drop(consumer);
    engine.close().unwrap();
}

/// The messages of one `publish_all` to one partition (a Kafka client's record batch) lie at
/// consecutive offsets, whatever other writes the shard takes meanwhile: a Kafka producer
/// takes its records' offsets as the batch's first plus their index.
#[test]
fn a_batch_published_together_lies_at_consecutive_offsets_among_other_writes() {
    let dir = tempfile::tempdir().unwrap();
    let engine = Engine::open(engine_options(dir.path(), 1, 1)).unwrap();
    let h = engine.handle();
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let writers: Vec<_> = (0..2u64)
        .map(|writer| {
            let (h, stop) = (h.clone(), stop.clone());
            std::thread::spawn(move || {
                let mut order = 0;
                // Until told to stop, or the engine closes under a failed assertion.
                while !stop.load(Ordering::SeqCst)
                    && h.create_trade_blocking(tradeshard_tests::new_trade(1 + writer, writer * 1_000_000 + order, 10))
                        .is_ok()
                {
                    order += 1;
                }
            })
        })
        .collect();
    for batch in 0..50 {
        let messages: Vec<_> = (0..32)
            .map(|n| OutgoingMessage::new("ledger", format!("k{n}"), format!("{batch}-{n}")).to_partition(0))
            .collect();
        let published = futures_lite::future::block_on(h.publish_all(&messages)).unwrap();
        let offsets: Vec<u64> = published.into_iter().map(|p| p.unwrap().id.offset).collect();
        let base = offsets[0];
        assert_eq!(offsets, (base..base + 32).collect::<Vec<_>>(), "batch {batch}");
    }
    stop.store(true, Ordering::SeqCst);
    for writer in writers {
        writer.join().unwrap();
    }
    engine.close().unwrap();
}
