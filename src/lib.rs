//! planelink: one binary that connects the planes of an OpenChoreo-style platform.
//!
//! Layout (dependencies point one way: roles -> planes/tunnel/trust, planes -> trust):
//! - `cli`        clap definitions for every role: parsing, help, man pages, completions
//! - `config`     start-up validation shared by the roles (exit 64 before binding)
//! - `logging`    tracing setup shared by the roles
//! - `trust`      certificates: PEM, inspection, chain verification, host matching, issuance
//! - `planes`     the plane model and registry sources (directory, Kubernetes)
//! - `tunnel`     the wire: WebSocket transport, HTTP/2 multiplexing, upgrades
//! - `gateway`, `agent`, `controller`, `register`   one module per role
//! - `overview`   `status` and `check`: the operator's view of every plane (reads planes, trust)
//! - `manpages`   man pages rendered from the clap definitions
#![forbid(unsafe_code)]

pub mod agent;
pub mod cli;
pub mod config;
pub mod controller;
pub mod gateway;
pub mod health;
pub mod logging;
pub mod manpages;
pub mod overview;
pub mod planes;
pub mod register;
pub mod replicas;
pub mod safe_text;
pub mod server;
pub mod signals;
pub mod trust;
pub mod tunnel;
pub mod up;

/// The git commit this binary was built from, when the build could tell.
pub const GIT_COMMIT: Option<&str> = option_env!("PLANELINK_GIT_COMMIT");
