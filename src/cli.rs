//! `client_proto` commands: `R,key`, `W,key,value`, `D,key`, `T,ms`.
//!
//! All commands are parsed and checked before any is run. The key ends at the
//! first comma; a value is everything after the second comma, commas included.
//! Keys and values are taken as raw bytes.

use std::time::Duration;

/// Exit codes of `client_proto`, also used by `dkv-client`.
pub mod exit {
    /// Every command succeeded.
    pub const OK: u8 = 0;
    /// A read or delete found no such key (the other commands still ran).
    pub const NOT_FOUND: u8 = 1;
    /// Usage error or invalid command; nothing was run.
    pub const USAGE: u8 = 2;
    /// The cluster was unavailable or refused the operation; later commands were not run.
    pub const FAILED: u8 = 3;
    /// A write was sent but no answer came: it may or may not have been applied.
    pub const UNKNOWN: u8 = 4;
}

/// Largest `T,ms` sleep accepted (one hour).
pub const MAX_SLEEP_MS: u64 = 3_600_000;

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Command {
    Read(Vec<u8>),
    Write(Vec<u8>, Vec<u8>),
    Delete(Vec<u8>),
    Sleep(Duration),
}

/// Limits checked while parsing.
#[derive(Clone, Copy, Debug)]
pub struct Limits {
    pub max_key_bytes: usize,
    pub max_value_bytes: usize,
}

fn shown(arg: &[u8]) -> String {
    let s = String::from_utf8_lossy(arg);
    if s.chars().count() > 40 {
        format!("{}…", s.chars().take(40).collect::<String>())
    } else {
        s.into_owned()
    }
}

fn key(arg: &[u8], k: &[u8], limits: Limits) -> Result<Vec<u8>, String> {
    if k.is_empty() {
        return Err(format!("'{}': the key is empty", shown(arg)));
    }
    if k.len() > limits.max_key_bytes {
        return Err(format!(
            "'{}': the key is {} bytes, above the limit of {} bytes",
            shown(arg),
            k.len(),
            limits.max_key_bytes
        ));
    }
    Ok(k.to_vec())
}

/// Parses one command argument.
pub fn parse_command(arg: &[u8], limits: Limits) -> Result<Command, String> {
    let mut parts = arg.splitn(3, |&b| b == b',');
    let op = parts.next().unwrap_or_default();
    let a = parts.next();
    let b = parts.next();
    let usage = "expected R,key  W,key,value  D,key  or  T,ms";
    match (op, a, b) {
        (b"R" | b"r", Some(k), None) => Ok(Command::Read(key(arg, k, limits)?)),
        (b"D" | b"d", Some(k), None) => Ok(Command::Delete(key(arg, k, limits)?)),
        (b"W" | b"w", Some(k), Some(v)) => {
            let k = key(arg, k, limits)?;
            if v.len() > limits.max_value_bytes {
                return Err(format!(
                    "'{}': the value is {} bytes, above the limit of {} bytes",
                    shown(arg),
                    v.len(),
                    limits.max_value_bytes
                ));
            }
            Ok(Command::Write(k, v.to_vec()))
        }
        (b"T" | b"t", Some(ms), None) => {
            let ms: u64 = std::str::from_utf8(ms)
                .ok()
                .and_then(|s| s.parse().ok())
                .ok_or_else(|| {
                    format!("'{}': T takes a whole number of milliseconds", shown(arg))
                })?;
            if ms > MAX_SLEEP_MS {
                return Err(format!(
                    "'{}': sleeps are limited to {MAX_SLEEP_MS} ms",
                    shown(arg)
                ));
            }
            Ok(Command::Sleep(Duration::from_millis(ms)))
        }
        (b"R" | b"r" | b"D" | b"d", Some(_), Some(_)) => Err(format!(
            "'{}': R and D take only a key (keys cannot contain commas)",
            shown(arg)
        )),
        (b"W" | b"w", _, None) => Err(format!("'{}': W needs a key and a value", shown(arg))),
        _ => Err(format!("'{}' is not a command: {usage}", shown(arg))),
    }
}

/// Parses every argument; the first bad one is an error and nothing runs.
pub fn parse_all<'a>(
    args: impl IntoIterator<Item = &'a [u8]>,
    limits: Limits,
) -> Result<Vec<Command>, String> {
    let cmds: Vec<Command> = args
        .into_iter()
        .map(|a| parse_command(a, limits))
        .collect::<Result<_, _>>()?;
    if cmds.is_empty() {
        return Err("no command given: expected R,key  W,key,value  D,key  or  T,ms".into());
    }
    Ok(cmds)
}

/// Command-line tools die quietly when their output pipe closes
/// (`dkv-client status | head -1`), as Unix tools do, instead of panicking
/// on the write. Rust ignores SIGPIPE by default; this puts it back.
pub fn restore_sigpipe() {
    // SAFETY: setting a signal's disposition to the default is
    // async-signal-safe and done before any thread starts.
    unsafe {
        libc::signal(libc::SIGPIPE, libc::SIG_DFL);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const L: Limits = Limits {
        max_key_bytes: 8,
        max_value_bytes: 16,
    };

    #[test]
    fn parses_the_four_commands() {
        assert_eq!(parse_command(b"R,k", L), Ok(Command::Read(b"k".to_vec())));
        assert_eq!(
            parse_command(b"W,k,a,b", L),
            Ok(Command::Write(b"k".to_vec(), b"a,b".to_vec()))
        );
        assert_eq!(
            parse_command(b"W,k,", L),
            Ok(Command::Write(b"k".to_vec(), vec![]))
        );
        assert_eq!(parse_command(b"D,k", L), Ok(Command::Delete(b"k".to_vec())));
        assert_eq!(
            parse_command(b"T,250", L),
            Ok(Command::Sleep(Duration::from_millis(250)))
        );
    }

    #[test]
    fn rejects_malformed_commands() {
        for bad in [
            &b""[..],
            b"R",
            b"R,",
            b"X,k",
            b"W,k",
            b"D,k,v",
            b"T,abc",
            b"T,-1",
            b"T,99999999999",
            b"R,waytoolongkey",
            b"W,k,0123456789abcdefX",
        ] {
            assert!(
                parse_command(bad, L).is_err(),
                "{:?}",
                String::from_utf8_lossy(bad)
            );
        }
    }

    #[test]
    fn one_bad_command_rejects_all() {
        let args: Vec<&[u8]> = vec![b"W,a,1", b"Q,b"];
        assert!(parse_all(args, L).is_err());
        assert!(parse_all(Vec::<&[u8]>::new(), L).is_err());
    }
}
