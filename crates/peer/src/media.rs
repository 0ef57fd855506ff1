//! Media in and out of a peer connection: a looping H.264 clip sent at a fixed frame rate, and received video
//! counted (and optionally written to a file).
//!
//! Invariants:
//! - A clip is loaded once, checked to hold at least one picture, and shared by every call; each call sends it
//!   from its first access unit (parameter sets and the first picture), so every receiver can decode at once.
//! - Frames are paced by a ticker (no drift accumulates); a late sender skips ticks rather than bursting.
//! - The receive task ends when the track ends (the peer connection closed) and flushes its file before ending;
//!   its counters are readable at any time. Every complete frame is counted, but the file starts at the first key
//!   frame (IDR), so it is always playable even if the stream was joined (or its first packets lost) mid-GOP.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use rtc::media::Sample;
use rtc::media_stream::MediaStreamTrack;
use rtc::rtp_transceiver::rtp_sender::{RTCRtpCodingParameters, RTCRtpEncodingParameters, RtpCodecKind};
use tokio::io::AsyncWriteExt;
use webrtc::media_stream::track_local::static_sample::TrackLocalStaticSample;
use webrtc::media_stream::track_remote::{TrackRemote, TrackRemoteEvent};
use webrtc::rtp_transceiver::RtpSender;

use crate::assemble::Assembler;
use crate::{annexb, PeerError};

/// An H.264 clip split into access units.
#[derive(Debug)]
pub struct Clip {
    pub frames: Vec<Bytes>,
    pub fps: u32,
}

impl Clip {
    /// Loads an Annex-B H.264 file (`.h264`, `.264`).
    pub fn load(path: &Path, fps: u32) -> Result<Clip, PeerError> {
        let data = std::fs::read(path).map_err(|e| PeerError::Media(format!("cannot read {}: {e}", path.display())))?;
        let frames = annexb::access_units(&data);
        if frames.is_empty() {
            return Err(PeerError::Media(format!("{}: no H.264 pictures found (expected Annex-B)", path.display())));
        }
        if fps == 0 {
            return Err(PeerError::Media("the frame rate must be at least 1".into()));
        }
        Ok(Clip { frames, fps })
    }

    fn frame_duration(&self) -> Duration {
        Duration::from_secs(1) / self.fps
    }
}

/// A local video track and the SSRC it sends with.
pub(crate) struct VideoTrack {
    pub track: Arc<TrackLocalStaticSample>,
    pub ssrc: u32,
}

impl VideoTrack {
    pub fn new() -> Result<VideoTrack, PeerError> {
        let ssrc = rand::random::<u32>();
        let id = switchboard_client::random_id(16);
        let coding = RTCRtpEncodingParameters {
            rtp_coding_parameters: RTCRtpCodingParameters { ssrc: Some(ssrc), ..Default::default() },
            codec: crate::endpoint::h264_codec(),
            ..Default::default()
        };
        let track = MediaStreamTrack::new(
            format!("switchboard-{id}"),
            format!("video-{id}"),
            "video".to_owned(),
            RtpCodecKind::Video,
            vec![coding],
        );
        let track = TrackLocalStaticSample::new(Instant::now(), track).map_err(PeerError::webrtc)?;
        Ok(VideoTrack { track: Arc::new(track), ssrc })
    }
}

/// Counters of sent video, shared with whoever reports progress.
#[derive(Debug, Default)]
pub(crate) struct SendCounters {
    pub frames: AtomicU64,
    pub bytes: AtomicU64,
}

/// Sends `clip` on `track` until `limit` frames went out (`None`: loop forever) or the connection goes away.
/// Returns the number of frames sent.
pub(crate) async fn send_clip(
    video: &VideoTrack,
    sender: &Arc<dyn RtpSender>,
    clip: &Clip,
    limit: Option<u64>,
    counters: &SendCounters,
) -> Result<u64, PeerError> {
    let params = sender.get_parameters().await.map_err(PeerError::webrtc)?;
    let payload_type = params
        .rtp_parameters
        .codecs
        .first()
        .map(|c| c.payload_type)
        .ok_or_else(|| PeerError::Media("no codec negotiated for the video sender".into()))?;
    let period = clip.frame_duration();
    let mut ticker = tokio::time::interval(period);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    let mut sent = 0u64;
    for frame in clip.frames.iter().cycle() {
        if limit.is_some_and(|l| sent >= l) {
            break;
        }
        ticker.tick().await;
        let sample = Sample { data: frame.clone(), duration: period, ..Sample::new(Instant::now()) };
        video.track.sample_writer(video.ssrc, payload_type).write_sample(&sample).await.map_err(PeerError::webrtc)?;
        sent += 1;
        counters.frames.fetch_add(1, Ordering::Relaxed);
        counters.bytes.fetch_add(frame.len() as u64, Ordering::Relaxed);
    }
    Ok(sent)
}

/// Counters of received video.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Received {
    /// Complete access units.
    pub frames: u64,
    /// H.264 bytes in those frames (Annex-B, start codes included).
    pub bytes: u64,
    pub packets: u64,
    /// Frames dropped because of a missing or unreadable packet.
    pub dropped_frames: u64,
}

/// Receives one remote video track until it ends.
pub(crate) async fn receive_track(
    track: Arc<dyn TrackRemote>,
    out: Option<PathBuf>,
    counters: Arc<Mutex<Received>>,
) -> Result<(), PeerError> {
    let mut file = match &out {
        Some(path) => {
            let f = tokio::fs::File::create(path)
                .await
                .map_err(|e| PeerError::Media(format!("cannot create {}: {e}", path.display())))?;
            Some(tokio::io::BufWriter::new(f))
        }
        None => None,
    };
    let mut assembler = Assembler::default();
    let mut write_error = None;
    let mut keyframe_seen = false;
    while let Some(event) = track.poll().await {
        let packet = match event {
            TrackRemoteEvent::OnRtpPacket(p) => p,
            TrackRemoteEvent::OnEnded => break,
            _ => continue,
        };
        let frame = assembler.push(&packet);
        {
            let mut c = counters.lock().unwrap_or_else(|e| e.into_inner());
            c.packets += 1;
            c.dropped_frames = assembler.dropped();
            if let Some(f) = &frame {
                c.frames += 1;
                c.bytes += f.len() as u64;
            }
        }
        let Some(frame) = frame else { continue };
        keyframe_seen = keyframe_seen || annexb::is_keyframe(&frame);
        if let (true, Some(w)) = (keyframe_seen, file.as_mut()) {
            if let Err(e) = w.write_all(&frame).await {
                write_error = Some(e);
                file = None;
            }
        }
    }
    if let Some(mut w) = file {
        if let Err(e) = w.flush().await {
            write_error = Some(e);
        }
    }
    match (write_error, out) {
        (Some(e), Some(path)) => Err(PeerError::Media(format!("cannot write {}: {e}", path.display()))),
        _ => Ok(()),
    }
}
