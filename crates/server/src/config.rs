//! The one typed configuration of `switchboard serve`.
//!
//! Layering: built-in defaults < TOML file (`--config`) < environment variables < command-line flags. The TOML file is
//! kebab-case and rejects unknown keys; the binary applies env and flags on top of the loaded struct. [`Config::validate`]
//! runs last, so every layer is checked, and each error names the offending field.

use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::time::Duration;

use ipnet::IpNet;
use serde::Deserialize;
use switchboard_proto::IceServer;

/// Everything `switchboard serve` can be told.
#[derive(Clone, Debug, Default, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields, rename_all = "kebab-case")]
pub struct Config {
    /// The websocket signaling listener (which also serves `/livez` and `/readyz`).
    pub signaling: SignalingConfig,
    /// What the register accept advertises as the built-in STUN/TURN server.
    pub turn: TurnConfig,
    /// External STUN/TURN servers appended to every register accept's `ice_servers`, after the built-in one.
    pub ice_servers: Vec<IceServer>,
    /// The admin HTTP API.
    pub admin: AdminConfig,
    /// Signaling auth (off unless a secret is set).
    pub auth: AuthConfig,
    /// Per-connection and per-server limits.
    pub limits: LimitsConfig,
    /// The wss/https listener.
    pub tls: TlsConfig,
    /// Cluster mode (SPEC.md §9; off unless a backbone URL is set).
    pub cluster: ClusterConfig,
}

/// Cluster mode: several nodes that share a Redis backbone behave as one server (docs/cluster.md).
#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields, rename_all = "kebab-case")]
pub struct ClusterConfig {
    /// `redis://[user:password@]host:port[/db]` (or `rediss://` for TLS); empty: single node, no Redis.
    pub url: String,
    /// This node's id in the cluster (1–64 of `A-Za-z0-9_.-`); empty: generated at start and logged.
    pub node_id: String,
    /// A node that sends no heartbeat for this long is declared lost: its rooms are freed, its calls end.
    #[serde(with = "humantime_serde")]
    pub node_timeout: Duration,
    /// How often a node renews its membership (well under `node-timeout`).
    #[serde(with = "humantime_serde")]
    pub heartbeat: Duration,
    /// Prefix of every key and channel in Redis, so that several clusters can share one.
    pub prefix: String,
    /// PEM CA certificate(s) a `rediss://` server's certificate must chain to (default: the web PKI roots).
    pub tls_ca: Option<PathBuf>,
}

impl Default for ClusterConfig {
    fn default() -> Self {
        ClusterConfig {
            url: String::new(),
            node_id: String::new(),
            node_timeout: Duration::from_secs(10),
            heartbeat: Duration::from_secs(2),
            prefix: "switchboard".into(),
            tls_ca: None,
        }
    }
}

impl ClusterConfig {
    pub fn enabled(&self) -> bool {
        !self.url.is_empty()
    }
}

/// The TLS listener (wss and https): the same endpoints as the plain one.
#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields, rename_all = "kebab-case")]
pub struct TlsConfig {
    /// Address of the TLS listener (ZLMediaKit's signalingSslPort is 3001).
    pub listen: SocketAddr,
    /// PEM certificate chain; with `key`, enables the TLS listener.
    pub cert: Option<PathBuf>,
    /// PEM private key.
    pub key: Option<PathBuf>,
    /// Generate a self-signed certificate at start (for trying the demo on a LAN); browsers will warn.
    pub dev_self_signed: bool,
}

impl Default for TlsConfig {
    fn default() -> Self {
        TlsConfig { listen: SocketAddr::from(([0, 0, 0, 0], 3001)), cert: None, key: None, dev_self_signed: false }
    }
}

/// Signaling auth (SPEC.md §7).
#[derive(Clone, Debug, Default, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields, rename_all = "kebab-case")]
pub struct AuthConfig {
    /// HS256 secret of signaling tokens; empty: auth off (ZLMediaKit compatibility).
    pub secret: String,
    /// Networks whose clients need no token (legacy ZLMediaKit room keepers cannot carry one).
    pub anonymous_networks: Vec<IpNet>,
}

/// Limits that keep one client from hurting the others.
#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields, rename_all = "kebab-case")]
pub struct LimitsConfig {
    /// Sustained messages per second one connection may send.
    pub messages_per_second: u32,
    /// Burst allowance above the rate; this many rate-limited messages in a row close the session (1008).
    pub message_burst: u32,
    /// Open websocket connections the server accepts in total.
    pub max_connections: usize,
    /// Open websocket connections per source IP.
    pub max_connections_per_ip: usize,
    /// Calls into one room at once.
    pub max_calls_per_room: usize,
    /// Calls one session may have made at once.
    pub max_calls_per_caller: usize,
    /// Longest `transaction_id`/`room_id`/`guest_id`, in bytes (at most 128, the protocol's limit).
    pub max_id_length: usize,
}

impl Default for LimitsConfig {
    fn default() -> Self {
        LimitsConfig {
            messages_per_second: 200,
            message_burst: 400,
            max_connections: 18_000,
            max_connections_per_ip: 1_000,
            max_calls_per_room: 256,
            max_calls_per_caller: 64,
            max_id_length: 128,
        }
    }
}

/// The admin HTTP API (SPEC.md §8).
#[derive(Clone, Debug, Default, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields, rename_all = "kebab-case")]
pub struct AdminConfig {
    /// The secret every `/api/…` request must carry; empty disables the admin API.
    pub secret: String,
}

/// The signaling listener and per-session limits.
#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields, rename_all = "kebab-case")]
pub struct SignalingConfig {
    /// Address of the ws listener; port 0 picks a free port (the bound address is logged).
    pub listen: SocketAddr,
    /// Largest accepted message, after reassembly; one byte more is closed with 1009.
    pub max_message_size: usize,
    /// Outbound messages queued per session before it counts as a slow consumer and is disconnected.
    pub outbound_queue: usize,
    /// Kernel send buffer of each signaling connection (SO_SNDBUF, bytes; Linux doubles it); 0 leaves the kernel's
    /// autotuning, which lets one socket hold up to `net.ipv4.tcp_wmem` (4 MiB by default) for a reader that stopped.
    /// With a fixed buffer a stalled reader fills it and then its outbound queue, and is cut off as a slow consumer
    /// after a bounded number of bytes instead of megabytes.
    pub send_buffer: usize,
    /// Read buffer of TLS connections and of upgrades through the HTTP server (plain ws sessions keep none while idle).
    pub read_buffer_size: usize,
    /// A session silent this long is pinged.
    #[serde(with = "humantime_serde")]
    pub ping_after: Duration,
    /// A session that sent no frame at all (pongs included) for this long is closed.
    #[serde(with = "humantime_serde")]
    pub idle_timeout: Duration,
    /// A call neither accepted nor rejected within this time ends with `call_timeout` (SPEC.md §4.3).
    #[serde(with = "humantime_serde")]
    pub call_timeout: Duration,
    /// How long a graceful shutdown waits for sessions to close before it drops them.
    #[serde(with = "humantime_serde")]
    pub shutdown_grace: Duration,
}

/// The built-in STUN/TURN server, and what the register accept advertises of it.
#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields, rename_all = "kebab-case")]
pub struct TurnConfig {
    /// Allow relaying and advertise `turn:` URLs; when false the server only answers STUN and is advertised as `stun:`.
    pub enabled: bool,
    /// UDP and TCP listen address of the STUN/TURN server (the same port for both); port 0 picks one.
    pub listen: SocketAddr,
    /// Addresses clients reach the STUN/TURN server at; one URL each. Empty: the first non-loopback interface.
    pub external_ips: Vec<IpAddr>,
    /// The advertised STUN/TURN port; default: the bound listen port.
    pub port: Option<u16>,
    /// TURN-over-TLS (`turns:`) listen address, e.g. `0.0.0.0:5349` (or `:443` for networks that allow nothing
    /// else); absent: off. Uses the wss certificate (`tls.cert`/`tls.key` or `tls.dev-self-signed`).
    pub tls_listen: Option<SocketAddr>,
    /// The advertised `turns:` port; default: the bound TLS port.
    pub tls_port: Option<u16>,
    /// The host `turns:` URLs name, which the certificate must cover (e.g. `turn.example.com`); default: each
    /// external IP.
    pub tls_host: Option<String>,
    /// The long-term credential realm.
    pub realm: String,
    /// Which credential each register accept carries.
    pub credentials: CredentialMode,
    /// The shared secret of `ephemeral` credentials (TURN REST API); empty: generated at start.
    pub secret: String,
    /// How long an `ephemeral` credential stays valid after the register that handed it out.
    #[serde(with = "humantime_serde")]
    pub credential_ttl: Duration,
    /// The username handed out in `static` mode.
    pub static_username: String,
    /// The password handed out in `static` mode; empty means "generate one at start".
    pub static_password: String,
    /// Lowest relay port.
    pub relay_port_min: u16,
    /// Highest relay port.
    pub relay_port_max: u16,
    /// Peer networks relaying may reach although they are denied by default (e.g. `127.0.0.0/8` in tests).
    pub allow_peers: Vec<IpNet>,
    /// Peer networks relaying may never reach; checked before `allow-peers`.
    pub deny_peers: Vec<IpNet>,
    /// Allocations one username may hold at once.
    pub user_quota: usize,
    /// Allocations the server holds at once.
    pub total_quota: usize,
    /// Per-allocation relay bandwidth cap in bytes per second; absent: unlimited.
    pub bandwidth: Option<u64>,
    /// TURN-over-TCP connections one source IP may hold open at once; more are closed at accept.
    pub tcp_connections_per_ip: usize,
    /// How long a TURN-over-TCP connection may stay open without an allocation (nothing sent, half a message, or
    /// only Binding requests); then it is closed.
    #[serde(with = "humantime_serde")]
    pub tcp_unallocated_timeout: Duration,
}

/// How TURN credentials are issued.
#[derive(Clone, Copy, Debug, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "kebab-case")]
pub enum CredentialMode {
    /// The same configured username/password for everyone, as ZLMediaKit does.
    Static,
    /// A time-limited credential per registration: username `<unix-expiry>:<room_id>`, password
    /// base64(HMAC-SHA1(secret, username)). An external coturn with the same `static-auth-secret` accepts it too.
    Ephemeral,
}

impl Default for SignalingConfig {
    fn default() -> Self {
        SignalingConfig {
            listen: SocketAddr::from(([0, 0, 0, 0], 3000)),
            max_message_size: 256 * 1024,
            outbound_queue: 256,
            send_buffer: 128 * 1024,
            read_buffer_size: 4096,
            ping_after: Duration::from_secs(10),
            idle_timeout: Duration::from_secs(30),
            call_timeout: Duration::from_secs(30),
            shutdown_grace: Duration::from_secs(10),
        }
    }
}

impl Default for TurnConfig {
    fn default() -> Self {
        TurnConfig {
            enabled: true,
            listen: SocketAddr::from(([0, 0, 0, 0], 3478)),
            external_ips: Vec::new(),
            port: None,
            tls_listen: None,
            tls_port: None,
            tls_host: None,
            realm: "switchboard".into(),
            credentials: CredentialMode::Ephemeral,
            secret: String::new(),
            credential_ttl: Duration::from_secs(12 * 3600),
            static_username: "switchboard".into(),
            static_password: String::new(),
            relay_port_min: 50_000,
            relay_port_max: 65_000,
            allow_peers: Vec::new(),
            deny_peers: Vec::new(),
            user_quota: 16,
            total_quota: 10_000,
            bandwidth: None,
            tcp_connections_per_ip: 64,
            tcp_unallocated_timeout: Duration::from_secs(10),
        }
    }
}

/// A configuration that cannot be used; the message names the field.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config file {path}: {source}")]
    Read { path: String, source: std::io::Error },
    #[error("invalid config: {0}")]
    Parse(String),
    #[error("invalid config: field \"{field}\": {problem}")]
    Invalid { field: &'static str, problem: String },
}

impl Config {
    /// Parses TOML text; errors name the field path, e.g. `signaling.listen`.
    pub fn from_toml(text: &str) -> Result<Config, ConfigError> {
        let de = toml::Deserializer::new(text);
        serde_path_to_error::deserialize(de).map_err(|e| {
            let path = e.path().to_string();
            let inner = e.into_inner();
            let msg = inner.message().to_owned();
            ConfigError::Parse(if path == "." { msg } else { format!("field \"{path}\": {msg}") })
        })
    }

    /// Reads and parses a TOML file.
    pub fn from_file(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path)
            .map_err(|source| ConfigError::Read { path: path.display().to_string(), source })?;
        Config::from_toml(&text)
    }

    /// Checks what types alone cannot express. Run it after every layer has been applied.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let s = &self.signaling;
        let invalid = |field, problem: &str| Err(ConfigError::Invalid { field, problem: problem.into() });
        if s.max_message_size < 1024 {
            return invalid("signaling.max-message-size", "must be at least 1024 bytes");
        }
        if s.outbound_queue == 0 {
            return invalid("signaling.outbound-queue", "must be at least 1");
        }
        if s.send_buffer != 0 && s.send_buffer < 4096 {
            return invalid("signaling.send-buffer", "must be 0 (kernel autotuning) or at least 4096 bytes");
        }
        if s.read_buffer_size < 256 {
            return invalid("signaling.read-buffer-size", "must be at least 256 bytes");
        }
        if s.ping_after.is_zero() {
            return invalid("signaling.ping-after", "must be positive");
        }
        if s.idle_timeout <= s.ping_after {
            return invalid("signaling.idle-timeout", "must be longer than signaling.ping-after");
        }
        if s.call_timeout.is_zero() {
            return invalid("signaling.call-timeout", "must be positive");
        }
        let t = &self.turn;
        if t.port == Some(0) {
            return invalid("turn.port", "must not be 0");
        }
        if t.relay_port_min == 0 || t.relay_port_min > t.relay_port_max {
            return invalid("turn.relay-port-min", "must be between 1 and turn.relay-port-max");
        }
        if t.realm.is_empty() {
            return invalid("turn.realm", "must not be empty");
        }
        if t.tcp_connections_per_ip == 0 {
            return invalid("turn.tcp-connections-per-ip", "must be at least 1");
        }
        if t.tcp_unallocated_timeout.is_zero() {
            return invalid("turn.tcp-unallocated-timeout", "must be positive");
        }
        if t.credential_ttl.is_zero() {
            return invalid("turn.credential-ttl", "must be positive");
        }
        if t.bandwidth == Some(0) {
            return invalid("turn.bandwidth", "must be positive (omit it for no cap)");
        }
        if t.tls_listen.is_some() {
            if !t.enabled {
                return invalid("turn.tls-listen", "needs turn.enabled (browsers have no STUN over TLS)");
            }
            if self.tls.cert.is_none() && !self.tls.dev_self_signed {
                return invalid("turn.tls-listen", "needs a certificate: tls.cert and tls.key, or tls.dev-self-signed");
            }
        }
        if t.tls_port == Some(0) {
            return invalid("turn.tls-port", "must not be 0");
        }
        if t.tls_host.as_deref().is_some_and(|h| h.is_empty() || h.contains(['/', '?', ' ', '@'])) {
            return invalid("turn.tls-host", "must be a host name or IP address");
        }
        if self.turn.credentials == CredentialMode::Static && self.turn.static_username.is_empty() {
            return invalid("turn.static-username", "must not be empty in static mode");
        }
        let l = &self.limits;
        if l.messages_per_second == 0 || l.message_burst == 0 {
            return invalid("limits.messages-per-second", "rate and burst must be positive");
        }
        if l.max_connections == 0 || l.max_connections_per_ip == 0 {
            return invalid("limits.max-connections", "must be positive");
        }
        if l.max_calls_per_room == 0 || l.max_calls_per_caller == 0 {
            return invalid("limits.max-calls-per-room", "call limits must be positive");
        }
        if !(1..=switchboard_proto::MAX_ID_LEN).contains(&l.max_id_length) {
            return invalid("limits.max-id-length", "must be between 1 and 128");
        }
        if self.tls.cert.is_some() != self.tls.key.is_some() {
            return invalid("tls.cert", "tls.cert and tls.key must be set together");
        }
        let c = &self.cluster;
        if c.enabled() {
            if !(c.url.starts_with("redis://") || c.url.starts_with("rediss://")) {
                return invalid("cluster.url", "must be a redis:// or rediss:// URL");
            }
            if !c.node_id.is_empty() && !crate::cluster::valid_node_id(&c.node_id) {
                return invalid("cluster.node-id", "1 to 64 characters of A-Z a-z 0-9 _ . -");
            }
            if c.heartbeat.is_zero() || c.heartbeat * 2 > c.node_timeout {
                return invalid("cluster.heartbeat", "must be positive and at most half of cluster.node-timeout");
            }
            if c.tls_ca.is_some() && !c.url.starts_with("rediss://") {
                return invalid("cluster.tls-ca", "only applies to a rediss:// URL");
            }
            if c.prefix.is_empty() || c.prefix.contains(char::is_whitespace) {
                return invalid("cluster.prefix", "must be non-empty, without spaces");
            }
        }
        if let Some(bad) = self.ice_servers.iter().find(|s| !is_ice_url(&s.url)) {
            return Err(ConfigError::Invalid {
                field: "ice-servers.url",
                problem: format!("{:?} is not a stun:/stuns:/turn:/turns: URL", bad.url),
            });
        }
        Ok(())
    }
}

fn is_ice_url(url: &str) -> bool {
    ["stun:", "stuns:", "turn:", "turns:"].iter().any(|p| url.starts_with(p) && url.len() > p.len())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_valid_and_match_zlmediakit_ports() {
        let c = Config::default();
        c.validate().unwrap();
        assert_eq!(c.signaling.listen.port(), 3000);
        assert_eq!(c.turn.listen.port(), 3478);
        assert_eq!(c.turn.credentials, CredentialMode::Ephemeral);
        assert_eq!((c.turn.relay_port_min, c.turn.relay_port_max), (50_000, 65_000));
        assert_eq!(c.signaling.max_message_size, 262_144);
    }

    #[test]
    fn sample_config_in_the_repo_parses_and_is_valid() {
        let text = include_str!("../../../switchboard.sample.toml");
        let c = Config::from_toml(text).unwrap();
        c.validate().unwrap();
    }

    #[test]
    fn toml_overrides_defaults() {
        let c = Config::from_toml(
            "[signaling]\nlisten = \"127.0.0.1:0\"\ncall-timeout = \"5s\"\n[turn]\nexternal-ips = [\"10.0.0.1\", \"::1\"]\n\
             [[ice-servers]]\nurl = \"stun:stun.example.org:3478\"\nufrag = \"\"\npwd = \"\"\n",
        )
        .unwrap();
        assert_eq!(c.signaling.listen, "127.0.0.1:0".parse().unwrap());
        assert_eq!(c.signaling.call_timeout, Duration::from_secs(5));
        assert_eq!(c.turn.external_ips.len(), 2);
        assert_eq!(c.ice_servers[0].url, "stun:stun.example.org:3478");
        assert_eq!(c.signaling.ping_after, Duration::from_secs(10), "untouched fields keep defaults");
    }

    #[test]
    fn cluster_mode_is_off_by_default_and_a_cluster_table_turns_it_on() {
        let c = Config::default();
        assert!(c.cluster.url.is_empty(), "single node, no Redis, unless configured");
        assert_eq!(c.cluster.node_id, "", "generated at start");
        assert_eq!((c.cluster.node_timeout, c.cluster.heartbeat), (Duration::from_secs(10), Duration::from_secs(2)));
        let c = Config::from_toml(
            "[cluster]\nurl = \"rediss://user:pw@redis.example:6380/2\"\nnode-id = \"edge-1\"\nnode-timeout = \"4s\"\n\
             heartbeat = \"500ms\"\nprefix = \"sb-test\"\n",
        )
        .unwrap();
        c.validate().unwrap();
        assert_eq!(c.cluster.url, "rediss://user:pw@redis.example:6380/2");
        assert_eq!(c.cluster.node_id, "edge-1");
        assert_eq!((c.cluster.node_timeout, c.cluster.heartbeat), (Duration::from_secs(4), Duration::from_millis(500)));
        assert_eq!(c.cluster.prefix, "sb-test");
        let e = Config::from_toml("[cluster]\nurl = \"redis://127.0.0.1:6379\"\nnode-id = \"no spaces\"\n")
            .unwrap()
            .validate()
            .unwrap_err();
        assert!(e.to_string().contains("cluster.node-id"), "{e}");
    }

    #[test]
    fn errors_name_the_field() {
        let e = Config::from_toml("[signaling]\nlisten = \"nope\"\n").unwrap_err().to_string();
        assert!(e.contains("signaling.listen"), "{e}");
        let e = Config::from_toml("[signaling]\nlisen = \"127.0.0.1:1\"\n").unwrap_err().to_string();
        assert!(e.contains("lisen"), "{e}");
        let e = Config::from_toml("[turn]\nallow-peers = [\"not-a-cidr\"]\n").unwrap_err().to_string();
        assert!(e.contains("turn.allow-peers"), "{e}");
        let e = Config::from_toml("[turn]\nport = \"x\"\n").unwrap_err().to_string();
        assert!(e.contains("turn.port"), "{e}");
        let mut c = Config::default();
        c.signaling.idle_timeout = Duration::from_secs(1);
        assert!(c.validate().unwrap_err().to_string().contains("signaling.idle-timeout"));
        let mut c = Config::default();
        c.ice_servers.push(IceServer { url: "http://x".into(), ufrag: String::new(), pwd: String::new() });
        assert!(c.validate().unwrap_err().to_string().contains("ice-servers.url"));
    }
}
