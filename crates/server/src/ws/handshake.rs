//! The websocket opening handshake (RFC 6455 §4.2), sans-IO: reading an HTTP/1.1 request head and writing the
//! server's answer.
//!
//! Invariants:
//! - Any path upgrades (SPEC.md §1, as ZLMediaKit does); a request without `Upgrade: websocket` is not ours and is
//!   reported as [`Head::Http`] so the caller can hand the connection to the HTTP server untouched.
//! - A head larger than [`MAX_HEAD`] is refused (431) before it is buffered further.
//! - A malformed upgrade gets an HTTP error response, never a panic.

use tungstenite::handshake::derive_accept_key;

/// The largest request head accepted.
pub const MAX_HEAD: usize = 8 * 1024;

/// What the start of a connection holds.
#[derive(Debug, PartialEq, Eq)]
pub enum Head {
    /// Not a whole head yet.
    Partial,
    /// A plain HTTP request (no websocket upgrade): for the HTTP server.
    Http,
    /// A valid websocket upgrade whose head took `len` bytes.
    Upgrade(Upgrade),
}

/// A valid upgrade request, reduced to what the server needs.
#[derive(Debug, PartialEq, Eq)]
pub struct Upgrade {
    /// Bytes of the head; whatever follows is already websocket frames.
    pub len: usize,
    /// The `Sec-WebSocket-Accept` value to answer with.
    pub accept: String,
    /// The signaling token, from `?token=` or `Authorization: Bearer`.
    pub token: Option<String>,
}

/// An upgrade the server refuses, with the HTTP status to answer: a malformed request, or one the server cannot
/// admit now (see `http::admit_upgrade`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    #[error("bad websocket upgrade: {0}")]
    BadRequest(&'static str),
    #[error("unsupported websocket version")]
    Version,
    #[error("request head too large")]
    TooLarge,
    #[error("shutting down")]
    ShuttingDown,
    #[error("too many connections")]
    TooManyConnections,
    #[error("too many connections from this address")]
    TooManyFromAddress,
}

impl Refusal {
    /// The status code and its reason phrase.
    pub fn status(self) -> (u16, &'static str) {
        match self {
            Refusal::BadRequest(_) => (400, "Bad Request"),
            Refusal::Version => (426, "Upgrade Required"),
            Refusal::TooLarge => (431, "Request Header Fields Too Large"),
            Refusal::ShuttingDown | Refusal::TooManyConnections => (503, "Service Unavailable"),
            Refusal::TooManyFromAddress => (429, "Too Many Requests"),
        }
    }

    /// Headers the response must carry besides the usual ones.
    pub fn headers(self) -> &'static [(&'static str, &'static str)] {
        match self {
            Refusal::Version => &[("Sec-WebSocket-Version", "13")],
            _ => &[],
        }
    }

    /// The plain-text body.
    pub fn body(self) -> String {
        match self {
            Refusal::BadRequest(why) => format!("{why}\n"),
            Refusal::Version => "use version 13\n".into(),
            other => format!("{other}\n"),
        }
    }

    /// The complete HTTP response for this refusal.
    pub fn response(self) -> Vec<u8> {
        let (status, phrase) = self.status();
        let mut out =
            format!("HTTP/1.1 {status} {phrase}\r\nContent-Type: text/plain; charset=utf-8\r\nConnection: close\r\n");
        for (name, value) in self.headers() {
            out.push_str(&format!("{name}: {value}\r\n"));
        }
        let body = self.body();
        out.push_str(&format!("Content-Length: {}\r\n\r\n{body}", body.len()));
        out.into_bytes()
    }
}

/// Reads the request head at the start of `buf`.
pub fn parse(buf: &[u8]) -> Result<Head, Refusal> {
    let mut headers = [httparse::EMPTY_HEADER; 48];
    let mut req = httparse::Request::new(&mut headers);
    let len = match req.parse(buf) {
        Ok(httparse::Status::Complete(len)) => len,
        Ok(httparse::Status::Partial) if buf.len() >= MAX_HEAD => return Err(Refusal::TooLarge),
        Ok(httparse::Status::Partial) => return Ok(Head::Partial),
        Err(httparse::Error::TooManyHeaders) => return Err(Refusal::TooLarge),
        // Not parseable HTTP: the HTTP server answers it as it sees fit.
        Err(_) => return Ok(Head::Http),
    };
    let header = |name: &str| req.headers.iter().find(|h| h.name.eq_ignore_ascii_case(name)).map(|h| h.value);
    let query = req.path.and_then(|p| p.split_once('?')).map(|(_, q)| q);
    match check(req.method == Some("GET"), req.version == Some(1), header, query)? {
        Some(upgrade) => Ok(Head::Upgrade(Upgrade { len, ..upgrade })),
        None => Ok(Head::Http),
    }
}

/// Checks a request for a websocket upgrade, from its method and version, a header lookup (case-insensitive name)
/// and its query. `Ok(None)`: not an upgrade at all. The returned [`Upgrade::len`] is 0.
pub fn check<'h>(
    is_get: bool,
    is_http11: bool,
    header: impl Fn(&str) -> Option<&'h [u8]>,
    query: Option<&str>,
) -> Result<Option<Upgrade>, Refusal> {
    let has_token = |name: &str, token: &str| {
        header(name)
            .and_then(|v| std::str::from_utf8(v).ok())
            .is_some_and(|v| v.split(',').any(|t| t.trim().eq_ignore_ascii_case(token)))
    };
    if !has_token("upgrade", "websocket") {
        return Ok(None);
    }
    if !is_get || !is_http11 {
        return Err(Refusal::BadRequest("websocket upgrade needs GET over HTTP/1.1"));
    }
    if !has_token("connection", "upgrade") {
        return Err(Refusal::BadRequest("missing Connection: upgrade"));
    }
    if header("sec-websocket-version") != Some(b"13") {
        return Err(Refusal::Version);
    }
    let key = header("sec-websocket-key").filter(|k| !k.is_empty());
    let Some(key) = key else { return Err(Refusal::BadRequest("missing Sec-WebSocket-Key")) };
    if !is_websocket_key(key.trim_ascii()) {
        return Err(Refusal::BadRequest("Sec-WebSocket-Key must be base64 of 16 bytes"));
    }
    let token = token(query, header("authorization"));
    Ok(Some(Upgrade { len: 0, accept: derive_accept_key(key.trim_ascii()), token }))
}

/// RFC 6455 §4.2.1: the key is the base64 of a 16-byte nonce. The base64 crate's standard engine is strict (padding
/// required, non-canonical trailing bits refused), which is exactly that rule.
fn is_websocket_key(key: &[u8]) -> bool {
    use base64::Engine;
    key.len() == 24 && base64::engine::general_purpose::STANDARD.decode(key).is_ok_and(|nonce| nonce.len() == 16)
}

/// The `101 Switching Protocols` answer.
pub fn accept_response(accept: &str) -> Vec<u8> {
    format!(
        "HTTP/1.1 101 Switching Protocols\r\nConnection: Upgrade\r\nUpgrade: websocket\r\nSec-WebSocket-Accept: {accept}\r\n\r\n"
    )
    .into_bytes()
}

/// The signaling token: `?token=` (browsers cannot set websocket headers) or `Authorization: Bearer`.
pub fn token(query: Option<&str>, authorization: Option<&[u8]>) -> Option<String> {
    let from_query = query.and_then(|q| q.split('&').find_map(|kv| kv.strip_prefix("token="))).map(percent_decode);
    from_query.or_else(|| {
        let value = std::str::from_utf8(authorization?).ok()?;
        value.strip_prefix("Bearer ").map(|t| t.trim().to_owned())
    })
}

/// Undoes `%XX` escapes and `+` (form encoding); an invalid escape is kept as written.
fn percent_decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let hex = |b: u8| (b as char).to_digit(16);
        match bytes[i] {
            b'%' => match (bytes.get(i + 1).and_then(|b| hex(*b)), bytes.get(i + 2).and_then(|b| hex(*b))) {
                (Some(hi), Some(lo)) => {
                    out.push((hi * 16 + lo) as u8);
                    i += 3;
                    continue;
                }
                _ => out.push(b'%'),
            },
            b'+' => out.push(b' '),
            b => out.push(b),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    const UPGRADE: &str = "GET /any/path?x=1&token=a%2Eb.c HTTP/1.1\r\nHost: h\r\nUpgrade: websocket\r\n\
        Connection: keep-alive, Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n";

    #[test]
    fn answers_the_rfc_example_key_on_any_path() {
        let mut buf = UPGRADE.as_bytes().to_vec();
        buf.extend_from_slice(b"\x81\x80rest");
        let Ok(Head::Upgrade(up)) = parse(&buf) else { panic!() };
        assert_eq!(up.len, UPGRADE.len(), "frames after the head are left for the websocket");
        assert_eq!(up.accept, "s3pPLMBiTxaQ9kYGzzhZRbK+xOo=");
        assert_eq!(up.token.as_deref(), Some("a.b.c"));
        let resp = String::from_utf8(accept_response(&up.accept)).unwrap();
        assert!(resp.starts_with("HTTP/1.1 101 ") && resp.ends_with("\r\n\r\n"));
    }

    #[test]
    fn partial_heads_wait_and_huge_ones_are_refused() {
        for cut in [0, 10, UPGRADE.len() - 1] {
            assert_eq!(parse(&UPGRADE.as_bytes()[..cut]), Ok(Head::Partial), "{cut}");
        }
        let huge = format!("GET / HTTP/1.1\r\nX: {}", "a".repeat(MAX_HEAD));
        assert_eq!(parse(huge.as_bytes()), Err(Refusal::TooLarge));
    }

    #[test]
    fn plain_requests_go_to_http() {
        assert_eq!(parse(b"GET /metrics HTTP/1.1\r\nHost: h\r\n\r\n"), Ok(Head::Http));
        assert_eq!(parse(b"\x16\x03\x01 not http at all\r\n\r\n"), Ok(Head::Http));
    }

    #[test]
    fn malformed_upgrades_are_refused_with_a_status() {
        let without = |line: &str| UPGRADE.replace(line, "");
        let cases = [
            (without("Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"), 400),
            (UPGRADE.replace("Version: 13", "Version: 8"), 426),
            (UPGRADE.replace("keep-alive, Upgrade", "keep-alive"), 400),
            (UPGRADE.replace("GET", "POST"), 400),
            // The key must be base64 of exactly 16 bytes.
            (UPGRADE.replace("dGhlIHNhbXBsZSBub25jZQ==", "abc"), 400),
            (UPGRADE.replace("dGhlIHNhbXBsZSBub25jZQ==", &"A".repeat(4000)), 400),
            (UPGRADE.replace("dGhlIHNhbXBsZSBub25jZQ==", "dGhlIHNhbXBsZSBub25jZQ"), 400),
            (UPGRADE.replace("dGhlIHNhbXBsZSBub25jZQ==", "dGhlIHNhbXBsZSBub25jZR=="), 400),
            (UPGRADE.replace("dGhlIHNhbXBsZSBub25jZQ==", "dGhlIHNhbXBsZSBub25jZSBvZg=="), 400),
            (UPGRADE.replace("dGhlIHNhbXBsZSBub25jZQ==", "dGhlIHNhbXBsZSBub25j*Q=="), 400),
        ];
        for (req, status) in cases {
            let refusal = parse(req.as_bytes()).unwrap_err();
            let resp = String::from_utf8(refusal.response()).unwrap();
            assert!(resp.starts_with(&format!("HTTP/1.1 {status} ")), "{resp}");
        }
        assert!(String::from_utf8(Refusal::Version.response()).unwrap().contains("Sec-WebSocket-Version: 13\r\n"));
    }

    #[test]
    fn never_panics_on_arbitrary_heads() {
        use rand::{Rng, SeedableRng};
        let mut rng = rand::rngs::StdRng::seed_from_u64(0x9E3779B9);
        let pieces: [&[u8]; 8] = [
            b"GET / HTTP/1.1\r\n",
            b"Upgrade: websocket\r\n",
            b"Connection: upgrade\r\n",
            b"\r\n",
            b"%",
            b"\xff",
            b":",
            b"?token=%4",
        ];
        for _ in 0..20_000 {
            let mut head = Vec::new();
            for _ in 0..rng.random_range(0..8) {
                match rng.random_range(0..3) {
                    0 => head.push(rng.random()),
                    _ => head.extend_from_slice(pieces[rng.random_range(0..pieces.len())]),
                }
            }
            if let Err(refusal) = parse(&head) {
                assert!(refusal.response().starts_with(b"HTTP/1.1 4"));
            }
        }
    }

    #[test]
    fn tokens_from_query_or_bearer() {
        assert_eq!(token(Some("token=a%2eb%2Fc+d"), None).as_deref(), Some("a.b/c d"));
        assert_eq!(token(Some("token=50%"), None).as_deref(), Some("50%"));
        assert_eq!(token(Some("token=%zz"), None).as_deref(), Some("%zz"));
        assert_eq!(token(None, Some(b"Bearer abc")).as_deref(), Some("abc"));
        assert_eq!(token(Some("a=b"), Some(b"Basic abc")), None);
    }
}
