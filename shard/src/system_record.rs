//! The records of a shard's log that are not trade events (system records, kinds 16 and
//! above): consumer groups' offset commits, the claims of merchant order numbers in their
//! home shard with how each ended, a buyer shard's note of which of its trades' claims are
//! known durable (`doubts.rs`), and account journal records (`journal.rs`). Consumers skip them; replay applies them. Layout in
//! `docs/FORMAT.md`. Decoding checks every byte and never panics.

use serde::{Deserialize, Serialize};

use crate::journal::{JournalRecord, KIND_JOURNAL};
use crate::message::{MessageRecord, MessageView, KIND_MESSAGE};
use crate::record::{TradeRecord, RECORD_VERSION};
use crate::tcc::{TccRecord, KIND_TCC};
use crate::trade::TradeId;

/// Record kinds from this value on are system records, not trade events.
pub const SYSTEM_KIND_MIN: u8 = 16;
/// The kind of an [`OffsetCommit`] record.
pub const KIND_OFFSET_COMMIT: u8 = 16;
/// Longest consumer group name, in bytes.
pub const GROUP_BYTES_MAX: usize = 64;
const OFFSET_COMMIT_FIXED_BYTES: usize = 24;

/// A consumer group's committed position in this shard's log (a system record: consumers do
/// not see it as an event). Stored in the log it describes, so it is as durable as the events.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct OffsetCommit {
    /// 1..=64 printable ASCII bytes.
    pub group: String,
    /// The offset of the next event the group will read.
    pub offset: u64,
    pub at_ms: u64,
}

impl OffsetCommit {
    /// Checks a group name: 1..=64 printable ASCII bytes.
    pub fn valid_group(group: &str) -> bool {
        !group.is_empty() && group.len() <= GROUP_BYTES_MAX && group.bytes().all(|b| b.is_ascii_graphic())
    }

    pub fn encode(&self) -> Vec<u8> {
        assert!(Self::valid_group(&self.group));
        let mut out = Vec::with_capacity(OFFSET_COMMIT_FIXED_BYTES + self.group.len());
        out.extend_from_slice(&[RECORD_VERSION, KIND_OFFSET_COMMIT, self.group.len() as u8, 0, 0, 0, 0, 0]);
        out.extend_from_slice(&self.offset.to_le_bytes());
        out.extend_from_slice(&self.at_ms.to_le_bytes());
        out.extend_from_slice(self.group.as_bytes());
        out
    }

    fn decode(bytes: &[u8]) -> Result<OffsetCommit, &'static str> {
        if bytes.len() < OFFSET_COMMIT_FIXED_BYTES || bytes[3..8] != [0; 5] {
            return Err("offset commit record cut short or with reserved bytes set");
        }
        let len = bytes[2] as usize;
        if bytes.len() != OFFSET_COMMIT_FIXED_BYTES + len {
            return Err("offset commit group length does not match the record");
        }
        let group = std::str::from_utf8(&bytes[OFFSET_COMMIT_FIXED_BYTES..]).map_err(|_| "group is not UTF-8")?;
        if !Self::valid_group(group) {
            return Err("group name out of bounds");
        }
        let field = |at: usize| u64::from_le_bytes(bytes[at..at + 8].try_into().expect("8 bytes"));
        Ok(OffsetCommit { group: group.to_string(), offset: field(8), at_ms: field(16) })
    }
}

/// The kind of an [`OrderClaim`] record.
pub const KIND_ORDER_CLAIM: u8 = 17;
/// The kind of a [`ClaimSettled`] record.
pub const KIND_CLAIM_SETTLED: u8 = 18;
const ORDER_CLAIM_BYTES: usize = 56;
const CLAIM_SETTLED_BYTES: usize = 40;

/// A merchant order number claimed in its home shard for a trade of a buyer in another shard
/// (a system record), written while the trade is written in the buyer's shard; until a
/// [`ClaimSettled`] names the trade it is pending.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OrderClaim {
    /// The order key (`index::order_key` of merchant and order number).
    pub key: u128,
    /// The body hash of the create (`index::body_hash`): a retry must match it.
    pub body: u64,
    pub buyer_id: u64,
    pub merchant_id: u64,
    pub at_ms: u64,
}

/// How a claim ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ClaimOutcome {
    /// The trade exists: the order number is this trade's for good.
    Confirmed(TradeId),
    /// No trade was created under the claim (its create was never acknowledged); the order
    /// number is free again.
    Released,
}

/// The end of a pending [`OrderClaim`] (a system record).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ClaimSettled {
    pub key: u128,
    pub outcome: ClaimOutcome,
    pub at_ms: u64,
}

fn u64_at(bytes: &[u8], at: usize) -> u64 {
    u64::from_le_bytes(bytes[at..at + 8].try_into().expect("8 bytes"))
}

fn u128_at(bytes: &[u8], at: usize) -> u128 {
    u128::from_le_bytes(bytes[at..at + 16].try_into().expect("16 bytes"))
}

impl OrderClaim {
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(ORDER_CLAIM_BYTES);
        out.extend_from_slice(&[RECORD_VERSION, KIND_ORDER_CLAIM, 0, 0, 0, 0, 0, 0]);
        out.extend_from_slice(&self.key.to_le_bytes());
        for field in [self.body, self.buyer_id, self.merchant_id, self.at_ms] {
            out.extend_from_slice(&field.to_le_bytes());
        }
        out
    }

    fn decode(bytes: &[u8]) -> Result<OrderClaim, &'static str> {
        if bytes.len() != ORDER_CLAIM_BYTES || bytes[2..8] != [0; 6] {
            return Err("order claim record of the wrong length or with reserved bytes set");
        }
        let claim = OrderClaim {
            key: u128_at(bytes, 8),
            body: u64_at(bytes, 24),
            buyer_id: u64_at(bytes, 32),
            merchant_id: u64_at(bytes, 40),
            at_ms: u64_at(bytes, 48),
        };
        if claim.buyer_id == 0 || claim.merchant_id == 0 {
            return Err("order claim without its buyer or merchant");
        }
        Ok(claim)
    }
}

impl ClaimSettled {
    pub fn encode(&self) -> Vec<u8> {
        let (outcome, trade) = match self.outcome {
            ClaimOutcome::Confirmed(id) => (1, id.0),
            ClaimOutcome::Released => (2, 0),
        };
        let mut out = Vec::with_capacity(CLAIM_SETTLED_BYTES);
        out.extend_from_slice(&[RECORD_VERSION, KIND_CLAIM_SETTLED, outcome, 0, 0, 0, 0, 0]);
        out.extend_from_slice(&self.key.to_le_bytes());
        out.extend_from_slice(&trade.to_le_bytes());
        out.extend_from_slice(&self.at_ms.to_le_bytes());
        out
    }

    fn decode(bytes: &[u8]) -> Result<ClaimSettled, &'static str> {
        if bytes.len() != CLAIM_SETTLED_BYTES || bytes[3..8] != [0; 5] {
            return Err("claim settlement record of the wrong length or with reserved bytes set");
        }
        let trade = u64_at(bytes, 24);
        let outcome = match (bytes[2], trade) {
            (1, id) if id != 0 => ClaimOutcome::Confirmed(TradeId(id)),
            (2, 0) => ClaimOutcome::Released,
            _ => return Err("claim settlement of an unknown outcome"),
        };
        Ok(ClaimSettled { key: u128_at(bytes, 8), outcome, at_ms: u64_at(bytes, 32) })
    }
}

/// The kind of a [`ClaimsKnown`] record.
pub const KIND_CLAIMS_KNOWN: u8 = 22;
const CLAIMS_KNOWN_BYTES: usize = 24;

/// A buyer shard's note that every trade of it below a counter has its order number's claim
/// durable in the number's home shard, or needed none (a system record; `doubts.rs`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ClaimsKnown {
    pub below_counter: u64,
    pub at_ms: u64,
}

impl ClaimsKnown {
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(CLAIMS_KNOWN_BYTES);
        out.extend_from_slice(&[RECORD_VERSION, KIND_CLAIMS_KNOWN, 0, 0, 0, 0, 0, 0]);
        out.extend_from_slice(&self.below_counter.to_le_bytes());
        out.extend_from_slice(&self.at_ms.to_le_bytes());
        out
    }

    fn decode(bytes: &[u8]) -> Result<ClaimsKnown, &'static str> {
        if bytes.len() != CLAIMS_KNOWN_BYTES || bytes[2..8] != [0; 6] {
            return Err("claims-known record of the wrong length or with reserved bytes set");
        }
        let below_counter = u64_at(bytes, 8);
        if below_counter == 0 || below_counter > 1 << crate::trade::COUNTER_BITS {
            return Err("claims-known record with a counter out of range");
        }
        Ok(ClaimsKnown { below_counter, at_ms: u64_at(bytes, 16) })
    }
}

/// Any record of a shard's log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LogRecord {
    Trade(TradeRecord),
    Offset(OffsetCommit),
    Claim(OrderClaim),
    ClaimSettled(ClaimSettled),
    Journal(JournalRecord),
    Tcc(TccRecord),
    Message(MessageRecord),
    ClaimsKnown(ClaimsKnown),
}

impl LogRecord {
    /// True when `bytes` are a system record (an offset commit, or a kind of one this build
    /// does not know), from the kind byte alone: what a reader of events skips.
    pub fn is_system(bytes: &[u8]) -> bool {
        bytes.get(1).is_some_and(|kind| *kind >= SYSTEM_KIND_MIN)
    }

    /// Decodes a record of either family, checking everything.
    pub fn decode(bytes: &[u8]) -> Result<LogRecord, &'static str> {
        match bytes.get(1) {
            Some(&KIND_OFFSET_COMMIT) if bytes[0] == RECORD_VERSION => {
                OffsetCommit::decode(bytes).map(LogRecord::Offset)
            }
            Some(&KIND_ORDER_CLAIM) if bytes[0] == RECORD_VERSION => OrderClaim::decode(bytes).map(LogRecord::Claim),
            Some(&KIND_CLAIM_SETTLED) if bytes[0] == RECORD_VERSION => {
                ClaimSettled::decode(bytes).map(LogRecord::ClaimSettled)
            }
            Some(&KIND_JOURNAL) if bytes[0] == RECORD_VERSION => JournalRecord::decode(bytes).map(LogRecord::Journal),
            Some(&KIND_TCC) if bytes[0] == RECORD_VERSION => TccRecord::decode(bytes).map(LogRecord::Tcc),
            Some(&KIND_CLAIMS_KNOWN) if bytes[0] == RECORD_VERSION => {
                ClaimsKnown::decode(bytes).map(LogRecord::ClaimsKnown)
            }
            Some(&KIND_MESSAGE) => MessageView::decode(bytes).map(|view| LogRecord::Message(view.to_record())),
            Some(kind) if *kind >= SYSTEM_KIND_MIN => Err("unknown system record kind"),
            _ => TradeRecord::decode(bytes).map(LogRecord::Trade),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn claims_and_their_settlements_round_trip_and_are_system_records() {
        let claim = OrderClaim { key: u128::MAX - 5, body: 9, buyer_id: 3, merchant_id: 4, at_ms: 5 };
        assert_eq!(LogRecord::decode(&claim.encode()), Ok(LogRecord::Claim(claim)));
        assert!(LogRecord::is_system(&claim.encode()));
        for outcome in [ClaimOutcome::Confirmed(TradeId(77)), ClaimOutcome::Released] {
            let settled = ClaimSettled { key: 1 << 100, outcome, at_ms: 6 };
            assert_eq!(LogRecord::decode(&settled.encode()), Ok(LogRecord::ClaimSettled(settled)));
            assert!(LogRecord::is_system(&settled.encode()));
        }
        let mut confirmed_nothing = ClaimSettled { key: 1, outcome: ClaimOutcome::Released, at_ms: 0 }.encode();
        confirmed_nothing[2] = 1;
        assert!(LogRecord::decode(&confirmed_nothing).is_err(), "a confirmation names a trade");
    }

    #[test]
    fn claims_known_marks_round_trip_and_refuse_a_zero_counter() {
        let mark = ClaimsKnown { below_counter: 12, at_ms: 3 };
        assert_eq!(LogRecord::decode(&mark.encode()), Ok(LogRecord::ClaimsKnown(mark)));
        assert!(LogRecord::is_system(&mark.encode()));
        let zero = ClaimsKnown { below_counter: 0, at_ms: 3 }.encode();
        assert!(LogRecord::decode(&zero).is_err());
        let mut reserved = mark.encode();
        reserved[5] = 1;
        assert!(LogRecord::decode(&reserved).is_err());
    }

    #[test]
    fn offset_commits_round_trip_and_are_told_apart_from_trades() {
        let commit = OffsetCommit { group: "settlement".into(), offset: 12_345, at_ms: 7 };
        assert_eq!(LogRecord::decode(&commit.encode()), Ok(LogRecord::Offset(commit.clone())));
        let mut bad = commit.encode();
        bad.push(b'x');
        assert!(LogRecord::decode(&bad).is_err());
        assert!(
            !OffsetCommit::valid_group("") && !OffsetCommit::valid_group("a b") && OffsetCommit::valid_group("g-1")
        );
    }

    proptest! {
        #[test]
        fn arbitrary_bytes_never_panic(bytes in prop::collection::vec(any::<u8>(), 0..200)) {
            let _ = LogRecord::decode(&bytes);
        }
    }
}
