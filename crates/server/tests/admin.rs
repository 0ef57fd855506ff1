//! The admin API and /metrics over real HTTP requests against a server on port 0.

mod common;

use common::*;
use serde_json::{json, Value};

const SECRET: &str = "admin-s3cret";

async fn admin_server() -> TestServer {
    TestServer::start_with(|c| c.admin.secret = SECRET.into()).await
}

async fn get_json(server: &TestServer, path: &str) -> (u16, Value) {
    let (status, body) = http(server.addr, "GET", path, &[("Authorization", &format!("Bearer {SECRET}"))], "").await;
    (status, serde_json::from_str(&body).unwrap_or(Value::Null))
}

#[tokio::test]
async fn the_admin_secret_is_required_everywhere() {
    let server = admin_server().await;
    for path in ["/api/rooms", "/api/rooms/x", "/api/log-level"] {
        assert_eq!(http(server.addr, "GET", path, &[], "").await.0, 401, "{path} without secret");
        let wrong = [("Authorization", "Bearer nope")];
        assert_eq!(http(server.addr, "GET", path, &wrong, "").await.0, 401, "{path} wrong secret");
    }
    assert_eq!(http(server.addr, "DELETE", "/api/rooms/x", &[], "").await.0, 401);
    assert_eq!(http(server.addr, "GET", &format!("/api/rooms?secret={SECRET}"), &[], "").await.0, 200);
    assert_eq!(get_json(&server, "/api/rooms").await.0, 200);
    let (status, body) = http(server.addr, "GET", "/index/api/listWebrtcRooms?secret=nope", &[], "").await;
    assert_eq!((status, serde_json::from_str::<Value>(&body).unwrap()["code"].clone()), (200, json!(-100)));

    // Without a configured secret the API is off, not open.
    let open = TestServer::start().await;
    assert_eq!(http(open.addr, "GET", "/api/rooms", &[], "").await.0, 403);
    assert_eq!(http(open.addr, "GET", "/api/rooms?secret=", &[], "").await.0, 403);
}

#[tokio::test]
async fn rooms_in_zlmediakit_shape_and_kick() {
    let server = admin_server().await;
    let mut callee = server.registered("a").await;
    let mut caller = server.registered("b").await;
    caller.send(call("T", "g", "a")).await;
    callee.recv().await;

    let expected = json!([
        {"room_id":"a","guests":[{"guest_id":"g"}],"tours":[]},
        {"room_id":"b","guests":[],"tours":[{"guest_id":"g","room_id":"a"}]}
    ]);
    assert_eq!(get_json(&server, "/api/rooms").await, (200, expected.clone()));
    assert_eq!(get_json(&server, "/api/rooms/a").await, (200, expected[0].clone()));
    assert_eq!(get_json(&server, "/api/rooms/zzz").await.0, 404);
    let (status, body) =
        http(server.addr, "GET", &format!("/index/api/listWebrtcRooms?secret={SECRET}"), &[], "").await;
    assert_eq!((status, serde_json::from_str::<Value>(&body).unwrap()), (200, json!({"code":0,"data":expected})));

    // Kick the callee: its caller gets the bye, the callee is closed with 4001, the room is free.
    let auth = [("Authorization", &*format!("Bearer {SECRET}"))];
    assert_eq!(http(server.addr, "DELETE", "/api/rooms/a", &auth, "").await.0, 200);
    assert_server_bye(&caller.recv().await, "g", "a", "peer unregister");
    let (code, seen) = callee.until_closed(WAIT).await;
    assert_eq!(code, Some(4001));
    assert!(seen.is_empty(), "{seen:?}");
    assert_eq!(disconnects(server.addr, "kicked").await, 1.0);
    let _again = server.registered("a").await;
    assert_eq!(http(server.addr, "DELETE", "/api/rooms/nobody", &auth, "").await.0, 404);
}

#[tokio::test]
async fn metrics_parse_and_move_after_a_scripted_call() {
    let server = TestServer::start().await;
    let (status, before) = http(server.addr, "GET", "/metrics", &[], "").await;
    assert_eq!(status, 200);
    assert_eq!(sample(&before, "switchboard_rooms", None), 0.0);
    assert_eq!(sample(&before, "switchboard_build_info", Some(("version", env!("CARGO_PKG_VERSION")))), 1.0);
    assert_eq!(sample(&before, "switchboard_turn_allocations_active", None), 0.0);

    let (mut callee, mut caller) = server.in_call().await;
    for _ in 0..3 {
        caller.send(candidate("g", "a", "x")).await;
        callee.recv().await;
    }
    assert_reject(&caller.request(call("T2", "g2", "nobody")).await, "room_not_found");

    let (_, text) = http(server.addr, "GET", "/metrics", &[], "").await;
    assert_eq!(sample(&text, "switchboard_rooms", None), 2.0);
    assert_eq!(sample(&text, "switchboard_connections_open", None), 2.0);
    assert_eq!(sample(&text, "switchboard_connections_total", None), 2.0);
    assert_eq!(sample(&text, "switchboard_calls_active", None), 1.0);
    assert_eq!(sample(&text, "switchboard_calls_pending", None), 0.0);
    assert_eq!(sample(&text, "switchboard_relayed_messages_total", Some(("method", "call"))), 2.0);
    assert_eq!(sample(&text, "switchboard_relayed_messages_total", Some(("method", "candidate"))), 3.0);
    assert_eq!(sample(&text, "switchboard_rejects_total", Some(("code", "room_not_found"))), 1.0);
    assert_eq!(sample(&text, "switchboard_call_setup_seconds_count", None), 1.0);
    // Each session is at least one task of its own.
    let (idle_tasks, tasks) =
        (sample(&before, "switchboard_runtime_tasks", None), sample(&text, "switchboard_runtime_tasks", None));
    assert!(
        idle_tasks >= 1.0 && tasks >= idle_tasks + 2.0,
        "runtime tasks: {idle_tasks} idle, {tasks} with two sessions"
    );

    drop(caller);
    assert_server_bye(&callee.recv().await, "g", "a", "peer unregister");
    let (_, text) = http(server.addr, "GET", "/metrics", &[], "").await;
    assert_eq!(sample(&text, "switchboard_disconnects_total", Some(("cause", "close"))), 1.0);
    assert_eq!(sample(&text, "switchboard_calls_active", None), 0.0);
    assert_eq!(sample(&text, "switchboard_rooms", None), 1.0);
    assert_eq!(sample(&text, "switchboard_connections_open", None), 1.0);
    assert_eq!(sample(&text, "switchboard_connections_total", None), 2.0);
}

/// Byte counters count every websocket frame after the handshake exactly: payload plus header, masked from clients.
#[tokio::test]
async fn byte_counters_are_exact() {
    let server = TestServer::start().await;
    let (mut sent, mut received) = (0, 0);
    let mut callee = server.client().await;
    let mut caller = server.client().await;
    let mut exchange = |from_client: usize, to_client: usize| {
        sent += from_client + frame_header(from_client, true);
        received += to_client + frame_header(to_client, false);
    };
    for (c, room) in [(&mut callee, "a"), (&mut caller, "b")] {
        let reg = json!({"class":"request","method":"register","transaction_id":"t","room_id":room}).to_string();
        c.send_text(reg.clone()).await;
        let accept = c.recv_raw().await;
        exchange(reg.len(), accept.len());
    }
    // A relay of 300 bytes (a 16-bit length header) is forwarded verbatim; its answer is a server-built reject.
    let mut offer = call("T", "g", "a");
    offer["sdp"] = json!("x".repeat(300));
    let offer = offer.to_string();
    caller.send_text(offer.clone()).await;
    assert_eq!(callee.recv_raw().await, offer);
    exchange(offer.len(), offer.len());
    let rej = answer("reject", "T", "g", "a").to_string();
    callee.send_text(rej.clone()).await;
    let relayed = caller.recv_raw().await;
    exchange(rej.len(), relayed.len());

    let text = scrape(server.addr).await;
    assert_eq!(sample(&text, "switchboard_received_bytes_total", None), sent as f64, "{text}");
    assert_eq!(sample(&text, "switchboard_sent_bytes_total", None), received as f64, "{text}");
}
