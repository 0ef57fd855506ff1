//! One answered call on the calling side: trickle ICE, media tasks, progress, and the orderly end.
//!
//! Invariants:
//! - Media tasks start only when their preconditions hold: the receive task when the remote track appears (play),
//!   the send task once the connection is `Connected` (push; writing before the track is bound fails).
//! - `finish` is the only way out: it says `bye` unless the peer already did, closes the peer connection (which
//!   ends every track) and waits, bounded, for the media tasks, so files are flushed and counters final.

use std::future::Future;
use std::path::PathBuf;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rtc::rtp_transceiver::rtp_sender::RtpCodecKind;
use rtc::rtp_transceiver::{RTCRtpTransceiverDirection, RTCRtpTransceiverInit};
use switchboard_client::{Candidate, Client, Event};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio::time::Instant;
use webrtc::media_stream::track_local::TrackLocal;
use webrtc::media_stream::track_remote::TrackRemote;
use webrtc::peer_connection::{PeerConnection, RTCPeerConnectionState};
use webrtc::rtp_transceiver::RtpSender;

use crate::caller::{EndReason, Pending, Progress};
use crate::endpoint::{self, PcEvent};
use crate::media::{self, Clip, Received, SendCounters, VideoTrack};
use crate::PeerError;

/// How long `finish` waits for media tasks after closing the connection.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(5);

pub(crate) enum Role {
    Play { out: Option<PathBuf> },
    Push { clip: Arc<Clip> },
}

impl Role {
    pub fn call_type(&self) -> &'static str {
        match self {
            Role::Play { .. } => "play",
            Role::Push { .. } => "push",
        }
    }
}

pub(crate) struct Session {
    pub client: Client,
    pub pc: Arc<dyn PeerConnection>,
    pub guest_id: String,
    /// The callee's room.
    pub room: String,
    /// Our ICE credentials, sent with every candidate.
    pub ufrag: String,
    pub pwd: String,
    pub role: Role,
    pub received: Arc<Mutex<Received>>,
    pub sent: Arc<SendCounters>,
    pub receivers: Vec<JoinHandle<Result<(), PeerError>>>,
    pub video: Option<(VideoTrack, Arc<dyn RtpSender>)>,
    pub sender: Option<JoinHandle<Result<u64, PeerError>>>,
    pub connected: bool,
    /// The call request went out (so there is a call to end with `bye`).
    pub call_placed: bool,
    pub signaling_open: bool,
}

impl Session {
    /// A recvonly video transceiver (play) or a sendonly one carrying our track (push).
    pub async fn add_transceiver(&mut self) -> Result<(), PeerError> {
        let direction = match self.role {
            Role::Play { .. } => RTCRtpTransceiverDirection::Recvonly,
            Role::Push { .. } => RTCRtpTransceiverDirection::Sendonly,
        };
        let init = Some(RTCRtpTransceiverInit { direction, ..Default::default() });
        if let Role::Push { .. } = self.role {
            let video = VideoTrack::new()?;
            let track: Arc<dyn TrackLocal> = video.track.clone();
            let t = self.pc.add_transceiver_from_track(track, init).await.map_err(PeerError::webrtc)?;
            let sender = t.sender().await.map_err(PeerError::webrtc)?;
            let sender = sender.ok_or_else(|| PeerError::WebRtc("the video transceiver has no sender".into()))?;
            self.video = Some((video, sender));
        } else {
            self.pc.add_transceiver_from_kind(RtpCodecKind::Video, init).await.map_err(PeerError::webrtc)?;
        }
        Ok(())
    }

    pub fn on_track(&mut self, track: Arc<dyn TrackRemote>) {
        if let Role::Play { out } = &self.role {
            // Only the first track writes the file; a second one would interleave two streams.
            let out = if self.receivers.is_empty() { out.clone() } else { None };
            tracing::info!("receiving video");
            self.receivers.push(tokio::spawn(media::receive_track(track, out, self.received.clone())));
        }
    }

    async fn send_candidate(&self, candidate: String) {
        let c = Candidate {
            guest_id: self.guest_id.clone(),
            room_id: self.room.clone(),
            candidate,
            ufrag: self.ufrag.clone(),
            pwd: self.pwd.clone(),
        };
        if let Err(e) = self.client.candidate(c).await {
            tracing::warn!(error = %e, "cannot send a candidate");
        }
    }

    pub async fn flush(&mut self, pending: Pending) {
        for c in pending.remote {
            endpoint::add_remote_candidate(&self.pc, &c.candidate, &c.ufrag).await;
        }
        for c in pending.local {
            self.send_candidate(c).await;
        }
    }

    fn start_sending(&mut self) {
        let (Role::Push { clip }, Some((video, sender))) = (&self.role, self.video.take()) else { return };
        let (clip, counters) = (clip.clone(), self.sent.clone());
        tracing::info!(frames = clip.frames.len(), fps = clip.fps, "sending video");
        self.sender =
            Some(tokio::spawn(async move { media::send_clip(&video, &sender, &clip, None, &counters).await }));
    }

    /// Received counters, frames sent and bytes sent.
    fn snapshot(&self) -> (Received, u64, u64) {
        let received = *self.received.lock().unwrap_or_else(|e| e.into_inner());
        (received, self.sent.frames.load(Ordering::Relaxed), self.sent.bytes.load(Ordering::Relaxed))
    }

    /// Runs the call until something ends it; returns why.
    #[allow(clippy::too_many_arguments)]
    pub async fn run(
        &mut self,
        signaling: &mut mpsc::Receiver<Event>,
        pc_events: &mut mpsc::UnboundedReceiver<PcEvent>,
        shutdown: &mut (impl Future<Output = ()> + Unpin),
        started: Instant,
        deadline: Option<Instant>,
        connect_by: Instant,
        mut on_progress: impl FnMut(&Progress),
    ) -> EndReason {
        let far = Instant::now() + Duration::from_secs(86_400 * 365);
        let mut ticker = tokio::time::interval_at(Instant::now() + Duration::from_secs(1), Duration::from_secs(1));
        let mut last = (Instant::now(), 0u64);
        loop {
            tokio::select! {
                () = tokio::time::sleep_until(deadline.unwrap_or(far)) => return EndReason::Duration,
                () = &mut *shutdown => return EndReason::Shutdown,
                () = tokio::time::sleep_until(connect_by), if !self.connected => return EndReason::ConnectTimeout,
                _ = ticker.tick() => {
                    let (received, sent, sent_bytes) = self.snapshot();
                    let bytes = received.bytes + sent_bytes;
                    let now = Instant::now();
                    let bitrate = (bytes.saturating_sub(last.1) * 8) as f64 / (now - last.0).as_secs_f64().max(1e-3);
                    last = (now, bytes);
                    let pair = endpoint::selected_pair(&self.pc).await;
                    on_progress(&Progress { elapsed: now - started, received, frames_sent: sent, bitrate, pair });
                }
                event = pc_events.recv() => match event {
                    Some(PcEvent::Candidate(c)) => self.send_candidate(c).await,
                    Some(PcEvent::Track(t)) => self.on_track(t),
                    Some(PcEvent::State(RTCPeerConnectionState::Connected)) => {
                        self.connected = true;
                        tracing::info!("connected");
                        self.start_sending();
                    }
                    Some(PcEvent::State(RTCPeerConnectionState::Failed)) => {
                        return EndReason::ConnectionFailed("ICE/DTLS failed".into())
                    }
                    Some(PcEvent::State(RTCPeerConnectionState::Closed)) | None => {
                        return EndReason::ConnectionFailed("the peer connection closed".into())
                    }
                    Some(PcEvent::State(state)) => tracing::debug!(%state, "connection state"),
                },
                event = signaling.recv(), if self.signaling_open => match event {
                    Some(Event::Candidate(c)) if c.guest_id == self.guest_id => {
                        endpoint::add_remote_candidate(&self.pc, &c.candidate, &c.ufrag).await
                    }
                    Some(Event::Bye { guest_id, reason, .. }) if guest_id == self.guest_id => {
                        return EndReason::PeerBye(reason.unwrap_or_else(|| "no reason given".into()))
                    }
                    Some(Event::Closed) | None => {
                        tracing::warn!("signaling connection closed; media continues");
                        self.signaling_open = false;
                    }
                    _ => {}
                },
                result = async { self.sender.as_mut().expect("guarded").await }, if self.sender.is_some() => {
                    self.sender = None;
                    let why = match result {
                        Ok(Ok(_)) => "the clip ended".to_owned(),
                        Ok(Err(e)) => e.to_string(),
                        Err(e) => e.to_string(),
                    };
                    return EndReason::ConnectionFailed(format!("sending stopped: {why}"));
                }
            }
        }
    }

    /// Ends the call (see the module invariants) and returns the final counters.
    pub async fn finish(&mut self, end: Option<&EndReason>) -> (Received, u64, u64) {
        if self.call_placed && self.signaling_open && !matches!(end, Some(EndReason::PeerBye(_))) {
            let _ = self.client.bye(&self.guest_id, &self.room, Some("done")).await;
        }
        if let Some(sender) = self.sender.take() {
            sender.abort();
        }
        if let Err(e) = self.pc.close().await {
            tracing::debug!(error = %e, "closing the peer connection");
        }
        for task in self.receivers.drain(..) {
            match tokio::time::timeout(DRAIN_TIMEOUT, task).await {
                Ok(Ok(Err(e))) => tracing::warn!(error = %e, "receiving video"),
                Err(_) => tracing::warn!("the receive task did not end in time"),
                _ => {}
            }
        }
        self.snapshot()
    }
}
