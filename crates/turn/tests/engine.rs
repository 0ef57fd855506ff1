//! The TURN engine in virtual time: a scripted client against `Engine`, no sockets, no clock.

use std::borrow::Cow;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use switchboard_turn::credentials::{ephemeral_password, ephemeral_username};
use switchboard_turn::stun::{attr, long_term_key, method, Builder, Class, Message};
use switchboard_turn::*;

const REALM: &str = "switchboard";
const SECRET: &[u8] = b"test-secret";
const UNIX0: u64 = 1_700_000_000;

struct World {
    engine: Engine,
    t0: Instant,
    now: Instant,
    next_port: u16,
    /// The address the "driver" binds relays on (IPv4 unless a test says otherwise).
    relay_ip: std::net::IpAddr,
}

struct TestClient {
    who: Client,
    user: String,
    key: [u8; 16],
    nonce: String,
    sha256: bool,
}

fn addr(s: &str) -> SocketAddr {
    s.parse().unwrap()
}

impl World {
    fn new(tweak: impl FnOnce(&mut EngineConfig)) -> World {
        let policy = PeerPolicy { allow: vec!["198.51.100.0/24".parse().unwrap()], ..Default::default() };
        let mut config = EngineConfig::new(REALM, Credentials::Ephemeral { secret: SECRET.to_vec() }, policy);
        tweak(&mut config);
        let t0 = Instant::now();
        World {
            engine: Engine::new(config, t0, UNIX0, [7; 32]),
            t0,
            now: t0,
            next_port: 50_000,
            relay_ip: [203, 0, 113, 1].into(),
        }
    }

    fn advance(&mut self, d: Duration) {
        self.now += d;
        self.engine.handle_timeout(self.now);
    }

    fn unix(&self) -> u64 {
        UNIX0 + (self.now - self.t0).as_secs()
    }

    fn client(&self, port: u16, transport: Transport, valid_for: u64) -> TestClient {
        let user = ephemeral_username(self.unix() + valid_for, "room");
        let key = long_term_key(&user, REALM, &ephemeral_password(SECRET, &user));
        TestClient {
            who: Client { transport, addr: SocketAddr::from(([192, 0, 2, 1], port)) },
            user,
            key,
            nonce: String::new(),
            sha256: false,
        }
    }

    /// Sends a request and returns the parsed answer (owned bytes).
    fn request(&mut self, c: &TestClient, b: Builder) -> Vec<u8> {
        let raw = b.finish();
        let out = self.engine.handle_client(self.now, c.who, &raw);
        match out {
            Some(Transmit::ToClient { to, data }) => {
                assert_eq!(to, c.who);
                data.into_owned()
            }
            None => self.finish_bind(c),
            other => panic!("unexpected {other:?}"),
        }
    }

    /// Plays the driver for a BindRelay event.
    fn finish_bind(&mut self, c: &TestClient) -> Vec<u8> {
        match self.engine.poll_event() {
            Some(Event::BindRelay { client, .. }) => {
                assert_eq!(client, c.who);
                self.next_port += 1;
                let relay = SocketAddr::new(self.relay_ip, self.next_port);
                match self.engine.relay_bound(self.now, client, Ok(relay)) {
                    Some(Transmit::ToClient { data, .. }) => data.into_owned(),
                    other => panic!("{other:?}"),
                }
            }
            other => panic!("no answer and no bind request: {other:?}"),
        }
    }

    fn signed(&self, c: &TestClient, m: u16) -> Builder {
        Builder::new(Class::Request, m, rand::random())
            .attr(attr::USERNAME, c.user.as_bytes())
            .attr(attr::REALM, REALM.as_bytes())
            .attr(attr::NONCE, c.nonce.as_bytes())
    }

    fn seal(c: &TestClient, b: Builder) -> Builder {
        let b = if c.sha256 { b.integrity(&c.key).integrity_sha256(&c.key) } else { b.integrity(&c.key) };
        b.fingerprint()
    }

    /// 401 dance then a successful Allocate; returns the relay address.
    fn allocate(&mut self, c: &mut TestClient) -> SocketAddr {
        let first = Builder::new(Class::Request, method::ALLOCATE, rand::random())
            .attr(attr::REQUESTED_TRANSPORT, &[17, 0, 0, 0]);
        let resp = self.request(c, first);
        let m = Message::parse(&resp).unwrap();
        assert_eq!(m.error_code(), Some(401));
        assert!(resp.len() < 120, "unauthenticated answers stay small ({} bytes)", resp.len());
        assert_eq!(m.text(attr::REALM), Some(REALM));
        c.nonce = m.text(attr::NONCE).unwrap().to_owned();
        let resp = self.allocate_again(c);
        let m = Message::parse(&resp).unwrap();
        assert_eq!(m.class(), Class::Success, "allocate failed: {:?}", m.error_code());
        assert_eq!(m.verify(&c.key), switchboard_turn::stun::Integrity::Valid);
        assert_eq!(m.xor_address(attr::XOR_MAPPED_ADDRESS), Some(c.who.addr));
        m.xor_address(attr::XOR_RELAYED_ADDRESS).unwrap()
    }

    fn allocate_again(&mut self, c: &TestClient) -> Vec<u8> {
        let b = self.signed(c, method::ALLOCATE).attr(attr::REQUESTED_TRANSPORT, &[17, 0, 0, 0]);
        self.request(c, Self::seal(c, b))
    }

    fn code(&mut self, c: &TestClient, b: Builder) -> Option<u16> {
        let resp = self.request(c, Self::seal(c, b));
        let m = Message::parse(&resp).unwrap();
        m.error_code()
    }

    fn permit(&mut self, c: &TestClient, peer: SocketAddr) -> Option<u16> {
        let b = self.signed(c, method::CREATE_PERMISSION).xor_address(attr::XOR_PEER_ADDRESS, peer);
        self.code(c, b)
    }

    fn bind_channel(&mut self, c: &TestClient, ch: u16, peer: SocketAddr) -> Option<u16> {
        let b = self
            .signed(c, method::CHANNEL_BIND)
            .u32(attr::CHANNEL_NUMBER, u32::from(ch) << 16)
            .xor_address(attr::XOR_PEER_ADDRESS, peer);
        self.code(c, b)
    }

    fn refresh(&mut self, c: &TestClient, lifetime: u32) -> Vec<u8> {
        let b = self.signed(c, method::REFRESH).u32(attr::LIFETIME, lifetime);
        self.request(c, Self::seal(c, b))
    }

    fn send(&mut self, c: &TestClient, peer: SocketAddr, data: &[u8]) -> Option<(SocketAddr, SocketAddr, Vec<u8>)> {
        let raw = Builder::new(Class::Indication, method::SEND, rand::random())
            .xor_address(attr::XOR_PEER_ADDRESS, peer)
            .attr(attr::DATA, data)
            .finish();
        match self.engine.handle_client(self.now, c.who, &raw) {
            Some(Transmit::ToPeer { relay, peer, data }) => Some((relay, peer, data.to_vec())),
            None => None,
            other => panic!("{other:?}"),
        }
    }

    fn peer_sends(&mut self, relay: SocketAddr, peer: SocketAddr, payload: &[u8]) -> Option<(Client, Vec<u8>)> {
        let mut buf = vec![0; CHANNEL_HEADROOM + payload.len() + 3];
        buf[CHANNEL_HEADROOM..CHANNEL_HEADROOM + payload.len()].copy_from_slice(payload);
        match self.engine.handle_peer(self.now, relay, peer, &mut buf, payload.len()) {
            Some(Transmit::ToClient { to, data }) => Some((to, data.into_owned())),
            None => None,
            other => panic!("{other:?}"),
        }
    }
}

const PEER: &str = "198.51.100.7:4000";

#[test]
fn binding_answers_with_the_mapped_address() {
    let mut w = World::new(|_| {});
    let c = w.client(1000, Transport::Udp, 600);
    let resp = w.request(&c, Builder::new(Class::Request, method::BINDING, [1; 12]));
    let m = Message::parse(&resp).unwrap();
    assert_eq!(m.class(), Class::Success);
    assert_eq!(m.xor_address(attr::XOR_MAPPED_ADDRESS), Some(c.who.addr));
}

/// FINGERPRINT is the last attribute of `resp`, and checks out (parse verifies it).
fn ends_with_fingerprint(resp: &[u8]) -> bool {
    Message::parse(resp).is_ok()
        && resp.len() >= 28
        && resp[resp.len() - 8..resp.len() - 6] == attr::FINGERPRINT.to_be_bytes()
}

/// ZLMediaKit's ICE agent drops (and then tears down its socket on) any answer without FINGERPRINT, even to a
/// request that carried none. Every kind of answer is covered: success, challenge, plain error, signed error.
#[test]
fn every_answer_carries_a_fingerprint_whether_or_not_the_request_had_one() {
    let mut w = World::new(|_| {});
    let mut c = w.client(1000, Transport::Udp, 600);
    let bare = w.request(&c, Builder::new(Class::Request, method::BINDING, [1; 12]));
    assert!(ends_with_fingerprint(&bare), "binding success to a request without FINGERPRINT: {bare:02x?}");
    let fp = w.request(&c, Builder::new(Class::Request, method::BINDING, [2; 12]).fingerprint());
    assert!(ends_with_fingerprint(&fp));
    let challenge = w.request(
        &c,
        Builder::new(Class::Request, method::ALLOCATE, [3; 12]).attr(attr::REQUESTED_TRANSPORT, &[17, 0, 0, 0]),
    );
    assert_eq!(Message::parse(&challenge).unwrap().error_code(), Some(401));
    assert!(ends_with_fingerprint(&challenge), "401 challenge: {challenge:02x?}");
    let unknown_method = w.request(&c, Builder::new(Class::Request, 0x0ff, [4; 12]));
    assert_eq!(Message::parse(&unknown_method).unwrap().error_code(), Some(400));
    assert!(ends_with_fingerprint(&unknown_method), "400 to an unknown method: {unknown_method:02x?}");
    w.allocate(&mut c);
    let b = w.signed(&c, method::CREATE_PERMISSION).xor_address(attr::XOR_PEER_ADDRESS, addr("127.0.0.1:9"));
    let denied = w.request(&c, World::seal(&c, b));
    assert_eq!(Message::parse(&denied).unwrap().error_code(), Some(403));
    assert!(ends_with_fingerprint(&denied));
}

/// What ZLMediaKit's ICE agent does as a TURN client (its `webrtc/IceTransport.cpp`), step by step:
/// - its CreatePermission and ChannelBind go out first with USERNAME and an integrity keyed by the bare password,
///   no REALM or NONCE, and it gives up on any answer but a 401 carrying both;
/// - it checks a signed success answer with the long-term key only when the answer carries REALM and NONCE;
/// - it never sends Refresh, only CreatePermission again every four minutes.
#[test]
fn a_zlmediakit_style_turn_client_gets_challenged_signed_answers_and_a_living_allocation() {
    let mut w = World::new(|_| {});
    let mut c = w.client(1000, Transport::Udp, 7200);
    let relay = w.allocate(&mut c);
    let password = ephemeral_password(SECRET, &c.user);

    // The Allocate success already echoes REALM and NONCE next to its integrity (a second client, same dance).
    let mut c2 = w.client(1001, Transport::Udp, 7200);
    c2.nonce = c.nonce.clone();
    let resp = w.allocate_again(&c2);
    let m = Message::parse(&resp).unwrap();
    assert_eq!(
        (m.class(), m.text(attr::REALM), m.text(attr::NONCE)),
        (Class::Success, Some(REALM), Some(c.nonce.as_str()))
    );
    assert_eq!(m.verify(&c2.key), switchboard_turn::stun::Integrity::Valid);
    let relay2 = m.xor_address(attr::XOR_RELAYED_ADDRESS).unwrap();

    // Short-term first try: 401 with REALM and NONCE (not 400), and not counted as a failed login.
    for method in [method::CREATE_PERMISSION, method::CHANNEL_BIND] {
        let b = Builder::new(Class::Request, method, rand::random())
            .attr(attr::USERNAME, c.user.as_bytes())
            .u32(attr::CHANNEL_NUMBER, 0x4000 << 16)
            .xor_address(attr::XOR_PEER_ADDRESS, addr(PEER))
            .integrity(password.as_bytes())
            .fingerprint();
        let resp = w.request(&c, b);
        let m = Message::parse(&resp).unwrap();
        assert_eq!(m.error_code(), Some(401), "method {method:#x}");
        assert_eq!(m.text(attr::REALM), Some(REALM));
        assert!(m.text(attr::NONCE).is_some_and(|n| !n.is_empty()));
    }
    assert_eq!(w.engine.stats().auth_failures, 0);

    // The long-term retry succeeds, and the success carries REALM, NONCE, then integrity under the long-term key.
    for b in [
        w.signed(&c, method::CREATE_PERMISSION).xor_address(attr::XOR_PEER_ADDRESS, addr(PEER)),
        w.signed(&c, method::CHANNEL_BIND)
            .u32(attr::CHANNEL_NUMBER, 0x4000 << 16)
            .xor_address(attr::XOR_PEER_ADDRESS, addr(PEER)),
    ] {
        let resp = w.request(&c, World::seal(&c, b));
        let m = Message::parse(&resp).unwrap();
        assert_eq!(m.class(), Class::Success, "{:?}", m.error_code());
        assert_eq!((m.text(attr::REALM), m.text(attr::NONCE)), (Some(REALM), Some(c.nonce.as_str())));
        assert_eq!(m.verify(&c.key), switchboard_turn::stun::Integrity::Valid);
        assert!(ends_with_fingerprint(&resp));
    }

    // No Refresh ever, a CreatePermission every four minutes: the allocation outlives its 10-minute lifetime.
    for _ in 0..10 {
        w.advance(Duration::from_secs(240));
        assert_eq!(w.permit(&c, addr(PEER)), None);
    }
    assert_eq!(w.engine.allocation_count(), 1, "40 minutes on, kept alive by its permissions");
    assert_eq!(w.engine.poll_event(), Some(Event::ReleaseRelay { relay: relay2 }), "c2 never refreshed");
    assert!(w.send(&c, addr(PEER), b"x").is_some());
    // Silence: it goes one default lifetime after the last permission.
    w.advance(Duration::from_secs(599));
    assert_eq!(w.engine.allocation_count(), 1);
    w.advance(Duration::from_secs(2));
    assert_eq!(w.engine.allocation_count(), 0);
    assert_eq!(w.engine.poll_event(), Some(Event::ReleaseRelay { relay }));
}

#[test]
fn allocate_permission_send_and_data_indication() {
    let mut w = World::new(|_| {});
    let mut c = w.client(1000, Transport::Udp, 600);
    let relay = w.allocate(&mut c);
    // No permission yet: dropped both ways.
    assert!(w.send(&c, addr(PEER), b"hi").is_none());
    assert!(w.peer_sends(relay, addr(PEER), b"yo").is_none());
    assert_eq!(w.permit(&c, addr(PEER)), None);
    assert_eq!(w.send(&c, addr(PEER), b"hi"), Some((relay, addr(PEER), b"hi".to_vec())));
    let (to, data) = w.peer_sends(relay, addr(PEER), b"yo").unwrap();
    assert_eq!(to, c.who);
    let m = Message::parse(&data).unwrap();
    assert_eq!((m.class(), m.method()), (Class::Indication, method::DATA));
    assert_eq!(m.get(attr::DATA), Some(&b"yo"[..]));
    assert_eq!(m.xor_address(attr::XOR_PEER_ADDRESS), Some(addr(PEER)));
    // Permissions are per IP: another port of the same peer is fine.
    assert!(w.send(&c, addr("198.51.100.7:4001"), b"x").is_some());
    let s = w.engine.stats();
    assert_eq!((s.allocations_total, s.packets_to_peers, s.packets_to_clients), (1, 2, 1));
}

#[test]
fn channels_carry_data_both_ways_and_streams_pad_to_four_bytes() {
    for transport in [Transport::Udp, Transport::Tcp, Transport::Tls] {
        let mut w = World::new(|_| {});
        let mut c = w.client(1000, transport, 600);
        let relay = w.allocate(&mut c);
        assert_eq!(w.bind_channel(&c, 0x4001, addr(PEER)), None);
        let out = w.engine.handle_client(w.now, c.who, &[0x40, 0x01, 0x00, 0x03, b'a', b'b', b'c', 0]);
        assert_eq!(out, Some(Transmit::ToPeer { relay, peer: addr(PEER), data: b"abc" }));
        let (_, data) = w.peer_sends(relay, addr(PEER), b"xyz").unwrap();
        let expected: &[u8] = match transport {
            Transport::Udp => &[0x40, 0x01, 0x00, 0x03, b'x', b'y', b'z'],
            Transport::Tcp | Transport::Tls => &[0x40, 0x01, 0x00, 0x03, b'x', b'y', b'z', 0],
        };
        assert_eq!(data, expected);
        // Unknown channel: dropped.
        assert!(w.engine.handle_client(w.now, c.who, &[0x40, 0x02, 0x00, 0x01, b'a']).is_none());
        // Re-binding the same channel to another peer, or the peer to another channel, is refused.
        assert_eq!(w.bind_channel(&c, 0x4001, addr("198.51.100.8:1")), Some(400));
        assert_eq!(w.bind_channel(&c, 0x4002, addr(PEER)), Some(400));
        assert_eq!(w.bind_channel(&c, 0x3FFF, addr("198.51.100.9:1")), Some(400), "channel numbers start at 0x4000");
        assert_eq!(w.bind_channel(&c, 0x8000, addr("198.51.100.9:1")), Some(400), "and end at 0x7FFF");
        assert_eq!(w.bind_channel(&c, 0x4001, addr(PEER)), None, "refreshing a binding is fine");
    }
}

/// Every built-in denial and embedding form (`policy::examples`) gets 403 for CreatePermission and ChannelBind on an
/// allocation of its family, a peer of the other family gets 443 (RFC 6156), and public controls are permitted and
/// then really relayed to, so the refusals are not a blanket "no".
#[test]
fn denied_peers_are_refused_with_403_and_the_other_family_with_443() {
    use switchboard_turn::policy::examples::{ALLOWED_V4, ALLOWED_V6, DENIED_V4, DENIED_V6};
    for v6 in [false, true] {
        let own = ["203.0.113.1", "2001:db8::9"];
        let mut w = World::new(|c| c.policy.relay_ips = own.iter().map(|ip| ip.parse().unwrap()).collect());
        if v6 {
            w.relay_ip = own[1].parse().unwrap();
        }
        let mut c = w.client(1000, Transport::Udp, 600);
        let relay = w.allocate(&mut c);
        let (denied, allowed, other) = if v6 {
            ([DENIED_V6, &own[1..]].concat(), ALLOWED_V6, ALLOWED_V4)
        } else {
            ([DENIED_V4, &own[..1]].concat(), ALLOWED_V4, ALLOWED_V6)
        };
        for (i, ip) in denied.iter().enumerate() {
            let peer = SocketAddr::new(ip.parse().unwrap(), 9);
            assert_eq!(w.permit(&c, peer), Some(403), "{peer}");
            assert_eq!(w.bind_channel(&c, 0x4000 + i as u16, peer), Some(403), "{peer}");
            assert!(w.send(&c, peer, b"x").is_none(), "{peer}");
            assert!(w.peer_sends(relay, peer, b"x").is_none(), "{peer}");
            // The control: the same peer opened by the allow list gets its permission and data flows both ways, so
            // the refusals above are the policy's doing (the unspecified address stays closed whatever is allowed).
            let net = format!("{ip}/{}", if v6 { 128 } else { 32 }).parse().unwrap();
            let mut open = World::new(|c| {
                c.policy.relay_ips = own.iter().map(|ip| ip.parse().unwrap()).collect();
                c.policy.allow.push(net);
            });
            open.relay_ip = w.relay_ip;
            let mut oc = open.client(1000, Transport::Udp, 600);
            let open_relay = open.allocate(&mut oc);
            if peer.ip().is_unspecified() {
                assert_eq!(open.permit(&oc, peer), Some(403), "{peer}");
                continue;
            }
            assert_eq!(open.permit(&oc, peer), None, "{peer} opened by the allow list");
            assert_eq!(open.send(&oc, peer, b"x"), Some((open_relay, peer, b"x".to_vec())), "{peer}");
            assert!(open.peer_sends(open_relay, peer, b"y").is_some(), "{peer}");
        }
        for ip in other {
            let peer = SocketAddr::new(ip.parse().unwrap(), 9);
            assert_eq!(w.permit(&c, peer), Some(443), "{peer} on a {} relay", relay.ip());
            assert_eq!(w.bind_channel(&c, 0x4500, peer), Some(443), "{peer}");
        }
        for (i, ip) in allowed.iter().enumerate() {
            let peer = SocketAddr::new(ip.parse().unwrap(), 9);
            assert_eq!(w.permit(&c, peer), None, "{peer} must be permitted");
            assert_eq!(w.bind_channel(&c, 0x4600 + i as u16, peer), None, "{peer}");
            assert_eq!(w.send(&c, peer, b"x"), Some((relay, peer, b"x".to_vec())), "{peer}");
        }
        assert_eq!(w.engine.stats().permissions_denied, 2 * denied.len() as u64);
    }
}

#[test]
fn loopback_can_be_allowed_explicitly() {
    let mut w = World::new(|c| c.policy.allow.push("127.0.0.0/8".parse().unwrap()));
    let mut c = w.client(1000, Transport::Udp, 600);
    w.allocate(&mut c);
    assert_eq!(w.permit(&c, addr("127.0.0.1:9")), None);
    assert_eq!(w.permit(&c, addr("0.0.0.0:9")), Some(403), "unspecified stays denied");
    assert_eq!(w.permit(&c, addr("10.0.0.1:9")), Some(403));
}

#[test]
fn allocation_expires_unless_refreshed_and_lifetime_zero_deletes() {
    let mut w = World::new(|_| {});
    let mut c = w.client(1000, Transport::Udp, 7200);
    let relay = w.allocate(&mut c);
    w.permit(&c, addr(PEER));
    // Refresh at 9 minutes keeps it past the original 10.
    w.advance(Duration::from_secs(540));
    let m = w.refresh(&c, 600);
    assert_eq!(Message::parse(&m).unwrap().u32(attr::LIFETIME), Some(600));
    w.advance(Duration::from_secs(120));
    assert_eq!(w.engine.allocation_count(), 1);
    assert_eq!(w.engine.poll_event(), None);
    // No refresh: gone 10 minutes after the last one, and the driver is told to close the socket.
    w.advance(Duration::from_secs(481));
    assert_eq!(w.engine.allocation_count(), 0);
    assert_eq!(w.engine.poll_event(), Some(Event::ReleaseRelay { relay }));
    assert_eq!(Message::parse(&w.refresh(&c, 600)).unwrap().error_code(), Some(437));

    let relay2 = w.allocate(&mut c);
    let resp = w.refresh(&c, 0);
    let m = Message::parse(&resp).unwrap();
    assert_eq!((m.class(), m.u32(attr::LIFETIME)), (Class::Success, Some(0)));
    assert_eq!(w.engine.allocation_count(), 0);
    assert_eq!(w.engine.poll_event(), Some(Event::ReleaseRelay { relay: relay2 }));
}

#[test]
fn requested_lifetime_is_clamped() {
    let mut w = World::new(|_| {});
    let mut c = w.client(1000, Transport::Udp, 7200);
    w.allocate(&mut c);
    assert_eq!(Message::parse(&w.refresh(&c, 99_999)).unwrap().u32(attr::LIFETIME), Some(3600));
    assert_eq!(Message::parse(&w.refresh(&c, 5)).unwrap().u32(attr::LIFETIME), Some(600));
}

#[test]
fn permissions_and_channels_expire() {
    let mut w = World::new(|_| {});
    let mut c = w.client(1000, Transport::Udp, 7200);
    let relay = w.allocate(&mut c);
    w.permit(&c, addr(PEER));
    w.advance(Duration::from_secs(299));
    assert!(w.send(&c, addr(PEER), b"x").is_some());
    w.advance(Duration::from_secs(2));
    assert!(w.send(&c, addr(PEER), b"x").is_none(), "permission expired after 5 minutes");
    assert!(w.peer_sends(relay, addr(PEER), b"x").is_none());

    assert_eq!(w.bind_channel(&c, 0x4000, addr(PEER)), None);
    w.refresh(&c, 3600);
    w.advance(Duration::from_secs(301));
    assert!(w.engine.handle_client(w.now, c.who, &[0x40, 0x00, 0x00, 0x01, b'a']).is_none(), "permission gone");
    w.permit(&c, addr(PEER));
    assert!(w.engine.handle_client(w.now, c.who, &[0x40, 0x00, 0x00, 0x01, b'a']).is_some(), "channel still bound");
    w.advance(Duration::from_secs(300));
    w.permit(&c, addr(PEER));
    assert!(
        w.engine.handle_client(w.now, c.who, &[0x40, 0x00, 0x00, 0x01, b'a']).is_none(),
        "channel expired after 10 minutes"
    );
}

#[test]
fn stale_nonce_gets_438_with_a_fresh_nonce() {
    let mut w = World::new(|c| c.nonce_lifetime = Duration::from_secs(60));
    let mut c = w.client(1000, Transport::Udp, 7200);
    w.allocate(&mut c);
    w.advance(Duration::from_secs(61));
    let resp = w.refresh(&c, 600);
    let m = Message::parse(&resp).unwrap();
    assert_eq!(m.error_code(), Some(438));
    let fresh = m.text(attr::NONCE).unwrap().to_owned();
    assert_ne!(fresh, c.nonce);
    c.nonce = fresh;
    assert_eq!(Message::parse(&w.refresh(&c, 600)).unwrap().class(), Class::Success);
}

#[test]
fn expired_or_wrong_credentials_are_refused() {
    let mut w = World::new(|_| {});
    let mut c = w.client(1000, Transport::Udp, 10);
    let first = Builder::new(Class::Request, method::ALLOCATE, [3; 12]).attr(attr::REQUESTED_TRANSPORT, &[17, 0, 0, 0]);
    let resp = w.request(&c, first);
    c.nonce = Message::parse(&resp).unwrap().text(attr::NONCE).unwrap().to_owned();
    w.advance(Duration::from_secs(11));
    let resp = w.allocate_again(&c);
    assert_eq!(Message::parse(&resp).unwrap().error_code(), Some(401), "expired ephemeral username");

    let mut wrong = w.client(1001, Transport::Udp, 600);
    wrong.nonce = c.nonce.clone();
    wrong.key = long_term_key(&wrong.user, REALM, "not-the-password");
    let resp = w.allocate_again(&wrong);
    assert_eq!(Message::parse(&resp).unwrap().error_code(), Some(401));
    assert_eq!(w.engine.allocation_count(), 0);
    assert!(w.engine.stats().auth_failures >= 2);
}

/// ZLMediaKit's agent answers every 401 by resending at once with the nonce it saw first, so a credential past its
/// expiry would keep it looping at round-trip pace. A client hears "wrong credentials" a few times per window; its
/// further failing requests get 441 (counted), which ends any client's attempt, and 401 again in the next window.
#[test]
fn wrong_credentials_are_challenged_a_few_times_per_window_then_refused_with_441() {
    use switchboard_turn::failure_limit::{ANSWERS, WINDOW};
    let mut w = World::new(|_| {});
    let mut c = w.client(1000, Transport::Udp, 5);
    let first =
        Builder::new(Class::Request, method::ALLOCATE, rand::random()).attr(attr::REQUESTED_TRANSPORT, &[17, 0, 0, 0]);
    c.nonce = Message::parse(&w.request(&c, first)).unwrap().text(attr::NONCE).unwrap().to_owned();
    w.advance(Duration::from_secs(6)); // the ephemeral credential has expired

    let (mut answered, mut wrong) = (0, 0);
    for _ in 0..50 {
        let b = w.signed(&c, method::ALLOCATE).attr(attr::REQUESTED_TRANSPORT, &[17, 0, 0, 0]);
        let raw = World::seal(&c, b).finish();
        match w.engine.handle_client(w.now, c.who, &raw) {
            Some(Transmit::ToClient { data, .. }) => match Message::parse(&data).unwrap().error_code() {
                Some(401) => answered += 1,
                Some(441) => wrong += 1,
                other => panic!("{other:?}"),
            },
            other => panic!("{other:?}"),
        }
    }
    assert_eq!((answered, wrong), (ANSWERS, 50 - ANSWERS), "a few 401s, then 441");
    let s = w.engine.stats();
    assert_eq!((s.auth_failures, s.auth_failures_unchallenged), (50, 50 - u64::from(ANSWERS)));

    // Requests without integrity are still challenged, and so is another client meanwhile.
    let bare =
        Builder::new(Class::Request, method::ALLOCATE, rand::random()).attr(attr::REQUESTED_TRANSPORT, &[17, 0, 0, 0]);
    assert_eq!(Message::parse(&w.request(&c, bare)).unwrap().error_code(), Some(401));
    let mut other = w.client(1001, Transport::Udp, 600);
    assert!(w.allocate(&mut other).port() > 0);

    // Next window: answered again.
    w.advance(WINDOW);
    let b = w.signed(&c, method::ALLOCATE).attr(attr::REQUESTED_TRANSPORT, &[17, 0, 0, 0]);
    assert_eq!(Message::parse(&w.request(&c, World::seal(&c, b))).unwrap().error_code(), Some(401));
}

#[test]
fn sha256_integrity_is_accepted_and_answered_in_kind() {
    let mut w = World::new(|_| {});
    let mut c = w.client(1000, Transport::Tcp, 600);
    c.sha256 = true;
    w.allocate(&mut c);
    let resp = w.refresh(&c, 600);
    let m = Message::parse(&resp).unwrap();
    assert_eq!(m.class(), Class::Success);
    assert!(m.uses_sha256());
}

#[test]
fn quotas_per_user_and_in_total() {
    let mut w = World::new(|c| {
        c.user_quota = 2;
        c.total_quota = 3;
    });
    let base = w.client(1, Transport::Udp, 600);
    for port in 1..=2 {
        let mut c = w.client(port, Transport::Udp, 600);
        c.user = base.user.clone();
        c.key = base.key;
        w.allocate(&mut c);
    }
    let mut third = w.client(3, Transport::Udp, 600);
    third.user = base.user.clone();
    third.key = base.key;
    let first = Builder::new(Class::Request, method::ALLOCATE, [4; 12]).attr(attr::REQUESTED_TRANSPORT, &[17, 0, 0, 0]);
    third.nonce = Message::parse(&w.request(&third, first)).unwrap().text(attr::NONCE).unwrap().to_owned();
    assert_eq!(Message::parse(&w.allocate_again(&third)).unwrap().error_code(), Some(486), "per-user quota");

    let mut other = w.client(4, Transport::Udp, 600);
    other.user = ephemeral_username(w.unix() + 600, "other-room");
    other.key = long_term_key(&other.user, REALM, &ephemeral_password(SECRET, &other.user));
    w.allocate(&mut other);
    let mut fourth = w.client(5, Transport::Udp, 600);
    fourth.user = ephemeral_username(w.unix() + 600, "third-room");
    fourth.key = long_term_key(&fourth.user, REALM, &ephemeral_password(SECRET, &fourth.user));
    fourth.nonce = other.nonce.clone();
    assert_eq!(Message::parse(&w.allocate_again(&fourth)).unwrap().error_code(), Some(486), "total quota");
}

#[test]
fn bandwidth_cap_drops_the_excess_and_refills_over_time() {
    let mut w = World::new(|c| c.bandwidth = Some(1000));
    let mut c = w.client(1000, Transport::Udp, 600);
    w.allocate(&mut c);
    w.permit(&c, addr(PEER));
    let chunk = [0u8; 400];
    assert!(w.send(&c, addr(PEER), &chunk).is_some());
    assert!(w.send(&c, addr(PEER), &chunk).is_some());
    assert!(w.send(&c, addr(PEER), &chunk).is_none(), "over 1000 bytes in the same instant");
    w.now += Duration::from_millis(500);
    assert!(w.send(&c, addr(PEER), &chunk).is_some(), "half a second refills 500 bytes");
}

#[test]
fn second_allocate_from_the_same_client_is_a_mismatch_but_a_retransmission_is_answered_again() {
    let mut w = World::new(|_| {});
    let mut c = w.client(1000, Transport::Udp, 600);
    let relay = w.allocate(&mut c);
    let resp = w.allocate_again(&c);
    assert_eq!(Message::parse(&resp).unwrap().error_code(), Some(437));
    // Retransmission: same transaction id as the successful Allocate.
    let txid = [9; 12];
    let mut c2 = w.client(2000, Transport::Udp, 600);
    c2.nonce = c.nonce.clone();
    let b = Builder::new(Class::Request, method::ALLOCATE, txid)
        .attr(attr::USERNAME, c2.user.as_bytes())
        .attr(attr::REALM, REALM.as_bytes())
        .attr(attr::NONCE, c2.nonce.as_bytes())
        .attr(attr::REQUESTED_TRANSPORT, &[17, 0, 0, 0]);
    let raw = World::seal(&c2, b).finish();
    let first = w.request(&c2, Builder::new(Class::Request, method::BINDING, [0; 12]));
    drop(first);
    let a = match w.engine.handle_client(w.now, c2.who, &raw) {
        None => w.finish_bind(&c2),
        other => panic!("{other:?}"),
    };
    let b = match w.engine.handle_client(w.now, c2.who, &raw) {
        Some(Transmit::ToClient { data: Cow::Owned(d), .. }) => d,
        other => panic!("{other:?}"),
    };
    assert_eq!(
        Message::parse(&a).unwrap().xor_address(attr::XOR_RELAYED_ADDRESS),
        Message::parse(&b).unwrap().xor_address(attr::XOR_RELAYED_ADDRESS)
    );
    assert_ne!(Message::parse(&a).unwrap().xor_address(attr::XOR_RELAYED_ADDRESS), Some(relay));
}

#[test]
fn unsupported_transport_unknown_attributes_and_relay_failure() {
    let mut w = World::new(|_| {});
    let mut c = w.client(1000, Transport::Udp, 600);
    let first = Builder::new(Class::Request, method::ALLOCATE, [5; 12]).attr(attr::REQUESTED_TRANSPORT, &[17, 0, 0, 0]);
    c.nonce = Message::parse(&w.request(&c, first)).unwrap().text(attr::NONCE).unwrap().to_owned();
    let tcp = w.signed(&c, method::ALLOCATE).attr(attr::REQUESTED_TRANSPORT, &[6, 0, 0, 0]);
    assert_eq!(w.code(&c, tcp), Some(442));
    let unknown = w.signed(&c, method::ALLOCATE).attr(attr::REQUESTED_TRANSPORT, &[17, 0, 0, 0]).attr(0x0042, b"??");
    let resp = w.request(&c, World::seal(&c, unknown));
    let m = Message::parse(&resp).unwrap();
    assert_eq!(m.error_code(), Some(420));
    assert_eq!(m.get(attr::UNKNOWN_ATTRIBUTES), Some(&[0x00, 0x42][..]));
    let missing = w.signed(&c, method::ALLOCATE);
    assert_eq!(w.code(&c, missing), Some(400));
    // The driver could not open a relay socket: 508.
    let b = w.signed(&c, method::ALLOCATE).attr(attr::REQUESTED_TRANSPORT, &[17, 0, 0, 0]);
    let raw = World::seal(&c, b).finish();
    assert!(w.engine.handle_client(w.now, c.who, &raw).is_none());
    assert!(matches!(w.engine.poll_event(), Some(Event::BindRelay { .. })));
    let Some(Transmit::ToClient { data, .. }) = w.engine.relay_bound(w.now, c.who, Err(())) else { panic!() };
    assert_eq!(Message::parse(&data).unwrap().error_code(), Some(508));
}

/// A comprehension-required attribute the engine does not know gets 420 listing it, for every request method
/// (RFC 8489 §6.3.1.1): Binding unsigned; the others after their credential check, signed.
#[test]
fn unknown_comprehension_required_attributes_get_420_for_every_request() {
    let mut w = World::new(|_| {});
    let mut c = w.client(1000, Transport::Udp, 600);
    let listed = |resp: &[u8]| {
        let m = Message::parse(resp).unwrap();
        (m.error_code(), m.get(attr::UNKNOWN_ATTRIBUTES).map(<[u8]>::to_vec))
    };
    let bind = Builder::new(Class::Request, method::BINDING, rand::random())
        .attr(0x0042, b"??")
        .attr(0x0043, b"!")
        .attr(0x0042, b"?");
    let resp = w.request(&c, bind.fingerprint());
    assert_eq!(listed(&resp), (Some(420), Some(vec![0x00, 0x42, 0x00, 0x43])), "deduplicated, sorted");
    // Comprehension-optional ones (0x8000 and up) are ignored.
    let optional = Builder::new(Class::Request, method::BINDING, rand::random()).attr(0x8042, b"??");
    assert_eq!(Message::parse(&w.request(&c, optional)).unwrap().class(), Class::Success);

    w.allocate(&mut c);
    let unauthenticated = Builder::new(Class::Request, method::CREATE_PERMISSION, rand::random()).attr(0x0042, b"??");
    assert_eq!(listed(&w.request(&c, unauthenticated)).0, Some(401), "credentials first");
    for m in [method::REFRESH, method::CREATE_PERMISSION, method::CHANNEL_BIND, method::ALLOCATE] {
        let b = w.signed(&c, m).xor_address(attr::XOR_PEER_ADDRESS, addr(PEER)).attr(0x0042, b"??");
        let resp = w.request(&c, World::seal(&c, b));
        assert_eq!(listed(&resp), (Some(420), Some(vec![0x00, 0x42])), "method {m:#x}");
        assert_eq!(Message::parse(&resp).unwrap().verify(&c.key), switchboard_turn::stun::Integrity::Valid);
    }
    assert_eq!(w.engine.allocation_count(), 1, "nothing was changed by the refused requests");
}

#[test]
fn garbage_never_panics() {
    use rand::{Rng, SeedableRng};
    let mut w = World::new(|_| {});
    let mut c = w.client(1000, Transport::Udp, 600);
    let relay = w.allocate(&mut c);
    let mut rng = rand::rngs::StdRng::seed_from_u64(12345);
    for len in 0..300usize {
        let buf: Vec<u8> = (0..len).map(|_| rng.random()).collect();
        let _ = w.engine.handle_client(w.now, c.who, &buf);
        let mut b = buf.clone();
        b.extend_from_slice(&[0; CHANNEL_HEADROOM + 3]);
        let _ = w.engine.handle_peer(w.now, relay, addr(PEER), &mut b, len);
    }
}

#[test]
fn even_port_with_reservation_hands_out_a_token_for_the_next_port() {
    let mut w = World::new(|_| {});
    let mut c = w.client(1000, Transport::Udp, 600);
    let first = Builder::new(Class::Request, method::ALLOCATE, [6; 12]).attr(attr::REQUESTED_TRANSPORT, &[17, 0, 0, 0]);
    c.nonce = Message::parse(&w.request(&c, first)).unwrap().text(attr::NONCE).unwrap().to_owned();
    let b =
        w.signed(&c, method::ALLOCATE).attr(attr::REQUESTED_TRANSPORT, &[17, 0, 0, 0]).attr(attr::EVEN_PORT, &[0x80]);
    let raw = World::seal(&c, b).finish();
    assert!(w.engine.handle_client(w.now, c.who, &raw).is_none());
    let Some(Event::BindRelay { port: PortRequest::Even { reserve_next: true }, .. }) = w.engine.poll_event() else {
        panic!("the driver is asked for an even port and its neighbour")
    };
    let relay = addr("203.0.113.1:50002");
    let Some(Transmit::ToClient { data, .. }) = w.engine.relay_bound(w.now, c.who, Ok(relay)) else { panic!() };
    let token = Message::parse(&data).unwrap().get(attr::RESERVATION_TOKEN).expect("token").to_vec();

    // A second client claims the reserved port with the token.
    let mut d = w.client(1001, Transport::Udp, 600);
    d.nonce = c.nonce.clone();
    let b = w
        .signed(&d, method::ALLOCATE)
        .attr(attr::REQUESTED_TRANSPORT, &[17, 0, 0, 0])
        .attr(attr::RESERVATION_TOKEN, &token);
    let raw = World::seal(&d, b).finish();
    assert!(w.engine.handle_client(w.now, d.who, &raw).is_none());
    assert_eq!(
        w.engine.poll_event(),
        Some(Event::BindRelay {
            client: d.who,
            family_of: d.who.addr.ip(),
            port: PortRequest::Reserved(addr("203.0.113.1:50003"))
        })
    );
    // A token works once; an unclaimed reservation is released after 30 s.
    let mut e = w.client(1002, Transport::Udp, 600);
    e.nonce = c.nonce.clone();
    let b = w
        .signed(&e, method::ALLOCATE)
        .attr(attr::REQUESTED_TRANSPORT, &[17, 0, 0, 0])
        .attr(attr::RESERVATION_TOKEN, &token);
    assert_eq!(w.code(&e, b), Some(508));
    let b =
        w.signed(&e, method::ALLOCATE).attr(attr::REQUESTED_TRANSPORT, &[17, 0, 0, 0]).attr(attr::EVEN_PORT, &[0x80]);
    let raw = World::seal(&e, b).finish();
    assert!(w.engine.handle_client(w.now, e.who, &raw).is_none());
    w.engine.poll_event();
    w.engine.relay_bound(w.now, e.who, Ok(addr("203.0.113.1:50010")));
    w.advance(Duration::from_secs(31));
    assert_eq!(w.engine.poll_event(), Some(Event::ReleaseReserved { addr: addr("203.0.113.1:50011") }));
}
