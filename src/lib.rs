//! planelink: one binary that connects the planes of an OpenChoreo-style platform.
//!
//! Layout (dependencies point one way: roles -> planes/tunnel/trust, planes -> trust):
//! - `cli`      clap definitions for every role, used for parsing, help, man pages and completions
//! - `logging`  tracing setup shared by the roles
//! - `trust`    certificates: PEM, inspection, chain verification, host matching, issuance
//! - `gateway`, `agent`, `controller`, `register`   one module per role
#![forbid(unsafe_code)]

pub mod trust;
