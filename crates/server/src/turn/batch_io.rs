//! Batched UDP IO for the TURN data path: many datagrams per system call, in both directions.
//!
//! Under relay load almost all of a TURN server's CPU goes to the kernel's per-datagram paths (BENCHMARKS.md, the
//! profile before this module). So the driver moves datagrams in batches, through quinn-udp, the UDP layer of the
//! quinn QUIC stack: `recvmmsg` with UDP GRO in, `sendmsg` with UDP GSO out. quinn-udp was chosen over hand-written
//! `libc` calls (and over nix's `recvmmsg`/`sendmmsg`, whose headers are not `Send` and cannot live in a task) because
//! it is maintained for exactly this use, probes GSO support at runtime and falls back when a kernel or device
//! refuses it.
//!
//! Invariants:
//! - A batch is received, handed to the engine and sent within one poll, never across an `.await`; so the receive
//!   buffers ([`RecvBatch`]) and the send queues ([`Outgoing`]) are per thread, and an idle relay socket owns none.
//! - A receive that fills fewer slots than it offered found the socket's queue empty: readiness is cleared then,
//!   without the further read that would only answer EAGAIN (a datagram arriving meanwhile raises readiness again).
//! - Sending never waits: a send that would block is dropped, as a congested UDP path would drop it.
//! - Order per destination is kept: datagrams to one address leave in the order they were queued; consecutive ones
//!   of equal size (the last may be shorter) leave as one GSO send.
//! - Fragmentation stays as for a plain socket (`IP_PMTUDISC_WANT`): quinn-udp turns on path-MTU probing (DF set,
//!   oversize sends refused), which suits QUIC but not a relay that must forward what the peer sent.

use std::cell::RefCell;
use std::io::{self, IoSliceMut};
use std::net::SocketAddr;
use std::os::fd::AsRawFd;
use std::sync::atomic::AtomicU64;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;

use quinn_udp::{RecvMeta, Transmit, UdpSocketState, BATCH_SIZE};
use tokio::io::unix::AsyncFd;
use tokio::io::Interest;

/// Bytes reserved before each received datagram, so that the engine can put a ChannelData header in front of it
/// in place.
pub(super) const HEADROOM: usize = switchboard_turn::CHANNEL_HEADROOM;
/// Largest UDP payload (and largest GRO batch) one slot takes.
const MAX_DATAGRAM: usize = 65_535;
/// One receive slot: headroom, payload, and the 3 bytes of ChannelData padding the engine may add for TCP.
const SLOT: usize = HEADROOM + MAX_DATAGRAM + 3;
/// Largest GSO send the kernel takes.
const MAX_GSO_BYTES: usize = 65_000;
/// Largest datagram sent as part of a GSO run. The kernel refuses (EINVAL) a GSO send whose segments exceed the
/// route's MTU, where a single datagram would have been fragmented, and quinn-udp then turns GSO off for that socket
/// for good; so only datagrams that fit any IPv6 path (1280 minus headers) join runs. WebRTC media packets are
/// ~1200 bytes at most, so they all do.
const MAX_GSO_SEGMENT: usize = 1200;
/// Run buffers kept between batches per thread, and the largest kept.
const SPARE_RUNS: usize = 64;
const SPARE_CAPACITY: usize = 16 * 1024;

/// System calls of the UDP data path and the datagrams they moved (datagrams per call is the batching factor), one
/// set for all of a server's sockets.
#[derive(Debug, Default)]
pub struct IoCounters {
    pub receive_calls: AtomicU64,
    pub datagrams_received: AtomicU64,
    pub send_calls: AtomicU64,
    pub datagrams_sent: AtomicU64,
}

/// A non-blocking UDP socket registered with the runtime, with quinn-udp's batched IO.
pub(super) struct BatchSocket {
    fd: AsyncFd<std::net::UdpSocket>,
    state: UdpSocketState,
    counters: Arc<IoCounters>,
}

impl BatchSocket {
    /// Takes over `socket` (made non-blocking here) on the current runtime.
    pub(super) fn new(socket: std::net::UdpSocket, counters: Arc<IoCounters>) -> io::Result<BatchSocket> {
        socket.set_nonblocking(true)?;
        let state = UdpSocketState::new((&socket).into())?;
        allow_fragmentation(&socket);
        // SAFETY: the AsyncFd owns the socket, so its descriptor stays open and the same until the AsyncFd drops.
        let fd = unsafe { AsyncFd::register_with_interest(socket, Interest::READABLE | Interest::WRITABLE)? };
        Ok(BatchSocket { fd, state, counters })
    }

    pub(super) fn local_addr(&self) -> io::Result<SocketAddr> {
        self.fd.get_ref().local_addr()
    }

    pub(super) fn socket(&self) -> &std::net::UdpSocket {
        self.fd.get_ref()
    }

    /// Waits until datagrams are queued, then receives a batch of them into this thread's slots and hands it to `f`.
    /// `f` runs before the next await, so it must not block.
    pub(super) async fn recv_batch(&self, f: impl FnOnce(Received<'_>)) -> io::Result<()> {
        let mut f = Some(f);
        loop {
            let mut guard = self.fd.readable().await?;
            let outcome = RECV.with_borrow_mut(|batch| {
                let received = guard.try_io(|s| batch.recv(&self.state, s.get_ref()));
                match received {
                    Err(_would_block) => None, // readiness cleared by try_io; wait again
                    Ok(Err(e)) => Some(Err(e)),
                    Ok(Ok(n)) => {
                        self.counters.receive_calls.fetch_add(1, Relaxed);
                        let datagrams: usize = batch.meta[..n].iter().map(RecvBatch::datagrams_in).sum();
                        self.counters.datagrams_received.fetch_add(datagrams as u64, Relaxed);
                        if n < BATCH_SIZE {
                            guard.clear_ready();
                        }
                        if let Some(f) = f.take() {
                            f(Received { batch, n });
                        }
                        Some(Ok(()))
                    }
                }
            });
            if let Some(result) = outcome {
                return result;
            }
        }
    }

    /// Sends one datagram now, or drops it if the socket would block.
    fn send_one(&self, to: SocketAddr, data: &[u8]) {
        let _ = self.send(&Transmit { destination: to, ecn: None, contents: data, segment_size: None, src_ip: None });
    }

    /// Sends `data` to `to` as datagrams of `seg` bytes (the last may be shorter): one GSO send, or, if the kernel
    /// refuses that, one send each.
    fn send_run(&self, to: SocketAddr, data: &[u8], seg: usize) {
        if data.len() <= seg {
            return self.send_one(to, data);
        }
        let run = Transmit { destination: to, ecn: None, contents: data, segment_size: Some(seg), src_ip: None };
        match self.send(&run) {
            Err(e) if e.kind() != io::ErrorKind::WouldBlock => data.chunks(seg).for_each(|d| self.send_one(to, d)),
            _ => {}
        }
    }

    fn send(&self, transmit: &Transmit<'_>) -> io::Result<()> {
        let sent = self.fd.try_io(Interest::WRITABLE, |s| self.state.try_send(s.into(), transmit));
        self.counters.send_calls.fetch_add(1, Relaxed);
        if sent.is_ok() {
            let datagrams = transmit.segment_size.map_or(1, |seg| transmit.contents.len().div_ceil(seg));
            self.counters.datagrams_sent.fetch_add(datagrams as u64, Relaxed);
        }
        sent
    }

    /// How many equal datagrams one GSO send may carry on this socket (1 without GSO).
    fn gso_segments(&self) -> usize {
        self.state.max_gso_segments()
    }
}

/// Puts the socket back to the kernel's default path-MTU mode (fragment locally when needed), see the invariants.
fn allow_fragmentation(socket: &std::net::UdpSocket) {
    #[cfg(target_os = "linux")]
    {
        let (level, name, value) = match socket.local_addr() {
            Ok(SocketAddr::V6(_)) => (libc::IPPROTO_IPV6, libc::IPV6_MTU_DISCOVER, libc::IPV6_PMTUDISC_WANT),
            _ => (libc::IPPROTO_IP, libc::IP_MTU_DISCOVER, libc::IP_PMTUDISC_WANT),
        };
        // SAFETY: a valid descriptor, an int option and a pointer to an int that lives across the call.
        let _ = unsafe {
            libc::setsockopt(
                socket.as_raw_fd(),
                level,
                name,
                std::ptr::from_ref(&value).cast(),
                std::mem::size_of_val(&value) as libc::socklen_t,
            )
        };
    }
}

thread_local! {
    static RECV: RefCell<RecvBatch> = RefCell::new(RecvBatch::new());
    static OUT: RefCell<Outgoing> = RefCell::new(Outgoing::default());
}

/// Receive slots for one `recvmmsg`, plus a scratch slot for datagrams that GRO packed behind another one.
struct RecvBatch {
    slots: Vec<u8>,
    meta: [RecvMeta; BATCH_SIZE],
    scratch: Vec<u8>,
}

impl RecvBatch {
    fn new() -> RecvBatch {
        RecvBatch { slots: vec![0; SLOT * BATCH_SIZE], meta: [RecvMeta::default(); BATCH_SIZE], scratch: vec![0; SLOT] }
    }

    /// Datagrams in one received slot (GRO may have packed several).
    fn datagrams_in(meta: &RecvMeta) -> usize {
        if meta.stride == 0 {
            1
        } else {
            meta.len.div_ceil(meta.stride).max(1)
        }
    }

    fn recv(&mut self, state: &UdpSocketState, socket: &std::net::UdpSocket) -> io::Result<usize> {
        let mut chunks = self.slots.chunks_exact_mut(SLOT);
        let mut bufs: [IoSliceMut<'_>; BATCH_SIZE] = std::array::from_fn(|_| {
            let slot = chunks.next().expect("BATCH_SIZE slots");
            IoSliceMut::new(&mut slot[HEADROOM..HEADROOM + MAX_DATAGRAM])
        });
        state.recv(socket.into(), &mut bufs, &mut self.meta)
    }
}

/// The datagrams of one receive.
pub(super) struct Received<'a> {
    batch: &'a mut RecvBatch,
    n: usize,
}

impl Received<'_> {
    /// Calls `f` with every datagram, `(source, slot, len)`: the payload at `slot[HEADROOM..HEADROOM + len]`, the
    /// slot at least `HEADROOM + len + 3` bytes long. GRO batches are split at their stride.
    pub(super) fn for_each(self, mut f: impl FnMut(SocketAddr, &mut [u8], usize)) {
        let RecvBatch { slots, meta, scratch } = self.batch;
        for (i, meta) in meta.iter().take(self.n).enumerate() {
            let slot = &mut slots[i * SLOT..(i + 1) * SLOT];
            if meta.stride == 0 || meta.len <= meta.stride {
                f(meta.addr, slot, meta.len);
                continue;
            }
            // Several datagrams in one slot: the first in place, the rest copied behind headroom of their own.
            let mut at = 0;
            while at < meta.len {
                let len = meta.stride.min(meta.len - at);
                if at == 0 {
                    f(meta.addr, slot, len);
                } else {
                    let src = HEADROOM + at;
                    scratch[HEADROOM..HEADROOM + len].copy_from_slice(&slot[src..src + len]);
                    f(meta.addr, scratch, len);
                }
                at += len;
            }
        }
    }
}

/// Where a queued datagram leaves from.
#[derive(Clone, Copy)]
pub(super) enum Via<'a> {
    /// The listening socket (towards UDP clients).
    Listener,
    /// A relay socket (towards peers).
    Relay(&'a Arc<BatchSocket>),
}

impl Via<'_> {
    /// Whether a run sending through `relay` (`None`: the listener) leaves from here.
    fn is(self, relay: Option<&Arc<BatchSocket>>) -> bool {
        match (self, relay) {
            (Via::Listener, None) => true,
            (Via::Relay(a), Some(b)) => Arc::ptr_eq(a, b),
            _ => false,
        }
    }
}

/// One run of datagrams for one destination through one socket; all of `seg` bytes but possibly the last.
struct Run {
    /// The relay socket it leaves from (held past the engine's lock); `None`: the listener.
    relay: Option<Arc<BatchSocket>>,
    to: SocketAddr,
    seg: usize,
    count: usize,
    /// Closed once a shorter datagram ended it, or it reached the GSO limits.
    closed: bool,
    data: Vec<u8>,
}

/// Datagrams queued during one batch, sent together once the engine's lock is released.
#[derive(Default)]
pub(super) struct Outgoing {
    /// The listening socket's GSO segment limit, for this batch.
    listener_gso: usize,
    runs: Vec<Run>,
    /// Emptied buffers of earlier runs, reused.
    spare: Vec<Vec<u8>>,
}

impl Outgoing {
    /// Runs `f` with this thread's queue, then sends what it queued through `listener` and the relay sockets.
    pub(super) fn with<R>(listener: &BatchSocket, f: impl FnOnce(&mut Outgoing) -> R) -> R {
        OUT.with_borrow_mut(|out| {
            out.listener_gso = listener.gso_segments();
            let r = f(out);
            out.flush(listener);
            r
        })
    }

    /// Queues `data` for `to` through `via`.
    pub(super) fn push(&mut self, via: Via<'_>, to: SocketAddr, data: &[u8]) {
        let gso = match via {
            Via::Listener => self.listener_gso,
            Via::Relay(s) => s.gso_segments(),
        };
        // Only the newest run to this destination through this socket may grow, so that order per destination holds.
        if let Some(run) = self.runs.iter_mut().rev().find(|r| r.to == to && via.is(r.relay.as_ref())) {
            if !run.closed && data.len() <= run.seg && run.data.len() + data.len() <= MAX_GSO_BYTES {
                run.data.extend_from_slice(data);
                run.count += 1;
                run.closed = data.len() < run.seg || run.count >= gso;
                return;
            }
        }
        let mut buf = self.spare.pop().unwrap_or_default();
        buf.extend_from_slice(data);
        let closed = gso <= 1 || data.len() > MAX_GSO_SEGMENT;
        // The socket is held (one reference count) per run, not per datagram.
        let relay = match via {
            Via::Listener => None,
            Via::Relay(s) => Some(s.clone()),
        };
        self.runs.push(Run { relay, to, seg: data.len(), count: 1, closed, data: buf });
    }

    fn flush(&mut self, listener: &BatchSocket) {
        for mut run in self.runs.drain(..) {
            let socket = run.relay.as_deref().unwrap_or(listener);
            socket.send_run(run.to, &run.data, run.seg);
            // Keep a bounded number of small buffers for the next batches.
            if self.spare.len() < SPARE_RUNS && run.data.capacity() <= SPARE_CAPACITY {
                run.data.clear();
                self.spare.push(run.data);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// (destination port, segment size, datagrams, bytes) of each queued run, in send order.
    fn runs(out: &Outgoing) -> Vec<(u16, usize, usize, usize)> {
        out.runs.iter().map(|r| (r.to.port(), r.seg, r.count, r.data.len())).collect()
    }

    fn queue(gso: usize, datagrams: &[(u16, usize)]) -> Outgoing {
        let mut out = Outgoing { listener_gso: gso, ..Outgoing::default() };
        for &(port, len) in datagrams {
            out.push(Via::Listener, SocketAddr::from(([127, 0, 0, 1], port)), &vec![port as u8; len]);
        }
        out
    }

    #[test]
    fn equal_datagrams_to_one_destination_form_one_run_and_a_shorter_one_ends_it() {
        let out = queue(64, &[(1, 100), (1, 100), (1, 60), (1, 100)]);
        assert_eq!(runs(&out), [(1, 100, 3, 260), (1, 100, 1, 100)]);
    }

    #[test]
    fn a_longer_datagram_starts_a_new_run_and_order_per_destination_holds() {
        // 100, 120, 100, 100 to one destination: the third ends the 120 run as its shorter last segment, the fourth
        // starts a new run; none joins the first run, which would send it ahead of the 120.
        let out = queue(64, &[(1, 100), (1, 120), (1, 100), (1, 100)]);
        assert_eq!(runs(&out), [(1, 100, 1, 100), (1, 120, 2, 220), (1, 100, 1, 100)]);
    }

    #[test]
    fn destinations_interleave_into_runs_of_their_own() {
        let out = queue(64, &[(1, 100), (2, 100), (1, 100), (2, 80), (2, 80)]);
        assert_eq!(runs(&out), [(1, 100, 2, 200), (2, 100, 2, 180), (2, 80, 1, 80)]);
    }

    #[test]
    fn runs_respect_the_socket_gso_limit_and_the_byte_limit() {
        assert_eq!(runs(&queue(2, &[(1, 10); 5])), [(1, 10, 2, 20), (1, 10, 2, 20), (1, 10, 1, 10)]);
        assert_eq!(runs(&queue(1, &[(1, 10); 2])), [(1, 10, 1, 10), (1, 10, 1, 10)]);
        let many = queue(64, &[(1, 1_000); 70]);
        assert_eq!(runs(&many), [(1, 1_000, 64, 64_000), (1, 1_000, 6, 6_000)]);
    }

    #[test]
    fn datagrams_above_the_safe_segment_size_leave_alone() {
        let out = queue(64, &[(1, 1_201), (1, 1_201), (1, 1_200), (1, 1_200)]);
        assert_eq!(runs(&out), [(1, 1_201, 1, 1_201), (1, 1_201, 1, 1_201), (1, 1_200, 2, 2_400)]);
    }
}
