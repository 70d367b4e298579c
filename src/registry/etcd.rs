//! The shared store: several servers over one etcd cluster.
//!
//! Keys under the prefix (default `/dkv/<cluster-name>/`):
//! * `view` — the durable view (JSON), written by grants, registrations,
//!   in-sync changes and recovery;
//! * `lease` — the coordinator's last accepted status push (JSON
//!   [`Renewal`]): its epoch, id and member reports;
//! * `servers/<address>` — each running server's addresses, under an etcd
//!   lease of [`PRESENCE_TTL_SECS`], so `SENTINEL sentinels` can list the
//!   others.
//!
//! Every commit is one etcd transaction that compares the `mod_revision` of
//! `view` (and of `lease` for a grant) with what the decision read.

use super::{Change, Committed, Records, RegistryStore, Revisions, StoreError};
use crate::core::server::{DurableView, Renewal};
use crate::etcd::{Compare, Etcd, EtcdError, Op, RangeResult};
use serde::{Deserialize, Serialize};
use std::sync::Arc;

/// How long a server's presence record outlives its last keep-alive.
pub const PRESENCE_TTL_SECS: i64 = 5;

pub struct EtcdStore {
    etcd: Arc<Etcd>,
    view_key: Vec<u8>,
    lease_key: Vec<u8>,
    prefix: String,
}

impl EtcdStore {
    pub fn new(etcd: Arc<Etcd>, prefix: &str) -> EtcdStore {
        let prefix = if prefix.ends_with('/') {
            prefix.to_string()
        } else {
            format!("{prefix}/")
        };
        EtcdStore {
            view_key: format!("{prefix}view").into_bytes(),
            lease_key: format!("{prefix}lease").into_bytes(),
            etcd,
            prefix,
        }
    }

    pub fn prefix(&self) -> &str {
        &self.prefix
    }
}

fn store_error(e: EtcdError) -> StoreError {
    match e {
        EtcdError::Indeterminate(m) => StoreError::Indeterminate(m),
        EtcdError::Unavailable(m) => StoreError::Unavailable(m),
        EtcdError::Auth(m) => StoreError::Unavailable(format!("etcd refused this server: {m}")),
        EtcdError::Protocol(m) | EtcdError::Config(m) => StoreError::Unavailable(m),
    }
}

fn one<T: for<'de> Deserialize<'de>>(
    r: Option<&RangeResult>,
    what: &str,
) -> Result<(Option<T>, i64), StoreError> {
    let Some(kv) = r.and_then(|r| r.kvs.first()) else {
        return Ok((None, 0));
    };
    let v = serde_json::from_slice(&kv.value)
        .map_err(|e| StoreError::Corrupt(format!("the {what} record in etcd: {e}")))?;
    Ok((Some(v), kv.mod_revision))
}

impl RegistryStore for EtcdStore {
    fn read(&mut self) -> Result<Records, StoreError> {
        // One transaction reads both records at one revision.
        let r = self
            .etcd
            .txn(
                &[],
                &[
                    Op::Get {
                        key: self.view_key.clone(),
                    },
                    Op::Get {
                        key: self.lease_key.clone(),
                    },
                ],
                &[],
            )
            .map_err(store_error)?;
        let (view, view_rev) = one::<DurableView>(r.ranges.first(), "view")?;
        let (renewal, lease_rev) = one::<Renewal>(r.ranges.get(1), "lease")?;
        Ok(Records {
            view,
            renewal,
            revs: Revisions {
                view: view_rev,
                lease: lease_rev,
            },
        })
    }

    fn commit(&mut self, change: Change<'_>) -> Result<Committed, StoreError> {
        let mut compares = vec![Compare::ModRevision {
            key: self.view_key.clone(),
            equals: change.expect.view,
        }];
        if change.compare_lease {
            compares.push(Compare::ModRevision {
                key: self.lease_key.clone(),
                equals: change.expect.lease,
            });
        }
        let mut ops = Vec::new();
        if let Some(v) = change.view {
            ops.push(Op::Put {
                key: self.view_key.clone(),
                value: serde_json::to_vec(v).expect("view serializes"),
                lease: 0,
            });
        }
        if let Some(r) = change.renewal {
            ops.push(Op::Put {
                key: self.lease_key.clone(),
                value: serde_json::to_vec(r).expect("renewal serializes"),
                lease: 0,
            });
        }
        let r = self.etcd.txn(&compares, &ops, &[]).map_err(store_error)?;
        if !r.succeeded {
            return Ok(Committed::Conflict);
        }
        Ok(Committed::Done(Revisions {
            view: if change.view.is_some() {
                r.revision
            } else {
                change.expect.view
            },
            lease: if change.renewal.is_some() {
                r.revision
            } else {
                change.expect.lease
            },
        }))
    }

    fn shared(&self) -> bool {
        true
    }

    fn describe(&self) -> String {
        format!(
            "etcd {} under {}",
            self.etcd.endpoints().join(","),
            self.prefix
        )
    }
}

/// A running server, as other servers (and `SENTINEL sentinels`) see it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ServerPresence {
    pub addr: String,
    pub sentinel: Option<String>,
}

/// Announces this server under `servers/` and lists the others.
pub struct Presence {
    etcd: Arc<Etcd>,
    key: Vec<u8>,
    prefix: Vec<u8>,
    me: ServerPresence,
    lease: Option<i64>,
}

impl Presence {
    pub fn new(etcd: Arc<Etcd>, store_prefix: &str, me: ServerPresence) -> Presence {
        let prefix = format!("{}servers/", store_prefix);
        Presence {
            key: format!("{prefix}{}", me.addr).into_bytes(),
            prefix: prefix.into_bytes(),
            etcd,
            me,
            lease: None,
        }
    }

    /// Keeps this server's record alive (creating it, and its etcd lease,
    /// when needed) and returns the other servers.
    pub fn refresh(&mut self) -> Result<Vec<ServerPresence>, EtcdError> {
        let alive = match self.lease {
            Some(id) => self.etcd.lease_keepalive(id)? > 0,
            None => false,
        };
        if !alive {
            let id = self.etcd.lease_grant(PRESENCE_TTL_SECS)?;
            let value = serde_json::to_vec(&self.me).expect("presence serializes");
            self.etcd.put(&self.key, &value, id)?;
            self.lease = Some(id);
        }
        let r = self.etcd.get_prefix(&self.prefix)?;
        Ok(r.kvs
            .iter()
            .filter(|kv| kv.key != self.key)
            .filter_map(|kv| serde_json::from_slice::<ServerPresence>(&kv.value).ok())
            .collect())
    }

    /// Removes this server's record (on shutdown).
    pub fn withdraw(&mut self) {
        if let Some(id) = self.lease.take() {
            let _ = self.etcd.lease_revoke(id);
        }
    }
}
