//! Long work on a shard's executor (a checkpoint's collecting, sorting and encoding, the
//! writes of runs and tables, merges) gives the executor back to the shard's requests every
//! few thousand items. glommio's `yield_if_needed` yields only once the executor's preemption
//! timer has fired (100 ms by default), which let one checkpoint's sort hold every request
//! of its shard for a fifth of a second.
//!
//! [`timed`] measures what such work costs its executor: the time of its turns alone, not its
//! waits for the device, so that a checkpoint's cost can be read apart from the requests it
//! runs beside (`CheckpointStats::busy_us`).

use std::future::Future;
use std::pin::pin;
use std::time::{Duration, Instant};

use crate::sort_room::SortRoom;

/// Items handled between two turns given back.
pub(crate) const ITEMS_PER_TURN: usize = 4096;

/// How far ahead [`SortedInTurns::iter_ahead`] looks: enough misses in flight to cover one.
pub(crate) const AHEAD: usize = 16;

/// Lets every other ready task of the executor run before this one goes on.
pub(crate) async fn take_turn() {
    futures_lite::future::yield_now().await
}

/// Runs `work`; its output and the time its turns took (each poll, from its start to its
/// return), the time it waited between turns not counted.
pub(crate) async fn timed<T>(work: impl Future<Output = T>) -> (T, Duration) {
    let mut work = pin!(work);
    let mut spent = Duration::ZERO;
    let output = std::future::poll_fn(|cx| {
        let started = Instant::now();
        let polled = work.as_mut().poll(cx);
        spent += started.elapsed();
        polled
    })
    .await;
    (output, spent)
}

/// Entries sorted by key, in turns: [`sorted_by_key`]'s result. Dropped, it gives its memory
/// back to the room it was made in.
pub(crate) struct SortedInTurns<'room, V> {
    entries: Vec<(u128, V)>,
    room: &'room SortRoom,
}

impl<V> Drop for SortedInTurns<'_, V> {
    fn drop(&mut self) {
        self.room.give_back(std::mem::take(&mut self.entries));
    }
}

/// Buckets of one pass of the sort's split: a range of keys is split by the 8 bits below the
/// highest bit in which its keys differ. The split moves each entry to one of its buckets'
/// ends: 256 ends stay within the caches and the TLB where thousands would miss on most
/// moves of a checkpoint's millions of entries, at the price of a second split, which runs
/// within one bucket's few hundred KiB.
const SPLIT_BITS: u32 = 8;
const BUCKETS: usize = 1 << SPLIT_BITS;

/// `entries` (about `expected` of them: the buffer is made that large at once, in `room`'s
/// memory when it holds them) sorted by key, in place and in turns, with a turn given back every few thousand items. Equal keys keep no
/// particular order.
///
/// A most-significant-digit radix sort (in-place, American flag): a range longer than a
/// turn's items is split into [`BUCKETS`] by the bits that tell its keys apart, each bucket
/// moved into place by swaps, and each bucket split again or, once short, sorted by
/// comparison. Keys that are hashes split evenly, so one split leaves buckets a fraction of a
/// turn long; keys that share their high bits (a user's in the users' lists) take a split
/// more. Sorted in one buffer, the entries are read in order without a merge, and the sort
/// takes no second buffer (a checkpoint may hold millions of entries, each a fresh page's
/// worth of zeroing).
pub(crate) async fn sorted_by_key<V>(
    entries: impl Iterator<Item = (u128, V)>,
    expected: usize,
    room: &SortRoom,
) -> SortedInTurns<'_, V> {
    let mut entries = entries.peekable();
    let mut sorted = room.take(expected);
    while entries.peek().is_some() {
        sorted.extend(entries.by_ref().take(ITEMS_PER_TURN));
        take_turn().await;
    }
    let mut ranges = Vec::new();
    ranges.push(0..sorted.len());
    let mut since_turn = 0;
    while let Some(range) = ranges.pop() {
        let slice = &mut sorted[range.clone()];
        if slice.len() <= ITEMS_PER_TURN {
            slice.sort_unstable_by_key(|(key, _)| *key);
            since_turn += slice.len();
            if since_turn >= ITEMS_PER_TURN {
                take_turn().await;
                since_turn = 0;
            }
            continue;
        }
        let Some(bounds) = split(slice).await else { continue };
        ranges
            .extend(bounds.windows(2).map(|pair| range.start + pair[0]..range.start + pair[1]).filter(|r| r.len() > 1));
        since_turn = 0;
    }
    SortedInTurns { entries: sorted, room }
}

/// Moves `slice`'s entries into [`BUCKETS`] by their keys' bits below the highest in which
/// they differ, returning the buckets' bounds (`BUCKETS + 1` of them), at least two buckets
/// holding entries; `None` when every key is equal (sorted already). Takes turns as it goes.
async fn split<V>(slice: &mut [(u128, V)]) -> Option<Vec<usize>> {
    let (mut least, mut most) = (u128::MAX, 0);
    for piece in slice.chunks(ITEMS_PER_TURN * 4) {
        for (key, _) in piece {
            least = least.min(*key);
            most = most.max(*key);
        }
        take_turn().await;
    }
    if least == most {
        return None;
    }
    let spread = 128 - (most - least).leading_zeros();
    let shift = spread.saturating_sub(SPLIT_BITS);
    let bucket = |key: u128| ((key - least) >> shift) as usize;
    let mut bounds = vec![0usize; BUCKETS + 1];
    for piece in slice.chunks(ITEMS_PER_TURN * 4) {
        for (key, _) in piece {
            bounds[bucket(*key) + 1] += 1;
        }
        take_turn().await;
    }
    for b in 0..BUCKETS {
        bounds[b + 1] += bounds[b];
    }
    // Each bucket's next slot not yet holding one of its own entries. Every bucket before
    // `b` is whole when `b` is filled, so a misplaced entry goes to a bucket after it.
    let mut next: Vec<usize> = bounds[..BUCKETS].to_vec();
    let mut moves = 0;
    for b in 0..BUCKETS {
        while next[b] < bounds[b + 1] {
            let home = bucket(slice[next[b]].0);
            if home == b {
                next[b] += 1;
            } else {
                slice.swap(next[b], next[home]);
                next[home] += 1;
            }
            moves += 1;
            if moves % ITEMS_PER_TURN == 0 {
                take_turn().await;
            }
        }
    }
    Some(bounds)
}

impl<V> SortedInTurns<'_, V> {
    pub(crate) fn len(&self) -> usize {
        self.entries.len()
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Every entry in key order.
    #[cfg(test)]
    pub(crate) fn iter(&self) -> impl Iterator<Item = &(u128, V)> + '_ {
        self.entries.iter()
    }

    /// Every entry in key order, `far` called on the entry `2 × AHEAD` places after each one
    /// and `near` on the one [`AHEAD`] places after it as that one is yielded: where values
    /// point into memory in another order, `far` prefetches what a later entry points to and
    /// `near` what that points to in turn (by then in the cache), so that their misses overlap
    /// the work between.
    pub(crate) fn iter_ahead<'a>(
        &'a self,
        far: impl Fn(&V) + 'a,
        near: impl Fn(&V) + 'a,
    ) -> impl Iterator<Item = &'a (u128, V)> + 'a {
        self.entries.iter().enumerate().map(move |(at, entry)| {
            if let Some((_, later)) = self.entries.get(at + 2 * AHEAD) {
                far(later);
            }
            if let Some((_, later)) = self.entries.get(at + AHEAD) {
                near(later);
            }
            entry
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
            keys in proptest::collection::vec(prop_oneof![
                any::<u128>(),
                0u128..64,
                // Keys sharing their high bits, as a few users' lists do.
                (0u128..4, any::<u16>()).prop_map(|(user, id)| user << 64 | u128::from(id)),
            ], 0..20_000),
            expected in 0usize..30_000,
            room_left in 0usize..20_000,
        ) {
            let entries = keys.iter().enumerate().map(|(n, key)| (*key, n));
            let room = SortRoom::default();
            // The room holds memory another entry type left, as a checkpoint's stores leave it.
            room.give_back(Vec::<(u128, [u8; 56])>::with_capacity(room_left));
            let sorted = glommio::LocalExecutorBuilder::default()
                .make()
                .unwrap()
                .run(async { sorted_by_key(entries, expected, &room).await.iter().cloned().collect::<Vec<_>>() });
            prop_assert_eq!(sorted.len(), keys.len());
            let sorted: Vec<&(u128, usize)> = sorted.iter().collect();
            prop_assert!(room.bytes() >= keys.len() * 32, "the sort's memory went back to the room");
            prop_assert!(sorted.windows(2).all(|pair| pair[0].0 <= pair[1].0));
            let mut seen: Vec<usize> = sorted.iter().map(|(key, n)| { assert_eq!(keys[*n], *key); *n }).collect();
            seen.sort_unstable();
            prop_assert_eq!(seen, (0..keys.len()).collect::<Vec<_>>());
        }
    }

    #[test]
    fn iter_ahead_yields_in_order_and_touches_the_entries_ahead_of_each() {
        for count in [0, 1, AHEAD, AHEAD + 1, 2 * AHEAD, 3 * AHEAD + 5] {
            let entries = (0..count as u128).rev().map(|key| (key, key as usize));
            let room = SortRoom::default();
            let sorted =
                glommio::LocalExecutorBuilder::default().make().unwrap().run(sorted_by_key(entries, count, &room));
            let touched = std::cell::RefCell::new(Vec::new());
            let yielded: Vec<(usize, Vec<(&str, usize)>)> = sorted
                .iter_ahead(
                    |value| touched.borrow_mut().push(("far", *value)),
                    |value| touched.borrow_mut().push(("near", *value)),
                )
                .map(|(_, value)| (*value, std::mem::take(&mut *touched.borrow_mut())))
                .collect();
            // Entry n is yielded after entry n + 2 AHEAD was touched far and n + AHEAD near.
            let expected: Vec<(usize, Vec<(&str, usize)>)> = (0..count)
                .map(|n| {
                    let far = (n + 2 * AHEAD < count).then_some(("far", n + 2 * AHEAD));
                    let near = (n + AHEAD < count).then_some(("near", n + AHEAD));
                    (n, far.into_iter().chain(near).collect())
                })
                .collect();
            assert_eq!(yielded, expected, "{count} entries");
        }
    }

    #[test]
    fn ranges_of_equal_keys_longer_than_a_turn_end_the_split() {
        let run = |keys: Vec<u128>| {
            let entries = keys.into_iter().map(|key| (key, ()));
            let room = SortRoom::default();
            let sorted = glommio::LocalExecutorBuilder::default().make().unwrap().run(sorted_by_key(entries, 0, &room));
            sorted.iter().map(|(key, ())| *key).collect::<Vec<_>>()
        };
        assert_eq!(run(vec![7; 3 * ITEMS_PER_TURN]), vec![7; 3 * ITEMS_PER_TURN]);
        // Two values far apart, each repeated past a turn's items.
        let two: Vec<u128> = (0..4 * ITEMS_PER_TURN).map(|n| if n % 2 == 0 { u128::MAX } else { 1 }).collect();
        let sorted = run(two);
        assert!(sorted[..2 * ITEMS_PER_TURN].iter().all(|&k| k == 1));
        assert!(sorted[2 * ITEMS_PER_TURN..].iter().all(|&k| k == u128::MAX));
    }
}
