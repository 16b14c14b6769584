//! Maps of what the writes in flight leave (a balance, a request number, a step's key), whose
//! entries count until the committer applies the record that wrote them.
//!
//! Each entry carries the seq of that record. The committer notes every record it applies
//! (`Accepted::note_applied`, an [`Applied`] in each owner of such maps), and an entry whose
//! record is applied reads as absent: the durable books hold what it held. Entries are not
//! removed one by one as their records become durable: each removal probed a map whose lines
//! the rest of the group commit's work had evicted by then. They go in sweeps, once a map
//! holds twice what was live at its last sweep (at least [`SWEEP_MIN`]), so a map stays
//! bounded by the writes in flight.

use std::hash::Hash;

use crate::id_hash::IdMap;

/// Entries a map holds before its first sweep.
pub(crate) const SWEEP_MIN: usize = 16_384;

/// Where the committer stands: which records are applied to the books.
#[derive(Default, Clone, Copy, Debug)]
pub(crate) struct Applied {
    /// One past the seq of the last record applied (a log's first record is seq 0).
    below: u64,
}

impl Applied {
    /// Notes that the record at `seq`, and every one before it, is applied.
    pub(crate) fn note(&mut self, seq: u64) {
        self.below = seq + 1;
    }

    /// True when the record at `seq` is applied.
    fn holds(self, seq: u64) -> bool {
        seq < self.below
    }
}

/// Key → value and the seq of the record in flight that wrote it (see the module's text).
pub(crate) struct InFlightMap<K, V> {
    entries: IdMap<K, (V, u64)>,
    /// Entries held at which the next sweep runs.
    sweep_at: usize,
}

impl<K, V> Default for InFlightMap<K, V> {
    fn default() -> Self {
        InFlightMap { entries: IdMap::default(), sweep_at: SWEEP_MIN }
    }
}

impl<K: Hash + Eq, V> InFlightMap<K, V> {
    /// The value under `key` and its seq, if its record is not applied yet.
    pub(crate) fn get(&self, key: &K, applied: Applied) -> Option<(&V, u64)> {
        self.entries.get(key).filter(|(_, seq)| !applied.holds(*seq)).map(|(value, seq)| (value, *seq))
    }

    /// Notes the value the record at `seq` leaves under `key`.
    pub(crate) fn insert(&mut self, key: K, value: V, seq: u64) {
        self.entries.insert(key, (value, seq));
    }

    /// Removes the entries of applied records, if the map holds enough of them: a pass over
    /// the map every so many writes, not a probe per write.
    pub(crate) fn sweep(&mut self, applied: Applied) {
        if self.entries.len() < self.sweep_at {
            return;
        }
        self.entries.retain(|_, (_, seq)| !applied.holds(*seq));
        self.sweep_at = (2 * self.entries.len()).max(SWEEP_MIN);
    }

    /// Entries held, live or waiting for a sweep.
    #[cfg(test)]
    pub(crate) fn held(&self) -> usize {
        self.entries.len()
    }

    /// Forgets every entry (the log failed).
    pub(crate) fn clear(&mut self) {
        self.entries.clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every record up to `seq` applied.
    fn through(seq: u64) -> Applied {
        let mut applied = Applied::default();
        applied.note(seq);
        applied
    }

    #[test]
    fn an_entry_counts_until_the_record_that_wrote_it_is_applied() {
        let mut map = InFlightMap::default();
        map.insert(0u64, "first of the log", 0);
        map.insert(1u64, "first", 10);
        map.insert(2u64, "second", 11);
        let nothing = Applied::default();
        assert_eq!(map.get(&0, nothing), Some((&"first of the log", 0)), "seq 0 counts until applied");
        assert_eq!(map.get(&0, through(0)), None);
        assert_eq!(map.get(&1, through(9)), Some((&"first", 10)));
        assert_eq!(map.get(&1, through(10)), None, "applied: the books hold it now");
        assert_eq!(map.get(&2, through(10)), Some((&"second", 11)), "its record is not applied yet");
        map.insert(1, "again", 12);
        assert_eq!(map.get(&1, through(11)), Some((&"again", 12)), "a later write counts again");
    }

    #[test]
    fn sweeps_bound_a_map_by_the_entries_live_and_keep_those() {
        let mut map = InFlightMap::default();
        let live = 1_000u64;
        for seq in 0..100_000u64 {
            map.insert(seq, seq, seq);
            if seq >= live {
                map.sweep(through(seq - live));
            }
            assert!(map.held() <= SWEEP_MIN, "{} held at seq {seq}", map.held());
        }
        let applied = through(100_000 - live - 1);
        for seq in 100_000 - live..100_000 {
            assert_eq!(map.get(&seq, applied), Some((&seq, seq)), "live at {seq}");
        }
        for seq in 100_000..100_000 + SWEEP_MIN as u64 {
            map.insert(seq, seq, seq);
        }
        map.sweep(through(100_000 + SWEEP_MIN as u64));
        assert_eq!(map.held(), 0, "nothing live: a sweep leaves nothing");
    }

    #[test]
    fn a_sweep_waits_for_twice_what_was_live() {
        let min = SWEEP_MIN as u64;
        let mut map = InFlightMap::default();
        for seq in 1..=3 * min {
            map.insert(seq, (), seq);
        }
        map.sweep(through(min));
        assert_eq!(map.held(), 2 * SWEEP_MIN, "the entries of records not applied stay");
        for seq in 3 * min + 1..5 * min {
            map.insert(seq, (), seq);
        }
        map.sweep(through(5 * min));
        assert_eq!(map.held(), 4 * SWEEP_MIN - 1, "below twice the live of the last sweep: no pass");
        map.insert(5 * min, (), 5 * min);
        map.sweep(through(5 * min));
        assert_eq!(map.held(), 0);
    }
}
