//! Load scenarios for a switchboard (or any ZLMediaKit-protocol) signaling server.
//!
//! Each scenario drives real websocket connections and returns a [`Report`]: one JSON object with throughput,
//! latency percentiles and, given the server's pid, the server's CPU time per unit of work (utime+stime from
//! `/proc/PID/stat`) and its RSS. CPU per unit of work is the primary figure: it does not depend on how fast this
//! load generator is.
//!
//! The generator keeps its own per-message cost low: messages are built from templates and received frames are only
//! searched for the few bytes a scenario needs, never parsed into a DOM.
//!
//! - [`idle`]: hold N registered rooms, RSS per room, RSS after they leave.
//! - [`calls`]: full call flows (call → accept → 2 candidates each way → bye), flows/s and call→accept latency.
//! - [`relay`]: candidate indications both ways under a bounded in-flight window; msgs/s, latency, losses, and
//!   messages out of order (each direction is numbered).
//! - [`churn`]: connect/register/leave loops; sessions/s; then every room id must be registrable again.
//! - [`soak`]: all of the above at once, paced, for a long time; the server sampled every interval (RSS,
//!   descriptors, threads, sessions, rooms, latency), then lost messages and leaked rooms counted.

pub mod calls;
pub mod churn;
pub mod conn;
pub mod idle;
pub mod messages;
pub mod nodes;
pub mod proc_stats;
pub mod relay;
pub mod report;
pub mod soak;

pub use nodes::Nodes;
pub use report::Report;

/// What can stop a scenario.
#[derive(Debug, thiserror::Error)]
pub enum BenchError {
    #[error("connect to {url} failed: {reason}")]
    Connect { url: String, reason: String },
    #[error("protocol: {0}")]
    Protocol(String),
    #[error("io: {0}")]
    Io(#[from] std::io::Error),
}
