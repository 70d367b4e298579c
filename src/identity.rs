//! A node's identity on disk: its id and an incarnation that grows at every
//! start, so peers can tell a restarted node's beacons from stale ones.

use crate::errors::{Error, Result};
use crate::types::NodeId;
use serde::{Deserialize, Serialize};
use std::fs;
use std::io::Write;
use std::path::Path;

const FILE: &str = "identity.json";

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Identity {
    /// Assigned by the server at first registration.
    pub node_id: Option<NodeId>,
    pub incarnation: u64,
}

impl Identity {
    /// Reads the identity in `dir` (creating `dir` if needed), bumps the
    /// incarnation and writes it back before the node says anything.
    pub fn load_or_create(dir: &Path) -> Result<Identity> {
        fs::create_dir_all(dir).map_err(|e| {
            Error::config_io(format!("cannot create data directory {}", dir.display()), e)
        })?;
        let path = dir.join(FILE);
        let mut id = match fs::read(&path) {
            Ok(bytes) => serde_json::from_slice::<Identity>(&bytes)
                .map_err(|e| Error::Config(format!("{} is corrupt: {e}", path.display())))?,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Identity::default(),
            Err(e) => {
                return Err(Error::config_io(
                    format!("cannot read {}", path.display()),
                    e,
                ))
            }
        };
        id.incarnation += 1;
        id.save(dir)?;
        Ok(id)
    }

    /// Writes atomically: temp file, fsync, rename, fsync of the directory.
    pub fn save(&self, dir: &Path) -> Result<()> {
        let bytes = serde_json::to_vec_pretty(self).expect("identity serializes");
        write_atomic(dir, FILE, &bytes)
    }
}

/// Replaces `dir/name` with `bytes` so that a crash leaves the old or the new
/// content, never a mix.
pub fn write_atomic(dir: &Path, name: &str, bytes: &[u8]) -> Result<()> {
    let tmp = dir.join(format!("{name}.tmp"));
    let target = dir.join(name);
    let ctx = |e: std::io::Error| Error::config_io(format!("cannot write {}", target.display()), e);
    let mut f = fs::File::create(&tmp).map_err(ctx)?;
    f.write_all(bytes).map_err(ctx)?;
    f.sync_all().map_err(ctx)?;
    drop(f);
    fs::rename(&tmp, &target).map_err(ctx)?;
    if let Ok(d) = fs::File::open(dir) {
        let _ = d.sync_all();
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn incarnation_grows_and_id_persists() {
        let dir = std::env::temp_dir().join(format!("dkv-ident-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        let mut a = Identity::load_or_create(&dir).unwrap();
        assert_eq!(a.incarnation, 1);
        a.node_id = Some(7);
        a.save(&dir).unwrap();
        let b = Identity::load_or_create(&dir).unwrap();
        assert_eq!(b.node_id, Some(7));
        assert_eq!(b.incarnation, 2);
        let _ = fs::remove_dir_all(&dir);
    }
}
