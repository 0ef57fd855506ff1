//! Flags and environment variables of `switchboard serve`, applied on top of the TOML file.

use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;
use clap::Args;
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
    /// Advertised STUN/TURN port.
    #[arg(long, env = "SWITCHBOARD_TURN_PORT")]
    turn_port: Option<u16>,
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
        set(&mut c.turn.port, self.turn_port);
        if !self.external_ip.is_empty() {
            c.turn.external_ips = self.external_ip;
        }
        Ok(c)
    }
}

fn set<T>(field: &mut T, value: Option<T>) {
    if let Some(v) = value {
        *field = v;
    }
}
