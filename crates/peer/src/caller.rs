//! The calling side: `play` (receive a room's video) and `push` (send a clip to a room), ZLMediaKit style.
//!
//! Invariants:
//! - The caller registers its own room `ringing_<16 alnum>` first (the protocol requires both ends registered) and
//!   calls with guest id `<room>_<16 alnum>`; it unregisters and closes the signaling connection when done.
//! - Local candidates are sent only after the call is answered: a candidate the server sees before the call
//!   request would be rejected (`unknown_guest`), and nothing else orders the two. Remote candidates that arrive
//!   before the answer wait until the remote description is set.
//! - The run always ends: at `duration`, on shutdown, on the peer's `bye`, when ICE/DTLS fails, or when the
//!   connection is not up within `connect_timeout`. Whatever ends it, the peer connection is closed and the
//!   received file flushed before the summary is returned.

use std::future::Future;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use switchboard_client::{random_id, CallRequest, Client, ClientConfig, ClientError, Event};
use tokio::sync::mpsc;
use tokio::time::Instant;
use webrtc::peer_connection::RTCSessionDescription;

use crate::endpoint::{self, EndpointConfig, PcEvent};
use crate::media::{Clip, Received, SendCounters};
use crate::session::{Role, Session};
use crate::{sdp_compat, PeerError};

/// Where to call and how.
#[derive(Clone, Debug)]
pub struct CallerConfig {
    /// Signaling URL, e.g. `ws://127.0.0.1:3000/signaling`.
    pub server: String,
    /// The callee's room.
    pub room: String,
    /// The `stream` field of the call (ZLMediaKit's stream id); default: the room.
    pub stream: Option<String>,
    pub vhost: String,
    pub app: String,
    /// Local address the WebRTC UDP sockets bind (`0.0.0.0:0`: every interface, ephemeral ports).
    pub bind: SocketAddr,
    /// Use only TURN relay candidates.
    pub relay_only: bool,
    /// Stop after this long (measured from the start); `None`: until shutdown or the call ends.
    pub duration: Option<Duration>,
    /// Give up if the connection is not established within this long after the answer.
    pub connect_timeout: Duration,
}

impl CallerConfig {
    pub fn new(server: impl Into<String>, room: impl Into<String>) -> CallerConfig {
        CallerConfig {
            server: server.into(),
            room: room.into(),
            stream: None,
            vhost: "__defaultVhost__".to_owned(),
            app: "live".to_owned(),
            bind: SocketAddr::from(([0, 0, 0, 0], 0)),
            relay_only: false,
            duration: None,
            connect_timeout: Duration::from_secs(20),
        }
    }
}

/// `play`: receive video; optionally write it (Annex-B H.264) to `out`.
#[derive(Clone, Debug)]
pub struct PlayConfig {
    pub call: CallerConfig,
    pub out: Option<PathBuf>,
}

/// `push`: send a looping H.264 clip.
#[derive(Clone, Debug)]
pub struct PushConfig {
    pub call: CallerConfig,
    pub media: PathBuf,
    pub fps: u32,
}

/// Why a call ended.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum EndReason {
    /// `duration` elapsed.
    Duration,
    /// The shutdown future completed (Ctrl-C).
    Shutdown,
    /// The peer or the server ended the call (`bye`), with its reason.
    PeerBye(String),
    /// ICE or DTLS failed, or the connection closed underneath us.
    ConnectionFailed(String),
    /// No connection within `connect_timeout`.
    ConnectTimeout,
}

/// A snapshot, about once a second.
#[derive(Clone, Debug)]
pub struct Progress {
    pub elapsed: Duration,
    pub received: Received,
    pub frames_sent: u64,
    /// Bits per second over the last interval (received for play, sent for push).
    pub bitrate: f64,
    /// The selected candidate pair as `local/remote` types, when stats name one.
    pub pair: Option<String>,
}

/// The outcome of a call.
#[derive(Clone, Debug)]
pub struct CallSummary {
    pub guest_id: String,
    pub elapsed: Duration,
    pub connected: bool,
    pub received: Received,
    pub frames_sent: u64,
    pub pair: Option<String>,
    pub end: EndReason,
}

/// Plays `config.call.room`'s video.
pub async fn play(
    config: PlayConfig,
    shutdown: impl Future<Output = ()>,
    on_progress: impl FnMut(&Progress),
) -> Result<CallSummary, PeerError> {
    run(config.call, Role::Play { out: config.out }, shutdown, on_progress).await
}

/// Pushes a clip to `config.call.room`.
pub async fn push(
    config: PushConfig,
    shutdown: impl Future<Output = ()>,
    on_progress: impl FnMut(&Progress),
) -> Result<CallSummary, PeerError> {
    let clip = Arc::new(Clip::load(&config.media, config.fps)?);
    run(config.call, Role::Push { clip }, shutdown, on_progress).await
}

async fn run(
    cfg: CallerConfig,
    role: Role,
    shutdown: impl Future<Output = ()>,
    on_progress: impl FnMut(&Progress),
) -> Result<CallSummary, PeerError> {
    let started = Instant::now();
    let client_config = ClientConfig { reconnect: None, ..ClientConfig::new(&cfg.server) };
    let (client, mut signaling) = Client::connect(client_config).await?;
    let my_room = format!("ringing_{}", random_id(16));
    let registered = client.register(Some(&my_room)).await?;
    let endpoint_config = EndpointConfig {
        ice_servers: endpoint::ice_servers(&registered.ice_servers),
        relay_only: cfg.relay_only,
        bind: cfg.bind,
        answering_role: None,
    };
    let (pc, mut pc_events) = endpoint::build(&endpoint_config).await?;
    let mut session = Session {
        client: client.clone(),
        pc: pc.clone(),
        guest_id: format!("{my_room}_{}", random_id(16)),
        room: cfg.room.clone(),
        ufrag: String::new(),
        pwd: String::new(),
        role,
        received: Arc::new(Mutex::new(Received::default())),
        sent: Arc::new(SendCounters::default()),
        receivers: Vec::new(),
        video: None,
        sender: None,
        connected: false,
        call_placed: false,
        signaling_open: true,
    };
    tokio::pin!(shutdown);
    let end = async {
        session.add_transceiver().await?;
        let pending = match offer_and_call(&cfg, &mut session, &mut signaling, &mut pc_events, &mut shutdown).await? {
            Answered::Yes(pending) => pending,
            Answered::No(end) => return Ok(end),
        };
        session.flush(pending).await;
        let deadline = cfg.duration.map(|d| started + d);
        let connect_by = Instant::now() + cfg.connect_timeout;
        let end = session
            .run(&mut signaling, &mut pc_events, &mut shutdown, started, deadline, connect_by, on_progress)
            .await;
        Ok::<_, PeerError>(end)
    }
    .await;
    let pair = endpoint::selected_pair(&pc).await;
    let (received, frames_sent, _) = session.finish(end.as_ref().ok()).await;
    if session.signaling_open {
        let _ = client.unregister(&my_room).await;
    }
    client.shutdown().await;
    let end = end?;
    tracing::info!(?end, frames = received.frames, "call over");
    Ok(CallSummary {
        guest_id: session.guest_id,
        elapsed: started.elapsed(),
        connected: session.connected,
        received,
        frames_sent,
        pair,
        end,
    })
}

/// Candidates gathered while the call was being answered.
pub(crate) struct Pending {
    pub local: Vec<String>,
    pub remote: Vec<switchboard_client::Candidate>,
}

enum Answered {
    Yes(Pending),
    No(EndReason),
}

async fn offer_and_call(
    cfg: &CallerConfig,
    session: &mut Session,
    signaling: &mut mpsc::Receiver<Event>,
    pc_events: &mut mpsc::UnboundedReceiver<PcEvent>,
    shutdown: &mut (impl Future<Output = ()> + Unpin),
) -> Result<Answered, PeerError> {
    let pc = session.pc.clone();
    let offer = pc.create_offer(None).await.map_err(PeerError::webrtc)?;
    pc.set_local_description(offer).await.map_err(PeerError::webrtc)?;
    let local = pc.local_description().await.ok_or_else(|| PeerError::WebRtc("no local description".into()))?;
    (session.ufrag, session.pwd) = endpoint::ice_credentials(&local.sdp)
        .ok_or_else(|| PeerError::WebRtc("the offer has no ICE credentials".into()))?;
    // A player is the DTLS server, so that no media reaches it before its SRTP keys (sdp_compat's invariants).
    let sdp = match session.role {
        Role::Play { .. } => sdp_compat::offer_as_dtls_server(&local.sdp),
        Role::Push { .. } => local.sdp,
    };
    let request = CallRequest {
        guest_id: session.guest_id.clone(),
        room_id: cfg.room.clone(),
        call_type: session.role.call_type().to_owned(),
        vhost: cfg.vhost.clone(),
        app: cfg.app.clone(),
        stream: cfg.stream.clone().unwrap_or_else(|| cfg.room.clone()),
        sdp,
    };
    tracing::info!(room = %cfg.room, guest_id = %session.guest_id, call_type = request.call_type, "calling");
    let client = session.client.clone();
    let call = client.call(request);
    session.call_placed = true;
    tokio::pin!(call);
    let mut pending = Pending { local: Vec::new(), remote: Vec::new() };
    let answer = loop {
        tokio::select! {
            answer = &mut call => break answer,
            () = &mut *shutdown => return Ok(Answered::No(EndReason::Shutdown)),
            Some(event) = pc_events.recv() => match event {
                PcEvent::Candidate(c) => pending.local.push(c),
                PcEvent::Track(t) => session.on_track(t),
                PcEvent::State(_) => {}
            },
            event = signaling.recv() => match event {
                Some(Event::Candidate(c)) if c.guest_id == session.guest_id => pending.remote.push(c),
                Some(Event::Closed) | None => return Err(PeerError::SignalingClosed),
                _ => {}
            },
        }
    };
    let sdp = match answer {
        Ok(sdp) => sdp,
        Err(ClientError::Hangup(reason)) => return Ok(Answered::No(EndReason::PeerBye(reason))),
        Err(ClientError::Rejected { reason, .. }) => return Err(PeerError::CallRejected(reason)),
        Err(e) => return Err(e.into()),
    };
    let answer = RTCSessionDescription::answer(sdp).map_err(PeerError::webrtc)?;
    pc.set_remote_description(answer).await.map_err(PeerError::webrtc)?;
    tracing::info!(guest_id = %session.guest_id, "call answered");
    Ok(Answered::Yes(pending))
}
