//! A checkpoint: a shard's indexes made durable as of a log position, so that an open loads
//! them and replays only the log after that position, and retention may remove the log
//! before it.
//!
//! The file `checkpoint-<position, 20 digits>.ckpt` is a run of pages, each on a fresh 4 KiB
//! block: a 16-byte header (magic, payload length, a checksum of both and the payload) and the
//! payload, zero-padded to a block. The first page holds the header fields ([`Header`]); the
//! pages after it hold the index's entries ([`Item`]) back to back, one kind byte and fixed
//! fields each; the last entry of the last page is the end marker with the count of every
//! kind. A checkpoint is written whole as `checkpoint.tmp`, synced, and only then renamed to
//! its name (the rename and the directory synced), so a file with a checkpoint's name is
//! complete unless it was damaged later; a defect is reported with the file's path and the
//! offset of the page that holds it. The layout is in `docs/FORMAT.md`.

mod codec;
mod messages;
mod money;
#[cfg(any(test, feature = "testing"))]
mod sample;
#[cfg(test)]
mod tests;

#[cfg(any(test, feature = "testing"))]
pub use codec::decode_file;
pub(crate) use codec::{
    file_name, page_bytes, page_payload_len, parse_file_name, Encoder, Header, Restored, Restorer, PAGE_ALIGN,
    TEMP_NAME,
};
pub(crate) use money::{push_request, read_request};
#[cfg(any(test, feature = "testing"))]
pub use sample::sample_file;
