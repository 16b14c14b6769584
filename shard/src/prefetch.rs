//! The cache hint that lets misses overlap: a loop that will read entries scattered over
//! hundreds of megabytes (a filter's lines, a map's entries in key order) asks for the ones it
//! reads a few steps later, so that it waits for several misses at once instead of each in
//! turn. The hint is an intrinsic, so `unsafe` (the crate has one other, `sort_room.rs`).

/// Asks the CPU to bring the cache line that starts `value` in, without waiting for it.
#[inline(always)]
pub(crate) fn prefetch<T>(value: &T) {
    #[cfg(target_arch = "x86_64")]
    // SAFETY: a prefetch only hints the cache; it reads nothing and cannot fault, and the
    // pointer comes from a live reference besides.
    unsafe {
        std::arch::x86_64::_mm_prefetch::<{ std::arch::x86_64::_MM_HINT_T0 }>((value as *const T).cast::<i8>());
    }
    #[cfg(not(target_arch = "x86_64"))]
    let _ = value;
}
