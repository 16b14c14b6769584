//! `tradeshard`: the command-line tool of the engine.
//!
//! Today it measures the write-ahead log (`wal-bench`); the trade store's load generator,
//! the settlement consumer and log inspection join it as the engine grows.

mod latency;
mod wal_bench;

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(name = "tradeshard", version, about = "tradeshard storage engine tool")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Measure durable appends to one write-ahead log: N appenders for a duration.
    WalBench(wal_bench::Args),
}

fn main() -> anyhow::Result<()> {
    match Cli::parse().command {
        Command::WalBench(args) => wal_bench::run(args),
    }
}
