//! Compressed copies of the table's old blocks (`trades.frozen`, indexed by
//! `trades.frozen.idx`), so that a trade that stopped changing costs its compressed bytes on
//! disk, not a 128-byte record.
//!
//! The table is cut into blocks of [`BLOCK_RECORDS`] counters (four pages). A checkpoint
//! compresses the blocks of the trades past the ones memory holds: each block's records as the
//! table holds them, byte `j` of every record taken as a column, and each column stored as its
//! least value and the records' differences from it in as few bits as they need (most bytes of
//! a record are the same in every trade of a block: currency, shard, the high bytes of ids,
//! times and amounts, the unused inline bytes); a record's checksum, different in every
//! trade, is kept as its xor with the checksum of the record's other bytes, zero when it is
//! whole (`columns.rs` holds the codec). Any one record is read back from the copy without
//! decoding the others. Once the copy and its index entry are durable, the block's pages are
//! punched out of the table (`freeze.rs`): the table reads as zeros there, and a zero record
//! of a frozen block is read from its copy. A later change to such a trade writes its page
//! again, and the table's record wins over the copy.
//!
//! The index is an array of fixed entries, entry `b` for block `b`, each with its own checksum;
//! blocks are frozen in order and an entry, once durable, is never written again. An open takes
//! every leading entry that checks, so a punch made by a checkpoint that an open passes over
//! (damaged, or never completed) still finds its copy; a block's copy holds records no newer
//! than the table held when it was made, which an open treats as it treats the table's own
//! records (versions, `index.rs`). The layout is in `docs/FORMAT.md`.

use xxhash_rust::xxh3::xxh3_64_with_seed;

use super::{checksum, CHECKSUM_AT, RECORD_BYTES};
use crate::columns::{self, Columns};

/// The copies' file name in the shard's directory.
pub(crate) const FROZEN_NAME: &str = "trades.frozen";
/// The index's file name.
pub(crate) const FROZEN_INDEX_NAME: &str = "trades.frozen.idx";
/// Counters in one block: block `b` holds counters `b * BLOCK_RECORDS ..`.
pub(crate) const BLOCK_RECORDS: u64 = 128;
/// A block's bytes in the table.
pub(crate) const BLOCK_RAW_BYTES: usize = BLOCK_RECORDS as usize * RECORD_BYTES;
/// Bytes of an index entry.
pub(crate) const ENTRY_BYTES: usize = 32;
/// No block's copy is longer (every column eight bits wide).
const COPY_BYTES_MAX: usize = columns::header_bytes(RECORD_BYTES) + BLOCK_RAW_BYTES;
/// Seeds the copies' checksums apart from the entries'.
const COPY_SEED: u64 = 0x5453_465a_434f_5059;

/// Where block `b`'s copy is in the copies' file, and its checksum.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct FrozenBlock {
    pub offset: u64,
    pub len: u32,
    pub checksum: u32,
}

/// Index entry `block`: offset u64, length u32, the copy's checksum u32, 8 zero bytes, and the
/// xxh3-64 of the 24 bytes before it seeded with the block's number.
pub(crate) fn encode_entry(block: u64, entry: &FrozenBlock) -> [u8; ENTRY_BYTES] {
    let mut out = [0u8; ENTRY_BYTES];
    out[0..8].copy_from_slice(&entry.offset.to_le_bytes());
    out[8..12].copy_from_slice(&entry.len.to_le_bytes());
    out[12..16].copy_from_slice(&entry.checksum.to_le_bytes());
    let sum = xxh3_64_with_seed(&out[..24], block);
    out[24..32].copy_from_slice(&sum.to_le_bytes());
    out
}

/// Index entry `block`, or `None` when the bytes are not a whole entry for it (never written,
/// torn, damaged or another block's).
pub(crate) fn decode_entry(block: u64, bytes: &[u8]) -> Option<FrozenBlock> {
    let bytes: &[u8; ENTRY_BYTES] = bytes.try_into().ok()?;
    let word = |at: usize| u64::from_le_bytes(bytes[at..at + 8].try_into().expect("8 bytes"));
    let half = |at: usize| u32::from_le_bytes(bytes[at..at + 4].try_into().expect("4 bytes"));
    if word(24) != xxh3_64_with_seed(&bytes[..24], block) || word(16) != 0 {
        return None;
    }
    let entry = FrozenBlock { offset: word(0), len: half(8), checksum: half(12) };
    (entry.len > 0 && entry.len as usize <= COPY_BYTES_MAX && entry.offset.checked_add(entry.len.into()).is_some())
        .then_some(entry)
}

/// The copy of block `block` from its records as the table holds them (`raw`,
/// [`BLOCK_RAW_BYTES`] long), with its checksum: the records as columns (`columns.rs`). A
/// record's checksum, which no two records share, is kept as its xor with the checksum its
/// other bytes give ([`sum_residue`]): zero for every whole record, so that column costs no
/// bits, and any record still comes back byte for byte.
pub(crate) fn compress(block: u64, raw: &[u8]) -> (Vec<u8>, u32) {
    assert_eq!(raw.len(), BLOCK_RAW_BYTES, "a block is compressed whole");
    let mut rows = raw.to_vec();
    for (n, record) in rows.chunks_exact_mut(RECORD_BYTES).enumerate() {
        let residue = sum_residue(block, n, record) ^ stored_sum(record);
        record[CHECKSUM_AT..].copy_from_slice(&residue.to_le_bytes());
    }
    let mut copy = Vec::new();
    columns::encode(&rows, RECORD_BYTES, &mut copy);
    let checksum = copy_checksum(block, &copy);
    (copy, checksum)
}

/// What a record's stored checksum is xored with in a copy: the checksum its other bytes
/// give, or zero when they are all zero (a counter never written), so that both a whole
/// record and an empty one keep a residue of zero.
fn sum_residue(block: u64, n: usize, record: &[u8]) -> u32 {
    let body = &record[..CHECKSUM_AT];
    if body.iter().all(|&b| b == 0) {
        0
    } else {
        checksum(block.wrapping_mul(BLOCK_RECORDS).wrapping_add(n as u64), record)
    }
}

fn stored_sum(record: &[u8]) -> u32 {
    u32::from_le_bytes(record[CHECKSUM_AT..CHECKSUM_AT + 4].try_into().expect("4 bytes"))
}

fn copy_checksum(block: u64, copy: &[u8]) -> u32 {
    xxh3_64_with_seed(copy, block ^ COPY_SEED) as u32
}

/// A block's copy, checked: any record of it can be taken out ([`record_of`]).
pub(crate) struct CheckedCopy {
    block: u64,
    bytes: Vec<u8>,
    columns: Columns,
}

/// Block `block`'s copy (`copy`, as `entry` says it is), checked; an error names what is
/// wrong with it.
pub(crate) fn decompress(block: u64, entry: &FrozenBlock, copy: &[u8]) -> Result<CheckedCopy, &'static str> {
    if copy.len() != entry.len as usize {
        return Err("a frozen block is shorter than its index entry says");
    }
    if copy_checksum(block, copy) != entry.checksum {
        return Err("a frozen block fails its checksum");
    }
    let columns = Columns::parse(copy, RECORD_BYTES, BLOCK_RECORDS as usize)?;
    if columns.end() != copy.len() {
        return Err("a frozen block's columns do not fill its copy");
    }
    Ok(CheckedCopy { block, bytes: copy.to_vec(), columns })
}

/// Record `n` of a block (`0..BLOCK_RECORDS`) out of its checked copy.
pub(crate) fn record_of(copy: &CheckedCopy, n: usize) -> [u8; RECORD_BYTES] {
    let mut record = [0u8; RECORD_BYTES];
    copy.columns.row(&copy.bytes, n, &mut record);
    let stored = sum_residue(copy.block, n, &record) ^ stored_sum(&record);
    record[CHECKSUM_AT..].copy_from_slice(&stored.to_le_bytes());
    record
}

/// For fuzzing: the first 8 bytes are a block's number, the next [`ENTRY_BYTES`] its index
/// entry, the rest its copy. Returns the block's records when the entry and the copy check
/// (each then decoded as a record of the table, which must not panic either).
#[cfg(any(test, feature = "testing"))]
pub fn decode_for_fuzzing(bytes: &[u8]) -> Option<Vec<u8>> {
    let block = u64::from_le_bytes(bytes.get(..8)?.try_into().expect("8 bytes"));
    let entry = decode_entry(block, bytes.get(8..8 + ENTRY_BYTES)?)?;
    let copy = decompress(block, &entry, &bytes[8 + ENTRY_BYTES..]).ok()?;
    let mut records = Vec::with_capacity(BLOCK_RAW_BYTES);
    for n in 0..BLOCK_RECORDS as usize {
        let record = record_of(&copy, n);
        let _ = super::decode(block.saturating_mul(BLOCK_RECORDS).saturating_add(n as u64), &record);
        records.extend_from_slice(&record);
    }
    Some(records)
}

/// A block of records, its entry and its copy, as [`decode_for_fuzzing`] takes them (the
/// fuzzers' seed).
#[cfg(any(test, feature = "testing"))]
pub fn sample_for_fuzzing() -> Vec<u8> {
    let mut raw = vec![0u8; BLOCK_RAW_BYTES];
    let record = super::fuzzing::sample_for_fuzzing();
    for (n, slot) in raw.chunks_exact_mut(RECORD_BYTES).enumerate() {
        if n % 3 == 0 {
            slot.copy_from_slice(&record[8..8 + RECORD_BYTES]);
        }
    }
    let (copy, checksum) = compress(2, &raw);
    let entry = FrozenBlock { offset: 0, len: copy.len() as u32, checksum };
    let mut out = 2u64.to_le_bytes().to_vec();
    out.extend_from_slice(&encode_entry(2, &entry));
    out.extend_from_slice(&copy);
    out
}

/// The block of `counter`.
pub(crate) fn block_of(counter: u64) -> u64 {
    counter / BLOCK_RECORDS
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample_block(seed: u64) -> Vec<u8> {
        let mut raw = vec![0u8; BLOCK_RAW_BYTES];
        for (n, record) in raw.chunks_exact_mut(RECORD_BYTES).enumerate() {
            let n = n as u64 + seed;
            record[0..8].copy_from_slice(&n.wrapping_mul(0x9e37_79b9_7f4a_7c15).to_le_bytes());
            record[8..16].copy_from_slice(&(1_700_000_000_000 + n).to_le_bytes());
            record[100] = (n % 7) as u8;
        }
        raw
    }

    #[test]
    fn a_block_comes_back_whole_and_only_as_its_own() {
        let raw = sample_block(3);
        let (copy, checksum) = compress(9, &raw);
        assert!(copy.len() < raw.len() / 2, "{} bytes", copy.len());
        let entry = FrozenBlock { offset: 4096, len: copy.len() as u32, checksum };
        let checked = decompress(9, &entry, &copy).unwrap();
        let records: Vec<u8> = (0..BLOCK_RECORDS as usize).flat_map(|n| record_of(&checked, n)).collect();
        assert_eq!(records, raw);
        assert!(decompress(10, &entry, &copy).is_err(), "another block's copy");
        let mut flipped = copy.clone();
        flipped[copy.len() / 2] ^= 4;
        assert!(decompress(9, &entry, &flipped).is_err());
        assert!(decompress(9, &entry, &copy[..copy.len() - 1]).is_err());
    }

    #[test]
    fn whole_and_empty_records_cost_no_bits_for_their_checksums() {
        let block = 5;
        let mut raw = sample_block(1);
        for (n, record) in raw.chunks_exact_mut(RECORD_BYTES).enumerate() {
            if n % 4 == 3 {
                record.fill(0);
                continue;
            }
            let sum = checksum(block * BLOCK_RECORDS + n as u64, record);
            record[CHECKSUM_AT..].copy_from_slice(&sum.to_le_bytes());
        }
        let (copy, checksum) = compress(block, &raw);
        // The checksums' four columns: widths of zero bits, two nibbles to a byte.
        assert_eq!(copy[RECORD_BYTES + CHECKSUM_AT / 2..RECORD_BYTES + RECORD_BYTES / 2], [0, 0]);
        let entry = FrozenBlock { offset: 0, len: copy.len() as u32, checksum };
        let checked = decompress(block, &entry, &copy).unwrap();
        let records: Vec<u8> = (0..BLOCK_RECORDS as usize).flat_map(|n| record_of(&checked, n)).collect();
        assert_eq!(records, raw);
    }

    #[test]
    fn the_fuzzing_sample_decodes_and_any_damage_to_it_is_refused_without_panic() {
        let sample = sample_for_fuzzing();
        assert_eq!(decode_for_fuzzing(&sample).map(|records| records.len()), Some(BLOCK_RAW_BYTES));
        for at in 0..sample.len() {
            let mut flipped = sample.clone();
            flipped[at] ^= 0x10;
            assert_eq!(decode_for_fuzzing(&flipped), None, "byte {at} flipped");
        }
        for len in 0..sample.len() {
            assert_eq!(decode_for_fuzzing(&sample[..len]), None);
        }
    }

    #[test]
    fn blocks_of_any_bytes_come_back_whole() {
        let mut rng = 0x1234_5678_9abc_def0u64;
        let mut next = || {
            rng ^= rng << 13;
            rng ^= rng >> 7;
            rng ^= rng << 17;
            rng
        };
        for case in 0..200u64 {
            // Each column spans a range of its own, from constant to every byte value.
            let spans: Vec<u64> = (0..RECORD_BYTES).map(|_| 1 << (next() % 9)).collect();
            let base: Vec<u64> = (0..RECORD_BYTES).map(|_| next() % 256).collect();
            let mut raw = vec![0u8; BLOCK_RAW_BYTES];
            for record in raw.chunks_exact_mut(RECORD_BYTES) {
                for (j, byte) in record.iter_mut().enumerate() {
                    *byte = ((base[j] + next() % spans[j]) % 256) as u8;
                }
            }
            if case == 0 {
                raw.fill(0);
            } else if case == 1 {
                raw.fill(0xff);
            }
            let (copy, checksum) = compress(case, &raw);
            let entry = FrozenBlock { offset: 0, len: copy.len() as u32, checksum };
            let checked = decompress(case, &entry, &copy).unwrap();
            for n in 0..BLOCK_RECORDS as usize {
                assert_eq!(
                    record_of(&checked, n),
                    raw[n * RECORD_BYTES..(n + 1) * RECORD_BYTES],
                    "case {case} record {n}"
                );
            }
            assert!(copy.len() <= COPY_BYTES_MAX);
        }
    }

    #[test]
    fn an_entry_reads_back_only_at_its_own_block_and_whole() {
        let entry = FrozenBlock { offset: 1 << 33, len: 5_000, checksum: 77 };
        let bytes = encode_entry(4, &entry);
        assert_eq!(decode_entry(4, &bytes), Some(entry));
        assert_eq!(decode_entry(5, &bytes), None);
        assert_eq!(decode_entry(4, &[0u8; ENTRY_BYTES]), None);
        for at in 0..ENTRY_BYTES {
            let mut flipped = bytes;
            flipped[at] ^= 1;
            assert_eq!(decode_entry(4, &flipped), None, "bit flipped at {at}");
        }
        let long = FrozenBlock { len: COPY_BYTES_MAX as u32 + 1, ..entry };
        assert_eq!(decode_entry(4, &encode_entry(4, &long)), None);
    }
}
