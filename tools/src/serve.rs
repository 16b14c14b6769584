//! `tradeshard serve`: opens a data directory and serves it over the Kafka protocol, the
//! `stats` text protocol and Prometheus metrics until SIGINT or SIGTERM, then stops the
//! server (connections answer what they were doing) and closes the engine.
//!
//! It prints one line once listening, `listening kafka=ADDR stats=ADDR metrics=ADDR` (`off`
//! for a listener turned off), so that a script that asked for port 0 learns the ports.
//! `--trades-per-second N` also creates trades at that rate (random users and merchants),
//! for demonstrations and for measuring delivery from a trade's acknowledgement to a Kafka
//! consumer.

use std::io::Write;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use clap::ValueEnum;
use tradeshard_engine::{Engine, NewTrade, Options};
use tradeshard_server::{Server, ServerOptions, TradesEncoding};

#[derive(clap::Args)]
pub struct Args {
    /// The engine's data directory (created if absent).
    #[arg(long)]
    dir: PathBuf,
    /// The Kafka protocol's address, or `off`.
    #[arg(long, default_value = "127.0.0.1:9092")]
    kafka: String,
    /// The `stats` text protocol's address, or `off`.
    #[arg(long, default_value = "127.0.0.1:11212")]
    stats: String,
    /// The Prometheus metrics' address (`GET /metrics`), or `off`.
    #[arg(long, default_value = "127.0.0.1:9464")]
    metrics: String,
    /// The HOST:PORT Kafka clients are told to connect to (the Kafka address by default).
    #[arg(long)]
    advertise: Option<String>,
    /// How trade events are encoded in the topic `trades`.
    #[arg(long, value_enum, default_value = "json")]
    trades_encoding: Encoding,
    /// Kafka connections open at once (the stats and metrics listeners hold at most 64 each,
    /// of their own).
    #[arg(long, default_value_t = 1024)]
    connections_max: usize,
    /// Largest Kafka request accepted, in bytes: 8 MiB, above the library's 2 MiB, so that a
    /// produce request carrying full batches of several partitions fits.
    #[arg(long, default_value_t = 8 << 20)]
    request_bytes_max: usize,
    /// Also create this many trades per second while serving.
    #[arg(long, default_value_t = 0)]
    trades_per_second: u64,
}

#[derive(Clone, Copy, ValueEnum)]
enum Encoding {
    Json,
    Binary,
}

fn address(value: &str, what: &str) -> anyhow::Result<Option<SocketAddr>> {
    if value == "off" {
        return Ok(None);
    }
    value.parse().map(Some).with_context(|| format!("--{what} {value}: not an address (IP:PORT) nor off"))
}

pub fn run(args: Args) -> anyhow::Result<()> {
    let advertised = match &args.advertise {
        None => None,
        Some(value) => {
            let (host, port) = value.rsplit_once(':').context("--advertise takes HOST:PORT")?;
            Some((host.to_string(), port.parse().context("--advertise takes HOST:PORT")?))
        }
    };
    let options = ServerOptions {
        kafka: address(&args.kafka, "kafka")?,
        stats: address(&args.stats, "stats")?,
        metrics: address(&args.metrics, "metrics")?,
        advertised,
        connections_max: args.connections_max,
        request_bytes_max: args.request_bytes_max,
        trades_encoding: match args.trades_encoding {
            Encoding::Json => TradesEncoding::Json,
            Encoding::Binary => TradesEncoding::Binary,
        },
        ..ServerOptions::default()
    };
    let stop = Arc::new(AtomicBool::new(false));
    for signal in [signal_hook::consts::SIGINT, signal_hook::consts::SIGTERM] {
        // The first signal asks for a clean stop; a second, while that stop is under way,
        // ends the process at once (exit code 1).
        signal_hook::flag::register_conditional_shutdown(signal, 1, stop.clone())
            .context("installing the signal handlers")?;
        signal_hook::flag::register(signal, stop.clone()).context("installing the signal handlers")?;
    }
    let engine = Engine::open(Options::new(&args.dir)).with_context(|| format!("opening {}", args.dir.display()))?;
    let server = Server::start(engine.handle(), options)?;
    let shown = |addr: Option<SocketAddr>| addr.map_or("off".to_string(), |a| a.to_string());
    println!(
        "listening kafka={} stats={} metrics={}",
        shown(server.kafka_addr()),
        shown(server.stats_addr()),
        shown(server.metrics_addr())
    );
    std::io::stdout().flush()?;
    let created = Arc::new(AtomicU64::new(0));
    let generator = (args.trades_per_second > 0).then(|| {
        let (handle, stop, created, rate) = (engine.handle(), stop.clone(), created.clone(), args.trades_per_second);
        std::thread::spawn(move || generate(handle, rate, &stop, &created))
    });
    while !stop.load(Ordering::SeqCst) {
        std::thread::sleep(Duration::from_millis(100));
    }
    eprintln!("stopping");
    if let Some(generator) = generator {
        let _ = generator.join();
    }
    let all_ended = server.stop();
    engine.close()?;
    eprintln!(
        "stopped: {} trades created while serving; every connection ended in time: {all_ended}",
        created.load(Ordering::SeqCst)
    );
    Ok(())
}

/// Creates `rate` trades a second (in ticks of 10 ms) until `stop`.
fn generate(handle: tradeshard_engine::EngineHandle, rate: u64, stop: &AtomicBool, created: &AtomicU64) {
    let started = Instant::now();
    let mut next = 0u64;
    while !stop.load(Ordering::SeqCst) {
        let due = (started.elapsed().as_secs_f64() * rate as f64) as u64;
        while next < due && !stop.load(Ordering::SeqCst) {
            let trade = NewTrade {
                buyer_id: fastrand::u64(1..1_000_000),
                merchant_id: fastrand::u64(1..1_000),
                merchant_order_no: format!("serve-{}-{next}", std::process::id()),
                amount: fastrand::u64(1..100_000),
                currency: "CNY".into(),
                memo: String::new(),
            };
            if handle.create_trade_blocking(trade).is_ok() {
                created.fetch_add(1, Ordering::SeqCst);
            }
            next += 1;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}
