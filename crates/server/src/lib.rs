//! The switchboard signaling server.
//!
//! - [`config`]: the one typed configuration.
//! - [`hub`]: rooms, calls and routing behind the [`hub::Hub`] trait; [`hub::MemoryHub`] is the single-node backend.
//! - [`cluster`]: the backbone several nodes share in cluster mode (room registry with fencing, membership, bus).
//! - [`ws`]: the websocket protocol, sans-IO (handshake and framing).
//! - [`session`] and [`outbox`]: one websocket session, with its bounded outbound queue.
//! - [`listener`]: the plain-TCP listener (upgrade on any path, before HTTP).
//! - [`http`]: the HTTP side (`/livez`, `/readyz`, `/metrics`, upgrades over TLS or keep-alive connections).
//! - [`admin`]: the admin API (rooms, kick, ZLMediaKit's listWebrtcRooms, runtime log level).
//! - [`metrics`]: Prometheus metrics.
//! - [`auth`]: HS256 token auth; [`limits`]: connection limits and message budgets.
//! - [`turn`]: the STUN/TURN server's sockets around the sans-IO engine of `switchboard-turn`.
//! - [`tls`]: the wss/https listener (rustls).
//! - [`server`]: binding, serving and graceful shutdown.
//! - [`memnet`]: an in-process listener for paused-time tests and embedding.

pub mod admin;
pub mod auth;
pub mod cluster;
pub mod config;
pub mod fd_reserve;
pub mod http;
pub mod hub;
pub mod ice;
pub mod limits;
pub mod listener;
pub mod memnet;
pub mod metrics;
pub mod outbox;
pub mod server;
pub mod session;
pub mod tls;
pub mod turn;
pub mod web;
pub mod ws;

pub use config::Config;
pub use server::{Server, ServerError};
