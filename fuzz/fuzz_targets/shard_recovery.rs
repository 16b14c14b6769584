//! A shard recovering a log of arbitrary records: the input is a sequence of records (each a
//! little-endian u16 length, then its bytes), appended through a real log on the simulated
//! disk. Opening the shard over it must end in a shard or a typed `BadRecord` error (a record
//! that does not decode or breaks a trade's lifecycle), never a panic or another error.
#![no_main]

use libfuzzer_sys::fuzz_target;
use tradeshard_shard::{Shard, TradeError};
use tradeshard_wal::disk::SimDisk;
use tradeshard_wal::{Preallocation, Wal, WalConfig};

thread_local! {
    static EXECUTOR: glommio::LocalExecutor = glommio::LocalExecutorBuilder::default().make().expect("executor");
}

fuzz_target!(|bytes: &[u8]| {
    let mut records = Vec::new();
    let mut rest = bytes;
    while rest.len() >= 2 {
        let len = (u16::from_le_bytes([rest[0], rest[1]]) as usize).min(rest.len() - 2);
        records.push(rest[2..2 + len].to_vec());
        rest = &rest[2 + len..];
    }
    let config = WalConfig {
        segment_bytes: 256 << 10,
        frame_payload_bytes_max: 16 << 10,
        record_bytes_max: 4 << 10,
        preallocation: Preallocation::Reserved,
        ..WalConfig::default()
    };
    EXECUTOR.with(|executor| {
        executor.run(async {
            let disk = SimDisk::new();
            let (wal, _) = Wal::open(disk.clone(), config.clone(), |_, _| {}).await.expect("an empty log opens");
            for record in &records {
                if wal.append(record).await.is_err() {
                    break;
                }
            }
            wal.close().await.expect("the log closes");
            match Shard::open(disk, config, 1 << 16).await {
                Ok(shard) => {
                    assert!(shard.stats().trades <= records.len() as u64);
                    shard.close().await.expect("the shard closes");
                }
                Err(TradeError::BadRecord { .. }) => {}
                Err(other) => panic!("recovery failed with {other:?}, not BadRecord"),
            }
        })
    });
});
