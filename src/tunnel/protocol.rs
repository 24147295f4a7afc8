//! Names and settings both ends of the tunnel agree on.

use std::time::Duration;

use hyper_util::rt::{TokioExecutor, TokioTimer};

/// The `Sec-WebSocket-Protocol` of planelink's HTTP/2-in-WebSocket tunnel. An agent
/// that offers none speaks OpenChoreo's JSON messages instead.
pub const SUBPROTOCOL: &str = "planelink.v1";
/// Bumped on incompatible changes; the hello carries it.
pub const PROTOCOL_VERSION: u32 = 1;

/// Request and response header carrying the [`Hello`] on the WebSocket handshake.
pub const HELLO_HEADER: &str = "planelink-hello";
/// Tunnelled request header: the agent target (`k8s`, `agent`, a route name).
pub const TARGET_HEADER: &str = "planelink-target";
/// Tunnelled request header: the caller asked for an HTTP/1.1 upgrade to this protocol.
pub const UPGRADE_HEADER: &str = "planelink-upgrade";
/// Tunnelled response header: the upstream answered 101; the stream is now raw bytes.
pub const UPGRADED_HEADER: &str = "planelink-upgraded";
/// Tunnelled request header: the caller expects a long-lived response (watch, follow, upgrade).
pub const STREAMING_HEADER: &str = "planelink-streaming";
/// Response header set when planelink itself (not the upstream) produced the response.
pub const ERROR_SOURCE_HEADER: &str = "planelink-error-source";
/// The request ID carried from the caller through the gateway to the agent.
pub const REQUEST_ID_HEADER: &str = "x-request-id";

/// Largest header block accepted on the tunnel (Kubernetes' own limit is about 1 MiB
/// of request line and headers; real requests stay far below this).
pub const MAX_HEADER_LIST_SIZE: u32 = 256 * 1024;
/// Per-stream flow-control window: how far one stream may run ahead of its reader.
pub const STREAM_WINDOW: u32 = 1024 * 1024;
/// Connection-wide window, shared by all streams of one agent.
pub const CONNECTION_WINDOW: u32 = 4 * 1024 * 1024;
/// Largest HTTP/2 DATA frame we accept; larger frames mean fewer headers per byte.
pub const MAX_FRAME_SIZE: u32 = 64 * 1024;
/// Concurrent streams an agent accepts from the gateway.
pub const MAX_CONCURRENT_STREAMS: u32 = 1024;

/// What each end says about itself on the WebSocket handshake.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Hello {
    pub role: String,
    pub version: String,
    pub protocol: u32,
    pub capabilities: Vec<String>,
}

impl Hello {
    pub fn ours(role: &str) -> Hello {
        Hello {
            role: role.to_string(),
            version: env!("CARGO_PKG_VERSION").to_string(),
            protocol: PROTOCOL_VERSION,
            capabilities: ["h2", "upgrade", "streaming", "request-id"]
                .map(String::from)
                .to_vec(),
        }
    }

    pub fn to_header(&self) -> String {
        format!(
            "role={}; version={}; protocol={}; capabilities={}",
            self.role,
            self.version,
            self.protocol,
            self.capabilities.join(",")
        )
    }

    pub fn parse(header: &str) -> Result<Hello, String> {
        let mut hello = Hello {
            role: String::new(),
            version: String::new(),
            protocol: 0,
            capabilities: Vec::new(),
        };
        for part in header.split(';') {
            let Some((key, value)) = part.trim().split_once('=') else {
                continue;
            };
            match key.trim() {
                "role" => hello.role = value.trim().to_string(),
                "version" => hello.version = value.trim().to_string(),
                "protocol" => {
                    hello.protocol = value
                        .trim()
                        .parse()
                        .map_err(|_| format!("protocol {value:?} is not a number"))?
                }
                "capabilities" => {
                    hello.capabilities = value
                        .split(',')
                        .map(str::trim)
                        .filter(|c| !c.is_empty())
                        .map(String::from)
                        .collect()
                }
                _ => {}
            }
        }
        if hello.protocol == 0 {
            return Err(format!("hello {header:?} names no protocol version"));
        }
        Ok(hello)
    }

    /// Whether we can talk to the peer that sent this hello.
    pub fn compatible(&self) -> Result<(), String> {
        if self.protocol != PROTOCOL_VERSION {
            return Err(format!(
                "peer {} {} speaks tunnel protocol {}, this planelink speaks {PROTOCOL_VERSION}; \
                 upgrade the older side",
                self.role, self.version, self.protocol
            ));
        }
        Ok(())
    }
}

/// Heartbeats: HTTP/2 PINGs every `interval`; a peer that does not answer within the
/// rest of `timeout` is dead, so a silent peer is detected within `timeout`.
#[derive(Debug, Clone, Copy)]
pub struct Heartbeat {
    pub interval: Duration,
    pub timeout: Duration,
}

impl Heartbeat {
    fn ack_timeout(self) -> Duration {
        self.timeout
            .saturating_sub(self.interval)
            .max(Duration::from_secs(1))
    }
}

/// The gateway's end: an HTTP/2 client over the WebSocket stream.
pub fn client_builder(heartbeat: Heartbeat) -> hyper::client::conn::http2::Builder<TokioExecutor> {
    let mut builder = hyper::client::conn::http2::Builder::new(TokioExecutor::new());
    builder
        .timer(TokioTimer::new())
        .initial_stream_window_size(STREAM_WINDOW)
        .initial_connection_window_size(CONNECTION_WINDOW)
        .max_frame_size(MAX_FRAME_SIZE)
        .max_header_list_size(MAX_HEADER_LIST_SIZE)
        .max_send_buf_size(256 * 1024)
        .keep_alive_interval(heartbeat.interval)
        .keep_alive_timeout(heartbeat.ack_timeout())
        .keep_alive_while_idle(true);
    builder
}

/// The agent's end: an HTTP/2 server over the WebSocket stream.
pub fn server_builder(heartbeat: Heartbeat) -> hyper::server::conn::http2::Builder<TokioExecutor> {
    let mut builder = hyper::server::conn::http2::Builder::new(TokioExecutor::new());
    builder
        .timer(TokioTimer::new())
        .initial_stream_window_size(STREAM_WINDOW)
        .initial_connection_window_size(CONNECTION_WINDOW)
        .max_frame_size(MAX_FRAME_SIZE)
        .max_header_list_size(MAX_HEADER_LIST_SIZE)
        .max_send_buf_size(256 * 1024)
        .max_concurrent_streams(MAX_CONCURRENT_STREAMS)
        .keep_alive_interval(heartbeat.interval)
        .keep_alive_timeout(heartbeat.ack_timeout());
    builder
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hello_round_trip_and_mismatch() {
        let hello = Hello::ours("agent");
        let parsed = Hello::parse(&hello.to_header()).unwrap();
        assert_eq!(parsed, hello);
        assert!(parsed.compatible().is_ok());
        let future = Hello::parse("role=gateway; version=9.0.0; protocol=2").unwrap();
        assert!(
            future
                .compatible()
                .unwrap_err()
                .contains("upgrade the older side")
        );
        assert!(Hello::parse("garbage").is_err());
        assert!(Hello::parse("protocol=x").is_err());
    }
}
