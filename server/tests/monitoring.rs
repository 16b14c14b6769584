//! `Server`'s monitoring faces against raw sockets: the `stats` text protocol and the
//! Prometheus metrics over HTTP, in their formats and at their limits.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::Duration;

use tradeshard_server::ServerOptions;

mod common;

use common::{http, Running};

#[test]
fn stats_and_metrics_answer_in_their_formats() {
    let running = Running::start(ServerOptions::default());
    let mut stats = TcpStream::connect(running.server().stats_addr().unwrap()).unwrap();
    stats.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    stats.write_all(b"stats\r\n").unwrap();
    let mut text = String::new();
    while !text.ends_with("END\r\n") {
        let mut chunk = [0u8; 4096];
        let n = stats.read(&mut chunk).unwrap();
        assert!(n > 0, "closed before END: {text}");
        text.push_str(std::str::from_utf8(&chunk[..n]).unwrap());
    }
    let lines: Vec<&str> = text.lines().collect();
    for line in &lines[..lines.len() - 1] {
        let parts: Vec<&str> = line.split(' ').collect();
        assert_eq!((parts.len(), parts[0]), (3, "STAT"), "{line}");
        assert!(parts[2].parse::<f64>().is_ok(), "{line}");
    }
    assert!(text.contains("STAT shard.1.trades 0\r\n") && text.contains("STAT uptime_seconds "), "{text}");
    stats.write_all(b"bogus\r\n").unwrap();
    let mut answer = [0u8; 7];
    stats.read_exact(&mut answer).unwrap();
    assert_eq!(&answer, b"ERROR\r\n");

    let metrics = running.server().metrics_addr().unwrap();
    let page = http(TcpStream::connect(metrics).unwrap(), b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n");
    assert!(page.starts_with("HTTP/1.1 200 OK\r\n"), "{page}");
    assert!(
        page.contains("# TYPE tradeshard_trades gauge") && page.contains("tradeshard_trades{shard=\"0\"} 0"),
        "{page}"
    );
    assert!(page.contains("# TYPE tradeshard_fsyncs counter") && page.trim_end().ends_with("# EOF"), "{page}");
    // A family with per-shard series has no unlabelled total beside them (a `sum` would count
    // it twice).
    for family in
        ["tradeshard_trades ", "tradeshard_records_total ", "tradeshard_fsyncs_total ", "tradeshard_disk_bytes "]
    {
        assert!(!page.lines().any(|line| line.starts_with(family)), "{family}in {page}");
    }
    assert!(page.contains("tradeshard_records_total{shard=\"0\"}"), "{page}");
    // What the checkpoints did and took, per shard (none yet on a fresh engine).
    for counter in ["checkpoints", "checkpoints_failed", "checkpoint_busy_seconds", "run_merge_busy_seconds"] {
        assert!(page.contains(&format!("# TYPE tradeshard_{counter} counter")), "{counter} in {page}");
        assert!(page.contains(&format!("tradeshard_{counter}_total{{shard=\"1\"}} 0")), "{counter} in {page}");
    }
    assert!(page.contains("# TYPE tradeshard_durable_flush_seconds histogram"), "{page}");
    assert!(page.contains("tradeshard_group_commit_records_bucket{le=\"+Inf\"}"), "{page}");
    assert!(!page.contains("tradeshard_checkpoint_age_seconds{"), "no age before a checkpoint: {page}");
    running.engine.as_ref().unwrap().handle().checkpoint_blocking().unwrap();
    let page = http(TcpStream::connect(metrics).unwrap(), b"GET /metrics HTTP/1.1\r\n\r\n");
    assert!(page.contains("tradeshard_checkpoints_total{shard=\"0\"} 1"), "{page}");
    assert!(page.contains("# TYPE tradeshard_checkpoint_age_seconds gauge"), "{page}");
    let age = page.lines().find_map(|line| line.strip_prefix("tradeshard_checkpoint_age_seconds{shard=\"1\"} "));
    assert!(age.and_then(|age| age.parse::<f64>().ok()).is_some_and(|age| (0.0..60.0).contains(&age)), "{page}");
    let page = http(TcpStream::connect(metrics).unwrap(), b"GET /metrics?from=test HTTP/1.1\r\n\r\n");
    assert!(page.starts_with("HTTP/1.1 200 OK\r\n"), "a query names the same page: {page}");
    let page = http(TcpStream::connect(metrics).unwrap(), b"GET /nothing HTTP/1.1\r\n\r\n");
    assert!(page.starts_with("HTTP/1.1 404"), "{page}");
}

/// A line past a face's limit is answered with that protocol's error, then the connection
/// closes: `stats` lines of 1,024 bytes, HTTP lines of 4,096 and heads of more than 64 header
/// lines. The lines sent go on past what the server reads: it drops the rest while it closes,
/// so that the answer is not lost to a reset.
#[test]
fn lines_past_the_limits_are_answered_with_their_protocols_error() {
    let running = Running::start(ServerOptions::default());
    let mut stats = TcpStream::connect(running.server().stats_addr().unwrap()).unwrap();
    stats.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    stats.write_all(&[b's'; 100_000]).unwrap();
    let mut answer = String::new();
    stats.read_to_string(&mut answer).unwrap();
    assert_eq!(answer, "CLIENT_ERROR line too long\r\n");

    let metrics = running.server().metrics_addr().unwrap();
    let mut long_line = b"GET /metrics?".to_vec();
    long_line.resize(100_000, b'q');
    let page = http(TcpStream::connect(metrics).unwrap(), &long_line);
    assert!(page.starts_with("HTTP/1.1 414 "), "{page}");
    let mut long_header = b"GET /metrics HTTP/1.1\r\nX-Long: ".to_vec();
    long_header.resize(100_000, b'h');
    let page = http(TcpStream::connect(metrics).unwrap(), &long_header);
    assert!(page.starts_with("HTTP/1.1 431 "), "{page}");
    let headers = |count: usize| format!("GET /metrics HTTP/1.1\r\n{}\r\n", "X-Many: 1\r\n".repeat(count));
    let page = http(TcpStream::connect(metrics).unwrap(), headers(65).as_bytes());
    assert!(page.starts_with("HTTP/1.1 431 "), "{page}");
    let page = http(TcpStream::connect(metrics).unwrap(), headers(64).as_bytes());
    assert!(page.starts_with("HTTP/1.1 200 OK\r\n"), "64 header lines are read: {page}");
    // A body the server does not read (another method's) does not lose the answer either.
    let mut post = b"POST /metrics HTTP/1.1\r\nContent-Length: 100000\r\n\r\n".to_vec();
    post.resize(post.len() + 100_000, b'b');
    let page = http(TcpStream::connect(metrics).unwrap(), &post);
    assert!(page.starts_with("HTTP/1.1 405 "), "{page}");
    let page = http(TcpStream::connect(metrics).unwrap(), b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n");
    assert!(page.starts_with("HTTP/1.1 200 OK\r\n"), "and the face still answers: {page}");
}
