//! Opening benchmark connections, spread over several loopback source addresses.
//!
//! One source address offers about 28k ephemeral ports towards one server port; spreading connections over
//! 127.0.0.1–127.0.0.8 (when the server is on loopback) lifts that ceiling.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};

use futures_util::{SinkExt, StreamExt};
use tokio::net::{TcpSocket, TcpStream};
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::WebSocketStream;

use crate::BenchError;

pub type Ws = WebSocketStream<TcpStream>;

/// Source addresses used in turn for loopback targets.
const SOURCES: u8 = 8;

/// The `host:port` of a `ws://host:port/path` URL.
pub fn authority(url: &str) -> Result<SocketAddr, BenchError> {
    let rest = url.strip_prefix("ws://").ok_or_else(|| BenchError::Protocol(format!("only ws:// URLs: {url}")))?;
    let host = rest.split('/').next().unwrap_or(rest);
    host.parse().map_err(|e| BenchError::Protocol(format!("{url}: {e}")))
}

/// Opens connection number `index` to `url`. Every message is written at once (no write buffer): right for
/// request/response flows and cheap for thousands of idle connections.
pub async fn connect(url: &str, index: usize) -> Result<Ws, BenchError> {
    connect_with(url, index, 0).await
}

/// Like [`connect`], but frames are gathered in a `write_buffer`-byte buffer until a flush: one `write` per batch,
/// as a real busy client would send, for streaming scenarios.
pub async fn connect_with(url: &str, index: usize, write_buffer: usize) -> Result<Ws, BenchError> {
    let addr = authority(url)?;
    let err = |e: std::io::Error| BenchError::Connect { url: url.to_owned(), reason: e.to_string() };
    let socket = if addr.is_ipv4() { TcpSocket::new_v4() } else { TcpSocket::new_v6() }.map_err(err)?;
    if addr.ip().is_loopback() && addr.is_ipv4() {
        let src = Ipv4Addr::new(127, 0, 0, 1 + (index % SOURCES as usize) as u8);
        socket.bind(SocketAddr::new(IpAddr::V4(src), 0)).map_err(err)?;
    }
    let tcp = socket.connect(addr).await.map_err(err)?;
    tcp.set_nodelay(true).map_err(err)?;
    // Small buffers: thousands of idle connections must stay cheap on the generator's side too.
    let config = WebSocketConfig::default().read_buffer_size(4096).write_buffer_size(write_buffer);
    let (ws, _) = tokio_tungstenite::client_async_with_config(url, tcp, Some(config))
        .await
        .map_err(|e| BenchError::Connect { url: url.to_owned(), reason: e.to_string() })?;
    Ok(ws)
}

/// The next text frame (pings and pongs skipped).
pub async fn recv_text(ws: &mut Ws) -> Result<String, BenchError> {
    loop {
        match ws.next().await {
            Some(Ok(Message::Text(t))) => return Ok(t.as_str().to_owned()),
            Some(Ok(Message::Close(_))) | None => return Err(BenchError::Protocol("connection closed".into())),
            Some(Ok(_)) => continue,
            Some(Err(e)) => return Err(BenchError::Protocol(e.to_string())),
        }
    }
}

pub async fn send_text(ws: &mut Ws, text: String) -> Result<(), BenchError> {
    ws.send(Message::Text(text.into())).await.map_err(|e| BenchError::Protocol(e.to_string()))
}

/// Queues a frame without writing it (with a write buffer, see [`connect_with`]); [`flush`] sends the batch.
pub async fn feed_text(ws: &mut Ws, text: String) -> Result<(), BenchError> {
    ws.feed(Message::Text(text.into())).await.map_err(|e| BenchError::Protocol(e.to_string()))
}

/// Writes what [`feed_text`] queued.
pub async fn flush(ws: &mut Ws) -> Result<(), BenchError> {
    ws.flush().await.map_err(|e| BenchError::Protocol(e.to_string()))
}

/// Sends a request and returns the next message, which must be its accept.
pub async fn request(ws: &mut Ws, text: String) -> Result<String, BenchError> {
    send_text(ws, text).await?;
    let answer = recv_text(ws).await?;
    if crate::messages::field(&answer, "class") != Some("accept") {
        return Err(BenchError::Protocol(format!("expected an accept, got {answer}")));
    }
    Ok(answer)
}
