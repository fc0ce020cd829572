//! Atomicity tests of the directory writer: a reader hammering the directory during 1,000
//! rewrites, and a writer process killed with SIGKILL at random moments 50 times.
#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a failed unwrap is a failed test

use std::collections::BTreeSet;
use std::fs;
use std::io;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use mount::writer::{AtomicWriter, OutFile};

const FIXED: [&str; 5] = ["a", "b", "c", "hist/0", "hist/1"];

/// Names in generation `g`: the fixed set, plus `odd` in odd generations (so names come and go).
fn names(g: u64) -> Vec<&'static str> {
    let mut v = FIXED.to_vec();
    if g % 2 == 1 {
        v.push("odd");
    }
    v
}

fn contents(g: u64, name: &str) -> Vec<u8> {
    // size varies with the generation so a torn or truncated read is detectable
    let pad = 512 + (g % 13) as usize * 700;
    format!("gen={g};file={name};{};end={g}", "x".repeat(pad)).into_bytes()
}

fn payload(g: u64) -> Vec<OutFile> {
    names(g)
        .into_iter()
        .map(|n| OutFile::new(n, 0o644, contents(g, n)))
        .collect()
}

/// Parse a file; `None` when it is not a complete file of some generation.
fn parse(name: &str, bytes: &[u8]) -> Option<u64> {
    let s = std::str::from_utf8(bytes).ok()?;
    let g: u64 = s.strip_prefix("gen=")?.split(';').next()?.parse().ok()?;
    if bytes == contents(g, name).as_slice() {
        Some(g)
    } else {
        None
    }
}

/// Read every file of the generation `..data` points at, through the timestamp dir.
/// `Ok(None)`: the snapshot was retired while reading (old dir removed): retry.
fn read_snapshot(dir: &Path) -> Result<Option<(u64, BTreeSet<String>)>, String> {
    let ts = match fs::read_link(dir.join("..data")) {
        Ok(t) => t,
        Err(e) => return Err(format!("readlink ..data: {e}")),
    };
    let base = dir.join(&ts);
    let mut present = BTreeSet::new();
    let mut gen = None;
    for name in ["a", "b", "c", "hist/0", "hist/1", "odd"] {
        match fs::read(base.join(name)) {
            Ok(bytes) => {
                let g = parse(name, &bytes).ok_or_else(|| format!("partial/corrupt {name}"))?;
                if *gen.get_or_insert(g) != g {
                    return Err(format!(
                        "mixed generations: {name} has {g}, expected {gen:?}"
                    ));
                }
                present.insert(name.to_string());
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                // Timestamp dirs are removed only after ..data moved away from them, and their
                // names are never reused: a missing file is fine only if ..data moved on.
                if fs::read_link(dir.join("..data")).ok().as_ref() != Some(&ts) {
                    return Ok(None); // retired under us
                }
            }
            Err(e) => return Err(format!("read {name}: {e}")),
        }
    }
    let g = gen.ok_or("empty snapshot")?;
    let expected: BTreeSet<String> = names(g).into_iter().map(String::from).collect();
    if present != expected {
        return Err(format!(
            "generation {g}: files {present:?}, expected {expected:?}"
        ));
    }
    Ok(Some((g, present)))
}

#[test]
fn reader_never_sees_mixed_or_partial_payload_during_1000_rewrites() {
    let t = tempfile::tempdir().unwrap();
    let dir = t.path().to_path_buf();
    let writer = AtomicWriter::new(&dir);
    writer.write(&payload(0)).unwrap();

    let done = Arc::new(AtomicBool::new(false));
    let reader = {
        let done = done.clone();
        let dir = dir.clone();
        std::thread::spawn(move || -> Result<(u64, u64, u64), String> {
            let (mut snapshots, mut retired, mut single_reads) = (0u64, 0u64, 0u64);
            let mut last_gen = 0;
            let mut last_single = std::collections::BTreeMap::<&str, u64>::new();
            while !done.load(Ordering::Relaxed) {
                match read_snapshot(&dir)? {
                    Some((g, _)) => {
                        if g < last_gen {
                            return Err(format!("generation went back: {g} < {last_gen}"));
                        }
                        last_gen = g;
                        snapshots += 1;
                    }
                    None => retired += 1,
                }
                // user-visible names, one at a time: each file whole, never older than before
                for name in FIXED {
                    match fs::read(dir.join(name)) {
                        Ok(bytes) => {
                            let g = parse(name, &bytes)
                                .ok_or_else(|| format!("partial read of {name}"))?;
                            let prev = last_single.insert(name, g).unwrap_or(0);
                            if g < prev {
                                return Err(format!("{name} went back: {g} < {prev}"));
                            }
                            single_reads += 1;
                        }
                        // the old timestamp dir can be removed during a path walk
                        Err(e) if e.kind() == io::ErrorKind::NotFound => retired += 1,
                        Err(e) => return Err(format!("read {name}: {e}")),
                    }
                }
            }
            Ok((snapshots, retired, single_reads))
        })
    };

    for g in 1..=1000 {
        let out = writer.write(&payload(g)).unwrap();
        assert!(out.changed);
    }
    done.store(true, Ordering::Relaxed);
    let (snapshots, retired, single_reads) = reader.join().unwrap().unwrap();
    eprintln!("snapshots={snapshots} retired={retired} single_reads={single_reads}");
    assert!(
        snapshots > 50,
        "reader made too few snapshot reads: {snapshots}"
    );
    let (g, _) = read_snapshot(&dir).unwrap().unwrap();
    assert_eq!(g, 1000);
    // nothing left over: ..data, one timestamp dir, a, b, c, hist
    let entries = fs::read_dir(&dir).unwrap().count();
    assert_eq!(entries, 6);
}

/// Child half of the crash test: runs only when the parent sets the environment variable.
#[test]
fn crash_child() {
    let Ok(dir) = std::env::var("KVB_WRITER_CRASH_DIR") else {
        return;
    };
    let start: u64 = std::env::var("KVB_WRITER_CRASH_GEN")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(1);
    let w = AtomicWriter::new(PathBuf::from(dir));
    w.cleanup().unwrap();
    let mut g = start;
    loop {
        w.write(&payload(g)).unwrap();
        g += 1;
    }
}

fn xorshift(state: &mut u64) -> u64 {
    let mut x = *state;
    x ^= x << 13;
    x ^= x >> 7;
    x ^= x << 17;
    *state = x;
    x
}

/// Check the directory as an application sees it after a crash: `..data` names one complete
/// generation and the user-visible names show exactly that generation's files.
fn check_after_crash(dir: &Path) -> u64 {
    let (g, present) = read_snapshot(dir)
        .unwrap_or_else(|e| panic!("inconsistent after kill: {e}"))
        .expect("..data points at a removed directory");
    for name in ["a", "b", "c", "hist/0", "hist/1", "odd"] {
        let r = fs::read(dir.join(name));
        if present.contains(name) {
            let bytes = r.unwrap_or_else(|e| panic!("{name} not visible in generation {g}: {e}"));
            assert_eq!(parse(name, &bytes), Some(g), "{name}");
        } else {
            assert!(r.is_err(), "{name} visible but not in generation {g}");
        }
    }
    g
}

#[test]
fn sigkill_at_random_moments_leaves_one_complete_generation() {
    let t = tempfile::tempdir().unwrap();
    let dir = t.path().to_path_buf();
    AtomicWriter::new(&dir).write(&payload(0)).unwrap();
    let exe = std::env::current_exe().unwrap();
    let mut seed = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_nanos() as u64
        | 1;
    eprintln!("crash test seed {seed}");
    let mut gen = 0;
    let mut progressed = 0;
    let mut leftovers_seen = 0;
    for round in 0..50 {
        let mut child = Command::new(&exe)
            .args(["--exact", "crash_child", "--nocapture", "--test-threads=1"])
            .env("KVB_WRITER_CRASH_DIR", &dir)
            .env("KVB_WRITER_CRASH_GEN", (gen + 1).to_string())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let delay = Duration::from_micros(5_000 + xorshift(&mut seed) % 60_000);
        let started = Instant::now();
        std::thread::sleep(delay);
        child.kill().unwrap(); // SIGKILL
        let status = child.wait().unwrap();
        assert!(
            !status.success(),
            "round {round}: child exited by itself: {status:?}"
        );
        let g = check_after_crash(&dir);
        assert!(g >= gen, "round {round}: went back from {gen} to {g}");
        if g > gen {
            progressed += 1;
        }
        gen = g;
        let names: Vec<String> = fs::read_dir(&dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        if names.iter().any(|n| n.ends_with("_tmp"))
            || names.iter().filter(|n| n.starts_with("..2")).count() > 1
        {
            leftovers_seen += 1;
        }
        eprintln!(
            "round {round}: killed after {:?}, generation {g}",
            started.elapsed()
        );
    }
    eprintln!("progressed in {progressed} rounds; leftovers after {leftovers_seen} kills");
    assert!(progressed >= 10, "writer rarely got to write: {progressed}");
    // cleanup removes every leftover and keeps the generation
    let w = AtomicWriter::new(&dir);
    w.cleanup().unwrap();
    let g = check_after_crash(&dir);
    assert_eq!(g, gen);
    let entries: Vec<String> = fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    let expected = 2 + 4 + usize::from(g % 2 == 1); // ..data, ts dir, a b c hist [odd]
    assert_eq!(entries.len(), expected, "{entries:?}");
    // and the writer continues from there
    w.write(&payload(g + 1)).unwrap();
    assert_eq!(check_after_crash(&dir), g + 1);
}
