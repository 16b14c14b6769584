//! RocksDB as a [`Store`], as a payments team would build the trade store on it: per trade a
//! trade row, a row of the buyer's index and an outbox row for settlement, written in a synced
//! `WriteBatch`; settlement reads the outbox in key order. RocksDB's defaults otherwise, with
//! LZ4, a block cache of the same bytes as tradeshard's cache, and background jobs sized to
//! the cores. Writers are threads (RocksDB's writes block): a level of N trades in flight is N
//! trades spread over min(N, 64) threads, each writing its share as one synced batch. Reads
//! and lists run on two threads per core, which saturate its blocking calls.
//!
//! Keys: `t` + trade id, `u` + buyer + (NOT trade id) (newest first), `o` + event number; all
//! integers big-endian.

use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use rocksdb::{
    BlockBasedOptions, Cache, DBCompressionType, Direction, IteratorMode, Options, WriteBatch, WriteOptions, DB,
};
use tradeshard_engine::NewTrade;

use super::suite::{Store, Timed, TradeSource};
use crate::latency;
use crate::workload::UserChooser;

pub struct RocksStore {
    dir: PathBuf,
    cache_bytes: usize,
    direct_reads: bool,
    db: Option<Arc<DB>>,
    next_id: Arc<AtomicU64>,
    next_event: Arc<AtomicU64>,
}

fn cores() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get())
}

fn options(cache_bytes: usize, direct_reads: bool) -> Options {
    let mut options = Options::default();
    options.set_use_direct_reads(direct_reads);
    options.create_if_missing(true);
    options.set_compression_type(DBCompressionType::Lz4);
    options.increase_parallelism(cores() as i32);
    let mut table = BlockBasedOptions::default();
    table.set_block_cache(&Cache::new_lru_cache(cache_bytes));
    options.set_block_based_table_factory(&table);
    options
}

fn key(prefix: u8, parts: &[u64]) -> Vec<u8> {
    let mut key = Vec::with_capacity(1 + 8 * parts.len());
    key.push(prefix);
    for part in parts {
        key.extend_from_slice(&part.to_be_bytes());
    }
    key
}

/// The trade row: the fields tradeshard keeps of a trade, in a compact binary form.
fn trade_row(trade: &NewTrade, at_ms: u64) -> Vec<u8> {
    let mut row = Vec::with_capacity(64 + trade.merchant_order_no.len() + trade.memo.len());
    for field in [trade.buyer_id, trade.merchant_id, trade.amount, 0, at_ms, at_ms] {
        row.extend_from_slice(&field.to_le_bytes());
    }
    row.extend_from_slice(trade.currency.as_bytes());
    row.push(1); // status: created
    row.push(trade.merchant_order_no.len() as u8);
    row.extend_from_slice(trade.merchant_order_no.as_bytes());
    row.extend_from_slice(&(trade.memo.len() as u16).to_le_bytes());
    row.extend_from_slice(trade.memo.as_bytes());
    row
}

/// The outbox row: what a settlement consumer needs of a change.
fn event_row(id: u64, trade: &NewTrade, at_ms: u64) -> Vec<u8> {
    let mut row = Vec::with_capacity(40);
    row.push(1); // kind: created
    for field in [id, trade.buyer_id, trade.merchant_id, trade.amount, at_ms] {
        row.extend_from_slice(&field.to_le_bytes());
    }
    row.extend_from_slice(trade.currency.as_bytes());
    row
}

impl RocksStore {
    pub fn open(dir: PathBuf, cache_bytes: usize, direct_reads: bool) -> anyhow::Result<RocksStore> {
        let db = DB::open(&options(cache_bytes, direct_reads), &dir)?;
        Ok(RocksStore {
            dir,
            cache_bytes,
            direct_reads,
            db: Some(Arc::new(db)),
            next_id: Arc::default(),
            next_event: Arc::default(),
        })
    }

    fn db(&self) -> Arc<DB> {
        self.db.as_ref().expect("open").clone()
    }

    /// Runs `threads` threads, each calling `op(rng)` until `duration` has passed.
    fn on_threads<F>(&self, threads: usize, duration: Duration, op: F) -> anyhow::Result<Timed>
    where
        F: Fn(usize, &DB, &mut fastrand::Rng, &mut Timed) -> anyhow::Result<()> + Send + Sync + 'static,
    {
        let op = Arc::new(op);
        let started = Instant::now();
        let deadline = started + duration;
        let workers: Vec<_> = (0..threads)
            .map(|thread| {
                let (db, op) = (self.db(), op.clone());
                std::thread::spawn(move || -> anyhow::Result<Timed> {
                    let mut rng = fastrand::Rng::with_seed(thread as u64 + 1);
                    let mut timed = Timed { ops: 0, seconds: 0.0, latency: latency::new_histogram(), ids: Vec::new() };
                    while Instant::now() < deadline {
                        op(thread, &db, &mut rng, &mut timed)?;
                    }
                    Ok(timed)
                })
            })
            .collect();
        let mut total = Timed { ops: 0, seconds: 0.0, latency: latency::new_histogram(), ids: Vec::new() };
        for worker in workers {
            let timed = worker.join().map_err(|_| anyhow::anyhow!("a RocksDB thread panicked"))??;
            total.ops += timed.ops;
            total.latency.add(&timed.latency).map_err(|e| anyhow::anyhow!("{e}"))?;
            total.ids.extend(timed.ids);
        }
        total.seconds = started.elapsed().as_secs_f64();
        Ok(total)
    }
}

fn now_ms() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64)
}

impl Store for RocksStore {
    fn ingest(&mut self, inflight: usize, duration: Duration, trades: &Arc<TradeSource>) -> anyhow::Result<Timed> {
        let threads = inflight.clamp(1, 64);
        let (trades, next_id, next_event) = (trades.clone(), self.next_id.clone(), self.next_event.clone());
        self.on_threads(threads, duration, move |thread, db, _, timed| {
            // The level's trades, shared out: the first `inflight % threads` threads take one more.
            let per_batch = inflight / threads + usize::from(thread < inflight % threads);
            let mut batch = WriteBatch::default();
            let mut ids = Vec::with_capacity(per_batch);
            let at_ms = now_ms();
            for _ in 0..per_batch {
                let trade = trades.take();
                let id = next_id.fetch_add(1, Ordering::Relaxed) + 1;
                batch.put(key(b't', &[id]), trade_row(&trade, at_ms));
                batch.put(key(b'u', &[trade.buyer_id, !id]), []);
                batch.put(key(b'o', &[next_event.fetch_add(1, Ordering::Relaxed)]), event_row(id, &trade, at_ms));
                ids.push(id);
            }
            let mut sync = WriteOptions::default();
            sync.set_sync(true);
            let sent = Instant::now();
            db.write_opt(batch, &sync)?;
            let micros = sent.elapsed().as_micros() as u64;
            for _ in 0..per_batch {
                latency::record(&mut timed.latency, micros);
            }
            timed.ops += per_batch as u64;
            timed.ids.extend(ids);
            Ok(())
        })
    }

    fn get(&mut self, ids: &[u64], chooser: &UserChooser, duration: Duration) -> anyhow::Result<Timed> {
        let (ids, chooser) = (Arc::new(ids.to_vec()), Arc::new(chooser.clone()));
        self.on_threads(2 * cores(), duration, move |_, db, rng, timed| {
            let id = ids[((chooser.pick(rng) - 1) * 7919 % ids.len() as u64) as usize];
            let sent = Instant::now();
            anyhow::ensure!(db.get_pinned(key(b't', &[id]))?.is_some(), "trade {id} missing");
            latency::record(&mut timed.latency, sent.elapsed().as_micros() as u64);
            timed.ops += 1;
            Ok(())
        })
    }

    fn list_latest(&mut self, users: u64, duration: Duration) -> anyhow::Result<Timed> {
        self.on_threads(2 * cores(), duration, move |_, db, rng, timed| {
            let user = 1 + rng.u64(..users);
            let prefix = key(b'u', &[user]);
            let sent = Instant::now();
            let mut keys = Vec::with_capacity(20);
            for item in db.iterator(IteratorMode::From(&prefix, Direction::Forward)) {
                let (index_key, _) = item?;
                if !index_key.starts_with(&prefix) || keys.len() == 20 {
                    break;
                }
                let id = !u64::from_be_bytes(index_key[9..17].try_into().expect("index keys are 17 bytes"));
                keys.push(key(b't', &[id]));
            }
            for row in db.multi_get(&keys) {
                anyhow::ensure!(row?.is_some(), "an indexed trade is missing");
            }
            latency::record(&mut timed.latency, sent.elapsed().as_micros() as u64);
            timed.ops += 1;
            Ok(())
        })
    }

    fn consume_all(&mut self) -> anyhow::Result<u64> {
        let db = self.db();
        let mut events = 0u64;
        let mut bytes = 0usize;
        for item in db.iterator(IteratorMode::From(b"o", Direction::Forward)) {
            let (event_key, value) = item?;
            if event_key.first() != Some(&b'o') {
                break;
            }
            bytes += value.len();
            events += 1;
        }
        anyhow::ensure!(bytes > 0 || events == 0, "empty events");
        Ok(events)
    }

    fn reopen(&mut self) -> anyhow::Result<()> {
        let db = self.db.take().expect("open");
        drop(Arc::try_unwrap(db).map_err(|_| anyhow::anyhow!("RocksDB still in use"))?);
        super::suite::drop_page_cache();
        self.db = Some(Arc::new(DB::open(&options(self.cache_bytes, self.direct_reads), &self.dir)?));
        Ok(())
    }

    fn engine_written_bytes(&mut self) -> anyhow::Result<Option<u64>> {
        Ok(None)
    }
}
