//! The traits through which the log touches storage (`Disk`, `DiskFile` and the `WriteBuf`
//! they write from), how writes become durable (`SyncMethod`), and the promises the log relies on.
//!
//! The calls are the ones whose crash behaviour the log relies on, and no more: a write is not
//! durable until `fdatasync` on its file returns, unless the disk writes durably
//! ([`SyncMethod::DsyncWrites`]: then a write is durable once it completes), and a create or
//! remove is not durable until `sync_dir` returns.
//!
//! Futures are not `Send`: a disk belongs to the one executor that owns the log.

#![allow(async_fn_in_trait)]

use std::io;
use std::ops::Deref;
use std::path::PathBuf;

/// How the log's writes become durable.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SyncMethod {
    /// Each write is followed by an `fdatasync` of its file: two operations per flush.
    Fdatasync,
    /// Files are opened with `O_DSYNC`, so a write returns only once it is durable (the device
    /// writes it with FUA, or the kernel flushes after it): one operation per flush, and the
    /// log skips the `fdatasync` after its writes. Files are still synced where the length or
    /// the directory changes.
    DsyncWrites,
}

/// A directory of files.
pub trait Disk: Clone + 'static {
    /// An open file of this disk.
    type File: DiskFile;

    /// Creates `name`, failing if it exists; opened for reading and writing.
    async fn create(&self, name: &str) -> io::Result<Self::File>;
    /// Creates `name` like `create`, opened for filling: its writes are durable only after
    /// `fdatasync`, whatever the disk's sync method, so that filling a file with many writes
    /// costs one sync at the end, not one per write.
    async fn create_for_fill(&self, name: &str) -> io::Result<Self::File> {
        self.create(name).await
    }
    /// Opens the existing file `name` for reading and writing.
    async fn open(&self, name: &str) -> io::Result<Self::File>;
    /// Removes `name`.
    async fn remove(&self, name: &str) -> io::Result<()>;
    /// Renames `from` to `to`, replacing `to` if it exists.
    async fn rename(&self, from: &str, to: &str) -> io::Result<()>;
    /// Makes earlier creates and removes durable.
    async fn sync_dir(&self) -> io::Result<()>;
    /// Names of the files in the directory, in no particular order.
    fn list(&self) -> io::Result<Vec<String>>;
    /// The path of `name`, for error messages.
    fn path_of(&self, name: &str) -> PathBuf;
    /// How this disk's writes become durable: with [`SyncMethod::DsyncWrites`] a completed
    /// write is durable and needs no `fdatasync`.
    fn sync_method(&self) -> SyncMethod;
}

/// A buffer the disk can write without copying it again (aligned for direct I/O).
pub trait WriteBuf {
    /// The whole buffer, to fill before writing.
    fn bytes_mut(&mut self) -> &mut [u8];
}

/// An open file.
pub trait DiskFile: 'static {
    /// The buffer type `write_at` takes.
    type WriteBuf: WriteBuf;
    /// The buffer type `read_at` returns.
    type ReadBuf: Deref<Target = [u8]>;

    /// A buffer of `len` bytes (a multiple of the block size); its contents are unspecified.
    fn alloc(&self, len: usize) -> Self::WriteBuf;
    /// Writes the whole buffer at `offset` (block aligned); returns how many bytes were written.
    async fn write_at(&self, buf: Self::WriteBuf, offset: u64) -> io::Result<usize>;
    /// Reads up to `len` bytes at `offset`; fewer only at the end of the file.
    async fn read_at(&self, offset: u64, len: usize) -> io::Result<Self::ReadBuf>;
    /// Makes every completed write of this file durable.
    async fn fdatasync(&self) -> io::Result<()>;
    /// Reserves space for the file to grow to `len` bytes and sets its length to `len`; the
    /// new bytes read as zeros (durable after the next `fdatasync`).
    async fn preallocate(&self, len: u64) -> io::Result<()>;
    /// Sets the file's length (durable after the next `fdatasync`).
    async fn truncate(&self, len: u64) -> io::Result<()>;
    /// The file's current length.
    async fn size(&self) -> io::Result<u64>;
    /// Frees the space of `len` bytes at `offset` (block aligned) without changing the file's
    /// length: the range reads as zeros, at once, and durably after the next `fdatasync`
    /// (until then a crash may leave any sector of it as it was).
    async fn punch_hole(&self, offset: u64, len: u64) -> io::Result<()>;
}
