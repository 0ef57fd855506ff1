//! Which peers a relay may talk to.
//!
//! A TURN server on the internet must not become a way into the network it sits in (coturn CVE-2020-26262: a peer
//! of 0.0.0.0 reached the server's loopback). Decision order for a peer IP:
//! 1. the configured deny list: denied;
//! 2. the unspecified addresses (0.0.0.0, ::): always denied, nothing can allow them;
//! 3. the configured allow list: allowed (tests allow 127.0.0.0/8 this way);
//! 4. an IPv6 address that embeds an IPv4 one (mapped, compatible, translated, 6to4, NAT64 well-known prefix, Teredo
//!    server and client): decided as the embedded address (every embedded one, for Teredo), so `::ffff:127.0.0.1`,
//!    `2002:7f00:1::` and a Teredo address whose client is 127.0.0.1 are loopback;
//! 5. the built-in denials, [`BUILT_IN_DENY`]: the special-purpose ranges of the IANA IPv4 and IPv6 registries that
//!    lead to a private, local, reserved or translated network (docs/turn.md names the registry entry behind each),
//!    and the server's own relay addresses: denied;
//! 6. anything else: allowed.
//!
//! The documentation ranges (192.0.2.0/24, 198.51.100.0/24, 203.0.113.0/24, 2001:db8::/32, 3fff::/20) stay open:
//! nothing routes them, and tests use them as public-looking peers.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

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

/// The networks denied unless explicitly allowed (see docs/turn.md for the registry entry of each).
pub const BUILT_IN_DENY: &[&str] = &[
    // IPv4 Special-Purpose Address Registry
    "0.0.0.0/8",      // "this network" (RFC 791)
    "10.0.0.0/8",     // private-use (RFC 1918)
    "100.64.0.0/10",  // shared address space, CGNAT (RFC 6598)
    "127.0.0.0/8",    // loopback (RFC 1122)
    "169.254.0.0/16", // link-local (RFC 3927)
    "172.16.0.0/12",  // private-use (RFC 1918)
    "192.0.0.0/24",   // IETF protocol assignments, incl. DS-Lite and NAT64 discovery (RFC 6890)
    "192.88.99.0/24", // 6to4 relay anycast, deprecated (RFC 7526)
    "192.168.0.0/16", // private-use (RFC 1918)
    "198.18.0.0/15",  // benchmarking (RFC 2544)
    "224.0.0.0/4",    // multicast (RFC 5771)
    "240.0.0.0/4",    // reserved, incl. limited broadcast 255.255.255.255 (RFC 1112, RFC 919)
    // IPv6 Special-Purpose Address Registry
    "::1/128",        // loopback (RFC 4291)
    "::/96",          // IPv4-compatible, deprecated (RFC 4291); embedded addresses are decided first
    "64:ff9b:1::/48", // NAT64 local-use prefix (RFC 8215): translates into a local network
    "100::/64",       // discard-only (RFC 6666)
    "2001:2::/48",    // benchmarking (RFC 5180)
    "2001:10::/28",   // ORCHID, deprecated (RFC 4843)
    "2001:20::/28",   // ORCHIDv2 (RFC 7343)
    "5f00::/16",      // SRv6 SIDs (RFC 9602)
    "fc00::/7",       // unique local (RFC 4193)
    "fe80::/10",      // link-local unicast (RFC 4291)
    "fec0::/10",      // site-local, deprecated (RFC 3879)
    "ff00::/8",       // multicast (RFC 4291)
];

impl PeerPolicy {
    /// Whether relaying to/from `ip` is permitted.
    pub fn allows(&self, ip: IpAddr) -> bool {
        if self.deny.iter().any(|n| n.contains(&ip)) || ip.is_unspecified() {
            return false;
        }
        if self.allow.iter().any(|n| n.contains(&ip)) {
            return true;
        }
        if let IpAddr::V6(v6) = ip {
            let embedded = embedded_ipv4(v6);
            if !embedded.is_empty() {
                return embedded.into_iter().all(|v4| self.allows(IpAddr::V4(v4)));
            }
        }
        let built_in = BUILT_IN_DENY.iter().filter_map(|s| s.parse::<IpNet>().ok()).any(|n| n.contains(&ip));
        !built_in && !self.relay_ips.iter().any(|r| *r == ip || unmap(*r) == ip)
    }
}

/// The IPv4 addresses an IPv6 address carries, by the forms that reach an IPv4 network: IPv4-mapped
/// (`::ffff:0:0/96`), IPv4-compatible (`::/96`), IPv4-translated (`::ffff:0:0:0/96`, RFC 2765), NAT64 well-known
/// prefix (`64:ff9b::/96`, RFC 6052), 6to4 (`2002::/16`, RFC 3056), Teredo (`2001::/32`, RFC 4380: server and
/// client). Empty for any other address.
pub fn embedded_ipv4(ip: Ipv6Addr) -> Vec<Ipv4Addr> {
    let s = ip.segments();
    let o = ip.octets();
    let tail = Ipv4Addr::new(o[12], o[13], o[14], o[15]);
    match s {
        [0, 0, 0, 0, 0, 0xffff, _, _] => vec![tail],
        [0, 0, 0, 0, 0, 0, _, _] if ip != Ipv6Addr::UNSPECIFIED && ip != Ipv6Addr::LOCALHOST => vec![tail],
        [0, 0, 0, 0, 0xffff, 0, _, _] => vec![tail],
        [0x64, 0xff9b, 0, 0, 0, 0, _, _] => vec![tail],
        [0x2002, ..] => vec![Ipv4Addr::new(o[2], o[3], o[4], o[5])],
        [0x2001, 0, ..] => {
            let server = Ipv4Addr::new(o[4], o[5], o[6], o[7]);
            let client = Ipv4Addr::new(!o[12], !o[13], !o[14], !o[15]);
            vec![server, client]
        }
        _ => Vec::new(),
    }
}

/// `::ffff:a.b.c.d` as the IPv4 address a.b.c.d (relay addresses may be configured either way).
fn unmap(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map(IpAddr::V4).unwrap_or(ip),
        v4 => v4,
    }
}

/// One address inside each built-in denial and each embedding form, and public controls, for the tests of this
/// policy (the engine's in virtual time, the server's over real sockets) and for docs/turn.md.
pub mod examples {
    /// Denied by default, IPv4.
    pub const DENIED_V4: &[&str] = &[
        "0.0.0.0",
        "0.1.2.3",
        "10.0.0.1",
        "100.64.1.1",
        "127.0.0.1",
        "169.254.1.1",
        "172.16.5.5",
        "192.0.0.8",
        "192.0.0.170",
        "192.88.99.1",
        "192.168.0.10",
        "198.18.0.1",
        "224.0.0.1",
        "240.0.0.1",
        "255.255.255.255",
    ];
    /// Denied by default, IPv6 (the embedding forms carry a denied IPv4 address, or lead to a local network).
    pub const DENIED_V6: &[&str] = &[
        "::",
        "::1",
        "::127.0.0.1",
        "::ffff:127.0.0.1",
        "::ffff:10.0.0.1",
        "::ffff:0:127.0.0.1",
        "::ffff:0.0.0.0",
        "2002:7f00:1::",
        "2002:a00:1::",
        "2002:c0a8:1::1",
        "64:ff9b::7f00:1",
        "64:ff9b::a00:1",
        "64:ff9b:1::7f00:1",
        "64:ff9b:1::808:808",
        // Teredo: server 65.54.227.120, client 127.0.0.1; then server 10.0.0.1, client 8.8.8.8.
        "2001:0:4136:e378:8000:63bf:80ff:fffe",
        "2001:0:a00:1:8000:63bf:f7f7:f7f7",
        "100::1",
        "2001:2::1",
        "2001:10::1",
        "2001:20::1",
        "5f00::1",
        "fc00::1",
        "fd00::1",
        "fe80::1",
        "fec0::1",
        "ff02::1",
    ];
    /// Allowed by default: public addresses, public embedded ones, and the documentation ranges.
    pub const ALLOWED_V4: &[&str] = &["8.8.8.8", "1.1.1.1", "192.0.2.10", "198.51.100.7", "203.0.113.50"];
    pub const ALLOWED_V6: &[&str] = &[
        "2001:4860:4860::8888",
        "::ffff:8.8.8.8",
        "2002:808:808::1",
        "64:ff9b::808:808",
        "2001:0:4136:e378:8000:63bf:f7f7:f7f7",
        "2001:db8::1",
        "3fff::1",
    ];
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn default_denies_every_special_range_and_embedded_form_and_allows_public_ones() {
        let p = PeerPolicy { relay_ips: vec![ip("203.0.113.9")], ..Default::default() };
        for denied in
            examples::DENIED_V4.iter().chain(examples::DENIED_V6).chain(&["203.0.113.9", "::ffff:203.0.113.9"])
        {
            assert!(!p.allows(ip(denied)), "{denied} must be denied");
        }
        for allowed in examples::ALLOWED_V4.iter().chain(examples::ALLOWED_V6) {
            assert!(p.allows(ip(allowed)), "{allowed} must be allowed");
        }
    }

    #[test]
    fn embedded_addresses_are_read_from_each_form() {
        let v4 = |s: &str| s.parse::<Ipv4Addr>().unwrap();
        let v6 = |s: &str| s.parse::<Ipv6Addr>().unwrap();
        assert_eq!(embedded_ipv4(v6("::ffff:1.2.3.4")), [v4("1.2.3.4")]);
        assert_eq!(embedded_ipv4(v6("::1.2.3.4")), [v4("1.2.3.4")]);
        assert_eq!(embedded_ipv4(v6("::ffff:0:1.2.3.4")), [v4("1.2.3.4")]);
        assert_eq!(embedded_ipv4(v6("64:ff9b::1.2.3.4")), [v4("1.2.3.4")]);
        assert_eq!(embedded_ipv4(v6("2002:102:304::99")), [v4("1.2.3.4")]);
        assert_eq!(embedded_ipv4(v6("2001:0:4136:e378:8000:63bf:3fff:fdd2")), [v4("65.54.227.120"), v4("192.0.2.45")]);
        assert!(embedded_ipv4(v6("::")).is_empty() && embedded_ipv4(v6("::1")).is_empty());
        assert!(embedded_ipv4(v6("2001:4860::8888")).is_empty());
    }

    #[test]
    fn an_allowed_ipv4_range_opens_its_embedded_forms_and_a_denied_one_closes_them() {
        let p = PeerPolicy { allow: vec!["127.0.0.0/8".parse().unwrap()], ..Default::default() };
        assert!(p.allows(ip("2002:7f00:1::")) && p.allows(ip("64:ff9b::7f00:1")));
        let p = PeerPolicy { deny: vec!["8.8.8.0/24".parse().unwrap()], ..Default::default() };
        assert!(!p.allows(ip("::ffff:8.8.8.8")) && !p.allows(ip("2002:808:808::1")));
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
