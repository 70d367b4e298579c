//! Checksummed records, the unit of every DKV file on disk (write-ahead log
//! segments and snapshots):
//!
//! ```text
//! [u32 LE body length][u32 LE CRC32 of body][body: bincode]
//! ```
//!
//! A reader tells a *torn tail* (the last record is incomplete, as a crash
//! mid-write leaves it) from *corruption* (a record whose checksum does not
//! match, or that does not decode, with more data after it).

use crate::wire;
use serde::de::DeserializeOwned;
use serde::Serialize;

/// Largest record body accepted when reading (a batch of snapshot pairs or
/// one maximal op, with room to spare).
pub const MAX_RECORD: usize = 64 << 20;

pub const HEADER: usize = 8;

/// Appends one record for `msg` to `buf`.
pub fn encode_into<T: Serialize + ?Sized>(buf: &mut Vec<u8>, msg: &T) {
    let start = buf.len();
    buf.extend_from_slice(&[0u8; HEADER]);
    let body = wire::encode(msg);
    buf.extend_from_slice(&body);
    let len = body.len() as u32;
    let crc = crc32fast::hash(&body);
    buf[start..start + 4].copy_from_slice(&len.to_le_bytes());
    buf[start + 4..start + 8].copy_from_slice(&crc.to_le_bytes());
}

/// What went wrong at `offset` while reading records.
#[derive(Debug, PartialEq, Eq)]
pub enum BadRecord {
    /// The bytes from `offset` to the end do not hold a whole record.
    Torn { offset: u64 },
    /// A whole record is there but its checksum or contents are wrong.
    Corrupt { offset: u64, reason: String },
}

/// Iterates over the records of an in-memory file image.
pub struct Reader<'a> {
    bytes: &'a [u8],
    pos: usize,
}

impl<'a> Reader<'a> {
    pub fn new(bytes: &'a [u8]) -> Self {
        Reader { bytes, pos: 0 }
    }

    /// Offset of the next record.
    pub fn offset(&self) -> u64 {
        self.pos as u64
    }

    /// The next record, `Ok(None)` at a clean end of file.
    pub fn next_record<T: DeserializeOwned>(&mut self) -> Result<Option<T>, BadRecord> {
        let rest = &self.bytes[self.pos..];
        if rest.is_empty() {
            return Ok(None);
        }
        let offset = self.pos as u64;
        if rest.len() < HEADER {
            return Err(BadRecord::Torn { offset });
        }
        let len = u32::from_le_bytes(rest[0..4].try_into().expect("4 bytes")) as usize;
        let crc = u32::from_le_bytes(rest[4..8].try_into().expect("4 bytes"));
        if len > MAX_RECORD {
            // An impossible length: torn if it is the last thing in the
            // file (garbage from a half-written header), corrupt otherwise.
            return Err(if rest.len() <= HEADER + 64 {
                BadRecord::Torn { offset }
            } else {
                BadRecord::Corrupt {
                    offset,
                    reason: format!("record length {len} exceeds the limit of {MAX_RECORD}"),
                }
            });
        }
        if rest.len() < HEADER + len {
            return Err(BadRecord::Torn { offset });
        }
        let body = &rest[HEADER..HEADER + len];
        let last = rest.len() == HEADER + len;
        if crc32fast::hash(body) != crc {
            return Err(if last && body.iter().all(|&b| b == 0) {
                // A zero-filled final block: the length made it, the data did not.
                BadRecord::Torn { offset }
            } else {
                BadRecord::Corrupt {
                    offset,
                    reason: "checksum mismatch".into(),
                }
            });
        }
        let value = wire::decode(body, MAX_RECORD).map_err(|e| BadRecord::Corrupt {
            offset,
            reason: e.to_string(),
        })?;
        self.pos += HEADER + len;
        Ok(Some(value))
    }
}

/// Reads the next record from a stream (used for snapshots, which may be
/// larger than memory should hold twice). `Ok(None)` at a clean end.
pub fn read_from<R: std::io::Read, T: DeserializeOwned>(
    r: &mut R,
    offset: &mut u64,
) -> Result<Option<T>, BadRecord> {
    let at = *offset;
    let mut header = [0u8; HEADER];
    let mut got = 0;
    while got < HEADER {
        match r.read(&mut header[got..]) {
            Ok(0) if got == 0 => return Ok(None),
            Ok(0) => return Err(BadRecord::Torn { offset: at }),
            Ok(n) => got += n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => {
                return Err(BadRecord::Corrupt {
                    offset: at,
                    reason: e.to_string(),
                })
            }
        }
    }
    let len = u32::from_le_bytes(header[0..4].try_into().expect("4 bytes")) as usize;
    let crc = u32::from_le_bytes(header[4..8].try_into().expect("4 bytes"));
    if len > MAX_RECORD {
        return Err(BadRecord::Corrupt {
            offset: at,
            reason: format!("record length {len} exceeds the limit of {MAX_RECORD}"),
        });
    }
    let mut body = Vec::with_capacity(len.min(1 << 20));
    let n = std::io::Read::read_to_end(&mut std::io::Read::take(&mut *r, len as u64), &mut body)
        .map_err(|e| BadRecord::Corrupt {
            offset: at,
            reason: e.to_string(),
        })?;
    if n < len {
        return Err(BadRecord::Torn { offset: at });
    }
    if crc32fast::hash(&body) != crc {
        return Err(BadRecord::Corrupt {
            offset: at,
            reason: "checksum mismatch".into(),
        });
    }
    let value = wire::decode(&body, MAX_RECORD).map_err(|e| BadRecord::Corrupt {
        offset: at,
        reason: e.to_string(),
    })?;
    *offset += (HEADER + len) as u64;
    Ok(Some(value))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn file(n: u64) -> Vec<u8> {
        let mut buf = Vec::new();
        for i in 0..n {
            encode_into(&mut buf, &(i, format!("record {i}")));
        }
        buf
    }

    fn read_all(bytes: &[u8]) -> (Vec<(u64, String)>, Result<(), BadRecord>) {
        let mut r = Reader::new(bytes);
        let mut out = Vec::new();
        loop {
            match r.next_record::<(u64, String)>() {
                Ok(Some(v)) => out.push(v),
                Ok(None) => return (out, Ok(())),
                Err(e) => return (out, Err(e)),
            }
        }
    }

    #[test]
    fn clean_file_reads_back() {
        let (v, end) = read_all(&file(5));
        assert_eq!(v.len(), 5);
        assert_eq!(end, Ok(()));
    }

    #[test]
    fn every_truncation_is_a_torn_tail_after_the_last_whole_record() {
        let full = file(3);
        let second_end = {
            let mut b = Vec::new();
            encode_into(&mut b, &(0u64, "record 0".to_string()));
            encode_into(&mut b, &(1u64, "record 1".to_string()));
            b.len()
        };
        for cut in second_end + 1..full.len() {
            let (v, end) = read_all(&full[..cut]);
            assert_eq!(v.len(), 2, "cut at {cut}");
            assert_eq!(
                end,
                Err(BadRecord::Torn {
                    offset: second_end as u64
                }),
                "cut at {cut}"
            );
        }
    }

    #[test]
    fn a_flipped_byte_before_the_tail_is_corruption() {
        let mut f = file(3);
        f[HEADER + 3] ^= 0x40;
        let (v, end) = read_all(&f);
        assert!(v.is_empty());
        assert!(
            matches!(end, Err(BadRecord::Corrupt { offset: 0, .. })),
            "{end:?}"
        );
    }
}
