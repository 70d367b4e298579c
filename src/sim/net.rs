//! The simulated network's partitions and the simulation's one RNG.

use super::Endpoint;
use std::collections::BTreeSet;
use std::time::Duration;

/// SplitMix64: small, fast, and the only source of randomness in a run.
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Self {
        Rng(seed ^ 0x9E37_79B9_7F4A_7C15)
    }
    pub fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
    pub fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }
    pub fn f64(&mut self) -> f64 {
        (self.next() >> 11) as f64 / (1u64 << 53) as f64
    }
    pub fn chance(&mut self, p: f64) -> bool {
        self.f64() < p
    }
    /// A network delay: mostly sub-millisecond, sometimes tens of ms.
    pub fn delay(&mut self, faults: bool) -> Duration {
        let us = if faults && self.chance(0.05) {
            1_000 + self.below(40_000)
        } else {
            50 + self.below(900)
        };
        Duration::from_micros(us)
    }
}

/// Which directed links are cut.
pub struct Net {
    nodes: usize,
    cut: BTreeSet<(Endpoint, Endpoint)>,
}

impl Net {
    pub fn new(nodes: usize) -> Self {
        Net {
            nodes,
            cut: BTreeSet::new(),
        }
    }

    pub fn blocked(&self, from: Endpoint, to: Endpoint) -> bool {
        self.cut.contains(&(from, to))
    }

    pub fn one_way(&mut self, from: Endpoint, to: Endpoint) {
        self.cut.insert((from, to));
    }

    pub fn cut(&mut self, a: Endpoint, b: Endpoint) {
        self.cut.insert((a, b));
        self.cut.insert((b, a));
    }

    /// Cuts node `i` off from the other nodes (not from the server or clients).
    pub fn isolate(&mut self, i: usize) {
        for j in 0..self.nodes {
            if j != i {
                self.cut(Endpoint::Node(i), Endpoint::Node(j));
            }
        }
    }

    /// Nodes below `at` on one side, the rest on the other.
    pub fn split(&mut self, at: usize) {
        for i in 0..at {
            for j in at..self.nodes {
                self.cut(Endpoint::Node(i), Endpoint::Node(j));
            }
        }
    }

    pub fn heal(&mut self) {
        self.cut.clear();
    }
}
