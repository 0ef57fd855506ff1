//! The backbone inside one process: several nodes' handles on one shared [`MemoryWorld`], for multi-node tests
//! without Redis. Time is tokio's (so paused-time tests can expire memberships), and a node can be cut off from the
//! world to play a backbone outage.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use parking_lot::Mutex;
use tokio::sync::mpsc;
use tokio::time::Instant;

use super::{new_incarnation, Backbone, BackboneError, Claim, Fence, Membership, NodeId, Result};

/// Inbox depth per node; a full inbox blocks the sender's `send` (as a slow Redis subscriber would).
const INBOX: usize = 1024;

#[derive(Default)]
struct World {
    /// node id → (incarnation, membership lapses at)
    members: HashMap<String, (u64, Instant)>,
    rooms: HashMap<String, Fence>,
    inboxes: HashMap<String, mpsc::Sender<Bytes>>,
    /// Nodes that cannot reach the world right now.
    cut: std::collections::HashSet<String>,
    /// Changes when the world is wiped (0: unset, as in an empty Redis).
    epoch: u64,
    /// Release attempts per room, successful or refused (for tests).
    release_attempts: HashMap<String, u64>,
}

impl World {
    fn live(&self, node: &str, incarnation: u64, now: Instant) -> bool {
        self.members.get(node).is_some_and(|&(inc, until)| inc == incarnation && until > now)
    }

    fn live_owner(&self, room: &str, now: Instant) -> Option<&Fence> {
        self.rooms.get(room).filter(|f| self.live(&f.node, f.incarnation, now))
    }
}

/// The shared state of an in-process cluster.
#[derive(Clone)]
pub struct MemoryWorld {
    world: Arc<Mutex<World>>,
    node_timeout: Duration,
}

impl MemoryWorld {
    pub fn new(node_timeout: Duration) -> MemoryWorld {
        MemoryWorld { world: Arc::default(), node_timeout }
    }

    /// A handle for node `id` (not yet a member: call [`Backbone::join`]).
    pub fn node(&self, id: &str) -> MemoryBackbone {
        MemoryBackbone {
            world: self.clone(),
            id: id.to_owned(),
            incarnation: Arc::new(Mutex::new(0)),
            epoch: Mutex::new(0),
        }
    }

    /// Cuts `node` off (every operation fails as unavailable) or reconnects it.
    pub fn set_cut(&self, node: &str, cut: bool) {
        let mut w = self.world.lock();
        if cut {
            w.cut.insert(node.to_owned());
        } else {
            w.cut.remove(node);
        }
    }

    /// The node whose fence holds `room`'s record now, live or not (for tests).
    pub fn holder(&self, room: &str) -> Option<String> {
        self.world.lock().rooms.get(room).map(|f| f.node.clone())
    }

    /// How many times any node asked to release `room`'s record so far (for tests).
    pub fn release_attempts(&self, room: &str) -> u64 {
        self.world.lock().release_attempts.get(room).copied().unwrap_or(0)
    }

    /// Forgets everything, as a Redis restarted without persistence.
    pub fn wipe(&self) {
        let mut w = self.world.lock();
        w.members.clear();
        w.rooms.clear();
        w.epoch = 0;
    }
}

/// One node's handle on a [`MemoryWorld`].
pub struct MemoryBackbone {
    world: MemoryWorld,
    id: String,
    incarnation: Arc<Mutex<u64>>,
    /// The world's epoch when this node last joined or re-asserted.
    epoch: Mutex<u64>,
}

impl MemoryBackbone {
    /// Runs `f` on the world unless this node is cut off.
    fn with<T>(&self, f: impl FnOnce(&mut World, Instant) -> T) -> Result<T> {
        let mut w = self.world.world.lock();
        if w.cut.contains(&self.id) {
            return Err(BackboneError::Unavailable(format!("node {} is cut off", self.id)));
        }
        Ok(f(&mut w, Instant::now()))
    }

    fn own(&self, fence: &Fence) -> bool {
        fence.node == self.id && fence.incarnation == *self.incarnation.lock()
    }
}

impl Backbone for MemoryBackbone {
    fn node(&self) -> NodeId {
        NodeId { id: self.id.clone(), incarnation: *self.incarnation.lock() }
    }

    async fn join(&self) -> Result<NodeId> {
        let incarnation = new_incarnation();
        let timeout = self.world.node_timeout;
        let epoch = self.with(|w, now| {
            if w.epoch == 0 {
                w.epoch = rand::random::<u64>() | 1;
            }
            w.members.insert(self.id.clone(), (incarnation, now + timeout));
            w.epoch
        })?;
        *self.incarnation.lock() = incarnation;
        *self.epoch.lock() = epoch;
        Ok(self.node())
    }

    async fn heartbeat(&self) -> Result<Membership> {
        let incarnation = *self.incarnation.lock();
        let timeout = self.world.node_timeout;
        let mine = *self.epoch.lock();
        let (membership, epoch) = self.with(|w, now| {
            if w.epoch == 0 {
                w.epoch = rand::random::<u64>() | 1;
            }
            if w.epoch != mine {
                w.members.insert(self.id.clone(), (incarnation, now + timeout));
                return (Membership::Reset, w.epoch);
            }
            if !w.live(&self.id, incarnation, now) {
                return (Membership::Lost, w.epoch);
            }
            w.members.insert(self.id.clone(), (incarnation, now + timeout));
            (Membership::Alive, w.epoch)
        })?;
        *self.epoch.lock() = epoch;
        Ok(membership)
    }

    async fn leave(&self) -> Result<()> {
        let incarnation = *self.incarnation.lock();
        self.with(|w, _| {
            if w.members.get(&self.id).is_some_and(|&(inc, _)| inc == incarnation) {
                w.members.remove(&self.id);
            }
            w.rooms.retain(|_, f| !(f.node == self.id && f.incarnation == incarnation));
        })
    }

    async fn members(&self) -> Result<Vec<NodeId>> {
        self.with(|w, now| {
            let mut live: Vec<NodeId> = w
                .members
                .iter()
                .filter(|(_, &(_, until))| until > now)
                .map(|(id, &(incarnation, _))| NodeId { id: id.clone(), incarnation })
                .collect();
            live.sort_by(|a, b| a.id.cmp(&b.id));
            live
        })
    }

    async fn claim(&self, room: &str, fence: &Fence) -> Result<Claim> {
        if !self.own(fence) {
            return Err(BackboneError::Config(format!("fence {fence} is not of this node's incarnation")));
        }
        self.with(|w, now| {
            if !w.live(&fence.node, fence.incarnation, now) {
                return Err(BackboneError::NotMember);
            }
            Ok(match w.live_owner(room, now) {
                Some(owner) => Claim::Held(owner.clone()),
                None => {
                    w.rooms.insert(room.to_owned(), fence.clone());
                    Claim::Won
                }
            })
        })?
    }

    async fn release(&self, room: &str, fence: &Fence) -> Result<bool> {
        self.with(|w, _| {
            *w.release_attempts.entry(room.to_owned()).or_default() += 1;
            if w.rooms.get(room) == Some(fence) {
                w.rooms.remove(room);
                true
            } else {
                false
            }
        })
    }

    async fn take_over(&self, room: &str, from: &Fence, to: &Fence) -> Result<bool> {
        self.with(|w, _| {
            if w.rooms.get(room) == Some(from) {
                w.rooms.insert(room.to_owned(), to.clone());
                true
            } else {
                false
            }
        })
    }

    async fn owner(&self, room: &str) -> Result<Option<Fence>> {
        self.with(|w, now| w.live_owner(room, now).cloned())
    }

    async fn rooms(&self) -> Result<Vec<(String, Fence)>> {
        self.with(|w, now| {
            let mut rooms: Vec<(String, Fence)> = w
                .rooms
                .iter()
                .filter(|(_, f)| w.live(&f.node, f.incarnation, now))
                .map(|(r, f)| (r.clone(), f.clone()))
                .collect();
            rooms.sort();
            rooms
        })
    }

    async fn send(&self, node: &str, batch: Bytes) -> Result<()> {
        let inbox = self.with(|w, _| w.inboxes.get(node).cloned())?;
        if let Some(inbox) = inbox {
            // A closed inbox (its node is gone) loses the batch: the bus is at most once.
            let _ = inbox.send(batch).await;
        }
        Ok(())
    }

    async fn inbox(&self) -> Result<mpsc::Receiver<Bytes>> {
        let (tx, rx) = mpsc::channel(INBOX);
        self.with(|w, _| w.inboxes.insert(self.id.clone(), tx))?;
        Ok(rx)
    }
}
