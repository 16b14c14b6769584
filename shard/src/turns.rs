//! Long work on a shard's executor (a checkpoint's collecting, sorting and encoding, the
//! writes of runs and tables, merges) gives the executor back to the shard's requests every
//! few thousand items. glommio's `yield_if_needed` yields only once the executor's preemption
//! timer has fired (100 ms by default), which let one checkpoint's sort hold every request
//! of its shard for a fifth of a second.
//!
//! [`timed`] measures what such work costs its executor: the time of its turns alone, not its
//! waits for the device, so that a checkpoint's cost can be read apart from the requests it
//! runs beside (`CheckpointStats::busy_us`).

use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::future::Future;
use std::pin::pin;
use std::time::{Duration, Instant};

/// Items handled between two turns given back.
pub(crate) const ITEMS_PER_TURN: usize = 4096;

/// Lets every other ready task of the executor run before this one goes on.
pub(crate) async fn take_turn() {
    futures_lite::future::yield_now().await
}

/// Runs `work`, adding the time each of its turns takes (each poll, from its start to its
/// return) to `spent`; the time it waits between turns is not counted.
pub(crate) async fn timed<T>(work: impl Future<Output = T>, mut spent: impl FnMut(Duration)) -> T {
    let mut work = pin!(work);
    std::future::poll_fn(move |cx| {
        let started = Instant::now();
        let polled = work.as_mut().poll(cx);
        spent(started.elapsed());
        polled
    })
    .await
}

/// Entries sorted by key in pieces: [`sorted_by_key`] sorts each turn's worth of them in place,
/// in one buffer, and [`SortedInTurns::iter`] merges the pieces as it is read. Merging as they
/// are read, rather than into a second buffer, halves the memory a sort takes (a checkpoint's
/// may hold millions of entries, each a fresh page's worth of zeroing) and leaves the merge's
/// turns to the reader.
pub(crate) struct SortedInTurns<V> {
    entries: Vec<(u128, V)>,
}

/// `entries` (about `expected` of them: the buffer is made that large at once) sorted by key
/// in pieces of [`ITEMS_PER_TURN`], with a turn given back after each piece. Equal keys keep
/// no particular order.
pub(crate) async fn sorted_by_key<V>(entries: impl Iterator<Item = (u128, V)>, expected: usize) -> SortedInTurns<V> {
    let mut entries = entries.peekable();
    let mut sorted = Vec::with_capacity(expected);
    while entries.peek().is_some() {
        let start = sorted.len();
        sorted.extend(entries.by_ref().take(ITEMS_PER_TURN));
        sorted[start..].sort_unstable_by_key(|(key, _)| *key);
        take_turn().await;
    }
    SortedInTurns { entries: sorted }
}

impl<V> SortedInTurns<V> {
    pub(crate) fn len(&self) -> usize {
        self.entries.len()
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Every entry in key order: a k-way merge of the pieces.
    pub(crate) fn iter(&self) -> impl Iterator<Item = &(u128, V)> + '_ {
        let mut pieces: Vec<std::slice::Iter<'_, (u128, V)>> =
            self.entries.chunks(ITEMS_PER_TURN).map(|piece| piece.iter()).collect();
        let mut heads: BinaryHeap<Reverse<(u128, usize)>> = pieces
            .iter()
            .enumerate()
            .filter_map(|(n, piece)| piece.as_slice().first().map(|(key, _)| Reverse((*key, n))))
            .collect();
        std::iter::from_fn(move || {
            let Reverse((_, n)) = heads.pop()?;
            let entry = pieces[n].next()?;
            if let Some((key, _)) = pieces[n].as_slice().first() {
                heads.push(Reverse((*key, n)));
            }
            Some(entry)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(32))]
        #[test]
        /// Any count against any expected count (the buffer's first size), keys repeated or not.
        fn sorting_in_turns_sorts_and_keeps_every_entry(
            keys in proptest::collection::vec(prop_oneof![any::<u128>(), 0u128..64], 0..20_000),
            expected in 0usize..30_000,
        ) {
            let entries = keys.iter().enumerate().map(|(n, key)| (*key, n));
            let sorted = glommio::LocalExecutorBuilder::default()
                .make()
                .unwrap()
                .run(sorted_by_key(entries, expected));
            prop_assert_eq!(sorted.len(), keys.len());
            let sorted: Vec<&(u128, usize)> = sorted.iter().collect();
            prop_assert!(sorted.windows(2).all(|pair| pair[0].0 <= pair[1].0));
            let mut seen: Vec<usize> = sorted.iter().map(|(key, n)| { assert_eq!(keys[*n], *key); *n }).collect();
            seen.sort_unstable();
            prop_assert_eq!(seen, (0..keys.len()).collect::<Vec<_>>());
        }
    }
}
