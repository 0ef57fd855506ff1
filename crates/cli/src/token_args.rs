//! `switchboard token`: mints an HS256 signaling token for operators and tests.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::Context;
use clap::Args;
use switchboard_server::auth::{mint, Claims};

#[derive(Args, Debug)]
pub struct TokenArgs {
    /// The signing secret (the server's auth.secret).
    #[arg(long, env = "SWITCHBOARD_AUTH_SECRET", hide_env_values = true)]
    secret: String,
    /// Who the token is for.
    #[arg(long, default_value = "")]
    sub: String,
    /// Rooms the bearer may register: ids or `prefix*` patterns, comma-separated or repeated.
    #[arg(long, value_delimiter = ',')]
    rooms: Vec<String>,
    /// Rooms the bearer may call: ids or `prefix*` patterns.
    #[arg(long, value_delimiter = ',')]
    call: Vec<String>,
    /// Lifetime, e.g. `1h` or `30m`.
    #[arg(long, default_value = "1h", value_parser = humantime::parse_duration)]
    ttl: Duration,
}

pub fn run(args: TokenArgs) -> anyhow::Result<()> {
    anyhow::ensure!(!args.secret.is_empty(), "--secret must not be empty");
    let now = SystemTime::now().duration_since(UNIX_EPOCH).context("clock before 1970")?;
    let claims = Claims { exp: (now + args.ttl).as_secs(), sub: args.sub, rooms: args.rooms, call: args.call };
    println!("{}", mint(&args.secret, &claims).context("cannot sign the token")?);
    Ok(())
}
