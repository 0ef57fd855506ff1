//! Interop with the real ZLMediaKit (`MediaServer`): its room keeper and its P2P puller meet on `switchboard serve`.
//!
//! Each test builds its own private network (see `zlm/mod.rs`), starts every process it needs and stops them.
//! What each proves is named in its doc comment; a pairing that breaks fails the test (e.g. a STUN answer without
//! FINGERPRINT makes ZLMediaKit's ICE agent drop its socket, and the pull times out).

mod zlm;

use std::time::Duration;

use zlm::{eventually, prerequisites, Switchboard, Zlm, HOST};

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
