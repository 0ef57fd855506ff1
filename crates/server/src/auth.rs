//! Signaling auth (SPEC.md §7): HS256 JWTs, off by default for ZLMediaKit compatibility.
//!
//! A token arrives as `?token=` on the websocket URL (browsers cannot set headers there) or as
//! `Authorization: Bearer`. Its claims: `exp`, `sub`, `rooms` (ids or `prefix*` patterns the bearer may register)
//! and `call` (patterns of rooms the bearer may call). Clients on an `anonymous-networks` CIDR (legacy ZLMediaKit
//! room keepers, which cannot carry a token) may do anything. A session without a valid token keeps its connection
//! but every register and call is rejected with `unauthorized`, with the reason in the reject.
//!
//! Tokens are never logged.

use std::net::IpAddr;

use ipnet::IpNet;
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use serde::{Deserialize, Serialize};

/// The claims of a switchboard token.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Claims {
    /// Expiry, unix seconds.
    pub exp: u64,
    /// Who the bearer is.
    #[serde(default)]
    pub sub: String,
    /// Room ids or `prefix*` patterns the bearer may register.
    #[serde(default)]
    pub rooms: Vec<String>,
    /// Room ids or `prefix*` patterns the bearer may call.
    #[serde(default)]
    pub call: Vec<String>,
}

/// What one session may do.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Access {
    /// Auth is off, or the client is on an anonymous network.
    Anyone,
    /// A valid token.
    Token(Claims),
    /// No usable token; the reason goes into every `unauthorized` reject.
    Denied(String),
}

impl Access {
    /// `Err(reason)` unless this session may register `room` at `unix_now`. `None` is an id the server assigns,
    /// which only a grant of every room (`*`) covers.
    pub fn may_register(&self, room: Option<&str>, unix_now: u64) -> Result<(), String> {
        self.check(room, unix_now, |c| &c.rooms, "register")
    }

    /// `Err(reason)` unless this session may call `room` at `unix_now`.
    pub fn may_call(&self, room: &str, unix_now: u64) -> Result<(), String> {
        self.check(Some(room), unix_now, |c| &c.call, "call")
    }

    /// Whether a token grants `room` (then a register may take the room over from a stale session).
    pub fn grants_room(&self, room: &str) -> bool {
        matches!(self, Access::Token(c) if c.rooms.iter().any(|p| matches_pattern(p, room)))
    }

    fn check(
        &self,
        room: Option<&str>,
        unix_now: u64,
        list: impl Fn(&Claims) -> &Vec<String>,
        what: &str,
    ) -> Result<(), String> {
        match self {
            Access::Anyone => Ok(()),
            Access::Denied(reason) => Err(reason.clone()),
            Access::Token(c) if c.exp < unix_now => Err("token expired".into()),
            Access::Token(c) => {
                let granted = match room {
                    Some(r) => list(c).iter().any(|p| matches_pattern(p, r)),
                    None => list(c).iter().any(|p| p == "*"),
                };
                if granted {
                    Ok(())
                } else {
                    Err(format!("token does not grant {what} of room {:?}", room.unwrap_or("<assigned>")))
                }
            }
        }
    }
}

/// `pattern` is an exact id, or a prefix followed by `*` (`*` alone matches everything).
pub fn matches_pattern(pattern: &str, room: &str) -> bool {
    match pattern.strip_suffix('*') {
        Some(prefix) => room.starts_with(prefix),
        None => pattern == room,
    }
}

/// The auth settings of a running server.
#[derive(Clone)]
pub struct Auth {
    key: Option<DecodingKey>,
    anonymous: Vec<IpNet>,
}

impl Auth {
    /// `secret: None` turns auth off.
    pub fn new(secret: Option<&str>, anonymous: Vec<IpNet>) -> Auth {
        Auth { key: secret.map(|s| DecodingKey::from_secret(s.as_bytes())), anonymous }
    }

    /// What a client from `ip` presenting `token` may do.
    pub fn access(&self, ip: IpAddr, token: Option<&str>) -> Access {
        let Some(key) = &self.key else { return Access::Anyone };
        let ip = match ip {
            IpAddr::V6(v6) => v6.to_ipv4_mapped().map(IpAddr::V4).unwrap_or(ip),
            v4 => v4,
        };
        if self.anonymous.iter().any(|n| n.contains(&ip)) {
            return Access::Anyone;
        }
        let Some(token) = token else { return Access::Denied("unauthorized: no token".into()) };
        let mut validation = Validation::new(Algorithm::HS256);
        validation.leeway = 0;
        validation.validate_aud = false;
        match jsonwebtoken::decode::<Claims>(token, key, &validation) {
            Ok(data) => Access::Token(data.claims),
            Err(e) => match e.kind() {
                jsonwebtoken::errors::ErrorKind::ExpiredSignature => {
                    Access::Denied("unauthorized: token expired".into())
                }
                jsonwebtoken::errors::ErrorKind::InvalidSignature => {
                    Access::Denied("unauthorized: bad token signature".into())
                }
                _ => Access::Denied("unauthorized: invalid token".into()),
            },
        }
    }
}

/// Mints a token (for `switchboard token` and tests).
pub fn mint(secret: &str, claims: &Claims) -> Result<String, jsonwebtoken::errors::Error> {
    jsonwebtoken::encode(&Header::new(Algorithm::HS256), claims, &EncodingKey::from_secret(secret.as_bytes()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn claims(exp: u64) -> Claims {
        Claims { exp, sub: "u".into(), rooms: vec!["cam_*".into(), "lobby".into()], call: vec!["cam_*".into()] }
    }

    #[test]
    fn patterns() {
        assert!(matches_pattern("cam_*", "cam_1"));
        assert!(matches_pattern("cam_*", "cam_"));
        assert!(!matches_pattern("cam_*", "ca"));
        assert!(matches_pattern("*", "anything"));
        assert!(matches_pattern("lobby", "lobby"));
        assert!(!matches_pattern("lobby", "lobby2"));
    }

    #[test]
    fn grants_follow_the_claims() {
        let a = Access::Token(claims(100));
        assert!(a.may_register(Some("cam_7"), 50).is_ok());
        assert!(a.may_register(Some("lobby"), 50).is_ok());
        assert!(a.may_register(Some("other"), 50).unwrap_err().contains("does not grant"));
        assert!(a.may_register(None, 50).is_err(), "assigned ids need `*`");
        assert!(a.may_call("cam_1", 50).is_ok());
        assert!(a.may_call("lobby", 50).is_err());
        assert_eq!(a.may_call("cam_1", 101).unwrap_err(), "token expired");
        assert!(a.grants_room("cam_1") && !a.grants_room("x"));
        assert!(Access::Anyone.may_register(None, 0).is_ok());
    }

    #[test]
    fn tokens_are_checked() {
        let auth = Auth::new(Some("k"), vec!["10.0.0.0/8".parse().unwrap()]);
        let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs();
        let good = mint("k", &claims(now + 60)).unwrap();
        let ip: IpAddr = "192.0.2.1".parse().unwrap();
        assert!(matches!(auth.access(ip, Some(&good)), Access::Token(c) if c.sub == "u"));
        assert_eq!(auth.access(ip, None), Access::Denied("unauthorized: no token".into()));
        let expired = mint("k", &claims(now - 10)).unwrap();
        assert_eq!(auth.access(ip, Some(&expired)), Access::Denied("unauthorized: token expired".into()));
        let forged = mint("other", &claims(now + 60)).unwrap();
        assert_eq!(auth.access(ip, Some(&forged)), Access::Denied("unauthorized: bad token signature".into()));
        assert_eq!(auth.access(ip, Some("garbage")), Access::Denied("unauthorized: invalid token".into()));
        assert_eq!(auth.access("10.1.2.3".parse().unwrap(), None), Access::Anyone);
        assert_eq!(auth.access("::ffff:10.1.2.3".parse().unwrap(), None), Access::Anyone);
        assert_eq!(Auth::new(None, vec![]).access(ip, None), Access::Anyone);
    }
}
