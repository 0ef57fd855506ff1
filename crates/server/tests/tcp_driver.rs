//! The timers and limits that `timeouts.rs` and `auth_limits.rs` prove in paused time over in-memory pipes (the
//! stream driver), proven again on the production path: plain `ws://` over kernel TCP sockets, which takes the TCP
//! session driver. Real time, so the settings are short and every assertion is a bound, never an exact instant.

mod common;

use std::time::{Duration, Instant};

use common::*;
use futures_util::StreamExt;
use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::Message;

#[tokio::test]
async fn an_unanswered_call_times_out_over_tcp() {
    let server = TestServer::start_with(|c| c.signaling.call_timeout = Duration::from_millis(500)).await;
    let mut callee = server.registered("a").await;
    let mut caller = server.registered("b").await;
    let start = Instant::now();
    caller.send(call("T", "g", "a")).await;
    assert_eq!(callee.recv().await["method"], "call");
    assert_reject(&caller.recv().await, "call_timeout");
    assert!(start.elapsed() >= Duration::from_millis(500), "ended after {:?}", start.elapsed());
    assert_server_bye(&callee.recv().await, "g", "a", "call timeout");
    callee.assert_nothing_pending().await;
}

#[tokio::test]
async fn a_silent_session_is_pinged_then_closed_and_its_peer_gets_bye_over_tcp() {
    let server = TestServer::start_with(|c| {
        c.signaling.ping_after = Duration::from_millis(200);
        c.signaling.idle_timeout = Duration::from_millis(700);
    })
    .await;
    let mut caller = server.registered("caller").await;
    let mut silent = server.registered("silent").await;
    caller.send(call("T", "g", "silent")).await;
    let start = Instant::now();
    // `silent` reads nothing from here on, so it never answers a ping; `caller` reads, and so answers its pings.
    match caller.event_within(WAIT).await {
        Event::Json(v) => assert_server_bye(&v, "g", "silent", "peer unregister"),
        other => panic!("{other:?}"),
    }
    assert!(start.elapsed() >= Duration::from_millis(700), "closed after {:?}", start.elapsed());
    let (mut pings, mut saw_call) = (0, false);
    loop {
        match tokio::time::timeout(WAIT, silent.ws.next()).await.expect("the silent session's close") {
            Some(Ok(Message::Ping(_))) => pings += 1,
            Some(Ok(Message::Text(_))) => saw_call = true,
            Some(Ok(Message::Close(_))) | None | Some(Err(_)) => break,
            Some(Ok(_)) => {}
        }
    }
    assert!(saw_call && pings >= 1, "call {saw_call}, {pings} pings");
    assert_eq!(disconnects(server.addr, "timeout").await, 1.0);
    // The caller, answering pings, is still there.
    caller.assert_nothing_pending().await;
}

#[tokio::test]
async fn a_flooding_session_is_refused_then_closed_1008_over_tcp() {
    let server = TestServer::start_with(|c| {
        c.limits.messages_per_second = 5;
        c.limits.message_burst = 5;
    })
    .await;
    let mut other = server.registered("other").await;
    let mut flooder = server.client().await;
    let probe = json!({"class":"request","method":"probe","transaction_id":"p"}).to_string();
    flooder.flood(&probe, 30).await;
    let (code, seen) = flooder.until_closed(WAIT).await;
    let codes: Vec<&str> = seen.iter().map(|v| v["code"].as_str().unwrap()).collect();
    // Rate plus burst pass (a refill during the run may let one more through), then 4 refusals in a row close it.
    let passed = codes.iter().take_while(|c| **c == "unsupported").count();
    assert!((10..=11).contains(&passed), "{codes:?}");
    assert_eq!(codes[passed..], ["rate_limited"; 4], "{codes:?}");
    assert_eq!(code, Some(1008));
    other.assert_nothing_pending().await;
    assert_eq!(disconnects(server.addr, "rate_limited").await, 1.0);
}

#[tokio::test]
async fn shutdown_stops_waiting_at_the_grace_period_over_tcp() {
    // The client neither reads nor answers the close frame: its session would linger 2 s for the close handshake.
    let server = TestServer::start_with(|c| c.signaling.shutdown_grace = Duration::from_millis(500)).await;
    let _stuck = server.registered("stuck").await;
    let start = Instant::now();
    server.stop.cancel();
    tokio::time::timeout(WAIT, server.task).await.expect("shutdown within the deadline").unwrap().unwrap();
    let waited = start.elapsed();
    assert!(waited >= Duration::from_millis(500) && waited < Duration::from_millis(1500), "waited {waited:?}");
}

/// Writes `head` and reads the whole answer (the server closes after it).
async fn finish(mut s: TcpStream, rest: &str) -> String {
    s.write_all(rest.as_bytes()).await.unwrap();
    let mut out = Vec::new();
    tokio::time::timeout(WAIT, s.read_to_end(&mut out)).await.expect("an answer").unwrap();
    String::from_utf8_lossy(&out).into_owned()
}

#[tokio::test]
async fn during_shutdown_readyz_is_503_and_upgrades_are_refused() {
    let server = TestServer::start_with(|c| c.signaling.shutdown_grace = Duration::from_secs(5)).await;
    // Three connections whose request heads are half sent when shutdown begins.
    let mut metrics = TcpStream::connect(server.addr).await.unwrap();
    metrics.write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\n").await.unwrap();
    let mut ready = TcpStream::connect(server.addr).await.unwrap();
    ready.write_all(b"GET /readyz HTTP/1.1\r\nHost: x\r\n").await.unwrap();
    let mut upgrade = TcpStream::connect(server.addr).await.unwrap();
    upgrade
        .write_all(b"GET /signaling HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n")
        .await
        .unwrap();
    // Accepted in order: once this session is open, both connections above were accepted too.
    let mut session = server.registered("s").await;
    server.stop.cancel();
    assert_eq!(session.until_closed(WAIT).await.0, Some(1001), "shutdown has begun");

    let answer = finish(ready, "Connection: close\r\n\r\n").await;
    assert!(answer.starts_with("HTTP/1.1 503"), "{answer}");
    assert!(answer.ends_with("shutting down\n"), "{answer}");
    let answer =
        finish(upgrade, "Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n").await;
    assert!(answer.starts_with("HTTP/1.1 503"), "{answer}");
    // The session closed by shutdown was counted as such.
    let answer = finish(metrics, "Connection: close\r\n\r\n").await;
    let text = answer.split_once("\r\n\r\n").unwrap().1;
    assert_eq!(sample(text, "switchboard_disconnects_total", Some(("cause", "shutdown"))), 1.0, "{text}");
    // No new connection is accepted at all.
    tokio::time::timeout(WAIT, server.task).await.expect("shutdown within the deadline").unwrap().unwrap();
    assert!(TcpStream::connect(server.addr).await.is_err(), "the listener is closed");
}

#[tokio::test]
async fn the_total_connection_limit_answers_503_before_the_upgrade() {
    let server = TestServer::start_with(|c| c.limits.max_connections = 2).await;
    let _a = server.registered("a").await;
    let mut b = server.registered("b").await;
    let err = tokio::time::timeout(WAIT, tokio_tungstenite::connect_async(server.url())).await.unwrap().unwrap_err();
    assert!(err.to_string().contains("503"), "{err}");
    // A slot frees when a session ends.
    b.ws.close(None).await.unwrap();
    b.until_closed(WAIT).await;
    let deadline = Instant::now() + WAIT;
    loop {
        match tokio_tungstenite::connect_async(server.url()).await {
            Ok(_) => break,
            Err(e) if Instant::now() < deadline && e.to_string().contains("503") => {
                tokio::time::sleep(Duration::from_millis(20)).await
            }
            Err(e) => panic!("no slot after a session ended: {e}"),
        }
    }
}

#[tokio::test]
async fn calls_per_caller_are_limited_with_a_reason_naming_the_limit() {
    let server = TestServer::start_with(|c| c.limits.max_calls_per_caller = 2).await;
    let mut rooms = Vec::new();
    for r in ["r1", "r2", "r3"] {
        rooms.push(server.registered(r).await);
    }
    let mut caller = server.registered("caller").await;
    caller.send(call("T1", "g1", "r1")).await;
    caller.send(call("T2", "g2", "r2")).await;
    assert_eq!(rooms[0].recv().await["guest_id"], "g1");
    assert_eq!(rooms[1].recv().await["guest_id"], "g2");
    let r = caller.request(call("T3", "g3", "r3")).await;
    assert_reject(&r, "rate_limited");
    assert!(r["reason"].as_str().unwrap().contains("calls"), "{r}");
    rooms[2].assert_nothing_pending().await;
    // One call ends (rejected by its callee): the caller may call again.
    rooms[0].send(answer("reject", "T1", "g1", "r1")).await;
    assert_eq!(caller.recv().await["class"], "reject");
    caller.send(call("T4", "g4", "r3")).await;
    assert_eq!(rooms[2].recv().await["guest_id"], "g4");
}
