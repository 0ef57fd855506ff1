//! Every scenario at small scale against a real in-process server, plus a deliberately leaking fake server that the
//! churn scenario must catch.

use std::collections::HashSet;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use switchboard_bench::{calls, churn, idle, relay, Nodes};
use switchboard_server::{Config, Server};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;
use tokio_tungstenite::tungstenite::Message;

async fn server() -> String {
    let mut c = Config::default();
    c.signaling.listen = "127.0.0.1:0".parse().unwrap();
    c.turn.listen = "127.0.0.1:0".parse().unwrap();
    c.turn.external_ips = vec!["127.0.0.1".parse().unwrap()];
    // A load test is a flood by design: the per-connection message budget must not be what is measured.
    c.limits.messages_per_second = 1_000_000;
    c.limits.message_burst = 1_000_000;
    let s = Server::bind(c).await.unwrap();
    let url = format!("ws://{}/signaling", s.local_addr());
    tokio::spawn(s.run());
    url
}

/// Three nodes of one in-process cluster (in-memory backbone), each ready; their signaling URLs.
async fn cluster_of_three() -> Vec<String> {
    let world = switchboard_server::cluster::MemoryWorld::new(Duration::from_secs(2));
    let mut urls = Vec::new();
    for id in ["b1", "b2", "b3"] {
        let mut c = Config::default();
        c.signaling.listen = "127.0.0.1:0".parse().unwrap();
        c.turn.enabled = false;
        c.cluster.heartbeat = Duration::from_millis(200);
        c.cluster.node_timeout = Duration::from_secs(2);
        c.limits.messages_per_second = 1_000_000;
        c.limits.message_burst = 1_000_000;
        let s = Server::bind_in_cluster(c, world.node(id)).await.unwrap();
        let addr = s.local_addr();
        tokio::spawn(s.run());
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        loop {
            let mut tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
            tcp.write_all(b"GET /readyz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").await.unwrap();
            let mut answer = String::new();
            let _ = tokio::time::timeout(Duration::from_secs(5), tcp.read_to_string(&mut answer)).await;
            if answer.starts_with("HTTP/1.1 200") {
                break;
            }
            assert!(tokio::time::Instant::now() < deadline, "node {id} never became ready: {answer}");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        urls.push(format!("ws://{addr}/signaling"));
    }
    urls
}

fn me() -> Option<u32> {
    Some(std::process::id())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_registers_every_room_and_reports_memory() {
    let url = server().await;
    let c = idle::IdleConfig { url, conns: 200, hold: Duration::from_millis(100), server_pid: me(), concurrency: 32 };
    let r = idle::run(&c).await.unwrap();
    assert_eq!(r.get_f64("conns"), Some(200.0));
    assert!(r.get_f64("register_per_s").unwrap() > 0.0);
    assert!(r.fields.contains_key("server_rss_per_room_kib"), "{}", r.to_json());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn calls_complete_flows_and_measure_setup_latency() {
    let url = server().await;
    let c = calls::CallsConfig { nodes: Nodes::one(url, me()), pairs: 4, duration: Duration::from_millis(500) };
    let r = calls::run(&c).await.unwrap();
    let flows = r.get_f64("flows").unwrap();
    assert!(flows >= 4.0, "{}", r.to_json());
    let lat = &r.fields["call_to_accept"];
    assert_eq!(lat["count"].as_f64(), Some(flows));
    assert!(lat["p50_ms"].as_f64().unwrap() <= lat["max_ms"].as_f64().unwrap());
    assert!(r.get_f64("server_cpu_us_per_flow").is_some());
}

/// With three nodes every pair is split across two of them: calls and relays cross nodes, nothing is lost.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pairs_split_across_three_cluster_nodes_call_and_relay_without_loss() {
    let urls = cluster_of_three().await;
    let nodes = Nodes::new(urls, me().into_iter().collect());
    let c = calls::CallsConfig { nodes: nodes.clone(), pairs: 3, duration: Duration::from_millis(500) };
    let r = calls::run(&c).await.unwrap();
    assert!(r.get_f64("flows").unwrap() >= 3.0, "{}", r.to_json());
    assert_eq!((r.get_f64("nodes"), &r.fields["cross_node"]), (Some(3.0), &serde_json::json!(true)));
    let c = relay::RelayConfig { nodes, pairs: 3, duration: Duration::from_millis(700), window: 8 };
    let r = relay::run(&c).await.unwrap();
    assert!(r.get_f64("relayed").unwrap() > 100.0, "{}", r.to_json());
    assert_eq!(r.get_f64("lost"), Some(0.0), "{}", r.to_json());
    assert_eq!(r.get_f64("out_of_order"), Some(0.0), "{}", r.to_json());
    assert!(r.get_f64("server_cpu_us_per_msg").is_some(), "{}", r.to_json());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn relay_loses_nothing_and_respects_the_window() {
    let url = server().await;
    let c =
        relay::RelayConfig { nodes: Nodes::one(url, me()), pairs: 3, duration: Duration::from_millis(700), window: 8 };
    let r = relay::run(&c).await.unwrap();
    assert!(r.get_f64("relayed").unwrap() > 100.0, "{}", r.to_json());
    assert_eq!(r.get_f64("lost"), Some(0.0), "{}", r.to_json());
    assert_eq!(r.get_f64("out_of_order"), Some(0.0), "{}", r.to_json());
    assert!(r.fields["latency"]["count"].as_f64().unwrap() > 0.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn churn_against_switchboard_leaks_nothing() {
    let url = server().await;
    let c = churn::ChurnConfig { url, conns: 4, duration: Duration::from_millis(500), server_pid: me() };
    let r = churn::run(&c).await.unwrap();
    assert!(r.get_f64("sessions").unwrap() >= 4.0);
    assert_eq!(r.get_f64("leaked_rooms"), Some(0.0), "{}", r.to_json());
}

/// A broken server: it never frees a room once registered (neither on unregister nor on close).
async fn leaking_server() -> String {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("ws://{}/signaling", listener.local_addr().unwrap());
    let held: Arc<Mutex<HashSet<String>>> = Arc::default();
    tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            let held = held.clone();
            tokio::spawn(async move {
                let Ok(mut ws) = tokio_tungstenite::accept_async(tcp).await else { return };
                while let Some(Ok(Message::Text(t))) = ws.next().await {
                    let v: serde_json::Value = serde_json::from_str(t.as_str()).unwrap();
                    let room = v["room_id"].as_str().unwrap_or_default().to_owned();
                    let fresh = v["method"] == "unregister" || held.lock().unwrap().insert(room);
                    let class = if fresh { "accept" } else { "reject" };
                    let reply =
                        serde_json::json!({"class":class,"method":v["method"],"transaction_id":v["transaction_id"]});
                    if ws.send(Message::Text(reply.to_string().into())).await.is_err() {
                        return;
                    }
                }
            });
        }
    });
    url
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn churn_detects_a_server_that_leaks_rooms() {
    let url = leaking_server().await;
    let c = churn::ChurnConfig { url, conns: 2, duration: Duration::from_millis(200), server_pid: None };
    let r = churn::run(&c).await.unwrap();
    let sessions = r.get_f64("sessions").unwrap();
    assert!(sessions > 0.0);
    assert_eq!(r.get_f64("leaked_rooms"), Some(sessions), "{}", r.to_json());
}

#[tokio::test]
async fn connections_to_loopback_spread_over_eight_source_addresses() {
    // One source address offers ~28k ports towards one server port; the load tool uses 127.0.0.1–127.0.0.8.
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("ws://{}/signaling", listener.local_addr().unwrap());
    let accepting = tokio::spawn(async move {
        let mut sources = Vec::new();
        for _ in 0..16 {
            let (tcp, peer) = listener.accept().await.unwrap();
            sources.push(peer.ip());
            tokio::spawn(tokio_tungstenite::accept_async(tcp));
        }
        sources
    });
    let mut open = Vec::new();
    for index in 0..16 {
        open.push(switchboard_bench::conn::connect(&url, index).await.unwrap());
    }
    let sources = accepting.await.unwrap();
    let distinct: HashSet<_> = sources.iter().collect();
    let expected: HashSet<std::net::IpAddr> = (1..=8).map(|i| std::net::Ipv4Addr::new(127, 0, 0, i).into()).collect();
    assert_eq!(distinct, expected.iter().collect());
}
