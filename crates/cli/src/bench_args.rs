//! `switchboard bench`: the load generator's CLI. Progress goes to stderr, the result is one JSON line on stdout.

use std::time::Duration;

use anyhow::Context;
use clap::{Args, Subcommand};
use switchboard_bench::{calls, churn, idle, relay, soak, Nodes, Report};

#[derive(Args, Debug)]
pub struct BenchArgs {
    /// Signaling URL of the server under test. Given several times (nodes of one cluster), `calls` and `relay` put
    /// the two parties of every pair on different nodes (pair i on nodes i and i+1, round the list); `idle`, `churn`
    /// and `soak` use the first (run one per node).
    #[arg(long, default_value = "ws://127.0.0.1:3000/signaling", global = true)]
    server: Vec<String>,
    /// The server's pid (once per `--server`): report its CPU time per unit of work and its memory.
    #[arg(long, global = true)]
    server_pid: Vec<u32>,
    /// Runtime threads for the generator (1 = single-threaded, best when pinned to one core).
    #[arg(long, default_value_t = 1, global = true)]
    threads: usize,
    #[command(subcommand)]
    scenario: Scenario,
}

#[derive(Subcommand, Debug)]
enum Scenario {
    /// Connect and register N rooms, hold them, report RSS per room.
    Idle {
        #[arg(long, default_value_t = 1000)]
        conns: usize,
        /// Seconds to hold the rooms.
        #[arg(long, default_value_t = 2.0)]
        hold: f64,
        #[arg(long, default_value_t = 256)]
        concurrency: usize,
    },
    /// Full call flows between caller/callee pairs.
    Calls {
        #[arg(long, default_value_t = 50)]
        pairs: usize,
        #[arg(long, default_value_t = 10.0)]
        duration: f64,
    },
    /// Candidate indications both ways under a bounded in-flight window.
    Relay {
        #[arg(long, default_value_t = 20)]
        pairs: usize,
        #[arg(long, default_value_t = 10.0)]
        duration: f64,
        #[arg(long, default_value_t = 64)]
        window: u64,
    },
    /// Connect/register/leave loops, then check that no room leaked.
    Churn {
        #[arg(long, default_value_t = 50)]
        conns: usize,
        #[arg(long, default_value_t = 10.0)]
        duration: f64,
    },
    /// Idle rooms, call flows, relay streams and churn at once, paced, for a long time; the server sampled every
    /// `--interval` seconds; lost messages and leaked rooms counted at the end. `bench/soak.sh` runs and plots it.
    Soak {
        /// Seconds.
        #[arg(long, default_value_t = 600.0)]
        duration: f64,
        /// Seconds between samples.
        #[arg(long, default_value_t = 10.0)]
        interval: f64,
        #[arg(long, default_value_t = 14_000)]
        idle: usize,
        #[arg(long, default_value_t = 200)]
        call_pairs: usize,
        /// Seconds between two flows of one pair.
        #[arg(long, default_value_t = 2.0)]
        flow_every: f64,
        #[arg(long, default_value_t = 50)]
        relay_pairs: usize,
        /// Candidates per second in each direction of each relay pair.
        #[arg(long, default_value_t = 50)]
        relay_rate: u32,
        #[arg(long, default_value_t = 20)]
        churners: usize,
        /// Seconds between two sessions of one churner.
        #[arg(long, default_value_t = 0.2)]
        churn_every: f64,
    },
}

pub fn run(args: BenchArgs) -> anyhow::Result<()> {
    let runtime = if args.threads <= 1 {
        tokio::runtime::Builder::new_current_thread().enable_all().build()
    } else {
        tokio::runtime::Builder::new_multi_thread().worker_threads(args.threads).enable_all().build()
    }
    .context("cannot start the tokio runtime")?;
    anyhow::ensure!(args.server_pid.len() <= args.server.len(), "more --server-pid than --server");
    let nodes = Nodes::new(args.server.clone(), args.server_pid.clone());
    let url = args.server[0].clone();
    let pid = args.server_pid.first().copied();
    let secs = Duration::from_secs_f64;
    let report: Report = runtime.block_on(async move {
        match args.scenario {
            Scenario::Idle { conns, hold, concurrency } => {
                idle::run(&idle::IdleConfig { url, conns, hold: secs(hold), server_pid: pid, concurrency }).await
            }
            Scenario::Calls { pairs, duration } => {
                let duration = secs(duration);
                calls::run(&calls::CallsConfig { nodes, pairs, duration }).await
            }
            Scenario::Relay { pairs, duration, window } => {
                let duration = secs(duration);
                relay::run(&relay::RelayConfig { nodes, pairs, duration, window }).await
            }
            Scenario::Churn { conns, duration } => {
                churn::run(&churn::ChurnConfig { url, conns, duration: secs(duration), server_pid: pid }).await
            }
            Scenario::Soak {
                duration,
                interval,
                idle,
                call_pairs,
                flow_every,
                relay_pairs,
                relay_rate,
                churners,
                churn_every,
            } => {
                let c = soak::SoakConfig {
                    url,
                    duration: secs(duration),
                    interval: secs(interval),
                    idle,
                    call_pairs,
                    flow_every: secs(flow_every),
                    relay_pairs,
                    relay_rate,
                    churners,
                    churn_every: secs(churn_every),
                    server_pid: pid,
                };
                soak::run(&c).await
            }
        }
    })?;
    println!("{}", report.to_json());
    Ok(())
}
