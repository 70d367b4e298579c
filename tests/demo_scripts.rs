//! The cluster scripts' helpers (`scripts/lib.sh`): a command the demos
//! print can be pasted into a shell and gives the same words, and the logs
//! directory is removed at exit unless KEEP says otherwise.

use std::process::Command;

const LIB: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/scripts/lib.sh");

/// Runs `script` in bash after sourcing lib.sh; returns (status ok, stdout).
fn bash(script: &str, env: &[(&str, &str)]) -> (bool, String) {
    let out = Command::new("bash")
        .arg("-c")
        .arg(format!("set -euo pipefail; . {LIB}; {script}"))
        .env_remove("KEEP")
        .envs(env.iter().copied())
        .output()
        .unwrap();
    (out.status.success(), String::from_utf8(out.stdout).unwrap())
}

#[test]
fn a_printed_command_pastes_back_as_the_same_words() {
    let words = [
        "target/release/client_proto",
        "127.0.0.1:12345,127.0.0.1:12346",
        "W,city,Lisbon",
        "W,note,hello, world",
        "W,it's,a \"quote\"",
        "",
        "$HOME",
        "*",
        "~root",
        "a\tb",
        "R,ключ",
        "--timeout",
    ];
    // `run printf '<%s>\n' WORDS...` prints "$ <command>" and then runs it;
    // the printed command, given back to a shell, must print the same.
    let mut script = String::from("run printf '<%s>\\n'");
    let mut expected = String::new();
    for w in words {
        script.push_str(&format!(" '{}'", w.replace('\'', "'\\''")));
        expected.push_str(&format!("<{w}>\n"));
    }
    let (ok, out) = bash(&script, &[]);
    assert!(ok, "{out}");
    let (printed, ran) = out.split_once('\n').unwrap();
    assert_eq!(ran, expected);
    let pasted = printed.strip_prefix("$ ").expect("a $ prompt");
    let again = Command::new("bash").arg("-c").arg(pasted).output().unwrap();
    assert_eq!(
        String::from_utf8(again.stdout).unwrap(),
        expected,
        "{pasted}"
    );
    // Plain words stay unquoted, so the line reads as typed.
    assert!(
        pasted.starts_with("printf '<%s>\\n' target/release/client_proto 127.0.0.1:12345,127.0.0.1:12346 W,city,Lisbon 'W,note,hello, world'"),
        "{pasted}"
    );
}

#[test]
fn the_work_directory_is_removed_at_exit_unless_keep_is_set() {
    for (keep, kept) in [
        (None, false),
        (Some("0"), false),
        (Some("false"), false),
        (Some("1"), true),
        (Some("yes"), true),
    ] {
        let dir = std::env::temp_dir().join(format!(
            "dkv-test-keep-{}-{}",
            std::process::id(),
            keep.unwrap_or("unset")
        ));
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("node1.log"), "log").unwrap();
        let work = dir.to_str().unwrap();
        let mut env = vec![("WORK", work)];
        if let Some(k) = keep {
            env.push(("KEEP", k));
        }
        let (ok, _) = bash("true", &env);
        assert!(ok);
        assert_eq!(dir.join("node1.log").exists(), kept, "KEEP={keep:?}");
        let _ = std::fs::remove_dir_all(&dir);
    }
}
