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
    /// TURN-over-TLS (`turns:`) listen address, with the wss certificate; without a value 0.0.0.0:5349 (443 works
    /// through networks that allow nothing else). Off unless given.
    #[arg(long, env = "SWITCHBOARD_TURN_TLS_LISTEN", num_args = 0..=1, default_missing_value = "0.0.0.0:5349")]
    turn_tls_listen: Option<SocketAddr>,
    /// Advertised `turns:` port (default: the bound TLS port).
    #[arg(long, env = "SWITCHBOARD_TURN_TLS_PORT")]
    turn_tls_port: Option<u16>,
    /// Host name `turns:` URLs carry, one the certificate covers (default: each external IP).
    #[arg(long, env = "SWITCHBOARD_TURN_TLS_HOST")]
    turn_tls_host: Option<String>,
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
    /// Join a cluster whose backbone is this Redis, e.g. `redis://127.0.0.1:6379` (`rediss://` for TLS).
    #[arg(long, env = "SWITCHBOARD_CLUSTER", hide_env_values = true)]
    cluster: Option<String>,
    /// This node's id in the cluster (default: generated and logged).
    #[arg(long, env = "SWITCHBOARD_CLUSTER_NODE_ID")]
    cluster_node_id: Option<String>,
    /// A node silent this long is declared lost, e.g. `10s`.
    #[arg(long, env = "SWITCHBOARD_CLUSTER_NODE_TIMEOUT", value_parser = humantime::parse_duration)]
    cluster_node_timeout: Option<Duration>,
    /// How often a node renews its membership, e.g. `2s`.
    #[arg(long, env = "SWITCHBOARD_CLUSTER_HEARTBEAT", value_parser = humantime::parse_duration)]
    cluster_heartbeat: Option<Duration>,
    /// PEM CA that a `rediss://` backbone's certificate must chain to.
    #[arg(long, env = "SWITCHBOARD_CLUSTER_TLS_CA")]
    cluster_tls_ca: Option<PathBuf>,
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
        if self.turn_tls_listen.is_some() {
            t.tls_listen = self.turn_tls_listen;
        }
        if self.turn_tls_port.is_some() {
            t.tls_port = self.turn_tls_port;
        }
        if self.turn_tls_host.is_some() {
            t.tls_host = self.turn_tls_host;
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
        let k = &mut c.cluster;
        set(&mut k.url, self.cluster);
        set(&mut k.node_id, self.cluster_node_id);
        set(&mut k.node_timeout, self.cluster_node_timeout);
        set(&mut k.heartbeat, self.cluster_heartbeat);
        if self.cluster_tls_ca.is_some() {
            k.tls_ca = self.cluster_tls_ca;
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

#[cfg(test)]
mod tests {
    use clap::{CommandFactory, Parser};
    use switchboard_server::config::CredentialMode;

    use super::*;

    #[derive(Parser)]
    struct Serve {
        #[command(flatten)]
        args: ServeArgs,
    }

    fn config(argv: &[&str]) -> Config {
        let parsed = Serve::try_parse_from(std::iter::once("serve").chain(argv.iter().copied())).unwrap();
        parsed.args.into_config().unwrap()
    }

    /// Every flag of README.md's configuration table lands in its field of `Config`, from the flag and from its
    /// environment variable alike. (What each field then does is proven through a running server: crates/server/tests
    /// and crates/cli/tests/serve.rs.)
    #[test]
    fn every_flag_and_env_var_of_the_readme_table_sets_its_field() {
        type Check = fn(&Config) -> bool;
        let cases: [(&str, &str, &str, Check); 26] = [
            ("--listen", "SWITCHBOARD_LISTEN", "127.0.0.1:9", |c| c.signaling.listen.to_string() == "127.0.0.1:9"),
            ("--external-ip", "SWITCHBOARD_EXTERNAL_IP", "192.0.2.1,192.0.2.2", |c| c.turn.external_ips.len() == 2),
            ("--turn-listen", "SWITCHBOARD_TURN_LISTEN", "127.0.0.1:7", |c| c.turn.listen.port() == 7),
            ("--turn-port", "SWITCHBOARD_TURN_PORT", "4000", |c| c.turn.port == Some(4000)),
            ("--turn-tls-listen", "SWITCHBOARD_TURN_TLS_LISTEN", "127.0.0.1:443", |c| {
                c.turn.tls_listen == Some("127.0.0.1:443".parse().unwrap())
            }),
            ("--turn-tls-port", "SWITCHBOARD_TURN_TLS_PORT", "443", |c| c.turn.tls_port == Some(443)),
            ("--turn-tls-host", "SWITCHBOARD_TURN_TLS_HOST", "turn.example.com", |c| {
                c.turn.tls_host.as_deref() == Some("turn.example.com")
            }),
            ("--turn-credentials", "SWITCHBOARD_TURN_CREDENTIALS", "static", |c| {
                c.turn.credentials == CredentialMode::Static
            }),
            ("--turn-secret", "SWITCHBOARD_TURN_SECRET", "s3", |c| c.turn.secret == "s3"),
            ("--turn-allow-peer", "SWITCHBOARD_TURN_ALLOW_PEER", "10.0.0.0/8", |c| {
                c.turn.allow_peers == ["10.0.0.0/8".parse::<IpNet>().unwrap()]
            }),
            ("--turn-deny-peer", "SWITCHBOARD_TURN_DENY_PEER", "203.0.113.0/24", |c| {
                c.turn.deny_peers == ["203.0.113.0/24".parse::<IpNet>().unwrap()]
            }),
            ("--turn-relay-ports", "SWITCHBOARD_TURN_RELAY_PORTS", "60000-60100", |c| {
                (c.turn.relay_port_min, c.turn.relay_port_max) == (60000, 60100)
            }),
            ("--turn-bandwidth", "SWITCHBOARD_TURN_BANDWIDTH", "125000", |c| c.turn.bandwidth == Some(125_000)),
            ("--max-message-size", "SWITCHBOARD_MAX_MESSAGE_SIZE", "4096", |c| c.signaling.max_message_size == 4096),
            ("--call-timeout", "SWITCHBOARD_CALL_TIMEOUT", "5s", |c| {
                c.signaling.call_timeout == Duration::from_secs(5)
            }),
            ("--shutdown-grace", "SWITCHBOARD_SHUTDOWN_GRACE", "2s", |c| {
                c.signaling.shutdown_grace == Duration::from_secs(2)
            }),
            ("--admin-secret", "SWITCHBOARD_ADMIN_SECRET", "adm", |c| c.admin.secret == "adm"),
            ("--auth-secret", "SWITCHBOARD_AUTH_SECRET", "auth", |c| c.auth.secret == "auth"),
            ("--anonymous-network", "SWITCHBOARD_ANONYMOUS_NETWORKS", "10.0.0.0/8", |c| {
                c.auth.anonymous_networks.contains(&"10.0.0.0/8".parse::<IpNet>().unwrap())
            }),
            ("--tls-listen", "SWITCHBOARD_TLS_LISTEN", "127.0.0.1:5", |c| c.tls.listen.port() == 5),
            ("--dev-tls", "SWITCHBOARD_DEV_TLS", "true", |c| c.tls.dev_self_signed),
            ("--cluster", "SWITCHBOARD_CLUSTER", "redis://127.0.0.1:1", |c| c.cluster.url == "redis://127.0.0.1:1"),
            ("--cluster-node-id", "SWITCHBOARD_CLUSTER_NODE_ID", "n1", |c| c.cluster.node_id == "n1"),
            ("--cluster-node-timeout", "SWITCHBOARD_CLUSTER_NODE_TIMEOUT", "4s", |c| {
                c.cluster.node_timeout == Duration::from_secs(4)
            }),
            ("--cluster-heartbeat", "SWITCHBOARD_CLUSTER_HEARTBEAT", "1s", |c| {
                c.cluster.heartbeat == Duration::from_secs(1)
            }),
            ("--cluster-tls-ca", "SWITCHBOARD_CLUSTER_TLS_CA", "ca.pem", |c| {
                c.cluster.tls_ca.as_deref() == Some(std::path::Path::new("ca.pem"))
            }),
        ];
        // (--config has its own test: crates/cli/tests/serve.rs.)
        for (flag, var, value, check) in cases {
            let argv: Vec<&str> = if flag == "--dev-tls" { vec![flag] } else { vec![flag, value] };
            assert!(check(&config(&argv)), "{flag} {value}");
            assert!(!check(&Config::default()), "{flag}: the default already satisfies the check");
            // SAFETY: this is the only test of this crate that touches SWITCHBOARD_* variables, and nothing else
            // reads the environment while it runs.
            unsafe { std::env::set_var(var, value) };
            let from_env = config(&[]);
            unsafe { std::env::remove_var(var) };
            assert!(check(&from_env), "{var}={value}");
        }
        // --tls-cert/--tls-key come as a pair.
        let c = config(&["--tls-cert", "c.pem", "--tls-key", "k.pem"]);
        assert_eq!((c.tls.cert.unwrap(), c.tls.key.unwrap()), (PathBuf::from("c.pem"), PathBuf::from("k.pem")));
        assert!(Serve::try_parse_from(["serve", "--tls-cert", "c.pem"]).is_err());
        // --turn-tls-listen without a value: the standard turns: port on every interface.
        assert_eq!(config(&["--turn-tls-listen"]).turn.tls_listen, Some("0.0.0.0:5349".parse().unwrap()));

        // README's table names exactly these flags and variables (the global --log/--log-format live on the
        // top-level command: crates/cli/tests/serve.rs runs them).
        let readme = include_str!("../../../README.md");
        let command = Serve::command();
        for row in readme.lines().filter(|l| l.starts_with("| `--")) {
            let row = row.replace("\\|", "/"); // `ephemeral\|static` is one cell
            for flag in row.split('|').nth(1).unwrap().split('`').filter(|s| s.starts_with("--")) {
                let long = flag.split_whitespace().next().unwrap().trim_start_matches("--");
                if ["log", "log-format"].contains(&long) {
                    continue;
                }
                let arg = command.get_arguments().find(|a| a.get_long() == Some(long));
                assert!(arg.is_some(), "README's --{long} is not a flag of serve");
                let env = arg.unwrap().get_env().map(|e| e.to_string_lossy().into_owned()).unwrap_or_default();
                let documented = row.split('|').nth(2).unwrap();
                let prefix = env.trim_end_matches(|c: char| c != '_');
                assert!(documented.contains(&env) || documented.contains(&format!("{prefix}*")), "--{long}: {env}");
            }
        }
    }
}
