//! `client_proto SERVER[,SERVER...] CMD...` — R,key  W,key,value  D,key  T,ms
//!
//! Every command prints one line on stdout: a read prints the value (escaped
//! unless `--raw`, see `dkv::cli`), W and D and T print `OK`. A missing key
//! prints an empty line and a sentence on stderr. Exit codes: see
//! `dkv::cli::exit` and the README.

use dkv::cli::{self, exit, Command, Limits};
use dkv::{Client, ClientOptions, Error};
use std::io::Write;
use std::process::ExitCode;
use std::time::Duration;

const USAGE: &str = r"usage: client_proto [OPTIONS] SERVER_HOST:PORT[,HOST:PORT...] CMD...
commands:  R,key   read       W,key,value   write      D,key   delete      T,ms   sleep
values:    W,key,@PATH writes the file's contents, W,key,- all of stdin (one command only)
escapes:   in keys and values \, is a comma, \n a newline, \\ a backslash, \xHH any byte,
           \@ and \- a literal @ or - (W,key,\@home stores '@home'); an unescaped comma
           in a value is an error
output:    one line per command: a read prints the value escaped the same way (commas
           as they are), so a newline in a value prints as \n; --raw prints it as stored
servers:   one server, or a comma-separated list: each call moves to the next when one fails
options (anywhere on the line):
  --timeout MS      how long each command may take in all, connecting included (default 5000)
  --password PASS   the cluster's client password; better: the DKV_PASSWORD environment
                    variable (ps shows command lines)
  --raw             print values as stored (a value holding a newline spans lines)
  --version, --help
exit codes: 0 ok, 1 a key was not found, 2 usage error (nothing ran), 3 the cluster was
           unavailable or refused (later commands did not run), 4 a write's outcome is unknown
example:   client_proto 127.0.0.1:12345 W,colour,blue R,colour D,colour";

fn main() -> ExitCode {
    dkv::cli::restore_sigpipe();
    dkv::init_logging_quiet();
    let args = match cli::parse_proto_args(std::env::args_os().skip(1).map(into_bytes).collect()) {
        Ok(a) => a,
        Err(e) => return usage(&e),
    };
    if args.help {
        println!("{USAGE}");
        return ExitCode::SUCCESS;
    }
    if args.version {
        println!("client_proto {}", env!("CARGO_PKG_VERSION"));
        return ExitCode::SUCCESS;
    }
    let timeout = Duration::from_millis(args.timeout_ms.unwrap_or(5000));
    let password = args
        .password
        .clone()
        .or_else(|| dkv::auth::client_password(None));
    let Some(server) = args.server else {
        return usage("no server address given");
    };
    let servers = match String::from_utf8(server) {
        Ok(s) => match dkv::ServerList::parse(&s) {
            Ok(l) => l,
            Err(e) => return usage(&e.to_string()),
        },
        Err(_) => return usage("the server address is not valid UTF-8"),
    };
    let opts = ClientOptions {
        op_timeout: timeout,
        io_timeout: timeout,
        password,
        ..ClientOptions::default()
    };
    let limits = Limits {
        max_key_bytes: opts.max_key_bytes,
        max_value_bytes: opts.max_value_bytes,
    };
    let cmds = match cli::parse_all(
        args.commands.iter().map(|a| a.as_slice()),
        limits,
        &mut cli::read_value,
    ) {
        Ok(c) => c,
        Err(e) => return usage(&e),
    };
    let mut client = match Client::with_servers(std::sync::Arc::new(servers), opts) {
        Ok(c) => c,
        Err(e) => return fail(&e),
    };
    let mut code = exit::OK;
    let stdout = std::io::stdout();
    let value_line = |v: &[u8]| -> Vec<u8> {
        let mut line = if args.raw {
            v.to_vec()
        } else {
            cli::escape(v).into_bytes()
        };
        line.push(b'\n');
        line
    };
    for cmd in cmds {
        let mut out = stdout.lock();
        let res = match &cmd {
            Command::Read(k) => client.get(k).map(|v| match v {
                Some(v) => {
                    let _ = out.write_all(&value_line(&v));
                }
                None => {
                    let _ = out.write_all(b"\n");
                    eprintln!("client_proto: key '{}' not found", cli::escape(k));
                    code = exit::NOT_FOUND;
                }
            }),
            Command::Write(k, v) => client.put(k, v).map(|()| {
                let _ = out.write_all(b"OK\n");
            }),
            Command::Delete(k) => client.delete(k).map(|existed| {
                if existed {
                    let _ = out.write_all(b"OK\n");
                } else {
                    let _ = out.write_all(b"\n");
                    eprintln!("client_proto: key '{}' not found", cli::escape(k));
                    code = exit::NOT_FOUND;
                }
            }),
            Command::Sleep(d) => {
                std::thread::sleep(*d);
                let _ = out.write_all(b"OK\n");
                Ok(())
            }
        };
        let _ = out.flush();
        if let Err(e) = res {
            return fail(&e);
        }
    }
    ExitCode::from(code)
}

fn into_bytes(s: std::ffi::OsString) -> Vec<u8> {
    use std::os::unix::ffi::OsStringExt;
    s.into_vec()
}

fn usage(msg: &str) -> ExitCode {
    eprintln!("client_proto: {msg} (client_proto --help shows the usage)");
    ExitCode::from(exit::USAGE)
}

fn fail(e: &Error) -> ExitCode {
    eprintln!("client_proto: {e}");
    ExitCode::from(match e {
        Error::Indeterminate(_) => exit::UNKNOWN,
        Error::KeyTooLarge { .. } | Error::ValueTooLarge { .. } | Error::EmptyKey => exit::USAGE,
        _ => exit::FAILED,
    })
}
