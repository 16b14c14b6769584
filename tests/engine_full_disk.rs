//! A real full disk: the engine on a small ext4 filesystem that this test makes in a file and
//! mounts through a loop device (skipped, with a message, where that is not permitted).
//!
//! Writes run until the disk is full. The rules checked: the failure is `DiskFull` (or
//! `Poisoned` by it, for writes sent after), and no write to that shard is acknowledged after
//! it (another shard may still fill the segment space it already holds); every
//! acknowledged trade still reads back while the disk is full; once space is freed (a ballast
//! file removed) the engine reopens with every acknowledged trade exactly once, and takes
//! writes again.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use tradeshard_engine::{Engine, Error, Options, TradeId};
use tradeshard_tests::new_trade;

/// A loop-mounted ext4 filesystem, unmounted on drop.
struct SmallDisk {
    _image_dir: tempfile::TempDir,
    mount: PathBuf,
}

impl SmallDisk {
    fn make(mib: u64) -> Option<SmallDisk> {
        let image_dir = tempfile::tempdir().ok()?;
        let image = image_dir.path().join("disk.img");
        let mount = image_dir.path().join("mnt");
        std::fs::create_dir(&mount).ok()?;
        std::fs::File::create(&image).ok()?.set_len(mib << 20).ok()?;
        let run = |program: &str, args: &[&std::ffi::OsStr]| {
            Command::new(program).args(args).output().map(|o| o.status.success()).unwrap_or(false)
        };
        if !run("mkfs.ext4", &["-q".as_ref(), "-F".as_ref(), image.as_os_str()]) {
            eprintln!("skipped: mkfs.ext4 is not available");
            return None;
        }
        if !run("mount", &["-o".as_ref(), "loop".as_ref(), image.as_os_str(), mount.as_os_str()]) {
            eprintln!("skipped: mounting a loop device is not permitted here");
            return None;
        }
        Some(SmallDisk { _image_dir: image_dir, mount })
    }
}

impl Drop for SmallDisk {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(&self.mount).status();
    }
}

fn options(dir: &Path) -> Options {
    Options {
        physical_shards: Some(2),
        executors: Some(1),
        pin: false,
        segment_bytes: 1 << 20,
        io_memory_bytes: 4 << 20,
        // Small, so that reads on the full disk go to the disk.
        cache_bytes: 64 << 10,
        ..Options::new(dir)
    }
}

fn is_disk_full(error: &Error) -> bool {
    match error {
        Error::DiskFull { .. } => true,
        Error::Poisoned { cause } => matches!(**cause, Error::DiskFull { .. }),
        _ => false,
    }
}

/// The physical shard whose log a full-disk error names (`.../shards/NNNN/...`): a create may
/// fail in its buyer's shard or in its order number's home shard.
fn full_shard(error: &Error) -> Option<usize> {
    let path = match error {
        Error::DiskFull { path, .. } => path,
        Error::Poisoned { cause } => match &**cause {
            Error::DiskFull { path, .. } => path,
            _ => return None,
        },
        _ => return None,
    };
    let mut parts = path.iter().map(|part| part.to_string_lossy());
    parts.by_ref().find(|part| part == "shards")?;
    parts.next()?.parse().ok()
}

#[test]
fn a_full_disk_refuses_writes_keeps_reads_and_recovers_once_space_is_freed() {
    let Some(disk) = SmallDisk::make(32) else { return };
    let ballast = disk.mount.join("ballast");
    std::fs::write(&ballast, vec![1u8; 4 << 20]).unwrap();
    let dir = disk.mount.join("data");
    let engine = Engine::open(options(&dir)).unwrap();
    let handle = engine.handle();
    let acked: Arc<Mutex<Vec<(TradeId, u64)>>> = Arc::default();
    // Per shard (each has its own log): set once a write to it failed for the full disk.
    let full: Arc<Vec<AtomicBool>> = Arc::new((0..2).map(|_| AtomicBool::new(false)).collect());
    let routing = handle.routing();
    let writers: Vec<_> = (0..8u64)
        .map(|writer| {
            let (handle, acked, full) = (handle.clone(), acked.clone(), full.clone());
            std::thread::spawn(move || -> Result<(), String> {
                for order in 0..200_000u64 {
                    let buyer = 1 + writer * 1_000_000 + order;
                    let shard = routing.physical_of_user(buyer) as usize;
                    // Sent after a write to the buyer's shard failed: must not be acknowledged (a
                    // create always writes there; when its order number lives in another
                    // shard it writes there first).
                    let after_full = full[shard].load(Ordering::Acquire);
                    match handle.create_trade_blocking(new_trade(buyer, order, 100 + order)) {
                        Ok(receipt) if after_full => {
                            return Err(format!("{} acknowledged after shard {shard} was full", receipt.id))
                        }
                        Ok(receipt) => acked.lock().unwrap().push((receipt.id, buyer)),
                        Err(error) if is_disk_full(&error) => {
                            let failed = full_shard(&error).ok_or(format!("{error:?} names no shard"))?;
                            full[failed].store(true, Ordering::Release);
                            if full.iter().all(|f| f.load(Ordering::Acquire)) {
                                return Ok(());
                            }
                        }
                        Err(error) => return Err(format!("a write failed with {error:?}, not DiskFull")),
                    }
                }
                Err("the disk never filled".into())
            })
        })
        .collect();
    for writer in writers {
        writer.join().unwrap().unwrap();
    }
    let acked = acked.lock().unwrap().clone();
    assert!(acked.len() > 1000, "the disk filled after only {} trades", acked.len());
    // Full: reads work, writes are refused.
    for (id, buyer) in acked.iter().step_by(97) {
        assert_eq!(handle.get_blocking(*id).unwrap().buyer_id, *buyer);
    }
    for buyer in 1..=4 {
        assert!(is_disk_full(&handle.create_trade_blocking(new_trade(buyer, 7, 7)).unwrap_err()));
    }
    let _ = engine.close();

    std::fs::remove_file(&ballast).unwrap();
    let engine = Engine::open(options(&dir)).unwrap();
    let handle = engine.handle();
    let ids: Vec<TradeId> = acked.iter().map(|(id, _)| *id).collect();
    for (chunk, expected) in ids.chunks(512).zip(acked.chunks(512)) {
        for (result, (id, buyer)) in handle.get_many_blocking(chunk).unwrap().into_iter().zip(expected) {
            let trade = result.unwrap_or_else(|e| panic!("acknowledged {id} lost: {e}"));
            assert_eq!(trade.buyer_id, *buyer);
        }
    }
    for (_, buyer) in acked.iter().step_by(211) {
        assert_eq!(handle.list_user_trades_blocking(*buyer, 10, None).unwrap().len(), 1, "buyer {buyer}: once");
    }
    let stats = handle.stats_blocking().unwrap();
    assert!(stats.trades >= acked.len() as u64 && stats.trades <= acked.len() as u64 + 8, "{}", stats.trades);
    handle.create_trade_blocking(new_trade(9, 9, 9)).expect("writes succeed once space is freed");
    engine.close().unwrap();
    drop(disk);
}
