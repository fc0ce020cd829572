//! Children started through testenv die with the test binary, even when it is killed outright
//! (no unwinding, no atexit): PR_SET_PDEATHSIG from the long-lived spawner thread.
#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a failed unwrap is a failed test

use std::io::BufRead as _;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

const HELPER_ENV: &str = "TESTENV_ORPHAN_HELPER";

/// Exists and is not a zombie.
fn running(pid: i32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .map(|s| {
            s.rsplit_once(") ")
                .is_some_and(|(_, rest)| !rest.starts_with('Z'))
        })
        .unwrap_or(false)
}

#[test]
fn children_do_not_survive_a_killed_test_binary() {
    if std::env::var_os(HELPER_ENV).is_some() {
        // Helper mode: start a long sleep from a short-lived thread (as a test thread would),
        // report its pid, then die without any cleanup.
        let dir = testenv::process::scratch_dir().unwrap();
        let guard = std::thread::spawn(move || {
            let mut sleep = Command::new("sleep");
            sleep.arg("300");
            testenv::process::spawn("sleep", sleep, &dir.join("s.log")).unwrap()
        })
        .join()
        .unwrap();
        println!("{}", guard.pid());
        std::thread::sleep(Duration::from_millis(300));
        assert!(
            guard.exited().is_none(),
            "the child outlived its spawning thread"
        );
        println!("alive");
        std::mem::forget(guard);
        std::process::abort();
    }

    let mut helper = Command::new(std::env::current_exe().unwrap())
        .args([
            "--exact",
            "children_do_not_survive_a_killed_test_binary",
            "--nocapture",
        ])
        .env(HELPER_ENV, "1")
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let out = std::io::BufReader::new(helper.stdout.take().unwrap());
    let lines: Vec<String> = out.lines().map_while(Result::ok).collect();
    let status = helper.wait().unwrap();
    assert!(!status.success(), "the helper aborts");
    let pid: i32 = lines
        .iter()
        .find_map(|l| l.trim().parse().ok())
        .unwrap_or_else(|| panic!("no pid from the helper: {lines:?}"));
    assert!(
        lines.iter().any(|l| l == "alive"),
        "the child must survive the end of the thread that spawned it: {lines:?}"
    );
    let t0 = Instant::now();
    while running(pid) {
        assert!(
            t0.elapsed() < Duration::from_secs(10),
            "child {pid} survived the death of its test binary"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}
