//! The switchboard signaling protocol (ZLMediaKit's websocket signaling, as SPEC.md reads it).
//!
//! Pure: no IO, no async, no clock. The server, the client, the load generator and the fuzz targets share it.
//!
//! - [`Message::parse`] turns one text frame into a typed [`Message`] or a [`Reject`] for its sender. It reads only the
//!   fields the protocol names and never copies bulky ones (`sdp`), because relays forward the original text.
//! - [`reply`] builds the messages the server originates.
//! - [`RejectCode`] is the stable machine code of every reject.
//! - [`wire::Envelope`] is the all-fields-optional shape clients send and read.

mod code;
mod frame;
mod message;
pub mod reply;
pub mod wire;

pub use code::RejectCode;
pub use frame::{Field, Frame, Presence};
pub use message::{Body, CallType, Message, MAX_ID_LEN};
pub use reply::{Echo, IceServer, Reject};
pub use wire::Envelope;

#[cfg(test)]
mod tests;
