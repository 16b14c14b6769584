//! Making segment files: the next one is ready, its header durable and its name durable,
//! before any frame is written into it.
//!
//! A free file (a segment retention removed, `recycle.rs`) is used first, whatever the policy:
//! its blocks are written already. Otherwise, under `Preallocation::Zeroed` the next segment is
//! prepared in the background while the current one fills (from the first flush after an
//! open; at the open itself only when the log has no segment yet or its tail is three quarters
//! full), unless a free file waits: created as `PREPARED_NAME`, reserved, filled with zeros
//! and synced, so that appends overwrite written blocks and each fdatasync flushes data alone.
//! At the roll its header is written and synced, and only then is it renamed to its segment
//! name and the directory synced: a crash leaves either no new segment or a complete empty
//! one, and a leftover prepared file is removed by recovery. Under `Preallocation::Reserved`
//! the segment is created, its header written, its space reserved with `fallocate`, all
//! synced, at the roll.

use glommio::task::JoinHandle;

use crate::config::{Preallocation, WalConfig};
use crate::disk::{Disk, DiskFile, SyncMethod, WriteBuf};
use crate::error::{Error, Result};
use crate::layout::{BLOCK_BYTES, SEGMENT_HEADER_BYTES};
use crate::recycle::{self, FreeSegments};
use crate::segment::{self, SegmentHeader, PREPARED_NAME};

/// Zeros are written in pieces of this size.
const ZERO_CHUNK_BYTES: u64 = 1 << 20;

/// A segment file ready for frames, and what making it cost.
pub(crate) struct MadeSegment<F> {
    pub name: String,
    pub file: F,
    pub bytes_written: u64,
    pub fsyncs: u64,
    pub created_ms: u64,
    /// Made from a free file (a segment retention removed).
    pub recycled: bool,
}

type Preparing<F> = JoinHandle<Result<F>>;

pub(crate) struct SegmentMaker<D: Disk> {
    disk: D,
    shard_id: u32,
    segment_bytes: u64,
    preallocation: Preallocation,
    preparing: Option<Preparing<D::File>>,
    free: FreeSegments,
}

impl<D: Disk> SegmentMaker<D> {
    pub(crate) fn new(disk: D, config: &WalConfig, free: FreeSegments) -> Self {
        SegmentMaker {
            disk,
            shard_id: config.shard_id,
            segment_bytes: config.segment_bytes,
            preallocation: config.preallocation,
            preparing: None,
            free,
        }
    }

    /// Starts preparing the next segment in the background, if that is the policy, none is
    /// under way and no free file will be the next segment.
    pub(crate) fn prepare_next(&mut self) {
        if self.preallocation == Preallocation::Zeroed && self.preparing.is_none() && self.free.borrow().is_empty() {
            let task = prepare(self.disk.clone(), self.segment_bytes);
            self.preparing = Some(glommio::spawn_local(task).detach());
        }
    }

    /// Waits for a preparation under way, so that no task touches the directory after close.
    pub(crate) async fn finish(&mut self) {
        if let Some(preparing) = self.preparing.take() {
            let _ = preparing.await;
        }
    }

    /// The segment whose first record will be `base_seq`, durable in name and header.
    pub(crate) async fn make(&mut self, base_seq: u64, chain_seed: u64) -> Result<MadeSegment<D::File>> {
        let header = SegmentHeader { shard_id: self.shard_id, base_seq, chain_seed, created_ms: segment::now_ms() };
        let name = segment::file_name(base_seq);
        let created_ms = header.created_ms;
        if let Some(file) = recycle::take(&self.disk, &self.free, &header).await? {
            return Ok(MadeSegment { name, file, bytes_written: BLOCK_BYTES, fsyncs: 2, created_ms, recycled: true });
        }
        match self.preallocation {
            Preallocation::Zeroed => {
                self.prepare_next();
                let preparing = self.preparing.take().expect("prepare_next started one");
                let closed =
                    || Error::io("prepare", self.disk.path_of(PREPARED_NAME), std::io::ErrorKind::Interrupted.into());
                let file = preparing.await.ok_or_else(closed)??;
                write_header(&self.disk, &file, PREPARED_NAME, &header).await?;
                let disk = &self.disk;
                disk.rename(PREPARED_NAME, &name).await.map_err(|e| Error::io("rename", disk.path_of(&name), e))?;
                sync_dir(disk).await?;
                self.prepare_next();
                Ok(MadeSegment {
                    name,
                    file,
                    bytes_written: self.segment_bytes,
                    fsyncs: 2,
                    created_ms,
                    recycled: false,
                })
            }
            Preallocation::Reserved => {
                let disk = &self.disk;
                let file = disk.create(&name).await.map_err(|e| Error::io("create", disk.path_of(&name), e))?;
                file.preallocate(self.segment_bytes)
                    .await
                    .map_err(|e| Error::io("fallocate", disk.path_of(&name), e))?;
                write_header(disk, &file, &name, &header).await?;
                sync_dir(disk).await?;
                Ok(MadeSegment { name, file, bytes_written: BLOCK_BYTES, fsyncs: 1, created_ms, recycled: false })
            }
        }
    }
}

async fn sync_dir<D: Disk>(disk: &D) -> Result<()> {
    disk.sync_dir().await.map_err(|e| Error::io("sync directory", disk.path_of(""), e))
}

/// Writes the header block at offset 0 and makes it durable.
pub(crate) async fn write_header<D: Disk>(disk: &D, file: &D::File, name: &str, header: &SegmentHeader) -> Result<()> {
    let path = || disk.path_of(name);
    let mut buf = file.alloc(BLOCK_BYTES as usize);
    let bytes = buf.bytes_mut();
    bytes.fill(0);
    bytes[..SEGMENT_HEADER_BYTES].copy_from_slice(&header.encode());
    write_all(file, buf, 0, BLOCK_BYTES as usize).await.map_err(|e| Error::io("write", path(), e))?;
    file.fdatasync().await.map_err(|e| Error::io("fdatasync", path(), e))
}

/// Creates the prepared file: reserved, zero-filled and synced.
async fn prepare<D: Disk>(disk: D, segment_bytes: u64) -> Result<D::File> {
    let path = || disk.path_of(PREPARED_NAME);
    // Filled without O_DSYNC (one sync at the end, not one per chunk), then opened again as
    // the disk opens files for appends.
    let file = match disk.create_for_fill(PREPARED_NAME).await {
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
            disk.remove(PREPARED_NAME).await.map_err(|e| Error::io("remove", path(), e))?;
            disk.create_for_fill(PREPARED_NAME).await
        }
        other => other,
    };
    let file = file.map_err(|e| Error::io("create", path(), e))?;
    sync_dir(&disk).await?;
    file.preallocate(segment_bytes).await.map_err(|e| Error::io("fallocate", path(), e))?;
    let mut offset = 0;
    while offset < segment_bytes {
        let len = ZERO_CHUNK_BYTES.min(segment_bytes - offset) as usize;
        let mut zeros = file.alloc(len);
        zeros.bytes_mut().fill(0);
        write_all(&file, zeros, offset, len).await.map_err(|e| Error::io("write", path(), e))?;
        offset += len as u64;
    }
    file.fdatasync().await.map_err(|e| Error::io("fdatasync", path(), e))?;
    if disk.sync_method() == SyncMethod::DsyncWrites {
        drop(file);
        return disk.open(PREPARED_NAME).await.map_err(|e| Error::io("open", path(), e));
    }
    Ok(file)
}

/// Writes `buf` (of `len` bytes) at `offset`; a short write is an error.
pub(crate) async fn write_all<F: DiskFile>(file: &F, buf: F::WriteBuf, offset: u64, len: usize) -> std::io::Result<()> {
    let written = file.write_at(buf, offset).await?;
    if written != len {
        let message = format!("wrote {written} of {len} bytes at offset {offset}");
        return Err(std::io::Error::new(std::io::ErrorKind::WriteZero, message));
    }
    Ok(())
}
