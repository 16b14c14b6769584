//! The data directory: its manifest (the layout fixed at creation) and its lock.
//!
//! ```text
//! DIR/                     mode 0700
//!   MANIFEST               the layout, JSON, with a checksum line
//!   LOCK                   flock'd while an engine has the directory open
//!   shards/0000/ ...       one write-ahead log per physical shard
//! ```
//!
//! The manifest is written once, atomically (temporary file, fsync, rename, directory fsync),
//! and read-checked before anything else is touched, so a directory that is refused (another
//! version, a damaged manifest) is left exactly as it was.

use std::fs::{self, DirBuilder, File, OpenOptions};
use std::io::Write;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};

/// The data directory format this build writes and reads (5: shards keep their trades in a
/// table on disk, `trades.table`, and checkpoints no longer hold them; 6: order keys and
/// confirmed claims are in sorted runs on disk; 7: accounts, journal records and flexible
/// transactions, in the logs and in checkpoints of version 4; 8: application messages; 9:
/// trades paid from a balance, in trade records' funding bytes and the stored status byte;
/// 11: ended branches and completed activities in runs, and no repeated step in a log's
/// records of flexible transactions; 12: 128-byte records of the trade table, holding the
/// trade's order number and memo inline where they fit; 13: `ClaimsKnown` records and the
/// checkpoint's known-claims counter, for creates whose claim and trade are written at once;
/// directories of other formats are refused).
pub const FORMAT_VERSION: u32 = 13;
const MANIFEST: &str = "MANIFEST";
const LOCK: &str = "LOCK";
/// Where the manifest is written before its rename; a leftover of an interrupted creation.
const MANIFEST_TEMPORARY: &str = "MANIFEST.tmp";

/// The layout of a data directory, fixed when it is created.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Manifest {
    pub format_version: u32,
    pub logical_shards: u32,
    pub physical_shards: u32,
    pub created_ms: u64,
}

impl Manifest {
    /// The bytes of a MANIFEST file holding this layout.
    pub fn encode(&self) -> String {
        encode(self)
    }

    /// Reads the bytes of the MANIFEST file at `path` (named in errors): a typed error for
    /// anything but a complete, checksummed manifest of this build's format version.
    pub fn decode(path: &Path, bytes: &[u8]) -> Result<Manifest> {
        parse(path, bytes)
    }
}

/// An open, locked data directory. The lock is released when this is dropped.
pub struct DataDir {
    pub path: PathBuf,
    pub manifest: Manifest,
    _lock: File,
}

impl DataDir {
    /// Opens `path`, creating it with `new_layout` if it holds no manifest.
    ///
    /// Creation is safe to interrupt: the manifest appears by an atomic rename, after which
    /// the directory is a data directory; before it, the directory holds at most the lock file
    /// and a temporary manifest, and the next open creates it again.
    pub fn open(path: &Path, new_layout: Manifest) -> Result<DataDir> {
        let manifest_path = path.join(MANIFEST);
        // Refusals (another version, a damaged manifest) come before anything is touched.
        if let Some(manifest) = read_manifest(&manifest_path)? {
            let lock = lock(path)?;
            return Ok(DataDir { path: path.to_path_buf(), manifest, _lock: lock });
        }
        // A directory holding anything else is refused before the lock file is made in it.
        if path.exists() {
            refuse_foreign(path, &manifest_path)?;
        }
        DirBuilder::new().recursive(true).mode(0o700).create(path).map_err(|e| Error::io("creating", path, e))?;
        let lock = lock(path)?;
        // Under the lock: another process may have created it meanwhile.
        if let Some(manifest) = read_manifest(&manifest_path)? {
            return Ok(DataDir { path: path.to_path_buf(), manifest, _lock: lock });
        }
        refuse_foreign(path, &manifest_path)?;
        write_manifest(path, &new_layout)?;
        Ok(DataDir { path: path.to_path_buf(), manifest: new_layout, _lock: lock })
    }

    /// The directory of physical shard `shard`'s log.
    pub fn shard_dir(&self, shard: u32) -> PathBuf {
        self.path.join("shards").join(format!("{shard:04}"))
    }
}

/// Fails if `dir` holds anything but the leftovers of an interrupted creation (the lock file
/// and a temporary manifest): it is not a tradeshard data directory.
fn refuse_foreign(dir: &Path, manifest_path: &Path) -> Result<()> {
    for entry in fs::read_dir(dir).map_err(|e| Error::io("listing", dir, e))? {
        let name = entry.map_err(|e| Error::io("listing", dir, e))?.file_name();
        if name != LOCK && name != MANIFEST_TEMPORARY {
            return Err(Error::BadManifest {
                path: manifest_path.to_path_buf(),
                reason: format!("missing, and the directory holds {name:?}: not a tradeshard data directory"),
            });
        }
    }
    Ok(())
}

/// Bytes a manifest may have: it is two short lines; a larger file is not one.
const MANIFEST_BYTES_MAX: u64 = 64 << 10;

/// The manifest at `path`, `None` if there is none.
fn read_manifest(path: &Path) -> Result<Option<Manifest>> {
    let read = File::open(path).and_then(|file| {
        let mut bytes = Vec::new();
        std::io::Read::read_to_end(&mut std::io::Read::take(file, MANIFEST_BYTES_MAX + 1), &mut bytes).map(|_| bytes)
    });
    match read {
        Ok(bytes) if bytes.len() as u64 > MANIFEST_BYTES_MAX => {
            Err(Error::BadManifest { path: path.to_path_buf(), reason: "larger than a manifest can be".into() })
        }
        Ok(bytes) => parse(path, &bytes).map(Some),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(Error::io("reading", path, e)),
    }
}

/// Takes the directory's lock (created if missing), or fails with `Locked`.
fn lock(dir: &Path) -> Result<File> {
    let lock_path = dir.join(LOCK);
    let lock = OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .mode(0o600)
        .open(&lock_path)
        .map_err(|e| Error::io("opening", &lock_path, e))?;
    match lock.try_lock() {
        Ok(()) => Ok(lock),
        Err(fs::TryLockError::WouldBlock) => Err(Error::Locked { path: dir.to_path_buf() }),
        Err(fs::TryLockError::Error(e)) => Err(Error::io("locking", &lock_path, e)),
    }
}

fn encode(manifest: &Manifest) -> String {
    let json = serde_json::to_string(manifest).expect("a manifest serializes");
    let checksum = xxhash_rust::xxh3::xxh3_64(json.as_bytes());
    format!("{json}\n{checksum:016x}\n")
}

fn parse(path: &Path, bytes: &[u8]) -> Result<Manifest> {
    let bad = |reason: &str| Error::BadManifest { path: path.to_path_buf(), reason: reason.to_string() };
    let text = std::str::from_utf8(bytes).map_err(|_| bad("not UTF-8"))?;
    let mut lines = text.lines();
    let (json, checksum) = (lines.next().unwrap_or(""), lines.next().unwrap_or(""));
    let complete = text.ends_with('\n') && lines.next().is_none();
    if format!("{:016x}", xxhash_rust::xxh3::xxh3_64(json.as_bytes())) != checksum || !complete {
        return Err(bad("checksum mismatch (truncated or damaged)"));
    }
    let value: serde_json::Value = serde_json::from_str(json).map_err(|e| bad(&e.to_string()))?;
    let version = value.get("format_version").and_then(|v| v.as_u64()).ok_or_else(|| bad("no format_version"))?;
    if version != FORMAT_VERSION as u64 {
        return Err(Error::UnsupportedVersion {
            path: path.to_path_buf(),
            found: version.min(u32::MAX as u64) as u32,
            supported: FORMAT_VERSION,
        });
    }
    let manifest: Manifest = serde_json::from_value(value).map_err(|e| bad(&e.to_string()))?;
    // The same bounds as the options that create a directory: a count past them (damage
    // whose checksum was made again) would have the open make a cache per shard by the
    // billions, or trade ids that cannot name their logical shard.
    if manifest.logical_shards == 0
        || manifest.logical_shards > tradeshard_shard::LOGICAL_SHARDS_MAX
        || manifest.physical_shards == 0
        || manifest.physical_shards > manifest.logical_shards
    {
        return Err(bad("shard counts out of range"));
    }
    Ok(manifest)
}

fn write_manifest(dir: &Path, manifest: &Manifest) -> Result<()> {
    let temporary = dir.join(MANIFEST_TEMPORARY);
    let final_path = dir.join(MANIFEST);
    let mut file = File::create(&temporary).map_err(|e| Error::io("creating", &temporary, e))?;
    file.write_all(encode(manifest).as_bytes()).map_err(|e| Error::io("writing", &temporary, e))?;
    file.sync_all().map_err(|e| Error::io("syncing", &temporary, e))?;
    fs::rename(&temporary, &final_path).map_err(|e| Error::io("renaming", &final_path, e))?;
    File::open(dir).and_then(|d| d.sync_all()).map_err(|e| Error::io("syncing", dir, e))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn layout() -> Manifest {
        Manifest { format_version: FORMAT_VERSION, logical_shards: 1024, physical_shards: 4, created_ms: 1 }
    }

    #[test]
    fn manifest_round_trips_and_detects_truncation() {
        let text = encode(&layout());
        assert_eq!(parse(Path::new("m"), text.as_bytes()).unwrap(), layout());
        for cut in [0, 1, text.len() / 2, text.len() - 2, text.len() - 1] {
            assert!(
                matches!(parse(Path::new("m"), &text.as_bytes()[..cut]), Err(Error::BadManifest { .. })),
                "cut {cut}"
            );
        }
    }

    #[test]
    fn shard_counts_past_the_options_bounds_are_refused() {
        for (logical_shards, physical_shards) in [(70_000, 4), (0, 0), (8, 9), (u32::MAX, u32::MAX)] {
            let text = encode(&Manifest { logical_shards, physical_shards, ..layout() });
            assert!(
                matches!(parse(Path::new("m"), text.as_bytes()), Err(Error::BadManifest { .. })),
                "{logical_shards} logical, {physical_shards} physical"
            );
        }
        let most = encode(&Manifest { logical_shards: tradeshard_shard::LOGICAL_SHARDS_MAX, ..layout() });
        assert!(parse(Path::new("m"), most.as_bytes()).is_ok());
    }

    #[test]
    fn newer_version_is_refused() {
        let text = encode(&Manifest { format_version: FORMAT_VERSION + 1, ..layout() });
        let found = FORMAT_VERSION + 1;
        assert!(
            matches!(parse(Path::new("m"), text.as_bytes()), Err(Error::UnsupportedVersion { found: f, .. }) if f == found)
        );
    }
}
