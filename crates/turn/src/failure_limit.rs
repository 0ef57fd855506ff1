//! How often one client is told that its credentials are wrong.
//!
//! RFC 8489 §9.2.4 answers a request whose integrity fails with 401, REALM and NONCE. A correct client gives up after
//! the second such answer; ZLMediaKit's ICE agent does not: it keeps the first nonce it saw, resends at once on every
//! 401, and so loops at round-trip pace for as long as its credentials stay wrong (an ephemeral credential past its
//! expiry, say). Each client gets a few such 401s per window; past that its failing requests get 441 (Wrong
//! Credentials), which ends the attempt of every client: ZLMediaKit acts on 401 alone, and an RFC client stops at
//! any final error (silence instead would leave it retransmitting: coturn's `turnutils_uclient` then never exits).
//!
//! Invariants: memory is bounded ([`MAX_TRACKED`] clients; when full, expired windows are dropped, and a client that
//! still finds no room is answered as if untracked); nothing is kept for requests that fail for other reasons, and
//! requests without integrity (the first, unauthenticated try) are never limited.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use crate::engine::Client;

/// Failed-integrity answers one client gets per [`WINDOW`].
pub const ANSWERS: u32 = 4;
/// The window over which [`ANSWERS`] are counted.
pub const WINDOW: Duration = Duration::from_secs(10);
/// Clients tracked at most.
pub const MAX_TRACKED: usize = 4096;

#[derive(Default)]
pub struct FailureLimit {
    /// Client → (start of its window, answers given in it).
    clients: HashMap<Client, (Instant, u32)>,
}

impl FailureLimit {
    /// Whether `client`'s latest failed request may still be answered; counts the answer when it may.
    pub fn allow(&mut self, client: Client, now: Instant) -> bool {
        if !self.clients.contains_key(&client) && self.clients.len() >= MAX_TRACKED {
            self.expire(now);
            if self.clients.len() >= MAX_TRACKED {
                return true;
            }
        }
        let (start, count) = self.clients.entry(client).or_insert((now, 0));
        if now.duration_since(*start) >= WINDOW {
            (*start, *count) = (now, 0);
        }
        *count += 1;
        *count <= ANSWERS
    }

    /// Forgets the windows that are over.
    pub fn expire(&mut self, now: Instant) {
        self.clients.retain(|_, (start, _)| now.duration_since(*start) < WINDOW);
    }

    /// Clients tracked now.
    pub fn len(&self) -> usize {
        self.clients.len()
    }

    pub fn is_empty(&self) -> bool {
        self.clients.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::Transport;
    use std::net::SocketAddr;

    fn client(n: u32) -> Client {
        Client { transport: Transport::Udp, addr: SocketAddr::from((n.to_be_bytes(), 9)) }
    }

    #[test]
    fn memory_stays_bounded_and_expired_windows_make_room() {
        let mut limit = FailureLimit::default();
        let t0 = Instant::now();
        for n in 0..MAX_TRACKED as u32 + 100 {
            assert!(limit.allow(client(n), t0), "a first failure is always answered");
        }
        assert_eq!(limit.len(), MAX_TRACKED);
        // Full: the untracked client is answered, untracked, however often.
        for _ in 0..10 {
            assert!(limit.allow(client(u32::MAX), t0));
        }
        assert_eq!(limit.len(), MAX_TRACKED);
        // Once the windows are over, a new client finds room.
        assert!(limit.allow(client(u32::MAX), t0 + WINDOW));
        assert_eq!(limit.len(), 1);
        limit.expire(t0 + WINDOW * 2);
        assert!(limit.is_empty());
    }
}
