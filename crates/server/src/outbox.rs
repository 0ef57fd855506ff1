//! The bounded outbound queue of one session, and the switch that ends the session.
//!
//! Invariants:
//! - Nothing is ever queued without bound: a full queue means the consumer cannot keep up, and the session is killed
//!   (cause [`Cause::SlowConsumer`]) instead of buffering more.
//! - Sending never blocks, so the hub may send while it holds its lock.
//! - The first recorded cause wins; later kills only confirm it.

use std::sync::{Arc, OnceLock};

use axum::extract::ws::Utf8Bytes;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

/// What a session's writer task sends.
#[derive(Debug)]
pub enum Outgoing {
    /// A text frame: a relayed message (its original bytes) or one the server built.
    Text(Utf8Bytes),
    /// A keepalive ping.
    Ping,
}

/// Why a session ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Cause {
    /// The peer closed the connection or it failed.
    Closed,
    /// The peer sent nothing for the idle timeout.
    Timeout,
    /// The session's outbound queue overflowed.
    SlowConsumer,
    /// The peer broke the websocket contract (binary frame, oversized message, invalid UTF-8).
    Protocol,
    /// The server is shutting down.
    Shutdown,
    /// An operator kicked the room's holder (admin API).
    Kicked,
    /// A token holder took the room over (auth on).
    TakenOver,
    /// The session kept exceeding its message budget.
    RateLimited,
}

impl Cause {
    /// A label for logs and metrics.
    pub fn as_str(self) -> &'static str {
        match self {
            Cause::Closed => "close",
            Cause::Timeout => "timeout",
            Cause::SlowConsumer => "slow_consumer",
            Cause::Protocol => "protocol",
            Cause::Shutdown => "shutdown",
            Cause::Kicked => "kicked",
            Cause::TakenOver => "taken_over",
            Cause::RateLimited => "rate_limited",
        }
    }
}

/// The shared kill switch of one session.
#[derive(Debug, Default)]
pub struct Kill {
    token: CancellationToken,
    cause: OnceLock<Cause>,
}

impl Kill {
    /// Resolves once the session has been killed.
    pub async fn killed(&self) -> Cause {
        self.token.cancelled().await;
        self.cause.get().copied().unwrap_or(Cause::Closed)
    }
}

/// A handle to queue frames for one session. Cheap to clone.
#[derive(Clone, Debug)]
pub struct Outbox {
    tx: mpsc::Sender<Outgoing>,
    kill: Arc<Kill>,
}

impl Outbox {
    /// A queue of `capacity` frames; the receiver belongs to the session's writer.
    pub fn new(capacity: usize) -> (Outbox, mpsc::Receiver<Outgoing>, Arc<Kill>) {
        let (tx, rx) = mpsc::channel(capacity);
        let kill = Arc::new(Kill::default());
        (Outbox { tx, kill: kill.clone() }, rx, kill)
    }

    /// Queues a text frame. A full queue kills the session as a slow consumer; a closed one drops the frame.
    pub fn send(&self, text: Utf8Bytes) {
        self.push(Outgoing::Text(text));
    }

    /// Queues a keepalive ping, under the same rules as [`Outbox::send`].
    pub fn ping(&self) {
        self.push(Outgoing::Ping);
    }

    fn push(&self, item: Outgoing) {
        if let Err(mpsc::error::TrySendError::Full(_)) = self.tx.try_send(item) {
            self.kill(Cause::SlowConsumer);
        }
    }

    /// Ends the session for `cause` (the first cause recorded wins).
    pub fn kill(&self, cause: Cause) {
        let _ = self.kill.cause.set(cause);
        self.kill.token.cancel();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_full_queue_kills_the_session_as_slow_consumer() {
        let (outbox, mut rx, kill) = Outbox::new(2);
        outbox.send("a".into());
        outbox.send("b".into());
        assert!(!kill.token.is_cancelled());
        outbox.send("c".into());
        assert_eq!(kill.killed().await, Cause::SlowConsumer);
        outbox.kill(Cause::Timeout);
        assert_eq!(kill.killed().await, Cause::SlowConsumer, "first cause wins");
        assert!(matches!(rx.recv().await, Some(Outgoing::Text(t)) if t.as_str() == "a"));
        assert!(matches!(rx.recv().await, Some(Outgoing::Text(t)) if t.as_str() == "b"));
        assert!(rx.try_recv().is_err(), "the overflowing frame was not queued");
    }
}
