//! The index as a checkpoint holds it: every entry ([`Item`]), the numbers beside the maps
//! ([`Scalars`]), and the restoring of an index from them.

use super::*;

/// One entry of the indexes, as a checkpoint holds it (`checkpoint.rs`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Item {
    Trade(TradeId, TradeEntry),
    /// A run of order keys in force, with its store (listed oldest first).
    Run(RunStore, u64),
    /// A user's trades, oldest first (a long list comes as several items, in order).
    User(u64, Vec<TradeId>),
    /// Not written since the refunds are in runs; read if present.
    Refund(u128, RefundEntry),
    Claim(u128, ClaimEntry),
    Group(String, GroupOffset),
    Account(AccountItem),
    Tcc(TccItem),
    Message(MessageItem),
}

/// The numbers of an index beside its maps.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct Scalars {
    pub applied_end: u64,
    pub events_end: u64,
    pub counter_max: u64,
    /// The highest counter the table of trades holds (`TradeTable::dense_max`).
    pub table_counter_max: u64,
    /// Every trade below this counter has its claim known durable (`doubts.rs`).
    pub claims_known_below: u64,
}

impl ShardIndex {
    /// Every entry of the indexes (a checkpoint writes them; `restore` reads them back).
    pub(crate) fn items(&self) -> impl Iterator<Item = Item> + '_ {
        // Dense trades are in the table on disk (`trade_file.rs`); only scattered ones here.
        let trades = self.trades.scattered().map(|(id, entry)| Item::Trade(id, *entry));
        // Order keys, confirmed claims, refunds and the users' lists are in runs
        // (`key_runs.rs`): the checkpointer lists them, and writes the pending claims only.
        let claims = self.pending_claims.iter().map(|(key, claim)| Item::Claim(*key, *claim));
        let groups = self.offsets.iter().map(|(group, offset)| Item::Group(group.clone(), *offset));
        let accounts = self.accounts.items().map(Item::Account);
        let tcc = self.tcc.items().map(Item::Tcc);
        let messages = self.messages.items().map(Item::Message);
        trades.chain(claims).chain(groups).chain(accounts).chain(tcc).chain(messages)
    }

    pub(crate) fn scalars(&self) -> Scalars {
        Scalars {
            applied_end: self.applied_end,
            events_end: self.events_end,
            counter_max: self.counter_max,
            table_counter_max: self.trades.dense_max(),
            claims_known_below: self.claims_known_below,
        }
    }

    /// An index holding `scalars` and nothing else yet.
    pub(crate) fn with_scalars(scalars: Scalars) -> ShardIndex {
        ShardIndex {
            applied_end: scalars.applied_end,
            events_end: scalars.events_end,
            counter_max: scalars.counter_max,
            restored_table_max: scalars.table_counter_max,
            claims_known_below: scalars.claims_known_below,
            ..ShardIndex::default()
        }
    }

    /// Adds an entry read from a checkpoint; an entry that contradicts those before it means
    /// the checkpoint is not what was written.
    pub(crate) fn restore(&mut self, item: Item) -> Result<(), &'static str> {
        match item {
            Item::Trade(id, entry) => {
                if self.trades.contains(id) || id.counter() > self.counter_max {
                    return Err("trade twice in a checkpoint, or above its counter");
                }
                self.trades.insert_scattered(id, entry);
            }
            Item::Run(store, id) => {
                if self.listed_runs.iter().any(|(_, listed)| *listed == id) {
                    return Err("run twice in a checkpoint");
                }
                self.listed_runs.push((store, id));
            }
            Item::User(user, ids) => self.by_user.get_or_default(user).extend(ids),
            Item::Refund(key, refund) => {
                if !self.refunds.insert_new(key, refund) {
                    return Err("refund key twice in a checkpoint");
                }
            }
            Item::Claim(key, claim) => {
                if !self.claims.insert_new(key, claim) {
                    return Err("claim twice in a checkpoint");
                }
                if claim.trade.is_none() {
                    self.pending_claims.insert(key, claim);
                }
            }
            Item::Group(group, offset) => {
                if self.offsets.insert(group, offset).is_some() {
                    return Err("group twice in a checkpoint");
                }
            }
            Item::Account(item) => self.accounts.restore(item)?,
            Item::Tcc(item) => self.tcc.restore(item)?,
            Item::Message(item) => self.messages.restore(item)?,
        }
        Ok(())
    }

    /// The runs of order keys the loaded checkpoint listed (an open opens them).
    pub(crate) fn take_listed_runs(&mut self) -> Vec<(RunStore, u64)> {
        std::mem::take(&mut self.listed_runs)
    }
}
