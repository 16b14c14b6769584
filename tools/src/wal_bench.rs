//! `tradeshard wal-bench`: N appenders append B-byte records to one log for a duration.
//!
//! It measures what an acknowledged append costs on this disk: records and bytes per second,
//! syncs per second (fdatasyncs, or writes that were durable on completion under
//! `--sync-method dsync`), records carried by each sync (group commit at work), and the
//! latency of each append from call to acknowledgement. The log runs on one pinned glommio executor,
//! as a shard would.

use std::cell::{Cell, RefCell};
use std::path::PathBuf;
use std::rc::Rc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use glommio::{LocalExecutorBuilder, Placement};
use indicatif::{ProgressBar, ProgressStyle};
use serde::Serialize;
use tradeshard_wal::disk::DmaDisk;
use tradeshard_wal::{Compression, Durability, Preallocation, SyncMethod, Wal, WalConfig, WalStats};

use crate::data_dir::DataDir;
use crate::latency::{self, LatencySummary};

#[derive(clap::Args, Debug, Clone)]
pub struct Args {
    /// Directory for the log (must be empty or absent); a temporary one when omitted.
    #[arg(long)]
    dir: Option<PathBuf>,
    /// Appenders, each with one append outstanding.
    #[arg(long, default_value_t = 256)]
    concurrency: usize,
    /// Bytes per record.
    #[arg(long, default_value_t = 256)]
    record_bytes: usize,
    /// How long to append (500ms, 5s, 1m).
    #[arg(long, default_value = "5s", value_parser = latency::parse_duration)]
    duration: Duration,
    /// sync: acknowledge after fdatasync; buffered: after the write, fdatasync every 10 ms.
    #[arg(long, default_value = "sync", value_parser = ["sync", "buffered"])]
    durability: String,
    /// zeroed: the next segment is zero-filled ahead of need (fastest fdatasync, writes each
    /// segment twice); reserved: segments are only fallocate'd.
    #[arg(long, default_value = "zeroed", value_parser = ["zeroed", "reserved"])]
    preallocation: String,
    /// dsync: segment files are opened O_DSYNC and each flush is one durable write (the
    /// engine's default); fdatasync: each flush is a write and then an fdatasync.
    #[arg(long, default_value = "dsync", value_parser = ["dsync", "fdatasync"])]
    sync_method: String,
    /// Compress frames with LZ4 when it pays (records are random bytes, so it rarely does).
    #[arg(long)]
    lz4: bool,
    /// CPU to pin the log's executor to.
    #[arg(long, default_value_t = 0)]
    cpu: usize,
    /// Print the summary as one JSON object on stdout.
    #[arg(long)]
    json: bool,
}

#[derive(Serialize)]
struct Summary {
    records_per_sec: f64,
    bytes_per_sec: f64,
    /// fdatasyncs plus durable (O_DSYNC) writes per second: the points where records became
    /// durable.
    fsyncs_per_sec: f64,
    records_per_fsync: f64,
    latency_us: LatencySummary,
    records: u64,
    /// fdatasync calls (segment preparation and rolls included).
    fsyncs: u64,
    /// Frame writes that were durable on completion.
    durable_writes: u64,
    sync_method: String,
    disk_bytes_written: u64,
    elapsed_sec: f64,
    concurrency: usize,
    record_bytes: usize,
    durability: String,
    preallocation: String,
    errors: u64,
}

pub fn run(args: Args) -> anyhow::Result<()> {
    if args.concurrency == 0 || args.concurrency > 1 << 20 {
        bail!("--concurrency must be between 1 and 1048576");
    }
    let config = WalConfig {
        durability: match args.durability.as_str() {
            "sync" => Durability::Sync,
            _ => Durability::Buffered { sync_interval: Duration::from_millis(10) },
        },
        compression: if args.lz4 { Compression::Lz4 } else { Compression::None },
        preallocation: match args.preallocation.as_str() {
            "zeroed" => Preallocation::Zeroed,
            _ => Preallocation::Reserved,
        },
        pending_records_max: args.concurrency.max(1 << 10),
        pending_bytes_max: (args.concurrency * (args.record_bytes + 4)).clamp(16 << 20, 1 << 30),
        ..WalConfig::default()
    };
    if args.record_bytes > config.record_bytes_max as usize {
        bail!("--record-bytes is above the log's record limit of {} bytes", config.record_bytes_max);
    }
    let data_dir = DataDir::new(args.dir.as_deref(), "tradeshard-wal-bench")?;
    let dir = data_dir.path().to_path_buf();
    eprintln!(
        "wal-bench: dir={} concurrency={} record_bytes={} duration={:?} durability={} sync_method={} preallocation={} lz4={} cpu={}",
        dir.display(),
        args.concurrency,
        args.record_bytes,
        args.duration,
        args.durability,
        args.sync_method,
        args.preallocation,
        args.lz4,
        args.cpu
    );
    let executor = LocalExecutorBuilder::new(Placement::Fixed(args.cpu))
        .name("wal-bench")
        .io_memory(64 << 20)
        .make()
        .map_err(|e| anyhow::anyhow!("starting the executor on cpu {}: {e}", args.cpu))?;
    let bench_args = args.clone();
    let summary = executor.run(async move { bench(bench_args, dir, config).await })?;
    if args.json {
        println!("{}", serde_json::to_string(&summary)?);
    } else {
        print_table(&summary);
    }
    if summary.errors > 0 {
        bail!("{} appends failed", summary.errors);
    }
    Ok(())
}

async fn bench(args: Args, dir: PathBuf, config: WalConfig) -> anyhow::Result<Summary> {
    let sync_method = if args.sync_method == "dsync" { SyncMethod::DsyncWrites } else { SyncMethod::Fdatasync };
    let disk = DmaDisk::new(&dir).with_context(|| format!("opening {}", dir.display()))?.with_sync_method(sync_method);
    let (wal, _) = Wal::open(disk, config, |_, _| {}).await?;
    let wal = Rc::new(wal);
    let stop = Rc::new(Cell::new(false));
    let errors = Rc::new(Cell::new(0u64));
    let histogram = Rc::new(RefCell::new(latency::new_histogram()));
    let start = Instant::now();
    let appenders: Vec<_> = (0..args.concurrency)
        .map(|i| {
            let (wal, stop, errors, histogram) = (wal.clone(), stop.clone(), errors.clone(), histogram.clone());
            let record: Vec<u8> = (0..args.record_bytes).map(|b| (b * 31 + i * 7) as u8).collect();
            glommio::spawn_local(async move {
                while !stop.get() {
                    let sent = Instant::now();
                    if wal.append(&record).await.is_err() {
                        errors.set(errors.get() + 1);
                        stop.set(true);
                    }
                    latency::record(&mut histogram.borrow_mut(), sent.elapsed().as_micros() as u64);
                }
            })
        })
        .collect();
    let progress = progress_bar(args.duration);
    while start.elapsed() < args.duration && !stop.get() {
        glommio::timer::sleep(Duration::from_millis(200).min(args.duration)).await;
        let stats = wal.stats();
        let elapsed = start.elapsed().as_secs_f64();
        progress.set_position(start.elapsed().as_millis().min(args.duration.as_millis()) as u64);
        progress.set_message(format!(
            "{:.0} records/s, {:.0} syncs/s",
            stats.records as f64 / elapsed,
            syncs(&stats) as f64 / elapsed
        ));
    }
    stop.set(true);
    let stats_at_stop = wal.stats();
    let elapsed = start.elapsed().as_secs_f64();
    for appender in appenders {
        appender.await;
    }
    progress.finish_and_clear();
    let wal = Rc::try_unwrap(wal).map_err(|_| anyhow::anyhow!("appenders still hold the log"))?;
    wal.close().await?;
    let histogram = histogram.borrow();
    Ok(summarize(&args, stats_at_stop, elapsed, latency::summarize(&histogram), errors.get()))
}

fn summarize(args: &Args, stats: WalStats, elapsed: f64, latency_us: LatencySummary, errors: u64) -> Summary {
    Summary {
        records_per_sec: stats.records as f64 / elapsed,
        bytes_per_sec: stats.record_bytes as f64 / elapsed,
        fsyncs_per_sec: syncs(&stats) as f64 / elapsed,
        records_per_fsync: if syncs(&stats) == 0 { 0.0 } else { stats.records as f64 / syncs(&stats) as f64 },
        latency_us,
        records: stats.records,
        fsyncs: stats.fsyncs,
        durable_writes: stats.durable_writes,
        sync_method: args.sync_method.clone(),
        disk_bytes_written: stats.disk_bytes,
        elapsed_sec: elapsed,
        concurrency: args.concurrency,
        record_bytes: args.record_bytes,
        durability: args.durability.clone(),
        preallocation: args.preallocation.clone(),
        errors,
    }
}

/// Points where records became durable: fdatasync calls and durable writes.
fn syncs(stats: &WalStats) -> u64 {
    stats.fsyncs + stats.durable_writes
}

fn progress_bar(duration: Duration) -> ProgressBar {
    let bar = ProgressBar::new(duration.as_millis() as u64);
    let style = ProgressStyle::with_template("{elapsed_precise} [{bar:30}] {msg}").expect("valid template");
    bar.set_style(style.progress_chars("=> "));
    bar
}

fn print_table(s: &Summary) {
    println!("records/s          {:>14.0}", s.records_per_sec);
    println!("MB/s               {:>14.1}", s.bytes_per_sec / 1e6);
    println!("syncs/s            {:>14.0}  ({})", s.fsyncs_per_sec, s.sync_method);
    println!("records per sync   {:>14.1}", s.records_per_fsync);
    println!(
        "append latency µs  p50 {} / p99 {} / p99.9 {} / max {}",
        s.latency_us.p50, s.latency_us.p99, s.latency_us.p999, s.latency_us.max
    );
    println!("records {} in {:.2} s, {} bytes written to disk", s.records, s.elapsed_sec, s.disk_bytes_written);
}
