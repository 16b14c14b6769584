//! tradeshard's network face, served by the engine's own executors: the Kafka wire protocol
//! (so that any Kafka client consumes the settlement log and the message topics, and
//! publishes messages), a memcached-like `stats` text protocol, and Prometheus metrics.
//!
//! ```no_run
//! use tradeshard_engine::{Engine, Options};
//! use tradeshard_server::{Server, ServerOptions};
//!
//! let engine = Engine::open(Options::new("/var/lib/trades"))?;
//! let server = Server::start(engine.handle(), ServerOptions::default())?;
//! // ... until asked to stop:
//! server.stop();
//! engine.close()?;
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```
//!
//! Every listener binds to loopback unless told otherwise. The Kafka listener is bound once
//! per executor on the same port (`SO_REUSEPORT`): the kernel spreads connections over the
//! executors, and a connection lives on the executor that accepted it. A request for a
//! partition of another executor crosses as any embedder's request does, through the engine's
//! inboxes. The stats and metrics listeners, rarely used, live on the first executor.

mod alloc;
mod conn;
mod kafka;
mod metrics;
mod shutdown;
mod snapshot;
mod stats;

use std::net::SocketAddr;
use std::sync::atomic::AtomicUsize;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tradeshard_engine::EngineHandle;

pub use alloc::{ReserveNothingForLarge, LARGE as LARGE_ALLOCATION_BYTES};
pub use kafka::records::TradesEncoding;
pub use kafka::{decode_request, DecodedRequest, RequestError};

/// Entry points for the fuzz targets (`fuzz/`): decoders of bytes from the network.
#[doc(hidden)]
pub mod fuzzing {
    /// A producer's record batches for partition 0 of topic `fuzz`, as a Produce request's
    /// records are decoded: the messages made, or the refusal.
    pub fn produce_records(bytes: bytes::Bytes) -> Result<usize, String> {
        crate::kafka::records::decode_produced(bytes, "fuzz", 0).map(|m| m.len()).map_err(|e| format!("{e:?}"))
    }
}

/// Where the server listens and what it bounds.
#[derive(Debug, Clone)]
pub struct ServerOptions {
    /// The Kafka protocol's listener; `None`: off.
    pub kafka: Option<SocketAddr>,
    /// The `stats` text protocol's listener; `None`: off.
    pub stats: Option<SocketAddr>,
    /// The Prometheus metrics' HTTP listener; `None`: off.
    pub metrics: Option<SocketAddr>,
    /// The host and port Kafka clients are told to connect to (Metadata, FindCoordinator):
    /// the Kafka listener's own address when `None`.
    pub advertised: Option<(String, u16)>,
    /// Kafka connections open at once; more are closed as they come. The `stats` and metrics
    /// listeners each hold at most 64 (and no more than this) of their own.
    pub connections_max: usize,
    /// Largest request a client may send (Kafka's `socket.request.max.bytes`); a larger one
    /// closes its connection.
    pub request_bytes_max: usize,
    /// Largest answer to one Fetch, whatever the client asks.
    pub fetch_bytes_max: usize,
    /// Longest a Fetch waits for data, whatever the client asks.
    pub fetch_wait_max: Duration,
    /// How trade events are encoded in the topic `trades`.
    pub trades_encoding: TradesEncoding,
}

impl Default for ServerOptions {
    fn default() -> ServerOptions {
        let loopback = |port| Some(SocketAddr::from(([127, 0, 0, 1], port)));
        ServerOptions {
            kafka: loopback(9092),
            stats: loopback(11212),
            metrics: loopback(9464),
            advertised: None,
            connections_max: 1024,
            request_bytes_max: 2 << 20,
            fetch_bytes_max: 16 << 20,
            fetch_wait_max: Duration::from_secs(30),
            trades_encoding: TradesEncoding::Json,
        }
    }
}

/// Why the server did not start.
#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    #[error("cannot listen on {addr}: {source}")]
    Bind { addr: SocketAddr, source: std::io::Error },
    #[error("invalid server options: {0}")]
    InvalidOptions(String),
    #[error(transparent)]
    Engine(#[from] tradeshard_engine::Error),
}

/// What every connection of the server shares, whichever executor serves it.
pub(crate) struct Shared {
    pub handle: EngineHandle,
    pub options: ServerOptions,
    pub shutdown: shutdown::Shutdown,
    pub started: Instant,
    pub kafka: kafka::KafkaShared,
    pub metrics: metrics::Metrics,
    /// Connections open now, over every listener.
    pub open_connections: AtomicUsize,
    /// Of them, Kafka connections (over every executor's listener), under `connections_max`.
    pub kafka_connections: AtomicUsize,
}

/// A running server. [`stop`](Server::stop) it before closing the engine.
pub struct Server {
    shared: Arc<Shared>,
    kafka_addr: Option<SocketAddr>,
    stats_addr: Option<SocketAddr>,
    metrics_addr: Option<SocketAddr>,
}

/// How long [`Server::stop`] waits for connections to answer what they were doing.
const STOP_WAIT: Duration = Duration::from_secs(30);

impl Server {
    /// Binds the listeners and starts serving; returns once every listener is bound.
    pub fn start(handle: EngineHandle, options: ServerOptions) -> Result<Server, ServerError> {
        if options.connections_max == 0 || options.request_bytes_max < 64 || options.fetch_bytes_max == 0 {
            return Err(ServerError::InvalidOptions(
                "connections_max and fetch_bytes_max must be above zero, request_bytes_max at least 64".into(),
            ));
        }
        let shared = Arc::new(Shared {
            handle: handle.clone(),
            options: options.clone(),
            shutdown: shutdown::Shutdown::default(),
            started: Instant::now(),
            kafka: kafka::KafkaShared::default(),
            metrics: metrics::Metrics::default(),
            open_connections: AtomicUsize::new(0),
            kafka_connections: AtomicUsize::new(0),
        });
        let mut server = Server { shared: shared.clone(), kafka_addr: None, stats_addr: None, metrics_addr: None };
        let started = (|| {
            if let Some(addr) = options.kafka {
                // The first executor binds (a port 0 becomes a real one); the others bind the
                // port it got, side by side.
                let bound = conn::listen(&shared, 0, addr, conn::Protocol::Kafka)?;
                for executor in 1..handle.executors() {
                    conn::listen(&shared, executor, bound, conn::Protocol::Kafka)?;
                }
                server.kafka_addr = Some(bound);
            }
            if let Some(addr) = options.stats {
                server.stats_addr = Some(conn::listen(&shared, 0, addr, conn::Protocol::Stats)?);
            }
            if let Some(addr) = options.metrics {
                server.metrics_addr = Some(conn::listen(&shared, 0, addr, conn::Protocol::Metrics)?);
            }
            Ok(())
        })();
        if let Err(error) = started {
            shared.shutdown.stop_and_wait(STOP_WAIT);
            return Err(error);
        }
        if let Some(kafka) = server.kafka_addr {
            let advertised = options.advertised.clone().unwrap_or((kafka.ip().to_string(), kafka.port()));
            *shared.kafka.advertised.lock().expect("advertised lock") = advertised;
        }
        Ok(server)
    }

    /// The Kafka listener's address (with the port it got, when asked for port 0).
    pub fn kafka_addr(&self) -> Option<SocketAddr> {
        self.kafka_addr
    }

    pub fn stats_addr(&self) -> Option<SocketAddr> {
        self.stats_addr
    }

    pub fn metrics_addr(&self) -> Option<SocketAddr> {
        self.metrics_addr
    }

    /// Stops listening, lets every connection answer the request it is serving (refusing
    /// waits still pending), closes them, and returns once they all ended (or after 30 s).
    /// Whatever was acknowledged is durable already; the engine is closed by its owner.
    /// Returns whether every connection ended in time.
    pub fn stop(self) -> bool {
        self.shared.shutdown.stop_and_wait(STOP_WAIT)
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.shared.shutdown.stop_and_wait(STOP_WAIT);
    }
}
