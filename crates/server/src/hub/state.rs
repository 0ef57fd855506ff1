//! The hub's state machine: sessions, rooms, calls and their timers, behind one mutex. [`super::MemoryHub`] is this
//! state alone; the cluster hub (`crate::cluster::hub`) is this state plus a backbone, and reuses every rule here for
//! the rooms its own sessions hold.
//!
//! One lock keeps every operation atomic and the code obvious. It is never held across an `.await`, and everything
//! done under it is bounded and non-blocking (map operations, queuing into outboxes and into the cluster bus), so
//! contention stays short.
//!
//! A call is keyed by (callee room, guest id). The room owns the call entry; the caller's session keeps the key in its
//! `tours` so a detaching caller can end its calls without scanning every room. Both sides are updated together,
//! under the same lock, by [`State::end_call`].
//!
//! In cluster mode a session may sit on another node ([`Sink::Remote`]: a *proxy* session, created when a caller
//! there calls a room here and reaped when its last call here ends), and a local session may have calls into rooms on
//! other nodes (`remote_tours`, which the per-caller limit counts too). What must leave the node goes through
//! [`Remote`], which only queues.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Weak};
use std::time::Duration;

use parking_lot::Mutex;
use rand::distr::{Alphanumeric, SampleString};
use switchboard_proto::reply::{RegisterAccept, ServerBye, UnregisterAccept, BYE_CALL_TIMEOUT, BYE_PEER_UNREGISTER};
use switchboard_proto::{Body, Message, Reject, RejectCode};
use tokio::task::AbortHandle;
use tokio::time::Instant;

use super::{GuestInfo, RoomInfo, SessionId, TourInfo};
use crate::cluster::Fence;
use crate::ice::IceServers;
use crate::metrics::Metrics;
use crate::outbox::{Cause, Outbox};
use crate::ws::Frame;

/// How many calls may exist at once.
#[derive(Clone, Copy, Debug)]
pub struct CallLimits {
    /// Into one room.
    pub per_room: usize,
    /// Made by one session.
    pub per_caller: usize,
}

/// What the state needs from the rest of the cluster. Every method only queues: it runs under the hub lock.
pub(crate) trait Remote: Send + Sync + 'static {
    /// A frame for a session on another node.
    fn deliver(&self, to: &Origin, frame: &Frame);
    /// A call that `to` made into a room here is gone (`serial` is the caller node's number for it).
    fn call_ended(&self, to: &Origin, serial: u64);
    /// A room registered in the backbone under `fence` was freed here: free it there too.
    fn room_freed(&self, room: &str, fence: &Fence);
    /// Whether other nodes can be reached now; a relay towards one that cannot is refused with `unavailable`.
    fn reachable(&self) -> bool;
    /// `session` (local) ended every call it made; `node`'s proxy of it must end them there (byes to the callees).
    fn tours_ended(&self, node: &str, session: SessionId);
}

/// A session on another node: its node, that node's incarnation and its session id there.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub(crate) struct Origin {
    pub node: Arc<str>,
    pub incarnation: u64,
    pub session: u64,
}

/// Where a session's frames go.
pub(crate) enum Sink {
    Local(Outbox),
    Remote(Origin),
}

/// A call a local session made into a room on another node.
pub(crate) struct RemoteTour {
    pub node: Arc<str>,
    pub incarnation: u64,
    pub serial: u64,
}

/// The settings every operation reads.
pub struct Settings {
    pub ice: IceServers,
    pub call_timeout: Duration,
    pub call_limits: CallLimits,
}

pub(crate) struct State<X> {
    /// Itself, for the call timers.
    this: Weak<Mutex<State<X>>>,
    pub settings: Settings,
    /// Counters and gauges (atomics; updated here so they change together with the state they describe).
    pub metrics: Arc<Metrics>,
    /// The other nodes, in cluster mode.
    pub remote: Option<Arc<dyn Remote>>,
    /// Source of session ids.
    next_session: u64,
    /// Source of the sequence prefix of assigned room ids.
    next_room_seq: u64,
    /// Source of call serials, which tell a timer whether its call is still the one it was started for.
    next_call: u64,
    /// Set once shutdown began: detaching sessions send no bye.
    pub shutting_down: bool,
    /// Every attached session, proxies included.
    pub sessions: HashMap<SessionId, Session>,
    /// Every room registered here, by id.
    pub rooms: HashMap<Arc<str>, Room>,
    /// Proxy sessions by origin.
    pub proxies: HashMap<Origin, SessionId>,
    /// What the hub wrapping this state keeps beside it, under the same lock.
    pub ext: X,
}

pub(crate) struct Session {
    /// Where this session's frames go.
    pub sink: Sink,
    /// The room this session holds, if any (for a proxy: the room its real session holds on its own node).
    pub room: Option<Arc<str>>,
    /// Calls this session made into rooms here, as (callee room, guest id).
    pub tours: HashSet<(Arc<str>, Arc<str>)>,
    /// Calls this session made into rooms on other nodes.
    pub remote_tours: HashMap<(Arc<str>, Arc<str>), RemoteTour>,
}

pub(crate) struct Room {
    /// The session holding the room.
    pub owner: SessionId,
    /// Calls into this room, by guest id.
    pub guests: HashMap<Arc<str>, Guest>,
    /// The room's registration in the backbone (cluster mode).
    pub fence: Option<Fence>,
}

pub(crate) struct Guest {
    /// The session that made the call; only it and the room owner may relay for it.
    caller: SessionId,
    /// The caller node's serial of this call (0 for a local caller).
    serial: u64,
    /// Present until the callee accepts or rejects.
    pending: Option<Pending>,
}

struct Pending {
    /// Identifies this call for its timer.
    serial: u64,
    /// The call request as received, re-read for the echo of a `call_timeout` reject.
    offer: Frame,
    /// The timer that ends the call when it is not answered in time.
    timer: AbortHandle,
    /// When the call was forwarded to the callee, for the setup-time histogram.
    forwarded_at: Instant,
}

impl<X: Send + 'static> State<X> {
    pub fn new_shared(settings: Settings, metrics: Arc<Metrics>, ext: X) -> Arc<Mutex<State<X>>> {
        Arc::new_cyclic(|this| {
            Mutex::new(State {
                this: this.clone(),
                settings,
                metrics,
                remote: None,
                next_session: 0,
                next_room_seq: 0,
                next_call: 0,
                shutting_down: false,
                sessions: HashMap::new(),
                rooms: HashMap::new(),
                proxies: HashMap::new(),
                ext,
            })
        })
    }

    pub fn attach(&mut self, sink: Sink, room: Option<Arc<str>>) -> SessionId {
        self.next_session += 1;
        let id = SessionId(self.next_session);
        self.sessions.insert(id, Session { sink, room, tours: HashSet::new(), remote_tours: HashMap::new() });
        id
    }

    /// The proxy of a session on another node, created on first use.
    pub fn proxy(&mut self, origin: &Origin, room: Arc<str>) -> SessionId {
        if let Some(&sid) = self.proxies.get(origin) {
            if let Some(s) = self.sessions.get_mut(&sid) {
                s.room = Some(room);
            }
            return sid;
        }
        let sid = self.attach(Sink::Remote(origin.clone()), Some(room));
        self.proxies.insert(origin.clone(), sid);
        sid
    }

    /// Drops a proxy session that has no call here any more.
    pub fn reap(&mut self, sid: SessionId) {
        let idle_proxy =
            self.sessions.get(&sid).is_some_and(|s| matches!(s.sink, Sink::Remote(_)) && s.tours.is_empty());
        if idle_proxy {
            if let Some(Session { sink: Sink::Remote(origin), .. }) = self.sessions.remove(&sid) {
                self.proxies.remove(&origin);
            }
        }
    }

    /// The session is gone: free its room and end its calls.
    pub fn detach(&mut self, sid: SessionId) {
        self.release(sid);
        self.end_tours(sid);
        if let Some(Session { sink: Sink::Remote(origin), .. }) = self.sessions.remove(&sid) {
            self.proxies.remove(&origin);
        }
    }

    /// Handles one message whose room (if it names one) is held here, or that needs no other node. `serial` is the
    /// caller node's number for a call made from another node (0 otherwise).
    pub fn dispatch<'m>(
        &mut self,
        sid: SessionId,
        msg: &'m Message<'_>,
        raw: &str,
        takeover: bool,
        serial: u64,
    ) -> Result<(), Reject<'m>> {
        let own_room = match self.sessions.get(&sid) {
            Some(s) => s.room.clone(),
            None => return Ok(()), // detached concurrently; nobody to answer
        };
        match &msg.body {
            Body::Register { room_id } => self.register(sid, own_room, room_id.as_deref(), msg, takeover),
            Body::IceServers => self.refresh_ice_servers(sid, own_room, msg),
            Body::Unregister { room_id } => {
                let Some(own) = own_room else {
                    return Err(msg.reject(RejectCode::NotRegistered, "unregistered"));
                };
                if **room_id != *own {
                    return Err(msg
                        .reject(RejectCode::RoomMismatch, format!("room_id: \"{room_id}\" not match room_id: {own}")));
                }
                self.send(sid, UnregisterAccept::new(&msg.transaction_id, &own).to_json().into());
                self.release(sid);
                self.end_tours(sid);
                Ok(())
            }
            Body::Call { guest_id, room_id, .. } => {
                if own_room.is_none() {
                    return Err(msg.reject(RejectCode::NotRegistered, "should register first"));
                }
                let Some((room_key, room)) = self.rooms.get_key_value(&**room_id) else {
                    return Err(msg.reject(RejectCode::RoomNotFound, format!("room_id: \"{room_id}\" unregistered")));
                };
                if room.owner == sid {
                    return Err(msg.reject(RejectCode::SelfCall, "cannot call own room"));
                }
                if room.guests.contains_key(&**guest_id) {
                    return Err(msg.reject(RejectCode::GuestConflict, format!("guest_id \"{guest_id}\" in use")));
                }
                let limits = self.settings.call_limits;
                if room.guests.len() >= limits.per_room {
                    return Err(msg.reject(
                        RejectCode::RateLimited,
                        format!("too many calls into this room (max {})", limits.per_room),
                    ));
                }
                if self.tour_count(sid) >= limits.per_caller {
                    return Err(too_many_calls(msg, limits.per_caller));
                }
                let (room_key, owner) = (room_key.clone(), room.owner);
                let guest_key: Arc<str> = Arc::from(&**guest_id);
                self.next_call += 1;
                let call = self.next_call;
                let timer = spawn_call_timer(
                    self.this.clone(),
                    self.settings.call_timeout,
                    room_key.clone(),
                    guest_key.clone(),
                    call,
                );
                let offer = Frame::text(raw);
                let pending = Pending { serial: call, offer: offer.clone(), timer, forwarded_at: Instant::now() };
                self.metrics.calls_pending.inc();
                if let Some(room) = self.rooms.get_mut(&room_key) {
                    room.guests.insert(guest_key.clone(), Guest { caller: sid, serial, pending: Some(pending) });
                }
                if let Some(s) = self.sessions.get_mut(&sid) {
                    s.tours.insert((room_key, guest_key));
                }
                self.send(owner, offer);
                self.metrics.relayed("call");
                Ok(())
            }
            Body::Answer { accepted, guest_id, room_id } => {
                if own_room.is_none() {
                    return Err(msg.reject(RejectCode::NotRegistered, "should register first"));
                }
                let not_found = || msg.reject(RejectCode::UnknownGuest, format!("guest_id \"{guest_id}\" not found"));
                let Some(room) = self.rooms.get_mut(&**room_id) else {
                    return Err(msg.reject(RejectCode::RoomNotFound, format!("room_id: \"{room_id}\" unregistered")));
                };
                if room.owner != sid {
                    return Err(not_found());
                }
                let Some(guest) = room.guests.get_mut(&**guest_id).filter(|g| g.pending.is_some()) else {
                    return Err(not_found());
                };
                let caller = guest.caller;
                if self.cut_off(caller) {
                    return Err(unavailable(msg));
                }
                let Some(guest) = self.rooms.get_mut(&**room_id).and_then(|r| r.guests.get_mut(&**guest_id)) else {
                    return Err(not_found());
                };
                if *accepted {
                    if let Some(p) = guest.pending.take() {
                        p.timer.abort();
                        self.metrics.calls_pending.dec();
                        self.metrics.calls_active.inc();
                        self.metrics.call_setup.observe(p.forwarded_at.elapsed().as_secs_f64());
                    }
                    self.send(caller, Frame::text(raw));
                } else {
                    // The answer goes out before the end of the call tells a remote caller's node to forget it.
                    self.send(caller, Frame::text(raw));
                    self.end_call(room_id, guest_id);
                }
                self.metrics.relayed("call");
                Ok(())
            }
            Body::Candidate { guest_id, room_id } | Body::Bye { guest_id, room_id } => {
                let Some(own) = own_room else {
                    return Err(msg.reject(RejectCode::NotRegistered, "should register first"));
                };
                let not_found = || msg.reject(RejectCode::UnknownGuest, format!("guest_id \"{guest_id}\" not found"));
                let target = if **room_id == *own {
                    // From the callee: towards the caller that owns the guest id.
                    let room = self.rooms.get(&*own);
                    match room.and_then(|r| r.guests.get(&**guest_id)) {
                        Some(g) => g.caller,
                        None => return Err(not_found()),
                    }
                } else {
                    // From a caller: only the one that owns the guest id, towards the room owner.
                    let Some(room) = self.rooms.get(&**room_id) else {
                        return Err(
                            msg.reject(RejectCode::RoomNotFound, format!("room_id: \"{room_id}\" unregistered"))
                        );
                    };
                    match room.guests.get(&**guest_id) {
                        Some(g) if g.caller == sid => room.owner,
                        _ => return Err(not_found()),
                    }
                };
                if self.cut_off(target) {
                    return Err(unavailable(msg));
                }
                self.send(target, Frame::text(raw));
                if matches!(msg.body, Body::Bye { .. }) {
                    self.end_call(room_id, guest_id);
                }
                self.metrics.relayed(msg.body.method());
                Ok(())
            }
        }
    }

    /// Node `node` in `incarnation` is gone (SPEC.md §9 node loss): the calls its sessions made here end (byes to
    /// the callees), and so does every call a local session made into its rooms (a bye to the caller).
    pub fn node_lost(&mut self, node: &str, incarnation: u64) {
        let proxies: Vec<SessionId> = self
            .proxies
            .iter()
            .filter(|(o, _)| &*o.node == node && o.incarnation == incarnation)
            .map(|(_, &sid)| sid)
            .collect();
        for proxy in proxies {
            self.detach(proxy);
        }
        let mut byes = Vec::new();
        for (&sid, s) in &mut self.sessions {
            s.remote_tours.retain(|(room, guest), t| {
                let gone = &*t.node == node && t.incarnation == incarnation;
                if gone {
                    byes.push((sid, room.clone(), guest.clone()));
                }
                !gone
            });
        }
        for (sid, room, guest) in byes {
            self.bye(sid, &guest, &room, BYE_PEER_UNREGISTER);
        }
    }

    /// Forgets every room, call and proxy without one bye or backbone release: the cluster declared this node lost,
    /// so none of it is valid any more. Returns the local sessions, for the caller to close.
    pub fn forget_all(&mut self) -> Vec<SessionId> {
        for (_, room) in std::mem::take(&mut self.rooms) {
            self.metrics.rooms.dec();
            for guest in room.guests.values() {
                self.forget(guest, false);
            }
        }
        for sid in std::mem::take(&mut self.proxies).into_values() {
            self.sessions.remove(&sid);
        }
        for s in self.sessions.values_mut() {
            s.room = None;
            s.tours.clear();
            s.remote_tours.clear();
        }
        self.sessions.keys().copied().collect()
    }

    /// Calls `sid` has made, here and into other nodes' rooms.
    pub fn tour_count(&self, sid: SessionId) -> usize {
        self.sessions.get(&sid).map_or(0, |s| s.tours.len() + s.remote_tours.len())
    }

    pub fn room_info(&self, room_id: &str) -> Option<RoomInfo> {
        let room = self.rooms.get(room_id)?;
        let mut guests: Vec<GuestInfo> = room.guests.keys().map(|g| GuestInfo { guest_id: g.to_string() }).collect();
        guests.sort_by(|a, b| a.guest_id.cmp(&b.guest_id));
        let mut tours: Vec<TourInfo> = self
            .sessions
            .get(&room.owner)
            .map(|s| {
                s.tours
                    .iter()
                    .chain(s.remote_tours.keys())
                    .map(|(r, g)| TourInfo { guest_id: g.to_string(), room_id: r.to_string() })
                    .collect()
            })
            .unwrap_or_default();
        tours.sort_by(|a, b| (&a.room_id, &a.guest_id).cmp(&(&b.room_id, &b.guest_id)));
        Some(RoomInfo { room_id: room_id.to_owned(), guests, tours })
    }

    /// Every room held here, sorted by id.
    pub fn room_infos(&self) -> Vec<RoomInfo> {
        let mut all: Vec<RoomInfo> = self.rooms.keys().filter_map(|id| self.room_info(id)).collect();
        all.sort_by(|a, b| a.room_id.cmp(&b.room_id));
        all
    }

    /// Disconnects the local holder of `room_id` (its counterparts get their byes); false if nobody here holds it.
    pub fn kick(&self, room_id: &str) -> bool {
        let Some(owner) = self.rooms.get(room_id).map(|r| r.owner) else { return false };
        // The session ends through its normal path, so detach sends the byes before the close frame goes out.
        self.kill(owner, Cause::Kicked);
        true
    }

    /// `to` sits on another node, which cannot be reached now.
    fn cut_off(&self, to: SessionId) -> bool {
        // Single node: no lookup at all on the relay path.
        let Some(remote) = &self.remote else { return false };
        !remote.reachable() && matches!(self.sessions.get(&to).map(|s| &s.sink), Some(Sink::Remote(_)))
    }

    pub fn kill(&self, sid: SessionId, cause: Cause) {
        if let Some(Session { sink: Sink::Local(outbox), .. }) = self.sessions.get(&sid) {
            outbox.kill(cause);
        }
    }

    fn register<'m>(
        &mut self,
        sid: SessionId,
        own_room: Option<Arc<str>>,
        wanted: Option<&str>,
        msg: &'m Message<'_>,
        takeover: bool,
    ) -> Result<(), Reject<'m>> {
        let room_id: Arc<str> = match wanted {
            Some(id) => {
                if let Some(holder) = self.rooms.get(id).map(|r| r.owner).filter(|o| *o != sid) {
                    if !takeover {
                        return Err(msg.reject(RejectCode::RoomConflict, "room id conflict"));
                    }
                    if let Some(own) = &own_room {
                        return Err(already_registered(msg, own));
                    }
                    self.lose_room(holder);
                }
                Arc::from(id)
            }
            None => self.assign_room_id(),
        };
        if let Some(own) = own_room {
            return Err(already_registered(msg, &own));
        }
        self.install(sid, room_id, None, msg);
        Ok(())
    }

    /// A token holder takes the room of `holder`: it loses it now (its callers get byes, and the backbone record,
    /// which the new owner takes over, stays) and is closed with 4409.
    pub fn lose_room(&mut self, holder: SessionId) {
        if let Some(room) = self.sessions.get(&holder).and_then(|s| s.room.clone()) {
            if let Some(r) = self.rooms.get_mut(&room) {
                r.fence = None;
            }
        }
        self.release(holder);
        self.kill(holder, Cause::TakenOver);
    }

    /// Gives `sid` the room `room_id` and sends the register accept.
    pub fn install(&mut self, sid: SessionId, room_id: Arc<str>, fence: Option<Fence>, msg: &Message<'_>) {
        self.rooms.insert(room_id.clone(), Room { owner: sid, guests: HashMap::new(), fence });
        self.metrics.rooms.inc();
        if let Some(s) = self.sessions.get_mut(&sid) {
            s.room = Some(room_id.clone());
        }
        let unix_now = unix_now();
        let (servers, expire) = (self.settings.ice.for_room(&room_id, unix_now), self.settings.ice.expiry(unix_now));
        let accept = RegisterAccept::new(&msg.transaction_id, &room_id, &servers, expire).to_json();
        self.send(sid, accept.into());
    }

    /// Answers an `ice_servers` request with fresh credentials for the session's room (SPEC.md §4.6).
    fn refresh_ice_servers<'m>(
        &mut self,
        sid: SessionId,
        room: Option<Arc<str>>,
        msg: &'m Message<'_>,
    ) -> Result<(), Reject<'m>> {
        let Some(room) = room else {
            return Err(msg.reject(RejectCode::NotRegistered, "should register first"));
        };
        let unix_now = unix_now();
        let (servers, expire) = (self.settings.ice.for_room(&room, unix_now), self.settings.ice.expiry(unix_now));
        self.send(sid, RegisterAccept::refreshed(&msg.transaction_id, &room, &servers, expire).to_json().into());
        Ok(())
    }

    /// `<seq>_<16 random alphanumerics>`, like ZLMediaKit's, and not held by anyone here.
    pub fn assign_room_id(&mut self) -> Arc<str> {
        loop {
            self.next_room_seq += 1;
            let id = format!("{}_{}", self.next_room_seq, Alphanumeric.sample_string(&mut rand::rng(), 16));
            if !self.rooms.contains_key(id.as_str()) {
                return id.into();
            }
        }
    }

    /// Frees the room `sid` holds, if any, ending every call into it; each caller gets a bye.
    pub fn release(&mut self, sid: SessionId) {
        let Some(room_id) = self.sessions.get_mut(&sid).and_then(|s| s.room.take()) else { return };
        if self.rooms.get(&room_id).is_none_or(|r| r.owner != sid) {
            return; // never free a registration this session does not hold (and a proxy holds none here)
        }
        let Some(room) = self.rooms.remove(&room_id) else { return };
        self.metrics.rooms.dec();
        if let (Some(fence), Some(remote)) = (&room.fence, &self.remote) {
            remote.room_freed(&room_id, fence);
        }
        for (guest_id, guest) in room.guests {
            self.bye(guest.caller, &guest_id, &room_id, BYE_PEER_UNREGISTER);
            self.forget(&guest, true);
            if let Some(caller) = self.sessions.get_mut(&guest.caller) {
                caller.tours.remove(&(room_id.clone(), guest_id.clone()));
            }
            self.reap(guest.caller);
        }
    }

    /// Ends every call `sid` made; each room owner gets a bye (on another node, through its proxy of `sid`).
    pub fn end_tours(&mut self, sid: SessionId) {
        let Some(s) = self.sessions.get_mut(&sid) else { return };
        let tours = std::mem::take(&mut s.tours);
        let remote_tours = std::mem::take(&mut s.remote_tours);
        for (room_id, guest_id) in tours {
            let Some(room) = self.rooms.get_mut(&room_id) else { continue };
            if let Some(guest) = room.guests.remove(&guest_id) {
                let owner = room.owner;
                // A proxy's tours end because its node said so: no need to tell that node.
                self.forget(&guest, false);
                self.bye(owner, &guest_id, &room_id, BYE_PEER_UNREGISTER);
            }
        }
        if let Some(remote) = &self.remote {
            let nodes: HashSet<&Arc<str>> = remote_tours.values().map(|t| &t.node).collect();
            for node in nodes {
                remote.tours_ended(node, sid);
            }
        }
    }

    /// Removes the call (room, guest) from both the room and its caller, stopping its timer.
    pub fn end_call(&mut self, room_id: &str, guest_id: &str) -> Option<Guest> {
        // The map's own key, so removing the tour clones an Arc instead of allocating a new string.
        let room_key = self.rooms.get_key_value(room_id)?.0.clone();
        let room = self.rooms.get_mut(room_id)?;
        let (guest_key, guest) = room.guests.remove_entry(guest_id)?;
        self.forget(&guest, true);
        if let Some(caller) = self.sessions.get_mut(&guest.caller) {
            caller.tours.remove(&(room_key, guest_key));
        }
        self.reap(guest.caller);
        Some(guest)
    }

    /// A call is gone from the state: stop its timer, update the call gauges, tell a remote caller's node.
    fn forget(&self, guest: &Guest, notify: bool) {
        match &guest.pending {
            Some(p) => {
                p.timer.abort();
                self.metrics.calls_pending.dec();
            }
            None => {
                self.metrics.calls_active.dec();
            }
        }
        let caller = self.sessions.get(&guest.caller).filter(|_| notify);
        if let (Some(Session { sink: Sink::Remote(origin), .. }), Some(remote)) = (caller, &self.remote) {
            remote.call_ended(origin, guest.serial);
        }
    }

    /// A server-built bye, unless this node is shutting down and `to` is one of its own sessions (a caller on another
    /// node stays connected, so it does learn that the call ended).
    pub fn bye(&self, to: SessionId, guest_id: &str, room_id: &str, reason: &str) {
        if self.shutting_down && !matches!(self.sessions.get(&to).map(|s| &s.sink), Some(Sink::Remote(_))) {
            return;
        }
        let tid = Alphanumeric.sample_string(&mut rand::rng(), 32);
        self.send(to, ServerBye::new(&tid, guest_id, room_id, reason).to_json().into());
    }

    pub fn send(&self, to: SessionId, frame: Frame) {
        match self.sessions.get(&to).map(|s| &s.sink) {
            Some(Sink::Local(outbox)) => outbox.send(frame),
            Some(Sink::Remote(origin)) => {
                if let Some(remote) = &self.remote {
                    remote.deliver(origin, &frame);
                }
            }
            None => {}
        }
    }

    /// The call timer fired: end the call if it is still the same one and still unanswered.
    fn call_timeout(&mut self, room_id: &str, guest_id: &str, call: u64) {
        let still_pending = self
            .rooms
            .get(room_id)
            .and_then(|r| r.guests.get(guest_id))
            .and_then(|g| g.pending.as_ref())
            .is_some_and(|p| p.serial == call);
        if !still_pending {
            return;
        }
        let owner = self.rooms.get(room_id).map(|r| r.owner);
        // The reject goes out before the end of the call tells a remote caller's node to forget it.
        let timed_out = self.rooms.get(room_id).and_then(|r| r.guests.get(guest_id));
        if let Some((caller, Some(p))) = timed_out.map(|g| (g.caller, g.pending.as_ref())) {
            if let Ok(call) = Message::parse(p.offer.text_payload().unwrap_or_default()) {
                let reject = call.reject(RejectCode::CallTimeout, "call timeout").to_json();
                self.send(caller, reject.into());
            }
        }
        self.end_call(room_id, guest_id);
        if let Some(owner) = owner {
            self.bye(owner, guest_id, room_id, BYE_CALL_TIMEOUT);
        }
    }
}

pub(crate) fn already_registered<'m>(msg: &'m Message<'_>, own: &str) -> Reject<'m> {
    msg.reject(RejectCode::AlreadyRegistered, format!("already registered as \"{own}\""))
}

fn unavailable<'m>(msg: &'m Message<'_>) -> Reject<'m> {
    msg.reject(RejectCode::Unavailable, "cluster backbone unavailable")
}

pub(crate) fn too_many_calls<'m>(msg: &'m Message<'_>, max: usize) -> Reject<'m> {
    msg.reject(RejectCode::RateLimited, format!("too many calls from this session (max {max})"))
}

fn spawn_call_timer<X: Send + 'static>(
    state: Weak<Mutex<State<X>>>,
    after: Duration,
    room: Arc<str>,
    guest: Arc<str>,
    call: u64,
) -> AbortHandle {
    tokio::spawn(async move {
        tokio::time::sleep(after).await;
        if let Some(state) = state.upgrade() {
            state.lock().call_timeout(&room, &guest, call);
        }
    })
    .abort_handle()
}

fn unix_now() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs())
}
