//! The task that owns the websocket: sends commands, matches answers to requests, turns the rest into events,
//! keeps the connection alive and, when it drops, reconnects with backoff and registers the room again.
//!
//! Invariants:
//! - Every request gets exactly one outcome: its answer, a reject, a hang-up (a bye for the call), or
//!   `Disconnected` when the connection drops first. The caller's own timeout covers silence.
//! - The room to restore is the one the last register accept named, cleared by an unregister accept.
//! - The ICE servers handed out are those of the last accept that carried some; at most one credential refresh is in
//!   flight, and a server that rejects or ignores one is never asked again.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use futures_util::{SinkExt, StreamExt};
use switchboard_proto::{Envelope, IceServer};
use tokio::net::TcpStream;
use tokio::sync::{mpsc, oneshot};
use tokio::time::{sleep, sleep_until, Instant};
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};
use tracing::{debug, info, warn};

use crate::{random_id, registered, CallRequest, Candidate, ClientConfig, ClientError, Command, Event, IncomingCall};

pub(crate) type Ws = WebSocketStream<MaybeTlsStream<TcpStream>>;

/// Ping after this much silence.
const PING_AFTER: Duration = Duration::from_secs(10);
/// Give the connection up after this much silence (pongs count as traffic).
const DEAD_AFTER: Duration = Duration::from_secs(30);
/// Attempts to take the room back after a reconnect while the server still holds the old session.
const REREGISTER_ATTEMPTS: u32 = 5;
/// Refresh credentials when this share of their remaining lifetime has passed.
const REFRESH_AT: f64 = 0.8;
/// Never refresh sooner than this after the previous accept (credentials that are about to expire, clock skew).
const MIN_REFRESH_DELAY: Duration = Duration::from_millis(500);

/// When to fetch fresh credentials for credentials that expire at `expire` (unix seconds), seen at `unix_now`.
pub(crate) fn refresh_delay(expire: u64, unix_now: f64) -> Duration {
    let remaining = (expire as f64 - unix_now).max(0.0);
    Duration::from_secs_f64(remaining * REFRESH_AT).max(MIN_REFRESH_DELAY)
}

/// The credential refresh of SPEC.md §4.6.
enum Refresh {
    /// Nothing to refresh (static credentials, no room), or the server lacks the extension.
    Off,
    /// Ask at this instant.
    Due(Instant),
    /// Asked with this transaction; the server has until the deadline to answer.
    Asked { tid: String, deadline: Instant },
}

pub(crate) async fn open(config: &ClientConfig) -> Result<Ws, ClientError> {
    let connector = config.tls.clone().map(tokio_tungstenite::Connector::Rustls);
    let (ws, _) = tokio_tungstenite::connect_async_tls_with_config(&config.url, None, true, connector)
        .await
        .map_err(|e| ClientError::Connect { url: config.url.clone(), reason: e.to_string() })?;
    Ok(ws)
}

struct Pending {
    /// For calls: the guest id, so a bye for it can fail the request.
    guest_id: Option<String>,
    reply: oneshot::Sender<Result<Envelope, ClientError>>,
}

/// Why the connected phase ended.
enum End {
    /// Shut down on purpose (or every handle dropped).
    Shutdown,
    /// The connection failed.
    Dropped,
}

struct Driver {
    config: ClientConfig,
    events: mpsc::Sender<Event>,
    pending: HashMap<String, Pending>,
    /// The room to register again after a reconnect.
    room: Option<String>,
    /// The freshest ICE servers, shared with the handles.
    ice: Arc<Mutex<Vec<IceServer>>>,
    refresh: Refresh,
    /// False once the server rejected or ignored an `ice_servers` request: it lacks the extension.
    refresh_supported: bool,
}

pub(crate) async fn run(
    config: ClientConfig,
    mut ws: Ws,
    mut commands: mpsc::Receiver<Command>,
    events: mpsc::Sender<Event>,
    ice: Arc<Mutex<Vec<IceServer>>>,
) {
    let mut d = Driver {
        config,
        events,
        pending: HashMap::new(),
        room: None,
        ice,
        refresh: Refresh::Off,
        refresh_supported: true,
    };
    loop {
        let end = d.serve(&mut ws, &mut commands).await;
        d.refresh = Refresh::Off; // the re-register's accept brings fresh credentials
        for (_, p) in d.pending.drain() {
            let _ = p.reply.send(Err(ClientError::Disconnected));
        }
        let backoff = match (end, d.config.reconnect) {
            (End::Dropped, Some(b)) => b,
            (End::Shutdown, _) => {
                let _ = ws.close(None).await;
                let _ = d.events.send(Event::Closed).await;
                return;
            }
            (End::Dropped, None) => {
                let _ = d.events.send(Event::Closed).await;
                return;
            }
        };
        let _ = d.events.send(Event::Disconnected).await;
        let mut delay = backoff.initial;
        ws = loop {
            tokio::select! {
                () = sleep(delay) => {}
                cmd = commands.recv() => match cmd {
                    None | Some(Command::Shutdown) => {
                        let _ = d.events.send(Event::Closed).await;
                        return;
                    }
                    Some(Command::Request { reply, .. }) => {
                        let _ = reply.send(Err(ClientError::Disconnected));
                        continue;
                    }
                    Some(Command::Send(_)) => continue,
                },
            }
            match open(&d.config).await {
                Ok(ws) => break ws,
                Err(e) => {
                    debug!(error = %e, ?delay, "reconnect failed");
                    delay = (delay * 2).min(backoff.max);
                }
            }
        };
        let room = d.reregister(&mut ws, backoff.initial).await;
        info!(room = ?room, "reconnected");
        let _ = d.events.send(Event::Reconnected { room_id: room }).await;
    }
}

impl Driver {
    async fn serve(&mut self, ws: &mut Ws, commands: &mut mpsc::Receiver<Command>) -> End {
        let mut last_rx = Instant::now();
        let mut tick = tokio::time::interval(PING_AFTER / 2);
        loop {
            let refresh_wake = match &self.refresh {
                Refresh::Off => None,
                Refresh::Due(at) => Some(*at),
                Refresh::Asked { deadline, .. } => Some(*deadline),
            };
            tokio::select! {
                () = wake(refresh_wake) => {
                    if !self.refresh_due(ws).await {
                        return End::Dropped;
                    }
                }
                frame = ws.next() => match frame {
                    Some(Ok(Message::Text(t))) => {
                        last_rx = Instant::now();
                        self.incoming(t.as_str()).await;
                    }
                    Some(Ok(Message::Close(_))) | None | Some(Err(_)) => return End::Dropped,
                    Some(Ok(_)) => last_rx = Instant::now(),
                },
                cmd = commands.recv() => match cmd {
                    None | Some(Command::Shutdown) => return End::Shutdown,
                    Some(Command::Request { msg, reply }) => {
                        let guest_id = (msg.method == "call").then(|| msg.guest_id.clone()).flatten();
                        self.pending.retain(|_, p| !p.reply.is_closed());
                        self.pending.insert(msg.transaction_id.clone(), Pending { guest_id, reply });
                        if ws.send(Message::Text(msg.to_json().into())).await.is_err() {
                            return End::Dropped;
                        }
                    }
                    Some(Command::Send(msg)) => {
                        if ws.send(Message::Text(msg.to_json().into())).await.is_err() {
                            return End::Dropped;
                        }
                    }
                },
                _ = tick.tick() => {
                    let idle = last_rx.elapsed();
                    if idle >= DEAD_AFTER {
                        warn!(?idle, "signaling connection silent; reconnecting");
                        return End::Dropped;
                    }
                    if idle >= PING_AFTER && ws.send(Message::Ping(Default::default())).await.is_err() {
                        return End::Dropped;
                    }
                }
            }
        }
    }

    /// The refresh timer fired: ask for fresh credentials, or give up on a server that never answered. False when the
    /// connection failed.
    async fn refresh_due(&mut self, ws: &mut Ws) -> bool {
        match std::mem::replace(&mut self.refresh, Refresh::Off) {
            Refresh::Off => true,
            Refresh::Due(_) => {
                let tid = random_id(32);
                let msg = Envelope::new("request", "ice_servers", tid.clone());
                self.refresh = Refresh::Asked { tid, deadline: Instant::now() + self.config.request_timeout };
                ws.send(Message::Text(msg.to_json().into())).await.is_ok()
            }
            Refresh::Asked { .. } => {
                info!("the server did not answer an ice_servers request: it lacks the extension; keeping the current ICE servers");
                self.refresh_supported = false;
                true
            }
        }
    }

    /// An accept carried `ice_servers`: keep them, and schedule the next refresh by their expiry.
    fn servers_arrived(&mut self, accept: &Envelope) {
        if let Some(servers) = &accept.ice_servers {
            *self.ice.lock().unwrap_or_else(|e| e.into_inner()) = servers.clone();
        }
        self.refresh = match accept.ice_servers_expire {
            Some(expire) if self.refresh_supported && self.room.is_some() => {
                let now = SystemTime::now().duration_since(UNIX_EPOCH).map_or(0.0, |d| d.as_secs_f64());
                Refresh::Due(Instant::now() + refresh_delay(expire, now))
            }
            _ => Refresh::Off,
        };
    }

    /// Routes one received message.
    async fn incoming(&mut self, text: &str) {
        let msg: Envelope = match serde_json::from_str(text) {
            Ok(m) => m,
            Err(e) => {
                debug!(error = %e, "ignoring an unreadable message");
                return;
            }
        };
        let field = |f: &Option<String>| f.clone().unwrap_or_default();
        let asked = matches!(&self.refresh, Refresh::Asked { tid, .. } if *tid == msg.transaction_id);
        match (msg.class.as_str(), msg.method.as_str()) {
            ("accept", "ice_servers") if asked => {
                self.servers_arrived(&msg);
                info!(expire = ?msg.ice_servers_expire, "ICE servers refreshed");
                let _ = self.events.send(Event::IceServers(registered(msg))).await;
            }
            ("reject", _) if asked => {
                info!(reason = ?msg.reason, "the server refused an ice_servers request; keeping the current ICE servers");
                self.refresh = Refresh::Off;
                self.refresh_supported = false;
            }
            ("accept" | "reject", _) if self.pending.contains_key(&msg.transaction_id) => {
                let Some(p) = self.pending.remove(&msg.transaction_id) else { return };
                let result = if msg.class == "accept" {
                    match msg.method.as_str() {
                        "register" => {
                            self.room = msg.room_id.clone();
                            self.servers_arrived(&msg);
                        }
                        "ice_servers" => self.servers_arrived(&msg),
                        "unregister" => {
                            self.room = None;
                            self.refresh = Refresh::Off;
                        }
                        _ => {}
                    }
                    Ok(msg)
                } else {
                    Err(ClientError::Rejected { code: msg.reject_code(), reason: field(&msg.reason) })
                };
                let _ = p.reply.send(result);
            }
            ("request", "call") => {
                let call = IncomingCall {
                    transaction_id: msg.transaction_id.clone(),
                    request: CallRequest {
                        guest_id: field(&msg.guest_id),
                        room_id: field(&msg.room_id),
                        call_type: field(&msg.call_type),
                        vhost: field(&msg.vhost),
                        app: field(&msg.app),
                        stream: field(&msg.stream),
                        sdp: field(&msg.sdp),
                    },
                };
                let _ = self.events.send(Event::IncomingCall(call)).await;
            }
            ("indication", "candidate") => {
                let c = Candidate {
                    guest_id: field(&msg.guest_id),
                    room_id: field(&msg.room_id),
                    candidate: field(&msg.candidate),
                    ufrag: field(&msg.ufrag),
                    pwd: field(&msg.pwd),
                };
                let _ = self.events.send(Event::Candidate(c)).await;
            }
            ("indication", "bye") => {
                let guest = field(&msg.guest_id);
                let reason = msg.reason.clone();
                let ended: Vec<String> = self
                    .pending
                    .iter()
                    .filter(|(_, p)| p.guest_id.as_deref() == Some(&guest))
                    .map(|(t, _)| t.clone())
                    .collect();
                for tid in ended {
                    if let Some(p) = self.pending.remove(&tid) {
                        let _ = p.reply.send(Err(ClientError::Hangup(reason.clone().unwrap_or_default())));
                    }
                }
                let _ = self.events.send(Event::Bye { guest_id: guest, room_id: field(&msg.room_id), reason }).await;
            }
            _ => debug!(class = %msg.class, method = %msg.method, "ignoring an unexpected message"),
        }
    }

    /// Registers the previous room again on a fresh connection. The server may still hold it for the old session
    /// for a moment (it has not noticed the drop), so a conflict is retried a few times.
    async fn reregister(&mut self, ws: &mut Ws, delay: Duration) -> Option<String> {
        let room = self.room.clone()?;
        for attempt in 0..REREGISTER_ATTEMPTS {
            let tid = random_id(32);
            let mut msg = Envelope::new("request", "register", tid.clone());
            msg.room_id = Some(room.clone());
            if ws.send(Message::Text(msg.to_json().into())).await.is_err() {
                return None;
            }
            let answer = tokio::time::timeout(self.config.request_timeout, async {
                while let Some(Ok(frame)) = ws.next().await {
                    if let Message::Text(t) = frame {
                        match serde_json::from_str::<Envelope>(t.as_str()) {
                            Ok(e) if e.transaction_id == tid => return Some(e),
                            _ => self.incoming(t.as_str()).await,
                        }
                    }
                }
                None
            })
            .await;
            match answer {
                Ok(Some(e)) if e.class == "accept" => {
                    self.servers_arrived(&e);
                    return Some(room);
                }
                Ok(Some(e)) => warn!(attempt, reason = ?e.reason, "re-register refused"),
                _ => return None,
            }
            sleep(delay * (attempt + 1)).await;
        }
        self.room = None;
        None
    }
}

/// Sleeps until `at`, or forever without one.
async fn wake(at: Option<Instant>) {
    match at {
        Some(at) => sleep_until(at).await,
        None => std::future::pending().await,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refresh_comes_at_four_fifths_of_the_remaining_lifetime_and_never_at_once() {
        assert_eq!(refresh_delay(1_000 + 12 * 3600, 1_000.0), Duration::from_secs_f64(0.8 * 12.0 * 3600.0));
        assert_eq!(refresh_delay(1_010, 1_000.0), Duration::from_secs(8));
        assert_eq!(refresh_delay(1_000, 1_000.0), MIN_REFRESH_DELAY, "expiring now");
        assert_eq!(refresh_delay(900, 1_000.0), MIN_REFRESH_DELAY, "already expired (clock skew)");
    }
}
