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

/// Where a trade's money comes from and goes to: outside the engine, or the engine's own
/// accounts (a trade paid from the buyer's balance, the merchant credited when it settles).
/// Each record says what it moves, so that applying it needs nothing but the record.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
pub enum Funding {
    /// Paid outside the engine (a card, a bank), or a record that moves no money.
    #[default]
    External,
    /// A Paid record debiting the buyer's available balance by the amount, or a Refunded
    /// record crediting the refund back to it.
    Balance,
    /// A Settled record of a trade paid from a balance: credits `credit` (what was not
    /// refunded) to the merchant, whose accounts live in physical shard `merchant_shard`.
    Settles { merchant_shard: u16, credit: u64 },
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
    /// What a Paid, Refunded or Settled record of a trade paid from a balance moves between
    /// accounts; `External` for every other record.
    pub funding: Funding,
}

/// The fields only a `Created` record carries.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CreatedFields {
    pub merchant_order_no: String,
    pub memo: String,
}

/// A create's order key and body hash (`keys.rs`), whether its record is owned or a view.
fn keys_of_create(
    merchant_id: u64,
    buyer_id: u64,
    amount: u64,
    currency: Currency,
    created: CreatedFieldsView<'_>,
) -> (u128, u64) {
    let key = crate::keys::order_key(merchant_id, created.merchant_order_no);
    (key, crate::keys::body_hash(buyer_id, amount, currency, created.memo))
}

impl TradeRecord {
    /// A `Created` record's order key and body hash (`keys.rs`); none for a change.
    pub fn created_keys(&self) -> Option<(u128, u64)> {
        let created = self.created.as_ref()?;
        let fields = CreatedFieldsView { merchant_order_no: &created.merchant_order_no, memo: &created.memo };
        Some(keys_of_create(self.merchant_id, self.user_id, self.amount, self.currency, fields))
    }

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
            funding: Funding::External,
        }
    }

    /// Appends the record's bytes to `out`.
    pub fn encode_into(&self, out: &mut Vec<u8>) {
        out.push(RECORD_VERSION);
        out.push(self.kind as u8);
        out.extend_from_slice(&self.currency.bytes());
        match self.funding {
            Funding::External => out.extend_from_slice(&[0; 3]),
            Funding::Balance => out.extend_from_slice(&[1, 0, 0]),
            Funding::Settles { merchant_shard, .. } => {
                out.push(2);
                out.extend_from_slice(&merchant_shard.to_le_bytes());
            }
        }
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
        if let Funding::Settles { credit, .. } = self.funding {
            assert!(self.kind == RecordKind::Settled, "only a Settled record credits a merchant");
            out.extend_from_slice(&credit.to_le_bytes());
        }
    }

    /// What a Settled record settles to the merchant: the credit of a trade paid from a balance
    /// (its amount less refunds), else the trade's amount.
    pub fn settled_amount(&self) -> u64 {
        match self.funding {
            Funding::Settles { credit, .. } => credit,
            Funding::External | Funding::Balance => self.amount,
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
    pub funding: Funding,
}

/// The fields only a `Created` record carries, borrowed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CreatedFieldsView<'a> {
    pub merchant_order_no: &'a str,
    pub memo: &'a str,
}

impl<'a> TradeRecordView<'a> {
    /// A `Created` record's order key and body hash (`keys.rs`); none for a change.
    pub fn created_keys(&self) -> Option<(u128, u64)> {
        let fields = self.created?;
        Some(keys_of_create(self.merchant_id, self.user_id, self.amount, self.currency, fields))
    }

    /// The owned record but for a create's order number and memo (`created` is `None`): for an
    /// open's replay, which needs only their keys ([`created_keys`](Self::created_keys)).
    pub(crate) fn into_record_without_created(self) -> TradeRecord {
        TradeRecordView { created: None, ..self }.to_record()
    }

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
            funding: self.funding,
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
        let merchant_shard = u16::from_le_bytes([bytes[6], bytes[7]]);
        let mut funding = match (bytes[5], kind) {
            (0, _) if merchant_shard == 0 => Funding::External,
            (1, RecordKind::Paid | RecordKind::Refunded) if merchant_shard == 0 => Funding::Balance,
            // The credit follows the fixed part.
            (2, RecordKind::Settled) => Funding::Settles { merchant_shard, credit: 0 },
            _ => return Err("funding bytes of an unknown kind, or on a record that moves no money"),
        };
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
            funding,
        };
        let mut rest = &bytes[FIXED_BYTES..];
        if let Funding::Settles { credit, .. } = &mut funding {
            let credited: [u8; 8] = rest.get(..8).ok_or("settled record cut short")?.try_into().expect("8 bytes");
            *credit = u64::from_le_bytes(credited);
            if *credit == 0 || *credit > record.amount {
                return Err("a merchant's credit of nothing, or of more than the trade's amount");
            }
            record.funding = funding;
            rest = &rest[8..];
        }
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
            funding: Funding::External,
        }
    }

    #[test]
    fn funding_round_trips_only_where_money_moves() {
        let settles = Funding::Settles { merchant_shard: 513, credit: 400 };
        for (kind, funding) in [
            (RecordKind::Paid, Funding::Balance),
            (RecordKind::Refunded, Funding::Balance),
            (RecordKind::Settled, settles),
        ] {
            let record = TradeRecord { funding, ..sample(kind) };
            let bytes = record.encode();
            assert_eq!(TradeRecord::decode(&bytes), Ok(record));
            assert!(TradeRecord::decode(&bytes[..bytes.len() - 1]).is_err());
        }
        let settled = TradeRecord { funding: settles, ..sample(RecordKind::Settled) }.encode();
        for credit in [0u64, 501] {
            let mut wrong = settled.clone();
            wrong[48..56].copy_from_slice(&credit.to_le_bytes());
            assert!(TradeRecord::decode(&wrong).is_err(), "credit {credit} of a 500 trade");
        }
        for kind in [RecordKind::Created, RecordKind::Closed] {
            let mut bytes = sample(kind).encode();
            bytes[5] = 1;
            assert!(TradeRecord::decode(&bytes).is_err(), "{kind:?} moves no money");
        }
        let mut named = TradeRecord { funding: Funding::Balance, ..sample(RecordKind::Paid) }.encode();
        named[6] = 1;
        assert!(TradeRecord::decode(&named).is_err(), "only a Settled record names the merchant's shard");
        let mut unknown = sample(RecordKind::Paid).encode();
        unknown[5] = 2;
        assert!(TradeRecord::decode(&unknown).is_err());
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
