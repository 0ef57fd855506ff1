//! The `switchboard` binary: a thin CLI over the library crates.
//!
//! `switchboard serve` runs the signaling server. Configuration layers, lowest first: built-in defaults, the TOML file
//! given with `--config`, environment variables (`SWITCHBOARD_*`), then flags.

mod bench_args;
mod serve_args;

use anyhow::Context;
use clap::{Parser, Subcommand};
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

#[derive(Subcommand)]
enum Command {
    /// Run the signaling server.
    Serve(serve_args::ServeArgs),
    /// Load-test a signaling server (prints one JSON summary line).
    Bench(bench_args::BenchArgs),
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

fn run(cli: Cli) -> anyhow::Result<()> {
    let filter = EnvFilter::try_new(&cli.log).with_context(|| format!("invalid --log filter {:?}", cli.log))?;
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
    let builder = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr).with_ansi(ansi);
    match cli.log_format {
        LogFormat::Text => builder.init(),
        LogFormat::Json => builder.json().init(),
    }
    match cli.command {
        Command::Serve(args) => runtime()?.block_on(serve(args)),
        // The load generator picks its own runtime flavour.
        Command::Bench(args) => bench_args::run(args),
    }
}

fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    tokio::runtime::Runtime::new().context("cannot start the tokio runtime")
}

async fn serve(args: serve_args::ServeArgs) -> anyhow::Result<()> {
    let config = args.into_config()?;
    let server = switchboard_server::Server::bind(config).await?;
    let stop = server.shutdown_token();
    tokio::spawn(async move {
        wait_for_signal().await;
        tracing::info!("signal received: shutting down");
        stop.cancel();
    });
    server.run().await?;
    Ok(())
}

async fn wait_for_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        () = ctrl_c => {}
        () = term => {}
    }
}
