//! devcycle: the contracts of every service and the plumbing they share —
//! configuration, telemetry, mTLS identity, authorization, storage, serving.

pub mod authz;
pub mod bus;
pub mod client;
pub mod config;
pub mod db;
pub mod denylist;
pub mod health;
pub mod identity;
pub mod inproc;
pub mod kinds;
pub mod mesh;
pub mod otel;
pub mod page;
pub mod proto;
pub mod server;
pub mod telemetry;
#[cfg(feature = "testkit")]
pub mod testkit;
pub mod time;
pub mod tls;
pub mod validate;
