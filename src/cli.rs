//! `client_proto` commands: `R,key`, `W,key,value`, `D,key`, `T,ms`, and its
//! command line.
//!
//! All commands are parsed and checked before any is run. A command's fields
//! are separated by commas; inside a key or value a backslash escapes:
//! `\,` a comma, `\n` a newline, `\\` a backslash, `\xHH` any byte, `\@` and
//! `\-` an `@` and a `-` (for a value that would otherwise name a file or
//! stdin). Any other backslash sequence is an error, and so is an unescaped
//! comma in a value (`W,a,b,c`). A value given as `@PATH` is the contents of
//! that file, `-` the whole of stdin. Reads print values with [`escape`]
//! (the same escapes, commas left as they are), so every command prints
//! exactly one line.

use std::path::PathBuf;
use std::time::Duration;

/// Exit codes of `client_proto`, also used by `dkv-client`.
pub mod exit {
    /// Every command succeeded.
    pub const OK: u8 = 0;
    /// A read or delete found no such key (the other commands still ran).
    pub const NOT_FOUND: u8 = 1;
    /// `dkv-client status`: the cluster answered but is degraded (a member
    /// unreachable or out of sync, no coordinator, the server recovering).
    pub const DEGRADED: u8 = 1;
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

/// Where a `W` command's value comes from when it is not in the argument.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ValueFrom {
    /// `@PATH`: the file's contents.
    File(PathBuf),
    /// `-`: all of stdin.
    Stdin,
}

/// Reads a `W` command's value from its source, given the value limit (see
/// [`parse_command`]; [`read_value`] is the real one).
pub type ReadValue<'a> = dyn FnMut(&ValueFrom, usize) -> Result<Vec<u8>, String> + 'a;

/// Limits checked while parsing.
#[derive(Clone, Copy, Debug)]
pub struct Limits {
    pub max_key_bytes: usize,
    pub max_value_bytes: usize,
}

/// `bytes` as one line of text: printable UTF-8 as it is, `\` as `\\`, a
/// newline as `\n`, every other control character and every byte that is
/// not UTF-8 as `\xHH`. [`unescape`] reverses it.
pub fn escape(bytes: &[u8]) -> String {
    let mut out = String::with_capacity(bytes.len());
    for chunk in bytes.utf8_chunks() {
        for c in chunk.valid().chars() {
            match c {
                '\\' => out.push_str("\\\\"),
                '\n' => out.push_str("\\n"),
                c if c.is_control() => {
                    let mut b = [0u8; 4];
                    for byte in c.encode_utf8(&mut b).bytes() {
                        out.push_str(&format!("\\x{byte:02x}"));
                    }
                }
                c => out.push(c),
            }
        }
        for b in chunk.invalid() {
            out.push_str(&format!("\\x{b:02x}"));
        }
    }
    out
}

const ESCAPES: &str = r"\, \n \\ \xHH \@ \-";

/// Undoes the escapes of a key or value (see the module doc).
pub fn unescape(field: &[u8]) -> Result<Vec<u8>, String> {
    let mut out = Vec::with_capacity(field.len());
    let mut i = 0;
    while i < field.len() {
        if field[i] != b'\\' {
            out.push(field[i]);
            i += 1;
            continue;
        }
        let b = match field.get(i + 1) {
            None => {
                return Err(format!(
                    "it ends with a lone backslash: write \\\\ for a backslash (escapes: {ESCAPES})"
                ))
            }
            Some(b',') => b',',
            Some(b'n') => b'\n',
            Some(b'\\') => b'\\',
            Some(b'@') => b'@',
            Some(b'-') => b'-',
            Some(b'x') => {
                let hex = field
                    .get(i + 2..i + 4)
                    .and_then(|h| std::str::from_utf8(h).ok())
                    .and_then(|h| u8::from_str_radix(h, 16).ok())
                    .ok_or_else(|| {
                        "\\x must be followed by two hex digits (\\x0a is a newline)".to_string()
                    })?;
                out.push(hex);
                i += 4;
                continue;
            }
            Some(&other) => {
                return Err(format!(
                    "'\\{}' is not an escape: write \\\\ for a backslash (escapes: {ESCAPES})",
                    escape(&[other])
                ))
            }
        };
        out.push(b);
        i += 2;
    }
    Ok(out)
}

/// Splits a command at its unescaped commas, keeping each field's escapes.
fn split_fields(arg: &[u8]) -> Vec<&[u8]> {
    let mut fields = Vec::new();
    let (mut start, mut i) = (0, 0);
    while i < arg.len() {
        match arg[i] {
            b'\\' => i += 2,
            b',' => {
                fields.push(&arg[start..i]);
                i += 1;
                start = i;
            }
            _ => i += 1,
        }
    }
    fields.push(&arg[start..arg.len().min(i).max(start)]);
    fields
}

fn shown(arg: &[u8]) -> String {
    let s = escape(arg);
    if s.chars().count() > 40 {
        format!("{}…", s.chars().take(40).collect::<String>())
    } else {
        s
    }
}

fn key(arg: &[u8], k: &[u8], limits: Limits) -> Result<Vec<u8>, String> {
    let k = unescape(k).map_err(|e| format!("'{}': the key is not valid: {e}", shown(arg)))?;
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
    Ok(k)
}

const USAGE_CMDS: &str = "expected R,key  W,key,value  D,key  or  T,ms";

/// Parses one command argument. A value from a file or stdin is read with
/// `read`, which is given the source and the value limit and returns at most
/// one byte more than the limit (so an oversized value is refused without
/// reading it all).
pub fn parse_command(
    arg: &[u8],
    limits: Limits,
    read: &mut ReadValue<'_>,
) -> Result<Command, String> {
    let fields = split_fields(arg);
    let op = fields[0];
    let shown_arg = shown(arg);
    match (op, &fields[1..]) {
        (b"R" | b"r", [k]) => Ok(Command::Read(key(arg, k, limits)?)),
        (b"D" | b"d", [k]) => Ok(Command::Delete(key(arg, k, limits)?)),
        (b"W" | b"w", [k, v]) => {
            let k = key(arg, k, limits)?;
            let (v, from) = match *v {
                b"-" => (read(&ValueFrom::Stdin, limits.max_value_bytes)?, "stdin"),
                [b'@', path @ ..] => {
                    let path = unescape(path)
                        .map_err(|e| format!("'{shown_arg}': the file name is not valid: {e}"))?;
                    if path.is_empty() {
                        return Err(format!(
                            "'{shown_arg}': @ needs a file name (write \\@ for a value starting with @)"
                        ));
                    }
                    use std::os::unix::ffi::OsStringExt;
                    let path = PathBuf::from(std::ffi::OsString::from_vec(path));
                    (read(&ValueFrom::File(path), limits.max_value_bytes)?, "the file")
                }
                v => (
                    unescape(v)
                        .map_err(|e| format!("'{shown_arg}': the value is not valid: {e}"))?,
                    "the value",
                ),
            };
            if v.len() > limits.max_value_bytes {
                return Err(format!(
                    "'{shown_arg}': {from} holds more than {} bytes, the value limit",
                    limits.max_value_bytes
                ));
            }
            Ok(Command::Write(k, v))
        }
        (b"T" | b"t", [ms]) => {
            let ms: u64 = std::str::from_utf8(ms)
                .ok()
                .and_then(|s| s.parse().ok())
                .ok_or_else(|| format!("'{shown_arg}': T takes a whole number of milliseconds"))?;
            if ms > MAX_SLEEP_MS {
                return Err(format!(
                    "'{shown_arg}': sleeps are limited to {MAX_SLEEP_MS} ms"
                ));
            }
            Ok(Command::Sleep(Duration::from_millis(ms)))
        }
        (b"R" | b"r" | b"D" | b"d", [_, _, ..]) => Err(format!(
            "'{shown_arg}': R and D take only a key; write \\, for a comma in a key"
        )),
        (b"W" | b"w", [_, _, _, ..]) => Err(format!(
            "'{shown_arg}': the value holds an unescaped comma; write \\, for a comma in a key or value"
        )),
        (b"W" | b"w", _) => Err(format!("'{shown_arg}': W needs a key and a value")),
        (b"R" | b"r" | b"D" | b"d" | b"T" | b"t", []) => {
            Err(format!("'{shown_arg}' is incomplete: {USAGE_CMDS}"))
        }
        _ => Err(format!("'{shown_arg}' is not a command: {USAGE_CMDS}")),
    }
}

/// Parses every argument; the first bad one is an error and nothing runs.
/// Stdin (`W,key,-`) can be the value of one command only.
pub fn parse_all<'a>(
    args: impl IntoIterator<Item = &'a [u8]>,
    limits: Limits,
    read: &mut ReadValue<'_>,
) -> Result<Vec<Command>, String> {
    let mut stdin_used = false;
    let mut once = |from: &ValueFrom, max: usize| {
        if *from == ValueFrom::Stdin {
            if stdin_used {
                return Err("only one command can take its value from stdin ('-')".to_string());
            }
            stdin_used = true;
        }
        read(from, max)
    };
    let cmds: Vec<Command> = args
        .into_iter()
        .map(|a| parse_command(a, limits, &mut once))
        .collect::<Result<_, _>>()?;
    if cmds.is_empty() {
        return Err(format!("no command given: {USAGE_CMDS}"));
    }
    Ok(cmds)
}

/// Reads a value for [`parse_command`]: at most `max + 1` bytes of the file
/// or of stdin.
pub fn read_value(from: &ValueFrom, max: usize) -> Result<Vec<u8>, String> {
    use std::io::Read;
    let mut v = Vec::new();
    let res = match from {
        ValueFrom::Stdin => std::io::stdin()
            .lock()
            .take(max as u64 + 1)
            .read_to_end(&mut v),
        ValueFrom::File(p) => {
            std::fs::File::open(p).and_then(|f| f.take(max as u64 + 1).read_to_end(&mut v))
        }
    };
    res.map_err(|e| {
        let e = io_text(&e);
        match from {
            ValueFrom::Stdin => format!("cannot read the value from stdin: {e}"),
            ValueFrom::File(p) => format!("cannot read the value from '{}': {e}", p.display()),
        }
    })?;
    Ok(v)
}

/// An IO error's sentence without the "(os error N)" Rust appends.
pub fn io_text(e: &std::io::Error) -> String {
    let t = e.to_string();
    match t.rfind(" (os error ") {
        Some(i) if t.ends_with(')') => t[..i].to_string(),
        _ => t,
    }
}

/// `client_proto`'s command line, options anywhere.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ProtoArgs {
    pub timeout_ms: Option<u64>,
    pub password: Option<Vec<u8>>,
    /// `--tls-ca`, `--tls-cert`, `--tls-key` (or `DKV_TLS_*`).
    pub tls: ClientTlsArgs,
    /// Print values as stored (`--raw`) instead of escaped.
    pub raw: bool,
    pub help: bool,
    pub version: bool,
    /// The first argument that is not an option: the server list.
    pub server: Option<Vec<u8>>,
    pub commands: Vec<Vec<u8>>,
}

/// Parses `client_proto`'s arguments. Options (`--timeout MS`,
/// `--timeout=MS`, `--password PASS`, `--raw`, `--help`, `--version`) may
/// come anywhere; after `--` every argument is the server or a command.
pub fn parse_proto_args(args: Vec<Vec<u8>>) -> Result<ProtoArgs, String> {
    let mut out = ProtoArgs::default();
    let env = |k: &str| std::env::var_os(k).map(PathBuf::from);
    out.tls = ClientTlsArgs {
        tls_ca: env("DKV_TLS_CA"),
        tls_cert: env("DKV_TLS_CERT"),
        tls_key: env("DKV_TLS_KEY"),
    };
    let path = |v: Vec<u8>| -> PathBuf {
        use std::os::unix::ffi::OsStringExt;
        PathBuf::from(std::ffi::OsString::from_vec(v))
    };
    let mut it = args.into_iter();
    let mut positional = false;
    while let Some(a) = it.next() {
        if positional || !a.starts_with(b"-") || a == b"-" {
            if out.server.is_none() {
                out.server = Some(a);
            } else {
                out.commands.push(a);
            }
            continue;
        }
        let text = String::from_utf8_lossy(&a).into_owned();
        let (name, inline) = match text.split_once('=') {
            Some((n, v)) if n.starts_with("--") => (n.to_string(), Some(v.as_bytes().to_vec())),
            _ => (text.clone(), None),
        };
        let mut value = |what: &str| -> Result<Vec<u8>, String> {
            match inline.clone().or_else(|| it.next()) {
                Some(v) if !v.is_empty() => Ok(v),
                _ => Err(format!("{name} takes {what}")),
            }
        };
        match name.as_str() {
            "--" => positional = true,
            "--help" | "-h" => out.help = true,
            "--version" | "-V" => out.version = true,
            "--raw" => out.raw = true,
            "--timeout" => {
                let v = value("a positive number of milliseconds")?;
                match std::str::from_utf8(&v)
                    .ok()
                    .and_then(|v| v.parse::<u64>().ok())
                {
                    Some(ms) if ms > 0 => out.timeout_ms = Some(ms),
                    _ => {
                        return Err(format!(
                            "--timeout takes a positive number of milliseconds, not '{}'",
                            escape(&v)
                        ))
                    }
                }
            }
            "--password" => out.password = Some(value("the client password")?),
            "--tls-ca" => out.tls.tls_ca = Some(path(value("the CA certificate file")?)),
            "--tls-cert" => out.tls.tls_cert = Some(path(value("the client certificate file")?)),
            "--tls-key" => out.tls.tls_key = Some(path(value("the client key file")?)),
            _ => return Err(format!("unknown option '{text}'")),
        }
    }
    Ok(out)
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

    fn no_read(_: &ValueFrom, _: usize) -> Result<Vec<u8>, String> {
        panic!("nothing to read")
    }

    fn parse(arg: &[u8]) -> Result<Command, String> {
        parse_command(arg, L, &mut no_read)
    }

    #[test]
    fn parses_the_four_commands() {
        assert_eq!(parse(b"R,k"), Ok(Command::Read(b"k".to_vec())));
        assert_eq!(
            parse(b"W,k,a\\,b"),
            Ok(Command::Write(b"k".to_vec(), b"a,b".to_vec()))
        );
        assert_eq!(parse(b"W,k,"), Ok(Command::Write(b"k".to_vec(), vec![])));
        assert_eq!(parse(b"D,k"), Ok(Command::Delete(b"k".to_vec())));
        assert_eq!(
            parse(b"T,250"),
            Ok(Command::Sleep(Duration::from_millis(250)))
        );
    }

    #[test]
    fn escapes_in_keys_and_values() {
        assert_eq!(
            parse(br"W,a\,b,x\ny\\z\x00"),
            Ok(Command::Write(b"a,b".to_vec(), b"x\ny\\z\0".to_vec()))
        );
        assert_eq!(
            parse(br"W,k,\@home"),
            Ok(Command::Write(b"k".to_vec(), b"@home".to_vec()))
        );
        assert_eq!(
            parse(br"W,k,\-"),
            Ok(Command::Write(b"k".to_vec(), b"-".to_vec()))
        );
        assert_eq!(parse(br"R,a\,b"), Ok(Command::Read(b"a,b".to_vec())));
        let e = parse(b"W,a,b,c").unwrap_err();
        assert!(e.contains("unescaped comma"), "{e}");
        assert!(parse(br"W,k,C:\temp")
            .unwrap_err()
            .contains("not an escape"));
        assert!(parse(br"W,k,x\").unwrap_err().contains("lone backslash"));
        assert!(parse(br"W,k,\x4").is_err());
    }

    #[test]
    fn escape_is_one_line_and_unescape_reverses_it() {
        let all: Vec<u8> = (0..=255u8).chain("é,\\\n".bytes()).collect();
        let e = escape(&all);
        assert!(!e.contains('\n'));
        assert_eq!(unescape(e.as_bytes()).unwrap(), all);
        assert_eq!(escape(b"a,b c"), "a,b c");
        assert_eq!(escape(b"line\nnext\\"), "line\\nnext\\\\");
        assert_eq!(escape(&[0xff, b'\r']), "\\xff\\x0d");
    }

    #[test]
    fn values_from_files_and_stdin() {
        let mut seen = Vec::new();
        let mut read = |from: &ValueFrom, max: usize| {
            seen.push((from.clone(), max));
            Ok(b"data".to_vec())
        };
        let args: Vec<&[u8]> = vec![b"W,a,@/tmp/x\\,y", b"W,b,-"];
        let cmds = parse_all(args, L, &mut read).unwrap();
        assert_eq!(cmds[0], Command::Write(b"a".to_vec(), b"data".to_vec()));
        assert_eq!(seen[0], (ValueFrom::File("/tmp/x,y".into()), 16));
        assert_eq!(seen[1], (ValueFrom::Stdin, 16));
        let mut read = |_: &ValueFrom, _: usize| Ok(b"-".to_vec());
        let twice: Vec<&[u8]> = vec![b"W,a,-", b"W,b,-"];
        assert!(parse_all(twice, L, &mut read)
            .unwrap_err()
            .contains("stdin"));
        let mut big = |_: &ValueFrom, max: usize| Ok(vec![0; max + 1]);
        let e = parse_command(b"W,a,@f", L, &mut big).unwrap_err();
        assert!(e.contains("more than 16 bytes"), "{e}");
        assert!(parse(b"W,a,@").unwrap_err().contains("file name"));
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
            assert!(parse(bad).is_err(), "{:?}", String::from_utf8_lossy(bad));
        }
    }

    #[test]
    fn one_bad_command_rejects_all() {
        let args: Vec<&[u8]> = vec![b"W,a,1", b"Q,b"];
        assert!(parse_all(args, L, &mut no_read).is_err());
        assert!(parse_all(Vec::<&[u8]>::new(), L, &mut no_read).is_err());
    }

    #[test]
    fn options_go_anywhere() {
        let args = |v: &[&str]| v.iter().map(|a| a.as_bytes().to_vec()).collect();
        let a =
            parse_proto_args(args(&["h:1", "R,k", "--timeout", "200", "--raw", "W,k,-"])).unwrap();
        assert_eq!(a.server.as_deref(), Some(&b"h:1"[..]));
        assert_eq!(a.commands, vec![b"R,k".to_vec(), b"W,k,-".to_vec()]);
        assert_eq!((a.timeout_ms, a.raw), (Some(200), true));
        let a = parse_proto_args(args(&["--timeout=5", "--password", "pw", "h:1"])).unwrap();
        assert_eq!((a.timeout_ms, a.password), (Some(5), Some(b"pw".to_vec())));
        assert!(parse_proto_args(args(&["--version"])).unwrap().version);
        assert!(parse_proto_args(args(&["h:1", "--timeout"])).is_err());
        assert!(parse_proto_args(args(&["h:1", "--timeout", "0"])).is_err());
        let e = parse_proto_args(args(&["h:1", "--nope"])).unwrap_err();
        assert_eq!(e, "unknown option '--nope'");
        let a = parse_proto_args(args(&["--", "h:1", "--raw"])).unwrap();
        assert_eq!((a.raw, a.commands.len()), (false, 1));
    }
}

/// The TLS flags of `dkv-node` and `dkv-server`: each overrides the config
/// key of the same name.
#[derive(Clone, Debug, Default, clap::Args)]
pub struct TlsArgs {
    /// This process's certificate (PEM, with its chain): every TCP port then
    /// speaks TLS only (config tls-cert-file).
    #[arg(long, value_name = "FILE", env = "DKV_TLS_CERT_FILE")]
    pub tls_cert_file: Option<String>,
    /// The certificate's private key, mode 600 (config tls-key-file).
    #[arg(long, value_name = "FILE", env = "DKV_TLS_KEY_FILE")]
    pub tls_key_file: Option<String>,
    /// The cluster's CA: member links must present a certificate it signed
    /// (config tls-ca-file).
    #[arg(long, value_name = "FILE", env = "DKV_TLS_CA_FILE")]
    pub tls_ca_file: Option<String>,
    /// Clients must present a certificate the CA signed, too (config
    /// tls-auth-clients).
    #[arg(long)]
    pub tls_auth_clients: bool,
}

impl TlsArgs {
    pub fn apply(&self, cfg: &mut crate::config::Config) {
        if let Some(f) = &self.tls_cert_file {
            cfg.tls_cert_file = Some(f.clone());
        }
        if let Some(f) = &self.tls_key_file {
            cfg.tls_key_file = Some(f.clone());
        }
        if let Some(f) = &self.tls_ca_file {
            cfg.tls_ca_file = Some(f.clone());
        }
        cfg.tls_auth_clients |= self.tls_auth_clients;
    }
}

/// The TLS flags of the clients (`client_proto`, `dkv-client`), with the
/// environment variables `DKV_TLS_CA`, `DKV_TLS_CERT` and `DKV_TLS_KEY`.
#[derive(Clone, Debug, Default, PartialEq, Eq, clap::Args)]
pub struct ClientTlsArgs {
    /// Speak TLS, trusting the CA certificates in FILE (env DKV_TLS_CA).
    #[arg(long, value_name = "FILE", env = "DKV_TLS_CA")]
    pub tls_ca: Option<PathBuf>,
    /// Present this client certificate (PEM; env DKV_TLS_CERT), for a
    /// cluster with tls-auth-clients.
    #[arg(long, value_name = "FILE", env = "DKV_TLS_CERT")]
    pub tls_cert: Option<PathBuf>,
    /// The client certificate's private key (env DKV_TLS_KEY).
    #[arg(long, value_name = "FILE", env = "DKV_TLS_KEY")]
    pub tls_key: Option<PathBuf>,
}

impl ClientTlsArgs {
    /// The TLS setting these flags ask for (None: clear text).
    pub fn load(&self) -> Result<Option<crate::tls::ClientTls>, String> {
        let pair = match (&self.tls_cert, &self.tls_key) {
            (Some(c), Some(k)) => Some((c.as_path(), k.as_path())),
            (None, None) => None,
            _ => return Err("--tls-cert and --tls-key go together".into()),
        };
        match &self.tls_ca {
            Some(ca) => crate::tls::ClientTls::from_files(ca, pair).map(Some),
            None if pair.is_some() => Err(
                "--tls-cert needs --tls-ca (the CA that signed the cluster's certificates)".into(),
            ),
            None => Ok(None),
        }
    }
}
