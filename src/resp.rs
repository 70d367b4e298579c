//! RESP, the Redis serialization protocol: a bounded, incremental command
//! parser and a reply encoder for RESP2 and RESP3, without IO.
//!
//! Every connection starts in RESP2; `HELLO 3` switches it to RESP3
//! ([`Handler::proto`]). A [`Reply`] is built once and encoded for the
//! connection's version: the RESP3-only types (maps, sets, doubles, booleans,
//! verbatim strings, pushes, the null) fall back to what Redis sends a RESP2
//! client ([`Reply::encode`]).
//!
//! A connection appends what it reads to a buffer and calls
//! [`parse_command`] until it returns `Ok(None)` (need more bytes), so many
//! pipelined commands in one read are handled in order. Every length is
//! bounded by [`Limits`]; anything malformed is a [`RespError`] whose text is
//! sent back as `-ERR Protocol error: ...` before the connection is closed
//! (a lingering close: see [`crate::net::close_after_reply`]).

/// What a RESP port does with its commands.
pub trait Handler {
    /// A write that was started and waits for its commit.
    type Pending: Pending;
    /// Answers one command, or starts it; the flag closes the connection
    /// after the reply.
    fn handle(&mut self, args: &[Vec<u8>]) -> (Answer<Self::Pending>, bool);
    /// Whether `args` may be handled while earlier writes of the same
    /// connection still wait for their commit: it neither reads nor depends
    /// on what they change (a plain SET or single-key DEL). Anything else
    /// waits for them first, so a read sees the connection's own writes.
    fn pipelines(&self, _args: &[Vec<u8>]) -> bool {
        false
    }
    /// The protocol version replies are encoded in (2 or 3), asked after
    /// every command, so `HELLO 3` is itself answered in RESP3.
    fn proto(&self) -> u8 {
        2
    }
    /// Writes reply bytes to the client. A handler whose connection also
    /// receives messages from another thread (a Sentinel subscriber) writes
    /// under the lock that thread takes, so the two never interleave.
    fn write_out(&mut self, stream: &crate::net::Stream, bytes: &[u8]) -> std::io::Result<()> {
        use std::io::Write;
        (&*stream).write_all(bytes)
    }
    /// How long the connection may stay silent, when it is not the
    /// `deadlines.idle` given to [`serve`] (a subscriber waits for messages
    /// as long as it likes, as in Redis).
    fn idle(&self) -> Option<std::time::Duration> {
        None
    }
}

/// A command's answer: known now, or once its write commits.
pub enum Answer<P> {
    Now(Reply),
    Later(P),
}

/// A started write: `wait` blocks until it commits (or its deadline) and
/// gives the reply.
pub trait Pending {
    fn wait(self) -> Reply;
}

impl Pending for std::convert::Infallible {
    fn wait(self) -> Reply {
        match self {}
    }
}

/// A handler whose every answer is known at once (the Sentinel port).
pub struct Immediate<F>(pub F);

impl<F: FnMut(&[Vec<u8>]) -> (Reply, bool)> Handler for Immediate<F> {
    type Pending = std::convert::Infallible;
    fn handle(&mut self, args: &[Vec<u8>]) -> (Answer<Self::Pending>, bool) {
        let (reply, close) = (self.0)(args);
        (Answer::Now(reply), close)
    }
}

/// Most writes one connection has in flight before it waits for them.
pub const MAX_PIPELINED: usize = 1024;

/// Replies of one connection, in command order, some still waiting for
/// their write's commit; each with the protocol version it is encoded in
/// (the connection's when its command was handled).
struct Replies<P> {
    queue: std::collections::VecDeque<(Answer<P>, u8)>,
    waiting: usize,
}

impl<P: Pending> Replies<P> {
    fn push(&mut self, a: Answer<P>, proto: u8, out: &mut Vec<u8>) {
        match a {
            Answer::Now(r) if self.queue.is_empty() => r.encode(out, proto),
            Answer::Now(r) => self.queue.push_back((Answer::Now(r), proto)),
            Answer::Later(p) => {
                self.waiting += 1;
                self.queue.push_back((Answer::Later(p), proto));
            }
        }
    }

    /// Waits for every started write, in order, and encodes all replies.
    fn flush(&mut self, out: &mut Vec<u8>) {
        for (a, proto) in self.queue.drain(..) {
            match a {
                Answer::Now(r) => r.encode(out, proto),
                Answer::Later(p) => p.wait().encode(out, proto),
            }
        }
        self.waiting = 0;
    }
}

/// Serves one RESP connection: reads, hands every complete command to
/// `handler`, and writes all the replies of one read at once, so pipelined
/// clients get them batched. Writes the handler starts ([`Answer::Later`])
/// are all appended before the first is waited for, so a pipeline of writes
/// shares replication batches and fsyncs; replies keep command order.
/// `limits()` is asked before each command, so a connection can be held to
/// tighter limits until it authenticated.
/// Returns at end of stream, on an IO error, when asked to close, when
/// `stop()` says so, or after answering a protocol error (returned).
/// A connection silent for `deadlines.idle`, or whose command is not complete
/// `deadlines.request` after its first byte, is closed.
pub fn serve<H: Handler>(
    stream: &crate::net::Stream,
    limits: impl Fn() -> Limits,
    deadlines: crate::net::Deadlines,
    handler: &mut H,
    stop: impl Fn() -> bool,
) -> Result<(), RespError> {
    use std::io::Read;
    let mut reader = crate::net::TimedStream::new(stream, deadlines);
    let mut buf: Vec<u8> = Vec::with_capacity(16 * 1024);
    let mut chunk = vec![0u8; 64 * 1024];
    let mut out = Vec::with_capacity(16 * 1024);
    let mut replies = Replies::<H::Pending> {
        queue: Default::default(),
        waiting: 0,
    };
    let mut idle = None;
    loop {
        if handler.idle() != idle {
            idle = handler.idle();
            reader.set_idle(idle.unwrap_or(deadlines.idle));
        }
        let n = match reader.read(&mut chunk) {
            Ok(0) => return Ok(()),
            Err(e) => {
                if e.kind() == std::io::ErrorKind::TimedOut {
                    log::debug!("RESP client: {e}");
                    if reader.in_request() {
                        let mut msg = Vec::new();
                        Reply::err(format!("ERR {e}")).encode(&mut msg, handler.proto());
                        let _ = handler.write_out(stream, &msg);
                    }
                }
                return Ok(());
            }
            Ok(n) => n,
        };
        buf.extend_from_slice(&chunk[..n]);
        let mut used = 0;
        let mut close = false;
        while !close {
            match parse_command(&buf[used..], limits()) {
                Ok(Some((args, len))) => {
                    used += len;
                    if !args.is_empty() {
                        if replies.waiting > 0
                            && (replies.waiting >= MAX_PIPELINED || !handler.pipelines(&args))
                        {
                            replies.flush(&mut out);
                        }
                        let (answer, c) = handler.handle(&args);
                        replies.push(answer, handler.proto(), &mut out);
                        close = c;
                        // Bounded output: a pipeline of large GETs is
                        // answered as it goes, not buffered whole.
                        if out.len() >= MAX_PENDING_OUTPUT {
                            if handler.write_out(stream, &out).is_err() {
                                return Ok(());
                            }
                            out.clear();
                        }
                    }
                }
                Ok(None) => break,
                Err(e) => {
                    replies.flush(&mut out);
                    Reply::err(format!("ERR Protocol error: {}", e.0))
                        .encode(&mut out, handler.proto());
                    if handler.write_out(stream, &out).is_ok() {
                        crate::net::close_after_reply(stream, crate::net::LINGER);
                    }
                    return Err(e);
                }
            }
        }
        // Every command that arrived is in: now wait for its writes.
        replies.flush(&mut out);
        buf.drain(..used);
        if used > 0 {
            // A command completed: the read-timeout restarts for whatever
            // follows (a pipelining client rarely stops on a boundary).
            reader.request_done();
            if !buf.is_empty() {
                reader.start_request();
            }
        }
        if !out.is_empty() {
            if handler.write_out(stream, &out).is_err() {
                return Ok(());
            }
            out.clear();
        }
        if close {
            crate::net::close_after_reply(stream, crate::net::LINGER);
            return Ok(());
        }
        if stop() {
            return Ok(());
        }
    }
}

/// Reply bytes buffered before they are written out mid-pipeline.
const MAX_PENDING_OUTPUT: usize = 1 << 20;

/// A reply, in the types of RESP3; [`Reply::encode`] writes it in the
/// connection's protocol version.
#[derive(Clone, Debug)]
pub enum Reply {
    Simple(String),
    Error(String),
    Int(i64),
    Bulk(Vec<u8>),
    /// A missing value: `$-1` in RESP2, `_` in RESP3.
    Nil,
    Array(Vec<Reply>),
    /// A missing array (EXEC after a WATCHed key changed): `*-1` in RESP2,
    /// `_` in RESP3.
    NilArray,
    /// `%` in RESP3; a flat array of keys and values in RESP2.
    Map(Vec<(Reply, Reply)>),
    /// `~` in RESP3; an array in RESP2.
    Set(Vec<Reply>),
    /// `,` in RESP3; a bulk string in RESP2, formatted as Redis does
    /// ([`format_double`]).
    Double(f64),
    /// `#t` / `#f` in RESP3; the integer 1 / 0 in RESP2.
    Bool(bool),
    /// Text shown as is (INFO, CLIENT LIST in Redis 7): `=<len>\r\ntxt:...`
    /// in RESP3, a bulk string in RESP2.
    Verbatim(String),
    /// Out-of-band data (pub/sub messages): `>` in RESP3, an array in RESP2.
    Push(Vec<Reply>),
    /// Several replies in a row, for a command Redis answers with more than
    /// one (`SUBSCRIBE a b` confirms each channel); not a RESP type.
    Many(Vec<Reply>),
}

/// Equality as data: doubles compare by their bits, so `Reply` is `Eq`
/// (a NaN equals itself, `0.0` differs from `-0.0`).
impl PartialEq for Reply {
    fn eq(&self, other: &Reply) -> bool {
        use Reply::*;
        match (self, other) {
            (Simple(a), Simple(b)) | (Error(a), Error(b)) | (Verbatim(a), Verbatim(b)) => a == b,
            (Int(a), Int(b)) => a == b,
            (Bulk(a), Bulk(b)) => a == b,
            (Nil, Nil) | (NilArray, NilArray) => true,
            (Array(a), Array(b)) | (Set(a), Set(b)) | (Push(a), Push(b)) | (Many(a), Many(b)) => {
                a == b
            }
            (Map(a), Map(b)) => a == b,
            (Double(a), Double(b)) => a.to_bits() == b.to_bits(),
            (Bool(a), Bool(b)) => a == b,
            _ => false,
        }
    }
}

impl Eq for Reply {}

/// RESP2, the protocol every connection starts in.
pub const RESP2: u8 = 2;
/// RESP3, after `HELLO 3`.
pub const RESP3: u8 = 3;

impl Reply {
    pub fn ok() -> Reply {
        Reply::Simple("OK".into())
    }

    pub fn err(msg: impl Into<String>) -> Reply {
        Reply::Error(msg.into())
    }

    /// A bulk string of text.
    pub fn text(s: impl Into<String>) -> Reply {
        Reply::Bulk(s.into().into_bytes())
    }

    /// A map of text keys to replies.
    pub fn map<K: Into<String>>(pairs: impl IntoIterator<Item = (K, Reply)>) -> Reply {
        Reply::Map(
            pairs
                .into_iter()
                .map(|(k, v)| (Reply::text(k), v))
                .collect(),
        )
    }

    /// The encoding of this reply in protocol version `proto`.
    pub fn to_bytes(&self, proto: u8) -> Vec<u8> {
        let mut out = Vec::new();
        self.encode(&mut out, proto);
        out
    }

    /// Appends the encoding of this reply in protocol version `proto`
    /// ([`RESP2`] or [`RESP3`]; anything but 3 is RESP2) to `out`.
    pub fn encode(&self, out: &mut Vec<u8>, proto: u8) {
        let resp3 = proto == RESP3;
        let len = |out: &mut Vec<u8>, tag: u8, n: usize| line(out, tag, n.to_string().as_bytes());
        match self {
            Reply::Simple(s) => line(out, b'+', s.as_bytes()),
            Reply::Error(s) => line(out, b'-', s.as_bytes()),
            Reply::Int(i) => line(out, b':', i.to_string().as_bytes()),
            Reply::Bulk(b) => bulk(out, b),
            Reply::Nil | Reply::NilArray if resp3 => out.extend_from_slice(b"_\r\n"),
            Reply::Nil => out.extend_from_slice(b"$-1\r\n"),
            Reply::NilArray => out.extend_from_slice(b"*-1\r\n"),
            Reply::Array(items) => {
                len(out, b'*', items.len());
                for i in items {
                    i.encode(out, proto);
                }
            }
            Reply::Set(items) | Reply::Push(items) => {
                let tag = match (resp3, self) {
                    (false, _) => b'*',
                    (true, Reply::Set(_)) => b'~',
                    (true, _) => b'>',
                };
                len(out, tag, items.len());
                for i in items {
                    i.encode(out, proto);
                }
            }
            Reply::Map(pairs) => {
                if resp3 {
                    len(out, b'%', pairs.len());
                } else {
                    len(out, b'*', 2 * pairs.len());
                }
                for (k, v) in pairs {
                    k.encode(out, proto);
                    v.encode(out, proto);
                }
            }
            Reply::Double(d) if resp3 => line(out, b',', format_double(*d).as_bytes()),
            Reply::Double(d) => bulk(out, format_double(*d).as_bytes()),
            Reply::Bool(b) if resp3 => {
                out.extend_from_slice(if *b { b"#t\r\n" } else { b"#f\r\n" })
            }
            Reply::Bool(b) => line(out, b':', if *b { b"1" } else { b"0" }),
            Reply::Verbatim(s) if resp3 => {
                len(out, b'=', s.len() + 4);
                out.extend_from_slice(b"txt:");
                out.extend_from_slice(s.as_bytes());
                out.extend_from_slice(b"\r\n");
            }
            Reply::Verbatim(s) => bulk(out, s.as_bytes()),
            Reply::Many(replies) => {
                for r in replies {
                    r.encode(out, proto);
                }
            }
        }
    }
}

fn bulk(out: &mut Vec<u8>, b: &[u8]) {
    line(out, b'$', b.len().to_string().as_bytes());
    out.extend_from_slice(b);
    out.extend_from_slice(b"\r\n");
}

/// A double as Redis writes it (`%.17g` with the shortest digits that read
/// back as the same value): `1.5`, `3`, `-0`, `1e+21`, `1.5e-07`, `inf`,
/// `-inf`, `nan`.
pub fn format_double(d: f64) -> String {
    if d.is_nan() {
        return "nan".into();
    }
    if d.is_infinite() {
        return if d > 0.0 { "inf" } else { "-inf" }.into();
    }
    if d == 0.0 {
        return if d.is_sign_negative() { "-0" } else { "0" }.into();
    }
    // Shortest round-trip digits, then %g's choice of notation.
    let sci = format!("{d:e}");
    let (mantissa, exp) = sci.split_once('e').expect("{:e} has an exponent");
    let exp: i32 = exp.parse().expect("{:e}'s exponent is an integer");
    if (-4..17).contains(&exp) {
        format!("{d}")
    } else {
        let sign = if exp < 0 { '-' } else { '+' };
        format!("{mantissa}e{sign}{:02}", exp.abs())
    }
}

fn line(out: &mut Vec<u8>, tag: u8, body: &[u8]) {
    out.push(tag);
    // Simple strings and errors must not carry CR or LF.
    out.extend(
        body.iter()
            .map(|&b| if b == b'\r' || b == b'\n' { b' ' } else { b }),
    );
    out.extend_from_slice(b"\r\n");
}

/// The password in `AUTH [username] password` or in
/// `HELLO protover AUTH username password`; `Err` holds the reply for a
/// malformed command, `Ok(None)` means HELLO without AUTH. Only the user
/// "default" exists.
pub fn auth_password(args: &[Vec<u8>]) -> Result<Option<&[u8]>, Reply> {
    let wrongpass = || Reply::err("WRONGPASS invalid username-password pair or user is disabled.");
    let user_ok = |user: &[u8]| {
        if user.eq_ignore_ascii_case(b"default") {
            Ok(())
        } else {
            Err(wrongpass())
        }
    };
    let is = |a: &[u8], b: &[u8]| a.eq_ignore_ascii_case(b);
    if is(&args[0], b"AUTH") {
        return match args.len() {
            2 => Ok(Some(&args[1])),
            3 => user_ok(&args[1]).map(|()| Some(args[2].as_slice())),
            _ => Err(Reply::err(
                "ERR wrong number of arguments for 'auth' command",
            )),
        };
    }
    // HELLO [protover [AUTH username password] [SETNAME clientname]]
    let mut i = 2;
    while i < args.len() {
        if is(&args[i], b"AUTH") {
            if i + 2 >= args.len() {
                return Err(Reply::err("ERR Syntax error in HELLO option 'auth'"));
            }
            return user_ok(&args[i + 1]).map(|()| Some(args[i + 2].as_slice()));
        }
        i += if is(&args[i], b"SETNAME") { 2 } else { 1 };
    }
    Ok(None)
}

/// The client password of one RESP connection: `AUTH`, `HELLO ... AUTH`, and
/// `-NOAUTH` for anything else until the client authenticated. Shared by the
/// node's RESP port and the server's Sentinel port; the password check itself
/// (counting, sampled logging, the limit of wrong tries) is the
/// [`crate::auth::Gate`] every front-end uses.
pub struct AuthGate {
    gate: crate::auth::Gate,
    /// The password the client authenticated with.
    pub password: Option<Vec<u8>>,
}

/// Limits for a connection that has not authenticated yet: enough for
/// `AUTH default <password>` or `HELLO 2 AUTH ...`, so strangers cannot make
/// a node buffer large commands.
pub const UNAUTHENTICATED: Limits = Limits {
    max_bulk: 4096,
    max_args: 8,
    max_inline: 8 * 1024,
    max_command: 16 * 1024,
};

/// What the gate decided about one command.
pub enum Gated {
    /// Run the command.
    Run,
    /// Answer with this reply instead (AUTH's answer, or a refusal); `close`
    /// after it when the client tried too many wrong passwords.
    Answer { reply: Reply, close: bool },
}

impl AuthGate {
    pub fn new(expected: Option<crate::auth::Password>) -> AuthGate {
        AuthGate {
            gate: crate::auth::Gate::new(expected),
            password: None,
        }
    }

    pub fn is_authenticated(&self) -> bool {
        self.gate.is_authenticated()
    }

    /// One command. A wrong password is counted in `counters` and logged as
    /// `what()` (sampled).
    pub fn check(
        &mut self,
        args: &[Vec<u8>],
        counters: &crate::auth::AuthCounters,
        what: impl FnOnce() -> String,
    ) -> Gated {
        use crate::auth::Verdict;
        let answer = |reply| Gated::Answer {
            reply,
            close: false,
        };
        let cmd = &args[0];
        let is_auth = cmd.eq_ignore_ascii_case(b"AUTH");
        let is_hello = cmd.eq_ignore_ascii_case(b"HELLO");
        if is_hello {
            if let Err(reply) = parse_hello(args) {
                return answer(reply);
            }
        }
        if is_auth || is_hello {
            match auth_password(args) {
                Err(reply) => return answer(reply),
                Ok(None) => {}
                Ok(Some(p)) => match self.gate.admit(p, counters, what) {
                    Verdict::NoPasswordSet => {
                        return answer(Reply::err(
                            "ERR AUTH <password> called without any password configured for \
                             the default user. Are you sure your configuration is correct?",
                        ))
                    }
                    Verdict::Refused => {
                        return Gated::Answer {
                            reply: Reply::err(
                                "WRONGPASS invalid username-password pair or user is disabled.",
                            ),
                            close: self.gate.exhausted(),
                        }
                    }
                    Verdict::Admitted => {
                        self.password = Some(p.to_vec());
                        if is_auth {
                            return answer(Reply::ok());
                        }
                    }
                },
            }
        }
        if self.gate.is_authenticated() || cmd.eq_ignore_ascii_case(b"QUIT") {
            return Gated::Run;
        }
        answer(Reply::err(if is_hello {
            "NOAUTH HELLO must be called with the client already authenticated, otherwise the \
             HELLO <proto> AUTH <user> <pass> option can be used to authenticate the client and \
             select the RESP protocol version at the same time"
        } else {
            "NOAUTH Authentication required."
        }))
    }
}

/// What a `HELLO [protover [AUTH user pass] [SETNAME name]]` asks for.
#[derive(Debug, PartialEq, Eq)]
pub struct Hello {
    /// The protocol to switch to; `None` keeps the connection's.
    pub proto: Option<u8>,
    /// The connection name to set (empty: clear it).
    pub setname: Option<Vec<u8>>,
}

/// The version Redis clients see (`HELLO`'s `version`, INFO's
/// `redis_version`): the Redis release whose commands DKV follows, then
/// DKV's own version.
pub const REDIS_VERSION: &str = concat!("7.0.0-dkv-", env!("CARGO_PKG_VERSION"));

/// Parses `HELLO`, checking what Redis checks in its order: the version
/// (`-NOPROTO` unless 2 or 3), then every option. AUTH itself is the
/// [`AuthGate`]'s.
pub fn parse_hello(args: &[Vec<u8>]) -> Result<Hello, Reply> {
    let mut hello = Hello {
        proto: None,
        setname: None,
    };
    if let Some(v) = args.get(1) {
        let v: i64 = std::str::from_utf8(v)
            .ok()
            .and_then(|v| v.parse().ok())
            .ok_or_else(|| Reply::err("ERR Protocol version is not an integer or out of range"))?;
        if !(2..=3).contains(&v) {
            return Err(Reply::err("NOPROTO unsupported protocol version"));
        }
        hello.proto = Some(v as u8);
    }
    let mut j = 2;
    while j < args.len() {
        let more = args.len() - 1 - j;
        let opt = &args[j];
        if opt.eq_ignore_ascii_case(b"AUTH") && more >= 2 {
            j += 3;
        } else if opt.eq_ignore_ascii_case(b"SETNAME") && more >= 1 {
            check_client_name(&args[j + 1])?;
            hello.setname = Some(args[j + 1].clone());
            j += 2;
        } else {
            return Err(Reply::err(format!(
                "ERR Syntax error in HELLO option '{}'",
                String::from_utf8_lossy(opt)
            )));
        }
    }
    Ok(hello)
}

/// Redis's rule for connection names: printable ASCII, no spaces.
pub fn check_client_name(name: &[u8]) -> Result<(), Reply> {
    if name.iter().all(|&c| (b'!'..=b'~').contains(&c)) {
        Ok(())
    } else {
        Err(Reply::err(
            "ERR Client names cannot contain spaces, newlines or special characters.",
        ))
    }
}

/// The answer to `HELLO`, as Redis gives it: a map of server, version,
/// proto, id, mode, role (not on a Sentinel port: `role` is `None`) and
/// modules, in the connection's (new) protocol.
pub fn hello_reply(proto: u8, id: u64, mode: &str, role: Option<&str>) -> Reply {
    let mut m = vec![
        ("server", Reply::text("dkv")),
        ("version", Reply::text(REDIS_VERSION)),
        ("proto", Reply::Int(proto as i64)),
        ("id", Reply::Int(id as i64)),
        ("mode", Reply::text(mode)),
    ];
    if let Some(role) = role {
        m.push(("role", Reply::text(role)));
    }
    m.push(("modules", Reply::Array(vec![])));
    Reply::map(m)
}

/// A connection id from one process-wide counter, as Redis gives every
/// connection (`CLIENT ID`, `HELLO`'s `id`): never 0, never reused.
pub fn next_client_id() -> u64 {
    static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(1);
    NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
}

/// Whether `s` matches the glob `pattern` as Redis matches them (KEYS,
/// PSUBSCRIBE, CONFIG GET): `*` any run, `?` any byte, `[abc]`, `[^a-z]`,
/// `\x` a literal `x`; `nocase` folds ASCII case. Linear backtracking to the
/// last `*` only, so no pattern can make it slow (O(pattern × s)).
pub fn glob_match(pattern: &[u8], s: &[u8], nocase: bool) -> bool {
    if nocase {
        crate::commands::glob_match(&pattern.to_ascii_lowercase(), &s.to_ascii_lowercase())
    } else {
        crate::commands::glob_match(pattern, s)
    }
}

/// Bounds on what a client may send.
#[derive(Clone, Copy, Debug)]
pub struct Limits {
    /// Largest bulk string (a key or a value).
    pub max_bulk: usize,
    /// Most arguments in one command.
    pub max_args: usize,
    /// Longest inline command line.
    pub max_inline: usize,
    /// Most bytes of one command, all arguments together: bounds the buffer a
    /// connection holds for a command still arriving.
    pub max_command: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_bulk: 1024 * 1024 + 4096,
            max_args: 64 * 1024,
            max_inline: 64 * 1024,
            max_command: 16 << 20,
        }
    }
}

#[derive(Debug, PartialEq, Eq)]
pub struct RespError(pub String);

/// A parsed command's arguments and the bytes it used; `None`: need more.
pub type Parsed = Option<(Vec<Vec<u8>>, usize)>;

/// Parses one command from the front of `buf`: `Ok(Some((args, consumed)))`,
/// `Ok(None)` when more bytes are needed, or an error for malformed input.
pub fn parse_command(buf: &[u8], limits: Limits) -> Result<Parsed, RespError> {
    if buf.is_empty() {
        return Ok(None);
    }
    if buf[0] != b'*' {
        return parse_inline(buf, limits);
    }
    let Some((n, mut pos)) = read_int_line(buf, 1, limits.max_inline)? else {
        return Ok(None);
    };
    if n < 0 {
        return Err(RespError("invalid multibulk length".into()));
    }
    let n = n as usize;
    let too_big = || {
        RespError(format!(
            "command exceeds the limit of {} bytes",
            limits.max_command
        ))
    };
    if pos > limits.max_command {
        return Err(too_big());
    }
    if n > limits.max_args {
        return Err(RespError(format!(
            "too many arguments ({n}, limit {})",
            limits.max_args
        )));
    }
    let mut args = Vec::with_capacity(n.min(1024));
    for _ in 0..n {
        if pos >= buf.len() {
            return Ok(None);
        }
        if buf[pos] != b'$' {
            return Err(RespError(format!(
                "expected '$', got '{}'",
                (buf[pos] as char).escape_default()
            )));
        }
        let Some((len, start)) = read_int_line(buf, pos + 1, limits.max_inline)? else {
            return Ok(None);
        };
        if len < 0 {
            return Err(RespError("invalid bulk length".into()));
        }
        let len = len as usize;
        if len > limits.max_bulk {
            return Err(RespError(format!(
                "bulk length {len} exceeds the limit of {} bytes",
                limits.max_bulk
            )));
        }
        if start + len + 2 > limits.max_command {
            return Err(too_big());
        }
        if buf.len() < start + len + 2 {
            return Ok(None);
        }
        if &buf[start + len..start + len + 2] != b"\r\n" {
            return Err(RespError("bulk string not terminated by CRLF".into()));
        }
        args.push(buf[start..start + len].to_vec());
        pos = start + len + 2;
    }
    Ok(Some((args, pos)))
}

/// `<digits>\r\n` starting at `from`; returns the number and the index after it.
fn read_int_line(buf: &[u8], from: usize, max: usize) -> Result<Option<(i64, usize)>, RespError> {
    // The same bound whether the line is complete or still arriving, so a
    // command parses the same however it is split across reads.
    let longest = 32.min(max);
    let rest = &buf[from.min(buf.len())..];
    let Some(nl) = rest.iter().position(|&b| b == b'\n') else {
        if rest.len() > longest {
            return Err(RespError("length line too long".into()));
        }
        return Ok(None);
    };
    if nl > longest {
        return Err(RespError("length line too long".into()));
    }
    if nl == 0 || rest[nl - 1] != b'\r' {
        return Err(RespError("length not terminated by CRLF".into()));
    }
    let digits = &rest[..nl - 1];
    let s = std::str::from_utf8(digits).map_err(|_| RespError("invalid length".into()))?;
    let n: i64 = s
        .parse()
        .map_err(|_| RespError(format!("invalid length '{}'", s.escape_default())))?;
    Ok(Some((n, from + nl + 1)))
}

fn parse_inline(buf: &[u8], limits: Limits) -> Result<Parsed, RespError> {
    let Some(nl) = buf.iter().position(|&b| b == b'\n') else {
        if buf.len() > limits.max_inline {
            return Err(RespError(format!(
                "inline command longer than {} bytes",
                limits.max_inline
            )));
        }
        return Ok(None);
    };
    if nl > limits.max_inline {
        return Err(RespError(format!(
            "inline command longer than {} bytes",
            limits.max_inline
        )));
    }
    let line = buf[..nl].strip_suffix(b"\r").unwrap_or(&buf[..nl]);
    let args: Vec<Vec<u8>> = line
        .split(|b| b.is_ascii_whitespace())
        .filter(|a| !a.is_empty())
        .map(|a| a.to_vec())
        .collect();
    if args.len() > limits.max_args {
        return Err(RespError("too many arguments".into()));
    }
    Ok(Some((args, nl + 1)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn split_commands_parse_like_whole_ones() {
        // Found by fuzzing: a long (zero-padded) length line was accepted when
        // complete but refused while still arriving; a long count line with no
        // arguments escaped max-command.
        let padded = format!("*{}1\r\n$4\r\nPING\r\n", "0".repeat(40)).into_bytes();
        for cut in 1..=padded.len() {
            assert!(
                parse_command(&padded[..cut], Limits::default()).is_err() || cut < 34,
                "prefix of {cut} bytes"
            );
        }
        assert!(parse_command(&padded, Limits::default()).is_err());
        let limits = Limits {
            max_command: 20,
            ..Limits::default()
        };
        let empty = format!("*{}0\r\n", "0".repeat(25)).into_bytes();
        assert!(parse_command(&empty, limits).is_err());
    }

    #[test]
    fn a_command_larger_than_max_command_is_refused_before_it_arrives() {
        let limits = Limits {
            max_command: 100,
            ..Limits::default()
        };
        // Only the header of a 60-byte argument after a 60-byte one: refused
        // already, without waiting for (or buffering) the rest.
        let mut cmd = format!("*2\r\n$60\r\n{}\r\n$60\r\n", "a".repeat(60)).into_bytes();
        assert!(parse_command(&cmd, limits).is_err());
        cmd.truncate(4);
        assert_eq!(parse_command(&cmd, limits), Ok(None));
        let small = b"*1\r\n$4\r\nPING\r\n";
        assert!(matches!(parse_command(small, limits), Ok(Some((_, 14)))));
    }

    fn parse(b: &[u8]) -> Result<Parsed, RespError> {
        parse_command(b, Limits::default())
    }

    #[test]
    fn parses_arrays_inline_and_pipelines() {
        let b = b"*2\r\n$3\r\nGET\r\n$1\r\nk\r\nPING\r\n*1\r\n$4\r\nPING\r\n";
        let (a, n) = parse(b).unwrap().unwrap();
        assert_eq!(a, vec![b"GET".to_vec(), b"k".to_vec()]);
        let (a, m) = parse(&b[n..]).unwrap().unwrap();
        assert_eq!(a, vec![b"PING".to_vec()]);
        let (a, _) = parse(&b[n + m..]).unwrap().unwrap();
        assert_eq!(a, vec![b"PING".to_vec()]);
    }

    #[test]
    fn every_prefix_of_a_command_asks_for_more() {
        let b = b"*3\r\n$3\r\nSET\r\n$1\r\nk\r\n$5\r\nv\r\nxy\r\n";
        for cut in 0..b.len() {
            assert_eq!(parse(&b[..cut]), Ok(None), "cut at {cut}");
        }
        let (a, n) = parse(b).unwrap().unwrap();
        assert_eq!(a[2], b"v\r\nxy".to_vec(), "binary-safe bulk");
        assert_eq!(n, b.len());
    }

    #[test]
    fn malformed_input_is_an_error() {
        for bad in [
            &b"*-2\r\n"[..],
            b"*1\r\n$-5\r\n",
            b"*1\r\n$99999999999\r\n",
            b"*1\r\n$3\r\nGETxx",
            b"*1\r\n:3\r\n",
            b"*abc\r\n",
            b"*1\n",
            b"*9999999\r\n",
        ] {
            assert!(parse(bad).is_err(), "{:?}", String::from_utf8_lossy(bad));
        }
        // A megabyte of '*' never ends a length line: refused, not buffered.
        assert!(parse(&vec![b'*'; 1 << 20]).is_err());
        // An endless inline command is refused past the limit.
        assert!(parse(&vec![b'a'; 100 * 1024]).is_err());
    }

    #[test]
    fn auth_gate_admits_counts_and_closes_like_the_native_gate() {
        let args = |s: &str| {
            s.split(' ')
                .map(|a| a.as_bytes().to_vec())
                .collect::<Vec<_>>()
        };
        let c = crate::auth::AuthCounters::default();
        let encode = |r: &Reply| String::from_utf8(r.to_bytes(RESP2)).unwrap();
        let reply = |g: Gated| match g {
            Gated::Run => None,
            Gated::Answer { reply, close } => Some((encode(&reply), close)),
        };
        let mut g = AuthGate::new(Some(crate::auth::Password::new(b"pw")));
        let (r, close) = reply(g.check(&args("GET k"), &c, String::new)).unwrap();
        assert!(r.starts_with("-NOAUTH") && !close, "{r}");
        // A wrong user name is refused but is not a password guess.
        let (r, _) = reply(g.check(&args("AUTH bob pw"), &c, String::new)).unwrap();
        assert!(r.starts_with("-WRONGPASS"), "{r}");
        assert_eq!(crate::auth::AuthCounters::get(&c.failed_auth), 0);
        let (_, close) = reply(g.check(&args("AUTH x"), &c, String::new)).unwrap();
        assert!(!close);
        let (_, close) = reply(g.check(&args("AUTH default x"), &c, String::new)).unwrap();
        assert!(!close);
        assert_eq!(crate::auth::AuthCounters::get(&c.failed_auth), 2);
        // HELLO with the right password lets the HELLO itself run.
        assert!(reply(g.check(&args("HELLO 2 AUTH default pw"), &c, String::new)).is_none());
        assert!(g.is_authenticated());
        assert_eq!(g.password.as_deref(), Some(&b"pw"[..]));
        assert!(reply(g.check(&args("GET k"), &c, String::new)).is_none());
        // The third wrong password closes, authenticated or not.
        let (r, close) = reply(g.check(&args("AUTH y"), &c, String::new)).unwrap();
        assert!(r.starts_with("-WRONGPASS") && close, "{r}");

        let mut open = AuthGate::new(None);
        assert!(reply(open.check(&args("GET k"), &c, String::new)).is_none());
        let (r, close) = reply(open.check(&args("AUTH x"), &c, String::new)).unwrap();
        assert!(
            r.starts_with("-ERR AUTH <password> called without") && !close,
            "{r}"
        );
        assert_eq!(crate::auth::AuthCounters::get(&c.failed_auth), 3);
    }

    #[test]
    fn replies_encode_as_redis_does() {
        let mut out = Vec::new();
        Reply::Array(vec![
            Reply::ok(),
            Reply::err("ERR x\r\ny"),
            Reply::Int(-3),
            Reply::Bulk(b"a\r\nb".to_vec()),
            Reply::Nil,
        ])
        .encode(&mut out, RESP2);
        assert_eq!(
            out,
            b"*5\r\n+OK\r\n-ERR x  y\r\n:-3\r\n$4\r\na\r\nb\r\n$-1\r\n".to_vec()
        );
    }

    #[test]
    fn resp3_types_encode_per_protocol_version() {
        let both = |r: &Reply| {
            (
                String::from_utf8(r.to_bytes(RESP2)).unwrap(),
                String::from_utf8(r.to_bytes(RESP3)).unwrap(),
            )
        };
        assert_eq!(both(&Reply::Nil), ("$-1\r\n".into(), "_\r\n".into()));
        assert_eq!(both(&Reply::NilArray), ("*-1\r\n".into(), "_\r\n".into()));
        assert_eq!(
            both(&Reply::map([("a", Reply::Int(1))])),
            (
                "*2\r\n$1\r\na\r\n:1\r\n".into(),
                "%1\r\n$1\r\na\r\n:1\r\n".into()
            )
        );
        assert_eq!(
            both(&Reply::Set(vec![Reply::Int(1)])),
            ("*1\r\n:1\r\n".into(), "~1\r\n:1\r\n".into())
        );
        assert_eq!(
            both(&Reply::Double(1.5)),
            ("$3\r\n1.5\r\n".into(), ",1.5\r\n".into())
        );
        assert_eq!(both(&Reply::Bool(true)), (":1\r\n".into(), "#t\r\n".into()));
        assert_eq!(
            both(&Reply::Bool(false)),
            (":0\r\n".into(), "#f\r\n".into())
        );
        assert_eq!(
            both(&Reply::Verbatim("a:1".into())),
            ("$3\r\na:1\r\n".into(), "=7\r\ntxt:a:1\r\n".into())
        );
        assert_eq!(
            both(&Reply::Push(vec![Reply::text("message")])),
            (
                "*1\r\n$7\r\nmessage\r\n".into(),
                ">1\r\n$7\r\nmessage\r\n".into()
            )
        );
        assert_eq!(
            both(&Reply::Many(vec![Reply::Int(1), Reply::Nil])),
            (":1\r\n$-1\r\n".into(), ":1\r\n_\r\n".into())
        );
        // Nested: a RESP2 map inside an array stays flat.
        assert_eq!(
            both(&Reply::Array(vec![Reply::map([("k", Reply::Nil)])])).0,
            "*1\r\n*2\r\n$1\r\nk\r\n$-1\r\n"
        );
        assert_eq!(Reply::Double(f64::NAN), Reply::Double(f64::NAN));
        assert_ne!(Reply::Double(0.0), Reply::Double(-0.0));
    }

    #[test]
    fn doubles_format_as_redis_does() {
        for (d, s) in [
            (1.5, "1.5"),
            (3.0, "3"),
            (-0.0, "-0"),
            (0.1, "0.1"),
            (1e21, "1e+21"),
            (1.5e-7, "1.5e-07"),
            (12345678901234567.0, "12345678901234568"),
            (1e17, "1e+17"),
            (1234567890123456.0, "1234567890123456"),
            (f64::INFINITY, "inf"),
            (f64::NEG_INFINITY, "-inf"),
            (f64::NAN, "nan"),
        ] {
            assert_eq!(format_double(d), s, "{d}");
        }
    }

    #[test]
    fn hello_parses_as_redis_does() {
        let args = |s: &str| {
            s.split(' ')
                .map(|a| a.as_bytes().to_vec())
                .collect::<Vec<_>>()
        };
        assert_eq!(
            parse_hello(&args("HELLO")),
            Ok(Hello {
                proto: None,
                setname: None
            })
        );
        assert_eq!(parse_hello(&args("HELLO 3")).unwrap().proto, Some(3));
        let h = parse_hello(&args("hello 2 auth default pw setname app")).unwrap();
        assert_eq!((h.proto, h.setname), (Some(2), Some(b"app".to_vec())));
        let err = |s: &str| match parse_hello(&args(s)) {
            Err(Reply::Error(e)) => e,
            other => panic!("{s}: {other:?}"),
        };
        assert!(err("HELLO 4").starts_with("NOPROTO"));
        assert!(err("HELLO 1").starts_with("NOPROTO"));
        assert!(err("HELLO x").contains("not an integer"));
        assert!(err("HELLO 3 AUTH default").contains("'AUTH'"));
        assert!(err("HELLO 3 BOGUS").contains("'BOGUS'"));
        assert!(err("HELLO 3 SETNAME a\nb").contains("cannot contain spaces"));
        // The gate refuses a bad HELLO before looking at its password.
        let c = crate::auth::AuthCounters::default();
        let mut g = AuthGate::new(Some(crate::auth::Password::new(b"pw")));
        let Gated::Answer { reply, .. } =
            g.check(&args("HELLO 4 AUTH default pw"), &c, String::new)
        else {
            panic!()
        };
        assert!(matches!(reply, Reply::Error(e) if e.starts_with("NOPROTO")));
        assert!(!g.is_authenticated());
        let Reply::Map(m) = hello_reply(3, 7, "sentinel", None) else {
            panic!()
        };
        let keys: Vec<_> = m.iter().map(|(k, _)| k.clone()).collect();
        assert_eq!(
            keys,
            ["server", "version", "proto", "id", "mode", "modules"].map(Reply::text)
        );
    }

    #[test]
    fn glob_matches_like_redis() {
        for (p, s, yes) in [
            ("*", "", true),
            ("*", "abc", true),
            ("a*c", "abbbc", true),
            ("a*c", "abbb", false),
            ("h?llo", "hello", true),
            ("h[ae]llo", "hallo", true),
            ("h[^e]llo", "hello", false),
            ("h[a-b]llo", "hbllo", true),
            ("h\\*llo", "h*llo", true),
            ("h\\*llo", "hello", false),
            ("max*", "maxmemory-policy", true),
            ("+switch-*", "+switch-master", true),
            ("*a*a*a*a*a*a*a*a*b", &"a".repeat(200), false),
        ] {
            assert_eq!(
                glob_match(p.as_bytes(), s.as_bytes(), false),
                yes,
                "{p} {s}"
            );
        }
        assert!(glob_match(b"MAXMEMORY", b"maxmemory", true));
        assert!(!glob_match(b"MAXMEMORY", b"maxmemory", false));
    }
}
