//! The `ice_servers` of a register accept (SPEC.md §4.1).
//!
//! The built-in server comes first, one URL per advertised external address, then the configured external servers.
//! ZLMediaKit's room keeper keeps only the *last* entry, which operators adding external servers should know.

use std::net::IpAddr;
use std::sync::Arc;

use rand::distr::{Alphanumeric, SampleString};
use switchboard_proto::IceServer;

use crate::config::{Config, CredentialMode};

/// Hands every registration its `ice_servers`.
#[derive(Clone, Debug)]
pub struct IceServers {
    /// The list every registration gets (static credentials make it the same for all).
    list: Arc<[IceServer]>,
}

impl IceServers {
    /// Builds the list from config. `detected` is used when no external address is configured.
    pub fn new(config: &Config, detected: IpAddr) -> (IceServers, Option<GeneratedSecret>) {
        let turn = &config.turn;
        let ips: Vec<IpAddr> = if turn.external_ips.is_empty() { vec![detected] } else { turn.external_ips.clone() };
        let scheme = if turn.enabled { "turn" } else { "stun" };
        let (ufrag, pwd, generated) = match turn.credentials {
            CredentialMode::Static if turn.static_password.is_empty() => {
                let pwd = Alphanumeric.sample_string(&mut rand::rng(), 24);
                (turn.static_username.clone(), pwd, Some(GeneratedSecret))
            }
            CredentialMode::Static => (turn.static_username.clone(), turn.static_password.clone(), None),
        };
        let builtin = ips.into_iter().map(|ip| IceServer {
            url: format!("{scheme}:{}?transport=udp", host(ip, turn.port)),
            ufrag: ufrag.clone(),
            pwd: pwd.clone(),
        });
        let list = builtin.chain(config.ice_servers.iter().cloned()).collect();
        (IceServers { list }, generated)
    }

    /// The `ice_servers` for a registration of `room_id`.
    pub fn for_room(&self, _room_id: &str) -> &[IceServer] {
        &self.list
    }
}

/// Marker: the static TURN password was not configured and was generated at start.
#[derive(Debug)]
pub struct GeneratedSecret;

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
        c.turn.external_ips = vec!["203.0.113.7".parse().unwrap(), "2001:db8::1".parse().unwrap()];
        c.turn.static_password = "secret".into();
        c.ice_servers.push(IceServer { url: "stun:stun.example.org:3478".into(), ufrag: "".into(), pwd: "".into() });
        let (ice, generated) = IceServers::new(&c, "10.0.0.1".parse().unwrap());
        assert!(generated.is_none());
        let urls: Vec<_> = ice.for_room("r").iter().map(|s| s.url.as_str()).collect();
        assert_eq!(
            urls,
            [
                "turn:203.0.113.7:3478?transport=udp",
                "turn:[2001:db8::1]:3478?transport=udp",
                "stun:stun.example.org:3478"
            ]
        );
        assert_eq!(ice.for_room("r")[0].ufrag, "switchboard");
        assert_eq!(ice.for_room("r")[0].pwd, "secret");
    }

    #[test]
    fn detected_address_and_stun_when_turn_is_off() {
        let mut c = Config::default();
        c.turn.enabled = false;
        c.turn.port = 5349;
        let (ice, generated) = IceServers::new(&c, "10.0.0.1".parse().unwrap());
        assert!(generated.is_some(), "no password configured: one is generated");
        assert_eq!(ice.for_room("r")[0].url, "stun:10.0.0.1:5349?transport=udp");
        assert_eq!(ice.for_room("r")[0].pwd.len(), 24);
    }

    #[test]
    fn detection_never_returns_loopback_unless_nothing_else_exists() {
        let ip = detect_external_ip();
        let has_other = if_addrs::get_if_addrs().unwrap().iter().any(|i| !i.is_loopback() && i.ip().is_ipv4());
        assert_eq!(ip.is_loopback(), !has_other);
    }
}
