//! Real WebRTC endpoints on top of switchboard signaling (webrtc-rs 0.21).
//!
//! - [`serve`]: a room keeper. It registers a room, answers `play` calls by sending a looping H.264 clip and
//!   `push` calls by recording what arrives; one peer connection per call, any number of calls at once.
//! - [`play`]: calls a room with `type: play`, receives its video, counts (and optionally saves) the frames.
//! - [`push`]: calls a room with `type: push` and sends a looping H.264 clip.
//!
//! Invariants shared by every endpoint:
//! - Trickle ICE in both directions through [`switchboard_client::Client::candidate`], with the protocol's
//!   candidate form (no `candidate:` prefix) and the sender's ICE credentials from its local description.
//! - mDNS is disabled and the UDP sockets bind one configured address (see `endpoint`).
//! - Only H.264 is negotiated; media is Annex-B on disk and RFC 6184 on the wire.
//! - The library never prints: progress goes to a callback, diagnostics to `tracing`.

mod annexb;
mod assemble;
mod call;
mod caller;
mod endpoint;
mod error;
mod media;
mod sdp_compat;
mod serve;
mod session;

pub use annexb::{access_units, starts_with_start_code};
pub use caller::{play, push, CallSummary, CallerConfig, EndReason, PlayConfig, Progress, PushConfig};
pub use error::PeerError;
pub use media::{Clip, Received};
pub use serve::{serve, ServeConfig, ServeSummary};
