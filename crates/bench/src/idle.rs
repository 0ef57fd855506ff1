//! `idle`: connect and register N rooms, hold them, report the rate and the server's RSS per room, then
//! disconnect and report how far RSS came back.

use std::time::{Duration, Instant};

use futures_util::{stream, StreamExt};

use crate::conn::{connect, request, Ws};
use crate::messages::register;
use crate::proc_stats::rss_bytes;
use crate::report::round2;
use crate::{BenchError, Report};

pub struct IdleConfig {
    pub url: String,
    pub conns: usize,
    /// How long to hold the rooms once all are registered.
    pub hold: Duration,
    pub server_pid: Option<u32>,
    /// Connections opened at once.
    pub concurrency: usize,
}

pub async fn run(c: &IdleConfig) -> Result<Report, BenchError> {
    let rss_base = c.server_pid.and_then(rss_bytes);
    let run_id = std::process::id();
    let start = Instant::now();
    let opened: Vec<Result<Ws, BenchError>> = stream::iter(0..c.conns)
        .map(|i| {
            let url = c.url.clone();
            async move {
                let mut ws = connect(&url, i).await?;
                request(&mut ws, register(&format!("t{i}"), &format!("idle_{run_id}_{i}"))).await?;
                Ok(ws)
            }
        })
        .buffer_unordered(c.concurrency.max(1))
        .collect()
        .await;
    let elapsed = start.elapsed();
    let mut conns = Vec::with_capacity(opened.len());
    for r in opened {
        conns.push(r?);
    }
    eprintln!("idle: {} rooms registered in {:.2}s", conns.len(), elapsed.as_secs_f64());
    tokio::time::sleep(c.hold).await;
    let rss_held = c.server_pid.and_then(rss_bytes);
    drop(conns);
    // Let the server notice every close.
    let rss_after = match c.server_pid {
        Some(pid) => settle_rss(pid).await,
        None => None,
    };

    let mut r = Report::new("idle");
    r.set("conns", c.conns);
    r.set("register_per_s", round2(c.conns as f64 / elapsed.as_secs_f64()));
    if let (Some(base), Some(held)) = (rss_base, rss_held) {
        r.set("server_rss_base_kib", base / 1024);
        r.set("server_rss_held_kib", held / 1024);
        r.set("server_rss_per_room_kib", round2((held.saturating_sub(base)) as f64 / 1024.0 / c.conns as f64));
    }
    if let Some(after) = rss_after {
        r.set("server_rss_after_close_kib", after / 1024);
    }
    Ok(r)
}

/// Waits until the server's RSS has stopped shrinking: at least 3 s (sessions linger up to 2 s for the close
/// handshake), then until two readings a second apart agree, at most 15 s.
async fn settle_rss(pid: u32) -> Option<u64> {
    tokio::time::sleep(Duration::from_secs(3)).await;
    let mut last = rss_bytes(pid)?;
    for _ in 0..12 {
        tokio::time::sleep(Duration::from_secs(1)).await;
        let now = rss_bytes(pid)?;
        if now >= last {
            return Some(now);
        }
        last = now;
    }
    Some(last)
}
