//! What one node tells another over the bus, and its wire form.
//!
//! The set is small and fixed, so the layout is written out here rather than pulled in through a serde format crate:
//! a tag byte, then each field as a big-endian `u64` or a `u32` length and UTF-8 bytes. A relayed frame is copied
//! into its envelope once, as the exact text the client sent.
//!
//! Invariant: [`Envelope::decode`] never panics; bytes that are not exactly one envelope are an error.

use bytes::{Buf, BufMut, Bytes, BytesMut};

/// A session on the sending node, as the receiving node knows it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct From {
    pub node: String,
    pub incarnation: u64,
    pub session: u64,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Envelope {
    /// A message from a caller on the sending node about a room held on the receiving one. `room` is the room the
    /// caller holds; `serial` numbers a call on the caller's node.
    Relay { from: From, room: String, serial: u64, raw: String },
    /// The caller ended every call it made (it unregistered or left): its callees here get byes.
    ToursEnded { from: From },
    /// A frame for a session of the receiving node (in the incarnation given).
    Deliver { incarnation: u64, session: u64, text: String },
    /// A call that session made is gone on the sending node.
    CallEnded { incarnation: u64, session: u64, serial: u64 },
    /// A token holder on the sending node took `room` over from its holder here (session, generation).
    TakenOver { room: String, session: u64, generation: u64 },
    /// An operator asked for the holder of `room` to be kicked.
    Kick { room: String },
    /// Admin: the receiving node's rooms (or just `room`), answered with a [`Envelope::Reply`] to `node`.
    Query { node: String, id: u64, room: Option<String> },
    /// The answer to query `id`: a JSON array of rooms.
    Reply { id: u64, rooms: String },
}

#[derive(Debug, PartialEq, Eq, thiserror::Error)]
#[error("malformed envelope: {0}")]
pub struct BadEnvelope(&'static str);

impl Envelope {
    pub fn encode(&self) -> Bytes {
        let mut out = BytesMut::new();
        match self {
            Envelope::Relay { from, room, serial, raw } => return encode_relay(from, room, *serial, raw),
            Envelope::ToursEnded { from } => {
                out.put_u8(2);
                put_from(&mut out, from);
            }
            Envelope::Deliver { incarnation, session, text } => return encode_deliver(*incarnation, *session, text),
            Envelope::CallEnded { incarnation, session, serial } => {
                out.put_u8(4);
                out.put_u64(*incarnation);
                out.put_u64(*session);
                out.put_u64(*serial);
            }
            Envelope::TakenOver { room, session, generation } => {
                out.put_u8(5);
                put_str(&mut out, room);
                out.put_u64(*session);
                out.put_u64(*generation);
            }
            Envelope::Kick { room } => {
                out.put_u8(6);
                put_str(&mut out, room);
            }
            Envelope::Query { node, id, room } => {
                out.put_u8(7);
                put_str(&mut out, node);
                out.put_u64(*id);
                match room {
                    Some(r) => {
                        out.put_u8(1);
                        put_str(&mut out, r);
                    }
                    None => out.put_u8(0),
                }
            }
            Envelope::Reply { id, rooms } => {
                out.put_u8(8);
                out.put_u64(*id);
                put_str(&mut out, rooms);
            }
        }
        out.freeze()
    }

    pub fn decode(mut b: Bytes) -> Result<Envelope, BadEnvelope> {
        let b = &mut b;
        let envelope = match u8(b)? {
            1 => Envelope::Relay { from: from(b)?, room: string(b)?, serial: u64(b)?, raw: string(b)? },
            2 => Envelope::ToursEnded { from: from(b)? },
            3 => Envelope::Deliver { incarnation: u64(b)?, session: u64(b)?, text: string(b)? },
            4 => Envelope::CallEnded { incarnation: u64(b)?, session: u64(b)?, serial: u64(b)? },
            5 => Envelope::TakenOver { room: string(b)?, session: u64(b)?, generation: u64(b)? },
            6 => Envelope::Kick { room: string(b)? },
            7 => Envelope::Query {
                node: string(b)?,
                id: u64(b)?,
                room: match u8(b)? {
                    0 => None,
                    1 => Some(string(b)?),
                    _ => return Err(BadEnvelope("bad option flag")),
                },
            },
            8 => Envelope::Reply { id: u64(b)?, rooms: string(b)? },
            _ => return Err(BadEnvelope("unknown tag")),
        };
        if b.has_remaining() {
            return Err(BadEnvelope("trailing bytes"));
        }
        Ok(envelope)
    }
}

/// [`Envelope::Relay`]'s wire form straight from borrowed parts: the relay path copies the frame once, into the batch.
pub fn encode_relay(from: &From, room: &str, serial: u64, raw: &str) -> Bytes {
    let mut out = BytesMut::with_capacity(33 + from.node.len() + room.len() + raw.len());
    out.put_u8(1);
    put_from(&mut out, from);
    put_str(&mut out, room);
    out.put_u64(serial);
    put_str(&mut out, raw);
    out.freeze()
}

/// [`Envelope::Deliver`]'s wire form from a borrowed text.
pub fn encode_deliver(incarnation: u64, session: u64, text: &str) -> Bytes {
    let mut out = BytesMut::with_capacity(21 + text.len());
    out.put_u8(3);
    out.put_u64(incarnation);
    out.put_u64(session);
    put_str(&mut out, text);
    out.freeze()
}

fn put_str(out: &mut BytesMut, s: &str) {
    out.put_u32(s.len() as u32);
    out.put_slice(s.as_bytes());
}

fn put_from(out: &mut BytesMut, from: &From) {
    put_str(out, &from.node);
    out.put_u64(from.incarnation);
    out.put_u64(from.session);
}

fn u8(b: &mut Bytes) -> Result<u8, BadEnvelope> {
    b.try_get_u8().map_err(|_| BadEnvelope("truncated"))
}

fn u64(b: &mut Bytes) -> Result<u64, BadEnvelope> {
    b.try_get_u64().map_err(|_| BadEnvelope("truncated"))
}

fn string(b: &mut Bytes) -> Result<String, BadEnvelope> {
    let len = b.try_get_u32().map_err(|_| BadEnvelope("truncated"))? as usize;
    if b.remaining() < len {
        return Err(BadEnvelope("string past the end"));
    }
    String::from_utf8(b.split_to(len).to_vec()).map_err(|_| BadEnvelope("not UTF-8"))
}

fn from(b: &mut Bytes) -> Result<From, BadEnvelope> {
    Ok(From { node: string(b)?, incarnation: u64(b)?, session: u64(b)? })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn all() -> Vec<Envelope> {
        let from = From { node: "node-a".into(), incarnation: 7, session: 9 };
        vec![
            Envelope::Relay { from: from.clone(), room: "r".into(), serial: 3, raw: "{\"method\":\"call\"} ü".into() },
            Envelope::ToursEnded { from },
            Envelope::Deliver { incarnation: 1, session: 2, text: String::new() },
            Envelope::CallEnded { incarnation: 1, session: 2, serial: u64::MAX },
            Envelope::TakenOver { room: "room".into(), session: 4, generation: 5 },
            Envelope::Kick { room: "k".into() },
            Envelope::Query { node: "b".into(), id: 1, room: None },
            Envelope::Query { node: "b".into(), id: 2, room: Some("x".into()) },
            Envelope::Reply { id: 2, rooms: "[]".into() },
        ]
    }

    #[test]
    fn every_envelope_round_trips_and_no_prefix_or_extension_decodes() {
        for e in all() {
            let bytes = e.encode();
            assert_eq!(Envelope::decode(bytes.clone()), Ok(e.clone()));
            for cut in 0..bytes.len() {
                assert!(Envelope::decode(bytes.slice(..cut)).is_err(), "{e:?} cut at {cut}");
            }
            let mut longer = bytes.to_vec();
            longer.push(0);
            assert_eq!(Envelope::decode(longer.into()), Err(BadEnvelope("trailing bytes")));
        }
        assert_eq!(Envelope::decode(Bytes::from_static(&[9])), Err(BadEnvelope("unknown tag")));
        let bad_utf8 = [6, 0, 0, 0, 1, 0xff];
        assert_eq!(Envelope::decode(Bytes::copy_from_slice(&bad_utf8)), Err(BadEnvelope("not UTF-8")));
        let huge = [6, 0xff, 0xff, 0xff, 0xff];
        assert_eq!(Envelope::decode(Bytes::copy_from_slice(&huge)), Err(BadEnvelope("string past the end")));
    }
}
