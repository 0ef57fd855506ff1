//! One websocket signaling session: the transport-independent [`Core`] and its two drivers.
//!
//! - [`tcp`]: plain TCP sockets, the common case. One task per session, no read buffer while idle (reads go to a
//!   per-thread buffer; only an incomplete frame is kept), and frames for this session written straight to its socket
//!   by whoever queued them (see [`crate::outbox`]).
//! - [`stream`]: any other byte stream (TLS, in-memory pipes, connections upgraded through the HTTP server), with a
//!   reader and a writer task.
//!
//! Invariants:
//! - Client mistakes (bad JSON, missing fields, routing errors) are answered with a `reject`; the session lives on.
//! - Transport faults end the session with the right close code: 1009 for an oversized message, 1003 for a binary
//!   frame, 1007 for invalid UTF-8, 1002 for broken framing, 1001 on shutdown. Whatever ends it, the hub is told
//!   exactly once ([`Hub::detach`]), before the close frame is queued: byes go out first.
//! - Keepalive: a ping after `ping-after` of silence (repeated at that interval), close after `idle-timeout` without any
//!   frame. The timer is re-armed only when it fires, so the per-read cost is one clock read.

mod stream;
mod tcp;

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use switchboard_proto::{Body, Message, Reject, RejectCode};
use tokio::time::Instant;
use tracing::debug;

use crate::auth::Access;
use crate::http::AppState;
use crate::hub::SessionId;
use crate::limits::{ConnectionSlot, MessageBudget};
use crate::outbox::{Cause, Outbox};
use crate::ws::{Decoded, Decoder, Event, Frame, Violation};

pub use stream::run_stream;
pub(crate) use tcp::read_some;
pub use tcp::run_tcp;

/// Close codes (RFC 6455 §7.4.1).
mod close {
    pub const NORMAL: u16 = 1000;
    pub const GOING_AWAY: u16 = 1001;
    pub const POLICY: u16 = 1008;
    /// Service restart: this cluster node lost its membership and is rejoining (SPEC.md §9).
    pub const RESTART: u16 = 1012;
    /// Application codes (4000–4999): an operator kicked the session (SPEC.md §8).
    pub const KICKED: u16 = 4001;
    /// A token holder took the room over (SPEC.md §7).
    pub const TAKEN_OVER: u16 = 4409;
}

/// How long a closing session waits for its last frames to go out and the peer to answer the close.
const CLOSE_LINGER: Duration = Duration::from_secs(2);

/// The session's span: every log line of the session names its peer, id, room and guest.
fn span(peer: std::net::SocketAddr) -> tracing::Span {
    tracing::info_span!(
        "session",
        peer.addr = %peer,
        session = tracing::field::Empty,
        room = tracing::field::Empty,
        guest = tracing::field::Empty
    )
}

/// How a session ends.
#[derive(Debug)]
struct End {
    cause: Cause,
    code: u16,
    reason: &'static str,
    /// The peer already closed (close frame or EOF): there is no close handshake to wait for.
    peer_done: bool,
}

impl End {
    fn shutdown() -> End {
        End { cause: Cause::Shutdown, code: close::GOING_AWAY, reason: "server shutting down", peer_done: false }
    }

    /// Killed through the outbox (slow consumer, kick, takeover, socket error).
    fn killed(cause: Cause) -> End {
        let code = match cause {
            Cause::SlowConsumer | Cause::RateLimited => close::POLICY,
            Cause::Shutdown => close::GOING_AWAY,
            Cause::Kicked => close::KICKED,
            Cause::TakenOver => close::TAKEN_OVER,
            Cause::Restart => close::RESTART,
            Cause::Timeout | Cause::Closed | Cause::Protocol => close::NORMAL,
        };
        End { cause, code, reason: cause.as_str(), peer_done: cause == Cause::Closed }
    }

    /// The connection ended under us (EOF or a socket error).
    fn gone() -> End {
        End { cause: Cause::Closed, code: close::NORMAL, reason: "", peer_done: true }
    }

    fn violation(v: Violation) -> End {
        End { cause: Cause::Protocol, code: v.close_code(), reason: v.reason(), peer_done: false }
    }
}

/// The transport-independent part of a session: frames in, hub calls, replies out.
struct Core {
    id: SessionId,
    app: AppState,
    access: Access,
    outbox: Outbox,
    budget: MessageBudget,
    last_rx: Instant,
    /// Held for the session's life: its place in the connection limits.
    _slot: ConnectionSlot,
}

impl Core {
    fn open(app: AppState, access: Access, outbox: Outbox, slot: ConnectionSlot) -> Core {
        let id = app.hub.attach(outbox.clone());
        tracing::Span::current().record("session", id.0);
        debug!("session opened");
        app.metrics.connections_open.inc();
        app.metrics.connections_total.inc();
        let budget = MessageBudget::new(app.limits.messages_per_second, app.limits.message_burst);
        Core { id, app, access, outbox, budget, last_rx: Instant::now(), _slot: slot }
    }

    /// Decodes and handles every complete frame at the start of `buf`; returns how many bytes that took (the rest
    /// is the start of a frame still arriving).
    fn on_bytes(&mut self, decoder: &mut Decoder, buf: &mut [u8]) -> Result<usize, End> {
        self.last_rx = Instant::now();
        let mut off = 0;
        while off < buf.len() {
            let (event, used) = match decoder.decode(&mut buf[off..]) {
                Ok(Decoded::Event { event, used }) => (event, used),
                Ok(Decoded::Fragment { used }) => {
                    off += used;
                    continue;
                }
                Ok(Decoded::Incomplete) => break,
                Err(v) => return Err(End::violation(v)),
            };
            off += used;
            self.on_event(event)?;
            decoder.release();
        }
        Ok(off)
    }

    fn on_event(&mut self, event: Event<'_>) -> Result<(), End> {
        match event {
            Event::Text(text) => {
                let within_budget = self.budget.take(self.last_rx);
                if !within_budget && self.budget.refused_in_a_row >= self.app.limits.message_burst {
                    return Err(End {
                        cause: Cause::RateLimited,
                        code: close::POLICY,
                        reason: "rate limited",
                        peer_done: false,
                    });
                }
                self.handle_text(text, within_budget);
            }
            Event::Ping(payload) => self.outbox.send(Frame::pong(payload)),
            Event::Pong => {}
            // Echo the peer's code, as RFC 6455 §5.5.1 suggests.
            Event::Close(code) => {
                return Err(End {
                    cause: Cause::Closed,
                    code: code.unwrap_or(close::NORMAL),
                    reason: "",
                    peer_done: true,
                })
            }
        }
        Ok(())
    }

    /// The keepalive timer fired: ping or time out. Returns when it must fire next.
    fn on_keepalive(&self) -> Result<Instant, End> {
        let config = &self.app.config;
        let now = Instant::now();
        let idle_deadline = self.last_rx + config.idle_timeout;
        if now >= idle_deadline {
            return Err(End { cause: Cause::Timeout, code: close::NORMAL, reason: "idle timeout", peer_done: false });
        }
        if now >= self.last_rx + config.ping_after {
            self.outbox.send(Frame::ping());
            Ok((now + config.ping_after).min(idle_deadline))
        } else {
            Ok(self.last_rx + config.ping_after)
        }
    }

    /// When the keepalive timer fires first.
    fn first_keepalive(&self) -> Instant {
        self.last_rx + self.app.config.ping_after
    }

    /// Leaves the hub (the counterparts get their byes) and queues the close frame behind them.
    fn close(&self, end: &End) {
        self.app.hub.detach(self.id);
        self.app.metrics.connections_open.dec();
        self.app.metrics.disconnect(end.cause);
        debug!(cause = end.cause.as_str(), code = end.code, "session closing");
        // Frames already queued (replies, byes) go out before the close, except to a consumer that is stuck anyway.
        self.outbox.close(Frame::close(end.code, end.reason), end.cause != Cause::SlowConsumer);
    }

    fn handle_text(&self, text: &str, within_budget: bool) {
        let metrics = &self.app.metrics;
        let reject = match Message::parse(text) {
            // Over budget, every frame is refused, malformed ones included: flooding with garbage must not be free.
            Err(mut reject) if !within_budget => {
                (reject.code, reject.reason) = (RejectCode::RateLimited, "rate limited".into());
                metrics.reject(reject.code);
                reject.to_json()
            }
            Ok(msg) => {
                let routed = self
                    .admit(&msg, within_budget)
                    .and_then(|takeover| self.app.hub.dispatch(self.id, &msg, text, takeover));
                match routed {
                    Ok(()) => {
                        note_in_span(&msg.body);
                        return;
                    }
                    Err(reject) => {
                        metrics.reject(reject.code);
                        reject.to_json()
                    }
                }
            }
            Err(reject) => {
                metrics.reject(reject.code);
                reject.to_json()
            }
        };
        debug!(reject = %reject, "rejected");
        self.outbox.send(Frame::text(&reject));
    }

    /// The session-level checks between parsing and routing: message budget, id length, auth. `Ok(true)` lets a
    /// register take its room over from a stale session (the token grants the room).
    fn admit<'m>(&self, msg: &'m Message<'_>, within_budget: bool) -> Result<bool, Reject<'m>> {
        if !within_budget {
            return Err(msg.reject(RejectCode::RateLimited, "rate limited"));
        }
        let max = self.app.limits.max_id_length;
        let ids = [Some(&*msg.transaction_id), msg.body.room_id(), msg.body.guest_id()];
        if ids.iter().flatten().any(|id| id.len() > max) {
            return Err(msg.reject(RejectCode::BadField, format!("ids must be at most {max} bytes")));
        }
        let unix_now = || SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs());
        let denied = |reason: String| msg.reject(RejectCode::Unauthorized, reason);
        match &msg.body {
            Body::Register { room_id } => {
                self.access.may_register(room_id.as_deref(), unix_now()).map_err(denied)?;
                Ok(room_id.as_deref().is_some_and(|r| self.access.grants_room(r)))
            }
            Body::Call { room_id, .. } => self.access.may_call(room_id, unix_now()).map(|()| false).map_err(denied),
            _ => Ok(false),
        }
    }
}

/// Keeps the session span's `room` and `guest` fields current, so every log line of the session names them.
fn note_in_span(body: &Body<'_>) {
    match body {
        Body::Register { room_id: Some(room) } => {
            tracing::Span::current().record("room", &**room);
        }
        Body::Call { guest_id, .. } => {
            tracing::Span::current().record("guest", &**guest_id);
        }
        _ => {}
    }
}

/// While closing: reads frames only to see the peer's close. True once it came, or the peer is gone.
fn saw_close(decoder: &mut Decoder, buf: &mut Vec<u8>) -> bool {
    let mut off = 0;
    loop {
        match decoder.decode(&mut buf[off..]) {
            Ok(Decoded::Event { event: Event::Close(_), .. }) | Err(_) => return true,
            Ok(Decoded::Event { used, .. } | Decoded::Fragment { used }) => off += used,
            Ok(Decoded::Incomplete) => {
                buf.drain(..off);
                return false;
            }
        }
        decoder.release();
    }
}
