//! STUN/TURN for switchboard, sans-IO: no sockets, no clock, no async.
//!
//! - [`stun`]: the wire format (RFC 8489 + RFC 8656 attributes).
//! - [`credentials`]: static and ephemeral (TURN REST API) long-term credentials, stateless nonces.
//! - [`policy`]: which peers may be relayed to (deny-by-default for internal networks).
//! - [`engine`]: allocations, permissions, channels; the driver feeds it packets and time.
//! - [`failure_limit`]: how often one client hears that its credentials are wrong.
//!
//! Why not a crate: webrtc-rs `turn` has no TCP client transport, no MESSAGE-INTEGRITY-SHA256 and no peer address
//! policy; `turn-server` (turn-rs) is a standalone server rather than an embeddable engine and lacks an allow/deny
//! policy with the CVE-2020-26262 protections. Both would have to be wrapped around their gaps, so the engine is
//! written here, sans-IO, on a small codec checked against RFC 5769 and coturn's clients.

pub mod credentials;
pub mod engine;
pub mod failure_limit;
pub mod policy;
pub mod stun;

pub use credentials::Credentials;
pub use engine::{Client, Engine, EngineConfig, Event, PortRequest, Stats, Transmit, Transport, CHANNEL_HEADROOM};
pub use policy::PeerPolicy;
