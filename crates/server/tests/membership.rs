//! The cluster membership driver (`switchboard_server::cluster::membership`) over the in-memory backbone, in paused
//! time: joining late, peers crashing, leaving and freezing past the node timeout, a backbone that lost its state.

use std::sync::Arc;
use std::time::Duration;

use switchboard_server::cluster::membership::{spawn, NodeEvent};
use switchboard_server::cluster::{Backbone, MemoryWorld};
use tokio::sync::mpsc;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

const NODE_TIMEOUT: Duration = Duration::from_secs(3);
const HEARTBEAT: Duration = Duration::from_secs(1);

/// The next event, within `within` of virtual time.
async fn next(rx: &mut mpsc::Receiver<NodeEvent>, within: Duration) -> NodeEvent {
    tokio::time::timeout(within, rx.recv()).await.expect("an event in time").expect("driver alive")
}

struct Node {
    events: mpsc::Receiver<NodeEvent>,
    stop: CancellationToken,
    task: tokio::task::JoinHandle<()>,
}

fn start(world: &MemoryWorld, id: &str) -> Node {
    let stop = CancellationToken::new();
    let (task, events) = spawn(Arc::new(world.node(id)), HEARTBEAT, NODE_TIMEOUT, stop.clone());
    Node { events, stop, task }
}

async fn joined(n: &mut Node) -> u64 {
    match next(&mut n.events, HEARTBEAT * 2).await {
        NodeEvent::Joined(id) => id.incarnation,
        other => panic!("expected Joined, got {other:?}"),
    }
}

#[tokio::test(start_paused = true)]
async fn a_node_started_while_the_backbone_is_down_joins_when_it_returns() {
    let world = MemoryWorld::new(NODE_TIMEOUT);
    world.set_cut("a", true);
    let mut a = start(&world, "a");
    assert!(matches!(next(&mut a.events, HEARTBEAT).await, NodeEvent::Unreachable(_)));
    tokio::time::sleep(HEARTBEAT * 5).await;
    world.set_cut("a", false);
    assert_eq!(next(&mut a.events, HEARTBEAT * 2).await, NodeEvent::Reachable, "reported once per outage");
    joined(&mut a).await;
    assert_eq!(world.node("x").members().await.unwrap().len(), 1);
}

#[tokio::test(start_paused = true)]
async fn peers_that_crash_or_leave_are_reported_lost() {
    let world = MemoryWorld::new(NODE_TIMEOUT);
    let mut a = start(&world, "a");
    joined(&mut a).await;
    let mut b = start(&world, "b");
    let b_inc = joined(&mut b).await;
    match next(&mut a.events, HEARTBEAT * 2).await {
        NodeEvent::PeerJoined(n) => assert_eq!((n.id.as_str(), n.incarnation), ("b", b_inc)),
        other => panic!("{other:?}"),
    }

    // A crash (no leave): seen once the membership lapses, one node timeout after b's last heartbeat.
    b.task.abort();
    let crashed = Instant::now();
    match next(&mut a.events, NODE_TIMEOUT * 2).await {
        NodeEvent::PeerLost(n) => assert_eq!(n.id, "b"),
        other => panic!("{other:?}"),
    }
    let after = crashed.elapsed();
    assert!(after >= NODE_TIMEOUT - HEARTBEAT && after <= NODE_TIMEOUT + HEARTBEAT * 2, "lost after {after:?}");

    // A clean stop leaves at once: seen at a's next heartbeat, well within the node timeout.
    let mut c = start(&world, "c");
    joined(&mut c).await;
    assert!(matches!(next(&mut a.events, HEARTBEAT * 2).await, NodeEvent::PeerJoined(n) if n.id == "c"));
    c.stop.cancel();
    c.task.await.unwrap();
    let left = Instant::now();
    assert!(matches!(next(&mut a.events, NODE_TIMEOUT).await, NodeEvent::PeerLost(n) if n.id == "c"));
    assert!(left.elapsed() <= HEARTBEAT * 2, "{:?}", left.elapsed());
}

#[tokio::test(start_paused = true)]
async fn a_node_frozen_past_the_node_timeout_learns_it_was_lost_and_rejoins_anew() {
    let world = MemoryWorld::new(NODE_TIMEOUT);
    let mut a = start(&world, "a");
    joined(&mut a).await;
    let mut b = start(&world, "b");
    let first = joined(&mut b).await;
    assert!(matches!(next(&mut b.events, HEARTBEAT * 2).await, NodeEvent::PeerJoined(n) if n.id == "a"));
    assert!(matches!(next(&mut a.events, HEARTBEAT * 2).await, NodeEvent::PeerJoined(_)));

    world.set_cut("b", true);
    assert!(matches!(next(&mut b.events, HEARTBEAT * 2).await, NodeEvent::Unreachable(_)));
    assert!(matches!(next(&mut a.events, NODE_TIMEOUT * 2).await, NodeEvent::PeerLost(n) if n.incarnation == first));
    world.set_cut("b", false);
    assert_eq!(next(&mut b.events, HEARTBEAT * 2).await, NodeEvent::Reachable);
    match next(&mut b.events, HEARTBEAT).await {
        NodeEvent::Lost(n) => assert_eq!(n.incarnation, first),
        other => panic!("expected Lost before the rejoin, got {other:?}"),
    }
    let second = joined(&mut b).await;
    assert_ne!(first, second, "a new incarnation");
    assert!(matches!(next(&mut a.events, HEARTBEAT * 2).await, NodeEvent::PeerJoined(n) if n.incarnation == second));
}

#[tokio::test(start_paused = true)]
async fn a_backbone_that_lost_its_state_is_reported_as_a_reset_not_a_loss() {
    let world = MemoryWorld::new(NODE_TIMEOUT);
    let mut a = start(&world, "a");
    let inc = joined(&mut a).await;
    world.wipe();
    assert_eq!(next(&mut a.events, HEARTBEAT * 2).await, NodeEvent::Reset);
    // Still the same incarnation, and a member again.
    let members = world.node("x").members().await.unwrap();
    assert_eq!((members.len(), members[0].incarnation), (1, inc));
    a.stop.cancel();
    a.task.await.unwrap();
    assert!(world.node("x").members().await.unwrap().is_empty(), "left on stop");
}
