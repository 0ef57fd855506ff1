//! The request-head parser that decides, on the first bytes of a connection, between a websocket upgrade, plain
//! HTTP and a refusal (`switchboard_server::ws::handshake::parse`), on arbitrary bytes.
//!
//! Checked besides "never panics": an upgrade's head length lies within the input and its accept key is the 28-byte
//! base64 of a SHA-1; the verdict depends only on the head (bytes after it change nothing); and while the head is
//! not complete, every shorter prefix is `Partial` (the transport keeps reading) or refused as too large — never
//! mistaken for plain HTTP or a different upgrade.
#![no_main]

use libfuzzer_sys::fuzz_target;
use switchboard_server::ws::handshake::{parse, Head, Refusal, MAX_HEAD};

fuzz_target!(|data: &[u8]| {
    let data = &data[..data.len().min(2 * MAX_HEAD)];
    match parse(data) {
        Ok(Head::Upgrade(up)) => {
            assert!(up.len > 0 && up.len <= data.len(), "head of {} in {} bytes", up.len, data.len());
            assert_eq!(up.accept.len(), 28, "accept key {:?}", up.accept);
            let head = &data[..up.len];
            assert_eq!(parse(head), parse(data), "trailing bytes changed the verdict");
            // A few prefixes of the head, spread over it.
            for k in [0, 1, up.len / 3, up.len / 2, up.len - 1] {
                match parse(&head[..k]) {
                    Ok(Head::Partial) | Err(Refusal::TooLarge) => {}
                    other => panic!("prefix of {k} of a {}-byte head: {other:?}", up.len),
                }
            }
        }
        Ok(Head::Partial) => assert!(data.len() < MAX_HEAD, "a partial head of {} bytes is kept", data.len()),
        Ok(Head::Http) | Err(_) => {}
    }
});
