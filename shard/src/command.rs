//! What a caller asks a shard to write: a create, a move, a refund.

use crate::lifecycle::Move;
use crate::trade::{TradeId, ValidTrade};

/// A write to one shard.
#[derive(Debug, Clone)]
pub enum Command {
    /// Create a trade for a buyer of `logical_shard` (which this shard owns).
    Create { trade: ValidTrade, logical_shard: u32 },
    /// Move an existing trade along its lifecycle.
    Move { id: TradeId, to: Move },
    /// Refund part of a paid trade, once per refund request number (checked by the caller).
    Refund { id: TradeId, amount: u64, refund_no: String },
}
