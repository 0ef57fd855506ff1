//! The auth token reader: where a token is taken from (`?token=` or `Authorization: Bearer`) and what it grants
//! (`switchboard_server::auth::Auth::access`), on arbitrary query strings, headers and tokens.
//!
//! Checked besides "never panics": a token the fuzzer made up is never accepted (it cannot know the secret), and a
//! real token with any byte changed either still grants exactly its own claims or is refused: a tampered token
//! never grants anything else.
#![no_main]

use std::net::IpAddr;

use arbitrary::Arbitrary;
use libfuzzer_sys::fuzz_target;
use switchboard_server::auth::{mint, Access, Auth, Claims};
use switchboard_server::ws::handshake::token;

const SECRET: &str = "fuzz-secret";

#[derive(Arbitrary, Debug)]
struct Input {
    query: Option<String>,
    authorization: Option<Vec<u8>>,
    ip: [u8; 4],
    claims: (u64, String, Vec<String>, Vec<String>),
    /// Where to change the minted token, and the byte to put there.
    tamper: Option<(u16, u8)>,
    room: String,
}

fuzz_target!(|input: Input| {
    // Loopback is the one anonymous network here: only it may skip the token.
    let auth = Auth::new(Some(SECRET), vec!["127.0.0.0/8".parse().unwrap()]);
    let ip = IpAddr::from(input.ip);
    let anonymous = input.ip[0] == 127;

    let made_up = token(input.query.as_deref(), input.authorization.as_deref());
    match auth.access(ip, made_up.as_deref()) {
        Access::Anyone => assert!(anonymous, "{ip} got in without a token"),
        Access::Token(c) => panic!("a made-up token was accepted: {made_up:?} → {c:?}"),
        Access::Denied(reason) => assert!(reason.starts_with("unauthorized"), "{reason}"),
    }

    let (exp, sub, rooms, call) = input.claims;
    let claims = Claims { exp, sub, rooms, call };
    let Ok(mut real) = mint(SECRET, &claims) else { return };
    if let Some((at, byte)) = input.tamper {
        let at = usize::from(at) % real.len();
        let mut bytes = real.into_bytes();
        bytes[at] = byte;
        let Ok(t) = String::from_utf8(bytes) else { return };
        real = t;
    }
    let outsider = IpAddr::from([192, 0, 2, 1]);
    match auth.access(outsider, Some(&real)) {
        Access::Token(got) => {
            assert_eq!(got, claims, "a tampered token granted other claims");
            let access = Access::Token(got);
            let _ = (access.grants_room(&input.room), access.may_call(&input.room, exp));
        }
        Access::Anyone => panic!("an outsider got Anyone"),
        Access::Denied(reason) => assert!(reason.starts_with("unauthorized"), "{reason}"),
    }
});
