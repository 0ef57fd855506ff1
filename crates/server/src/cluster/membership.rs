//! The membership driver: joins the cluster (retrying while the backbone is unreachable, so a node starts without
//! Redis and joins when it appears), renews the membership every heartbeat, watches the other members, and reports
//! each change as a [`NodeEvent`] to the cluster hub.
//!
//! Invariants:
//! - A membership found lost is never renewed: the driver reports [`NodeEvent::Lost`] (the hub must close its
//!   sessions with 1012 and forget its rooms) *before* it rejoins under a new incarnation ([`NodeEvent::Joined`]).
//! - A backbone that lost its state is reported as [`NodeEvent::Reset`] (the hub re-claims its rooms).
//! - Unreachability is reported once per outage ([`NodeEvent::Unreachable`], then [`NodeEvent::Reachable`]).
//! - Another member that disappears (crashed and timed out, or left) is reported once as [`NodeEvent::PeerLost`]
//!   with the incarnation that was seen, and a peer that comes back in a new incarnation as lost then joined.
//! - After the backbone comes back (reachable again, or reset empty) no peer is declared lost for one `grace`
//!   (the node timeout): the peers need a heartbeat or two to re-assert their own memberships, and their calls
//!   must survive that.
//! - On stop the driver leaves the cluster (best effort): the node's rooms are free at once.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use super::{Backbone, Membership, NodeId};

/// What the membership driver saw.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum NodeEvent {
    /// This node is a member, in this incarnation.
    Joined(NodeId),
    /// This node's membership was declared lost (it was cut off longer than the node timeout).
    Lost(NodeId),
    /// The backbone lost its state; the membership is asserted again, the rooms must be.
    Reset,
    /// The backbone cannot be reached.
    Unreachable(String),
    /// It can again.
    Reachable,
    /// Another node joined (or came back in a new incarnation).
    PeerJoined(NodeId),
    /// Another node is gone.
    PeerLost(NodeId),
}

/// Starts the driver; its events arrive on the returned receiver until `stop` is cancelled (after the leave).
/// `grace` (the node timeout) is how long peers get to re-assert themselves after a backbone outage or reset.
pub fn spawn<B: Backbone>(
    backbone: Arc<B>,
    heartbeat: Duration,
    grace: Duration,
    stop: CancellationToken,
) -> (JoinHandle<()>, mpsc::Receiver<NodeEvent>) {
    let (tx, rx) = mpsc::channel(256);
    let task = tokio::spawn(async move {
        let mut driver =
            Driver { backbone, tx, peers: HashMap::new(), unreachable: false, grace, quiet_until: Instant::now() };
        tokio::select! {
            () = driver.run(heartbeat) => {}
            () = stop.cancelled() => {}
        }
        if let Err(e) = driver.backbone.leave().await {
            warn!(error = %e, "could not leave the cluster cleanly; the node timeout will free its rooms");
        }
    });
    (task, rx)
}

struct Driver<B> {
    backbone: Arc<B>,
    tx: mpsc::Sender<NodeEvent>,
    /// Other members by id, with the incarnation last seen.
    peers: HashMap<String, u64>,
    unreachable: bool,
    grace: Duration,
    /// No peer is declared lost before this (see the module's invariants).
    quiet_until: Instant,
}

impl<B: Backbone> Driver<B> {
    async fn run(&mut self, heartbeat: Duration) {
        let mut tick = tokio::time::interval(heartbeat);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        self.join(&mut tick).await;
        loop {
            tick.tick().await;
            match self.backbone.heartbeat().await {
                Ok(Membership::Alive) => self.reachable().await,
                Ok(Membership::Reset) => {
                    self.reachable().await;
                    self.quiet_until = Instant::now() + self.grace;
                    self.emit(NodeEvent::Reset).await;
                }
                Ok(Membership::Lost) => {
                    self.reachable().await;
                    let lost = self.backbone.node();
                    warn!(node = %lost.id, incarnation = lost.incarnation, "this node was declared lost; rejoining");
                    self.emit(NodeEvent::Lost(lost)).await;
                    self.join(&mut tick).await;
                }
                Err(e) => {
                    // A members list read right after a failed heartbeat may come from a backbone that just came
                    // back empty: judge the peers only after a heartbeat that went through.
                    self.unreachable(e.to_string()).await;
                    continue;
                }
            }
            if let Ok(members) = self.backbone.members().await {
                self.watch(members).await;
            }
        }
    }

    /// Joins, retrying every heartbeat until the backbone answers.
    async fn join(&mut self, tick: &mut tokio::time::Interval) {
        loop {
            match self.backbone.join().await {
                Ok(node) => {
                    self.reachable().await;
                    info!(node = %node.id, incarnation = node.incarnation, "joined the cluster");
                    self.emit(NodeEvent::Joined(node)).await;
                    return;
                }
                Err(e) => self.unreachable(e.to_string()).await,
            }
            tick.tick().await;
        }
    }

    async fn watch(&mut self, members: Vec<NodeId>) {
        let me = self.backbone.node().id;
        let now: HashMap<String, u64> =
            members.into_iter().filter(|n| n.id != me).map(|n| (n.id, n.incarnation)).collect();
        let quiet = Instant::now() < self.quiet_until;
        let gone: Vec<NodeId> = self
            .peers
            .iter()
            // In the quiet period a missing peer may just not have re-asserted itself yet; a new incarnation is a
            // restart all the same.
            .filter(|(id, inc)| match now.get(*id) {
                None => !quiet,
                Some(seen) => seen != *inc,
            })
            .map(|(id, &incarnation)| NodeId { id: id.clone(), incarnation })
            .collect();
        for peer in gone {
            self.peers.remove(&peer.id);
            self.emit(NodeEvent::PeerLost(peer)).await;
        }
        for (id, incarnation) in now {
            if !self.peers.contains_key(&id) {
                self.peers.insert(id.clone(), incarnation);
                self.emit(NodeEvent::PeerJoined(NodeId { id, incarnation })).await;
            }
        }
    }

    async fn reachable(&mut self) {
        if std::mem::take(&mut self.unreachable) {
            self.quiet_until = Instant::now() + self.grace;
            self.emit(NodeEvent::Reachable).await;
        }
    }

    async fn unreachable(&mut self, why: String) {
        if !std::mem::replace(&mut self.unreachable, true) {
            warn!(error = %why, "the cluster backbone is unreachable");
            self.emit(NodeEvent::Unreachable(why)).await;
        }
    }

    async fn emit(&self, event: NodeEvent) {
        let _ = self.tx.send(event).await;
    }
}
