//! `relay`: N pairs in a call send candidate indications both ways, each direction keeping at most `window`
//! messages in flight. Reports relayed msgs/s, latency percentiles, losses and server CPU per relayed message.
//!
//! Each message carries its sequence number and send time (nanoseconds since the run's start) in the candidate
//! value, which the server relays verbatim.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures_util::{SinkExt, StreamExt};
use hdrhistogram::Histogram;
use tokio::sync::Notify;
use tokio_tungstenite::tungstenite::Message;

use crate::conn::{connect_with, recv_text, request, send_text};

/// Bytes a sender gathers before writing: a window of candidates goes out in one `write`, not one per message.
const WRITE_BATCH: usize = 64 * 1024;
use crate::messages::{accept, call, register, value_after, CandidateTemplate};
use crate::proc_stats::CpuMeter;
use crate::report::{histogram, round2};
use crate::{BenchError, Nodes, Report};

pub struct RelayConfig {
    /// One server, or several nodes of one cluster (every pair then split across two of them).
    pub nodes: Nodes,
    pub pairs: usize,
    pub duration: Duration,
    pub window: u64,
}

/// The flow-control state of one direction.
#[derive(Default)]
struct Direction {
    sent: AtomicU64,
    received: AtomicU64,
    /// Messages that did not carry the next sequence number (each direction is one sender's stream: order is kept).
    out_of_order: AtomicU64,
    room_for_more: Notify,
}

pub async fn run(c: &RelayConfig) -> Result<Report, BenchError> {
    let run = std::process::id();
    let epoch = Instant::now();
    let stop = Arc::new(AtomicBool::new(false));
    let (done_tx, done) = tokio::sync::watch::channel(false);
    let mut senders = Vec::new();
    let mut receivers = Vec::new();
    let mut directions = Vec::new();
    for i in 0..c.pairs {
        let (a_room, b_room) = (format!("relay_a_{run}_{i}"), format!("relay_b_{run}_{i}"));
        let mut a = connect_with(c.nodes.first(i), 2 * i, WRITE_BATCH).await?;
        let mut b = connect_with(c.nodes.second(i), 2 * i + 1, WRITE_BATCH).await?;
        request(&mut a, register("r", &a_room)).await?;
        request(&mut b, register("r", &b_room)).await?;
        let guest = format!("{b_room}_g");
        send_text(&mut b, call("c", &guest, &a_room, "v=0")).await?;
        recv_text(&mut a).await?;
        send_text(&mut a, accept("c", &guest, &a_room, "v=0")).await?;
        recv_text(&mut b).await?;
        let (a_tx, a_rx) = a.split();
        let (b_tx, b_rx) = b.split();
        let (ab, ba) = (Arc::new(Direction::default()), Arc::new(Direction::default()));
        directions.push(ab.clone());
        directions.push(ba.clone());
        let template = |to_caller: bool| {
            let t = CandidateTemplate::new(&guest, &a_room);
            let dir = u8::from(to_caller);
            move |seq: u64, ns: u128| t.with(format_args!("bench {seq} {ns} {dir}"))
        };
        senders.push(tokio::spawn(send_loop(a_tx, ab.clone(), c.window, stop.clone(), epoch, template(true))));
        senders.push(tokio::spawn(send_loop(b_tx, ba.clone(), c.window, stop.clone(), epoch, template(false))));
        receivers.push(tokio::spawn(recv_loop(b_rx, ab, epoch, done.clone())));
        receivers.push(tokio::spawn(recv_loop(a_rx, ba, epoch, done.clone())));
    }
    let cpu = c.nodes.cpu_meters();
    let start = Instant::now();
    let received_at = |ds: &[Arc<Direction>]| ds.iter().map(|d| d.received.load(Ordering::Relaxed)).sum::<u64>();
    let base = received_at(&directions);
    let mut last = base;
    while start.elapsed() < c.duration {
        tokio::time::sleep(Duration::from_secs(1).min(c.duration)).await;
        let now = received_at(&directions);
        eprintln!("relay: {} msgs/s", now - last);
        last = now;
    }
    let measured = received_at(&directions) - base;
    let elapsed = start.elapsed();
    let cpu_used = CpuMeter::sum(&cpu.iter().collect::<Vec<_>>());
    stop.store(true, Ordering::Relaxed);
    for d in &directions {
        d.room_for_more.notify_one();
    }
    for s in senders {
        let _ = s.await;
    }
    // Drain: everything sent must arrive.
    let sent: u64 = directions.iter().map(|d| d.sent.load(Ordering::Relaxed)).sum();
    let drain_deadline = Instant::now() + Duration::from_secs(5);
    while received_at(&directions) < sent && Instant::now() < drain_deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let lost = sent.saturating_sub(received_at(&directions));
    let mut all: Histogram<u64> = histogram();
    let _ = done_tx.send(true);
    for r in receivers {
        if let Ok(h) = r.await {
            let _ = all.add(&h);
        }
    }
    let mut r = Report::new("relay");
    r.set("pairs", c.pairs);
    r.set("nodes", c.nodes.count());
    r.set("cross_node", c.nodes.count() > 1);
    r.set("window", c.window);
    r.set("relayed", measured);
    r.set("msgs_per_s", round2(measured as f64 / elapsed.as_secs_f64()));
    r.set("sent_total", sent);
    r.set("lost", lost);
    r.set("out_of_order", directions.iter().map(|d| d.out_of_order.load(Ordering::Relaxed)).sum::<u64>());
    r.latency("latency", &all);
    r.cpu_per("server_cpu_us_per_msg", cpu_used, measured);
    Ok(r)
}

async fn send_loop<S>(
    mut sink: S,
    dir: Arc<Direction>,
    window: u64,
    stop: Arc<AtomicBool>,
    epoch: Instant,
    msg: impl Fn(u64, u128) -> String,
) where
    S: futures_util::Sink<Message> + Unpin,
{
    let mut seq = 0u64;
    while !stop.load(Ordering::Relaxed) {
        let wait = dir.room_for_more.notified();
        let in_flight = seq - dir.received.load(Ordering::Acquire);
        if in_flight >= window {
            wait.await;
            continue;
        }
        for _ in 0..(window - in_flight) {
            if sink.feed(Message::Text(msg(seq, epoch.elapsed().as_nanos()).into())).await.is_err() {
                return;
            }
            seq += 1;
        }
        dir.sent.store(seq, Ordering::Release);
        if sink.flush().await.is_err() {
            return;
        }
    }
}

async fn recv_loop<S>(
    mut stream: S,
    dir: Arc<Direction>,
    epoch: Instant,
    mut done: tokio::sync::watch::Receiver<bool>,
) -> Histogram<u64>
where
    S: futures_util::Stream<Item = Result<Message, tokio_tungstenite::tungstenite::Error>> + Unpin,
{
    let mut h = histogram();
    loop {
        let frame = tokio::select! {
            f = stream.next() => match f {
                Some(Ok(f)) => f,
                _ => break,
            },
            _ = done.changed() => break,
        };
        let Message::Text(t) = frame else { continue };
        let Some(value) = value_after(t.as_str(), "\"candidate\":\"") else { continue };
        let mut parts = value.split(' ').skip(1);
        let seq = parts.next().and_then(|s| s.parse::<u64>().ok());
        if seq != Some(dir.received.load(Ordering::Acquire)) {
            dir.out_of_order.fetch_add(1, Ordering::Relaxed);
        }
        if let Some(sent_ns) = parts.next().and_then(|s| s.parse::<u128>().ok()) {
            let us = (epoch.elapsed().as_nanos().saturating_sub(sent_ns) / 1000) as u64;
            let _ = h.record(us.max(1));
        }
        dir.received.fetch_add(1, Ordering::AcqRel);
        dir.room_for_more.notify_one();
    }
    h
}
