//! TURN over TLS (`turns:`, RFC 8656 §3.1) through a running server, with a client built on our codec over rustls:
//! the URL in register accepts, the certificate shared with wss, and one engine under one set of rules for every
//! transport (credentials, quotas, deny-list, ChannelData padding, the per-address cap, the unallocated timeout).

mod common;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use common::*;
use serde_json::{json, Value};
use switchboard_server::config::CredentialMode;
use switchboard_turn::stun::{attr, long_term_key, method, Builder, Class, Message};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpStream, UdpSocket};
use tokio_rustls::client::TlsStream;

struct Setup {
    server: TestServer,
    turns: SocketAddr,
    /// Trusts exactly the server's certificate.
    tls: Arc<rustls::ClientConfig>,
    _dir: TempDir,
}

struct TempDir(std::path::PathBuf);

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A server whose wss and `turns:` listeners share a certificate (for `localhost` and 127.0.0.1) written to files.
async fn start(tweak: impl FnOnce(&mut switchboard_server::Config)) -> Setup {
    let cert = rcgen::generate_simple_self_signed(vec!["localhost".to_owned(), "127.0.0.1".to_owned()]).unwrap();
    let dir = std::env::temp_dir().join(format!("switchboard-turns-{}-{}", std::process::id(), rand::random::<u32>()));
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("cert.pem"), cert.cert.pem()).unwrap();
    std::fs::write(dir.join("key.pem"), cert.key_pair.serialize_pem()).unwrap();
    let (cert_path, key_path) = (dir.join("cert.pem"), dir.join("key.pem"));
    let server = TestServer::start_with(|c| {
        c.turn.credentials = CredentialMode::Ephemeral;
        c.turn.port = None;
        c.tls.listen = "127.0.0.1:0".parse().unwrap();
        c.tls.cert = Some(cert_path);
        c.tls.key = Some(key_path);
        c.turn.tls_listen = Some("127.0.0.1:0".parse().unwrap());
        tweak(c);
    })
    .await;
    let turns = server.turn.as_ref().unwrap().tls_addr().expect("turns listener bound");
    Setup { server, turns, tls: trusting(cert.cert.der().clone()), _dir: TempDir(dir) }
}

/// A client config that trusts exactly `cert`.
fn trusting(cert: rustls_pki_types::CertificateDer<'static>) -> Arc<rustls::ClientConfig> {
    let mut roots = rustls::RootCertStore::empty();
    roots.add(cert).unwrap();
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    Arc::new(config)
}

impl Setup {
    async fn connect(&self) -> TlsStream<TcpStream> {
        let tcp = TcpStream::connect(self.turns).await.unwrap();
        let name = rustls_pki_types::ServerName::try_from("127.0.0.1").unwrap();
        let connector = tokio_rustls::TlsConnector::from(self.tls.clone());
        tokio::time::timeout(WAIT, connector.connect(name, tcp)).await.expect("handshake in time").unwrap()
    }

    async fn register(&self, room: &str) -> (Client, Value) {
        let mut sig = self.server.client().await;
        let accept = sig.request(json!({"class":"request","method":"register","room_id":room})).await;
        (sig, accept)
    }
}

struct Creds {
    user: String,
    key: [u8; 16],
}

fn creds(ice: &Value) -> Creds {
    let user = ice["ufrag"].as_str().unwrap().to_owned();
    let key = long_term_key(&user, "switchboard", ice["pwd"].as_str().unwrap());
    Creds { user, key }
}

/// Writes one request and reads one STUN answer off the stream.
async fn round_trip<S: AsyncRead + AsyncWrite + Unpin>(s: &mut S, req: Vec<u8>) -> Message<'static> {
    s.write_all(&req).await.unwrap();
    s.flush().await.unwrap();
    let frame = read_frame(s).await;
    let leaked: &'static [u8] = Box::leak(frame.into_boxed_slice());
    Message::parse(leaked).unwrap()
}

/// One STUN message or ChannelData frame (with its padding) off the stream.
async fn read_frame<S: AsyncRead + Unpin>(s: &mut S) -> Vec<u8> {
    let mut head = [0u8; 4];
    tokio::time::timeout(WAIT, s.read_exact(&mut head)).await.expect("a frame in time").unwrap();
    let len = u16::from_be_bytes([head[2], head[3]]) as usize;
    let rest = if head[0] < 0x40 { 16 + len } else { (len + 3) & !3 };
    let mut body = vec![0; rest];
    s.read_exact(&mut body).await.unwrap();
    [head.to_vec(), body].concat()
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

/// 401 for the nonce, then the signed Allocate; returns the nonce and the answer.
async fn allocate<S: AsyncRead + AsyncWrite + Unpin>(s: &mut S, c: &Creds) -> (String, Message<'static>) {
    let nonce = round_trip(s, allocate_unauth()).await.text(attr::NONCE).unwrap().to_owned();
    let answer =
        round_trip(s, signed(c, &nonce, method::ALLOCATE, |b| b.attr(attr::REQUESTED_TRANSPORT, &[17, 0, 0, 0]))).await;
    (nonce, answer)
}

async fn wait_for(what: &str, mut done: impl FnMut() -> bool) {
    let deadline = tokio::time::Instant::now() + WAIT;
    while !done() {
        assert!(tokio::time::Instant::now() < deadline, "{what}: not within {WAIT:?}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

#[tokio::test]
async fn turns_urls_come_first_and_the_last_entry_stays_udp() {
    let s = start(|_| {}).await;
    let (_sig, accept) = s.register("cam").await;
    let urls: Vec<&str> =
        accept["ice_servers"].as_array().unwrap().iter().map(|e| e["url"].as_str().unwrap()).collect();
    let udp = s.server.turn.as_ref().unwrap().local_addr();
    assert_eq!(
        urls,
        [
            format!("turns:127.0.0.1:{}?transport=tcp", s.turns.port()),
            format!("turn:127.0.0.1:{}?transport=udp", udp.port())
        ]
    );
    assert!(accept["ice_servers"][0]["ufrag"] == accept["ice_servers"][1]["ufrag"], "one credential for both");
}

/// Allocate, permissions, a channel and data both ways over TLS; ChannelData towards a stream client is padded;
/// the deny-list and the quota apply as over UDP, and closing the TLS connection frees the allocation at once.
#[tokio::test]
async fn an_allocation_over_tls_relays_under_the_same_rules_as_udp() {
    let s = start(|c| {
        c.turn.allow_peers = vec!["127.0.0.0/8".parse().unwrap()];
        c.turn.user_quota = 1;
    })
    .await;
    let (_sig, accept) = s.register("cam").await;
    let c = creds(&accept["ice_servers"][0]);
    let turn = s.server.turn.as_ref().unwrap();

    let mut tls = s.connect().await;
    let binding = round_trip(&mut tls, Builder::new(Class::Request, method::BINDING, [1; 12]).finish()).await;
    let local = tls.get_ref().0.local_addr().unwrap();
    assert_eq!(binding.xor_address(attr::XOR_MAPPED_ADDRESS), Some(local), "the mapped address is the TCP source");
    let (nonce, answer) = allocate(&mut tls, &c).await;
    assert_eq!(answer.class(), Class::Success, "{:?}", answer.error_code());
    let relay = answer.xor_address(attr::XOR_RELAYED_ADDRESS).unwrap();
    assert_eq!(turn.allocations(), 1);

    // The quota counts the TLS allocation: the same user over UDP is refused.
    let udp = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let udp_addr = turn.local_addr();
    let mut buf = vec![0; 2048];
    udp.send_to(&allocate_unauth(), udp_addr).await.unwrap();
    let n = tokio::time::timeout(WAIT, udp.recv(&mut buf)).await.unwrap().unwrap();
    let udp_nonce = Message::parse(&buf[..n]).unwrap().text(attr::NONCE).unwrap().to_owned();
    let req = signed(&c, &udp_nonce, method::ALLOCATE, |b| b.attr(attr::REQUESTED_TRANSPORT, &[17, 0, 0, 0]));
    udp.send_to(&req, udp_addr).await.unwrap();
    let n = tokio::time::timeout(WAIT, udp.recv(&mut buf)).await.unwrap().unwrap();
    assert_eq!(Message::parse(&buf[..n]).unwrap().error_code(), Some(486), "user quota across transports");

    // The deny-list: a private network stays refused although loopback is allowed.
    let denied: SocketAddr = "10.0.0.1:9".parse().unwrap();
    let refused = round_trip(
        &mut tls,
        signed(&c, &nonce, method::CREATE_PERMISSION, |b| b.xor_address(attr::XOR_PEER_ADDRESS, denied)),
    )
    .await;
    assert_eq!(refused.error_code(), Some(403));

    // A channel to a loopback peer; 5-byte payloads come back padded to 8 on the stream.
    let peer = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let peer_addr = peer.local_addr().unwrap();
    let bind = signed(&c, &nonce, method::CHANNEL_BIND, |b| {
        b.attr(attr::CHANNEL_NUMBER, &[0x40, 0x01, 0, 0]).xor_address(attr::XOR_PEER_ADDRESS, peer_addr)
    });
    assert_eq!(round_trip(&mut tls, bind).await.class(), Class::Success);
    tls.write_all(&[0x40, 0x01, 0x00, 0x05, b'h', b'e', b'l', b'l', b'o', 0, 0, 0]).await.unwrap();
    tls.flush().await.unwrap();
    let (n, from) = tokio::time::timeout(WAIT, peer.recv_from(&mut buf)).await.unwrap().unwrap();
    assert_eq!((&buf[..n], from), (&b"hello"[..], relay));
    peer.send_to(b"world", relay).await.unwrap();
    assert_eq!(read_frame(&mut tls).await, [0x40, 0x01, 0x00, 0x05, b'w', b'o', b'r', b'l', b'd', 0, 0, 0]);

    drop(tls);
    wait_for("the allocation freed after the TLS close", || turn.allocations() == 0).await;
    let stats = turn.stats();
    assert_eq!((stats.packets_to_peers, stats.packets_to_clients), (1, 1));
}

/// One per-address budget for TCP and TLS; a connection that never finishes its handshake is closed at the
/// unallocated timeout; a client that does not trust the certificate gets no allocation.
#[tokio::test]
async fn tls_connections_share_the_stream_limits() {
    const TIMEOUT: Duration = Duration::from_millis(600);
    let s = start(|c| {
        c.turn.tcp_connections_per_ip = 2;
        c.turn.tcp_unallocated_timeout = TIMEOUT;
    })
    .await;
    let turn = s.server.turn.as_ref().unwrap();

    // A silent connection (no ClientHello) is closed at the timeout, and counted.
    let opened = tokio::time::Instant::now();
    let mut silent = TcpStream::connect(s.turns).await.unwrap();
    let mut plain = TcpStream::connect(turn.local_addr()).await.unwrap();
    let binding = || Builder::new(Class::Request, method::BINDING, rand::random()).finish();
    assert_eq!(round_trip(&mut plain, binding()).await.class(), Class::Success);
    // Two held (one TCP, one TLS): a third TLS connection is closed at accept.
    let mut third = TcpStream::connect(s.turns).await.unwrap();
    let mut byte = [0u8; 1];
    let r = tokio::time::timeout(WAIT, third.read(&mut byte)).await.expect("closed at accept");
    assert!(matches!(r, Ok(0) | Err(_)), "{r:?}");
    let r = tokio::time::timeout(TIMEOUT + WAIT, silent.read(&mut byte)).await.expect("closed at the timeout");
    assert!(matches!(r, Ok(0) | Err(_)), "{r:?}");
    assert!(opened.elapsed() >= TIMEOUT, "closed after {:?}", opened.elapsed());
    // The TCP one was accepted a moment after the silent one, so its timeout may still be running.
    wait_for("the plain TCP connection's close at the timeout", || turn.tcp_closed_by_limits().1 == 2).await;
    let text = scrape(s.server.addr).await;
    assert_eq!(sample(&text, "switchboard_turn_tcp_refused_total", None), 1.0);
    // The TCP one (only a Binding, no allocation) reached the same timeout: both are counted.
    assert_eq!(sample(&text, "switchboard_turn_tcp_unallocated_closed_total", None), 2.0);

    // A client that trusts another certificate fails the handshake.
    let other = rcgen::generate_simple_self_signed(vec!["127.0.0.1".to_owned()]).unwrap();
    let untrusting = trusting(other.cert.der().clone());
    let tcp = TcpStream::connect(s.turns).await.unwrap();
    let name = rustls_pki_types::ServerName::try_from("127.0.0.1").unwrap();
    let r = tokio_rustls::TlsConnector::from(untrusting).connect(name, tcp).await;
    assert!(r.is_err(), "a handshake with an untrusted certificate succeeded");
    // A trusting client gets in once the failed one's place is freed (the server sees that close asynchronously).
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let tcp = TcpStream::connect(s.turns).await.unwrap();
        let name = rustls_pki_types::ServerName::try_from("127.0.0.1").unwrap();
        if let Ok(mut tls) = tokio_rustls::TlsConnector::from(s.tls.clone()).connect(name, tcp).await {
            assert_eq!(round_trip(&mut tls, binding()).await.class(), Class::Success);
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "no place was freed after the failed handshake");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn turns_without_a_certificate_is_a_config_error() {
    let mut c = switchboard_server::Config::default();
    c.turn.tls_listen = Some("127.0.0.1:0".parse().unwrap());
    let e = c.validate().unwrap_err().to_string();
    assert!(e.contains("turn.tls-listen") && e.contains("certificate"), "{e}");
    c.tls.dev_self_signed = true;
    c.turn.enabled = false;
    let e = c.validate().unwrap_err().to_string();
    assert!(e.contains("turn.tls-listen") && e.contains("turn.enabled"), "{e}");
}
