//! `tradeshard`: the command-line tool of the engine.
//!
//! `load` drives the embedded engine (the main job), `settle` consumes and reconciles the
//! settlement events, `wal-bench` measures one write-ahead log alone.

mod data_dir;
mod latency;
mod load;
mod readback;
mod settle;
mod wal_bench;
mod workload;

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(name = "tradeshard", version, about = "tradeshard storage engine tool")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run a trade workload against an embedded engine and report throughput and latency.
    Load(load::Args),
    /// Consume the settlement events of a data directory and reconcile them with the store.
    Settle(settle::Args),
    /// Measure durable appends to one write-ahead log: N appenders for a duration.
    WalBench(wal_bench::Args),
}

fn main() -> anyhow::Result<()> {
    match Cli::parse().command {
        Command::Load(args) => load::run(args),
        Command::Settle(args) => settle::run(args),
        Command::WalBench(args) => wal_bench::run(args),
    }
}
