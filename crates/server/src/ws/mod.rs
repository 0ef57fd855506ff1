//! The websocket protocol, sans-IO: the opening [`handshake`] and the [`frame`] codec. The transport that drives
//! them over sockets is [`crate::session`].

pub mod frame;
pub mod handshake;

pub use frame::{Decoded, Decoder, Event, Frame, Violation};
