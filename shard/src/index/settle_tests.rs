//! A checkpoint's freeze and settle of the maps of recent keys (`ShardIndex::freeze_for_snapshot`,
//! `ShardIndex::settle_frozen_part`) against a model of what memory must hold: the order keys
//! and users' trades applied since the last freeze, and every claim still pending. The snapshot
//! taken at a freeze keeps its moment whatever is applied after it.

use std::collections::HashMap;

use proptest::prelude::*;
use tradeshard_wal::testing::appended_at;

use crate::index::{order_key, ShardIndex};
use crate::layered::SETTLE_PARTS;
use crate::record::TradeRecord;
use crate::system_record::{ClaimOutcome, ClaimSettled, OrderClaim};
use crate::trade::{NewTrade, TradeId};

const MERCHANT: u64 = 9;

#[derive(Debug, Clone)]
enum Op {
    Create {
        user: u64,
    },
    Claim,
    Confirm {
        nth_pending: usize,
    },
    /// A checkpoint's snapshot (a failed checkpoint freezes again without a settle).
    Freeze,
    /// The checkpoint of the last freeze is durable.
    Settle,
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        6 => (0u64..4).prop_map(|user| Op::Create { user }),
        1 => Just(Op::Claim),
        1 => (0usize..4).prop_map(|nth_pending| Op::Confirm { nth_pending }),
        1 => Just(Op::Freeze),
        1 => Just(Op::Settle),
    ]
}

fn key(order: u64) -> u128 {
    order_key(MERCHANT, &format!("O-{order}"))
}

/// What memory holds: order keys with their trades, users' trades, claims (trade once
/// confirmed).
#[derive(Debug, Clone, Default, PartialEq)]
struct Held {
    orders: HashMap<u128, TradeId>,
    users: HashMap<u64, Vec<TradeId>>,
    claims: HashMap<u128, Option<TradeId>>,
}

fn read(index: &ShardIndex, orders: u64) -> Held {
    let mut held = Held::default();
    for order in 0..orders {
        if let Some((id, _)) = index.by_order(key(order)) {
            held.orders.insert(key(order), id);
        }
        if let Some(claim) = index.claim(key(order)) {
            held.claims.insert(key(order), claim.trade);
        }
    }
    for user in 1..=4 {
        if !index.user_trades(user).is_empty() {
            held.users.insert(user, index.user_trades(user).to_vec());
        }
    }
    held
}

proptest! {
    #[test]
    fn a_settle_leaves_what_came_after_the_freeze_and_the_pending_claims(ops in proptest::collection::vec(op(), 1..150)) {
        let mut index = ShardIndex::default();
        index.lay_out_trades(3);
        let mut model = Held::default();
        // What the last freeze's snapshot holds, and the snapshots still alive.
        let mut frozen: Option<Held> = None;
        let mut snapshots: Vec<(ShardIndex, Held)> = Vec::new();
        let (mut orders, mut counter, mut seq) = (0u64, 0u64, 0u64);
        for op in ops {
            match op {
                Op::Create { user } => {
                    counter += 1;
                    let trade = NewTrade {
                        buyer_id: user + 1,
                        merchant_id: MERCHANT,
                        merchant_order_no: format!("O-{orders}"),
                        amount: 100,
                        currency: "CNY".into(),
                        memo: String::new(),
                    };
                    let record = TradeRecord::created(TradeId::new(0, counter), &trade.validate().unwrap(), 1);
                    index.apply(&record, appended_at(seq)).unwrap();
                    model.orders.insert(key(orders), record.trade_id);
                    model.users.entry(user + 1).or_default().push(record.trade_id);
                    orders += 1;
                }
                Op::Claim => {
                    let claim = OrderClaim { key: key(orders), body: 1, buyer_id: 7, merchant_id: MERCHANT, at_ms: 1 };
                    index.apply_claim(&claim).unwrap();
                    model.claims.insert(key(orders), None);
                    orders += 1;
                }
                Op::Confirm { nth_pending } => {
                    let mut pending: Vec<u128> =
                        model.claims.iter().filter(|(_, trade)| trade.is_none()).map(|(key, _)| *key).collect();
                    pending.sort_unstable();
                    let Some(&key) = pending.get(nth_pending) else { continue };
                    let trade = TradeId::new(1, seq + 1);
                    index.apply_claim_settled(&ClaimSettled { key, outcome: ClaimOutcome::Confirmed(trade), at_ms: 1 }).unwrap();
                    model.claims.insert(key, Some(trade));
                }
                Op::Freeze => {
                    index.freeze_for_snapshot();
                    snapshots.push((index.clone(), model.clone()));
                    frozen = Some(model.clone());
                }
                Op::Settle => {
                    for part in 0..SETTLE_PARTS {
                        index.settle_frozen_part(part);
                    }
                    prop_assert!(!index.has_frozen());
                    if let Some(frozen) = frozen.take() {
                        // What the snapshot held is in runs now: it leaves, but for the claims
                        // still pending and what came after it.
                        model.orders.retain(|key, _| !frozen.orders.contains_key(key));
                        for (user, ids) in &mut model.users {
                            ids.drain(..frozen.users.get(user).map_or(0, Vec::len));
                        }
                        model.users.retain(|_, ids| !ids.is_empty());
                        model.claims.retain(|key, trade| trade.is_none() || frozen.claims.get(key) != Some(trade));
                    }
                    snapshots.clear();
                }
            }
            seq += 1;
            prop_assert_eq!(&read(&index, orders), &model);
            for (snapshot, at) in &snapshots {
                prop_assert_eq!(&read(snapshot, orders), at);
            }
        }
    }
}
