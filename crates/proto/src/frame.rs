//! The raw frame: every field the protocol names, read from one JSON object without building a DOM.
//!
//! Invariants:
//! - Only a JSON object is a frame; arrays and scalars are `bad_json`.
//! - A known field that appears twice is `bad_json` (two readers could otherwise disagree on where a message goes).
//! - Unknown fields are skipped without allocation; they still reach the receiver because relays forward the original
//!   text, never this struct.
//! - Bulky fields (`sdp`, `candidate`, …) are only checked for presence and type; their text is never copied.

use std::borrow::Cow;
use std::fmt;

use serde::de::{self, Deserializer, IgnoredAny, MapAccess, SeqAccess, Visitor};
use serde::Deserialize;

/// A protocol field whose text the server needs (ids, routing keys, echoed call details).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub enum Field<'a> {
    /// Absent or `null`.
    #[default]
    Missing,
    /// `""`: missing to validation, but still echoed in a reject (SPEC.md §2).
    Empty,
    /// A non-empty string; borrowed from the frame unless it contained escapes.
    Str(Cow<'a, str>),
    /// Present but not a string.
    Wrong,
}

impl<'a> Field<'a> {
    /// The string, if the field is a non-empty string.
    pub fn as_str(&self) -> Option<&str> {
        match self {
            Field::Str(s) => Some(s),
            _ => None,
        }
    }
}

/// A protocol field whose text the server never needs: only whether it is there and is a string.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Presence {
    /// Absent, `null` or `""`.
    #[default]
    Missing,
    /// A non-empty string.
    Present,
    /// Present but not a string.
    Wrong,
}

/// Every field of the protocol, as found in one frame.
#[derive(Debug, Default)]
pub struct Frame<'a> {
    pub class: Field<'a>,
    pub method: Field<'a>,
    pub transaction_id: Field<'a>,
    pub room_id: Field<'a>,
    pub guest_id: Field<'a>,
    pub call_type: Field<'a>,
    pub vhost: Field<'a>,
    pub app: Field<'a>,
    pub stream: Field<'a>,
    pub sdp: Presence,
    pub candidate: Presence,
    pub ufrag: Presence,
    pub pwd: Presence,
    pub reason: Presence,
}

impl<'a> Frame<'a> {
    /// Reads a frame from JSON text. The error text is meant for a `bad_json` reject.
    pub fn from_json(text: &'a str) -> Result<Self, serde_json::Error> {
        serde_json::from_str(text)
    }
}

/// The names of the fields a frame keeps.
enum Key {
    Class,
    Method,
    TransactionId,
    RoomId,
    GuestId,
    Type,
    Vhost,
    App,
    Stream,
    Sdp,
    Candidate,
    Ufrag,
    Pwd,
    Reason,
    Other,
}

impl<'de> Deserialize<'de> for Key {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct KeyVisitor;
        impl Visitor<'_> for KeyVisitor {
            type Value = Key;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a field name")
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Key, E> {
                Ok(match v {
                    "class" => Key::Class,
                    "method" => Key::Method,
                    "transaction_id" => Key::TransactionId,
                    "room_id" => Key::RoomId,
                    "guest_id" => Key::GuestId,
                    "type" => Key::Type,
                    "vhost" => Key::Vhost,
                    "app" => Key::App,
                    "stream" => Key::Stream,
                    "sdp" => Key::Sdp,
                    "candidate" => Key::Candidate,
                    "ufrag" => Key::Ufrag,
                    "pwd" => Key::Pwd,
                    "reason" => Key::Reason,
                    _ => Key::Other,
                })
            }
        }
        d.deserialize_identifier(KeyVisitor)
    }
}

/// Drains a nested array so the parser can go on; its content is irrelevant.
fn drain_seq<'de, A: SeqAccess<'de>>(mut seq: A) -> Result<(), A::Error> {
    while seq.next_element::<IgnoredAny>()?.is_some() {}
    Ok(())
}

/// Drains a nested object so the parser can go on; its content is irrelevant.
fn drain_map<'de, A: MapAccess<'de>>(mut map: A) -> Result<(), A::Error> {
    while map.next_entry::<IgnoredAny, IgnoredAny>()?.is_some() {}
    Ok(())
}

/// Generates the non-string arms shared by both field visitors: every non-string value is `Wrong`, null is `Missing`.
macro_rules! non_string_arms {
    ($wrong:expr, $missing:expr) => {
        fn visit_bool<E: de::Error>(self, _: bool) -> Result<Self::Value, E> {
            Ok($wrong)
        }
        fn visit_i64<E: de::Error>(self, _: i64) -> Result<Self::Value, E> {
            Ok($wrong)
        }
        fn visit_u64<E: de::Error>(self, _: u64) -> Result<Self::Value, E> {
            Ok($wrong)
        }
        fn visit_f64<E: de::Error>(self, _: f64) -> Result<Self::Value, E> {
            Ok($wrong)
        }
        fn visit_unit<E: de::Error>(self) -> Result<Self::Value, E> {
            Ok($missing)
        }
        fn visit_none<E: de::Error>(self) -> Result<Self::Value, E> {
            Ok($missing)
        }
        fn visit_seq<A: SeqAccess<'de>>(self, seq: A) -> Result<Self::Value, A::Error> {
            drain_seq(seq).map(|()| $wrong)
        }
        fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<Self::Value, A::Error> {
            drain_map(map).map(|()| $wrong)
        }
    };
}

impl<'de> Deserialize<'de> for Field<'de> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct FieldVisitor;
        impl<'de> Visitor<'de> for FieldVisitor {
            type Value = Field<'de>;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("any JSON value")
            }
            fn visit_borrowed_str<E: de::Error>(self, v: &'de str) -> Result<Self::Value, E> {
                Ok(if v.is_empty() { Field::Empty } else { Field::Str(Cow::Borrowed(v)) })
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Self::Value, E> {
                Ok(if v.is_empty() { Field::Empty } else { Field::Str(Cow::Owned(v.to_owned())) })
            }
            non_string_arms!(Field::Wrong, Field::Missing);
        }
        d.deserialize_any(FieldVisitor)
    }
}

impl<'de> Deserialize<'de> for Presence {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        // Borrow the raw JSON text of the value: the parser validates and skips it without decoding escapes or
        // copying (an SDP is kilobytes of `\r\n`), and the first bytes say what it is.
        let raw = <&'de serde_json::value::RawValue>::deserialize(d)?;
        Ok(match raw.get().as_bytes() {
            b"null" | b"\"\"" => Presence::Missing,
            [b'"', ..] => Presence::Present,
            _ => Presence::Wrong,
        })
    }
}

impl<'de> Deserialize<'de> for Frame<'de> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct FrameVisitor;
        impl<'de> Visitor<'de> for FrameVisitor {
            type Value = Frame<'de>;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a JSON object")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Frame<'de>, A::Error> {
                let mut frame = Frame::default();
                let mut seen = 0u16;
                while let Some(key) = map.next_key::<Key>()? {
                    let (bit, name) = match key {
                        Key::Class => (0, "class"),
                        Key::Method => (1, "method"),
                        Key::TransactionId => (2, "transaction_id"),
                        Key::RoomId => (3, "room_id"),
                        Key::GuestId => (4, "guest_id"),
                        Key::Type => (5, "type"),
                        Key::Vhost => (6, "vhost"),
                        Key::App => (7, "app"),
                        Key::Stream => (8, "stream"),
                        Key::Sdp => (9, "sdp"),
                        Key::Candidate => (10, "candidate"),
                        Key::Ufrag => (11, "ufrag"),
                        Key::Pwd => (12, "pwd"),
                        Key::Reason => (13, "reason"),
                        Key::Other => {
                            map.next_value::<IgnoredAny>()?;
                            continue;
                        }
                    };
                    if seen & (1 << bit) != 0 {
                        return Err(de::Error::duplicate_field(name));
                    }
                    seen |= 1 << bit;
                    match key {
                        Key::Class => frame.class = map.next_value()?,
                        Key::Method => frame.method = map.next_value()?,
                        Key::TransactionId => frame.transaction_id = map.next_value()?,
                        Key::RoomId => frame.room_id = map.next_value()?,
                        Key::GuestId => frame.guest_id = map.next_value()?,
                        Key::Type => frame.call_type = map.next_value()?,
                        Key::Vhost => frame.vhost = map.next_value()?,
                        Key::App => frame.app = map.next_value()?,
                        Key::Stream => frame.stream = map.next_value()?,
                        Key::Sdp => frame.sdp = map.next_value()?,
                        Key::Candidate => frame.candidate = map.next_value()?,
                        Key::Ufrag => frame.ufrag = map.next_value()?,
                        Key::Pwd => frame.pwd = map.next_value()?,
                        Key::Reason => frame.reason = map.next_value()?,
                        Key::Other => {}
                    }
                }
                Ok(frame)
            }
        }
        d.deserialize_map(FrameVisitor)
    }
}
