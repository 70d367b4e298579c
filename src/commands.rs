//! Data commands beyond get/put/delete, and their evaluation, without IO:
//! expiry, conditional and atomic writes, transactions.
//!
//! A write command is evaluated at the coordinator, in log order, against
//! the latest state the log holds (the map plus every entry appended and not
//! yet applied: see [`crate::log::ReplLog::append_command`]). Evaluation
//! yields the reply and the ops that state its *result* (INCR becomes the Put
//! of the new value; a relative TTL becomes an absolute deadline chosen by
//! the coordinator's clock), so replicas, restarts and the simulator replay
//! it deterministically, and concurrent clients never lose an update.
//! A transaction (`EXEC`) is evaluated the same way and logged as one
//! [`Op::Batch`]: all or nothing on every replica.
//!
//! Read commands are evaluated against the committed map only. A key whose
//! deadline passed reads as absent; the coordinator then appends its
//! deletion ([`Command::Reap`]), as its background pass does.
//!
//! Replies and error texts follow the Redis command reference, so the RESP
//! port passes them through; the native client gets the same [`Value`]s.

use crate::types::Op;
use serde::{Deserialize, Serialize};
use std::collections::HashMap;

/// A deadline as a client gives it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum When {
    /// Milliseconds from now (the coordinator's clock).
    In(i64),
    /// Milliseconds since the UNIX epoch.
    At(i64),
}

/// SET's expiry option.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum SetExpiry {
    /// The key loses any deadline it had.
    Clear,
    /// KEEPTTL.
    Keep,
    Set(When),
}

/// SET's condition.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Cond {
    Always,
    /// Only when the key does not exist (NX).
    Absent,
    /// Only when it exists (XX).
    Present,
}

/// EXPIRE's condition.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum ExpireCond {
    Always,
    /// NX: only when the key has no deadline.
    NoDeadline,
    /// XX: only when it has one.
    HasDeadline,
    /// GT: only when the new deadline is later (no deadline counts as infinite).
    Later,
    /// LT: only when the new deadline is earlier.
    Earlier,
}

/// What TTL-like commands report.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum TtlKind {
    /// TTL: seconds left.
    Seconds,
    /// PTTL: milliseconds left.
    Millis,
    /// EXPIRETIME: the deadline in UNIX seconds.
    AtSeconds,
    /// PEXPIRETIME: the deadline in UNIX milliseconds.
    AtMillis,
}

/// GETEX's change to the deadline.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum GetExpiry {
    Keep,
    Persist,
    Set(When),
}

/// A data command. Append-only: it travels on the native protocol.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Command {
    // Reads.
    Get {
        key: Vec<u8>,
    },
    MGet {
        keys: Vec<Vec<u8>>,
    },
    Exists {
        keys: Vec<Vec<u8>>,
    },
    Ttl {
        key: Vec<u8>,
        kind: TtlKind,
    },
    StrLen {
        key: Vec<u8>,
    },
    GetRange {
        key: Vec<u8>,
        start: i64,
        end: i64,
    },
    Type {
        key: Vec<u8>,
    },
    /// Fingerprints of keys' current contents, for WATCH.
    Fingerprint {
        keys: Vec<Vec<u8>>,
    },
    /// One page of an iteration over the keys.
    Scan {
        cursor: u64,
        pattern: Option<Vec<u8>>,
        count: usize,
        /// Only keys of this type ("string" is the only type DKV has).
        type_name: Option<String>,
    },
    Keys {
        pattern: Vec<u8>,
    },
    RandomKey,
    DbSize,
    // Writes.
    Set {
        key: Vec<u8>,
        value: Vec<u8>,
        cond: Cond,
        expiry: SetExpiry,
        /// Reply with the old value (SET ... GET, GETSET).
        get: bool,
    },
    GetDel {
        key: Vec<u8>,
    },
    GetEx {
        key: Vec<u8>,
        expiry: GetExpiry,
    },
    Del {
        keys: Vec<Vec<u8>>,
    },
    MSet {
        pairs: Vec<(Vec<u8>, Vec<u8>)>,
        /// MSETNX: only when none of the keys exists.
        nx: bool,
    },
    IncrBy {
        key: Vec<u8>,
        by: i64,
    },
    /// The increment as the client wrote it (parsed at the coordinator).
    IncrByFloat {
        key: Vec<u8>,
        by: Vec<u8>,
    },
    Append {
        key: Vec<u8>,
        value: Vec<u8>,
    },
    SetRange {
        key: Vec<u8>,
        offset: u64,
        value: Vec<u8>,
    },
    Expire {
        key: Vec<u8>,
        when: When,
        cond: ExpireCond,
    },
    Persist {
        key: Vec<u8>,
    },
    Rename {
        src: Vec<u8>,
        dst: Vec<u8>,
        nx: bool,
    },
    Copy {
        src: Vec<u8>,
        dst: Vec<u8>,
        replace: bool,
    },
    Flush,
    /// Sets `key` to `value` (deletes it when `None`) only if its current
    /// value is `expected` (absent when `None`); replies 1 or 0.
    CompareAndSet {
        key: Vec<u8>,
        expected: Option<Vec<u8>>,
        value: Option<Vec<u8>>,
        ttl_ms: Option<u64>,
    },
    /// MULTI ... EXEC: `commands` applied as one, unless a watched key's
    /// fingerprint changed (then the reply is [`Value::NilArray`]).
    Exec {
        watched: Vec<(Vec<u8>, u64)>,
        commands: Vec<Command>,
    },
    /// Deletes those of `keys` whose deadline passed (the coordinator's own
    /// expiry; harmless from anyone).
    Reap {
        keys: Vec<Vec<u8>>,
    },
    /// Loads pairs from a backup (`dkv-client restore`): each pair's value
    /// and absolute deadline overwrite the key, in one entry; pairs whose
    /// deadline passed by the coordinator's clock are skipped. Replies the
    /// number of pairs written.
    Restore {
        pairs: Vec<crate::store::Pair>,
    },
}

/// A command's reply.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Value {
    Ok,
    Nil,
    Int(i64),
    Bulk(Vec<u8>),
    /// A status word (TYPE's "string").
    Status(String),
    Array(Vec<Value>),
    /// EXEC aborted by a watched key.
    NilArray,
    /// An error in Redis's form: a code word, then the message.
    Error(String),
}

/// Most value bytes one MGET may return: the reply is built whole before it
/// is written, so one command must not be able to ask for gigabytes.
pub const MAX_MGET_REPLY: usize = 64 << 20;

pub const NOT_AN_INTEGER: &str = "ERR value is not an integer or out of range";
pub const NOT_A_FLOAT: &str = "ERR value is not a valid float";
pub const OVERFLOW: &str = "ERR increment or decrement would overflow";

impl Command {
    /// Whether the command only reads (evaluated on the committed map).
    pub fn is_read(&self) -> bool {
        matches!(
            self,
            Command::Get { .. }
                | Command::MGet { .. }
                | Command::Exists { .. }
                | Command::Ttl { .. }
                | Command::StrLen { .. }
                | Command::GetRange { .. }
                | Command::Type { .. }
                | Command::Fingerprint { .. }
                | Command::Scan { .. }
                | Command::Keys { .. }
                | Command::RandomKey
                | Command::DbSize
        )
    }

    /// Reads over the whole keyspace: evaluated on the map, never in EXEC.
    pub fn is_keyspace_read(&self) -> bool {
        matches!(
            self,
            Command::Scan { .. } | Command::Keys { .. } | Command::RandomKey | Command::DbSize
        )
    }

    /// Whether it may add data (refused at `max-memory`, as Redis refuses
    /// its "denyoom" commands).
    pub fn may_grow(&self) -> bool {
        match self {
            Command::Set { .. }
            | Command::MSet { .. }
            | Command::IncrBy { .. }
            | Command::IncrByFloat { .. }
            | Command::Append { .. }
            | Command::SetRange { .. }
            | Command::Copy { .. }
            | Command::Restore { .. } => true,
            Command::CompareAndSet { value, .. } => value.is_some(),
            Command::Exec { commands, .. } => commands.iter().any(Command::may_grow),
            _ => false,
        }
    }

    /// Calls `f` with every key the command names.
    pub fn for_each_key(&self, f: &mut impl FnMut(&[u8])) {
        match self {
            Command::Get { key }
            | Command::Ttl { key, .. }
            | Command::StrLen { key }
            | Command::GetRange { key, .. }
            | Command::Type { key }
            | Command::Set { key, .. }
            | Command::GetDel { key }
            | Command::GetEx { key, .. }
            | Command::IncrBy { key, .. }
            | Command::IncrByFloat { key, .. }
            | Command::Append { key, .. }
            | Command::SetRange { key, .. }
            | Command::Expire { key, .. }
            | Command::Persist { key }
            | Command::CompareAndSet { key, .. } => f(key),
            Command::MGet { keys }
            | Command::Exists { keys }
            | Command::Fingerprint { keys }
            | Command::Del { keys }
            | Command::Reap { keys } => keys.iter().for_each(|k| f(k)),
            Command::MSet { pairs, .. } => pairs.iter().for_each(|(k, _)| f(k)),
            Command::Restore { pairs } => pairs.iter().for_each(|p| f(&p.key)),
            Command::Rename { src, dst, .. } | Command::Copy { src, dst, .. } => {
                f(src);
                f(dst)
            }
            Command::Exec { watched, commands } => {
                watched.iter().for_each(|(k, _)| f(k));
                commands.iter().for_each(|c| c.for_each_key(f));
            }
            Command::Scan { .. }
            | Command::Keys { .. }
            | Command::RandomKey
            | Command::DbSize
            | Command::Flush => {}
        }
    }

    /// Value bytes the command carries (bounded by `max-value-bytes`).
    pub fn for_each_value(&self, f: &mut impl FnMut(&[u8])) {
        match self {
            Command::Set { value, .. }
            | Command::Append { value, .. }
            | Command::SetRange { value, .. } => f(value),
            Command::CompareAndSet {
                expected, value, ..
            } => {
                expected.iter().for_each(|v| f(v));
                value.iter().for_each(|v| f(v));
            }
            Command::MSet { pairs, .. } => pairs.iter().for_each(|(_, v)| f(v)),
            Command::Restore { pairs } => pairs.iter().for_each(|p| f(&p.value)),
            Command::Exec { commands, .. } => commands.iter().for_each(|c| c.for_each_value(f)),
            _ => {}
        }
    }
}

/// A key's contents: value and deadline.
pub type Stored = (Vec<u8>, Option<u64>);

/// The state commands are evaluated against.
pub trait View {
    /// The value and deadline at `key`, expired or not.
    fn get(&self, key: &[u8]) -> Option<Stored>;
}

/// The map alone: what reads see.
impl View for crate::store::Store {
    fn get(&self, key: &[u8]) -> Option<Stored> {
        self.get_pair(key)
    }
}

/// What evaluation needs besides the state.
#[derive(Clone, Copy, Debug)]
pub struct Env {
    /// The coordinator's wall clock, ms since the UNIX epoch.
    pub now_ms: u64,
    pub max_value_bytes: usize,
}

/// The outcome of evaluating a command.
#[derive(Debug, PartialEq)]
pub struct Evaluated {
    pub value: Value,
    /// The ops to append (none when nothing changes).
    pub op: Option<Op>,
    /// Keys seen expired. `op` deletes them; a read, whose op is not
    /// appended, has their deletion appended ([`Command::Reap`]) and waits
    /// for it before it answers.
    pub expired: Vec<Vec<u8>>,
}

/// Changes of one evaluation over a base view: later commands of a
/// transaction see the earlier ones' effect.
struct Layer<'a> {
    base: &'a dyn View,
    env: Env,
    changes: HashMap<Vec<u8>, Option<Stored>>,
    flushed: bool,
    ops: Vec<Op>,
    expired: Vec<Vec<u8>>,
}

impl Layer<'_> {
    fn raw(&self, key: &[u8]) -> Option<Stored> {
        if let Some(c) = self.changes.get(key) {
            return c.clone();
        }
        if self.flushed {
            return None;
        }
        self.base.get(key)
    }

    /// The key's contents unless its deadline passed. A key seen expired
    /// is deleted by the same op: once a client was told it is gone, no
    /// later coordinator (whose clock may run behind) shows it again.
    fn live(&mut self, key: &[u8]) -> Option<Stored> {
        match self.raw(key) {
            Some((_, Some(t))) if t <= self.env.now_ms => {
                self.expired.push(key.to_vec());
                self.delete(key);
                None
            }
            other => other,
        }
    }

    fn put(&mut self, key: &[u8], value: Vec<u8>, expires_at: Option<u64>) {
        self.supersede(key);
        self.ops
            .push(Op::put(key.to_vec(), value.clone(), expires_at));
        self.changes.insert(key.to_vec(), Some((value, expires_at)));
    }

    fn delete(&mut self, key: &[u8]) {
        if self.raw(key).is_some() {
            self.supersede(key);
            self.ops.push(Op::Delete { key: key.to_vec() });
            self.changes.insert(key.to_vec(), None);
        }
    }

    /// Drops earlier ops on `key`: every op states a key's whole contents,
    /// so only the last one matters.
    fn supersede(&mut self, key: &[u8]) {
        if self.changes.contains_key(key) {
            self.ops.retain(|o| match o {
                Op::Put { key: k, .. } | Op::PutExpiring { key: k, .. } | Op::Delete { key: k } => {
                    k != key
                }
                _ => true,
            });
        }
    }

    fn flush(&mut self) {
        self.ops.push(Op::Flush);
        self.changes.clear();
        self.flushed = true;
    }

    /// A deadline from now or absolute; `None` for a time before the epoch.
    fn deadline(&self, w: When) -> i128 {
        match w {
            When::In(ms) => self.env.now_ms as i128 + ms as i128,
            When::At(ms) => ms as i128,
        }
    }

    /// Writes `value` with `deadline`, or deletes the key when the deadline
    /// already passed (a SET with EXAT in the past, an EXPIRE of 0).
    fn put_until(&mut self, key: &[u8], value: Vec<u8>, deadline: Option<i128>) {
        match deadline {
            Some(t) if t <= self.env.now_ms as i128 => self.delete(key),
            Some(t) => self.put(key, value, Some(t.min(u64::MAX as i128) as u64)),
            None => self.put(key, value, None),
        }
    }

    fn too_large(&self, len: usize) -> Option<Value> {
        (len > self.env.max_value_bytes).then(|| {
            Value::Error(format!(
                "ERR string exceeds maximum allowed size ({} bytes, max-value-bytes)",
                self.env.max_value_bytes
            ))
        })
    }
}

/// Evaluates `cmd` against `view` at `env.now_ms`.
pub fn eval(cmd: &Command, view: &dyn View, env: Env) -> Evaluated {
    // A plain SET reads nothing and states its arguments: no layer needed
    // (the common write, kept cheap under the log's lock).
    if let Command::Set {
        key,
        value,
        cond: Cond::Always,
        expiry: expiry @ (SetExpiry::Clear | SetExpiry::Set(_)),
        get: false,
    } = cmd
    {
        let deadline = match expiry {
            SetExpiry::Set(When::In(ms)) => Some(env.now_ms as i128 + *ms as i128),
            SetExpiry::Set(When::At(ms)) => Some(*ms as i128),
            _ => None,
        };
        let op = match deadline {
            // Already past: the key goes (if it is there).
            Some(t) if t <= env.now_ms as i128 => {
                view.get(key).map(|_| Op::Delete { key: key.clone() })
            }
            Some(t) => Some(Op::put(
                key.clone(),
                value.clone(),
                Some(t.min(u64::MAX as i128) as u64),
            )),
            None => Some(Op::put(key.clone(), value.clone(), None)),
        };
        return Evaluated {
            value: Value::Ok,
            op,
            expired: Vec::new(),
        };
    }
    // A restore states its pairs whole, like a plain SET: no layer.
    if let Command::Restore { pairs } = cmd {
        let ops: Vec<Op> = pairs
            .iter()
            .filter(|p| p.expires_at.is_none_or(|t| t > env.now_ms))
            .map(|p| p.clone().into_op())
            .collect();
        return Evaluated {
            value: Value::Int(ops.len() as i64),
            op: (!ops.is_empty()).then_some(Op::Batch(ops)),
            expired: Vec::new(),
        };
    }
    let mut layer = Layer {
        base: view,
        env,
        changes: HashMap::new(),
        flushed: false,
        ops: Vec::new(),
        expired: Vec::new(),
    };
    let value = match cmd {
        Command::Exec { watched, commands } => exec(&mut layer, watched, commands),
        cmd => one(&mut layer, cmd),
    };
    let mut ops = layer.ops;
    let op = match ops.len() {
        0 => None,
        1 => ops.pop(),
        _ => Some(Op::Batch(ops)),
    };
    let mut expired = layer.expired;
    expired.sort();
    expired.dedup();
    Evaluated { value, op, expired }
}

fn exec(layer: &mut Layer<'_>, watched: &[(Vec<u8>, u64)], commands: &[Command]) -> Value {
    if watched
        .iter()
        .any(|(k, f)| fingerprint(layer.live(k).as_ref()) != *f)
    {
        return Value::NilArray;
    }
    Value::Array(commands.iter().map(|c| one(layer, c)).collect())
}

/// A fingerprint of a key's contents (0 when absent), for WATCH.
pub fn fingerprint(s: Option<&Stored>) -> u64 {
    match s {
        None => 0,
        Some((v, t)) => crate::store::item_hash(b"", v, *t) | 1,
    }
}

/// Redis's strict integer syntax (no sign but '-', no leading zeros, no spaces).
pub fn parse_i64(b: &[u8]) -> Option<i64> {
    let s = std::str::from_utf8(b).ok()?;
    let digits = s.strip_prefix('-').unwrap_or(s);
    if digits.is_empty()
        || !digits.bytes().all(|c| c.is_ascii_digit())
        || (digits.len() > 1 && digits.starts_with('0'))
        || s == "-0"
    {
        return None;
    }
    s.parse().ok()
}

/// A float as Redis reads one (no NaN; "inf" allowed only where Redis does).
pub fn parse_f64(b: &[u8]) -> Option<f64> {
    let s = std::str::from_utf8(b).ok()?;
    if s.is_empty() || s.trim() != s {
        return None;
    }
    let v: f64 = s.parse().ok()?;
    (!v.is_nan()).then_some(v)
}

/// A float as INCRBYFLOAT prints it: shortest exact decimal, no exponent.
pub fn format_f64(v: f64) -> String {
    let s = format!("{v}");
    if s.contains('e') || s.contains('E') {
        format!("{v:.17}")
            .trim_end_matches('0')
            .trim_end_matches('.')
            .to_string()
    } else {
        s
    }
}

fn int(i: i64) -> Value {
    Value::Int(i)
}

fn bulk_or_nil(s: Option<Stored>) -> Value {
    s.map(|(v, _)| Value::Bulk(v)).unwrap_or(Value::Nil)
}

/// Redis GETRANGE: inclusive, negative indexes count from the end.
pub fn get_range(v: &[u8], start: i64, end: i64) -> &[u8] {
    let len = v.len() as i64;
    if len == 0 {
        return &[];
    }
    let norm = |i: i64| if i < 0 { (len + i).max(0) } else { i };
    let (s, e) = (norm(start), norm(end).min(len - 1));
    if s > e || s >= len {
        return &[];
    }
    &v[s as usize..=e as usize]
}

fn one(layer: &mut Layer<'_>, cmd: &Command) -> Value {
    let now = layer.env.now_ms;
    match cmd {
        Command::Get { key } => bulk_or_nil(layer.live(key)),
        Command::MGet { keys } => {
            let mut bytes = 0;
            let mut out = Vec::with_capacity(keys.len());
            for k in keys {
                let v = bulk_or_nil(layer.live(k));
                if let Value::Bulk(b) = &v {
                    bytes += b.len();
                }
                if bytes > MAX_MGET_REPLY {
                    return Value::Error(format!(
                        "ERR MGET reply exceeds {MAX_MGET_REPLY} bytes; ask for fewer keys"
                    ));
                }
                out.push(v);
            }
            Value::Array(out)
        }
        Command::Exists { keys } => {
            int(keys.iter().filter(|k| layer.live(k).is_some()).count() as i64)
        }
        Command::Ttl { key, kind } => match layer.live(key) {
            None => int(-2),
            Some((_, None)) => int(-1),
            Some((_, Some(t))) => int(match kind {
                TtlKind::Millis => (t - now) as i64,
                TtlKind::Seconds => ((t - now + 500) / 1000) as i64,
                TtlKind::AtMillis => t as i64,
                TtlKind::AtSeconds => (t / 1000) as i64,
            }),
        },
        Command::StrLen { key } => int(layer.live(key).map_or(0, |(v, _)| v.len() as i64)),
        Command::GetRange { key, start, end } => Value::Bulk(
            layer
                .live(key)
                .map(|(v, _)| get_range(&v, *start, *end).to_vec())
                .unwrap_or_default(),
        ),
        Command::Type { key } => Value::Status(
            if layer.live(key).is_some() {
                "string"
            } else {
                "none"
            }
            .into(),
        ),
        Command::Fingerprint { keys } => Value::Array(
            keys.iter()
                .map(|k| int(fingerprint(layer.live(k).as_ref()) as i64))
                .collect(),
        ),
        Command::Scan { .. } | Command::Keys { .. } | Command::RandomKey | Command::DbSize => {
            Value::Error("ERR DKV does not run SCAN, KEYS, RANDOMKEY or DBSIZE inside MULTI".into())
        }
        Command::Set {
            key,
            value,
            cond,
            expiry,
            get,
        } => {
            // A plain SET reads nothing: it costs no lookup.
            let reads = *get || *cond != Cond::Always || *expiry == SetExpiry::Keep;
            let cur = if reads { layer.live(key) } else { None };
            let old = || {
                if *get {
                    bulk_or_nil(cur.clone())
                } else {
                    Value::Nil
                }
            };
            match (cond, &cur) {
                (Cond::Absent, Some(_)) | (Cond::Present, None) => return old(),
                _ => {}
            }
            let deadline = match expiry {
                SetExpiry::Clear => None,
                SetExpiry::Keep => cur.as_ref().and_then(|(_, t)| t.map(|t| t as i128)),
                SetExpiry::Set(w) => Some(layer.deadline(*w)),
            };
            let reply = if *get { old() } else { Value::Ok };
            layer.put_until(key, value.clone(), deadline);
            reply
        }
        Command::GetDel { key } => {
            let cur = layer.live(key);
            if cur.is_some() {
                layer.delete(key);
            }
            bulk_or_nil(cur)
        }
        Command::GetEx { key, expiry } => {
            let Some((v, t)) = layer.live(key) else {
                return Value::Nil;
            };
            match expiry {
                GetExpiry::Keep => {}
                GetExpiry::Persist => {
                    if t.is_some() {
                        layer.put(key, v.clone(), None)
                    }
                }
                GetExpiry::Set(w) => {
                    let d = layer.deadline(*w);
                    layer.put_until(key, v.clone(), Some(d))
                }
            }
            Value::Bulk(v)
        }
        Command::Del { keys } => {
            let mut n = 0;
            for k in keys {
                if layer.live(k).is_some() {
                    n += 1;
                }
                layer.delete(k);
            }
            int(n)
        }
        Command::Reap { keys } => {
            for k in keys {
                if let Some((_, Some(t))) = layer.raw(k) {
                    if t <= now {
                        layer.delete(k);
                    }
                }
            }
            Value::Ok
        }
        Command::Restore { pairs } => {
            let mut n = 0;
            for p in pairs {
                if p.expires_at.is_none_or(|t| t > now) {
                    layer.put(&p.key, p.value.clone(), p.expires_at);
                    n += 1;
                }
            }
            int(n)
        }
        Command::MSet { pairs, nx } => {
            if *nx && pairs.iter().any(|(k, _)| layer.live(k).is_some()) {
                return int(0);
            }
            for (k, v) in pairs {
                layer.put(k, v.clone(), None);
            }
            if *nx {
                int(1)
            } else {
                Value::Ok
            }
        }
        Command::IncrBy { key, by } => {
            let (cur, t) = match layer.live(key) {
                None => (0, None),
                Some((v, t)) => match parse_i64(&v) {
                    Some(i) => (i, t),
                    None => return Value::Error(NOT_AN_INTEGER.into()),
                },
            };
            let Some(new) = cur.checked_add(*by) else {
                return Value::Error(OVERFLOW.into());
            };
            layer.put(key, new.to_string().into_bytes(), t);
            int(new)
        }
        Command::IncrByFloat { key, by } => {
            let Some(by) = parse_f64(by) else {
                return Value::Error(NOT_A_FLOAT.into());
            };
            let (cur, t) = match layer.live(key) {
                None => (0.0, None),
                Some((v, t)) => match parse_f64(&v) {
                    Some(f) => (f, t),
                    None => return Value::Error(NOT_A_FLOAT.into()),
                },
            };
            let new = cur + by;
            if !new.is_finite() {
                return Value::Error("ERR increment would produce NaN or Infinity".into());
            }
            let s = format_f64(new).into_bytes();
            layer.put(key, s.clone(), t);
            Value::Bulk(s)
        }
        Command::Append { key, value } => {
            let (mut v, t) = layer.live(key).unwrap_or_default();
            if let Some(e) = layer.too_large(v.len() + value.len()) {
                return e;
            }
            v.extend_from_slice(value);
            let n = v.len();
            layer.put(key, v, t);
            int(n as i64)
        }
        Command::SetRange { key, offset, value } => {
            let cur = layer.live(key);
            if value.is_empty() {
                return int(cur.map_or(0, |(v, _)| v.len() as i64));
            }
            let (mut v, t) = cur.unwrap_or_default();
            let end = *offset as u128 + value.len() as u128;
            if end > layer.env.max_value_bytes as u128 {
                return layer.too_large(end as usize).expect("too large");
            }
            let (o, end) = (*offset as usize, end as usize);
            if v.len() < end {
                v.resize(end, 0);
            }
            v[o..end].copy_from_slice(value);
            let n = v.len();
            layer.put(key, v, t);
            int(n as i64)
        }
        Command::Expire { key, when, cond } => {
            let Some((v, t)) = layer.live(key) else {
                return int(0);
            };
            let new = layer.deadline(*when);
            let ok = match cond {
                ExpireCond::Always => true,
                ExpireCond::NoDeadline => t.is_none(),
                ExpireCond::HasDeadline => t.is_some(),
                ExpireCond::Later => t.is_some_and(|t| new > t as i128),
                ExpireCond::Earlier => t.is_none_or(|t| new < t as i128),
            };
            if !ok {
                return int(0);
            }
            layer.put_until(key, v, Some(new));
            int(1)
        }
        Command::Persist { key } => match layer.live(key) {
            Some((v, Some(_))) => {
                layer.put(key, v, None);
                int(1)
            }
            _ => int(0),
        },
        Command::Rename { src, dst, nx } => {
            let Some((v, t)) = layer.live(src) else {
                return Value::Error("ERR no such key".into());
            };
            let ok = if *nx { int(1) } else { Value::Ok };
            if src == dst {
                return if *nx { int(0) } else { Value::Ok };
            }
            if *nx && layer.live(dst).is_some() {
                return int(0);
            }
            layer.delete(src);
            layer.put(dst, v, t);
            ok
        }
        Command::Copy { src, dst, replace } => {
            if src == dst {
                return Value::Error("ERR source and destination objects are the same".into());
            }
            let Some((v, t)) = layer.live(src) else {
                return int(0);
            };
            if !replace && layer.live(dst).is_some() {
                return int(0);
            }
            layer.put(dst, v, t);
            int(1)
        }
        Command::Flush => {
            layer.flush();
            Value::Ok
        }
        Command::CompareAndSet {
            key,
            expected,
            value,
            ttl_ms,
        } => {
            let cur = layer.live(key).map(|(v, _)| v);
            if cur != *expected {
                return int(0);
            }
            match value {
                None => layer.delete(key),
                Some(v) => {
                    let d = ttl_ms.map(|ms| now as i128 + ms as i128);
                    layer.put_until(key, v.clone(), d)
                }
            }
            int(1)
        }
        Command::Exec { .. } => Value::Error("ERR EXEC inside a transaction".into()),
    }
}

/// Most keys one KEYS reply holds; beyond it the client is told to SCAN.
pub const MAX_KEYS_REPLY: usize = 1_000_000;

/// The keyspace reads (SCAN, KEYS, RANDOMKEY, DBSIZE), on the map at `now_ms`.
/// Also gives the expired keys seen, whose deletion is due.
pub fn keyspace(cmd: &Command, store: &crate::store::Store, now_ms: u64) -> (Value, Vec<Vec<u8>>) {
    let expired = std::cell::RefCell::new(Vec::new());
    let live = |k: &[u8], t: Option<u64>| {
        let alive = t.is_none_or(|t| t > now_ms);
        if !alive && expired.borrow().len() < 64 {
            expired.borrow_mut().push(k.to_vec());
        }
        alive
    };
    let value = match cmd {
        Command::Scan {
            cursor,
            pattern,
            count,
            type_name,
        } => {
            let string_type = type_name
                .as_deref()
                .is_none_or(|t| t.eq_ignore_ascii_case("string"));
            let page = store.scan(*cursor, (*count).clamp(1, 100_000), |k, t| {
                string_type && live(k, t) && pattern.as_deref().is_none_or(|p| glob_match(p, k))
            });
            Value::Array(vec![
                Value::Bulk(page.cursor.to_string().into_bytes()),
                Value::Array(page.keys.into_iter().map(Value::Bulk).collect()),
            ])
        }
        Command::Keys { pattern } => {
            let mut keys = Vec::new();
            let mut cursor = 0;
            loop {
                let page = store.scan(cursor, 4096, |k, t| live(k, t) && glob_match(pattern, k));
                keys.extend(page.keys.into_iter().map(Value::Bulk));
                if keys.len() > MAX_KEYS_REPLY {
                    return (
                        Value::Error(format!(
                            "ERR KEYS would return more than {MAX_KEYS_REPLY} keys; use SCAN"
                        )),
                        expired.into_inner(),
                    );
                }
                cursor = page.cursor;
                if cursor == 0 {
                    break;
                }
            }
            Value::Array(keys)
        }
        Command::RandomKey => {
            let seed = now_ms ^ (store.meta().applied.index << 20);
            store
                .random_key(seed, |k, t| live(k, t))
                .map(Value::Bulk)
                .unwrap_or(Value::Nil)
        }
        Command::DbSize => Value::Int(store.meta().keys as i64),
        _ => Value::Error("ERR not a keyspace command".into()),
    };
    (value, expired.into_inner())
}

/// Redis glob matching (`*`, `?`, `[abc]`, `[^a-z]`, `\x`), as KEYS, SCAN
/// MATCH and CONFIG GET use it.
pub fn glob_match(pattern: &[u8], s: &[u8]) -> bool {
    // Iterative with one backtrack point for the last '*': linear-ish and
    // no recursion, so a hostile pattern cannot blow the stack.
    let (mut p, mut i) = (0usize, 0usize);
    let mut star: Option<(usize, usize)> = None;
    while i < s.len() {
        if p < pattern.len() {
            match pattern[p] {
                b'*' => {
                    while p < pattern.len() && pattern[p] == b'*' {
                        p += 1;
                    }
                    if p == pattern.len() {
                        return true;
                    }
                    star = Some((p, i));
                    continue;
                }
                b'?' => {
                    p += 1;
                    i += 1;
                    continue;
                }
                b'[' => {
                    if let Some((matched, next)) = class(pattern, p, s[i]) {
                        if matched {
                            p = next;
                            i += 1;
                            continue;
                        }
                    }
                }
                b'\\' if p + 1 < pattern.len() && pattern[p + 1] == s[i] => {
                    p += 2;
                    i += 1;
                    continue;
                }
                b'\\' if p + 1 < pattern.len() => {}
                c if c == s[i] => {
                    p += 1;
                    i += 1;
                    continue;
                }
                _ => {}
            }
        }
        match star {
            Some((sp, si)) => {
                p = sp;
                i = si + 1;
                star = Some((sp, si + 1));
            }
            None => return false,
        }
    }
    pattern[p..].iter().all(|&c| c == b'*')
}

/// A `[...]` class at `pattern[p]`: whether `c` matches and where the
/// pattern goes on. `None` when the class is not closed (then '[' matches
/// itself).
fn class(pattern: &[u8], p: usize, c: u8) -> Option<(bool, usize)> {
    let mut j = p + 1;
    let negate = pattern.get(j) == Some(&b'^');
    if negate {
        j += 1;
    }
    let mut matched = false;
    let mut first = true;
    while j < pattern.len() && (first || pattern[j] != b']') {
        first = false;
        let mut lo = pattern[j];
        if lo == b'\\' && j + 1 < pattern.len() {
            j += 1;
            lo = pattern[j];
        }
        if j + 2 < pattern.len() && pattern[j + 1] == b'-' && pattern[j + 2] != b']' {
            let hi = pattern[j + 2];
            let (a, b) = if lo <= hi { (lo, hi) } else { (hi, lo) };
            matched |= a <= c && c <= b;
            j += 3;
        } else {
            matched |= lo == c;
            j += 1;
        }
    }
    if j >= pattern.len() {
        return if pattern[p] == c {
            Some((true, p + 1))
        } else {
            None
        };
    }
    Some((matched != negate, j + 1))
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Map(HashMap<Vec<u8>, Stored>);

    impl View for Map {
        fn get(&self, key: &[u8]) -> Option<Stored> {
            self.0.get(key).cloned()
        }
    }

    fn env(now_ms: u64) -> Env {
        Env {
            now_ms,
            max_value_bytes: 1024,
        }
    }

    fn map(pairs: &[(&str, &str, Option<u64>)]) -> Map {
        Map(pairs
            .iter()
            .map(|(k, v, t)| (k.as_bytes().to_vec(), (v.as_bytes().to_vec(), *t)))
            .collect())
    }

    fn b(s: &str) -> Vec<u8> {
        s.as_bytes().to_vec()
    }

    fn set(k: &str, v: &str, cond: Cond, expiry: SetExpiry, get: bool) -> Command {
        Command::Set {
            key: b(k),
            value: b(v),
            cond,
            expiry,
            get,
        }
    }

    #[test]
    fn incr_logs_the_new_value_and_keeps_the_deadline() {
        let m = map(&[("n", "41", Some(5000)), ("s", "abc", None)]);
        let e = eval(&Command::IncrBy { key: b("n"), by: 1 }, &m, env(1000));
        assert_eq!(e.value, Value::Int(42));
        assert_eq!(
            e.op,
            Some(Op::PutExpiring {
                key: b("n"),
                value: b("42"),
                expires_at: 5000
            })
        );
        let e = eval(&Command::IncrBy { key: b("s"), by: 1 }, &m, env(1000));
        assert_eq!(e.value, Value::Error(NOT_AN_INTEGER.into()));
        assert_eq!(e.op, None);
        let m = map(&[("n", &i64::MAX.to_string(), None)]);
        let e = eval(&Command::IncrBy { key: b("n"), by: 1 }, &m, env(0));
        assert_eq!(e.value, Value::Error(OVERFLOW.into()));
        // An expired counter starts again from 0 and loses its deadline.
        let m = map(&[("n", "7", Some(10))]);
        let e = eval(&Command::IncrBy { key: b("n"), by: 2 }, &m, env(10));
        assert_eq!(e.value, Value::Int(2));
        assert_eq!(
            e.op,
            Some(Op::Put {
                key: b("n"),
                value: b("2")
            })
        );
        assert_eq!(e.expired, vec![b("n")]);
    }

    #[test]
    fn set_conditions_get_and_deadlines() {
        let m = map(&[("a", "1", None)]);
        let nx = eval(
            &set("a", "2", Cond::Absent, SetExpiry::Clear, false),
            &m,
            env(0),
        );
        assert_eq!((nx.value, nx.op), (Value::Nil, None));
        let xx = eval(
            &set("b", "2", Cond::Present, SetExpiry::Clear, false),
            &m,
            env(0),
        );
        assert_eq!((xx.value, xx.op), (Value::Nil, None));
        let get = eval(
            &set(
                "a",
                "2",
                Cond::Always,
                SetExpiry::Set(When::In(60_000)),
                true,
            ),
            &m,
            env(100),
        );
        assert_eq!(get.value, Value::Bulk(b("1")));
        assert_eq!(
            get.op,
            Some(Op::PutExpiring {
                key: b("a"),
                value: b("2"),
                expires_at: 60_100
            })
        );
        // A deadline already passed deletes.
        let past = eval(
            &set("a", "2", Cond::Always, SetExpiry::Set(When::At(50)), false),
            &m,
            env(100),
        );
        assert_eq!(
            (past.value, past.op),
            (Value::Ok, Some(Op::Delete { key: b("a") }))
        );
        let m = map(&[("a", "1", Some(900))]);
        let keep = eval(
            &set("a", "2", Cond::Always, SetExpiry::Keep, false),
            &m,
            env(100),
        );
        assert_eq!(
            keep.op,
            Some(Op::PutExpiring {
                key: b("a"),
                value: b("2"),
                expires_at: 900
            })
        );
    }

    #[test]
    fn expire_conditions_follow_redis() {
        let m = map(&[("t", "v", Some(5000)), ("p", "v", None)]);
        let ex = |k: &str, ms: i64, cond| {
            eval(
                &Command::Expire {
                    key: b(k),
                    when: When::In(ms),
                    cond,
                },
                &m,
                env(1000),
            )
            .value
        };
        assert_eq!(ex("p", 1000, ExpireCond::NoDeadline), Value::Int(1));
        assert_eq!(ex("t", 1000, ExpireCond::NoDeadline), Value::Int(0));
        assert_eq!(ex("p", 1000, ExpireCond::HasDeadline), Value::Int(0));
        assert_eq!(ex("t", 9000, ExpireCond::Later), Value::Int(1));
        assert_eq!(ex("t", 1000, ExpireCond::Later), Value::Int(0));
        assert_eq!(ex("p", 9000, ExpireCond::Later), Value::Int(0));
        assert_eq!(ex("p", 9000, ExpireCond::Earlier), Value::Int(1));
        assert_eq!(ex("missing", 9000, ExpireCond::Always), Value::Int(0));
        let zero = eval(
            &Command::Expire {
                key: b("p"),
                when: When::In(0),
                cond: ExpireCond::Always,
            },
            &m,
            env(1000),
        );
        assert_eq!(zero.op, Some(Op::Delete { key: b("p") }));
        let ttl = |k: &str, kind| eval(&Command::Ttl { key: b(k), kind }, &m, env(1000)).value;
        assert_eq!(ttl("t", TtlKind::Seconds), Value::Int(4));
        assert_eq!(ttl("t", TtlKind::Millis), Value::Int(4000));
        assert_eq!(ttl("t", TtlKind::AtSeconds), Value::Int(5));
        assert_eq!(ttl("p", TtlKind::Seconds), Value::Int(-1));
        assert_eq!(ttl("x", TtlKind::Seconds), Value::Int(-2));
    }

    #[test]
    fn exec_is_one_batch_sees_its_own_writes_and_aborts_on_a_watched_change() {
        let m = map(&[("a", "1", None)]);
        let cmds = vec![
            Command::IncrBy { key: b("a"), by: 1 },
            Command::IncrBy { key: b("a"), by: 1 },
            Command::Append {
                key: b("s"),
                value: b("x"),
            },
            Command::IncrBy { key: b("s"), by: 1 },
            Command::Get { key: b("a") },
        ];
        let fp = fingerprint(m.get(b"a").as_ref());
        let e = eval(
            &Command::Exec {
                watched: vec![(b("a"), fp)],
                commands: cmds.clone(),
            },
            &m,
            env(0),
        );
        assert_eq!(
            e.value,
            Value::Array(vec![
                Value::Int(2),
                Value::Int(3),
                Value::Int(1),
                Value::Error(NOT_AN_INTEGER.into()),
                Value::Bulk(b("3")),
            ])
        );
        assert!(
            matches!(e.op, Some(Op::Batch(ref ops)) if ops.len() == 2),
            "{:?}",
            e.op
        );
        let e = eval(
            &Command::Exec {
                watched: vec![(b("a"), fp ^ 2)],
                commands: cmds,
            },
            &m,
            env(0),
        );
        assert_eq!((e.value, e.op), (Value::NilArray, None));
    }

    #[test]
    fn rename_copy_msetnx_and_flush() {
        let m = map(&[("a", "1", Some(99)), ("b", "2", None)]);
        let r = eval(
            &Command::Rename {
                src: b("a"),
                dst: b("c"),
                nx: false,
            },
            &m,
            env(0),
        );
        assert_eq!(r.value, Value::Ok);
        assert_eq!(
            r.op,
            Some(Op::Batch(vec![
                Op::Delete { key: b("a") },
                Op::PutExpiring {
                    key: b("c"),
                    value: b("1"),
                    expires_at: 99
                }
            ]))
        );
        let r = eval(
            &Command::Rename {
                src: b("a"),
                dst: b("b"),
                nx: true,
            },
            &m,
            env(0),
        );
        assert_eq!((r.value, r.op), (Value::Int(0), None));
        let r = eval(
            &Command::Rename {
                src: b("zz"),
                dst: b("b"),
                nx: false,
            },
            &m,
            env(0),
        );
        assert_eq!(r.value, Value::Error("ERR no such key".into()));
        let c = eval(
            &Command::Copy {
                src: b("b"),
                dst: b("a"),
                replace: false,
            },
            &m,
            env(0),
        );
        assert_eq!(c.value, Value::Int(0));
        let n = eval(
            &Command::MSet {
                pairs: vec![(b("x"), b("1")), (b("b"), b("3"))],
                nx: true,
            },
            &m,
            env(0),
        );
        assert_eq!((n.value, n.op), (Value::Int(0), None));
        let f = eval(
            &Command::Exec {
                watched: vec![],
                commands: vec![
                    Command::Flush,
                    Command::Get { key: b("b") },
                    Command::Set {
                        key: b("n"),
                        value: b("v"),
                        cond: Cond::Absent,
                        expiry: SetExpiry::Clear,
                        get: false,
                    },
                ],
            },
            &m,
            env(0),
        );
        assert_eq!(
            f.value,
            Value::Array(vec![Value::Ok, Value::Nil, Value::Ok])
        );
    }

    #[test]
    fn string_commands_follow_redis() {
        assert_eq!(get_range(b"This is a string", 0, 3), b"This");
        assert_eq!(get_range(b"This is a string", -3, -1), b"ing");
        assert_eq!(get_range(b"This is a string", 0, -1), b"This is a string");
        assert_eq!(get_range(b"This is a string", 10, 100), b"string");
        assert_eq!(get_range(b"abc", 2, 1), b"");
        let m = map(&[("k", "Hello World", None)]);
        let e = eval(
            &Command::SetRange {
                key: b("k"),
                offset: 6,
                value: b("Redis"),
            },
            &m,
            env(0),
        );
        assert_eq!(e.value, Value::Int(11));
        let e = eval(
            &Command::SetRange {
                key: b("z"),
                offset: 3,
                value: b("x"),
            },
            &m,
            env(0),
        );
        assert_eq!(
            e.op,
            Some(Op::Put {
                key: b("z"),
                value: vec![0, 0, 0, b'x']
            })
        );
        let big = eval(
            &Command::SetRange {
                key: b("z"),
                offset: 1024,
                value: b("x"),
            },
            &m,
            env(0),
        );
        assert!(matches!(big.value, Value::Error(ref e) if e.starts_with("ERR string exceeds")));
        let f = eval(
            &Command::IncrByFloat {
                key: b("f"),
                by: b("10.5"),
            },
            &m,
            env(0),
        );
        assert_eq!(f.value, Value::Bulk(b("10.5")));
        let m = map(&[("f", "10.50", None)]);
        let f = eval(
            &Command::IncrByFloat {
                key: b("f"),
                by: b("0.1"),
            },
            &m,
            env(0),
        );
        assert_eq!(f.value, Value::Bulk(b("10.6")));
        for bad in ["", "01", "+1", " 1", "-0", "1.0", "99999999999999999999"] {
            assert_eq!(parse_i64(bad.as_bytes()), None, "{bad:?}");
        }
        assert_eq!(parse_i64(b"-12"), Some(-12));
        assert_eq!(format_f64(1e21), "1000000000000000000000");
    }

    #[test]
    fn glob_matches_like_redis() {
        let yes = [
            ("*", "anything"),
            ("h?llo", "hello"),
            ("h*llo", "heeeello"),
            ("h[ae]llo", "hallo"),
            ("h[^e]llo", "hallo"),
            ("h[a-b]llo", "hbllo"),
            ("user:*:name", "user:12:name"),
            ("a\\*b", "a*b"),
            ("", ""),
            ("*a*b*", "xxaxxbxx"),
        ];
        for (p, s) in yes {
            assert!(glob_match(p.as_bytes(), s.as_bytes()), "{p} ~ {s}");
        }
        let no = [
            ("h[^e]llo", "hello"),
            ("h[a-b]llo", "hcllo"),
            ("h?llo", "hllo"),
            ("a\\*b", "axb"),
            ("user:*:name", "user:12:age"),
            ("", "x"),
        ];
        for (p, s) in no {
            assert!(!glob_match(p.as_bytes(), s.as_bytes()), "{p} !~ {s}");
        }
        // A hostile pattern ends quickly.
        let p = "*a".repeat(200) + "b";
        assert!(!glob_match(p.as_bytes(), "a".repeat(5000).as_bytes()));
    }
}
