//! The server's own websocket implementation, driven byte for byte by a raw TCP client: the handshake taken before
//! HTTP, frames pipelined behind it, frames split across many reads, fragmentation, control frames, protocol errors
//! and refused upgrades. (The other test files drive it with tokio-tungstenite, the browser suite with Chromium.)

mod common;

use std::time::Duration;

use common::raw::*;
use common::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

#[tokio::test]
async fn a_frame_pipelined_behind_the_head_and_frames_sent_byte_by_byte() {
    let server = TestServer::start().await;
    // Half of the first frame travels with the head, the rest later.
    let first = text(&register("early"));
    let (with_head, later) = first.split_at(first.len() / 2);
    let mut s = upgraded(&server, with_head).await;
    s.write_all(later).await.unwrap();
    let accept = json_frame(&mut s).await;
    assert_eq!((accept["class"].as_str(), accept["room_id"].as_str()), (Some("accept"), Some("early")));

    // One byte per segment: every frame arrives over many reads, header included.
    for b in text(&register("again")) {
        s.write_all(&[b]).await.unwrap();
    }
    let reject = json_frame(&mut s).await;
    assert_eq!(reject["code"], "already_registered", "{reject}");

    // Two frames and half of a third in one write, the rest later.
    let mut burst = [text(&register("x")), text(&register("y")), text(&register("z"))].concat();
    let tail = burst.split_off(burst.len() - 7);
    s.write_all(&burst).await.unwrap();
    for _ in 0..2 {
        assert_eq!(json_frame(&mut s).await["code"], "already_registered");
    }
    s.write_all(&tail).await.unwrap();
    assert_eq!(json_frame(&mut s).await["transaction_id"], "t-z");
}

#[tokio::test]
async fn fragments_are_reassembled_around_a_ping_and_relayed_whole() {
    let server = TestServer::start().await;
    let mut callee = server.registered("room").await;
    let mut s = upgraded(&server, &text(&register("caller"))).await;
    json_frame(&mut s).await;

    let call = call("T", "g", "room").to_string();
    let (a, rest) = call.split_at(10);
    let (b, c) = rest.split_at(rest.len() / 2);
    let frames = [
        masked(false, 0x1, a.as_bytes()),
        masked(true, 0x9, b"are you there"),
        masked(false, 0x0, b.as_bytes()),
        masked(true, 0x0, c.as_bytes()),
    ];
    s.write_all(&frames.concat()).await.unwrap();
    assert_eq!(frame(&mut s).await, (0xA, b"are you there".to_vec()), "the pong echoes the ping");
    assert_eq!(callee.recv_raw().await, call, "relayed exactly as sent");
}

#[tokio::test]
async fn unmasked_frames_and_reserved_opcodes_close_1002_and_free_the_room() {
    let server = TestServer::start().await;
    for bad in [vec![0x81, 0x02, b'{', b'}'], masked(true, 0x3, b"x")] {
        let mut s = upgraded(&server, &text(&register("r"))).await;
        json_frame(&mut s).await;
        s.write_all(&bad).await.unwrap();
        assert_eq!(read_close(&mut s).await, 1002);
        // Once the client answers the close, the server closes the connection.
        s.write_all(&masked(true, 0x8, &1002u16.to_be_bytes())).await.unwrap();
        assert_eq!(tokio::time::timeout(WAIT, s.read(&mut [0; 16])).await.unwrap().unwrap_or(0), 0);
    }
    let _again = server.registered("r").await;
}

#[tokio::test]
async fn a_client_close_is_echoed_and_the_connection_closed() {
    let server = TestServer::start().await;
    let mut s = upgraded(&server, &text(&register("c"))).await;
    json_frame(&mut s).await;
    s.write_all(&masked(true, 0x8, &[0x0f, 0xa0, b'b', b'y', b'e'])).await.unwrap(); // 4000 "bye"
    assert_eq!(read_close(&mut s).await, 4000);
    assert_eq!(tokio::time::timeout(WAIT, s.read(&mut [0; 16])).await.unwrap().unwrap_or(0), 0);
    let _again = server.registered("c").await;
}

#[tokio::test]
async fn malformed_upgrades_get_http_errors() {
    let server = TestServer::start().await;
    let huge = format!("GET / HTTP/1.1\r\nUpgrade: websocket\r\nX: {}\r\n\r\n", "a".repeat(9000));
    let cases = [
        (UPGRADE.replace("Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n", ""), "400"),
        (UPGRADE.replace("Version: 13", "Version: 8"), "426"),
        (UPGRADE.replace("GET", "POST"), "400"),
        // Sec-WebSocket-Key must be base64 of 16 bytes (RFC 6455 §4.2.1).
        (UPGRADE.replace("dGhlIHNhbXBsZSBub25jZQ==", "abc"), "400"),
        (UPGRADE.replace("dGhlIHNhbXBsZSBub25jZQ==", &"A".repeat(4000)), "400"),
        (UPGRADE.replace("dGhlIHNhbXBsZSBub25jZQ==", "dGhlIHNhbXBsZSBub25jZQ"), "400"),
        (UPGRADE.replace("dGhlIHNhbXBsZSBub25jZQ==", "dGhlIHNhbXBsZSBub25jZQ=="), "101"),
        (huge, "431"),
    ];
    for (request, status) in cases {
        let mut s = TcpStream::connect(server.addr).await.unwrap();
        s.write_all(request.as_bytes()).await.unwrap();
        if status == "101" {
            // The control: the same request with a valid key upgrades (the connection then stays open).
            let head = response_head(&mut s).await;
            assert!(head.starts_with("HTTP/1.1 101 "), "{head}");
            continue;
        }
        let mut response = String::new();
        tokio::time::timeout(WAIT, s.read_to_string(&mut response)).await.unwrap().unwrap();
        assert!(response.starts_with(&format!("HTTP/1.1 {status} ")), "{response}");
        if status == "426" {
            assert!(response.contains("Sec-WebSocket-Version: 13\r\n"), "{response}");
        }
    }
    let _still_serving = server.registered("fine").await;
}

#[tokio::test]
async fn an_upgrade_after_a_plain_request_on_a_keep_alive_connection() {
    let server = TestServer::start().await;
    let mut s = TcpStream::connect(server.addr).await.unwrap();
    s.write_all(b"GET /livez HTTP/1.1\r\nHost: h\r\n\r\n").await.unwrap();
    let head = response_head(&mut s).await;
    assert!(head.starts_with("HTTP/1.1 200 "), "{head}");
    let len: usize = head
        .lines()
        .find_map(|l| l.to_ascii_lowercase().strip_prefix("content-length: ").map(|v| v.trim().parse().unwrap()))
        .expect("content-length");
    let mut body = vec![0; len];
    tokio::time::timeout(WAIT, s.read_exact(&mut body)).await.expect("the body in time").unwrap();
    assert_eq!(body, b"ok\n");

    // The same connection now upgrades, through the HTTP server this time, which reads the same header lists.
    s.write_all(UPGRADE.replace("Upgrade: websocket", "Upgrade: websocket, foo/1").as_bytes()).await.unwrap();
    let head = response_head(&mut s).await;
    assert!(head.starts_with("HTTP/1.1 101 "), "{head}");
    assert!(head.to_ascii_lowercase().contains("sec-websocket-accept: s3pplmbitxaq9kygzzhzrbk+xoo="), "{head}");
    s.write_all(&text(&register("kept"))).await.unwrap();
    assert_eq!(json_frame(&mut s).await["room_id"], "kept");
}

#[tokio::test(start_paused = true)]
async fn a_connection_that_never_finishes_its_head_is_dropped() {
    let server = TestServer::start().await;
    let mut s = TcpStream::connect(server.addr).await.unwrap();
    s.write_all(b"GET / HTTP/1.1\r\nUpgrade: web").await.unwrap();
    let start = tokio::time::Instant::now();
    let n = tokio::time::timeout(Duration::from_secs(60), s.read(&mut [0; 16])).await.expect("dropped").unwrap_or(0);
    assert_eq!(n, 0, "closed without a response");
    let waited = start.elapsed();
    assert!(waited >= switchboard_server::listener::HEAD_TIMEOUT, "dropped after {waited:?}");
    assert!(waited < Duration::from_secs(20), "dropped after {waited:?}");
}

#[tokio::test(start_paused = true)]
async fn a_silent_session_is_pinged_then_closed_at_the_idle_timeout() {
    // Over a real socket, in paused time: the clock jumps only when every task waits, and loopback writes are
    // readable by the time they return, so the timings below are exact to the keepalive's own arithmetic.
    let server = TestServer::start_with(|c| {
        c.signaling.ping_after = Duration::from_secs(10);
        c.signaling.idle_timeout = Duration::from_secs(25);
    })
    .await;
    let mut s = upgraded(&server, &text(&register("quiet"))).await;
    json_frame(&mut s).await;
    let start = tokio::time::Instant::now();
    // This client never answers pings, so nothing counts as activity.
    let minute = Duration::from_secs(60);
    assert_eq!(frame_within(&mut s, minute).await, (0x9, vec![]), "a ping");
    assert_eq!(start.elapsed().as_secs(), 10);
    assert_eq!(frame_within(&mut s, minute).await, (0x9, vec![]), "another ping, one interval later");
    assert_eq!(start.elapsed().as_secs(), 20);
    let (opcode, payload) = frame_within(&mut s, minute).await;
    assert_eq!((opcode, &payload[..2]), (0x8, &1000u16.to_be_bytes()[..]), "a close");
    assert_eq!(&payload[2..], b"idle timeout");
    assert_eq!(start.elapsed().as_secs(), 25, "closed at the idle timeout");
    let _again = server.registered("quiet").await;
}
