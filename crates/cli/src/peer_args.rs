//! `switchboard peer …`: WebRTC endpoints over the signaling server (a thin layer over `switchboard_peer`).
//!
//! Invariants: the library does the work and never prints; this module parses flags, prints progress to stderr and
//! the one-line summary to stdout, and turns "too few frames" into a nonzero exit (an error).

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::bail;
use clap::{Args, Subcommand};
use switchboard_peer::{CallSummary, CallerConfig, EndReason, PlayConfig, Progress, PushConfig, ServeConfig};

#[derive(Args)]
pub struct PeerArgs {
    #[command(subcommand)]
    command: PeerCommand,
}

#[derive(Subcommand)]
enum PeerCommand {
    /// Keep a room: answer `play` calls with a looping H.264 file, record `push` calls.
    Serve(ServeArgs),
    /// Call a room with `type: play` and receive its video.
    Play(PlayArgs),
    /// Call a room with `type: push` and send a looping H.264 file.
    Push(PushArgs),
}

/// Flags every endpoint has.
#[derive(Args)]
struct Common {
    /// Signaling URL, e.g. `ws://127.0.0.1:3000/signaling`.
    #[arg(long)]
    server: String,
    /// The room to keep (serve) or to call (play, push).
    #[arg(long)]
    room: String,
    /// Local address for the WebRTC UDP sockets; `0.0.0.0:0` binds every interface.
    #[arg(long, default_value = "0.0.0.0:0")]
    bind: SocketAddr,
}

#[derive(Args)]
struct ServeArgs {
    #[command(flatten)]
    common: Common,
    /// H.264 Annex-B file (`.h264`) sent to players, looped.
    #[arg(long)]
    media: PathBuf,
    /// Frame rate the file is sent at.
    #[arg(long, default_value_t = 30)]
    fps: u32,
    /// Directory for recordings of push calls (`<guest id>.h264`).
    #[arg(long, default_value = ".")]
    record_dir: PathBuf,
    /// Most calls served at once.
    #[arg(long, default_value_t = 16)]
    max_calls: usize,
}

/// Flags of the calling side.
#[derive(Args)]
struct CallArgs {
    #[command(flatten)]
    common: Common,
    /// The call's `stream` field; default: the room.
    #[arg(long)]
    stream: Option<String>,
    /// Stop after this long, e.g. `10s`.
    #[arg(long, value_parser = humantime::parse_duration)]
    duration: Option<Duration>,
    /// Use only TURN relay candidates.
    #[arg(long)]
    relay_only: bool,
}

impl CallArgs {
    fn into_config(self) -> CallerConfig {
        let mut c = CallerConfig::new(self.common.server, self.common.room);
        c.stream = self.stream;
        c.duration = self.duration;
        c.relay_only = self.relay_only;
        c.bind = self.common.bind;
        c
    }
}

#[derive(Args)]
struct PlayArgs {
    #[command(flatten)]
    call: CallArgs,
    /// Write the received video (H.264 Annex-B) to this file.
    #[arg(long)]
    out: Option<PathBuf>,
    /// Exit nonzero unless at least this many frames arrived.
    #[arg(long, default_value_t = 1)]
    min_frames: u64,
}

#[derive(Args)]
struct PushArgs {
    #[command(flatten)]
    call: CallArgs,
    /// H.264 Annex-B file (`.h264`) to send, looped.
    #[arg(long)]
    media: PathBuf,
    #[arg(long, default_value_t = 30)]
    fps: u32,
}

pub async fn run(args: PeerArgs) -> anyhow::Result<()> {
    match args.command {
        PeerCommand::Serve(a) => {
            let mut config = ServeConfig::new(a.common.server, a.common.room, a.media);
            config.fps = a.fps;
            config.record_dir = a.record_dir;
            config.bind = a.common.bind;
            config.max_calls = a.max_calls;
            let summary = switchboard_peer::serve(config, shutdown_signal()).await?;
            println!(
                "served {} calls, rejected {}, recorded {}",
                summary.calls,
                summary.rejected,
                summary.recordings.len()
            );
            Ok(())
        }
        PeerCommand::Play(a) => {
            let config = PlayConfig { call: a.call.into_config(), out: a.out };
            let summary = switchboard_peer::play(config, shutdown_signal(), print_progress).await?;
            report(&summary);
            if summary.received.frames < a.min_frames {
                bail!("received {} frames, fewer than --min-frames {}", summary.received.frames, a.min_frames);
            }
            Ok(())
        }
        PeerCommand::Push(a) => {
            let config = PushConfig { call: a.call.into_config(), media: a.media, fps: a.fps };
            let summary = switchboard_peer::push(config, shutdown_signal(), print_progress).await?;
            report(&summary);
            if summary.frames_sent == 0 {
                bail!("no frames were sent");
            }
            Ok(())
        }
    }
}

/// The selected pair as `local/remote` candidate types, or `unknown` when stats do not name one.
fn pair(p: &Option<String>) -> &str {
    p.as_deref().unwrap_or("unknown")
}

fn print_progress(p: &Progress) {
    let r = &p.received;
    eprintln!(
        "[{:>4}s] frames={} sent={} bytes={} bitrate={:.1}kbit/s dropped={} pair={}",
        p.elapsed.as_secs(),
        r.frames,
        p.frames_sent,
        r.bytes,
        p.bitrate / 1000.0,
        r.dropped_frames,
        pair(&p.pair)
    );
}

/// One line, `key=value` fields without spaces except the free-text `reason` last.
fn report(s: &CallSummary) {
    match &s.end {
        EndReason::PeerBye(reason) => eprintln!("call ended by peer: {reason}"),
        EndReason::ConnectionFailed(reason) => eprintln!("call failed: {reason}"),
        EndReason::ConnectTimeout => eprintln!("call failed: no WebRTC connection within the connect timeout"),
        EndReason::Duration | EndReason::Shutdown => {}
    }
    let secs = s.elapsed.as_secs_f64();
    let kbps = s.received.bytes as f64 * 8.0 / secs.max(1e-3) / 1000.0;
    let (end, reason) = match &s.end {
        EndReason::Duration => ("duration", ""),
        EndReason::Shutdown => ("interrupted", ""),
        EndReason::PeerBye(r) => ("bye", r.as_str()),
        EndReason::ConnectionFailed(r) => ("failed", r.as_str()),
        EndReason::ConnectTimeout => ("connect-timeout", ""),
    };
    println!(
        "summary: frames={} sent={} bytes={} dropped={} avg_bitrate={kbps:.1}kbit/s duration={secs:.1}s \
         connected={} pair={} end={end} reason={reason}",
        s.received.frames,
        s.frames_sent,
        s.received.bytes,
        s.received.dropped_frames,
        s.connected,
        pair(&s.pair)
    );
}

/// Completes on Ctrl-C or SIGTERM.
async fn shutdown_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        let mut term = match signal(SignalKind::terminate()) {
            Ok(s) => s,
            Err(_) => {
                let _ = tokio::signal::ctrl_c().await;
                return;
            }
        };
        tokio::select! {
            _ = tokio::signal::ctrl_c() => {}
            _ = term.recv() => {}
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
}
