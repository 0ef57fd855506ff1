//! The cluster backbone's contract (`switchboard_server::cluster`), held against both implementations by one suite:
//! in memory, and on a real `redis-server` that the test starts itself on a free port, without persistence (and
//! kills, restarts empty, or starts late, for the fault cases).

use std::net::TcpListener;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use bytes::Bytes;
use switchboard_server::cluster::{
    Backbone, BackboneError, Claim, Fence, Membership, MemoryBackbone, MemoryWorld, RedisBackbone,
};
use tokio::time::Instant;

/// Node timeout of the suite: short, so that a node's loss is seen within the test.
const NODE_TIMEOUT: Duration = Duration::from_millis(600);
const WAIT: Duration = Duration::from_secs(10);

/// What the suite needs from a cluster under test.
trait TestCluster {
    type B: Backbone;
    fn node(&self, id: &str) -> Self::B;
    /// The backbone forgets everything (Redis: restarted without persistence).
    async fn wipe(&mut self);
    /// The backbone becomes unreachable (`true`) or reachable again.
    async fn outage(&mut self, down: bool);
}

struct Memory(MemoryWorld, Vec<String>);

impl TestCluster for Memory {
    type B = MemoryBackbone;
    fn node(&self, id: &str) -> MemoryBackbone {
        self.0.node(id)
    }
    async fn wipe(&mut self) {
        self.0.wipe();
    }
    async fn outage(&mut self, down: bool) {
        for id in &self.1 {
            self.0.set_cut(id, down);
        }
    }
}

/// A `redis-server` on 127.0.0.1:`port`, without persistence; killed on drop.
struct RedisServer {
    port: u16,
    dir: PathBuf,
    child: Option<Child>,
    /// Extra `redis-server` arguments (e.g. `--requirepass`).
    extra: Vec<String>,
}

impl RedisServer {
    fn free_port() -> u16 {
        TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
    }

    fn new(port: u16) -> RedisServer {
        let dir = std::env::temp_dir().join(format!("switchboard-redis-{}-{port}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        RedisServer { port, dir, child: None, extra: Vec::new() }
    }

    fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/", self.port)
    }

    async fn start(&mut self) {
        let child = Command::new("redis-server")
            .args(["--port", &self.port.to_string(), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"])
            .arg("--dir")
            .arg(&self.dir)
            .args(&self.extra)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("redis-server (Debian's redis-server package; scripts/test.sh installs it)");
        self.child = Some(child);
        let deadline = Instant::now() + WAIT;
        while tokio::net::TcpStream::connect(("127.0.0.1", self.port)).await.is_err() {
            assert!(Instant::now() < deadline, "redis-server did not listen on {}", self.port);
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        self.kill();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

struct Redis(RedisServer);

impl TestCluster for Redis {
    type B = RedisBackbone;
    fn node(&self, id: &str) -> RedisBackbone {
        RedisBackbone::new(&self.0.url(), "sbtest", id, NODE_TIMEOUT).unwrap()
    }
    async fn wipe(&mut self) {
        self.0.kill();
        self.0.start().await;
    }
    async fn outage(&mut self, down: bool) {
        if down {
            self.0.kill();
        } else {
            self.0.start().await;
        }
    }
}

fn fence<B: Backbone>(b: &B, session: u64, generation: u64) -> Fence {
    let n = b.node();
    Fence { node: n.id, incarnation: n.incarnation, session, generation }
}

/// Retries `op` (through a reconnect) until it succeeds, within the deadline.
async fn eventually<T>(what: &str, mut op: impl AsyncFnMut() -> Result<T, BackboneError>) -> T {
    let deadline = Instant::now() + WAIT;
    loop {
        match op().await {
            Ok(v) => return v,
            Err(_) if Instant::now() < deadline => tokio::time::sleep(Duration::from_millis(50)).await,
            Err(e) => panic!("{what}: still failing after {WAIT:?}: {e}"),
        }
    }
}

async fn contract<C: TestCluster>(mut cluster: C) {
    let (a, b, c) = (cluster.node("a"), cluster.node("b"), cluster.node("c"));
    for n in [&a, &b, &c] {
        n.join().await.unwrap();
    }
    let ids: Vec<String> = a.members().await.unwrap().into_iter().map(|n| n.id).collect();
    assert_eq!(ids, ["a", "b", "c"]);

    // One owner per room id, cluster-wide; another session of the owner's own node conflicts too.
    let fa = fence(&a, 1, 1);
    assert_eq!(a.claim("r", &fa).await.unwrap(), Claim::Won);
    assert_eq!(b.claim("r", &fence(&b, 7, 1)).await.unwrap(), Claim::Held(fa.clone()));
    assert_eq!(a.claim("r", &fence(&a, 2, 1)).await.unwrap(), Claim::Held(fa.clone()));
    assert_eq!(c.owner("r").await.unwrap(), Some(fa.clone()));

    // Only the exact fence frees or hands over a room: an older generation of the same session cannot.
    let stale = Fence { generation: 0, ..fa.clone() };
    assert!(!a.release("r", &stale).await.unwrap());
    assert!(!b.take_over("r", &stale, &fence(&b, 7, 2)).await.unwrap());
    assert_eq!(a.owner("r").await.unwrap(), Some(fa.clone()));
    let fb = fence(&b, 7, 2);
    assert!(b.take_over("r", &fa, &fb).await.unwrap(), "a takeover from the current owner");
    assert!(!a.release("r", &fa).await.unwrap(), "the old owner cannot free the new registration");
    assert!(b.release("r", &fb).await.unwrap());
    assert_eq!(a.owner("r").await.unwrap(), None);
    assert_eq!(c.claim("r", &fence(&c, 3, 1)).await.unwrap(), Claim::Won);

    // The room list: live owners only, sorted.
    assert_eq!(a.claim("q", &fa).await.unwrap(), Claim::Won);
    let listed: Vec<String> = b.rooms().await.unwrap().into_iter().map(|(r, _)| r).collect();
    assert_eq!(listed, ["q", "r"]);

    // A clean leave frees the node's rooms and membership at once.
    let fb1 = fence(&b, 9, 1);
    assert_eq!(b.claim("x", &fb1).await.unwrap(), Claim::Won);
    b.leave().await.unwrap();
    assert_eq!(a.owner("x").await.unwrap(), None);
    assert!(a.members().await.unwrap().iter().all(|n| n.id != "b"));

    // A node that stops heartbeating is lost after the node timeout: its rooms are claimable, it learns it was lost,
    // may not claim, and its old fences match nothing after it rejoins.
    let fc = fence(&c, 3, 1);
    let start = Instant::now();
    loop {
        a.heartbeat().await.unwrap();
        if a.owner("r").await.unwrap().is_none() {
            break;
        }
        assert!(start.elapsed() < NODE_TIMEOUT + WAIT, "c's room outlived its node");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(start.elapsed() >= NODE_TIMEOUT / 2, "lost too early: {:?}", start.elapsed());
    assert!(a.members().await.unwrap().iter().all(|n| n.id != "c"));
    assert_eq!(a.claim("r", &fa).await.unwrap(), Claim::Won);
    assert_eq!(c.heartbeat().await.unwrap(), Membership::Lost);
    assert!(matches!(c.claim("z", &fc).await, Err(BackboneError::NotMember)));
    let old = c.node();
    let new = c.join().await.unwrap();
    assert_ne!(old.incarnation, new.incarnation);
    assert!(c.claim("r", &fence(&c, 3, 1)).await.unwrap() != Claim::Won);
    assert!(!c.release("r", &fc).await.unwrap());
    assert_eq!(a.heartbeat().await.unwrap(), Membership::Alive);

    // The bus: batches from one node to another arrive in the order sent.
    let mut inbox = a.inbox().await.unwrap();
    for i in 0..200u32 {
        c.send("a", Bytes::from(i.to_be_bytes().to_vec())).await.unwrap();
    }
    for i in 0..200u32 {
        let got = tokio::time::timeout(WAIT, inbox.recv()).await.expect("a batch").expect("inbox open");
        assert_eq!(got.as_ref(), i.to_be_bytes(), "batch {i}");
    }

    // An outage is an error within the deadline, never a hang; afterwards everything works again.
    cluster.outage(true).await;
    let t = Instant::now();
    assert!(a.claim("o", &fa).await.is_err(), "a claim during the outage");
    assert!(a.heartbeat().await.is_err());
    assert!(t.elapsed() < Duration::from_secs(5), "errors took {:?}", t.elapsed());
    cluster.outage(false).await;
    // (A Redis restarted by the outage is empty: that is the next case, a reset, as it must be.)
    let membership = eventually("heartbeat after the outage", || a.heartbeat()).await;
    assert!(membership == Membership::Reset || membership == Membership::Alive, "{membership:?}");

    // A backbone that lost its state: the heartbeat re-asserts the membership and says so; rooms are claimed again.
    c.heartbeat().await.ok();
    cluster.wipe().await;
    assert_eq!(eventually("heartbeat after the wipe", || a.heartbeat()).await, Membership::Reset);
    assert_eq!(a.heartbeat().await.unwrap(), Membership::Alive);
    assert_eq!(a.owner("r").await.unwrap(), None, "rooms are gone with the data");
    assert_eq!(a.claim("r", &fa).await.unwrap(), Claim::Won, "the same fence re-asserts the room");
    // The bus resubscribed on its own.
    eventually("a batch after the restart", async || {
        c.send("a", Bytes::from_static(b"again")).await?;
        match tokio::time::timeout(Duration::from_millis(200), inbox.recv()).await {
            Ok(Some(b)) if b.as_ref() == b"again" => Ok(()),
            other => Err(BackboneError::Unavailable(format!("{other:?}"))),
        }
    })
    .await;
}

/// The bus over a backbone: envelopes queued without a pause go out in as few batches as `MAX_BATCH` allows, each
/// destination in order; a full queue refuses at once; a batch the backbone refuses is counted as lost.
async fn bus_contract<C: TestCluster>(mut cluster: C) {
    use std::sync::Arc;
    use switchboard_server::cluster::bus::{decode, BusFull, MAX_BATCH, QUEUE};
    use switchboard_server::cluster::Bus;
    let (a, b, c) = (Arc::new(cluster.node("a")), cluster.node("b"), cluster.node("c"));
    for n in [&*a, &b, &c] {
        n.join().await.unwrap();
    }
    let (mut to_b, mut to_c) = (b.inbox().await.unwrap(), c.inbox().await.unwrap());
    let bus = Bus::new(a.clone());
    // This test's runtime has one thread: the bus's senders run only when the test waits, after all is queued.
    for i in 0..5000u32 {
        bus.send("b", Bytes::from(format!("b{i}"))).unwrap();
        if i < 3000 {
            bus.send("c", Bytes::from(format!("c{i}"))).unwrap();
        }
    }
    for (inbox, node, count) in [(&mut to_b, "b", 5000u32), (&mut to_c, "c", 3000)] {
        let mut got = Vec::new();
        while got.len() < count as usize {
            let batch = tokio::time::timeout(WAIT, inbox.recv()).await.expect("a batch").unwrap();
            got.extend(decode(&batch).unwrap());
        }
        let want: Vec<Bytes> = (0..count).map(|i| Bytes::from(format!("{node}{i}"))).collect();
        assert_eq!(got, want, "{node}: every envelope, in order");
    }
    let batches = |n: usize| n.div_ceil(MAX_BATCH) as u64;
    assert_eq!(bus.batches(), batches(5000) + batches(3000));

    // A full queue refuses at once (nothing is sent while the test does not wait).
    for i in 0..QUEUE {
        bus.send("b", Bytes::from(i.to_string())).unwrap();
    }
    assert_eq!(bus.send("b", Bytes::from_static(b"one too many")), Err(BusFull("b".into())));
    let mut drained = 0;
    while drained < QUEUE {
        drained += decode(&tokio::time::timeout(WAIT, to_b.recv()).await.unwrap().unwrap()).unwrap().len();
    }

    // The backbone down: queued envelopes are lost and counted, never retried out of order.
    cluster.outage(true).await;
    bus.send("c", Bytes::from_static(b"into the void")).unwrap();
    let deadline = Instant::now() + WAIT;
    while bus.lost() == 0 {
        assert!(Instant::now() < deadline, "the refused batch was not counted");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(bus.lost(), 1);
    cluster.outage(false).await;
}

#[tokio::test]
async fn the_bus_batches_in_order_over_the_memory_backbone() {
    let ids = ["a", "b", "c"].map(String::from).to_vec();
    bus_contract(Memory(MemoryWorld::new(NODE_TIMEOUT), ids)).await;
}

#[tokio::test]
async fn the_bus_batches_in_order_over_redis() {
    let mut server = RedisServer::new(RedisServer::free_port());
    server.start().await;
    bus_contract(Redis(server)).await;
}

#[tokio::test]
async fn the_memory_backbone_keeps_the_contract() {
    let ids = ["a", "b", "c"].map(String::from).to_vec();
    contract(Memory(MemoryWorld::new(NODE_TIMEOUT), ids)).await;
}

#[tokio::test]
async fn the_redis_backbone_keeps_the_contract() {
    let mut server = RedisServer::new(RedisServer::free_port());
    server.start().await;
    contract(Redis(server)).await;
}

/// Redis unreachable when the node starts: nothing fails at construction, operations fail fast, and the node joins
/// once Redis appears.
#[tokio::test]
async fn a_node_joins_when_redis_appears_late() {
    let mut server = RedisServer::new(RedisServer::free_port());
    let node = RedisBackbone::new(&server.url(), "sbtest", "late", NODE_TIMEOUT).unwrap();
    let t = Instant::now();
    assert!(node.join().await.is_err());
    assert!(t.elapsed() < Duration::from_secs(5));
    server.start().await;
    let joined = eventually("join once redis is up", || node.join()).await;
    assert_eq!(joined.id, "late");
    assert_eq!(node.members().await.unwrap().len(), 1);
}

#[test]
fn node_ids_and_fences() {
    assert!(RedisBackbone::new("redis://127.0.0.1:1/", "p", "has space", NODE_TIMEOUT).is_err());
    assert!(RedisBackbone::new("nonsense://x", "p", "ok", NODE_TIMEOUT).is_err());
    let f = Fence { node: "n-1.a_b".into(), incarnation: 42, session: 7, generation: 3 };
    assert_eq!(Fence::decode(&f.encode()), Some(f));
    for bad in ["", "a 1 2", "a 1 2 3 4", "a x 2 3"] {
        assert_eq!(Fence::decode(bad), None, "{bad:?}");
    }
}

/// A Redis that needs a password: the password in the URL joins, a wrong one is refused at once (never a hang).
#[tokio::test]
async fn a_redis_with_a_password() {
    let mut server = RedisServer::new(RedisServer::free_port());
    server.extra = vec!["--requirepass".into(), "s3cret-pw".into()];
    server.start().await;
    let url = |pw: &str| format!("redis://:{pw}@127.0.0.1:{}/", server.port);
    let good = RedisBackbone::new(&url("s3cret-pw"), "sbtest", "a", NODE_TIMEOUT).unwrap();
    assert_eq!(good.join().await.unwrap().id, "a");
    let f = fence(&good, 1, 1);
    assert_eq!(good.claim("room", &f).await.unwrap(), Claim::Won);
    let t = Instant::now();
    let wrong = RedisBackbone::new(&url("wrong"), "sbtest", "b", NODE_TIMEOUT).unwrap();
    let err = wrong.join().await.unwrap_err();
    assert!(t.elapsed() < Duration::from_secs(5));
    assert!(err.to_string().to_lowercase().contains("pass") || err.to_string().contains("auth"), "{err}");
    let none = RedisBackbone::new(&server.url(), "sbtest", "c", NODE_TIMEOUT).unwrap();
    assert!(none.join().await.is_err(), "no password, no entry");
}
