//! Parsing: a checked, zero-copy view over one STUN message.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use hmac::Hmac;

use super::{attr, split_type, Class, HEADER_LEN, MAGIC_COOKIE};

/// Why bytes are not a STUN message.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum ParseError {
    #[error("shorter than a STUN header")]
    TooShort,
    #[error("not a STUN message (top bits or magic cookie)")]
    NotStun,
    #[error("length field does not match the datagram")]
    BadLength,
    #[error("attribute overruns the message")]
    BadAttribute,
    #[error("FINGERPRINT does not match")]
    BadFingerprint,
}

/// The outcome of checking a message's integrity with a key.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Integrity {
    /// The message carries no MESSAGE-INTEGRITY or MESSAGE-INTEGRITY-SHA256.
    Absent,
    /// It does, and it matches the key.
    Valid,
    /// It does, and it does not match.
    Invalid,
}

/// A checked STUN message. Attributes after MESSAGE-INTEGRITY(-SHA256) other than FINGERPRINT are ignored, as
/// RFC 8489 §14.5 requires.
#[derive(Debug, Clone, Copy)]
pub struct Message<'a> {
    raw: &'a [u8],
    class: Class,
    method: u16,
    /// Byte offset of the MESSAGE-INTEGRITY attribute header, if present.
    integrity_at: Option<usize>,
    /// Byte offset of the MESSAGE-INTEGRITY-SHA256 attribute header, if present.
    integrity256_at: Option<usize>,
    /// End of the attributes that count (before any ignored trailing attributes).
    attrs_end: usize,
}

impl<'a> Message<'a> {
    /// Whether `buf` starts like a STUN message (as opposed to ChannelData): top two bits zero and the cookie.
    pub fn is_stun(buf: &[u8]) -> bool {
        buf.len() >= HEADER_LEN && buf[0] & 0xC0 == 0 && buf[4..8] == MAGIC_COOKIE.to_be_bytes()
    }

    /// Checks the header, the attribute layout and the FINGERPRINT if present.
    pub fn parse(raw: &'a [u8]) -> Result<Self, ParseError> {
        if raw.len() < HEADER_LEN {
            return Err(ParseError::TooShort);
        }
        if !Self::is_stun(raw) {
            return Err(ParseError::NotStun);
        }
        let len = u16::from_be_bytes([raw[2], raw[3]]) as usize;
        if !len.is_multiple_of(4) || HEADER_LEN + len != raw.len() {
            return Err(ParseError::BadLength);
        }
        let (class, method) = split_type(u16::from_be_bytes([raw[0], raw[1]]));
        let mut msg = Message { raw, class, method, integrity_at: None, integrity256_at: None, attrs_end: raw.len() };
        let mut at = HEADER_LEN;
        let mut fingerprint_at = None;
        while at < raw.len() {
            if at + 4 > raw.len() {
                return Err(ParseError::BadAttribute);
            }
            let t = u16::from_be_bytes([raw[at], raw[at + 1]]);
            let l = attr_len(raw, at);
            let next = at + 4 + padded(l);
            if next > raw.len() {
                return Err(ParseError::BadAttribute);
            }
            match t {
                attr::MESSAGE_INTEGRITY if msg.integrity_at.is_none() && msg.integrity256_at.is_none() => {
                    if l != 20 {
                        return Err(ParseError::BadAttribute);
                    }
                    msg.integrity_at = Some(at);
                }
                attr::MESSAGE_INTEGRITY_SHA256 if msg.integrity256_at.is_none() => {
                    if !(16..=32).contains(&l) || !l.is_multiple_of(4) {
                        return Err(ParseError::BadAttribute);
                    }
                    msg.integrity256_at = Some(at);
                }
                attr::FINGERPRINT => {
                    if l != 4 || next != raw.len() {
                        return Err(ParseError::BadAttribute);
                    }
                    if raw[at + 4..at + 8] != crc_fingerprint(raw, at).to_be_bytes() {
                        return Err(ParseError::BadFingerprint);
                    }
                    fingerprint_at = Some(at);
                }
                _ => {}
            }
            at = next;
        }
        // Only attributes up to the integrity attribute count (RFC 8489 §14.5); FINGERPRINT is checked above.
        msg.attrs_end = match (msg.integrity256_at, msg.integrity_at) {
            (Some(j), _) => j + 4 + padded(attr_len(raw, j)),
            (None, Some(i)) => i + 24,
            (None, None) => fingerprint_at.unwrap_or(raw.len()),
        };
        Ok(msg)
    }

    pub fn class(&self) -> Class {
        self.class
    }

    pub fn method(&self) -> u16 {
        self.method
    }

    pub fn transaction_id(&self) -> [u8; 12] {
        let mut t = [0; 12];
        t.copy_from_slice(&self.raw[8..20]);
        t
    }

    /// The whole message.
    pub fn raw(&self) -> &'a [u8] {
        self.raw
    }

    /// Every counted attribute as (type, value), in order.
    pub fn attributes(&self) -> impl Iterator<Item = (u16, &'a [u8])> + 'a {
        let raw = self.raw;
        let end = self.attrs_end;
        let mut at = HEADER_LEN;
        std::iter::from_fn(move || {
            if at + 4 > end {
                return None;
            }
            let t = u16::from_be_bytes([raw[at], raw[at + 1]]);
            let l = attr_len(raw, at);
            let v = &raw[at + 4..at + 4 + l];
            at += 4 + padded(l);
            Some((t, v))
        })
    }

    /// The first attribute of type `t`.
    pub fn get(&self, t: u16) -> Option<&'a [u8]> {
        self.attributes().find(|(ty, _)| *ty == t).map(|(_, v)| v)
    }

    /// A UTF-8 text attribute (USERNAME, REALM, NONCE, SOFTWARE).
    pub fn text(&self, t: u16) -> Option<&'a str> {
        self.get(t).and_then(|v| std::str::from_utf8(v).ok())
    }

    /// A 32-bit attribute such as LIFETIME.
    pub fn u32(&self, t: u16) -> Option<u32> {
        self.get(t).and_then(|v| v.try_into().ok()).map(u32::from_be_bytes)
    }

    /// An XOR-encoded address attribute (XOR-PEER-ADDRESS, XOR-MAPPED-ADDRESS, …).
    pub fn xor_address(&self, t: u16) -> Option<SocketAddr> {
        decode_xor_address(self.get(t)?, &self.raw[8..20])
    }

    /// Every XOR-PEER-ADDRESS (CreatePermission may carry several).
    pub fn xor_addresses(&self, t: u16) -> impl Iterator<Item = Option<SocketAddr>> + 'a {
        let txid = &self.raw[8..20];
        self.attributes().filter(move |(ty, _)| *ty == t).map(move |(_, v)| decode_xor_address(v, txid))
    }

    /// The ERROR-CODE number, for responses.
    pub fn error_code(&self) -> Option<u16> {
        let v = self.get(attr::ERROR_CODE)?;
        (v.len() >= 4).then(|| u16::from(v[2] & 0x7) * 100 + u16::from(v[3]))
    }

    /// Comprehension-required attribute types this code does not know, for a 420 answer.
    pub fn unknown_required(&self, known: &[u16]) -> Vec<u16> {
        self.attributes().map(|(t, _)| t).filter(|t| attr::comprehension_required(*t) && !known.contains(t)).collect()
    }

    /// Whether the message carries MESSAGE-INTEGRITY-SHA256 (then the answer uses it too).
    pub fn uses_sha256(&self) -> bool {
        self.integrity256_at.is_some()
    }

    /// Whether the message carries any integrity attribute.
    pub fn has_integrity(&self) -> bool {
        self.integrity_at.is_some() || self.integrity256_at.is_some()
    }

    /// Verifies MESSAGE-INTEGRITY-SHA256 if present, else MESSAGE-INTEGRITY, with `key`.
    pub fn verify(&self, key: &[u8]) -> Integrity {
        if let Some(at) = self.integrity256_at {
            let l = attr_len(self.raw, at);
            let mac = hmac_over(self.raw, at, key, Mac::Sha256);
            return if mac.len() >= l && constant_eq(&mac[..l], &self.raw[at + 4..at + 4 + l]) {
                Integrity::Valid
            } else {
                Integrity::Invalid
            };
        }
        if let Some(at) = self.integrity_at {
            let mac = hmac_over(self.raw, at, key, Mac::Sha1);
            return if constant_eq(&mac, &self.raw[at + 4..at + 24]) { Integrity::Valid } else { Integrity::Invalid };
        }
        Integrity::Absent
    }
}

fn attr_len(raw: &[u8], at: usize) -> usize {
    u16::from_be_bytes([raw[at + 2], raw[at + 3]]) as usize
}

pub(super) fn padded(l: usize) -> usize {
    (l + 3) & !3
}

/// The HMAC behind an integrity attribute.
#[derive(Clone, Copy)]
pub(super) enum Mac {
    /// MESSAGE-INTEGRITY.
    Sha1,
    /// MESSAGE-INTEGRITY-SHA256.
    Sha256,
}

/// HMAC over the message up to the attribute at `at`, with the header length rewritten to end after that attribute.
pub(super) fn hmac_over(raw: &[u8], at: usize, key: &[u8], algo: Mac) -> Vec<u8> {
    let attr_total = 4 + padded(attr_len_or_default(raw, at));
    let fake_len = ((at + attr_total - HEADER_LEN) as u16).to_be_bytes();
    let parts: [&[u8]; 3] = [&raw[0..2], &fake_len, &raw[4..at]];
    fn run<M: hmac::Mac + hmac::digest::KeyInit>(key: &[u8], parts: [&[u8]; 3]) -> Vec<u8> {
        let Ok(mut mac) = <M as hmac::digest::KeyInit>::new_from_slice(key) else { return Vec::new() };
        for p in parts {
            mac.update(p);
        }
        mac.finalize().into_bytes().to_vec()
    }
    match algo {
        Mac::Sha1 => run::<Hmac<sha1::Sha1>>(key, parts),
        Mac::Sha256 => run::<Hmac<sha2::Sha256>>(key, parts),
    }
}

fn attr_len_or_default(raw: &[u8], at: usize) -> usize {
    if at + 4 <= raw.len() {
        attr_len(raw, at)
    } else {
        0
    }
}

/// CRC-32 of the message up to the FINGERPRINT attribute at `at` (length rewritten to include it), XOR "STUN".
pub(super) fn crc_fingerprint(raw: &[u8], at: usize) -> u32 {
    let fake_len = (at + 8 - HEADER_LEN) as u16;
    let mut h = crc32fast::Hasher::new();
    h.update(&raw[0..2]);
    h.update(&fake_len.to_be_bytes());
    h.update(&raw[4..at]);
    h.finalize() ^ 0x5354_554E
}

fn constant_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

pub(super) fn decode_xor_address(v: &[u8], txid: &[u8]) -> Option<SocketAddr> {
    if v.len() < 4 {
        return None;
    }
    let port = u16::from_be_bytes([v[2], v[3]]) ^ (MAGIC_COOKIE >> 16) as u16;
    let cookie = MAGIC_COOKIE.to_be_bytes();
    match (v[1], v.len()) {
        (0x01, 8) => {
            let ip: [u8; 4] = std::array::from_fn(|i| v[4 + i] ^ cookie[i]);
            Some(SocketAddr::new(IpAddr::V4(Ipv4Addr::from(ip)), port))
        }
        (0x02, 20) => {
            let ip: [u8; 16] = std::array::from_fn(|i| {
                v[4 + i] ^ if i < 4 { cookie[i] } else { txid.get(i - 4).copied().unwrap_or(0) }
            });
            Some(SocketAddr::new(IpAddr::V6(Ipv6Addr::from(ip)), port))
        }
        _ => None,
    }
}
