//! The disk as the log sees it: a flat directory of files with positional I/O.
//!
//! The log touches storage only through the traits of `traits` ([`Disk`], [`DiskFile`]), so
//! that the same code runs on glommio direct I/O ([`DmaDisk`]) and, with the `testing`
//! feature, on a simulated disk (`SimDisk`) that forgets unsynced writes, tears them at sector
//! boundaries and fails chosen operations, driven by a seeded generator (`SplitMix64`) so that
//! a seed replays a run.
//!
//! This module only gathers the parts: the implementations depend on the traits, not on it.

mod dma;
#[cfg(any(test, feature = "testing"))]
mod rng;
#[cfg(any(test, feature = "testing"))]
mod sim;
mod traits;

pub use dma::DmaDisk;
#[cfg(any(test, feature = "testing"))]
pub use rng::SplitMix64;
#[cfg(any(test, feature = "testing"))]
pub use sim::{Fault, SimDisk, SimFile};
pub use traits::{Disk, DiskFile, SyncMethod, WriteBuf};
