//! Interop with coturn's test clients: the real `switchboard` binary's STUN/TURN server must satisfy
//! `turnutils_stunclient` (Binding) and `turnutils_uclient` (Allocate with EVEN-PORT/RESERVATION-TOKEN, permissions,
//! channels, Send/Data indications, relaying) over UDP and TCP, with the ephemeral credentials of a register accept.
//!
//! These tests need coturn's client tools on PATH (`apt-get install coturn`). Without them they fail, they do not skip.
//!
//! How uclient behaves (coturn 4.6), which the assertions below rely on:
//! - `-y` pairs its own allocations (client to client), so the peers are this server's relay addresses on 127.0.0.1;
//!   `-m 1` then means 4 sessions (RTP and RTCP of two clients) plus one probe allocation, each session sending `-n`.
//! - Every session starts sending 1 to 6 s after connecting (random), and when packets are missing uclient waits
//!   10 s more before giving up; a clean run takes about 2 to 7 s.
//! - It exits 0 whenever the allocations succeeded, loss or not: loss must be read from its summary,
//!   `start_mclient: tot_send_msgs=N, tot_recv_msgs=M` and `Total lost packets L (P%), total send dropped D (Q%)`.
//! - A rejected Allocate (e.g. a wrong password) makes it retry, print `ERROR: Cannot complete Allocation` and exit 255.

use std::io::{BufRead, BufReader, Read};
use std::net::{IpAddr, Ipv4Addr, SocketAddr, UdpSocket};
use std::path::PathBuf;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::mpsc::{self, RecvTimeoutError};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use futures_util::{SinkExt, StreamExt};
use serde_json::{json, Value};
use tokio_tungstenite::tungstenite::Message;

const BIN: &str = env!("CARGO_BIN_EXE_switchboard");
const LOCALHOST: IpAddr = IpAddr::V4(Ipv4Addr::LOCALHOST);
const ROOM: &str = "interop";

/// Until the server has logged both listening addresses.
const STARTUP_TIMEOUT: Duration = Duration::from_secs(20);
/// Websocket connect plus the register round trip.
const REGISTER_TIMEOUT: Duration = Duration::from_secs(10);
/// One Binding request; stunclient itself never gives up.
const STUNCLIENT_TIMEOUT: Duration = Duration::from_secs(10);
/// A clean bounded run takes under 10 s, one with loss about 10 s more; anything beyond is a hang.
const UCLIENT_TIMEOUT: Duration = Duration::from_secs(60);
/// Until a freshly started turnutils_peer echoes.
const PEER_TIMEOUT: Duration = Duration::from_secs(10);

// ---------------------------------------------------------------------------------------------------------------
// The server under test.

/// A running `switchboard serve` with STUN/TURN on loopback; killed on drop.
struct Server {
    child: Child,
    /// Every stderr line so far (a thread keeps draining the pipe).
    log: Arc<Mutex<Vec<String>>>,
    turn: SocketAddr,
    signaling: SocketAddr,
    /// The `turns:` listener, when started with one.
    turns: Option<SocketAddr>,
}

impl Server {
    /// Starts the binary on free ports and waits until it has logged both listening addresses.
    fn start() -> Server {
        Server::start_with(&[])
    }

    /// Also serves TURN over TLS (`turns:`) with a generated certificate.
    fn start_with_turns() -> Server {
        let s = Server::start_with(&["--dev-tls", "--tls-listen", "127.0.0.1:0", "--turn-tls-listen", "127.0.0.1:0"]);
        assert!(s.turns.is_some(), "no `turns listening` line; log:\n{}", s.log_tail());
        s
    }

    fn start_with(extra: &[&str]) -> Server {
        let mut cmd = Command::new(BIN);
        // A developer's SWITCHBOARD_* settings must not leak in.
        for (key, _) in std::env::vars_os() {
            if key.to_string_lossy().starts_with("SWITCHBOARD_") {
                cmd.env_remove(key);
            }
        }
        cmd.args(["serve", "--listen", "127.0.0.1:0", "--turn-listen", "127.0.0.1:0"])
            .args(["--external-ip", "127.0.0.1", "--turn-allow-peer", "127.0.0.0/8"])
            .args(extra)
            .env("SWITCHBOARD_LOG", "info")
            .env("SWITCHBOARD_LOG_FORMAT", "text")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        let mut child = cmd.spawn().expect("spawn switchboard");

        let stderr = child.stderr.take().unwrap();
        let log = Arc::new(Mutex::new(Vec::new()));
        let (tx, rx) = mpsc::channel();
        let sink = log.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines() {
                let Ok(line) = line else { break };
                sink.lock().unwrap().push(line.clone());
                // Nobody listens once startup is over; the log keeps the line.
                let _ = tx.send(line);
            }
        });

        let deadline = Instant::now() + STARTUP_TIMEOUT;
        let (mut signaling, mut turn, mut turns) = (None, None, None);
        let want_turns = extra.contains(&"--turn-tls-listen");
        while signaling.is_none() || turn.is_none() || (want_turns && turns.is_none()) {
            match rx.recv_timeout(deadline.saturating_duration_since(Instant::now())) {
                Ok(line) if line.contains("signaling listening") => signaling = Some(addr_field(&line)),
                Ok(line) if line.contains("turn listening") => turn = Some(addr_field(&line)),
                Ok(line) if line.contains("turns listening") => turns = Some(addr_field(&line)),
                Ok(_) => {}
                Err(RecvTimeoutError::Timeout) => {
                    let _ = child.kill();
                    let _ = child.wait();
                    panic!(
                        "switchboard did not log `signaling listening` and `turn listening` within {STARTUP_TIMEOUT:?}; log:\n{}",
                        log.lock().unwrap().join("\n")
                    );
                }
                Err(RecvTimeoutError::Disconnected) => {
                    let status = child.wait();
                    panic!(
                        "switchboard exited ({status:?}) before logging both listening addresses; log:\n{}",
                        log.lock().unwrap().join("\n")
                    );
                }
            }
        }
        let (signaling, turn) = (signaling.unwrap(), turn.unwrap());
        assert_eq!(turn.ip(), LOCALHOST, "TURN bound elsewhere than asked");
        assert_ne!(turn.port(), 0);
        Server { child, log, turn, signaling, turns }
    }

    /// The last lines of the server log, for failure messages.
    fn log_tail(&self) -> String {
        let log = self.log.lock().unwrap();
        log[log.len().saturating_sub(40)..].join("\n")
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The `addr=HOST:PORT` field of a log line.
fn addr_field(line: &str) -> SocketAddr {
    let value = line
        .split("addr=")
        .nth(1)
        .and_then(|rest| rest.split_whitespace().next())
        .unwrap_or_else(|| panic!("no addr= field in: {line}"));
    value.trim_matches('"').parse().unwrap_or_else(|e| panic!("bad addr= field in {line:?}: {e}"))
}

// ---------------------------------------------------------------------------------------------------------------
// Signaling: register and stay registered.

type Ws = tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

/// A registered websocket session, kept open (answering pings) on its own thread until dropped, like a real client
/// that keeps its signaling connection while it uses the TURN server.
struct Registration {
    accept: Value,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<JoinHandle<()>>,
}

impl Drop for Registration {
    fn drop(&mut self) {
        drop(self.stop.take());
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

async fn connect_and_register(url: String, request: String) -> Result<(Ws, Value), String> {
    let (mut ws, _) = tokio_tungstenite::connect_async(url).await.map_err(|e| format!("websocket connect: {e}"))?;
    ws.send(Message::Text(request.into())).await.map_err(|e| format!("send register: {e}"))?;
    loop {
        match ws.next().await {
            Some(Ok(Message::Text(t))) => {
                let reply = serde_json::from_str(t.as_str()).map_err(|e| format!("reply is not JSON ({e}): {t}"))?;
                return Ok((ws, reply));
            }
            Some(Ok(_)) => continue,
            other => return Err(format!("connection ended before the register reply: {other:?}")),
        }
    }
}

fn register(signaling: SocketAddr, room: &str) -> Registration {
    let url = format!("ws://{signaling}/signaling");
    let request = json!({"class":"request","method":"register","transaction_id":"t","room_id":room}).to_string();
    let (reply_tx, reply_rx) = mpsc::channel::<Result<Value, String>>();
    let (stop, mut stopped) = tokio::sync::oneshot::channel::<()>();
    let thread = std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("tokio runtime");
        rt.block_on(async move {
            let mut ws = match tokio::time::timeout(REGISTER_TIMEOUT, connect_and_register(url, request)).await {
                Ok(Ok((ws, accept))) => {
                    let _ = reply_tx.send(Ok(accept));
                    ws
                }
                Ok(Err(e)) => {
                    let _ = reply_tx.send(Err(e));
                    return;
                }
                Err(_) => {
                    let _ = reply_tx.send(Err(format!("no register reply within {REGISTER_TIMEOUT:?}")));
                    return;
                }
            };
            loop {
                tokio::select! {
                    _ = &mut stopped => break,
                    msg = ws.next() => if !matches!(msg, Some(Ok(_))) { return },
                }
            }
            let _ = tokio::time::timeout(Duration::from_secs(2), ws.close(None)).await;
        });
    });
    let accept = reply_rx
        .recv_timeout(REGISTER_TIMEOUT + Duration::from_secs(5))
        .expect("register thread neither replied nor failed")
        .unwrap_or_else(|e| panic!("register failed: {e}"));
    Registration { accept, stop: Some(stop), thread: Some(thread) }
}

/// The long-term credentials of the first (built-in) ice server of a register accept.
struct Credentials {
    username: String,
    password: String,
}

/// Starts a server, registers in room `interop` and checks that the accept advertises this TURN listener with an
/// ephemeral credential `<expiry>:interop`.
fn start_and_register() -> (Server, Registration, Credentials) {
    registered_on(Server::start())
}

fn registered_on(server: Server) -> (Server, Registration, Credentials) {
    let reg = register(server.signaling, ROOM);
    let accept = &reg.accept;
    assert_eq!(accept["class"], "accept", "register was not accepted: {accept}");
    let entries = accept["ice_servers"].as_array().map_or(0, Vec::len);
    let ice = &accept["ice_servers"][entries.saturating_sub(1)];
    let expected_url = format!("turn:127.0.0.1:{}?transport=udp", server.turn.port());
    assert_eq!(ice["url"].as_str(), Some(expected_url.as_str()), "ice_servers[0] of {accept}");
    let username = ice["ufrag"].as_str().unwrap_or_else(|| panic!("no ufrag in {ice}")).to_owned();
    let password = ice["pwd"].as_str().unwrap_or_else(|| panic!("no pwd in {ice}")).to_owned();
    let (expiry, room) =
        username.split_once(':').unwrap_or_else(|| panic!("ufrag {username:?} is not <expiry>:<room>"));
    assert_eq!(room, ROOM, "ufrag {username:?}");
    let expiry: u64 = expiry.parse().unwrap_or_else(|e| panic!("expiry of ufrag {username:?}: {e}"));
    let now = SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_secs();
    assert!(expiry > now, "ufrag {username:?} has already expired (now {now})");
    assert!(!password.is_empty(), "empty pwd in {ice}");
    (server, reg, Credentials { username, password })
}

// ---------------------------------------------------------------------------------------------------------------
// The coturn tools.

/// The path of a coturn tool; panics (fails the test) when it is not installed.
fn tool(name: &str) -> PathBuf {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path).map(|dir| dir.join(name)).find(|p| p.is_file()).unwrap_or_else(|| {
        panic!(
            "`{name}` is not on PATH. The TURN interop tests need coturn's client tools: install them with \
             `apt-get install coturn` (CI does). These tests fail rather than skip without them."
        )
    })
}

/// What a finished tool printed.
struct Run {
    status: ExitStatus,
    /// stdout, then stderr.
    output: String,
}

/// Runs `cmd` to completion, killing it (and failing) if it outlives `timeout`.
fn run_bounded(mut cmd: Command, timeout: Duration) -> Run {
    let desc = format!("{cmd:?}");
    let mut child =
        cmd.stdin(Stdio::null()).stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().expect("spawn coturn tool");
    let collect = |mut pipe: Box<dyn Read + Send>| {
        std::thread::spawn(move || {
            let mut bytes = Vec::new();
            let _ = pipe.read_to_end(&mut bytes);
            String::from_utf8_lossy(&bytes).into_owned()
        })
    };
    let stdout = collect(Box::new(child.stdout.take().unwrap()));
    let stderr = collect(Box::new(child.stderr.take().unwrap()));
    let deadline = Instant::now() + timeout;
    let status = loop {
        if let Some(status) = child.try_wait().expect("wait for coturn tool") {
            break Some(status);
        }
        if Instant::now() >= deadline {
            let _ = child.kill();
            let _ = child.wait();
            break None;
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let output = stdout.join().unwrap() + &stderr.join().unwrap();
    match status {
        Some(status) => Run { status, output },
        None => panic!("{desc} did not finish within {timeout:?}; it printed:\n{output}"),
    }
}

/// `turnutils_uclient FLAGS -u USER -w PASS -p PORT 127.0.0.1`.
fn uclient(server: &Server, username: &str, password: &str, flags: &[&str]) -> Run {
    let mut cmd = Command::new(tool("turnutils_uclient"));
    cmd.args(flags).args(["-u", username, "-w", password, "-p", &server.turn.port().to_string(), "127.0.0.1"]);
    run_bounded(cmd, UCLIENT_TIMEOUT)
}

/// The totals uclient prints when it is done.
#[derive(Debug)]
struct Summary {
    sent: u64,
    received: u64,
    lost: u64,
    send_dropped: u64,
}

/// Parses `start_mclient: tot_send_msgs=N, tot_recv_msgs=M` (the final totals; the per-second progress lines carry
/// `msz=` too) and `Total lost packets L (P%), total send dropped D (Q%)`. uclient sometimes prints a line twice, so
/// the last occurrence counts.
fn parse_summary(output: &str) -> Option<Summary> {
    let totals = output.lines().rev().find(|l| l.contains("tot_send_msgs=") && !l.contains("msz="))?;
    let loss = output.lines().rev().find(|l| l.contains("Total lost packets"))?;
    Some(Summary {
        sent: number_after(totals, "tot_send_msgs=")?,
        received: number_after(totals, "tot_recv_msgs=")?,
        lost: number_after(loss, "Total lost packets ")?,
        send_dropped: number_after(loss, "total send dropped ")?,
    })
}

fn number_after(line: &str, key: &str) -> Option<u64> {
    let rest = &line[line.find(key)? + key.len()..];
    let digits: String = rest.chars().take_while(char::is_ascii_digit).collect();
    digits.parse().ok()
}

/// Asserts a uclient run relayed all `expected` packets and lost none.
fn assert_relayed_everything(server: &Server, run: &Run, expected: u64) {
    let context = || format!("uclient printed:\n{}\n--- switchboard log (tail):\n{}", run.output, server.log_tail());
    assert!(run.status.success(), "uclient exited with {:?}\n{}", run.status, context());
    let summary = parse_summary(&run.output).unwrap_or_else(|| panic!("no uclient summary\n{}", context()));
    assert_eq!(summary.sent, expected, "packets sent: {summary:?}\n{}", context());
    assert!(summary.received > 0, "nothing came back through the relay: {summary:?}\n{}", context());
    assert_eq!(summary.lost, 0, "lost packets: {summary:?}\n{}", context());
    assert_eq!(summary.send_dropped, 0, "send dropped: {summary:?}\n{}", context());
    assert_eq!(summary.received, summary.sent, "{summary:?}\n{}", context());
}

/// A `turnutils_peer` (UDP echo on PORT and PORT+1) on loopback; killed on drop.
struct EchoPeer {
    child: Child,
    port: u16,
}

impl EchoPeer {
    fn start() -> EchoPeer {
        let port = free_udp_port_pair();
        let child = Command::new(tool("turnutils_peer"))
            .args(["-L", "127.0.0.1", "-p", &port.to_string()])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn turnutils_peer");
        let mut peer = EchoPeer { child, port };
        // Ready when both ports echo.
        let probe = UdpSocket::bind((LOCALHOST, 0)).unwrap();
        probe.set_read_timeout(Some(Duration::from_millis(100))).unwrap();
        let deadline = Instant::now() + PEER_TIMEOUT;
        let mut echoed = [false, false];
        let mut buf = [0u8; 64];
        while !echoed.iter().all(|e| *e) {
            if let Some(status) = peer.child.try_wait().unwrap() {
                panic!("turnutils_peer exited at start: {status}");
            }
            assert!(
                Instant::now() < deadline,
                "turnutils_peer on {port}/{} did not echo within {PEER_TIMEOUT:?}",
                port + 1
            );
            for (i, p) in [port, port + 1].into_iter().enumerate() {
                if !echoed[i] {
                    let _ = probe.send_to(b"ready?", (LOCALHOST, p));
                }
            }
            while let Ok((n, from)) = probe.recv_from(&mut buf) {
                if &buf[..n] == b"ready?" && from.port() >= port && from.port() <= port + 1 {
                    echoed[usize::from(from.port() - port)] = true;
                }
            }
        }
        peer
    }
}

impl Drop for EchoPeer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A UDP port P on loopback with P+1 free too (turnutils_peer listens on both).
fn free_udp_port_pair() -> u16 {
    for _ in 0..50 {
        let first = UdpSocket::bind((LOCALHOST, 0)).unwrap();
        let port = first.local_addr().unwrap().port();
        if port < u16::MAX && UdpSocket::bind((LOCALHOST, port + 1)).is_ok() {
            return port;
        }
    }
    panic!("no free pair of UDP ports on loopback");
}

// ---------------------------------------------------------------------------------------------------------------
// Tests.

#[test]
fn stunclient_binding_maps_to_loopback() {
    let (server, _reg, _creds) = start_and_register();
    let mut cmd = Command::new(tool("turnutils_stunclient"));
    cmd.args(["-p", &server.turn.port().to_string(), "127.0.0.1"]);
    let run = run_bounded(cmd, STUNCLIENT_TIMEOUT);
    let context = || format!("stunclient printed:\n{}\n--- switchboard log (tail):\n{}", run.output, server.log_tail());
    // stunclient exits 0 even on an error response; the mapped address is what counts.
    assert!(run.status.success(), "stunclient exited with {:?}\n{}", run.status, context());
    let mapped: SocketAddr = run
        .output
        .lines()
        .find_map(|l| l.split("UDP reflexive addr: ").nth(1))
        .unwrap_or_else(|| panic!("no `UDP reflexive addr` in the output\n{}", context()))
        .trim()
        .parse()
        .unwrap_or_else(|e| panic!("unparsable reflexive address ({e})\n{}", context()));
    assert_eq!(mapped.ip(), LOCALHOST, "{}", context());
    assert_ne!(mapped.port(), 0, "{}", context());
}

#[test]
fn uclient_udp_client_to_client_relays_every_packet() {
    let (server, _reg, creds) = start_and_register();
    let run = uclient(&server, &creds.username, &creds.password, &["-y", "-m", "1", "-n", "10", "-l", "100"]);
    // -y -m 1: two clients, each with an RTP and an RTCP session, 10 packets per session.
    assert_relayed_everything(&server, &run, 40);
}

#[test]
fn uclient_tcp_client_to_client_relays_every_packet() {
    let (server, _reg, creds) = start_and_register();
    let run = uclient(&server, &creds.username, &creds.password, &["-t", "-y", "-m", "1", "-n", "10", "-l", "100"]);
    assert_relayed_everything(&server, &run, 40);
}

/// TURN over TLS: the register accept lists `turns:` first (the last entry stays UDP), and uclient over TLS (`-t -S`,
/// client to client, 101-byte payloads so that ChannelData padding is exercised) relays every packet.
#[test]
fn uclient_tls_client_to_client_relays_every_packet() {
    let (mut server, reg, creds) = registered_on(Server::start_with_turns());
    let turns = server.turns.unwrap();
    let first = &reg.accept["ice_servers"][0];
    let expected = format!("turns:127.0.0.1:{}?transport=tcp", turns.port());
    assert_eq!(first["url"].as_str(), Some(expected.as_str()), "ice_servers of {}", reg.accept);
    assert_eq!(first["ufrag"].as_str(), Some(creds.username.as_str()), "one credential for every transport");
    // uclient takes its port from the server handle: point it at the TLS listener.
    server.turn = turns;
    let run =
        uclient(&server, &creds.username, &creds.password, &["-t", "-S", "-y", "-m", "1", "-n", "10", "-l", "101"]);
    assert_relayed_everything(&server, &run, 40);
}

#[test]
fn uclient_tcp_unaligned_payloads_are_padded_and_relayed() {
    // 101-byte payloads: ChannelData over TCP must be padded to 4 bytes, or uclient loses the framing.
    let (server, _reg, creds) = start_and_register();
    let run = uclient(&server, &creds.username, &creds.password, &["-t", "-y", "-m", "1", "-n", "10", "-l", "101"]);
    assert_relayed_everything(&server, &run, 40);
}

#[test]
fn uclient_udp_send_indications_relay_every_packet() {
    // -s: CreatePermission plus Send/Data indications instead of channels.
    let (server, _reg, creds) = start_and_register();
    let run = uclient(&server, &creds.username, &creds.password, &["-y", "-s", "-m", "1", "-n", "10", "-l", "100"]);
    assert_relayed_everything(&server, &run, 40);
}

#[test]
fn uclient_udp_relays_to_an_external_echo_peer() {
    // A real peer outside the server (turnutils_peer echoes every datagram), one session (-c: no RTCP).
    let (server, _reg, creds) = start_and_register();
    let peer = EchoPeer::start();
    let port = peer.port.to_string();
    let flags = ["-c", "-e", "127.0.0.1", "-r", port.as_str(), "-m", "1", "-n", "10", "-l", "100"];
    let run = uclient(&server, &creds.username, &creds.password, &flags);
    assert_relayed_everything(&server, &run, 10);
}

#[test]
fn uclient_with_a_wrong_password_is_refused() {
    let (server, _reg, creds) = start_and_register();
    let run = uclient(&server, &creds.username, "not-the-password", &["-y", "-m", "1", "-n", "10", "-l", "100"]);
    let context = || format!("uclient printed:\n{}\n--- switchboard log (tail):\n{}", run.output, server.log_tail());
    // uclient retries the Allocate, then prints `ERROR: Cannot complete Allocation` and exits 255.
    assert!(
        !run.status.success() || run.output.contains("401"),
        "uclient got through with a wrong password ({:?})\n{}",
        run.status,
        context()
    );
    if let Some(summary) = parse_summary(&run.output) {
        assert_eq!(summary.received, 0, "packets relayed with a wrong password: {summary:?}\n{}", context());
    }
}
