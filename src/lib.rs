//! planelink: one binary that connects the planes of an OpenChoreo-style platform.
//!
//! Layout, in layers; each uses only the layers below it (`tests/layers.rs` checks it):
//! - foundations: `trust` (certificates: PEM, inspection, the one trust diagnosis,
//!   verification, issuance), `safe_text` (peer text made safe to show), `signals`;
//!   `tunnel` (the wire: the agent's dial, WebSocket and h2 transports, HTTP/2
//!   multiplexing, upgrades, OpenChoreo's frames); `planes` (the plane kinds' table, the
//!   CRDs, conditions and reasons, the registry and its sources)
//! - shared by the roles: `config` (start-up validation, exit 64 before binding),
//!   `logging`, `server` (listeners), `health`, `replicas`
//! - roles, which never use one another: `gateway`, `agent`, `controller`, `register`,
//!   and `overview` (`status` and `check`)
//! - `compose`: roles run together from typed configurations (`controller
//!   --with-gateway`, `up`)
//! - `cli` (clap definitions of every command) and `manpages`, used by `main`
//!
//! Public is what `main`, the tests and the benches use; the rest is private.
#![forbid(unsafe_code)]

pub mod agent;
pub mod cli;
pub mod compose;
pub mod config;
mod controller;
pub mod gateway;
mod health;
pub mod logging;
pub mod manpages;
pub mod overview;
pub mod planes;
pub mod register;
mod replicas;
mod safe_text;
mod server;
mod signals;
pub mod trust;
pub mod tunnel;

/// The git commit this binary was built from, when the build could tell.
pub const GIT_COMMIT: Option<&str> = option_env!("PLANELINK_GIT_COMMIT");
