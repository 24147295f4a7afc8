//! The wire between gateway and agent: an HTTP/2 connection over TLS (gateway = h2
//! client, agent = h2 server), straight on the TLS stream or inside WebSocket messages
//! ([`transport`]). HTTP/2 gives the tunnel real
//! multiplexing with per-stream flow control, cancellation (RST_STREAM), bounded
//! headers and keep-alive pings; upgrades ride as full-duplex streams.

pub mod body;
pub mod client;
pub mod dial;
pub mod headers;
pub mod kube_exec;
pub mod openchoreo;
pub mod protocol;
pub mod proxy;
pub mod transport;
pub mod ws;

pub use body::{Body, BoxError};
pub use protocol::Hello;
pub use ws::WsIo;
