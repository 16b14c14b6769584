//! Long work on a shard's executor (a checkpoint's collecting, sorting and encoding, the
//! writes of runs and tables, merges) gives the executor back to the shard's requests every
//! few thousand items. glommio's `yield_if_needed` yields only once the executor's preemption
//! timer has fired (100 ms by default), which let one checkpoint's sort hold every request
//! of its shard for a fifth of a second.

use std::cmp::Reverse;
use std::collections::BinaryHeap;

/// Items handled between two turns given back.
pub(crate) const ITEMS_PER_TURN: usize = 4096;

/// Lets every other ready task of the executor run before this one goes on.
pub(crate) async fn take_turn() {
    futures_lite::future::yield_now().await
}

/// Everything `items` yields, taken a turn's worth at a time.
pub(crate) async fn collect_in_turns<T>(items: impl Iterator<Item = T>) -> Vec<T> {
    let mut items = items.peekable();
    let mut out = Vec::new();
    while items.peek().is_some() {
        out.extend(items.by_ref().take(ITEMS_PER_TURN));
        take_turn().await;
    }
    out
}

/// `entries` sorted by key: taken and sorted a turn's worth at a time, then merged, with a
/// turn given back between each step. Equal keys keep no particular order.
pub(crate) async fn sorted_by_key<V>(entries: impl Iterator<Item = (u128, V)>) -> Vec<(u128, V)> {
    let mut entries = entries.peekable();
    let mut chunks = Vec::new();
    while entries.peek().is_some() {
        let mut chunk: Vec<(u128, V)> = entries.by_ref().take(ITEMS_PER_TURN).collect();
        chunk.sort_unstable_by_key(|(key, _)| *key);
        chunks.push(chunk.into_iter());
        take_turn().await;
    }
    if chunks.len() <= 1 {
        return chunks.pop().map(Vec::from_iter).unwrap_or_default();
    }
    let total = chunks.iter().map(|chunk| chunk.len()).sum();
    let mut heads: BinaryHeap<Reverse<(u128, usize)>> = chunks
        .iter()
        .enumerate()
        .filter_map(|(n, chunk)| chunk.as_slice().first().map(|(key, _)| Reverse((*key, n))))
        .collect();
    let mut out = Vec::with_capacity(total);
    while let Some(Reverse((_, n))) = heads.pop() {
        out.push(chunks[n].next().expect("a chunk in the heap has a head"));
        if let Some((key, _)) = chunks[n].as_slice().first() {
            heads.push(Reverse((*key, n)));
        }
        if out.len().is_multiple_of(ITEMS_PER_TURN) {
            take_turn().await;
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(32))]
        #[test]
        fn sorting_in_turns_sorts_and_keeps_every_entry(keys in proptest::collection::vec(any::<u128>(), 0..20_000)) {
            let entries = keys.iter().enumerate().map(|(n, key)| (*key, n));
            let sorted = glommio::LocalExecutorBuilder::default()
                .make()
                .unwrap()
                .run(sorted_by_key(entries));
            prop_assert!(sorted.windows(2).all(|pair| pair[0].0 <= pair[1].0));
            let mut seen: Vec<usize> = sorted.iter().map(|(key, n)| { assert_eq!(keys[*n], *key); *n }).collect();
            seen.sort_unstable();
            prop_assert_eq!(seen, (0..keys.len()).collect::<Vec<_>>());
        }
    }
}
