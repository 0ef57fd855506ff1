//! Envelopes to other nodes, coalesced into batches: one backbone `send` (one Redis `PUBLISH`) carries every
//! envelope queued for that node while the previous batch was in flight, so a busy node costs the backbone one
//! command per batch, not per message, and an idle one adds no delay.
//!
//! Invariants:
//! - Envelopes to one node leave in the order they were queued (one queue and one sending task per destination),
//!   so the backbone's per-destination order carries them to the other side in order.
//! - Queuing never waits: [`Bus::send`] fails with [`BusFull`] when a destination's queue is full (the hub then
//!   answers `unavailable`), so a stalled backbone never stalls a session.
//! - A batch the backbone refuses is dropped and counted ([`Bus::lost`]); the bus is at most once.
//! - [`decode`] never panics on bytes from the wire: a malformed batch yields an error, not a partial guess.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use bytes::{BufMut, Bytes, BytesMut};
use parking_lot::Mutex;
use tokio::sync::mpsc;
use tracing::warn;

use super::Backbone;

/// Envelopes queued per destination before [`Bus::send`] refuses more.
pub const QUEUE: usize = 8192;
/// Most envelopes in one batch.
pub const MAX_BATCH: usize = 512;

#[derive(Debug, PartialEq, Eq, thiserror::Error)]
#[error("the queue to node {0} is full")]
pub struct BusFull(pub String);

#[derive(Debug, PartialEq, Eq, thiserror::Error)]
#[error("malformed batch: {0}")]
pub struct BadBatch(&'static str);

/// The sending side of the bus for one node.
pub struct Bus<B: Backbone> {
    backbone: Arc<B>,
    queues: Mutex<HashMap<String, mpsc::Sender<Bytes>>>,
    batches: Arc<AtomicU64>,
    lost: Arc<AtomicU64>,
}

impl<B: Backbone> Bus<B> {
    pub fn new(backbone: Arc<B>) -> Bus<B> {
        Bus { backbone, queues: Mutex::default(), batches: Arc::default(), lost: Arc::default() }
    }

    /// Queues `envelope` for `node`; never waits.
    pub fn send(&self, node: &str, envelope: Bytes) -> Result<(), BusFull> {
        let mut queues = self.queues.lock();
        // Looked up by `&str` first: the per-message path allocates no key.
        let queue = match queues.get(node) {
            Some(queue) => queue,
            None => queues.entry(node.to_owned()).or_insert_with(|| self.spawn_sender(node)),
        };
        queue.try_send(envelope).map_err(|_| BusFull(node.to_owned()))
    }

    /// Drops `node`'s queue (a node that left or was lost); what is queued still goes out, then its task ends.
    pub fn forget(&self, node: &str) {
        self.queues.lock().remove(node);
    }

    /// Batches handed to the backbone so far.
    pub fn batches(&self) -> u64 {
        self.batches.load(Ordering::Relaxed)
    }

    /// Envelopes dropped because the backbone refused their batch.
    pub fn lost(&self) -> u64 {
        self.lost.load(Ordering::Relaxed)
    }

    fn spawn_sender(&self, node: &str) -> mpsc::Sender<Bytes> {
        let (tx, mut rx) = mpsc::channel::<Bytes>(QUEUE);
        let (backbone, node, batches, lost) =
            (self.backbone.clone(), node.to_owned(), self.batches.clone(), self.lost.clone());
        tokio::spawn(async move {
            let mut pending = Vec::with_capacity(MAX_BATCH);
            // Ends when the bus (every sender) is dropped and the queue is drained.
            while rx.recv_many(&mut pending, MAX_BATCH).await > 0 {
                let batch = encode(&pending);
                batches.fetch_add(1, Ordering::Relaxed);
                if let Err(e) = backbone.send(&node, batch).await {
                    lost.fetch_add(pending.len() as u64, Ordering::Relaxed);
                    warn!(%node, envelopes = pending.len(), error = %e, "bus batch lost");
                }
                pending.clear();
            }
        });
        tx
    }
}

/// One batch: each envelope as a 4-byte big-endian length and its bytes.
pub fn encode(envelopes: &[Bytes]) -> Bytes {
    let mut out = BytesMut::with_capacity(envelopes.iter().map(|e| 4 + e.len()).sum());
    for e in envelopes {
        out.put_u32(e.len() as u32);
        out.put_slice(e);
    }
    out.freeze()
}

/// The envelopes of a batch (zero-copy slices of it).
pub fn decode(batch: &Bytes) -> Result<Vec<Bytes>, BadBatch> {
    let mut out = Vec::new();
    let mut at = 0;
    while at < batch.len() {
        let head = batch.get(at..at + 4).ok_or(BadBatch("truncated length"))?;
        let len = u32::from_be_bytes(head.try_into().expect("4 bytes")) as usize;
        let start = at + 4;
        let end = start.checked_add(len).filter(|&e| e <= batch.len()).ok_or(BadBatch("envelope past the end"))?;
        out.push(batch.slice(start..end));
        at = end;
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn batches_round_trip_and_malformed_ones_are_refused() {
        let envelopes = vec![Bytes::from_static(b"one"), Bytes::new(), Bytes::from(vec![7; 70_000])];
        assert_eq!(decode(&encode(&envelopes)).unwrap(), envelopes);
        assert_eq!(decode(&Bytes::new()).unwrap(), Vec::<Bytes>::new());
        let good = encode(&envelopes);
        for cut in 1..good.len() {
            let part = good.slice(..cut);
            // Every prefix either decodes to whole envelopes (a cut at a boundary) or is refused; none panics.
            if let Ok(got) = decode(&part) {
                assert!(envelopes.starts_with(&got), "cut at {cut}");
            }
        }
        assert_eq!(decode(&Bytes::from_static(&[0, 0, 0, 9, 1])), Err(BadBatch("envelope past the end")));
        assert_eq!(decode(&Bytes::from_static(&[0xff, 0xff, 0xff, 0xff])), Err(BadBatch("envelope past the end")));
    }
}
