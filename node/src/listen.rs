//! Accepting connections without letting idle or hostile clients starve the others: a
//! connection limit per listener and per client address, a deadline for a new connection
//! to start talking, an idle timeout, backoff when `accept` fails (out of file
//! descriptors) and warnings that are rate-limited instead of one per failure.
//!
//! When a limit is reached, the oldest connection that has not started talking yet (it
//! sent fewer than [`STARTED_BYTES`]) is closed to make room; only if there is none is the
//! new one refused. So a flood of idle connections cannot keep a real client out: the
//! client's connection starts talking at once, the flood's never does.

use std::collections::HashMap;
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, Waker};
use std::time::{Duration, Instant};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio::time::Sleep;
use tokio_stream::wrappers::ReceiverStream;
use tonic::transport::server::{Connected, TcpConnectInfo};

/// Connections one listener keeps open at most.
pub const MAX_CONNECTIONS: usize = 512;
/// Connections one client address keeps open on one listener at most.
pub const MAX_CONNECTIONS_PER_ADDRESS: usize = 64;
/// How long a new connection may take to send its first [`STARTED_BYTES`].
pub const START_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a connection may send nothing at all. HTTP/2 clients answer the server's
/// keepalive pings ([`KEEPALIVE_INTERVAL`]), so only a dead or stalled one reaches it.
pub const IDLE_TIMEOUT: Duration = Duration::from_secs(300);
/// How often the gRPC servers ping an idle HTTP/2 connection, and how long they wait for
/// the answer before closing it.
pub const KEEPALIVE_INTERVAL: Duration = Duration::from_secs(60);
pub const KEEPALIVE_TIMEOUT: Duration = Duration::from_secs(20);
/// Bytes a connection sends before it counts as talking: the HTTP/2 preface is 24, a TLS
/// ClientHello a few hundred.
pub const STARTED_BYTES: u64 = 24;

/// Longest pause after a failed `accept`, doubling from 10 ms.
const ACCEPT_BACKOFF_MAX: Duration = Duration::from_secs(1);
/// A repeated warning is logged at most once per this interval, with how many were held back.
const WARN_EVERY: Duration = Duration::from_secs(10);

/// What a connection and its listener's pool share.
#[derive(Debug, Default)]
struct Shared {
    /// Bytes read so far.
    read: AtomicU64,
    /// Closed to make room: the connection's next read sees end of file.
    evicted: AtomicBool,
    /// Who to wake when it is evicted while waiting to read.
    waker: Mutex<Option<Waker>>,
}

/// One open connection, as its listener's pool knows it.
#[derive(Debug)]
struct Entry {
    address: IpAddr,
    opened: Instant,
    shared: Arc<Shared>,
}

#[derive(Debug, Default)]
struct Pool {
    next_id: u64,
    open: HashMap<u64, Entry>,
}

impl Pool {
    /// Closes the oldest connection (among those of `address`, if given) that has not
    /// started talking yet; false if there is none.
    fn evict_one(&mut self, address: Option<IpAddr>) -> bool {
        let oldest = self
            .open
            .iter()
            .filter(|(_, e)| {
                address.is_none_or(|a| a == e.address) && e.shared.read.load(Ordering::Relaxed) < STARTED_BYTES
            })
            .min_by_key(|(_, e)| e.opened)
            .map(|(id, _)| *id);
        let Some(id) = oldest else { return false };
        let entry = self.open.remove(&id).expect("found above");
        // The connection's own task sees end of file and closes it.
        entry.shared.evicted.store(true, Ordering::Release);
        if let Some(waker) = entry.shared.waker.lock().unwrap_or_else(std::sync::PoisonError::into_inner).take() {
            waker.wake();
        }
        true
    }
}

/// A warning that repeats: logged the first time, then at most once per [`WARN_EVERY`]
/// with the number held back since.
#[derive(Debug)]
struct Throttled {
    last: Option<Instant>,
    held: u64,
}

impl Throttled {
    fn new() -> Self {
        Self { last: None, held: 0 }
    }

    /// Whether to log now, and how many were held back before this one.
    fn allow(&mut self) -> Option<u64> {
        let now = Instant::now();
        if self.last.is_some_and(|t| now.duration_since(t) < WARN_EVERY) {
            self.held += 1;
            return None;
        }
        self.last = Some(now);
        Some(std::mem::take(&mut self.held))
    }
}

/// Limits of one listener.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    pub max_connections: usize,
    pub max_per_address: usize,
    pub start_timeout: Duration,
    pub idle_timeout: Duration,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_connections: MAX_CONNECTIONS,
            max_per_address: MAX_CONNECTIONS_PER_ADDRESS,
            start_timeout: START_TIMEOUT,
            idle_timeout: IDLE_TIMEOUT,
        }
    }
}

/// Accepts on `listener` (named `name` in logs) until `stop` turns true, within `limits`:
/// the connections, for `Server::serve_with_incoming_shutdown`.
pub fn incoming(
    listener: TcpListener,
    name: &'static str,
    limits: Limits,
    stop: watch::Receiver<bool>,
) -> ReceiverStream<io::Result<Guarded>> {
    let (tx, rx) = tokio::sync::mpsc::channel(16);
    tokio::spawn(accept_loop(listener, name, limits, stop, tx));
    ReceiverStream::new(rx)
}

async fn accept_loop(
    listener: TcpListener,
    name: &'static str,
    limits: Limits,
    mut stop: watch::Receiver<bool>,
    tx: tokio::sync::mpsc::Sender<io::Result<Guarded>>,
) {
    let pool = Arc::new(Mutex::new(Pool::default()));
    let (mut accept_warning, mut limit_warning) = (Throttled::new(), Throttled::new());
    let mut backoff = Duration::ZERO;
    loop {
        let accepted = tokio::select! {
            accepted = listener.accept() => accepted,
            _ = stop.wait_for(|s| *s) => return,
        };
        let (stream, peer) = match accepted {
            Ok(a) => {
                backoff = Duration::ZERO;
                a
            }
            Err(e) => {
                // Out of file descriptors, most often: accepting again at once would spin.
                backoff = (backoff * 2).clamp(Duration::from_millis(10), ACCEPT_BACKOFF_MAX);
                if let Some(held) = accept_warning.allow() {
                    tracing::warn!(listener = name, error = %e, held_back = held, retry_in = ?backoff, "cannot accept a connection");
                }
                tokio::time::sleep(backoff).await;
                continue;
            }
        };
        let Some(guarded) = admit(&pool, stream, peer, limits, name, &mut limit_warning) else { continue };
        if tx.send(Ok(guarded)).await.is_err() {
            return;
        }
    }
}

/// Takes `stream` into the pool, making room if a limit is reached, or refuses it (`None`).
fn admit(
    pool: &Arc<Mutex<Pool>>,
    stream: TcpStream,
    peer: SocketAddr,
    limits: Limits,
    name: &'static str,
    warning: &mut Throttled,
) -> Option<Guarded> {
    let mut guard = pool.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
    let address = peer.ip();
    let of_address = guard.open.values().filter(|e| e.address == address).count();
    let room = (of_address < limits.max_per_address || guard.evict_one(Some(address)))
        && (guard.open.len() < limits.max_connections || guard.evict_one(None));
    if !room {
        drop(guard);
        if let Some(held) = warning.allow() {
            tracing::warn!(listener = name, client = %address, open = of_address, held_back = held, "connection refused: limit reached");
        }
        return None;
    }
    let id = guard.next_id;
    guard.next_id += 1;
    let shared = Arc::new(Shared::default());
    guard.open.insert(id, Entry { address, opened: Instant::now(), shared: shared.clone() });
    drop(guard);
    let deadline = Box::pin(tokio::time::sleep(limits.start_timeout));
    Some(Guarded { _slot: Slot { pool: pool.clone(), id }, stream, shared, deadline, limits })
}

/// Removes its connection from the pool when dropped (before the stream closes).
#[derive(Debug)]
struct Slot {
    pool: Arc<Mutex<Pool>>,
    id: u64,
}

impl Drop for Slot {
    fn drop(&mut self) {
        self.pool.lock().unwrap_or_else(std::sync::PoisonError::into_inner).open.remove(&self.id);
    }
}

/// An accepted connection that closes itself when it does not start talking in time or
/// goes idle for too long.
#[derive(Debug)]
pub struct Guarded {
    _slot: Slot,
    stream: TcpStream,
    shared: Arc<Shared>,
    deadline: Pin<Box<Sleep>>,
    limits: Limits,
}

impl Guarded {
    /// The peer's address.
    pub fn peer_addr(&self) -> io::Result<SocketAddr> {
        self.stream.peer_addr()
    }

    /// Waits for the first bytes and copies them into `buf` without consuming them.
    pub async fn peek(&self, buf: &mut [u8]) -> io::Result<usize> {
        self.stream.peek(buf).await
    }
}

impl AsyncRead for Guarded {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        if self.shared.evicted.load(Ordering::Acquire) {
            return Poll::Ready(Ok(()));
        }
        let before = buf.filled().len();
        match Pin::new(&mut self.stream).poll_read(cx, buf) {
            Poll::Ready(Ok(())) => {
                let n = (buf.filled().len() - before) as u64;
                let total = self.shared.read.fetch_add(n, Ordering::Relaxed) + n;
                if n > 0 && total >= STARTED_BYTES {
                    let next = tokio::time::Instant::now() + self.limits.idle_timeout;
                    self.deadline.as_mut().reset(next);
                }
                Poll::Ready(Ok(()))
            }
            Poll::Ready(Err(e)) => Poll::Ready(Err(e)),
            Poll::Pending => match self.deadline.as_mut().poll(cx) {
                Poll::Ready(()) => {
                    let started = self.shared.read.load(Ordering::Relaxed) >= STARTED_BYTES;
                    let what = if started { "idle for too long" } else { "did not start talking in time" };
                    Poll::Ready(Err(io::Error::new(io::ErrorKind::TimedOut, what)))
                }
                Poll::Pending => {
                    // Only a connection that has not started talking can be evicted.
                    if self.shared.read.load(Ordering::Relaxed) < STARTED_BYTES {
                        let mut waker = self.shared.waker.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
                        *waker = Some(cx.waker().clone());
                        drop(waker);
                        if self.shared.evicted.load(Ordering::Acquire) {
                            return Poll::Ready(Ok(()));
                        }
                    }
                    Poll::Pending
                }
            },
        }
    }
}

impl AsyncWrite for Guarded {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.stream).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.stream).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.stream.is_write_vectored()
    }
}

impl Connected for Guarded {
    type ConnectInfo = TcpConnectInfo;

    fn connect_info(&self) -> TcpConnectInfo {
        self.stream.connect_info()
    }
}

/// Raises this process's soft limit on open files to its hard limit, so that the
/// connection limits, not the descriptor limit, decide; warns when even the hard limit is
/// below what the listeners may hold. Returns the limit in force (`u64::MAX`: none).
pub fn raise_open_files_limit(listeners: usize) -> u64 {
    use rustix::process::{Resource, Rlimit, getrlimit, setrlimit};
    let limit = getrlimit(Resource::Nofile);
    if limit.current != limit.maximum {
        let raised = Rlimit { current: limit.maximum, maximum: limit.maximum };
        if let Err(e) = setrlimit(Resource::Nofile, raised) {
            tracing::debug!(error = %e, "cannot raise the open-files limit");
        }
    }
    let now = getrlimit(Resource::Nofile).current.unwrap_or(u64::MAX);
    let needed = (listeners * MAX_CONNECTIONS + 256) as u64;
    if now < needed {
        tracing::warn!(
            limit = now,
            needed,
            "the open-files limit is below what the listeners may hold; raise it (systemd: LimitNOFILE=65536)"
        );
    }
    now
}

/// A listener for axum within the connection limits and deadlines of [`incoming`].
pub struct GuardedListener {
    incoming: ReceiverStream<io::Result<Guarded>>,
    local: SocketAddr,
}

impl GuardedListener {
    pub fn new(
        listener: TcpListener,
        name: &'static str,
        limits: Limits,
        stop: watch::Receiver<bool>,
    ) -> io::Result<Self> {
        let local = listener.local_addr()?;
        Ok(Self { incoming: incoming(listener, name, limits, stop), local })
    }
}

impl axum::serve::Listener for GuardedListener {
    type Io = Guarded;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        use tokio_stream::StreamExt;
        loop {
            match self.incoming.next().await {
                Some(Ok(io)) => match io.peer_addr() {
                    Ok(addr) => return (io, addr),
                    Err(_) => continue,
                },
                Some(Err(_)) => continue,
                // Stopped: the server's graceful shutdown ends it.
                None => std::future::pending::<()>().await,
            }
        }
    }

    fn local_addr(&self) -> io::Result<Self::Addr> {
        Ok(self.local)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_repeated_warning_is_logged_once_per_interval_with_the_count_held_back() {
        let mut t = Throttled::new();
        assert_eq!(t.allow(), Some(0));
        for _ in 0..1000 {
            assert_eq!(t.allow(), None);
        }
        t.last = Some(Instant::now() - WARN_EVERY);
        assert_eq!(t.allow(), Some(1000));
    }
}
