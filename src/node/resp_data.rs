//! The data commands of the RESP port: Redis syntax and error strings in,
//! a [`Command`] out (evaluated at the coordinator, see [`crate::commands`]),
//! and the connection's transaction state (MULTI, WATCH).

use crate::commands::{
    Command, Cond, ExpireCond, GetExpiry, SetExpiry, TtlKind, Value, When, NOT_AN_INTEGER,
};
use crate::resp::Reply;

/// Commands that change data: on the coordinator they may be appended while
/// the connection's earlier writes still wait for their commit, because a
/// write is evaluated against every entry appended before it.
const WRITES: &[&str] = &[
    "SET",
    "SETNX",
    "SETEX",
    "PSETEX",
    "GETSET",
    "GETDEL",
    "GETEX",
    "DEL",
    "UNLINK",
    "MSET",
    "MSETNX",
    "INCR",
    "DECR",
    "INCRBY",
    "DECRBY",
    "INCRBYFLOAT",
    "APPEND",
    "SETRANGE",
    "EXPIRE",
    "PEXPIRE",
    "EXPIREAT",
    "PEXPIREAT",
    "PERSIST",
    "RENAME",
    "RENAMENX",
    "COPY",
    "FLUSHALL",
    "FLUSHDB",
];

/// Whether `name` (any case) is a data command that writes.
pub(super) fn is_write(name: &[u8]) -> bool {
    WRITES
        .iter()
        .any(|w| w.as_bytes().eq_ignore_ascii_case(name))
}

/// How a command's [`Value`] becomes its RESP reply, where Redis answers
/// differently from the command it is built on.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Shape {
    Plain,
    /// SETNX, MSETNX-like: OK/nil as 1/0.
    OkAsOne,
}

/// The reply for `v`.
pub(super) fn to_reply(v: Value, shape: Shape) -> Reply {
    match (v, shape) {
        (Value::Ok, Shape::OkAsOne) => Reply::Int(1),
        (Value::Nil, Shape::OkAsOne) => Reply::Int(0),
        (Value::Ok, _) => Reply::ok(),
        (Value::Nil, _) => Reply::Nil,
        (Value::Int(i), _) => Reply::Int(i),
        (Value::Bulk(b), _) => Reply::Bulk(b),
        (Value::Status(s), _) => Reply::Simple(s),
        (Value::Array(items), _) => Reply::Array(
            items
                .into_iter()
                .map(|v| to_reply(v, Shape::Plain))
                .collect(),
        ),
        (Value::NilArray, _) => Reply::NilArray,
        (Value::Error(e), _) => Reply::Error(e),
    }
}

/// A command name or option, upper case (RESP names are case-insensitive).
pub(super) fn upper(b: &[u8]) -> String {
    String::from_utf8_lossy(b).to_ascii_uppercase()
}

pub(super) fn wrong_args(cmd: &str) -> Reply {
    Reply::err(format!(
        "ERR wrong number of arguments for '{}' command",
        cmd.to_ascii_lowercase()
    ))
}

fn syntax() -> Reply {
    Reply::err("ERR syntax error")
}

fn int_arg(b: &[u8]) -> Result<i64, Reply> {
    crate::commands::parse_i64(b).ok_or_else(|| Reply::err(NOT_AN_INTEGER))
}

/// A TTL argument in `unit_ms` ms per unit, positive, as a duration in ms.
fn ttl_arg(b: &[u8], unit_ms: i64, cmd: &str) -> Result<i64, Reply> {
    let n = int_arg(b)?;
    match n.checked_mul(unit_ms) {
        Some(ms) if n > 0 => Ok(ms),
        _ => Err(Reply::err(format!(
            "ERR invalid expire time in '{}' command",
            cmd.to_ascii_lowercase()
        ))),
    }
}

/// Parses SET's options (after key and value).
fn set_options(opts: &[Vec<u8>]) -> Result<(Cond, SetExpiry, bool), Reply> {
    let (mut cond, mut expiry, mut get) = (Cond::Always, SetExpiry::Clear, false);
    let mut i = 0;
    while i < opts.len() {
        let o = upper(&opts[i]);
        let timed = matches!(o.as_str(), "EX" | "PX" | "EXAT" | "PXAT");
        match o.as_str() {
            "NX" if cond == Cond::Always => cond = Cond::Absent,
            "XX" if cond == Cond::Always => cond = Cond::Present,
            "GET" if !get => get = true,
            "KEEPTTL" if expiry == SetExpiry::Clear => expiry = SetExpiry::Keep,
            _ if timed && expiry == SetExpiry::Clear && i + 1 < opts.len() => {
                i += 1;
                let unit = if o.starts_with('E') { 1000 } else { 1 };
                let ms = ttl_arg(&opts[i], unit, "set")?;
                expiry = SetExpiry::Set(if o.ends_with("AT") {
                    When::At(ms)
                } else {
                    When::In(ms)
                });
            }
            _ => return Err(syntax()),
        }
        i += 1;
    }
    Ok((cond, expiry, get))
}

/// The command a RESP data command is, and how to shape its reply; `None`
/// when `args` is not a data command. `Err` holds the reply for bad syntax.
pub(super) fn parse(args: &[Vec<u8>]) -> Option<Result<(Command, Shape), Reply>> {
    let name = upper(&args[0]);
    let n = args.len();
    let a = |i: usize| args[i].clone();
    let keys = |from: usize| args[from..].to_vec();
    let arity = |ok: bool| if ok { Ok(()) } else { Err(wrong_args(&name)) };
    let plain = |c: Command| Ok((c, Shape::Plain));
    let r = (|| -> Result<(Command, Shape), Reply> {
        match name.as_str() {
            "GET" => {
                arity(n == 2)?;
                plain(Command::Get { key: a(1) })
            }
            "SET" => {
                arity(n >= 3)?;
                let (cond, expiry, get) = set_options(&args[3..])?;
                plain(Command::Set {
                    key: a(1),
                    value: a(2),
                    cond,
                    expiry,
                    get,
                })
            }
            "SETNX" => {
                arity(n == 3)?;
                Ok((
                    Command::Set {
                        key: a(1),
                        value: a(2),
                        cond: Cond::Absent,
                        expiry: SetExpiry::Clear,
                        get: false,
                    },
                    Shape::OkAsOne,
                ))
            }
            "SETEX" | "PSETEX" => {
                arity(n == 4)?;
                let unit = if name == "SETEX" { 1000 } else { 1 };
                let ms = ttl_arg(&args[2], unit, &name)?;
                plain(Command::Set {
                    key: a(1),
                    value: a(3),
                    cond: Cond::Always,
                    expiry: SetExpiry::Set(When::In(ms)),
                    get: false,
                })
            }
            "GETSET" => {
                arity(n == 3)?;
                plain(Command::Set {
                    key: a(1),
                    value: a(2),
                    cond: Cond::Always,
                    expiry: SetExpiry::Clear,
                    get: true,
                })
            }
            "GETDEL" => {
                arity(n == 2)?;
                plain(Command::GetDel { key: a(1) })
            }
            "GETEX" => {
                arity(n >= 2)?;
                let expiry = match args.get(2).map(|o| upper(o)).as_deref() {
                    None => GetExpiry::Keep,
                    Some("PERSIST") if n == 3 => GetExpiry::Persist,
                    Some(o @ ("EX" | "PX" | "EXAT" | "PXAT")) if n == 4 => {
                        let unit = if o.starts_with('E') { 1000 } else { 1 };
                        let ms = ttl_arg(&args[3], unit, "getex")?;
                        GetExpiry::Set(if o.ends_with("AT") {
                            When::At(ms)
                        } else {
                            When::In(ms)
                        })
                    }
                    _ => return Err(syntax()),
                };
                plain(Command::GetEx { key: a(1), expiry })
            }
            "DEL" | "UNLINK" => {
                arity(n >= 2)?;
                plain(Command::Del { keys: keys(1) })
            }
            "EXISTS" => {
                arity(n >= 2)?;
                plain(Command::Exists { keys: keys(1) })
            }
            "MGET" => {
                arity(n >= 2)?;
                plain(Command::MGet { keys: keys(1) })
            }
            "MSET" | "MSETNX" => {
                arity(n >= 3 && n % 2 == 1)?;
                let pairs = args[1..]
                    .chunks(2)
                    .map(|kv| (kv[0].clone(), kv[1].clone()))
                    .collect();
                plain(Command::MSet {
                    pairs,
                    nx: name == "MSETNX",
                })
            }
            "INCR" | "DECR" => {
                arity(n == 2)?;
                let by = if name == "INCR" { 1 } else { -1 };
                plain(Command::IncrBy { key: a(1), by })
            }
            "INCRBY" | "DECRBY" => {
                arity(n == 3)?;
                let by = int_arg(&args[2])?;
                let by = if name == "INCRBY" {
                    by
                } else {
                    by.checked_neg()
                        .ok_or_else(|| Reply::err("ERR decrement would overflow"))?
                };
                plain(Command::IncrBy { key: a(1), by })
            }
            "INCRBYFLOAT" => {
                arity(n == 3)?;
                plain(Command::IncrByFloat {
                    key: a(1),
                    by: a(2),
                })
            }
            "APPEND" => {
                arity(n == 3)?;
                plain(Command::Append {
                    key: a(1),
                    value: a(2),
                })
            }
            "STRLEN" => {
                arity(n == 2)?;
                plain(Command::StrLen { key: a(1) })
            }
            "GETRANGE" | "SUBSTR" => {
                arity(n == 4)?;
                plain(Command::GetRange {
                    key: a(1),
                    start: int_arg(&args[2])?,
                    end: int_arg(&args[3])?,
                })
            }
            "SETRANGE" => {
                arity(n == 4)?;
                let offset = int_arg(&args[2])?;
                if offset < 0 {
                    return Err(Reply::err("ERR offset is out of range"));
                }
                plain(Command::SetRange {
                    key: a(1),
                    offset: offset as u64,
                    value: a(3),
                })
            }
            "EXPIRE" | "PEXPIRE" | "EXPIREAT" | "PEXPIREAT" => {
                arity(n == 3 || n == 4)?;
                let t = int_arg(&args[2])?;
                let unit = if name.starts_with('P') { 1 } else { 1000 };
                let ms = t.checked_mul(unit).ok_or_else(|| {
                    Reply::err(format!(
                        "ERR invalid expire time in '{}' command",
                        name.to_ascii_lowercase()
                    ))
                })?;
                let when = if name.ends_with("AT") {
                    When::At(ms)
                } else {
                    When::In(ms)
                };
                let cond = match args.get(3).map(|o| upper(o)).as_deref() {
                    None => ExpireCond::Always,
                    Some("NX") => ExpireCond::NoDeadline,
                    Some("XX") => ExpireCond::HasDeadline,
                    Some("GT") => ExpireCond::Later,
                    Some("LT") => ExpireCond::Earlier,
                    Some(o) => return Err(Reply::err(format!("ERR Unsupported option {o}"))),
                };
                plain(Command::Expire {
                    key: a(1),
                    when,
                    cond,
                })
            }
            "TTL" | "PTTL" | "EXPIRETIME" | "PEXPIRETIME" => {
                arity(n == 2)?;
                let kind = match name.as_str() {
                    "TTL" => TtlKind::Seconds,
                    "PTTL" => TtlKind::Millis,
                    "EXPIRETIME" => TtlKind::AtSeconds,
                    _ => TtlKind::AtMillis,
                };
                plain(Command::Ttl { key: a(1), kind })
            }
            "PERSIST" => {
                arity(n == 2)?;
                plain(Command::Persist { key: a(1) })
            }
            "TYPE" => {
                arity(n == 2)?;
                plain(Command::Type { key: a(1) })
            }
            "SCAN" => {
                arity(n >= 2)?;
                let cursor = std::str::from_utf8(&args[1])
                    .ok()
                    .and_then(|c| c.parse::<u64>().ok())
                    .ok_or_else(|| Reply::err("ERR invalid cursor"))?;
                let (mut pattern, mut count, mut type_name) = (None, 10usize, None);
                let mut i = 2;
                while i < n {
                    if i + 1 >= n {
                        return Err(syntax());
                    }
                    match upper(&args[i]).as_str() {
                        "MATCH" => pattern = Some(a(i + 1)),
                        "COUNT" => {
                            let c = int_arg(&args[i + 1])?;
                            if c < 1 {
                                return Err(syntax());
                            }
                            count = c as usize;
                        }
                        "TYPE" => type_name = Some(String::from_utf8_lossy(&args[i + 1]).into()),
                        _ => return Err(syntax()),
                    }
                    i += 2;
                }
                plain(Command::Scan {
                    cursor,
                    pattern,
                    count,
                    type_name,
                })
            }
            "KEYS" => {
                arity(n == 2)?;
                plain(Command::Keys { pattern: a(1) })
            }
            "RANDOMKEY" => {
                arity(n == 1)?;
                plain(Command::RandomKey)
            }
            "DBSIZE" => {
                arity(n == 1)?;
                plain(Command::DbSize)
            }
            "RENAME" | "RENAMENX" => {
                arity(n == 3)?;
                plain(Command::Rename {
                    src: a(1),
                    dst: a(2),
                    nx: name == "RENAMENX",
                })
            }
            "COPY" => {
                arity(n >= 3)?;
                let mut replace = false;
                let mut i = 3;
                while i < n {
                    match upper(&args[i]).as_str() {
                        "REPLACE" => replace = true,
                        "DB" if i + 1 < n => {
                            i += 1;
                            if args[i] != b"0" {
                                return Err(Reply::err("ERR DB index is out of range"));
                            }
                        }
                        _ => return Err(syntax()),
                    }
                    i += 1;
                }
                plain(Command::Copy {
                    src: a(1),
                    dst: a(2),
                    replace,
                })
            }
            "FLUSHALL" | "FLUSHDB" => {
                match args.get(1).map(|o| upper(o)).as_deref() {
                    None | Some("ASYNC") | Some("SYNC") if n <= 2 => {}
                    _ => return Err(syntax()),
                }
                plain(Command::Flush)
            }
            _ => Err(Reply::Nil),
        }
    })();
    match r {
        Err(Reply::Nil) => None,
        r => Some(r),
    }
}

/// A connection's MULTI state.
#[derive(Default)]
pub(super) struct Transaction {
    /// Commands queued since MULTI (`None`: not in MULTI).
    pub queued: Option<Vec<Command>>,
    /// A queued command was refused: EXEC aborts.
    pub failed: bool,
    /// Keys WATCHed and their fingerprints then.
    pub watched: Vec<(Vec<u8>, u64)>,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(s: &str) -> Option<Result<(Command, Shape), Reply>> {
        let args: Vec<Vec<u8>> = s.split(' ').map(|a| a.as_bytes().to_vec()).collect();
        parse(&args)
    }

    fn err(s: &str) -> String {
        match p(s) {
            Some(Err(Reply::Error(e))) => e,
            other => panic!("{s}: {other:?}"),
        }
    }

    #[test]
    fn set_options_and_errors_follow_redis() {
        match p("SET k v NX PX 100 GET") {
            Some(Ok((
                Command::Set {
                    cond, expiry, get, ..
                },
                _,
            ))) => {
                assert_eq!(cond, Cond::Absent);
                assert_eq!(expiry, SetExpiry::Set(When::In(100)));
                assert!(get);
            }
            other => panic!("{other:?}"),
        }
        assert_eq!(err("SET k v NX XX"), "ERR syntax error");
        assert_eq!(err("SET k v EX 10 PX 10"), "ERR syntax error");
        assert_eq!(
            err("SET k v EX 0"),
            "ERR invalid expire time in 'set' command"
        );
        assert_eq!(err("SET k v EX x"), NOT_AN_INTEGER);
        assert_eq!(
            err("SETEX k -1 v"),
            "ERR invalid expire time in 'setex' command"
        );
        assert_eq!(err("INCRBY k 1.5"), NOT_AN_INTEGER);
        assert_eq!(
            err("GET"),
            "ERR wrong number of arguments for 'get' command"
        );
        assert_eq!(
            err("MSET a"),
            "ERR wrong number of arguments for 'mset' command"
        );
        assert_eq!(err("SCAN x"), "ERR invalid cursor");
        assert_eq!(err("SCAN 0 COUNT 0"), "ERR syntax error");
        assert_eq!(err("SETRANGE k -1 v"), "ERR offset is out of range");
        assert!(p("LPUSH k v").is_none());
        assert!(p("PING").is_none());
    }
}
