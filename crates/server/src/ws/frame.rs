//! RFC 6455 framing for the server side, sans-IO: a [`Decoder`] for client frames and [`Frame`], an encoded server
//! frame.
//!
//! Why our own framing rather than tungstenite's: tungstenite owns a read buffer per connection for the connection's
//! whole life (4 KiB by default), which was the largest single item of an idle room's memory. Decoding from any
//! caller-provided slice lets the transport read into one per-thread buffer and keep bytes per connection only while
//! a frame is incomplete (see `BENCHMARKS.md`, idle memory).
//!
//! Invariants:
//! - The decoder never reads past the slice it is given and never panics on any input; every violation maps to the
//!   close code the RFC asks for ([`Violation::close_code`]).
//! - A data message is delivered only whole (after reassembly of its fragments) and, for text, only as valid UTF-8.
//! - Sizes are checked from the header, before the payload arrives: an oversized message costs no buffering.
//! - Client frames must be masked (RFC 6455 §5.1); the decoder unmasks in place. Server frames are never masked.

use bytes::{BufMut, Bytes, BytesMut};

const FIN: u8 = 0x80;
const RSV: u8 = 0x70;
const MASKED: u8 = 0x80;

const OP_CONTINUATION: u8 = 0x0;
const OP_TEXT: u8 = 0x1;
const OP_BINARY: u8 = 0x2;
const OP_CLOSE: u8 = 0x8;
const OP_PING: u8 = 0x9;
const OP_PONG: u8 = 0xA;

/// A complete, unmasked message or control frame from the client.
#[derive(Debug, PartialEq, Eq)]
pub enum Event<'a> {
    /// A whole text message.
    Text(&'a str),
    /// A ping, whose payload the pong must echo.
    Ping(&'a [u8]),
    Pong,
    /// The client closes; its status code, when it sent one.
    Close(Option<u16>),
}

/// Why the connection must be closed, and with which code (RFC 6455 §7.4.1).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Violation {
    TooBig,
    Binary,
    Utf8,
    Protocol(&'static str),
}

impl Violation {
    pub fn close_code(self) -> u16 {
        match self {
            Violation::TooBig => 1009,
            Violation::Binary => 1003,
            Violation::Utf8 => 1007,
            Violation::Protocol(_) => 1002,
        }
    }

    /// The close frame's reason (also its `Display`).
    pub fn reason(self) -> &'static str {
        match self {
            Violation::TooBig => "message too big",
            Violation::Binary => "binary frames are not supported",
            Violation::Utf8 => "invalid UTF-8",
            Violation::Protocol(what) => what,
        }
    }
}

impl std::fmt::Display for Violation {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.reason())
    }
}

impl std::error::Error for Violation {}

/// What [`Decoder::decode`] found at the start of the slice.
#[derive(Debug, PartialEq, Eq)]
pub enum Decoded<'a> {
    /// A complete event; the frame took `used` bytes of the slice.
    Event { event: Event<'a>, used: usize },
    /// A data frame that is one fragment of a longer message, now held by the decoder; it took `used` bytes.
    Fragment { used: usize },
    /// The slice holds only the start of a frame.
    Incomplete,
}

/// Decodes client frames. Holds bytes only while a fragmented message is being reassembled.
#[derive(Debug)]
pub struct Decoder {
    max_message: usize,
    /// The fragments of a text message received so far (empty, and unallocated, between messages).
    fragments: Vec<u8>,
    in_message: bool,
}

impl Decoder {
    /// A decoder accepting messages up to `max_message` bytes.
    pub fn new(max_message: usize) -> Decoder {
        Decoder { max_message, fragments: Vec::new(), in_message: false }
    }

    /// Decodes the frame at the start of `buf`, unmasking it in place.
    pub fn decode<'a>(&'a mut self, buf: &'a mut [u8]) -> Result<Decoded<'a>, Violation> {
        let Some(head) = Header::parse(buf)? else { return Ok(Decoded::Incomplete) };
        let is_control = head.opcode & 0x8 != 0;
        if is_control {
            if !head.fin {
                return Err(Violation::Protocol("fragmented control frame"));
            }
            if head.len > 125 {
                return Err(Violation::Protocol("control frame too long"));
            }
        } else {
            let so_far = if head.opcode == OP_CONTINUATION { self.fragments.len() } else { 0 };
            if so_far.saturating_add(head.len) > self.max_message {
                return Err(Violation::TooBig);
            }
        }
        let used = head.header_len + head.len;
        if buf.len() < used {
            return Ok(Decoded::Incomplete);
        }
        let payload = &mut buf[head.header_len..used];
        unmask(payload, head.mask);
        let payload = &*payload;
        let event = match head.opcode {
            OP_TEXT | OP_BINARY if self.in_message => {
                return Err(Violation::Protocol("new message inside a fragmented one"))
            }
            OP_BINARY => return Err(Violation::Binary),
            OP_TEXT if head.fin => Event::Text(std::str::from_utf8(payload).map_err(|_| Violation::Utf8)?),
            OP_TEXT => {
                self.in_message = true;
                self.fragments.clear();
                self.fragments.extend_from_slice(payload);
                return Ok(Decoded::Fragment { used });
            }
            OP_CONTINUATION if !self.in_message => return Err(Violation::Protocol("continuation without a message")),
            OP_CONTINUATION => {
                self.fragments.extend_from_slice(payload);
                if !head.fin {
                    return Ok(Decoded::Fragment { used });
                }
                self.in_message = false;
                // Handed out from the decoder's own storage; `release` frees it once handled.
                let text = std::str::from_utf8(&self.fragments).map_err(|_| Violation::Utf8)?;
                return Ok(Decoded::Event { event: Event::Text(text), used });
            }
            OP_PING => Event::Ping(payload),
            OP_PONG => Event::Pong,
            OP_CLOSE => Event::Close(close_code(payload)?),
            _ => return Err(Violation::Protocol("unknown opcode")),
        };
        Ok(Decoded::Event { event, used })
    }

    /// Frees a reassembled message once it has been handled; call after every [`Event::Text`].
    pub fn release(&mut self) {
        if !self.in_message && !self.fragments.is_empty() {
            self.fragments = Vec::new();
        }
    }
}

fn close_code(payload: &[u8]) -> Result<Option<u16>, Violation> {
    match payload {
        [] => Ok(None),
        [_] => Err(Violation::Protocol("close frame with a one-byte payload")),
        [hi, lo, reason @ ..] => {
            std::str::from_utf8(reason).map_err(|_| Violation::Utf8)?;
            let code = u16::from_be_bytes([*hi, *lo]);
            let valid = matches!(code, 1000..=1003 | 1007..=1014 | 3000..=4999);
            if !valid {
                return Err(Violation::Protocol("invalid close code"));
            }
            Ok(Some(code))
        }
    }
}

struct Header {
    fin: bool,
    opcode: u8,
    mask: [u8; 4],
    len: usize,
    header_len: usize,
}

impl Header {
    /// The header at the start of `buf`, or `None` when `buf` does not hold all of it yet.
    fn parse(buf: &[u8]) -> Result<Option<Header>, Violation> {
        let [b0, b1, rest @ ..] = buf else { return Ok(None) };
        if b0 & RSV != 0 {
            return Err(Violation::Protocol("reserved bits set"));
        }
        if b1 & MASKED == 0 {
            return Err(Violation::Protocol("client frames must be masked"));
        }
        let (len, rest) = match b1 & 0x7F {
            126 => match rest {
                [a, b, rest @ ..] => (u16::from_be_bytes([*a, *b]) as u64, rest),
                _ => return Ok(None),
            },
            127 => match rest.split_first_chunk::<8>() {
                Some((bytes, rest)) => (u64::from_be_bytes(*bytes), rest),
                None => return Ok(None),
            },
            n => (n as u64, rest),
        };
        let Some((mask, _)) = rest.split_first_chunk::<4>() else { return Ok(None) };
        let header_len = buf.len() - rest.len() + 4;
        // A length beyond usize (or absurdly large) is simply too big; the caller's limit catches the rest.
        let len = usize::try_from(len).map_err(|_| Violation::TooBig)?;
        Ok(Some(Header { fin: b0 & FIN != 0, opcode: b0 & 0x0F, mask: *mask, len, header_len }))
    }
}

/// XORs `data` with the 4-byte `mask`, eight bytes at a time.
fn unmask(data: &mut [u8], mask: [u8; 4]) {
    let wide = u64::from_ne_bytes([mask[0], mask[1], mask[2], mask[3], mask[0], mask[1], mask[2], mask[3]]);
    let mut chunks = data.chunks_exact_mut(8);
    for chunk in &mut chunks {
        let mut word = [0; 8];
        word.copy_from_slice(chunk);
        chunk.copy_from_slice(&(u64::from_ne_bytes(word) ^ wide).to_ne_bytes());
    }
    for (i, b) in chunks.into_remainder().iter_mut().enumerate() {
        *b ^= mask[i & 3];
    }
}

/// An encoded server frame, ready to be written. Cheap to clone.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Frame(Bytes);

impl Frame {
    /// A text frame carrying `text`.
    pub fn text(text: &str) -> Frame {
        Frame::encode(OP_TEXT, &[text.as_bytes()])
    }

    /// A keepalive ping with an empty payload.
    pub fn ping() -> Frame {
        Frame(Bytes::from_static(&[FIN | OP_PING, 0]))
    }

    /// The pong answering a ping with `payload` (at most 125 bytes, as the decoder guarantees).
    pub fn pong(payload: &[u8]) -> Frame {
        Frame::encode(OP_PONG, &[payload])
    }

    /// A close frame with `code` and `reason` (cut to fit a control frame).
    pub fn close(code: u16, reason: &str) -> Frame {
        let mut cut = reason.len().min(123);
        while !reason.is_char_boundary(cut) {
            cut -= 1;
        }
        Frame::encode(OP_CLOSE, &[&code.to_be_bytes(), &reason.as_bytes()[..cut]])
    }

    fn encode(opcode: u8, parts: &[&[u8]]) -> Frame {
        let len: usize = parts.iter().map(|p| p.len()).sum();
        let mut out = BytesMut::with_capacity(10 + len);
        out.put_u8(FIN | opcode);
        match len {
            0..=125 => out.put_u8(len as u8),
            126..=0xFFFF => {
                out.put_u8(126);
                out.put_u16(len as u16);
            }
            _ => {
                out.put_u8(127);
                out.put_u64(len as u64);
            }
        }
        for part in parts {
            out.put_slice(part);
        }
        Frame(out.freeze())
    }

    /// The whole encoded frame.
    pub fn as_bytes(&self) -> &Bytes {
        &self.0
    }

    /// The payload of a text frame built by [`Frame::text`].
    pub fn text_payload(&self) -> Option<&str> {
        let header_len = match self.0.get(1)? & 0x7F {
            126 => 4,
            127 => 10,
            _ => 2,
        };
        std::str::from_utf8(self.0.get(header_len..)?).ok()
    }
}

impl From<String> for Frame {
    fn from(text: String) -> Frame {
        Frame::text(&text)
    }
}

impl From<&str> for Frame {
    fn from(text: &str) -> Frame {
        Frame::text(text)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A client frame, masked with `mask`.
    fn client(fin: bool, opcode: u8, payload: &[u8], mask: [u8; 4]) -> Vec<u8> {
        let mut out = vec![if fin { FIN } else { 0 } | opcode];
        match payload.len() {
            n @ 0..=125 => out.push(MASKED | n as u8),
            n @ 126..=0xFFFF => {
                out.push(MASKED | 126);
                out.extend_from_slice(&(n as u16).to_be_bytes());
            }
            n => {
                out.push(MASKED | 127);
                out.extend_from_slice(&(n as u64).to_be_bytes());
            }
        }
        out.extend_from_slice(&mask);
        out.extend(payload.iter().enumerate().map(|(i, b)| b ^ mask[i % 4]));
        out
    }

    fn decode_all(dec: &mut Decoder, mut buf: Vec<u8>) -> Result<Vec<String>, Violation> {
        let mut seen = Vec::new();
        let mut off = 0;
        while off < buf.len() {
            match dec.decode(&mut buf[off..])? {
                Decoded::Event { event, used } => {
                    seen.push(format!("{event:?}"));
                    off += used;
                }
                Decoded::Fragment { used } => off += used,
                Decoded::Incomplete => {
                    seen.push("incomplete".into());
                    break;
                }
            }
            dec.release();
        }
        Ok(seen)
    }

    #[test]
    fn decodes_masked_text_of_every_length_encoding() {
        for len in [0, 5, 125, 126, 300, 65_535, 65_536, 100_000] {
            let text = "x".repeat(len);
            let mut dec = Decoder::new(1 << 20);
            let mut buf = client(true, OP_TEXT, text.as_bytes(), [1, 2, 3, 4]);
            let total = buf.len();
            match dec.decode(&mut buf).unwrap() {
                Decoded::Event { event: Event::Text(t), used } => {
                    assert_eq!(t, text);
                    assert_eq!(used, total);
                }
                other => panic!("{len}: {other:?}"),
            }
        }
    }

    #[test]
    fn a_frame_cut_anywhere_is_incomplete_until_whole() {
        let buf = client(true, OP_TEXT, &[b'a'; 300], [9, 9, 9, 9]);
        let mut dec = Decoder::new(1024);
        for cut in 0..buf.len() {
            assert_eq!(dec.decode(&mut buf[..cut].to_vec()).unwrap(), Decoded::Incomplete, "cut at {cut}");
        }
        assert!(matches!(dec.decode(&mut buf.clone()).unwrap(), Decoded::Event { used: 308, .. }));
    }

    #[test]
    fn reassembles_fragments_and_checks_the_whole_message() {
        let mut buf = client(false, OP_TEXT, "hé".as_bytes()[..2].as_ref(), [1, 1, 1, 1]);
        buf.extend(client(true, OP_PING, b"p", [2, 2, 2, 2]));
        buf.extend(client(false, OP_CONTINUATION, &"hé".as_bytes()[2..], [3, 3, 3, 3]));
        buf.extend(client(true, OP_CONTINUATION, b"llo", [4, 4, 4, 4]));
        let mut dec = Decoder::new(1024);
        assert_eq!(decode_all(&mut dec, buf).unwrap(), ["Ping([112])", "Text(\"héllo\")"]);
        assert!(dec.fragments.capacity() == 0, "released after delivery");
    }

    #[test]
    fn violations_map_to_close_codes() {
        let mut dec = Decoder::new(100);
        let too_big = client(true, OP_TEXT, &[b'a'; 101], [0; 4]);
        // Known from the header alone: the payload need not have arrived.
        assert_eq!(dec.decode(&mut too_big[..8].to_vec()), Err(Violation::TooBig));
        let mut frag = client(false, OP_TEXT, &[b'a'; 60], [0; 4]);
        frag.extend(client(true, OP_CONTINUATION, &[b'a'; 60], [0; 4]));
        assert_eq!(decode_all(&mut Decoder::new(100), frag), Err(Violation::TooBig));

        let cases: Vec<(Vec<u8>, u16)> = vec![
            (client(true, OP_BINARY, b"x", [0; 4]), 1003),
            (client(true, OP_TEXT, &[0xC3, 0x28], [5; 4]), 1007),
            (vec![FIN | OP_TEXT, 1, b'a'], 1002),                        // unmasked
            (client(true, OP_TEXT | 0x40, b"x", [0; 4]), 1002),          // RSV1 without an extension
            (client(true, 0x3, b"x", [0; 4]), 1002),                     // reserved opcode
            (client(false, OP_PING, b"x", [0; 4]), 1002),                // fragmented control frame
            (client(true, OP_PING, &[0; 126], [0; 4]), 1002),            // control frame too long
            (client(true, OP_CONTINUATION, b"x", [0; 4]), 1002),         // continuation out of the blue
            (client(true, OP_CLOSE, &[3], [0; 4]), 1002),                // one-byte close payload
            (client(true, OP_CLOSE, &[0x03, 0xEC], [0; 4]), 1002),       // 1004 is reserved
            (client(true, OP_CLOSE, &[0x03, 0xE8, 0xFF], [0; 4]), 1007), // reason not UTF-8
        ];
        for (mut frame, code) in cases {
            let got = Decoder::new(1024).decode(&mut frame).map(|_| ()).unwrap_err();
            assert_eq!(got.close_code(), code, "{frame:?}");
        }
        let mut nested = client(false, OP_TEXT, b"a", [0; 4]);
        nested.extend(client(true, OP_TEXT, b"b", [0; 4]));
        assert_eq!(decode_all(&mut Decoder::new(1024), nested).unwrap_err().close_code(), 1002);
    }

    #[test]
    fn control_frames() {
        let mut dec = Decoder::new(1024);
        let mut buf = client(true, OP_CLOSE, &[0x03, 0xE8, b'b', b'y'], [7; 4]);
        buf.extend(client(true, OP_CLOSE, &[], [7; 4]));
        buf.extend(client(true, OP_PONG, b"", [7; 4]));
        assert_eq!(decode_all(&mut dec, buf).unwrap(), ["Close(Some(1000))", "Close(None)", "Pong"]);
    }

    #[test]
    fn never_panics_on_arbitrary_bytes() {
        use rand::{Rng, SeedableRng};
        let mut rng = rand::rngs::StdRng::seed_from_u64(0x2545F491);
        for _ in 0..20_000 {
            let len = rng.random_range(0..40);
            let buf: Vec<u8> = (0..len).map(|_| rng.random()).collect();
            let _ = decode_all(&mut Decoder::new(64), buf);
        }
    }

    #[test]
    fn encodes_server_frames() {
        assert_eq!(Frame::text("hi").as_bytes().as_ref(), &[0x81, 2, b'h', b'i']);
        let long = "y".repeat(300);
        let f = Frame::text(&long);
        assert_eq!(&f.as_bytes()[..4], &[0x81, 126, 0x01, 0x2C]);
        assert_eq!(f.text_payload(), Some(long.as_str()));
        let huge = "z".repeat(70_000);
        assert_eq!(Frame::text(&huge).as_bytes()[1], 127);
        assert_eq!(Frame::text(&huge).text_payload().map(str::len), Some(70_000));
        assert_eq!(Frame::ping().as_bytes().as_ref(), &[0x89, 0]);
        assert_eq!(Frame::pong(b"ab").as_bytes().as_ref(), &[0x8A, 2, b'a', b'b']);
        assert_eq!(&Frame::close(1001, &"a".repeat(200)).as_bytes()[..4], &[0x88, 125, 0x03, 0xE9]);
        // Cut on a character boundary: 61 two-byte characters fit in the 123 bytes left for the reason.
        assert_eq!(&Frame::close(1001, &"é".repeat(100)).as_bytes()[..4], &[0x88, 124, 0x03, 0xE9]);
    }
}
