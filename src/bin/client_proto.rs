//! `client_proto SERVER[,SERVER...] CMD...` — R,key  W,key,value  D,key  T,ms
//!
//! Every command prints one line on stdout: a read prints the value (escaped
//! unless `--raw`, see `dkv::cli`), W and D and T print `OK`. A missing key
//! prints an empty line and a sentence on stderr. Exit codes: see
//! `dkv::cli::exit` and the README.
//!
//! Consecutive R, W and D commands are sent as one pipeline
//! ([`Client::pipeline_before`]), at most `MAX_PIPELINE_OPS` per call, and
//! `--timeout` bounds each call; a `T` command ends the batch before it.
//! Output is what running the commands one by one prints: lines up to the
//! first failure, then that failure's sentence and exit code. What differs
//! is that the commands after the failed one in its batch were already sent:
//! stderr lists which of them were applied, not applied, or of unknown
//! outcome (then the exit code is 4, as for any write of unknown outcome).

use dkv::cli::{self, exit, Command, Limits};
use dkv::{Client, ClientOptions, Error, Op, OpResult};
use std::io::Write;
use std::process::ExitCode;
use std::time::{Duration, Instant};

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
  --timeout MS      how long each command, or each batch, may take in all, connecting
                    included (default 5000)
  --password PASS   the cluster's client password; better: the DKV_PASSWORD environment
                    variable (ps shows command lines)
  --tls-ca FILE     speak TLS, trusting the CA certificates in FILE (env DKV_TLS_CA)
  --tls-cert FILE   with --tls-key: present this client certificate (env DKV_TLS_CERT,
  --tls-key FILE    DKV_TLS_KEY), for a cluster with tls-auth-clients
  --raw             print values as stored (a value holding a newline spans lines)
  --version, --help
batches:   consecutive R, W and D commands are sent pipelined, up to 1024 at a time (a T
           command ends a batch); answers print in command order
exit codes: 0 ok, 1 a key was not found, 2 usage error (nothing ran), 3 the cluster was
           unavailable or refused (later commands did not run, but those already sent in
           the same batch are listed on stderr), 4 a write's outcome is unknown
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
    let tls = match args.tls.load() {
        Ok(t) => t,
        Err(e) => return usage(&e),
    };
    let opts = ClientOptions {
        op_timeout: timeout,
        io_timeout: timeout,
        password,
        tls,
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
    // Consecutive R, W and D commands go to the coordinator pipelined, at
    // most MAX_PIPELINE_OPS per call, each call getting --timeout; a T
    // command ends the batch before it.
    let mut i = 0;
    while i < cmds.len() {
        if let Command::Sleep(d) = &cmds[i] {
            std::thread::sleep(*d);
            let mut out = stdout.lock();
            let _ = out.write_all(b"OK\n");
            let _ = out.flush();
            i += 1;
            continue;
        }
        let end = (i..cmds.len())
            .take(dkv::client::MAX_PIPELINE_OPS)
            .find(|&j| matches!(cmds[j], Command::Sleep(_)))
            .unwrap_or(cmds.len().min(i + dkv::client::MAX_PIPELINE_OPS));
        let batch = &cmds[i..end];
        let ops: Vec<Op> = batch.iter().map(op).collect();
        let results = match client.pipeline_before(&ops, Instant::now() + timeout) {
            Ok(r) => r,
            Err(e) => return fail(&e),
        };
        let mut out = stdout.lock();
        for (k, (cmd, res)) in batch.iter().zip(&results).enumerate() {
            match (cmd, res) {
                (Command::Read(_), Ok(OpResult::Value(Some(v)))) => {
                    let _ = out.write_all(&value_line(v));
                }
                (
                    Command::Read(key) | Command::Delete(key),
                    Ok(OpResult::Value(None) | OpResult::Deleted(false)),
                ) => {
                    let _ = out.write_all(b"\n");
                    let _ = out.flush();
                    eprintln!("client_proto: key '{}' not found", cli::escape(key));
                    code = exit::NOT_FOUND;
                }
                (_, Ok(_)) => {
                    let _ = out.write_all(b"OK\n");
                }
                (_, Err(e)) => {
                    let _ = out.flush();
                    let mut failed = fail(e);
                    if after_failure(i + k, &batch[k + 1..], &results[k + 1..]) {
                        failed = ExitCode::from(exit::UNKNOWN);
                    }
                    return failed;
                }
            }
        }
        let _ = out.flush();
        i = end;
    }
    ExitCode::from(code)
}

fn op(cmd: &Command) -> Op {
    match cmd {
        Command::Read(k) => Op::Get(k.clone()),
        Command::Write(k, v) => Op::Put(k.clone(), v.clone()),
        Command::Delete(k) => Op::Delete(k.clone()),
        Command::Sleep(_) => unreachable!("a T command is not pipelined"),
    }
}

/// Says on stderr what became of the commands sent in the same batch after
/// the one that failed (command `failed`, counted from 0): they may have been
/// applied, so they are not passed over in silence. True when a write's
/// outcome is unknown (the exit code is then 4).
fn after_failure(failed: usize, later: &[Command], results: &[dkv::Result<OpResult>]) -> bool {
    let mut applied = Vec::new();
    let mut not_applied = Vec::new();
    let mut unknown = Vec::new();
    let mut reads = Vec::new();
    for (j, (cmd, res)) in later.iter().zip(results).enumerate() {
        let n = failed + j + 2;
        match (cmd, res) {
            (Command::Read(_), _) => reads.push(n),
            (_, Ok(_)) => applied.push(n),
            (_, Err(Error::Indeterminate(_))) => unknown.push(n),
            (_, Err(_)) => not_applied.push(n),
        }
    }
    if later.is_empty() {
        return false;
    }
    eprintln!(
        "client_proto: commands {} to {} had been sent in one batch with command {}, which \
         failed; no later command ran:",
        failed + 2,
        failed + 1 + later.len(),
        failed + 1,
    );
    for (what, list) in [
        ("writes and deletes applied", &applied),
        ("writes and deletes not applied", &not_applied),
        ("writes and deletes of unknown outcome", &unknown),
        ("reads not printed", &reads),
    ] {
        if !list.is_empty() {
            eprintln!("client_proto:   {what}: {}", ranges(list));
        }
    }
    !unknown.is_empty()
}

/// "3-5, 8" for [3, 4, 5, 8] (command numbers, ascending).
fn ranges(ns: &[usize]) -> String {
    let mut parts: Vec<String> = Vec::new();
    let mut k = 0;
    while k < ns.len() {
        let mut e = k;
        while e + 1 < ns.len() && ns[e + 1] == ns[e] + 1 {
            e += 1;
        }
        parts.push(if e == k {
            ns[k].to_string()
        } else {
            format!("{}-{}", ns[k], ns[e])
        });
        k = e + 1;
    }
    parts.join(", ")
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
