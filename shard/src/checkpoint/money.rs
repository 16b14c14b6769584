//! The checkpoint's entries of money: accounts, account requests, flexible-transaction
//! branches and activities, and the money in transit (kinds 8 to 12; `docs/FORMAT.md`).

use crate::accounts::{AccountItem, AccountKey, Balance, RequestEntry, BALANCE_MAX};
use crate::bytes::Reader;
use crate::currency::Currency;
use crate::index::Item;
use crate::journal::AccountOp;
use crate::tcc::{push_action, push_plans, Decision};
use crate::tcc_book::{ActivityEntry, ActivityState, BranchEntry, BranchState, TccItem};

pub(super) const KIND_ACCOUNT: u8 = 8;
const KIND_ACCOUNT_REQUEST: u8 = 9;
const KIND_BRANCH: u8 = 10;
const KIND_ACTIVITY: u8 = 11;
pub(super) const KIND_IN_TRANSIT: u8 = 12;

/// Appends an account or flexible-transaction entry.
pub(super) fn encode(item: &Item, out: &mut Vec<u8>) {
    let u64s = |out: &mut Vec<u8>, values: &[u64]| values.iter().for_each(|v| out.extend_from_slice(&v.to_le_bytes()));
    match item {
        Item::Account(AccountItem::Balance(key, balance)) => {
            out.push(KIND_ACCOUNT);
            out.extend_from_slice(&key.currency.bytes());
            u64s(out, &[key.user_id, balance.available, balance.frozen, balance.incoming]);
        }
        Item::Account(AccountItem::Request(key, entry)) => {
            out.push(KIND_ACCOUNT_REQUEST);
            out.extend_from_slice(&key.to_le_bytes());
            push_request(out, entry);
        }
        Item::Tcc(TccItem::Branch(activity, branch, entry)) => {
            out.push(KIND_BRANCH);
            out.extend_from_slice(&activity.to_le_bytes());
            out.extend_from_slice(&branch.to_le_bytes());
            out.push(entry.state.code());
            push_action(out, &entry.action);
        }
        Item::Tcc(TccItem::Activity(id, entry)) => {
            // Only activities under way are written (`TccBook::items`), and a first branch their
            // entry keeps as a branch after them.
            debug_assert!(entry.first_state.is_none(), "an activity's first branch in its item");
            out.push(KIND_ACTIVITY);
            out.extend_from_slice(&id.to_le_bytes());
            u64s(out, &[entry.deadline_ms, entry.begun_ms]);
            let (state, decision) = match entry.state {
                ActivityState::Open => (1, [0, 0]),
                ActivityState::Decided(decision) => (2, decision.code()),
                ActivityState::Completed(decision) => (3, decision.code()),
            };
            out.push(state);
            out.extend_from_slice(&decision);
            push_plans(out, &entry.branches);
        }
        Item::Tcc(TccItem::InTransit(currency, amount)) => {
            out.push(KIND_IN_TRANSIT);
            out.extend_from_slice(&currency.bytes());
            out.extend_from_slice(&amount.to_le_bytes());
        }
        _ => unreachable!("the checkpoint's codec encodes the other entries"),
    }
}

/// Appends an account request's fields (52 bytes): op u8, currency [3], counterparty, amount,
/// at_ms, and the requester's available, frozen and incoming after it (u64 each). Checkpoints
/// and the runs of requests (`key_runs.rs`) hold them so.
pub(crate) fn push_request(out: &mut Vec<u8>, entry: &RequestEntry) {
    out.push(entry.op.code());
    out.extend_from_slice(&entry.currency.bytes());
    let after = entry.after;
    for field in [entry.op.counterparty(), entry.amount, entry.at_ms, after.available, after.frozen, after.incoming] {
        out.extend_from_slice(&field.to_le_bytes());
    }
}

/// Reads what [`push_request`] wrote, checked.
pub(crate) fn read_request(reader: &mut Reader<'_>) -> Result<RequestEntry, &'static str> {
    let op_code = reader.u8()?;
    let currency = currency(reader)?;
    let (counterparty, amount, at_ms) = (reader.u64()?, reader.u64()?, reader.u64()?);
    let op = AccountOp::of(op_code, counterparty).ok_or("checkpoint account request of an unknown operation")?;
    let after = balance(reader)?;
    Ok(RequestEntry { op, currency, amount, at_ms, after })
}

/// Reads an entry of kind `kind` (8..=12), its kind byte already read.
pub(super) fn decode(kind: u8, reader: &mut Reader<'_>) -> Result<Item, &'static str> {
    Ok(match kind {
        KIND_ACCOUNT => {
            let currency = currency(reader)?;
            let user_id = reader.u64()?;
            let balance = balance(reader)?;
            if user_id == 0 {
                return Err("checkpoint account of user zero");
            }
            Item::Account(AccountItem::Balance(AccountKey { user_id, currency }, balance))
        }
        KIND_ACCOUNT_REQUEST => {
            let key = reader.u128()?;
            Item::Account(AccountItem::Request(key, read_request(reader)?))
        }
        KIND_BRANCH => {
            let (activity, branch) = (reader.u128()?, reader.u16()?);
            let state = BranchState::of(reader.u8()?).ok_or("checkpoint branch of an unknown state")?;
            Item::Tcc(TccItem::Branch(activity, branch, BranchEntry { action: reader.action()?, state }))
        }
        KIND_ACTIVITY => {
            let id = reader.u128()?;
            let (deadline_ms, begun_ms) = (reader.u64()?, reader.u64()?);
            let (state, decision) = (reader.u8()?, [reader.u8()?, reader.u8()?]);
            let state = match state {
                1 if decision == [0, 0] => ActivityState::Open,
                2 => ActivityState::Decided(Decision::of(decision)?),
                3 => ActivityState::Completed(Decision::of(decision)?),
                _ => return Err("checkpoint activity of an unknown state"),
            };
            let branches = reader.plans()?;
            Item::Tcc(TccItem::Activity(
                id,
                ActivityEntry { branches: branches.into(), deadline_ms, begun_ms, state, first_state: None },
            ))
        }
        KIND_IN_TRANSIT => {
            let currency = currency(reader)?;
            let amount = i128::from_le_bytes(reader.take(16)?.try_into().expect("16 bytes"));
            Item::Tcc(TccItem::InTransit(currency, amount))
        }
        _ => return Err("checkpoint entry of an unknown kind"),
    })
}

fn currency(reader: &mut Reader<'_>) -> Result<Currency, &'static str> {
    let bytes: [u8; 3] = reader.take(3)?.try_into().expect("3 bytes");
    Currency::from_bytes(bytes).ok_or("checkpoint entry has no valid currency")
}

/// A balance, checked against the most an account may hold.
fn balance(reader: &mut Reader<'_>) -> Result<Balance, &'static str> {
    let balance = Balance { available: reader.u64()?, frozen: reader.u64()?, incoming: reader.u64()? };
    match balance.available.checked_add(balance.frozen).and_then(|money| money.checked_add(balance.incoming)) {
        Some(held) if held <= BALANCE_MAX => Ok(balance),
        _ => Err("checkpoint balance above the most an account may hold"),
    }
}
