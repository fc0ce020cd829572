//! Child processes that never outlive the test binary, and scratch directories that are removed.
//!
//! - Each child gets its own process group and `PR_SET_PDEATHSIG = SIGKILL`. The kernel sends that
//!   signal when the *thread* that forked the child exits, so every child is forked by one spawner
//!   thread that lives as long as the process (test threads come and go).
//! - [`ChildGuard`] kills the child's process group on drop (also during a panic's unwinding).
//! - Children and scratch directories still registered when the process exits (the shared control
//!   plane lives in a static, which Rust never drops) are killed and removed by an `atexit` hook.
//! - Scratch directories of test binaries that died without running it are removed (after
//!   detaching any mount left inside) the next time a scratch directory is made.

// This module is the workspace's one user of raw system calls (process groups, PDEATHSIG,
// kill, umount) for the processes tests start; each call site states why it is sound.
#![allow(unsafe_code)]

use std::fs::File;
use std::io::{BufRead as _, Read as _, Seek as _, SeekFrom};
use std::os::unix::process::CommandExt as _;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::mpsc;
use std::sync::{Mutex, Once, OnceLock};

use crate::Error;

type Job = (Command, mpsc::SyncSender<std::io::Result<Child>>);

static SPAWNER: OnceLock<Mutex<mpsc::Sender<Job>>> = OnceLock::new();
static LIVE_PIDS: Mutex<Vec<i32>> = Mutex::new(Vec::new());
static SCRATCH_DIRS: Mutex<Vec<PathBuf>> = Mutex::new(Vec::new());
static AT_EXIT: Once = Once::new();

const SCRATCH_PREFIX: &str = "kvbridge-testenv-";

/// A running child process; dropping it kills its whole process group and reaps it.
pub struct ChildGuard {
    name: String,
    pid: i32,
    child: Mutex<Child>,
    log: PathBuf,
}

impl std::fmt::Debug for ChildGuard {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ChildGuard")
            .field("name", &self.name)
            .field("pid", &self.pid)
            .field("log", &self.log)
            .finish()
    }
}

impl ChildGuard {
    pub fn name(&self) -> &str {
        &self.name
    }

    pub fn pid(&self) -> u32 {
        self.pid.unsigned_abs()
    }

    /// The file that receives the child's stdout and stderr.
    pub fn log_path(&self) -> &Path {
        &self.log
    }

    /// The last `lines` lines of the child's log.
    pub fn log_tail(&self, lines: usize) -> String {
        tail(&self.log, lines)
    }

    /// The exit status, if the child has exited.
    pub fn exited(&self) -> Option<ExitStatus> {
        let mut child = self.child.lock().unwrap_or_else(|p| p.into_inner());
        child.try_wait().ok().flatten()
    }

    /// An error describing an early exit, with the end of the log.
    pub(crate) fn exited_error(&self, status: ExitStatus) -> Error {
        Error::Exited {
            name: self.name.clone(),
            status: status.to_string(),
            log: self.log.clone(),
            tail: self.log_tail(40),
        }
    }

    /// Kills the process group and waits for the child.
    pub fn kill(&self) {
        // SAFETY: kill(2) on our own child's process group; no memory is touched.
        unsafe {
            libc::kill(-self.pid, libc::SIGKILL);
        }
        let mut child = self.child.lock().unwrap_or_else(|p| p.into_inner());
        let _ = child.kill();
        let _ = child.wait();
        forget_pid(self.pid);
    }
}

impl Drop for ChildGuard {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Starts `cmd` with stdout and stderr appended to `log`, in its own process group, killed
/// when the test binary dies. `name` is used in messages.
pub fn spawn(name: &str, mut cmd: Command, log: &Path) -> Result<ChildGuard, Error> {
    let out = File::options()
        .create(true)
        .append(true)
        .open(log)
        .map_err(|e| Error::io("creating a log file", log, e))?;
    let err = out
        .try_clone()
        .map_err(|e| Error::io("creating a log file", log, e))?;
    cmd.stdin(Stdio::null())
        .stdout(out)
        .stderr(err)
        .process_group(0);
    let parent = std::process::id();
    // SAFETY: the closure runs in the forked child before exec and only makes async-signal-safe
    // system calls (prctl, getppid), as pre_exec requires.
    unsafe {
        cmd.pre_exec(move || {
            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL as libc::c_ulong) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            // The parent may have died between fork and prctl: then nobody would kill us.
            if libc::getppid() as u32 != parent {
                return Err(std::io::Error::other("the test process is gone"));
            }
            Ok(())
        });
    }
    register_at_exit();
    let child = spawn_on_spawner_thread(cmd).map_err(|e| Error::io("starting", name, e))?;
    let pid = i32::try_from(child.id()).unwrap_or(i32::MAX);
    LIVE_PIDS
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .push(pid);
    Ok(ChildGuard {
        name: name.to_string(),
        pid,
        child: Mutex::new(child),
        log: log.to_path_buf(),
    })
}

fn spawn_on_spawner_thread(cmd: Command) -> std::io::Result<Child> {
    let sender = SPAWNER.get_or_init(|| {
        let (tx, rx) = mpsc::channel::<Job>();
        // The receiver loop ends only if every sender is dropped, and the sender lives in this
        // static: the thread (and with it PR_SET_PDEATHSIG's parent) lives as long as the process.
        let spawned = std::thread::Builder::new()
            .name("testenv-spawner".into())
            .spawn(move || {
                for (mut cmd, reply) in rx {
                    let _ = reply.send(cmd.spawn());
                }
            });
        if let Err(e) = spawned {
            eprintln!("testenv: cannot start the spawner thread: {e}");
        }
        Mutex::new(tx)
    });
    let (reply_tx, reply_rx) = mpsc::sync_channel(1);
    sender
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .send((cmd, reply_tx))
        .map_err(|_| std::io::Error::other("the spawner thread is gone"))?;
    reply_rx
        .recv()
        .map_err(|_| std::io::Error::other("the spawner thread is gone"))?
}

fn forget_pid(pid: i32) {
    LIVE_PIDS
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .retain(|p| *p != pid);
}

/// A fresh directory `$TMPDIR/kvbridge-testenv-<pid>-XXXXXX` that is removed when the test
/// binary exits (after the processes, and after detaching any mount inside it).
pub fn scratch_dir() -> Result<PathBuf, Error> {
    static CLEANED: Once = Once::new();
    CLEANED.call_once(remove_stale_scratch_dirs);
    register_at_exit();
    let dir = tempfile::Builder::new()
        .prefix(&format!("{SCRATCH_PREFIX}{}-", std::process::id()))
        .tempdir()
        .map_err(|e| Error::io("creating a scratch directory", std::env::temp_dir(), e))?
        .keep();
    SCRATCH_DIRS
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .push(dir.clone());
    Ok(dir)
}

fn register_at_exit() {
    AT_EXIT.call_once(|| {
        // SAFETY: registers a plain extern "C" function; atexit has no other preconditions.
        unsafe {
            libc::atexit(cleanup_at_exit);
        }
    });
}

extern "C" fn cleanup_at_exit() {
    // try_lock: never block process exit on a lock some other thread held when exit began.
    if let Ok(pids) = LIVE_PIDS.try_lock() {
        for pid in pids.iter() {
            // SAFETY: kill/waitpid on our own children.
            unsafe {
                libc::kill(-*pid, libc::SIGKILL);
                libc::waitpid(*pid, std::ptr::null_mut(), 0);
            }
        }
    }
    if let Ok(dirs) = SCRATCH_DIRS.try_lock() {
        for dir in dirs.iter() {
            detach_mounts_under(dir);
            let _ = std::fs::remove_dir_all(dir);
        }
    }
}

/// Removes scratch directories whose test binary is no longer running.
fn remove_stale_scratch_dirs() {
    let Ok(entries) = std::fs::read_dir(std::env::temp_dir()) else {
        return;
    };
    for entry in entries.flatten() {
        let name = entry.file_name();
        let Some(rest) = name.to_str().and_then(|n| n.strip_prefix(SCRATCH_PREFIX)) else {
            continue;
        };
        let Some(pid) = rest
            .split('-')
            .next()
            .and_then(|p| p.parse::<libc::pid_t>().ok())
        else {
            continue;
        };
        // SAFETY: kill with signal 0 only checks whether the process exists.
        let gone = unsafe { libc::kill(pid, 0) } != 0
            && std::io::Error::last_os_error().raw_os_error() == Some(libc::ESRCH);
        if gone {
            let path = entry.path();
            detach_mounts_under(&path);
            let _ = std::fs::remove_dir_all(&path);
        }
    }
}

/// Lazily unmounts every mount point at or below `dir` (deepest first), e.g. tmpfs mounts a CSI
/// driver left behind.
pub fn detach_mounts_under(dir: &Path) {
    let Ok(mountinfo) = std::fs::read_to_string("/proc/self/mountinfo") else {
        return;
    };
    let mut points: Vec<PathBuf> = mountinfo
        .lines()
        .filter_map(|l| l.split(' ').nth(4))
        .map(|p| PathBuf::from(unescape_mountinfo(p)))
        .filter(|p| p.starts_with(dir))
        .collect();
    points.sort_by_key(|p| std::cmp::Reverse(p.components().count()));
    for p in points {
        if let Ok(c) = std::ffi::CString::new(p.as_os_str().as_encoded_bytes()) {
            // SAFETY: umount2 with a valid NUL-terminated path.
            unsafe {
                libc::umount2(c.as_ptr(), libc::MNT_DETACH);
            }
        }
    }
}

/// Whether `path` is a mount point, and its filesystem type (from /proc/self/mountinfo).
pub fn mount_type(path: &Path) -> Option<String> {
    let mountinfo = std::fs::read_to_string("/proc/self/mountinfo").ok()?;
    mountinfo.lines().rev().find_map(|l| {
        let fields: Vec<&str> = l.split(' ').collect();
        let point = PathBuf::from(unescape_mountinfo(fields.get(4)?));
        if point != path {
            return None;
        }
        let sep = fields.iter().position(|f| *f == "-")?;
        fields.get(sep + 1).map(|s| s.to_string())
    })
}

/// mountinfo escapes space, tab, newline and backslash as \ooo (three octal digits).
fn unescape_mountinfo(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        let octal = b
            .get(i + 1..i + 4)
            .filter(|d| d.iter().all(|c| (b'0'..=b'7').contains(c)));
        if let (b'\\', Some(d)) = (b[i], octal) {
            let v = d.iter().fold(0u32, |acc, c| acc * 8 + u32::from(c - b'0'));
            out.push(u8::try_from(v).unwrap_or(b'?'));
            i += 4;
            continue;
        }
        out.push(b[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// The last `lines` lines of a file (at most the last 64 KiB are read).
pub fn tail(path: &Path, lines: usize) -> String {
    let Ok(mut f) = File::open(path) else {
        return String::from("(no log)");
    };
    let len = f.metadata().map(|m| m.len()).unwrap_or(0);
    let _ = f.seek(SeekFrom::Start(len.saturating_sub(64 * 1024)));
    let mut buf = Vec::new();
    let _ = f.read_to_end(&mut buf);
    let all: Vec<String> = buf.lines().map_while(Result::ok).collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

/// `n` free TCP ports on 127.0.0.1 (bound together, then released for the child to take).
pub fn free_ports<const N: usize>() -> Result<[u16; N], Error> {
    let listeners = (0..N)
        .map(|_| std::net::TcpListener::bind("127.0.0.1:0"))
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| Error::io("reserving a loopback port", "127.0.0.1:0", e))?;
    let mut ports = [0u16; N];
    for (p, l) in ports.iter_mut().zip(&listeners) {
        *p = l
            .local_addr()
            .map_err(|e| Error::io("reserving a loopback port", "127.0.0.1:0", e))?
            .port();
    }
    Ok(ports)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mountinfo_escapes() {
        assert_eq!(unescape_mountinfo(r"/a\040b"), "/a b");
        assert_eq!(unescape_mountinfo(r"/plain"), "/plain");
        assert_eq!(unescape_mountinfo(r"/end\"), r"/end\");
    }

    #[test]
    fn guard_kills_the_process_group_on_drop() {
        let dir = scratch_dir().unwrap();
        let log = dir.join("sleep.log");
        let mut cmd = Command::new("sh");
        // A grandchild in the same process group must die too.
        cmd.args(["-c", "sleep 300 & echo $! ; wait"]);
        let guard = spawn("sleep", cmd, &log).unwrap();
        let t0 = std::time::Instant::now();
        let grandchild = loop {
            if let Ok(pid) = std::fs::read_to_string(&log)
                .unwrap_or_default()
                .trim()
                .parse::<i32>()
            {
                break pid;
            }
            assert!(t0.elapsed().as_secs() < 10, "no grandchild pid");
            std::thread::sleep(std::time::Duration::from_millis(10));
        };
        let pid = guard.pid() as i32;
        assert!(guard.exited().is_none());
        assert!(running(pid) && running(grandchild));
        drop(guard);
        assert!(!running(pid), "child reaped");
        let t0 = std::time::Instant::now();
        // The grandchild got SIGKILL with its group (it may linger as a zombie until reparented).
        while running(grandchild) {
            assert!(t0.elapsed().as_secs() < 10, "grandchild survived");
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
    }

    /// Exists and is not a zombie.
    fn running(pid: i32) -> bool {
        std::fs::read_to_string(format!("/proc/{pid}/stat"))
            .map(|s| {
                s.rsplit_once(") ")
                    .is_some_and(|(_, rest)| !rest.starts_with('Z'))
            })
            .unwrap_or(false)
    }
}
