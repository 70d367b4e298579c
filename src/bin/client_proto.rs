//! `client_proto SERVER[,SERVER...] CMD...` — R,key  W,key,value  D,key  T,ms
//!
//! Every command prints one line on stdout: a read prints the value itself,
//! W and D and T print `OK`. A missing key prints an empty line and a sentence
//! on stderr. Exit codes: see `dkv::cli::exit` and the README.

use dkv::cli::{self, exit, Command, Limits};
use dkv::{Client, ClientOptions, Error};
use std::io::Write;
use std::process::ExitCode;
use std::time::Duration;

const USAGE: &str =
    "usage: client_proto [--timeout MS] [--password PASS] SERVER_HOST:PORT[,HOST:PORT...] CMD...
servers:   one server, or a comma-separated list: each call moves to the next when one fails
commands:  R,key   read       W,key,value   write      D,key   delete      T,ms   sleep
example:   client_proto 127.0.0.1:12345 W,colour,blue R,colour D,colour
password:  --password, or the DKV_PASSWORD environment variable (not shown by ps)";

fn main() -> ExitCode {
    dkv::cli::restore_sigpipe();
    dkv::init_logging_quiet();
    let mut args: Vec<Vec<u8>> = std::env::args_os().skip(1).map(into_bytes).collect();
    let mut timeout = Duration::from_secs(5);
    if args.first().is_some_and(|a| a == b"--help" || a == b"-h") {
        println!("{USAGE}");
        return ExitCode::SUCCESS;
    }
    let mut password = None;
    loop {
        if args.first().is_some_and(|a| a == b"--timeout") {
            let ms = args
                .get(1)
                .and_then(|v| std::str::from_utf8(v).ok())
                .and_then(|v| v.parse::<u64>().ok());
            match ms {
                Some(ms) if ms > 0 => timeout = Duration::from_millis(ms),
                _ => return usage("--timeout takes a positive number of milliseconds"),
            }
            args.drain(..2);
        } else if args.first().is_some_and(|a| a == b"--password") {
            match args.get(1) {
                Some(p) if !p.is_empty() => password = Some(p.clone()),
                _ => return usage("--password takes the client password"),
            }
            args.drain(..2);
        } else {
            break;
        }
    }
    let password = password.or_else(|| dkv::auth::client_password(None));
    if args.is_empty() {
        return usage("no server address given");
    }
    let servers = match String::from_utf8(args.remove(0)) {
        Ok(s) if s.contains(':') => match dkv::ServerList::parse(&s) {
            Ok(l) => l,
            Err(e) => return usage(&e.to_string()),
        },
        _ => {
            return usage(
                "the first argument must be the server's HOST:PORT (or a comma-separated list)",
            )
        }
    };
    let opts = ClientOptions {
        op_timeout: timeout,
        password,
        ..ClientOptions::default()
    };
    let limits = Limits {
        max_key_bytes: opts.max_key_bytes,
        max_value_bytes: opts.max_value_bytes,
    };
    let cmds = match cli::parse_all(args.iter().map(|a| a.as_slice()), limits) {
        Ok(c) => c,
        Err(e) => return usage(&e),
    };
    let mut client = match Client::with_servers(std::sync::Arc::new(servers), opts) {
        Ok(c) => c,
        Err(e) => return fail(&e),
    };
    let mut code = exit::OK;
    let stdout = std::io::stdout();
    for cmd in cmds {
        let mut out = stdout.lock();
        let res = match &cmd {
            Command::Read(k) => client.get(k).map(|v| match v {
                Some(v) => {
                    let _ = out.write_all(&v);
                    let _ = out.write_all(b"\n");
                }
                None => {
                    let _ = out.write_all(b"\n");
                    eprintln!(
                        "client_proto: key '{}' not found",
                        String::from_utf8_lossy(k)
                    );
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
                    eprintln!(
                        "client_proto: key '{}' not found",
                        String::from_utf8_lossy(k)
                    );
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
    eprintln!("client_proto: {msg}\n{USAGE}");
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
