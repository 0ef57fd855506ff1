//! The TURN allocation engine (`switchboard_turn::Engine`) driven by sequences of datagrams from several clients and
//! peers in virtual time: raw bytes, and well-formed requests (signed with the right key, or not) that reach the
//! states raw bytes cannot (allocations, permissions, channels), interleaved with relay sockets opening or failing,
//! clients going away and the clock jumping.
//!
//! Checked after every step, against what the harness itself saw succeed:
//! - data reaches a peer only from the sender's own relay, only to an address the policy allows, and only after a
//!   CreatePermission or ChannelBind of that client for that address was answered with success;
//! - data from a peer goes to the client that owns the relay it arrived on; answers go to the requester;
//! - every response ends with a valid FINGERPRINT; an answer to an unauthenticated request stays small (no
//!   amplification);
//! - allocations stay within the per-user and the total quota.
#![no_main]

use std::collections::{HashMap, HashSet, VecDeque};
use std::net::{IpAddr, Ipv6Addr, SocketAddr};
use std::time::{Duration, Instant};

use arbitrary::Arbitrary;
use libfuzzer_sys::fuzz_target;
use switchboard_turn::credentials::{ephemeral_password, ephemeral_username};
use switchboard_turn::stun::{attr, long_term_key, method, Builder, Class, Message};
use switchboard_turn::{
    Client, Credentials, Engine, EngineConfig, Event, PeerPolicy, Transmit, Transport, CHANNEL_HEADROOM,
};

const REALM: &str = "fuzz";
const SECRET: &[u8] = b"fuzz-secret";
const UNIX0: u64 = 1_800_000_000;
const CLIENTS: usize = 6;
const RELAY_V4: [u8; 4] = [203, 0, 113, 1];
const RELAY_V6: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, 1);
const USER_QUOTA: usize = 2;
const TOTAL_QUOTA: usize = 4;
/// The largest answer an unauthenticated request may get, whatever its size.
const SMALL_ANSWER: usize = 128;

#[derive(Arbitrary, Debug)]
enum Op {
    Raw { client: u8, bytes: Vec<u8> },
    /// A request as a client builds it; a signed one that is challenged (401, 438) is sent again with the new nonce,
    /// as clients do. An Allocate's relay socket opens, or fails to when `relay_fails`.
    Request {
        client: u8,
        kind: Kind,
        signed: bool,
        peer: Peer,
        channel: u16,
        lifetime: u32,
        relay_fails: bool,
        extra: Vec<(u16, Vec<u8>)>,
    },
    Send { client: u8, peer: Peer, data: Vec<u8> },
    ChannelData { client: u8, channel: u16, declared: Option<u16>, data: Vec<u8> },
    FromPeer { relay: u8, peer: Peer, data: Vec<u8> },
    Advance { secs: u16 },
    Tick,
    Gone { client: u8 },
}

#[derive(Arbitrary, Debug, Clone, Copy)]
enum Kind {
    Binding,
    Allocate,
    Refresh,
    CreatePermission,
    ChannelBind,
}

#[derive(Arbitrary, Debug, Clone, Copy)]
enum Peer {
    /// One of [`PEERS`]: public-looking, denied, embedded-IPv4 and the server's own relay addresses.
    Known(u8),
    V4([u8; 4], u16),
    V6([u8; 16], u16),
}

const PEERS: &[&str] = &[
    "198.51.100.7:4000",
    "198.51.100.8:4000",
    "[2001:db8::7]:4000",
    "127.0.0.1:80",
    "10.0.0.1:80",
    "0.0.0.0:80",
    "[::ffff:127.0.0.1]:80",
    "[::127.0.0.1]:80",
    "[2002:7f00:1::]:80",
    "[64:ff9b:1::7f00:1]:80",
    "203.0.113.1:50001",
    "[::1]:80",
];

impl Peer {
    fn addr(self) -> SocketAddr {
        match self {
            Peer::Known(i) => PEERS[usize::from(i) % PEERS.len()].parse().unwrap(),
            Peer::V4(ip, port) => SocketAddr::from((ip, port)),
            Peer::V6(ip, port) => SocketAddr::from((ip, port)),
        }
    }
}

/// An oracle independent of the policy code: addresses that lead into the server's own networks, directly or
/// embedded in IPv6 (mapped, compatible, 6to4, NAT64 local use), and the relay addresses themselves.
fn surely_denied(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(a) => a.is_loopback() || a.is_private() || a.octets()[0] == 0 || a.octets() == RELAY_V4,
        IpAddr::V6(a) => {
            let (s, o) = (a.segments(), a.octets());
            a.is_loopback()
                || a == RELAY_V6
                || a.to_ipv4().is_some_and(|v4| surely_denied(v4.into()))
                || (s[0] == 0x2002 && surely_denied(IpAddr::from([o[2], o[3], o[4], o[5]])))
                || s[..3] == [0x64, 0xff9b, 1]
        }
    }
}

struct Harness {
    engine: Engine,
    policy: PeerPolicy,
    now: Instant,
    clients: Vec<(Client, String, [u8; 16])>,
    nonces: Vec<String>,
    /// Allocations the harness saw succeed: client → relay.
    relays: HashMap<usize, SocketAddr>,
    /// Peer IPs each client was granted (a success answer to its CreatePermission or ChannelBind).
    granted: Vec<HashSet<IpAddr>>,
    binds: VecDeque<(Client, IpAddr)>,
    next_port: u16,
    /// Requests in flight whose answer grants a peer, by transaction id.
    grants_asked: HashMap<[u8; 12], IpAddr>,
    sent: u64,
    relay_fails: bool,
    last_error: Option<u16>,
}

fuzz_target!(|ops: Vec<Op>| {
    let mut h = Harness::new();
    for op in ops.into_iter().take(64) {
        h.step(op);
        h.check_quotas();
    }
});

impl Harness {
    fn new() -> Harness {
        let policy = PeerPolicy { relay_ips: vec![RELAY_V4.into(), RELAY_V6.into()], ..Default::default() };
        let mut config = EngineConfig::new(REALM, Credentials::Ephemeral { secret: SECRET.to_vec() }, policy.clone());
        config.user_quota = USER_QUOTA;
        config.total_quota = TOTAL_QUOTA;
        config.bandwidth = Some(64 * 1024);
        let now = Instant::now();
        let clients = (0..CLIENTS)
            .map(|i| {
                // Clients 0–2 share a username (the per-user quota); client 5's credential has expired.
                let valid_until = if i == 5 { UNIX0 - 1 } else { UNIX0 + 3600 };
                let user = ephemeral_username(valid_until, if i < 3 { "cam" } else { &["a", "b", "c"][i - 3] });
                let key = long_term_key(&user, REALM, &ephemeral_password(SECRET, &user));
                let transport = if i % 2 == 0 { Transport::Udp } else { Transport::Tcp };
                let addr = if i == 4 {
                    SocketAddr::from(([0x2001, 0xdb8, 0, 0, 0, 0, 0, 0x99], 6000))
                } else {
                    SocketAddr::from(([192, 0, 2, 10 + i as u8], 6000))
                };
                (Client { transport, addr }, user, key)
            })
            .collect();
        Harness {
            engine: Engine::new(config, now, UNIX0, [9; 32]),
            policy,
            now,
            clients,
            nonces: vec![String::new(); CLIENTS],
            relays: HashMap::new(),
            granted: vec![HashSet::new(); CLIENTS],
            binds: VecDeque::new(),
            next_port: 50_000,
            grants_asked: HashMap::new(),
            sent: 0,
            relay_fails: false,
            last_error: None,
        }
    }

    fn step(&mut self, op: Op) {
        match op {
            Op::Raw { client, bytes } => self.from_client(usize::from(client) % CLIENTS, &bytes),
            Op::Request { client, kind, signed, peer, channel, lifetime, relay_fails, extra } => {
                let i = usize::from(client) % CLIENTS;
                self.relay_fails = relay_fails;
                let nonce = self.nonces[i].clone();
                let answer = self.request(i, kind, signed, peer, channel, lifetime, &extra);
                let challenged = answer.is_some_and(|code| code == 401 || code == 438);
                if signed && challenged && self.nonces[i] != nonce {
                    self.request(i, kind, signed, peer, channel, lifetime, &extra);
                }
                self.relay_fails = false;
            }
            Op::Send { client, peer, data } => {
                let raw = Builder::new(Class::Indication, method::SEND, self.txid())
                    .xor_address(attr::XOR_PEER_ADDRESS, peer.addr())
                    .attr(attr::DATA, &data)
                    .finish();
                self.from_client(usize::from(client) % CLIENTS, &raw);
            }
            Op::ChannelData { client, channel, declared, data } => {
                let mut raw = channel.to_be_bytes().to_vec();
                raw.extend_from_slice(&declared.unwrap_or(data.len() as u16).to_be_bytes());
                raw.extend_from_slice(&data);
                self.from_client(usize::from(client) % CLIENTS, &raw);
            }
            Op::FromPeer { relay, peer, data } => {
                let relay = match self.relays.values().nth(usize::from(relay) % self.relays.len().max(1)) {
                    Some(r) => *r,
                    None => SocketAddr::from((RELAY_V4, 50_001)),
                };
                let owner = self.relays.iter().find(|(_, r)| **r == relay).map(|(c, _)| self.clients[*c].0);
                let (peer, len) = (peer.addr(), data.len().min(1200));
                let mut buf = vec![0; CHANNEL_HEADROOM + len + 3];
                buf[CHANNEL_HEADROOM..CHANNEL_HEADROOM + len].copy_from_slice(&data[..len]);
                match self.engine.handle_peer(self.now, relay, peer, &mut buf, len) {
                    None => {}
                    Some(Transmit::ToClient { to, .. }) => {
                        assert_eq!(Some(to), owner, "data from a peer of relay {relay} went to {to:?}");
                        let i = self.index(to);
                        assert!(self.granted[i].contains(&peer.ip()), "{peer} reached {to:?} without a permission");
                    }
                    Some(other) => panic!("a peer packet became {other:?}"),
                }
            }
            Op::Advance { secs } => {
                self.now += Duration::from_secs(u64::from(secs));
                self.tick();
            }
            Op::Tick => self.tick(),
            Op::Gone { client } => {
                let i = usize::from(client) % CLIENTS;
                self.engine.client_gone(self.clients[i].0);
                self.relays.remove(&i);
                self.drain_events();
            }
        }
    }

    /// Transaction ids from a counter: the same input always makes the same run.
    fn txid(&mut self) -> [u8; 12] {
        self.sent += 1;
        let mut t = [0; 12];
        t[4..].copy_from_slice(&self.sent.to_be_bytes());
        t
    }

    fn tick(&mut self) {
        self.engine.handle_timeout(self.now);
        self.drain_events();
    }

    /// Sends one request built from the op; returns the error code of the answer, if it was an error.
    #[allow(clippy::too_many_arguments)]
    fn request(
        &mut self,
        i: usize,
        kind: Kind,
        signed: bool,
        peer: Peer,
        channel: u16,
        lifetime: u32,
        extra: &[(u16, Vec<u8>)],
    ) -> Option<u16> {
        let txid = self.txid();
        let m = match kind {
            Kind::Binding => method::BINDING,
            Kind::Allocate => method::ALLOCATE,
            Kind::Refresh => method::REFRESH,
            Kind::CreatePermission => method::CREATE_PERMISSION,
            Kind::ChannelBind => method::CHANNEL_BIND,
        };
        let mut b = Builder::new(Class::Request, m, txid);
        match kind {
            Kind::Allocate => b = b.attr(attr::REQUESTED_TRANSPORT, &[17, 0, 0, 0]),
            Kind::Refresh => b = b.u32(attr::LIFETIME, lifetime),
            Kind::CreatePermission => b = b.xor_address(attr::XOR_PEER_ADDRESS, peer.addr()),
            Kind::ChannelBind => {
                b = b
                    .u32(attr::CHANNEL_NUMBER, u32::from(channel) << 16)
                    .xor_address(attr::XOR_PEER_ADDRESS, peer.addr())
            }
            Kind::Binding => {}
        }
        for (t, v) in extra.iter().take(4) {
            b = b.attr(*t, &v[..v.len().min(64)]);
        }
        if matches!(kind, Kind::CreatePermission | Kind::ChannelBind) {
            self.grants_asked.insert(txid, peer.addr().ip());
        }
        let raw = if signed {
            let (_, user, key) = &self.clients[i];
            b.attr(attr::USERNAME, user.as_bytes())
                .attr(attr::REALM, REALM.as_bytes())
                .attr(attr::NONCE, self.nonces[i].as_bytes())
                .integrity(key)
                .fingerprint()
                .finish()
        } else {
            b.finish()
        };
        self.last_error = None;
        self.from_client(i, &raw);
        self.last_error
    }

    fn drain_events(&mut self) {
        while let Some(e) = self.engine.poll_event() {
            match e {
                Event::BindRelay { client, family_of, .. } => self.binds.push_back((client, family_of)),
                Event::ReleaseRelay { relay } => self.relays.retain(|_, r| *r != relay),
                Event::ReleaseReserved { .. } => {}
            }
        }
    }

    fn index(&self, client: Client) -> usize {
        self.clients.iter().position(|(c, _, _)| *c == client).expect("a client of the harness")
    }

    fn from_client(&mut self, i: usize, raw: &[u8]) {
        let who = self.clients[i].0;
        let request = Message::parse(raw).ok().filter(|m| m.class() == Class::Request);
        let authenticated = request.as_ref().is_some_and(|m| m.has_integrity());
        let out = self.engine.handle_client(self.now, who, raw).map(|t| match t {
            Transmit::ToClient { to, data } => Err((to, data.into_owned())),
            Transmit::ToPeer { relay, peer, data } => Ok((relay, peer, data.len())),
        });
        match out {
            None => {}
            Some(Ok((relay, peer, _))) => {
                assert_eq!(self.relays.get(&i), Some(&relay), "client {i} sent from relay {relay} it does not own");
                assert!(self.policy.allows(peer.ip()), "relayed to {peer}, which the policy denies");
                assert!(!surely_denied(peer.ip()), "relayed to {peer}, a local address");
                assert!(self.granted[i].contains(&peer.ip()), "client {i} reached {peer} without a permission");
            }
            Some(Err((to, data))) => {
                assert_eq!(to, who, "an answer to client {i} went to {to:?}");
                self.last_error = Message::parse(&data).ok().and_then(|m| m.error_code());
                if request.is_some() && !authenticated {
                    assert!(data.len() <= SMALL_ANSWER.max(raw.len()), "{}-byte answer to {} bytes", data.len(), raw.len());
                }
                let txid = request.as_ref().map(|m| m.transaction_id());
                self.answered(i, &data, txid);
            }
        }
        self.drain_events();
        self.open_relays();
    }

    /// The driver opens the relay sockets the engine asked for (or fails to, when the op says so).
    fn open_relays(&mut self) {
        while let Some((client, family)) = self.binds.pop_front() {
            self.next_port = self.next_port.wrapping_add(2).max(50_000);
            let ip: IpAddr = if family.is_ipv4() { RELAY_V4.into() } else { RELAY_V6.into() };
            let relay = if self.relay_fails { Err(()) } else { Ok(SocketAddr::new(ip, self.next_port)) };
            let Some(t) = self.engine.relay_bound(self.now, client, relay) else { continue };
            let data = match t {
                Transmit::ToClient { to, data } => {
                    assert_eq!(to, client);
                    data.into_owned()
                }
                other => panic!("relay_bound gave {other:?}"),
            };
            let i = self.index(client);
            self.last_error = Message::parse(&data).ok().and_then(|m| m.error_code());
            let txid = None;
            self.answered(i, &data, txid);
        }
    }

    /// Reads an answer: responses end with FINGERPRINT; keeps the nonce, the relay and the permissions it grants.
    fn answered(&mut self, i: usize, data: &[u8], txid: Option<[u8; 12]>) {
        let m = Message::parse(data).expect("the engine's answers parse");
        if !matches!(m.class(), Class::Success | Class::Error) {
            return;
        }
        let n = data.len();
        assert!(n >= 28 && data[n - 8..n - 6] == attr::FINGERPRINT.to_be_bytes(), "a response without FINGERPRINT");
        if let Some(nonce) = m.text(attr::NONCE) {
            self.nonces[i] = nonce.to_owned();
        }
        if m.class() != Class::Success {
            return;
        }
        if m.method() == method::ALLOCATE {
            let relay = m.xor_address(attr::XOR_RELAYED_ADDRESS).expect("an allocation has a relay address");
            self.relays.insert(i, relay);
        }
        if let Some(ip) = txid.and_then(|t| self.grants_asked.remove(&t)) {
            assert!(self.policy.allows(ip), "a permission for {ip}, which the policy denies, was granted");
            assert!(!surely_denied(ip), "a permission for {ip}, a local address, was granted");
            self.granted[i].insert(ip);
        }
    }

    fn check_quotas(&self) {
        let held: Vec<usize> = (0..CLIENTS).filter(|i| self.engine.has_allocation(self.clients[*i].0)).collect();
        assert!(self.engine.allocation_count() <= TOTAL_QUOTA, "{} allocations", self.engine.allocation_count());
        let shared = held.iter().filter(|i| **i < 3).count();
        assert!(shared <= USER_QUOTA, "{shared} allocations for one username");
    }
}
