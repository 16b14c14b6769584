//! The runs' tests: lookups after a write and after an open, the Bloom filter's false
//! positives, merges against a model, the merge policy, damage of every section, and the
//! decoder the fuzzer drives.

use std::collections::{BTreeMap, BTreeSet};
use std::future::Future;
use std::rc::Rc;

use tradeshard_wal::disk::{Disk, Fault, SimDisk, SplitMix64};

use super::format::{block_capacity, block_seed, BLOCK};
use super::*;
use crate::error::{LogError, TradeError};

pub(super) const PREFIX: &str = "t";
/// The runs of most tests: a filter per key and 24-byte values, as the stores of order keys.
pub(super) const VALUE_BYTES: usize = 24;
const SHAPE: Shape = Shape { filter: Filter::PerKey, value_bytes: VALUE_BYTES };
/// Entries of a full block of such runs with entries back to back (versions 1 and 2).
const BLOCK_ENTRIES: usize = 102;

pub(super) fn run<T>(future: impl Future<Output = T>) -> T {
    glommio::LocalExecutorBuilder::default().make().unwrap().run(future)
}

fn value(key: u128, version: u64) -> Value {
    sized_value(key, version, VALUE_BYTES)
}

/// A value of `bytes` (the rest zero, as a run of such values hands it over).
fn sized_value(key: u128, version: u64, bytes: usize) -> Value {
    let mut value = [0u8; VALUE_BYTES_MAX];
    value[..8].copy_from_slice(&(key as u64 ^ (key >> 64) as u64).to_le_bytes());
    value[8..16].copy_from_slice(&version.to_le_bytes());
    value[16..].fill(version as u8);
    value[bytes..].fill(0);
    value
}

/// `count` distinct keys, ascending, from `seed`.
fn keys(seed: u64, count: usize) -> Vec<u128> {
    let mut rng = SplitMix64::new(seed);
    let mut keys = BTreeSet::new();
    while keys.len() < count {
        keys.insert(u128::from(rng.next_u64()) << 64 | u128::from(rng.next_u64()));
    }
    keys.into_iter().collect()
}

async fn write(disk: &SimDisk, id: u64, level: u32, entries: &[(u128, Value)]) -> Result<Run<SimDisk>, TradeError> {
    Run::write(disk, PREFIX, id, level, KeysAge::UNKNOWN, SHAPE, entries.len() as u64, entries.iter().copied()).await
}

/// No blocks kept: every read goes to the disk.
pub(super) fn no_cache() -> BlockCache {
    BlockCache::new(0)
}

/// The path and offset of a corruption error.
fn corruption(error: TradeError) -> (String, u64, &'static str) {
    match error {
        TradeError::Log(LogError::Corruption { path, offset, reason }) => (path.display().to_string(), offset, reason),
        other => panic!("not a corruption: {other}"),
    }
}

#[test]
fn every_key_reads_back_after_a_write_and_after_an_open() {
    let sizes = [(7, VALUE_BYTES, BLOCK_ENTRIES), (8, 0, 255), (9, 8, 170), (10, 32, 85), (11, 56, 56)];
    for (id, value_bytes, per_block) in sizes {
        every_key_reads_back(id, value_bytes, per_block);
    }
}

fn every_key_reads_back(id: u64, value_bytes: usize, per_block: usize) {
    run(async {
        let disk = SimDisk::new();
        let keys = keys(1, 5_000);
        let entries: Vec<(u128, Value)> = keys.iter().map(|&k| (k, sized_value(k, 1, value_bytes))).collect();
        let shape = Shape { filter: Filter::PerKey, value_bytes };
        let written =
            Run::write(&disk, PREFIX, id, 2, KeysAge::UNKNOWN, shape, 5_000, entries.iter().copied()).await.unwrap();
        let opened = Run::open(&disk, PREFIX, id, value_bytes).await.unwrap();
        let name = Run::<SimDisk>::file_name(PREFIX, id);
        assert_eq!(name, format!("t-{id:016x}.run"));
        let other_size = (value_bytes + 8) % (VALUE_BYTES_MAX + 8);
        let (_, _, reason) = corruption(Run::open(&disk, PREFIX, id, other_size).await.err().unwrap());
        assert_eq!(reason, "a run file of entries of another size than its store's");
        assert_eq!(block_capacity(16 + value_bytes), per_block);
        let blocks_back_to_back = 5_000u64.div_ceil(per_block as u64);
        for run in [&written, &opened] {
            assert_eq!((run.id(), run.level(), run.entries(), run.value_bytes()), (id, 2, 5_000, value_bytes));
            assert_eq!(run.file_bytes(), disk.file_len(&name).unwrap());
            // Random keys share few bits: blocks of columns hold about as many entries as
            // blocks of entries back to back, and no fewer than two less.
            let blocks = run.data_blocks();
            assert!(blocks <= 5_000u64.div_ceil(per_block as u64 - 2), "{blocks} blocks against {blocks_back_to_back}");
            for &(key, value) in &entries {
                assert!(run.may_hold(key), "no false negative");
                assert_eq!(run.get(key, &no_cache()).await.unwrap(), Some(value));
            }
            // Absent keys: below the first, above the last, between neighbours, at random.
            let mut absent = vec![0, u128::MAX, keys[0] - 1, keys[4_999] + 1];
            absent.extend(keys.windows(2).filter(|w| w[1] - w[0] > 1).take(500).map(|w| w[0] + 1));
            absent.extend(self::keys(2, 500));
            for key in absent.into_iter().filter(|k| keys.binary_search(k).is_err()) {
                assert_eq!(run.get(key, &no_cache()).await.unwrap(), None, "{key:#x}");
                assert_eq!(run.read(key, &no_cache()).await.unwrap(), None, "{key:#x}, the filter not asked");
            }
        }
        // The open read the page directory alone; the filter and the fence keys come when asked
        // for, checked.
        assert!(matches!(*opened.bloom.borrow(), FilterState::Unread));
        opened.read_filter().await.unwrap();
        assert_eq!(written.bloom.borrow().held(), opened.bloom.borrow().held());
        assert_eq!(written.fences.borrow().held(), opened.fences.borrow().held());
        assert_eq!(written.footer, opened.footer);
        let mut too_long = [0u8; VALUE_BYTES_MAX];
        too_long[value_bytes..].fill(1);
        if value_bytes < VALUE_BYTES_MAX {
            let written = Run::write(&disk, PREFIX, 99, 0, KeysAge::UNKNOWN, shape, 1, [(1, too_long)]).await;
            let (_, _, reason) = corruption(written.err().unwrap());
            assert_eq!(reason, "a value longer than its run's values");
        }
    });
}

impl<D: Disk> Run<D> {
    fn data_blocks(&self) -> u64 {
        self.footer.data_blocks
    }
}

#[test]
fn ranges_read_greatest_first_with_a_filter_per_key_or_none() {
    run(async {
        let disk = SimDisk::new();
        // Three "users" of 700 keys each (several blocks apiece), every third key.
        let keys: Vec<u128> =
            (1..=3u128).flat_map(|user| (0..2_100u128).step_by(3).map(move |n| user << 64 | n)).collect();
        let entries: Vec<(u128, Value)> = keys.iter().map(|&k| (k, [0u8; VALUE_BYTES_MAX])).collect();
        for (id, filter) in [(1, Filter::PerKey), (2, Filter::RangesOnly)] {
            let count = entries.len() as u64;
            // As the users' runs are: keys alone.
            let shape = Shape { filter, value_bytes: 0 };
            let written = Run::write(&disk, PREFIX, id, 0, KeysAge::UNKNOWN, shape, count, entries.iter().copied())
                .await
                .unwrap();
            let opened = Run::open(&disk, PREFIX, id, 0).await.unwrap();
            for run in [&written, &opened] {
                for (low, high, limit) in [
                    (2u128 << 64, 2u128 << 64 | u64::MAX as u128, 5_000),
                    (2 << 64, 2 << 64 | 1_000, 20),
                    (0, 1 << 64, 10),
                    (0, u128::MAX, 3),
                ] {
                    let want: Vec<u128> =
                        keys.iter().rev().filter(|&&k| low <= k && k <= high).take(limit).copied().collect();
                    assert_eq!(
                        run.keys_down(low, high, limit, &no_cache()).await.unwrap(),
                        want,
                        "{filter:?} {low:x}..={high:x}, {limit}"
                    );
                }
                assert!(
                    run.keys_down(4 << 64, 5 << 64, 10, &no_cache()).await.unwrap().is_empty(),
                    "past the last key"
                );
            }
            let per_entry = written.memory_bytes() as f64 / count as f64;
            match filter {
                Filter::PerKey => assert!(per_entry > 1.5, "a filter per key: {per_entry}"),
                Filter::RangesOnly => assert!(per_entry < 0.3, "fences and one line: {per_entry}"),
            }
        }
    });
}

#[test]
fn the_bloom_filter_has_few_false_positives_and_no_false_negatives() {
    run(async {
        let disk = SimDisk::new();
        let keys = keys(3, 20_000);
        let entries: Vec<(u128, Value)> = keys.iter().map(|&k| (k, value(k, 1))).collect();
        let run = write(&disk, 1, 0, &entries).await.unwrap();
        assert!(keys.iter().all(|&k| run.may_hold(k)));
        let mut rng = SplitMix64::new(4);
        let (mut asked, mut positives) = (0, 0);
        while asked < 100_000 {
            let key = u128::from(rng.next_u64()) << 64 | u128::from(rng.next_u64());
            if keys.binary_search(&key).is_ok() {
                continue;
            }
            asked += 1;
            positives += usize::from(run.may_hold(key));
        }
        let rate = positives as f64 / asked as f64;
        assert!(rate < 0.004, "false positive rate {rate}");
        // Sequential keys (not hashes) fare the same: the filter hashes every key.
        let sequential: Vec<(u128, Value)> = (0..20_000u128).map(|k| (k, value(k, 1))).collect();
        let run = write(&disk, 2, 0, &sequential).await.unwrap();
        let positives = (20_000..120_000u128).filter(|&k| run.may_hold(k)).count();
        assert!((positives as f64) < 0.004 * 100_000.0, "sequential false positives {positives}");
        let memory = run.memory_bytes() as f64 / 20_000.0;
        assert!(memory < 2.4, "{memory} bytes per entry");
    });
}

#[test]
fn a_merge_keeps_the_newest_value_of_each_key() {
    run(async {
        let disk = SimDisk::new();
        let mut model = BTreeMap::new();
        let mut runs = Vec::new();
        for (version, seed) in [(1, 10), (2, 11), (3, 10)] {
            // Seed 10 twice: the third run overwrites every key of the first.
            let mut keys = keys(seed, 700);
            keys.extend(self::keys(99, 300));
            keys.sort_unstable();
            keys.dedup();
            let entries: Vec<(u128, Value)> = keys.iter().map(|&k| (k, value(k, version))).collect();
            model.extend(entries.iter().copied());
            runs.push(Rc::new(write(&disk, version, 0, &entries).await.unwrap()));
        }
        let merged = merge(&disk, PREFIX, 10, 1, SHAPE, &runs).await.unwrap();
        assert_eq!((merged.id(), merged.level(), merged.entries()), (10, 1, model.len() as u64));
        let bytes = disk.read_file(&Run::<SimDisk>::file_name(PREFIX, 10)).unwrap();
        let scanned: BTreeMap<u128, Value> = decode_for_fuzzing(&bytes, 10).unwrap().into_iter().collect();
        assert_eq!(scanned, model);
        let reopened = Run::open(&disk, PREFIX, 10, VALUE_BYTES).await.unwrap();
        for (&key, &value) in &model {
            assert_eq!(reopened.get(key, &no_cache()).await.unwrap(), Some(value));
        }
        let single = merge(&disk, PREFIX, 11, 4, SHAPE, &runs[..1]).await.unwrap();
        assert_eq!((single.entries(), single.level()), (runs[0].entries(), 4));
        assert!(merge(&disk, PREFIX, 12, 1, SHAPE, &[]).await.is_err(), "a merge of nothing");
    });
}

mod old_versions;
mod paged_fences;
mod set_model;

#[test]
fn file_names_and_ids_are_one_to_one() {
    type R = Run<SimDisk>;
    for id in [0, 1, 0xabc, u64::MAX] {
        assert_eq!(R::parse_file_name("keys", &R::file_name("keys", id)), Some(id));
    }
    for name in [
        "keys-00000000000000ab.run",
        "keys-00000000000000AB.run",
        "keys-0000000000000ab.run",
        "keys-+00000000000000a.run",
        "keys-00000000000000ab.runs",
        "keyz-00000000000000ab.run",
        "keys00000000000000ab.run",
        "keys-00000000000000ab",
    ] {
        let want = (name == "keys-00000000000000ab.run").then_some(0xab);
        assert_eq!(R::parse_file_name("keys", name), want, "{name}");
    }
}

/// A run of five blocks on a fresh disk.
pub(super) async fn five_blocks() -> (SimDisk, Vec<(u128, Value)>, String) {
    let disk = SimDisk::new();
    let entries: Vec<(u128, Value)> = keys(5, 760).iter().map(|&k| (k, value(k, 1))).collect();
    assert_eq!(write(&disk, 3, 0, &entries).await.unwrap().data_blocks(), 5);
    (disk, entries, Run::<SimDisk>::file_name(PREFIX, 3))
}

#[test]
fn a_flipped_bit_in_a_block_fails_the_read_of_that_block_only() {
    run(async {
        let (disk, entries, name) = five_blocks().await;
        disk.flip_bit(&name, 2 * BLOCK as u64 + 100, 3);
        let run = Rc::new(Run::open(&disk, PREFIX, 3, VALUE_BYTES).await.unwrap());
        run.read_filter().await.unwrap();
        let in_block = |n: usize| *entries.iter().find(|entry| entry.0 == run.fences.borrow().held()[n]).unwrap();
        let (path, offset, reason) = corruption(run.get(in_block(2).0, &no_cache()).await.unwrap_err());
        assert_eq!(
            (path.as_str(), offset, reason),
            ("sim/t-0000000000000003.run", 8192, "run block checksum mismatch")
        );
        assert_eq!(run.get(in_block(1).0, &no_cache()).await.unwrap(), Some(in_block(1).1));
        assert_eq!(run.get(in_block(3).0, &no_cache()).await.unwrap(), Some(in_block(3).1));
        // A merge reads every block: it fails, and leaves no file behind.
        let (_, offset, _) = corruption(merge(&disk, PREFIX, 4, 1, SHAPE, &[run]).await.unwrap_err());
        assert_eq!(offset, 8192);
        assert_eq!(disk.file_len(&Run::<SimDisk>::file_name(PREFIX, 4)), None);
    });
}

#[test]
fn a_flipped_bit_in_the_index_or_the_footer_fails_the_open_or_the_filters_read() {
    run(async {
        let (disk, _, name) = five_blocks().await;
        let len = disk.file_len(&name).unwrap();
        let footer = Run::open(&disk, PREFIX, 3, VALUE_BYTES).await.unwrap().footer;
        let (index, fences, directory) = (footer.index_offset(), footer.fences_offset(), footer.directory_offset());
        assert_eq!((index, directory), (5 * BLOCK as u64, fences + 5 * 16));
        // Bloom words, fence keys, the page directory, index padding; footer fields, checksum,
        // reserved bytes.
        let offsets =
            [index, index + 700, fences, fences + 70, directory, directory + 20, directory + 40, index + 4000];
        for offset in offsets.into_iter().chain([len - 4096, len - 4040, len - 2000, len - 1]) {
            let (disk, _, name) = five_blocks().await;
            disk.flip_bit(&name, offset, 5);
            // The open reads the page directory and the footer; the Bloom filter and the fence
            // keys, when the filter is read.
            let error = match Run::open(&disk, PREFIX, 3, VALUE_BYTES).await {
                Err(error) => error,
                Ok(run) => run.read_filter().await.err().unwrap_or_else(|| panic!("offset {offset} passed")),
            };
            let (path, at, _) = corruption(error);
            assert_eq!(path, "sim/t-0000000000000003.run");
            assert!([index, directory, len - 4096].contains(&at), "offset {offset} reported at {at}");
        }
        assert!(Run::open(&disk, PREFIX, 3, VALUE_BYTES).await.is_ok(), "the undamaged file opens");
    });
}

#[test]
fn a_file_cut_short_or_missing_or_named_for_another_run_is_refused() {
    run(async {
        let (disk, _, name) = five_blocks().await;
        let bytes = disk.read_file(&name).unwrap();
        for cut in [1, 40, 4096, 8192, bytes.len() - 4096, bytes.len()] {
            disk.put_file(&name, &bytes[..bytes.len() - cut]);
            assert!(Run::open(&disk, PREFIX, 3, VALUE_BYTES).await.is_err(), "cut by {cut}");
        }
        disk.put_file(&name, &[bytes.clone(), vec![0; 4096]].concat());
        assert!(Run::open(&disk, PREFIX, 3, VALUE_BYTES).await.is_err(), "a block too many");
        disk.put_file(&Run::<SimDisk>::file_name(PREFIX, 9), &bytes);
        let (_, _, reason) = corruption(Run::open(&disk, PREFIX, 9, VALUE_BYTES).await.err().unwrap());
        assert_eq!(reason, "a run file whose footer names another run");
        disk.remove(&name).await.unwrap();
        let (_, _, reason) = corruption(Run::open(&disk, PREFIX, 3, VALUE_BYTES).await.err().unwrap());
        assert_eq!(reason, "a run a checkpoint lists is missing");
    });
}

#[test]
fn entries_out_of_order_or_not_as_many_as_counted_are_refused_and_leave_no_file() {
    run(async {
        let disk = SimDisk::new();
        let name = Run::<SimDisk>::file_name(PREFIX, 1);
        let ascending: Vec<(u128, Value)> = (1..=300u128).map(|k| (k * 10, value(k, 1))).collect();
        let mut swapped = ascending.clone();
        swapped.swap(250, 251);
        let mut repeated = ascending.clone();
        repeated[120].0 = repeated[119].0;
        for bad in [swapped, repeated] {
            let (_, _, reason) = corruption(write(&disk, 1, 0, &bad).await.err().unwrap());
            assert_eq!(reason, "keys of a run not strictly ascending");
            assert_eq!(disk.file_len(&name), None);
        }
        for count in [299, 301] {
            let result =
                Run::write(&disk, PREFIX, 1, 0, KeysAge::UNKNOWN, SHAPE, count, ascending.iter().copied()).await;
            assert!(result.is_err(), "count {count}");
            assert_eq!(disk.file_len(&name), None);
        }
        assert!(
            Run::write(&disk, PREFIX, 1, 0, KeysAge::UNKNOWN, SHAPE, 0, std::iter::empty::<(u128, Value)>())
                .await
                .is_err(),
            "an empty run"
        );
        // A leftover file of the name is replaced.
        disk.put_file(&name, b"leftover");
        write(&disk, 1, 0, &ascending).await.unwrap();
        assert_eq!(
            Run::open(&disk, PREFIX, 1, VALUE_BYTES).await.unwrap().get(10, &no_cache()).await.unwrap(),
            Some(value(1, 1))
        );
    });
}

#[test]
fn a_failed_write_leaves_no_file_and_a_written_run_is_durable() {
    run(async {
        // Random keys, which blocks of columns shrink little: more than a megabyte.
        let entries: Vec<(u128, Value)> = keys(8, 60_000).iter().map(|&k| (k, value(k, 1))).collect();
        let name = Run::<SimDisk>::file_name(PREFIX, 1);
        // Operation 1 creates the file, 2 writes the first megabyte, then the second, ...
        for op in [2, 3, 4] {
            let disk = SimDisk::new();
            disk.fail_op(op, Fault::Eio);
            assert!(write(&disk, 1, 0, &entries).await.is_err(), "operation {op}");
            assert_eq!(disk.file_len(&name), None, "operation {op}");
        }
        let disk = SimDisk::new();
        write(&disk, 1, 0, &entries).await.unwrap();
        assert!(disk.file_len(&name).unwrap() > 1 << 20);
        disk.sync_dir().await.unwrap();
        disk.crash(7);
        let run = Run::open(&disk, PREFIX, 1, VALUE_BYTES).await.unwrap();
        for &(key, value) in entries.iter().step_by(97) {
            assert_eq!(run.get(key, &no_cache()).await.unwrap(), Some(value));
        }
    });
}

#[test]
fn the_sample_file_is_laid_out_as_documented() {
    let bytes = sample_for_fuzzing(1, VALUE_BYTES);
    assert_eq!(bytes.len(), 3 * BLOCK, "a data block, an index block, the footer");
    let footer = &bytes[2 * BLOCK..];
    let u64_at = |at: usize| u64::from_le_bytes(footer[at..at + 8].try_into().unwrap());
    assert_eq!(&footer[..8], b"TSRN\x05\x00\x28\x00");
    assert_eq!((u64_at(8), &footer[16..20], u64_at(20), u64_at(28), u64_at(36)), (1, &[1, 0, 0, 0][..], 3, 1, 8));
    assert_eq!(&footer[44..48], &[7, 0, 0, 0]);
    assert_eq!(u64_at(48), xxhash_rust::xxh3::xxh3_64(&bytes[BLOCK..BLOCK + 8 * 8 + 16 + 32]));
    assert_eq!((u64_at(56), u64_at(64)), (fuzzing::SAMPLE_AGE.newest_ms, fuzzing::SAMPLE_AGE.through));
    assert_eq!(u64_at(72), xxhash_rust::xxh3::xxh3_64(&bytes[BLOCK + 80..BLOCK + 112]), "the directory's checksum");
    assert_eq!(u64_at(80), xxhash_rust::xxh3::xxh3_64(&footer[..80]));
    assert!(footer[88..].iter().all(|&b| b == 0));
    let block = &bytes[..BLOCK];
    assert_eq!(&block[4080..4088], &[3, 0, 0, 0, 0, 0, 0, 0]);
    let sum = xxhash_rust::xxh3::xxh3_64_with_seed(&block[..4088], 1u64.rotate_left(32));
    assert_eq!(block_seed(1, 0), 1 << 32);
    assert_eq!(&block[4088..], &sum.to_le_bytes());
    let first_key = 0x09E3_779B_97F4_A7C1_5F39_CC06_05CE_DC83u128;
    assert_eq!(&bytes[BLOCK + 64..BLOCK + 80], &first_key.to_le_bytes(), "the fence key is the block's first key");
    // The page directory: the page's first key, xxh3 of its fence keys, zeros.
    assert_eq!(&bytes[BLOCK + 80..BLOCK + 96], &first_key.to_le_bytes());
    assert_eq!(&bytes[BLOCK + 96..BLOCK + 104], &xxhash_rust::xxh3::xxh3_64(&first_key.to_le_bytes()).to_le_bytes());
    assert!(bytes[BLOCK + 104..2 * BLOCK].iter().all(|&b| b == 0));
    // The block's entries as columns: the least byte of each, then the widths.
    let columns = crate::columns::Columns::parse(&block[..4080], 40, 3).unwrap();
    assert!(block[columns.end()..4080].iter().all(|&b| b == 0));
    let mut entry = [0u8; 40];
    columns.row(block, 0, &mut entry);
    assert_eq!((&entry[..16], &entry[16..]), (&first_key.to_le_bytes()[..], &[1u8; 24][..]));
}

#[test]
fn the_fuzzing_decoder_reads_the_sample_and_refuses_every_damage() {
    let sample = sample_for_fuzzing(1, VALUE_BYTES);
    let entries = decode_for_fuzzing(&sample, 1).unwrap();
    assert_eq!(entries.len(), 3);
    assert!(entries.windows(2).all(|w| w[0].0 < w[1].0));
    assert_eq!(entries[2].1[..VALUE_BYTES], [3; VALUE_BYTES]);
    assert_eq!(entries[2].1[VALUE_BYTES..], [0; VALUE_BYTES_MAX - VALUE_BYTES]);
    assert!(decode_for_fuzzing(&sample, 2).is_err(), "another run's id");
    for at in 0..sample.len() {
        let mut damaged = sample.clone();
        damaged[at] ^= 1 << (at % 8);
        assert!(decode_for_fuzzing(&damaged, 1).is_err(), "byte {at}");
    }
    for len in 0..sample.len() {
        assert!(decode_for_fuzzing(&sample[..len], 1).is_err(), "cut to {len}");
    }
}

proptest::proptest! {
    /// Any bytes, and the sample with bytes changed: entries or a refusal, never a panic.
    #[test]
    fn any_bytes_decode_without_panic(
        noise in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..9_000),
        edits in proptest::collection::vec((0usize..3 * 4096, proptest::prelude::any::<u8>()), 0..4),
    ) {
        let _ = decode_for_fuzzing(&noise, 1);
        let original = sample_for_fuzzing(1, VALUE_BYTES);
        let mut sample = original.clone();
        for (at, byte) in edits {
            sample[at] = byte;
        }
        proptest::prop_assert_eq!(decode_for_fuzzing(&sample, 1).is_ok(), sample == original);
    }
}

/// A run's write and a merge give the executor back every `ITEMS_PER_TURN` entries.
#[test]
fn a_write_and_a_merge_give_turns_back_every_few_thousand_entries() {
    run(async {
        let (disk, turns, stop) =
            (SimDisk::new(), Rc::new(std::cell::Cell::new(0)), Rc::new(std::cell::Cell::new(false)));
        let (counted, stopped) = (turns.clone(), stop.clone());
        let other = glommio::spawn_local(async move {
            while !stopped.get() {
                counted.set(counted.get() + 1);
                futures_lite::future::yield_now().await;
            }
        });
        let entries: Vec<(u128, Value)> =
            keys(5, 5 * crate::turns::ITEMS_PER_TURN).iter().map(|&k| (k, value(k, 1))).collect();
        let written = Rc::new(write(&disk, 1, 0, &entries).await.unwrap());
        let during_write = turns.replace(0);
        merge(&disk, PREFIX, 2, 1, SHAPE, &[written]).await.unwrap();
        stop.set(true);
        other.await;
        assert!(during_write >= 4 && turns.get() >= 4, "turns: {during_write} writing, {} merging", turns.get());
    });
}
