//! Interop with the real ZLMediaKit (`MediaServer`): its room keeper and its P2P puller meet on `switchboard serve`.
//!
//! Each test builds its own private network (see `zlm/mod.rs`), starts every process it needs and stops them.
//! What each proves is named in its doc comment; a pairing that breaks fails the test (e.g. a STUN answer without
//! FINGERPRINT makes ZLMediaKit's ICE agent drop its socket, and the pull times out).

mod support;
mod zlm;

use std::process::Command;
use std::time::Duration;

use zlm::{eventually, prerequisites, Proc, Switchboard, TempDir, Zlm, BIN, HOST};

const ROOM: &str = "zlm_cam_1";

/// ZLM keeper → switchboard ← ZLM puller: the puller's `live/test` comes online with H.264 and its frame count keeps
/// growing; the puller's hang-up removes its guest from the keeper; the keeper's unregister frees the room.
#[test]
fn zlm_keeper_to_zlm_puller_through_switchboard() {
    let Some(bin) = prerequisites("zlm_keeper_to_zlm_puller_through_switchboard") else { return };
    zlm::enter_private_network();
    let mut sb = Switchboard::start(&[]);
    let mut keeper = Zlm::start(&bin, "keeper", (42000, 42999), "");
    let mut puller = Zlm::start(&bin, "puller", (43000, 43999), "");
    keeper.load_clip();

    let room_key = keeper.keep_room(&sb, ROOM);

    // The puller: its own register, a `play` call into ROOM, ICE against our STUN/TURN and the keeper, then media.
    let url = format!("webrtc://{HOST}:{}/live/test?signaling_protocols%3D1%26peer_room_id%3D{ROOM}", sb.port());
    let query = format!("vhost=__defaultVhost__&app=live&stream=test&url={url}&retry_count=0&timeout_sec=20");
    let v = puller.call("addStreamProxy", &query);
    assert_eq!(
        v["code"],
        0,
        "the pull failed: {v}\npuller log:\n{}\nswitchboard log:\n{}",
        puller.proc.log(),
        sb.proc.log()
    );
    let frames = puller.frames_keep_growing(10);
    println!("puller: live/test online, {frames} H.264 frames");
    // Both ICE agents allocated on our TURN server with the ephemeral credentials of their register accepts.
    let metrics = sb.metrics();
    let allocations = zlm::metric(&metrics, "switchboard_turn_allocations_total");
    assert!(allocations >= Some(2.0), "keeper and puller allocate on the built-in TURN ({allocations:?}):\n{metrics}");
    assert_eq!(zlm::metric(&metrics, "switchboard_turn_auth_failures_total"), Some(0.0), "{metrics}");
    let guests = keeper.keeper_guests(ROOM);
    assert_eq!(guests.len(), 1, "one guest on the keeper while the puller plays: {guests:?}");
    assert!(guests[0].starts_with("ringing_"), "the guest is the puller's: {guests:?}");

    // Hang-up: the puller's bye reaches the keeper, which drops the guest.
    puller.ok("delStreamProxy", "key=__defaultVhost__/live/test");
    eventually("the keeper drops the puller's guest", Duration::from_secs(10), || {
        let g = keeper.keeper_guests(ROOM);
        g.is_empty().then_some(()).ok_or(format!("{g:?}"))
    });

    // The keeper unregisters cleanly: the room is gone from switchboard.
    keeper.ok("delWebrtcRoomKeeper", &format!("room_key={room_key}"));
    eventually("the keeper's room is freed", Duration::from_secs(10), || {
        (!sb.holds(ROOM)).then_some(()).ok_or_else(|| sb.rooms().to_string())
    });
}

/// The same pull with the keeper and the puller on two different nodes of a cluster (SPEC.md §9) over a real
/// `redis-server`: the keeper registers on one node, the puller calls through the other, and the relayed signaling
/// crosses the backbone both ways.
#[test]
fn zlm_keeper_and_puller_on_different_cluster_nodes() {
    let Some(bin) = prerequisites("zlm_keeper_and_puller_on_different_cluster_nodes") else { return };
    zlm::enter_private_network();
    let redis = support::redis::Redis::start();
    let url = redis.url();
    let node = |id: &str| {
        let sb = Switchboard::start(&["--cluster", &url, "--cluster-node-id", id, "--cluster-heartbeat", "200ms"]);
        eventually("the node joins its cluster", Duration::from_secs(10), || {
            let (status, body) = support::http_get(sb.addr, "/readyz", "", Duration::from_secs(5));
            (status == 200).then_some(()).ok_or(format!("{status} {body}"))
        });
        sb
    };
    let (mut sb1, mut sb2) = (node("keeper-node"), node("puller-node"));
    let mut keeper = Zlm::start(&bin, "keeper", (42000, 42999), "");
    let mut puller = Zlm::start(&bin, "puller", (43000, 43999), "");
    keeper.load_clip();
    let room_key = keeper.keep_room(&sb1, ROOM);
    assert!(sb2.holds(ROOM), "the other node lists the room too: {}", sb2.rooms());

    let url = format!("webrtc://{HOST}:{}/live/test?signaling_protocols%3D1%26peer_room_id%3D{ROOM}", sb2.port());
    let query = format!("vhost=__defaultVhost__&app=live&stream=test&url={url}&retry_count=0&timeout_sec=20");
    let v = puller.call("addStreamProxy", &query);
    assert_eq!(
        v["code"],
        0,
        "the pull failed: {v}\npuller log:\n{}\nkeeper node:\n{}\npuller node:\n{}",
        puller.proc.log(),
        sb1.proc.log(),
        sb2.proc.log()
    );
    let frames = puller.frames_keep_growing(10);
    println!("puller (via the other node): live/test online, {frames} H.264 frames");
    let sent = zlm::metric(&sb2.metrics(), "switchboard_cluster_relays_sent_total");
    assert!(sent >= Some(2.0), "the puller's call and candidates crossed nodes ({sent:?})");
    assert_eq!(keeper.keeper_guests(ROOM).len(), 1);

    puller.ok("delStreamProxy", "key=__defaultVhost__/live/test");
    eventually("the keeper drops the puller's guest", Duration::from_secs(10), || {
        let g = keeper.keeper_guests(ROOM);
        g.is_empty().then_some(()).ok_or(format!("{g:?}"))
    });
    keeper.ok("delWebrtcRoomKeeper", &format!("room_key={room_key}"));
    eventually("the keeper's room is freed on both nodes", Duration::from_secs(10), || {
        (!sb1.holds(ROOM) && !sb2.holds(ROOM)).then_some(()).ok_or_else(|| sb2.rooms().to_string())
    });
}

/// The same pairing with only relayed candidate pairs allowed on both ZLMediaKit sides (`iceTransportPolicy=1`):
/// keeper and puller allocate on the built-in TURN server with the ephemeral credentials of their register accepts,
/// trickle relay candidates, and the media really flows through our relay. The TURN server must answer the way
/// ZLMediaKit's agent checks (401 to its first, short-term CreatePermission; REALM and NONCE in signed answers).
#[test]
fn zlm_keeper_to_zlm_puller_over_the_builtin_turn_relay() {
    let Some(bin) = prerequisites("zlm_keeper_to_zlm_puller_over_the_builtin_turn_relay") else { return };
    zlm::enter_private_network();
    // The relay addresses are on the veth, 10.77.0.1, which the default peer policy denies (10.0.0.0/8).
    let mut sb = Switchboard::start(&["--turn-allow-peer", "10.77.0.0/24"]);
    let mut keeper = Zlm::start(&bin, "keeper", (42000, 42999), "iceTransportPolicy=1");
    let mut puller = Zlm::start(&bin, "puller", (43000, 43999), "iceTransportPolicy=1");
    keeper.load_clip();
    keeper.keep_room(&sb, ROOM);

    let url = format!("webrtc://{HOST}:{}/live/test?signaling_protocols%3D1%26peer_room_id%3D{ROOM}", sb.port());
    let query = format!("vhost=__defaultVhost__&app=live&stream=test&url={url}&retry_count=0&timeout_sec=20");
    let v = puller.call("addStreamProxy", &query);
    assert_eq!(
        v["code"],
        0,
        "the relayed pull failed: {v}\npuller log:\n{}\nkeeper log:\n{}\nswitchboard log:\n{}",
        puller.proc.log(),
        keeper.proc.log(),
        sb.proc.log()
    );
    let frames = puller.frames_keep_growing(10);
    println!("puller: live/test online over the relay, {frames} H.264 frames");

    // Both sides trickled relay candidates (ZLMediaKit logs every signaling message it sends).
    for (who, zlm) in [("keeper", &mut keeper), ("puller", &mut puller)] {
        let log = zlm.proc.log();
        assert!(log.contains("typ relay"), "the {who} sent no relay candidate:\n{log}");
    }
    let metrics = sb.metrics();
    let m = |series: &str| zlm::metric(&metrics, series).unwrap_or(0.0);
    assert!(m("switchboard_turn_allocations_total") >= 2.0, "{metrics}");
    assert_eq!(m("switchboard_turn_auth_failures_total"), 0.0, "{metrics}");
    // The media went through our relay. ZLMediaKit's relay-only policy wants a relay candidate on at least one end
    // of the pair (either end: it varies from run to run), so the video crosses the relay in one direction, at least
    // one packet per frame the puller counted, and RTCP and consent checks cross it in the other.
    let (to_peers, to_clients) =
        (m("switchboard_turn_relayed_packets_to_peers_total"), m("switchboard_turn_relayed_packets_to_clients_total"));
    assert!(to_peers.max(to_clients) >= frames as f64, "{frames} frames but fewer relayed packets:\n{metrics}");
    assert!(to_peers.min(to_clients) > 0.0, "nothing relayed back:\n{metrics}");
    puller.ok("delStreamProxy", "key=__defaultVhost__/live/test");
}

/// An idle ZLM keeper stays registered: nothing is said for 40 s, longer than both sides' silence limits (ours pings
/// a silent session and closes it 30 s on; ZLMediaKit pings after 10 s without a frame and closes after 30 s), so the
/// pings and pongs each way are what keeps the room.
#[test]
fn an_idle_zlm_keeper_stays_registered() {
    let Some(bin) = prerequisites("an_idle_zlm_keeper_stays_registered") else { return };
    zlm::enter_private_network();
    let mut sb = Switchboard::start(&[]);
    let mut keeper = Zlm::start(&bin, "keeper", (42000, 42999), "");
    let registered = std::time::Instant::now();
    keeper.keep_room(&sb, ROOM);
    // Watch it through the quiet time: the room must never drop.
    while registered.elapsed() < Duration::from_secs(40) {
        assert!(
            sb.holds(ROOM),
            "the idle keeper lost its room after {:?}\nkeeper log:\n{}\nswitchboard log:\n{}",
            registered.elapsed(),
            keeper.proc.log(),
            sb.proc.log()
        );
        std::thread::sleep(Duration::from_secs(1));
    }
    let v = keeper.ok("listWebrtcRoomKeepers", "");
    assert!(
        v["data"].as_array().is_some_and(|d| d.iter().any(|r| r["room_id"] == ROOM)),
        "the keeper still holds it: {v}"
    );
}

/// An H.264 Annex-B clip for `switchboard peer serve`.
fn annexb_clip(dir: &TempDir) -> String {
    let file = dir.0.join("clip.h264");
    let out = Command::new("ffmpeg")
        .args(["-loglevel", "error", "-y", "-f", "lavfi", "-i", "testsrc=size=320x240:rate=30", "-t", "3"])
        .args(["-c:v", "libx264", "-profile:v", "baseline", "-pix_fmt", "yuv420p", "-bsf:v", "h264_mp4toannexb"])
        .args(["-f", "h264"])
        .arg(&file)
        .output()
        .expect("ffmpeg is missing: apt-get install -y ffmpeg (scripts/test.sh installs it)");
    assert!(out.status.success(), "ffmpeg: {}", String::from_utf8_lossy(&out.stderr));
    file.to_str().unwrap().to_owned()
}

/// `switchboard peer serve` → switchboard ← ZLM puller: our H.264 into ZLMediaKit. The puller offers
/// `a=setup:active`, so our answer must be `passive` (and really be the DTLS server), and the audio section we
/// reject must still parse in MediaServer (direction, rtcp-mux, rtpmap).
#[test]
fn switchboard_peer_serve_to_zlm_puller() {
    let Some(bin) = prerequisites("switchboard_peer_serve_to_zlm_puller") else { return };
    zlm::enter_private_network();
    let mut sb = Switchboard::start(&[]);
    let scratch = TempDir::new("peer-serve");
    let media = annexb_clip(&scratch);
    let server = format!("ws://{HOST}:{}/signaling", sb.port());
    let mut cmd = Command::new(BIN);
    cmd.args(["peer", "serve", "--server", &server, "--room", ROOM, "--media", &media, "--bind", &format!("{HOST}:0")])
        .arg("--record-dir")
        .arg(&scratch.0)
        .env("SWITCHBOARD_LOG", "info");
    let mut keeper = Proc::spawn("switchboard peer serve", cmd);
    keeper.wait_line(Duration::from_secs(15), |l| l.contains("room keeper ready"));
    let mut puller = Zlm::start(&bin, "puller", (43000, 43999), "");

    let url = format!("webrtc://{HOST}:{}/live/test?signaling_protocols%3D1%26peer_room_id%3D{ROOM}", sb.port());
    let query = format!("vhost=__defaultVhost__&app=live&stream=test&url={url}&retry_count=0&timeout_sec=20");
    let v = puller.call("addStreamProxy", &query);
    assert_eq!(
        v["code"],
        0,
        "the pull failed: {v}\npuller log:\n{}\npeer serve log:\n{}\nswitchboard log:\n{}",
        puller.proc.log(),
        keeper.log(),
        sb.proc.log()
    );
    let frames = puller.frames_keep_growing(10);
    println!("puller: live/test from switchboard peer serve, {frames} H.264 frames");
    puller.ok("delStreamProxy", "key=__defaultVhost__/live/test");
    keeper.wait_line(Duration::from_secs(15), |l| l.contains("call over") || l.contains("ending the call"));
}

/// ZLM keeper → switchboard ← `switchboard peer play`: ZLMediaKit's stream into our player, frames counted, and not
/// one SRTP packet failing its auth tag.
///
/// This pairing used to get 0 frames in about one run in ten under load. The trigger was our TURN server: its signed
/// Allocate answer lacked REALM and NONCE, ZLMediaKit's agent failed its integrity check and closed that socket, and
/// the call then set up late, with ZLMediaKit's first burst of media landing in webrtc-rs in the same read batch as
/// the DTLS Finished (dropped: `remote_srtp_context is not set yet`), after which every packet failed its auth tag.
/// With the old engine 2 runs of 24 (three at a time) failed that way; with REALM and NONCE echoed, 0 of 44, but it
/// still happened under load: webrtc-rs hands the DTLS "handshake complete" event to its SRTP layer only after the
/// whole read burst, and ZLMediaKit's first two packets carry sequence numbers 65534 and 65535, so losing them put
/// our rollover counter one behind for good. The player now offers `a=setup:passive` (see `sdp_compat`), which makes
/// ZLMediaKit the DTLS client: its media can only follow our own Finished.
#[test]
fn zlm_keeper_to_switchboard_peer_play() {
    let Some(bin) = prerequisites("zlm_keeper_to_switchboard_peer_play") else { return };
    zlm::enter_private_network();
    let mut sb = Switchboard::start(&[]);
    let mut keeper = Zlm::start(&bin, "keeper", (42000, 42999), "");
    keeper.load_clip();
    let room_key = keeper.keep_room(&sb, ROOM);

    let server = format!("ws://{HOST}:{}/signaling", sb.port());
    let mut cmd = Command::new(BIN);
    cmd.args([
        "peer",
        "play",
        "--server",
        &server,
        "--room",
        ROOM,
        "--duration",
        "6s",
        "--min-frames",
        "30",
        "--stream",
        "test",
    ])
    .args(["--bind", &format!("{HOST}:0")])
    // More detail when chasing a failure, e.g. SWITCHBOARD_TEST_PEER_LOG=info,rtc=debug.
    .env("SWITCHBOARD_LOG", std::env::var("SWITCHBOARD_TEST_PEER_LOG").unwrap_or_else(|_| "info".into()));
    let mut player = Proc::spawn("switchboard peer play", cmd);
    let status = player.wait_exit(Duration::from_secs(40));
    assert!(
        status.success(),
        "peer play: {status}\n{}\nkeeper log:\n{}\nswitchboard log:\n{}",
        player.log(),
        keeper.proc.log(),
        sb.proc.log()
    );
    let log = player.log();
    assert!(!log.contains("failed to verify auth tag"), "SRTP packets failed their auth tag:\n{log}");
    // The player offered `a=setup:passive`: ZLMediaKit is the DTLS client, so its media follows our Finished.
    assert!(
        keeper.proc.log().contains("running [role:client]"),
        "ZLMediaKit was not the DTLS client of the player's call:\n{}",
        keeper.proc.log()
    );
    // The player said bye on its way out: the keeper has no guest left.
    eventually("the keeper drops the player's guest", Duration::from_secs(10), || {
        let g = keeper.keeper_guests(ROOM);
        g.is_empty().then_some(()).ok_or(format!("{g:?}"))
    });
    keeper.ok("delWebrtcRoomKeeper", &format!("room_key={room_key}"));
}

/// Our clients against a ZLMediaKit signaling server (MediaServer with `signalingPort` set, its own STUN/TURN on
/// `icePort`): `switchboard peer serve` registers a room there and `switchboard peer play` plays it, frames counted,
/// exactly as they do on `switchboard serve`.
#[test]
fn switchboard_peers_through_a_zlm_signaling_server() {
    let Some(bin) = prerequisites("switchboard_peers_through_a_zlm_signaling_server") else { return };
    zlm::enter_private_network();
    // The namespace is ours alone: a port free for TCP is free for UDP too.
    let (signaling, ice) = (zlm::free_port(), zlm::free_port());
    let mut zlm = Zlm::start(
        &bin,
        "signaling",
        (44000, 44999),
        &format!("signalingPort={signaling}\nicePort={ice}\niceTcpPort={ice}"),
    );
    eventually("ZLMediaKit's signaling port", Duration::from_secs(10), || {
        std::net::TcpStream::connect((HOST, signaling)).map_err(|e| e.to_string())
    });
    let scratch = TempDir::new("peers-on-zlm");
    let media = annexb_clip(&scratch);
    let server = format!("ws://{HOST}:{signaling}/signaling");

    let mut cmd = Command::new(BIN);
    cmd.args(["peer", "serve", "--server", &server, "--room", ROOM, "--media", &media, "--bind", &format!("{HOST}:0")])
        .env("SWITCHBOARD_LOG", "info");
    let mut keeper = Proc::spawn("switchboard peer serve", cmd);
    keeper.wait_line(Duration::from_secs(15), |l| l.contains("room keeper ready"));

    // Once on host candidates, once through ZLMediaKit's own TURN server (the ice_servers of its register accept).
    for relay_only in [false, true] {
        let mut cmd = Command::new(BIN);
        // Through ZLMediaKit's TURN, ICE and DTLS take a few seconds longer to settle.
        let duration = if relay_only { "8s" } else { "4s" };
        cmd.args(["peer", "play", "--server", &server, "--room", ROOM, "--duration", duration, "--min-frames", "30"])
            .args(["--bind", &format!("{HOST}:0")])
            .args(relay_only.then_some("--relay-only"))
            .env("SWITCHBOARD_LOG", "info");
        let mut player = Proc::spawn("switchboard peer play", cmd);
        let status = player.wait_exit(Duration::from_secs(40));
        let log = player.log();
        assert!(
            status.success(),
            "peer play (relay_only={relay_only}) through ZLMediaKit's signaling: {status}\n{log}\npeer serve log:\n{}\n\
             ZLMediaKit log:\n{}",
            keeper.log(),
            zlm.proc.log()
        );
        let summary = log.lines().find(|l| l.starts_with("summary:")).unwrap_or_else(|| panic!("no summary:\n{log}"));
        let path = if relay_only { "pair=relay" } else { "pair=host" };
        assert!(summary.contains(path), "expected {path}: {summary}");
        // The player's bye reached our keeper through ZLMediaKit.
        keeper.wait_line(Duration::from_secs(15), |l| l.contains("call over") || l.contains("ending the call"));
    }
}
