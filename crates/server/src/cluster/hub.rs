//! The cluster hub: the hub state of this node's own sessions ([`crate::hub::state`]), plus a [`Backbone`] to the
//! other nodes, so that the nodes behave as one server (SPEC.md §9). Session code sees only the [`Hub`] trait.
//!
//! Invariants:
//! - A room's state (guests, pending calls, timers, limits) lives on the node of the session that holds it, under
//!   that node's one hub lock; every rule of SPEC.md §2–6 is the single-node code applied to it. A caller on another
//!   node is a proxy session there, whose frames travel back over the bus.
//! - Nothing waits on the backbone under the lock or on a session's read path. A message that needs the backbone (a
//!   register, a call into a room not held here) starts an operation and the session's later messages queue behind
//!   it (bounded), so per-sender order holds; its answer (accept, reject, `unavailable`) is queued to the session
//!   when the backbone replies.
//! - A room is claimed in the backbone under a fence before its accept goes out, and released by compare-and-set on
//!   that fence, so a stale session or node can never free or steal a newer registration.
//! - Faults come from the membership driver: a lost peer ends every call with its sessions (byes here); this node
//!   declared lost closes every session with 1012 and no bye, forgets everything and rejoins; a backbone that lost
//!   its state gets every room here re-claimed before new registers are accepted.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use parking_lot::Mutex;
use switchboard_proto::reply::UnregisterAccept;
use switchboard_proto::{Body, Message, Reject, RejectCode};
use tokio::sync::{mpsc, oneshot};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use super::envelope::{self, Envelope};
use super::membership::{self, NodeEvent};
use super::{Backbone, BackboneError, Bus, Claim, Fence, NodeId};
use crate::hub::state::{already_registered, too_many_calls, Origin, Remote, RemoteTour, Settings, Sink, State};
use crate::hub::{Hub, HubFuture, HubUnavailable, RoomInfo, SessionId};
use crate::metrics::{ClusterMetrics, Metrics};
use crate::outbox::{Cause, Outbox};
use crate::ws::Frame;

/// Messages one session may have waiting behind a backbone operation.
const QUEUE_LIMIT: usize = 256;
/// How long an admin query waits for the other nodes.
const QUERY_TIMEOUT: Duration = Duration::from_secs(2);

/// Timings of the cluster.
#[derive(Clone, Copy, Debug)]
pub struct ClusterTiming {
    pub heartbeat: Duration,
    pub node_timeout: Duration,
}

/// A [`Hub`] for one node of a cluster.
pub struct ClusterHub<B: Backbone> {
    inner: Arc<Inner<B>>,
}

struct Inner<B: Backbone> {
    state: Arc<Mutex<State<Ext>>>,
    backbone: Arc<B>,
    bus: Arc<Bus<B>>,
    metrics: ClusterMetrics,
    /// Admin queries waiting for other nodes' replies.
    queries: Mutex<HashMap<u64, oneshot::Sender<String>>>,
    next_query: AtomicU64,
    /// The backbone answered its last heartbeat (an atomic: the hub state reads it under its own lock).
    reachable: AtomicBool,
    /// Stops the membership driver (which then leaves the cluster).
    stop: CancellationToken,
    timing: ClusterTiming,
}

/// What the cluster hub keeps beside the hub state, under the same lock.
#[derive(Default)]
struct Ext {
    /// This node, once it has joined.
    node: Option<NodeId>,
    /// Other live nodes seen.
    peers: i64,
    /// Joined, and every room here is asserted: registers may go to the backbone.
    accepting: bool,
    /// Messages waiting behind a backbone operation, per session; present while one is in flight.
    queues: HashMap<SessionId, VecDeque<Queued>>,
    /// Serials of calls into other nodes' rooms.
    next_serial: u64,
    /// Generations of registrations.
    next_generation: u64,
}

struct Queued {
    raw: String,
    takeover: bool,
}

/// The next step for one message.
enum Route<'m> {
    Done(Result<(), Reject<'m>>),
    Wait(Op),
}

/// A backbone operation started for one session's message.
enum Op {
    /// Claim a room (a wanted id, or assigned ones until one is free).
    Register { raw: String, wanted: Option<String>, takeover: bool },
    /// The session already holds a room and registers one not held here: which reject is it?
    Registered { raw: String, wanted: String, takeover: bool },
    /// Find the node of a room not held here, then forward the call there.
    Call { raw: String, room: String },
    /// A message about a room not held here and not one of the session's calls: does the room exist at all?
    Lookup { raw: String, room: String },
    /// Release a room freed here, then accept the unregister.
    Unregister { raw: String, room: String, fence: Fence },
}

/// The backbone's answer to an [`Op`].
enum Outcome {
    Reject(RejectCode, String),
    Install { room: String, fence: Fence, took_from: Option<Fence> },
    Forward { room: String, owner: Fence },
    Unregistered { room: String },
}

impl<B: Backbone> ClusterHub<B> {
    /// Joins the cluster in the background (a node starts without its backbone and joins when it appears) and
    /// starts serving. `metrics` is the node's registry, `cluster` its cluster section.
    pub fn start(
        settings: Settings,
        metrics: Arc<Metrics>,
        cluster: ClusterMetrics,
        backbone: Arc<B>,
        timing: ClusterTiming,
    ) -> ClusterHub<B> {
        let state = State::new_shared(settings, metrics, Ext::default());
        let bus = Arc::new(Bus::new(backbone.clone()));
        let stop = CancellationToken::new();
        let inner = Arc::new(Inner {
            state,
            backbone: backbone.clone(),
            bus,
            metrics: cluster,
            queries: Mutex::default(),
            next_query: AtomicU64::new(1),
            reachable: AtomicBool::new(false),
            timing,
            stop: stop.clone(),
        });
        let remote: Arc<dyn Remote> = Arc::new(BusRemote { inner: Arc::downgrade(&inner) });
        inner.state.lock().remote = Some(remote);
        let (_driver, events) = membership::spawn(backbone, timing.heartbeat, timing.node_timeout, stop.clone());
        tokio::spawn(run_events(inner.clone(), events));
        tokio::spawn(run_inbox(inner.clone(), timing.heartbeat));
        ClusterHub { inner }
    }

    /// This node, once joined.
    pub fn node(&self) -> Option<NodeId> {
        self.inner.state.lock().ext.node.clone()
    }
}

impl<B: Backbone> Hub for ClusterHub<B> {
    fn attach(&self, outbox: Outbox) -> SessionId {
        self.inner.state.lock().attach(Sink::Local(outbox), None)
    }

    fn dispatch<'m>(&self, sid: SessionId, msg: &'m Message<'_>, raw: &str, takeover: bool) -> Result<(), Reject<'m>> {
        let mut st = self.inner.state.lock();
        if let Some(queue) = st.ext.queues.get_mut(&sid) {
            if queue.len() >= QUEUE_LIMIT {
                return Err(msg.reject(RejectCode::Unavailable, "too many requests waiting for the cluster"));
            }
            queue.push_back(Queued { raw: raw.to_owned(), takeover });
            return Ok(());
        }
        match self.inner.route(&mut st, sid, msg, raw, takeover) {
            Route::Done(result) => result,
            Route::Wait(op) => {
                st.ext.queues.insert(sid, VecDeque::new());
                drop(st);
                spawn_op(self.inner.clone(), sid, op);
                Ok(())
            }
        }
    }

    fn detach(&self, sid: SessionId) {
        let mut st = self.inner.state.lock();
        st.ext.queues.remove(&sid);
        st.detach(sid);
    }

    fn begin_shutdown(&self) {
        self.inner.state.lock().shutting_down = true;
        // The driver leaves the cluster: this node's rooms are free at once, and the other nodes end its calls.
        self.inner.stop.cancel();
    }

    fn rooms(&self) -> HubFuture<'_, Vec<RoomInfo>> {
        Box::pin(async move {
            let members = self.inner.timed(self.inner.backbone.members()).await.map_err(unavailable)?;
            let me = self.node().ok_or_else(|| HubUnavailable("not joined yet".into()))?;
            let others: Vec<String> = members.into_iter().map(|n| n.id).filter(|id| *id != me.id).collect();
            let replies = futures_util::future::join_all(others.iter().map(|n| self.inner.query(n, None))).await;
            let mut all = self.inner.state.lock().room_infos();
            for (node, reply) in others.iter().zip(replies) {
                all.extend(reply.map_err(|e| HubUnavailable(format!("node {node}: {}", e.0)))?);
            }
            all.sort_by(|a, b| a.room_id.cmp(&b.room_id));
            Ok(all)
        })
    }

    fn room<'a>(&'a self, room_id: &'a str) -> HubFuture<'a, Option<RoomInfo>> {
        Box::pin(async move {
            let here = self.inner.state.lock().room_info(room_id);
            if here.is_some() {
                return Ok(here);
            }
            let Some(owner) = self.inner.timed(self.inner.backbone.owner(room_id)).await.map_err(unavailable)? else {
                return Ok(None);
            };
            if self.node().is_some_and(|me| me.id == owner.node) {
                return Ok(self.inner.state.lock().room_info(room_id));
            }
            Ok(self.inner.query(&owner.node, Some(room_id)).await?.into_iter().next())
        })
    }

    fn kick<'a>(&'a self, room_id: &'a str) -> HubFuture<'a, bool> {
        Box::pin(async move {
            let kicked = self.inner.state.lock().kick(room_id);
            if kicked {
                return Ok(true);
            }
            let Some(owner) = self.inner.timed(self.inner.backbone.owner(room_id)).await.map_err(unavailable)? else {
                return Ok(false);
            };
            if self.node().is_some_and(|me| me.id == owner.node) {
                return Ok(false);
            }
            let kick = Envelope::Kick { room: room_id.to_owned() };
            self.inner.bus.send(&owner.node, kick.encode()).map_err(|e| HubUnavailable(e.to_string()))?;
            Ok(true)
        })
    }

    fn ready(&self) -> bool {
        self.inner.state.lock().ext.accepting && self.inner.reachable()
    }
}

fn unavailable(e: BackboneError) -> HubUnavailable {
    HubUnavailable(e.to_string())
}

impl<B: Backbone> Inner<B> {
    fn reachable(&self) -> bool {
        self.reachable.load(Ordering::Relaxed)
    }

    fn set_reachable(&self, up: bool) {
        self.reachable.store(up, Ordering::Relaxed);
        self.metrics.backbone_up.set(i64::from(up));
    }

    /// Decides what one message needs: the hub state alone, a bus send, or a backbone operation.
    fn route<'m>(
        &self,
        st: &mut State<Ext>,
        sid: SessionId,
        msg: &'m Message<'_>,
        raw: &str,
        takeover: bool,
    ) -> Route<'m> {
        let Some(session) = st.sessions.get(&sid) else { return Route::Done(Ok(())) };
        let own = session.room.clone();
        let local = |st: &mut State<Ext>| Route::Done(st.dispatch(sid, msg, raw, takeover, 0));
        match &msg.body {
            Body::Register { room_id } => {
                let held_here = room_id.as_deref().and_then(|r| st.rooms.get(r)).map(|r| r.owner);
                match (own, room_id) {
                    // Decided here: the single-node rules give the same answer as the cluster would.
                    (Some(_), None) => local(st),
                    (_, Some(_)) if held_here.is_some_and(|h| h != sid) && !takeover => local(st),
                    (Some(_), Some(_)) if held_here.is_some() => local(st),
                    _ if !(st.ext.accepting && self.reachable()) => {
                        Route::Done(Err(msg.reject(RejectCode::Unavailable, "cluster backbone unavailable")))
                    }
                    (Some(_), Some(wanted)) => {
                        Route::Wait(Op::Registered { raw: raw.to_owned(), wanted: wanted.to_string(), takeover })
                    }
                    (None, wanted) => Route::Wait(Op::Register {
                        raw: raw.to_owned(),
                        wanted: wanted.as_deref().map(str::to_owned),
                        takeover,
                    }),
                }
            }
            Body::Unregister { room_id } => {
                let Some(own) = own else { return local(st) };
                let fence =
                    st.rooms.get(&own).filter(|r| r.owner == sid && **room_id == *own).and_then(|r| r.fence.clone());
                let Some(fence) = fence else { return local(st) };
                // Free it here now (its callers get their byes); the accept follows the backbone's release, so that
                // whoever registers the id next, on any node, finds it free.
                if let Some(r) = st.rooms.get_mut(&own) {
                    r.fence = None;
                }
                st.release(sid);
                st.end_tours(sid);
                Route::Wait(Op::Unregister { raw: raw.to_owned(), room: own.to_string(), fence })
            }
            // The session's own registration lives here: fresh credentials need nobody else.
            Body::IceServers => local(st),
            Body::Call { room_id, .. } => {
                if own.is_none() || st.rooms.contains_key(&**room_id) {
                    return local(st);
                }
                // The guest and per-caller checks wait for the lookup (`forward_call`): one server answers
                // `room_not_found` before either, and so must the cluster.
                if !self.reachable() {
                    return Route::Done(Err(msg.reject(RejectCode::Unavailable, "cluster backbone unavailable")));
                }
                Route::Wait(Op::Call { raw: raw.to_owned(), room: room_id.to_string() })
            }
            Body::Answer { room_id, .. } => {
                if own.is_none() || st.rooms.contains_key(&**room_id) {
                    return local(st);
                }
                Route::Wait(Op::Lookup { raw: raw.to_owned(), room: room_id.to_string() })
            }
            Body::Candidate { room_id, guest_id } | Body::Bye { room_id, guest_id } => {
                let Some(own) = own else { return local(st) };
                if **room_id == *own || st.rooms.contains_key(&**room_id) {
                    return local(st);
                }
                let key = (Arc::from(&**room_id), Arc::from(&**guest_id));
                let Some(tour) = session.remote_tours.get(&key) else {
                    return Route::Wait(Op::Lookup { raw: raw.to_owned(), room: room_id.to_string() });
                };
                let (node, serial) = (tour.node.clone(), tour.serial);
                if !self.reachable() {
                    return Route::Done(Err(msg.reject(RejectCode::Unavailable, "cluster backbone unavailable")));
                }
                if let Err(e) = self.forward(st, sid, &node, own, serial, raw) {
                    return Route::Done(Err(msg.reject(RejectCode::Unavailable, e)));
                }
                if matches!(msg.body, Body::Bye { .. }) {
                    if let Some(s) = st.sessions.get_mut(&sid) {
                        s.remote_tours.remove(&key);
                    }
                }
                st.metrics.relayed(msg.body.method());
                Route::Done(Ok(()))
            }
        }
    }

    /// Sends one message of local session `sid` to the node holding the room it is about.
    fn forward(
        &self,
        st: &State<Ext>,
        sid: SessionId,
        node: &str,
        own: Arc<str>,
        serial: u64,
        raw: &str,
    ) -> Result<(), String> {
        let me = st.ext.node.as_ref().ok_or("this node has not joined its cluster")?;
        let from = envelope::From { node: me.id.clone(), incarnation: me.incarnation, session: sid.0 };
        self.bus.send(node, envelope::encode_relay(&from, &own, serial, raw)).map_err(|e| e.to_string())?;
        self.metrics.relays_sent.inc();
        Ok(())
    }

    /// Runs a backbone operation (no lock held) and turns its result into an [`Outcome`].
    async fn run(&self, sid: SessionId, op: &Op) -> Outcome {
        let down =
            |e: BackboneError| Outcome::Reject(RejectCode::Unavailable, format!("cluster backbone unavailable: {e}"));
        match op {
            Op::Register { wanted, takeover, .. } => {
                let Some(me) = self.state.lock().ext.node.clone() else {
                    return Outcome::Reject(RejectCode::Unavailable, "not joined to the cluster yet".into());
                };
                // An assigned id that someone holds already is simply drawn again; a wanted one is retried only when
                // its owner changed between the claim and the take-over.
                for _ in 0..8 {
                    let (room, fence) = {
                        let mut st = self.state.lock();
                        st.ext.next_generation += 1;
                        let room = wanted.clone().unwrap_or_else(|| st.assign_room_id().to_string());
                        let fence = Fence {
                            node: me.id.clone(),
                            incarnation: me.incarnation,
                            session: sid.0,
                            generation: st.ext.next_generation,
                        };
                        (room, fence)
                    };
                    let held = match self.timed(self.backbone.claim(&room, &fence)).await {
                        Err(e) => return down(e),
                        Ok(Claim::Won) => return Outcome::Install { room, fence, took_from: None },
                        Ok(Claim::Held(held)) => held,
                    };
                    if wanted.is_none() {
                        continue;
                    }
                    // A fence of this incarnation that no local session holds is a release still on its way.
                    let stale = held.node == me.id && held.incarnation == me.incarnation && !self.holds(&room, &held);
                    if !stale && !takeover {
                        return Outcome::Reject(RejectCode::RoomConflict, "room id conflict".into());
                    }
                    match self.timed(self.backbone.take_over(&room, &held, &fence)).await {
                        Err(e) => return down(e),
                        Ok(true) => {
                            return Outcome::Install { room, fence, took_from: (!stale).then_some(held) };
                        }
                        Ok(false) => continue,
                    }
                }
                Outcome::Reject(RejectCode::Unavailable, "the room kept changing owner; try again".into())
            }
            Op::Registered { wanted, takeover, .. } => match self.timed(self.backbone.owner(wanted)).await {
                Err(e) => down(e),
                Ok(Some(_)) if !takeover => Outcome::Reject(RejectCode::RoomConflict, "room id conflict".into()),
                Ok(_) => Outcome::Reject(RejectCode::AlreadyRegistered, String::new()),
            },
            Op::Call { room, .. } => match self.timed(self.backbone.owner(room)).await {
                Err(e) => down(e),
                Ok(None) => Outcome::Reject(RejectCode::RoomNotFound, format!("room_id: \"{room}\" unregistered")),
                Ok(Some(owner)) => Outcome::Forward { room: room.clone(), owner },
            },
            Op::Unregister { room, fence, .. } => {
                if let Err(e) = self.timed(self.backbone.release(room, fence)).await {
                    // The record stays until this node's next claim of the id takes it over, or the node is gone.
                    warn!(%room, error = %e, "could not release a room in the cluster backbone");
                }
                Outcome::Unregistered { room: room.clone() }
            }
            Op::Lookup { room, .. } => match self.timed(self.backbone.owner(room)).await {
                Err(e) => down(e),
                Ok(None) => Outcome::Reject(RejectCode::RoomNotFound, format!("room_id: \"{room}\" unregistered")),
                Ok(Some(_)) => Outcome::Reject(RejectCode::UnknownGuest, String::new()),
            },
        }
    }

    /// Whether a local session holds `room` under exactly `fence`.
    fn holds(&self, room: &str, fence: &Fence) -> bool {
        self.state.lock().rooms.get(room).is_some_and(|r| r.fence.as_ref() == Some(fence))
    }

    /// Applies an operation's outcome under the lock; returns the reject to send, if any.
    fn apply(&self, st: &mut State<Ext>, sid: SessionId, op: &Op, outcome: Outcome) {
        let raw = match op {
            Op::Register { raw, .. }
            | Op::Registered { raw, .. }
            | Op::Call { raw, .. }
            | Op::Lookup { raw, .. }
            | Op::Unregister { raw, .. } => raw,
        };
        let Ok(msg) = Message::parse(raw) else { return };
        let gone = !st.sessions.contains_key(&sid);
        let reject = match outcome {
            Outcome::Install { room, fence, .. } if gone => {
                // The session left while its claim was out: give the room back.
                if let Some(remote) = &st.remote {
                    remote.room_freed(&room, &fence);
                }
                return;
            }
            _ if gone => return,
            Outcome::Reject(RejectCode::AlreadyRegistered, _) => {
                let own = st.sessions.get(&sid).and_then(|s| s.room.clone()).unwrap_or_default();
                Some(already_registered(&msg, &own))
            }
            Outcome::Reject(RejectCode::UnknownGuest, _) => {
                let guest = match &msg.body {
                    Body::Answer { guest_id, .. } | Body::Candidate { guest_id, .. } | Body::Bye { guest_id, .. } => {
                        guest_id.to_string()
                    }
                    _ => String::new(),
                };
                Some(msg.reject(RejectCode::UnknownGuest, format!("guest_id \"{guest}\" not found")))
            }
            Outcome::Reject(code, reason) => Some(msg.reject(code, reason)),
            Outcome::Install { room, fence, took_from } => {
                let still_ours = st.ext.node.as_ref().is_some_and(|n| n.incarnation == fence.incarnation);
                if !still_ours {
                    Some(msg.reject(RejectCode::Unavailable, "this node rejoined its cluster; register again"))
                } else {
                    if let Some(from) = took_from {
                        self.take_from(st, &room, &from);
                    }
                    st.install(sid, Arc::from(room.as_str()), Some(fence), &msg);
                    None
                }
            }
            Outcome::Forward { room, owner } => self.forward_call(st, sid, &msg, raw, &room, &owner).err(),
            Outcome::Unregistered { room } => {
                st.send(sid, UnregisterAccept::new(&msg.transaction_id, &room).to_json().into());
                None
            }
        };
        if let Some(reject) = reject {
            st.metrics.reject(reject.code);
            st.send(sid, reject.to_json().into());
        }
    }

    /// The new owner took `room` over from `from`: its holder loses it (on this node or on its own).
    fn take_from(&self, st: &mut State<Ext>, room: &str, from: &Fence) {
        let here = st.ext.node.as_ref().is_some_and(|n| n.id == from.node);
        if here {
            let holder = st.rooms.get(room).filter(|r| r.fence.as_ref() == Some(from)).map(|r| r.owner);
            if let Some(holder) = holder {
                st.lose_room(holder);
            }
        } else {
            let taken =
                Envelope::TakenOver { room: room.to_owned(), session: from.session, generation: from.generation };
            if let Err(e) = self.bus.send(&from.node, taken.encode()) {
                warn!(node = %from.node, error = %e, "could not tell the old holder's node of a take-over");
            }
        }
    }

    /// A call into a room on another node, once its owner is known.
    fn forward_call<'m>(
        &self,
        st: &mut State<Ext>,
        sid: SessionId,
        msg: &'m Message<'_>,
        raw: &str,
        room: &str,
        owner: &Fence,
    ) -> Result<(), Reject<'m>> {
        let Body::Call { guest_id, .. } = &msg.body else { return Ok(()) };
        // Registered here meanwhile (or the owner record is this node's own, on its way out): decide locally.
        if st.rooms.contains_key(room) || st.ext.node.as_ref().is_some_and(|n| n.id == owner.node) {
            return st.dispatch(sid, msg, raw, false, 0);
        }
        let Some(own) = st.sessions.get(&sid).and_then(|s| s.room.clone()) else {
            return Err(msg.reject(RejectCode::NotRegistered, "should register first"));
        };
        let key: (Arc<str>, Arc<str>) = (Arc::from(room), Arc::from(&**guest_id));
        if st.sessions.get(&sid).is_some_and(|s| s.remote_tours.contains_key(&key)) {
            return Err(msg.reject(RejectCode::GuestConflict, format!("guest_id \"{guest_id}\" in use")));
        }
        let max = st.settings.call_limits.per_caller;
        if st.tour_count(sid) >= max {
            return Err(too_many_calls(msg, max));
        }
        st.ext.next_serial += 1;
        let serial = st.ext.next_serial;
        self.forward(st, sid, &owner.node, own, serial, raw).map_err(|e| msg.reject(RejectCode::Unavailable, e))?;
        let tour = RemoteTour { node: Arc::from(owner.node.as_str()), incarnation: owner.incarnation, serial };
        if let Some(s) = st.sessions.get_mut(&sid) {
            s.remote_tours.insert(key, tour);
        }
        st.metrics.relayed("call");
        Ok(())
    }

    /// A backbone operation, timed into the round-trip histogram and the up gauge.
    async fn timed<T>(&self, op: impl std::future::Future<Output = super::Result<T>>) -> super::Result<T> {
        let started = Instant::now();
        let result = op.await;
        // (`backbone_up` follows the heartbeats alone: `set_reachable`.)
        self.metrics.backbone_rtt.observe(started.elapsed().as_secs_f64());
        result
    }

    /// Asks `node` for its rooms (or one of them).
    async fn query(&self, node: &str, room: Option<&str>) -> Result<Vec<RoomInfo>, HubUnavailable> {
        let me = self.state.lock().ext.node.clone().ok_or_else(|| HubUnavailable("not joined yet".into()))?;
        let id = self.next_query.fetch_add(1, Ordering::Relaxed);
        let (tx, rx) = oneshot::channel();
        self.queries.lock().insert(id, tx);
        let query = Envelope::Query { node: me.id, id, room: room.map(str::to_owned) };
        let sent = self.bus.send(node, query.encode());
        let answer = match sent {
            Ok(()) => tokio::time::timeout(QUERY_TIMEOUT, rx).await.ok().and_then(Result::ok),
            Err(_) => None,
        };
        self.queries.lock().remove(&id);
        let json = answer.ok_or_else(|| HubUnavailable(format!("node {node} did not answer")))?;
        serde_json::from_str(&json).map_err(|e| HubUnavailable(format!("node {node} answered garbage: {e}")))
    }

    /// Handles one envelope from another node.
    fn on_envelope(&self, envelope: Envelope) {
        let mut st = self.state.lock();
        let incarnation = st.ext.node.as_ref().map_or(0, |n| n.incarnation);
        match envelope {
            Envelope::Relay { from, room, serial, raw } => {
                self.metrics.relays_received.inc();
                let Ok(msg) = Message::parse(&raw) else { return };
                // Only what a caller sends about someone else's room crosses nodes.
                if matches!(msg.body, Body::Register { .. } | Body::Unregister { .. }) {
                    return;
                }
                let origin = Origin {
                    node: Arc::from(from.node.as_str()),
                    incarnation: from.incarnation,
                    session: from.session,
                };
                let proxy = st.proxy(&origin, Arc::from(room.as_str()));
                if let Err(reject) = st.dispatch(proxy, &msg, &raw, false, serial) {
                    st.send(proxy, reject.to_json().into());
                    if let (Body::Call { .. }, Some(remote)) = (&msg.body, &st.remote) {
                        remote.call_ended(&origin, serial);
                    }
                }
                st.reap(proxy);
            }
            Envelope::ToursEnded { from } => {
                let origin = Origin {
                    node: Arc::from(from.node.as_str()),
                    incarnation: from.incarnation,
                    session: from.session,
                };
                if let Some(&proxy) = st.proxies.get(&origin) {
                    st.detach(proxy);
                }
            }
            Envelope::Deliver { incarnation: to, session, text } => {
                let sid = SessionId(session);
                let local = st.sessions.get(&sid).is_some_and(|s| matches!(s.sink, Sink::Local(_)));
                if to == incarnation && local {
                    st.send(sid, Frame::text(&text));
                }
            }
            Envelope::CallEnded { incarnation: to, session, serial } => {
                if to != incarnation {
                    return;
                }
                if let Some(s) = st.sessions.get_mut(&SessionId(session)) {
                    s.remote_tours.retain(|_, t| t.serial != serial);
                }
            }
            Envelope::TakenOver { room, session, generation } => {
                let holder = st
                    .rooms
                    .get(room.as_str())
                    .filter(|r| r.fence.as_ref().is_some_and(|f| f.session == session && f.generation == generation))
                    .map(|r| r.owner);
                if let Some(holder) = holder {
                    st.lose_room(holder);
                }
            }
            Envelope::Kick { room } => {
                st.kick(&room);
            }
            Envelope::Query { node, id, room } => {
                let rooms = match room {
                    Some(r) => st.room_info(&r).into_iter().collect(),
                    None => st.room_infos(),
                };
                drop(st);
                let rooms = serde_json::to_string(&rooms).unwrap_or_else(|_| "[]".into());
                let _ = self.bus.send(&node, Envelope::Reply { id, rooms }.encode());
            }
            Envelope::Reply { id, rooms } => {
                drop(st);
                if let Some(tx) = self.queries.lock().remove(&id) {
                    let _ = tx.send(rooms);
                }
            }
        }
    }

    /// Claims every room here again (the backbone lost its state); a room another node took meanwhile is lost here.
    /// New registers wait one node timeout more: every other node re-asserts its rooms within a heartbeat or two of
    /// the backbone's return, and none of their rooms may be handed to a newcomer here before they have.
    async fn reassert(self: &Arc<Self>) {
        let rooms: Vec<(Arc<str>, Fence)> = {
            let st = self.state.lock();
            st.rooms.iter().filter_map(|(id, r)| r.fence.clone().map(|f| (id.clone(), f))).collect()
        };
        let count = rooms.len();
        for (room, fence) in rooms {
            match self.timed(self.backbone.claim(&room, &fence)).await {
                Ok(Claim::Won) => {}
                Ok(Claim::Held(other)) => {
                    warn!(%room, owner = %other, "another node registered this room while the backbone was empty");
                    let mut st = self.state.lock();
                    let holder = st.rooms.get(&*room).filter(|r| r.fence.as_ref() == Some(&fence)).map(|r| r.owner);
                    if let Some(holder) = holder {
                        st.lose_room(holder);
                        st.kill(holder, Cause::Restart);
                    }
                }
                Err(e) => {
                    warn!(error = %e, "re-asserting rooms failed; retrying when the backbone is back");
                    return;
                }
            }
        }
        info!(rooms = count, "rooms re-asserted in the cluster");
        let (inner, incarnation) = (self.clone(), self.state.lock().ext.node.as_ref().map(|n| n.incarnation));
        tokio::spawn(async move {
            tokio::time::sleep(inner.timing.node_timeout).await;
            let mut st = inner.state.lock();
            if st.ext.node.as_ref().map(|n| n.incarnation) == incarnation {
                st.ext.accepting = true;
            }
        });
    }
}

/// The node's membership events, applied to the hub.
async fn run_events<B: Backbone>(inner: Arc<Inner<B>>, mut events: mpsc::Receiver<NodeEvent>) {
    while let Some(event) = events.recv().await {
        debug!(?event, "cluster event");
        match event {
            NodeEvent::Joined(node) => {
                info!(node = %node.id, incarnation = node.incarnation, "serving as a cluster node");
                let mut st = inner.state.lock();
                st.ext.node = Some(node);
                st.ext.accepting = true;
                inner.metrics.nodes.set(1 + st.ext.peers);
                inner.set_reachable(true);
            }
            NodeEvent::Lost(_) => {
                let mut st = inner.state.lock();
                st.ext.accepting = false;
                st.ext.queues.clear();
                let sessions = st.forget_all();
                warn!(sessions = sessions.len(), "this node was declared lost: closing every session (1012)");
                for sid in sessions {
                    st.kill(sid, Cause::Restart);
                }
            }
            NodeEvent::Reset => {
                inner.state.lock().ext.accepting = false;
                inner.reassert().await;
            }
            NodeEvent::Unreachable(_) => inner.set_reachable(false),
            NodeEvent::Reachable => {
                inner.set_reachable(true);
                let pending = {
                    let st = inner.state.lock();
                    !st.ext.accepting && st.ext.node.is_some()
                };
                if pending {
                    inner.reassert().await;
                }
            }
            NodeEvent::PeerJoined(node) => {
                info!(peer = %node.id, incarnation = node.incarnation, "cluster node joined");
                let mut st = inner.state.lock();
                st.ext.peers += 1;
                inner.metrics.nodes.set(1 + st.ext.peers);
            }
            NodeEvent::PeerLost(node) => {
                warn!(peer = %node.id, incarnation = node.incarnation, "cluster node lost: ending its calls");
                let mut st = inner.state.lock();
                st.ext.peers -= 1;
                inner.metrics.nodes.set(1 + st.ext.peers);
                st.node_lost(&node.id, node.incarnation);
                drop(st);
                inner.bus.forget(&node.id);
            }
        }
    }
}

/// The node's inbox: subscribes (again after every loss) and handles each envelope in order.
async fn run_inbox<B: Backbone>(inner: Arc<Inner<B>>, retry: Duration) {
    let stop = inner.stop.clone();
    loop {
        let rx = tokio::select! {
            rx = inner.backbone.inbox() => rx,
            () = stop.cancelled() => return,
        };
        let mut rx = match rx {
            Ok(rx) => rx,
            Err(e) => {
                debug!(error = %e, "cluster inbox not available yet");
                tokio::select! {
                    () = tokio::time::sleep(retry) => continue,
                    () = stop.cancelled() => return,
                }
            }
        };
        loop {
            let batch: Option<Bytes> = tokio::select! {
                b = rx.recv() => b,
                () = stop.cancelled() => return,
            };
            let Some(batch) = batch else { break };
            let Ok(envelopes) = super::bus::decode(&batch) else {
                warn!("malformed bus batch dropped");
                continue;
            };
            for e in envelopes {
                match Envelope::decode(e) {
                    Ok(envelope) => inner.on_envelope(envelope),
                    Err(e) => warn!(error = %e, "malformed envelope dropped"),
                }
            }
        }
    }
}

/// Runs one session's backbone operation, then the messages that queued behind it.
fn spawn_op<B: Backbone>(inner: Arc<Inner<B>>, sid: SessionId, op: Op) {
    tokio::spawn(async move {
        let mut op = op;
        loop {
            let outcome = inner.run(sid, &op).await;
            let mut st = inner.state.lock();
            inner.apply(&mut st, sid, &op, outcome);
            // The queue drains until another message needs the backbone.
            let next = loop {
                let Some(queue) = st.ext.queues.get_mut(&sid) else { break None };
                let Some(item) = queue.pop_front() else {
                    st.ext.queues.remove(&sid);
                    break None;
                };
                let Ok(msg) = Message::parse(&item.raw) else { continue };
                match inner.route(&mut st, sid, &msg, &item.raw, item.takeover) {
                    Route::Done(Ok(())) => {}
                    Route::Done(Err(reject)) => {
                        st.metrics.reject(reject.code);
                        let json = reject.to_json();
                        st.send(sid, json.into());
                    }
                    Route::Wait(op) => break Some(op),
                }
            };
            drop(st);
            match next {
                Some(next) => op = next,
                None => return,
            }
        }
    });
}

/// What the hub state sends to other nodes: envelopes on the bus, releases on the backbone.
struct BusRemote<B: Backbone> {
    inner: std::sync::Weak<Inner<B>>,
}

impl<B: Backbone> BusRemote<B> {
    fn send(&self, node: &str, envelope: Envelope) {
        self.send_bytes(node, envelope.encode());
    }

    fn send_bytes(&self, node: &str, envelope: Bytes) {
        let Some(inner) = self.inner.upgrade() else { return };
        if let Err(e) = inner.bus.send(node, envelope) {
            inner.metrics.bus_dropped.inc();
            warn!(%node, error = %e, "envelope to another node dropped");
        }
    }
}

impl<B: Backbone> Remote for BusRemote<B> {
    fn deliver(&self, to: &Origin, frame: &Frame) {
        let text = frame.text_payload().unwrap_or_default();
        self.send_bytes(&to.node, envelope::encode_deliver(to.incarnation, to.session, text));
    }

    fn call_ended(&self, to: &Origin, serial: u64) {
        self.send(&to.node, Envelope::CallEnded { incarnation: to.incarnation, session: to.session, serial });
    }

    fn room_freed(&self, room: &str, fence: &Fence) {
        let Some(inner) = self.inner.upgrade() else { return };
        let (room, fence) = (room.to_owned(), fence.clone());
        tokio::spawn(async move {
            // A release that fails leaves a record no live session holds; the next claim of the id on this node
            // takes it over (it is this incarnation's), and other nodes can claim it once this one is gone.
            if let Err(e) = inner.timed(inner.backbone.release(&room, &fence)).await {
                warn!(%room, error = %e, "could not release a room in the cluster backbone");
            }
        });
    }

    fn reachable(&self) -> bool {
        self.inner.upgrade().is_some_and(|i| i.reachable())
    }

    fn tours_ended(&self, node: &str, session: SessionId) {
        let Some(inner) = self.inner.upgrade() else { return };
        let Some(me) = inner.backbone_node() else { return };
        let from = envelope::From { node: me.id, incarnation: me.incarnation, session: session.0 };
        self.send(node, Envelope::ToursEnded { from });
    }
}

impl<B: Backbone> Inner<B> {
    /// This node as the backbone knows it (readable under the hub lock: it takes no lock of the hub's).
    fn backbone_node(&self) -> Option<NodeId> {
        let node = self.backbone.node();
        (node.incarnation != 0).then_some(node)
    }
}
