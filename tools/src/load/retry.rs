//! `--retry-ratio`: the client sends a fraction of its acknowledged writes again, as a client
//! that lost the answer would, and counts what came back. A retried create, move or refund
//! must answer the original receipt marked `replayed`; the same order number sent for another
//! buyer must be a conflict naming the original trade. Anything else is a mismatch, and a run
//! with a mismatch fails. The order numbers of the first `ORDERS_CHECKED_MAX` creates are kept
//! for the read-back, which looks each up by merchant and order number.

use std::cell::{Cell, RefCell};

use serde::Serialize;
use tradeshard_engine::{EngineHandle, Error, NewTrade, Receipt, Refusal, TradeId};

/// Creates whose order numbers the read-back looks up.
const ORDERS_CHECKED_MAX: usize = 100_000;
/// Lookups of the read-back under way at once.
const CHECKS_AT_ONCE: usize = 256;

/// What the retries found, for the report.
#[derive(Serialize, Debug, Default, Clone, Copy)]
pub(crate) struct RetryReport {
    pub retries_sent: u64,
    pub retries_answered_as_repeat: u64,
    pub retry_conflicts: u64,
    /// Retries whose answer differed from the original's: must be 0.
    pub retry_mismatches: u64,
    /// Order numbers looked up by merchant and order number in the read-back.
    pub orders_checked: u64,
    /// Order numbers that did not name their one trade: must be 0.
    pub order_mismatches: u64,
}

/// The retries of one client thread.
#[derive(Default)]
pub(super) struct Retries {
    pub ratio: f64,
    sent: Cell<u64>,
    repeats: Cell<u64>,
    conflicts: Cell<u64>,
    mismatches: Cell<u64>,
    first_mismatch: RefCell<Option<String>>,
    /// (merchant, order number, trade) of the first creates.
    orders: RefCell<Vec<(u64, String, TradeId)>>,
}

/// What one client's retries counted, taken to add to another client's.
#[derive(Default)]
pub(super) struct RetryTotals {
    sent: u64,
    repeats: u64,
    conflicts: u64,
    mismatches: u64,
    first_mismatch: Option<String>,
    orders: Vec<(u64, String, TradeId)>,
}

impl Retries {
    pub(super) fn new(ratio: f64) -> Retries {
        Retries { ratio, ..Retries::default() }
    }

    /// Takes what these retries counted and kept.
    pub(super) fn take_totals(&self) -> RetryTotals {
        RetryTotals {
            sent: self.sent.take(),
            repeats: self.repeats.take(),
            conflicts: self.conflicts.take(),
            mismatches: self.mismatches.take(),
            first_mismatch: self.first_mismatch.take(),
            orders: self.orders.take(),
        }
    }

    /// Adds another client's counts and kept orders (up to `ORDERS_CHECKED_MAX` in all).
    pub(super) fn add_totals(&self, totals: RetryTotals) {
        self.sent.set(self.sent.get() + totals.sent);
        self.repeats.set(self.repeats.get() + totals.repeats);
        self.conflicts.set(self.conflicts.get() + totals.conflicts);
        self.mismatches.set(self.mismatches.get() + totals.mismatches);
        if let Some(first) = totals.first_mismatch {
            self.first_mismatch.borrow_mut().get_or_insert(first);
        }
        let mut orders = self.orders.borrow_mut();
        let room = ORDERS_CHECKED_MAX.saturating_sub(orders.len());
        orders.extend(totals.orders.into_iter().take(room));
    }

    fn mismatch(&self, what: String) {
        self.mismatches.set(self.mismatches.get() + 1);
        self.first_mismatch.borrow_mut().get_or_insert(what);
    }

    /// Whether the next create's order number is kept for the read-back.
    pub(super) fn wants_order(&self) -> bool {
        self.orders.borrow().len() < ORDERS_CHECKED_MAX
    }

    /// Notes an acknowledged create for the read-back's lookups by order.
    pub(super) fn created(&self, trade: &NewTrade, id: TradeId) {
        let mut orders = self.orders.borrow_mut();
        if orders.len() < ORDERS_CHECKED_MAX {
            orders.push((trade.merchant_id, trade.merchant_order_no.clone(), id));
        }
    }

    /// Sends an acknowledged create again, then its order number for another buyer.
    pub(super) async fn create(&self, handle: &EngineHandle, trade: NewTrade, original: &Receipt) {
        self.sent.set(self.sent.get() + 2);
        match handle.create_trade(trade.clone()).await {
            Ok(again) if again.id == original.id && again.replayed => self.repeats.set(self.repeats.get() + 1),
            other => self.mismatch(format!("create {} again: {other:?}", trade.merchant_order_no)),
        }
        let other_buyer = NewTrade { buyer_id: trade.buyer_id.wrapping_add(1).max(1), ..trade };
        match handle.create_trade(other_buyer).await {
            Err(Error::Refused(Refusal::IdempotencyConflict { existing: Some(id), .. })) if id == original.id => {
                self.conflicts.set(self.conflicts.get() + 1)
            }
            other => self.mismatch(format!("order number of {} for another buyer: {other:?}", original.id)),
        }
    }

    /// The answer of an acknowledged move or refund sent again.
    pub(super) fn changed_again(&self, again: Result<Receipt, Error>, original: &Receipt) {
        self.sent.set(self.sent.get() + 1);
        match again {
            Ok(again) if again == Receipt { replayed: true, ..*original } => self.repeats.set(self.repeats.get() + 1),
            other => self.mismatch(format!("{} changed again: {other:?}, first {original:?}", original.id)),
        }
    }

    /// Looks every kept order number up, `CHECKS_AT_ONCE` at a time (an old order number past
    /// a key window costs a device read per run it may be in); returns the report.
    pub(super) async fn check_orders(&self, handle: &EngineHandle) -> RetryReport {
        let orders = std::mem::take(&mut *self.orders.borrow_mut());
        let mut order_mismatches = 0;
        for chunk in orders.chunks(CHECKS_AT_ONCE) {
            let lookups = chunk.iter().map(|(merchant, order_no, _)| {
                let (handle, merchant, order_no) = (handle.clone(), *merchant, order_no.clone());
                glommio::spawn_local(async move { handle.get_by_order(merchant, &order_no).await })
            });
            let lookups: Vec<_> = lookups.collect();
            for ((_, order_no, id), lookup) in chunk.iter().zip(lookups) {
                match lookup.await {
                    Ok(trade) if trade.id == *id => {}
                    other => {
                        order_mismatches += 1;
                        self.first_mismatch.borrow_mut().get_or_insert(format!("order {order_no}: {other:?}"));
                    }
                }
            }
        }
        if let Some(first) = self.first_mismatch.borrow().as_ref() {
            eprintln!("load: first retry mismatch: {first}");
        }
        RetryReport {
            retries_sent: self.sent.get(),
            retries_answered_as_repeat: self.repeats.get(),
            retry_conflicts: self.conflicts.get(),
            retry_mismatches: self.mismatches.get(),
            orders_checked: orders.len() as u64,
            order_mismatches,
        }
    }
}
