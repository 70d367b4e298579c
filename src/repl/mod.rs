//! The replication stream as two sans-IO state machines, driven by the
//! node's threads (`src/node/replication.rs`) and by the simulator alike.
//!
//! * [`Feeder`] — the coordinator's end of one replica's stream: it decides
//!   whether to serve the `Follow` request, where the stream starts (the
//!   log suffix after the longest prefix both logs share, or a snapshot),
//!   which frame to send next, and what an acknowledgement changes.
//! * [`Follower`] — the replica's end: it takes frames and returns what to
//!   do ([`Step`]): entries to persist, a snapshot to persist, the commit
//!   moved (apply), a position to acknowledge.
//!
//! Both work on the shared in-memory [`ReplLog`](crate::log::ReplLog) and
//! [`Store`](crate::store::Store); neither touches a socket, a file, a
//! thread or the clock. The rules they keep (see docs/ARCHITECTURE.md,
//! "Replication stream"):
//!
//! 1. A replica acknowledges only what its current stream confirmed (the end
//!    of the last batch it appended) and what is persisted (with a
//!    write-ahead log, after the write the fsync policy requires).
//! 2. A replica never holds less than it acknowledged: a snapshot is staged
//!    beside the current data and swapped in only once the snapshot and the
//!    entries streamed after it reach every position the replica could have
//!    acknowledged, or the coordinator shows it has nothing more. A stream
//!    cut before that leaves the old data untouched.
//! 3. The coordinator counts an acknowledgement only for a position its own
//!    log holds, and tracks each replica under the stream number it is on.

mod feeder;
mod follower;

pub use feeder::{Acks, Feeder, Poll};
pub use follower::{Follower, Step, StreamEnd};

/// A feeder with nothing new sends an empty batch after this long: the
/// replica's acknowledgement of it shows an idle coordinator that a
/// returning replica caught up, and tells a replica staging a snapshot that
/// the coordinator has nothing more.
pub const IDLE_WAIT: std::time::Duration = std::time::Duration::from_millis(100);
