//! Two real WebRTC endpoints (webrtc-rs), forced to relay-only ICE, connect through the built-in TURN server with
//! the credentials of real register accepts, and exchange data-channel messages on loopback.

mod common;

use std::sync::Arc;
use std::time::Duration;

use common::*;
use serde_json::json;
use switchboard_server::config::CredentialMode;
use tokio::sync::mpsc;
use webrtc::data_channel::{DataChannel, DataChannelEvent};
use webrtc::peer_connection::{
    PeerConnection, PeerConnectionBuilder, PeerConnectionEventHandler, RTCConfigurationBuilder, RTCIceGatheringState,
    RTCIceServer, RTCIceTransportPolicy, RTCSessionDescription, SettingEngineBuilder,
};

/// Reports gathering completion and incoming data channels to the test.
struct Handler {
    gathered: mpsc::Sender<()>,
    channels: mpsc::Sender<Arc<dyn DataChannel>>,
}

#[async_trait::async_trait]
impl PeerConnectionEventHandler for Handler {
    async fn on_ice_gathering_state_change(&self, state: RTCIceGatheringState) {
        if state == RTCIceGatheringState::Complete {
            let _ = self.gathered.try_send(());
        }
    }

    async fn on_data_channel(&self, dc: Arc<dyn DataChannel>) {
        let _ = self.channels.try_send(dc);
    }
}

struct Peer {
    pc: Box<dyn PeerConnection>,
    gathered: mpsc::Receiver<()>,
    channels: mpsc::Receiver<Arc<dyn DataChannel>>,
}

async fn relay_only_peer(ice: &serde_json::Value) -> Peer {
    let (gathered_tx, gathered) = mpsc::channel(1);
    let (channels_tx, channels) = mpsc::channel(4);
    let config = RTCConfigurationBuilder::new()
        .with_ice_servers(vec![RTCIceServer {
            urls: vec![ice["url"].as_str().unwrap().to_owned()],
            username: ice["ufrag"].as_str().unwrap().to_owned(),
            credential: ice["pwd"].as_str().unwrap().to_owned(),
        }])
        .with_ice_transport_policy(RTCIceTransportPolicy::Relay)
        .build();
    let setting =
        SettingEngineBuilder::new().with_multicast_dns_mode(rtc::ice::mdns::MulticastDnsMode::Disabled).build();
    let pc = PeerConnectionBuilder::new()
        .with_configuration(config)
        .with_setting_engine(setting)
        .with_handler(Arc::new(Handler { gathered: gathered_tx, channels: channels_tx }))
        .with_udp_addrs(vec!["127.0.0.1:0".to_owned()])
        .build()
        .await
        .unwrap();
    Peer { pc: Box::new(pc), gathered, channels }
}

/// Sets the local description and waits for ICE gathering to complete (no trickle on loopback).
async fn set_local_and_gather(p: &mut Peer, desc: RTCSessionDescription) -> RTCSessionDescription {
    p.pc.set_local_description(desc).await.unwrap();
    tokio::time::timeout(Duration::from_secs(20), p.gathered.recv()).await.expect("ICE gathering completes").unwrap();
    p.pc.local_description().await.unwrap()
}

async fn next_event(dc: &Arc<dyn DataChannel>) -> DataChannelEvent {
    tokio::time::timeout(Duration::from_secs(30), dc.poll()).await.expect("data channel event").expect("channel alive")
}

async fn next_message(dc: &Arc<dyn DataChannel>) -> String {
    loop {
        if let DataChannelEvent::OnMessage(m) = next_event(dc).await {
            return String::from_utf8_lossy(&m.data).into_owned();
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn relay_only_webrtc_peers_connect_through_the_builtin_turn() {
    let server = TestServer::start_with(|c| {
        c.turn.credentials = CredentialMode::Ephemeral;
        c.turn.port = None;
        c.turn.allow_peers = vec!["127.0.0.0/8".parse().unwrap()];
    })
    .await;
    // Credentials come from real register accepts, one per side.
    let mut sig_a = server.client().await;
    let a = sig_a.request(json!({"class":"request","method":"register","room_id":"a"})).await;
    let mut sig_b = server.client().await;
    let b = sig_b.request(json!({"class":"request","method":"register","room_id":"b"})).await;

    let mut offerer = relay_only_peer(&a["ice_servers"][0]).await;
    let mut answerer = relay_only_peer(&b["ice_servers"][0]).await;

    let dc = offerer.pc.create_data_channel("relay-test", None).await.unwrap();
    let offer = offerer.pc.create_offer(None).await.unwrap();
    let offer = set_local_and_gather(&mut offerer, offer).await;
    assert!(offer.sdp.contains("typ relay"), "relay candidates from our TURN server:\n{}", offer.sdp);
    assert!(!offer.sdp.contains("typ host") && !offer.sdp.contains("typ srflx"), "relay only:\n{}", offer.sdp);

    answerer.pc.set_remote_description(offer).await.unwrap();
    let answer = answerer.pc.create_answer(None).await.unwrap();
    let answer = set_local_and_gather(&mut answerer, answer).await;
    assert!(answer.sdp.contains("typ relay"), "{}", answer.sdp);
    offerer.pc.set_remote_description(answer).await.unwrap();

    while !matches!(next_event(&dc).await, DataChannelEvent::OnOpen) {}
    let remote = tokio::time::timeout(Duration::from_secs(30), answerer.channels.recv()).await.unwrap().unwrap();
    dc.send_text("hello through TURN").await.unwrap();
    assert_eq!(next_message(&remote).await, "hello through TURN");
    remote.send_text("and back").await.unwrap();
    assert_eq!(next_message(&dc).await, "and back");

    let stats = server.turn.as_ref().unwrap().stats();
    assert!(stats.allocations_total >= 2, "{stats:?}");
    assert!(stats.packets_to_peers > 0 && stats.packets_to_clients > 0, "{stats:?}");
    offerer.pc.close().await.unwrap();
    answerer.pc.close().await.unwrap();
}
