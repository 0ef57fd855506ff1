//! Long-term credentials (RFC 8489 §9.2) and nonces.
//!
//! - `static`: one configured username/password, as ZLMediaKit does.
//! - `ephemeral`: the TURN REST API convention that coturn's `use-auth-secret` also reads. The username is
//!   `<unix-expiry>[:<anything>]`, the password base64(HMAC-SHA1(secret, username)); an expired username is refused.
//!
//! Nonces are stateless: `<expiry as 8 hex digits><first 8 bytes of HMAC(nonce key, expiry) as hex>`, so no state is
//! kept for unauthenticated clients and a stale nonce is recognised by its embedded expiry.

use base64::Engine as _;
use hmac::{Hmac, Mac};
use sha1::Sha1;

use crate::stun::long_term_key;

/// How usernames and passwords are checked.
#[derive(Clone)]
pub enum Credentials {
    /// One fixed username/password.
    Static { username: String, password: String },
    /// TURN REST API time-limited credentials derived from a shared secret.
    Ephemeral { secret: Vec<u8> },
}

impl std::fmt::Debug for Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Credentials::Static { username, .. } => {
                write!(f, "Static {{ username: {username:?}, password: <redacted> }}")
            }
            Credentials::Ephemeral { .. } => f.write_str("Ephemeral { secret: <redacted> }"),
        }
    }
}

/// The password of an ephemeral username: base64(HMAC-SHA1(secret, username)).
pub fn ephemeral_password(secret: &[u8], username: &str) -> String {
    let Ok(mut mac) = <Hmac<Sha1> as Mac>::new_from_slice(secret) else { return String::new() };
    mac.update(username.as_bytes());
    base64::engine::general_purpose::STANDARD.encode(mac.finalize().into_bytes())
}

/// The ephemeral username for `name`, valid until `expiry` (unix seconds).
pub fn ephemeral_username(expiry: u64, name: &str) -> String {
    format!("{expiry}:{name}")
}

impl Credentials {
    /// The long-term key for `username`, or `None` when the username is unknown or expired.
    pub fn key(&self, username: &str, realm: &str, unix_now: u64) -> Option<[u8; 16]> {
        match self {
            Credentials::Static { username: u, password } => {
                (u == username).then(|| long_term_key(username, realm, password))
            }
            Credentials::Ephemeral { secret } => {
                let expiry: u64 = username.split(':').next()?.parse().ok()?;
                if expiry < unix_now {
                    return None;
                }
                Some(long_term_key(username, realm, &ephemeral_password(secret, username)))
            }
        }
    }
}

/// Mints and checks stateless nonces.
pub struct Nonces {
    key: [u8; 32],
    lifetime_secs: u64,
}

/// What a presented nonce turned out to be.
#[derive(Debug, PartialEq, Eq)]
pub enum NonceCheck {
    Valid,
    /// Minted by us but expired: answer 438 with a fresh one.
    Stale,
    /// Not one of ours.
    Invalid,
}

impl Nonces {
    pub fn new(key: [u8; 32], lifetime_secs: u64) -> Nonces {
        Nonces { key, lifetime_secs }
    }

    fn tag(&self, expiry: u32) -> String {
        let Ok(mut mac) = <Hmac<sha2::Sha256> as Mac>::new_from_slice(&self.key) else { return String::new() };
        mac.update(&expiry.to_be_bytes());
        mac.finalize().into_bytes()[..8].iter().map(|b| format!("{b:02x}")).collect()
    }

    /// A nonce valid for `lifetime_secs` from `unix_now`.
    pub fn mint(&self, unix_now: u64) -> String {
        let expiry = (unix_now + self.lifetime_secs) as u32;
        format!("{expiry:08x}{}", self.tag(expiry))
    }

    pub fn check(&self, nonce: &str, unix_now: u64) -> NonceCheck {
        let (Some(head), Some(tail)) = (nonce.get(..8), nonce.get(8..)) else { return NonceCheck::Invalid };
        let Ok(expiry) = u32::from_str_radix(head, 16) else { return NonceCheck::Invalid };
        if tail != self.tag(expiry) {
            NonceCheck::Invalid
        } else if u64::from(expiry) < unix_now {
            NonceCheck::Stale
        } else {
            NonceCheck::Valid
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ephemeral_credentials_follow_the_turn_rest_convention() {
        let creds = Credentials::Ephemeral { secret: b"s3cret".to_vec() };
        let user = ephemeral_username(1_000, "room_1");
        assert_eq!(user, "1000:room_1");
        let key = creds.key(&user, "realm", 999).expect("valid before expiry");
        assert_eq!(key, long_term_key(&user, "realm", &ephemeral_password(b"s3cret", &user)));
        assert!(creds.key(&user, "realm", 1_000).is_some(), "valid through its expiry second");
        assert!(creds.key(&user, "realm", 1_001).is_none(), "expired");
        assert!(creds.key("garbage", "realm", 0).is_none());
        // The password is standard base64 of a 20-byte HMAC-SHA1.
        assert_eq!(ephemeral_password(b"s3cret", &user).len(), 28);
    }

    #[test]
    fn static_credentials_know_one_user() {
        let creds = Credentials::Static { username: "u".into(), password: "p".into() };
        assert_eq!(creds.key("u", "r", 0), Some(long_term_key("u", "r", "p")));
        assert!(creds.key("v", "r", 0).is_none());
        assert!(!format!("{creds:?}").contains('p') || format!("{creds:?}").contains("redacted"));
    }

    #[test]
    fn nonces_expire_and_cannot_be_forged() {
        let n = Nonces::new([9; 32], 600);
        let nonce = n.mint(1_000);
        assert_eq!(n.check(&nonce, 1_000), NonceCheck::Valid);
        assert_eq!(n.check(&nonce, 1_600), NonceCheck::Valid);
        assert_eq!(n.check(&nonce, 1_601), NonceCheck::Stale);
        let forged = format!("{:08x}{}", 99_999u32, &nonce[8..]);
        assert_eq!(n.check(&forged, 1_000), NonceCheck::Invalid);
        assert_eq!(Nonces::new([8; 32], 600).check(&nonce, 1_000), NonceCheck::Invalid);
        assert_eq!(n.check("short", 0), NonceCheck::Invalid);
        assert_eq!(n.check("zzzzzzzz", 0), NonceCheck::Invalid);
    }
}
