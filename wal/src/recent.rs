//! The log's most recent frames, kept in memory as the records they hold, so that a reader
//! that keeps up with the writer (a consumer tailing the log, a read of a record just written)
//! never reaches the device.
//!
//! The writer adds each frame once it is acknowledged (after the visible end moved past it),
//! so nothing here is ahead of what a reader may see. Frames are kept in log order, without
//! gaps, up to a byte budget (`WalConfig::recent_frames_bytes`); the oldest go first. The
//! bytes are the frame's records as its decoder would return them (each with its length
//! prefix), so a reader takes them where it would take a frame read from disk.

use std::collections::VecDeque;

/// Bytes a kept frame costs beyond its records: its slot in the list and its allocation's
/// header.
const FRAME_OVERHEAD_BYTES: usize = std::mem::size_of::<RecentFrame>() + 16;

/// One frame's records: `first_seq..end_seq`.
struct RecentFrame {
    first_seq: u64,
    end_seq: u64,
    raw: Box<[u8]>,
}

/// Acknowledged frames at the end of the log, oldest first.
pub(crate) struct RecentFrames {
    frames: VecDeque<RecentFrame>,
    /// What the kept frames cost: their records and their overhead.
    bytes: usize,
    budget: usize,
}

impl RecentFrames {
    pub(crate) fn new(budget: usize) -> RecentFrames {
        RecentFrames { frames: VecDeque::new(), bytes: 0, budget }
    }

    /// Keeps the frame of records `first_seq..end_seq` (`raw`: their bytes with prefixes),
    /// dropping the oldest frames past the budget. A frame that does not follow the last one
    /// kept (the log was reopened) starts the list again.
    pub(crate) fn push(&mut self, first_seq: u64, end_seq: u64, raw: &[u8]) {
        let cost = raw.len() + FRAME_OVERHEAD_BYTES;
        if cost > self.budget {
            self.frames.clear();
            self.bytes = 0;
            return;
        }
        if self.frames.back().is_some_and(|last| last.end_seq != first_seq) {
            self.frames.clear();
            self.bytes = 0;
        }
        while self.bytes + cost > self.budget {
            let oldest = self.frames.pop_front().expect("bytes above zero means a frame is kept");
            self.bytes -= oldest.raw.len() + FRAME_OVERHEAD_BYTES;
        }
        self.bytes += cost;
        self.frames.push_back(RecentFrame { first_seq, end_seq, raw: raw.into() });
    }

    /// The frame holding record `seq`: its first and end sequence numbers and its records.
    pub(crate) fn find(&self, seq: u64) -> Option<(u64, u64, &[u8])> {
        let first = self.frames.front()?.first_seq;
        if seq < first || seq >= self.frames.back()?.end_seq {
            return None;
        }
        let at = self.frames.partition_point(|frame| frame.end_seq <= seq);
        let frame = &self.frames[at];
        Some((frame.first_seq, frame.end_seq, &frame.raw))
    }

    /// Bytes held: the records and what keeping each frame costs.
    pub(crate) fn bytes(&self) -> usize {
        self.bytes
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_are_found_by_any_of_their_records_until_the_budget_drops_them() {
        let mut recent = RecentFrames::new(2 * (40 + FRAME_OVERHEAD_BYTES) + 20);
        recent.push(10, 15, &[1; 40]);
        recent.push(15, 16, &[2; 40]);
        assert_eq!(recent.find(12).map(|(f, e, raw)| (f, e, raw[0])), Some((10, 15, 1)));
        assert_eq!(recent.find(15).map(|(f, e, raw)| (f, e, raw[0])), Some((15, 16, 2)));
        assert!(recent.find(9).is_none() && recent.find(16).is_none());
        recent.push(16, 20, &[3; 40]);
        assert!(recent.find(12).is_none(), "the oldest frame left for the budget");
        assert_eq!(recent.bytes(), 2 * (40 + FRAME_OVERHEAD_BYTES));
        assert_eq!(recent.find(19).map(|(f, e, _)| (f, e)), Some((16, 20)));
    }

    #[test]
    fn a_gap_or_a_frame_above_the_budget_starts_again() {
        let budget = 100 + FRAME_OVERHEAD_BYTES;
        let mut recent = RecentFrames::new(budget);
        recent.push(10, 15, &[1; 40]);
        recent.push(30, 31, &[2; 10]);
        assert!(recent.find(12).is_none(), "a frame after a gap drops what came before");
        assert!(recent.find(30).is_some());
        recent.push(31, 40, &[3; 101]);
        assert!(recent.find(30).is_none() && recent.find(35).is_none());
        assert_eq!(recent.bytes(), 0);
        let mut off = RecentFrames::new(0);
        off.push(1, 2, &[1]);
        assert!(off.find(1).is_none(), "a budget of zero keeps nothing");
    }
}
