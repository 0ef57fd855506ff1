//! Messages the server builds itself: rejects, register/unregister/ice_servers accepts and byes.
//!
//! They are serialised compactly. Relayed messages never pass through here: the server forwards their original text.

use std::borrow::Cow;

use serde::Serialize;

use crate::frame::{Field, Frame};
use crate::RejectCode;

/// The ids a reject echoes back (SPEC.md §2): `transaction_id` and `method` always (`""` when unknown), the others
/// when the offending frame carried them as strings.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct Echo<'a> {
    pub transaction_id: Cow<'a, str>,
    pub method: Cow<'a, str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub room_id: Option<Cow<'a, str>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub guest_id: Option<Cow<'a, str>>,
    #[serde(rename = "type", skip_serializing_if = "Option::is_none")]
    pub call_type: Option<Cow<'a, str>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub vhost: Option<Cow<'a, str>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub app: Option<Cow<'a, str>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub stream: Option<Cow<'a, str>>,
}

impl<'a> Echo<'a> {
    /// What a frame that failed validation can still echo.
    pub(crate) fn from_frame(frame: Frame<'a>) -> Self {
        fn s(f: Field<'_>) -> Option<Cow<'_, str>> {
            match f {
                Field::Str(s) => Some(s),
                Field::Empty => Some(Cow::Borrowed("")),
                _ => None,
            }
        }
        Echo {
            transaction_id: s(frame.transaction_id).unwrap_or_default(),
            method: s(frame.method).unwrap_or_default(),
            room_id: s(frame.room_id),
            guest_id: s(frame.guest_id),
            call_type: s(frame.call_type),
            vhost: s(frame.vhost),
            app: s(frame.app),
            stream: s(frame.stream),
        }
    }
}

/// A `reject` to send back to the sender of a message.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Reject<'a> {
    class: &'static str,
    /// Boxed: rejects are the cold path, and this keeps `Result<_, Reject>` small on the hot one.
    #[serde(flatten)]
    pub echo: Box<Echo<'a>>,
    pub reason: String,
    pub code: RejectCode,
}

impl<'a> Reject<'a> {
    pub fn new(code: RejectCode, reason: String, echo: Echo<'a>) -> Self {
        Reject { class: "reject", echo: Box::new(echo), reason, code }
    }

    /// The wire text.
    pub fn to_json(&self) -> String {
        to_json(self)
    }
}

impl Serialize for RejectCode {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.as_str())
    }
}

/// One entry of a register accept's `ice_servers`: a STUN/TURN URL and its long-term credential.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, serde::Deserialize)]
pub struct IceServer {
    pub url: String,
    #[serde(default)]
    pub ufrag: String,
    #[serde(default)]
    pub pwd: String,
}

/// `accept/register`, or `accept/ice_servers` (SPEC.md §4.6), which has the same shape.
#[derive(Debug, Serialize)]
pub struct RegisterAccept<'a> {
    class: &'static str,
    method: &'static str,
    pub transaction_id: &'a str,
    pub room_id: &'a str,
    pub ice_servers: &'a [IceServer],
    /// Unix time at which ephemeral credentials stop working; absent for static ones.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ice_servers_expire: Option<u64>,
}

impl<'a> RegisterAccept<'a> {
    pub fn new(transaction_id: &'a str, room_id: &'a str, ice_servers: &'a [IceServer], expire: Option<u64>) -> Self {
        let method = "register";
        RegisterAccept { class: "accept", method, transaction_id, room_id, ice_servers, ice_servers_expire: expire }
    }

    /// The accept of an `ice_servers` request.
    pub fn refreshed(
        transaction_id: &'a str,
        room_id: &'a str,
        ice_servers: &'a [IceServer],
        expire: Option<u64>,
    ) -> Self {
        RegisterAccept { method: "ice_servers", ..RegisterAccept::new(transaction_id, room_id, ice_servers, expire) }
    }

    /// The wire text.
    pub fn to_json(&self) -> String {
        to_json(self)
    }
}

/// `accept/unregister`.
#[derive(Debug, Serialize)]
pub struct UnregisterAccept<'a> {
    class: &'static str,
    method: &'static str,
    pub transaction_id: &'a str,
    pub room_id: &'a str,
}

impl<'a> UnregisterAccept<'a> {
    pub fn new(transaction_id: &'a str, room_id: &'a str) -> Self {
        UnregisterAccept { class: "accept", method: "unregister", transaction_id, room_id }
    }

    /// The wire text.
    pub fn to_json(&self) -> String {
        to_json(self)
    }
}

/// The reason of the bye the server sends when a counterpart goes away (SPEC.md §6).
pub const BYE_PEER_UNREGISTER: &str = "peer unregister";
/// The reason of the bye the room owner gets when a call times out (SPEC.md §4.3).
pub const BYE_CALL_TIMEOUT: &str = "call timeout";

/// `indication/bye` built by the server.
#[derive(Debug, Serialize)]
pub struct ServerBye<'a> {
    class: &'static str,
    method: &'static str,
    pub transaction_id: &'a str,
    pub guest_id: &'a str,
    pub room_id: &'a str,
    pub reason: &'a str,
}

impl<'a> ServerBye<'a> {
    pub fn new(transaction_id: &'a str, guest_id: &'a str, room_id: &'a str, reason: &'a str) -> Self {
        ServerBye { class: "indication", method: "bye", transaction_id, guest_id, room_id, reason }
    }

    /// The wire text.
    pub fn to_json(&self) -> String {
        to_json(self)
    }
}

fn to_json<T: Serialize>(value: &T) -> String {
    // Serialising these structs (strings, options, slices of strings) into a String cannot fail.
    serde_json::to_string(value).unwrap_or_default()
}
