//! The hub: who holds which room, which calls exist, and where each message goes.
//!
//! Session code talks only to the [`Hub`] trait, so a cluster backend can replace [`MemoryHub`] without touching the
//! websocket layer. Every implementation must keep these invariants:
//! - Each state change is atomic (one lock or one actor message): "register if absent" can never race.
//! - Relayed messages go out as the original frame bytes; the hub never re-serialises them.
//! - A room id is freed the moment its holder unregisters or detaches; an old session's detach never frees a newer
//!   registration of the same id.
//! - Every counterpart of a detaching or unregistering session gets `bye` ("peer unregister"), except during shutdown,
//!   when no bye is sent at all (SPEC.md §6).
//! - Sending never blocks: a recipient whose queue is full is disconnected, and its own counterparts get their byes.

mod memory;
pub(crate) mod state;

use std::future::Future;
use std::pin::Pin;

use switchboard_proto::{Message, Reject};

pub use memory::MemoryHub;
pub use state::{CallLimits, Settings as HubSettings};

use crate::outbox::Outbox;

/// Identifies one websocket session for the lifetime of the process.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct SessionId(pub u64);

/// Rooms and routing, as the session layer sees them.
pub trait Hub: Send + Sync + 'static {
    /// A new session; replies and relayed messages for it go to `outbox`.
    fn attach(&self, outbox: Outbox) -> SessionId;

    /// Handles one validated message from `session`. `raw` is the message exactly as received, forwarded verbatim
    /// when the message is relayed. A client mistake comes back as the reject to send to the sender. `takeover` (a register
    /// whose token grants the room) lets the register take the room from the session holding it: that session's
    /// counterparts get their byes and it is closed with 4409.
    fn dispatch<'m>(
        &self,
        session: SessionId,
        msg: &'m Message<'_>,
        raw: &str,
        takeover: bool,
    ) -> Result<(), Reject<'m>>;

    /// The session is gone: free its room and end its calls.
    fn detach(&self, session: SessionId);

    /// From now on, detaching sessions end their calls silently (no bye): the server is going down.
    fn begin_shutdown(&self);

    /// Every registered room, in ZLMediaKit's `listWebrtcRooms` shape.
    fn rooms(&self) -> HubFuture<'_, Vec<RoomInfo>>;

    /// One room.
    fn room<'a>(&'a self, room_id: &'a str) -> HubFuture<'a, Option<RoomInfo>>;

    /// Disconnects the holder of `room_id` (its counterparts get their byes); false if nobody holds it.
    fn kick<'a>(&'a self, room_id: &'a str) -> HubFuture<'a, bool>;

    /// Whether the hub can serve new registers (a cluster hub cut off from its backbone cannot).
    fn ready(&self) -> bool {
        true
    }
}

/// An admin query's answer; a cluster hub may not be able to give one.
pub type HubFuture<'a, T> = Pin<Box<dyn Future<Output = Result<T, HubUnavailable>> + Send + 'a>>;

/// The hub cannot answer now (in cluster mode: the backbone or another node did not answer in time).
#[derive(Debug, thiserror::Error)]
#[error("cluster unavailable: {0}")]
pub struct HubUnavailable(pub String);

/// A room as the admin API shows it (ZLMediaKit's `listWebrtcRooms` item).
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct RoomInfo {
    pub room_id: String,
    /// Calls into this room.
    pub guests: Vec<GuestInfo>,
    /// Calls the room's holder made into other rooms.
    pub tours: Vec<TourInfo>,
}

#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct GuestInfo {
    pub guest_id: String,
}

#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct TourInfo {
    pub guest_id: String,
    pub room_id: String,
}
