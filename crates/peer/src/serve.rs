//! The room keeper: registers a room and answers every call into it with its own peer connection.
//!
//! Invariants:
//! - Each guest id maps to at most one running call task; signaling for a guest goes only to its task, and a task
//!   that ends is removed from the map (its id reported through the join set).
//! - The media file is loaded and checked before the room is registered, so a bad file never produces a room
//!   that rejects every call.
//! - At most `max_calls` calls run at once; further calls are rejected with a reason.
//! - Shutdown says `bye` to every call, closes every peer connection, waits (bounded) for the tasks, then
//!   unregisters.

use std::collections::HashMap;
use std::future::Future;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use switchboard_client::{Client, ClientConfig, Event, IncomingCall};
use tokio::sync::mpsc;
use tokio::task::JoinSet;

use crate::call::{self, CallContext, CallInput, CallOutcome};
use crate::endpoint::{self, EndpointConfig};
use crate::media::Clip;
use crate::PeerError;

/// Signaling messages queued towards one call task.
const CALL_INPUT_QUEUE: usize = 256;

/// How long shutdown waits for the call tasks.
const SHUTDOWN_WAIT: Duration = Duration::from_secs(5);

/// What the room keeper serves and where it records.
#[derive(Clone, Debug)]
pub struct ServeConfig {
    /// Signaling URL, e.g. `ws://127.0.0.1:3000/signaling`.
    pub server: String,
    /// The room to register.
    pub room: String,
    /// H.264 Annex-B file sent to `play` callers, looped.
    pub media: PathBuf,
    pub fps: u32,
    /// Where `push` calls are recorded, as `<guest id>.h264`.
    pub record_dir: PathBuf,
    /// Local address the WebRTC UDP sockets bind.
    pub bind: SocketAddr,
    pub max_calls: usize,
}

impl ServeConfig {
    pub fn new(server: impl Into<String>, room: impl Into<String>, media: impl Into<PathBuf>) -> ServeConfig {
        ServeConfig {
            server: server.into(),
            room: room.into(),
            media: media.into(),
            fps: 30,
            record_dir: PathBuf::from("."),
            bind: SocketAddr::from(([0, 0, 0, 0], 0)),
            max_calls: 16,
        }
    }
}

/// What happened while serving.
#[derive(Clone, Debug, Default)]
pub struct ServeSummary {
    pub calls: u64,
    pub rejected: u64,
    /// Files written for push calls.
    pub recordings: Vec<PathBuf>,
}

/// Serves the room until `shutdown` completes (or the signaling connection is lost for good).
pub async fn serve(config: ServeConfig, shutdown: impl Future<Output = ()>) -> Result<ServeSummary, PeerError> {
    let clip = Arc::new(Clip::load(&config.media, config.fps)?);
    std::fs::create_dir_all(&config.record_dir)
        .map_err(|e| PeerError::Io(format!("cannot create {}: {e}", config.record_dir.display())))?;
    let (client, mut signaling) = Client::connect(ClientConfig::new(&config.server)).await?;
    let registered = client.register(Some(&config.room)).await?;
    let endpoint = EndpointConfig {
        ice_servers: endpoint::ice_servers(&registered.ice_servers),
        relay_only: false,
        bind: config.bind,
        answering_role: None,
    };
    tracing::info!(
        room = %registered.room_id,
        ice_servers = registered.ice_servers.len(),
        frames = clip.frames.len(),
        fps = clip.fps,
        "room keeper ready"
    );
    let mut keeper = Keeper {
        client: client.clone(),
        room: registered.room_id.clone(),
        endpoint,
        clip,
        config,
        calls: HashMap::new(),
        tasks: JoinSet::new(),
        summary: ServeSummary::default(),
    };
    tokio::pin!(shutdown);
    let result = loop {
        tokio::select! {
            () = &mut shutdown => break Ok(()),
            event = signaling.recv() => match event {
                Some(Event::Closed) | None => break Err(PeerError::SignalingClosed),
                Some(event) => {
                    if let Err(e) = keeper.on_event(event).await {
                        break Err(e);
                    }
                }
            },
            Some(done) = keeper.tasks.join_next_with_id() => keeper.on_task_end(done),
        }
    };
    keeper.shutdown().await;
    let _ = client.unregister(&keeper.room).await;
    client.shutdown().await;
    result.map(|()| keeper.summary)
}

struct Keeper {
    client: Client,
    room: String,
    endpoint: EndpointConfig,
    clip: Arc<Clip>,
    config: ServeConfig,
    /// Guest id → (task id, input channel).
    calls: HashMap<String, (tokio::task::Id, mpsc::Sender<CallInput>)>,
    tasks: JoinSet<CallOutcome>,
    summary: ServeSummary,
}

impl Keeper {
    async fn on_event(&mut self, event: Event) -> Result<(), PeerError> {
        match event {
            Event::IncomingCall(call) => self.on_call(call).await,
            Event::Candidate(c) if c.room_id == self.room => self.route(&c.guest_id.clone(), CallInput::Candidate(c)),
            Event::Bye { guest_id, room_id, reason } if room_id == self.room => {
                tracing::info!(%guest_id, reason = reason.as_deref().unwrap_or(""), "bye received");
                self.route(&guest_id, CallInput::Bye);
            }
            Event::IceServers(r) => {
                tracing::info!(expire = ?r.ice_servers_expire, "ICE servers refreshed; later calls use them")
            }
            Event::Disconnected => tracing::warn!("signaling connection lost; reconnecting (calls continue)"),
            Event::Reconnected { room_id: Some(room) } => tracing::info!(%room, "signaling reconnected"),
            Event::Reconnected { room_id: None } => {
                // The client gave up taking the room back (another session holds it); one last try, then stop:
                // a keeper without its room would silently serve nobody.
                tracing::warn!(room = %self.room, "reconnected without the room; registering again");
                self.client.register(Some(&self.room)).await?;
                tracing::info!(room = %self.room, "room registered again");
            }
            other => tracing::debug!(?other, "ignored signaling event"),
        }
        Ok(())
    }

    fn route(&mut self, guest_id: &str, input: CallInput) {
        match self.calls.get(guest_id) {
            Some((_, tx)) => {
                // Bounded: a call task that stopped reading loses signaling instead of growing memory.
                if tx.try_send(input).is_err() {
                    tracing::warn!(%guest_id, "call task not keeping up; signaling dropped");
                }
            }
            None => tracing::debug!(%guest_id, "signaling for an unknown call"),
        }
    }

    async fn on_call(&mut self, call: IncomingCall) {
        let reject = match call.request.call_type.as_str() {
            _ if call.request.room_id != self.room => Some(format!("room {} is not served here", call.request.room_id)),
            "play" | "push" if self.calls.len() >= self.config.max_calls => Some("too many calls".to_owned()),
            "play" | "push" => None,
            other => Some(format!("unsupported call type {other:?}")),
        };
        if let Some(reason) = reject {
            tracing::warn!(guest_id = %call.request.guest_id, %reason, "rejecting a call");
            self.summary.rejected += 1;
            let _ = self.client.reject(&call, &reason).await;
            return;
        }
        if let Some((_, old)) = self.calls.remove(&call.request.guest_id) {
            let _ = old.try_send(CallInput::Bye);
        }
        tracing::info!(guest_id = %call.request.guest_id, call_type = %call.request.call_type, stream = %call.request.stream, "incoming call");
        self.summary.calls += 1;
        let (tx, rx) = mpsc::channel(CALL_INPUT_QUEUE);
        let guest_id = call.request.guest_id.clone();
        // The freshest servers: the client refreshes ephemeral TURN credentials before they expire (SPEC.md §4.6).
        let mut endpoint = self.endpoint.clone();
        endpoint.ice_servers = endpoint::ice_servers(&self.client.ice_servers());
        let ctx = CallContext {
            client: self.client.clone(),
            endpoint,
            clip: self.clip.clone(),
            record_dir: self.config.record_dir.clone(),
        };
        let task = self.tasks.spawn(call::run(ctx, call, rx));
        self.calls.insert(guest_id, (task.id(), tx));
    }

    fn on_task_end(&mut self, done: Result<(tokio::task::Id, CallOutcome), tokio::task::JoinError>) {
        let id = match done {
            Ok((id, outcome)) => {
                self.summary.recordings.extend(outcome.recording);
                id
            }
            Err(e) => {
                tracing::error!(error = %e, "a call task failed");
                e.id()
            }
        };
        // A newer call may have taken the guest id over: drop only this task's entry.
        self.calls.retain(|_, (task, _)| *task != id);
    }

    async fn shutdown(&mut self) {
        for (_, (_, tx)) in self.calls.drain() {
            let _ = tx.try_send(CallInput::Shutdown);
        }
        let wait = async {
            while let Some(done) = self.tasks.join_next_with_id().await {
                self.on_task_end(done);
            }
        };
        if tokio::time::timeout(SHUTDOWN_WAIT, wait).await.is_err() {
            tracing::warn!("some calls did not end in time");
            self.tasks.abort_all();
        }
    }
}
