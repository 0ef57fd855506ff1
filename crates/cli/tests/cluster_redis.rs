//! Cluster mode (SPEC.md §9) as operators run it: three `switchboard serve --cluster redis://…` processes over a real
//! `redis-server` that each test starts itself on a free port (no persistence), with the faults of issue 12: a node
//! killed (SIGKILL), a node frozen past the node timeout (SIGSTOP, SIGCONT), Redis restarted empty, Redis absent at
//! start. The protocol flows in detail run in one process over the in-memory backbone: crates/server/tests/cluster.rs.

mod support;

use std::time::{Duration, Instant};

use serde_json::{json, Value};
use support::redis::Redis;
use support::serve::{Serve, Ws, WAIT};
use support::{eventually, http_get};

const NODE_TIMEOUT: Duration = Duration::from_secs(2);
const HEARTBEAT: Duration = Duration::from_millis(200);

fn node(redis: &Redis, id: &str) -> Serve {
    let url = redis.url();
    let args = [
        "--cluster",
        &url,
        "--cluster-node-id",
        id,
        "--cluster-node-timeout",
        "2s",
        "--cluster-heartbeat",
        "200ms",
        "--admin-secret",
        "adm",
    ];
    Serve::start(&args, &[])
}

/// A node that has joined (ready).
fn ready_node(redis: &Redis, id: &str) -> Serve {
    let n = node(redis, id);
    wait_ready(&n, true);
    n
}

fn wait_ready(n: &Serve, ready: bool) {
    eventually(&format!("readyz {ready}"), WAIT, || {
        let (status, body) = http_get(n.addr, "/readyz", "", WAIT);
        let expected = if ready { 200 } else { 503 };
        (status == expected).then_some(()).ok_or(format!("{status} {body}"))
    });
}

fn signal(n: &Serve, sig: libc::c_int) {
    // SAFETY: kill(2) on our own child's pid.
    let rc = unsafe { libc::kill(n.proc.pid() as libc::pid_t, sig) };
    assert_eq!(rc, 0, "kill: {}", std::io::Error::last_os_error());
}

fn register(room: &str) -> Value {
    json!({"class":"request","method":"register","room_id":room,"transaction_id":format!("reg-{room}")})
}

fn call(tid: &str, guest: &str, room: &str) -> Value {
    json!({"class":"request","method":"call","transaction_id":tid,"guest_id":guest,"room_id":room,"type":"play",
           "vhost":"__defaultVhost__","app":"live","stream":"test","sdp":"v=0\r\n"})
}

fn candidate(guest: &str, room: &str, line: &str) -> Value {
    json!({"class":"indication","method":"candidate","transaction_id":"c","guest_id":guest,"room_id":room,
           "candidate":line,"ufrag":"u","pwd":"p"})
}

async fn registered(n: &Serve, room: &str) -> Ws {
    let mut ws = Ws::connect(&n.url()).await;
    let accept = ws.request(&register(room)).await;
    assert_eq!(accept["class"], "accept", "{accept}");
    ws
}

fn assert_code(v: &Value, code: &str) {
    assert_eq!((v["class"].as_str(), v["code"].as_str()), (Some("reject"), Some(code)), "{v}");
}

fn assert_bye(v: &Value, guest: &str, room: &str) {
    assert_eq!(
        (v["method"].as_str(), v["guest_id"].as_str(), v["room_id"].as_str(), v["reason"].as_str()),
        (Some("bye"), Some(guest), Some(room), Some("peer unregister")),
        "{v}"
    );
}

fn admin(n: &Serve, method: &str, path: &str) -> (u16, Value) {
    let (status, body) = n.http(method, path, "Authorization: Bearer adm\r\n", "");
    (status, serde_json::from_str(&body).unwrap_or(Value::Null))
}

#[tokio::test]
async fn three_processes_on_redis_behave_as_one_server() {
    let redis = Redis::start();
    let (n1, n2, n3) = (ready_node(&redis, "n1"), ready_node(&redis, "n2"), ready_node(&redis, "n3"));
    let mut callee = registered(&n1, "cam").await;
    let mut caller = registered(&n2, "viewer").await;
    let mut other = Ws::connect(&n3.url()).await;
    assert_code(&other.request(&register("cam")).await, "room_conflict");

    let offer = call("T1", "g", "cam");
    caller.send(&offer).await;
    assert_eq!(callee.recv().await, offer);
    let accept = json!({"class":"accept","method":"call","transaction_id":"T1","guest_id":"g","room_id":"cam",
                        "type":"play","sdp":"v=0\r\n"});
    callee.send(&accept).await;
    assert_eq!(caller.recv().await, accept);
    for i in 0..50 {
        caller.send(&candidate("g", "cam", &format!("candidate:{i}"))).await;
    }
    for i in 0..50 {
        assert_eq!(callee.recv().await["candidate"], format!("candidate:{i}"));
    }

    // Admin for the whole cluster, from any node.
    let expected = json!([
        {"room_id":"cam","guests":[{"guest_id":"g"}],"tours":[]},
        {"room_id":"viewer","guests":[],"tours":[{"guest_id":"g","room_id":"cam"}]},
    ]);
    assert_eq!(admin(&n3, "GET", "/api/rooms"), (200, expected.clone()));
    assert_eq!(admin(&n3, "GET", "/api/rooms/viewer"), (200, expected[1].clone()));
    assert_eq!(admin(&n1, "GET", "/index/api/listWebrtcRooms").1["data"], expected);
    // Each node sees a peer at its first heartbeat after the peer joined.
    let metrics = eventually("n2 sees three nodes", WAIT, || {
        let m = n2.http("GET", "/metrics", "", "").1;
        m.contains("switchboard_cluster_nodes 3").then_some(m.clone()).ok_or(m)
    });
    assert!(metrics.contains("switchboard_cluster_backbone_up 1"), "{metrics}");
    assert!(metrics.contains("switchboard_cluster_relays_sent_total 51"), "{metrics}");

    // A kick from the third node: the holder is closed (4001), its caller on another node gets the bye.
    assert_eq!(admin(&n3, "DELETE", "/api/rooms/cam").0, 200);
    let (code, _) = callee.until_closed(WAIT).await;
    assert_eq!(code, Some(4001));
    assert_bye(&caller.recv().await, "g", "cam");
    // The holder's node frees the room in Redis right after the close (one round trip): then any node may take it.
    let deadline = Instant::now() + WAIT;
    loop {
        let answer = other.request(&register("cam")).await;
        if answer["class"] == "accept" {
            break;
        }
        assert_code(&answer, "room_conflict");
        assert!(Instant::now() < deadline, "the kicked room was never freed: {answer}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn a_node_killed_with_sigkill_is_declared_lost_within_the_node_timeout() {
    let redis = Redis::start();
    let (n1, n2, n3) = (ready_node(&redis, "n1"), ready_node(&redis, "n2"), ready_node(&redis, "n3"));
    let mut callee = registered(&n1, "cam").await;
    let mut doomed_caller = registered(&n3, "on-n3").await;
    let mut doomed_callee = registered(&n3, "cam3").await;
    let mut caller = registered(&n2, "viewer").await;
    doomed_caller.send(&call("T1", "g", "cam")).await;
    callee.recv().await;
    caller.send(&call("T2", "h", "cam3")).await;
    doomed_callee.recv().await;

    signal(&n3, libc::SIGKILL);
    let killed = Instant::now();
    assert_bye(&callee.recv().await, "g", "cam");
    assert_bye(&caller.recv().await, "h", "cam3");
    // Node timeout plus one heartbeat, plus a margin for a loaded machine.
    let took = killed.elapsed();
    assert!(took < NODE_TIMEOUT + HEARTBEAT + Duration::from_secs(1), "byes after {took:?}");
    let mut taker = Ws::connect(&n1.url()).await;
    assert_eq!(taker.request(&register("cam3")).await["class"], "accept");
    assert_eq!(taker.request(&register("on-n3")).await["code"], "already_registered");
    let mut other = registered(&n2, "on-n3").await;
    other.send(&call("T3", "k", "cam3")).await;
    assert_eq!(taker.recv().await["transaction_id"], "T3");
}

#[tokio::test]
async fn a_node_frozen_past_the_node_timeout_closes_its_sessions_1012_and_rejoins() {
    let redis = Redis::start();
    let (n1, n3) = (ready_node(&redis, "n1"), ready_node(&redis, "n3"));
    let mut callee = registered(&n1, "cam").await;
    let mut frozen_caller = registered(&n3, "on-n3").await;
    frozen_caller.send(&call("T1", "g", "cam")).await;
    callee.recv().await;

    signal(&n3, libc::SIGSTOP);
    assert_bye(&callee.recv().await, "g", "cam");
    // While it is frozen, another node registers its room.
    let mut taker = registered(&n1, "on-n3").await;
    signal(&n3, libc::SIGCONT);
    let (code, seen) = frozen_caller.until_closed(WAIT).await;
    assert_eq!(code, Some(1012), "{seen:?}");
    assert!(seen.iter().all(|m| m["method"] != "bye"), "{seen:?}");
    wait_ready(&n3, true);
    let mut back = Ws::connect(&n3.url()).await;
    assert_code(&back.request(&register("on-n3")).await, "room_conflict");
    // The room stays with its new holder: a call to it from the rejoined node reaches it.
    assert_eq!(back.request(&register("back")).await["class"], "accept");
    back.send(&call("T2", "k", "on-n3")).await;
    assert_eq!(taker.recv().await["transaction_id"], "T2");
}

#[tokio::test]
async fn redis_restarted_empty_nodes_reassert_and_calls_keep_working() {
    let mut redis = Redis::start();
    let (n1, n2) = (ready_node(&redis, "n1"), ready_node(&redis, "n2"));
    let mut callee = registered(&n1, "cam").await;
    let mut caller = registered(&n2, "viewer").await;
    let mut local_callee = registered(&n2, "local").await;
    caller.send(&call("T1", "g", "cam")).await;
    callee.recv().await;

    redis.kill();
    wait_ready(&n2, false);
    // What needs the backbone is refused, never dropped; what stays on the node works.
    let mut newcomer = Ws::connect(&n2.url()).await;
    assert_code(&newcomer.request(&register("new")).await, "unavailable");
    assert_code(&caller.request(&candidate("g", "cam", "candidate:0")).await, "unavailable");
    caller.send(&call("T2", "l", "local")).await;
    assert_eq!(local_callee.recv().await["transaction_id"], "T2");
    let metrics = n2.http("GET", "/metrics", "", "").1;
    assert!(metrics.contains("switchboard_cluster_backbone_up 0"), "{metrics}");

    redis.run();
    wait_ready(&n1, true);
    wait_ready(&n2, true);
    // Rooms are re-asserted: registering one elsewhere is a conflict again.
    let deadline = Instant::now() + WAIT;
    loop {
        let answer = Ws::connect(&n2.url()).await.request(&register("cam")).await;
        if answer["code"] == "room_conflict" {
            break;
        }
        assert!(Instant::now() < deadline, "rooms never re-asserted: {answer}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // The call in progress across the nodes still relays, both ways.
    caller.send(&candidate("g", "cam", "candidate:1")).await;
    let got = callee.recv().await;
    if got["candidate"] != "candidate:1" {
        let (mut n1, mut n2) = (n1, n2);
        panic!("{got}\nn1:\n{}\nn2:\n{}", n1.proc.log(), n2.proc.log());
    }
    callee.send(&candidate("g", "cam", "candidate:2")).await;
    assert_eq!(caller.recv().await["candidate"], "candidate:2");
    assert_eq!(newcomer.request(&register("new")).await["class"], "accept");
}

#[tokio::test]
async fn a_node_started_before_redis_says_so_and_joins_when_it_appears() {
    let mut redis = Redis::reserve();
    let mut n1 = node(&redis, "n1");
    n1.proc.wait_line(WAIT, |l| l.contains("cluster backbone is unreachable"));
    wait_ready(&n1, false);
    let mut early = Ws::connect(&n1.url()).await;
    assert_code(&early.request(&register("early")).await, "unavailable");

    redis.run();
    wait_ready(&n1, true);
    n1.proc.find_line(WAIT, |l| l.contains("joined the cluster"));
    assert_eq!(early.request(&register("early")).await["class"], "accept");

    // A node started without --cluster-node-id generates an id, logs it, and joins under it.
    let url = redis.url();
    let mut n2 =
        Serve::start(&["--cluster", &url, "--cluster-node-timeout", "2s", "--cluster-heartbeat", "200ms"], &[]);
    let line = n2.proc.wait_line(WAIT, |l| l.contains("cluster mode: joining the cluster"));
    let id = line.split("node=").nth(1).and_then(|r| r.split_whitespace().next()).unwrap_or_default().to_owned();
    assert!(id.len() == 15 && id.starts_with("node-"), "generated id {id:?} in: {line}");
    wait_ready(&n2, true);
    let mut callee = Ws::connect(&n2.url()).await;
    assert_code(&callee.request(&register("early")).await, "room_conflict");
}

#[tokio::test]
async fn a_password_protected_redis_over_tls_is_a_backbone_too() {
    let cert = rcgen::generate_simple_self_signed(vec!["localhost".into(), "127.0.0.1".into()]).unwrap();
    let redis = Redis::start_tls(&cert.cert.pem(), &cert.key_pair.serialize_pem(), "s3cret");
    let dir = support::TempDir::new("cluster-tls");
    let ca = dir.0.join("ca.pem");
    std::fs::write(&ca, cert.cert.pem()).unwrap();
    let url = redis.url();
    assert!(url.starts_with("rediss://:s3cret@"), "{url}");
    let ca = ca.to_str().unwrap();
    let tls_node = |id: &str| {
        let n = Serve::start(&["--cluster", &url, "--cluster-node-id", id, "--cluster-tls-ca", ca], &[]);
        wait_ready(&n, true);
        n
    };
    let (n1, n2) = (tls_node("t1"), tls_node("t2"));
    let mut callee = registered(&n1, "cam").await;
    let mut caller = registered(&n2, "viewer").await;
    caller.send(&call("T1", "g", "cam")).await;
    assert_eq!(callee.recv().await["transaction_id"], "T1");

    // Without the CA, the same Redis is refused (its certificate is self-signed) and the node stays unready.
    let mut untrusting = node(&redis, "t3");
    let why = untrusting.proc.wait_line(WAIT, |l| l.contains("cluster backbone is unreachable"));
    assert!(why.contains("certificate"), "refused for its certificate: {why}");
    wait_ready(&untrusting, false);
}
