//! A raw websocket client over TCP, byte for byte: the request head, masked frames, server frames read back.

use std::time::Duration;

use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use super::{TestServer, WAIT};

/// RFC 6455's example key, whose accept value is known.
pub const UPGRADE: &str = "GET /any/path HTTP/1.1\r\nHost: h\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
    Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n";

/// A masked client frame.
pub fn masked(fin: bool, opcode: u8, payload: &[u8]) -> Vec<u8> {
    let mask = [0x37, 0xfa, 0x21, 0x3d];
    let mut out = vec![if fin { 0x80 } else { 0 } | opcode];
    match payload.len() {
        n @ 0..=125 => out.push(0x80 | n as u8),
        n => {
            out.push(0x80 | 126);
            out.extend_from_slice(&(n as u16).to_be_bytes());
        }
    }
    out.extend_from_slice(&mask);
    out.extend(payload.iter().enumerate().map(|(i, b)| b ^ mask[i % 4]));
    out
}

pub fn text(payload: &str) -> Vec<u8> {
    masked(true, 0x1, payload.as_bytes())
}

pub fn register(room: &str) -> String {
    format!(r#"{{"class":"request","method":"register","transaction_id":"t-{room}","room_id":"{room}"}}"#)
}

/// Reads an HTTP response head.
pub async fn response_head(s: &mut TcpStream) -> String {
    let mut head = Vec::new();
    while !head.ends_with(b"\r\n\r\n") {
        head.push(s.read_u8().await.expect("response head"));
    }
    String::from_utf8(head).unwrap()
}

/// Reads one server frame: (opcode, payload). Server frames are never masked.
pub async fn frame(s: &mut TcpStream) -> (u8, Vec<u8>) {
    frame_within(s, WAIT).await
}

pub async fn frame_within(s: &mut TcpStream, limit: Duration) -> (u8, Vec<u8>) {
    let read = async {
        let b0 = s.read_u8().await.unwrap();
        let b1 = s.read_u8().await.unwrap();
        assert_eq!(b0 & 0x80, 0x80, "the server does not fragment");
        assert_eq!(b1 & 0x80, 0, "server frames are not masked");
        let len = match b1 & 0x7f {
            126 => s.read_u16().await.unwrap() as usize,
            127 => s.read_u64().await.unwrap() as usize,
            n => n as usize,
        };
        let mut payload = vec![0; len];
        s.read_exact(&mut payload).await.unwrap();
        (b0 & 0x0f, payload)
    };
    tokio::time::timeout(limit, read).await.expect("a frame")
}

pub async fn json_frame(s: &mut TcpStream) -> Value {
    let (opcode, payload) = frame(s).await;
    assert_eq!(opcode, 0x1, "a text frame");
    serde_json::from_slice(&payload).unwrap()
}

pub async fn read_close(s: &mut TcpStream) -> u16 {
    let (opcode, payload) = frame(s).await;
    assert_eq!(opcode, 0x8, "a close frame");
    u16::from_be_bytes([payload[0], payload[1]])
}

/// Connects and upgrades, sending `after_head` in the same write as the request head.
pub async fn upgraded(server: &TestServer, after_head: &[u8]) -> TcpStream {
    let mut s = TcpStream::connect(server.addr).await.unwrap();
    s.set_nodelay(true).unwrap();
    s.write_all(&[UPGRADE.as_bytes(), after_head].concat()).await.unwrap();
    let head = response_head(&mut s).await;
    assert!(head.starts_with("HTTP/1.1 101 "), "{head}");
    assert!(head.contains("Sec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=\r\n"), "{head}");
    s
}
