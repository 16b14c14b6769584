//! The keys of the shard's maps of requests: merchant order numbers, refund and account request
//! numbers, and the hash that tells whether two creates with one order number are the same
//! trade.

use crate::currency::Currency;
use crate::trade::ORDER_NO_BYTES_MAX;

/// The key of the refund map: a 128-bit hash of (merchant, buyer, refund request number).
/// Request numbers are unique per merchant and buyer, so every trade a number could be
/// reused for lives in this shard.
pub fn refund_key(merchant_id: u64, buyer_id: u64, refund_no: &str) -> u128 {
    let mut fixed = [0u8; 16];
    fixed[..8].copy_from_slice(&merchant_id.to_le_bytes());
    fixed[8..].copy_from_slice(&buyer_id.to_le_bytes());
    xxhash_rust::xxh3::xxh3_128_with_seed(refund_no.as_bytes(), xxhash_rust::xxh3::xxh3_64(&fixed))
}

/// The key of the map of account requests: a 128-bit hash of (user, request number).
/// Request numbers are unique per user, and a user's accounts all live in this shard.
pub fn account_request_key(user_id: u64, request_no: &str) -> u128 {
    let mut fixed = *b"account:\0\0\0\0\0\0\0\0";
    fixed[8..].copy_from_slice(&user_id.to_le_bytes());
    let seed = xxhash_rust::xxh3::xxh3_64(&fixed);
    xxhash_rust::xxh3::xxh3_128_with_seed(request_no.as_bytes(), seed)
}

/// The id of the activity that credits the merchant of trade `id` (paid from a balance) in
/// another shard when the trade settles: one per trade, found again by any retry.
pub fn settlement_activity(id: crate::trade::TradeId) -> u128 {
    let mut fixed = *b"settle::\0\0\0\0\0\0\0\0";
    fixed[8..].copy_from_slice(&id.0.to_le_bytes());
    xxhash_rust::xxh3::xxh3_128(&fixed)
}

/// The key of the idempotency map: a 128-bit hash of (merchant id, order number).
pub fn order_key(merchant_id: u64, order_no: &str) -> u128 {
    let mut bytes = [0u8; 8 + ORDER_NO_BYTES_MAX];
    bytes[..8].copy_from_slice(&merchant_id.to_le_bytes());
    let order_no = &order_no.as_bytes()[..order_no.len().min(ORDER_NO_BYTES_MAX)];
    bytes[8..8 + order_no.len()].copy_from_slice(order_no);
    xxhash_rust::xxh3::xxh3_128(&bytes[..8 + order_no.len()])
}

/// A hash of what makes two creates with one order number "the same trade".
pub fn body_hash(buyer_id: u64, amount: u64, currency: Currency, memo: &str) -> u64 {
    let mut fixed = [0u8; 19];
    fixed[..8].copy_from_slice(&buyer_id.to_le_bytes());
    fixed[8..16].copy_from_slice(&amount.to_le_bytes());
    fixed[16..].copy_from_slice(&currency.bytes());
    xxhash_rust::xxh3::xxh3_64_with_seed(memo.as_bytes(), xxhash_rust::xxh3::xxh3_64(&fixed))
}
