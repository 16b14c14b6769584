//! The bytes of an account journal record (a system record, kind 19): one movement of money
//! between two sides, each side an account (a user's available balance) or the outside world
//! (where deposits come from and withdrawals go). Every movement names both sides, so the sum
//! of all balances of a currency always equals what came in from outside minus what went out.
//! Layout in `docs/FORMAT.md`. Decoding checks every byte and never panics.

use crate::currency::Currency;
use crate::record::RECORD_VERSION;
use crate::trade::{AMOUNT_MAX, REFUND_NO_BYTES_MAX};

/// The kind of a [`JournalRecord`].
pub const KIND_JOURNAL: u8 = 19;
/// Longest account request number, in bytes.
pub const REQUEST_NO_BYTES_MAX: usize = REFUND_NO_BYTES_MAX;
const JOURNAL_FIXED_BYTES: usize = 40;

/// What a journal record does, and so which sides it names.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
pub enum AccountOp {
    /// From outside into the user's available balance.
    Deposit,
    /// From the user's available balance to outside.
    Withdraw,
    /// From the user's available balance into `to_user`'s, both accounts of this shard.
    Transfer { to_user: u64 },
}

impl AccountOp {
    /// The operation's byte in records and checkpoints.
    pub(crate) fn code(self) -> u8 {
        match self {
            AccountOp::Deposit => 1,
            AccountOp::Withdraw => 2,
            AccountOp::Transfer { .. } => 3,
        }
    }

    /// The user credited besides the requester (`0`: nobody, the outside world).
    pub fn counterparty(self) -> u64 {
        match self {
            AccountOp::Transfer { to_user } => to_user,
            AccountOp::Deposit | AccountOp::Withdraw => 0,
        }
    }

    /// The operation of a code and counterparty, if they make one.
    pub(crate) fn of(code: u8, counterparty: u64) -> Option<AccountOp> {
        match (code, counterparty) {
            (1, 0) => Some(AccountOp::Deposit),
            (2, 0) => Some(AccountOp::Withdraw),
            (3, to_user) if to_user != 0 => Some(AccountOp::Transfer { to_user }),
            _ => None,
        }
    }

    /// A name for messages.
    pub fn name(self) -> &'static str {
        match self {
            AccountOp::Deposit => "deposit",
            AccountOp::Withdraw => "withdraw",
            AccountOp::Transfer { .. } => "transfer",
        }
    }
}

/// One durable movement of money, made under the requester's request number.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JournalRecord {
    pub op: AccountOp,
    /// The user whose request this is: credited by a deposit, debited otherwise.
    pub user_id: u64,
    pub currency: Currency,
    pub amount: u64,
    pub at_ms: u64,
    /// 1..=64 printable ASCII bytes, unique per user.
    pub request_no: String,
}

impl JournalRecord {
    pub fn encode(&self) -> Vec<u8> {
        let len = self.request_no.len();
        assert!((1..=REQUEST_NO_BYTES_MAX).contains(&len), "a checked request number");
        let mut out = Vec::with_capacity(JOURNAL_FIXED_BYTES + len);
        out.extend_from_slice(&[RECORD_VERSION, KIND_JOURNAL, self.op.code(), len as u8]);
        out.extend_from_slice(&self.currency.bytes());
        out.push(0);
        for field in [self.user_id, self.op.counterparty(), self.amount, self.at_ms] {
            out.extend_from_slice(&field.to_le_bytes());
        }
        out.extend_from_slice(self.request_no.as_bytes());
        out
    }

    pub(crate) fn decode(bytes: &[u8]) -> Result<JournalRecord, &'static str> {
        if bytes.len() < JOURNAL_FIXED_BYTES || bytes[7] != 0 {
            return Err("journal record cut short or with reserved bytes set");
        }
        let len = bytes[3] as usize;
        if len == 0 || len > REQUEST_NO_BYTES_MAX || bytes.len() != JOURNAL_FIXED_BYTES + len {
            return Err("journal request number length does not match the record");
        }
        let field = |at: usize| u64::from_le_bytes(bytes[at..at + 8].try_into().expect("8 bytes"));
        let op = AccountOp::of(bytes[2], field(16)).ok_or("journal record of an unknown operation")?;
        let currency_bytes: [u8; 3] = bytes[4..7].try_into().expect("3 bytes");
        let currency = Currency::from_bytes(currency_bytes).ok_or("journal record of no valid currency")?;
        let request_no = std::str::from_utf8(&bytes[JOURNAL_FIXED_BYTES..]).map_err(|_| "request number not UTF-8")?;
        if !request_no.bytes().all(|b| b.is_ascii_graphic()) {
            return Err("journal request number is not printable ASCII");
        }
        let (user_id, amount) = (field(8), field(24));
        if user_id == 0 || op.counterparty() == user_id {
            return Err("journal record without its user, or moving money to the same account");
        }
        if amount == 0 || amount > AMOUNT_MAX {
            return Err("journal amount out of bounds");
        }
        Ok(JournalRecord { op, user_id, currency, amount, at_ms: field(32), request_no: request_no.to_string() })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::system_record::LogRecord;
    use proptest::prelude::*;

    fn record(op: AccountOp) -> JournalRecord {
        let currency = Currency::parse("EUR").unwrap();
        JournalRecord { op, user_id: 7, currency, amount: 250, at_ms: 9, request_no: "dep-1".into() }
    }

    #[test]
    fn every_operation_round_trips_as_a_system_record() {
        for op in [AccountOp::Deposit, AccountOp::Withdraw, AccountOp::Transfer { to_user: 8 }] {
            let bytes = record(op).encode();
            assert_eq!(LogRecord::decode(&bytes), Ok(LogRecord::Journal(record(op))));
            assert!(LogRecord::is_system(&bytes));
        }
    }

    #[test]
    fn records_no_engine_writes_are_refused() {
        let mut to_self = record(AccountOp::Transfer { to_user: 7 }).encode();
        assert!(LogRecord::decode(&to_self).is_err(), "a transfer to the same account");
        to_self[16] = 0;
        assert!(LogRecord::decode(&to_self).is_err(), "a transfer to nobody");
        let mut deposit_with_party = record(AccountOp::Deposit).encode();
        deposit_with_party[16] = 3;
        assert!(LogRecord::decode(&deposit_with_party).is_err(), "a deposit names no counterparty");
        let mut zero = record(AccountOp::Deposit).encode();
        zero[24..32].copy_from_slice(&0u64.to_le_bytes());
        assert!(LogRecord::decode(&zero).is_err(), "a zero amount");
        let mut longer = record(AccountOp::Deposit).encode();
        longer.push(b'x');
        assert!(LogRecord::decode(&longer).is_err(), "a length that does not match");
    }

    proptest! {
        #[test]
        fn arbitrary_journal_bytes_never_panic(mut bytes in prop::collection::vec(any::<u8>(), 0..120)) {
            if bytes.len() > 1 {
                bytes[0] = RECORD_VERSION;
                bytes[1] = KIND_JOURNAL;
            }
            let _ = LogRecord::decode(&bytes);
        }
    }
}
