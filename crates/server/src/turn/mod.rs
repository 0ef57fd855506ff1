//! The STUN/TURN server's IO driver around the sans-IO [`Engine`].
//!
//! - One UDP socket and one TCP listener on the same address (`turn.listen`), and optionally a TLS listener
//!   (`turn.tls-listen`, `turns:`) with the signaling listener's certificate.
//! - One UDP socket per allocation (its relay address), with a reader task.
//! - UDP datagrams move in batches ([`batch_io`]): each wakeup receives what is queued in one call, the engine
//!   handles the whole batch under one lock, and what it produced leaves after the lock is released, coalesced
//!   per destination.
//! - A one-second tick that expires allocations, permissions and channels.
//!
//! All mutable state — the engine, the relay sockets and the TCP clients' outboxes — sits behind one mutex, so every
//! batch is handled as one atomic step. Nothing awaits under the lock: sends never wait, and a packet that would
//! block is dropped, as a congested UDP path would drop it. TCP clients get a bounded queue each; a client that falls
//! behind loses packets rather than growing memory.

mod batch_io;
mod tcp;

use std::collections::HashMap;
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use parking_lot::Mutex;
use switchboard_turn::stun::{Class, Message};
use switchboard_turn::{Client, Engine, EngineConfig, Event, PeerPolicy, PortRequest, Stats, Transmit, Transport};
use tokio::net::{TcpListener, UdpSocket};
use tokio::sync::mpsc;
use tokio::task::AbortHandle;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{debug, info, warn};

use crate::config::TurnConfig;
pub use batch_io::IoCounters;
use batch_io::{BatchSocket, Outgoing, Received, Via, HEADROOM};

/// Frames queued towards one TCP client before further ones are dropped.
const TCP_QUEUE: usize = 512;
/// Kernel buffer of the listening UDP socket: it takes every client's traffic, and bursts must not overflow it
/// while the relay task is busy (the kernel caps this at net.core.rmem_max / wmem_max).
const LISTEN_UDP_BUFFER: usize = 4 << 20;
/// Kernel buffer of each relay socket (one peer's traffic towards one client).
const RELAY_UDP_BUFFER: usize = 1 << 20;

/// Enlarges a UDP socket's kernel buffers; best effort (the kernel may grant less).
fn grow_buffers(socket: &impl std::os::fd::AsFd, size: usize) {
    let sock = socket2::SockRef::from(socket);
    let _ = sock.set_recv_buffer_size(size);
    let _ = sock.set_send_buffer_size(size);
}

/// Why the TURN server could not start.
#[derive(Debug, thiserror::Error)]
pub enum TurnError {
    #[error("cannot bind STUN/TURN listener {addr}: {source}")]
    Bind { addr: SocketAddr, source: io::Error },
    #[error("turn.tls-listen needs a certificate (tls.cert and tls.key, or tls.dev-self-signed)")]
    NoCertificate,
}

/// A running STUN/TURN server.
#[derive(Clone)]
pub struct TurnServer {
    shared: Arc<Shared>,
    local_addr: SocketAddr,
    tls_addr: Option<SocketAddr>,
}

struct Shared {
    state: Mutex<State>,
    udp: BatchSocket,
    /// The UDP data path's system calls and datagrams, for /metrics.
    io: Arc<IoCounters>,
    /// Where relay sockets are bound (the listen IP).
    bind_ip: IpAddr,
    /// The address relay sockets are advertised at (XOR-RELAYED-ADDRESS).
    relay_ip: IpAddr,
    ports: (u16, u16),
    /// TURN-over-TCP connections one source IP may hold.
    tcp_per_ip: usize,
    /// How long a TCP connection may go without an allocation.
    tcp_unallocated_timeout: std::time::Duration,
    /// TCP connections closed at accept (over `tcp_per_ip`), and for lack of an allocation.
    tcp_refused: std::sync::atomic::AtomicU64,
    tcp_unallocated: std::sync::atomic::AtomicU64,
    tasks: TaskTracker,
    stop: CancellationToken,
}

struct State {
    engine: Engine,
    /// Advertised relay address → its socket and reader task.
    relays: HashMap<SocketAddr, Relay>,
    /// TCP and TLS clients → their outbound queues.
    tcp_clients: HashMap<Client, mpsc::Sender<Vec<u8>>>,
    /// Open TCP and TLS connections per source IP (one budget for both).
    tcp_per_ip: HashMap<IpAddr, usize>,
    /// Sockets bound for ports reserved with EVEN-PORT, by advertised address, until claimed or released.
    reserved: HashMap<SocketAddr, std::net::UdpSocket>,
}

struct Relay {
    socket: Arc<BatchSocket>,
    task: AbortHandle,
}

/// The engine settings the config describes.
pub fn engine_config(
    config: &TurnConfig,
    credentials: switchboard_turn::Credentials,
    relay_ip: IpAddr,
) -> EngineConfig {
    let policy = PeerPolicy {
        allow: config.allow_peers.clone(),
        deny: config.deny_peers.clone(),
        relay_ips: vec![relay_ip, config.listen.ip()],
    };
    let mut e = EngineConfig::new(config.realm.clone(), credentials, policy);
    e.user_quota = config.user_quota;
    e.total_quota = if config.enabled { config.total_quota } else { 0 };
    e.bandwidth = config.bandwidth;
    e
}

impl TurnServer {
    /// Binds UDP and TCP on `config.listen` (the same port for both; with port 0, a free one), TLS on
    /// `config.tls_listen` when set (with `tls`, the certificate), and starts serving. `relay_ip` is the address relays
    /// are advertised at.
    pub async fn start(
        config: &TurnConfig,
        engine: EngineConfig,
        relay_ip: IpAddr,
        tls: Option<Arc<rustls::ServerConfig>>,
        tasks: TaskTracker,
        stop: CancellationToken,
    ) -> Result<TurnServer, TurnError> {
        let (udp, tcp) = bind_pair(config.listen).await?;
        let tls = match (config.tls_listen, tls) {
            (None, _) => None,
            (Some(_), None) => return Err(TurnError::NoCertificate),
            (Some(addr), Some(cert)) => {
                let listener = TcpListener::bind(addr).await.map_err(|source| TurnError::Bind { addr, source })?;
                Some((listener, turns_acceptor(&cert)))
            }
        };
        let tls_addr = match &tls {
            Some((l, _)) => Some(l.local_addr().map_err(|source| TurnError::Bind { addr: config.listen, source })?),
            None => None,
        };
        let bind_err = |source| TurnError::Bind { addr: config.listen, source };
        let io = Arc::new(IoCounters::default());
        let udp = BatchSocket::new(udp.into_std().map_err(bind_err)?, io.clone()).map_err(bind_err)?;
        grow_buffers(udp.socket(), LISTEN_UDP_BUFFER);
        let local_addr = udp.local_addr().map_err(bind_err)?;
        let now = tokio::time::Instant::now().into_std();
        let unix = SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs());
        let engine = Engine::new(engine, now, unix, rand::random());
        let shared = Arc::new(Shared {
            state: Mutex::new(State {
                engine,
                relays: HashMap::new(),
                tcp_clients: HashMap::new(),
                tcp_per_ip: HashMap::new(),
                reserved: HashMap::new(),
            }),
            udp,
            io,
            bind_ip: config.listen.ip(),
            relay_ip,
            ports: (config.relay_port_min, config.relay_port_max),
            tcp_per_ip: config.tcp_connections_per_ip,
            tcp_unallocated_timeout: config.tcp_unallocated_timeout,
            tcp_refused: Default::default(),
            tcp_unallocated: Default::default(),
            tasks: tasks.clone(),
            stop: stop.clone(),
        });
        info!(addr = %local_addr, relay_ip = %relay_ip, "turn listening");
        tasks.spawn(udp_loop(shared.clone()));
        tasks.spawn(tcp::accept_loop(shared.clone(), tcp, None));
        if let Some((listener, acceptor)) = tls {
            info!(addr = %tls_addr.unwrap_or(config.listen), "turns listening");
            tasks.spawn(tcp::accept_loop(shared.clone(), listener, Some(acceptor)));
        }
        tasks.spawn(tick_loop(shared.clone()));
        Ok(TurnServer { shared, local_addr, tls_addr })
    }

    /// The bound UDP/TCP address.
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// The bound TURN-over-TLS address, when `turn.tls-listen` is set.
    pub fn tls_addr(&self) -> Option<SocketAddr> {
        self.tls_addr
    }

    /// Relay counters.
    pub fn stats(&self) -> Stats {
        self.shared.state.lock().engine.stats()
    }

    /// TURN-over-TCP connections closed by the limits: (at accept, over the per-address cap; without an allocation
    /// past the timeout).
    pub fn tcp_closed_by_limits(&self) -> (u64, u64) {
        use std::sync::atomic::Ordering::Relaxed;
        (self.shared.tcp_refused.load(Relaxed), self.shared.tcp_unallocated.load(Relaxed))
    }

    /// System calls of the UDP data path and the datagrams they moved.
    pub fn udp_io(&self) -> &IoCounters {
        &self.shared.io
    }

    /// Allocations held now.
    pub fn allocations(&self) -> usize {
        self.shared.state.lock().engine.allocation_count()
    }
}

/// The signaling listener's certificate without its ALPN list: a TURN client offers none or `stun.turn`
/// (RFC 7443), and a server list that matches neither would fail the handshake.
fn turns_acceptor(cert: &rustls::ServerConfig) -> tokio_rustls::TlsAcceptor {
    let mut config = cert.clone();
    config.alpn_protocols = Vec::new();
    tokio_rustls::TlsAcceptor::from(Arc::new(config))
}

/// UDP and TCP on one port: with port 0, retry until a port free for both is found.
async fn bind_pair(addr: SocketAddr) -> Result<(UdpSocket, TcpListener), TurnError> {
    let err = |source| TurnError::Bind { addr, source };
    for _ in 0..20 {
        let udp = UdpSocket::bind(addr).await.map_err(err)?;
        let port = udp.local_addr().map_err(err)?.port();
        match TcpListener::bind(SocketAddr::new(addr.ip(), port)).await {
            Ok(tcp) => return Ok((udp, tcp)),
            Err(e) if addr.port() != 0 => return Err(err(e)),
            Err(_) => continue,
        }
    }
    Err(err(io::Error::new(io::ErrorKind::AddrInUse, "no port free for both UDP and TCP")))
}

fn now() -> std::time::Instant {
    tokio::time::Instant::now().into_std()
}

async fn udp_loop(shared: Arc<Shared>) {
    loop {
        let received = tokio::select! {
            _ = shared.stop.cancelled() => return,
            r = shared.udp.recv_batch(|batch| from_clients(&shared, batch)) => r,
        };
        if let Err(e) = received {
            debug!(error = %e, "turn udp receive failed");
        }
    }
}

/// One batch of datagrams from UDP clients, handled under one lock; the sends leave after it.
fn from_clients(shared: &Arc<Shared>, batch: Received<'_>) {
    Outgoing::with(&shared.udp, |out| {
        let mut st = shared.state.lock();
        let now = now();
        batch.for_each(|from, slot, len| {
            let client = Client { transport: Transport::Udp, addr: from };
            let produced = st.engine.handle_client(now, client, &slot[HEADROOM..HEADROOM + len]);
            queue(&st, out, produced);
            drain_events(shared, &mut st, out);
        });
    });
}

async fn tick_loop(shared: Arc<Shared>) {
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    loop {
        tokio::select! {
            _ = shared.stop.cancelled() => return,
            _ = tick.tick() => Outgoing::with(&shared.udp, |out| {
                let mut st = shared.state.lock();
                st.engine.handle_timeout(now());
                drain_events(&shared, &mut st, out);
            }),
        }
    }
}

/// Queues what the engine produced in the outgoing datagrams, sent once the lock is released (stream clients get
/// theirs queued at once). Never blocks: a packet that cannot go is dropped.
fn queue(st: &State, out: &mut Outgoing, produced: Option<Transmit<'_>>) {
    match produced {
        None => {}
        Some(Transmit::ToClient { to, data }) => {
            log_error_answer(to, &data);
            match to.transport {
                Transport::Udp => out.push(Via::Listener, to.addr, &data),
                Transport::Tcp | Transport::Tls => send_to_stream(st, to, data),
            }
        }
        Some(Transmit::ToPeer { relay, peer, data }) => {
            if let Some(r) = st.relays.get(&relay) {
                out.push(Via::Relay(&r.socket), peer, data);
            }
        }
    }
}

/// Client-visible failures, at debug level: they are the first thing to look at when a client cannot allocate.
fn log_error_answer(to: Client, data: &[u8]) {
    if !tracing::enabled!(tracing::Level::DEBUG) {
        return;
    }
    if let Ok(m) = Message::parse(data) {
        if m.class() == Class::Error {
            debug!(client = %to.addr, transport = ?to.transport, method = m.method(), code = m.error_code(), "turn error answer");
        }
    }
}

/// Queues a frame towards a TCP or TLS client; dropped if its queue is full.
fn send_to_stream(st: &State, to: Client, data: std::borrow::Cow<'_, [u8]>) {
    if let Some(tx) = st.tcp_clients.get(&to) {
        let _ = tx.try_send(data.into_owned());
    }
}

/// Opens and closes relay sockets as the engine asks.
fn drain_events(shared: &Arc<Shared>, st: &mut State, out: &mut Outgoing) {
    while let Some(ev) = st.engine.poll_event() {
        match ev {
            Event::BindRelay { client, port, .. } => {
                let bound = bind_relay(shared, &mut st.reserved, port);
                let result = match bound {
                    Ok((socket, advertised)) => {
                        let socket = Arc::new(socket);
                        let task =
                            shared.tasks.spawn(relay_loop(shared.clone(), socket.clone(), advertised)).abort_handle();
                        st.relays.insert(advertised, Relay { socket, task });
                        Ok(advertised)
                    }
                    Err(e) => {
                        warn!(error = %e, "no relay port available");
                        Err(())
                    }
                };
                let answer = st.engine.relay_bound(now(), client, result);
                queue(st, out, answer);
            }
            Event::ReleaseRelay { relay } => {
                if let Some(r) = st.relays.remove(&relay) {
                    r.task.abort();
                }
            }
            Event::ReleaseReserved { addr } => {
                st.reserved.remove(&addr);
            }
        }
    }
}

/// A UDP socket for a new relay: a random free port of the range, an even one (and its odd neighbour kept in
/// `reserved`), or the socket reserved earlier.
fn bind_relay(
    shared: &Shared,
    reserved: &mut HashMap<SocketAddr, std::net::UdpSocket>,
    request: PortRequest,
) -> io::Result<(BatchSocket, SocketAddr)> {
    let tokio_socket = |s: std::net::UdpSocket| -> io::Result<BatchSocket> {
        grow_buffers(&s, RELAY_UDP_BUFFER);
        BatchSocket::new(s, shared.io.clone())
    };
    if let PortRequest::Reserved(addr) = request {
        let socket =
            reserved.remove(&addr).ok_or_else(|| io::Error::new(io::ErrorKind::NotFound, "reservation gone"))?;
        return Ok((tokio_socket(socket)?, addr));
    }
    let (lo, hi) = shared.ports;
    let span = u32::from(hi - lo) + 1;
    let start = rand::random::<u32>() % span;
    let bind = |port: u16| std::net::UdpSocket::bind(SocketAddr::new(shared.bind_ip, port));
    for i in 0..span.min(128) {
        let port = lo + ((start + i) % span) as u16;
        match request {
            PortRequest::Even { .. } if port % 2 == 1 => continue,
            PortRequest::Even { reserve_next: true } => {
                if port == u16::MAX || port + 1 > hi {
                    continue;
                }
                let (Ok(a), Ok(b)) = (bind(port), bind(port + 1)) else { continue };
                reserved.insert(SocketAddr::new(shared.relay_ip, port + 1), b);
                return Ok((tokio_socket(a)?, SocketAddr::new(shared.relay_ip, port)));
            }
            _ => {
                if let Ok(s) = bind(port) {
                    return Ok((tokio_socket(s)?, SocketAddr::new(shared.relay_ip, port)));
                }
            }
        }
    }
    Err(io::Error::new(io::ErrorKind::AddrInUse, "relay port range exhausted"))
}

/// Reads what peers send to one relay address and hands it to the engine, a batch at a time.
async fn relay_loop(shared: Arc<Shared>, socket: Arc<BatchSocket>, relay: SocketAddr) {
    loop {
        let received = tokio::select! {
            _ = shared.stop.cancelled() => return,
            r = socket.recv_batch(|batch| from_peers(&shared, relay, batch)) => r,
        };
        if let Err(e) = received {
            debug!(error = %e, %relay, "turn relay receive failed");
        }
    }
}

/// One batch of datagrams from peers to `relay`, handled under one lock; the sends leave after it.
fn from_peers(shared: &Shared, relay: SocketAddr, batch: Received<'_>) {
    Outgoing::with(&shared.udp, |out| {
        let st = &mut *shared.state.lock();
        let now = now();
        batch.for_each(|peer, slot, len| {
            let produced = st.engine.handle_peer(now, relay, peer, slot, len);
            queue(st, out, produced);
        });
    });
}
