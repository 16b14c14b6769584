//! The memory a shard's checkpoints sort their stores' entries in, kept from one checkpoint to
//! the next.
//!
//! A checkpoint sorts each store's entries of the interval (`turns::sorted_by_key`): millions of
//! them, one store after another, each in a vector of its own entry type. Allocated afresh, each
//! vector was memory the allocator had given back to the kernel since the last checkpoint, so
//! every page of it was faulted in and zeroed by the kernel again: under transfers across
//! shards, most of the page zeroing the executors did. The room is kept instead: each store's
//! vector is made in the memory the last one used, whatever its entry type, and given back when
//! the store is written. It is about as large as the largest store of an interval (a quarter more
//! when it grows), so it follows the work; a shard with nothing applied since its last checkpoint lets it go
//! ([`SortRoom::release`]).

use std::cell::Cell;
use std::mem::{align_of, size_of, ManuallyDrop};

/// The kept memory (the module's text). Entries are `(u128, V)`: their alignment is the
/// `u128`'s, whatever `V`, so the room is held as `u128`s.
#[derive(Default)]
pub(crate) struct SortRoom {
    room: Cell<Vec<u128>>,
}

impl SortRoom {
    /// An empty vector of entries with room for at least `expected`, in the kept memory when it
    /// can hold them.
    pub(crate) fn take<V>(&self, expected: usize) -> Vec<(u128, V)> {
        let mut room = self.room.take();
        let entry = size_of::<(u128, V)>();
        let bytes = room.capacity() * size_of::<u128>();
        if bytes < expected.saturating_mul(entry) {
            // Kept until the larger vector comes back. That one has a quarter more room than
            // asked for, so that the next intervals, a little larger than this one as often as
            // not, still sort in it.
            self.room.set(room);
            return Vec::with_capacity(expected.saturating_add(expected / 4));
        }
        if !bytes.is_multiple_of(entry) {
            // Only a whole number of entries can own the memory: the room gives up the rest.
            room.shrink_to(bytes / entry * entry / size_of::<u128>());
        }
        recast(room).unwrap_or_else(|_| Vec::with_capacity(expected))
    }

    /// Keeps the memory of `entries` (emptied first) for the next [`take`](Self::take), if it
    /// is more than the room kept.
    pub(crate) fn give_back<V>(&self, mut entries: Vec<(u128, V)>) {
        entries.clear();
        let kept = self.room.take();
        if entries.capacity() * size_of::<(u128, V)>() <= kept.capacity() * size_of::<u128>() {
            self.room.set(kept);
            return;
        }
        if let Ok(room) = recast(entries) {
            self.room.set(room);
        }
    }

    /// Lets the kept memory go.
    pub(crate) fn release(&self) {
        drop(self.room.take());
    }

    /// Bytes kept.
    pub(crate) fn bytes(&self) -> usize {
        let room = self.room.take();
        let bytes = room.capacity() * size_of::<u128>();
        self.room.set(room);
        bytes
    }
}

/// The memory of the empty vector `v` as an empty vector of `B`, when it holds a whole number of
/// `B` at `B`'s alignment (else `v` back).
fn recast<A, B>(mut v: Vec<A>) -> Result<Vec<B>, Vec<A>> {
    v.clear();
    let bytes = v.capacity() * size_of::<A>();
    let fits = size_of::<A>() > 0
        && size_of::<B>() > 0
        && align_of::<A>() == align_of::<B>()
        && bytes.is_multiple_of(size_of::<B>());
    if !fits {
        return Err(v);
    }
    let mut v = ManuallyDrop::new(v);
    // SAFETY: the allocation (or the dangling pointer of no capacity) is aligned for `A`, hence
    // for `B` (same alignment); its size, `bytes`, is exactly `bytes / size_of::<B>()` `B`s, the
    // layout the new vector will free or grow it with; and no element is live (length 0).
    Ok(unsafe { Vec::from_raw_parts(v.as_mut_ptr().cast::<B>(), 0, bytes / size_of::<B>()) })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_room_of_one_entry_type_serves_the_next() {
        let room = SortRoom::default();
        let mut first: Vec<(u128, u64)> = room.take(1000);
        assert!(first.capacity() >= 1000);
        first.extend((0..1000).map(|n| (n, n as u64)));
        let memory = first.as_ptr() as usize;
        let bytes = first.capacity() * size_of::<(u128, u64)>();
        room.give_back(first);
        assert_eq!(room.bytes(), bytes);

        // Entries of another size, in the same memory: 16-byte ones fit any room.
        let second: Vec<(u128, ())> = room.take(500);
        assert_eq!(second.as_ptr() as usize, memory);
        assert_eq!(second.capacity() * 16, bytes);
        assert_eq!(room.bytes(), 0, "taken");
        room.give_back(second);

        // 80-byte entries: the room keeps a whole number of them.
        let third: Vec<(u128, [u8; 56])> = room.take(100);
        assert_eq!(size_of::<(u128, [u8; 56])>(), 80);
        assert!(third.capacity() >= 100 && third.capacity() * 80 <= bytes);
        room.give_back(third);
        let fourth: Vec<(u128, u64)> = room.take(10);
        assert!(fourth.capacity() >= 10);
        room.give_back(fourth);
    }

    #[test]
    fn more_than_the_room_holds_gets_new_memory_and_keeps_the_larger() {
        let room = SortRoom::default();
        room.give_back(Vec::<(u128, u64)>::with_capacity(10));
        let large: Vec<(u128, u64)> = room.take(10_000);
        assert!(large.capacity() >= 12_500, "a quarter more than asked for");
        assert_eq!(room.bytes(), 10 * 32, "the small room stays until the larger comes back");
        room.give_back(large);
        assert!(room.bytes() >= 10_000 * 32);
        // A smaller vector given back leaves the larger room.
        room.give_back(Vec::<(u128, u64)>::with_capacity(5));
        assert!(room.bytes() >= 10_000 * 32);
        room.release();
        assert_eq!(room.bytes(), 0);
    }

    #[test]
    fn entries_given_back_are_dropped() {
        let counted = std::rc::Rc::new(());
        let room = SortRoom::default();
        let mut entries: Vec<(u128, std::rc::Rc<()>)> = room.take(4);
        entries.extend((0..4).map(|n| (n, counted.clone())));
        assert_eq!(std::rc::Rc::strong_count(&counted), 5);
        room.give_back(entries);
        assert_eq!(std::rc::Rc::strong_count(&counted), 1);
    }

    #[test]
    fn recast_refuses_what_does_not_fit() {
        assert!(recast::<u128, (u128, u64)>(Vec::with_capacity(3)).is_err(), "48 bytes are not 32-byte entries");
        assert!(recast::<u128, u64>(Vec::with_capacity(4)).is_err(), "another alignment");
        assert!(recast::<u128, ()>(Vec::with_capacity(4)).is_err(), "no size");
        assert!(recast::<u128, (u128, u64)>(Vec::with_capacity(4)).is_ok());
        assert!(recast::<u128, (u128, u64)>(Vec::new()).is_ok());
    }
}
