//! Heap profile of idle signaling sessions: what one registered room costs the server, by allocation size.
//!
//! `cargo run --release -p switchboard-server --example session_memory -- 2000`
//!
//! A counting global allocator tracks the server's live heap bytes per power-of-two size class. The example starts
//! an in-process server, runs N real websocket clients in a child process (so their allocations are not counted),
//! each registering a room, and prints the server's live-heap growth per room, split by size class. It measures the
//! heap only: RSS adds allocator overhead and the stacks of nothing (tokio tasks have none).

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicI64, Ordering};

use futures_util::{SinkExt, StreamExt};
use switchboard_server::{Config, Server};
use tokio_tungstenite::tungstenite::Message;

const CLASSES: usize = 24;

struct Counting;

static LIVE: [AtomicI64; CLASSES] = [const { AtomicI64::new(0) }; CLASSES];

fn class(size: usize) -> usize {
    (usize::BITS - size.max(1).leading_zeros()) as usize % CLASSES
}

unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        LIVE[class(layout.size())].fetch_add(layout.size() as i64, Ordering::Relaxed);
        // SAFETY: forwarding the caller's layout to the system allocator.
        unsafe { System.alloc(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        LIVE[class(layout.size())].fetch_sub(layout.size() as i64, Ordering::Relaxed);
        // SAFETY: `ptr` came from `alloc` with this layout.
        unsafe { System.dealloc(ptr, layout) }
    }
}

#[global_allocator]
static ALLOCATOR: Counting = Counting;

fn snapshot() -> [i64; CLASSES] {
    std::array::from_fn(|i| LIVE[i].load(Ordering::Relaxed))
}

#[tokio::main(flavor = "current_thread")]
async fn main() {
    let args: Vec<String> = std::env::args().collect();
    if args.get(1).map(String::as_str) == Some("clients") {
        return clients(&args[2], args[3].parse().unwrap()).await;
    }
    let n: usize = args.get(1).and_then(|a| a.parse().ok()).unwrap_or(1000);
    let mut c = Config::default();
    c.signaling.listen = "127.0.0.1:0".parse().unwrap();
    c.turn.listen = "127.0.0.1:0".parse().unwrap();
    c.turn.external_ips = vec!["127.0.0.1".parse().unwrap()];
    c.limits.max_connections_per_ip = n + 10;
    let server = Server::bind(c).await.unwrap();
    let url = format!("ws://{}/signaling", server.local_addr());
    tokio::spawn(server.run());

    let before = snapshot();
    let mut child = tokio::process::Command::new(std::env::current_exe().unwrap())
        .args(["clients", &url, &n.to_string()])
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut out = tokio::io::BufReader::new(child.stdout.take().unwrap());
    let mut line = String::new();
    tokio::io::AsyncBufReadExt::read_line(&mut out, &mut line).await.unwrap();
    assert_eq!(line.trim(), "ready");
    let after = snapshot();
    println!("server live heap per registered idle room, by allocation size class:");
    let mut total = 0i64;
    for i in 0..CLASSES {
        let d = after[i] - before[i];
        if d.unsigned_abs() as usize >= n * 8 {
            let (lo, hi) = (1usize << i.saturating_sub(1), (1usize << i) - 1);
            println!("  {lo:>6}..{hi:<6} B  {:>7.0} B/room", d as f64 / n as f64);
        }
        total += d;
    }
    println!("  total            {:>7.0} B/room over {n} rooms", total as f64 / n as f64);
    child.kill().await.unwrap();
}

/// The child process: N clients, each registering a room, then idle until killed.
async fn clients(url: &str, n: usize) {
    let mut held = Vec::with_capacity(n);
    for i in 0..n {
        let (mut ws, _) = tokio_tungstenite::connect_async(url).await.unwrap();
        let reg = format!(r#"{{"class":"request","method":"register","transaction_id":"t","room_id":"m{i}"}}"#);
        ws.send(Message::Text(reg.into())).await.unwrap();
        let _ = ws.next().await;
        held.push(ws);
    }
    // Let the server finish the last handshakes' cleanup before the parent measures.
    tokio::time::sleep(std::time::Duration::from_millis(500)).await;
    println!("ready");
    std::future::pending::<()>().await;
}
