//! The skip mechanism itself (`tests/common/skip.rs`): a missing
//! prerequisite fails the test under CI and is recorded elsewhere, and
//! `scripts/test-skips.sh` (the last line of `make test`) names every skipped
//! test and why. The missing tool is one that does not exist.

#[allow(dead_code)]
#[path = "common/skip.rs"]
mod skip;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

const NO_SUCH_TOOL: &str = "dkv-no-such-tool";
const INSTALL: &str = "apt-get install dkv-no-such-tool";

fn temp_dir(name: &str) -> PathBuf {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos();
    let d = std::env::temp_dir().join(format!(
        "dkv-test-prereq-{name}-{}-{nanos}",
        std::process::id()
    ));
    std::fs::create_dir_all(&d).unwrap();
    d
}

fn records(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == "skip"))
        .map(|p| std::fs::read_to_string(p).unwrap())
        .collect();
    v.sort();
    v
}

fn summary(dir: &Path) -> String {
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/scripts/test-skips.sh");
    let out = Command::new("bash").arg(script).arg(dir).output().unwrap();
    assert!(out.status.success(), "{out:?}");
    String::from_utf8(out.stdout).unwrap()
}

/// Runs [`needs_a_tool_that_does_not_exist`] in a child process of this
/// test binary, with `CI` as given and the skip records going to `dir`.
fn run_helper(ci: Option<&str>, dir: &Path) -> Output {
    let mut cmd = Command::new(std::env::current_exe().unwrap());
    cmd.args([
        "--exact",
        "needs_a_tool_that_does_not_exist",
        "--ignored",
        "--nocapture",
    ])
    .env("DKV_PREREQ_SELFTEST", "1")
    .env("DKV_TEST_SKIPS", dir);
    match ci {
        Some(v) => cmd.env("CI", v),
        None => cmd.env_remove("CI"),
    };
    cmd.output().unwrap()
}

#[test]
#[ignore = "run by the tests below in a child process, with CI set or not"]
fn needs_a_tool_that_does_not_exist() {
    if std::env::var_os("DKV_PREREQ_SELFTEST").is_none() {
        return;
    }
    if !skip::require_tool(NO_SUCH_TOOL, INSTALL) {
        return;
    }
    panic!("{NO_SUCH_TOOL} was found");
}

#[test]
fn under_ci_a_missing_tool_fails_the_test_and_names_what_to_install() {
    for ci in ["true", "1", "yes"] {
        let dir = temp_dir("ci");
        let out = run_helper(Some(ci), &dir);
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(!out.status.success(), "CI={ci}: the test passed: {text}");
        assert!(
            text.contains(&format!("{NO_SUCH_TOOL} is not installed: {INSTALL}")),
            "CI={ci}: {text}"
        );
        assert!(records(&dir).is_empty(), "a failure is not a skip");
        let _ = std::fs::remove_dir_all(&dir);
    }
}

#[test]
fn outside_ci_a_missing_tool_passes_and_records_the_skip() {
    for ci in [None, Some(""), Some("false"), Some("0")] {
        let dir = temp_dir("local");
        let out = run_helper(ci, &dir);
        assert!(out.status.success(), "CI={ci:?}: {out:?}");
        assert_eq!(
            records(&dir),
            [format!(
                "prerequisites::needs_a_tool_that_does_not_exist\n\
                 {NO_SUCH_TOOL} is not installed: {INSTALL}\n"
            )],
            "CI={ci:?}"
        );
        assert_eq!(
            summary(&dir),
            format!(
                "1 test skipped: prerequisites::needs_a_tool_that_does_not_exist \
                 ({NO_SUCH_TOOL} is not installed: {INSTALL})\n"
            )
        );
        let _ = std::fs::remove_dir_all(&dir);
    }
}

#[test]
fn the_summary_names_every_skipped_test_once_with_every_reason() {
    let dir = temp_dir("summary");
    assert_eq!(summary(&dir), "no test was skipped\n");
    // Concurrent skips (libtest's threads; nextest's processes write the
    // same way) each get a record of their own.
    std::thread::scope(|s| {
        for i in 0..8 {
            let dir = &dir;
            s.spawn(move || {
                let test = format!("t::{}", if i < 4 { "b" } else { "a" });
                let why = format!("tool{} is not installed, really", i % 2);
                assert!(skip::missing_prerequisite(
                    false,
                    dir,
                    &test,
                    &why,
                    "apt-get install x"
                ));
            });
        }
    });
    assert_eq!(records(&dir).len(), 8);
    assert_eq!(
        summary(&dir),
        "2 tests skipped: \
         t::a (tool0 is not installed, really: apt-get install x; tool1 is not installed, really: apt-get install x), \
         t::b (tool0 is not installed, really: apt-get install x; tool1 is not installed, really: apt-get install x)\n"
    );
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn a_present_tool_is_no_skip() {
    // bash runs the summary script above; it is there wherever these run.
    assert!(skip::have_tool("bash"));
    assert!(skip::require_tool("bash", "apt-get install bash"));
    assert!(!skip::have_tool(NO_SUCH_TOOL));
}
