//! Prerequisites of a test (a tool such as redis-cli, root, a packet socket)
//! and what happens when one is missing. This is the only place where a test
//! may decide to skip:
//!
//! - under CI (`CI` set to anything but empty, `0` or `false`; `.ci/run`
//!   exports `CI=true`), a missing prerequisite fails the test with a message
//!   naming what to install: CI never passes a test it did not run;
//! - elsewhere the test passes without doing its work, and the skip is
//!   recorded: one file per skip in [`skip_dir`], which `make test` empties
//!   at its start and summarises at its end (`scripts/test-skips.sh`), so a
//!   skip is never hidden behind a pass. Each record is written to a file of
//!   its own and renamed into place, which is safe with nextest's one process
//!   per test and with libtest's threads alike.
//!
//! ```ignore
//! if !require_tool("redis-cli", "apt-get install redis-tools") {
//!     return;
//! }
//! ```

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

/// `preferred` if it exists, else `name` on PATH.
pub fn find_program(name: &str, preferred: &str) -> Option<PathBuf> {
    let p = PathBuf::from(preferred);
    if p.is_file() {
        return Some(p);
    }
    std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|d| d.join(name))
            .find(|p| p.is_file())
    })
}

/// `/usr/bin/<tool>` or `tool` on PATH.
pub fn have_tool(tool: &str) -> bool {
    find_program(tool, &format!("/usr/bin/{tool}")).is_some()
}

/// Whether the test may go on: `tool` is installed ([`have_tool`]). If not,
/// fails the test under CI, else records the skip. The caller returns when
/// this is false.
pub fn require_tool(tool: &str, install: &str) -> bool {
    require(
        have_tool(tool),
        &format!("{tool} is not installed"),
        install,
    )
}

/// python3 with redis-py, for the tests that run redis-py's Sentinel client.
pub fn require_redis_py() -> bool {
    const PIP: &str = "python3 -m pip install redis";
    if !require_tool(
        "python3",
        &format!("apt-get install python3 python3-pip, then {PIP}"),
    ) {
        return false;
    }
    let ok = std::process::Command::new("python3")
        .args(["-c", "import redis.sentinel"])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    require(ok, "redis-py is not installed", PIP)
}

/// python3 with the Prometheus client (its text-format parser), for
/// tests/metrics.rs.
pub fn require_prometheus_client() -> bool {
    const PIP: &str = "python3 -m pip install prometheus-client";
    if !require_tool(
        "python3",
        &format!("apt-get install python3 python3-pip, then {PIP}"),
    ) {
        return false;
    }
    let ok = std::process::Command::new("python3")
        .args(["-c", "import prometheus_client.parser"])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    require(
        ok,
        "the prometheus-client Python package is not installed",
        PIP,
    )
}

/// node with ioredis installed in tests/js, for the tests that run ioredis.
pub fn require_ioredis() -> bool {
    const NPM: &str = "npm ci --prefix tests/js";
    if !require_tool("node", &format!("apt-get install nodejs npm, then {NPM}")) {
        return false;
    }
    let module = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/js/node_modules/ioredis/package.json"
    );
    require(
        std::path::Path::new(module).is_file(),
        "ioredis is not installed in tests/js",
        NPM,
    )
}

/// The general form: `present` says whether the prerequisite is there,
/// `missing` says what is missing ("chaos needs root"), `install` what to do
/// about it ("apt-get install iproute2", "run the tests as root").
pub fn require(present: bool, missing: &str, install: &str) -> bool {
    present || !missing_prerequisite(in_ci(), &skip_dir(), &current_test(), missing, install)
}

/// Like [`require`] for a prerequisite of one part of a test, which goes on
/// without that part (`part` says what is left out).
pub fn require_for_part(present: bool, missing: &str, install: &str, part: &str) -> bool {
    present
        || !missing_prerequisite(
            in_ci(),
            &skip_dir(),
            &current_test(),
            &format!("{missing}; left out: {part}"),
            install,
        )
}

/// What a missing prerequisite does: under `ci`, panics (failing the test);
/// otherwise writes a skip record for `test` into `dir`, says so on stderr
/// and returns true ("skipped").
pub fn missing_prerequisite(
    ci: bool,
    dir: &Path,
    test: &str,
    missing: &str,
    install: &str,
) -> bool {
    let why = format!("{missing}: {install}");
    if ci {
        panic!("{why} (CI is set: a missing prerequisite fails the test instead of skipping it)");
    }
    eprintln!("SKIPPED {test}: {why} (recorded in {})", dir.display());
    if let Err(e) = record(dir, test, &why) {
        // A skip that cannot be recorded would be a silent pass.
        panic!(
            "{test} skipped ({why}), but the skip could not be recorded in {}: {e}",
            dir.display()
        );
    }
    true
}

/// Whether this run is CI: `CI` set to anything but empty, `0` or `false`.
pub fn in_ci() -> bool {
    std::env::var("CI").is_ok_and(|v| !matches!(v.trim(), "" | "0" | "false" | "FALSE" | "False"))
}

/// Where skip records go: `DKV_TEST_SKIPS` (set by `make test`), else
/// `test-skips` next to the test binary's profile directory
/// (`<target>/debug/test-skips`).
pub fn skip_dir() -> PathBuf {
    if let Some(d) = std::env::var_os("DKV_TEST_SKIPS").filter(|d| !d.is_empty()) {
        return PathBuf::from(d);
    }
    let exe = std::env::current_exe().unwrap_or_default();
    // <target>/<profile>/deps/<test binary>
    match exe.parent().and_then(Path::parent) {
        Some(profile) => profile.join("test-skips"),
        None => std::env::temp_dir().join("dkv-test-skips"),
    }
}

/// `crate::test_name` of the running test (libtest names each test's thread
/// after it; nextest runs it the same way in a process of its own).
pub fn current_test() -> String {
    let name = std::thread::current()
        .name()
        .filter(|n| *n != "main")
        .unwrap_or("(unnamed test)")
        .to_string();
    format!("{}::{name}", env!("CARGO_CRATE_NAME"))
}

/// One record: the test's name on the first line, why on the second.
fn record(dir: &Path, test: &str, why: &str) -> std::io::Result<()> {
    static SEQ: AtomicU64 = AtomicU64::new(0);
    std::fs::create_dir_all(dir)?;
    // The pid and a sequence number make the name unique among live
    // processes; the clock, across processes that reused a pid.
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos());
    let seq = SEQ.fetch_add(1, Ordering::Relaxed);
    let stem = format!("{nanos}-{}-{seq}", std::process::id());
    let tmp = dir.join(format!(".{stem}.tmp"));
    let why = why.replace('\n', " ");
    std::fs::write(&tmp, format!("{test}\n{why}\n"))?;
    std::fs::rename(&tmp, dir.join(format!("{stem}.skip")))
}
