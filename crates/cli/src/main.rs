//! The `switchboard` binary: a thin CLI over the library crates.
//!
//! `switchboard serve` runs the signaling server. Configuration layers, lowest first: built-in defaults, the TOML file
//! given with `--config`, environment variables (`SWITCHBOARD_*`), then flags.

mod bench_args;
mod peer_args;
mod serve_args;
mod token_args;

/// mimalloc: thousands of small per-session buffers come and go; it keeps fragmentation low and hands freed pages
/// back to the OS, so the server's RSS returns near its baseline after a crowd leaves (glibc's arenas did not).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

use std::sync::Arc;

use anyhow::Context;
use clap::{Parser, Subcommand};
use switchboard_server::admin::LogControl;
use tracing_subscriber::EnvFilter;

#[derive(Parser)]
#[command(name = "switchboard", version, about = "WebRTC signaling server, wire-compatible with ZLMediaKit")]
struct Cli {
    /// Log filter (tracing EnvFilter syntax), e.g. `info` or `switchboard_server=debug`.
    #[arg(long, env = "SWITCHBOARD_LOG", default_value = "info", global = true)]
    log: String,
    /// Log format.
    #[arg(long, env = "SWITCHBOARD_LOG_FORMAT", value_enum, default_value = "text", global = true)]
    log_format: LogFormat,
    #[command(subcommand)]
    command: Command,
}

#[derive(Clone, Copy, clap::ValueEnum)]
enum LogFormat {
    Text,
    Json,
}

// Parsed once at start; the size difference between variants does not matter.
#[allow(clippy::large_enum_variant)]
#[derive(Subcommand)]
enum Command {
    /// Run the signaling server.
    Serve(serve_args::ServeArgs),
    /// Load-test a signaling server (prints one JSON summary line).
    Bench(bench_args::BenchArgs),
    /// Mint a signaling token (HS256 JWT) for auth-enabled servers.
    Token(token_args::TokenArgs),
    /// WebRTC endpoints: keep a room serving/recording H.264 (`serve`), or call one (`play`, `push`).
    Peer(peer_args::PeerArgs),
}

fn main() -> std::process::ExitCode {
    match run(Cli::parse()) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

/// mimalloc's `mi_option_purge_delay` (mimalloc.h, `mi_option_e`; the same index in v2 and v3).
const MI_OPTION_PURGE_DELAY: libmimalloc_sys::mi_option_t = 15;

/// Free pages go back to the OS at once. With mimalloc's default delay the purge only runs when the freeing thread
/// allocates again, so after a crowd of sessions leaves an idle server would keep its peak RSS indefinitely.
fn return_freed_memory_promptly() {
    // SAFETY: sets a process-global allocator option; mimalloc documents it as callable at any time.
    unsafe { libmimalloc_sys::mi_option_set(MI_OPTION_PURGE_DELAY, 0) };
}

fn run(cli: Cli) -> anyhow::Result<()> {
    return_freed_memory_promptly();
    let log_control = init_logging(&cli.log, cli.log_format)?;
    match cli.command {
        Command::Serve(args) => runtime()?.block_on(serve(args, log_control, &cli.log)),
        // The load generator picks its own runtime flavour.
        Command::Bench(args) => bench_args::run(args),
        Command::Token(args) => token_args::run(args),
        Command::Peer(args) => runtime()?.block_on(peer_args::run(args)),
    }
}

/// Installs the tracing subscriber; the returned control swaps its filter at runtime (admin API).
fn init_logging(filter: &str, format: LogFormat) -> anyhow::Result<LogControl> {
    use tracing_subscriber::layer::SubscriberExt;
    use tracing_subscriber::util::SubscriberInitExt;
    let env_filter = EnvFilter::try_new(filter).with_context(|| format!("invalid --log filter {filter:?}"))?;
    let (filter_layer, handle) = tracing_subscriber::reload::Layer::new(env_filter);
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
    let registry = tracing_subscriber::registry().with(filter_layer);
    let fmt = tracing_subscriber::fmt::layer().with_writer(std::io::stderr).with_ansi(ansi);
    match format {
        LogFormat::Text => registry.with(fmt).init(),
        LogFormat::Json => registry.with(fmt.json()).init(),
    }
    Ok(Arc::new(move |new: &str| {
        let f = EnvFilter::try_new(new).map_err(|e| format!("invalid filter {new:?}: {e}"))?;
        handle.reload(f).map_err(|e| e.to_string())
    }))
}

fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    tokio::runtime::Runtime::new().context("cannot start the tokio runtime")
}

async fn serve(args: serve_args::ServeArgs, log_control: LogControl, log_filter: &str) -> anyhow::Result<()> {
    let config = args.into_config()?;
    // Before binding: once "signaling listening" is logged a supervisor (or a test) may send SIGTERM at once, and a
    // signal that came before its handler would kill the process instead of shutting it down gracefully.
    let signal = shutdown_signal();
    let mut server = switchboard_server::Server::bind(config).await?;
    server.set_log_control(log_control, log_filter);
    let stop = server.shutdown_token();
    tokio::spawn(async move {
        signal.await;
        tracing::info!("signal received: shutting down");
        stop.cancel();
    });
    server.run().await?;
    Ok(())
}

/// SIGINT or SIGTERM, with both handlers installed when this returns (not when the future is first polled).
fn shutdown_signal() -> impl std::future::Future<Output = ()> {
    #[cfg(unix)]
    let (mut int, mut term) = {
        use tokio::signal::unix::{signal, SignalKind};
        (signal(SignalKind::interrupt()).ok(), signal(SignalKind::terminate()).ok())
    };
    async move {
        #[cfg(unix)]
        {
            let int = async {
                match int.as_mut() {
                    Some(s) => drop(s.recv().await),
                    None => std::future::pending::<()>().await,
                }
            };
            let term = async {
                match term.as_mut() {
                    Some(s) => drop(s.recv().await),
                    None => std::future::pending::<()>().await,
                }
            };
            tokio::select! {
                () = int => {}
                () = term => {}
            }
        }
        #[cfg(not(unix))]
        let _ = tokio::signal::ctrl_c().await;
    }
}
