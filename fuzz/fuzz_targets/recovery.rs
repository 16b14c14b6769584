//! Recovery over an arbitrary directory image: the input is split into up to three segment
//! files. Opening must end in a log or a typed error, never a panic, and a log that opened
//! must read back exactly the records it replayed.
#![no_main]

use libfuzzer_sys::fuzz_target;
use tradeshard_wal::disk::SimDisk;
use tradeshard_wal::testing::file_name;
use tradeshard_wal::{Wal, WalConfig};

thread_local! {
    static EXECUTOR: glommio::LocalExecutor = glommio::LocalExecutorBuilder::default().make().expect("executor");
}

fuzz_target!(|bytes: &[u8]| {
    let Some((&split, image)) = bytes.split_first() else { return };
    let disk = SimDisk::new();
    let files = 1 + (split % 3) as usize;
    let chunk = image.len().div_ceil(files).max(1);
    for (i, part) in image.chunks(chunk).enumerate() {
        let base = u64::from(split >> 2) * i as u64;
        disk.put_file(&file_name(base), part);
    }
    let config = WalConfig {
        segment_bytes: 1 << 20,
        frame_payload_bytes_max: 64 << 10,
        record_bytes_max: 16 << 10,
        ..WalConfig::default()
    };
    EXECUTOR.with(|executor| {
        executor.run(async {
            let mut replayed = Vec::new();
            let Ok((wal, _)) = Wal::open(disk, config, |seq, r| replayed.push((seq, r.to_vec()))).await else { return };
            for (seq, record) in &replayed {
                assert_eq!(&wal.read(*seq).await.expect("a replayed record reads back"), record);
            }
            let _ = wal.close().await;
        })
    });
});
