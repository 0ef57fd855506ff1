//! One websocket signaling session: a reader loop (this task) and a writer task fed by the bounded [`Outbox`].
//!
//! Invariants:
//! - Client mistakes (bad JSON, missing fields, routing errors) are answered with a `reject`; the session lives on.
//! - Transport faults end the session with the right close code: 1009 for an oversized message, 1003 for a binary
//!   frame, 1007 for invalid UTF-8, 1001 on shutdown. Whatever ends it, the hub is told exactly once ([`Hub::detach`]).
//! - Keepalive: a ping after `ping-after` of silence (repeated at that interval), close after `idle-timeout` without any
//!   frame. The timer is re-armed only when it fires, so the per-message cost is one clock read.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::ws::{CloseFrame, Message as WsMessage, Utf8Bytes, WebSocket};
use futures_util::stream::{SplitSink, SplitStream};
use futures_util::{SinkExt, StreamExt};
use std::time::{SystemTime, UNIX_EPOCH};

use switchboard_proto::{Body, Message, Reject, RejectCode};
use tokio::sync::{mpsc, oneshot};
use tokio::time::{sleep_until, Instant};
use tracing::{debug, Instrument};

use crate::auth::Access;
use crate::config::LimitsConfig;
use crate::config::SignalingConfig;
use crate::http::AppState;
use crate::hub::Hub;
use crate::limits::{ConnectionSlot, MessageBudget};
use crate::metrics::Metrics;
use crate::outbox::{Cause, Outbox, Outgoing};

/// Close codes (RFC 6455 §7.4.1).
mod close {
    pub const NORMAL: u16 = 1000;
    pub const GOING_AWAY: u16 = 1001;
    pub const UNSUPPORTED_DATA: u16 = 1003;
    pub const INVALID_PAYLOAD: u16 = 1007;
    pub const POLICY: u16 = 1008;
    pub const TOO_BIG: u16 = 1009;
    /// Application codes (4000–4999): an operator kicked the session (SPEC.md §8).
    pub const KICKED: u16 = 4001;
    /// A token holder took the room over (SPEC.md §7).
    pub const TAKEN_OVER: u16 = 4409;
}

/// How long a closing session waits for the peer to acknowledge the close before dropping the connection.
const CLOSE_LINGER: Duration = Duration::from_secs(2);

/// Serves one upgraded websocket until it ends.
pub async fn run(ws: WebSocket, peer: SocketAddr, app: AppState, access: Access, slot: ConnectionSlot) {
    let AppState { hub, config, shutdown, metrics, limits, .. } = app;
    let span = tracing::info_span!(
        "session",
        peer.addr = %peer,
        session = tracing::field::Empty,
        room = tracing::field::Empty,
        guest = tracing::field::Empty
    );
    async move {
        let (sink, mut stream) = ws.split();
        let (outbox, rx, kill) = Outbox::new(config.outbound_queue);
        let id = hub.attach(outbox.clone());
        tracing::Span::current().record("session", id.0);
        debug!("session opened");
        let (close_tx, close_rx) = oneshot::channel();
        metrics.connections_open.inc();
        metrics.connections_total.inc();
        let mut writer = tokio::spawn(write_loop(sink, rx, close_rx, metrics.clone()));
        let ctx = Ctx {
            id,
            hub: &*hub,
            outbox: &outbox,
            config: &config,
            metrics: &metrics,
            limits: &limits,
            access: &access,
        };

        let (cause, code, reason) = tokio::select! {
            biased;
            _ = shutdown.cancelled() => (Cause::Shutdown, close::GOING_AWAY, "server shutting down"),
            cause = kill.killed() => (cause, close_code(cause), cause.as_str()),
            end = read_loop(&mut stream, ctx) => end,
        };
        hub.detach(id);
        metrics.connections_open.dec();
        metrics.disconnect(cause);
        debug!(cause = cause.as_str(), code, "session closing");
        // Frames already queued (replies, byes) go out before the close, except to a consumer that is stuck anyway.
        let drain = cause != Cause::SlowConsumer;
        let _ = close_tx.send((CloseFrame { code, reason: Utf8Bytes::from_static(reason) }, drain));
        // Let the writer send the close frame and the peer answer it, then drop the connection either way.
        let linger = async {
            let _ = (&mut writer).await;
            while let Some(Ok(_)) = stream.next().await {}
        };
        if tokio::time::timeout(CLOSE_LINGER, linger).await.is_err() {
            writer.abort();
        }
        drop(slot);
    }
    .instrument(span)
    .await
}

/// What the read loop works with.
struct Ctx<'a> {
    id: crate::hub::SessionId,
    hub: &'a dyn Hub,
    outbox: &'a Outbox,
    config: &'a SignalingConfig,
    metrics: &'a Metrics,
    limits: &'a LimitsConfig,
    access: &'a Access,
}

/// Reads frames until the session must end; returns why, with the close code to send.
async fn read_loop(stream: &mut SplitStream<WebSocket>, ctx: Ctx<'_>) -> (Cause, u16, &'static str) {
    let Ctx { outbox, config, metrics, .. } = ctx;
    let mut budget = MessageBudget::new(ctx.limits.messages_per_second, ctx.limits.message_burst);
    let mut last_rx = Instant::now();
    let keepalive = sleep_until(last_rx + config.ping_after);
    tokio::pin!(keepalive);
    loop {
        let frame = tokio::select! {
            frame = stream.next() => frame,
            () = &mut keepalive => {
                let now = Instant::now();
                if now >= last_rx + config.idle_timeout {
                    return (Cause::Timeout, close::NORMAL, "idle timeout");
                }
                if now >= last_rx + config.ping_after {
                    outbox.ping();
                    keepalive.as_mut().reset((now + config.ping_after).min(last_rx + config.idle_timeout));
                } else {
                    keepalive.as_mut().reset(last_rx + config.ping_after);
                }
                continue;
            }
        };
        last_rx = Instant::now();
        match frame {
            Some(Ok(WsMessage::Text(text))) => {
                metrics.bytes_in.inc_by(text.len() as u64);
                let within_budget = budget.take(last_rx);
                if !within_budget && budget.refused_in_a_row >= ctx.limits.message_burst {
                    return (Cause::RateLimited, close::POLICY, "rate limited");
                }
                handle_text(&ctx, text, within_budget)
            }
            Some(Ok(WsMessage::Binary(_))) => {
                return (Cause::Protocol, close::UNSUPPORTED_DATA, "binary frames are not supported")
            }
            Some(Ok(WsMessage::Ping(_) | WsMessage::Pong(_))) => {}
            Some(Ok(WsMessage::Close(_))) | None => return (Cause::Closed, close::NORMAL, ""),
            Some(Err(e)) => return transport_error(e),
        }
    }
}

fn handle_text(ctx: &Ctx<'_>, text: Utf8Bytes, within_budget: bool) {
    let reject = match Message::parse(text.as_str()) {
        // Over budget, every frame is refused, malformed ones included: flooding with garbage must not be free.
        Err(mut reject) if !within_budget => {
            (reject.code, reject.reason) = (RejectCode::RateLimited, "rate limited".into());
            ctx.metrics.reject(reject.code);
            reject.to_json()
        }
        Ok(msg) => {
            match admit(ctx, &msg, within_budget).and_then(|takeover| ctx.hub.dispatch(ctx.id, &msg, &text, takeover)) {
                Ok(()) => {
                    note_in_span(&msg.body);
                    return;
                }
                Err(reject) => {
                    ctx.metrics.reject(reject.code);
                    reject.to_json()
                }
            }
        }
        Err(reject) => {
            ctx.metrics.reject(reject.code);
            reject.to_json()
        }
    };
    debug!(reject = %reject, "rejected");
    ctx.outbox.send(reject.into());
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

/// The session-level checks between parsing and routing: message budget, id length, auth. `Ok(true)` lets a
/// register take its room over from a stale session (the token grants the room).
fn admit<'m>(ctx: &Ctx<'_>, msg: &'m Message<'_>, within_budget: bool) -> Result<bool, Reject<'m>> {
    if !within_budget {
        return Err(msg.reject(RejectCode::RateLimited, "rate limited"));
    }
    let max = ctx.limits.max_id_length;
    let ids = [Some(&*msg.transaction_id), msg.body.room_id(), msg.body.guest_id()];
    if ids.iter().flatten().any(|id| id.len() > max) {
        return Err(msg.reject(RejectCode::BadField, format!("ids must be at most {max} bytes")));
    }
    let unix_now = || SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs());
    let denied = |reason: String| msg.reject(RejectCode::Unauthorized, reason);
    match &msg.body {
        Body::Register { room_id } => {
            ctx.access.may_register(room_id.as_deref(), unix_now()).map_err(denied)?;
            Ok(room_id.as_deref().is_some_and(|r| ctx.access.grants_room(r)))
        }
        Body::Call { room_id, .. } => ctx.access.may_call(room_id, unix_now()).map(|()| false).map_err(denied),
        _ => Ok(false),
    }
}

/// Maps a websocket read error to how the session ends.
fn transport_error(e: axum::Error) -> (Cause, u16, &'static str) {
    let inner = e.into_inner();
    match inner.downcast_ref::<tungstenite::Error>() {
        Some(tungstenite::Error::Capacity(_)) => (Cause::Protocol, close::TOO_BIG, "message too big"),
        Some(tungstenite::Error::Utf8(_)) => (Cause::Protocol, close::INVALID_PAYLOAD, "invalid UTF-8"),
        _ => {
            debug!(error = %inner, "websocket read failed");
            (Cause::Closed, close::NORMAL, "")
        }
    }
}

fn close_code(cause: Cause) -> u16 {
    match cause {
        Cause::SlowConsumer | Cause::RateLimited => close::POLICY,
        Cause::Shutdown => close::GOING_AWAY,
        Cause::Kicked => close::KICKED,
        Cause::TakenOver => close::TAKEN_OVER,
        Cause::Timeout | Cause::Closed | Cause::Protocol => close::NORMAL,
    }
}

/// Drains the outbox into the socket, batching whatever is queued into one flush, until told to close.
async fn write_loop(
    mut sink: SplitSink<WebSocket, WsMessage>,
    mut rx: mpsc::Receiver<Outgoing>,
    mut close: oneshot::Receiver<(CloseFrame, bool)>,
    metrics: Arc<Metrics>,
) {
    loop {
        tokio::select! {
            biased;
            frame = &mut close => {
                if let Ok((frame, drain)) = frame {
                    while let (true, Ok(item)) = (drain, rx.try_recv()) {
                        if sink.feed(ws_message(item, &metrics)).await.is_err() {
                            return;
                        }
                    }
                    let _ = sink.send(WsMessage::Close(Some(frame))).await;
                }
                return;
            }
            item = rx.recv() => {
                let Some(item) = item else { return };
                if sink.feed(ws_message(item, &metrics)).await.is_err() {
                    return;
                }
                while let Ok(item) = rx.try_recv() {
                    if sink.feed(ws_message(item, &metrics)).await.is_err() {
                        return;
                    }
                }
                if sink.flush().await.is_err() {
                    return;
                }
            }
        }
    }
}

fn ws_message(item: Outgoing, metrics: &Metrics) -> WsMessage {
    match item {
        Outgoing::Text(t) => {
            metrics.bytes_out.inc_by(t.len() as u64);
            WsMessage::Text(t)
        }
        Outgoing::Ping => WsMessage::Ping(Default::default()),
    }
}
