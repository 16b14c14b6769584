//! The values of the runs' entries (`key_runs.rs`), as bytes: what each store keeps under a
//! key, and the checks of what is read back. Every value is little-endian words or fields and
//! zeros after them; a decoder refuses a value no checkpoint writes, so a run damaged in a
//! way its checksums missed is an error, never a wrong answer.
//!
//! A branch of a flexible transaction is named by its activity (u128) and its number (u16),
//! more than a key holds: its key is the xxh3-128 of both, and its value repeats them, so that
//! a read checks it found the branch it asked for.

use crate::accounts::RequestEntry;
use crate::bytes::Reader;
use crate::checkpoint::{push_request, read_request};
use crate::error::TradeError;
use crate::index::{ClaimEntry, RefundEntry};
use crate::runs::{Value, VALUE_BYTES_MAX};
use crate::tcc::{action_of, push_action, Decision, ACTION_BYTES};
use crate::tcc_book::{BranchEntry, BranchState};
use crate::tcc_ended::EndedActivity;
use crate::trade::{TradeId, AMOUNT_MAX};

/// A value of these words, zero after them.
fn value_of(words: &[u64]) -> Value {
    let mut value = [0u8; VALUE_BYTES_MAX];
    for (n, word) in words.iter().enumerate() {
        value[8 * n..8 * n + 8].copy_from_slice(&word.to_le_bytes());
    }
    value
}

/// A trade's order key entry: its id alone. A create repeated after its key left memory is
/// checked against the trade itself (`write.rs` reads it), so the entry does not spend eight
/// bytes no codec shrinks on the create's body hash. Runs written before held the body hash
/// in the second word, and are read as before.
pub(crate) fn order_value(id: TradeId) -> Value {
    value_of(&[id.0])
}

/// A confirmed claim's entry: its trade alone, in the third word (the first two, zero, held
/// the body hash and the buyer in runs written before; `ClaimRequest::may_have_made` says why
/// the trade is enough).
pub(crate) fn claim_value(trade: TradeId) -> Value {
    value_of(&[0, 0, trade.0])
}

/// A refund's entry: trade, amount, the trade's refunded total after it, and its time.
pub(crate) fn refund_value(refund: &RefundEntry) -> Value {
    value_of(&[refund.trade_id.0, refund.amount, refund.refunded_after, refund.at_ms])
}

/// An account request's entry: its fields as a checkpoint holds them, then zeros.
pub(crate) fn request_value(request: &RequestEntry) -> Value {
    let mut fields = Vec::with_capacity(VALUE_BYTES_MAX);
    push_request(&mut fields, request);
    padded(&fields)
}

fn word(value: &Value, n: usize) -> u64 {
    u64::from_le_bytes(value[8 * n..8 * n + 8].try_into().expect("8 bytes"))
}

fn bad_entry(reason: &'static str) -> TradeError {
    TradeError::BadRecord { seq: 0, reason }
}

/// An order key entry's trade, and the body hash of the create if the entry holds one (runs
/// written before `order_value` left it out; zero where none was kept).
pub(crate) fn decode_order(value: &Value) -> Result<(TradeId, Option<u64>), TradeError> {
    let id = TradeId(word(value, 0));
    if id.counter() == 0 || word(value, 2) != 0 {
        return Err(bad_entry("an order run entry that no checkpoint writes"));
    }
    Ok((id, Some(word(value, 1)).filter(|&body| body != 0)))
}

pub(crate) fn decode_claim(value: &Value) -> Result<ClaimEntry, TradeError> {
    let trade = TradeId(word(value, 2));
    if trade.counter() == 0 {
        return Err(bad_entry("a claim run entry without its trade"));
    }
    match (word(value, 0), word(value, 1)) {
        (0, 0) => Ok(ClaimEntry::confirmed(trade)),
        (_, 0) => Err(bad_entry("a claim run entry with a body hash and no buyer")),
        (body, buyer_id) => Ok(ClaimEntry { body, buyer_id, trade: Some(trade) }),
    }
}

pub(crate) fn decode_request(value: &Value) -> Result<RequestEntry, TradeError> {
    let mut reader = Reader::new(value, 0, "a request run entry cut short");
    let request = read_request(&mut reader).map_err(bad_entry)?;
    if !zeros_after(value, reader.at) {
        return Err(bad_entry("a request run entry with bytes where zeros belong"));
    }
    Ok(request)
}

pub(crate) fn decode_refund(value: &Value) -> Result<RefundEntry, TradeError> {
    let refund = RefundEntry {
        trade_id: TradeId(word(value, 0)),
        amount: word(value, 1),
        refunded_after: word(value, 2),
        at_ms: word(value, 3),
    };
    let amounts_hold =
        (1..=AMOUNT_MAX).contains(&refund.amount) && (refund.amount..=AMOUNT_MAX).contains(&refund.refunded_after);
    if refund.trade_id.counter() == 0 || !amounts_hold {
        return Err(bad_entry("a refund run entry that no checkpoint writes"));
    }
    Ok(refund)
}

/// The key of a branch in the runs of branches.
pub(crate) fn branch_key(activity: u128, branch: u16) -> u128 {
    let mut bytes = [0u8; 18];
    bytes[..16].copy_from_slice(&activity.to_le_bytes());
    bytes[16..].copy_from_slice(&branch.to_le_bytes());
    xxhash_rust::xxh3::xxh3_128(&bytes)
}

/// An ended branch's entry (39 bytes, then zeros): activity u128, branch u16, state u8, action.
pub(crate) fn branch_value(activity: u128, branch: u16, entry: &BranchEntry) -> Value {
    let mut fields = Vec::with_capacity(VALUE_BYTES_MAX);
    fields.extend_from_slice(&activity.to_le_bytes());
    fields.extend_from_slice(&branch.to_le_bytes());
    fields.push(entry.state.code());
    push_action(&mut fields, &entry.action);
    padded(&fields)
}

/// The branch `branch_value` wrote, if it is the one asked for (`activity`, `branch`).
pub(crate) fn decode_branch(value: &Value, activity: u128, branch: u16) -> Result<BranchEntry, TradeError> {
    let mut reader = Reader::new(value, 0, "a branch run entry cut short");
    let named = (reader.u128().map_err(bad_entry)?, reader.u16().map_err(bad_entry)?);
    let state = BranchState::of(reader.u8().map_err(bad_entry)?);
    let action = action_of(reader.take(ACTION_BYTES).map_err(bad_entry)?).map_err(bad_entry)?;
    let ended = matches!(state, Some(BranchState::Confirmed | BranchState::Cancelled | BranchState::Fenced));
    if named != (activity, branch) || !ended || action.account().is_none() || !zeros_after(value, reader.at) {
        return Err(bad_entry("a branch run entry that no checkpoint writes"));
    }
    Ok(BranchEntry { action, state: state.expect("checked") })
}

/// A completed activity's entry (47 bytes, then zeros): deadline_ms, begun_ms, decision [2],
/// the digest of its branches u64, its first branch's action, the state that branch ended in
/// when the entry keeps it (as a branch's: 2, 3 or 4), else 0.
pub(crate) fn activity_value(ended: &EndedActivity) -> Value {
    let mut fields = Vec::with_capacity(VALUE_BYTES_MAX);
    for word in [ended.deadline_ms, ended.begun_ms] {
        fields.extend_from_slice(&word.to_le_bytes());
    }
    fields.extend_from_slice(&ended.decision.code());
    fields.extend_from_slice(&ended.plans_digest.to_le_bytes());
    push_action(&mut fields, &ended.first);
    fields.push(ended.first_ended.map_or(0, BranchState::code));
    padded(&fields)
}

/// What `activity_value` wrote, checked.
pub(crate) fn decode_activity(value: &Value) -> Result<EndedActivity, TradeError> {
    let mut reader = Reader::new(value, 0, "an activity run entry cut short");
    let (deadline_ms, begun_ms) = (reader.u64().map_err(bad_entry)?, reader.u64().map_err(bad_entry)?);
    let code = [reader.u8().map_err(bad_entry)?, reader.u8().map_err(bad_entry)?];
    let decision = Decision::of(code).map_err(bad_entry)?;
    let plans_digest = reader.u64().map_err(bad_entry)?;
    let first = action_of(reader.take(ACTION_BYTES).map_err(bad_entry)?).map_err(bad_entry)?;
    let first_ended = match reader.u8().map_err(bad_entry)? {
        0 => None,
        code => match BranchState::of(code) {
            Some(state @ (BranchState::Confirmed | BranchState::Cancelled | BranchState::Fenced))
                if first.account().is_some() =>
            {
                Some(state)
            }
            _ => return Err(bad_entry("an activity run entry keeping a branch that no checkpoint writes")),
        },
    };
    if !zeros_after(value, reader.at) {
        return Err(bad_entry("an activity run entry with bytes where zeros belong"));
    }
    Ok(EndedActivity { decision, deadline_ms, begun_ms, plans_digest, first, first_ended })
}

/// `fields`, then zeros.
fn padded(fields: &[u8]) -> Value {
    let mut value = [0u8; VALUE_BYTES_MAX];
    value[..fields.len()].copy_from_slice(fields);
    value
}

fn zeros_after(value: &Value, at: usize) -> bool {
    value[at..].iter().all(|&b| b == 0)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::currency::Currency;
    use crate::tcc::{BranchAction, CancelReason};

    fn ended() -> (BranchEntry, EndedActivity) {
        let currency = Currency::parse("EUR").unwrap();
        let action = BranchAction::Freeze { user_id: 7, currency, amount: 300 };
        let branch = BranchEntry { action, state: BranchState::Fenced };
        let activity = EndedActivity {
            decision: Decision::Cancel(CancelReason::Timeout),
            deadline_ms: 9,
            begun_ms: 4,
            plans_digest: 0xfeed,
            first: action,
            first_ended: Some(BranchState::Cancelled),
        };
        (branch, activity)
    }

    #[test]
    fn ended_entries_read_back_as_written_and_only_for_their_names() {
        let (branch, activity) = ended();
        let value = branch_value(5, 1, &branch);
        assert_eq!(decode_branch(&value, 5, 1).unwrap(), branch);
        assert!(decode_branch(&value, 5, 2).is_err(), "another branch's entry");
        assert!(decode_branch(&value, 6, 1).is_err(), "another activity's entry");
        assert_ne!(branch_key(5, 1), branch_key(5, 2));
        let tried = branch_value(5, 1, &BranchEntry { state: BranchState::Tried, ..branch });
        assert!(decode_branch(&tried, 5, 1).is_err(), "a branch under way is never in a run");
        assert_eq!(decode_activity(&activity_value(&activity)).unwrap(), activity);
        let kept = decode_activity(&activity_value(&activity)).unwrap().branch(0);
        assert_eq!(kept, Some(BranchEntry { action: activity.first, state: BranchState::Cancelled }));
        assert_eq!(activity.branch(1), None, "only the first branch is kept");
        let alone = EndedActivity { first_ended: None, ..activity };
        assert_eq!(decode_activity(&activity_value(&alone)).unwrap().branch(0), None, "a first branch kept apart");
        let mut tried = activity_value(&activity);
        tried[46] = BranchState::Tried.code();
        assert!(decode_activity(&tried).is_err(), "a branch under way is never kept by a completed activity");
        let mut trailing = activity_value(&activity);
        trailing[VALUE_BYTES_MAX - 1] = 1;
        assert!(decode_activity(&trailing).is_err(), "bytes where zeros belong");
    }

    proptest::proptest! {
        /// Any value, and the samples with a byte changed, decode to an entry or a defect,
        /// never a panic; an entry that decodes encodes back to the same value.
        #[test]
        fn any_value_decodes_without_panic(
            noise in proptest::collection::vec(proptest::prelude::any::<u8>(), VALUE_BYTES_MAX),
            at in 0usize..VALUE_BYTES_MAX,
            byte in proptest::prelude::any::<u8>(),
        ) {
            let noise: Value = noise.try_into().unwrap();
            let _ = (decode_branch(&noise, 5, 1), decode_activity(&noise));
            let (branch, activity) = ended();
            let (mut branch_bytes, mut activity_bytes) = (branch_value(5, 1, &branch), activity_value(&activity));
            branch_bytes[at] = byte;
            activity_bytes[at] = byte;
            if let Ok(read) = decode_branch(&branch_bytes, 5, 1) {
                proptest::prop_assert_eq!(branch_value(5, 1, &read), branch_bytes);
            }
            if let Ok(read) = decode_activity(&activity_bytes) {
                proptest::prop_assert_eq!(activity_value(&read), activity_bytes);
            }
        }
    }
}
