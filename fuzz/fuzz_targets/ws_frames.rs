//! The websocket frame decoder on arbitrary bytes in arbitrary splits.
//!
//! The transport reads whatever the socket gives, decodes complete frames from the front and keeps the rest for the
//! next read. This target plays that loop twice over the same bytes, once in one read and once cut at fuzzer-chosen
//! points, and requires the same events and the same violation (with its close code) both ways: a frame split across
//! reads decodes exactly as a whole one. It also checks the decoder's promises on the way: every step consumes bytes
//! within the buffer, and no message larger than the limit is ever delivered.
#![no_main]

use libfuzzer_sys::fuzz_target;
use switchboard_server::ws::frame::{Decoded, Decoder, Event};

/// Input layout (so that seeds are real frames with a small prefix): the decoder's message limit (2 bytes, big
/// endian), the number of read sizes (1 byte), the read sizes (1 byte each), then the bytes on the wire. The bytes
/// left over after the last read size arrive in one more read.
struct Input<'a> {
    max_message: usize,
    reads: &'a [u8],
    bytes: &'a [u8],
}

impl<'a> Input<'a> {
    fn read(data: &'a [u8]) -> Option<Input<'a>> {
        let [hi, lo, n, rest @ ..] = data else { return None };
        let (reads, bytes) = rest.split_at_checked(usize::from(*n))?;
        Some(Input { max_message: usize::from(u16::from_be_bytes([*hi, *lo])), reads, bytes })
    }
}

#[derive(Debug, PartialEq, Eq)]
enum Seen {
    Text(String),
    Ping(Vec<u8>),
    Pong,
    Close(Option<u16>),
    Violation(u16, &'static str),
}

fuzz_target!(|data: &[u8]| {
    let Some(input) = Input::read(data) else { return };
    let max = input.max_message;
    let whole = run(max, input.bytes, &[]);
    let split = run(max, input.bytes, input.reads);
    assert_eq!(whole, split, "splitting the input changed what was decoded");
});

/// The transport's read loop over `bytes`, delivered in reads of the given sizes.
fn run(max: usize, bytes: &[u8], reads: &[u8]) -> Vec<Seen> {
    let mut decoder = Decoder::new(max);
    let mut pending: Vec<u8> = Vec::new();
    let mut seen = Vec::new();
    let mut rest = bytes;
    let mut sizes = reads.iter().map(|&n| usize::from(n));
    while !rest.is_empty() {
        let n = sizes.next().unwrap_or(rest.len()).clamp(1, rest.len());
        let (read, tail) = rest.split_at(n);
        rest = tail;
        pending.extend_from_slice(read);
        loop {
            let available = pending.len();
            match decoder.decode(&mut pending) {
                Err(v) => {
                    seen.push(Seen::Violation(v.close_code(), v.reason()));
                    return seen;
                }
                Ok(Decoded::Incomplete) => break,
                Ok(Decoded::Fragment { used }) => {
                    assert!(used > 0 && used <= available, "fragment used {used} of {available}");
                    pending.drain(..used);
                }
                Ok(Decoded::Event { event, used }) => {
                    assert!(used > 0 && used <= available, "event used {used} of {available}");
                    let event = match event {
                        Event::Text(t) => {
                            assert!(t.len() <= max, "a {}-byte message passed a {max}-byte limit", t.len());
                            Seen::Text(t.to_owned())
                        }
                        Event::Ping(p) => Seen::Ping(p.to_vec()),
                        Event::Pong => Seen::Pong,
                        Event::Close(code) => Seen::Close(code),
                    };
                    decoder.release();
                    pending.drain(..used);
                    let closed = matches!(event, Seen::Close(_));
                    seen.push(event);
                    if closed {
                        return seen;
                    }
                }
            }
        }
    }
    seen
}
