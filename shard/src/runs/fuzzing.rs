//! A run file held in memory, read the way the disk path reads one, for the fuzzer and its
//! seeds (`testing` feature): the same footer, index and block checks, in the same order, and
//! every page of fence keys checked against the page directory as a run past the key window
//! checks the page it reads.

use super::fences::bounds_in;
use super::format::{check_block, key_at, value_at, Encoder, FenceCheck, Footer, BLOCK};
use super::index::{check_page, decode_directory, decode_fences, IndexDecoder, PAGE_FENCES};
use super::{Value, READ_BYTES, VALUE_BYTES_MAX};

/// For fuzzing: `bytes` as the file of run `id`, read as an open reads it (footer, then the
/// index section a megabyte at a time) and then as a full scan does (every block, and every
/// key asked of the Bloom filter). Returns the entries, or why the file is refused; never
/// panics.
pub fn decode_for_fuzzing(bytes: &[u8], id: u64) -> Result<Vec<(u128, Value)>, &'static str> {
    let size = bytes.len() as u64;
    if size < BLOCK as u64 || !size.is_multiple_of(BLOCK as u64) {
        return Err("a run file cut short or not of whole blocks");
    }
    let footer_at = bytes.len() - BLOCK;
    let footer = Footer::decode(&bytes[footer_at..], id, size)?;
    // What an open reads before the filter: the page directory, or the fence keys alone.
    match footer.fence_check {
        FenceCheck::Directory(_) => {
            let directory = &bytes[footer.directory_offset() as usize..][..footer.directory_bytes() as usize];
            let (firsts, sums) = decode_directory(&footer, directory)?;
            let fences = &bytes[footer.fences_offset() as usize..footer.directory_offset() as usize];
            for (at, page) in fences.chunks(PAGE_FENCES * 16).enumerate() {
                check_page(page, sums[at], firsts[at], firsts.get(at + 1).copied())?;
            }
        }
        FenceCheck::Fences(_) => {
            _ = decode_fences(&footer, &bytes[footer.fences_offset() as usize..footer.directory_offset() as usize])?
        }
        FenceCheck::Whole => {}
    }
    let mut index = IndexDecoder::new(footer);
    let index_at = footer.index_offset() as usize;
    for piece in bytes[index_at..footer_at].chunks(READ_BYTES) {
        index.feed(piece)?;
    }
    let (bloom, fences) = index.finish()?;
    let mut entries = Vec::with_capacity(footer.entries as usize);
    for (number, block) in bytes[..index_at].chunks(BLOCK).enumerate() {
        let block = check_block(block, &footer, bounds_in(&fences, number as u64)?)?;
        for i in 0..block.count {
            let key = key_at(&block.bytes, i, footer.entry_bytes);
            if !bloom.may_hold(key) {
                return Err("a run key its Bloom filter does not hold");
            }
            entries.push((key, value_at(&block.bytes, i, footer.entry_bytes)));
        }
    }
    if entries.len() as u64 != footer.entries {
        return Err("a run whose blocks hold another number of entries than its footer says");
    }
    Ok(entries)
}

/// The age of the sample's keys.
pub(super) const SAMPLE_AGE: super::KeysAge = super::KeysAge { newest_ms: 1_764_000_000_000, through: 4_242 };

/// The file of run `id` holding three entries of `value_bytes` each (the fuzzer's seeds: 24
/// and 56).
pub fn sample_for_fuzzing(id: u64, value_bytes: usize) -> Vec<u8> {
    let mut encoder = Encoder::new(id, 1, 3, value_bytes).expect("a size runs have");
    encoder.set_age(SAMPLE_AGE);
    let mut bytes = Vec::new();
    for n in 1..=3u8 {
        let key = u128::from(n) * 0x09E3_779B_97F4_A7C1_5F39_CC06_05CE_DC83;
        let mut value = [0u8; VALUE_BYTES_MAX];
        value[..value_bytes].fill(n);
        encoder.push(key, &value, &mut bytes).expect("ascending keys");
    }
    let mut tail = encoder.finish(&mut bytes).expect("three entries");
    tail.write_to(&mut bytes, usize::MAX);
    bytes
}
