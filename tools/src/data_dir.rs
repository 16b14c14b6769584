//! Where a command keeps its data: a directory the user named (which must be new, so that a
//! measurement never mixes with old data), or a temporary one under the current directory
//! (on the disk being measured, not a tmpfs), removed when the command ends.

use std::path::{Path, PathBuf};

use anyhow::bail;

/// A data directory for one run; a temporary one is removed on drop.
pub struct DataDir {
    path: PathBuf,
    _temporary: Option<tempfile::TempDir>,
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
                Ok(DataDir { path: dir.to_path_buf(), _temporary: None })
            }
            None => {
                let temporary = tempfile::Builder::new().prefix(prefix).tempdir_in(".")?;
                Ok(DataDir { path: temporary.path().to_path_buf(), _temporary: Some(temporary) })
            }
        }
    }

    /// Keeps a temporary directory on disk (to inspect a failure) and returns its path.
    pub fn keep(self) -> PathBuf {
        if let Some(temporary) = self._temporary {
            return temporary.keep();
        }
        self.path
    }

    pub fn path(&self) -> &Path {
        &self.path
    }
}
