//! Run files as earlier builds wrote them (fixtures of versions 2, 3 and 4, and a version 1
//! footer made from a version 2 file): each still reads, opens as its version asks, and merges
//! into the version written now.

use super::*;

/// Files of the two sample runs as the build before wrote them (version 2: entries back to
/// back).
const VERSION_2_SAMPLES: [(&[u8], usize); 2] = [
    (include_bytes!("../fixtures/version-2-three-entries.run"), 24),
    (include_bytes!("../fixtures/version-2-three-wide-entries.run"), 56),
];

#[test]
fn a_version_2_file_still_reads_as_it_was_written() {
    for (bytes, value_bytes) in VERSION_2_SAMPLES {
        assert_eq!(&bytes[bytes.len() - BLOCK..][..6], b"TSRN\x02\x00");
        assert_eq!(
            decode_for_fuzzing(bytes, 1).unwrap(),
            decode_for_fuzzing(&sample_for_fuzzing(1, value_bytes), 1).unwrap()
        );
        every_flip_is_refused(bytes);
    }
    run(async {
        let disk = SimDisk::new();
        let name = Run::<SimDisk>::file_name(PREFIX, 1);
        disk.put_file(&name, VERSION_2_SAMPLES[0].0);
        let old = Run::open(&disk, PREFIX, 1, VALUE_BYTES).await.unwrap();
        let sample = decode_for_fuzzing(&sample_for_fuzzing(1, VALUE_BYTES), 1).unwrap();
        for (key, value) in &sample {
            assert_eq!(old.get(*key, &no_cache()).await.unwrap(), Some(*value));
        }
        // A merge of it writes the new layout.
        let merged = merge(&disk, PREFIX, 2, 1, SHAPE, &[Rc::new(old)]).await.unwrap();
        assert!(merged.footer.columns);
        for (key, value) in &sample {
            assert_eq!(merged.get(*key, &no_cache()).await.unwrap(), Some(*value));
        }
    });
}

/// The sample run as earlier builds wrote it: version 3 (no checksum of the fence keys alone,
/// so an open reads and checks the whole index section, filter included) and version 4 (a
/// checksum of the fence keys alone, no page directory, so an open reads the fence keys whole).
const VERSION_3_SAMPLE: &[u8] = include_bytes!("../fixtures/version-3-three-entries.run");
const VERSION_4_SAMPLE: &[u8] = include_bytes!("../fixtures/version-4-three-entries.run");

/// Checks that `bytes`, the sample of `version`, decodes as the sample written now, refuses
/// every damage, and opens: `check` is asked of the run opened, which then reads its filter,
/// finds every key and merges into the version written now.
fn an_old_sample_reads_and_merges(bytes: &'static [u8], version: u8, check: fn(&Run<SimDisk>)) {
    assert_eq!(&bytes[bytes.len() - BLOCK..][..6], &[b'T', b'S', b'R', b'N', version, 0]);
    let sample = decode_for_fuzzing(&sample_for_fuzzing(1, VALUE_BYTES), 1).unwrap();
    assert_eq!(decode_for_fuzzing(bytes, 1).unwrap(), sample);
    every_flip_is_refused(bytes);
    run(async {
        let disk = SimDisk::new();
        disk.put_file(&Run::<SimDisk>::file_name(PREFIX, 1), bytes);
        let old = Run::open(&disk, PREFIX, 1, VALUE_BYTES).await.unwrap();
        check(&old);
        old.read_filter().await.unwrap();
        assert!(matches!(*old.bloom.borrow(), FilterState::Held(_)));
        for (key, value) in &sample {
            assert_eq!(old.get(*key, &no_cache()).await.unwrap(), Some(*value));
        }
        let merged = merge(&disk, PREFIX, 2, 1, SHAPE, &[Rc::new(old)]).await.unwrap();
        assert!(matches!(merged.footer.fence_check, format::FenceCheck::Directory(_)), "a merge writes version 5");
    });
}

#[test]
fn a_version_3_file_still_reads_and_opens_with_its_filter() {
    an_old_sample_reads_and_merges(VERSION_3_SAMPLE, 3, |old| {
        assert!(matches!(*old.bloom.borrow(), FilterState::Held(_)), "the filter read at the open");
    });
}

#[test]
fn a_version_4_file_still_reads_and_opens_with_its_fence_keys() {
    an_old_sample_reads_and_merges(VERSION_4_SAMPLE, 4, |old| {
        assert!(matches!(*old.bloom.borrow(), FilterState::Unread), "the filter left for later");
        assert_eq!(old.fences.borrow().held().len(), 1, "the fence keys read at the open");
    });
}

#[test]
fn a_version_1_footer_still_opens_with_its_keys_of_unknown_age() {
    let mut bytes = VERSION_2_SAMPLES[0].0.to_vec();
    let len = bytes.len() as u64;
    let footer_at = 2 * BLOCK;
    let aged = format::Footer::decode(&bytes[footer_at..], 1, len).unwrap();
    assert_eq!(aged.age, fuzzing::SAMPLE_AGE);
    // Version 1: no age fields, the checksum at 56 over the 56 bytes before it.
    bytes[footer_at + 4] = 1;
    bytes[footer_at + 56..footer_at + 80].fill(0);
    let sum = xxhash_rust::xxh3::xxh3_64(&bytes[footer_at..footer_at + 56]);
    bytes[footer_at + 56..footer_at + 64].copy_from_slice(&sum.to_le_bytes());
    let old = format::Footer::decode(&bytes[footer_at..], 1, len).unwrap();
    assert_eq!(old, format::Footer { age: KeysAge::UNKNOWN, ..aged });
    assert_eq!(
        decode_for_fuzzing(&bytes, 1).unwrap(),
        decode_for_fuzzing(&sample_for_fuzzing(1, VALUE_BYTES), 1).unwrap()
    );
    // A version 1 footer with an age where its zeros belong, or a version 6, is refused.
    let mut aged_v1 = bytes.clone();
    aged_v1[footer_at + 64] = 1;
    assert!(format::Footer::decode(&aged_v1[footer_at..], 1, len).is_err());
    let mut v6 = sample_for_fuzzing(1, VALUE_BYTES);
    v6[footer_at + 4] = 6;
    let sum = xxhash_rust::xxh3::xxh3_64(&v6[footer_at..footer_at + 80]);
    v6[footer_at + 80..footer_at + 88].copy_from_slice(&sum.to_le_bytes());
    assert_eq!(format::Footer::decode(&v6[footer_at..], 1, len).err(), Some("a run file of an unknown format version"));
}

/// A bit flipped in every seventh byte of `bytes`, each in its own copy, is refused.
fn every_flip_is_refused(bytes: &[u8]) {
    for at in (0..bytes.len()).step_by(7) {
        let mut damaged = bytes.to_vec();
        damaged[at] ^= 1 << (at % 8);
        assert!(decode_for_fuzzing(&damaged, 1).is_err(), "byte {at}");
    }
}
