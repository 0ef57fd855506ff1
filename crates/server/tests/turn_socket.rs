//! The STUN/TURN listener over real UDP and TCP sockets, driven by a scripted client built on our codec:
//! config → policy wiring, credentials from a register accept, TCP framing, allocation freed on TCP close.

mod common;

use std::net::SocketAddr;
use std::time::Duration;

use common::*;
use serde_json::json;
use switchboard_server::config::CredentialMode;
use switchboard_turn::stun::{attr, long_term_key, method, Builder, Class, Message};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpStream, UdpSocket};

/// Sends a request over UDP and returns the answer.
async fn udp_round_trip(sock: &UdpSocket, to: SocketAddr, req: Vec<u8>) -> Vec<u8> {
    sock.send_to(&req, to).await.unwrap();
    let mut buf = vec![0; 2048];
    let (n, _) = tokio::time::timeout(WAIT, sock.recv_from(&mut buf)).await.expect("TURN answer").unwrap();
    buf.truncate(n);
    buf
}

/// Sends one request over TCP and reads exactly one STUN answer.
async fn tcp_round_trip(s: &mut TcpStream, req: Vec<u8>) -> Vec<u8> {
    s.write_all(&req).await.unwrap();
    let mut head = [0u8; 20];
    tokio::time::timeout(WAIT, s.read_exact(&mut head)).await.expect("TURN answer").unwrap();
    let len = u16::from_be_bytes([head[2], head[3]]) as usize;
    let mut body = vec![0; len];
    s.read_exact(&mut body).await.unwrap();
    [head.to_vec(), body].concat()
}

struct Creds {
    user: String,
    key: [u8; 16],
    turn: SocketAddr,
}

/// The credential of a fresh registration of `room` on `server`.
async fn creds_for(server: &TestServer, room: &str) -> (Client, Creds) {
    let mut sig = server.client().await;
    let accept = sig.request(json!({"class":"request","method":"register","room_id":room})).await;
    let ice = &accept["ice_servers"][0];
    let user = ice["ufrag"].as_str().unwrap().to_owned();
    let key = long_term_key(&user, "switchboard", ice["pwd"].as_str().unwrap());
    (sig, Creds { user, key, turn: server.turn.as_ref().unwrap().local_addr() })
}

/// What an Allocate got: its error code, or the relayed address.
struct Allocated {
    sock: UdpSocket,
    error: Option<u16>,
    relay: Option<SocketAddr>,
}

/// Allocates over a fresh UDP socket.
async fn allocate(c: &Creds) -> Allocated {
    let sock = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let nonce = nonce_over_udp(&sock, c.turn).await;
    let resp = udp_round_trip(&sock, c.turn, signed(c, &nonce, method::ALLOCATE, udp_transport)).await;
    let m = Message::parse(&resp).unwrap();
    let (error, relay) = (m.error_code(), m.xor_address(attr::XOR_RELAYED_ADDRESS));
    Allocated { sock, error, relay }
}

async fn server_and_creds(tweak: impl FnOnce(&mut switchboard_server::Config)) -> (TestServer, Creds) {
    let server = TestServer::start_with(|c| {
        c.turn.credentials = CredentialMode::Ephemeral;
        c.turn.port = None;
        tweak(c);
    })
    .await;
    let mut sig = server.client().await;
    let accept = sig.request(json!({"class":"request","method":"register","room_id":"cam"})).await;
    let ice = &accept["ice_servers"][0];
    let user = ice["ufrag"].as_str().unwrap().to_owned();
    let key = long_term_key(&user, "switchboard", ice["pwd"].as_str().unwrap());
    let turn = server.turn.as_ref().unwrap().local_addr();
    (server, Creds { user, key, turn })
}

/// The nonce of the 401 an unauthenticated Allocate gets.
async fn nonce_over_udp(sock: &UdpSocket, turn: SocketAddr) -> String {
    let resp = udp_round_trip(sock, turn, allocate_unauth()).await;
    Message::parse(&resp).unwrap().text(attr::NONCE).unwrap().to_owned()
}

fn allocate_unauth() -> Vec<u8> {
    Builder::new(Class::Request, method::ALLOCATE, rand::random())
        .attr(attr::REQUESTED_TRANSPORT, &[17, 0, 0, 0])
        .finish()
}

fn signed(c: &Creds, nonce: &str, m: u16, extra: impl FnOnce(Builder) -> Builder) -> Vec<u8> {
    let b = Builder::new(Class::Request, m, rand::random())
        .attr(attr::USERNAME, c.user.as_bytes())
        .attr(attr::REALM, b"switchboard")
        .attr(attr::NONCE, nonce.as_bytes());
    extra(b).integrity(&c.key).fingerprint().finish()
}

fn udp_transport(b: Builder) -> Builder {
    b.attr(attr::REQUESTED_TRANSPORT, &[17, 0, 0, 0])
}

#[tokio::test]
async fn udp_binding_allocate_and_default_denied_peers() {
    let (server, c) = server_and_creds(|_| {}).await;
    let sock = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let me = sock.local_addr().unwrap();

    let resp = udp_round_trip(&sock, c.turn, Builder::new(Class::Request, method::BINDING, [1; 12]).finish()).await;
    assert_eq!(Message::parse(&resp).unwrap().xor_address(attr::XOR_MAPPED_ADDRESS), Some(me));

    let resp = udp_round_trip(&sock, c.turn, allocate_unauth()).await;
    let m = Message::parse(&resp).unwrap();
    assert_eq!(m.error_code(), Some(401));
    let nonce = m.text(attr::NONCE).unwrap().to_owned();
    let resp = udp_round_trip(&sock, c.turn, signed(&c, &nonce, method::ALLOCATE, udp_transport)).await;
    let m = Message::parse(&resp).unwrap();
    assert_eq!(m.class(), Class::Success, "{:?}", m.error_code());
    let relay = m.xor_address(attr::XOR_RELAYED_ADDRESS).unwrap();
    assert_eq!(relay.ip().to_string(), "127.0.0.1");
    assert!((50_000..=65_000).contains(&relay.port()), "{relay}");

    // Without allow-peers, loopback, private and unspecified peers are refused.
    for peer in ["127.0.0.1:9", "10.0.0.1:9", "0.0.0.0:9"] {
        let peer: SocketAddr = peer.parse().unwrap();
        let req = signed(&c, &nonce, method::CREATE_PERMISSION, |b| b.xor_address(attr::XOR_PEER_ADDRESS, peer));
        let resp = udp_round_trip(&sock, c.turn, req).await;
        assert_eq!(Message::parse(&resp).unwrap().error_code(), Some(403), "{peer}");
    }
    assert_eq!(server.turn.as_ref().unwrap().allocations(), 1);
}

/// The default peer policy through a running server, over real UDP, on an IPv4 and an IPv6 relay: every built-in
/// denial and embedding form of `policy::examples` gets 403, a peer of the other family 443, public controls success.
#[tokio::test]
async fn every_denied_range_is_refused_and_public_peers_are_permitted_on_both_families() {
    use switchboard_turn::policy::examples::{ALLOWED_V4, ALLOWED_V6, DENIED_V4, DENIED_V6};
    for (host, denied, allowed, other) in
        [("127.0.0.1", DENIED_V4, ALLOWED_V4, ALLOWED_V6), ("::1", DENIED_V6, ALLOWED_V6, ALLOWED_V4)]
    {
        let ip: std::net::IpAddr = host.parse().unwrap();
        let (server, c) = server_and_creds(|c| {
            c.turn.listen = SocketAddr::new(ip, 0);
            c.turn.external_ips = vec![ip];
        })
        .await;
        let sock = UdpSocket::bind(SocketAddr::new(ip, 0)).await.unwrap();
        let nonce = nonce_over_udp(&sock, c.turn).await;
        let resp = udp_round_trip(&sock, c.turn, signed(&c, &nonce, method::ALLOCATE, udp_transport)).await;
        let relay = Message::parse(&resp).unwrap().xor_address(attr::XOR_RELAYED_ADDRESS).expect("allocated");
        assert_eq!(relay.ip(), ip);
        let code = |resp: Vec<u8>| Message::parse(&resp).unwrap().error_code();
        let mut channel = 0x4000u32;
        for (list, expected) in [(denied, Some(403)), (other, Some(443)), (allowed, None)] {
            for peer in list {
                let peer = SocketAddr::new(peer.parse().unwrap(), 9);
                let req =
                    signed(&c, &nonce, method::CREATE_PERMISSION, |b| b.xor_address(attr::XOR_PEER_ADDRESS, peer));
                assert_eq!(
                    code(udp_round_trip(&sock, c.turn, req).await),
                    expected,
                    "CreatePermission {peer} on {relay}"
                );
                channel += 1;
                let req = signed(&c, &nonce, method::CHANNEL_BIND, |b| {
                    b.u32(attr::CHANNEL_NUMBER, channel << 16).xor_address(attr::XOR_PEER_ADDRESS, peer)
                });
                assert_eq!(code(udp_round_trip(&sock, c.turn, req).await), expected, "ChannelBind {peer} on {relay}");
            }
        }
        let stats = server.turn.as_ref().unwrap().stats();
        assert_eq!(stats.permissions_denied, 2 * denied.len() as u64);
    }
}

#[tokio::test]
async fn allowed_loopback_peer_gets_relayed_data_over_udp() {
    let (server, c) = server_and_creds(|c| c.turn.allow_peers = vec!["127.0.0.0/8".parse().unwrap()]).await;
    let sock = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let peer = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let peer_addr = peer.local_addr().unwrap();
    let nonce = nonce_over_udp(&sock, c.turn).await;
    let resp = udp_round_trip(&sock, c.turn, signed(&c, &nonce, method::ALLOCATE, udp_transport)).await;
    let relay = Message::parse(&resp).unwrap().xor_address(attr::XOR_RELAYED_ADDRESS).unwrap();
    let req = signed(&c, &nonce, method::CHANNEL_BIND, |b| {
        b.u32(attr::CHANNEL_NUMBER, 0x4000 << 16).xor_address(attr::XOR_PEER_ADDRESS, peer_addr)
    });
    assert_eq!(Message::parse(&udp_round_trip(&sock, c.turn, req).await).unwrap().class(), Class::Success);

    sock.send_to(&[0x40, 0x00, 0x00, 0x05, b'h', b'e', b'l', b'l', b'o'], c.turn).await.unwrap();
    let mut buf = [0u8; 64];
    let (n, from) = tokio::time::timeout(WAIT, peer.recv_from(&mut buf)).await.unwrap().unwrap();
    assert_eq!((&buf[..n], from), (&b"hello"[..], relay));
    peer.send_to(b"back", relay).await.unwrap();
    let (n, _) = tokio::time::timeout(WAIT, sock.recv_from(&mut buf)).await.unwrap().unwrap();
    assert_eq!(&buf[..n], &[0x40, 0x00, 0x00, 0x04, b'b', b'a', b'c', b'k']);
    let stats = server.turn.as_ref().unwrap().stats();
    assert_eq!((stats.packets_to_peers, stats.packets_to_clients), (1, 1));
}

#[tokio::test]
async fn tcp_allocation_is_freed_when_the_connection_closes() {
    let (server, c) = server_and_creds(|_| {}).await;
    let mut s = TcpStream::connect(c.turn).await.unwrap();
    let nonce =
        Message::parse(&tcp_round_trip(&mut s, allocate_unauth()).await).unwrap().text(attr::NONCE).unwrap().to_owned();
    let resp = tcp_round_trip(&mut s, signed(&c, &nonce, method::ALLOCATE, udp_transport)).await;
    assert_eq!(Message::parse(&resp).unwrap().class(), Class::Success);
    let turn = server.turn.as_ref().unwrap();
    assert_eq!(turn.allocations(), 1);
    drop(s);
    let deadline = tokio::time::Instant::now() + WAIT;
    while turn.allocations() != 0 {
        assert!(tokio::time::Instant::now() < deadline, "allocation not freed after the TCP close");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

#[tokio::test]
async fn a_credential_for_another_secret_is_refused() {
    let (_server, mut c) = server_and_creds(|_| {}).await;
    c.key = long_term_key(&c.user, "switchboard", "not-the-password");
    let sock = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let nonce = nonce_over_udp(&sock, c.turn).await;
    let resp = udp_round_trip(&sock, c.turn, signed(&c, &nonce, method::ALLOCATE, udp_transport)).await;
    assert_eq!(Message::parse(&resp).unwrap().error_code(), Some(401));
}

/// Reads until the server closes `s` (EOF or reset) and returns when; panics if it is still open at `within`.
async fn closed_by_server(s: &mut TcpStream, within: Duration) -> tokio::time::Instant {
    let start = tokio::time::Instant::now();
    let mut buf = [0u8; 256];
    loop {
        match tokio::time::timeout_at(start + within, s.read(&mut buf)).await {
            Ok(Ok(0) | Err(_)) => return tokio::time::Instant::now(),
            Ok(Ok(_)) => continue,
            Err(_) => panic!("the server kept the connection open for {within:?}"),
        }
    }
}

/// TURN over TCP: a connection that sends nothing, or half a message, or only Binding requests, is closed once it
/// has gone `tcp-unallocated-timeout` without an allocation; one that allocated stays open past it.
#[tokio::test]
async fn tcp_connections_without_an_allocation_are_closed_after_the_timeout() {
    const TIMEOUT: Duration = Duration::from_millis(600);
    let (server, c) = server_and_creds(|c| c.turn.tcp_unallocated_timeout = TIMEOUT).await;
    let opened = tokio::time::Instant::now();
    let mut silent = TcpStream::connect(c.turn).await.unwrap();
    let mut half = TcpStream::connect(c.turn).await.unwrap();
    half.write_all(&allocate_unauth()[..10]).await.unwrap();
    let mut binding_only = TcpStream::connect(c.turn).await.unwrap();
    let binding = Builder::new(Class::Request, method::BINDING, [1; 12]).finish();
    assert_eq!(Message::parse(&tcp_round_trip(&mut binding_only, binding).await).unwrap().class(), Class::Success);
    let mut allocated = TcpStream::connect(c.turn).await.unwrap();
    let nonce = Message::parse(&tcp_round_trip(&mut allocated, allocate_unauth()).await)
        .unwrap()
        .text(attr::NONCE)
        .unwrap()
        .to_owned();
    let resp = tcp_round_trip(&mut allocated, signed(&c, &nonce, method::ALLOCATE, udp_transport)).await;
    assert_eq!(Message::parse(&resp).unwrap().class(), Class::Success);

    for (what, s) in [("silent", &mut silent), ("half a message", &mut half), ("binding only", &mut binding_only)] {
        let after = closed_by_server(s, TIMEOUT + WAIT).await - opened;
        assert!(after >= TIMEOUT, "{what}: closed after {after:?}, before the timeout");
    }
    let text = scrape(server.addr).await;
    assert_eq!(sample(&text, "switchboard_turn_tcp_unallocated_closed_total", None), 3.0);
    assert_eq!(sample(&text, "switchboard_turn_tcp_refused_total", None), 0.0);
    // Past the timeout, the allocated connection still answers.
    tokio::time::sleep(TIMEOUT * 2).await;
    let binding = Builder::new(Class::Request, method::BINDING, [2; 12]).finish();
    assert_eq!(Message::parse(&tcp_round_trip(&mut allocated, binding).await).unwrap().class(), Class::Success);
}

/// TURN over TCP: one source address holds at most `tcp-connections-per-ip` connections; the next is closed at
/// once, and a place that frees up can be taken again.
#[tokio::test]
async fn tcp_connections_per_source_address_are_capped() {
    let (server, c) = server_and_creds(|c| c.turn.tcp_connections_per_ip = 3).await;
    let binding = || Builder::new(Class::Request, method::BINDING, rand::random()).finish();
    let mut held = Vec::new();
    for _ in 0..3 {
        let mut s = TcpStream::connect(c.turn).await.unwrap();
        assert_eq!(Message::parse(&tcp_round_trip(&mut s, binding()).await).unwrap().class(), Class::Success);
        held.push(s);
    }
    let mut extra = TcpStream::connect(c.turn).await.unwrap();
    let _ = extra.write_all(&binding()).await; // may already fail: the server closed it at accept
    closed_by_server(&mut extra, WAIT).await;
    let text = scrape(server.addr).await;
    assert_eq!(sample(&text, "switchboard_turn_tcp_refused_total", None), 1.0);
    drop(held.pop());
    // The freed place is taken again (the server sees the close asynchronously: retry until accepted).
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let mut s = TcpStream::connect(c.turn).await.unwrap();
        let _ = s.write_all(&binding()).await;
        let mut head = [0u8; 20];
        if tokio::time::timeout(Duration::from_millis(500), s.read_exact(&mut head)).await.is_ok_and(|r| r.is_ok()) {
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "the freed place was never given again");
    }
}

/// Every registration's credential allocates on its own; a password never fits another registration's username;
/// per-user and total quotas answer 486 through the running server.
#[tokio::test]
async fn per_registration_credentials_and_quotas() {
    let (server, a) = server_and_creds(|c| {
        c.turn.user_quota = 2;
        c.turn.total_quota = 3;
    })
    .await;
    let (_sig_b, b) = creds_for(&server, "cam2").await;
    assert_ne!(a.user, b.user);
    let crossed = Creds { user: a.user.clone(), key: long_term_key(&a.user, "switchboard", "x"), turn: a.turn };
    let mut held = Vec::new();
    for (who, c) in [("a", &a), ("a", &a), ("b", &b)] {
        let a = allocate(c).await;
        assert!(a.relay.is_some(), "{who}: {:?}", a.error);
        held.push(a.sock);
    }
    assert_eq!(allocate(&a).await.error, Some(486), "a third allocation for one user");
    assert_eq!(allocate(&b).await.error, Some(486), "a fourth allocation in total");
    assert_eq!(allocate(&crossed).await.error, Some(401));
    let text = scrape(server.addr).await;
    assert_eq!(sample(&text, "switchboard_turn_allocations_active", None), 3.0);
    assert_eq!(sample(&text, "switchboard_turn_allocations_total", None), 3.0);
}

/// The relay port range of the config is where relays are bound, and a full range answers 508.
#[tokio::test]
async fn relay_ports_come_from_the_configured_range() {
    // Two neighbouring ports that are free now.
    let lo = loop {
        let p = std::net::UdpSocket::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        if p < 65_000 && std::net::UdpSocket::bind(("127.0.0.1", p + 1)).is_ok() {
            break p;
        }
    };
    let (_server, c) = server_and_creds(|c| (c.turn.relay_port_min, c.turn.relay_port_max) = (lo, lo + 1)).await;
    let mut ports = Vec::new();
    let mut held = Vec::new();
    for _ in 0..2 {
        let a = allocate(&c).await;
        ports.push(a.relay.unwrap_or_else(|| panic!("{:?}", a.error)).port());
        held.push(a.sock);
    }
    ports.sort();
    assert_eq!(ports, [lo, lo + 1]);
    assert_eq!(allocate(&c).await.error, Some(508), "the range is exhausted");
}

/// The per-allocation bandwidth cap drops what exceeds it, counted in the metrics; relayed bytes are exact.
#[tokio::test]
async fn bandwidth_cap_and_relay_counters_through_a_running_server() {
    const CAP: u64 = 2_000; // bytes per second, and the bucket's size
    let (server, c) = server_and_creds(|c| {
        c.turn.allow_peers = vec!["127.0.0.0/8".parse().unwrap()];
        c.turn.bandwidth = Some(CAP);
    })
    .await;
    let peer = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let Allocated { sock, relay, .. } = allocate(&c).await;
    let relay = relay.unwrap();
    let nonce = nonce_over_udp(&sock, c.turn).await;
    let req = signed(&c, &nonce, method::CHANNEL_BIND, |b| {
        b.u32(attr::CHANNEL_NUMBER, 0x4000 << 16).xor_address(attr::XOR_PEER_ADDRESS, peer.local_addr().unwrap())
    });
    assert_eq!(Message::parse(&udp_round_trip(&sock, c.turn, req).await).unwrap().class(), Class::Success);

    // 20 × 500 payload bytes at once: about CAP bytes pass (plus what refills meanwhile), the rest is dropped.
    let mut frame = vec![0x40, 0x00, 0x01, 0xf4];
    frame.extend([7u8; 500]);
    for _ in 0..20 {
        sock.send_to(&frame, c.turn).await.unwrap();
    }
    let turn = server.turn.as_ref().unwrap();
    let deadline = tokio::time::Instant::now() + WAIT;
    while turn.stats().packets_to_peers + turn.stats().packets_dropped < 20 {
        assert!(tokio::time::Instant::now() < deadline, "not every packet was relayed or dropped: {:?}", turn.stats());
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let stats = turn.stats();
    // The bucket holds CAP bytes (4 packets); what refills while the 20 arrive may add a few on a loaded machine.
    assert!((4..=8).contains(&stats.packets_to_peers), "{stats:?}");
    let mut buf = [0u8; 1024];
    for _ in 0..stats.packets_to_peers {
        let (n, from) = tokio::time::timeout(WAIT, peer.recv_from(&mut buf)).await.unwrap().unwrap();
        assert_eq!((n, from), (500, relay));
    }
    peer.send_to(b"back", relay).await.unwrap();
    let (n, _) = tokio::time::timeout(WAIT, sock.recv_from(&mut buf)).await.unwrap().unwrap();
    assert_eq!(&buf[..n], &[0x40, 0x00, 0x00, 0x04, b'b', b'a', b'c', b'k']);

    let text = scrape(server.addr).await;
    let passed = stats.packets_to_peers as f64;
    assert_eq!(sample(&text, "switchboard_turn_relayed_packets_to_peers_total", None), passed);
    assert_eq!(sample(&text, "switchboard_turn_relayed_bytes_to_peers_total", None), passed * 500.0);
    assert_eq!(sample(&text, "switchboard_turn_dropped_packets_total", None), 20.0 - passed);
    assert_eq!(sample(&text, "switchboard_turn_relayed_packets_to_clients_total", None), 1.0);
    assert_eq!(sample(&text, "switchboard_turn_relayed_bytes_to_clients_total", None), 4.0);
    assert_eq!(sample(&text, "switchboard_turn_allocations_total", None), 1.0);
}

/// `turn.deny-peers` closes a range that is open by default (here a documentation range), and only that range.
#[tokio::test]
async fn configured_deny_peers_are_refused() {
    let (_server, c) = server_and_creds(|c| c.turn.deny_peers = vec!["203.0.113.0/24".parse().unwrap()]).await;
    let Allocated { sock, relay, .. } = allocate(&c).await;
    assert!(relay.is_some());
    let nonce = nonce_over_udp(&sock, c.turn).await;
    for (peer, expected) in [("203.0.113.7:9", Some(403)), ("198.51.100.7:9", None)] {
        let peer: SocketAddr = peer.parse().unwrap();
        let req = signed(&c, &nonce, method::CREATE_PERMISSION, |b| b.xor_address(attr::XOR_PEER_ADDRESS, peer));
        assert_eq!(Message::parse(&udp_round_trip(&sock, c.turn, req).await).unwrap().error_code(), expected, "{peer}");
    }
}

/// An unauthenticated flood from many sources (Allocate without credentials, Binding, junk, ChannelData to a channel
/// nobody bound): only the STUN requests are answered, each with a short fixed-size answer that echoes nothing, no
/// allocation is made, and a real client allocates as before once it is over.
#[tokio::test]
async fn an_unauthenticated_flood_is_answered_small_and_leaves_no_state() {
    const SOURCES: usize = 20;
    const ROUNDS: usize = 100;
    let (server, creds) = server_and_creds(|_| {}).await;
    let held = allocate(&creds).await;
    assert_eq!(held.error, None, "a real allocation before the flood");
    let mut seed = 0x2545_f491_u32;
    let mut junk = move || {
        seed ^= seed << 13;
        seed ^= seed >> 17;
        seed ^= seed << 5;
        let len = 1 + (seed % 300) as usize;
        // Never a STUN message (the first two bits of STUN are 0) nor ChannelData (0x40–0x7F).
        std::iter::once(0x80 | (seed as u8)).chain((1..len).map(|i| (seed >> (i % 24)) as u8)).collect::<Vec<u8>>()
    };
    let binding = || Builder::new(Class::Request, method::BINDING, rand::random()).finish();
    let unbound_channel = [0x40, 0x00, 0x00, 0x04, 1, 2, 3, 4].to_vec();
    let mut socks = Vec::new();
    let (mut bytes_in, mut answered_requests) = (0usize, 0usize);
    for _ in 0..SOURCES {
        socks.push(UdpSocket::bind("127.0.0.1:0").await.unwrap());
    }
    for _ in 0..ROUNDS {
        for sock in &socks {
            for datagram in [allocate_unauth(), junk(), unbound_channel.clone(), binding()] {
                bytes_in += datagram.len();
                sock.send_to(&datagram, creds.turn).await.unwrap();
            }
            answered_requests += 2;
        }
    }
    // Exactly one answer per STUN request, then nothing more: a last Binding's answer arrives after all of them.
    let mut bytes_out = 0;
    let mut buf = vec![0; 2048];
    for sock in &socks {
        let marker = binding();
        sock.send_to(&marker, creds.turn).await.unwrap();
        let mut answers = 0;
        loop {
            let (n, _) = tokio::time::timeout(WAIT, sock.recv_from(&mut buf)).await.expect("answers").unwrap();
            let m = Message::parse(&buf[..n]).expect("every answer is STUN");
            assert!(n <= 100, "a {n}-byte answer to an unauthenticated request");
            bytes_out += n;
            if m.transaction_id() == marker[8..20] {
                break;
            }
            assert!(matches!(m.error_code(), None | Some(401)), "{:?}", m.error_code());
            answers += 1;
        }
        assert_eq!(answers, 2 * ROUNDS, "answers to one source");
    }
    let (ratio, answered) = (bytes_out as f64 / bytes_in as f64, answered_requests);
    eprintln!("flood: {bytes_in} bytes in, {bytes_out} out (×{ratio:.2}), {answered} requests answered");
    assert!(ratio < 1.0, "the flood was amplified ×{ratio:.2}");
    let metrics = scrape(server.addr).await;
    assert_eq!(sample(&metrics, "switchboard_turn_allocations_active", None), 1.0, "only the real allocation");
    let after = allocate(&creds).await;
    assert_eq!(after.error, None, "a real allocation after the flood");
    drop(held);
}

/// The batched data path end to end: a burst from one allocation's client to another allocation on the same server
/// (client a → relay A → relay B → client b, as two relay-only WebRTC peers on one server do). The burst is queued
/// before the server runs (a blocking send on this single-threaded runtime), so the server must take it in batches;
/// equal-sized datagrams leave relay A as GSO sends, relay B may take them as one GRO batch, and every datagram must
/// still reach client b whole, once, and in order, across the size changes that end a GSO run.
#[tokio::test]
async fn a_burst_between_two_allocations_is_relayed_in_batches_whole_and_in_order() {
    const BURST: usize = 96;
    let (server, c) = server_and_creds(|c| c.turn.allow_peers = vec!["127.0.0.0/8".parse().unwrap()]).await;
    let a = allocate(&c).await;
    let b = allocate(&c).await;
    let (relay_a, relay_b) = (a.relay.unwrap(), b.relay.unwrap());
    for (client, towards) in [(&a.sock, relay_b), (&b.sock, relay_a)] {
        let nonce = nonce_over_udp(client, c.turn).await;
        let req = signed(&c, &nonce, method::CHANNEL_BIND, |b| {
            b.u32(attr::CHANNEL_NUMBER, 0x4000 << 16).xor_address(attr::XOR_PEER_ADDRESS, towards)
        });
        assert_eq!(Message::parse(&udp_round_trip(client, c.turn, req).await).unwrap().class(), Class::Success);
    }
    let turn = server.turn.as_ref().unwrap();
    let io = turn.udp_io();
    let load = |c: &std::sync::atomic::AtomicU64| c.load(std::sync::atomic::Ordering::Relaxed);
    let (calls0, received0) = (load(&io.receive_calls), load(&io.datagrams_received));
    let (sends0, sent0) = (load(&io.send_calls), load(&io.datagrams_sent));

    // Datagram i carries i in every byte; most are 100 bytes, every 10th is 50 and every 15th 120 (each ends a run).
    let payload = |i: usize| {
        vec![
            i as u8;
            if i % 10 == 9 {
                50
            } else if i % 15 == 14 {
                120
            } else {
                100
            }
        ]
    };
    let blocking = a.sock.into_std().unwrap();
    blocking.set_nonblocking(false).unwrap();
    for i in 0..BURST {
        let p = payload(i);
        let mut frame = vec![0x40, 0x00];
        frame.extend((p.len() as u16).to_be_bytes());
        frame.extend(&p);
        blocking.send_to(&frame, c.turn).unwrap();
    }

    let mut buf = [0u8; 2048];
    for i in 0..BURST {
        let (n, from) = tokio::time::timeout(WAIT, b.sock.recv_from(&mut buf))
            .await
            .unwrap_or_else(|_| panic!("datagram {i}"))
            .unwrap();
        assert_eq!(from, c.turn);
        let p = payload(i);
        assert_eq!(&buf[..4], &[0x40, 0x00, 0, p.len() as u8], "header of datagram {i}");
        assert_eq!(&buf[4..n], &p[..], "datagram {i}");
    }
    let stats = turn.stats();
    assert_eq!((stats.packets_to_peers, stats.packets_to_clients, stats.packets_dropped), (96, 96, 0));
    // At least the burst (plus both relay legs) went through the data path, in fewer calls than datagrams.
    let (calls, received) = (load(&io.receive_calls) - calls0, load(&io.datagrams_received) - received0);
    let (sends, sent) = (load(&io.send_calls) - sends0, load(&io.datagrams_sent) - sent0);
    assert_eq!(received, 2 * BURST as u64, "client a → listener and relay A → relay B, nothing else");
    assert!(calls <= received / 4, "{calls} receive calls for {received} datagrams");
    assert_eq!(sent, 2 * BURST as u64, "relay A → relay B, listener → client b");
    assert!(sends <= sent / 4, "{sends} send calls for {sent} datagrams (GSO runs)");
    let text = scrape(server.addr).await;
    assert!(sample(&text, "switchboard_turn_udp_datagrams_received_total", None) >= received as f64);
    assert!(sample(&text, "switchboard_turn_udp_receive_calls_total", None) >= calls as f64);
    assert!(sample(&text, "switchboard_turn_udp_send_calls_total", None) >= sends as f64);
    assert!(sample(&text, "switchboard_turn_udp_datagrams_sent_total", None) >= sent as f64);
}

/// TURN over TCP in both directions at once: a client's ChannelData frames arriving many to a read (handled as one
/// batch), and a peer's burst reaching the client as frames the writer coalesces into few writes; every frame whole,
/// padded to 4 bytes, in order.
#[tokio::test]
async fn tcp_frames_in_bursts_both_ways_keep_their_framing_and_order() {
    const BURST: usize = 60;
    let (server, c) = server_and_creds(|c| c.turn.allow_peers = vec!["127.0.0.0/8".parse().unwrap()]).await;
    let peer = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let mut s = TcpStream::connect(c.turn).await.unwrap();
    let nonce =
        Message::parse(&tcp_round_trip(&mut s, allocate_unauth()).await).unwrap().text(attr::NONCE).unwrap().to_owned();
    let resp = tcp_round_trip(&mut s, signed(&c, &nonce, method::ALLOCATE, udp_transport)).await;
    let relay = Message::parse(&resp).unwrap().xor_address(attr::XOR_RELAYED_ADDRESS).unwrap();
    let req = signed(&c, &nonce, method::CHANNEL_BIND, |b| {
        b.u32(attr::CHANNEL_NUMBER, 0x4000 << 16).xor_address(attr::XOR_PEER_ADDRESS, peer.local_addr().unwrap())
    });
    assert_eq!(Message::parse(&tcp_round_trip(&mut s, req).await).unwrap().class(), Class::Success);
    // Payload i: i in every byte, 1 + i % 7 bytes long, so most frames carry padding.
    let payload = |i: usize| vec![i as u8; 1 + i % 7];

    // Client → peer: every frame in one write.
    let mut frames = Vec::new();
    for i in 0..BURST {
        let p = payload(i);
        frames.extend([0x40, 0x00, 0, p.len() as u8]);
        frames.extend(&p);
        frames.resize(frames.len().next_multiple_of(4), 0);
    }
    s.write_all(&frames).await.unwrap();
    let mut buf = [0u8; 64];
    for i in 0..BURST {
        let (n, from) = tokio::time::timeout(WAIT, peer.recv_from(&mut buf)).await.expect("datagram").unwrap();
        assert_eq!((&buf[..n], from), (&payload(i)[..], relay), "datagram {i}");
    }

    // Peer → client: the burst is queued before the server runs (sends that never yield this runtime's thread).
    for i in 0..BURST {
        peer.try_send_to(&payload(i), relay).unwrap();
    }
    for i in 0..BURST {
        let p = payload(i);
        let mut frame = vec![0u8; 4 + p.len().next_multiple_of(4)];
        tokio::time::timeout(WAIT, s.read_exact(&mut frame)).await.expect("frame").unwrap();
        assert_eq!(&frame[..4], &[0x40, 0x00, 0, p.len() as u8], "header of frame {i}");
        assert_eq!(&frame[4..4 + p.len()], &p[..], "frame {i}");
    }
    let stats = server.turn.as_ref().unwrap().stats();
    assert_eq!((stats.packets_to_peers, stats.packets_to_clients, stats.packets_dropped), (60, 60, 0));
}

/// RFC 8489 §6.3.1.1 through a running server: a request carrying a comprehension-required attribute the server does
/// not know gets 420 listing it, over UDP and TCP, signed for an authenticated Allocate, and changes nothing.
#[tokio::test]
async fn unknown_comprehension_required_attributes_get_420_from_a_running_server() {
    let (server, c) = server_and_creds(|_| {}).await;
    let listed = |resp: &[u8]| {
        let m = Message::parse(resp).unwrap();
        (m.class(), m.error_code(), m.get(attr::UNKNOWN_ATTRIBUTES).map(<[u8]>::to_vec))
    };
    let binding =
        Builder::new(Class::Request, method::BINDING, rand::random()).attr(0x0042, b"?").fingerprint().finish();
    let sock = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    assert_eq!(
        listed(&udp_round_trip(&sock, c.turn, binding.clone()).await),
        (Class::Error, Some(420), Some(vec![0, 0x42]))
    );
    let mut tcp = TcpStream::connect(c.turn).await.unwrap();
    assert_eq!(listed(&tcp_round_trip(&mut tcp, binding).await), (Class::Error, Some(420), Some(vec![0, 0x42])));
    // A comprehension-optional one (0x8000 and up) is ignored.
    let optional = Builder::new(Class::Request, method::BINDING, rand::random()).attr(0x8042, b"?").finish();
    assert_eq!(listed(&udp_round_trip(&sock, c.turn, optional).await).0, Class::Success);

    let nonce = nonce_over_udp(&sock, c.turn).await;
    let req = signed(&c, &nonce, method::ALLOCATE, |b| udp_transport(b).attr(0x0042, b"??").attr(0x7FFE, b"!"));
    let resp = udp_round_trip(&sock, c.turn, req).await;
    assert_eq!(listed(&resp), (Class::Error, Some(420), Some(vec![0, 0x42, 0x7F, 0xFE])));
    assert_eq!(Message::parse(&resp).unwrap().verify(&c.key), switchboard_turn::stun::Integrity::Valid);
    assert_eq!(server.turn.as_ref().unwrap().allocations(), 0, "the refused Allocate allocated nothing");
}
