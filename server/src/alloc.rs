//! An allocator for processes that decode requests off the network.
//!
//! The Kafka codecs size a vector from the count the wire gives before reading its elements,
//! so a frame of a few bytes can ask for a capacity of terabytes; the system allocator
//! refuses that, and a refused allocation aborts the process. This allocator serves every
//! allocation of [`LARGE`] bytes or more from an anonymous mapping that reserves nothing
//! (`MAP_NORESERVE`): a capacity costs address space until its pages are written, and the
//! decoder writes only as many elements as the frame (bounded by `request_bytes_max`) holds
//! before it fails and frees the vector. Smaller allocations go to the allocator it wraps: the
//! system's by default, or the one the binary chose (`tradeshard` wraps mimalloc).
//!
//! A binary that runs the server installs it:
//!
//! ```ignore
//! #[global_allocator]
//! static ALLOCATOR: tradeshard_server::ReserveNothingForLarge = tradeshard_server::ReserveNothingForLarge(std::alloc::System);
//! ```

use std::alloc::{GlobalAlloc, Layout, System};

/// Allocations from this size on are mapped, reserving nothing.
pub const LARGE: usize = 64 << 20;
const PAGE: usize = 4096;

/// See the module documentation; `A` serves the allocations below [`LARGE`].
pub struct ReserveNothingForLarge<A = System>(pub A);

fn is_large(layout: &Layout) -> bool {
    layout.size() >= LARGE && layout.align() <= PAGE
}

unsafe fn map(size: usize) -> *mut u8 {
    // SAFETY: an anonymous private mapping with no address hint has no preconditions.
    let pointer = unsafe {
        libc::mmap(
            std::ptr::null_mut(),
            size,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_NORESERVE,
            -1,
            0,
        )
    };
    if pointer == libc::MAP_FAILED {
        std::ptr::null_mut()
    } else {
        pointer.cast()
    }
}

// SAFETY: large blocks are page-aligned mappings of at least their layout's size, unmapped
// with that size; everything else is the system allocator's, with its own contract.
unsafe impl<A: GlobalAlloc> GlobalAlloc for ReserveNothingForLarge<A> {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        if is_large(&layout) {
            unsafe { map(layout.size()) }
        } else {
            unsafe { self.0.alloc(layout) }
        }
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        if is_large(&layout) {
            // Fresh anonymous pages read as zero.
            unsafe { map(layout.size()) }
        } else {
            unsafe { self.0.alloc_zeroed(layout) }
        }
    }

    unsafe fn dealloc(&self, pointer: *mut u8, layout: Layout) {
        if is_large(&layout) {
            unsafe { libc::munmap(pointer.cast(), layout.size()) };
        } else {
            unsafe { self.0.dealloc(pointer, layout) }
        }
    }

    unsafe fn realloc(&self, pointer: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        let new_layout = unsafe { Layout::from_size_align_unchecked(new_size, layout.align()) };
        match (is_large(&layout), is_large(&new_layout)) {
            (false, false) => unsafe { self.0.realloc(pointer, layout, new_size) },
            (true, true) => {
                let moved = unsafe { libc::mremap(pointer.cast(), layout.size(), new_size, libc::MREMAP_MAYMOVE) };
                if moved == libc::MAP_FAILED {
                    std::ptr::null_mut()
                } else {
                    moved.cast()
                }
            }
            _ => {
                let moved = unsafe { self.alloc(new_layout) };
                if !moved.is_null() {
                    unsafe {
                        std::ptr::copy_nonoverlapping(pointer, moved, layout.size().min(new_size));
                        self.dealloc(pointer, layout);
                    }
                }
                moved
            }
        }
    }
}
