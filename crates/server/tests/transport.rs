//! Websocket-level behaviour: size limit, binary and invalid frames, slow consumers, HTTP endpoints, shutdown.

mod common;

use std::time::Duration;

use common::*;
use futures_util::SinkExt;
use tokio_tungstenite::tungstenite::protocol::frame::coding::{Data, OpCode};
use tokio_tungstenite::tungstenite::protocol::frame::Frame;
use tokio_tungstenite::tungstenite::Message;

/// A valid register request padded with an unknown field to exactly `len` bytes.
fn register_of_len(len: usize) -> String {
    let head = r#"{"class":"request","method":"register","transaction_id":"big","room_id":"big","pad":""#;
    let tail = r#""}"#;
    format!("{head}{}{tail}", "x".repeat(len - head.len() - tail.len()))
}

#[tokio::test]
async fn message_of_exactly_the_limit_is_accepted_and_one_byte_more_closes_1009() {
    let server = TestServer::start().await;
    let mut watcher = server.registered("watcher").await;
    let limit = 256 * 1024;

    let mut ok = server.client().await;
    ok.send_text(register_of_len(limit)).await;
    assert_eq!(ok.recv().await["class"], "accept");

    let mut big = server.client().await;
    big.send_text(register_of_len(limit + 1)).await;
    let (code, seen) = big.until_closed(WAIT).await;
    assert_eq!(code, Some(1009));
    assert!(seen.is_empty());

    // Fragmented: the limit applies to the reassembled message.
    let mut frag = server.client().await;
    let text = register_of_len(limit + 1);
    let (a, b) = text.split_at(limit / 2);
    frag.ws.send(Message::Frame(Frame::message(a.as_bytes().to_vec(), OpCode::Data(Data::Text), false))).await.unwrap();
    frag.ws
        .send(Message::Frame(Frame::message(b.as_bytes().to_vec(), OpCode::Data(Data::Continue), true)))
        .await
        .unwrap();
    assert_eq!(frag.until_closed(WAIT).await.0, Some(1009));

    watcher.assert_nothing_pending().await;
}

#[tokio::test]
async fn binary_frame_closes_1003_and_the_counterpart_gets_bye() {
    let server = TestServer::start().await;
    let mut callee = server.registered("a").await;
    let mut caller = server.registered("b").await;
    caller.send(call("T", "g", "a")).await;
    callee.recv().await;
    caller.ws.send(Message::Binary(vec![1, 2, 3].into())).await.unwrap();
    assert_eq!(caller.until_closed(WAIT).await.0, Some(1003));
    assert_server_bye(&callee.recv().await, "g", "a", "peer unregister");
    assert_eq!(disconnects(server.addr, "protocol").await, 1.0);
    assert_eq!(disconnects(server.addr, "close").await, 0.0);
}

#[tokio::test]
async fn invalid_utf8_closes_1007_and_nobody_else_is_affected() {
    let server = TestServer::start().await;
    let mut other = server.registered("other").await;
    let mut c = server.registered("me").await;
    let frame = Frame::message(vec![b'{', 0xff, 0xfe, b'}'], OpCode::Data(Data::Text), true);
    c.ws.send(Message::Frame(frame)).await.unwrap();
    assert_eq!(c.until_closed(WAIT).await.0, Some(1007));
    other.assert_nothing_pending().await;
    let _me_again = server.registered("me").await;
}

#[tokio::test]
async fn a_slow_consumer_is_disconnected_and_its_peer_gets_bye() {
    let server = TestServer::start_with(|c| c.signaling.outbound_queue = 8).await;
    let mut slow = server.registered("slow").await;
    let mut caller = server.registered("fast").await;
    caller.send(call("T", "g", "slow")).await;
    slow.recv().await;
    // From now on `slow` reads nothing. The caller floods it with 100 KB candidates until the server gives up on it:
    // the kernel buffers fill, then its bounded queue, and the server disconnects it instead of buffering more.
    let big = "x".repeat(100 * 1024);
    let (mut tx, mut rx) = futures_util::StreamExt::split(caller.ws);
    let flood = async {
        for _ in 0..1000 {
            let msg = candidate("g", "slow", &big).to_string();
            if tx.send(Message::Text(msg.into())).await.is_err() {
                break;
            }
        }
    };
    let wait_bye = async {
        loop {
            match futures_util::StreamExt::next(&mut rx).await {
                Some(Ok(Message::Text(t))) => {
                    let v: serde_json::Value = serde_json::from_str(t.as_str()).unwrap();
                    if v["method"] == "bye" {
                        return v;
                    }
                    // Once the room is gone, further candidates are rejected: keep reading.
                    assert_reject(&v, "room_not_found");
                }
                Some(Ok(_)) => continue,
                other => panic!("caller connection ended: {other:?}"),
            }
        }
    };
    // A deadline: if slow consumers were never disconnected, the flood would end and this would wait forever.
    let bye = tokio::time::timeout(Duration::from_secs(30), async {
        tokio::select! {
            bye = wait_bye => bye,
            () = async { flood.await; std::future::pending::<()>().await } => unreachable!(),
        }
    })
    .await
    .expect("the slow consumer was not disconnected within 30 s");
    assert_server_bye(&bye, "g", "slow", "peer unregister");
    assert_eq!(disconnects(server.addr, "slow_consumer").await, 1.0);
    // The room was freed.
    drop(slow);
    let _again = server.registered("slow").await;
}

#[tokio::test]
async fn livez_and_readyz_on_the_signaling_listener() {
    let server = TestServer::start().await;
    assert_eq!(http(server.addr, "GET", "/livez", &[], "").await, (200, "ok\n".into()));
    assert_eq!(http(server.addr, "GET", "/readyz", &[], "").await, (200, "ready\n".into()));
    assert_eq!(http(server.addr, "GET", "/nope", &[], "").await.0, 404);
}

#[tokio::test]
async fn shutdown_closes_every_session_1001_and_sends_no_bye() {
    let server = TestServer::start().await;
    let mut callee = server.registered("a").await;
    let mut caller = server.registered("b").await;
    let mut pending_caller = server.registered("c").await;
    let mut idle = server.client().await;
    caller.send(call("T", "g", "a")).await;
    callee.recv().await;
    callee.send(answer("accept", "T", "g", "a")).await;
    caller.recv().await;
    pending_caller.send(call("T2", "g2", "a")).await;
    callee.recv().await;

    server.stop.cancel();
    for c in [&mut callee, &mut caller, &mut pending_caller, &mut idle] {
        let (code, seen) = c.until_closed(WAIT).await;
        assert_eq!(code, Some(1001));
        assert!(seen.iter().all(|m| m["method"] != "bye"), "no bye during shutdown: {seen:?}");
    }
    let result = tokio::time::timeout(WAIT, server.task).await.expect("server stops within the grace period");
    result.unwrap().unwrap();
    assert!(tokio::net::TcpStream::connect(server.addr).await.is_err(), "listener closed");
}

#[tokio::test]
async fn client_pings_are_answered_with_pongs() {
    // ZLMediaKit's room keeper pings after 10 s of silence and gives up at 30 s without any frame, pongs included.
    use futures_util::StreamExt;
    let server = TestServer::start().await;
    let mut c = server.registered("keeper").await;
    c.ws.send(Message::Ping(b"zlm".to_vec().into())).await.unwrap();
    let pong = tokio::time::timeout(WAIT, async {
        loop {
            match c.ws.next().await {
                Some(Ok(Message::Pong(p))) => return p,
                Some(Ok(_)) => continue,
                other => panic!("connection ended: {other:?}"),
            }
        }
    })
    .await
    .expect("a pong");
    assert_eq!(&pong[..], b"zlm");
}
