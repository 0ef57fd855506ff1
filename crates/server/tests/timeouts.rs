//! Keepalive and call timeout, in paused (virtual) time: the clock only moves when every task is idle.
//!
//! These run the real server over in-memory pipes (`switchboard_server::memnet`) rather than TCP: with kernel
//! sockets, every wait for IO would let the paused clock jump to the next timer, and timings could not be asserted.

mod common;

use std::time::Duration;

use common::*;
use serde_json::json;
use tokio::time::Instant;

#[tokio::test(start_paused = true)]
async fn a_silent_session_is_pinged_then_closed_after_30s_and_its_peer_gets_bye() {
    let server = TestServer::in_memory(|c| c.signaling.call_timeout = Duration::from_secs(60)).await;
    let mut caller = server.registered("caller").await;
    let mut silent = server.registered("silent").await;
    caller.send(call("T", "g", "silent")).await;
    let start = Instant::now();
    // `silent` reads nothing from here on, so it never answers a ping. `caller` keeps reading (and so answers pings).
    let bye = caller.event_within(Duration::from_secs(120)).await;
    let elapsed = start.elapsed();
    match bye {
        Event::Json(v) => assert_server_bye(&v, "g", "silent", "peer unregister"),
        other => panic!("{other:?}"),
    }
    assert!(elapsed >= Duration::from_secs(30) && elapsed < Duration::from_secs(31), "closed after {elapsed:?}");

    // What the silent client finds in its socket: the call, pings, then the close.
    let mut pings = 0;
    let mut saw_call = false;
    loop {
        match futures_util::StreamExt::next(&mut silent.ws).await {
            Some(Ok(tokio_tungstenite::tungstenite::Message::Ping(_))) => pings += 1,
            Some(Ok(tokio_tungstenite::tungstenite::Message::Text(_))) => saw_call = true,
            Some(Ok(tokio_tungstenite::tungstenite::Message::Close(_))) | None | Some(Err(_)) => break,
            Some(Ok(_)) => {}
        }
    }
    assert!(saw_call);
    assert!(pings >= 2, "pinged at 10 s and 20 s, got {pings}");
}

#[tokio::test(start_paused = true)]
async fn a_session_that_answers_pings_stays_open() {
    let server = TestServer::in_memory(|c| c.signaling.call_timeout = Duration::from_secs(60)).await;
    let mut c = server.registered("alive").await;
    // Reading makes tungstenite answer every ping with a pong. Wait for something that never comes for 100 s.
    let waited = tokio::time::timeout(Duration::from_secs(100), c.event_within(Duration::from_secs(1000))).await;
    assert!(waited.is_err(), "nothing arrives, in particular no close: {waited:?}");
    let r = c.request(json!({"class":"request","method":"unregister","room_id":"alive"})).await;
    assert_eq!(r["class"], "accept");
}

#[tokio::test(start_paused = true)]
async fn an_unanswered_call_times_out() {
    let server = TestServer::in_memory(|c| c.signaling.call_timeout = Duration::from_secs(5)).await;
    let mut callee = server.registered("a").await;
    let mut caller = server.registered("b").await;
    let mut c = call("T7", "g", "a");
    c["type"] = json!("push");
    caller.send(c).await;
    callee.recv().await;
    let start = Instant::now();
    let r = caller.event_within(Duration::from_secs(60)).await;
    let Event::Json(r) = r else { panic!("{r:?}") };
    assert!(start.elapsed() >= Duration::from_secs(5) && start.elapsed() < Duration::from_secs(6));
    assert_reject(&r, "call_timeout");
    assert_eq!(
        r,
        json!({"class":"reject","method":"call","transaction_id":"T7","room_id":"a","guest_id":"g","type":"push",
               "vhost":"__defaultVhost__","app":"live","stream":"test","reason":"call timeout","code":"call_timeout"})
    );
    assert_server_bye(&callee.recv().await, "g", "a", "call timeout");
    // The call is over; a late answer is refused and the guest id can be used again.
    assert_reject(&callee.request(answer("accept", "T7", "g", "a")).await, "unknown_guest");
    caller.send(call("T8", "g", "a")).await;
    assert_eq!(callee.recv().await["transaction_id"], "T8");
}

#[tokio::test(start_paused = true)]
async fn an_answered_call_never_times_out() {
    let server = TestServer::in_memory(|c| c.signaling.call_timeout = Duration::from_secs(5)).await;
    let (mut callee, mut caller) = server.in_call().await;
    tokio::time::advance(Duration::from_secs(6)).await;
    // Both still in the call: a candidate goes through and nothing else was queued before it.
    caller.send(candidate("g", "a", "after")).await;
    assert_eq!(callee.recv().await["candidate"], "after");
    caller.assert_nothing_pending().await;
}

#[tokio::test(start_paused = true)]
async fn shutdown_stops_waiting_at_the_grace_period() {
    // The client neither reads the close frame nor answers it, so its session would linger for the close handshake
    // (2 s); a 1 s grace period must end the wait first.
    let server = TestServer::in_memory(|c| c.signaling.shutdown_grace = Duration::from_secs(1)).await;
    let _stuck = server.registered("stuck").await;
    let start = Instant::now();
    server.stop.cancel();
    server.task.await.unwrap().unwrap();
    let waited = start.elapsed();
    assert!(waited >= Duration::from_secs(1) && waited < Duration::from_secs(2), "waited {waited:?}");
}
