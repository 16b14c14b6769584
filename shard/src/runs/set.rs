//! The runs of one store, oldest first, when to merge them, and which are past the key window.
//!
//! A key's value is the newest run's that holds it, so a lookup asks the runs newest first and
//! stops at the first that has the key; only runs whose Bloom filter may hold it are read.
//!
//! With a key window (`ShardConfig::key_window`), a run whose keys were all added longer ago
//! than the window, and whose records no kept checkpoint's replay can reach (they lie below the
//! fallback checkpoint's position), is past the window ([`RunSet::expire`]): it lets its Bloom
//! filter go, checks of new keys ([`RunSet::may_hold`], [`RunSet::get`]) no longer ask it, and
//! only lookups that must find old keys ([`RunSet::get_any`]) read it, one block each. So the
//! memory of a store's filters is set by the keys of one window, not by history; and since no
//! replay reads both a key's first use and a use accepted after it left the window, a replay
//! never finds such a key twice. Ages grow from oldest run to newest, so the runs past the
//! window are the oldest ones.
//!
//! The merge policy is a base-`MERGE_FANOUT` counter: new runs come at level 0, and whenever
//! the newest `MERGE_FANOUT` runs share a level they are merged into one run of the next level.
//! Merging only the newest runs keeps levels from increasing from oldest to newest, so no
//! level holds more than `MERGE_FANOUT - 1` runs once the merges are done, and each entry is
//! rewritten once per level. Merging adjacent runs keeps the newest value of every key
//! whatever the levels are. Runs past the window are never merged with runs within it (a
//! merge's keys are as new as its newest input's); once there are `2 × MERGE_FANOUT` of them,
//! the `MERGE_FANOUT` adjacent ones with the fewest entries are merged, with no filter, so
//! that their count stays bounded as they grow.

use std::future::Future;
use std::ops::Range;
use std::rc::Rc;

use tradeshard_wal::disk::Disk;

use super::{BlockCache, Run, Value, MERGE_FANOUT};
use crate::error::TradeError;

/// The runs of one store, oldest first. A clone shares the runs.
#[derive(Clone)]
pub(crate) struct RunSet<D: Disk> {
    runs: Vec<Rc<Run<D>>>,
}

impl<D: Disk> Default for RunSet<D> {
    fn default() -> Self {
        RunSet { runs: Vec::new() }
    }
}

impl<D: Disk> RunSet<D> {
    /// A set of `runs`, oldest first.
    #[cfg(test)]
    pub(crate) fn from_runs(runs: Vec<Rc<Run<D>>>) -> RunSet<D> {
        RunSet { runs }
    }

    /// The runs, oldest first.
    pub(crate) fn runs(&self) -> &[Rc<Run<D>>] {
        &self.runs
    }

    /// Adds a run newer than every run of the set.
    pub(crate) fn push(&mut self, run: Rc<Run<D>>) {
        self.runs.push(run);
    }

    /// Whether any run within the key window may hold the key (false: none holds it, nothing
    /// to read for a check of a new key). The lookups ask it through
    /// [`may_hold_hashed`](Self::may_hold_hashed), over several sets at once (`key_runs.rs`).
    #[cfg(test)]
    pub(crate) fn may_hold(&self, key: u128) -> bool {
        let h = super::key_hash(key);
        self.prefetch_filter_lines(h);
        self.may_hold_hashed(h)
    }

    /// Asks for the line of the key whose hash is `h` (`runs::key_hash`) in every run's filter
    /// within the key window, without waiting: a new key is asked of every run, so its misses
    /// come together instead of one after another.
    pub(crate) fn prefetch_filter_lines(&self, h: u64) {
        self.runs.iter().for_each(|run| run.prefetch_filter_line(h));
    }

    /// [`may_hold`](Self::may_hold) of the key whose hash is `h`.
    pub(crate) fn may_hold_hashed(&self, h: u64) -> bool {
        self.runs.iter().any(|run| run.may_hold_hashed_within_window(h))
    }

    /// Whether any run, past the key window or not, may hold the key.
    pub(crate) fn may_hold_any(&self, key: u128) -> bool {
        self.runs.iter().any(|run| run.may_hold(key))
    }

    /// The newest value of the key in the runs within the key window. The runs to ask are
    /// chosen now (newest first, those whose Bloom filter may hold it), so the future borrows
    /// nothing of the set: a caller can hold the set in a `RefCell` and release it before
    /// awaiting.
    #[cfg(test)]
    pub(crate) fn get(&self, key: u128) -> impl Future<Output = Result<Option<Value>, TradeError>> + 'static {
        self.get_reaching(key, false, &Rc::new(BlockCache::new(0)))
    }

    /// [`get`](Self::get), or with `past_window` the newest value of the key in any run, past
    /// the key window or not (a run past it is read, having no filter to ask).
    pub(crate) fn get_reaching(
        &self,
        key: u128,
        past_window: bool,
        blocks: &Rc<BlockCache>,
    ) -> impl Future<Output = Result<Option<Value>, TradeError>> + 'static {
        let blocks = blocks.clone();
        let candidates: Vec<Rc<Run<D>>> = self
            .runs
            .iter()
            .rev()
            .filter(|run| if past_window { run.may_hold(key) } else { run.may_hold_within_window(key) })
            .cloned()
            .collect();
        async move {
            for run in candidates {
                // `get` asks the filter again: a hash and a line the filter just loaded.
                if let Some(value) = run.get(key, &blocks).await? {
                    return Ok(Some(value));
                }
            }
            Ok(None)
        }
    }

    /// The keys in `low..=high`, at most `limit`: each run's greatest first, the newest run's
    /// first. For keys that grow with time (a user's trades), that is greatest first overall:
    /// a newer run holds only keys added after an older one's. Borrows nothing of the set.
    pub(crate) fn keys_down(
        &self,
        low: u128,
        high: u128,
        limit: usize,
        blocks: &Rc<BlockCache>,
    ) -> impl Future<Output = Result<Vec<u128>, TradeError>> + 'static {
        let runs: Vec<Rc<Run<D>>> = self.runs.iter().rev().cloned().collect();
        let blocks = blocks.clone();
        async move {
            // One run after another, newest first, so that a page found in the newest runs
            // reads no older one: reading every run at once waited less per listing but read
            // more, and the reads slowed the log's writes on the same device.
            let (mut keys, mut high) = (Vec::new(), high);
            for run in runs {
                if keys.len() == limit {
                    break;
                }
                keys.extend(run.keys_down(low, high, limit - keys.len(), &blocks).await?);
                // An older run holds only smaller keys; one that holds a key again (written
                // twice by checkpoints that did not complete) does not list it twice.
                match keys.last() {
                    Some(0) => break,
                    Some(last) => high = high.min(last - 1),
                    None => {}
                }
            }
            Ok(keys)
        }
    }

    /// Lets the runs now past the key window `window_ms` go past it (module text): those whose
    /// keys were all added at or before `now_ms - window_ms` and applied below `fallback`, the
    /// position of the oldest checkpoint an open may fall back to. Returns how many went.
    pub(crate) fn expire(&self, now_ms: u64, window_ms: u64, fallback: u64) -> usize {
        let mut went = 0;
        for run in self.runs.iter().filter(|run| !run.past_window()) {
            let age = run.age();
            if age.newest_ms.saturating_add(window_ms) <= now_ms && age.through <= fallback {
                run.forget_filter();
                went += 1;
            }
        }
        went
    }

    /// Runs past the key window.
    /// Leaves on disk the fence keys of the runs whose keys are as old as
    /// [`expire`](Self::expire) asks, keeping their filters: for a store only listed (users'
    /// lists), which has no filter per key to let go but whose fences would grow with its
    /// history. Returns how many runs paged them out now.
    pub(crate) fn page_old_fences(&self, now_ms: u64, window_ms: u64, fallback: u64) -> usize {
        let old = |run: &&Rc<Run<D>>| {
            let age = run.age();
            age.newest_ms.saturating_add(window_ms) <= now_ms && age.through <= fallback
        };
        self.runs.iter().filter(old).filter(|run| run.page_fences()).count()
    }

    pub(crate) fn past_window(&self) -> usize {
        self.runs.iter().filter(|run| run.past_window()).count()
    }

    /// The runs to merge now, if any, the level of the run they become and whether they are
    /// past the key window (the merge then needs no filter): the newest `MERGE_FANOUT` runs
    /// when they all have the same level and are within the window; else, once
    /// `2 × MERGE_FANOUT` runs are past the window, the `MERGE_FANOUT` adjacent ones of them
    /// with the fewest entries.
    pub(crate) fn merge_plan(&self) -> Option<(Range<usize>, u32, bool)> {
        if let Some(start) = self.runs.len().checked_sub(MERGE_FANOUT) {
            let level = self.runs[start].level();
            let newest = &self.runs[start..];
            if newest.iter().all(|run| run.level() == level && !run.past_window()) {
                return Some((start..self.runs.len(), level.saturating_add(1), false));
            }
        }
        let past: Vec<usize> = (0..self.runs.len()).filter(|&at| self.runs[at].past_window()).collect();
        if past.len() < 2 * MERGE_FANOUT {
            return None;
        }
        let start = past
            .windows(MERGE_FANOUT)
            .filter(|window| window[MERGE_FANOUT - 1] - window[0] == MERGE_FANOUT - 1)
            .min_by_key(|window| window.iter().map(|&at| self.runs[at].entries()).sum::<u64>())?[0];
        let range = start..start + MERGE_FANOUT;
        let level = self.runs[range.clone()].iter().map(|run| run.level()).max().unwrap_or(0);
        Some((range, level.saturating_add(1), true))
    }

    /// Replaces the runs in `range` by `merged`, the run they were merged into.
    #[cfg(test)]
    pub(crate) fn replace(&mut self, range: Range<usize>, merged: Rc<Run<D>>) {
        self.runs.splice(range, std::iter::once(merged));
    }

    /// Replaces `inputs`, runs of the set one after another (newer runs may have been added
    /// after them), by `merged`, the run they were merged into. When every input is past the
    /// key window, so is the merge: a merge planned within the window whose inputs all went
    /// past it while it was written would otherwise bring their keys back into the window
    /// until the next expiry.
    pub(crate) fn replace_runs(&mut self, inputs: &[Rc<Run<D>>], merged: Rc<Run<D>>) -> Result<(), TradeError> {
        if !inputs.is_empty() && inputs.iter().all(|run| run.past_window()) {
            merged.forget_filter();
        }
        let start = inputs.first().and_then(|first| self.runs.iter().position(|run| Rc::ptr_eq(run, first)));
        let end = start.map(|start| start + inputs.len()).filter(|end| *end <= self.runs.len());
        match (start, end) {
            (Some(start), Some(end)) if self.runs[start..end].iter().zip(inputs).all(|(a, b)| Rc::ptr_eq(a, b)) => {
                self.runs.splice(start..end, std::iter::once(merged));
                Ok(())
            }
            _ => Err(merged.corrupt(0, "a merge of runs no longer in force one after another")),
        }
    }

    /// Entries of every run (a key in several runs counts in each).
    pub(crate) fn entries(&self) -> u64 {
        self.runs.iter().map(|run| run.entries()).sum()
    }

    /// Bytes the runs hold in memory (Bloom filters and fence keys).
    pub(crate) fn memory_bytes(&self) -> usize {
        self.runs.iter().map(|run| run.memory_bytes()).sum()
    }

    /// Bytes of the runs' files.
    pub(crate) fn file_bytes(&self) -> u64 {
        self.runs.iter().map(|run| run.file_bytes()).sum()
    }
}

#[cfg(test)]
mod tests {
    use tradeshard_wal::disk::SimDisk;

    use super::*;
    use crate::runs::{merge, Filter, KeysAge, Shape, VALUE_BYTES_MAX};

    const SHAPE: Shape = Shape { filter: Filter::PerKey, value_bytes: 24 };

    fn value(key: u128) -> Value {
        let mut value = [0u8; VALUE_BYTES_MAX];
        value[..8].copy_from_slice(&(key as u64).to_le_bytes());
        value
    }

    /// Run `k` of ten: keys `1000k..1000k + 100`, added by `1000k` ms, applied below `10k`.
    async fn ten_runs(disk: &SimDisk) -> RunSet<SimDisk> {
        let mut set = RunSet::default();
        for k in 0..10u64 {
            let keys = (0..100u128).map(|i| u128::from(1000 * k) + i);
            let age = KeysAge { newest_ms: 1000 * k, through: 10 * k };
            let run = Run::write(disk, "w", k + 1, 0, age, SHAPE, 100, keys.map(|key| (key, value(key)))).await;
            set.push(Rc::new(run.unwrap()));
        }
        set
    }

    /// A store only listed leaves the fence keys of its old runs on disk and keeps their
    /// filters: its runs answer as before, none goes past the window, and the merge plan
    /// stays.
    #[test]
    fn old_runs_of_a_listed_store_leave_their_fences_on_disk_and_answer_as_before() {
        glommio::LocalExecutorBuilder::default().make().unwrap().run(async {
            let disk = SimDisk::new();
            let set = ten_runs(&disk).await;
            let memory = set.memory_bytes();
            let blocks = Rc::new(BlockCache::new(0));
            let listing = set.keys_down(0, u128::MAX, 2_000, &blocks).await.unwrap();
            assert_eq!(listing.len(), 1_000);
            // As `expire` asks: old enough at 60,000 ms, and below the fallback at 50.
            assert_eq!(set.page_old_fences(60_000, 2_000, 50), 6);
            assert_eq!(set.page_old_fences(60_000, 2_000, 50), 0, "paged once");
            let paged: Vec<bool> = set.runs().iter().map(|run| run.fences_paged()).collect();
            assert_eq!(paged, [true, true, true, true, true, true, false, false, false, false]);
            assert_eq!((set.past_window(), set.merge_plan()), (0, Some((6..10, 1, false))));
            assert_eq!(set.memory_bytes(), memory + 6 * (24 - 16), "a page for a block: 24 bytes, not 16");
            assert_eq!(set.keys_down(0, u128::MAX, 2_000, &blocks).await.unwrap(), listing);
            for key in [5u128, 5_005, 6_005, 9_099] {
                assert!(set.may_hold(key), "the filter of key {key} stays");
                assert_eq!(set.get(key).await.unwrap(), Some(value(key)), "key {key}");
            }
        });
    }

    #[test]
    fn runs_past_the_key_window_drop_their_filters_answer_only_finds_and_merge_apart() {
        glommio::LocalExecutorBuilder::default().make().unwrap().run(async {
            let disk = SimDisk::new();
            let mut set = ten_runs(&disk).await;
            let memory = set.memory_bytes();
            assert!(set.may_hold(5));
            assert_eq!(set.merge_plan(), Some((6..10, 1, false)));

            // At 5,500 ms with a 2,000 ms window, runs 0..=3 are old enough; a fallback at 100
            // lets all of them go.
            assert_eq!(set.expire(5_500, 2_000, 100), 4);
            // Old enough, but the fallback checkpoint at 50 can still replay runs 6 and on.
            assert_eq!(set.expire(60_000, 2_000, 50), 2);
            assert_eq!(set.past_window(), 6);
            assert!(set.memory_bytes() < memory, "the filters of six runs left memory");
            for (key, past) in [(5u128, true), (5_005, true), (6_005, false), (9_099, false)] {
                assert_eq!(set.may_hold(key), !past, "key {key}");
                let checked = set.get(key).await.unwrap();
                assert_eq!(checked, (!past).then(|| value(key)), "a check of key {key}");
                assert_eq!(
                    set.get_reaching(key, true, &Rc::new(BlockCache::new(0))).await.unwrap(),
                    Some(value(key)),
                    "a find of key {key}"
                );
            }
            assert_eq!(set.get_reaching(123_456, true, &Rc::new(BlockCache::new(0))).await.unwrap(), None);

            // The four newest (6..=9) still merge as ever, within the window.
            let (range, level, past) = set.merge_plan().unwrap();
            assert_eq!((range.clone(), level, past), (6..10, 1, false));
            let merged = merge(&disk, "w", 20, level, SHAPE, &set.runs()[range.clone()]).await.unwrap();
            assert_eq!(merged.age(), KeysAge { newest_ms: 9_000, through: 90 });
            set.replace(range, Rc::new(merged));
            assert_eq!(set.past_window(), 6, "a merge within the window keeps its filter");

            // All past the window: eight or more of them merge four at a time, with no filter.
            assert_eq!(set.expire(60_000, 2_000, 1_000), 1);
            assert_eq!(set.past_window(), 7);
            assert!(set.merge_plan().is_none(), "seven runs past the window are not yet too many");
            set.push(Rc::new({
                let keys = (0..100u128).map(|i| 90_000 + i);
                let age = KeysAge { newest_ms: 10_000, through: 100 };
                Run::write(&disk, "w", 21, 0, age, SHAPE, 100, keys.map(|key| (key, value(key)))).await.unwrap()
            }));
            assert_eq!(set.expire(60_000, 2_000, 1_000), 1);
            let (range, level, past) = set.merge_plan().unwrap();
            assert!(past && range.len() == MERGE_FANOUT && level == 1, "{range:?} {level}");
            assert!(!range.contains(&6), "the merged run of 400 entries is the largest: {range:?}");
            let shape = Shape { filter: Filter::RangesOnly, ..SHAPE };
            let merged = merge(&disk, "w", 22, level, shape, &set.runs()[range.clone()]).await.unwrap();
            merged.forget_filter();
            set.replace(range, Rc::new(merged));
            assert_eq!(set.past_window(), 5);
            for key in [5u128, 3_099, 9_000, 90_050] {
                assert_eq!(
                    set.get_reaching(key, true, &Rc::new(BlockCache::new(0))).await.unwrap(),
                    Some(value(key)),
                    "key {key}"
                );
                assert!(!set.may_hold(key));
            }
        });
    }

    #[test]
    fn a_merge_whose_inputs_went_past_the_window_while_it_was_written_is_past_it_too() {
        glommio::LocalExecutorBuilder::default().make().unwrap().run(async {
            let disk = SimDisk::new();
            let mut set = ten_runs(&disk).await;
            let (range, level, past) = set.merge_plan().unwrap();
            assert_eq!((range.clone(), past), (6..10, false), "planned within the window");
            let inputs = set.runs()[range.clone()].to_vec();
            let merged = merge(&disk, "w", 20, level, SHAPE, &inputs).await.unwrap();
            // A checkpoint's expiry while the merge was written: every input goes past.
            assert_eq!(set.expire(60_000, 2_000, 1_000), 10);
            set.replace_runs(&inputs, Rc::new(merged)).unwrap();
            assert_eq!(set.past_window(), 7, "the merge of four runs past the window is past it");
            assert!(!set.may_hold(6_005), "a check of a new key skips it");
            assert_eq!(
                set.get_reaching(6_005, true, &Rc::new(BlockCache::new(0))).await.unwrap(),
                Some(value(6_005)),
                "a find reads it"
            );
        });
    }
}
