//! The TURN server engine (RFC 8656, serving RFC 5766 clients too), sans-IO.
//!
//! The driver owns every socket and the clock. It feeds datagrams/frames in with [`Engine::handle_client`] and
//! [`Engine::handle_peer`], sends the [`Transmit`] each returns, drains [`Engine::poll_event`] for relay sockets to
//! open or close, and calls [`Engine::handle_timeout`] about once a second. Time is always an argument; nothing here
//! reads a clock, so tests run hours of allocation life in microseconds.
//!
//! Invariants:
//! - An allocation is keyed by its client (transport + address); its relay address maps back to it one to one.
//! - Data flows only towards peers that hold a live permission, and permissions are only installed for peers the
//!   [`PeerPolicy`] allows. A denied peer is refused with 403 at CreatePermission/ChannelBind time.
//! - Unauthenticated requests get short answers (no SOFTWARE, no echoed payload): no amplification.
//! - Every response ends with FINGERPRINT (RFC 8489 §14.7), whether the request carried one or not: ZLMediaKit's ICE
//!   agent requires it.
//! - Malformed input is dropped or answered with a STUN error; it never panics.

use std::borrow::Cow;
use std::collections::{HashMap, VecDeque};
use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, Instant};

use crate::credentials::{Credentials, NonceCheck, Nonces};
use crate::failure_limit::FailureLimit;
use crate::policy::PeerPolicy;
use crate::stun::{attr, method, Builder, Class, Integrity, Message};

/// The transport a client reached the server over.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Transport {
    Udp,
    Tcp,
    /// TLS over TCP (`turns:`, RFC 8656 §3.1): framed as TCP once decrypted.
    Tls,
}

impl Transport {
    /// A byte stream, where ChannelData is padded to four bytes (RFC 8656 §12.5).
    pub fn is_stream(self) -> bool {
        matches!(self, Transport::Tcp | Transport::Tls)
    }
}

/// A client: its transport and source address (one TCP or TLS connection = one client).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Client {
    pub transport: Transport,
    pub addr: SocketAddr,
}

/// Engine settings.
#[derive(Clone, Debug)]
pub struct EngineConfig {
    pub realm: String,
    pub credentials: Credentials,
    pub policy: PeerPolicy,
    /// Allocation lifetime when the client does not ask for one (RFC: 10 minutes).
    pub default_lifetime: Duration,
    /// Longest lifetime granted.
    pub max_lifetime: Duration,
    /// Permission lifetime (RFC: 5 minutes).
    pub permission_lifetime: Duration,
    /// Channel binding lifetime (RFC: 10 minutes).
    pub channel_lifetime: Duration,
    /// How long a nonce stays valid.
    pub nonce_lifetime: Duration,
    /// Allocations one username may hold at once.
    pub user_quota: usize,
    /// Allocations the server holds at once.
    pub total_quota: usize,
    /// Per-allocation relay budget in bytes per second, both directions together; `None` is unlimited.
    pub bandwidth: Option<u64>,
}

impl EngineConfig {
    /// RFC defaults with the given realm and credentials; peers filtered by `policy`.
    pub fn new(realm: impl Into<String>, credentials: Credentials, policy: PeerPolicy) -> EngineConfig {
        EngineConfig {
            realm: realm.into(),
            credentials,
            policy,
            default_lifetime: Duration::from_secs(600),
            max_lifetime: Duration::from_secs(3600),
            permission_lifetime: Duration::from_secs(300),
            channel_lifetime: Duration::from_secs(600),
            nonce_lifetime: Duration::from_secs(3600),
            user_quota: 16,
            total_quota: 10_000,
            bandwidth: None,
        }
    }
}

/// Something to send.
#[derive(Debug, PartialEq, Eq)]
pub enum Transmit<'a> {
    /// To a client, over the transport it came from.
    ToClient { to: Client, data: Cow<'a, [u8]> },
    /// From an allocation's relay address to a peer.
    ToPeer { relay: SocketAddr, peer: SocketAddr, data: &'a [u8] },
}

/// Work for the driver besides sending.
#[derive(Debug, PartialEq, Eq)]
pub enum Event {
    /// Open a relay socket of the same family as `family_of` for `client`, then call [`Engine::relay_bound`].
    BindRelay { client: Client, family_of: IpAddr, port: PortRequest },
    /// The allocation behind this relay address is gone: close its socket.
    ReleaseRelay { relay: SocketAddr },
    /// A port reserved with EVEN-PORT's R bit was not claimed in time: close the socket kept for it.
    ReleaseReserved { addr: SocketAddr },
}

/// Which relay port an Allocate needs (RFC 8656 §7.2, EVEN-PORT and RESERVATION-TOKEN).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PortRequest {
    /// Any port of the range.
    Any,
    /// An even port; with `reserve_next`, the driver also binds port + 1 and keeps it for a later Allocate.
    Even { reserve_next: bool },
    /// The port reserved earlier at this address (its socket is already bound).
    Reserved(SocketAddr),
}

/// How long a reserved port waits for the Allocate that claims it (RFC 8656: about 30 seconds).
const RESERVATION_LIFETIME: Duration = Duration::from_secs(30);

/// Counters for metrics.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Stats {
    pub allocations_total: u64,
    pub packets_to_peers: u64,
    pub bytes_to_peers: u64,
    pub packets_to_clients: u64,
    pub bytes_to_clients: u64,
    /// Packets dropped for lack of permission or over the bandwidth cap.
    pub packets_dropped: u64,
    pub permissions_denied: u64,
    pub auth_failures: u64,
    /// Failed requests answered 441 instead of a new 401 challenge (see [`crate::failure_limit`]).
    pub auth_failures_unchallenged: u64,
}

/// Reserved room before a peer packet's payload, so it can become ChannelData in place.
pub const CHANNEL_HEADROOM: usize = 4;

const CHANNEL_MIN: u16 = 0x4000;
/// RFC 8656 narrowed channels to 0x4000–0x4FFF; RFC 5766 clients (coturn's among them) use up to 0x7FFF.
const CHANNEL_MAX: u16 = 0x7FFF;
const UDP: u8 = 17;

/// The request methods this engine serves (any other gets 400): one list, for the 420 check and the dispatch alike.
#[derive(Clone, Copy)]
enum Request {
    Binding,
    Allocate,
    Refresh,
    CreatePermission,
    ChannelBind,
}

impl Request {
    fn of(m: u16) -> Option<Request> {
        Some(match m {
            method::BINDING => Request::Binding,
            method::ALLOCATE => Request::Allocate,
            method::REFRESH => Request::Refresh,
            method::CREATE_PERMISSION => Request::CreatePermission,
            method::CHANNEL_BIND => Request::ChannelBind,
            _ => return None,
        })
    }
}

/// Attributes this engine understands (anything else comprehension-required gets 420).
const KNOWN: &[u16] = &[
    attr::USERNAME,
    attr::MESSAGE_INTEGRITY,
    attr::MESSAGE_INTEGRITY_SHA256,
    attr::REALM,
    attr::NONCE,
    attr::LIFETIME,
    attr::XOR_PEER_ADDRESS,
    attr::DATA,
    attr::REQUESTED_TRANSPORT,
    attr::REQUESTED_ADDRESS_FAMILY,
    attr::DONT_FRAGMENT,
    attr::CHANNEL_NUMBER,
    attr::EVEN_PORT,
    attr::RESERVATION_TOKEN,
    attr::PRIORITY,
    attr::USE_CANDIDATE,
    attr::PASSWORD_ALGORITHM,
];

struct Allocation {
    relay: SocketAddr,
    username: String,
    signer: Signer,
    /// The Allocate transaction, so a retransmission gets the same answer.
    txid: [u8; 12],
    expires: Instant,
    /// Peer IP → expiry.
    permissions: HashMap<IpAddr, Instant>,
    /// Channel → (peer, expiry).
    channels: HashMap<u16, (SocketAddr, Instant)>,
    /// Peer → channel, the reverse of `channels`.
    channel_of: HashMap<SocketAddr, u16>,
    budget: Option<TokenBucket>,
}

struct Pending {
    username: String,
    signer: Signer,
    txid: [u8; 12],
    lifetime: Duration,
    /// EVEN-PORT with the R bit: the driver bound relay port + 1 too; hand out a token for it.
    reserve: bool,
}

/// The STUN/TURN server state.
pub struct Engine {
    config: EngineConfig,
    nonces: Nonces,
    /// `now` ↔ unix seconds, fixed at construction: credentials and nonces need wall time.
    epoch: (Instant, u64),
    allocations: HashMap<Client, Allocation>,
    by_relay: HashMap<SocketAddr, Client>,
    /// Allocations waiting for their relay socket.
    pending: HashMap<Client, Pending>,
    /// RESERVATION-TOKEN → reserved relay address and when the reservation lapses.
    reservations: HashMap<[u8; 8], (SocketAddr, Instant)>,
    events: VecDeque<Event>,
    stats: Stats,
    failures: FailureLimit,
}

/// An authenticated request: who, and the key to sign the answer with.
struct Auth {
    username: String,
    signer: Signer,
}

/// How an answer to an authenticated request is signed: with the long-term key, after echoing the request's REALM
/// and NONCE. RFC 8489 needs neither in a success response, but ZLMediaKit's ICE agent verifies a signed response
/// with the long-term key only when the response itself carries REALM and NONCE (otherwise with the bare password,
/// which fails, and its error path then closes the socket); its own TURN server answers the same way.
#[derive(Clone)]
struct Signer {
    key: [u8; 16],
    realm: String,
    nonce: String,
    /// The request used MESSAGE-INTEGRITY-SHA256: so does the answer.
    sha256: bool,
}

impl Engine {
    /// `now` and `unix_now` are the same moment on the two clocks; `nonce_key` must be secret and random.
    pub fn new(config: EngineConfig, now: Instant, unix_now: u64, nonce_key: [u8; 32]) -> Engine {
        let nonces = Nonces::new(nonce_key, config.nonce_lifetime.as_secs());
        Engine {
            config,
            nonces,
            epoch: (now, unix_now),
            allocations: HashMap::new(),
            by_relay: HashMap::new(),
            pending: HashMap::new(),
            reservations: HashMap::new(),
            events: VecDeque::new(),
            stats: Stats::default(),
            failures: FailureLimit::default(),
        }
    }

    fn unix(&self, now: Instant) -> u64 {
        self.epoch.1 + now.saturating_duration_since(self.epoch.0).as_secs()
    }

    pub fn stats(&self) -> Stats {
        self.stats
    }

    /// Whether `client` holds an allocation, or is waiting for its relay socket.
    pub fn has_allocation(&self, client: Client) -> bool {
        self.allocations.contains_key(&client) || self.pending.contains_key(&client)
    }

    /// Allocations currently held.
    pub fn allocation_count(&self) -> usize {
        self.allocations.len()
    }

    /// The next thing for the driver to do, if any.
    pub fn poll_event(&mut self) -> Option<Event> {
        self.events.pop_front()
    }

    /// A datagram (UDP) or one framed message (TCP) from a client.
    pub fn handle_client<'a>(&mut self, now: Instant, from: Client, buf: &'a [u8]) -> Option<Transmit<'a>> {
        if let Some(&first) = buf.first() {
            if (0x40..=0x7F).contains(&first) {
                return self.channel_data_from_client(now, from, buf);
            }
        }
        let msg = Message::parse(buf).ok()?;
        match (msg.class(), Request::of(msg.method())) {
            (Class::Request, Some(request)) => {
                let unknown = msg.unknown_required(KNOWN);
                if !unknown.is_empty() {
                    return self.unknown_attributes(now, from, &msg, unknown);
                }
                match request {
                    Request::Binding => Some(self.binding(from, &msg)),
                    Request::Allocate => self.allocate(now, from, &msg),
                    Request::Refresh => Some(self.refresh(now, from, &msg)),
                    Request::CreatePermission => Some(self.create_permission(now, from, &msg)),
                    Request::ChannelBind => Some(self.channel_bind(now, from, &msg)),
                }
            }
            (Class::Request, None) => Some(to_client(from, error(&msg, 400, "Bad Request", None))),
            (Class::Indication, _) if msg.method() == method::SEND => self.send_indication(now, from, &msg),
            _ => None, // stray responses and unknown indications are ignored
        }
    }

    /// A datagram that reached relay address `relay` from `peer`. `buf[CHANNEL_HEADROOM..CHANNEL_HEADROOM + len]` is
    /// the payload; `buf` must have 3 spare bytes after it for TCP padding.
    pub fn handle_peer<'a>(
        &mut self,
        now: Instant,
        relay: SocketAddr,
        peer: SocketAddr,
        buf: &'a mut [u8],
        len: usize,
    ) -> Option<Transmit<'a>> {
        let client = *self.by_relay.get(&relay)?;
        let alloc = self.allocations.get_mut(&client)?;
        let payload_end = CHANNEL_HEADROOM + len;
        if buf.len() < payload_end + 3 {
            return None;
        }
        if !alloc.permits(peer.ip(), now) || !alloc.spend(now, len) {
            self.stats.packets_dropped += 1;
            return None;
        }
        self.stats.packets_to_clients += 1;
        self.stats.bytes_to_clients += len as u64;
        let channel =
            alloc.channel_of.get(&peer).copied().filter(|c| alloc.channels.get(c).is_some_and(|(_, e)| *e > now));
        match channel {
            Some(ch) => {
                buf[0..2].copy_from_slice(&ch.to_be_bytes());
                buf[2..4].copy_from_slice(&(len as u16).to_be_bytes());
                // Over TCP, ChannelData is padded to a multiple of four bytes (RFC 8656 §12.5).
                let end = if client.transport.is_stream() {
                    let padded = CHANNEL_HEADROOM + ((len + 3) & !3);
                    buf[payload_end..padded].fill(0);
                    padded
                } else {
                    payload_end
                };
                Some(Transmit::ToClient { to: client, data: Cow::Borrowed(&buf[..end]) })
            }
            None => {
                let data = Builder::new(Class::Indication, method::DATA, rand::random())
                    .xor_address(attr::XOR_PEER_ADDRESS, peer)
                    .attr(attr::DATA, &buf[CHANNEL_HEADROOM..payload_end])
                    .finish();
                Some(Transmit::ToClient { to: client, data: Cow::Owned(data) })
            }
        }
    }

    /// The driver opened (or failed to open) the relay socket asked for by [`Event::BindRelay`].
    pub fn relay_bound(
        &mut self,
        now: Instant,
        client: Client,
        relay: Result<SocketAddr, ()>,
    ) -> Option<Transmit<'static>> {
        let p = self.pending.remove(&client)?;
        let Ok(relay) = relay else {
            let resp = Builder::new(Class::Error, method::ALLOCATE, p.txid).error(508, "Insufficient Capacity");
            return Some(to_client(client, seal(resp, &p.signer)));
        };
        self.stats.allocations_total += 1;
        let budget = self.config.bandwidth.map(|rate| TokenBucket::new(rate, now));
        let alloc = Allocation {
            relay,
            username: p.username,
            signer: p.signer,
            txid: p.txid,
            expires: now + p.lifetime,
            permissions: HashMap::new(),
            channels: HashMap::new(),
            channel_of: HashMap::new(),
            budget,
        };
        let token = p.reserve.then(|| {
            let token: [u8; 8] = rand::random();
            let next = SocketAddr::new(relay.ip(), relay.port().wrapping_add(1));
            self.reservations.insert(token, (next, now + RESERVATION_LIFETIME));
            token
        });
        let resp = allocate_success(client, &alloc, p.lifetime, token);
        self.by_relay.insert(relay, client);
        self.allocations.insert(client, alloc);
        Some(to_client(client, resp))
    }

    /// Expires allocations, permissions and channels; call about once a second.
    pub fn handle_timeout(&mut self, now: Instant) {
        self.failures.expire(now);
        let expired: Vec<Client> = self.allocations.iter().filter(|(_, a)| a.expires <= now).map(|(c, _)| *c).collect();
        for client in expired {
            self.remove_allocation(client);
        }
        let events = &mut self.events;
        self.reservations.retain(|_, (addr, exp)| {
            let keep = *exp > now;
            if !keep {
                events.push_back(Event::ReleaseReserved { addr: *addr });
            }
            keep
        });
        for alloc in self.allocations.values_mut() {
            alloc.permissions.retain(|_, exp| *exp > now);
            let dead: Vec<u16> = alloc.channels.iter().filter(|(_, (_, e))| *e <= now).map(|(c, _)| *c).collect();
            for ch in dead {
                if let Some((peer, _)) = alloc.channels.remove(&ch) {
                    alloc.channel_of.remove(&peer);
                }
            }
        }
    }

    /// A client went away (its TCP connection closed): free its allocation now.
    pub fn client_gone(&mut self, client: Client) {
        self.pending.remove(&client);
        self.remove_allocation(client);
    }

    fn remove_allocation(&mut self, client: Client) {
        if let Some(alloc) = self.allocations.remove(&client) {
            self.by_relay.remove(&alloc.relay);
            self.events.push_back(Event::ReleaseRelay { relay: alloc.relay });
        }
    }

    fn binding<'a>(&mut self, from: Client, msg: &Message<'_>) -> Transmit<'a> {
        // FINGERPRINT on every answer, asked for or not: ZLMediaKit's ICE agent rejects a response without one
        // (and its error path then kills the socket that also carries its host candidate).
        let b = Builder::new(Class::Success, method::BINDING, msg.transaction_id())
            .xor_address(attr::XOR_MAPPED_ADDRESS, from.addr);
        to_client(from, b.fingerprint().finish())
    }

    /// 420 listing the comprehension-required attributes of `msg` this engine does not know (RFC 8489 §6.3.1.1),
    /// for every request method. Binding is answered unsigned, as always; the others after their credential check
    /// (a client that cannot authenticate learns nothing more), signed.
    fn unknown_attributes<'a>(
        &mut self,
        now: Instant,
        from: Client,
        msg: &Message<'_>,
        mut unknown: Vec<u16>,
    ) -> Option<Transmit<'a>> {
        unknown.sort_unstable();
        unknown.dedup();
        let list: Vec<u8> = unknown.iter().flat_map(|t| t.to_be_bytes()).collect();
        let b = Builder::new(Class::Error, msg.method(), msg.transaction_id())
            .error(420, "Unknown Attribute")
            .attr(attr::UNKNOWN_ATTRIBUTES, &list);
        if msg.method() == method::BINDING {
            return Some(to_client(from, b.fingerprint().finish()));
        }
        let answer = match self.authenticate(now, from, msg) {
            Ok(auth) => seal(b, &auth.signer),
            Err(resp) => resp,
        };
        Some(to_client(from, answer))
    }

    /// Long-term credential check (RFC 8489 §9.2.4). `Err` is the error answer to send: a 401 challenge, or 441
    /// once the client has been challenged often enough (`failure_limit`).
    fn authenticate(&mut self, now: Instant, from: Client, msg: &Message<'_>) -> Result<Auth, Vec<u8>> {
        let unix = self.unix(now);
        if !msg.has_integrity() {
            return Err(self.challenge(msg, 401, "Unauthorized", unix));
        }
        let Some(username) = msg.text(attr::USERNAME) else {
            return Err(error(msg, 400, "Bad Request", None));
        };
        // Integrity without REALM and NONCE is a short-term credential. RFC 8489 §9.2.4 answers 400, but
        // ZLMediaKit's ICE agent sends its CreatePermission and ChannelBind that way first and gives up on any answer
        // but 401: the challenge tells it the realm and nonce to sign with, as it does for any other client.
        let (Some(realm), Some(nonce)) = (msg.text(attr::REALM), msg.text(attr::NONCE)) else {
            return Err(self.challenge(msg, 401, "Unauthorized", unix));
        };
        match self.nonces.check(nonce, unix) {
            NonceCheck::Valid => {}
            NonceCheck::Stale => return Err(self.challenge(msg, 438, "Stale Nonce", unix)),
            NonceCheck::Invalid => return Err(self.challenge(msg, 401, "Unauthorized", unix)),
        }
        let key = (realm == self.config.realm).then(|| self.config.credentials.key(username, realm, unix)).flatten();
        match key {
            Some(key) if msg.verify(&key) == Integrity::Valid => {
                let signer =
                    Signer { key, realm: realm.to_owned(), nonce: nonce.to_owned(), sha256: msg.uses_sha256() };
                Ok(Auth { username: username.to_owned(), signer })
            }
            _ => {
                self.stats.auth_failures += 1;
                if !self.failures.allow(from, now) {
                    // Challenged often enough (see `failure_limit`): 441, which ends the attempt of any client,
                    // ZLMediaKit's included (it acts on 401 alone).
                    self.stats.auth_failures_unchallenged += 1;
                    return Err(error(msg, 441, "Wrong Credentials", None));
                }
                Err(self.challenge(msg, 401, "Unauthorized", unix))
            }
        }
    }

    /// An error carrying REALM and a fresh NONCE, so the client can (re)try with credentials.
    fn challenge(&self, msg: &Message<'_>, code: u16, reason: &str, unix: u64) -> Vec<u8> {
        Builder::new(Class::Error, msg.method(), msg.transaction_id())
            .error(code, reason)
            .attr(attr::REALM, self.config.realm.as_bytes())
            .attr(attr::NONCE, self.nonces.mint(unix).as_bytes())
            .fingerprint()
            .finish()
    }

    fn allocate<'a>(&mut self, now: Instant, from: Client, msg: &Message<'_>) -> Option<Transmit<'a>> {
        if let Some(alloc) = self.allocations.get(&from) {
            // A retransmitted Allocate gets the original answer; any other is a mismatch.
            if alloc.txid == msg.transaction_id() {
                let left = alloc.expires.saturating_duration_since(now);
                return Some(to_client(from, allocate_success(from, alloc, left, None)));
            }
            let auth = match self.authenticate(now, from, msg) {
                Ok(a) => a,
                Err(resp) => return Some(to_client(from, resp)),
            };
            return Some(to_client(from, error(msg, 437, "Allocation Mismatch", Some(&auth))));
        }
        if self.pending.contains_key(&from) {
            return None; // the relay socket for this client is being opened
        }
        let auth = match self.authenticate(now, from, msg) {
            Ok(a) => a,
            Err(resp) => return Some(to_client(from, resp)),
        };
        let fail = |code, reason| Some(to_client(from, error(msg, code, reason, Some(&auth))));
        match msg.get(attr::REQUESTED_TRANSPORT) {
            None => return fail(400, "Bad Request"),
            Some(v) if v.first() != Some(&UDP) => return fail(442, "Unsupported Transport Protocol"),
            Some(_) => {}
        }
        let family_ok = match msg.get(attr::REQUESTED_ADDRESS_FAMILY).and_then(|v| v.first()) {
            None => true,
            Some(0x01) => from.addr.is_ipv4(),
            Some(0x02) => from.addr.is_ipv6(),
            Some(_) => return fail(400, "Bad Request"),
        };
        if !family_ok {
            return fail(440, "Address Family not Supported");
        }
        let held = self.allocations.values().filter(|a| a.username == auth.username).count()
            + self.pending.values().filter(|p| p.username == auth.username).count();
        if held >= self.config.user_quota || self.allocations.len() + self.pending.len() >= self.config.total_quota {
            return fail(486, "Allocation Quota Reached");
        }
        // Last, so that a failed check never consumes a reservation.
        let port = match (msg.get(attr::EVEN_PORT), msg.get(attr::RESERVATION_TOKEN)) {
            (Some(_), Some(_)) => return fail(400, "Bad Request"),
            (Some(v), None) => PortRequest::Even { reserve_next: v.first().is_some_and(|b| b & 0x80 != 0) },
            (None, Some(token)) => match <[u8; 8]>::try_from(token).ok().and_then(|t| self.reservations.remove(&t)) {
                Some((addr, _)) => PortRequest::Reserved(addr),
                None => return fail(508, "Insufficient Capacity"),
            },
            (None, None) => PortRequest::Any,
        };
        let pending = Pending {
            username: auth.username,
            signer: auth.signer,
            txid: msg.transaction_id(),
            lifetime: self.lifetime(msg),
            reserve: matches!(port, PortRequest::Even { reserve_next: true }),
        };
        self.pending.insert(from, pending);
        self.events.push_back(Event::BindRelay { client: from, family_of: from.addr.ip(), port });
        None
    }

    /// The lifetime to grant: what was asked for, clamped to [default, max].
    fn lifetime(&self, msg: &Message<'_>) -> Duration {
        let asked =
            msg.u32(attr::LIFETIME).map(|s| Duration::from_secs(s.into())).unwrap_or(self.config.default_lifetime);
        asked.clamp(self.config.default_lifetime, self.config.max_lifetime)
    }

    fn refresh<'a>(&mut self, now: Instant, from: Client, msg: &Message<'_>) -> Transmit<'a> {
        let auth = match self.allocation_for(now, from, msg) {
            Ok(a) => a,
            Err(resp) => return to_client(from, resp),
        };
        let asked = msg.u32(attr::LIFETIME);
        let granted = if asked == Some(0) {
            self.remove_allocation(from);
            Duration::ZERO
        } else {
            let lifetime = self.lifetime(msg);
            if let Some(a) = self.allocations.get_mut(&from) {
                a.expires = now + lifetime;
            }
            lifetime
        };
        let b = Builder::new(Class::Success, method::REFRESH, msg.transaction_id())
            .u32(attr::LIFETIME, granted.as_secs() as u32);
        to_client(from, seal(b, &auth.signer))
    }

    /// Whether `peer` is of the address family of `client`'s relay (RFC 6156 §6.2: 443 otherwise). The family of
    /// XOR-PEER-ADDRESS decides: an IPv4-mapped IPv6 peer is IPv6.
    fn same_family(&self, client: Client, peer: SocketAddr) -> bool {
        self.allocations.get(&client).is_some_and(|a| a.relay.is_ipv4() == peer.is_ipv4())
    }

    /// Checks auth and that the client's allocation exists and belongs to the same user.
    fn allocation_for(&mut self, now: Instant, from: Client, msg: &Message<'_>) -> Result<Auth, Vec<u8>> {
        let auth = self.authenticate(now, from, msg)?;
        if self.allocations.get(&from).is_none_or(|a| a.username != auth.username) {
            return Err(error(msg, 437, "Allocation Mismatch", Some(&auth)));
        }
        Ok(auth)
    }

    fn create_permission<'a>(&mut self, now: Instant, from: Client, msg: &Message<'_>) -> Transmit<'a> {
        let auth = match self.allocation_for(now, from, msg) {
            Ok(a) => a,
            Err(resp) => return to_client(from, resp),
        };
        let peers: Vec<Option<SocketAddr>> = msg.xor_addresses(attr::XOR_PEER_ADDRESS).collect();
        if peers.is_empty() || peers.iter().any(Option::is_none) {
            return to_client(from, error(msg, 400, "Bad Request", Some(&auth)));
        }
        let peers: Vec<SocketAddr> = peers.into_iter().flatten().collect();
        if peers.iter().any(|p| !self.same_family(from, *p)) {
            return to_client(from, error(msg, 443, "Peer Address Family Mismatch", Some(&auth)));
        }
        if peers.iter().any(|p| !self.config.policy.allows(p.ip())) {
            self.stats.permissions_denied += 1;
            return to_client(from, error(msg, 403, "Forbidden", Some(&auth)));
        }
        let expires = now + self.config.permission_lifetime;
        let keep_until = now + self.config.default_lifetime;
        if let Some(alloc) = self.allocations.get_mut(&from) {
            for p in peers {
                alloc.permissions.insert(p.ip(), expires);
            }
            alloc.keep_alive(keep_until);
        }
        let b = Builder::new(Class::Success, method::CREATE_PERMISSION, msg.transaction_id());
        to_client(from, seal(b, &auth.signer))
    }

    fn channel_bind<'a>(&mut self, now: Instant, from: Client, msg: &Message<'_>) -> Transmit<'a> {
        let auth = match self.allocation_for(now, from, msg) {
            Ok(a) => a,
            Err(resp) => return to_client(from, resp),
        };
        let channel = msg.get(attr::CHANNEL_NUMBER).filter(|v| v.len() == 4).map(|v| u16::from_be_bytes([v[0], v[1]]));
        let (Some(channel), Some(peer)) = (channel, msg.xor_address(attr::XOR_PEER_ADDRESS)) else {
            return to_client(from, error(msg, 400, "Bad Request", Some(&auth)));
        };
        if !(CHANNEL_MIN..=CHANNEL_MAX).contains(&channel) {
            return to_client(from, error(msg, 400, "Bad Request", Some(&auth)));
        }
        if !self.same_family(from, peer) {
            return to_client(from, error(msg, 443, "Peer Address Family Mismatch", Some(&auth)));
        }
        if !self.config.policy.allows(peer.ip()) {
            self.stats.permissions_denied += 1;
            return to_client(from, error(msg, 403, "Forbidden", Some(&auth)));
        }
        let (channel_life, permission_life) = (self.config.channel_lifetime, self.config.permission_lifetime);
        let keep_until = now + self.config.default_lifetime;
        let Some(alloc) = self.allocations.get_mut(&from) else {
            return to_client(from, error(msg, 437, "Allocation Mismatch", Some(&auth)));
        };
        let channel_taken = alloc.channels.get(&channel).is_some_and(|(p, _)| *p != peer);
        let peer_taken = alloc.channel_of.get(&peer).is_some_and(|c| *c != channel);
        if channel_taken || peer_taken {
            return to_client(from, error(msg, 400, "Bad Request", Some(&auth)));
        }
        alloc.channels.insert(channel, (peer, now + channel_life));
        alloc.channel_of.insert(peer, channel);
        alloc.permissions.insert(peer.ip(), now + permission_life);
        alloc.keep_alive(keep_until);
        let b = Builder::new(Class::Success, method::CHANNEL_BIND, msg.transaction_id());
        to_client(from, seal(b, &auth.signer))
    }

    fn send_indication<'a>(&mut self, now: Instant, from: Client, msg: &Message<'a>) -> Option<Transmit<'a>> {
        let alloc = self.allocations.get_mut(&from)?;
        let peer = msg.xor_address(attr::XOR_PEER_ADDRESS)?;
        let data = msg.get(attr::DATA)?;
        if !alloc.permits(peer.ip(), now) || !alloc.spend(now, data.len()) {
            self.stats.packets_dropped += 1;
            return None;
        }
        self.stats.packets_to_peers += 1;
        self.stats.bytes_to_peers += data.len() as u64;
        Some(Transmit::ToPeer { relay: alloc.relay, peer, data })
    }

    fn channel_data_from_client<'a>(&mut self, now: Instant, from: Client, buf: &'a [u8]) -> Option<Transmit<'a>> {
        if buf.len() < 4 {
            return None;
        }
        let channel = u16::from_be_bytes([buf[0], buf[1]]);
        let len = u16::from_be_bytes([buf[2], buf[3]]) as usize;
        let data = buf.get(4..4 + len)?;
        let alloc = self.allocations.get_mut(&from)?;
        let (peer, expires) = *alloc.channels.get(&channel)?;
        if expires <= now || !alloc.permits(peer.ip(), now) || !alloc.spend(now, len) {
            self.stats.packets_dropped += 1;
            return None;
        }
        self.stats.packets_to_peers += 1;
        self.stats.bytes_to_peers += len as u64;
        Some(Transmit::ToPeer { relay: alloc.relay, peer, data })
    }
}

impl Allocation {
    /// An authenticated CreatePermission or ChannelBind keeps the allocation for at least the default lifetime.
    /// RFC 8656 leaves that to Refresh, which ZLMediaKit's ICE agent never sends: it refreshes its permissions every
    /// few minutes instead, so without this its relayed calls would break when the first lifetime ran out.
    fn keep_alive(&mut self, until: Instant) {
        self.expires = self.expires.max(until);
    }

    /// Whether a live permission covers `ip`.
    fn permits(&self, ip: IpAddr, now: Instant) -> bool {
        self.permissions.get(&ip).is_some_and(|exp| *exp > now)
    }

    /// Charges `bytes` to the bandwidth budget; false means "over the cap, drop it".
    fn spend(&mut self, now: Instant, bytes: usize) -> bool {
        self.budget.as_mut().is_none_or(|b| b.take(now, bytes as u64))
    }
}

fn allocate_success(client: Client, alloc: &Allocation, lifetime: Duration, token: Option<[u8; 8]>) -> Vec<u8> {
    let mut b = Builder::new(Class::Success, method::ALLOCATE, alloc.txid)
        .xor_address(attr::XOR_RELAYED_ADDRESS, alloc.relay)
        .u32(attr::LIFETIME, lifetime.as_secs() as u32)
        .xor_address(attr::XOR_MAPPED_ADDRESS, client.addr);
    if let Some(token) = token {
        b = b.attr(attr::RESERVATION_TOKEN, &token);
    }
    seal(b, &alloc.signer)
}

/// Adds REALM and NONCE (see [`Signer`]), the integrity attribute the request used, then FINGERPRINT.
fn seal(b: Builder, signer: &Signer) -> Vec<u8> {
    let b = b.attr(attr::REALM, signer.realm.as_bytes()).attr(attr::NONCE, signer.nonce.as_bytes());
    let b = if signer.sha256 { b.integrity_sha256(&signer.key) } else { b.integrity(&signer.key) };
    b.fingerprint().finish()
}

/// An error answer; signed when the request was authenticated.
fn error(msg: &Message<'_>, code: u16, reason: &str, auth: Option<&Auth>) -> Vec<u8> {
    let b = Builder::new(Class::Error, msg.method(), msg.transaction_id()).error(code, reason);
    match auth {
        Some(a) => seal(b, &a.signer),
        None => b.fingerprint().finish(),
    }
}

fn to_client<'a>(to: Client, data: Vec<u8>) -> Transmit<'a> {
    Transmit::ToClient { to, data: Cow::Owned(data) }
}

/// A byte budget refilled continuously at `rate` per second, holding at most one second's worth.
struct TokenBucket {
    rate: u64,
    tokens: f64,
    last: Instant,
}

impl TokenBucket {
    fn new(rate: u64, now: Instant) -> TokenBucket {
        TokenBucket { rate, tokens: rate as f64, last: now }
    }

    fn take(&mut self, now: Instant, n: u64) -> bool {
        let elapsed = now.saturating_duration_since(self.last).as_secs_f64();
        self.last = now;
        self.tokens = (self.tokens + elapsed * self.rate as f64).min(self.rate as f64);
        if self.tokens >= n as f64 {
            self.tokens -= n as f64;
            true
        } else {
            false
        }
    }
}
