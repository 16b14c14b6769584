//! A simulated disk for crash and fault tests (built for tests and with the `testing` feature).
//!
//! Fault model (what a real disk and kernel may do to us, and so what the log must survive):
//! - A write is only in the *live* image until `fdatasync` on its file returns; then it is
//!   *durable*. Likewise a create or remove is durable only after `sync_dir`.
//! - At a crash ([`SimDisk::crash`]) every unsynced write is, independently and driven by the
//!   seed, lost, kept, or torn: a random subset of its 512-byte sectors reaches the media and
//!   the rest does not (holes read back as zeros). Each name whose entry changed since the last
//!   `sync_dir` (create, remove, rename) ends up with its old or its new entry, independently
//!   of every other name: harsher than a real rename, which is atomic. Unsynced truncations
//!   and preallocations each happen or not.
//! - Any chosen operation can fail with EIO or ENOSPC ([`SimDisk::fail_op`]); a failed write
//!   writes nothing and a failed fdatasync makes nothing durable.
//! - From a chosen operation on, the machine is down ([`SimDisk::crash_at_op`]): that call and
//!   every later one fail, as if power was cut while it ran.
//! - A disk made with [`SimDisk::with_dsync_writes`] models files opened with `O_DSYNC`: a
//!   write that returns is durable at once; one that fails with EIO or is cut by power loss
//!   may still land, whole, torn or not at all; lengths still wait for `fdatasync`. Files made
//!   with `create_for_fill` are not `O_DSYNC`: their writes wait for `fdatasync`.
//! - Bits of durable data can be flipped ([`SimDisk::flip_bit`]) to model media corruption.
//! - Reads can be slowed ([`SimDisk::slow_reads`]: a few yields each), or one held in flight
//!   until released ([`SimDisk::hold_next_read`]), its bytes read when it was made, so that
//!   work can be made to happen under it.
//!
//! Every operation is counted, so a test can name "the Nth operation" and sweep N. Handles
//! opened before a crash fail every call afterwards, so no task left over from the crashed
//! incarnation can write to the rebooted disk.

use std::cell::RefCell;
use std::collections::{BTreeMap, BTreeSet};
use std::io;
use std::path::PathBuf;
use std::rc::Rc;

use super::rng::SplitMix64;
use super::traits::{Disk, DiskFile, SyncMethod, WriteBuf};

const SECTOR_BYTES: usize = 512;
const EIO: i32 = 5;
const ENOSPC: i32 = 28;

/// A failure to inject into one operation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fault {
    /// The call fails with EIO.
    Eio,
    /// The call fails with ENOSPC.
    Enospc,
}

enum UnsyncedOp {
    Write { offset: u64, data: Vec<u8> },
    Truncate(u64),
}

#[derive(Default)]
struct Inode {
    live: Vec<u8>,
    durable: Vec<u8>,
    unsynced: Vec<UnsyncedOp>,
}

fn write_into(image: &mut Vec<u8>, offset: u64, data: &[u8]) {
    let start = offset as usize;
    if image.len() < start + data.len() {
        image.resize(start + data.len(), 0);
    }
    image[start..start + data.len()].copy_from_slice(data);
}

impl Inode {
    fn sync(&mut self) {
        for op in std::mem::take(&mut self.unsynced) {
            match op {
                UnsyncedOp::Write { offset, data } => write_into(&mut self.durable, offset, &data),
                UnsyncedOp::Truncate(len) => self.durable.resize(len as usize, 0),
            }
        }
    }

    /// Resolves every unsynced operation as a crash would, then makes live equal durable.
    fn crash(&mut self, rng: &mut SplitMix64) {
        for op in std::mem::take(&mut self.unsynced) {
            match op {
                UnsyncedOp::Truncate(len) => {
                    if rng.one_in(2) {
                        self.durable.resize(len as usize, 0);
                    }
                }
                UnsyncedOp::Write { offset, data } => match rng.below(4) {
                    0 => {}
                    1 => write_into(&mut self.durable, offset, &data),
                    _ => {
                        for (i, sector) in data.chunks(SECTOR_BYTES).enumerate() {
                            if rng.one_in(2) {
                                let at = offset + (i * SECTOR_BYTES) as u64;
                                write_into(&mut self.durable, at, sector);
                            }
                        }
                    }
                },
            }
        }
        self.live = self.durable.clone();
    }
}

type InodeRef = Rc<RefCell<Inode>>;

#[derive(Default)]
struct SimState {
    live_names: BTreeMap<String, InodeRef>,
    durable_names: BTreeMap<String, InodeRef>,
    ops: u64,
    generation: u64,
    faults: BTreeMap<u64, Fault>,
    crash_at_op: Option<u64>,
    down: bool,
    sync_method: Option<SyncMethod>,
    /// With `slow_reads`: how many times each read yields before it completes.
    read_latency: Option<SplitMix64>,
    /// With `hold_next_read`: the file whose next read waits for `release_reads`.
    hold_armed: Option<InodeRef>,
    /// A held read is waiting.
    holding: bool,
}

/// An in-memory disk with the fault model above. Clones share one disk.
#[derive(Clone, Default)]
pub struct SimDisk {
    state: Rc<RefCell<SimState>>,
}

/// An open file of a [`SimDisk`].
pub struct SimFile {
    disk: SimDisk,
    inode: InodeRef,
    generation: u64,
    /// Opened as `O_DSYNC` would be: its writes are durable once they complete.
    dsync: bool,
}

impl WriteBuf for Vec<u8> {
    fn bytes_mut(&mut self) -> &mut [u8] {
        self
    }
}

impl SimDisk {
    /// An empty disk whose writes are durable after `fdatasync`.
    pub fn new() -> Self {
        SimDisk::default()
    }

    /// An empty disk whose writes are durable once they complete, as files opened with
    /// `O_DSYNC` are ([`SyncMethod::DsyncWrites`]); lengths still need `fdatasync`.
    pub fn with_dsync_writes() -> Self {
        let disk = SimDisk::default();
        disk.state.borrow_mut().sync_method = Some(SyncMethod::DsyncWrites);
        disk
    }

    /// How many operations have been issued so far (the next one is number `ops() + 1`).
    pub fn ops(&self) -> u64 {
        self.state.borrow().ops
    }

    /// Operation number `op` (counting from 1 since the disk was made) fails with `fault`.
    pub fn fail_op(&self, op: u64, fault: Fault) {
        self.state.borrow_mut().faults.insert(op, fault);
    }

    /// Forgets every injected failure that has not happened yet: the disk works again.
    pub fn clear_faults(&self) {
        self.state.borrow_mut().faults.clear();
    }

    /// From operation number `op` on, the machine is down: every call fails until [`crash`].
    ///
    /// [`crash`]: SimDisk::crash
    pub fn crash_at_op(&self, op: u64) {
        self.state.borrow_mut().crash_at_op = Some(op);
    }

    /// True once a `crash_at_op` point was reached.
    pub fn is_down(&self) -> bool {
        self.state.borrow().down
    }

    /// Crashes and reboots the disk: unsynced state is resolved per the fault model using
    /// `seed`, pending faults are cleared, and every handle opened before fails from now on.
    pub fn crash(&self, seed: u64) {
        let mut rng = SplitMix64::new(seed);
        let mut state = self.state.borrow_mut();
        let names: BTreeSet<String> = state.live_names.keys().chain(state.durable_names.keys()).cloned().collect();
        let mut survivors = BTreeMap::new();
        for name in names {
            let live = state.live_names.get(&name).cloned();
            let durable = state.durable_names.get(&name).cloned();
            let chosen = match (live, durable) {
                (Some(l), Some(d)) if Rc::ptr_eq(&l, &d) => Some(l),
                (l, d) => {
                    if rng.one_in(2) {
                        l
                    } else {
                        d
                    }
                }
            };
            if let Some(inode) = chosen {
                survivors.insert(name, inode);
            }
        }
        for inode in survivors.values() {
            inode.borrow_mut().crash(&mut rng);
        }
        state.durable_names = survivors.clone();
        state.live_names = survivors;
        state.generation += 1;
        state.faults.clear();
        state.crash_at_op = None;
        state.down = false;
    }

    /// Flips one bit of durable (and live) data, as media corruption would.
    pub fn flip_bit(&self, name: &str, offset: u64, bit: u8) {
        let state = self.state.borrow();
        let inode = state.live_names.get(name).expect("flip_bit: no such file");
        let mut inode = inode.borrow_mut();
        inode.durable[offset as usize] ^= 1 << (bit % 8);
        inode.live[offset as usize] ^= 1 << (bit % 8);
    }

    /// Creates (or replaces) `name` holding `bytes`, durably: a disk image for tests and fuzzing.
    pub fn put_file(&self, name: &str, bytes: &[u8]) {
        let inode =
            InodeRef::new(RefCell::new(Inode { live: bytes.to_vec(), durable: bytes.to_vec(), unsynced: Vec::new() }));
        let mut state = self.state.borrow_mut();
        state.live_names.insert(name.to_string(), inode.clone());
        state.durable_names.insert(name.to_string(), inode);
    }

    /// Overwrites durable (and live) bytes directly, bypassing the fault model.
    pub fn overwrite(&self, name: &str, offset: u64, data: &[u8]) {
        let state = self.state.borrow();
        let mut inode = state.live_names.get(name).expect("overwrite: no such file").borrow_mut();
        write_into(&mut inode.durable, offset, data);
        write_into(&mut inode.live, offset, data);
    }

    /// Names of the files that exist now.
    pub fn list_names(&self) -> Vec<String> {
        self.state.borrow().live_names.keys().cloned().collect()
    }

    /// The live length of `name`, if it exists.
    pub fn file_len(&self, name: &str) -> Option<u64> {
        let state = self.state.borrow();
        state.live_names.get(name).map(|inode| inode.borrow().live.len() as u64)
    }

    /// A copy of the live bytes of `name`, if it exists.
    pub fn read_file(&self, name: &str) -> Option<Vec<u8>> {
        let state = self.state.borrow();
        state.live_names.get(name).map(|inode| inode.borrow().live.clone())
    }

    /// Counts one operation and decides whether it fails.
    /// Makes every later read yield to other tasks 0 to 3 times (chosen by `seed`) before it
    /// completes, so that reads in flight together complete in an order of the seed's, as a
    /// device's do.
    pub fn slow_reads(&self, seed: u64) {
        self.state.borrow_mut().read_latency = Some(SplitMix64::new(seed));
    }

    /// Makes the next read of `name` wait, in flight, until [`release_reads`](Self::release_reads)
    /// (other work goes on meanwhile): what a slow device read lets happen under a read can be
    /// made to happen at will.
    pub fn hold_next_read(&self, name: &str) {
        let mut state = self.state.borrow_mut();
        let inode = state.live_names.get(name).expect("hold_next_read: no such file").clone();
        state.hold_armed = Some(inode);
    }

    /// Whether a read held by [`hold_next_read`](Self::hold_next_read) waits now.
    pub fn read_held(&self) -> bool {
        self.state.borrow().holding
    }

    /// Lets the held read complete, with the bytes it read when it was made.
    pub fn release_reads(&self) {
        let mut state = self.state.borrow_mut();
        state.hold_armed = None;
        state.holding = false;
    }

    /// Takes the armed hold if `inode` is its file: true when this read must wait.
    fn take_hold(&self, inode: &InodeRef) -> bool {
        let mut state = self.state.borrow_mut();
        if state.hold_armed.as_ref().is_some_and(|armed| Rc::ptr_eq(armed, inode)) {
            state.hold_armed = None;
            state.holding = true;
            return true;
        }
        false
    }

    fn read_yields(&self) -> u64 {
        self.state.borrow_mut().read_latency.as_mut().map_or(0, |rng| rng.below(4))
    }

    fn begin(&self, generation: Option<u64>) -> io::Result<()> {
        let mut state = self.state.borrow_mut();
        if generation.is_some_and(|g| g != state.generation) {
            return Err(io::Error::other("simulated disk: handle from before a crash"));
        }
        state.ops += 1;
        let op = state.ops;
        if state.down || state.crash_at_op.is_some_and(|at| op >= at) {
            state.down = true;
            return Err(io::Error::other("simulated disk: machine is down"));
        }
        match state.faults.remove(&op) {
            Some(Fault::Eio) => Err(io::Error::from_raw_os_error(EIO)),
            Some(Fault::Enospc) => Err(io::Error::from_raw_os_error(ENOSPC)),
            None => Ok(()),
        }
    }

    fn handle(&self, inode: InodeRef) -> SimFile {
        let generation = self.state.borrow().generation;
        let dsync = self.sync_method() == SyncMethod::DsyncWrites;
        SimFile { disk: self.clone(), inode, generation, dsync }
    }
}

impl Disk for SimDisk {
    type File = SimFile;

    async fn create(&self, name: &str) -> io::Result<SimFile> {
        self.begin(None)?;
        let inode = {
            let mut state = self.state.borrow_mut();
            if state.live_names.contains_key(name) {
                return Err(io::Error::from(io::ErrorKind::AlreadyExists));
            }
            let inode = InodeRef::default();
            state.live_names.insert(name.to_string(), inode.clone());
            inode
        };
        Ok(self.handle(inode))
    }

    async fn create_for_fill(&self, name: &str) -> io::Result<SimFile> {
        let file = self.create(name).await?;
        Ok(SimFile { dsync: false, ..file })
    }

    async fn open(&self, name: &str) -> io::Result<SimFile> {
        self.begin(None)?;
        let inode = self.state.borrow().live_names.get(name).cloned();
        let inode = inode.ok_or_else(|| io::Error::from(io::ErrorKind::NotFound))?;
        Ok(self.handle(inode))
    }

    async fn remove(&self, name: &str) -> io::Result<()> {
        self.begin(None)?;
        let removed = self.state.borrow_mut().live_names.remove(name);
        removed.map(|_| ()).ok_or_else(|| io::Error::from(io::ErrorKind::NotFound))
    }

    async fn rename(&self, from: &str, to: &str) -> io::Result<()> {
        self.begin(None)?;
        let mut state = self.state.borrow_mut();
        let inode = state.live_names.remove(from).ok_or_else(|| io::Error::from(io::ErrorKind::NotFound))?;
        state.live_names.insert(to.to_string(), inode);
        Ok(())
    }

    async fn sync_dir(&self) -> io::Result<()> {
        self.begin(None)?;
        let mut state = self.state.borrow_mut();
        state.durable_names = state.live_names.clone();
        Ok(())
    }

    fn list(&self) -> io::Result<Vec<String>> {
        Ok(self.state.borrow().live_names.keys().cloned().collect())
    }

    fn path_of(&self, name: &str) -> PathBuf {
        PathBuf::from("sim").join(name)
    }

    fn sync_method(&self) -> SyncMethod {
        self.state.borrow().sync_method.unwrap_or(SyncMethod::Fdatasync)
    }
}

impl DiskFile for SimFile {
    type WriteBuf = Vec<u8>;
    type ReadBuf = Vec<u8>;

    fn alloc(&self, len: usize) -> Vec<u8> {
        vec![0; len]
    }

    async fn write_at(&self, buf: Vec<u8>, offset: u64) -> io::Result<usize> {
        let dsync = self.dsync;
        if let Err(error) = self.disk.begin(Some(self.generation)) {
            // A durable write that failed in the device, or was cut by power loss, may have
            // reached the media in whole, in part or not at all: it stays pending, and a crash
            // resolves it like any unsynced write. One refused for space wrote nothing.
            let reached_device =
                self.generation == self.disk.state.borrow().generation && error.raw_os_error() != Some(ENOSPC);
            if dsync && reached_device {
                let mut inode = self.inode.borrow_mut();
                write_into(&mut inode.live, offset, &buf);
                inode.unsynced.push(UnsyncedOp::Write { offset, data: buf });
            }
            return Err(error);
        }
        let mut inode = self.inode.borrow_mut();
        write_into(&mut inode.live, offset, &buf);
        let len = buf.len();
        if dsync {
            // Durable on completion. A failed write still pending is taken to have landed
            // whole (one of its possible outcomes), so that it can never land over this one.
            let pending = std::mem::take(&mut inode.unsynced);
            let (writes, lengths): (Vec<_>, Vec<_>) =
                pending.into_iter().partition(|op| matches!(op, UnsyncedOp::Write { .. }));
            for op in writes {
                if let UnsyncedOp::Write { offset, data } = op {
                    write_into(&mut inode.durable, offset, &data);
                }
            }
            inode.unsynced = lengths;
            write_into(&mut inode.durable, offset, &buf);
        } else {
            inode.unsynced.push(UnsyncedOp::Write { offset, data: buf });
        }
        Ok(len)
    }

    async fn read_at(&self, offset: u64, len: usize) -> io::Result<Vec<u8>> {
        self.disk.begin(Some(self.generation))?;
        for _ in 0..self.disk.read_yields() {
            futures_lite::future::yield_now().await;
        }
        let bytes = {
            let inode = self.inode.borrow();
            let start = (offset as usize).min(inode.live.len());
            let end = (start + len).min(inode.live.len());
            inode.live[start..end].to_vec()
        };
        if self.disk.take_hold(&self.inode) {
            while self.disk.read_held() {
                futures_lite::future::yield_now().await;
            }
        }
        Ok(bytes)
    }

    async fn fdatasync(&self) -> io::Result<()> {
        self.disk.begin(Some(self.generation))?;
        self.inode.borrow_mut().sync();
        Ok(())
    }

    async fn preallocate(&self, len: u64) -> io::Result<()> {
        self.disk.begin(Some(self.generation))?;
        let mut inode = self.inode.borrow_mut();
        if (inode.live.len() as u64) < len {
            inode.live.resize(len as usize, 0);
            inode.unsynced.push(UnsyncedOp::Truncate(len));
        }
        Ok(())
    }

    async fn truncate(&self, len: u64) -> io::Result<()> {
        self.disk.begin(Some(self.generation))?;
        let mut inode = self.inode.borrow_mut();
        inode.live.resize(len as usize, 0);
        inode.unsynced.push(UnsyncedOp::Truncate(len));
        Ok(())
    }

    async fn size(&self) -> io::Result<u64> {
        self.disk.begin(Some(self.generation))?;
        Ok(self.inode.borrow().live.len() as u64)
    }

    async fn punch_hole(&self, offset: u64, len: u64) -> io::Result<()> {
        self.disk.begin(Some(self.generation))?;
        let mut inode = self.inode.borrow_mut();
        let end = offset.saturating_add(len).min(inode.live.len() as u64);
        if offset < end {
            // Zeros written in place: a crash resolves them sector by sector like a write,
            // which is as much as the length-keeping punch of a real file system promises.
            let zeros = vec![0u8; (end - offset) as usize];
            write_into(&mut inode.live, offset, &zeros);
            inode.unsynced.push(UnsyncedOp::Write { offset, data: zeros });
        }
        Ok(())
    }
}
