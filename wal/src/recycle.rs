//! Segments that retention removes, kept as free files and made the next segments: a log
//! under retention then writes each segment's space once, instead of zero-filling a new file
//! (or growing one) for every roll.
//!
//! A removed segment becomes free by a rename to `recycled-<its base>.seg`, made durable
//! before any byte of it changes, when no reader holds it (a reader inside a removed segment
//! finishes reading the bytes it started on) and fewer than `recycled_segments_max` are free;
//! otherwise it is removed. At a roll a free file is used before a prepared one: it gets its
//! new header (synced) and then its segment name (the directory synced), as a prepared file
//! does. Its old frames stay after the new ones. Each of them carries sequence numbers below
//! the new segment's base, since a log's numbers only grow, so none can pass for a frame of
//! the new segment: recovery ends a sealed segment at the next segment's first record, and
//! takes an old frame past the tail for space never written (`docs/FORMAT.md`).
//!
//! Free files are found again at open; one of another size (the segment size changed) or
//! past the limit is removed.

use std::cell::RefCell;
use std::rc::Rc;

use crate::config::WalConfig;
use crate::disk::{Disk, DiskFile};
use crate::error::{Error, Result};
use crate::layout::{BLOCK_BYTES, SEGMENT_HEADER_BYTES};
use crate::roll::write_header;
use crate::segment::{self, SegmentHeader};
use crate::state::{SegmentState, Shared};

const PREFIX: &str = "recycled-";
const SUFFIX: &str = ".seg";

/// The names of a log's free files, the next to use last.
pub(crate) type FreeSegments = Rc<RefCell<Vec<String>>>;

/// The name a removed segment has while it is free.
fn free_name(base_seq: u64) -> String {
    format!("{PREFIX}{base_seq:020}{SUFFIX}")
}

/// The base of the segment a free file was, from its name; `None` for any other name.
fn base_of(name: &str) -> Option<u64> {
    let digits = name.strip_prefix(PREFIX)?.strip_suffix(SUFFIX)?;
    (digits.len() == 20 && digits.bytes().all(|b| b.is_ascii_digit())).then(|| digits.parse().ok())?
}

/// True for the name of a free file.
pub(crate) fn is_free_name(name: &str) -> bool {
    base_of(name).is_some()
}

fn io<D: Disk>(disk: &D, op: &'static str, name: &str) -> impl FnOnce(std::io::Error) -> Error + use<D> {
    let path = disk.path_of(name);
    move |e| Error::io(op, path, e)
}

/// The free files found at open, named in `names`: those of the configured segment size, up
/// to the limit, are kept; the others are removed (durably). So is the name of one that is
/// still, or already, a segment of the log (`segments`, by base): named after one, or headed
/// as one. A rename is atomic, so a crash leaves no file under both names; a disk that did
/// would otherwise have a segment overwritten as a free file.
pub(crate) async fn adopt<D: Disk>(
    disk: &D,
    config: &WalConfig,
    mut names: Vec<String>,
    segments: impl Fn(u64) -> bool,
) -> Result<Vec<String>> {
    names.sort_unstable();
    let mut kept = Vec::new();
    let mut removed = false;
    for name in names {
        let file = disk.open(&name).await.map_err(io(disk, "open", &name))?;
        let size = file.size().await.map_err(io(disk, "stat", &name))?;
        let head = file.read_at(0, BLOCK_BYTES as usize).await.map_err(io(disk, "read", &name))?;
        let head = &head[..head.len().min(SEGMENT_HEADER_BYTES)];
        let headed = SegmentHeader::decode(head).is_ok_and(|header| segments(header.base_seq));
        let named = base_of(&name).is_some_and(&segments);
        if size == config.segment_bytes && kept.len() < config.recycled_segments_max && !headed && !named {
            kept.push(name);
        } else {
            disk.remove(&name).await.map_err(io(disk, "remove", &name))?;
            removed = true;
        }
    }
    if removed {
        disk.sync_dir().await.map_err(io(disk, "sync directory", ""))?;
    }
    Ok(kept)
}

/// Takes `segment`, which retention has just taken out of the log, off the disk: made free
/// if no reader holds it and the pool has room, else removed. Durable before it returns;
/// true when it was made free.
pub(crate) async fn free_or_remove<D: Disk>(shared: &Shared<D>, segment: Rc<SegmentState<D::File>>) -> Result<bool> {
    let disk = &shared.disk;
    let unread = Rc::strong_count(&segment) == 1 && Rc::strong_count(&segment.file) == 1;
    let room = shared.free.borrow().len() < shared.config.recycled_segments_max;
    let freed = if unread && room {
        let free = free_name(segment.base_seq);
        disk.rename(&segment.name, &free).await.map_err(io(disk, "rename", &segment.name))?;
        Some(free)
    } else {
        disk.remove(&segment.name).await.map_err(io(disk, "remove", &segment.name))?;
        None
    };
    disk.sync_dir().await.map_err(io(disk, "sync directory", ""))?;
    let made_free = freed.is_some();
    // In the pool only once its new name is durable: nothing writes into it before.
    shared.free.borrow_mut().extend(freed);
    Ok(made_free)
}

/// A free file made the segment of `header`, durable in header and name; `None` when no file
/// is free. A free file someone removed is passed over (the segment is made as if none were
/// free); any other failure fails the roll, as a failed write does.
pub(crate) async fn take<D: Disk>(disk: &D, free: &FreeSegments, header: &SegmentHeader) -> Result<Option<D::File>> {
    let (name, file) = loop {
        let Some(name) = free.borrow_mut().pop() else { return Ok(None) };
        match disk.open(&name).await {
            Ok(file) => break (name, file),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
            Err(e) => return Err(io(disk, "open", &name)(e)),
        }
    };
    write_header(disk, &file, &name, header).await?;
    let target = segment::file_name(header.base_seq);
    disk.rename(&name, &target).await.map_err(io(disk, "rename", &target))?;
    disk.sync_dir().await.map_err(io(disk, "sync directory", ""))?;
    Ok(Some(file))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn free_names_are_told_from_segment_names() {
        let name = free_name(131_072);
        assert!(is_free_name(&name), "{name}");
        assert_eq!(segment::parse_file_name(&name), None, "a free file is no segment");
        assert!(!is_free_name(&segment::file_name(131_072)));
        assert_eq!(base_of(&name), Some(131_072));
        assert!(!is_free_name("recycled-12.seg") && !is_free_name("recycled-0000000000000000000x.seg"));
    }
}
