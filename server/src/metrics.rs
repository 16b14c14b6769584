//! Prometheus metrics over HTTP (`GET /metrics`), in the OpenMetrics text format that
//! `prometheus-client` encodes: the engine's numbers read at each scrape (`snapshot.rs`), and
//! the server's own counters and latency histograms, kept as requests are answered.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::counter::{ConstCounter, Counter};
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;

use crate::conn::{Conn, ReadEnd};
use crate::snapshot::{self, HistogramSample, Kind, Sample, Scope};

/// The most header lines a request's head may have (its blank line not counted), and the
/// longest line of it, the request line included.
const HEAD_LINES_MAX: usize = 64;
const LINE_MAX: usize = 4096;

type Labels = Vec<(&'static str, String)>;

/// The server's own metrics, kept as it works.
pub(crate) struct Metrics {
    pub connections_accepted: Counter,
    pub connections_refused: Counter,
    requests: Family<Labels, Counter>,
    request_seconds: Family<Labels, Histogram, fn() -> Histogram>,
    requests_served: AtomicU64,
}

fn latency_histogram() -> Histogram {
    // 50 µs to about 26 s, doubling.
    Histogram::new(exponential_buckets(0.000_05, 2.0, 20))
}

impl Default for Metrics {
    fn default() -> Metrics {
        Metrics {
            connections_accepted: Counter::default(),
            connections_refused: Counter::default(),
            requests: Family::default(),
            request_seconds: Family::new_with_constructor(latency_histogram as fn() -> Histogram),
            requests_served: AtomicU64::new(0),
        }
    }
}

impl Metrics {
    /// Counts one answered request of the Kafka API `api`, and how long it took.
    pub(crate) fn request(&self, api: &'static str, took: Duration) {
        let labels = vec![("api", api.to_string())];
        self.requests.get_or_create(&labels).inc();
        self.request_seconds.get_or_create(&labels).observe(took.as_secs_f64());
        self.requests_served.fetch_add(1, Ordering::Relaxed);
    }

    pub(crate) fn requests_served(&self) -> u64 {
        self.requests_served.load(Ordering::Relaxed)
    }
}

/// The engine's numbers of one scrape, as a collector.
#[derive(Debug)]
struct Scrape(Vec<Sample>, Vec<HistogramSample>);

impl Collector for Scrape {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        for histogram in &self.1 {
            let metric_type = prometheus_client::metrics::MetricType::Histogram;
            let mut family = encoder.encode_descriptor(histogram.name, histogram.help, None, metric_type)?;
            family.encode_histogram::<Labels>(histogram.sum, histogram.count, &histogram.buckets, None)?;
        }
        // One descriptor per name (OpenMetrics wants a family's samples together). A family
        // with per-shard series carries no unlabelled total beside them, which a query's
        // `sum` would count twice (the `stats` face keeps the totals).
        let sharded: std::collections::BTreeSet<&'static str> =
            self.0.iter().filter(|s| matches!(s.scope, Scope::Shard(_))).map(|s| s.name).collect();
        let samples: Vec<&Sample> = self
            .0
            .iter()
            .filter(|s| s.kind != Kind::Quantile)
            .filter(|s| !(s.scope == Scope::Total && sharded.contains(s.name)))
            .collect();
        let mut names: Vec<&'static str> = samples.iter().map(|s| s.name).collect();
        names.dedup();
        names.sort_unstable();
        names.dedup();
        for name in names {
            let named: Vec<&Sample> = samples.iter().copied().filter(|s| s.name == name).collect();
            let first = named[0];
            let full_name = name.to_string();
            let metric_type = match first.kind {
                Kind::Counter => ConstCounter::new(0u64).metric_type(),
                _ => ConstGauge::new(0.0f64).metric_type(),
            };
            let mut family = encoder.encode_descriptor(&full_name, first.help, None, metric_type)?;
            for sample in named {
                let labels: Labels = match &sample.scope {
                    Scope::Total => vec![],
                    Scope::Shard(shard) => vec![("shard", shard.to_string())],
                    Scope::Group(group, partition) => {
                        vec![("group", group.clone()), ("partition", partition.to_string())]
                    }
                };
                let encoder = family.encode_family(&labels)?;
                match sample.kind {
                    Kind::Counter => ConstCounter::new(sample.value).encode(encoder)?,
                    _ => ConstGauge::new(sample.value).encode(encoder)?,
                }
            }
        }
        Ok(())
    }
}

/// What a request's head came to.
enum Head {
    /// Its request line (the header lines are read and not used).
    Request(String),
    /// A request line past `LINE_MAX`.
    LineTooLong,
    /// A header line past `LINE_MAX`, or more than `HEAD_LINES_MAX` of them.
    HeadersTooLarge,
}

/// Reads a request's head, or `None` if the peer closed first.
async fn read_head(conn: &mut Conn) -> Option<Head> {
    let mut line = Vec::new();
    match conn.read_line(&mut line, LINE_MAX).await {
        Ok(()) => {}
        Err(ReadEnd::TooLong) => return Some(Head::LineTooLong),
        Err(ReadEnd::Closed) => return None,
    }
    let request_line = String::from_utf8_lossy(&line).to_string();
    for _ in 0..=HEAD_LINES_MAX {
        match conn.read_line(&mut line, LINE_MAX).await {
            Ok(()) if line == b"\r\n" || line == b"\n" => return Some(Head::Request(request_line)),
            Ok(()) => {}
            Err(ReadEnd::TooLong) => return Some(Head::HeadersTooLarge),
            Err(ReadEnd::Closed) => return None,
        }
    }
    Some(Head::HeadersTooLarge)
}

/// The whole exposition of one scrape.
pub(crate) async fn render(shared: &crate::Shared) -> Result<String, tradeshard_engine::Error> {
    let snapshot = snapshot::take(shared).await?;
    let mut registry = Registry::with_prefix("tradeshard");
    registry.register_collector(Box::new(Scrape(snapshot.samples, snapshot.histograms)));
    let metrics = &shared.metrics;
    registry.register("server_connections_accepted", "Connections accepted.", metrics.connections_accepted.clone());
    registry.register(
        "server_connections_refused",
        "Connections closed at once: the server's limit was reached.",
        metrics.connections_refused.clone(),
    );
    registry.register("kafka_requests", "Kafka requests answered, per API.", metrics.requests.clone());
    registry.register(
        "kafka_request_duration_seconds",
        "Time from a Kafka request read to its answer written, per API.",
        metrics.request_seconds.clone(),
    );
    let mut out = String::new();
    prometheus_client::encoding::text::encode(&mut out, &registry)
        .map_err(|_| tradeshard_engine::Error::InvalidOptions("a metric could not be encoded".into()))?;
    Ok(out)
}

pub(crate) async fn serve(conn: &mut Conn) {
    // The whole head within `HEAD_MAX`, not only each byte within the idle limit.
    let head = futures_lite::future::or(async { Some(read_head(conn).await) }, async {
        glommio::timer::sleep(crate::conn::HEAD_MAX).await;
        None
    });
    let request_line = match head.await {
        Some(Some(Head::Request(line))) => line,
        // Answered, then closed: the rest of the head is not read.
        Some(Some(Head::LineTooLong)) => {
            if answer(conn, "414 URI Too Long", "text/plain", "request line too long\n".into()).await {
                conn.linger().await;
            }
            return;
        }
        Some(Some(Head::HeadersTooLarge)) => {
            if answer(conn, "431 Request Header Fields Too Large", "text/plain", "head too large\n".into()).await {
                conn.linger().await;
            }
            return;
        }
        Some(None) | None => return,
    };
    let mut parts = request_line.split_whitespace();
    let method = parts.next().unwrap_or("");
    // A query (`/metrics?x=1`, as scrapers with parameters send) names the same page.
    let path = parts.next().unwrap_or("").split('?').next().unwrap_or("");
    let (status, content_type, body) = match (method, path) {
        ("GET", "/metrics") => match render(&conn.shared).await {
            Ok(body) => ("200 OK", "application/openmetrics-text; version=1.0.0; charset=utf-8", body),
            Err(error) => ("503 Service Unavailable", "text/plain", format!("{error}\n")),
        },
        ("GET", _) => ("404 Not Found", "text/plain", "not found: try /metrics\n".to_string()),
        _ => ("405 Method Not Allowed", "text/plain", "only GET\n".to_string()),
    };
    // A request of another method may carry a body, which is not read: closed unread, it
    // could reset the connection under the answer.
    if answer(conn, status, content_type, body).await && method != "GET" {
        conn.linger().await;
    }
}

/// Writes one whole answer (whether it was written); the connection closes after it.
async fn answer(conn: &mut Conn, status: &str, content_type: &str, body: String) -> bool {
    let allow = if status.starts_with("405") { "Allow: GET\r\n" } else { "" };
    let head = format!(
        "HTTP/1.1 {status}\r\n{allow}Content-Type: {content_type}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    );
    conn.write_all(head.as_bytes()).await.is_ok() && conn.write_all(body.as_bytes()).await.is_ok()
}
