//! Trade records: the bytes of each change, which are at once the write-ahead log entry, the
//! store of record, and the event settlement consumes.
//!
//! Every record carries the whole event (trade, user, merchant, time, amount, currency), so a
//! consumer needs nothing else; a `Created` record also carries the order number and the memo.
//! Layout in `docs/FORMAT.md`. Decoding checks the version, the kind, the currency and every
//! length, and never panics on any bytes.

use serde::{Deserialize, Serialize};

use crate::currency::Currency;
use crate::trade::{TradeId, ValidTrade, MEMO_BYTES_MAX, ORDER_NO_BYTES_MAX, REFUND_NO_BYTES_MAX};

/// The record encoding this build writes and reads.
pub const RECORD_VERSION: u8 = 1;
/// Bytes of the fixed part every record has.
pub const FIXED_BYTES: usize = 48;
/// Largest record this build writes.
pub const RECORD_BYTES_MAX: usize = FIXED_BYTES + 1 + ORDER_NO_BYTES_MAX + 2 + MEMO_BYTES_MAX;

const _: () = assert!(REFUND_NO_BYTES_MAX <= ORDER_NO_BYTES_MAX, "a refund record is never the largest");

/// What a record says happened.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[repr(u8)]
pub enum RecordKind {
    /// A trade was created (amount: the trade's amount).
    Created = 1,
    /// The trade was paid (amount: the trade's amount).
    Paid = 2,
    /// The trade was settled to the merchant (amount: the trade's amount).
    Settled = 3,
    /// The trade was closed unpaid (amount: the trade's amount).
    Closed = 4,
    /// Part or all of the trade was refunded (amount: this refund; it carries the caller's
    /// refund request number).
    Refunded = 5,
}

impl RecordKind {
    fn from_u8(byte: u8) -> Option<RecordKind> {
        Some(match byte {
            1 => RecordKind::Created,
            2 => RecordKind::Paid,
            3 => RecordKind::Settled,
            4 => RecordKind::Closed,
            5 => RecordKind::Refunded,
            _ => return None,
        })
    }
}

/// One decoded record: a trade event.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TradeRecord {
    pub kind: RecordKind,
    pub trade_id: TradeId,
    pub user_id: u64,
    pub merchant_id: u64,
    /// Milliseconds since the Unix epoch.
    pub at_ms: u64,
    pub amount: u64,
    pub currency: Currency,
    /// `Created` only.
    pub created: Option<CreatedFields>,
    /// `Refunded` only: the caller's refund request number, which makes a retried refund
    /// answer the original instead of refunding twice.
    pub refund_no: Option<String>,
}

/// The fields only a `Created` record carries.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CreatedFields {
    pub merchant_order_no: String,
    pub memo: String,
}

impl TradeRecord {
    /// The `Created` record of a validated trade.
    pub fn created(id: TradeId, trade: &ValidTrade, at_ms: u64) -> TradeRecord {
        TradeRecord {
            kind: RecordKind::Created,
            trade_id: id,
            user_id: trade.buyer_id,
            merchant_id: trade.merchant_id,
            at_ms,
            amount: trade.amount,
            currency: trade.currency,
            created: Some(CreatedFields {
                merchant_order_no: trade.merchant_order_no.clone(),
                memo: trade.memo.clone(),
            }),
            refund_no: None,
        }
    }

    /// Appends the record's bytes to `out`.
    pub fn encode_into(&self, out: &mut Vec<u8>) {
        out.push(RECORD_VERSION);
        out.push(self.kind as u8);
        out.extend_from_slice(&self.currency.bytes());
        out.extend_from_slice(&[0; 3]);
        for field in [self.trade_id.0, self.user_id, self.merchant_id, self.at_ms, self.amount] {
            out.extend_from_slice(&field.to_le_bytes());
        }
        if let Some(created) = &self.created {
            assert!(created.merchant_order_no.len() <= ORDER_NO_BYTES_MAX && created.memo.len() <= MEMO_BYTES_MAX);
            out.push(created.merchant_order_no.len() as u8);
            out.extend_from_slice(created.merchant_order_no.as_bytes());
            out.extend_from_slice(&(created.memo.len() as u16).to_le_bytes());
            out.extend_from_slice(created.memo.as_bytes());
        }
        if let Some(refund_no) = &self.refund_no {
            assert!(self.kind == RecordKind::Refunded && (1..=REFUND_NO_BYTES_MAX).contains(&refund_no.len()));
            out.push(refund_no.len() as u8);
            out.extend_from_slice(refund_no.as_bytes());
        }
    }

    /// The record's bytes.
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(FIXED_BYTES + 8);
        self.encode_into(&mut out);
        out
    }

    /// Decodes a record, checking everything.
    pub fn decode(bytes: &[u8]) -> Result<TradeRecord, &'static str> {
        TradeRecordView::decode(bytes).map(|view| view.to_record())
    }
}

/// A decoded trade record whose strings borrow the bytes it was decoded from: what a reader of
/// raw event batches gets without allocating. The one decoder of trade records;
/// [`TradeRecord::decode`] copies a view.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TradeRecordView<'a> {
    pub kind: RecordKind,
    pub trade_id: TradeId,
    pub user_id: u64,
    pub merchant_id: u64,
    /// Milliseconds since the Unix epoch.
    pub at_ms: u64,
    pub amount: u64,
    pub currency: Currency,
    /// `Created` only.
    pub created: Option<CreatedFieldsView<'a>>,
    /// `Refunded` only: the caller's refund request number.
    pub refund_no: Option<&'a str>,
}

/// The fields only a `Created` record carries, borrowed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CreatedFieldsView<'a> {
    pub merchant_order_no: &'a str,
    pub memo: &'a str,
}

impl<'a> TradeRecordView<'a> {
    /// The owned record.
    pub fn to_record(&self) -> TradeRecord {
        TradeRecord {
            kind: self.kind,
            trade_id: self.trade_id,
            user_id: self.user_id,
            merchant_id: self.merchant_id,
            at_ms: self.at_ms,
            amount: self.amount,
            currency: self.currency,
            created: self.created.map(|created| CreatedFields {
                merchant_order_no: created.merchant_order_no.to_string(),
                memo: created.memo.to_string(),
            }),
            refund_no: self.refund_no.map(str::to_string),
        }
    }

    /// Decodes a record, checking everything.
    pub fn decode(bytes: &'a [u8]) -> Result<TradeRecordView<'a>, &'static str> {
        if bytes.len() < FIXED_BYTES {
            return Err("record shorter than its fixed part");
        }
        if bytes[0] != RECORD_VERSION {
            return Err("unknown record version");
        }
        let kind = RecordKind::from_u8(bytes[1]).ok_or("unknown record kind")?;
        let currency = Currency::from_bytes([bytes[2], bytes[3], bytes[4]]).ok_or("unknown currency in record")?;
        if bytes[5..8] != [0; 3] {
            return Err("reserved record bytes are not zero");
        }
        let field = |i: usize| u64::from_le_bytes(bytes[8 + 8 * i..16 + 8 * i].try_into().expect("8 bytes"));
        let mut record = TradeRecordView {
            kind,
            trade_id: TradeId(field(0)),
            user_id: field(1),
            merchant_id: field(2),
            at_ms: field(3),
            amount: field(4),
            currency,
            created: None,
            refund_no: None,
        };
        let rest = &bytes[FIXED_BYTES..];
        if kind == RecordKind::Refunded {
            let (refund_no, rest) = take_string(rest, 1, REFUND_NO_BYTES_MAX)?;
            if refund_no.is_empty() || !refund_no.bytes().all(|b| b.is_ascii_graphic()) {
                return Err("refund request number empty or not printable ASCII");
            }
            record.refund_no = Some(refund_no);
            return if rest.is_empty() { Ok(record) } else { Err("trailing bytes after record") };
        }
        if kind != RecordKind::Created {
            return if rest.is_empty() { Ok(record) } else { Err("trailing bytes after record") };
        }
        let (order_no, rest) = take_string(rest, 1, ORDER_NO_BYTES_MAX)?;
        let (memo, rest) = take_string(rest, 2, MEMO_BYTES_MAX)?;
        if !rest.is_empty() {
            return Err("trailing bytes after record");
        }
        record.created = Some(CreatedFieldsView { merchant_order_no: order_no, memo });
        Ok(record)
    }
}

/// A length-prefixed (1 or 2 bytes, little-endian) UTF-8 string of at most `max` bytes.
fn take_string(bytes: &[u8], prefix: usize, max: usize) -> Result<(&str, &[u8]), &'static str> {
    if bytes.len() < prefix {
        return Err("record cut short");
    }
    let len = if prefix == 1 { bytes[0] as usize } else { u16::from_le_bytes([bytes[0], bytes[1]]) as usize };
    if len > max || bytes.len() - prefix < len {
        return Err("string length out of bounds");
    }
    let text = std::str::from_utf8(&bytes[prefix..prefix + len]).map_err(|_| "string is not UTF-8")?;
    Ok((text, &bytes[prefix + len..]))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn sample(kind: RecordKind) -> TradeRecord {
        TradeRecord {
            kind,
            trade_id: TradeId::new(3, 9),
            user_id: 11,
            merchant_id: 12,
            at_ms: 1_700_000_000_000,
            amount: 500,
            currency: Currency::parse("JPY").unwrap(),
            created: (kind == RecordKind::Created)
                .then(|| CreatedFields { merchant_order_no: "A-1".into(), memo: "gift wrap, 礼物".into() }),
            refund_no: (kind == RecordKind::Refunded).then(|| "R-2026-1".into()),
        }
    }

    #[test]
    fn every_kind_round_trips() {
        for kind in
            [RecordKind::Created, RecordKind::Paid, RecordKind::Settled, RecordKind::Closed, RecordKind::Refunded]
        {
            let record = sample(kind);
            assert_eq!(TradeRecord::decode(&record.encode()), Ok(record));
        }
        assert!(sample(RecordKind::Created).encode().len() <= RECORD_BYTES_MAX);
    }

    #[test]
    fn damaged_records_are_refused() {
        let bytes = sample(RecordKind::Created).encode();
        assert!(TradeRecord::decode(&bytes[..bytes.len() - 1]).is_err());
        let mut wrong_version = bytes.clone();
        wrong_version[0] = 2;
        assert!(TradeRecord::decode(&wrong_version).is_err());
        let mut trailing = sample(RecordKind::Paid).encode();
        trailing.push(0);
        assert!(TradeRecord::decode(&trailing).is_err());
    }

    proptest! {
        #[test]
        fn arbitrary_bytes_never_panic(bytes in prop::collection::vec(any::<u8>(), 0..400)) {
            let _ = TradeRecord::decode(&bytes);
        }
    }
}
