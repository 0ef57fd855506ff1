//! Auth (SPEC.md §7) and limits over real websockets.

mod common;

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use common::*;
use serde_json::json;
use switchboard_server::auth::{mint, Claims};

const SECRET: &str = "token-secret";

fn now() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_secs()
}

fn token(secret: &str, exp: u64, rooms: &[&str], call: &[&str]) -> String {
    let claims = Claims {
        exp,
        sub: "tester".into(),
        rooms: rooms.iter().map(|s| s.to_string()).collect(),
        call: call.iter().map(|s| s.to_string()).collect(),
    };
    mint(secret, &claims).unwrap()
}

async fn auth_server() -> TestServer {
    TestServer::start_with(|c| c.auth.secret = SECRET.into()).await
}

async fn with_token(server: &TestServer, token: &str) -> Client {
    Client::connect(&format!("ws://{}/signaling?token={token}", server.addr)).await
}

fn register(room: &str) -> serde_json::Value {
    json!({"class":"request","method":"register","room_id":room})
}

#[tokio::test]
async fn without_a_valid_token_register_and_call_are_unauthorized() {
    let server = auth_server().await;
    let cases = [
        (None, "unauthorized: no token"),
        (Some(token(SECRET, now() - 5, &["*"], &["*"])), "unauthorized: token expired"),
        (Some(token("wrong-secret", now() + 60, &["*"], &["*"])), "unauthorized: bad token signature"),
        (Some("not.a.jwt".to_owned()), "unauthorized: invalid token"),
    ];
    for (tok, reason) in cases {
        let mut c = match &tok {
            Some(t) => with_token(&server, t).await,
            None => server.client().await,
        };
        let r = c.request(register("cam_1")).await;
        assert_reject(&r, "unauthorized");
        assert_eq!(r["reason"], reason);
        assert_reject(&c.request(call("T", "g", "cam_1")).await, "unauthorized");
        // The session stays usable for what needs no grant.
        assert_reject(&c.request(candidate("g", "x", "c")).await, "not_registered");
    }
}

#[tokio::test]
async fn grants_follow_the_token_patterns() {
    let server = auth_server().await;
    let mut cam = with_token(&server, &token(SECRET, now() + 60, &["cam_*"], &[])).await;
    let r = cam.request(register("other")).await;
    assert_reject(&r, "unauthorized");
    assert!(r["reason"].as_str().unwrap().contains("does not grant"), "{r}");
    assert_eq!(cam.request(register("cam_7")).await["class"], "accept");

    let mut viewer = with_token(&server, &token(SECRET, now() + 60, &["viewer_*"], &["cam_*"])).await;
    assert_eq!(viewer.request(register("viewer_1")).await["class"], "accept");
    viewer.send(call("T", "g", "cam_7")).await;
    assert_eq!(cam.recv().await["transaction_id"], "T");
    assert_reject(&viewer.request(call("T2", "g2", "viewer_1")).await, "unauthorized");
    // An assigned id needs a grant of every room.
    let mut any = with_token(&server, &token(SECRET, now() + 60, &["*"], &[])).await;
    assert_eq!(any.request(json!({"class":"request","method":"register"})).await["class"], "accept");
}

#[tokio::test]
async fn the_token_may_ride_in_an_authorization_header() {
    use tokio_tungstenite::tungstenite::client::IntoClientRequest;
    let server = auth_server().await;
    let mut req = format!("ws://{}/signaling", server.addr).into_client_request().unwrap();
    let bearer = format!("Bearer {}", token(SECRET, now() + 60, &["cam_1"], &[]));
    req.headers_mut().insert("Authorization", bearer.parse().unwrap());
    use futures_util::{SinkExt, StreamExt};
    let (mut ws, _) = tokio::time::timeout(WAIT, tokio_tungstenite::connect_async(req)).await.unwrap().unwrap();
    let reg = json!({"class":"request","method":"register","transaction_id":"t","room_id":"cam_1"});
    ws.send(reg.to_string().into()).await.unwrap();
    let reply = tokio::time::timeout(WAIT, ws.next()).await.expect("an answer within the deadline").unwrap().unwrap();
    let v: serde_json::Value = serde_json::from_str(reply.to_text().unwrap()).unwrap();
    assert_eq!(v["class"], "accept");
}

#[tokio::test]
async fn anonymous_networks_need_no_token() {
    let server = TestServer::start_with(|c| {
        c.auth.secret = SECRET.into();
        c.auth.anonymous_networks = vec!["127.0.0.0/8".parse().unwrap()];
    })
    .await;
    let mut legacy = server.client().await;
    assert_eq!(legacy.request(register("zlm_keeper")).await["class"], "accept");
}

#[tokio::test]
async fn a_token_holder_takes_over_a_stale_room() {
    let server = auth_server().await;
    let grant = token(SECRET, now() + 60, &["cam_1", "viewer"], &["cam_1"]);
    let mut old = with_token(&server, &grant).await;
    assert_eq!(old.request(register("cam_1")).await["class"], "accept");
    let mut viewer = with_token(&server, &grant).await;
    assert_eq!(viewer.request(register("viewer")).await["class"], "accept");
    viewer.send(call("T", "g", "cam_1")).await;
    old.recv().await;

    // A session whose token does not grant the room still gets a plain conflict.
    let mut stranger = with_token(&server, &token(SECRET, now() + 60, &["x"], &[])).await;
    assert_reject(&stranger.request(register("cam_1")).await, "unauthorized");

    let mut new = with_token(&server, &grant).await;
    assert_eq!(new.request(register("cam_1")).await["class"], "accept");
    assert_server_bye(&viewer.recv().await, "g", "cam_1", "peer unregister");
    let (code, _) = old.until_closed(WAIT).await;
    assert_eq!(code, Some(4409));
    assert_eq!(disconnects(server.addr, "taken_over").await, 1.0);
    // The new holder really holds it.
    viewer.send(call("T2", "g2", "cam_1")).await;
    assert_eq!(new.recv().await["transaction_id"], "T2");
}

#[tokio::test]
async fn without_auth_a_held_room_is_a_conflict_not_a_takeover() {
    let server = TestServer::start().await;
    let _a = server.registered("r").await;
    let mut b = server.client().await;
    assert_reject(&b.request(register("r")).await, "room_conflict");
}

#[tokio::test(start_paused = true)]
async fn message_budget_rejects_then_closes_a_flooding_session() {
    let server = TestServer::in_memory(|c| {
        c.limits.messages_per_second = 5;
        c.limits.message_burst = 5;
    })
    .await;
    let mut other = server.registered("other").await;
    let mut flooder = server.client().await;
    let probe = json!({"class":"request","method":"probe","transaction_id":"p"}).to_string();
    flooder.flood(&probe, 30).await;
    let (code, seen) = flooder.until_closed(Duration::from_secs(60)).await;
    let codes: Vec<&str> = seen.iter().map(|v| v["code"].as_str().unwrap()).collect();
    assert_eq!(codes[..10], ["unsupported"; 10], "rate + burst messages pass: {codes:?}");
    assert_eq!(codes[10..], ["rate_limited"; 4], "{codes:?}");
    assert_eq!(code, Some(1008));
    other.assert_nothing_pending().await;
}

#[tokio::test]
async fn connection_and_call_limits() {
    let server = TestServer::start_with(|c| {
        c.limits.max_connections_per_ip = 3;
        c.limits.max_calls_per_room = 1;
        c.limits.max_id_length = 8;
    })
    .await;
    let mut callee = server.registered("room").await;
    let mut a = server.registered("a").await;
    let mut b = server.registered("b").await;
    // A fourth connection from the same address is refused with 429 before the upgrade.
    let err = tokio::time::timeout(WAIT, tokio_tungstenite::connect_async(server.url())).await.unwrap().unwrap_err();
    assert!(err.to_string().contains("429"), "{err}");

    a.send(call("T1", "ga", "room")).await;
    callee.recv().await;
    let r = b.request(call("T2", "gb", "room")).await;
    assert_reject(&r, "rate_limited");
    assert!(r["reason"].as_str().unwrap().contains("too many calls"), "{r}");

    let r = b.request(json!({"class":"request","method":"unregister","room_id":"123456789"})).await;
    assert_reject(&r, "bad_field");
}
