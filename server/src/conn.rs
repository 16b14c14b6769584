//! Listeners and connections: an accept loop per listener on its executor, the limit on open
//! connections, and reads that give way to a stop between requests.

use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::Arc;

use futures_lite::{AsyncReadExt, AsyncWriteExt};
use glommio::net::{TcpListener, TcpStream};

use crate::shutdown::{Shutdown, CHECK_INTERVAL};
use crate::{ServerError, Shared};

/// What a listener speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Protocol {
    Kafka,
    Stats,
    Metrics,
}

/// Binds `addr` on executor `executor` and serves `protocol` there until the server stops;
/// answers the address bound.
pub(crate) fn listen(
    shared: &Arc<Shared>,
    executor: usize,
    addr: SocketAddr,
    protocol: Protocol,
) -> Result<SocketAddr, ServerError> {
    let (bound_tx, bound_rx) = std::sync::mpsc::channel();
    let task_shared = shared.clone();
    let guard = Shutdown::track(shared);
    futures_lite::future::block_on(shared.handle.spawn_on(executor, move || async move {
        let _guard = guard;
        let listener = match TcpListener::bind(addr) {
            Ok(listener) => listener,
            Err(error) => {
                let _ = bound_tx.send(Err(std::io::Error::other(error.to_string())));
                return;
            }
        };
        let _ = bound_tx.send(listener.local_addr().map_err(|e| std::io::Error::other(e.to_string())));
        accept_loop(task_shared, listener, protocol).await
    }))?;
    match bound_rx.recv() {
        Ok(Ok(bound)) => Ok(bound),
        Ok(Err(source)) => Err(ServerError::Bind { addr, source }),
        Err(_) => Err(ServerError::Bind { addr, source: std::io::Error::other("the listener's executor stopped") }),
    }
}

/// Connections open at once on the `stats` listener, and on the metrics one: each counted
/// apart from the Kafka listener's, so that monitoring and clients cannot starve each other.
const MONITOR_CONNECTIONS_MAX: usize = 64;

/// How long an HTTP request's head may take to arrive whole (the idle limit of a connection
/// applies between bytes: a peer sending one byte now and then would hold its slot for hours).
pub(crate) const HEAD_MAX: std::time::Duration = std::time::Duration::from_secs(10);

async fn accept_loop(shared: Arc<Shared>, listener: TcpListener, protocol: Protocol) {
    let limit = match protocol {
        Protocol::Kafka => shared.options.connections_max,
        Protocol::Stats | Protocol::Metrics => shared.options.connections_max.min(MONITOR_CONNECTIONS_MAX),
    };
    // A monitoring listener's connections, all served on this executor (the Kafka listeners,
    // one per executor, share one count).
    let open_here = std::rc::Rc::new(std::cell::Cell::new(0usize));
    // One accept stays in flight across the looks at the stop flag: an io_uring accept
    // cancelled as it completes would take a connection and drop it unanswered.
    let mut accept = Box::pin(listener.accept());
    while !shared.shutdown.is_stopping() {
        let accepted = futures_lite::future::or(async { Some(accept.as_mut().await) }, async {
            glommio::timer::sleep(CHECK_INTERVAL).await;
            None
        })
        .await;
        if accepted.is_some() {
            accept = Box::pin(listener.accept());
        }
        let stream = match accepted {
            None => continue,
            Some(Ok(stream)) => stream,
            Some(Err(_)) => {
                // Out of descriptors, or a connection reset before it was taken: wait a
                // little rather than spin, and go on.
                glommio::timer::sleep(CHECK_INTERVAL).await;
                continue;
            }
        };
        let Some(slot) = Slot::take(&shared, &open_here, protocol, limit) else {
            shared.metrics.connections_refused.inc();
            drop(stream);
            continue;
        };
        shared.open_connections.fetch_add(1, Ordering::SeqCst);
        shared.metrics.connections_accepted.inc();
        let guard = Shutdown::track(&shared);
        let conn_shared = shared.clone();
        glommio::spawn_local(async move {
            let _slot = slot;
            let _guard = guard;
            let _ = stream.set_nodelay(true);
            let mut conn = Conn { stream, shared: conn_shared.clone() };
            match protocol {
                Protocol::Kafka => crate::kafka::serve(&mut conn).await,
                Protocol::Stats => crate::stats::serve(&mut conn).await,
                Protocol::Metrics => crate::metrics::serve(&mut conn).await,
            }
            conn_shared.open_connections.fetch_sub(1, Ordering::SeqCst);
        })
        .detach();
    }
}

/// A connection's place under its listener's limit, given back when it drops.
enum Slot {
    Kafka(Arc<Shared>),
    Monitor(std::rc::Rc<std::cell::Cell<usize>>),
}

impl Slot {
    /// A place under `limit`, if there is one.
    fn take(
        shared: &Arc<Shared>,
        open_here: &std::rc::Rc<std::cell::Cell<usize>>,
        protocol: Protocol,
        limit: usize,
    ) -> Option<Slot> {
        match protocol {
            Protocol::Kafka => {
                if shared.kafka_connections.fetch_add(1, Ordering::SeqCst) >= limit {
                    shared.kafka_connections.fetch_sub(1, Ordering::SeqCst);
                    return None;
                }
                Some(Slot::Kafka(shared.clone()))
            }
            Protocol::Stats | Protocol::Metrics => {
                if open_here.get() >= limit {
                    return None;
                }
                open_here.set(open_here.get() + 1);
                Some(Slot::Monitor(open_here.clone()))
            }
        }
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        match self {
            Slot::Kafka(shared) => {
                shared.kafka_connections.fetch_sub(1, Ordering::SeqCst);
            }
            Slot::Monitor(open) => open.set(open.get() - 1),
        }
    }
}

/// How long a connection may send nothing before it is closed (Kafka's
/// `connections.max.idle.ms`), so that silent sockets cannot hold the connection limit.
pub(crate) const IDLE_MAX: std::time::Duration = std::time::Duration::from_secs(600);

/// How long one answer may take to be written before the connection is closed.
pub(crate) const WRITE_MAX: std::time::Duration = std::time::Duration::from_secs(30);

/// One connection, on the executor that accepted it.
pub(crate) struct Conn {
    pub stream: TcpStream,
    pub shared: Arc<Shared>,
}

/// Why a read gave up.
#[derive(Debug)]
pub(crate) enum ReadEnd {
    /// The peer closed, reset, or the server is stopping between requests.
    Closed,
    /// A line past the length its reader allows ([`Conn::read_line`]): the reader answers it
    /// with its protocol's error before it closes.
    TooLong,
}

/// How long a connection ended with its peer's bytes unread keeps reading and dropping them
/// ([`Conn::linger`]), and how many it drops at most.
const LINGER_MAX: std::time::Duration = std::time::Duration::from_secs(1);
const LINGER_BYTES_MAX: usize = 1 << 20;

impl Conn {
    /// Ends a connection whose peer may still be sending what will not be read, once its
    /// answer is written: the write side is shut (the peer reads the answer to its end), then
    /// what the peer sends is read and dropped for a short while. Closed with those bytes
    /// unread, the socket would reset the connection, and the peer could lose the answer.
    pub(crate) async fn linger(&mut self) {
        if self.stream.shutdown(std::net::Shutdown::Write).await.is_err() {
            return;
        }
        let (started, mut dropped) = (std::time::Instant::now(), 0);
        let mut sink = [0u8; 4096];
        while dropped < LINGER_BYTES_MAX {
            let Some(left) = LINGER_MAX.checked_sub(started.elapsed()) else { return };
            let read = futures_lite::future::or(async { Some(self.stream.read(&mut sink).await) }, async {
                glommio::timer::sleep(left).await;
                None
            });
            match read.await {
                Some(Ok(n)) if n > 0 => dropped += n,
                _ => return,
            }
        }
    }

    /// Fills `buf` from the stream; a stop or a peer silent for [`IDLE_MAX`] ends it.
    pub(crate) async fn read_exact(&mut self, buf: &mut [u8]) -> Result<(), ReadEnd> {
        // Requests already buffered are not served once a stop began: a client with many
        // queued would otherwise hold the stop until they are all answered.
        if self.shared.shutdown.is_stopping() {
            return Err(ReadEnd::Closed);
        }
        let mut filled = 0;
        let mut idle_since = std::time::Instant::now();
        while filled < buf.len() {
            let read = futures_lite::future::or(async { Some(self.stream.read(&mut buf[filled..]).await) }, async {
                glommio::timer::sleep(CHECK_INTERVAL).await;
                None
            });
            let read = match read.await {
                Some(read) => read,
                None => Err(std::io::ErrorKind::TimedOut.into()),
            };
            match read {
                Ok(0) => return Err(ReadEnd::Closed),
                Ok(n) => {
                    filled += n;
                    idle_since = std::time::Instant::now();
                }
                Err(error) if is_timeout(&error) => {
                    // A stop ends a connection between requests, or in the middle of one not
                    // yet read whole (nothing of it was done); so does a peer silent too long.
                    if self.shared.shutdown.is_stopping() || idle_since.elapsed() > IDLE_MAX {
                        return Err(ReadEnd::Closed);
                    }
                }
                Err(_) => return Err(ReadEnd::Closed),
            }
        }
        Ok(())
    }

    /// Reads up to and including the first `\n`, at most `max` bytes (else `TooLong`).
    pub(crate) async fn read_line(&mut self, line: &mut Vec<u8>, max: usize) -> Result<(), ReadEnd> {
        line.clear();
        let mut byte = [0u8; 1];
        while line.last() != Some(&b'\n') {
            if line.len() >= max {
                return Err(ReadEnd::TooLong);
            }
            self.read_exact(&mut byte).await?;
            line.push(byte[0]);
        }
        Ok(())
    }

    /// Writes `bytes` whole; a stop, or a peer that takes none of it for [`WRITE_MAX`], ends
    /// the connection (a client that sends requests and never reads its answers would
    /// otherwise hold its slot, and a stop, forever).
    pub(crate) async fn write_all(&mut self, bytes: &[u8]) -> Result<(), ReadEnd> {
        let started = std::time::Instant::now();
        let mut write = std::pin::pin!(self.stream.write_all(bytes));
        loop {
            let ticked = futures_lite::future::or(async { Some((&mut write).await) }, async {
                glommio::timer::sleep(CHECK_INTERVAL).await;
                None
            });
            match ticked.await {
                Some(written) => return written.map_err(|_| ReadEnd::Closed),
                None if self.shared.shutdown.is_stopping() || started.elapsed() > WRITE_MAX => {
                    return Err(ReadEnd::Closed)
                }
                None => {}
            }
        }
    }
}

fn is_timeout(error: &std::io::Error) -> bool {
    matches!(error.kind(), std::io::ErrorKind::TimedOut | std::io::ErrorKind::WouldBlock)
}
