//! Sealed frames: the frames of an authenticated connection carry an HMAC tag
//! over a per-direction sequence number ([`Sealer`] writes them, [`Opener`]
//! checks and strips the tag). Keys come from [`crate::auth`].

use super::frame::{decode, encode_frame_into, read_frame, read_frame_bytes, WireError};
use crate::auth::{SessionKey, Tag, TAG_LEN};
use serde::de::DeserializeOwned;
use serde::Serialize;
use std::io::{self, Read, Write};

/// The sending half of a connection: frames carry an HMAC tag over a
/// per-direction sequence number when the connection is authenticated
/// (see [`crate::auth`]), and are plain frames otherwise.
pub struct Sealer {
    key: Option<SessionKey>,
    seq: u64,
}

impl Sealer {
    /// Plain frames, no tag.
    pub fn plain() -> Sealer {
        Sealer { key: None, seq: 0 }
    }

    pub fn new(key: Option<SessionKey>) -> Sealer {
        Sealer { key, seq: 0 }
    }

    /// Appends one frame for `msg` to `buf`: length prefix, body, tag.
    pub fn frame_into<T: Serialize + ?Sized>(&mut self, buf: &mut Vec<u8>, msg: &T) {
        let start = buf.len();
        encode_frame_into(buf, msg);
        if let Some(k) = &self.key {
            let tag = k.tag(self.seq, &buf[start + 4..]);
            self.seq += 1;
            buf.extend_from_slice(&tag);
            let len = (buf.len() - start - 4) as u32;
            buf[start..start + 4].copy_from_slice(&len.to_be_bytes());
        }
    }

    /// Writes one frame with a single `write_all`.
    pub fn write<W: Write, T: Serialize + ?Sized>(&mut self, w: &mut W, msg: &T) -> io::Result<()> {
        let mut buf = Vec::with_capacity(64);
        self.frame_into(&mut buf, msg);
        w.write_all(&buf)?;
        w.flush()
    }
}

/// The receiving half matching [`Sealer`]: checks and strips the tag.
pub struct Opener {
    key: Option<SessionKey>,
    seq: u64,
}

impl Opener {
    pub fn plain() -> Opener {
        Opener { key: None, seq: 0 }
    }

    pub fn new(key: Option<SessionKey>) -> Opener {
        Opener { key, seq: 0 }
    }

    /// Reads, authenticates and decodes one frame whose body is at most `max` bytes.
    pub fn read<R: Read, T: DeserializeOwned>(
        &mut self,
        r: &mut R,
        max: usize,
    ) -> Result<T, WireError> {
        let Some(k) = &self.key else {
            return read_frame(r, max);
        };
        let mut body = read_frame_bytes(r, max.saturating_add(TAG_LEN))?;
        if body.len() < TAG_LEN {
            return Err(WireError::Forged);
        }
        let tag: Tag = body[body.len() - TAG_LEN..].try_into().expect("tag length");
        body.truncate(body.len() - TAG_LEN);
        if !k.ok(self.seq, &body, &tag) {
            return Err(WireError::Forged);
        }
        self.seq += 1;
        decode(&body, max)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::auth::ClusterKey;
    use crate::wire::{encode_frame_into, Request};

    #[test]
    fn sealed_frames_authenticate_order_and_content() {
        let k = ClusterKey::new(b"0123456789abcdef");
        let (c, a) = (crate::auth::nonce(), crate::auth::nonce());
        let (to_acceptor, _) = k.session(&c, &a);
        let mut tx = Sealer::new(Some(to_acceptor.clone()));
        let mut buf = Vec::new();
        tx.frame_into(&mut buf, &Request::Status);
        let first = buf.len();
        tx.frame_into(&mut buf, &Request::Get { key: b"k".to_vec() });

        let mut rx = Opener::new(Some(to_acceptor.clone()));
        let mut r = buf.as_slice();
        assert_eq!(
            rx.read::<_, Request>(&mut r, 1024).unwrap(),
            Request::Status
        );
        assert!(matches!(
            rx.read::<_, Request>(&mut r, 1024).unwrap(),
            Request::Get { .. }
        ));

        // Replaying the first frame, or dropping it, fails the sequence.
        let mut rx = Opener::new(Some(to_acceptor.clone()));
        let mut replay = [&buf[..first], &buf[..first]].concat();
        let mut r = replay.as_slice();
        rx.read::<_, Request>(&mut r, 1024).unwrap();
        assert!(matches!(
            rx.read::<_, Request>(&mut r, 1024),
            Err(WireError::Forged)
        ));
        let mut rx = Opener::new(Some(to_acceptor));
        assert!(matches!(
            rx.read::<_, Request>(&mut &buf[first..], 1024),
            Err(WireError::Forged)
        ));
        // A flipped body bit.
        replay[5] ^= 1;
        let mut rx = Opener::new(Some(k.session(&c, &a).0));
        assert!(matches!(
            rx.read::<_, Request>(&mut replay.as_slice(), 1024),
            Err(WireError::Forged)
        ));
        // A plain frame where a sealed one is expected.
        let mut plain = Vec::new();
        encode_frame_into(&mut plain, &Request::Status);
        let mut rx = Opener::new(Some(k.session(&c, &a).0));
        assert!(rx.read::<_, Request>(&mut plain.as_slice(), 1024).is_err());
    }
}
