//! The runs of one store, oldest first, and when to merge them.
//!
//! A key's value is the newest run's that holds it, so a lookup asks the runs newest first and
//! stops at the first that has the key; only runs whose Bloom filter may hold it are read.
//!
//! The merge policy is a base-`MERGE_FANOUT` counter: new runs come at level 0, and whenever
//! the newest `MERGE_FANOUT` runs share a level they are merged into one run of the next level.
//! Merging only the newest runs keeps levels from increasing from oldest to newest, so no
//! level holds more than `MERGE_FANOUT - 1` runs once the merges are done, and each entry is
//! rewritten once per level. Merging adjacent runs keeps the newest value of every key
//! whatever the levels are.

use std::future::Future;
use std::ops::Range;
use std::rc::Rc;

use tradeshard_wal::disk::Disk;

use super::{Run, Value, MERGE_FANOUT};
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

    /// Whether any run may hold the key (false: no run holds it, nothing to read).
    pub(crate) fn may_hold(&self, key: u128) -> bool {
        self.runs.iter().any(|run| run.may_hold(key))
    }

    /// The newest value of the key. The runs to ask are chosen now (newest first, those whose
    /// Bloom filter may hold it), so the future borrows nothing of the set: a caller can hold
    /// the set in a `RefCell` and release it before awaiting.
    pub(crate) fn get(&self, key: u128) -> impl Future<Output = Result<Option<Value>, TradeError>> + 'static {
        let candidates: Vec<Rc<Run<D>>> = self.runs.iter().rev().filter(|run| run.may_hold(key)).cloned().collect();
        async move {
            for run in candidates {
                // `get` asks the filter again: a hash and a line the filter just loaded.
                if let Some(value) = run.get(key).await? {
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
    ) -> impl Future<Output = Result<Vec<u128>, TradeError>> + 'static {
        let runs: Vec<Rc<Run<D>>> = self.runs.iter().rev().cloned().collect();
        async move {
            // One run after another, newest first, so that a page found in the newest runs
            // reads no older one: reading every run at once waited less per listing but read
            // more, and the reads slowed the log's writes on the same device.
            let (mut keys, mut high) = (Vec::new(), high);
            for run in runs {
                if keys.len() == limit {
                    break;
                }
                keys.extend(run.keys_down(low, high, limit - keys.len()).await?);
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

    /// The runs to merge now, if any, and the level of the run they become: the newest
    /// `MERGE_FANOUT` runs when they all have the same level.
    pub(crate) fn merge_plan(&self) -> Option<(Range<usize>, u32)> {
        let start = self.runs.len().checked_sub(MERGE_FANOUT)?;
        let level = self.runs[start].level();
        if self.runs[start..].iter().any(|run| run.level() != level) {
            return None;
        }
        Some((start..self.runs.len(), level.saturating_add(1)))
    }

    /// Replaces the runs in `range` by `merged`, the run they were merged into.
    #[cfg(test)]
    pub(crate) fn replace(&mut self, range: Range<usize>, merged: Rc<Run<D>>) {
        self.runs.splice(range, std::iter::once(merged));
    }

    /// Replaces `inputs`, runs of the set one after another (newer runs may have been added
    /// after them), by `merged`, the run they were merged into.
    pub(crate) fn replace_runs(&mut self, inputs: &[Rc<Run<D>>], merged: Rc<Run<D>>) -> Result<(), TradeError> {
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
