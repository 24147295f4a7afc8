//! A WebSocket connection as a byte stream: binary messages in, binary messages out.
//! Text messages are a protocol error; pings are answered by tungstenite itself. A side
//! that is shutting down says so with a Close frame "going away" (1001), which the other
//! side reads as a graceful end (an agent then redials promptly).

use std::future::Future as _;
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU16, Ordering};
use std::task::{Context, Poll, ready};

use bytes::{Buf, Bytes};
use futures_util::{Sink, Stream};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::tungstenite::protocol::frame::CloseFrame;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_util::sync::{CancellationToken, WaitForCancellationFutureOwned};

/// Largest message written; bigger writes are split. Also the read limit, so a peer
/// cannot make us buffer more than this per message.
pub const MAX_MESSAGE: usize = 256 * 1024;

/// Bounded frames and messages, and small eager buffers so that an idle connection
/// costs little (tungstenite allocates its read buffer up front).
pub fn config() -> WebSocketConfig {
    WebSocketConfig::default()
        .read_buffer_size(8 * 1024)
        .write_buffer_size(0)
        .max_write_buffer_size(4 * MAX_MESSAGE)
        .max_message_size(Some(MAX_MESSAGE))
        .max_frame_size(Some(MAX_MESSAGE))
}

pub struct WsIo<S> {
    ws: WebSocketStream<S>,
    pending: Bytes,
    /// Fires when this side shuts down: a Close "going away" is sent and reads end.
    going_away: Option<Pin<Box<WaitForCancellationFutureOwned>>>,
    away_sent: bool,
    peer_close: PeerClose,
}

/// The close code the peer sent, once it sent one. Over the h2 transport (no Close
/// frames) the gateway's going-away news sets "going away".
#[derive(Clone, Debug, Default)]
pub struct PeerClose(Arc<AtomicU16>);

impl PeerClose {
    pub fn code(&self) -> Option<u16> {
        match self.0.load(Ordering::Relaxed) {
            0 => None,
            code => Some(code),
        }
    }

    /// The peer closed because it is shutting down (or restarting).
    pub fn going_away(&self) -> bool {
        self.code() == Some(u16::from(CloseCode::Away))
    }

    /// The peer said it is shutting down, before closing.
    pub fn set_going_away(&self) {
        self.0.store(u16::from(CloseCode::Away), Ordering::Relaxed);
    }
}

impl<S> WsIo<S> {
    pub fn new(ws: WebSocketStream<S>) -> WsIo<S> {
        WsIo {
            ws,
            pending: Bytes::new(),
            going_away: None,
            away_sent: false,
            peer_close: PeerClose::default(),
        }
    }

    /// Sends a Close "going away" and ends reading when `token` is cancelled.
    pub fn closing_on(mut self, token: CancellationToken) -> WsIo<S> {
        self.going_away = Some(Box::pin(token.cancelled_owned()));
        self
    }

    /// How the peer closed, readable after this stream is gone.
    pub fn peer_close(&self) -> PeerClose {
        self.peer_close.clone()
    }
}

fn ws_error(e: tokio_tungstenite::tungstenite::Error) -> io::Error {
    use tokio_tungstenite::tungstenite::Error;
    match e {
        Error::Io(e) => e,
        Error::ConnectionClosed | Error::AlreadyClosed => io::ErrorKind::BrokenPipe.into(),
        other => io::Error::new(io::ErrorKind::InvalidData, other),
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> AsyncRead for WsIo<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let away_sent = self.away_sent;
        if let Some(away) = &mut self.going_away
            && (away_sent || away.as_mut().poll(cx).is_ready())
        {
            if !self.away_sent {
                ready!(Pin::new(&mut self.ws).poll_ready(cx)).map_err(ws_error)?;
                let frame = CloseFrame {
                    code: CloseCode::Away,
                    reason: "shutting down".into(),
                };
                Pin::new(&mut self.ws)
                    .start_send(Message::Close(Some(frame)))
                    .map_err(ws_error)?;
                self.away_sent = true;
            }
            // Best effort: the reader ends either way.
            let _ = ready!(Pin::new(&mut self.ws).poll_flush(cx));
            return Poll::Ready(Ok(()));
        }
        loop {
            if !self.pending.is_empty() {
                let n = self.pending.len().min(buf.remaining());
                buf.put_slice(&self.pending[..n]);
                self.pending.advance(n);
                return Poll::Ready(Ok(()));
            }
            match ready!(Pin::new(&mut self.ws).poll_next(cx)) {
                Some(Ok(Message::Binary(data))) => self.pending = data,
                Some(Ok(Message::Ping(_) | Message::Pong(_) | Message::Frame(_))) => {}
                Some(Ok(Message::Text(_))) => {
                    return Poll::Ready(Err(io::Error::new(
                        io::ErrorKind::InvalidData,
                        "text message on a binary tunnel",
                    )));
                }
                Some(Ok(Message::Close(frame))) => {
                    let code = frame.map_or(u16::from(CloseCode::Status), |f| u16::from(f.code));
                    self.peer_close.0.store(code, Ordering::Relaxed);
                    return Poll::Ready(Ok(()));
                }
                None => return Poll::Ready(Ok(())),
                Some(Err(e)) => return Poll::Ready(Err(ws_error(e))),
            }
        }
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> AsyncWrite for WsIo<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        ready!(Pin::new(&mut self.ws).poll_ready(cx)).map_err(ws_error)?;
        let n = buf.len().min(MAX_MESSAGE);
        Pin::new(&mut self.ws)
            .start_send(Message::Binary(Bytes::copy_from_slice(&buf[..n])))
            .map_err(ws_error)?;
        Poll::Ready(Ok(n))
    }

    /// h2 writes a frame header and its payload as separate slices; gathering them
    /// keeps one WebSocket message per batch of frames instead of one per slice.
    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        ready!(Pin::new(&mut self.ws).poll_ready(cx)).map_err(ws_error)?;
        let total: usize = bufs.iter().map(|b| b.len()).sum();
        let mut message = Vec::with_capacity(total.min(MAX_MESSAGE));
        for buf in bufs {
            let room = MAX_MESSAGE - message.len();
            if room == 0 {
                break;
            }
            message.extend_from_slice(&buf[..buf.len().min(room)]);
        }
        let n = message.len();
        Pin::new(&mut self.ws)
            .start_send(Message::Binary(Bytes::from(message)))
            .map_err(ws_error)?;
        Poll::Ready(Ok(n))
    }

    fn is_write_vectored(&self) -> bool {
        true
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.ws).poll_flush(cx).map_err(ws_error)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.ws).poll_close(cx).map_err(ws_error)
    }
}
