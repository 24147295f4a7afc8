//! Serving connections, the same way on every listener of every role: one accept loop
//! with a connection cap and backoff on accept errors (a full file-descriptor table must
//! not spin a core), a TLS handshake deadline, and per connection the HTTP timeouts
//! the flags name: header read, stalled response write, and idle.

use std::convert::Infallible;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::task::{Context, Poll, ready};
use std::time::Duration;

use http::{Request, Response};
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;
use tokio::time::{Instant, Sleep};
use tokio_rustls::TlsAcceptor;
use tokio_rustls::server::TlsStream;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::tunnel::body::{self, Body};

/// Binds one listener, naming the flag when the port is taken.
pub async fn bind(address: std::net::IpAddr, port: u16, flag: &str) -> anyhow::Result<TcpListener> {
    let addr = SocketAddr::new(address, port);
    TcpListener::bind(addr).await.map_err(|e| {
        anyhow::anyhow!("cannot listen on {addr} ({flag}): {e}; is another process using it?")
    })
}

/// How long a client gets to complete the TLS handshake.
pub const TLS_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// The longest pause after repeated accept errors.
const MAX_ACCEPT_BACKOFF: Duration = Duration::from_secs(1);

/// The time limits of one HTTP connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HttpTimeouts {
    /// A request's headers must arrive within this (HTTP/1.1; it also closes a keep-alive
    /// connection that sends no next request for this long).
    pub header_read: Duration,
    /// A response write that makes no progress for this long closes the connection.
    pub write: Duration,
    /// A connection with no request in flight for this long is closed gracefully.
    pub idle: Duration,
}

/// Accepts connections until `stop`. At most `max_connections` are served at once;
/// beyond that a new connection is closed at once, rather than left in the kernel's
/// backlog where a flood would queue ahead of every later client. `handle` runs as its
/// own task.
pub async fn accept_loop<F, Fut>(
    listener: TcpListener,
    what: &'static str,
    max_connections: usize,
    stop: CancellationToken,
    tracker: TaskTracker,
    handle: F,
) where
    F: Fn(TcpStream, SocketAddr) -> Fut,
    Fut: std::future::Future<Output = ()> + Send + 'static,
{
    let cap = Arc::new(Semaphore::new(max_connections.max(1)));
    let mut backoff = Duration::ZERO;
    let mut refused: u64 = 0;
    loop {
        let accepted = tokio::select! {
            accepted = listener.accept() => accepted,
            _ = stop.cancelled() => return,
        };
        match accepted {
            Ok((tcp, remote)) => {
                backoff = Duration::ZERO;
                let Ok(permit) = cap.clone().try_acquire_owned() else {
                    refused += 1;
                    if refused.is_power_of_two() {
                        tracing::warn!(
                            listener = what,
                            max_connections,
                            refused,
                            "connection cap reached; closing new connections"
                        );
                    }
                    continue;
                };
                let _ = tcp.set_nodelay(true);
                let connection = handle(tcp, remote);
                tracker.spawn(async move {
                    connection.await;
                    drop(permit);
                });
            }
            Err(e) => {
                backoff = (backoff * 2).clamp(Duration::from_millis(10), MAX_ACCEPT_BACKOFF);
                tracing::warn!(listener = what, error = %e, pause = ?backoff, "accepting a connection failed");
                tokio::select! {
                    _ = tokio::time::sleep(backoff) => {}
                    _ = stop.cancelled() => return,
                }
            }
        }
    }
}

/// The TLS handshake, bounded by [`TLS_HANDSHAKE_TIMEOUT`].
pub async fn tls_handshake(
    acceptor: &TlsAcceptor,
    tcp: TcpStream,
) -> Result<TlsStream<TcpStream>, HandshakeError> {
    match tokio::time::timeout(TLS_HANDSHAKE_TIMEOUT, acceptor.accept(tcp)).await {
        Ok(Ok(tls)) => Ok(tls),
        Ok(Err(e)) => Err(HandshakeError::Tls(e)),
        Err(_) => Err(HandshakeError::TimedOut),
    }
}

#[derive(Debug, thiserror::Error)]
pub enum HandshakeError {
    #[error("TLS handshake failed: {0}")]
    Tls(io::Error),
    #[error("TLS handshake not completed within {TLS_HANDSHAKE_TIMEOUT:?}")]
    TimedOut,
}

impl HandshakeError {
    /// The rustls error behind a failed handshake, when there is one.
    pub fn rustls(&self) -> Option<&rustls::Error> {
        match self {
            HandshakeError::Tls(e) => e.get_ref()?.downcast_ref::<rustls::Error>(),
            HandshakeError::TimedOut => None,
        }
    }
}

/// An HTTP/1.1 and HTTP/2 server builder with the header-read timeout and the tunnel's
/// HTTP/2 windows.
pub fn http_builder(timeouts: &HttpTimeouts) -> auto::Builder<TokioExecutor> {
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(timeouts.header_read);
    builder
        .http2()
        .timer(TokioTimer::new())
        .initial_stream_window_size(crate::tunnel::protocol::STREAM_WINDOW)
        .initial_connection_window_size(crate::tunnel::protocol::CONNECTION_WINDOW)
        .max_frame_size(crate::tunnel::protocol::MAX_FRAME_SIZE);
    builder
}

/// Serves one connection until it ends, it is idle for `timeouts.idle`, or `stop` asks
/// for a graceful end (requests in flight finish; upgrades carry on).
pub async fn serve_http<IO, F, Fut>(
    io: IO,
    builder: &auto::Builder<TokioExecutor>,
    timeouts: HttpTimeouts,
    stop: CancellationToken,
    handle: F,
) where
    IO: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    F: Fn(Request<Incoming>) -> Fut + Clone + Send + Sync + 'static,
    Fut: std::future::Future<Output = Response<Body>> + Send + 'static,
{
    let activity = Arc::new(Activity::default());
    let tracked = activity.clone();
    let service = hyper::service::service_fn(move |req: Request<Incoming>| {
        let handle = handle.clone();
        let activity = tracked.clone();
        activity.begin();
        async move {
            let response = handle(req).await;
            let (parts, body) = response.into_parts();
            let body = body::metered(body, 0, move |_| activity.end());
            Ok::<_, Infallible>(Response::from_parts(parts, body))
        }
    });
    let io = TokioIo::new(StallLimitedIo::new(io, timeouts.write));
    let connection = builder.serve_connection_with_upgrades(io, service);
    tokio::pin!(connection);
    let mut stopping = false;
    loop {
        tokio::select! {
            _ = connection.as_mut() => return,
            _ = activity.idle_for(timeouts.idle), if !stopping => {
                stopping = true;
                connection.as_mut().graceful_shutdown();
            }
            _ = stop.cancelled(), if !stopping => {
                stopping = true;
                connection.as_mut().graceful_shutdown();
            }
        }
    }
}

/// Requests in flight on one connection, and when the last one ended. Beginning and
/// ending a request only touch two atomics: the idle watch looks at them when its
/// deadline comes, so a busy connection costs no wake-ups and no timer per request.
struct Activity {
    in_flight: AtomicUsize,
    /// When the last request ended, in nanoseconds since `base`.
    last_end: AtomicU64,
    base: tokio::time::Instant,
}

impl Default for Activity {
    fn default() -> Activity {
        Activity {
            in_flight: AtomicUsize::new(0),
            last_end: AtomicU64::new(0),
            base: tokio::time::Instant::now(),
        }
    }
}

impl Activity {
    fn begin(&self) {
        self.in_flight.fetch_add(1, Ordering::AcqRel);
    }

    fn end(&self) {
        let since_base = u64::try_from(self.base.elapsed().as_nanos()).unwrap_or(u64::MAX);
        self.last_end.store(since_base, Ordering::Release);
        self.in_flight.fetch_sub(1, Ordering::AcqRel);
    }

    /// Resolves once no request has been in flight for `idle`.
    async fn idle_for(&self, idle: Duration) {
        let mut deadline = tokio::time::Instant::now() + idle;
        loop {
            tokio::time::sleep_until(deadline).await;
            let now = tokio::time::Instant::now();
            if self.in_flight.load(Ordering::Acquire) > 0 {
                deadline = now + idle;
                continue;
            }
            let last_end = self.base + Duration::from_nanos(self.last_end.load(Ordering::Acquire));
            if last_end + idle <= now {
                return;
            }
            deadline = last_end + idle;
        }
    }
}

/// A byte stream whose writes fail with `TimedOut` once one has been pending for longer
/// than `limit`: a peer that stops reading cannot pin a connection, its buffers and the
/// stream behind it forever.
pub struct StallLimitedIo<IO> {
    inner: IO,
    limit: Duration,
    stalled: Option<Pin<Box<Sleep>>>,
}

impl<IO> StallLimitedIo<IO> {
    pub fn new(inner: IO, limit: Duration) -> StallLimitedIo<IO> {
        StallLimitedIo {
            inner,
            limit,
            stalled: None,
        }
    }

    fn on_write<T>(
        &mut self,
        cx: &mut Context<'_>,
        polled: Poll<io::Result<T>>,
    ) -> Poll<io::Result<T>> {
        if polled.is_ready() {
            self.stalled = None;
            return polled;
        }
        let limit = self.limit;
        let timer = self
            .stalled
            .get_or_insert_with(|| Box::pin(tokio::time::sleep_until(Instant::now() + limit)));
        ready!(timer.as_mut().poll(cx));
        Poll::Ready(Err(io::Error::new(
            io::ErrorKind::TimedOut,
            format!("the peer read nothing for {limit:?} (--write-timeout)"),
        )))
    }
}

impl<IO: AsyncRead + Unpin> AsyncRead for StallLimitedIo<IO> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl<IO: AsyncWrite + Unpin> AsyncWrite for StallLimitedIo<IO> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let polled = Pin::new(&mut self.inner).poll_write(cx, buf);
        self.on_write(cx, polled)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let polled = Pin::new(&mut self.inner).poll_write_vectored(cx, bufs);
        self.on_write(cx, polled)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let polled = Pin::new(&mut self.inner).poll_flush(cx);
        self.on_write(cx, polled)
    }

    /// Bounded too: a TLS close_notify to a peer that reads nothing would wait forever.
    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let polled = Pin::new(&mut self.inner).poll_shutdown(cx);
        self.on_write(cx, polled)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Paused time: the idle watch fires after exactly `idle` without requests, and not
    /// while one is in flight.
    #[tokio::test(start_paused = true)]
    async fn idle_counts_only_time_without_requests() {
        let activity = Arc::new(Activity::default());
        activity.begin();
        let watch = tokio::spawn({
            let activity = activity.clone();
            async move {
                let started = Instant::now();
                activity.idle_for(Duration::from_secs(120)).await;
                started.elapsed()
            }
        });
        tokio::time::sleep(Duration::from_secs(300)).await;
        assert!(!watch.is_finished(), "a request in flight is not idleness");
        activity.end();
        let waited = watch.await.unwrap();
        assert_eq!(waited, Duration::from_secs(420));
    }

    /// Paused time: a write pending longer than the limit fails with TimedOut.
    #[tokio::test(start_paused = true)]
    async fn a_stalled_write_times_out() {
        use tokio::io::AsyncWriteExt as _;
        let (near, _far) = tokio::io::duplex(16);
        let mut io = StallLimitedIo::new(near, Duration::from_secs(60));
        let started = Instant::now();
        let err = io.write_all(&[0u8; 1024]).await.unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::TimedOut);
        assert_eq!(started.elapsed(), Duration::from_secs(60));
    }
}
