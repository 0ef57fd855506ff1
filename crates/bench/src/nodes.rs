//! The servers a pair scenario talks to: one server, or several nodes of one cluster.
//!
//! Invariant: with two nodes or more, the two parties of every pair sit on different nodes (pair `i`'s first party
//! on node `i mod n`, its second on node `(i + 1) mod n`), so every call and every relayed message crosses nodes,
//! and the pairs spread evenly over the nodes. CPU is the sum over every node whose pid is known.

use crate::proc_stats::CpuMeter;

#[derive(Clone, Debug)]
pub struct Nodes {
    urls: Vec<String>,
    pids: Vec<u32>,
}

impl Nodes {
    /// `urls` (at least one) and the pids of those whose CPU should count (in the same order; may be fewer).
    pub fn new(urls: Vec<String>, pids: Vec<u32>) -> Nodes {
        assert!(!urls.is_empty(), "a scenario needs a server");
        Nodes { urls, pids }
    }

    /// One server.
    pub fn one(url: String, pid: Option<u32>) -> Nodes {
        Nodes::new(vec![url], pid.into_iter().collect())
    }

    /// Where pair `i`'s first party connects.
    pub fn first(&self, i: usize) -> &str {
        &self.urls[i % self.urls.len()]
    }

    /// Where pair `i`'s second party connects: another node whenever there are several.
    pub fn second(&self, i: usize) -> &str {
        &self.urls[(i + 1) % self.urls.len()]
    }

    pub fn count(&self) -> usize {
        self.urls.len()
    }

    /// A CPU meter per node with a known pid, started now.
    pub fn cpu_meters(&self) -> Vec<CpuMeter> {
        self.pids.iter().map(|&pid| CpuMeter::start(Some(pid))).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_pair_is_split_across_nodes_and_pairs_spread_over_them() {
        let n = Nodes::new(vec!["a".into(), "b".into(), "c".into()], vec![]);
        for i in 0..9 {
            assert_ne!(n.first(i), n.second(i), "pair {i}");
        }
        let firsts: Vec<&str> = (0..6).map(|i| n.first(i)).collect();
        assert_eq!(firsts, ["a", "b", "c", "a", "b", "c"]);
        let one = Nodes::one("a".into(), None);
        assert_eq!((one.first(3), one.second(3)), ("a", "a"));
    }
}
