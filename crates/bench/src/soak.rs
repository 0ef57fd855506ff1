//! `soak`: every kind of load at once for a long time — idle rooms held open, paced call flows, paced relay streams
//! and connect/register/leave churn — sampling the server every `interval`: RSS, open descriptors, threads, and from
//! its `/metrics` the open sessions, the tasks alive on its runtime and the rooms, beside the latency percentiles of
//! that interval.
//!
//! Invariants checked, and reported rather than assumed:
//! - **no lost message**: every relayed candidate carries its sequence number; a receiver that sees a gap or a
//!   reordering counts it, and after the senders stop every one sent must have arrived;
//! - **no leaked room**: once every client has left, every room id used (idle, pairs, churn) can be registered
//!   again, and the server's `switchboard_rooms` gauge is back to what it was before the run.
//!
//! The load is paced (not as fast as possible): a soak looks for what grows or stalls over time, not for the
//! ceiling, which the other scenarios measure.

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures_util::{stream, SinkExt, StreamExt};
use hdrhistogram::Histogram;
use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_tungstenite::tungstenite::Message;

use crate::calls::{flow, open_pair};
use crate::churn::verify_free;
use crate::conn::{authority, connect, request, Ws};
use crate::messages::{accept, call, field, register, sdp, unregister, CandidateTemplate};
use crate::proc_stats::rss_bytes;
use crate::report::{histogram, round2};
use crate::{BenchError, Report};

pub struct SoakConfig {
    pub url: String,
    pub duration: Duration,
    /// Time between samples.
    pub interval: Duration,
    /// Rooms registered at the start and held (each reads, so it answers the server's pings).
    pub idle: usize,
    /// Caller/callee pairs, each running one full call flow per `flow_every`.
    pub call_pairs: usize,
    pub flow_every: Duration,
    /// Pairs in an answered call relaying candidates both ways, `relay_rate` per second in each direction.
    pub relay_pairs: usize,
    pub relay_rate: u32,
    /// Workers looping connect → register → leave, one session per `churn_every` each.
    pub churners: usize,
    pub churn_every: Duration,
    pub server_pid: Option<u32>,
}

/// What every worker adds to; the sampler takes the histograms at each interval.
#[derive(Default)]
struct Stats {
    flows: AtomicU64,
    relay_sent: AtomicU64,
    relay_received: AtomicU64,
    /// Gaps and reorderings seen by the relay receivers.
    relay_disorder: AtomicU64,
    churned: AtomicU64,
    /// Flows or churn sessions that failed (a reject, a close, a timeout).
    errors: AtomicU64,
    setup: Mutex<Option<Histogram<u64>>>,
    relay: Mutex<Option<Histogram<u64>>>,
}

impl Stats {
    fn record(slot: &Mutex<Option<Histogram<u64>>>, took: Duration) {
        let mut h = slot.lock().unwrap_or_else(|e| e.into_inner());
        let _ = h.get_or_insert_with(histogram).record(took.as_micros().max(1) as u64);
    }

    fn take(slot: &Mutex<Option<Histogram<u64>>>) -> Option<Histogram<u64>> {
        slot.lock().unwrap_or_else(|e| e.into_inner()).take()
    }
}

/// Open descriptors and threads of a process.
fn fds_and_threads(pid: u32) -> (Option<usize>, Option<usize>) {
    let count = |dir: String| std::fs::read_dir(dir).ok().map(|d| d.count());
    (count(format!("/proc/{pid}/fd")), count(format!("/proc/{pid}/task")))
}

/// One gauge from the server's `/metrics` (plain HTTP on the signaling listener).
async fn gauge(url: &str, name: &str) -> Option<f64> {
    let addr = authority(url).ok()?;
    let mut tcp = tokio::net::TcpStream::connect(addr).await.ok()?;
    tcp.write_all(b"GET /metrics HTTP/1.1\r\nHost: soak\r\nConnection: close\r\n\r\n").await.ok()?;
    let mut body = String::new();
    tokio::time::timeout(Duration::from_secs(5), tcp.read_to_string(&mut body)).await.ok()?.ok()?;
    body.lines().find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.trim().parse().ok())
}

fn percentiles(h: Option<Histogram<u64>>) -> Value {
    let ms = |us: u64| round2(us as f64 / 1000.0);
    match h {
        Some(h) => json!({"count": h.len(), "p50_ms": ms(h.value_at_quantile(0.5)),
                          "p99_ms": ms(h.value_at_quantile(0.99)), "max_ms": ms(h.max())}),
        None => json!({"count": 0}),
    }
}

/// A relay pair in an answered call: the caller's and the callee's halves, each sending and receiving.
async fn relay_pair(url: &str, i: usize, run: u32) -> Result<(Ws, Ws, String, String), BenchError> {
    let (caller_room, callee_room) = (format!("soakrc_{run}_{i}"), format!("soakre_{run}_{i}"));
    let mut caller = connect(url, 2 * i).await?;
    let mut callee = connect(url, 2 * i + 1).await?;
    request(&mut caller, register("r", &caller_room)).await?;
    request(&mut callee, register("r", &callee_room)).await?;
    let guest = format!("g{i}");
    crate::conn::send_text(&mut caller, call("c", &guest, &callee_room, &sdp(2000, "actpass"))).await?;
    crate::conn::recv_text(&mut callee).await?;
    crate::conn::send_text(&mut callee, accept("c", &guest, &callee_room, &sdp(1000, "active"))).await?;
    crate::conn::recv_text(&mut caller).await?;
    Ok((caller, callee, guest, callee_room))
}

/// Sends `s<seq> t<µs since start>` candidates at `rate` per second until `deadline`.
async fn relay_send(
    mut tx: futures_util::stream::SplitSink<Ws, Message>,
    template: CandidateTemplate,
    rate: u32,
    epoch: Instant,
    deadline: Instant,
    stats: Arc<Stats>,
) -> Result<u64, BenchError> {
    let mut tick = tokio::time::interval(Duration::from_secs(1) / rate.max(1));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut seq = 0u64;
    while Instant::now() < deadline {
        tick.tick().await;
        let text = template.with(format_args!("s{seq} t{}", epoch.elapsed().as_micros()));
        tx.send(Message::Text(text.into())).await.map_err(|e| BenchError::Protocol(e.to_string()))?;
        stats.relay_sent.fetch_add(1, Relaxed);
        seq += 1;
    }
    Ok(seq)
}

/// Reads candidates until `sent` (known once the sender stops) have arrived or `give_up` passes; returns how many.
async fn relay_receive(
    mut rx: futures_util::stream::SplitStream<Ws>,
    epoch: Instant,
    sent: tokio::sync::watch::Receiver<Option<u64>>,
    stats: Arc<Stats>,
) -> u64 {
    let mut next = 0u64;
    let mut got = 0u64;
    loop {
        if let Some(total) = *sent.borrow() {
            if got >= total {
                return got;
            }
        }
        let msg = match tokio::time::timeout(Duration::from_secs(1), rx.next()).await {
            Ok(Some(Ok(Message::Text(t)))) => t,
            Ok(Some(Ok(_))) => continue,
            Ok(_) => return got,
            // Quiet for a second: done if the sender has stopped, else keep waiting.
            Err(_) if sent.borrow().is_some() => return got,
            Err(_) => continue,
        };
        let Some(value) = field(msg.as_str(), "candidate") else { continue };
        let mut parts = value.split(' ');
        let seq = parts.next().and_then(|s| s.strip_prefix('s')?.parse::<u64>().ok());
        let at = parts.next().and_then(|s| s.strip_prefix('t')?.parse::<u128>().ok());
        let (Some(seq), Some(at)) = (seq, at) else { continue };
        if seq != next {
            stats.relay_disorder.fetch_add(1, Relaxed);
        }
        next = seq + 1;
        got += 1;
        stats.relay_received.fetch_add(1, Relaxed);
        let now = epoch.elapsed().as_micros();
        Stats::record(&stats.relay, Duration::from_micros(now.saturating_sub(at) as u64));
    }
}

/// An idle room keeper: holds its room and reads (answering pings) until `leave` turns true.
async fn hold(mut ws: Ws, mut leave: tokio::sync::watch::Receiver<bool>) {
    loop {
        tokio::select! {
            m = ws.next() => {
                if !matches!(m, Some(Ok(_))) {
                    return;
                }
            }
            left = leave.wait_for(|v| *v) => {
                drop(left);
                break;
            }
        }
    }
    let _ = ws.close(None).await;
}

pub async fn run(c: &SoakConfig) -> Result<Report, BenchError> {
    let run = std::process::id();
    let stats = Arc::new(Stats::default());
    let rooms_before = gauge(&c.url, "switchboard_rooms").await;
    let (leave_tx, leave) = tokio::sync::watch::channel(false);

    // Idle rooms, opened 256 at a time.
    let started = Instant::now();
    let idle_rooms: Vec<String> = (0..c.idle).map(|i| format!("soakidle_{run}_{i}")).collect();
    let opened: Vec<Result<Ws, BenchError>> = stream::iter(idle_rooms.clone().into_iter().enumerate())
        .map(|(i, room)| {
            let url = c.url.clone();
            async move {
                let mut ws = connect(&url, i).await?;
                request(&mut ws, register("t", &room)).await?;
                Ok(ws)
            }
        })
        .buffer_unordered(256)
        .collect()
        .await;
    let mut holders = Vec::new();
    for ws in opened {
        holders.push(tokio::spawn(hold(ws?, leave.clone())));
    }
    eprintln!("soak: {} idle rooms in {:.1}s", c.idle, started.elapsed().as_secs_f64());

    let epoch = Instant::now();
    let deadline = epoch + c.duration;
    let mut workers = Vec::new();
    let mut pair_rooms = Vec::new();

    // Call flows, paced.
    let (offer, answer) = (sdp(6000, "actpass"), sdp(3000, "active"));
    for i in 0..c.call_pairs {
        let mut p = open_pair(&c.url, &c.url, 100_000 + i, run).await?;
        pair_rooms.push(format!("caller_{run}_{}", 100_000 + i));
        pair_rooms.push(format!("callee_{run}_{}", 100_000 + i));
        let (offer, answer, stats, every) = (offer.clone(), answer.clone(), stats.clone(), c.flow_every);
        workers.push(tokio::spawn(async move {
            let mut tick = tokio::time::interval(every);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            let mut n = 0;
            while Instant::now() < deadline {
                tick.tick().await;
                match tokio::time::timeout(Duration::from_secs(10), flow(&mut p, n, &offer, &answer)).await {
                    Ok(Ok(setup)) => {
                        stats.flows.fetch_add(1, Relaxed);
                        Stats::record(&stats.setup, setup);
                    }
                    // A broken pair cannot go on (its connections' state is unknown): count it and stop.
                    _ => {
                        stats.errors.fetch_add(1, Relaxed);
                        return;
                    }
                }
                n += 1;
            }
        }));
    }

    // Relay streams, paced, both ways.
    let mut receivers = Vec::new();
    for i in 0..c.relay_pairs {
        let (caller, callee, guest, room) = relay_pair(&c.url, i, run).await?;
        pair_rooms.push(format!("soakrc_{run}_{i}"));
        pair_rooms.push(room.clone());
        let (caller_tx, caller_rx) = caller.split();
        let (callee_tx, callee_rx) = callee.split();
        for (tx, rx) in [(caller_tx, callee_rx), (callee_tx, caller_rx)] {
            let (done_tx, done_rx) = tokio::sync::watch::channel(None);
            let template = CandidateTemplate::new(&guest, &room);
            let (stats_tx, stats_rx, rate) = (stats.clone(), stats.clone(), c.relay_rate);
            workers.push(tokio::spawn(async move {
                let sent = relay_send(tx, template, rate, epoch, deadline, stats_tx).await.unwrap_or(0);
                let _ = done_tx.send(Some(sent));
            }));
            receivers.push(tokio::spawn(relay_receive(rx, epoch, done_rx, stats_rx)));
        }
    }

    // Churn, paced.
    let churned_rooms = Arc::new(Mutex::new(Vec::new()));
    for w in 0..c.churners {
        let (url, stats, rooms, every) = (c.url.clone(), stats.clone(), churned_rooms.clone(), c.churn_every);
        workers.push(tokio::spawn(async move {
            let mut tick = tokio::time::interval(every);
            let mut n = 0usize;
            while Instant::now() < deadline {
                tick.tick().await;
                let room = format!("soakchurn_{run}_{w}_{n}");
                let session = async {
                    let mut ws = connect(&url, w).await?;
                    request(&mut ws, register("r", &room)).await?;
                    if n.is_multiple_of(2) {
                        request(&mut ws, unregister("u", &room)).await?;
                        let _ = ws.close(None).await;
                    }
                    Ok::<_, BenchError>(())
                };
                let _ = match tokio::time::timeout(Duration::from_secs(10), session).await {
                    Ok(Ok(())) => stats.churned.fetch_add(1, Relaxed),
                    _ => stats.errors.fetch_add(1, Relaxed),
                };
                rooms.lock().unwrap_or_else(|e| e.into_inner()).push(room);
                n += 1;
            }
        }));
    }

    // Sample until the deadline.
    let mut samples = Vec::new();
    let mut tick = tokio::time::interval(c.interval);
    tick.tick().await;
    while Instant::now() < deadline {
        tick.tick().await;
        let (fds, threads) = c.server_pid.map(fds_and_threads).unwrap_or((None, None));
        let sample = json!({
            "t_s": round2(epoch.elapsed().as_secs_f64()),
            "rss_kib": c.server_pid.and_then(rss_bytes).map(|b| b / 1024),
            "fds": fds,
            "threads": threads,
            "sessions": gauge(&c.url, "switchboard_connections_open").await,
            "tasks": gauge(&c.url, "switchboard_runtime_tasks").await,
            "rooms": gauge(&c.url, "switchboard_rooms").await,
            "flows": stats.flows.load(Relaxed),
            "relayed": stats.relay_received.load(Relaxed),
            "churned": stats.churned.load(Relaxed),
            "errors": stats.errors.load(Relaxed),
            "call_to_accept": percentiles(Stats::take(&stats.setup)),
            "relay": percentiles(Stats::take(&stats.relay)),
        });
        eprintln!("soak: {sample}");
        samples.push(sample);
    }

    // Wind down: senders stop at the deadline, receivers drain, then everyone leaves.
    for w in workers {
        let _ = w.await;
    }
    let mut received = 0;
    for r in receivers {
        received += r.await.unwrap_or(0);
    }
    let sent = stats.relay_sent.load(Relaxed);
    let _ = leave_tx.send(true);
    for h in holders {
        let _ = h.await;
    }
    let mut used = idle_rooms;
    used.extend(pair_rooms);
    used.extend(churned_rooms.lock().unwrap_or_else(|e| e.into_inner()).drain(..));
    // Pair connections close when their tasks end (dropped above); verify_free retries ids the server has not
    // released yet.
    let leaked = verify_free(&c.url, &used).await?;
    let rooms_after = gauge(&c.url, "switchboard_rooms").await;

    let mut r = Report::new("soak");
    r.set("duration_s", c.duration.as_secs_f64());
    r.set("idle_rooms", c.idle);
    r.set("connections", c.idle + 2 * (c.call_pairs + c.relay_pairs) + c.churners);
    r.set("flows", stats.flows.load(Relaxed));
    r.set("churned_sessions", stats.churned.load(Relaxed));
    r.set("errors", stats.errors.load(Relaxed));
    r.set("relay_sent", sent);
    r.set("relay_received", received);
    r.set("relay_lost", sent.saturating_sub(received));
    r.set("relay_out_of_order", stats.relay_disorder.load(Relaxed));
    r.set("rooms_checked", used.len());
    r.set("leaked_rooms", leaked.len());
    if !leaked.is_empty() {
        r.set("leaked_examples", leaked.iter().take(5).cloned().collect::<Vec<_>>());
    }
    r.set("server_rooms_before", rooms_before);
    r.set("server_rooms_after", rooms_after);
    r.set("samples", samples);
    Ok(r)
}
