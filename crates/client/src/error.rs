//! Client errors.

use switchboard_proto::RejectCode;

/// What can go wrong with a request.
#[derive(Debug, Clone, thiserror::Error)]
pub enum ClientError {
    #[error("cannot connect to {url}: {reason}")]
    Connect { url: String, reason: String },
    #[error("rejected: {reason} ({code:?})")]
    Rejected {
        /// The stable code, when the server sent one (switchboard does, ZLMediaKit does not).
        code: Option<RejectCode>,
        reason: String,
    },
    #[error("no answer within {0:?}")]
    Timeout(std::time::Duration),
    #[error("the call ended before it was answered: {0}")]
    Hangup(String),
    #[error("disconnected from the signaling server")]
    Disconnected,
    #[error("the client was shut down")]
    Closed,
}
