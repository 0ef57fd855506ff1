//! The single-node hub: the hub state ([`super::state`]) behind its mutex, and nothing else.

use std::sync::Arc;
use std::time::Duration;

use parking_lot::Mutex;
use switchboard_proto::{Message, Reject};

use super::state::{CallLimits, Settings, Sink, State};
use super::{Hub, HubFuture, RoomInfo, SessionId};
use crate::ice::IceServers;
use crate::metrics::Metrics;
use crate::outbox::Outbox;

/// An in-memory [`Hub`] for one node.
pub struct MemoryHub {
    state: Arc<Mutex<State<()>>>,
}

impl MemoryHub {
    pub fn new(ice: IceServers, call_timeout: Duration, call_limits: CallLimits, metrics: Arc<Metrics>) -> MemoryHub {
        MemoryHub { state: State::new_shared(Settings { ice, call_timeout, call_limits }, metrics, ()) }
    }

    /// Number of registered rooms.
    pub fn room_count(&self) -> usize {
        self.state.lock().rooms.len()
    }
}

impl Hub for MemoryHub {
    fn attach(&self, outbox: Outbox) -> SessionId {
        self.state.lock().attach(Sink::Local(outbox), None)
    }

    fn dispatch<'m>(&self, sid: SessionId, msg: &'m Message<'_>, raw: &str, takeover: bool) -> Result<(), Reject<'m>> {
        self.state.lock().dispatch(sid, msg, raw, takeover, 0)
    }

    fn detach(&self, sid: SessionId) {
        self.state.lock().detach(sid);
    }

    fn begin_shutdown(&self) {
        self.state.lock().shutting_down = true;
    }

    fn rooms(&self) -> HubFuture<'_, Vec<RoomInfo>> {
        let rooms = self.state.lock().room_infos();
        Box::pin(std::future::ready(Ok(rooms)))
    }

    fn room<'a>(&'a self, room_id: &'a str) -> HubFuture<'a, Option<RoomInfo>> {
        let room = self.state.lock().room_info(room_id);
        Box::pin(std::future::ready(Ok(room)))
    }

    fn kick<'a>(&'a self, room_id: &'a str) -> HubFuture<'a, bool> {
        let kicked = self.state.lock().kick(room_id);
        Box::pin(std::future::ready(Ok(kicked)))
    }
}
