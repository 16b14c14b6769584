//! Fence keys left on disk once a run is past its key window (`fences.rs`): every key still
//! found, ranges still listed and merges still whole, at a page's cost in memory and one read
//! more a lookup (none once the page is cached), and a page damaged after the open refused.

use super::*;

/// A run of about six hundred blocks (three pages of fence keys, the last one partial), opened
/// from its file, with its entries and fence keys as the open held them.
async fn run_of_three_pages(disk: &SimDisk, id: u64) -> (Run<SimDisk>, Vec<(u128, Value)>, Vec<u128>) {
    let entries: Vec<(u128, Value)> = keys(21, 110_000).iter().map(|&k| (k, value(k, 1))).collect();
    write(disk, id, 3, &entries).await.unwrap();
    let run = Run::open(disk, PREFIX, id, VALUE_BYTES).await.unwrap();
    run.read_filter().await.unwrap();
    let fences = run.fences.borrow().held().to_vec();
    assert!((513..768).contains(&fences.len()), "{} blocks", fences.len());
    (run, entries, fences)
}

#[test]
fn a_run_past_its_window_keeps_a_few_bytes_of_fences_and_finds_every_key() {
    run(async {
        let disk = SimDisk::new();
        let (run, entries, fences) = run_of_three_pages(&disk, 1).await;
        let held = run.memory_bytes();
        run.forget_filter();
        assert!(run.fences_paged() && run.past_window());
        assert!(held > 600 * 16 && run.memory_bytes() == 3 * 24, "{held} bytes held, then {}", run.memory_bytes());

        let keys: Vec<u128> = entries.iter().map(|entry| entry.0).collect();
        for &(key, value) in entries.iter().step_by(7) {
            assert_eq!(run.get(key, &no_cache()).await.unwrap(), Some(value));
        }
        // Around every page's first block, and past both ends.
        let mut probes = vec![0, u128::MAX, keys[0] - 1, keys[keys.len() - 1] + 1];
        for first in [256, 512] {
            probes.extend([fences[first] - 1, fences[first], fences[first] + 1, fences[first - 1]]);
        }
        for key in probes {
            let want = keys.binary_search(&key).ok().map(|at| entries[at].1);
            assert_eq!(run.get(key, &no_cache()).await.unwrap(), want, "{key:#x}");
        }

        // A page costs one read more; once cached, nothing more than the block's. A failed
        // read of a page is the lookup's error, and keeps nothing.
        let blocks = BlockCache::new(1 << 20);
        let in_block = |n: usize| entries[keys.binary_search(&fences[n]).unwrap()];
        disk.fail_op(disk.ops() + 1, Fault::Eio);
        assert!(matches!(run.get(in_block(300).0, &blocks).await, Err(TradeError::Log(LogError::Io { .. }))));
        assert_eq!(blocks.stats().entries, 0);
        let ops = disk.ops();
        assert_eq!(run.get(in_block(300).0, &no_cache()).await.unwrap(), Some(in_block(300).1));
        assert_eq!(disk.ops() - ops, 2, "the page and the block");
        let ops = disk.ops();
        assert_eq!(run.get(in_block(300).0, &blocks).await.unwrap(), Some(in_block(300).1));
        assert_eq!(run.get(in_block(301).0, &blocks).await.unwrap(), Some(in_block(301).1));
        assert_eq!(run.get(in_block(300).0, &blocks).await.unwrap(), Some(in_block(300).1));
        assert_eq!(disk.ops() - ops, 3, "the page once, each block once");

        // A listing across the second page's first block walks back into the first page.
        let (low, high) = (fences[250], fences[260] + 5);
        let want: Vec<u128> = keys.iter().rev().filter(|&&k| low <= k && k <= high).copied().collect();
        assert_eq!(run.keys_down(low, high, usize::MAX, &no_cache()).await.unwrap(), want);
        let top: Vec<u128> = keys.iter().rev().take(300).copied().collect();
        assert_eq!(run.keys_down(0, u128::MAX, 300, &blocks).await.unwrap(), top);

        // A merge reads every block of the run against its paged fences.
        let other: Vec<(u128, Value)> = self::keys(22, 500).iter().map(|&k| (k, value(k, 2))).collect();
        let newer = Rc::new(write(&disk, 2, 0, &other).await.unwrap());
        let merged = merge(&disk, PREFIX, 3, 4, SHAPE, &[Rc::new(run), newer]).await.unwrap();
        let mut model: BTreeMap<u128, Value> = entries.into_iter().collect();
        model.extend(other);
        let bytes = disk.read_file(&Run::<SimDisk>::file_name(PREFIX, 3)).unwrap();
        assert_eq!(decode_for_fuzzing(&bytes, 3).unwrap().into_iter().collect::<BTreeMap<_, _>>(), model);
        assert_eq!(merged.entries(), model.len() as u64);
    });
}

#[test]
fn a_page_of_fences_damaged_after_the_open_is_refused_with_its_offset() {
    run(async {
        let disk = SimDisk::new();
        let (run, entries, fences) = run_of_three_pages(&disk, 1).await;
        run.forget_filter();
        let keys: Vec<u128> = entries.iter().map(|entry| entry.0).collect();
        let in_block = |n: usize| entries[keys.binary_search(&fences[n]).unwrap()];
        let page_1 = run.footer.index_offset() + run.footer.bloom_words * 8 + 4096;
        let name = Run::<SimDisk>::file_name(PREFIX, 1);
        // The fence key of block 300 (page 1, index 44), one bit up: a lookup trusting it
        // would look for block 299's keys in the wrong block, or miss them.
        disk.flip_bit(&name, page_1 + 44 * 16 + 15, 0);
        for n in [299, 300, 400] {
            let (path, offset, reason) = corruption(run.get(in_block(n).0, &no_cache()).await.unwrap_err());
            assert_eq!(path, format!("sim/{name}"));
            assert_eq!((offset, reason), (page_1, "a page of run fence keys changed since the run was opened"));
        }
        for n in [0, 255, 512, 600] {
            assert_eq!(run.get(in_block(n).0, &no_cache()).await.unwrap(), Some(in_block(n).1), "block {n}");
        }
        let (_, offset, _) = corruption(merge(&disk, PREFIX, 2, 4, SHAPE, &[Rc::new(run)]).await.unwrap_err());
        assert_eq!(offset, page_1);
        assert_eq!(disk.file_len(&Run::<SimDisk>::file_name(PREFIX, 2)), None, "no merged run left");
    });
}

#[test]
fn an_open_reads_the_page_directory_alone_and_holds_the_fences_once_the_filter_is_read() {
    run(async {
        let disk = SimDisk::new();
        let (_, entries, fences) = run_of_three_pages(&disk, 1).await;
        let in_block = |n: usize| entries[entries.binary_search_by_key(&fences[n], |entry| entry.0).unwrap()];
        let ops = disk.ops();
        let opened = Run::open(&disk, PREFIX, 1, VALUE_BYTES).await.unwrap();
        assert_eq!(disk.ops() - ops, 4, "the file's open and size, its footer and its page directory");
        assert!(opened.fences_paged() && matches!(*opened.bloom.borrow(), FilterState::Unread));
        assert_eq!(opened.memory_bytes(), 3 * 24);
        let ops = disk.ops();
        assert_eq!(opened.get(in_block(300).0, &no_cache()).await.unwrap(), Some(in_block(300).1));
        assert_eq!(disk.ops() - ops, 2, "before the filter is read: the page and the block");
        opened.read_filter().await.unwrap();
        assert_eq!(opened.fences.borrow().held(), &fences[..], "held once the run is known to stay within the window");
        let ops = disk.ops();
        assert_eq!(opened.get(in_block(300).0, &no_cache()).await.unwrap(), Some(in_block(300).1));
        assert_eq!(disk.ops() - ops, 1, "the block alone");

        // Left on disk on purpose before the filter is read (an old run of a store only
        // listed): the filter's read reads nothing, and the fences stay paged.
        let old = Run::open(&disk, PREFIX, 1, VALUE_BYTES).await.unwrap();
        assert!(old.page_fences(), "left on disk on purpose now");
        assert!(!old.page_fences(), "once");
        let ops = disk.ops();
        old.read_filter().await.unwrap();
        assert_eq!(disk.ops(), ops, "nothing read");
        assert!(old.fences_paged() && matches!(*old.bloom.borrow(), FilterState::Unread));
        let want: Vec<u128> = entries.iter().rev().take(600).map(|entry| entry.0).collect();
        assert_eq!(old.keys_down(0, u128::MAX, 600, &no_cache()).await.unwrap(), want);
    });
}

#[test]
fn a_damaged_page_directory_fails_the_open_and_one_not_of_its_fences_fails_the_filters_read() {
    run(async {
        let disk = SimDisk::new();
        let (run, entries, fences) = run_of_three_pages(&disk, 1).await;
        let footer = run.footer;
        let name = Run::<SimDisk>::file_name(PREFIX, 1);
        let pristine = disk.read_file(&name).unwrap();
        let directory_at = footer.directory_offset();
        disk.flip_bit(&name, directory_at + 32 + 3, 5);
        let (_, offset, reason) = corruption(Run::open(&disk, PREFIX, 1, VALUE_BYTES).await.unwrap_err());
        assert_eq!((offset, reason), (directory_at, "run page directory checksum mismatch"));

        // A directory changed by `change`, and every checksum over it made again (as only a
        // writer's bug could make one): the open takes it, a read of the page that disagrees
        // with it is refused, and so is the filter's read and the fuzz decoder's.
        let (index_at, footer_at) = (footer.index_offset() as usize, footer.footer_offset() as usize);
        let directory = directory_at as usize..directory_at as usize + footer.directory_bytes() as usize;
        let rewritten = |change: &dyn Fn(&mut [u8])| {
            let mut bytes = pristine.clone();
            change(&mut bytes[directory.clone()]);
            let sum =
                |range: std::ops::Range<usize>, bytes: &[u8]| xxhash_rust::xxh3::xxh3_64(&bytes[range]).to_le_bytes();
            let at_72 = sum(directory.clone(), &bytes);
            bytes[footer_at + 72..footer_at + 80].copy_from_slice(&at_72);
            let at_48 = sum(index_at..directory.end, &bytes);
            bytes[footer_at + 48..footer_at + 56].copy_from_slice(&at_48);
            let at_80 = sum(footer_at..footer_at + 80, &bytes);
            bytes[footer_at + 80..footer_at + 88].copy_from_slice(&at_80);
            bytes
        };
        let in_block = |n: usize| entries[entries.binary_search_by_key(&fences[n], |entry| entry.0).unwrap()];
        let page_1 = footer.fences_offset() + 4096;
        // Page 1's checksum, one bit off; then its first key, one below the page's.
        let lower_first = (fences[256] - 1).to_le_bytes();
        type Change<'a> = &'a dyn Fn(&mut [u8]);
        let changes: [(Change, &str); 2] = [
            (&|directory| directory[32 + 16] ^= 1, "a page of run fence keys changed since the run was opened"),
            (
                &|directory| directory[32..48].copy_from_slice(&lower_first),
                "a page of run fence keys that disagrees with its directory",
            ),
        ];
        for (change, page_reason) in changes {
            let bytes = rewritten(change);
            disk.put_file(&name, &bytes);
            let opened = Run::open(&disk, PREFIX, 1, VALUE_BYTES).await.unwrap();
            assert_eq!(opened.get(in_block(10).0, &no_cache()).await.unwrap(), Some(in_block(10).1));
            for key in [in_block(300).0, fences[256], fences[256] + 1] {
                let (_, offset, reason) = corruption(opened.get(key, &no_cache()).await.unwrap_err());
                assert_eq!((offset, reason), (page_1, page_reason), "{key:#x}");
            }
            let (_, offset, reason) = corruption(opened.read_filter().await.unwrap_err());
            assert_eq!((offset, reason), (footer.index_offset(), "a run page directory that is not its fence keys'"));
            assert!(decode_for_fuzzing(&bytes, 1).is_err());
        }
    });
}
