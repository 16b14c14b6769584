//! Tests of the message book: producers' windows, nack floors, dead letters' ends.

use super::*;
use crate::message::MessageBody;

fn record(op: MessageOp, reference: Option<u64>, group: &str, attempt: u8) -> MessageRecord {
    let mut record = MessageRecord::new(op, 1);
    (record.reference, record.group, record.attempt) = (reference, group.to_string(), attempt);
    record.body = Some(MessageBody { topic: "t".into(), ..MessageBody::default() });
    record
}

#[test]
fn a_producers_window_keeps_the_highest_sequence_of_each_slot_and_tells_what_is_too_old() {
    let mut window = ProducerWindow::new();
    let slots = PRODUCER_WINDOW as u64;
    window.note(1 + slots, (500, 0), 1);
    window.note(1, (7, 0), 1);
    assert_eq!(window.lookup(1 + slots), Ok(Some((500, 0))), "a lower sequence never replaces a higher");
    assert_eq!(window.lookup(1), Err(()), "too old to tell");
    assert_eq!(window.lookup(2 + slots), Ok(None));
    window.note(2 + slots, (501, 90), 1);
    assert_eq!(window.lookup(2 + slots), Ok(Some((501, 90))), "a delayed publish keeps its due time");
}

#[test]
fn a_nack_whose_answer_went_leaves_its_group_a_floor_that_replay_rebuilds() {
    let mut book = MessageBook::default();
    let mut seq = 0;
    for offset in 0..=ANSWERS_KEPT as u64 {
        let mut nack = record(MessageOp::Nack, Some(offset), "g", 1);
        nack.due_ms = Some(u64::MAX);
        seq += 1;
        book.apply(1_000_000 + seq, &nack).unwrap();
    }
    let group = group_hash("g");
    assert!(book.answer_of(AnswerKey::Nack { group, offset: 0 }).is_none(), "the oldest answer went");
    assert!(book.nack_too_old(group, 0) && !book.nack_too_old(group, 1));
    assert!(!book.nack_too_old(group_hash("other"), 0), "floors are per group");
    let mut restored = MessageBook::default();
    for item in book.items() {
        restored.restore(item).unwrap();
    }
    assert!(restored.nack_too_old(group, 0) && !restored.nack_too_old(group, 1));
    assert_eq!(
        restored.answer_of(AnswerKey::Nack { group, offset: 7 }),
        book.answer_of(AnswerKey::Nack { group, offset: 7 })
    );
    assert_eq!(restored.held_bytes(), book.held_bytes());
    // Retention past the floor: the floor goes (the log no longer holds what it refused).
    restored.forget_nack_floors_below(0);
    assert!(restored.nack_too_old(group, 0), "a floor above the log's first offset stays");
    restored.forget_nack_floors_below(1);
    assert!(!restored.nack_too_old(group, 0), "a floor at the log's first offset goes");
    assert!(restored.items().all(|item| !matches!(item, MessageItem::NackFloor(..))), "nor is it checkpointed");
}

#[test]
fn a_dead_letters_end_is_kept_per_group() {
    let mut book = MessageBook::default();
    book.apply(10, &record(MessageOp::DeadLetter, Some(3), "g", 2)).unwrap();
    assert!(book.apply(11, &record(MessageOp::Replay, Some(10), "h", 0)).is_err(), "another group's letter");
    book.apply(11, &record(MessageOp::Replay, Some(10), "g", 0)).unwrap();
    let answer = book.answer_of(AnswerKey::Dead { group: group_hash("g"), offset: 10 }).unwrap();
    assert_eq!((answer.offset, answer.outcome), (11, MessageOutcome::Replayed));
    assert!(book.answer_of(AnswerKey::Dead { group: group_hash("h"), offset: 10 }).is_none());
    assert_eq!(book.held_bytes(), 0);
}

#[test]
fn wrapping_sequence_numbers_unwrap_near_the_producers_highest() {
    let period = 1u64 << 31;
    let wrapping = |kafka: u64| SEQUENCE_WRAPS | (kafka + 1);
    // Plain numbers are themselves.
    assert_eq!(unwrap_sequence(5, 1 << 40), 5);
    // A new producer's numbers are Kafka's plus one, up to the wrap.
    assert_eq!(unwrap_sequence(wrapping(0), 0), 1);
    assert_eq!(unwrap_sequence(wrapping(period - 1), 0), period);
    // Past the wrap, numbers go on; a repeat from before it is found where it was.
    assert_eq!(unwrap_sequence(wrapping(0), period), period + 1);
    assert_eq!(unwrap_sequence(wrapping(period - 1), period + 3), period);
    assert_eq!(unwrap_sequence(wrapping(5), 7 * period + 2), 7 * period + 6);
    assert_eq!(unwrap_sequence(wrapping(period - 2), 7 * period + 2), 7 * period - 1);
    // Near the top of u64, no number overflows.
    assert!(unwrap_sequence(wrapping(3), u64::MAX - 10) >= u64::MAX - 10 - period);
}
