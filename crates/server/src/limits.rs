//! Connection limits (total and per source IP) and the per-connection message budget.
//!
//! A [`ConnectionSlot`] is taken before a websocket upgrade is accepted and released when it drops, so the counts
//! can never drift from the sessions actually running.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Arc;

use parking_lot::Mutex;
use tokio::time::Instant;

/// Counts of open connections.
#[derive(Default)]
pub struct ConnectionLimits {
    max_total: usize,
    max_per_ip: usize,
    open: Mutex<(usize, HashMap<IpAddr, usize>)>,
}

/// Why a connection was refused.
#[derive(Debug, PartialEq, Eq)]
pub enum Refused {
    Total,
    PerIp,
}

/// One open connection's place in the counts; released on drop.
pub struct ConnectionSlot {
    limits: Arc<ConnectionLimits>,
    ip: IpAddr,
}

impl ConnectionLimits {
    pub fn new(max_total: usize, max_per_ip: usize) -> ConnectionLimits {
        ConnectionLimits { max_total, max_per_ip, open: Mutex::default() }
    }

    /// Takes a slot for a connection from `ip`, or says which limit refuses it.
    pub fn acquire(self: &Arc<Self>, ip: IpAddr) -> Result<ConnectionSlot, Refused> {
        let mut open = self.open.lock();
        if open.0 >= self.max_total {
            return Err(Refused::Total);
        }
        let n = open.1.entry(ip).or_insert(0);
        if *n >= self.max_per_ip {
            return Err(Refused::PerIp);
        }
        *n += 1;
        open.0 += 1;
        Ok(ConnectionSlot { limits: self.clone(), ip })
    }
}

impl Drop for ConnectionSlot {
    fn drop(&mut self) {
        let mut open = self.limits.open.lock();
        open.0 = open.0.saturating_sub(1);
        if let Some(n) = open.1.get_mut(&self.ip) {
            *n -= 1;
            if *n == 0 {
                open.1.remove(&self.ip);
            }
        }
    }
}

/// A token bucket of messages: `rate` per second, holding at most `rate + burst`.
pub struct MessageBudget {
    rate: f64,
    capacity: f64,
    tokens: f64,
    last: Instant,
    /// Rate-limited messages in a row.
    pub refused_in_a_row: u32,
}

impl MessageBudget {
    pub fn new(rate: u32, burst: u32) -> MessageBudget {
        let capacity = f64::from(rate) + f64::from(burst);
        MessageBudget { rate: f64::from(rate), capacity, tokens: capacity, last: Instant::now(), refused_in_a_row: 0 }
    }

    /// Spends one message at `now`; false when over budget.
    pub fn take(&mut self, now: Instant) -> bool {
        let elapsed = now.saturating_duration_since(self.last).as_secs_f64();
        self.last = now;
        self.tokens = (self.tokens + elapsed * self.rate).min(self.capacity);
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            self.refused_in_a_row = 0;
            true
        } else {
            self.refused_in_a_row += 1;
            false
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[test]
    fn slots_are_counted_and_released() {
        let l = Arc::new(ConnectionLimits::new(3, 2));
        let a: IpAddr = "192.0.2.1".parse().unwrap();
        let b: IpAddr = "192.0.2.2".parse().unwrap();
        let s1 = l.acquire(a).unwrap();
        let _s2 = l.acquire(a).unwrap();
        assert_eq!(l.acquire(a).err(), Some(Refused::PerIp));
        let _s3 = l.acquire(b).unwrap();
        assert_eq!(l.acquire(b).err(), Some(Refused::Total));
        drop(s1);
        assert!(l.acquire(b).is_ok());
    }

    #[tokio::test(start_paused = true)]
    async fn budget_refills_at_its_rate() {
        let mut b = MessageBudget::new(10, 5);
        let t0 = Instant::now();
        for _ in 0..15 {
            assert!(b.take(t0));
        }
        assert!(!b.take(t0));
        assert_eq!(b.refused_in_a_row, 1);
        assert!(b.take(t0 + Duration::from_millis(100)), "0.1 s buys one message");
        assert_eq!(b.refused_in_a_row, 0);
        assert!(!b.take(t0 + Duration::from_millis(100)));
    }
}
