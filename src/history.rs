//! A history of client operations on keys, checked for linearizability per
//! key with `consistency_model`'s `LinearizabilityTester` (the checker
//! extracted from stateright). Used by the simulator and the chaos runs.
//! An op whose outcome is unknown stays "in flight" forever: the checker may
//! place it anywhere after its start, or nowhere.

use consistency_model::{ConsistencyTester, LinearizabilityTester, SequentialSpec};
use std::collections::BTreeMap;
use std::time::Instant;

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum KvOp {
    Read(String),
    Write(String, u64),
    Delete(String),
    /// A write with a time to live (ms): the key may expire at any moment
    /// after the write, and once any op saw it gone it stays gone.
    WriteTtl(String, u64, u64),
    /// INCR: returns the new value.
    Incr(String),
    /// SET NX: returns whether it wrote.
    SetNx(String, u64),
}

impl KvOp {
    fn key(&self) -> &str {
        match self {
            KvOp::Read(k)
            | KvOp::Write(k, _)
            | KvOp::Delete(k)
            | KvOp::WriteTtl(k, ..)
            | KvOp::Incr(k)
            | KvOp::SetNx(k, _) => k,
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Ret {
    Value(Option<u64>),
    Ok,
    Deleted(bool),
    /// A conditional write: whether it wrote.
    Applied(bool),
}

/// One key as a sequential register whose value may carry a deadline.
/// Time is not modelled: a key written with a TTL may expire between any
/// two ops (the checker picks), which every op that looks at it may
/// observe; expiry is final until the next write. So the spec checks that
/// no expired key comes back (across failovers and clocks that differ),
/// and that INCR and SET NX serialize with everything else.
#[derive(Clone, Debug, Default)]
struct Register {
    value: Option<u64>,
    expiring: bool,
}

impl Register {
    /// The value an op finds: the current one, or (when `gone`, allowed
    /// only for an expiring key) none, and then the key has expired.
    fn look(&mut self, gone: bool) -> Option<Option<u64>> {
        if gone {
            if !self.expiring {
                return None;
            }
            self.value = None;
            self.expiring = false;
        }
        Some(self.value)
    }
}

impl SequentialSpec for Register {
    type Op = KvOp;
    type Ret = Ret;
    fn invoke(&mut self, op: &KvOp) -> Ret {
        match op {
            KvOp::Read(_) => Ret::Value(self.value),
            KvOp::Write(_, v) => {
                *self = Register {
                    value: Some(*v),
                    expiring: false,
                };
                Ret::Ok
            }
            KvOp::WriteTtl(_, v, _) => {
                *self = Register {
                    value: Some(*v),
                    expiring: true,
                };
                Ret::Ok
            }
            KvOp::Delete(_) => {
                self.expiring = false;
                Ret::Deleted(self.value.take().is_some())
            }
            KvOp::Incr(_) => {
                let n = self.value.unwrap_or(0) + 1;
                self.value = Some(n);
                Ret::Value(Some(n))
            }
            KvOp::SetNx(_, v) => {
                if self.value.is_some() {
                    return Ret::Applied(false);
                }
                self.value = Some(*v);
                Ret::Applied(true)
            }
        }
    }

    fn is_valid_step(&mut self, op: &KvOp, ret: &Ret) -> bool {
        // Every way the op could have gone: with the key as it is, or (if it
        // carries a deadline) after it expired.
        for gone in [false, true] {
            let mut s = self.clone();
            if s.look(gone).is_none() {
                continue;
            }
            if &s.invoke(op) == ret {
                *self = s;
                return true;
            }
        }
        false
    }
}

struct Call {
    thread: u64,
    op: KvOp,
    invoked: Instant,
    returned: Option<(Instant, Ret)>,
    cancelled: bool,
}

/// Checking recurses once per op of a key: call [`History::check`] on a
/// thread with a large stack for long histories.
#[derive(Default)]
pub struct History {
    calls: Vec<Call>,
}

impl History {
    pub fn invoke(&mut self, thread: u64, op: KvOp, at: Instant) -> u64 {
        self.calls.push(Call {
            thread,
            op,
            invoked: at,
            returned: None,
            cancelled: false,
        });
        (self.calls.len() - 1) as u64
    }

    pub fn ret(&mut self, id: u64, ret: Ret, at: Instant) {
        self.calls[id as usize].returned = Some((at, ret));
    }

    /// The op surely did not take effect: it is left out.
    pub fn cancel(&mut self, id: u64) {
        self.calls[id as usize].cancelled = true;
    }

    /// Checks every key's history; the error shows the offending key's ops.
    pub fn check(&self) -> Result<(), String> {
        // Events in time order; at equal times, returns before invocations
        // (an op that ends when another starts precedes it).
        let mut events: Vec<(Instant, u8, usize)> = Vec::new();
        for (i, c) in self.calls.iter().enumerate().filter(|(_, c)| !c.cancelled) {
            events.push((c.invoked, 1, i));
            if let Some((t, _)) = &c.returned {
                events.push((*t, 0, i));
            }
        }
        events.sort();
        let mut testers: BTreeMap<&str, LinearizabilityTester<u64, Register>> = BTreeMap::new();
        for (_, kind, i) in events {
            let c = &self.calls[i];
            let t = testers
                .entry(c.op.key())
                .or_insert_with(|| LinearizabilityTester::new(Register::default()));
            let r = if kind == 1 {
                t.on_invoke(c.thread, c.op.clone()).map(|_| ())
            } else {
                let (_, ret) = c.returned.as_ref().expect("returned");
                t.on_return(c.thread, ret.clone()).map(|_| ())
            };
            if let Err(e) = r {
                return Err(format!("bad history for key {}: {e}", c.op.key()));
            }
        }
        for (key, t) in &testers {
            if !t.is_consistent() {
                let ops: Vec<String> = self
                    .calls
                    .iter()
                    .filter(|c| !c.cancelled && c.op.key() == *key)
                    .map(|c| format!("{:?} -> {:?}", c.op, c.returned.as_ref().map(|r| &r.1)))
                    .collect();
                let tail = &ops[ops.len().saturating_sub(12)..];
                return Err(format!("key {key}: no linearization; last ops: {tail:?}"));
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn the_checker_rejects_a_stale_read_and_accepts_a_concurrent_one() {
        let t0 = Instant::now();
        let ms = |n| t0 + Duration::from_millis(n);
        let mut h = History::default();
        let w = h.invoke(1, KvOp::Write("k".into(), 1), ms(0));
        h.ret(w, Ret::Ok, ms(10));
        let r = h.invoke(2, KvOp::Read("k".into()), ms(20));
        h.ret(r, Ret::Value(None), ms(30));
        assert!(
            h.check().is_err(),
            "a read after an acknowledged write saw nothing"
        );

        let mut h = History::default();
        let w = h.invoke(1, KvOp::Write("k".into(), 1), ms(0));
        h.ret(w, Ret::Ok, ms(50));
        let r = h.invoke(2, KvOp::Read("k".into()), ms(20));
        h.ret(r, Ret::Value(None), ms(30));
        assert!(h.check().is_ok());

        // An unknown write may have happened later.
        let mut h = History::default();
        h.invoke(1, KvOp::Write("k".into(), 7), ms(0));
        let r = h.invoke(2, KvOp::Read("k".into()), ms(20));
        h.ret(r, Ret::Value(None), ms(30));
        let r = h.invoke(2, KvOp::Read("k".into()), ms(40));
        h.ret(r, Ret::Value(Some(7)), ms(50));
        assert!(h.check().is_ok());
    }
}
