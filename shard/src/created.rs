//! The immutable part of a trade (creation time, order number, memo), from its `Created`
//! record, as a read loads it to cache the trade (`trade_cache.rs`).

use std::rc::Rc;

/// The immutable part of a trade in one heap block, shared by clones: the creation time (8
/// bytes), the order number's length (1), the order number, the memo.
#[derive(Clone, PartialEq, Eq)]
pub(crate) struct CreatedPart(Rc<[u8]>);

impl CreatedPart {
    pub(crate) fn new(created_ms: u64, merchant_order_no: &str, memo: &str) -> CreatedPart {
        let order_len = u8::try_from(merchant_order_no.len()).expect("order numbers are validated to fit a byte");
        let mut bytes = Vec::with_capacity(9 + merchant_order_no.len() + memo.len());
        bytes.extend_from_slice(&created_ms.to_le_bytes());
        bytes.push(order_len);
        bytes.extend_from_slice(merchant_order_no.as_bytes());
        bytes.extend_from_slice(memo.as_bytes());
        CreatedPart(bytes.into())
    }

    /// Milliseconds since the Unix epoch.
    pub(crate) fn created_ms(&self) -> u64 {
        u64::from_le_bytes(self.0[..8].try_into().expect("eight bytes"))
    }

    pub(crate) fn merchant_order_no(&self) -> &str {
        let len = self.0[8] as usize;
        std::str::from_utf8(&self.0[9..9 + len]).expect("made from a str")
    }

    pub(crate) fn memo(&self) -> &str {
        let len = self.0[8] as usize;
        std::str::from_utf8(&self.0[9 + len..]).expect("made from a str")
    }
}

impl std::fmt::Debug for CreatedPart {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CreatedPart")
            .field("created_ms", &self.created_ms())
            .field("merchant_order_no", &self.merchant_order_no())
            .field("memo", &self.memo())
            .finish()
    }
}

#[cfg(test)]
mod created_part_tests {
    use super::CreatedPart;
    use crate::trade::{MEMO_BYTES_MAX, ORDER_NO_BYTES_MAX};

    #[test]
    fn fields_come_back_as_they_went_in() {
        let longest_order = "9".repeat(ORDER_NO_BYTES_MAX);
        let longest_memo = "备".repeat(MEMO_BYTES_MAX / 3);
        for (ms, order, memo) in
            [(0, "", ""), (u64::MAX, "ORD-1", "order 1 of buyer 7"), (7, longest_order.as_str(), longest_memo.as_str())]
        {
            let part = CreatedPart::new(ms, order, memo);
            assert_eq!((part.created_ms(), part.merchant_order_no(), part.memo()), (ms, order, memo));
            assert_eq!(part.clone(), part);
        }
    }
}
