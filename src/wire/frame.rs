//! Framing and the codec: bincode 1.3 (varint, little endian, size-limited,
//! trailing bytes rejected), length-prefixed frames, and [`WireError`], what
//! reading a frame or a datagram can fail with.

use bincode::Options;
use serde::de::DeserializeOwned;
use serde::Serialize;
use std::io::{self, Read, Write};

#[derive(Debug, thiserror::Error)]
pub enum WireError {
    #[error("connection closed")]
    Closed,
    #[error("frame of {len} bytes exceeds the limit of {max} bytes")]
    TooLarge { len: usize, max: usize },
    #[error("malformed message: {0}")]
    Malformed(String),
    /// The message's authentication tag is wrong: forged, replayed or
    /// sent with another secret.
    #[error("message authentication failed (wrong cluster secret, forged or replayed)")]
    Forged,
    #[error("{0}")]
    Io(#[from] io::Error),
    /// A node's data port read a frame that is no client request but a
    /// request for the server (see [`super::server_request_on_node`]).
    #[error("a server request sent to a node's data port")]
    NotTheServer,
}

impl WireError {
    /// True for read timeouts (the peer said nothing for the timeout period).
    pub fn is_timeout(&self) -> bool {
        matches!(self, WireError::Io(e) if matches!(e.kind(), io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut))
    }
}

/// A frame that could not be read, as a library error: an IO error stays an
/// [`Error::Io`](crate::Error::Io); anything else becomes
/// [`Error::Wire`](crate::Error::Wire) with the `WireError` as its source.
impl From<WireError> for crate::errors::Error {
    fn from(e: WireError) -> Self {
        match e {
            WireError::Io(e) => crate::errors::Error::Io(e),
            other => crate::errors::Error::Wire {
                source: Box::new(other),
            },
        }
    }
}

fn codec(limit: usize) -> impl Options {
    bincode::DefaultOptions::new()
        .with_varint_encoding()
        .with_little_endian()
        .reject_trailing_bytes()
        .with_limit(limit as u64)
}

/// Encodes `msg` as a body (no length prefix).
pub fn encode<T: Serialize + ?Sized>(msg: &T) -> Vec<u8> {
    codec(usize::MAX)
        .serialize(msg)
        .expect("bincode serialization of DKV messages cannot fail")
}

/// Decodes a body, refusing anything larger than `limit` or with trailing bytes.
pub fn decode<T: DeserializeOwned>(bytes: &[u8], limit: usize) -> Result<T, WireError> {
    if bytes.len() > limit {
        return Err(WireError::TooLarge {
            len: bytes.len(),
            max: limit,
        });
    }
    codec(limit)
        .deserialize(bytes)
        .map_err(|e| WireError::Malformed(e.to_string()))
}

/// Appends one frame (length prefix + body) for `msg` to `buf`.
pub fn encode_frame_into<T: Serialize + ?Sized>(buf: &mut Vec<u8>, msg: &T) {
    let start = buf.len();
    buf.extend_from_slice(&[0u8; 4]);
    codec(usize::MAX)
        .serialize_into(&mut *buf, msg)
        .expect("bincode serialization of DKV messages cannot fail");
    let len = (buf.len() - start - 4) as u32;
    buf[start..start + 4].copy_from_slice(&len.to_be_bytes());
}

/// Writes one frame with a single `write_all`.
pub fn write_frame<W: Write, T: Serialize + ?Sized>(w: &mut W, msg: &T) -> io::Result<()> {
    let mut buf = Vec::with_capacity(64);
    encode_frame_into(&mut buf, msg);
    w.write_all(&buf)?;
    w.flush()
}

/// Reads one frame body of at most `max` bytes. The buffer grows only as bytes
/// actually arrive, so a huge length prefix alone costs nothing.
pub fn read_frame_bytes<R: Read>(r: &mut R, max: usize) -> Result<Vec<u8>, WireError> {
    let mut len_buf = [0u8; 4];
    match r.read_exact(&mut len_buf) {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => return Err(WireError::Closed),
        Err(e) => return Err(WireError::Io(e)),
    }
    let len = u32::from_be_bytes(len_buf) as usize;
    if len > max {
        return Err(WireError::TooLarge { len, max });
    }
    let mut body = Vec::with_capacity(len.min(64 * 1024));
    let got = r.take(len as u64).read_to_end(&mut body)?;
    if got != len {
        return Err(WireError::Malformed(format!(
            "truncated frame: expected {len} bytes, got {got}"
        )));
    }
    Ok(body)
}

/// Reads and decodes one frame of at most `max` bytes.
pub fn read_frame<R: Read, T: DeserializeOwned>(r: &mut R, max: usize) -> Result<T, WireError> {
    let body = read_frame_bytes(r, max)?;
    decode(&body, max)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::Request;

    #[test]
    fn frame_roundtrip() {
        let req = Request::Put {
            key: b"k".to_vec(),
            value: vec![0, 1, 2, 255],
        };
        let mut buf = Vec::new();
        encode_frame_into(&mut buf, &req);
        let got: Request = read_frame(&mut buf.as_slice(), 1024).unwrap();
        assert_eq!(got, req);
    }

    #[test]
    fn huge_length_prefix_is_refused_without_allocating() {
        let bytes = [0xff, 0xff, 0xff, 0xff, 1, 2, 3];
        let err = read_frame_bytes(&mut &bytes[..], 1 << 20).unwrap_err();
        assert!(matches!(err, WireError::TooLarge { len, .. } if len == u32::MAX as usize));
    }

    #[test]
    fn truncated_frame_is_malformed() {
        let mut buf = Vec::new();
        encode_frame_into(&mut buf, &Request::Status);
        buf.extend_from_slice(&[0, 0, 0, 10, 1, 2]);
        let mut r = buf.as_slice();
        let _: Request = read_frame(&mut r, 1024).unwrap();
        assert!(matches!(
            read_frame::<_, Request>(&mut r, 1024),
            Err(WireError::Malformed(_))
        ));
    }

    #[test]
    fn unknown_variant_and_trailing_bytes_are_malformed() {
        // Variant index 200 does not exist.
        assert!(decode::<Request>(&[200], 1024).is_err());
        let mut body = encode(&Request::Status);
        body.push(0);
        assert!(decode::<Request>(&body, 1024).is_err());
    }

    #[test]
    fn declared_vec_length_beyond_limit_is_refused() {
        // A Get whose key claims 2^40 bytes: the limit stops it before allocation.
        let mut body = vec![0u8]; // variant Get
        body.push(253); // varint u64 marker
        body.extend_from_slice(&(1u64 << 40).to_le_bytes());
        assert!(decode::<Request>(&body, 1 << 20).is_err());
    }
}
