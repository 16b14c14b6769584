//! One user's trade ids since the last checkpoint's run, oldest first. Most users have one or
//! two in that time, and the map of users takes one per trade created: held inline, those
//! cost no allocation of their own (an open's replay and the write path add one per create),
//! and only a user with more spills to a vector.

use crate::trade::TradeId;

/// Ids held inline before the list spills to a vector.
const INLINE: usize = 2;

/// A user's recent trade ids (module text), oldest first.
#[derive(Debug, Clone)]
pub(crate) enum UserTrades {
    Inline { len: u8, ids: [TradeId; INLINE] },
    Spilled(Vec<TradeId>),
}

impl Default for UserTrades {
    fn default() -> Self {
        UserTrades::Inline { len: 0, ids: [TradeId(0); INLINE] }
    }
}

impl UserTrades {
    pub(crate) fn as_slice(&self) -> &[TradeId] {
        match self {
            UserTrades::Inline { len, ids } => &ids[..usize::from(*len)],
            UserTrades::Spilled(ids) => ids,
        }
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.as_slice().is_empty()
    }

    pub(crate) fn push(&mut self, id: TradeId) {
        match self {
            UserTrades::Inline { len, ids } if usize::from(*len) < INLINE => {
                ids[usize::from(*len)] = id;
                *len += 1;
            }
            UserTrades::Inline { ids, .. } => {
                let mut spilled = Vec::with_capacity(INLINE * 2);
                spilled.extend_from_slice(ids);
                spilled.push(id);
                *self = UserTrades::Spilled(spilled);
            }
            UserTrades::Spilled(ids) => ids.push(id),
        }
    }

    pub(crate) fn extend(&mut self, ids: impl IntoIterator<Item = TradeId>) {
        ids.into_iter().for_each(|id| self.push(id));
    }

    /// Forgets the oldest `count` ids (all of them if it has fewer).
    pub(crate) fn forget_oldest(&mut self, count: usize) {
        match self {
            UserTrades::Inline { len, ids } => {
                let count = count.min(usize::from(*len));
                ids.copy_within(count.., 0);
                *len -= count as u8;
            }
            UserTrades::Spilled(ids) => {
                ids.drain(..count.min(ids.len()));
                if ids.len() <= INLINE {
                    let mut inline = UserTrades::default();
                    inline.extend(ids.iter().copied());
                    *self = inline;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keeps_the_order_of_a_vector_inline_and_spilled() {
        let mut list = UserTrades::default();
        let mut model = Vec::new();
        assert!(list.is_empty());
        for n in 1..=7u64 {
            list.push(TradeId(n));
            model.push(TradeId(n));
            assert_eq!(list.as_slice(), model.as_slice());
        }
        assert!(matches!(list, UserTrades::Spilled(_)));
        list.forget_oldest(5);
        model.drain(..5);
        assert_eq!(list.as_slice(), model.as_slice());
        assert!(matches!(list, UserTrades::Inline { len: 2, .. }), "two left go back inline");
        list.extend([TradeId(8)]);
        model.push(TradeId(8));
        assert_eq!(list.as_slice(), model.as_slice());
        list.forget_oldest(10);
        assert!(list.is_empty());
    }

    #[test]
    fn is_at_most_a_word_larger_than_the_vector_it_replaces() {
        assert!(std::mem::size_of::<UserTrades>() <= std::mem::size_of::<Vec<TradeId>>() + 8);
    }
}
