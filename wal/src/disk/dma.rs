//! The real disk: glommio direct-I/O files (`O_DIRECT`, submitted through io_uring).
//!
//! Writes bypass the page cache, so a completed write is in the device's hands and a crash of
//! the process alone loses nothing; `fdatasync`, or `O_DSYNC` on the file
//! ([`SyncMethod::DsyncWrites`]), is what makes it survive power loss.

use std::cell::{Cell, RefCell};
use std::fs::DirBuilder;
use std::io;
use std::os::unix::fs::DirBuilderExt;
use std::path::{Path, PathBuf};
use std::rc::Rc;

use glommio::io::{Directory, DmaBuffer, DmaFile, OpenOptions, ReadResult};

use super::traits::{Disk, DiskFile, SyncMethod, WriteBuf};

/// A directory on a real filesystem, accessed with direct I/O.
#[derive(Clone)]
pub struct DmaDisk {
    dir: PathBuf,
    // Opened on first use and kept, so that each directory sync is one io_uring fsync.
    dir_handle: Rc<RefCell<Option<Rc<Directory>>>>,
    probed: Rc<Cell<bool>>,
    sync_method: SyncMethod,
}

/// `O_DSYNC` of Linux (asm-generic, the value on every architecture glommio runs on).
const O_DSYNC: i32 = 0o10000;

/// Name of the scratch file used to probe the device before the first real open.
const PROBE_NAME: &str = ".iopoll-probe";

impl DmaDisk {
    /// Uses `dir` (made absolute), creating it (mode 0700) if it does not exist; writes are made durable by
    /// `fdatasync` until [`with_sync_method`](Self::with_sync_method) says otherwise.
    pub fn new(dir: impl AsRef<Path>) -> io::Result<Self> {
        DirBuilder::new().recursive(true).mode(0o700).create(dir.as_ref())?;
        // Absolute, because glommio opens a directory for syncing by a path it does not
        // resolve against the working directory: a relative one failed every directory sync.
        let dir = std::fs::canonicalize(dir.as_ref())?;
        Ok(DmaDisk {
            dir,
            dir_handle: Rc::new(RefCell::new(None)),
            probed: Rc::new(Cell::new(false)),
            sync_method: SyncMethod::Fdatasync,
        })
    }

    /// The same disk, opening its files for `method` (affects files opened from now on).
    pub fn with_sync_method(mut self, method: SyncMethod) -> Self {
        self.sync_method = method;
        self
    }

    fn open_options(&self) -> OpenOptions {
        let mut options = OpenOptions::new();
        options.read(true).write(true);
        if self.sync_method == SyncMethod::DsyncWrites {
            options.custom_flags(O_DSYNC);
        }
        options
    }

    /// The directory this disk holds.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// glommio decides once per device and thread whether reads may use the polled ring, by
    /// reading block 0 of the first file opened there; on a new, empty file that read succeeds
    /// at end-of-file without touching the device, glommio wrongly concludes that polling
    /// works, and every later read fails with EOPNOTSUPP on devices without it (glommio issue
    /// 605). Opening a file that holds a block first makes the probe real.
    ///
    /// Two tasks may probe at once (the first opens of a new directory); each uses a file of
    /// its own, so that neither removes the other's.
    async fn probe_device(&self) -> io::Result<()> {
        static PROBES: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
        if self.probed.get() {
            return Ok(());
        }
        let probe = PROBES.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let path = self.dir.join(format!("{PROBE_NAME}-{probe}"));
        std::fs::write(&path, vec![0u8; 4096])?;
        let file = DmaFile::open(&path).await.map_err(io::Error::from);
        std::fs::remove_file(&path)?;
        file?.close().await.map_err(io::Error::from)?;
        self.probed.set(true);
        Ok(())
    }

    async fn directory(&self) -> io::Result<Rc<Directory>> {
        if let Some(dir) = self.dir_handle.borrow().as_ref() {
            return Ok(dir.clone());
        }
        let dir = Rc::new(Directory::open(&self.dir).await.map_err(io::Error::from)?);
        *self.dir_handle.borrow_mut() = Some(dir.clone());
        Ok(dir)
    }
}

impl WriteBuf for DmaBuffer {
    fn bytes_mut(&mut self) -> &mut [u8] {
        self.as_bytes_mut()
    }
}

impl Disk for DmaDisk {
    type File = DmaFile;

    async fn create(&self, name: &str) -> io::Result<DmaFile> {
        self.probe_device().await?;
        let mut options = self.open_options();
        options.create_new(true);
        options.dma_open(self.dir.join(name)).await.map_err(io::Error::from)
    }

    async fn create_for_fill(&self, name: &str) -> io::Result<DmaFile> {
        self.probe_device().await?;
        let mut options = OpenOptions::new();
        options.read(true).write(true).create_new(true);
        options.dma_open(self.dir.join(name)).await.map_err(io::Error::from)
    }

    async fn open(&self, name: &str) -> io::Result<DmaFile> {
        self.probe_device().await?;
        self.open_options().dma_open(self.dir.join(name)).await.map_err(io::Error::from)
    }

    async fn remove(&self, name: &str) -> io::Result<()> {
        glommio::io::remove(self.dir.join(name)).await.map_err(io::Error::from)
    }

    async fn rename(&self, from: &str, to: &str) -> io::Result<()> {
        glommio::io::rename(self.dir.join(from), self.dir.join(to)).await.map_err(io::Error::from)
    }

    async fn sync_dir(&self) -> io::Result<()> {
        self.directory().await?.sync().await.map_err(io::Error::from)
    }

    fn list(&self) -> io::Result<Vec<String>> {
        let mut names = Vec::new();
        for entry in std::fs::read_dir(&self.dir)? {
            if let Some(name) = entry?.file_name().to_str().filter(|n| *n != PROBE_NAME) {
                names.push(name.to_string());
            }
        }
        Ok(names)
    }

    fn path_of(&self, name: &str) -> PathBuf {
        self.dir.join(name)
    }

    fn sync_method(&self) -> SyncMethod {
        self.sync_method
    }
}

impl DiskFile for DmaFile {
    type WriteBuf = DmaBuffer;
    type ReadBuf = ReadResult;

    fn alloc(&self, len: usize) -> DmaBuffer {
        self.alloc_dma_buffer(len)
    }

    async fn write_at(&self, buf: DmaBuffer, offset: u64) -> io::Result<usize> {
        DmaFile::write_at(self, buf, offset).await.map_err(io::Error::from)
    }

    async fn read_at(&self, offset: u64, len: usize) -> io::Result<ReadResult> {
        DmaFile::read_at(self, offset, len).await.map_err(io::Error::from)
    }

    async fn fdatasync(&self) -> io::Result<()> {
        DmaFile::fdatasync(self).await.map_err(io::Error::from)
    }

    async fn preallocate(&self, len: u64) -> io::Result<()> {
        DmaFile::pre_allocate(self, len, false).await.map_err(io::Error::from)
    }

    async fn truncate(&self, len: u64) -> io::Result<()> {
        DmaFile::truncate(self, len).await.map_err(io::Error::from)
    }

    async fn size(&self) -> io::Result<u64> {
        DmaFile::file_size(self).await.map_err(io::Error::from)
    }

    async fn punch_hole(&self, offset: u64, len: u64) -> io::Result<()> {
        DmaFile::deallocate(self, offset, len).await.map_err(io::Error::from)
    }
}
