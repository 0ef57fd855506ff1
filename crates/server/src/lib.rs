//! The switchboard signaling server.
//!
//! - [`config`]: the one typed configuration.
//! - [`hub`]: rooms, calls and routing behind the [`hub::Hub`] trait; [`hub::MemoryHub`] is the single-node backend.
//! - [`session`] and [`outbox`]: one websocket session, with its bounded outbound queue.
//! - [`http`]: the listener's HTTP side (upgrade on any path, `/livez`, `/readyz`, `/metrics`).
//! - [`admin`]: the admin API (rooms, kick, ZLMediaKit's listWebrtcRooms, runtime log level).
//! - [`metrics`]: Prometheus metrics.
//! - [`auth`]: HS256 token auth; [`limits`]: connection limits and message budgets.
//! - [`turn`]: the STUN/TURN server's sockets around the sans-IO engine of `switchboard-turn`.
//! - [`tls`]: the wss/https listener (rustls).
//! - [`server`]: binding, serving and graceful shutdown.
//! - [`memnet`]: an in-process listener for paused-time tests and embedding.

pub mod admin;
pub mod auth;
pub mod config;
pub mod http;
pub mod hub;
pub mod ice;
pub mod limits;
pub mod memnet;
pub mod metrics;
pub mod outbox;
pub mod server;
pub mod session;
pub mod tls;
pub mod turn;
pub mod web;

pub use config::Config;
pub use server::{Server, ServerError};
