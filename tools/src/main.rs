//! `tradeshard`: the command-line tool of the engine.
//!
//! `load` drives the embedded engine (the main job), `settle` consumes and reconciles the
//! settlement events, `stress` kills and recovers the engine and checks what survived,
//! `compare` runs the same workload on RocksDB, `wal-bench` measures one write-ahead log alone,
//! `inspect` shows what a data directory holds, `dlq` lists, replays or drops a consumer
//! group's dead letters, `serve` serves a data directory over the Kafka protocol.

mod compare;
mod data_dir;
mod dlq;
mod inspect;
mod latency;
mod load;
mod readback;
mod serve;
mod settle;
mod stress;
mod units;
mod wal_bench;
mod workload;

use clap::{Parser, Subcommand};

// `serve` decodes requests off the network with codecs that size vectors from counts on the
// wire (`tradeshard_server::ReserveNothingForLarge`). The rest goes to mimalloc: requests are
// allocated on one thread and freed on another (a job, its reply, a step's vector), which
// glibc's allocator serves through shared arenas and consolidation (BENCHMARKS.md, "The
// allocator").
#[global_allocator]
static ALLOCATOR: tradeshard_server::ReserveNothingForLarge<mimalloc::MiMalloc> =
    tradeshard_server::ReserveNothingForLarge(mimalloc::MiMalloc);

/// Turns transparent huge pages off for this process and the ones it starts (`stress`'s and
/// `compare`'s children inherit it), unless `TRADESHARD_HUGE_PAGES=1` asks to keep them.
/// mimalloc asks for huge pages on its arenas, and the engine's growing tables and checkpoint
/// buffers keep taking fresh ones; each is a whole 2 MiB the kernel must find and zero, however
/// little of it is used. Where the kernel has huge pages to give, that took a sixth of the
/// executors' time under transfers; without them writes go 1.2-1.4x faster and cached reads
/// 0.9x as fast (BENCHMARKS.md, "Huge pages"). A kernel without the call leaves the setting as
/// it was: speed, not correctness.
fn without_huge_pages() {
    if std::env::var_os("TRADESHARD_HUGE_PAGES").is_some_and(|keep| keep == "1") {
        return;
    }
    // SAFETY: PR_SET_THP_DISABLE takes a flag and three zeros and touches no memory of ours.
    unsafe {
        libc::prctl(libc::PR_SET_THP_DISABLE, 1, 0, 0, 0);
    }
}

#[derive(Parser)]
#[command(name = "tradeshard", version, about = "tradeshard storage engine tool")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run a trade workload against an embedded engine and report throughput and latency.
    Load(Box<load::Args>),
    /// Consume the settlement events of a data directory and reconcile them with the store.
    Settle(settle::Args),
    /// Kill the engine's process at random instants and check every recovery against what it
    /// acknowledged.
    Stress(stress::Args),
    /// The process that `stress` kills (started by `stress` itself).
    #[command(hide = true)]
    StressChild(stress::child::ChildArgs),
    /// The same trade workload on tradeshard and on RocksDB (with the `rocksdb` feature), and
    /// the ratio of every figure.
    Compare(compare::Args),
    /// One engine's run of `compare` (started by `compare` itself).
    #[command(hide = true)]
    CompareSide(compare::SideArgs),
    /// Measure durable appends to one write-ahead log: N appenders for a duration.
    WalBench(wal_bench::Args),
    /// Show what a data directory holds: per shard its segments, checkpoint, trades, consumer
    /// groups and their lag, and what opening it cost.
    Inspect(inspect::Args),
    /// List a consumer group's dead letters, or send them back to it, or drop them.
    Dlq(dlq::Args),
    /// Serve a data directory over the Kafka protocol, a `stats` text protocol and Prometheus
    /// metrics until SIGINT or SIGTERM.
    Serve(serve::Args),
}

fn main() -> anyhow::Result<()> {
    without_huge_pages();
    match Cli::parse().command {
        Command::Load(args) => load::run(*args),
        Command::Settle(args) => settle::run(args),
        Command::Compare(args) => compare::run(args),
        Command::CompareSide(args) => compare::run_side(args),
        Command::Stress(args) => stress::run(args),
        Command::StressChild(args) => stress::child::run(args),
        Command::WalBench(args) => wal_bench::run(args),
        Command::Inspect(args) => inspect::run(args),
        Command::Dlq(args) => dlq::run(args),
        Command::Serve(args) => serve::run(args),
    }
}
