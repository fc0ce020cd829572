//! The provider as a real process under resource pressure (issue 13.7): out of file
//! descriptors it must neither spin on `accept` nor stop serving once descriptors free up.
#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a failed unwrap is a failed test

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

struct Kill(Child);

impl Drop for Kill {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// User + system CPU time of a process, in clock ticks (`/proc/PID/stat` fields 14 and 15).
fn cpu_ticks(pid: u32) -> u64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    // The command name (field 2) is in parentheses and may contain spaces.
    let rest = &stat[stat.rfind(')').unwrap() + 2..];
    let fields: Vec<&str> = rest.split(' ').collect();
    // rest starts at field 3 (state): utime is field 14, stime field 15.
    fields[11].parse::<u64>().unwrap() + fields[12].parse::<u64>().unwrap()
}

#[allow(unsafe_code)]
fn ticks_per_second() -> u64 {
    // SAFETY: sysconf has no memory effects.
    let t = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    if t > 0 {
        t as u64
    } else {
        100
    }
}

/// Sends the HTTP/2 client preface and an empty SETTINGS frame; true when the server answers
/// with its own SETTINGS frame (it is accepting and serving).
fn serves_http2(socket: &Path) -> bool {
    let Ok(mut s) = UnixStream::connect(socket) else {
        return false;
    };
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    if s.write_all(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\0\0\0\x04\0\0\0\0\0")
        .is_err()
    {
        return false;
    }
    let mut head = [0u8; 9];
    s.read_exact(&mut head).is_ok() && head[3] == 4
}

#[test]
fn out_of_file_descriptors_backs_off_and_recovers() {
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("azure.sock");
    let cmd = format!(
        "ulimit -n 48 && exec '{}' provider --endpoint 'unix://{}' --healthz-port 0 --metrics-port 0",
        env!("CARGO_BIN_EXE_kvbridge"),
        socket.display()
    );
    let child = Command::new("sh")
        .arg("-c")
        .arg(&cmd)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let provider = Kill(child);
    let pid = provider.0.id();
    let start = Instant::now();
    while !serves_http2(&socket) {
        assert!(
            start.elapsed() < Duration::from_secs(30),
            "provider did not start serving"
        );
        std::thread::sleep(Duration::from_millis(50));
    }

    // Far more connections than the process has descriptors left: accept fails with EMFILE
    // while they are open, and the rest wait in the listen backlog.
    let mut held = Vec::new();
    for _ in 0..120 {
        match UnixStream::connect(&socket) {
            Ok(s) => held.push(s),
            Err(_) => break,
        }
    }
    assert!(held.len() >= 60, "only {} connections opened", held.len());
    std::thread::sleep(Duration::from_millis(300));
    let before = cpu_ticks(pid);
    let window = Duration::from_secs(2);
    std::thread::sleep(window);
    let used = cpu_ticks(pid) - before;
    let busy = ticks_per_second() * window.as_secs();
    // A spinning accept loop burns the whole window (~100%); backing off uses next to none.
    assert!(
        used * 4 < busy,
        "provider used {used} of {busy} CPU ticks while out of descriptors (spinning on accept?)"
    );

    drop(held);
    let start = Instant::now();
    while !serves_http2(&socket) {
        assert!(
            start.elapsed() < Duration::from_secs(20),
            "provider did not recover once descriptors were free"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}
