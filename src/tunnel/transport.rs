//! What carries the tunnel's HTTP/2 after the `/ws` handshake: the TLS stream itself,
//! when both ends know the [`H2_UPGRADE`] (an HTTP/1.1 upgrade), or WebSocket binary
//! messages (`planelink.v1`), which every planelink gateway and agent speaks.
//!
//! Mutual TLS ends at the gateway, so only TCP-level intermediaries can stand between
//! the two ends: after the handshake, WebSocket framing buys nothing and costs a copy
//! and a mask of every byte the agent sends. Agents offer the upgrade first and fall
//! back to WebSocket when a gateway refuses it.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

use super::protocol::SUBPROTOCOL;
use super::ws::WsIo;

/// The HTTP/1.1 `Upgrade` token of the tunnel without WebSocket framing: after the 101,
/// the gateway's HTTP/2 client and the agent's HTTP/2 server speak on the TLS stream.
pub const H2_UPGRADE: &str = "planelink.v1-h2";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transport {
    /// HTTP/2 directly on the TLS stream.
    H2,
    /// HTTP/2 inside WebSocket binary messages.
    WebSocket,
    /// OpenChoreo's JSON text frames: the gateway's HTTP/2 reaches them through an
    /// in-process adapter.
    OpenChoreo,
}

impl Transport {
    /// The protocol name, as plane status and logs show it.
    pub fn as_str(self) -> &'static str {
        match self {
            Transport::H2 => H2_UPGRADE,
            Transport::WebSocket => SUBPROTOCOL,
            Transport::OpenChoreo => super::openchoreo::PROTOCOL,
        }
    }
}

/// The tunnel's byte stream, whichever transport carries it.
pub enum TunnelIo<S> {
    H2(S),
    /// Boxed: the common case (h2) stays small.
    WebSocket(Box<WsIo<S>>),
    /// The in-process end of an adapter to another protocol.
    Local(tokio::io::DuplexStream),
}

impl<S> TunnelIo<S> {
    pub fn transport(&self) -> Transport {
        match self {
            TunnelIo::H2(_) => Transport::H2,
            TunnelIo::WebSocket(_) => Transport::WebSocket,
            TunnelIo::Local(_) => Transport::OpenChoreo,
        }
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> AsyncRead for TunnelIo<S> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match self.get_mut() {
            TunnelIo::H2(io) => Pin::new(io).poll_read(cx, buf),
            TunnelIo::WebSocket(io) => Pin::new(io.as_mut()).poll_read(cx, buf),
            TunnelIo::Local(io) => Pin::new(io).poll_read(cx, buf),
        }
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> AsyncWrite for TunnelIo<S> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            TunnelIo::H2(io) => Pin::new(io).poll_write(cx, buf),
            TunnelIo::WebSocket(io) => Pin::new(io.as_mut()).poll_write(cx, buf),
            TunnelIo::Local(io) => Pin::new(io).poll_write(cx, buf),
        }
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            TunnelIo::H2(io) => Pin::new(io).poll_write_vectored(cx, bufs),
            TunnelIo::WebSocket(io) => Pin::new(io.as_mut()).poll_write_vectored(cx, bufs),
            TunnelIo::Local(io) => Pin::new(io).poll_write_vectored(cx, bufs),
        }
    }

    fn is_write_vectored(&self) -> bool {
        match self {
            TunnelIo::H2(io) => io.is_write_vectored(),
            TunnelIo::WebSocket(io) => io.is_write_vectored(),
            TunnelIo::Local(io) => io.is_write_vectored(),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            TunnelIo::H2(io) => Pin::new(io).poll_flush(cx),
            TunnelIo::WebSocket(io) => Pin::new(io.as_mut()).poll_flush(cx),
            TunnelIo::Local(io) => Pin::new(io).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            TunnelIo::H2(io) => Pin::new(io).poll_shutdown(cx),
            TunnelIo::WebSocket(io) => Pin::new(io.as_mut()).poll_shutdown(cx),
            TunnelIo::Local(io) => Pin::new(io).poll_shutdown(cx),
        }
    }
}

/// Whether a request's `Connection` header names `upgrade` and its `Upgrade` header is
/// exactly `protocol` (one protocol offered, compared case-insensitively).
pub fn requests_upgrade_to(headers: &http::HeaderMap, protocol: &str) -> bool {
    let connection_upgrade = headers
        .get_all(http::header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|t| t.trim().eq_ignore_ascii_case("upgrade"));
    let upgrade = headers
        .get(http::header::UPGRADE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.trim().eq_ignore_ascii_case(protocol));
    connection_upgrade && upgrade
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn upgrade_to_h2_needs_both_headers_and_the_exact_token() {
        let headers = |pairs: &[(&str, &str)]| {
            let mut map = http::HeaderMap::new();
            for (name, value) in pairs {
                map.append(
                    http::HeaderName::from_bytes(name.as_bytes()).unwrap(),
                    value.parse().unwrap(),
                );
            }
            map
        };
        let ok = headers(&[
            ("connection", "keep-alive, Upgrade"),
            ("upgrade", "Planelink.V1-H2"),
        ]);
        assert!(requests_upgrade_to(&ok, H2_UPGRADE));
        for bad in [
            headers(&[("upgrade", H2_UPGRADE)]),
            headers(&[("connection", "upgrade"), ("upgrade", "websocket")]),
            headers(&[
                ("connection", "upgrade"),
                ("upgrade", "planelink.v1-h2, websocket"),
            ]),
            headers(&[("connection", "close"), ("upgrade", H2_UPGRADE)]),
        ] {
            assert!(!requests_upgrade_to(&bad, H2_UPGRADE), "{bad:?}");
        }
    }
}
