//! One call into the served room: answer, trickle ICE, send the clip (`play`) or record what arrives (`push`).
//!
//! Invariants:
//! - The answer is sent before any local candidate: candidates queue in the event channel until `accept` went out.
//! - A call that cannot be answered is rejected with a reason; a call that fails later gets a `bye` with a reason.
//!   A call the caller ended (`bye`) gets none back.
//! - Recordings go to `<record dir>/<sanitized guest id>.h264`: the guest id comes from the network, so only
//!   `[A-Za-z0-9_-]` survive and it can never name a path outside the directory.
//! - The task always closes its peer connection and waits (bounded) for the recording to be flushed.

use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use switchboard_client::{Candidate, Client, IncomingCall};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tracing::Instrument;
use webrtc::media_stream::track_local::TrackLocal;
use webrtc::peer_connection::{PeerConnection, RTCPeerConnectionState, RTCSessionDescription};
use webrtc::rtp_transceiver::RtpSender;

use crate::endpoint::{self, EndpointConfig, PcEvent};
use crate::media::{self, Clip, Received, SendCounters, VideoTrack};
use crate::{sdp_compat, PeerError};

/// A call that does not connect within this long is ended.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(30);
/// How long the task waits for the recording to be flushed.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(5);

/// Signaling for one call, routed by the room keeper.
pub(crate) enum CallInput {
    Candidate(Candidate),
    /// The caller (or the server on its behalf) ended the call.
    Bye,
    /// The room keeper is stopping.
    Shutdown,
}

/// What every call needs from the room keeper.
pub(crate) struct CallContext {
    pub client: Client,
    pub endpoint: EndpointConfig,
    pub clip: Arc<Clip>,
    pub record_dir: PathBuf,
}

/// What a finished call leaves behind.
pub(crate) struct CallOutcome {
    pub recording: Option<PathBuf>,
}

struct Answer {
    sdp: String,
    ufrag: String,
    pwd: String,
    video: Option<(VideoTrack, Arc<dyn RtpSender>)>,
}

/// `[A-Za-z0-9_-]` only, at most 128 characters, never empty.
pub(crate) fn file_stem(guest_id: &str) -> String {
    let stem: String = guest_id
        .chars()
        .take(128)
        .map(|c| if c.is_ascii_alphanumeric() || c == '-' || c == '_' { c } else { '_' })
        .collect();
    if stem.is_empty() {
        "guest".to_owned()
    } else {
        stem
    }
}

pub(crate) async fn run(ctx: CallContext, call: IncomingCall, inputs: mpsc::Receiver<CallInput>) -> CallOutcome {
    let span = tracing::info_span!("call", guest_id = %call.request.guest_id, call_type = %call.request.call_type);
    async move {
        let endpoint =
            EndpointConfig { answering_role: sdp_compat::answering_role(&call.request.sdp), ..ctx.endpoint.clone() };
        let (pc, events) = match endpoint::build(&endpoint).await {
            Ok(built) => built,
            Err(e) => {
                tracing::error!(error = %e, "cannot create a peer connection");
                let _ = ctx.client.reject(&call, "cannot create a peer connection").await;
                return CallOutcome { recording: None };
            }
        };
        let outcome = match answer(&call, &pc).await {
            Ok(answer) => serve_call(&ctx, &call, &pc, answer, inputs, events).await,
            Err(e) => {
                tracing::warn!(error = %e, "cannot answer");
                let _ = ctx.client.reject(&call, &format!("cannot answer: {e}")).await;
                CallOutcome { recording: None }
            }
        };
        let _ = pc.close().await;
        outcome
    }
    .instrument(span)
    .await
}

async fn answer(call: &IncomingCall, pc: &Arc<dyn PeerConnection>) -> Result<Answer, PeerError> {
    let offer = RTCSessionDescription::offer(call.request.sdp.clone()).map_err(PeerError::webrtc)?;
    pc.set_remote_description(offer).await.map_err(PeerError::webrtc)?;
    let video = if call.request.call_type == "play" {
        let video = VideoTrack::new()?;
        let track: Arc<dyn TrackLocal> = video.track.clone();
        let sender = pc.add_track(track).await.map_err(PeerError::webrtc)?;
        Some((video, sender))
    } else {
        None
    };
    let answer = pc.create_answer(None).await.map_err(PeerError::webrtc)?;
    pc.set_local_description(answer).await.map_err(PeerError::webrtc)?;
    let local = pc.local_description().await.ok_or_else(|| PeerError::WebRtc("no local description".into()))?;
    let (ufrag, pwd) = endpoint::ice_credentials(&local.sdp)
        .ok_or_else(|| PeerError::WebRtc("the answer has no ICE credentials".into()))?;
    let sdp = sdp_compat::complete_rejected_sections(&local.sdp, &call.request.sdp);
    Ok(Answer { sdp, ufrag, pwd, video })
}

async fn serve_call(
    ctx: &CallContext,
    call: &IncomingCall,
    pc: &Arc<dyn PeerConnection>,
    answer: Answer,
    mut inputs: mpsc::Receiver<CallInput>,
    mut events: mpsc::UnboundedReceiver<PcEvent>,
) -> CallOutcome {
    let client = &ctx.client;
    if let Err(e) = client.accept(call, answer.sdp).await {
        tracing::warn!(error = %e, "cannot send the answer");
        return CallOutcome { recording: None };
    }
    let mut video = answer.video;
    let mut sender: Option<JoinHandle<Result<u64, PeerError>>> = None;
    let mut recorder: Option<(PathBuf, JoinHandle<Result<(), PeerError>>)> = None;
    let received = Arc::new(Mutex::new(Received::default()));
    let sent = Arc::new(SendCounters::default());
    let connect_by = tokio::time::Instant::now() + CONNECT_TIMEOUT;
    let mut connected = false;
    let bye = |reason: &'static str| async move {
        tracing::info!(reason, "ending the call");
        let _ = client.bye(&call.request.guest_id, &call.request.room_id, Some(reason)).await;
    };
    loop {
        tokio::select! {
            input = inputs.recv() => match input {
                Some(CallInput::Candidate(c)) => endpoint::add_remote_candidate(pc, &c.candidate, &c.ufrag).await,
                Some(CallInput::Bye) | None => break,
                Some(CallInput::Shutdown) => {
                    bye("room keeper shutting down").await;
                    break;
                }
            },
            event = events.recv() => match event {
                Some(PcEvent::Candidate(candidate)) => {
                    let c = Candidate {
                        guest_id: call.request.guest_id.clone(),
                        room_id: call.request.room_id.clone(),
                        candidate,
                        ufrag: answer.ufrag.clone(),
                        pwd: answer.pwd.clone(),
                    };
                    let _ = client.candidate(c).await;
                }
                Some(PcEvent::State(RTCPeerConnectionState::Connected)) => {
                    connected = true;
                    tracing::info!("connected");
                    if let Some((track, rtp_sender)) = video.take() {
                        let (clip, sent) = (ctx.clip.clone(), sent.clone());
                        sender = Some(tokio::spawn(async move {
                            media::send_clip(&track, &rtp_sender, &clip, None, &sent).await
                        }));
                    }
                }
                Some(PcEvent::State(RTCPeerConnectionState::Failed)) => {
                    bye("connection failed").await;
                    break;
                }
                Some(PcEvent::State(RTCPeerConnectionState::Closed)) | None => break,
                Some(PcEvent::State(_)) => {}
                Some(PcEvent::Track(track)) if call.request.call_type == "push" && recorder.is_none() => {
                    let path = ctx.record_dir.join(format!("{}.h264", file_stem(&call.request.guest_id)));
                    tracing::info!(path = %path.display(), "recording");
                    let task = tokio::spawn(media::receive_track(track, Some(path.clone()), received.clone()));
                    recorder = Some((path, task));
                }
                Some(PcEvent::Track(_)) => tracing::debug!("ignoring an extra track"),
            },
            () = tokio::time::sleep_until(connect_by), if !connected => {
                bye("connection timeout").await;
                break;
            }
            result = async { sender.as_mut().expect("guarded").await }, if sender.is_some() => {
                sender = None;
                tracing::warn!(?result, "sending stopped");
                bye("sending stopped").await;
                break;
            }
        }
    }
    if let Some(task) = sender.take() {
        task.abort();
    }
    let _ = pc.close().await;
    let frames_sent = sent.frames.load(std::sync::atomic::Ordering::Relaxed);
    if frames_sent > 0 {
        tracing::info!(frames = frames_sent, "call over");
    }
    let Some((path, task)) = recorder else { return CallOutcome { recording: None } };
    match tokio::time::timeout(DRAIN_TIMEOUT, task).await {
        Ok(Ok(Ok(()))) => {}
        Ok(Ok(Err(e))) => tracing::warn!(error = %e, "recording failed"),
        _ => tracing::warn!("the recording did not finish in time"),
    }
    let r = *received.lock().unwrap_or_else(|e| e.into_inner());
    tracing::info!(path = %path.display(), frames = r.frames, bytes = r.bytes, "recording finished");
    CallOutcome { recording: Some(path) }
}

#[cfg(test)]
mod tests {
    use super::file_stem;

    #[test]
    fn recording_names_cannot_escape_the_directory() {
        assert_eq!(file_stem("ringing_abc_XYZ-1"), "ringing_abc_XYZ-1");
        assert_eq!(file_stem("../../etc/passwd"), "______etc_passwd");
        assert_eq!(file_stem(""), "guest");
        assert_eq!(file_stem(&"a".repeat(500)).len(), 128);
    }
}
