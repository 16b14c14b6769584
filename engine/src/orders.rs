//! Merchant order numbers across shards: the engine's side of the claim protocol (the home
//! shard's side is `shard/src/claims.rs`), and the lookup of a trade by its order number.
//!
//! A create whose order number's home shard is not its buyer's shard takes two writes, each
//! group-committed in its own shard: the claim in the home shard and the trade in the buyer's
//! shard, at the same time. The caller hands the create to the home shard's executor, which
//! claims the key (held in memory at once, its record queued) and hands the create on to the
//! buyer shard's executor with the caller's reply and the claim's durability to wait for, so
//! the caller makes one hand-off as for any create. The trade is acknowledged only once both
//! writes are durable. Then the buyer shard's executor confirms the claim with the trade's id;
//! the home shard makes the confirmation in memory, with no record (the trade's durability in
//! the buyer's shard is the fact it stands for), and its next checkpoint keeps it. Both
//! hand-offs between executors go through their outboxes (`outbox.rs`), one push per turn
//! for all the creates a group commit answered, from tasks that wait for room as tasks, never
//! from dispatchers, so executors cannot wait on each other forever.
//!
//! `get_by_order` keeps what it found in the handle's cache of order keys (a thirty-second of
//! `Options::cache_bytes`): an order number, once a durable trade holds it, names that trade
//! forever, so a cached answer is never stale, and the next lookup of it reads the trade
//! without asking the home shard (and, for a cached trade, on the caller's thread). With a key
//! window (`Upkeep::key_window`) an old order number may name a newer trade, and nothing is
//! cached. A lookup by order number finds a trade however old: it reads the runs past the
//! window too.
//!
//! A stop can leave a trade whose claim was lost: the buyer's shard keeps such trades in doubt
//! until it learns the claim is durable, and an open finds them again (`doubts.rs` in the
//! shard crate). The engine claims each in its home shard before anything else, so that no
//! durable trade's order number looks free. A stop can also leave a pending claim (its trade
//! never written, or its confirmation not in a checkpoint yet). Each is resolved to exactly
//! one trade or none: by the next retry of the create (the same body goes on to the buyer's
//! shard, which answers the original trade or creates it), or when the engine opens, before
//! it takes requests: the buyer's shard is asked whether the trade exists, and the claim is
//! confirmed or released accordingly, in batches per shard (after a kill, the claims since the
//! last checkpoint, so the work is bounded as the replay is). Only a release is written. Since
//! nothing is created before the open returns, no trade can appear under a claim being
//! released.

use std::collections::BTreeMap;

use tradeshard_shard::{
    order_key, validate_order_no, ClaimOutcome, ClaimRequest, InputError, OrderLookup, Receipt, Refusal, Reservation,
    Trade, TradeError, TradeId, ValidTrade,
};

use crate::blocking::blocking;
use crate::claim_ops;
use crate::error::{Error, Result};
use crate::handle::EngineHandle;

/// A durable trade whose order number's home shard holds it for another trade: what no log
/// this engine wrote can hold.
fn claimed_by_another() -> Error {
    TradeError::BadRecord { seq: 0, reason: "a durable trade's order number is claimed for another trade" }.into()
}

/// Pending claims looked up, or settled, in one job at an open.
const RESOLVE_BATCH: usize = 4096;

/// Bytes an order key and its trade id take in the cache's slot.
const ORDER_ID_BYTES: usize = 24;

impl EngineHandle {
    /// The create of a trade whose order number's home shard is `home`, not the buyer's shard
    /// `buyer_shard`: claim and create at once, then confirm (see the module's text).
    pub(crate) async fn create_claimed(
        &self,
        trade: ValidTrade,
        logical_shard: u32,
        key: u128,
        home: u32,
        buyer_shard: u32,
    ) -> Result<Receipt> {
        let request = ClaimRequest::of(&trade, logical_shard);
        // Past the caller's hand-off to the home shard, the steps move between executors and
        // wait for room there, whatever the caller chose: refused in between, the create would
        // hold its order number until a retry or the next open.
        let create = claim_ops::CreateAcross { claim: request, trade, logical_shard, home, buyer_shard };
        let answer = self.submit(self.routing().executor_of_physical(home), create).await?;
        match answer.await.ok_or(Error::Closed)? {
            Ok(receipt) => Ok(receipt),
            Err(error) => Err(self.naming_the_holder(error.into(), key).await),
        }
    }

    /// A conflict over an order number whose claim is not confirmed yet (its confirmation is
    /// on its way) names the trade that holds the number all the same, found in the buyer's
    /// shard; other errors pass unchanged.
    pub(crate) async fn naming_the_holder(&self, error: Error, key: u128) -> Error {
        match error {
            Error::Refused(Refusal::IdempotencyConflict { existing: None, merchant_id, order_no }) => {
                let existing = self.trade_of_order_key(key).await.ok().flatten();
                Refusal::IdempotencyConflict { existing, merchant_id, order_no }.into()
            }
            other => other,
        }
    }

    /// The durable trade holding an order key, asked of its home shard and, for a claim not
    /// confirmed yet, of the claim's buyer shard.
    async fn trade_of_order_key(&self, key: u128) -> Result<Option<TradeId>> {
        let routing = self.routing();
        Ok(match self.on_shard(routing.physical_of_order_key(key), claim_ops::FindOrder(key)).await? {
            OrderLookup::Trade(id) | OrderLookup::Claimed(id) => Some(id),
            OrderLookup::ClaimPending { buyer_id } => {
                let buyer_shard = routing.physical_of_user(buyer_id);
                match self.on_shard(buyer_shard, claim_ops::FindOrder(key)).await? {
                    OrderLookup::Trade(id) => Some(id),
                    _ => None,
                }
            }
            OrderLookup::Free => None,
        })
    }

    /// The trade created with this merchant order number, or `Error::OrderNotFound`.
    pub async fn get_by_order(&self, merchant_id: u64, order_no: &str) -> Result<Trade> {
        if merchant_id == 0 {
            return Err(InputError::ZeroMerchantId.into());
        }
        validate_order_no(order_no)?;
        let key = order_key(merchant_id, order_no);
        if let Some(id) = self.inner.order_ids.get(&key) {
            return self.get(id).await;
        }
        match self.trade_of_order_key(key).await? {
            Some(id) => {
                self.inner.order_ids.insert(key, id, ORDER_ID_BYTES);
                self.get(id).await
            }
            None => Err(Error::OrderNotFound { merchant_id, order_no: order_no.to_string() }),
        }
    }

    blocking!(get_by_order_blocking = get_by_order(&self, merchant_id: u64, order_no: &str) -> Result<Trade>);

    /// Claims again, in their home shards, the trades whose claims a stop may have lost (each
    /// shard's open found them: `doubts.rs` in the shard crate), so that no durable trade's
    /// order number looks free; then their shards know them. Run by `Engine::open` before
    /// [`resolve_pending_claims`](Self::resolve_pending_claims), which confirms these claims.
    /// Returns how many trades were in doubt.
    pub(crate) async fn claim_trades_in_doubt(&self) -> Result<usize> {
        let routing = self.routing();
        let mut in_doubt = Vec::new();
        for shard in 0..routing.physical_shards {
            in_doubt.push((shard, self.submit_to_shard_waiting(shard, claim_ops::TradesInDoubt).await?));
        }
        let mut by_home: BTreeMap<u32, Vec<(ClaimRequest, TradeId)>> = BTreeMap::new();
        let mut known: Vec<(u32, Vec<TradeId>)> = Vec::new();
        for (buyer_shard, answer) in in_doubt {
            let ids = answer.await.ok_or(Error::Closed)??;
            for batch in ids.chunks(RESOLVE_BATCH) {
                for trade in self.get_many(batch).await? {
                    let trade = trade?;
                    let request = ClaimRequest::of_trade(&trade);
                    let home = routing.physical_of_order_key(request.key);
                    if home != buyer_shard {
                        by_home.entry(home).or_default().push((request, trade.id));
                    }
                }
            }
            known.push((buyer_shard, ids));
        }
        for (home, claims) in by_home {
            for batch in claims.chunks(RESOLVE_BATCH) {
                let requests = batch.iter().map(|(request, _)| request.clone()).collect();
                let reservations = self.on_shard_waiting(home, claim_ops::ClaimAgain(requests)).await?;
                let mut confirms = Vec::with_capacity(batch.len());
                for ((request, id), reservation) in batch.iter().zip(reservations) {
                    match reservation {
                        Reservation::Durable(Some(confirmed)) if confirmed == *id => continue,
                        Reservation::Durable(Some(_)) => return Err(claimed_by_another()),
                        Reservation::Durable(None) => {}
                        Reservation::Pending(durable) => drop(durable.await.ok_or(Error::Closed)??),
                    }
                    confirms.push((request.key, ClaimOutcome::Confirmed(*id)));
                }
                self.on_shard_waiting(home, claim_ops::SettleClaims(confirms)).await?;
            }
        }
        let mut count = 0;
        for (buyer_shard, ids) in known {
            count += ids.len();
            self.on_shard_waiting(buyer_shard, claim_ops::ClaimsKnown(ids)).await?;
        }
        Ok(count)
    }

    /// Confirms or releases every claim left pending, asking each claim's buyer shard whether
    /// its trade exists, in batches (after a stop every claim since the last checkpoint may be
    /// pending); returns how many were resolved. Run by `Engine::open` before it returns.
    /// Every batch of a step is queued before the first answer is awaited, so both executors
    /// work through their share at once instead of waiting on the caller between batches.
    pub(crate) async fn resolve_pending_claims(&self) -> Result<usize> {
        let routing = self.routing();
        let mut by_buyer: BTreeMap<u32, Vec<(u32, u128, u64)>> = BTreeMap::new();
        for pending in self.on_every_executor(claim_ops::PendingClaims).await? {
            for (home, claim) in pending {
                let buyer_shard = routing.physical_of_user(claim.buyer_id);
                by_buyer.entry(buyer_shard).or_default().push((home, claim.key, claim.body));
            }
        }
        let mut lookups = Vec::new();
        for (buyer_shard, claims) in &by_buyer {
            for batch in claims.chunks(RESOLVE_BATCH) {
                let keys = batch.iter().map(|&(_, key, body)| (key, body)).collect();
                lookups.push((batch, self.submit_to_shard_waiting(*buyer_shard, claim_ops::FindOrders(keys)).await?));
            }
        }
        let mut by_home: BTreeMap<u32, Vec<(u128, ClaimOutcome)>> = BTreeMap::new();
        for (batch, answer) in lookups {
            let found = answer.await.ok_or(Error::Closed)??;
            for (&(home, key, _), lookup) in batch.iter().zip(found) {
                let outcome = match lookup {
                    OrderLookup::Trade(id) => ClaimOutcome::Confirmed(id),
                    _ => ClaimOutcome::Released,
                };
                by_home.entry(home).or_default().push((key, outcome));
            }
        }
        let mut settles = Vec::new();
        for (home, outcomes) in by_home {
            for batch in outcomes.chunks(RESOLVE_BATCH) {
                let op = claim_ops::SettleClaims(batch.to_vec());
                settles.push((batch.len(), self.submit_to_shard_waiting(home, op).await?));
            }
        }
        let mut resolved = 0;
        for (count, answer) in settles {
            answer.await.ok_or(Error::Closed)??;
            resolved += count;
        }
        Ok(resolved)
    }
}
