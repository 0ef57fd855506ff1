//! Cluster mode's backbone: what several switchboard nodes share so that they behave as one server (SPEC.md §9).
//! Design and the Redis client evaluation: docs/cluster.md.
//!
//! Invariants every [`Backbone`] implementation keeps (`tests/backbone.rs` holds each one to them):
//! - A room id has at most one owner, a [`Fence`]. [`Backbone::claim`] takes an id only if it has no owner or its
//!   owner's node is no longer a member *in the same incarnation*; [`Backbone::release`] and [`Backbone::take_over`]
//!   change an owner only if the fence given matches the stored one exactly. So neither an old session, nor a node
//!   that was declared lost and came back, can free or steal a newer registration.
//! - Membership lapses `node_timeout` after the last successful [`Backbone::heartbeat`]. A heartbeat that finds its
//!   own membership gone (or replaced) answers [`Membership::Lost`]; [`Backbone::join`] then starts a new
//!   incarnation, under which none of the old fences match anything.
//! - Batches sent to one node arrive at its inbox in the order sent, at most once.
//! - Nothing hangs: an unreachable backbone is an error within the operation's deadline, which the hub answers with
//!   `reject` code `unavailable`.
//!
//! The cluster hub ([`ClusterHub`]) sits on top: sessions → `Hub` → cluster hub → backbone.

pub mod bus;
pub mod envelope;
mod hub;
pub mod membership;
mod memory;
mod redis;

use std::fmt;
use std::future::Future;
use std::time::Duration;

use bytes::Bytes;
use tokio::sync::mpsc;

pub use bus::Bus;
pub use hub::{ClusterHub, ClusterTiming};
pub use memory::{MemoryBackbone, MemoryWorld};
pub use redis::RedisBackbone;

/// One node of the cluster in one life: `id` is stable (config or generated), `incarnation` is new at every join.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct NodeId {
    pub id: String,
    pub incarnation: u64,
}

/// Who owns a room: a session of a node in one incarnation, and the generation of that registration.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Fence {
    pub node: String,
    pub incarnation: u64,
    pub session: u64,
    pub generation: u64,
}

impl Fence {
    /// The stored form: four space-separated fields (node ids contain no spaces: [`valid_node_id`]).
    pub fn encode(&self) -> String {
        format!("{} {} {} {}", self.node, self.incarnation, self.session, self.generation)
    }

    pub fn decode(s: &str) -> Option<Fence> {
        let mut it = s.split(' ');
        let fence = Fence {
            node: it.next()?.to_owned(),
            incarnation: it.next()?.parse().ok()?,
            session: it.next()?.parse().ok()?,
            generation: it.next()?.parse().ok()?,
        };
        it.next().is_none().then_some(fence)
    }
}

impl fmt::Display for Fence {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.encode())
    }
}

/// A node id may name a Redis key and a field of a fence: 1–64 characters of `[A-Za-z0-9_.-]`.
pub fn valid_node_id(id: &str) -> bool {
    (1..=64).contains(&id.len()) && id.bytes().all(|b| b.is_ascii_alphanumeric() || b"_.-".contains(&b))
}

/// The outcome of a claim.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Claim {
    Won,
    /// Someone else owns it (a live owner: lost nodes' rooms are claimable).
    Held(Fence),
}

/// What a heartbeat found.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Membership {
    Alive,
    /// The backbone lost its state (a Redis restarted empty): this node's membership is asserted again, and it must
    /// claim its rooms again (before it accepts new registers).
    Reset,
    /// This incarnation was declared lost (its membership lapsed or was replaced): rejoin.
    Lost,
}

#[derive(Debug, thiserror::Error)]
pub enum BackboneError {
    #[error("backbone unavailable: {0}")]
    Unavailable(String),
    #[error("backbone operation timed out after {0:?}")]
    Timeout(Duration),
    #[error("this node is not a member of the cluster (its membership lapsed): it must rejoin")]
    NotMember,
    #[error("invalid backbone configuration: {0}")]
    Config(String),
}

pub type Result<T> = std::result::Result<T, BackboneError>;

/// The shared state and the bus of a cluster, as one node sees it.
pub trait Backbone: Send + Sync + 'static {
    /// This node in its current incarnation.
    fn node(&self) -> NodeId;

    /// Becomes a member under a fresh incarnation (returned); the previous incarnation's fences are dead from now on.
    fn join(&self) -> impl Future<Output = Result<NodeId>> + Send;

    /// Renews this incarnation's membership for another node timeout.
    fn heartbeat(&self) -> impl Future<Output = Result<Membership>> + Send;

    /// Leaves cleanly: the membership and every room this incarnation owns are gone at once.
    fn leave(&self) -> impl Future<Output = Result<()>> + Send;

    /// The live members.
    fn members(&self) -> impl Future<Output = Result<Vec<NodeId>>> + Send;

    /// Takes `room` for `fence` (which must be of this incarnation) unless a live owner holds it.
    fn claim(&self, room: &str, fence: &Fence) -> impl Future<Output = Result<Claim>> + Send;

    /// Frees `room` if `fence` still owns it; false otherwise (nothing changes).
    fn release(&self, room: &str, fence: &Fence) -> impl Future<Output = Result<bool>> + Send;

    /// Gives `room` from `from` to `to` if `from` still owns it; false otherwise.
    fn take_over(&self, room: &str, from: &Fence, to: &Fence) -> impl Future<Output = Result<bool>> + Send;

    /// The live owner of `room`.
    fn owner(&self, room: &str) -> impl Future<Output = Result<Option<Fence>>> + Send;

    /// Every room with a live owner.
    fn rooms(&self) -> impl Future<Output = Result<Vec<(String, Fence)>>> + Send;

    /// Sends one batch to `node`'s inbox (delivered in order after earlier batches to that node, at most once).
    fn send(&self, node: &str, batch: Bytes) -> impl Future<Output = Result<()>> + Send;

    /// This node's inbox; the bus keeps delivering into it, resubscribing after connection losses, until it is
    /// dropped. Only one inbox per backbone handle is live at a time.
    fn inbox(&self) -> impl Future<Output = Result<mpsc::Receiver<Bytes>>> + Send;
}

/// A fresh incarnation number: distinct across restarts of one node id (time-based, with randomness against
/// two starts in one microsecond).
fn new_incarnation() -> u64 {
    let micros = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default().as_micros();
    (micros as u64 & !0xffff) | u64::from(rand::random::<u16>())
}
