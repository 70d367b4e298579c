//! The default store: one server and its state file.
//!
//! The view is written temp file, fsync, rename (then the directory is
//! synced) before the reply leaves, so nothing the server acknowledged is
//! forgotten by a restart. Lease renewals are not written: a reloaded
//! coordinator gets a full lease from the restart instead. With no path the
//! view lives in memory only (tests and the simulator).

use super::{Change, Committed, Records, RegistryStore, Revisions, StoreError};
use crate::core::server::DurableView;
use crate::identity::write_atomic;
use std::path::{Path, PathBuf};

pub struct FileStore {
    path: Option<PathBuf>,
    /// Counts writes: this process is the only writer.
    rev: i64,
    view: Option<DurableView>,
}

impl FileStore {
    /// Opens (does not create) the state file at `path`.
    pub fn open(path: Option<PathBuf>) -> Result<FileStore, StoreError> {
        let view = match &path {
            Some(p) => load(p)?,
            None => None,
        };
        Ok(FileStore {
            rev: i64::from(view.is_some()),
            path,
            view,
        })
    }
}

fn load(path: &Path) -> Result<Option<DurableView>, StoreError> {
    match std::fs::read(path) {
        Ok(bytes) => serde_json::from_slice(&bytes).map(Some).map_err(|e| {
            StoreError::Corrupt(format!(
                "server state file {} is corrupt: {e}",
                path.display()
            ))
        }),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(StoreError::Unavailable(format!(
            "cannot read server state file {}: {e}",
            path.display()
        ))),
    }
}

impl RegistryStore for FileStore {
    fn read(&mut self) -> Result<Records, StoreError> {
        Ok(Records {
            view: self.view.clone(),
            renewal: None,
            revs: Revisions {
                view: self.rev,
                lease: 0,
            },
        })
    }

    fn commit(&mut self, change: Change<'_>) -> Result<Committed, StoreError> {
        if change.expect.view != self.rev {
            return Ok(Committed::Conflict);
        }
        if let Some(view) = change.view {
            if let Some(path) = &self.path {
                let dir = path
                    .parent()
                    .filter(|p| !p.as_os_str().is_empty())
                    .map(|p| p.to_path_buf())
                    .unwrap_or_else(|| PathBuf::from("."));
                let name = path.file_name().and_then(|n| n.to_str()).ok_or_else(|| {
                    StoreError::Unavailable(format!("bad state file name {}", path.display()))
                })?;
                let bytes = serde_json::to_vec_pretty(view).expect("view serializes");
                write_atomic(&dir, name, &bytes)
                    .map_err(|e| StoreError::Unavailable(e.to_string()))?;
            }
            self.view = Some(view.clone());
            self.rev += 1;
        }
        Ok(Committed::Done(Revisions {
            view: self.rev,
            lease: 0,
        }))
    }

    fn shared(&self) -> bool {
        false
    }

    fn describe(&self) -> String {
        match &self.path {
            Some(p) => format!("state file {}", p.display()),
            None => "memory only (no state file)".into(),
        }
    }
}
