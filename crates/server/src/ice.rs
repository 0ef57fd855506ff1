//! The `ice_servers` of a register accept (SPEC.md §4.1).
//!
//! The built-in server comes first: its `turns:` URLs when TURN over TLS is on, then one UDP URL per advertised
//! external address; then the configured external servers. ZLMediaKit's room keeper keeps only the *last* entry, so
//! the TLS entries go first and the last built-in entry stays a UDP one (operators adding external servers should know
//! that the last of those is what a keeper uses).

use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use rand::distr::{Alphanumeric, SampleString};
use switchboard_proto::IceServer;
use switchboard_turn::credentials::{ephemeral_password, ephemeral_username};
use switchboard_turn::Credentials;

use crate::config::{Config, CredentialMode};

/// Hands every registration its `ice_servers`.
#[derive(Clone, Debug)]
pub struct IceServers {
    /// The built-in server's URLs, one per advertised address.
    builtin_urls: Vec<String>,
    /// How the built-in entries get their credential.
    credential: Credential,
    /// Configured external servers, appended as they are.
    external: Vec<IceServer>,
}

#[derive(Clone)]
enum Credential {
    Static { username: String, password: String },
    Ephemeral { secret: Arc<[u8]>, ttl: Duration },
}

impl std::fmt::Debug for Credential {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Credential::Static { .. } => "Static(<redacted>)",
            Credential::Ephemeral { .. } => "Ephemeral(<redacted>)",
        })
    }
}

impl IceServers {
    /// `ips` are the advertised addresses of the built-in server, `port` its advertised port, `tls_port` the
    /// advertised `turns:` port when TURN over TLS is on; `turn_credentials` is what the TURN server checks (the same
    /// secret or password).
    pub fn new(
        config: &Config,
        ips: &[IpAddr],
        port: u16,
        tls_port: Option<u16>,
        turn_credentials: &Credentials,
    ) -> IceServers {
        let scheme = if config.turn.enabled { "turn" } else { "stun" };
        let turns: Vec<String> = match (tls_port, &config.turn.tls_host) {
            (None, _) => Vec::new(),
            (Some(p), Some(name)) => vec![format!("turns:{name}:{p}?transport=tcp")],
            (Some(p), None) => ips.iter().map(|ip| format!("turns:{}?transport=tcp", host(*ip, p))).collect(),
        };
        let udp = ips.iter().map(|ip| format!("{scheme}:{}?transport=udp", host(*ip, port)));
        let builtin_urls = turns.into_iter().chain(udp).collect();
        let credential = match turn_credentials {
            Credentials::Static { username, password } => {
                Credential::Static { username: username.clone(), password: password.clone() }
            }
            Credentials::Ephemeral { secret } => {
                Credential::Ephemeral { secret: secret.clone().into(), ttl: config.turn.credential_ttl }
            }
        };
        IceServers { builtin_urls, credential, external: config.ice_servers.clone() }
    }

    /// When credentials handed out at `unix_now` expire (`ice_servers_expire`, SPEC.md §4.6); `None` for static
    /// ones, which never do.
    pub fn expiry(&self, unix_now: u64) -> Option<u64> {
        match &self.credential {
            Credential::Static { .. } => None,
            Credential::Ephemeral { ttl, .. } => Some(unix_now + ttl.as_secs()),
        }
    }

    /// The `ice_servers` for a registration of `room_id` at `unix_now`.
    pub fn for_room(&self, room_id: &str, unix_now: u64) -> Vec<IceServer> {
        let (ufrag, pwd) = match &self.credential {
            Credential::Static { username, password } => (username.clone(), password.clone()),
            Credential::Ephemeral { secret, ttl } => {
                let user = ephemeral_username(unix_now + ttl.as_secs(), room_id);
                let pwd = ephemeral_password(secret, &user);
                (user, pwd)
            }
        };
        let builtin =
            self.builtin_urls.iter().map(|url| IceServer { url: url.clone(), ufrag: ufrag.clone(), pwd: pwd.clone() });
        builtin.chain(self.external.iter().cloned()).collect()
    }
}

/// The credentials the TURN server checks, from config; secrets left empty are generated (and reported as such).
pub fn turn_credentials(config: &Config) -> (Credentials, Option<&'static str>) {
    let t = &config.turn;
    let random = || Alphanumeric.sample_string(&mut rand::rng(), 32);
    match t.credentials {
        CredentialMode::Static if t.static_password.is_empty() => (
            Credentials::Static { username: t.static_username.clone(), password: random() },
            Some("turn.static-password"),
        ),
        CredentialMode::Static => {
            (Credentials::Static { username: t.static_username.clone(), password: t.static_password.clone() }, None)
        }
        CredentialMode::Ephemeral if t.secret.is_empty() => {
            (Credentials::Ephemeral { secret: random().into_bytes() }, Some("turn.secret"))
        }
        CredentialMode::Ephemeral => (Credentials::Ephemeral { secret: t.secret.clone().into_bytes() }, None),
    }
}

/// `HOST:PORT` with IPv6 hosts in brackets, as STUN/TURN URIs (RFC 7064/7065) require.
fn host(ip: IpAddr, port: u16) -> String {
    match ip {
        IpAddr::V4(v4) => format!("{v4}:{port}"),
        IpAddr::V6(v6) => format!("[{v6}]:{port}"),
    }
}

/// The first non-loopback interface address (IPv4 preferred), or 127.0.0.1 on a machine that has none.
pub fn detect_external_ip() -> IpAddr {
    let addrs: Vec<IpAddr> = if_addrs::get_if_addrs()
        .map(|v| v.into_iter().filter(|i| !i.is_loopback()).map(|i| i.ip()).collect())
        .unwrap_or_default();
    let usable = |ip: &&IpAddr| match ip {
        IpAddr::V4(_) => true,
        IpAddr::V6(v6) => (v6.segments()[0] & 0xffc0) != 0xfe80, // link-local needs a scope id; skip it
    };
    addrs
        .iter()
        .filter(usable)
        .find(|ip| ip.is_ipv4())
        .or_else(|| addrs.iter().find(|ip| usable(ip)))
        .copied()
        .unwrap_or(IpAddr::from([127, 0, 0, 1]))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn builtin_first_then_external_servers() {
        let mut c = Config::default();
        c.turn.credentials = CredentialMode::Static;
        c.turn.static_password = "secret".into();
        c.ice_servers.push(IceServer { url: "stun:stun.example.org:3478".into(), ufrag: "".into(), pwd: "".into() });
        let (creds, generated) = turn_credentials(&c);
        assert!(generated.is_none());
        let ips = ["203.0.113.7".parse().unwrap(), "2001:db8::1".parse().unwrap()];
        let ice = IceServers::new(&c, &ips, 3478, None, &creds);
        let list = ice.for_room("r", 0);
        let urls: Vec<_> = list.iter().map(|s| s.url.as_str()).collect();
        assert_eq!(
            urls,
            [
                "turn:203.0.113.7:3478?transport=udp",
                "turn:[2001:db8::1]:3478?transport=udp",
                "stun:stun.example.org:3478"
            ]
        );
        assert_eq!((list[0].ufrag.as_str(), list[0].pwd.as_str()), ("switchboard", "secret"));
        assert_eq!(ice.expiry(0), None, "static credentials never expire");
    }

    #[test]
    fn turns_entries_come_first_so_that_the_last_entry_stays_udp() {
        let mut c = Config::default();
        c.turn.secret = "s".into();
        let (creds, _) = turn_credentials(&c);
        let ips = ["203.0.113.7".parse().unwrap(), "2001:db8::1".parse().unwrap()];
        let urls = |c: &Config| -> Vec<String> {
            let ice = IceServers::new(c, &ips, 3478, Some(5349), &creds);
            let list = ice.for_room("r", 0);
            assert!(list.windows(2).all(|w| (&w[0].ufrag, &w[0].pwd) == (&w[1].ufrag, &w[1].pwd)), "one credential");
            list.into_iter().map(|s| s.url).collect()
        };
        assert_eq!(
            urls(&c),
            [
                "turns:203.0.113.7:5349?transport=tcp",
                "turns:[2001:db8::1]:5349?transport=tcp",
                "turn:203.0.113.7:3478?transport=udp",
                "turn:[2001:db8::1]:3478?transport=udp",
            ]
        );
        c.turn.tls_host = Some("turn.example.com".into());
        assert_eq!(
            urls(&c),
            [
                "turns:turn.example.com:5349?transport=tcp",
                "turn:203.0.113.7:3478?transport=udp",
                "turn:[2001:db8::1]:3478?transport=udp",
            ]
        );
    }

    #[test]
    fn ephemeral_credentials_are_per_room_and_time_limited() {
        let mut c = Config::default();
        c.turn.secret = "s".into();
        c.turn.enabled = false;
        let (creds, generated) = turn_credentials(&c);
        assert!(generated.is_none());
        let ice = IceServers::new(&c, &["10.0.0.1".parse().unwrap()], 5349, None, &creds);
        let list = ice.for_room("room_1", 1_000);
        assert_eq!(list[0].url, "stun:10.0.0.1:5349?transport=udp");
        assert_eq!(list[0].ufrag, format!("{}:room_1", 1_000 + 12 * 3600));
        assert_eq!(ice.expiry(1_000), Some(1_000 + 12 * 3600), "the expiry hint is the username's expiry");
        assert_eq!(list[0].pwd, ephemeral_password(b"s", &list[0].ufrag));
        assert!(creds.key(&list[0].ufrag, "switchboard", 1_000).is_some(), "the TURN server accepts what we hand out");
    }

    #[test]
    fn missing_secrets_are_generated() {
        let c = Config::default();
        let (creds, generated) = turn_credentials(&c);
        assert_eq!(generated, Some("turn.secret"));
        assert!(matches!(creds, Credentials::Ephemeral { ref secret } if secret.len() == 32));
    }

    #[test]
    fn detection_never_returns_loopback_unless_nothing_else_exists() {
        let ip = detect_external_ip();
        let has_other = if_addrs::get_if_addrs().unwrap().iter().any(|i| !i.is_loopback() && i.ip().is_ipv4());
        assert_eq!(ip.is_loopback(), !has_other);
    }
}
