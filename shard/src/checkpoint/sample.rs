//! A sample checkpoint holding one entry of each kind: the fuzz target's seed and the tests'
//! sample (`testing` feature).

use super::codec::{Encoder, Header};
use crate::accounts::{AccountItem, AccountKey, Balance, RequestEntry};
use crate::currency::Currency;
use crate::index::{ClaimEntry, CreatedAt, GroupOffset, Item, RefundEntry, RunStore, Scalars, StoredPart, TradeEntry};
use crate::journal::AccountOp;
use crate::lifecycle::Lifecycle;
use crate::message::{MessageBody, RollbackReason};
use crate::message_book::{
    AnswerKey, DeadEntry, HalfEntry, MessageItem, MessageOutcome, MessageReceipt, ScheduledEntry,
};
use crate::tcc::{BranchAction, BranchPlan, CancelReason, Decision};
use crate::tcc_book::{ActivityEntry, ActivityState, BranchEntry, BranchState, TccItem};
use crate::trade::{TradeId, TradeStatus};

/// A checkpoint file of shard 2 at position 100 holding one entry of each kind: the fuzz
/// target's seed and the tests' sample (`testing` feature).
pub fn sample_file() -> Vec<u8> {
    encode_sample(&sample_items())
}

pub(super) fn sample_items() -> Vec<Item> {
    let id = TradeId::new(3, 7);
    let entry = TradeEntry {
        logical_shard: 3,
        user_id: 11,
        merchant_id: 12,
        lifecycle: Lifecycle { status: TradeStatus::Refunded, amount: 500, refunded: 120, from_balance: true },
        currency: Currency::parse("EUR").unwrap(),
        updated_ms: 1_700_000_000_123,
        created_at: CreatedAt::Stored(StoredPart { seq: 99, offset: 4_000, len: 140 }),
    };
    let eur = Currency::parse("EUR").unwrap();
    let credit = BranchAction::Credit { user_id: 11, currency: eur, amount: 70 };
    let plan = BranchPlan { shard: 1, branch: 1, action: credit };
    vec![
        Item::Trade(id, entry),
        Item::Run(RunStore::Orders, 3),
        Item::Run(RunStore::Claims, 4),
        Item::User(11, vec![id, TradeId::new(3, 9)]),
        Item::Refund(42, RefundEntry { trade_id: id, amount: 120, refunded_after: 120, at_ms: 5 }),
        Item::Claim(43, ClaimEntry { body: 1, buyer_id: 2, trade: None }),
        Item::Claim(44, ClaimEntry { body: 1, buyer_id: 2, trade: Some(id) }),
        Item::Group("settlement".into(), GroupOffset { offset: 1234, at_ms: 6 }),
        Item::Account(AccountItem::Balance(
            AccountKey { user_id: 11, currency: eur },
            Balance { available: 7, frozen: 3, incoming: 2 },
        )),
        Item::Tcc(TccItem::Branch(46, 1, BranchEntry { action: credit, state: BranchState::Fenced })),
        Item::Tcc(TccItem::Activity(
            47,
            ActivityEntry {
                branches: vec![plan].into(),
                deadline_ms: 9,
                begun_ms: 8,
                state: ActivityState::Decided(Decision::Cancel(CancelReason::Timeout)),
                first_state: None,
            },
        )),
        Item::Tcc(TccItem::InTransit(eur, -70)),
        Item::Account(AccountItem::Request(
            45,
            RequestEntry {
                op: AccountOp::Transfer { to_user: 12 },
                currency: eur,
                amount: 9,
                at_ms: 7,
                after: Balance { available: 7, frozen: 3, incoming: 2 },
            },
        )),
    ]
    .into_iter()
    .chain(sample_messages())
    .collect()
}

fn sample_messages() -> Vec<Item> {
    let body = MessageBody {
        topic: "orders".into(),
        key: b"k".to_vec(),
        headers: vec![("h".into(), b"v".to_vec())],
        payload: b"payload".to_vec(),
    };
    let answer = |offset, outcome| MessageReceipt { offset, outcome, replayed: false };
    let items = vec![
        MessageItem::Producer { id: 77, last_ms: 5, entries: vec![(1, 20, 0), (2, 21, 90)] },
        MessageItem::Half(22, HalfEntry { body: body.clone(), prepared_ms: 6, checks: 2, checked_ms: 9 }),
        MessageItem::Scheduled(
            23,
            ScheduledEntry { body: body.clone(), due_ms: 50, group: "billing".into(), attempt: 3 },
        ),
        MessageItem::Dead(24, DeadEntry { body, group: "billing".into(), attempts: 17, at_ms: 8, origin: 19 }),
        MessageItem::Answer(AnswerKey::Half(18), answer(25, MessageOutcome::RolledBack(RollbackReason::Checker))),
        MessageItem::Answer(
            AnswerKey::Nack { group: 5, offset: 19 },
            answer(24, MessageOutcome::Retrying { attempt: 1, due_ms: 40 }),
        ),
        MessageItem::Answer(AnswerKey::Dead { group: 5, offset: 12 }, answer(26, MessageOutcome::Dropped)),
        MessageItem::NackFloor(5, 3),
    ];
    items.into_iter().map(Item::Message).collect()
}

pub(super) fn encode_sample(items: &[Item]) -> Vec<u8> {
    let header = Header {
        shard_id: 2,
        scalars: Scalars {
            applied_end: 100,
            events_end: 98,
            counter_max: 9,
            table_counter_max: 0,
            claims_known_below: 8,
        },
        parts_len: 4_140,
        created_ms: 8,
        frame: Some(tradeshard_wal::FramePos { segment_base: 64, offset: 3 * 4096, first_seq: 96 }),
        frozen_blocks: 0,
    };
    let mut out = Vec::new();
    let mut encoder = Encoder::new(&header, &mut out);
    for item in items {
        encoder.push(item, &mut out);
    }
    encoder.finish(&mut out);
    out
}
