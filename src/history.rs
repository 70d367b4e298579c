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
///
/// The spec is nondeterministic (expired or not), and the checker replays an
/// op of unknown outcome with `invoke`, which must pick one way: so the
/// register holds every state the ops so far could have led to, and an op
/// keeps those consistent with what it returned.
#[derive(Clone, Debug)]
struct Register {
    /// (value, carries a deadline), each a possible current state.
    states: Vec<(Option<u64>, bool)>,
}

impl Default for Register {
    fn default() -> Self {
        Register {
            states: vec![(None, false)],
        }
    }
}

/// One op on one possible state: what it returns and leaves.
fn step(state: (Option<u64>, bool), op: &KvOp) -> (Ret, (Option<u64>, bool)) {
    let (value, expiring) = state;
    match op {
        KvOp::Read(_) => (Ret::Value(value), state),
        KvOp::Write(_, v) => (Ret::Ok, (Some(*v), false)),
        KvOp::WriteTtl(_, v, _) => (Ret::Ok, (Some(*v), true)),
        KvOp::Delete(_) => (Ret::Deleted(value.is_some()), (None, false)),
        KvOp::Incr(_) => {
            // INCR keeps the key's deadline.
            let n = value.unwrap_or(0) + 1;
            (Ret::Value(Some(n)), (Some(n), expiring))
        }
        KvOp::SetNx(_, v) => match value {
            Some(_) => (Ret::Applied(false), state),
            None => (Ret::Applied(true), (Some(*v), false)),
        },
    }
}

impl Register {
    /// Every (return, next state) the op can give from the states held:
    /// each state as it is, and an expiring one also after it expired.
    fn outcomes(&self, op: &KvOp) -> Vec<(Ret, (Option<u64>, bool))> {
        let mut out = Vec::new();
        for &s in &self.states {
            out.push(step(s, op));
            if s.1 {
                out.push(step((None, false), op));
            }
        }
        out
    }

    fn keep(&mut self, next: impl Iterator<Item = (Option<u64>, bool)>) {
        let mut states: Vec<_> = next.collect();
        states.sort();
        states.dedup();
        self.states = states;
    }
}

impl SequentialSpec for Register {
    type Op = KvOp;
    type Ret = Ret;
    fn invoke(&mut self, op: &KvOp) -> Ret {
        let out = self.outcomes(op);
        let ret = out[0].0.clone();
        self.keep(out.into_iter().map(|(_, s)| s));
        ret
    }

    fn is_valid_step(&mut self, op: &KvOp, ret: &Ret) -> bool {
        let out = self.outcomes(op);
        if !out.iter().any(|(r, _)| r == ret) {
            return false;
        }
        self.keep(out.into_iter().filter(|(r, _)| r == ret).map(|(_, s)| s));
        true
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

    #[test]
    fn expiry_may_happen_any_time_but_is_final_and_incr_serializes() {
        let t0 = Instant::now();
        let ms = |n| t0 + Duration::from_millis(n);
        let k = || "k".to_string();
        let run = |ops: &[(KvOp, Option<Ret>)]| {
            let mut h = History::default();
            for (i, (op, ret)) in ops.iter().enumerate() {
                let id = h.invoke(i as u64, op.clone(), ms(10 * i as u64));
                if let Some(r) = ret {
                    h.ret(id, r.clone(), ms(10 * i as u64 + 5));
                }
            }
            h.check()
        };
        let ttl = (KvOp::WriteTtl(k(), 7, 100), Some(Ret::Ok));
        let gone = (KvOp::Read(k()), Some(Ret::Value(None)));
        let seen = (KvOp::Read(k()), Some(Ret::Value(Some(7))));
        assert!(run(&[ttl.clone(), seen.clone(), gone.clone()]).is_ok());
        assert!(
            run(&[ttl.clone(), gone.clone(), seen.clone()]).is_err(),
            "an expired key came back"
        );
        // Two increments of unknown outcome after the key expired.
        let unknown = (KvOp::Incr(k()), None);
        let two = (KvOp::Read(k()), Some(Ret::Value(Some(2))));
        assert!(run(&[ttl.clone(), unknown.clone(), unknown.clone(), two]).is_ok());
        let lost = (KvOp::Incr(k()), Some(Ret::Value(Some(1))));
        assert!(
            run(&[(KvOp::Write(k(), 5), Some(Ret::Ok)), lost]).is_err(),
            "an increment lost the write before it"
        );
    }
}
