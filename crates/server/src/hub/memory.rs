//! The single-node hub: all state behind one mutex.
//!
//! One lock keeps every operation atomic and the code obvious. It is never held across an `.await`, and everything
//! done under it is bounded and non-blocking (map operations and queuing into outboxes), so contention stays short.
//!
//! A call is keyed by (callee room, guest id). The room owns the call entry; the caller's session keeps the key in its
//! `tours` so a detaching caller can end its calls without scanning every room. Both sides are updated together,
//! under the same lock, by [`State::end_call`].

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Weak};
use std::time::Duration;

use parking_lot::Mutex;
use rand::distr::{Alphanumeric, SampleString};
use switchboard_proto::reply::{RegisterAccept, ServerBye, UnregisterAccept, BYE_CALL_TIMEOUT, BYE_PEER_UNREGISTER};
use switchboard_proto::{Body, Message, Reject, RejectCode};
use tokio::task::AbortHandle;
use tokio::time::Instant;

use super::{GuestInfo, Hub, RoomInfo, SessionId, TourInfo};
use crate::ice::IceServers;
use crate::metrics::Metrics;
use crate::outbox::{Cause, Outbox};
use crate::ws::Frame;

/// An in-memory [`Hub`] for one node.
pub struct MemoryHub {
    inner: Arc<Inner>,
}

struct Inner {
    state: Mutex<State>,
    ice: IceServers,
    call_timeout: Duration,
    call_limits: CallLimits,
}

/// How many calls may exist at once.
#[derive(Clone, Copy, Debug)]
pub struct CallLimits {
    /// Into one room.
    pub per_room: usize,
    /// Made by one session.
    pub per_caller: usize,
}

struct State {
    /// Counters and gauges (atomics; updated here so they change together with the state they describe).
    metrics: Arc<Metrics>,
    /// Source of session ids.
    next_session: u64,
    /// Source of the sequence prefix of assigned room ids.
    next_room_seq: u64,
    /// Source of call serials, which tell a timer whether its call is still the one it was started for.
    next_call: u64,
    /// Set once shutdown began: detaching sessions send no bye.
    shutting_down: bool,
    /// Every attached session.
    sessions: HashMap<SessionId, Session>,
    /// Every registered room, by id.
    rooms: HashMap<Arc<str>, Room>,
}

struct Session {
    /// Where this session's frames go.
    outbox: Outbox,
    /// The room this session holds, if any.
    room: Option<Arc<str>>,
    /// Calls this session made, as (callee room, guest id).
    tours: HashSet<(Arc<str>, Arc<str>)>,
}

struct Room {
    /// The session holding the room.
    owner: SessionId,
    /// Calls into this room, by guest id.
    guests: HashMap<Arc<str>, Guest>,
}

struct Guest {
    /// The session that made the call; only it and the room owner may relay for it.
    caller: SessionId,
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

impl MemoryHub {
    pub fn new(ice: IceServers, call_timeout: Duration, call_limits: CallLimits, metrics: Arc<Metrics>) -> MemoryHub {
        let state = State {
            metrics,
            next_session: 0,
            next_room_seq: 0,
            next_call: 0,
            shutting_down: false,
            sessions: HashMap::new(),
            rooms: HashMap::new(),
        };
        MemoryHub { inner: Arc::new(Inner { state: Mutex::new(state), ice, call_timeout, call_limits }) }
    }

    /// Number of registered rooms.
    pub fn room_count(&self) -> usize {
        self.inner.state.lock().rooms.len()
    }
}

impl Hub for MemoryHub {
    fn attach(&self, outbox: Outbox) -> SessionId {
        let mut st = self.inner.state.lock();
        st.next_session += 1;
        let id = SessionId(st.next_session);
        st.sessions.insert(id, Session { outbox, room: None, tours: HashSet::new() });
        id
    }

    fn dispatch<'m>(&self, sid: SessionId, msg: &'m Message<'_>, raw: &str, takeover: bool) -> Result<(), Reject<'m>> {
        let inner = &self.inner;
        // Relayed messages go out as the frame received; encoding it before taking the lock keeps the copy out of it.
        let relayed = match msg.body {
            Body::Register { .. } | Body::Unregister { .. } => None,
            _ => Some(Frame::text(raw)),
        };
        let frame = || relayed.clone().unwrap_or_else(|| Frame::text(raw));
        let mut st = inner.state.lock();
        let own_room = match st.sessions.get(&sid) {
            Some(s) => s.room.clone(),
            None => return Ok(()), // detached concurrently; nobody to answer
        };
        match &msg.body {
            Body::Register { room_id } => st.register(sid, own_room, room_id.as_deref(), msg, &inner.ice, takeover),
            Body::Unregister { room_id } => {
                let Some(own) = own_room else {
                    return Err(msg.reject(RejectCode::NotRegistered, "unregistered"));
                };
                if **room_id != *own {
                    return Err(msg
                        .reject(RejectCode::RoomMismatch, format!("room_id: \"{room_id}\" not match room_id: {own}")));
                }
                st.send(sid, UnregisterAccept::new(&msg.transaction_id, &own).to_json().into());
                st.release(sid);
                st.end_tours(sid);
                Ok(())
            }
            Body::Call { guest_id, room_id, .. } => {
                if own_room.is_none() {
                    return Err(msg.reject(RejectCode::NotRegistered, "should register first"));
                }
                let Some((room_key, room)) = st.rooms.get_key_value(&**room_id) else {
                    return Err(msg.reject(RejectCode::RoomNotFound, format!("room_id: \"{room_id}\" unregistered")));
                };
                if room.owner == sid {
                    return Err(msg.reject(RejectCode::SelfCall, "cannot call own room"));
                }
                if room.guests.contains_key(&**guest_id) {
                    return Err(msg.reject(RejectCode::GuestConflict, format!("guest_id \"{guest_id}\" in use")));
                }
                let limits = inner.call_limits;
                if room.guests.len() >= limits.per_room {
                    return Err(msg.reject(
                        RejectCode::RateLimited,
                        format!("too many calls into this room (max {})", limits.per_room),
                    ));
                }
                if st.sessions.get(&sid).is_some_and(|s| s.tours.len() >= limits.per_caller) {
                    return Err(msg.reject(
                        RejectCode::RateLimited,
                        format!("too many calls from this session (max {})", limits.per_caller),
                    ));
                }
                let (room_key, owner) = (room_key.clone(), room.owner);
                let guest_key: Arc<str> = Arc::from(&**guest_id);
                st.next_call += 1;
                let serial = st.next_call;
                let timer = spawn_call_timer(
                    Arc::downgrade(inner),
                    inner.call_timeout,
                    room_key.clone(),
                    guest_key.clone(),
                    serial,
                );
                let pending = Pending { serial, offer: frame(), timer, forwarded_at: Instant::now() };
                st.metrics.calls_pending.inc();
                if let Some(room) = st.rooms.get_mut(&room_key) {
                    room.guests.insert(guest_key.clone(), Guest { caller: sid, pending: Some(pending) });
                }
                if let Some(s) = st.sessions.get_mut(&sid) {
                    s.tours.insert((room_key, guest_key));
                }
                st.send(owner, frame());
                st.metrics.relayed("call");
                Ok(())
            }
            Body::Answer { accepted, guest_id, room_id } => {
                if own_room.is_none() {
                    return Err(msg.reject(RejectCode::NotRegistered, "should register first"));
                }
                let not_found = || msg.reject(RejectCode::UnknownGuest, format!("guest_id \"{guest_id}\" not found"));
                let Some(room) = st.rooms.get_mut(&**room_id) else {
                    return Err(msg.reject(RejectCode::RoomNotFound, format!("room_id: \"{room_id}\" unregistered")));
                };
                if room.owner != sid {
                    return Err(not_found());
                }
                let Some(guest) = room.guests.get_mut(&**guest_id).filter(|g| g.pending.is_some()) else {
                    return Err(not_found());
                };
                let caller = guest.caller;
                if *accepted {
                    if let Some(p) = guest.pending.take() {
                        p.timer.abort();
                        st.metrics.calls_pending.dec();
                        st.metrics.calls_active.inc();
                        st.metrics.call_setup.observe(p.forwarded_at.elapsed().as_secs_f64());
                    }
                } else {
                    st.end_call(room_id, guest_id);
                }
                st.send(caller, frame());
                st.metrics.relayed("call");
                Ok(())
            }
            Body::Candidate { guest_id, room_id } | Body::Bye { guest_id, room_id } => {
                let Some(own) = own_room else {
                    return Err(msg.reject(RejectCode::NotRegistered, "should register first"));
                };
                let not_found = || msg.reject(RejectCode::UnknownGuest, format!("guest_id \"{guest_id}\" not found"));
                let target = if **room_id == *own {
                    // From the callee: towards the caller that owns the guest id.
                    let room = st.rooms.get(&*own);
                    match room.and_then(|r| r.guests.get(&**guest_id)) {
                        Some(g) => g.caller,
                        None => return Err(not_found()),
                    }
                } else {
                    // From a caller: only the one that owns the guest id, towards the room owner.
                    let Some(room) = st.rooms.get(&**room_id) else {
                        return Err(
                            msg.reject(RejectCode::RoomNotFound, format!("room_id: \"{room_id}\" unregistered"))
                        );
                    };
                    match room.guests.get(&**guest_id) {
                        Some(g) if g.caller == sid => room.owner,
                        _ => return Err(not_found()),
                    }
                };
                if matches!(msg.body, Body::Bye { .. }) {
                    st.end_call(room_id, guest_id);
                }
                st.send(target, frame());
                st.metrics.relayed(msg.body.method());
                Ok(())
            }
        }
    }

    fn detach(&self, sid: SessionId) {
        let mut st = self.inner.state.lock();
        st.release(sid);
        st.end_tours(sid);
        st.sessions.remove(&sid);
    }

    fn begin_shutdown(&self) {
        self.inner.state.lock().shutting_down = true;
    }

    fn rooms(&self) -> Vec<RoomInfo> {
        let st = self.inner.state.lock();
        let mut all: Vec<RoomInfo> = st.rooms.keys().filter_map(|id| st.room_info(id)).collect();
        all.sort_by(|a, b| a.room_id.cmp(&b.room_id));
        all
    }

    fn room(&self, room_id: &str) -> Option<RoomInfo> {
        self.inner.state.lock().room_info(room_id)
    }

    fn kick(&self, room_id: &str) -> bool {
        let st = self.inner.state.lock();
        let Some(owner) = st.rooms.get(room_id).map(|r| r.owner) else { return false };
        // The session ends through its normal path, so detach sends the byes before the close frame goes out.
        if let Some(s) = st.sessions.get(&owner) {
            s.outbox.kill(Cause::Kicked);
        }
        true
    }
}

impl State {
    fn room_info(&self, room_id: &str) -> Option<RoomInfo> {
        let room = self.rooms.get(room_id)?;
        let mut guests: Vec<GuestInfo> = room.guests.keys().map(|g| GuestInfo { guest_id: g.to_string() }).collect();
        guests.sort_by(|a, b| a.guest_id.cmp(&b.guest_id));
        let mut tours: Vec<TourInfo> = self
            .sessions
            .get(&room.owner)
            .map(|s| {
                s.tours.iter().map(|(r, g)| TourInfo { guest_id: g.to_string(), room_id: r.to_string() }).collect()
            })
            .unwrap_or_default();
        tours.sort_by(|a, b| (&a.room_id, &a.guest_id).cmp(&(&b.room_id, &b.guest_id)));
        Some(RoomInfo { room_id: room_id.to_owned(), guests, tours })
    }

    fn register<'m>(
        &mut self,
        sid: SessionId,
        own_room: Option<Arc<str>>,
        wanted: Option<&str>,
        msg: &'m Message<'_>,
        ice: &IceServers,
        takeover: bool,
    ) -> Result<(), Reject<'m>> {
        let room_id: Arc<str> = match wanted {
            Some(id) => {
                if let Some(holder) = self.rooms.get(id).map(|r| r.owner).filter(|o| *o != sid) {
                    if !takeover {
                        return Err(msg.reject(RejectCode::RoomConflict, "room id conflict"));
                    }
                    if let Some(own) = &own_room {
                        return Err(
                            msg.reject(RejectCode::AlreadyRegistered, format!("already registered as \"{own}\""))
                        );
                    }
                    // The stale holder loses the room now (its callers get byes) and is closed with 4409.
                    self.release(holder);
                    if let Some(s) = self.sessions.get(&holder) {
                        s.outbox.kill(Cause::TakenOver);
                    }
                }
                Arc::from(id)
            }
            None => self.assign_room_id(),
        };
        if let Some(own) = own_room {
            return Err(msg.reject(RejectCode::AlreadyRegistered, format!("already registered as \"{own}\"")));
        }
        self.rooms.insert(room_id.clone(), Room { owner: sid, guests: HashMap::new() });
        self.metrics.rooms.inc();
        if let Some(s) = self.sessions.get_mut(&sid) {
            s.room = Some(room_id.clone());
        }
        let unix_now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs());
        let servers = ice.for_room(&room_id, unix_now);
        let accept = RegisterAccept::new(&msg.transaction_id, &room_id, &servers).to_json();
        self.send(sid, accept.into());
        Ok(())
    }

    /// `<seq>_<16 random alphanumerics>`, like ZLMediaKit's, and not held by anyone.
    fn assign_room_id(&mut self) -> Arc<str> {
        loop {
            self.next_room_seq += 1;
            let id = format!("{}_{}", self.next_room_seq, Alphanumeric.sample_string(&mut rand::rng(), 16));
            if !self.rooms.contains_key(id.as_str()) {
                return id.into();
            }
        }
    }

    /// Frees the room `sid` holds, if any, ending every call into it; each caller gets a bye.
    fn release(&mut self, sid: SessionId) {
        let Some(room_id) = self.sessions.get_mut(&sid).and_then(|s| s.room.take()) else { return };
        if self.rooms.get(&room_id).is_none_or(|r| r.owner != sid) {
            return; // never free a registration this session does not hold
        }
        let Some(room) = self.rooms.remove(&room_id) else { return };
        self.metrics.rooms.dec();
        for (guest_id, guest) in room.guests {
            self.forget(&guest);
            if let Some(caller) = self.sessions.get_mut(&guest.caller) {
                caller.tours.remove(&(room_id.clone(), guest_id.clone()));
            }
            self.bye(guest.caller, &guest_id, &room_id, BYE_PEER_UNREGISTER);
        }
    }

    /// Ends every call `sid` made; each room owner gets a bye.
    fn end_tours(&mut self, sid: SessionId) {
        let Some(tours) = self.sessions.get_mut(&sid).map(|s| std::mem::take(&mut s.tours)) else { return };
        for (room_id, guest_id) in tours {
            let Some(room) = self.rooms.get_mut(&room_id) else { continue };
            if let Some(guest) = room.guests.remove(&guest_id) {
                let owner = room.owner;
                self.forget(&guest);
                self.bye(owner, &guest_id, &room_id, BYE_PEER_UNREGISTER);
            }
        }
    }

    /// Removes the call (room, guest) from both the room and its caller, stopping its timer.
    fn end_call(&mut self, room_id: &str, guest_id: &str) -> Option<Guest> {
        // The map's own key, so removing the tour clones an Arc instead of allocating a new string.
        let room_key = self.rooms.get_key_value(room_id)?.0.clone();
        let room = self.rooms.get_mut(room_id)?;
        let (guest_key, guest) = room.guests.remove_entry(guest_id)?;
        self.forget(&guest);
        if let Some(caller) = self.sessions.get_mut(&guest.caller) {
            caller.tours.remove(&(room_key, guest_key));
        }
        Some(guest)
    }

    /// A call is gone from the state: stop its timer and update the call gauges.
    fn forget(&self, guest: &Guest) {
        match &guest.pending {
            Some(p) => {
                p.timer.abort();
                self.metrics.calls_pending.dec();
            }
            None => {
                self.metrics.calls_active.dec();
            }
        }
    }

    /// A server-built bye, unless the server is shutting down.
    fn bye(&self, to: SessionId, guest_id: &str, room_id: &str, reason: &str) {
        if self.shutting_down {
            return;
        }
        let tid = Alphanumeric.sample_string(&mut rand::rng(), 32);
        self.send(to, ServerBye::new(&tid, guest_id, room_id, reason).to_json().into());
    }

    fn send(&self, to: SessionId, frame: Frame) {
        if let Some(s) = self.sessions.get(&to) {
            s.outbox.send(frame);
        }
    }

    /// The call timer fired: end the call if it is still the same one and still unanswered.
    fn call_timeout(&mut self, room_id: &str, guest_id: &str, serial: u64) {
        let still_pending = self
            .rooms
            .get(room_id)
            .and_then(|r| r.guests.get(guest_id))
            .and_then(|g| g.pending.as_ref())
            .is_some_and(|p| p.serial == serial);
        if !still_pending {
            return;
        }
        let owner = self.rooms.get(room_id).map(|r| r.owner);
        let Some(guest) = self.end_call(room_id, guest_id) else { return };
        if let Some(pending) = guest.pending {
            if let Ok(call) = Message::parse(pending.offer.text_payload().unwrap_or_default()) {
                let reject = call.reject(RejectCode::CallTimeout, "call timeout").to_json();
                self.send(guest.caller, reject.into());
            }
        }
        if let Some(owner) = owner {
            self.bye(owner, guest_id, room_id, BYE_CALL_TIMEOUT);
        }
    }
}

fn spawn_call_timer(hub: Weak<Inner>, after: Duration, room: Arc<str>, guest: Arc<str>, serial: u64) -> AbortHandle {
    tokio::spawn(async move {
        tokio::time::sleep(after).await;
        if let Some(inner) = hub.upgrade() {
            inner.state.lock().call_timeout(&room, &guest, serial);
        }
    })
    .abort_handle()
}
