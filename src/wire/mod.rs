//! The one wire module: every byte DKV puts on a socket is produced and parsed here.
//!
//! * TCP: length-prefixed frames, a big-endian `u32` length followed by a bincode
//!   body. Every connection starts with a [`Hello`] frame carrying a magic number
//!   and the protocol version. Frames above the caller's limit are refused
//!   *before* any buffer is allocated for them.
//! * UDP: one [`Beacon`] per datagram, bincode, at most [`MAX_BEACON_BYTES`].
//!
//! Encoding is bincode 1.3 with varint integers, decoded with a size limit and
//! with trailing bytes rejected. To stay compatible, enums here are
//! append-only: bincode encodes a variant by its index, so never reorder or
//! remove a variant, only add new ones at the end.
//!
//! Files: `frame.rs` — the codec, frames and [`WireError`]; `seal.rs` —
//! HMAC-tagged frames ([`Sealer`], [`Opener`]); `handshake.rs` — [`Hello`],
//! [`ConnKind`], [`HelloReply`]; `client.rs` — client <-> node messages and
//! the [`ErrorKind`] every protocol reports; `repl.rs` — the replication
//! stream; `server.rs` — node / client <-> server messages and the cluster
//! view; `beacon.rs` — UDP beacons. Everything is re-exported here: callers
//! write `crate::wire::X`.

mod beacon;
mod client;
mod frame;
mod handshake;
mod repl;
mod seal;
mod server;

pub use beacon::*;
pub use client::*;
pub use frame::*;
pub use handshake::*;
pub use repl::*;
pub use seal::*;
pub use server::*;

/// "DKV1" — first field of every handshake and beacon.
pub const MAGIC: u32 = 0x444B_5631;
/// Bumped on any incompatible change of the messages of this module.
pub const PROTOCOL_VERSION: u16 = 6;
