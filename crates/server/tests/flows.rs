//! Every method end to end over real websockets: register, unregister, call, answer, candidate, bye, disconnects.

mod common;

use common::*;
use serde_json::json;

#[tokio::test]
async fn register_with_and_without_room_id() {
    let server = TestServer::start().await;
    let mut a = server.client().await;
    let accept =
        a.request(json!({"class":"request","method":"register","transaction_id":"t1","room_id":"room_1"})).await;
    assert_eq!(
        accept,
        json!({"class":"accept","method":"register","transaction_id":"t1","room_id":"room_1",
               "ice_servers":[{"url":"turn:127.0.0.1:3478?transport=udp","ufrag":"switchboard","pwd":"test-pass"}]})
    );

    let mut b = server.client().await;
    let accept = b.request(json!({"class":"request","method":"register","transaction_id":"t2"})).await;
    let id = accept["room_id"].as_str().unwrap();
    let (seq, suffix) = id.split_once('_').expect("assigned ids are <seq>_<16 alnum>");
    assert!(seq.parse::<u64>().is_ok(), "{id}");
    assert_eq!(suffix.len(), 16);
    assert!(suffix.chars().all(|c| c.is_ascii_alphanumeric()));

    let mut c = server.client().await;
    let other = c.request(json!({"class":"request","method":"register","transaction_id":"t3","room_id":""})).await;
    assert_eq!(other["class"], "accept");
    assert_ne!(other["room_id"], accept["room_id"], "assigned ids are unique");
}

#[tokio::test]
async fn ice_servers_list_every_external_address_then_external_servers() {
    let server = TestServer::start_with(|c| {
        c.turn.external_ips = vec!["10.1.2.3".parse().unwrap(), "::1".parse().unwrap()];
        c.turn.port = Some(3479);
        c.ice_servers.push(switchboard_proto::IceServer {
            url: "stun:stun.example.org:3478".into(),
            ufrag: String::new(),
            pwd: String::new(),
        });
    })
    .await;
    let mut a = server.client().await;
    let accept = a.request(json!({"class":"request","method":"register","room_id":"r"})).await;
    let urls: Vec<_> =
        accept["ice_servers"].as_array().unwrap().iter().map(|s| s["url"].as_str().unwrap().to_owned()).collect();
    assert_eq!(
        urls,
        ["turn:10.1.2.3:3479?transport=udp", "turn:[::1]:3479?transport=udp", "stun:stun.example.org:3478"]
    );
}

#[tokio::test]
async fn ephemeral_turn_credentials_are_per_registration() {
    let server = TestServer::start_with(|c| {
        c.turn.credentials = switchboard_server::config::CredentialMode::Ephemeral;
        c.turn.secret = "shared-secret".into();
        c.turn.port = None;
    })
    .await;
    let mut a = server.client().await;
    let accept = a.request(json!({"class":"request","method":"register","room_id":"cam"})).await;
    let entry = &accept["ice_servers"][0];
    let ufrag = entry["ufrag"].as_str().unwrap();
    let (expiry, room) = ufrag.split_once(':').unwrap();
    assert_eq!(room, "cam");
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs();
    let expiry: u64 = expiry.parse().unwrap();
    assert!(expiry > now && expiry <= now + 12 * 3600 + 5, "{expiry} vs {now}");
    assert_eq!(entry["pwd"], switchboard_turn::credentials::ephemeral_password(b"shared-secret", ufrag));
    // The advertised port is the bound TURN port.
    let url = entry["url"].as_str().unwrap();
    assert!(url.starts_with("turn:127.0.0.1:") && url.ends_with("?transport=udp"), "{url}");
    assert_ne!(url, "turn:127.0.0.1:0?transport=udp");

    // A second registration gets a credential of its own, bound to its own room.
    let mut b = server.client().await;
    let accept = b.request(json!({"class":"request","method":"register","room_id":"cam2"})).await;
    let other = &accept["ice_servers"][0];
    let other_ufrag = other["ufrag"].as_str().unwrap();
    assert_eq!(other_ufrag.split_once(':').unwrap().1, "cam2");
    assert_ne!(other["pwd"], entry["pwd"]);
    assert_eq!(other["pwd"], switchboard_turn::credentials::ephemeral_password(b"shared-secret", other_ufrag));
    // (turn_socket.rs proves both allocate on the TURN server and neither password fits the other's username.)
}

#[tokio::test]
async fn full_play_call_is_relayed_verbatim_both_ways() {
    let server = TestServer::start().await;
    let mut callee = server.registered("camera_1").await;
    let mut caller = server.registered("viewer_9").await;

    // ZLMediaKit pretty-prints with tabs and adds fields we do not know; all of it must pass through untouched.
    let offer = "{\n\t\"app\" : \"live\",\n\t\"class\" : \"request\",\n\t\"guest_id\" : \"viewer_9_x\",\n\t\"method\" : \"call\",\n\t\
                 \"room_id\" : \"camera_1\",\n\t\"sdp\" : \"v=0\\r\\n\",\n\t\"stream\" : \"test\",\n\t\"transaction_id\" : \"T1\",\n\t\
                 \"type\" : \"play\",\n\t\"vhost\" : \"__defaultVhost__\",\n\t\"x-extra\" : {\"n\": [1, 2.5, null]}\n}";
    caller.send_text(offer).await;
    assert_eq!(callee.recv_raw().await, offer);

    let accept = answer("accept", "T1", "viewer_9_x", "camera_1").to_string();
    callee.send_text(accept.clone()).await;
    assert_eq!(caller.recv_raw().await, accept);

    // Candidates both ways, including ZLMediaKit's `sender` field.
    let c1 = r#"{"class":"indication","method":"candidate","transaction_id":"c1","guest_id":"viewer_9_x","room_id":"camera_1","candidate":"9a6c4a99 1 udp 2113955071 10.77.0.1 44239 typ host","ufrag":"u","pwd":"p","sender":"camera_1"}"#;
    callee.send_text(c1).await;
    assert_eq!(caller.recv_raw().await, c1);
    let c2 = r#"{"class":"indication","method":"candidate","transaction_id":"c2","guest_id":"viewer_9_x","room_id":"camera_1","candidate":"1 1 udp 1 10.0.0.2 9 typ srflx raddr 0.0.0.0 rport 0","ufrag":"u2","pwd":"p2","sender":"viewer_9_x"}"#;
    caller.send_text(c2).await;
    assert_eq!(callee.recv_raw().await, c2);

    // Caller hangs up: the bye reaches the callee verbatim and the call is over.
    let b = r#"{"class":"indication","method":"bye","transaction_id":"b","guest_id":"viewer_9_x","room_id":"camera_1","sender":"viewer_9_x"}"#;
    caller.send_text(b).await;
    assert_eq!(callee.recv_raw().await, b);
    caller.send(candidate("viewer_9_x", "camera_1", "x")).await;
    assert_reject(&caller.recv().await, "unknown_guest");
    callee.assert_nothing_pending().await;
}

#[tokio::test]
async fn push_call_and_callee_bye() {
    let server = TestServer::start().await;
    let mut callee = server.registered("recorder").await;
    let mut caller = server.registered("cam").await;
    let mut c = call("T", "cam_1", "recorder");
    c["type"] = json!("push");
    caller.send(c.clone()).await;
    assert_eq!(callee.recv().await, c);
    callee.send(answer("accept", "T", "cam_1", "recorder")).await;
    assert_eq!(caller.recv().await["class"], "accept");
    // The callee ends the call.
    callee.send(bye("cam_1", "recorder")).await;
    assert_eq!(caller.recv().await, bye("cam_1", "recorder"));
    callee.send(bye("cam_1", "recorder")).await;
    assert_reject(&callee.recv().await, "unknown_guest");
}

#[tokio::test]
async fn callee_reject_is_relayed_and_ends_the_call() {
    let server = TestServer::start().await;
    let mut callee = server.registered("a").await;
    let mut caller = server.registered("b").await;
    caller.send(call("T", "g", "a")).await;
    callee.recv().await;
    let mut rej = answer("reject", "T", "g", "a");
    rej["reason"] = json!("stream not found");
    callee.send(rej.clone()).await;
    assert_eq!(caller.recv().await, rej);
    // The guest id is free again: the same call can be made anew.
    caller.send(call("T2", "g", "a")).await;
    assert_eq!(callee.recv().await["transaction_id"], "T2");
}

#[tokio::test]
async fn candidates_may_precede_the_answer() {
    let server = TestServer::start().await;
    let mut callee = server.registered("a").await;
    let mut caller = server.registered("b").await;
    caller.send(call("T", "g", "a")).await;
    callee.recv().await;
    caller.send(candidate("g", "a", "early")).await;
    assert_eq!(callee.recv().await["candidate"], "early");
    callee.send(candidate("g", "a", "early-back")).await;
    assert_eq!(caller.recv().await["candidate"], "early-back");
}

#[tokio::test]
async fn two_callers_into_one_room_then_the_callee_disconnects() {
    let server = TestServer::start().await;
    let mut callee = server.registered("room").await;
    let mut b = server.registered("b").await;
    let mut c = server.registered("c").await;
    b.send(call("T1", "b_1", "room")).await;
    assert_eq!(callee.recv().await["guest_id"], "b_1");
    c.send(call("T2", "c_1", "room")).await;
    assert_eq!(callee.recv().await["guest_id"], "c_1");
    callee.send(answer("accept", "T1", "b_1", "room")).await;
    callee.send(answer("accept", "T2", "c_1", "room")).await;
    assert_eq!(b.recv().await["transaction_id"], "T1");
    assert_eq!(c.recv().await["transaction_id"], "T2");
    // Relays stay separate.
    callee.send(candidate("c_1", "room", "to-c")).await;
    assert_eq!(c.recv().await["candidate"], "to-c");
    b.assert_nothing_pending().await;

    drop(callee);
    assert_server_bye(&b.recv().await, "b_1", "room", "peer unregister");
    assert_server_bye(&c.recv().await, "c_1", "room", "peer unregister");
    // The room is free at once.
    let again = server.registered("room").await;
    drop(again);
}

#[tokio::test]
async fn a_caller_calling_two_rooms_then_disconnecting() {
    let server = TestServer::start().await;
    let mut r1 = server.registered("r1").await;
    let mut r2 = server.registered("r2").await;
    let mut caller = server.registered("caller").await;
    caller.send(call("T1", "g", "r1")).await;
    caller.send(call("T2", "g", "r2")).await;
    assert_eq!(r1.recv().await["transaction_id"], "T1");
    assert_eq!(r2.recv().await["transaction_id"], "T2");
    r1.send(answer("accept", "T1", "g", "r1")).await;
    assert_eq!(caller.recv().await["transaction_id"], "T1");
    drop(caller);
    assert_server_bye(&r1.recv().await, "g", "r1", "peer unregister");
    assert_server_bye(&r2.recv().await, "g", "r2", "peer unregister");
}

#[tokio::test]
async fn caller_disconnect_mid_call_sends_one_bye_to_the_callee() {
    let server = TestServer::start().await;
    let (mut callee, mut caller) = server.in_call().await;
    caller.ws.close(None).await.unwrap();
    assert_server_bye(&callee.recv().await, "g", "a", "peer unregister");
    callee.assert_nothing_pending().await;
}

#[tokio::test]
async fn a_session_without_calls_disconnects_silently() {
    let server = TestServer::start().await;
    let mut watcher = server.registered("watcher").await;
    let lonely = server.registered("lonely").await;
    drop(lonely);
    // Re-registering proves the close was processed; the watcher got nothing.
    let _again = server.registered("lonely").await;
    watcher.assert_nothing_pending().await;
}

#[tokio::test]
async fn unregister_accepts_then_byes_and_frees_the_room() {
    let server = TestServer::start().await;
    let mut callee = server.registered("a").await;
    let mut caller = server.registered("b").await;
    caller.send(call("T", "g", "a")).await;
    callee.recv().await;

    let accept =
        callee.request(json!({"class":"request","method":"unregister","transaction_id":"u1","room_id":"a"})).await;
    assert_eq!(accept, json!({"class":"accept","method":"unregister","transaction_id":"u1","room_id":"a"}));
    assert_server_bye(&caller.recv().await, "g", "a", "peer unregister");

    // The session stays open, holds no room, and may register again (even another id).
    let r = callee.request(json!({"class":"request","method":"unregister","room_id":"a"})).await;
    assert_reject(&r, "not_registered");
    assert_eq!(r["reason"], "unregistered");
    let r = callee.request(call("T9", "x", "b")).await;
    assert_reject(&r, "not_registered");
    let other = server.registered("a").await;
    let r = callee.request(json!({"class":"request","method":"register","room_id":"a2"})).await;
    assert_eq!(r["class"], "accept");
    drop(other);
}

#[tokio::test]
async fn caller_unregister_ends_its_calls_too() {
    let server = TestServer::start().await;
    let mut callee = server.registered("a").await;
    let mut caller = server.registered("b").await;
    caller.send(call("T", "g", "a")).await;
    callee.recv().await;
    let r = caller.request(json!({"class":"request","method":"unregister","room_id":"b"})).await;
    assert_eq!(r["class"], "accept");
    assert_server_bye(&callee.recv().await, "g", "a", "peer unregister");
}

#[tokio::test]
async fn an_old_session_closing_never_frees_a_newer_registration() {
    let server = TestServer::start().await;
    let mut old = server.registered("r").await;
    let r = old.request(json!({"class":"request","method":"unregister","room_id":"r"})).await;
    assert_eq!(r["class"], "accept");
    let mut newer = server.registered("r").await;
    old.ws.close(None).await.unwrap();
    old.until_closed(WAIT).await;
    // Still held by the newer session.
    let mut third = server.client().await;
    assert_reject(&third.request(json!({"class":"request","method":"register","room_id":"r"})).await, "room_conflict");
    newer.assert_nothing_pending().await;
}

#[tokio::test]
async fn re_register_of_a_freed_id_after_disconnect() {
    let server = TestServer::start().await;
    for _ in 0..3 {
        let mut c = server.registered("same").await;
        c.ws.close(None).await.unwrap();
        c.until_closed(WAIT).await;
    }
    // Without waiting for the close handshake, a dropped connection frees the id as soon as the server sees it.
    let c = server.registered("same").await;
    drop(c);
    let mut again = server.client().await;
    let mut accepted = false;
    let deadline = tokio::time::Instant::now() + WAIT;
    while tokio::time::Instant::now() < deadline {
        let r = again.request(json!({"class":"request","method":"register","room_id":"same"})).await;
        if r["class"] == "accept" {
            accepted = true;
            break;
        }
        assert_reject(&r, "room_conflict");
        tokio::task::yield_now().await;
    }
    assert!(accepted);
}

#[tokio::test]
async fn guest_spoofing_by_a_third_session_is_rejected() {
    let server = TestServer::start().await;
    let mut callee = server.registered("a").await;
    let mut caller = server.registered("b").await;
    let mut mallory = server.registered("m").await;
    caller.send(call("T", "g", "a")).await;
    callee.recv().await;

    // Mallory can neither inject candidates, hang up, nor answer the call.
    assert_reject(&mallory.request(candidate("g", "a", "evil")).await, "unknown_guest");
    assert_reject(&mallory.request(bye("g", "a")).await, "unknown_guest");
    assert_reject(&mallory.request(answer("accept", "T", "g", "a")).await, "unknown_guest");
    // Nor reach the caller by pretending to be the callee.
    assert_reject(&mallory.request(candidate("g", "m", "evil")).await, "unknown_guest");

    // The real parties still talk, and nothing of Mallory's reached them.
    caller.send(candidate("g", "a", "real")).await;
    assert_eq!(callee.recv().await["candidate"], "real");
    callee.send(answer("accept", "T", "g", "a")).await;
    assert_eq!(caller.recv().await["class"], "accept");
}

#[tokio::test]
async fn upgrade_on_any_path_is_a_signaling_connection() {
    let server = TestServer::start().await;
    for path in ["/", "/signaling", "/any/other/path?x=1", "/livez"] {
        let mut c = Client::connect(&format!("ws://{}{path}", server.addr)).await;
        let r = c.request(json!({"class":"request","method":"register"})).await;
        assert_eq!(r["class"], "accept", "{path}");
    }
}

/// SPEC.md §4.6: a registered session gets fresh credentials for its room without giving it up; the expiry hint is
/// the credential's own expiry; a session without a room is refused; on a cluster node it works the same.
#[tokio::test]
async fn ice_servers_requests_hand_out_fresh_credentials_with_their_expiry() {
    let ephemeral = |c: &mut switchboard_server::Config| {
        c.turn.credentials = switchboard_server::config::CredentialMode::Ephemeral;
        c.turn.secret = "s".into();
        c.turn.credential_ttl = std::time::Duration::from_secs(60);
    };
    let single = TestServer::start_with(ephemeral).await;
    let world = switchboard_server::cluster::MemoryWorld::new(CLUSTER_NODE_TIMEOUT);
    let node = TestServer::in_cluster(world.node("n1"), ephemeral).await;
    for server in [&single, &node] {
        let mut a = server.client().await;
        let early = a.request(json!({"class":"request","method":"ice_servers","transaction_id":"t0"})).await;
        assert_reject(&early, "not_registered");
        assert_eq!(early["method"], "ice_servers", "{early}");

        let accept = a.request(json!({"class":"request","method":"register","room_id":"keeper"})).await;
        let first = accept["ice_servers_expire"].as_u64().unwrap_or_else(|| panic!("no expiry hint: {accept}"));
        let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs();
        assert!((now + 59..=now + 61).contains(&first), "expiry {first}, now {now}, ttl 60 s");
        assert_eq!(accept["ice_servers"][0]["ufrag"], format!("{first}:keeper"));

        // Polled until the clock has moved on a second, so that the credential must differ.
        let deadline = tokio::time::Instant::now() + WAIT;
        let fresh = loop {
            let v = a.request(json!({"class":"request","method":"ice_servers","transaction_id":"r"})).await;
            assert_eq!(
                (&v["class"], &v["method"], &v["transaction_id"], &v["room_id"]),
                (&json!("accept"), &json!("ice_servers"), &json!("r"), &json!("keeper")),
                "{v}"
            );
            if v["ice_servers_expire"].as_u64() > Some(first) {
                break v;
            }
            assert!(tokio::time::Instant::now() < deadline, "the expiry never moved on: {v}");
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        };
        let expire = fresh["ice_servers_expire"].as_u64().unwrap();
        assert_eq!(fresh["ice_servers"][0]["ufrag"], format!("{expire}:keeper"));
        assert_ne!(fresh["ice_servers"][0]["pwd"], accept["ice_servers"][0]["pwd"]);
        assert_eq!(fresh["ice_servers"].as_array().unwrap().len(), accept["ice_servers"].as_array().unwrap().len());
        // The room is still held: a caller reaches it.
        let mut b = server.registered("caller").await;
        b.send(call("T", "g", "keeper")).await;
        assert_eq!(a.recv().await["method"], "call");
    }
}
