//! `churn`: N workers loop connect → register → (unregister then close | close) for a while; then every room id
//! used must be registrable again — any that is not is a leaked room.

use std::time::{Duration, Instant};

use crate::conn::{connect, recv_text, request, send_text};
use crate::messages::{field, register, unregister};
use crate::proc_stats::CpuMeter;
use crate::report::round2;
use crate::{BenchError, Report};

pub struct ChurnConfig {
    pub url: String,
    pub conns: usize,
    pub duration: Duration,
    pub server_pid: Option<u32>,
}

pub async fn run(c: &ChurnConfig) -> Result<Report, BenchError> {
    let run = std::process::id();
    let cpu = CpuMeter::start(c.server_pid);
    let start = Instant::now();
    let deadline = start + c.duration;
    let workers: Vec<_> = (0..c.conns)
        .map(|w| {
            let url = c.url.clone();
            tokio::spawn(async move {
                let mut rooms = Vec::new();
                let mut n = 0usize;
                while Instant::now() < deadline {
                    let room = format!("churn_{run}_{w}_{n}");
                    let mut ws = connect(&url, w).await?;
                    request(&mut ws, register("r", &room)).await?;
                    if n.is_multiple_of(2) {
                        request(&mut ws, unregister("u", &room)).await?;
                        let _ = ws.close(None).await;
                    }
                    drop(ws);
                    rooms.push(room);
                    n += 1;
                }
                Ok::<_, BenchError>(rooms)
            })
        })
        .collect();
    let mut rooms = Vec::new();
    for w in workers {
        rooms.extend(w.await.map_err(|e| BenchError::Protocol(e.to_string()))??);
    }
    let elapsed = start.elapsed();
    let cpu_used = cpu.elapsed();
    let leaked = verify_free(&c.url, &rooms).await?;
    let mut r = Report::new("churn");
    r.set("conns", c.conns);
    r.set("sessions", rooms.len());
    r.set("sessions_per_s", round2(rooms.len() as f64 / elapsed.as_secs_f64()));
    r.set("leaked_rooms", leaked.len());
    if !leaked.is_empty() {
        r.set("leaked_examples", leaked.iter().take(5).cloned().collect::<Vec<_>>());
    }
    r.cpu_per("server_cpu_us_per_session", cpu_used, rooms.len() as u64);
    Ok(r)
}

/// Registers and unregisters every id on one connection; ids still held after a few rounds are leaks.
/// A close the server has not processed yet is not a leak, so held ids are retried in rounds with a pause between.
pub async fn verify_free(url: &str, rooms: &[String]) -> Result<Vec<String>, BenchError> {
    let mut ws = connect(url, 0).await?;
    let mut held: Vec<String> = rooms.to_vec();
    for round in 0..5u64 {
        let mut still = Vec::new();
        for room in held {
            send_text(&mut ws, register("v", &room)).await?;
            let answer = recv_text(&mut ws).await?;
            if field(&answer, "class") == Some("accept") {
                request(&mut ws, unregister("u", &room)).await?;
            } else {
                still.push(room);
            }
        }
        held = still;
        if held.is_empty() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100 * (round + 1))).await;
    }
    Ok(held)
}
