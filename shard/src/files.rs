//! The shard's own files beside its log (the store of created parts, the table of trades):
//! opened, or made on first use with the directory synced so that the file's name is durable
//! before anything in it is relied on.

use tradeshard_wal::disk::Disk;

use crate::error::{LogError, TradeError};

/// Opens `name` in `disk`, creating it (and syncing the directory) if absent.
pub(crate) async fn open_or_create<D: Disk>(disk: &D, name: &str) -> Result<D::File, TradeError> {
    let io = |op, e| TradeError::Log(LogError::io(op, disk.path_of(name), e));
    match disk.open(name).await {
        Ok(file) => Ok(file),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            let file = disk.create(name).await.map_err(|e| io("create", e))?;
            disk.sync_dir().await.map_err(|e| io("sync directory", e))?;
            Ok(file)
        }
        Err(e) => Err(io("open", e)),
    }
}
