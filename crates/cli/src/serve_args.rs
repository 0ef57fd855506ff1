//! Flags and environment variables of `switchboard serve`, applied on top of the TOML file.

use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;
use clap::Args;
use ipnet::IpNet;
use switchboard_server::config::CredentialMode;
use switchboard_server::Config;

#[derive(Args, Debug)]
pub struct ServeArgs {
    /// TOML config file (see switchboard.sample.toml).
    #[arg(long, env = "SWITCHBOARD_CONFIG")]
    config: Option<PathBuf>,
    /// Signaling (ws) listen address; port 0 picks a free port.
    #[arg(long, env = "SWITCHBOARD_LISTEN")]
    listen: Option<SocketAddr>,
    /// Address advertised in ice_servers; repeat (or comma-separate) for several. Default: first non-loopback interface.
    #[arg(long = "external-ip", env = "SWITCHBOARD_EXTERNAL_IP", value_delimiter = ',')]
    external_ip: Vec<IpAddr>,
    /// STUN/TURN listen address, UDP and TCP (default 0.0.0.0:3478); port 0 picks one.
    #[arg(long, env = "SWITCHBOARD_TURN_LISTEN")]
    turn_listen: Option<SocketAddr>,
    /// Advertised STUN/TURN port (default: the bound port).
    #[arg(long, env = "SWITCHBOARD_TURN_PORT")]
    turn_port: Option<u16>,
    /// TURN credentials handed out in register accepts: ephemeral (default) or static.
    #[arg(long, env = "SWITCHBOARD_TURN_CREDENTIALS", value_parser = ["ephemeral", "static"])]
    turn_credentials: Option<String>,
    /// Shared secret of ephemeral TURN credentials (default: generated at start).
    #[arg(long, env = "SWITCHBOARD_TURN_SECRET", hide_env_values = true)]
    turn_secret: Option<String>,
    /// Peer network the relay may reach although denied by default, e.g. 127.0.0.0/8; repeatable.
    #[arg(long = "turn-allow-peer", env = "SWITCHBOARD_TURN_ALLOW_PEER", value_delimiter = ',')]
    turn_allow_peer: Vec<IpNet>,
    /// Peer network the relay must never reach; repeatable.
    #[arg(long = "turn-deny-peer", env = "SWITCHBOARD_TURN_DENY_PEER", value_delimiter = ',')]
    turn_deny_peer: Vec<IpNet>,
    /// Relay port range, e.g. 50000-65000.
    #[arg(long, env = "SWITCHBOARD_TURN_RELAY_PORTS", value_parser = parse_port_range)]
    turn_relay_ports: Option<(u16, u16)>,
    /// wss/https listen address (default 0.0.0.0:3001); used when a certificate is configured or --dev-tls.
    #[arg(long, env = "SWITCHBOARD_TLS_LISTEN")]
    tls_listen: Option<SocketAddr>,
    /// PEM certificate chain for wss/https.
    #[arg(long, env = "SWITCHBOARD_TLS_CERT", requires = "tls_key")]
    tls_cert: Option<PathBuf>,
    /// PEM private key for wss/https.
    #[arg(long, env = "SWITCHBOARD_TLS_KEY", requires = "tls_cert")]
    tls_key: Option<PathBuf>,
    /// Serve wss/https with a generated self-signed certificate (to try the demo on a LAN; browsers warn).
    #[arg(long, env = "SWITCHBOARD_DEV_TLS")]
    dev_tls: bool,
    /// HS256 secret of signaling tokens; enables auth.
    #[arg(long, env = "SWITCHBOARD_AUTH_SECRET", hide_env_values = true)]
    auth_secret: Option<String>,
    /// Network whose clients need no token (repeatable), e.g. 10.0.0.0/8.
    #[arg(long = "anonymous-network", env = "SWITCHBOARD_ANONYMOUS_NETWORKS", value_delimiter = ',')]
    anonymous_network: Vec<IpNet>,
    /// Secret of the admin API (`/api/...`); without one the admin API is off.
    #[arg(long, env = "SWITCHBOARD_ADMIN_SECRET", hide_env_values = true)]
    admin_secret: Option<String>,
    /// Per-allocation relay bandwidth cap in bytes per second.
    #[arg(long, env = "SWITCHBOARD_TURN_BANDWIDTH")]
    turn_bandwidth: Option<u64>,
    /// Largest accepted signaling message in bytes.
    #[arg(long, env = "SWITCHBOARD_MAX_MESSAGE_SIZE")]
    max_message_size: Option<usize>,
    /// Time a callee has to answer a call, e.g. `30s`.
    #[arg(long, env = "SWITCHBOARD_CALL_TIMEOUT", value_parser = humantime::parse_duration)]
    call_timeout: Option<Duration>,
    /// How long shutdown waits for sessions to close, e.g. `10s`.
    #[arg(long, env = "SWITCHBOARD_SHUTDOWN_GRACE", value_parser = humantime::parse_duration)]
    shutdown_grace: Option<Duration>,
}

impl ServeArgs {
    /// The file (or defaults), with env and flags on top. Validation happens when the server binds.
    pub fn into_config(self) -> anyhow::Result<Config> {
        let mut c = match &self.config {
            Some(path) => Config::from_file(path).with_context(|| format!("loading {}", path.display()))?,
            None => Config::default(),
        };
        let s = &mut c.signaling;
        set(&mut s.listen, self.listen);
        set(&mut s.max_message_size, self.max_message_size);
        set(&mut s.call_timeout, self.call_timeout);
        set(&mut s.shutdown_grace, self.shutdown_grace);
        set(&mut c.admin.secret, self.admin_secret);
        set(&mut c.tls.listen, self.tls_listen);
        if self.tls_cert.is_some() {
            (c.tls.cert, c.tls.key) = (self.tls_cert, self.tls_key);
        }
        c.tls.dev_self_signed |= self.dev_tls;
        set(&mut c.auth.secret, self.auth_secret);
        c.auth.anonymous_networks.extend(self.anonymous_network);
        let t = &mut c.turn;
        set(&mut t.listen, self.turn_listen);
        if self.turn_port.is_some() {
            t.port = self.turn_port;
        }
        if let Some(mode) = self.turn_credentials {
            t.credentials = if mode == "static" { CredentialMode::Static } else { CredentialMode::Ephemeral };
        }
        set(&mut t.secret, self.turn_secret);
        t.allow_peers.extend(self.turn_allow_peer);
        t.deny_peers.extend(self.turn_deny_peer);
        if let Some((lo, hi)) = self.turn_relay_ports {
            (t.relay_port_min, t.relay_port_max) = (lo, hi);
        }
        if self.turn_bandwidth.is_some() {
            t.bandwidth = self.turn_bandwidth;
        }
        if !self.external_ip.is_empty() {
            c.turn.external_ips = self.external_ip;
        }
        Ok(c)
    }
}

fn parse_port_range(s: &str) -> Result<(u16, u16), String> {
    let (lo, hi) = s.split_once('-').ok_or("expected LOW-HIGH, e.g. 50000-65000")?;
    let lo: u16 = lo.trim().parse().map_err(|e| format!("{e}"))?;
    let hi: u16 = hi.trim().parse().map_err(|e| format!("{e}"))?;
    Ok((lo, hi))
}

fn set<T>(field: &mut T, value: Option<T>) {
    if let Some(v) = value {
        *field = v;
    }
}
