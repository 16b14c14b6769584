//! An open's replay of the keyed maps: the order keys, the claims, the account requests' numbers
//! and the users' lists that the replayed records change are set aside per part of their map
//! and applied part by part.
//!
//! Applied one record at a time, in log order, every record's order key and user land in a
//! random place of maps of millions of entries, far larger than the caches: a miss per map per
//! record, the most of a replay's time. The maps are split in 256 parts (`partitioned.rs`), and
//! a part of a replay's worth of keys fits in a core's cache: applied part by part, each part
//! is read from memory once. Changes to different keys commute, and a key's changes stay in
//! log order (a key has one part, the same in the order map and the claims' map, which share
//! a key type), so the maps end as a replay in log order leaves them. Nothing else the replay
//! does reads these maps, and a record's other changes (its trade, its money) are applied in
//! log order as before.
//!
//! A record that does not apply is reported with its position; with several, the first in log
//! order, as a replay in log order would.

use tradeshard_wal::Appended;

use crate::accounts::RequestEntry;
use crate::partitioned::{PartitionedMap, PARTS};
use crate::record::TradeRecord;
use crate::system_record::{ClaimSettled, OrderClaim};
use crate::tcc_aside::EndedAside;
use crate::trade::TradeId;

use super::{RunStore, ShardIndex};

/// Changes set aside before they are applied: a bound on the memory they hold (64 bytes each,
/// 96 for an account request, and 16 for a create's user: about 200 MB at most).
pub(crate) const STAGED_MAX: usize = 1 << 21;

/// A change to the order keys or the claims, with the position of its record.
enum KeyChange {
    Created { key: u128, id: TradeId, body: u64, seq: u64 },
    Claim { claim: OrderClaim, seq: u64 },
    Settled { settled: ClaimSettled, seq: u64 },
}

/// An account request's number taken, with what it answers and the position of its record.
type RequestTaken = (u128, RequestEntry, u64);

const _: () = assert!(std::mem::size_of::<KeyChange>() <= 64, "STAGED_MAX's bound on memory counts 64 bytes a change");
const _: () = assert!(std::mem::size_of::<RequestTaken>() <= 96, "STAGED_MAX's bound counts 96 bytes a request");

/// The changes to the keyed maps set aside, per part, each part's in log order.
pub(crate) struct StagedKeys {
    keys: Vec<Vec<KeyChange>>,
    users: Vec<Vec<(u64, TradeId)>>,
    requests: Vec<Vec<RequestTaken>>,
    /// The branches and activities that ended (`tcc_aside.rs`).
    pub(crate) ended: EndedAside,
    staged: usize,
    /// Changes set aside before they must be applied: [`STAGED_MAX`] but in tests.
    limit: usize,
}

impl StagedKeys {
    /// Room for about the changes the last interval between checkpoints wrote to each store's
    /// runs (`expected`), so that the lists do not grow by doubling; each bound by
    /// [`STAGED_MAX`] (the ended entries by theirs).
    pub(crate) fn with_expected(expected: impl Fn(RunStore) -> u64) -> Self {
        let mut staged = Self::with_limit(STAGED_MAX);
        staged.ended = EndedAside::with_expected(expected(RunStore::Branches), expected(RunStore::Activities));
        let per_part = |expected: u64| (expected.min(STAGED_MAX as u64) as usize).div_ceil(PARTS);
        let keys = expected(RunStore::Orders) + 2 * expected(RunStore::Claims);
        staged.keys.iter_mut().for_each(|part| part.reserve(per_part(keys)));
        staged.users.iter_mut().for_each(|part| part.reserve(per_part(expected(RunStore::Users))));
        staged.requests.iter_mut().for_each(|part| part.reserve(per_part(expected(RunStore::Requests))));
        staged
    }

    pub(crate) fn with_limit(limit: usize) -> Self {
        StagedKeys {
            keys: (0..PARTS).map(|_| Vec::new()).collect(),
            users: (0..PARTS).map(|_| Vec::new()).collect(),
            requests: (0..PARTS).map(|_| Vec::new()).collect(),
            ended: EndedAside::with_limit(limit),
            staged: 0,
            limit,
        }
    }

    /// Sets aside a create's order key and its user's new trade.
    pub(crate) fn created(&mut self, key: u128, id: TradeId, body: u64, user_id: u64, seq: u64) {
        self.keys[PartitionedMap::<u128, ()>::part_of(&key)].push(KeyChange::Created { key, id, body, seq });
        self.users[PartitionedMap::<u64, ()>::part_of(&user_id)].push((user_id, id));
        self.staged += 1;
    }

    /// Sets aside an account request's number (`AccountBook::apply_but_request`).
    pub(crate) fn request(&mut self, key: u128, entry: RequestEntry, seq: u64) {
        self.requests[PartitionedMap::<u128, ()>::part_of(&key)].push((key, entry, seq));
        self.staged += 1;
    }

    pub(crate) fn claim(&mut self, claim: &OrderClaim, seq: u64) {
        self.keys[PartitionedMap::<u128, ()>::part_of(&claim.key)].push(KeyChange::Claim { claim: *claim, seq });
        self.staged += 1;
    }

    pub(crate) fn settled(&mut self, settled: &ClaimSettled, seq: u64) {
        self.keys[PartitionedMap::<u128, ()>::part_of(&settled.key)]
            .push(KeyChange::Settled { settled: *settled, seq });
        self.staged += 1;
    }

    /// Whether the changes set aside reached their bound ([`STAGED_MAX`]), or the ended
    /// entries theirs.
    pub(crate) fn full(&self) -> bool {
        self.staged >= self.limit || self.ended.full()
    }
}

impl ShardIndex {
    /// An open's replay of a `Created` record but for its order key and its user's list, which
    /// are set aside (`staged.rs`).
    pub(crate) fn apply_created_unkeyed(&mut self, record: &TradeRecord, at: Appended) -> Result<(), &'static str> {
        self.events_end = self.events_end.max(at.seq + 1);
        if self.trades.contains(record.trade_id) {
            return Err("trade created twice");
        }
        self.insert_created(record, at);
        Ok(())
    }

    /// Applies the changes set aside, part by part, and empties `staged`. The first change in
    /// log order that does not apply is returned with its record's position (the maps are then
    /// not what a replay would leave: the open fails).
    pub(crate) fn apply_staged(&mut self, staged: &mut StagedKeys) -> Result<(), (u64, &'static str)> {
        let mut first: Option<(u64, &'static str)> = None;
        for part in staged.keys.iter_mut() {
            for change in part.drain(..) {
                let (seq, applied) = match change {
                    KeyChange::Created { key, id, body, seq } => (seq, self.take_order_key(key, id, body)),
                    KeyChange::Claim { claim, seq } => (seq, self.apply_claim(&claim)),
                    KeyChange::Settled { settled, seq } => (seq, self.apply_claim_settled(&settled)),
                };
                if let Err(reason) = applied {
                    // A part's later changes may depend on this one: the part stops here.
                    if first.is_none_or(|(first_seq, _)| seq < first_seq) {
                        first = Some((seq, reason));
                    }
                    // Dropping the drain empties the rest of the part's list.
                    break;
                }
            }
        }
        for part in staged.requests.iter_mut() {
            for (key, entry, seq) in part.drain(..) {
                if let Err(reason) = self.accounts.take_request(key, entry) {
                    if first.is_none_or(|(first_seq, _)| seq < first_seq) {
                        first = Some((seq, reason));
                    }
                    break;
                }
            }
        }
        for part in staged.users.iter_mut() {
            for (user_id, id) in part.drain(..) {
                self.by_user.get_or_default(user_id).push(id);
            }
        }
        self.tcc.insert_aside(&mut staged.ended);
        staged.staged = 0;
        first.map_or(Ok(()), Err)
    }
}

#[cfg(test)]
mod tests {
    //! The replay with its keyed changes set aside (flushed early and often, or once at the
    //! end) against a model of the order-number rules applied one record at a time.

    use std::collections::{HashMap, HashSet};

    use proptest::prelude::*;
    use tradeshard_wal::testing::appended_at;
    use tradeshard_wal::Appended;

    use super::StagedKeys;
    use crate::accounts::AccountKey;
    use crate::index::{order_key, ShardIndex};
    use crate::journal::{AccountOp, JournalRecord};
    use crate::keys::account_request_key;
    use crate::record::{CreatedFields, Funding, RecordKind, TradeRecord};
    use crate::replay::{apply_staged, replay_batch, Deferred};
    use crate::system_record::{ClaimOutcome, ClaimSettled, LogRecord, OrderClaim};
    use crate::trade::TradeId;
    use crate::Currency;
    use crate::TradeError;

    const MERCHANT: u64 = 9;

    #[derive(Debug, Clone)]
    enum Op {
        Create {
            user: u64,
            order: u8,
        },
        Claim {
            order: u8,
        },
        Confirm {
            order: u8,
        },
        Release {
            order: u8,
        },
        /// An account request: a deposit, or a withdrawal (refused past the balance).
        Money {
            user: u64,
            request: u8,
            withdraw: bool,
        },
    }

    #[derive(Debug, Clone, Copy, PartialEq)]
    enum Holder {
        Trade(TradeId),
        Pending,
        Confirmed(TradeId),
    }

    fn op() -> impl Strategy<Value = Op> {
        prop_oneof![
            5 => (0u64..6, 0u8..40).prop_map(|(user, order)| Op::Create { user, order }),
            2 => (0u8..40).prop_map(|order| Op::Claim { order }),
            1 => (0u8..40).prop_map(|order| Op::Confirm { order }),
            1 => (0u8..40).prop_map(|order| Op::Release { order }),
            3 => (0u64..3, 0u8..12, 0u8..4)
                .prop_map(|(user, request, kind)| Op::Money { user, request, withdraw: kind == 0 }),
        ]
    }

    fn key(order: u8) -> u128 {
        order_key(MERCHANT, &format!("O-{order}"))
    }

    fn records(ops: &[Op]) -> Vec<(Appended, LogRecord)> {
        let mut counter = 0;
        let mut record = |seq: usize, op: &Op| match *op {
            Op::Create { user, order } => {
                counter += 1;
                LogRecord::Trade(TradeRecord {
                    kind: RecordKind::Created,
                    trade_id: TradeId::new(0, counter),
                    user_id: user,
                    merchant_id: MERCHANT,
                    at_ms: 1,
                    amount: 100,
                    currency: Currency::parse("CNY").unwrap(),
                    created: Some(CreatedFields { merchant_order_no: format!("O-{order}"), memo: String::new() }),
                    refund_no: None,
                    funding: Funding::External,
                })
            }
            Op::Claim { order } => {
                LogRecord::Claim(OrderClaim { key: key(order), body: 1, buyer_id: 7, merchant_id: MERCHANT, at_ms: 1 })
            }
            Op::Confirm { order } => LogRecord::ClaimSettled(ClaimSettled {
                key: key(order),
                outcome: ClaimOutcome::Confirmed(TradeId::new(1, seq as u64 + 1)),
                at_ms: 1,
            }),
            Op::Release { order } => {
                LogRecord::ClaimSettled(ClaimSettled { key: key(order), outcome: ClaimOutcome::Released, at_ms: 1 })
            }
            Op::Money { user, request, withdraw } => LogRecord::Journal(JournalRecord {
                op: if withdraw { AccountOp::Withdraw } else { AccountOp::Deposit },
                user_id: user + 1,
                currency: Currency::parse("CNY").unwrap(),
                amount: 10,
                at_ms: 1,
                request_no: format!("R-{request}"),
            }),
        };
        ops.iter().enumerate().map(|(seq, op)| (appended_at(seq as u64), record(seq, op))).collect()
    }

    /// A refused record's position and reason.
    type Refused = (u64, &'static str);

    /// Who holds each order key, each user's trades and balance, the account requests taken,
    /// and the first record refused.
    struct Model {
        holders: HashMap<u128, Holder>,
        users: HashMap<u64, Vec<TradeId>>,
        balances: HashMap<u64, u64>,
        requests: HashSet<(u64, String)>,
        refused: Option<Refused>,
    }

    /// The rules, one record at a time.
    fn model(records: &[(Appended, LogRecord)]) -> Model {
        let mut holders = HashMap::new();
        let mut users: HashMap<u64, Vec<TradeId>> = HashMap::new();
        let mut balances: HashMap<u64, u64> = HashMap::new();
        let mut requests = HashSet::new();
        for (at, record) in records {
            let refused = match record {
                LogRecord::Trade(trade) => {
                    let (key, _) = trade.created_keys().unwrap();
                    match holders.contains_key(&key) {
                        true => Some("order number used by two trades"),
                        false => {
                            holders.insert(key, Holder::Trade(trade.trade_id));
                            users.entry(trade.user_id).or_default().push(trade.trade_id);
                            None
                        }
                    }
                }
                LogRecord::Claim(claim) => match holders.contains_key(&claim.key) {
                    true => Some("order number claimed twice"),
                    false => {
                        holders.insert(claim.key, Holder::Pending);
                        None
                    }
                },
                LogRecord::ClaimSettled(settled) => match (holders.get(&settled.key), settled.outcome) {
                    (Some(Holder::Pending), ClaimOutcome::Confirmed(id)) => {
                        holders.insert(settled.key, Holder::Confirmed(id));
                        None
                    }
                    (Some(Holder::Pending), ClaimOutcome::Released) => {
                        holders.remove(&settled.key);
                        None
                    }
                    _ => Some("settlement of a claim that is not pending"),
                },
                LogRecord::Journal(journal) => {
                    let balance = balances.entry(journal.user_id).or_default();
                    match journal.op {
                        AccountOp::Withdraw if *balance < journal.amount => {
                            Some("journal record takes a balance out of bounds")
                        }
                        // The balance moves before the number is looked at: a record
                        // refused for its number stops the replay all the same.
                        _ if !requests.insert((journal.user_id, journal.request_no.clone())) => {
                            Some("account request number applied twice")
                        }
                        AccountOp::Withdraw => {
                            *balance -= journal.amount;
                            None
                        }
                        _ => {
                            *balance += journal.amount;
                            None
                        }
                    }
                }
                _ => unreachable!("the test makes no other records"),
            };
            if let Some(reason) = refused {
                return Model { holders, users, balances, requests, refused: Some((at.seq, reason)) };
            }
        }
        Model { holders, users, balances, requests, refused: None }
    }

    /// The replay as an open makes it, in batches of `batch` records.
    fn replayed(
        records: &[(Appended, LogRecord)],
        batch: usize,
        limit: usize,
    ) -> (ShardIndex, Option<(u64, &'static str)>) {
        let mut index = ShardIndex::default();
        index.lay_out_trades(3);
        let mut deferred = Deferred::default();
        let mut staged = StagedKeys::with_limit(limit);
        let mut failed = None;
        for chunk in records.chunks(batch) {
            let keyed = |(at, record): &(Appended, LogRecord)| match record {
                LogRecord::Trade(trade) => (*at, record.clone(), trade.created_keys()),
                _ => (*at, record.clone(), None),
            };
            let mut batch: Vec<_> = chunk.iter().map(keyed).collect();
            if let Err(error) = replay_batch(&mut index, &mut deferred, &mut staged, 0, &mut batch) {
                failed = Some(error);
                break;
            }
        }
        let failed = apply_staged(&mut index, &mut staged).err().or(failed).map(|error| match error {
            TradeError::BadRecord { seq, reason } => (seq, reason),
            other => panic!("refused for another reason: {other:?}"),
        });
        (index, failed)
    }

    proptest! {
        #[test]
        fn a_replay_with_its_keys_set_aside_ends_as_the_rules_one_record_at_a_time(
            ops in proptest::collection::vec(op(), 0..120),
            batch in 1usize..80,
            limit in prop_oneof![1usize..8, Just(usize::MAX)],
        ) {
            let records = records(&ops);
            let Model { holders, users, balances, requests, refused } = model(&records);
            let (index, failed) = replayed(&records, batch, limit);
            prop_assert_eq!(failed, refused);
            if refused.is_some() {
                return Ok(());
            }
            for order in 0..40 {
                let key = key(order);
                let held = match (index.by_order(key), index.claim(key)) {
                    (None, None) => None,
                    (Some((id, _)), None) => Some(Holder::Trade(id)),
                    (None, Some(claim)) => Some(claim.trade.map_or(Holder::Pending, Holder::Confirmed)),
                    (Some(_), Some(_)) => panic!("key {order} held by a trade and a claim"),
                };
                prop_assert_eq!(held, holders.get(&key).copied(), "order {}", order);
            }
            let pending = index.pending_claims().count();
            prop_assert_eq!(pending, holders.values().filter(|holder| **holder == Holder::Pending).count());
            for user in 0..6 {
                prop_assert_eq!(index.user_trades(user), users.get(&user).map_or(&[][..], Vec::as_slice));
                let account = AccountKey { user_id: user + 1, currency: Currency::parse("CNY").unwrap() };
                let available = index.accounts().balance(account).available;
                prop_assert_eq!(available, balances.get(&(user + 1)).copied().unwrap_or(0), "user {}", user + 1);
            }
            prop_assert_eq!(index.accounts().len().1, requests.len());
            for (user_id, request_no) in &requests {
                let key = account_request_key(*user_id, request_no);
                prop_assert!(index.accounts().request(key).is_some(), "request {} of user {}", request_no, user_id);
            }
        }
    }
}
