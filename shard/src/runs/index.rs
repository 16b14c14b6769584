//! A run's index section: the Bloom filter's words, the fence keys, and (version 5) the page
//! directory, decoded and checked the same way by the disk path (`mod.rs`) and the fuzzer
//! (`fuzzing.rs`).
//!
//! The page directory is what lets an open leave every fence key on disk: for each page of
//! [`PAGE_FENCES`] fence keys it holds the page's first key and xxh3-64 of the page's bytes,
//! exactly what memory keeps of a run whose fences are paged (`fences.rs`). So an open reads
//! 32 bytes a page of 256 data blocks instead of 16 bytes a block, and a run that goes past the
//! key window at that open never reads its fences or its filter at all: what an open reads of
//! the runs no longer grows with the store's history.

use xxhash_rust::xxh3::{xxh3_64, Xxh3};

use super::bloom::Bloom;
use super::format::{FenceCheck, Footer, FENCE_BYTES};

/// Fence keys in a page: 4096 bytes of them.
pub(super) const PAGE_FENCES: usize = 256;
/// Bytes of a page's entry in the directory: its first key (u128), xxh3-64 of its fence keys'
/// bytes (u64), 8 zero bytes (so that entries are whole 16-byte words, as the rest of the
/// section).
pub(super) const DIRECTORY_ENTRY_BYTES: u64 = 32;

/// Pages of fence keys of a run of `data_blocks` blocks.
pub(super) fn pages(data_blocks: u64) -> u64 {
    data_blocks.div_ceil(PAGE_FENCES as u64)
}

/// xxh3-64 of a page of fence keys as the index section holds them (u128 each, little-endian).
pub(super) fn page_sum(page: &[u128]) -> u64 {
    let mut bytes = Vec::with_capacity(PAGE_FENCES * FENCE_BYTES as usize);
    page.iter().for_each(|key| bytes.extend_from_slice(&key.to_le_bytes()));
    xxh3_64(&bytes)
}

/// The page directory of `fences`, as a version 5 index section holds it.
pub(super) fn directory_bytes(fences: &[u128]) -> Vec<u8> {
    let mut out = Vec::with_capacity(pages(fences.len() as u64) as usize * DIRECTORY_ENTRY_BYTES as usize);
    for page in fences.chunks(PAGE_FENCES) {
        out.extend_from_slice(&page[0].to_le_bytes());
        out.extend_from_slice(&page_sum(page).to_le_bytes());
        out.extend_from_slice(&[0; 8]);
    }
    out
}

/// The pages' first keys and checksums from a version 5 run's page directory (`bytes`, read
/// from [`Footer::directory_offset`]), checked against the footer's checksum of it.
pub(super) fn decode_directory(footer: &Footer, bytes: &[u8]) -> Result<(Vec<u128>, Vec<u64>), &'static str> {
    let FenceCheck::Directory(sum) = footer.fence_check else {
        return Err("a run without a page directory");
    };
    if bytes.len() as u64 != pages(footer.data_blocks) * DIRECTORY_ENTRY_BYTES {
        return Err("a run page directory cut short");
    }
    if xxh3_64(bytes) != sum {
        return Err("run page directory checksum mismatch");
    }
    let (mut firsts, mut sums) = (Vec::with_capacity(bytes.len() / 32), Vec::with_capacity(bytes.len() / 32));
    for entry in bytes.chunks_exact(DIRECTORY_ENTRY_BYTES as usize) {
        let first = u128::from_le_bytes(entry[..16].try_into().expect("16 bytes"));
        if firsts.last().is_some_and(|last| *last >= first) {
            return Err("run page directory keys not strictly ascending");
        }
        if entry[24..].iter().any(|&b| b != 0) {
            return Err("a run page directory with bytes where zeros belong");
        }
        firsts.push(first);
        sums.push(u64::from_le_bytes(entry[16..24].try_into().expect("8 bytes")));
    }
    Ok((firsts, sums))
}

/// The keys of a page of fence keys read on its own (`bytes`, as the index section holds them),
/// checked against what memory keeps of it: the page's checksum `sum`, its first key `first`,
/// and the next page's first key `next_first` (none after the last page), which every key of
/// the page must be below. A page that passed its checksum but disagrees with its directory
/// would give a block a wrong boundary, and a lookup would answer "absent" for a key the run
/// holds.
pub(super) fn check_page(
    bytes: &[u8],
    sum: u64,
    first: u128,
    next_first: Option<u128>,
) -> Result<Vec<u128>, &'static str> {
    if xxh3_64(bytes) != sum {
        return Err("a page of run fence keys changed since the run was opened");
    }
    let keys: Vec<u128> =
        bytes.chunks_exact(16).map(|key| u128::from_le_bytes(key.try_into().expect("16 bytes"))).collect();
    let ascending = keys.windows(2).all(|pair| pair[0] < pair[1]);
    let bounded = keys.last().is_some_and(|last| next_first.is_none_or(|next| *last < next));
    if !bytes.len().is_multiple_of(16) || keys.first() != Some(&first) || !ascending || !bounded {
        return Err("a page of run fence keys that disagrees with its directory");
    }
    Ok(keys)
}

/// The fence keys of a version 4 run from `bytes`, the index section's part after the Bloom
/// filter (`footer.data_blocks` keys), checked against the footer's checksum of them.
pub(super) fn decode_fences(footer: &Footer, bytes: &[u8]) -> Result<Vec<u128>, &'static str> {
    if bytes.len() as u64 != footer.data_blocks * FENCE_BYTES {
        return Err("run fence keys cut short");
    }
    if footer.fence_check != FenceCheck::Fences(xxh3_64(bytes)) {
        return Err("run fence keys checksum mismatch");
    }
    let fences: Vec<u128> =
        bytes.chunks_exact(16).map(|key| u128::from_le_bytes(key.try_into().expect("16 bytes"))).collect();
    if fences.windows(2).any(|pair| pair[0] >= pair[1]) {
        return Err("run fence keys not strictly ascending");
    }
    Ok(fences)
}

/// xxh3_64 of fence keys as the index section holds them (u128 each, little-endian).
pub(super) fn fences_checksum(fences: &[u128]) -> u64 {
    let mut hasher = Xxh3::new();
    fences.iter().for_each(|fence| hasher.update(&fence.to_le_bytes()));
    hasher.digest()
}

/// Reads an index section fed in pieces (the disk path reads it a megabyte at a time): the
/// Bloom filter's words, then the fence keys, then the page directory (version 5), then zero
/// padding to a block.
pub(super) struct IndexDecoder {
    footer: Footer,
    /// Bytes of the section taken so far.
    at: u64,
    hasher: Box<Xxh3>,
    bloom: Vec<u64>,
    fences: Vec<u128>,
    directory: Vec<u8>,
}

impl IndexDecoder {
    /// A decoder for the index of the run `footer` describes (a footer [`Footer::decode`]
    /// accepted against the file's real length, so the sizes are those of bytes that exist).
    pub(super) fn new(footer: Footer) -> IndexDecoder {
        IndexDecoder {
            footer,
            at: 0,
            hasher: Box::new(Xxh3::new()),
            bloom: Vec::with_capacity(footer.bloom_words as usize),
            fences: Vec::with_capacity(footer.data_blocks as usize),
            directory: Vec::with_capacity(footer.directory_bytes() as usize),
        }
    }

    /// Takes the next `bytes` of the section (a multiple of 16 bytes long: the disk path feeds
    /// whole blocks).
    pub(super) fn feed(&mut self, bytes: &[u8]) -> Result<(), &'static str> {
        if !bytes.len().is_multiple_of(16) {
            return Err("a run index fed in pieces of no whole words");
        }
        let bloom_end = self.footer.bloom_words * 8;
        let fences_end = bloom_end + self.footer.data_blocks * FENCE_BYTES;
        let end = self.footer.index_bytes();
        let padded_end = self.footer.footer_offset() - self.footer.index_offset();
        if self.at + bytes.len() as u64 > padded_end {
            return Err("a run index longer than its footer says");
        }
        let held = end.saturating_sub(self.at).min(bytes.len() as u64) as usize;
        self.hasher.update(&bytes[..held]);
        for piece in bytes.chunks_exact(16) {
            if self.at < bloom_end {
                self.bloom.push(u64::from_le_bytes(piece[..8].try_into().expect("8 bytes")));
                self.bloom.push(u64::from_le_bytes(piece[8..].try_into().expect("8 bytes")));
            } else if self.at < fences_end {
                let fence = u128::from_le_bytes(piece.try_into().expect("16 bytes"));
                if self.fences.last().is_some_and(|last| *last >= fence) {
                    return Err("run fence keys not strictly ascending");
                }
                self.fences.push(fence);
            } else if self.at < end {
                self.directory.extend_from_slice(piece);
            } else if piece.iter().any(|&b| b != 0) {
                return Err("a run index with bytes where zeros belong");
            }
            self.at += 16;
        }
        Ok(())
    }

    /// The Bloom filter and the fence keys, once the whole section was fed and checked: its
    /// checksum, and the footer's checksum of the fence keys (version 4) or of the page
    /// directory, which must also be the directory of these fence keys (version 5).
    pub(super) fn finish(self) -> Result<(Bloom, Vec<u128>), &'static str> {
        if self.at != self.footer.footer_offset() - self.footer.index_offset() {
            return Err("a run index cut short");
        }
        if self.hasher.digest() != self.footer.index_checksum {
            return Err("run index checksum mismatch");
        }
        match self.footer.fence_check {
            FenceCheck::Whole => {}
            FenceCheck::Fences(sum) if sum != fences_checksum(&self.fences) => {
                return Err("run fence keys checksum mismatch")
            }
            FenceCheck::Fences(_) => {}
            FenceCheck::Directory(_) => {
                decode_directory(&self.footer, &self.directory)?;
                if self.directory != directory_bytes(&self.fences) {
                    return Err("a run page directory that is not its fence keys'");
                }
            }
        }
        Ok((Bloom::from_words(self.bloom, self.footer.hashes), self.fences))
    }
}
