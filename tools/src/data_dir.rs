//! Where a command keeps its data: a directory the user named (new, so that a measurement
//! never mixes with old data, unless the command runs on an existing engine directory on
//! purpose), or a temporary one under the current directory (on the disk being measured, not
//! a tmpfs), removed when the command ends unless kept.

use std::path::{Path, PathBuf};

use anyhow::bail;

/// A data directory for one run; a temporary one is removed on drop, unless it is to be kept
/// ([`keep_at_end`](Self::keep_at_end)), whether the run succeeded or failed.
pub struct DataDir {
    path: PathBuf,
    temporary: Option<tempfile::TempDir>,
    keep_at_end: bool,
}

impl DataDir {
    /// `given` if it is absent or empty, else an error; a new temporary directory named
    /// `prefix…` when `given` is `None`.
    pub fn new(given: Option<&Path>, prefix: &str) -> anyhow::Result<DataDir> {
        match given {
            Some(dir) => {
                if dir.exists() && std::fs::read_dir(dir)?.next().is_some() {
                    bail!("{} is not empty: give a new directory", dir.display());
                }
                Ok(DataDir { path: dir.to_path_buf(), temporary: None, keep_at_end: false })
            }
            None => {
                let temporary = tempfile::Builder::new().prefix(prefix).tempdir_in(".")?;
                Ok(DataDir { path: temporary.path().to_path_buf(), temporary: Some(temporary), keep_at_end: false })
            }
        }
    }

    /// `given` if it is absent, empty, or an engine's data directory (it holds a `MANIFEST`),
    /// else an error; a new temporary directory named `prefix…` when `given` is `None`.
    pub fn new_or_engine(given: Option<&Path>, prefix: &str) -> anyhow::Result<DataDir> {
        match given {
            Some(dir) if dir.join("MANIFEST").is_file() => {
                Ok(DataDir { path: dir.to_path_buf(), temporary: None, keep_at_end: false })
            }
            _ => DataDir::new(given, prefix),
        }
    }

    /// Bytes of the files under the directory, as the filesystem counts them (allocated
    /// blocks, so preallocated segments count whole).
    pub fn disk_bytes(&self) -> u64 {
        disk_bytes(&self.path)
    }

    /// Keeps a temporary directory on disk (to inspect a failure) and returns its path.
    pub fn keep(mut self) -> PathBuf {
        if let Some(temporary) = self.temporary.take() {
            return temporary.keep();
        }
        self.path.clone()
    }

    /// With `keep`, a temporary directory stays on disk when this is dropped, also when the
    /// command fails on its way (which is when it is most wanted), and its path is printed.
    pub fn keep_at_end(&mut self, keep: bool) {
        self.keep_at_end = keep;
    }

    pub fn path(&self) -> &Path {
        &self.path
    }
}

impl Drop for DataDir {
    fn drop(&mut self) {
        if self.keep_at_end {
            if let Some(temporary) = self.temporary.take() {
                eprintln!("kept {}", temporary.keep().display());
            }
        }
    }
}

/// Bytes allocated to the files under `dir` (0 for what cannot be read).
pub fn disk_bytes(dir: &Path) -> u64 {
    use std::os::unix::fs::MetadataExt;
    let Ok(entries) = std::fs::read_dir(dir) else { return 0 };
    entries
        .flatten()
        .map(|entry| match entry.metadata() {
            Ok(meta) if meta.is_dir() => disk_bytes(&entry.path()),
            Ok(meta) => meta.blocks() * 512,
            Err(_) => 0,
        })
        .sum()
}

/// The segment size of the engine directory `dir`, read from its segments' files (each is
/// made at the full size), or `None` if it has none. The size is not in the manifest; an
/// engine opened with another size would remove the directory's free segments (they could
/// not serve it) and make its new ones at that size.
pub fn segment_bytes_of(dir: &Path) -> Option<u64> {
    let shards = std::fs::read_dir(dir.join("shards")).ok()?;
    let segment =
        |name: &str| name.len() == 24 && name.ends_with(".log") && name[..20].bytes().all(|b| b.is_ascii_digit());
    shards
        .flatten()
        .filter_map(|shard| std::fs::read_dir(shard.path()).ok())
        .flat_map(|files| files.flatten())
        .filter(|file| segment(&file.file_name().to_string_lossy()))
        .filter_map(|file| file.metadata().ok().map(|meta| meta.len()))
        .max()
}
