//! Prometheus metrics (OpenMetrics text at `GET /metrics`).
//!
//! One [`Metrics`] per server (no global registry, so several servers in one test process stay apart). Hot-path
//! counters are resolved to handles once, at construction: counting a relayed message or a reject is one atomic add,
//! never a label lookup. TURN counters live in the TURN engine and are read at scrape time by a collector.

use std::sync::atomic::AtomicU64;
use std::sync::Arc;

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::counter::{ConstCounter, Counter};
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::{ConstGauge, Gauge};
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::metrics::info::Info;
use prometheus_client::registry::Registry;
use switchboard_proto::RejectCode;

use crate::outbox::Cause;
use crate::turn::TurnServer;

/// The protocol's methods, in label order.
pub const METHODS: [&str; 5] = ["register", "unregister", "call", "candidate", "bye"];
/// Disconnect causes, in label order.
pub const CAUSES: [Cause; 9] = [
    Cause::Closed,
    Cause::Timeout,
    Cause::SlowConsumer,
    Cause::Protocol,
    Cause::Shutdown,
    Cause::Kicked,
    Cause::TakenOver,
    Cause::RateLimited,
    Cause::Restart,
];

type Labels = Vec<(&'static str, &'static str)>;

/// Every metric of one server.
pub struct Metrics {
    registry: Registry,
    pub connections_open: Gauge,
    pub connections_total: Counter,
    pub rooms: Gauge,
    pub calls_pending: Gauge,
    pub calls_active: Gauge,
    /// Tasks alive on the server's runtime (sessions, timers, drivers), set at each scrape.
    pub tasks: Gauge,
    pub bytes_in: Counter<u64, AtomicU64>,
    pub bytes_out: Counter<u64, AtomicU64>,
    /// Relayed messages by method, indexed like [`METHODS`].
    relayed: [Counter; 5],
    /// Rejects by code, indexed like [`RejectCode::ALL`].
    rejects: Vec<Counter>,
    /// Disconnects by cause, indexed like [`CAUSES`].
    disconnects: Vec<Counter>,
    /// Seconds from a call's forwarding to the callee's answer.
    pub call_setup: Histogram,
}

impl Metrics {
    pub fn new() -> Metrics {
        let mut registry = Registry::with_prefix("switchboard");
        let connections_open = Gauge::default();
        let connections_total = Counter::default();
        let rooms = Gauge::default();
        let calls_pending = Gauge::default();
        let calls_active = Gauge::default();
        let tasks = Gauge::default();
        let bytes_in = Counter::default();
        let bytes_out = Counter::default();
        let relayed_family = Family::<Labels, Counter>::default();
        let rejects_family = Family::<Labels, Counter>::default();
        let disconnects_family = Family::<Labels, Counter>::default();
        let call_setup = Histogram::new(exponential_buckets(0.0005, 2.0, 16));
        let build = Info::new(vec![("version", env!("CARGO_PKG_VERSION"))]);

        registry.register("connections_open", "Open websocket sessions", connections_open.clone());
        registry.register("connections", "Websocket sessions accepted", connections_total.clone());
        registry.register("rooms", "Registered rooms", rooms.clone());
        registry.register("calls_pending", "Calls forwarded and not yet answered", calls_pending.clone());
        registry.register("calls_active", "Accepted calls not yet ended", calls_active.clone());
        registry.register("runtime_tasks", "Tasks alive on the server's async runtime", tasks.clone());
        registry.register(
            "received_bytes",
            "Websocket bytes received from clients after the handshake",
            bytes_in.clone(),
        );
        registry.register("sent_bytes", "Websocket bytes sent to clients after the handshake", bytes_out.clone());
        registry.register("relayed_messages", "Messages relayed, by method", relayed_family.clone());
        registry.register("rejects", "Rejects sent, by code", rejects_family.clone());
        registry.register("disconnects", "Sessions ended, by cause", disconnects_family.clone());
        registry.register("call_setup_seconds", "Time from a call's forwarding to its answer", call_setup.clone());
        registry.register("build", "Build information", build);

        let relayed = METHODS.map(|m| relayed_family.get_or_create(&vec![("method", m)]).clone());
        let rejects =
            RejectCode::ALL.iter().map(|c| rejects_family.get_or_create(&vec![("code", c.as_str())]).clone()).collect();
        let disconnects =
            CAUSES.iter().map(|c| disconnects_family.get_or_create(&vec![("cause", c.as_str())]).clone()).collect();
        Metrics {
            registry,
            connections_open,
            connections_total,
            rooms,
            calls_pending,
            calls_active,
            tasks,
            bytes_in,
            bytes_out,
            relayed,
            rejects,
            disconnects,
            call_setup,
        }
    }

    /// Adds the cluster metrics (cluster mode only) and returns their handles.
    pub fn register_cluster(&mut self) -> ClusterMetrics {
        let m = ClusterMetrics {
            backbone_up: Gauge::default(),
            backbone_rtt: Histogram::new(exponential_buckets(0.0001, 2.0, 16)),
            relays_sent: Counter::default(),
            relays_received: Counter::default(),
            nodes: Gauge::default(),
            bus_dropped: Counter::default(),
        };
        let r = &mut self.registry;
        r.register("cluster_backbone_up", "1 while the cluster backbone answers, else 0", m.backbone_up.clone());
        r.register("cluster_backbone_rtt_seconds", "Round trip of backbone operations", m.backbone_rtt.clone());
        r.register("cluster_relays_sent", "Messages sent to sessions' rooms on other nodes", m.relays_sent.clone());
        r.register(
            "cluster_relays_received",
            "Messages received from callers on other nodes",
            m.relays_received.clone(),
        );
        r.register("cluster_nodes", "Live cluster nodes seen, this one included", m.nodes.clone());
        r.register("cluster_bus_dropped", "Envelopes to other nodes dropped (queue full)", m.bus_dropped.clone());
        m
    }

    /// Adds the TURN server's counters to every scrape.
    pub fn register_turn(&mut self, turn: TurnServer) {
        self.registry.register_collector(Box::new(TurnCollector(turn)));
    }

    pub fn relayed(&self, method: &str) {
        if let Some(i) = METHODS.iter().position(|m| *m == method) {
            self.relayed[i].inc();
        }
    }

    pub fn reject(&self, code: RejectCode) {
        if let Some(i) = RejectCode::ALL.iter().position(|c| *c == code) {
            self.rejects[i].inc();
        }
    }

    pub fn disconnect(&self, cause: Cause) {
        if let Some(i) = CAUSES.iter().position(|c| *c == cause) {
            self.disconnects[i].inc();
        }
    }

    /// The OpenMetrics text exposition.
    pub fn render(&self) -> String {
        let mut out = String::new();
        let _ = prometheus_client::encoding::text::encode(&mut out, &self.registry);
        out
    }
}

/// Cluster mode's metrics (SPEC.md §9); the rooms this node holds are `switchboard_rooms`.
#[derive(Clone)]
pub struct ClusterMetrics {
    pub backbone_up: Gauge,
    pub backbone_rtt: Histogram,
    pub relays_sent: Counter,
    pub relays_received: Counter,
    pub nodes: Gauge,
    pub bus_dropped: Counter,
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics::new()
    }
}

/// Reads the TURN engine's counters at scrape time.
struct TurnCollector(TurnServer);

impl std::fmt::Debug for TurnCollector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("TurnCollector")
    }
}

impl Collector for TurnCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let s = self.0.stats();
        let counters = [
            ("turn_allocations", "TURN allocations created", s.allocations_total),
            ("turn_relayed_packets_to_peers", "Packets relayed from clients to peers", s.packets_to_peers),
            ("turn_relayed_bytes_to_peers", "Payload bytes relayed from clients to peers", s.bytes_to_peers),
            ("turn_relayed_packets_to_clients", "Packets relayed from peers to clients", s.packets_to_clients),
            ("turn_relayed_bytes_to_clients", "Payload bytes relayed from peers to clients", s.bytes_to_clients),
            ("turn_dropped_packets", "Packets dropped (no permission, over the bandwidth cap)", s.packets_dropped),
            ("turn_denied_permissions", "Permissions refused by the peer policy", s.permissions_denied),
            ("turn_auth_failures", "Requests with bad credentials", s.auth_failures),
            (
                "turn_auth_failures_unchallenged",
                "Requests with bad credentials answered 441, not challenged again (the client was told often enough)",
                s.auth_failures_unchallenged,
            ),
        ];
        let (tcp_refused, tcp_unallocated) = self.0.tcp_closed_by_limits();
        let limits = [
            ("turn_tcp_refused", "TURN TCP connections closed at accept: too many from one address", tcp_refused),
            (
                "turn_tcp_unallocated_closed",
                "TURN TCP connections closed without an allocation in time",
                tcp_unallocated,
            ),
        ];
        let io = self.0.udp_io();
        let load = |c: &std::sync::atomic::AtomicU64| c.load(std::sync::atomic::Ordering::Relaxed);
        let batching = [
            ("turn_udp_receive_calls", "Receive system calls of the TURN UDP data path", load(&io.receive_calls)),
            ("turn_udp_datagrams_received", "Datagrams those receive calls took in", load(&io.datagrams_received)),
            ("turn_udp_send_calls", "Send system calls of the TURN UDP data path", load(&io.send_calls)),
            ("turn_udp_datagrams_sent", "Datagrams those send calls put out", load(&io.datagrams_sent)),
        ];
        for (name, help, value) in counters.into_iter().chain(limits).chain(batching) {
            let c = ConstCounter::new(value);
            c.encode(encoder.encode_descriptor(name, help, None, c.metric_type())?)?;
        }
        let g = ConstGauge::new(self.0.allocations() as i64);
        g.encode(encoder.encode_descriptor(
            "turn_allocations_active",
            "TURN allocations held now",
            None,
            g.metric_type(),
        )?)?;
        Ok(())
    }
}

/// Shared handle.
pub type SharedMetrics = Arc<Metrics>;
