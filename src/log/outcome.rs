//! The outcome of one write: a oneshot from the thread that applies the
//! entry to the client connection waiting for it.

use crate::types::OpOutcome;
use crossbeam_channel::{RecvTimeoutError, TryRecvError};
use parking_lot::{Condvar, Mutex};
use std::sync::Arc;
use std::time::Duration;

/// The outcome of one write, delivered once by whichever thread applies it. A write
/// whose promise is dropped unfulfilled (the coordinator stepped down) reads
/// as `Disconnected`: its outcome is unknown. Waiting parks the thread; unlike
/// a channel it never spins, which matters with many writers on few cores.
pub struct Outcome(Arc<(Mutex<Slot>, Condvar)>);

impl std::fmt::Debug for Outcome {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Outcome")
    }
}

pub(super) struct Promise(Arc<(Mutex<Slot>, Condvar)>);

enum Slot {
    Pending,
    Done(OpOutcome),
    Abandoned,
}

pub(super) fn oneshot() -> (Promise, Outcome) {
    let shared = Arc::new((Mutex::new(Slot::Pending), Condvar::new()));
    (Promise(shared.clone()), Outcome(shared))
}

impl Promise {
    pub(super) fn fulfil(self, outcome: OpOutcome) {
        *self.0 .0.lock() = Slot::Done(outcome);
        self.0 .1.notify_one();
    }
}

impl Drop for Promise {
    fn drop(&mut self) {
        let mut slot = self.0 .0.lock();
        if matches!(*slot, Slot::Pending) {
            *slot = Slot::Abandoned;
            self.0 .1.notify_one();
        }
    }
}

impl Outcome {
    /// Waits up to `timeout` for the write's outcome.
    pub fn recv_timeout(&self, timeout: Duration) -> Result<OpOutcome, RecvTimeoutError> {
        let deadline = std::time::Instant::now() + timeout;
        let mut slot = self.0 .0.lock();
        loop {
            match *slot {
                Slot::Done(o) => return Ok(o),
                Slot::Abandoned => return Err(RecvTimeoutError::Disconnected),
                Slot::Pending => {
                    if self.0 .1.wait_until(&mut slot, deadline).timed_out() {
                        return match *slot {
                            Slot::Done(o) => Ok(o),
                            Slot::Abandoned => Err(RecvTimeoutError::Disconnected),
                            Slot::Pending => Err(RecvTimeoutError::Timeout),
                        };
                    }
                }
            }
        }
    }

    /// The outcome if it is already known.
    pub fn try_recv(&self) -> Result<OpOutcome, TryRecvError> {
        match *self.0 .0.lock() {
            Slot::Done(o) => Ok(o),
            Slot::Abandoned => Err(TryRecvError::Disconnected),
            Slot::Pending => Err(TryRecvError::Empty),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_outcome_is_delivered_or_abandoned_never_lost() {
        let (p, o) = oneshot();
        assert_eq!(o.try_recv(), Err(TryRecvError::Empty));
        assert_eq!(
            o.recv_timeout(Duration::ZERO),
            Err(RecvTimeoutError::Timeout)
        );
        p.fulfil(OpOutcome::Deleted(true));
        assert_eq!(o.recv_timeout(Duration::ZERO), Ok(OpOutcome::Deleted(true)));
        let (p, o) = oneshot();
        let t = std::thread::spawn(move || o.recv_timeout(Duration::from_secs(30)));
        drop(p); // the coordinator stepped down
        assert_eq!(t.join().unwrap(), Err(RecvTimeoutError::Disconnected));
    }
}
