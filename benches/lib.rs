//! Shared set-up for the criterion benchmarks: a pinned glommio executor that outlives one
//! benchmark's iterations, and a log opened on a temporary directory of the real disk.

use std::rc::Rc;

use glommio::{LocalExecutor, LocalExecutorBuilder, Placement};
use tradeshard_wal::disk::DmaDisk;
use tradeshard_wal::{Wal, WalConfig};

/// A log on a real temporary directory, with the executor that runs it.
pub struct BenchLog {
    pub executor: LocalExecutor,
    pub wal: Rc<Wal<DmaDisk>>,
    _dir: tempfile::TempDir,
}

impl BenchLog {
    /// Opens a fresh log with `config` in a temporary directory under the current one (the
    /// disk being measured, not a tmpfs).
    pub fn open(config: WalConfig) -> BenchLog {
        let dir = tempfile::Builder::new().prefix("tradeshard-bench").tempdir_in(".").expect("temporary directory");
        let executor =
            LocalExecutorBuilder::new(Placement::Fixed(0)).io_memory(64 << 20).make().expect("glommio executor");
        let disk = DmaDisk::new(dir.path()).expect("log directory");
        let wal = executor.run(async move { Wal::open(disk, config, |_, _| {}).await.expect("open log").0 });
        BenchLog { executor, wal: Rc::new(wal), _dir: dir }
    }
}
