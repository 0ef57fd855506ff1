//! `calls`: full call flows between N caller/callee pairs: call (≈6 KB offer) → accept (≈3 KB answer) →
//! 2 candidates each way → bye. Reports flows/s, call→accept latency, and server CPU per flow.

use std::time::{Duration, Instant};

use hdrhistogram::Histogram;

use crate::conn::{connect_with, feed_text, flush, recv_text, request, send_text, Ws};

/// Bytes gathered before a write; `send_text` flushes each request, candidate bursts go out together.
const WRITE_BATCH: usize = 16 * 1024;
use crate::messages::{accept, bye, call, candidate, field, register, sdp};
use crate::proc_stats::CpuMeter;
use crate::report::{histogram, round2};
use crate::{BenchError, Nodes, Report};

pub struct CallsConfig {
    /// One server, or several nodes of one cluster (every pair then split across two of them).
    pub nodes: Nodes,
    pub pairs: usize,
    pub duration: Duration,
}

pub(crate) struct Pair {
    caller: Ws,
    callee: Ws,
    caller_room: String,
    callee_room: String,
}

pub(crate) async fn open_pair(url: &str, peer_url: &str, i: usize, run: u32) -> Result<Pair, BenchError> {
    let (caller_room, callee_room) = (format!("caller_{run}_{i}"), format!("callee_{run}_{i}"));
    let mut caller = connect_with(url, 2 * i, WRITE_BATCH).await?;
    let mut callee = connect_with(peer_url, 2 * i + 1, WRITE_BATCH).await?;
    request(&mut caller, register("r", &caller_room)).await?;
    request(&mut callee, register("r", &callee_room)).await?;
    Ok(Pair { caller, callee, caller_room, callee_room })
}

fn expect<'a>(text: &'a str, key: &str, want: &str) -> Result<&'a str, BenchError> {
    match field(text, key) {
        Some(v) if v == want => Ok(text),
        _ => Err(BenchError::Protocol(format!("expected {key}={want}, got {}", &text[..text.len().min(200)]))),
    }
}

/// One complete flow; returns the call→accept latency.
pub(crate) async fn flow(p: &mut Pair, n: u64, offer: &str, answer: &str) -> Result<Duration, BenchError> {
    let guest = format!("{}_{n}", p.caller_room);
    let tid = format!("call{n}");
    let t0 = Instant::now();
    send_text(&mut p.caller, call(&tid, &guest, &p.callee_room, offer)).await?;
    expect(&recv_text(&mut p.callee).await?, "guest_id", &guest)?;
    send_text(&mut p.callee, accept(&tid, &guest, &p.callee_room, answer)).await?;
    expect(&recv_text(&mut p.caller).await?, "transaction_id", &tid)?;
    let setup = t0.elapsed();
    // Both sides trickle two candidates each, gathered like a browser's burst: one write per side.
    for k in 0..2 {
        let line = format!("{k} 1 udp 2113937151 127.0.0.1 {} typ host", 50000 + k);
        feed_text(&mut p.callee, candidate(&guest, &p.callee_room, &line)).await?;
        feed_text(&mut p.caller, candidate(&guest, &p.callee_room, &line)).await?;
    }
    flush(&mut p.callee).await?;
    flush(&mut p.caller).await?;
    for _ in 0..2 {
        expect(&recv_text(&mut p.caller).await?, "method", "candidate")?;
        expect(&recv_text(&mut p.callee).await?, "method", "candidate")?;
    }
    send_text(&mut p.caller, bye(&guest, &p.callee_room)).await?;
    expect(&recv_text(&mut p.callee).await?, "method", "bye")?;
    Ok(setup)
}

pub async fn run(c: &CallsConfig) -> Result<Report, BenchError> {
    let run = std::process::id();
    let mut pairs = Vec::new();
    for i in 0..c.pairs {
        pairs.push(open_pair(c.nodes.first(i), c.nodes.second(i), i, run).await?);
    }
    let (offer, answer) = (sdp(6000, "actpass"), sdp(3000, "active"));
    let cpu = c.nodes.cpu_meters();
    let start = Instant::now();
    let deadline = start + c.duration;
    let tasks: Vec<_> = pairs
        .into_iter()
        .map(|mut p| {
            let (offer, answer) = (offer.clone(), answer.clone());
            tokio::spawn(async move {
                let mut h = histogram();
                let mut n = 0u64;
                while Instant::now() < deadline {
                    let setup = flow(&mut p, n, &offer, &answer).await?;
                    let _ = h.record(setup.as_micros() as u64);
                    n += 1;
                }
                Ok::<_, BenchError>((n, h))
            })
        })
        .collect();
    let mut flows = 0;
    let mut all: Histogram<u64> = histogram();
    for t in tasks {
        let (n, h) = t.await.map_err(|e| BenchError::Protocol(e.to_string()))??;
        flows += n;
        all.add(&h).map_err(|e| BenchError::Protocol(e.to_string()))?;
    }
    let elapsed = start.elapsed();
    let mut r = Report::new("calls");
    r.set("pairs", c.pairs);
    r.set("nodes", c.nodes.count());
    r.set("cross_node", c.nodes.count() > 1);
    r.set("flows", flows);
    r.set("flows_per_s", round2(flows as f64 / elapsed.as_secs_f64()));
    r.latency("call_to_accept", &all);
    r.cpu_per("server_cpu_us_per_flow", CpuMeter::sum(&cpu.iter().collect::<Vec<_>>()), flows);
    Ok(r)
}
