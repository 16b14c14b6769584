//! The checks every input passes before it can reach the log: a refused input is an
//! [`InputError`] and leaves no trace.

use crate::accounts::AccountCommand;
use crate::currency::Currency;
use crate::error::InputError;
use crate::journal::{AccountOp, REQUEST_NO_BYTES_MAX};
use crate::system_record::OffsetCommit;
use crate::trade::{
    NewTrade, TradeId, ValidTrade, AMOUNT_MAX, MEMO_BYTES_MAX, ORDER_NO_BYTES_MAX, REFUND_NO_BYTES_MAX,
};

impl TradeId {
    /// Checks that the id could have been issued by a directory with `logical_shards` shards.
    pub fn validate(self, logical_shards: u32) -> Result<TradeId, InputError> {
        if self.counter() == 0 || self.logical_shard() >= logical_shards {
            return Err(InputError::BadTradeId { id: self.0, logical_shards });
        }
        Ok(self)
    }
}

impl NewTrade {
    /// Checks every field; the first failure is the error.
    pub fn validate(&self) -> Result<ValidTrade, InputError> {
        if self.buyer_id == 0 {
            return Err(InputError::ZeroUserId);
        }
        if self.merchant_id == 0 {
            return Err(InputError::ZeroMerchantId);
        }
        validate_amount(self.amount)?;
        let currency =
            Currency::parse(&self.currency).ok_or_else(|| InputError::UnknownCurrency(self.currency.clone()))?;
        let order_no = &self.merchant_order_no;
        validate_order_no(order_no)?;
        if self.memo.len() > MEMO_BYTES_MAX {
            return Err(InputError::MemoTooLong { len: self.memo.len(), max: MEMO_BYTES_MAX });
        }
        Ok(ValidTrade {
            buyer_id: self.buyer_id,
            merchant_id: self.merchant_id,
            merchant_order_no: order_no.clone(),
            amount: self.amount,
            currency,
            memo: self.memo.clone(),
        })
    }
}

impl AccountCommand {
    /// Checks an account request: users not zero and distinct, a known currency, an amount
    /// in bounds, a request number of 1..=64 printable ASCII bytes.
    pub fn new(
        op: AccountOp,
        user_id: u64,
        currency: &str,
        amount: u64,
        request_no: &str,
    ) -> Result<AccountCommand, InputError> {
        let currency = Currency::parse(currency).ok_or_else(|| InputError::UnknownCurrency(currency.to_string()))?;
        let command = AccountCommand { op, user_id, currency, amount, request_no: request_no.to_string() };
        command.check()?;
        Ok(command)
    }

    /// Checks a command built field by field: what [`new`](Self::new) checks.
    pub fn check(&self) -> Result<(), InputError> {
        if self.user_id == 0 {
            return Err(InputError::ZeroUserId);
        }
        if let AccountOp::Transfer { to_user } = self.op {
            if to_user == 0 {
                return Err(InputError::ZeroUserId);
            }
            if to_user == self.user_id {
                return Err(InputError::SameAccount);
            }
        }
        validate_amount(self.amount)?;
        validate_request_no(&self.request_no)
    }
}

/// Checks an account request number (also a transfer's or an activity's): 1..=64 printable
/// ASCII bytes.
pub fn validate_request_no(request_no: &str) -> Result<(), InputError> {
    let len = request_no.len();
    if len == 0 || len > REQUEST_NO_BYTES_MAX || !request_no.bytes().all(|b| b.is_ascii_graphic()) {
        return Err(InputError::BadRequestNo { len, max: REQUEST_NO_BYTES_MAX });
    }
    Ok(())
}

/// Checks a consumer group name: 1..=64 printable ASCII bytes.
pub fn validate_group(group: &str) -> Result<(), InputError> {
    if OffsetCommit::valid_group(group) {
        Ok(())
    } else {
        Err(InputError::BadGroup { len: group.len() })
    }
}

/// Checks a merchant order number: 1..=64 printable ASCII bytes.
pub fn validate_order_no(order_no: &str) -> Result<(), InputError> {
    let len = order_no.len();
    if len == 0 || len > ORDER_NO_BYTES_MAX || !order_no.bytes().all(|b| b.is_ascii_graphic()) {
        return Err(InputError::BadOrderNo { len, max: ORDER_NO_BYTES_MAX });
    }
    Ok(())
}

/// Checks a refund request number: 1..=64 printable ASCII bytes.
pub fn validate_refund_no(refund_no: &str) -> Result<(), InputError> {
    let len = refund_no.len();
    if len == 0 || len > REFUND_NO_BYTES_MAX || !refund_no.bytes().all(|b| b.is_ascii_graphic()) {
        return Err(InputError::BadRefundNo { len, max: REFUND_NO_BYTES_MAX });
    }
    Ok(())
}

/// Checks an amount: above zero, at most `AMOUNT_MAX`.
pub fn validate_amount(amount: u64) -> Result<u64, InputError> {
    match amount {
        0 => Err(InputError::ZeroAmount),
        a if a > AMOUNT_MAX => Err(InputError::AmountTooLarge { amount: a, max: AMOUNT_MAX }),
        a => Ok(a),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::trade::COUNTER_BITS;

    type Case = (NewTrade, fn(&InputError) -> bool);

    fn new_trade() -> NewTrade {
        NewTrade {
            buyer_id: 1,
            merchant_id: 2,
            merchant_order_no: "ORD-1".into(),
            amount: 100,
            currency: "CNY".into(),
            memo: String::new(),
        }
    }

    #[test]
    fn trade_ids_carry_their_shard() {
        let id = TradeId::new(1023, 77);
        assert_eq!((id.logical_shard(), id.counter()), (1023, 77));
        assert!(id.validate(1024).is_ok());
        assert!(id.validate(1023).is_err());
        assert!(TradeId(0).validate(1024).is_err());
        assert!(TradeId(5 << COUNTER_BITS).validate(1024).is_err(), "counter zero is never issued");
    }

    #[test]
    fn every_field_is_checked() {
        assert!(new_trade().validate().is_ok());
        let cases: Vec<Case> = vec![
            (NewTrade { buyer_id: 0, ..new_trade() }, |e| matches!(e, InputError::ZeroUserId)),
            (NewTrade { merchant_id: 0, ..new_trade() }, |e| matches!(e, InputError::ZeroMerchantId)),
            (NewTrade { amount: 0, ..new_trade() }, |e| matches!(e, InputError::ZeroAmount)),
            (NewTrade { amount: AMOUNT_MAX + 1, ..new_trade() }, |e| matches!(e, InputError::AmountTooLarge { .. })),
            (NewTrade { amount: u64::MAX, ..new_trade() }, |e| matches!(e, InputError::AmountTooLarge { .. })),
            (NewTrade { currency: "XYZ".into(), ..new_trade() }, |e| matches!(e, InputError::UnknownCurrency(_))),
            (NewTrade { merchant_order_no: String::new(), ..new_trade() }, |e| {
                matches!(e, InputError::BadOrderNo { .. })
            }),
            (NewTrade { merchant_order_no: "x".repeat(65), ..new_trade() }, |e| {
                matches!(e, InputError::BadOrderNo { .. })
            }),
            (NewTrade { merchant_order_no: "a b".into(), ..new_trade() }, |e| {
                matches!(e, InputError::BadOrderNo { .. })
            }),
            (NewTrade { memo: "m".repeat(257), ..new_trade() }, |e| matches!(e, InputError::MemoTooLong { .. })),
        ];
        for (input, expected) in cases {
            let error = input.validate().unwrap_err();
            assert!(expected(&error), "{input:?} gave {error:?}");
        }
        assert!(NewTrade { memo: "m".repeat(256), amount: AMOUNT_MAX, ..new_trade() }.validate().is_ok());
    }
}
