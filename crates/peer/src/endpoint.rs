//! Building webrtc-rs peer connections the way every endpoint here needs them, and the ICE glue between webrtc-rs
//! and the signaling protocol.
//!
//! Invariants:
//! - mDNS is always disabled and the UDP sockets bind only the configured address, so endpoints work in network
//!   namespaces and loopback-only test environments.
//! - Only H.264 (packetization-mode 1) is negotiated, so both sides of a call agree on one depacketizer.
//! - The event handler never blocks the webrtc driver: it only pushes into an unbounded channel.
//! - Candidates leave in the protocol's form (no `candidate:` prefix) and enter with it restored.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Instant;

use rtc::ice::mdns::MulticastDnsMode;
use rtc::peer_connection::configuration::media_engine::MIME_TYPE_H264;
use rtc::peer_connection::transport::RTCDtlsRole;
use rtc::rtp_transceiver::rtp_sender::{RTCPFeedback, RTCRtpCodec, RTCRtpCodecParameters, RtpCodecKind};
use switchboard_proto::IceServer;
use tokio::sync::mpsc;
use webrtc::media_stream::track_remote::TrackRemote;
use webrtc::peer_connection::{
    register_default_interceptors, MediaEngine, PeerConnection, PeerConnectionBuilder, PeerConnectionEventHandler,
    RTCConfigurationBuilder, RTCIceCandidateInit, RTCIceServer, RTCIceTransportPolicy, RTCPeerConnectionIceEvent,
    RTCPeerConnectionState, RTCStatsReportEntry, Registry, SettingEngineBuilder, StatsSelector,
};

use crate::PeerError;

/// The payload type we offer for H.264.
const H264_PAYLOAD_TYPE: u8 = 102;

/// How a peer connection is set up.
#[derive(Clone, Debug)]
pub(crate) struct EndpointConfig {
    pub ice_servers: Vec<RTCIceServer>,
    pub relay_only: bool,
    pub bind: SocketAddr,
    /// The DTLS role to answer with, when the offer fixes one (see `sdp_compat`).
    pub answering_role: Option<RTCDtlsRole>,
}

/// What the peer connection reports.
pub(crate) enum PcEvent {
    /// A local candidate, in the protocol's form.
    Candidate(String),
    State(RTCPeerConnectionState),
    Track(Arc<dyn TrackRemote>),
}

struct Handler {
    events: mpsc::UnboundedSender<PcEvent>,
}

#[async_trait::async_trait]
impl PeerConnectionEventHandler for Handler {
    async fn on_ice_candidate(&self, event: RTCPeerConnectionIceEvent) {
        match event.candidate.to_json() {
            Ok(init) => {
                let _ = self.events.send(PcEvent::Candidate(switchboard_client::candidate_from_sdp(&init.candidate)));
            }
            Err(e) => tracing::warn!(error = %e, "cannot encode a local candidate"),
        }
    }

    async fn on_connection_state_change(&self, state: RTCPeerConnectionState) {
        tracing::debug!(%state, "peer connection state");
        let _ = self.events.send(PcEvent::State(state));
    }

    async fn on_track(&self, track: Arc<dyn TrackRemote>) {
        let _ = self.events.send(PcEvent::Track(track));
    }
}

/// The H.264 codec both sides register.
pub(crate) fn h264_codec() -> RTCRtpCodec {
    let fb = |typ: &str, parameter: &str| RTCPFeedback { typ: typ.to_owned(), parameter: parameter.to_owned() };
    RTCRtpCodec {
        mime_type: MIME_TYPE_H264.to_owned(),
        clock_rate: 90_000,
        channels: 0,
        sdp_fmtp_line: "level-asymmetry-allowed=1;packetization-mode=1;profile-level-id=42e01f".to_owned(),
        rtcp_feedback: vec![fb("nack", ""), fb("nack", "pli"), fb("ccm", "fir")],
    }
}

/// Converts the `ice_servers` of a register accept.
pub(crate) fn ice_servers(servers: &[IceServer]) -> Vec<RTCIceServer> {
    servers
        .iter()
        .map(|s| RTCIceServer { urls: vec![s.url.clone()], username: s.ufrag.clone(), credential: s.pwd.clone() })
        .collect()
}

/// Builds a peer connection and the channel of its events.
pub(crate) async fn build(
    config: &EndpointConfig,
) -> Result<(Arc<dyn PeerConnection>, mpsc::UnboundedReceiver<PcEvent>), PeerError> {
    let mut media = MediaEngine::default();
    media
        .register_codec(
            RTCRtpCodecParameters { rtp_codec: h264_codec(), payload_type: H264_PAYLOAD_TYPE },
            RtpCodecKind::Video,
        )
        .map_err(PeerError::webrtc)?;
    let registry = register_default_interceptors(Registry::new(), &mut media).map_err(PeerError::webrtc)?;
    let policy = if config.relay_only { RTCIceTransportPolicy::Relay } else { RTCIceTransportPolicy::All };
    let configuration = RTCConfigurationBuilder::new()
        .with_ice_servers(config.ice_servers.clone())
        .with_ice_transport_policy(policy)
        .build();
    let mut setting = SettingEngineBuilder::new().with_multicast_dns_mode(MulticastDnsMode::Disabled);
    if let Some(role) = config.answering_role {
        setting = setting.with_answering_dtls_role(role);
    }
    let setting = setting.build();
    let (tx, events) = mpsc::unbounded_channel();
    let pc = PeerConnectionBuilder::new()
        .with_configuration(configuration)
        .with_media_engine(media)
        .with_interceptor_registry(registry)
        .with_setting_engine(setting)
        .with_handler(Arc::new(Handler { events: tx }))
        .with_udp_addrs(vec![config.bind])
        .build()
        .await
        .map_err(PeerError::webrtc)?;
    Ok((Arc::new(pc), events))
}

/// The ICE credentials (`a=ice-ufrag`, `a=ice-pwd`) of a session description.
pub(crate) fn ice_credentials(sdp: &str) -> Option<(String, String)> {
    let attr = |name: &str| {
        sdp.lines().find_map(|l| l.trim().strip_prefix("a=").and_then(|a| a.strip_prefix(name)).map(str::to_owned))
    };
    Some((attr("ice-ufrag:")?, attr("ice-pwd:")?))
}

/// Adds a candidate received through signaling (protocol form); an unparsable one is logged and skipped.
pub(crate) async fn add_remote_candidate(pc: &Arc<dyn PeerConnection>, value: &str, ufrag: &str) {
    let init = RTCIceCandidateInit {
        candidate: switchboard_client::candidate_to_sdp(value),
        sdp_mline_index: Some(0),
        username_fragment: (!ufrag.is_empty()).then(|| ufrag.to_owned()),
        ..Default::default()
    };
    if let Err(e) = pc.add_ice_candidate(init).await {
        tracing::warn!(candidate = value, error = %e, "ignoring a remote candidate");
    }
}

/// The selected candidate pair as `local/remote` types (e.g. `host/host`, `relay/host`), if stats name one.
pub(crate) async fn selected_pair(pc: &Arc<dyn PeerConnection>) -> Option<String> {
    let report = pc.get_stats(Instant::now(), StatsSelector::None).await;
    let pair = report
        .transport()
        .and_then(|t| match report.get(&t.selected_candidate_pair_id) {
            Some(RTCStatsReportEntry::IceCandidatePair(p)) => Some(p),
            _ => None,
        })
        .or_else(|| report.candidate_pairs().find(|p| p.nominated))?;
    // rtc 0.21 names candidate stats `RTC{Local,Remote}IceCandidate_<id>` but pairs refer to the bare `<id>`.
    let kind = |prefix: &str, id: &str| match report.get(id).or_else(|| report.get(&format!("{prefix}{id}"))) {
        Some(RTCStatsReportEntry::LocalCandidate(c) | RTCStatsReportEntry::RemoteCandidate(c)) => {
            c.candidate_type.to_string()
        }
        _ => "unknown".to_owned(),
    };
    Some(format!(
        "{}/{}",
        kind("RTCLocalIceCandidate_", &pair.local_candidate_id),
        kind("RTCRemoteIceCandidate_", &pair.remote_candidate_id)
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ice_credentials_come_from_the_sdp() {
        let sdp = "v=0\r\nm=video 9 UDP/TLS/RTP/SAVPF 102\r\na=ice-ufrag:abcd\r\na=ice-pwd:secretpassword\r\n";
        assert_eq!(ice_credentials(sdp), Some(("abcd".to_owned(), "secretpassword".to_owned())));
        assert_eq!(ice_credentials("v=0\r\n"), None);
    }

    #[test]
    fn register_ice_servers_become_webrtc_ice_servers() {
        let s = IceServer { url: "turn:192.0.2.1:3478?transport=udp".into(), ufrag: "u".into(), pwd: "p".into() };
        let out = ice_servers(&[s]);
        assert_eq!(out[0].urls, ["turn:192.0.2.1:3478?transport=udp"]);
        assert_eq!((out[0].username.as_str(), out[0].credential.as_str()), ("u", "p"));
    }
}
