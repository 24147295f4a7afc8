//! Streaming bodies: one boxed body type for every hop, a size cap that fails the
//! stream instead of buffering, and the byte pump that carries upgraded connections
//! over a request/response body pair.

use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::{Bytes, BytesMut};
use http::{HeaderValue, Response, StatusCode};
use http_body::Frame;
use http_body_util::{BodyExt, Empty, Full, channel::Channel};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

pub type BoxError = Box<dyn std::error::Error + Send + Sync>;
pub type Body = http_body_util::combinators::UnsyncBoxBody<Bytes, BoxError>;

/// Bytes read from an upgraded connection per body frame.
const PUMP_CHUNK: usize = 64 * 1024;
/// Frames buffered between a reader and the body it feeds (backpressure beyond this).
const PUMP_DEPTH: usize = 4;

pub fn empty() -> Body {
    Empty::new().map_err(|never| match never {}).boxed_unsync()
}

pub fn full(bytes: impl Into<Bytes>) -> Body {
    Full::new(bytes.into())
        .map_err(|never| match never {})
        .boxed_unsync()
}

pub fn boxed<B>(body: B) -> Body
where
    B: http_body::Body<Data = Bytes> + Send + 'static,
    B::Error: Into<BoxError>,
{
    body.map_err(Into::into).boxed_unsync()
}

/// A JSON error response, marked as produced by planelink rather than the upstream.
pub fn error_response(status: StatusCode, source: &str, message: &str) -> Response<Body> {
    let body = serde_json::json!({
        "kind": "Status",
        "apiVersion": "v1",
        "status": "Failure",
        "message": message,
        "reason": status.canonical_reason().unwrap_or(""),
        "code": status.as_u16(),
    });
    let mut response = Response::new(full(body.to_string()));
    *response.status_mut() = status;
    let headers = response.headers_mut();
    headers.insert(
        http::header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    if let Ok(value) = HeaderValue::from_str(source) {
        headers.insert(super::protocol::ERROR_SOURCE_HEADER, value);
    }
    response
}

#[derive(Debug, thiserror::Error)]
#[error("body larger than the {limit}-byte limit (--max-body-size)")]
pub struct TooLarge {
    pub limit: u64,
}

/// Counts the data bytes passing, fails the stream once more than `limit` bytes
/// passed (0 = no limit) without buffering anything, and calls `on_end` with the count
/// once, when the body is dropped (read to the end or abandoned): the one wrapper for
/// size caps, byte metrics and stream accounting.
pub fn metered<F: FnOnce(u64) + Send + 'static>(body: Body, limit: u64, on_end: F) -> Body {
    Metered {
        inner: body,
        seen: 0,
        limit,
        on_end: Some(Box::new(on_end)),
    }
    .boxed_unsync()
}

type EndHook = Box<dyn FnOnce(u64) + Send>;

struct Metered {
    inner: Body,
    seen: u64,
    limit: u64,
    on_end: Option<EndHook>,
}

impl Drop for Metered {
    fn drop(&mut self) {
        if let Some(f) = self.on_end.take() {
            f(self.seen);
        }
    }
}

impl http_body::Body for Metered {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let polled = Pin::new(&mut self.inner).poll_frame(cx);
        if let Poll::Ready(Some(Ok(frame))) = &polled
            && let Some(data) = frame.data_ref()
        {
            self.seen += data.len() as u64;
            if self.limit > 0 && self.seen > self.limit {
                return Poll::Ready(Some(Err(Box::new(TooLarge { limit: self.limit }))));
            }
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.inner.size_hint()
    }
}

/// A body fed by [`pump`]: the outgoing half of an upgraded connection.
pub fn channel() -> (http_body_util::channel::Sender<Bytes, BoxError>, Body) {
    let (tx, rx) = Channel::<Bytes, BoxError>::new(PUMP_DEPTH);
    (tx, rx.boxed_unsync())
}

/// Carries an upgraded connection over a body pair until both directions end:
/// bytes read from `io` go to `outgoing`; frames of `incoming` are written to `io`.
/// Each direction ends its half on EOF, so half-closes (exec's stdin EOF) pass
/// through. Returns the bytes carried each way (in, out).
pub async fn pump<IO>(
    io: IO,
    mut incoming: Body,
    mut outgoing: http_body_util::channel::Sender<Bytes, BoxError>,
) -> (u64, u64)
where
    IO: AsyncRead + AsyncWrite + Send,
{
    let (mut reader, mut writer) = tokio::io::split(io);
    let upstream = async {
        let mut carried = 0u64;
        while let Some(frame) = incoming.frame().await {
            let Ok(frame) = frame else { break };
            if let Ok(data) = frame.into_data() {
                if writer.write_all(&data).await.is_err() {
                    break;
                }
                carried += data.len() as u64;
            }
        }
        let _ = writer.shutdown().await;
        carried
    };
    let downstream = async {
        let mut carried = 0u64;
        let mut buf = BytesMut::with_capacity(PUMP_CHUNK);
        loop {
            buf.reserve(PUMP_CHUNK);
            match reader.read_buf(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => {
                    carried += n as u64;
                    if outgoing.send_data(buf.split().freeze()).await.is_err() {
                        break;
                    }
                }
            }
        }
        drop(outgoing);
        carried
    };
    tokio::join!(upstream, downstream)
}
