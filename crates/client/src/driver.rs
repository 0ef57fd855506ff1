//! The task that owns the websocket: sends commands, matches answers to requests, turns the rest into events,
//! keeps the connection alive and, when it drops, reconnects with backoff and registers the room again.
//!
//! Invariants:
//! - Every request gets exactly one outcome: its answer, a reject, a hang-up (a bye for the call), or
//!   `Disconnected` when the connection drops first. The caller's own timeout covers silence.
//! - The room to restore is the one the last register accept named, cleared by an unregister accept.

use std::collections::HashMap;
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use switchboard_proto::Envelope;
use tokio::net::TcpStream;
use tokio::sync::{mpsc, oneshot};
use tokio::time::{sleep, Instant};
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};
use tracing::{debug, info, warn};

use crate::{random_id, CallRequest, Candidate, ClientConfig, ClientError, Command, Event, IncomingCall};

pub(crate) type Ws = WebSocketStream<MaybeTlsStream<TcpStream>>;

/// Ping after this much silence.
const PING_AFTER: Duration = Duration::from_secs(10);
/// Give the connection up after this much silence (pongs count as traffic).
const DEAD_AFTER: Duration = Duration::from_secs(30);
/// Attempts to take the room back after a reconnect while the server still holds the old session.
const REREGISTER_ATTEMPTS: u32 = 5;

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
}

pub(crate) async fn run(
    config: ClientConfig,
    mut ws: Ws,
    mut commands: mpsc::Receiver<Command>,
    events: mpsc::Sender<Event>,
) {
    let mut d = Driver { config, events, pending: HashMap::new(), room: None };
    loop {
        let end = d.serve(&mut ws, &mut commands).await;
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
            tokio::select! {
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
        match (msg.class.as_str(), msg.method.as_str()) {
            ("accept" | "reject", _) if self.pending.contains_key(&msg.transaction_id) => {
                let Some(p) = self.pending.remove(&msg.transaction_id) else { return };
                let result = if msg.class == "accept" {
                    match msg.method.as_str() {
                        "register" => self.room = msg.room_id.clone(),
                        "unregister" => self.room = None,
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
                Ok(Some(e)) if e.class == "accept" => return Some(room),
                Ok(Some(e)) => warn!(attempt, reason = ?e.reason, "re-register refused"),
                _ => return None,
            }
            sleep(delay * (attempt + 1)).await;
        }
        self.room = None;
        None
    }
}
