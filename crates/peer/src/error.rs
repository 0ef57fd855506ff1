//! Errors of the peer library.
//!
//! Invariant: every variant names what failed in words a CLI user can act on; webrtc errors are kept as text
//! (the webrtc error type is not `Clone` and its variants are not part of our API).

use switchboard_client::ClientError;

/// What can stop an endpoint.
#[derive(Debug, Clone, thiserror::Error)]
pub enum PeerError {
    #[error("signaling: {0}")]
    Signaling(#[from] ClientError),
    #[error("webrtc: {0}")]
    WebRtc(String),
    #[error("media: {0}")]
    Media(String),
    #[error("the call was rejected: {0}")]
    CallRejected(String),
    #[error("the signaling connection closed")]
    SignalingClosed,
    #[error("io: {0}")]
    Io(String),
}

impl PeerError {
    pub(crate) fn webrtc(e: impl std::fmt::Display) -> PeerError {
        PeerError::WebRtc(e.to_string())
    }
}
