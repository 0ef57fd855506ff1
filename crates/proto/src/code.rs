//! Stable reject codes (SPEC.md §2).
//!
//! The variants are declared in the table's order, which is also the precedence order: when a frame has several
//! faults, the lowest variant wins. The string form is part of the wire contract and never changes.

use std::fmt;

/// A machine-readable reason for a `reject`, sent as its `code` field (an extension ZLMediaKit clients ignore).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum RejectCode {
    /// The frame is not a JSON object.
    BadJson,
    /// A required field is absent, `null` or `""`.
    MissingField,
    /// A field has the wrong type, an id is too long, or `type` is not `play`/`push`.
    BadField,
    /// The class/method pair is not part of the protocol.
    Unsupported,
    /// The room is held by another session.
    RoomConflict,
    /// This session already holds a room.
    AlreadyRegistered,
    /// The session holds no room but tried something that needs one.
    NotRegistered,
    /// An unregister named a room this session does not hold.
    RoomMismatch,
    /// A call to, or a relay towards, a room nobody holds.
    RoomNotFound,
    /// A call into the caller's own room.
    SelfCall,
    /// The guest id is already in use towards that room.
    GuestConflict,
    /// A relay for a call the sender is not part of, or one that has ended or was already answered.
    UnknownGuest,
    /// The callee did not answer in time.
    CallTimeout,
    /// Auth is on and the token does not grant this.
    Unauthorized,
    /// The per-connection message budget is exceeded.
    RateLimited,
    /// Cluster mode: the request needs the backbone and it cannot be reached.
    Unavailable,
}

impl RejectCode {
    /// Every code, in precedence order.
    pub const ALL: [RejectCode; 16] = [
        Self::BadJson,
        Self::MissingField,
        Self::BadField,
        Self::Unsupported,
        Self::RoomConflict,
        Self::AlreadyRegistered,
        Self::NotRegistered,
        Self::RoomMismatch,
        Self::RoomNotFound,
        Self::SelfCall,
        Self::GuestConflict,
        Self::UnknownGuest,
        Self::CallTimeout,
        Self::Unauthorized,
        Self::RateLimited,
        Self::Unavailable,
    ];

    /// The wire form, e.g. `room_not_found`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::BadJson => "bad_json",
            Self::MissingField => "missing_field",
            Self::BadField => "bad_field",
            Self::Unsupported => "unsupported",
            Self::RoomConflict => "room_conflict",
            Self::AlreadyRegistered => "already_registered",
            Self::NotRegistered => "not_registered",
            Self::RoomMismatch => "room_mismatch",
            Self::RoomNotFound => "room_not_found",
            Self::SelfCall => "self_call",
            Self::GuestConflict => "guest_conflict",
            Self::UnknownGuest => "unknown_guest",
            Self::CallTimeout => "call_timeout",
            Self::Unauthorized => "unauthorized",
            Self::RateLimited => "rate_limited",
            Self::Unavailable => "unavailable",
        }
    }

    /// Parses the wire form; `None` for a code this version does not know.
    pub fn from_wire(s: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|c| c.as_str() == s)
    }
}

impl fmt::Display for RejectCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wire_forms_round_trip_and_keep_table_order() {
        for (i, code) in RejectCode::ALL.iter().enumerate() {
            assert_eq!(RejectCode::from_wire(code.as_str()), Some(*code));
            if i > 0 {
                assert!(RejectCode::ALL[i - 1] < *code, "precedence follows the table");
            }
        }
        assert_eq!(RejectCode::from_wire("nope"), None);
    }
}
