//! UDP beacons: one [`Beacon`] per datagram, tagged with the cluster key's
//! beacon key when the cluster has a secret.

use super::frame::{decode, encode, WireError};
use super::{MAGIC, PROTOCOL_VERSION};
use crate::auth::{ClusterKey, TAG_LEN};
use crate::types::{Epoch, LogPos, NodeId, Role};
use serde::{Deserialize, Serialize};

/// Largest beacon datagram we send or accept.
pub const MAX_BEACON_BYTES: usize = 512;

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Beacon {
    pub magic: u32,
    pub version: u16,
    pub from: NodeId,
    /// Grows at every restart of `from`; beacons of an older incarnation are stale.
    pub incarnation: u64,
    pub epoch: Epoch,
    pub role: Role,
    pub last: LogPos,
    pub applied: LogPos,
    pub digest: u64,
    /// Grows with every beacon `from` sends in this incarnation; with the
    /// incarnation it lets receivers drop replayed beacons.
    pub seq: u64,
}

impl Beacon {
    /// The datagram: the body, followed by its tag when there is a cluster key.
    pub fn encode(&self, key: Option<&ClusterKey>) -> Vec<u8> {
        let mut bytes = encode(self);
        if let Some(k) = key {
            let tag = k.beacon_tag(&bytes);
            bytes.extend_from_slice(&tag);
        }
        bytes
    }

    /// Parses a datagram; anything but a well-formed beacon of our version,
    /// tagged with our cluster key when we have one, is an error.
    pub fn decode(bytes: &[u8], key: Option<&ClusterKey>) -> Result<Beacon, WireError> {
        let bytes = match key {
            None => bytes,
            Some(k) => {
                if bytes.len() < TAG_LEN {
                    return Err(WireError::Forged);
                }
                let (body, tag) = bytes.split_at(bytes.len() - TAG_LEN);
                if !k.beacon_ok(body, tag) {
                    return Err(WireError::Forged);
                }
                body
            }
        };
        let b: Beacon = decode(bytes, MAX_BEACON_BYTES)?;
        if b.magic != MAGIC || b.version != PROTOCOL_VERSION {
            return Err(WireError::Malformed(
                "beacon with wrong magic or version".into(),
            ));
        }
        Ok(b)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn beacon_rejects_garbage() {
        assert!(Beacon::decode(b"hello world", None).is_err());
        assert!(Beacon::decode(&[0u8; 600], None).is_err());
    }

    fn beacon() -> Beacon {
        Beacon {
            magic: MAGIC,
            version: PROTOCOL_VERSION,
            from: 3,
            incarnation: 2,
            epoch: 7,
            role: Role::Replica,
            last: LogPos::new(7, 10),
            applied: LogPos::new(7, 9),
            digest: 42,
            seq: 5,
        }
    }

    #[test]
    fn beacon_tag_is_checked() {
        let k = ClusterKey::new(b"0123456789abcdef");
        let b = beacon();
        let bytes = b.encode(Some(&k));
        assert_eq!(Beacon::decode(&bytes, Some(&k)).unwrap(), b);
        // Wrong secret, no tag, a flipped bit: all forged.
        let other = ClusterKey::new(b"0123456789abcdeX");
        assert!(matches!(
            Beacon::decode(&bytes, Some(&other)),
            Err(WireError::Forged)
        ));
        assert!(matches!(
            Beacon::decode(&b.encode(None), Some(&k)),
            Err(WireError::Forged)
        ));
        let mut flipped = bytes.clone();
        flipped[4] ^= 1;
        assert!(matches!(
            Beacon::decode(&flipped, Some(&k)),
            Err(WireError::Forged)
        ));
        // An open node refuses a tagged beacon (trailing bytes).
        assert!(Beacon::decode(&bytes, None).is_err());
    }
}
