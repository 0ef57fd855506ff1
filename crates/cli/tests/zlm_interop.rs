//! Interop with the real ZLMediaKit (`MediaServer`): its room keeper and its P2P puller meet on `switchboard serve`.
//!
//! Each test builds its own private network (see `zlm/mod.rs`), starts every process it needs and stops them.
//! What each proves is named in its doc comment; a pairing that breaks fails the test (e.g. a STUN answer without
//! FINGERPRINT makes ZLMediaKit's ICE agent drop its socket, and the pull times out).

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

    let v = keeper.ok("addWebrtcRoomKeeper", &format!("server_host={HOST}&server_port={}&room_id={ROOM}&ssl=0", sb.port()));
    let room_key = v["data"]["room_key"].as_str().expect("room_key").to_owned();
    eventually("the keeper's room on switchboard", Duration::from_secs(10), || {
        let rooms = sb.rooms();
        rooms.as_array().unwrap().iter().any(|r| r["room_id"] == ROOM).then_some(()).ok_or(rooms.to_string())
    });

    // The puller: its own register, a `play` call into ROOM, ICE against our STUN/TURN and the keeper, then media.
    let url = format!("webrtc://{HOST}:{}/live/test?signaling_protocols%3D1%26peer_room_id%3D{ROOM}", sb.port());
    let query = format!("vhost=__defaultVhost__&app=live&stream=test&url={url}&retry_count=0&timeout_sec=20");
    let v = puller.call("addStreamProxy", &query);
    assert_eq!(v["code"], 0, "the pull failed: {v}\npuller log:\n{}\nswitchboard log:\n{}", puller.proc.log(), sb.proc.log());
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
        let rooms = sb.rooms();
        (!rooms.as_array().unwrap().iter().any(|r| r["room_id"] == ROOM)).then_some(()).ok_or(rooms.to_string())
    });
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
        v["code"], 0,
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

/// ZLM keeper → switchboard ← `switchboard peer play`: ZLMediaKit's stream into our player, frames counted.
///
/// Ignored by default: about one run in ten still gets 0 frames (every SRTP packet fails its auth tag after DTLS
/// completes; see README, "Proven against the real ZLMediaKit"). Run it with `--ignored` to chase that defect.
#[test]
#[ignore = "intermittent 0-frame runs against a ZLM keeper (SRTP auth failures, about 1 in 10); issue 11"]
fn zlm_keeper_to_switchboard_peer_play() {
    let Some(bin) = prerequisites("zlm_keeper_to_switchboard_peer_play") else { return };
    zlm::enter_private_network();
    let mut sb = Switchboard::start(&[]);
    let mut keeper = Zlm::start(&bin, "keeper", (42000, 42999), "");
    keeper.load_clip();
    let v = keeper.ok("addWebrtcRoomKeeper", &format!("server_host={HOST}&server_port={}&room_id={ROOM}&ssl=0", sb.port()));
    let room_key = v["data"]["room_key"].as_str().expect("room_key").to_owned();
    eventually("the keeper's room on switchboard", Duration::from_secs(10), || {
        let rooms = sb.rooms();
        rooms.as_array().unwrap().iter().any(|r| r["room_id"] == ROOM).then_some(()).ok_or(rooms.to_string())
    });

    let server = format!("ws://{HOST}:{}/signaling", sb.port());
    let mut cmd = Command::new(BIN);
    cmd.args(["peer", "play", "--server", &server, "--room", ROOM, "--duration", "6s", "--min-frames", "30", "--stream", "test"])
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
    assert!(!log.contains("failed to verify auth tag"), "SRTP poisoned by early media:\n{log}");
    // The player said bye on its way out: the keeper has no guest left.
    eventually("the keeper drops the player's guest", Duration::from_secs(10), || {
        let g = keeper.keeper_guests(ROOM);
        g.is_empty().then_some(()).ok_or(format!("{g:?}"))
    });
    keeper.ok("delWebrtcRoomKeeper", &format!("room_key={room_key}"));
}
