//! Encoding: builds a message attribute by attribute, then seals it.

use std::net::{IpAddr, SocketAddr};

use super::message::{crc_fingerprint, hmac_over, padded, Mac};
use super::{attr, message_type, Class, HEADER_LEN, MAGIC_COOKIE};

/// Writes one STUN message.
pub struct Builder {
    buf: Vec<u8>,
}

impl Builder {
    pub fn new(class: Class, method: u16, transaction_id: [u8; 12]) -> Builder {
        let mut buf = Vec::with_capacity(128);
        buf.extend_from_slice(&message_type(class, method).to_be_bytes());
        buf.extend_from_slice(&[0, 0]);
        buf.extend_from_slice(&MAGIC_COOKIE.to_be_bytes());
        buf.extend_from_slice(&transaction_id);
        Builder { buf }
    }

    fn set_len(&mut self) {
        let len = (self.buf.len() - HEADER_LEN) as u16;
        self.buf[2..4].copy_from_slice(&len.to_be_bytes());
    }

    /// Appends an attribute with its padding.
    pub fn attr(mut self, t: u16, value: &[u8]) -> Builder {
        self.buf.extend_from_slice(&t.to_be_bytes());
        self.buf.extend_from_slice(&(value.len() as u16).to_be_bytes());
        self.buf.extend_from_slice(value);
        self.buf.resize(self.buf.len() + padded(value.len()) - value.len(), 0);
        self.set_len();
        self
    }

    pub fn u32(self, t: u16, v: u32) -> Builder {
        self.attr(t, &v.to_be_bytes())
    }

    /// An XOR-encoded address attribute.
    pub fn xor_address(self, t: u16, addr: SocketAddr) -> Builder {
        let port = addr.port() ^ (MAGIC_COOKIE >> 16) as u16;
        let cookie = MAGIC_COOKIE.to_be_bytes();
        let mut v = Vec::with_capacity(20);
        match addr.ip() {
            IpAddr::V4(ip) => {
                v.extend_from_slice(&[0, 0x01]);
                v.extend_from_slice(&port.to_be_bytes());
                v.extend(ip.octets().iter().zip(cookie).map(|(a, b)| a ^ b));
            }
            IpAddr::V6(ip) => {
                v.extend_from_slice(&[0, 0x02]);
                v.extend_from_slice(&port.to_be_bytes());
                let mask: Vec<u8> = cookie.iter().chain(&self.buf[8..20]).copied().collect();
                v.extend(ip.octets().iter().zip(mask).map(|(a, b)| a ^ b));
            }
        }
        self.attr(t, &v)
    }

    /// ERROR-CODE with its reason phrase.
    pub fn error(self, code: u16, reason: &str) -> Builder {
        let mut v = vec![0, 0, (code / 100) as u8, (code % 100) as u8];
        v.extend_from_slice(reason.as_bytes());
        self.attr(attr::ERROR_CODE, &v)
    }

    /// MESSAGE-INTEGRITY (HMAC-SHA1) over everything written so far.
    pub fn integrity(mut self, key: &[u8]) -> Builder {
        let at = self.buf.len();
        self = self.attr(attr::MESSAGE_INTEGRITY, &[0; 20]);
        let mac = hmac_over(&self.buf, at, key, Mac::Sha1);
        self.buf[at + 4..at + 24].copy_from_slice(&mac);
        self
    }

    /// MESSAGE-INTEGRITY-SHA256 (full 32 bytes) over everything written so far.
    pub fn integrity_sha256(mut self, key: &[u8]) -> Builder {
        let at = self.buf.len();
        self = self.attr(attr::MESSAGE_INTEGRITY_SHA256, &[0; 32]);
        let mac = hmac_over(&self.buf, at, key, Mac::Sha256);
        self.buf[at + 4..at + 36].copy_from_slice(&mac);
        self
    }

    /// FINGERPRINT, last.
    pub fn fingerprint(mut self) -> Builder {
        let at = self.buf.len();
        self = self.attr(attr::FINGERPRINT, &[0; 4]);
        let crc = crc_fingerprint(&self.buf, at);
        self.buf[at + 4..at + 8].copy_from_slice(&crc.to_be_bytes());
        self
    }

    pub fn finish(self) -> Vec<u8> {
        self.buf
    }
}
