//! Which peers a relay may talk to.
//!
//! A TURN server on the internet must not become a way into the network it sits in (coturn CVE-2020-26262: a peer
//! of 0.0.0.0 reached the server's loopback). Decision order for a peer IP, after unmapping `::ffff:a.b.c.d`:
//! 1. the configured deny list: denied;
//! 2. the unspecified addresses (0.0.0.0, ::): always denied, nothing can allow them;
//! 3. the configured allow list: allowed (tests allow 127.0.0.0/8 this way);
//! 4. the built-in denials — loopback, private (RFC 1918, ULA), link-local, CGNAT (100.64/10), multicast,
//!    broadcast, documentation/benchmark ranges and the server's own relay addresses: denied;
//! 5. anything else: allowed.

use std::net::IpAddr;

use ipnet::IpNet;

/// The peer filter of one TURN server.
#[derive(Clone, Debug, Default)]
pub struct PeerPolicy {
    /// Explicitly allowed networks (checked after `deny`).
    pub allow: Vec<IpNet>,
    /// Explicitly denied networks (checked first).
    pub deny: Vec<IpNet>,
    /// The relay addresses of this server, denied unless allowed.
    pub relay_ips: Vec<IpAddr>,
}

/// The networks denied unless explicitly allowed.
const BUILT_IN_DENY: &[&str] = &[
    "127.0.0.0/8",
    "10.0.0.0/8",
    "172.16.0.0/12",
    "192.168.0.0/16",
    "169.254.0.0/16",
    "100.64.0.0/10",
    "224.0.0.0/4",
    "240.0.0.0/4",
    "192.0.0.0/24",
    "198.18.0.0/15",
    "::1/128",
    "fc00::/7",
    "fe80::/10",
    "ff00::/8",
    "64:ff9b::/96",
];

impl PeerPolicy {
    /// Whether relaying to/from `ip` is permitted.
    pub fn allows(&self, ip: IpAddr) -> bool {
        let ip = unmap(ip);
        if self.deny.iter().any(|n| n.contains(&ip)) {
            return false;
        }
        if ip.is_unspecified() {
            return false;
        }
        if self.allow.iter().any(|n| n.contains(&ip)) {
            return true;
        }
        let built_in = BUILT_IN_DENY.iter().filter_map(|s| s.parse::<IpNet>().ok()).any(|n| n.contains(&ip));
        !built_in && !self.relay_ips.iter().any(|r| unmap(*r) == ip)
    }
}

/// `::ffff:a.b.c.d` is the IPv4 address a.b.c.d; checks must see it as such.
fn unmap(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map(IpAddr::V4).unwrap_or(ip),
        v4 => v4,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn default_denies_internal_networks_and_allows_public_ones() {
        let p = PeerPolicy { relay_ips: vec![ip("203.0.113.9")], ..Default::default() };
        for denied in [
            "127.0.0.1",
            "10.0.0.1",
            "172.16.5.5",
            "192.168.1.1",
            "169.254.1.1",
            "100.64.0.1",
            "224.0.0.1",
            "255.255.255.255",
            "0.0.0.0",
            "::",
            "::1",
            "fd00::1",
            "fe80::1",
            "ff02::1",
            "::ffff:127.0.0.1",
            "::ffff:10.0.0.1",
            "203.0.113.9",
        ] {
            assert!(!p.allows(ip(denied)), "{denied} must be denied");
        }
        for allowed in ["8.8.8.8", "1.1.1.1", "2001:4860::8888", "::ffff:8.8.8.8"] {
            assert!(p.allows(ip(allowed)), "{allowed} must be allowed");
        }
    }

    #[test]
    fn allow_list_opens_a_range_but_never_the_unspecified_address() {
        let p = PeerPolicy {
            allow: vec!["127.0.0.0/8".parse().unwrap(), "0.0.0.0/0".parse().unwrap()],
            ..Default::default()
        };
        assert!(p.allows(ip("127.0.0.1")));
        assert!(p.allows(ip("::ffff:127.0.0.1")));
        assert!(!p.allows(ip("0.0.0.0")));
        assert!(!p.allows(ip("::ffff:0.0.0.0")));
    }

    #[test]
    fn deny_list_wins_over_allow_list() {
        let p = PeerPolicy {
            allow: vec!["127.0.0.0/8".parse().unwrap()],
            deny: vec!["127.0.0.2/32".parse().unwrap(), "8.8.8.0/24".parse().unwrap()],
            ..Default::default()
        };
        assert!(p.allows(ip("127.0.0.1")));
        assert!(!p.allows(ip("127.0.0.2")));
        assert!(!p.allows(ip("8.8.8.8")));
    }
}
