//! Test harness: a real server on 127.0.0.1:0 and real websocket clients (tokio-tungstenite).
#![allow(dead_code)]

pub mod raw;

use std::net::SocketAddr;
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use serde_json::{json, Value};
use switchboard_server::memnet::MemoryConnector;
use switchboard_server::{Config, Server};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;
use tokio::task::JoinHandle;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::WebSocketStream;
use tokio_util::sync::CancellationToken;

pub struct TestServer {
    pub addr: SocketAddr,
    pub stop: CancellationToken,
    pub task: JoinHandle<Result<(), switchboard_server::ServerError>>,
    /// Set for an in-memory server (paused-time tests): connections are pipes, not sockets.
    memory: Option<MemoryConnector>,
    /// The built-in STUN/TURN server, for its counters.
    pub turn: Option<switchboard_server::turn::TurnServer>,
}

fn test_config(tweak: impl FnOnce(&mut Config)) -> Config {
    let mut config = Config::default();
    config.signaling.listen = "127.0.0.1:0".parse().unwrap();
    config.turn.external_ips = vec!["127.0.0.1".parse().unwrap()];
    config.turn.listen = "127.0.0.1:0".parse().unwrap();
    config.turn.port = Some(3478);
    config.turn.credentials = switchboard_server::config::CredentialMode::Static;
    config.turn.static_password = "test-pass".into();
    tweak(&mut config);
    config
}

impl TestServer {
    pub async fn start() -> TestServer {
        Self::start_with(|_| {}).await
    }

    pub async fn start_with(tweak: impl FnOnce(&mut Config)) -> TestServer {
        let server = Server::bind(test_config(tweak)).await.expect("bind");
        let addr = server.local_addr();
        let stop = server.shutdown_token();
        let turn = server.turn().cloned();
        let task = tokio::spawn(server.run());
        TestServer { addr, stop, task, memory: None, turn }
    }

    /// The same server over in-memory pipes, for tests in paused time (see `switchboard_server::memnet`).
    pub async fn in_memory(tweak: impl FnOnce(&mut Config)) -> TestServer {
        let (server, connector) = Server::in_memory(test_config(tweak)).await.expect("config");
        let addr = server.local_addr();
        let stop = server.shutdown_token();
        let task = tokio::spawn(server.run());
        TestServer { addr, stop, task, memory: Some(connector), turn: None }
    }

    /// A node of the in-process cluster `backbone` belongs to, on a real socket; returns once it is ready (joined).
    pub async fn in_cluster(
        backbone: switchboard_server::cluster::MemoryBackbone,
        tweak: impl FnOnce(&mut Config),
    ) -> TestServer {
        let config = test_config(|c| {
            c.cluster.heartbeat = CLUSTER_HEARTBEAT;
            c.cluster.node_timeout = CLUSTER_NODE_TIMEOUT;
            c.admin.secret = "adm".into();
            tweak(c);
        });
        let server = Server::bind_in_cluster(config, backbone).await.expect("bind");
        let addr = server.local_addr();
        let stop = server.shutdown_token();
        let task = tokio::spawn(server.run());
        let node = TestServer { addr, stop, task, memory: None, turn: None };
        node.wait_ready(true).await;
        node
    }

    /// Waits until `/readyz` says ready (or not ready).
    pub async fn wait_ready(&self, ready: bool) {
        let deadline = tokio::time::Instant::now() + WAIT;
        loop {
            let (status, _) = http(self.addr, "GET", "/readyz", &[], "").await;
            if status == if ready { 200 } else { 503 } {
                return;
            }
            assert!(tokio::time::Instant::now() < deadline, "readyz never became {ready}");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    pub fn url(&self) -> String {
        format!("ws://{}/signaling", self.addr)
    }

    pub async fn client(&self) -> Client {
        match &self.memory {
            None => Client::connect(&self.url()).await,
            Some(connector) => {
                let pipe = connector.connect().await.expect("memory connect");
                let (ws, _) = tokio_tungstenite::client_async(self.url(), Box::new(pipe) as Box<dyn Stream>)
                    .await
                    .expect("handshake");
                Client { ws, next_tid: 0 }
            }
        }
    }

    /// A client that registered `room`.
    pub async fn registered(&self, room: &str) -> Client {
        let mut c = self.client().await;
        let accept = c.request(json!({"class":"request","method":"register","room_id":room})).await;
        assert_eq!(accept["class"], "accept", "{accept}");
        c
    }
}

impl TestServer {
    /// A callee holding room "a" and a caller holding room "b" in an answered call with guest "g" (transaction "T").
    pub async fn in_call(&self) -> (Client, Client) {
        let mut callee = self.registered("a").await;
        let mut caller = self.registered("b").await;
        caller.send(call("T", "g", "a")).await;
        callee.recv().await;
        callee.send(answer("accept", "T", "g", "a")).await;
        caller.recv().await;
        (callee, caller)
    }
}

/// What a client observed next.
#[derive(Debug)]
pub enum Event {
    Json(Value),
    Closed(Option<u16>),
}

/// A byte stream a test client runs over: a TCP socket or an in-memory pipe.
pub trait Stream: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> Stream for T {}

pub struct Client {
    pub ws: WebSocketStream<Box<dyn Stream>>,
    next_tid: u32,
}

pub const WAIT: Duration = Duration::from_secs(10);
/// Cluster timings of the in-process cluster tests.
pub const CLUSTER_HEARTBEAT: Duration = Duration::from_millis(100);
pub const CLUSTER_NODE_TIMEOUT: Duration = Duration::from_millis(1000);

impl Client {
    pub async fn connect(url: &str) -> Client {
        let addr = url.trim_start_matches("ws://").split('/').next().unwrap().to_owned();
        let handshake = async {
            let tcp = TcpStream::connect(addr).await.expect("connect");
            tcp.set_nodelay(true).unwrap();
            tokio_tungstenite::client_async(url, Box::new(tcp) as Box<dyn Stream>).await.expect("handshake")
        };
        let (ws, _) = tokio::time::timeout(WAIT, handshake).await.expect("connect and handshake within the deadline");
        Client { ws, next_tid: 0 }
    }

    pub async fn send_text(&mut self, text: impl Into<String>) {
        self.ws.send(Message::Text(text.into().into())).await.expect("send");
    }

    pub async fn send(&mut self, v: Value) {
        self.send_text(v.to_string()).await;
    }

    /// Sends a request with a fresh transaction id and returns the next message (its answer).
    pub async fn request(&mut self, mut v: Value) -> Value {
        self.next_tid += 1;
        if v.get("transaction_id").is_none() {
            v["transaction_id"] = json!(format!("tid{}", self.next_tid));
        }
        self.send(v).await;
        self.recv().await
    }

    /// The next text message, skipping pings and pongs, within `limit`.
    pub async fn event_within(&mut self, limit: Duration) -> Event {
        let next = async {
            loop {
                match self.ws.next().await {
                    Some(Ok(Message::Text(t))) => {
                        return Event::Json(serde_json::from_str(t.as_str()).expect("server sent valid JSON"))
                    }
                    Some(Ok(Message::Close(frame))) => return Event::Closed(frame.map(|f| u16::from(f.code))),
                    Some(Ok(_)) => continue,
                    Some(Err(_)) | None => return Event::Closed(None),
                }
            }
        };
        tokio::time::timeout(limit, next).await.expect("timed out waiting for a message")
    }

    /// The next text frame exactly as received.
    pub async fn recv_raw(&mut self) -> String {
        let next = async {
            loop {
                match self.ws.next().await {
                    Some(Ok(Message::Text(t))) => return t.as_str().to_owned(),
                    Some(Ok(Message::Ping(_) | Message::Pong(_))) => continue,
                    other => panic!("expected a text frame, got {other:?}"),
                }
            }
        };
        tokio::time::timeout(WAIT, next).await.expect("timed out waiting for a message")
    }

    pub async fn recv(&mut self) -> Value {
        match self.event_within(WAIT).await {
            Event::Json(v) => v,
            Event::Closed(code) => panic!("connection closed ({code:?}) while a message was expected"),
        }
    }

    /// Reads until the server closes; returns the close code and every message seen before it.
    pub async fn until_closed(&mut self, limit: Duration) -> (Option<u16>, Vec<Value>) {
        let mut seen = Vec::new();
        loop {
            match self.event_within(limit).await {
                Event::Json(v) => seen.push(v),
                Event::Closed(code) => return (code, seen),
            }
        }
    }

    /// Sends `text` `n` times without waiting in between, then flushes (a flood, as one write where possible).
    pub async fn flood(&mut self, text: &str, n: usize) {
        for _ in 0..n {
            self.ws.feed(Message::Text(text.to_owned().into())).await.expect("send");
        }
        self.ws.flush().await.expect("flush");
    }

    /// Asserts that nothing is queued for this client: a probe's reject must be the very next message.
    pub async fn assert_nothing_pending(&mut self) {
        self.send(json!({"class":"request","method":"probe","transaction_id":"probe"})).await;
        let next = self.recv().await;
        assert_eq!(next["transaction_id"], "probe", "unexpected message before the probe's answer: {next}");
        assert_eq!(next["code"], "unsupported");
    }
}

pub fn close_code(code: CloseCode) -> u16 {
    code.into()
}

pub fn call(tid: &str, guest: &str, room: &str) -> Value {
    json!({"class":"request","method":"call","transaction_id":tid,"guest_id":guest,"room_id":room,"type":"play",
           "vhost":"__defaultVhost__","app":"live","stream":"test","sdp":"v=0\r\no=- 1 1 IN IP4 0.0.0.0\r\n"})
}

pub fn answer(class: &str, tid: &str, guest: &str, room: &str) -> Value {
    json!({"class":class,"method":"call","transaction_id":tid,"guest_id":guest,"room_id":room,"type":"play",
           "vhost":"__defaultVhost__","app":"live","stream":"test","sdp":"v=0\r\n"})
}

pub fn candidate(guest: &str, room: &str, line: &str) -> Value {
    json!({"class":"indication","method":"candidate","transaction_id":"c1","guest_id":guest,"room_id":room,
           "candidate":line,"ufrag":"uf","pwd":"pw"})
}

pub fn bye(guest: &str, room: &str) -> Value {
    json!({"class":"indication","method":"bye","transaction_id":"b1","guest_id":guest,"room_id":room})
}

/// Asserts `v` is the server's bye for (guest, room) with `reason`, with a fresh 32-character transaction id.
pub fn assert_server_bye(v: &Value, guest: &str, room: &str, reason: &str) {
    assert_eq!(v["class"], "indication", "{v}");
    assert_eq!(v["method"], "bye", "{v}");
    assert_eq!(v["guest_id"], guest, "{v}");
    assert_eq!(v["room_id"], room, "{v}");
    assert_eq!(v["reason"], reason, "{v}");
    let tid = v["transaction_id"].as_str().unwrap();
    assert_eq!(tid.len(), 32, "{v}");
    assert!(tid.chars().all(|c| c.is_ascii_alphanumeric()), "{v}");
}

pub fn assert_reject(v: &Value, code: &str) {
    assert_eq!(v["class"], "reject", "{v}");
    assert_eq!(v["code"], code, "{v}");
    assert!(v["reason"].as_str().is_some_and(|r| !r.is_empty()), "{v}");
}

/// A minimal HTTP/1.1 request over a real socket; returns (status, body).
pub async fn http(addr: SocketAddr, method: &str, path: &str, headers: &[(&str, &str)], body: &str) -> (u16, String) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s =
        tokio::time::timeout(WAIT, TcpStream::connect(addr)).await.expect("connect within the deadline").unwrap();
    let mut req =
        format!("{method} {path} HTTP/1.1\r\nHost: test\r\nConnection: close\r\nContent-Length: {}\r\n", body.len());
    for (k, v) in headers {
        req.push_str(&format!("{k}: {v}\r\n"));
    }
    req.push_str("\r\n");
    req.push_str(body);
    s.write_all(req.as_bytes()).await.unwrap();
    let mut out = Vec::new();
    tokio::time::timeout(WAIT, s.read_to_end(&mut out)).await.expect("an HTTP answer within the deadline").unwrap();
    let out = String::from_utf8_lossy(&out).into_owned();
    let status = out.split(' ').nth(1).and_then(|c| c.parse().ok()).unwrap_or(0);
    let (head, body) = out.split_once("\r\n\r\n").unwrap_or((&out, ""));
    // Undo chunked transfer encoding, which axum uses for streamed bodies.
    let body =
        if head.to_ascii_lowercase().contains("transfer-encoding: chunked") { dechunk(body) } else { body.to_owned() };
    (status, body)
}

fn dechunk(mut s: &str) -> String {
    let mut out = String::new();
    while let Some((size, rest)) = s.split_once("\r\n") {
        let n = usize::from_str_radix(size.trim(), 16).unwrap_or(0);
        if n == 0 {
            break;
        }
        out.push_str(&rest[..n]);
        s = &rest[n + 2..];
    }
    out
}

/// The value of one sample in Prometheus text, by metric name and (optional) label.
pub fn sample(text: &str, name: &str, label: Option<(&str, &str)>) -> f64 {
    let lines = text.lines().map(|l| Ok(l.to_owned()));
    let scrape = prometheus_parse::Scrape::parse(lines).expect("metrics text parses");
    let s = scrape
        .samples
        .iter()
        .find(|s| s.metric == name && label.is_none_or(|(k, v)| s.labels.get(k) == Some(v)))
        .unwrap_or_else(|| panic!("no sample {name} {label:?} in\n{text}"));
    match s.value {
        prometheus_parse::Value::Counter(v)
        | prometheus_parse::Value::Gauge(v)
        | prometheus_parse::Value::Untyped(v) => v,
        prometheus_parse::Value::Histogram(ref h) => h.iter().map(|b| b.count).fold(0.0, f64::max),
        _ => panic!("unexpected sample type for {name}"),
    }
}

/// `GET /metrics` as text.
pub async fn scrape(addr: SocketAddr) -> String {
    let (status, text) = http(addr, "GET", "/metrics", &[], "").await;
    assert_eq!(status, 200, "{text}");
    text
}

/// `switchboard_disconnects_total{cause}` now.
pub async fn disconnects(addr: SocketAddr, cause: &str) -> f64 {
    sample(&scrape(addr).await, "switchboard_disconnects_total", Some(("cause", cause)))
}

/// The websocket header length of a frame with `len` payload bytes: from a client (masked) or from the server.
pub fn frame_header(len: usize, from_client: bool) -> usize {
    let base = match len {
        0..=125 => 2,
        126..=65535 => 4,
        _ => 10,
    };
    base + if from_client { 4 } else { 0 }
}
