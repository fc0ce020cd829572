//! Kubelet-style atomic writer for a target directory.
//!
//! Layout of the target directory:
//! ```text
//! ..2024_05_01_12_00_00.123456789_4242_0/   payload of the current generation (a "timestamp dir")
//! ..data -> ..2024_05_01_12_00_00.123456789_4242_0
//! tls.crt -> ..data/tls.crt                 one symlink per top-level payload entry
//! hist -> ..data/hist                       (nested paths: the top-level directory)
//! ```
//! A write:
//! 1. validates paths (relative, no `..`, no empty segments, not starting with `..`, no file that is
//!    also a directory of another, segments of at most 255 bytes, at most [`MAX_DEPTH`] deep)
//!    before touching anything;
//! 2. skips the rewrite when the payload equals the current one;
//! 3. writes the new payload into a fresh timestamp dir (0700 while writing), each file with its
//!    mode and fsynced, then directories fsynced and the dir made 0755;
//! 4. creates the user-visible symlinks of names that are new (they dangle until step 5, which
//!    looks like "absent", consistent with the old payload);
//! 5. creates `..data_tmp -> <new dir>` and renames it over `..data` (the one atomic switch);
//! 6. removes the user-visible symlinks of names that left the payload (they dangle after step 5,
//!    consistent with the new payload);
//! 7. removes every other generation and leftover last (on every write, also an unchanged one).
//!
//! A failure before step 5 removes what this write created and reports
//! [`TargetState::Unchanged`] (or, when even that removal fails, which leftover remains). A
//! failure after step 5 is not an error: the new payload is published, and what could not be
//! cleaned up is returned as [`WriteWarning`]s and retried on the next write.
//!
//! A crash at any point therefore shows, through `..data`, either the complete old or the
//! complete new payload. [`AtomicWriter::cleanup`] removes leftovers (`..*_tmp`, timestamp
//! dirs `..data` does not point at, dangling user-visible symlinks into `..data`).
//!
//! Hostile content: applications may share the directory (an emptyDir) and plant anything in it.
//! Every operation is relative to a descriptor of the target directory and never follows a
//! symbolic link found inside it: `..data` counts only when it is a symlink whose text is one
//! timestamp-dir name that is a real directory in the target; anything else is treated as
//! corruption and repaired (replaced) without reading or removing anything it points at.
//! Removal descends only into real directories (`O_NOFOLLOW`), at most [`MAX_DEPTH`] deep.
//!
//! The writer does blocking file I/O: async callers use [`AtomicWriter::write_async`] /
//! [`AtomicWriter::cleanup_async`], which run it on tokio's blocking pool.
//!
//! Readers that need several files from one generation should resolve `..data` once
//! (`readlink`) and read through the timestamp directory; a reader that reads the user-visible
//! names one by one gets each file atomically but may see different generations across files,
//! exactly as with Kubernetes projected volumes.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::fs::{self, File};
use std::io::{self, Read, Write};
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use rustix::fs::{AtFlags, FileType, Mode, OFlags};
use zeroize::Zeroizing;

pub use render::output::OutFile;

pub const DATA_DIR: &str = "..data";
pub const DATA_DIR_TMP: &str = "..data_tmp";
/// Helper name for creating a user-visible symlink atomically (fixed length, so any valid
/// payload name works).
const LINK_TMP: &str = "..link_tmp";
/// Where a `..data` that is not a symlink is moved aside before the switch.
const CORRUPT_TMP: &str = "..corrupt_tmp";
/// Deepest payload path (segments) and deepest tree the writer walks or removes.
pub const MAX_DEPTH: usize = 64;
/// Longest directory entry name (Linux `NAME_MAX`).
const NAME_MAX: usize = 255;

/// What the target directory holds after a failed write.
#[derive(Debug)]
pub enum TargetState {
    /// The previous payload (if any) is served as before and nothing this write created remains.
    Unchanged,
    /// The previous payload is served as before, but the incomplete new generation (it may hold
    /// new secret values) could not be removed; the next write or cleanup removes it.
    Leftover { name: String, error: io::Error },
    /// The writer task did not finish (it panicked or was cancelled): the target holds either
    /// the previous or the new payload, plus leftovers that the next write removes.
    Unknown,
}

impl fmt::Display for TargetState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            TargetState::Unchanged => f.write_str("the target was not changed"),
            TargetState::Leftover { name, error } => write!(
                f,
                "the target still serves the previous files, but the incomplete new generation {name} could not be removed ({error}); the next write removes it"
            ),
            TargetState::Unknown => f.write_str(
                "the target serves either the previous or the new files; the next write removes leftovers",
            ),
        }
    }
}

static UNCHANGED: TargetState = TargetState::Unchanged;
static UNKNOWN: TargetState = TargetState::Unknown;

/// A failed write. Display says what failed and what state the target is in; the I/O cause is
/// the error's source.
#[derive(Debug, thiserror::Error)]
pub enum WriteError {
    #[error("invalid payload path {path:?}: {reason}; nothing was written")]
    InvalidPath { path: String, reason: String },
    #[error("payload path {path:?} conflicts with {other:?}; nothing was written")]
    Conflict { path: String, other: String },
    #[error(
        "{path}: exists and is not managed by the writer (not a symlink into ..data); nothing was written"
    )]
    Foreign { path: PathBuf },
    #[error("{path}: {context}; {state}")]
    Io {
        path: PathBuf,
        context: &'static str,
        #[source]
        source: io::Error,
        state: TargetState,
    },
    #[error("the writer task did not finish; {}", TargetState::Unknown)]
    Task {
        #[source]
        source: tokio::task::JoinError,
    },
}

impl WriteError {
    /// What the target holds after this failure.
    pub fn target_state(&self) -> &TargetState {
        match self {
            WriteError::Io { state, .. } => state,
            WriteError::Task { .. } => &UNKNOWN,
            _ => &UNCHANGED,
        }
    }
}

/// Something that went wrong after the new payload was published (it is served; the write
/// succeeded). Each is retried by the next write.
#[derive(Debug, thiserror::Error)]
pub enum WriteWarning {
    #[error(
        "{name}: an old generation could not be removed ({error}); it may still hold old secret values"
    )]
    StaleGeneration { name: String, error: io::Error },
    #[error("{name}: a leftover could not be removed ({error})")]
    Leftover { name: String, error: io::Error },
    #[error("fsync of the target directory failed ({error}): the new files are served but may not survive a crash")]
    NotDurable { error: io::Error },
}

/// Result of a write.
#[derive(Debug)]
pub struct WriteOutcome {
    /// False when the payload equalled the current one and no new generation was written.
    pub changed: bool,
    /// Name of the timestamp dir `..data` points at afterwards.
    pub data_dir: String,
    /// Cleanup that failed after the payload was published.
    pub warnings: Vec<WriteWarning>,
}

/// What [`AtomicWriter::cleanup`] removed, and what it could not remove.
#[derive(Debug, Default)]
pub struct CleanupReport {
    pub removed: Vec<String>,
    pub warnings: Vec<WriteWarning>,
}

/// Validate one payload path.
pub fn validate_payload_path(path: &str) -> Result<(), WriteError> {
    let bad = |reason: &str| WriteError::InvalidPath {
        path: path.to_string(),
        reason: reason.to_string(),
    };
    if path.is_empty() {
        return Err(bad("empty"));
    }
    if path.starts_with('/') {
        return Err(bad("must be relative"));
    }
    if path.contains('\0') {
        return Err(bad("contains NUL"));
    }
    if path.len() > 4096 {
        return Err(bad("too long"));
    }
    let mut depth = 0;
    for seg in path.split('/') {
        if seg.is_empty() || seg == "." {
            return Err(bad("empty or '.' path segment"));
        }
        if seg == ".." {
            return Err(bad("must not contain '..'"));
        }
        if seg.len() > NAME_MAX {
            return Err(bad("path segment longer than 255 bytes"));
        }
        depth += 1;
    }
    if depth > MAX_DEPTH {
        return Err(bad("more than 64 path segments"));
    }
    if path.starts_with("..") {
        return Err(bad(
            "must not start with '..' (reserved for ..data and timestamp dirs)",
        ));
    }
    Ok(())
}

fn validate_payload(files: &[OutFile]) -> Result<BTreeSet<String>, WriteError> {
    let mut paths: BTreeSet<&str> = BTreeSet::new();
    for f in files {
        validate_payload_path(&f.path)?;
        if f.mode > 0o7777 {
            return Err(WriteError::InvalidPath {
                path: f.path.clone(),
                reason: format!("mode {:#o} out of range", f.mode),
            });
        }
        if !paths.insert(&f.path) {
            return Err(WriteError::Conflict {
                path: f.path.clone(),
                other: f.path.clone(),
            });
        }
    }
    // A file must not be a directory of another: check every ancestor.
    for f in files {
        let mut prefix = f.path.as_str();
        while let Some((parent, _)) = prefix.rsplit_once('/') {
            if paths.contains(parent) {
                return Err(WriteError::Conflict {
                    path: f.path.clone(),
                    other: parent.to_string(),
                });
            }
            prefix = parent;
        }
    }
    Ok(files
        .iter()
        .map(|f| top_level(&f.path).to_string())
        .collect())
}

fn top_level(path: &str) -> &str {
    path.split('/').next().unwrap_or(path)
}

static COUNTER: AtomicU64 = AtomicU64::new(0);

fn timestamp_name() -> String {
    let t = time::OffsetDateTime::now_utc();
    format!(
        "..{:04}_{:02}_{:02}_{:02}_{:02}_{:02}.{:09}_{}_{}",
        t.year(),
        u8::from(t.month()),
        t.day(),
        t.hour(),
        t.minute(),
        t.second(),
        t.nanosecond(),
        std::process::id(),
        COUNTER.fetch_add(1, Ordering::Relaxed)
    )
}

/// Is `name` a timestamp-dir name: `..`, a digit, then only digits, `_` and `.` (ours and
/// kubelet's `..2006_01_02_15_04_05.<digits>`)? One path component by construction.
pub fn is_timestamp_name(name: &str) -> bool {
    let Some(rest) = name.strip_prefix("..") else {
        return false;
    };
    rest.len() <= 96
        && rest.bytes().next().is_some_and(|b| b.is_ascii_digit())
        && rest
            .bytes()
            .all(|b| b.is_ascii_digit() || b == b'_' || b == b'.')
        && !rest.contains("..")
}

/// What `..data` is.
#[derive(Debug, PartialEq, Eq)]
enum Current {
    /// Absent: a fresh target.
    None,
    /// A symlink to a timestamp dir that is a real directory in the target.
    Valid(String),
    /// Present but not such a link; `is_link` tells whether renaming over it replaces it.
    Corrupt { is_link: bool },
}

fn errno_is(e: &io::Error, kind: io::ErrorKind) -> bool {
    e.kind() == kind
}

/// Opens a directory entry of `dir` as a directory, never following a symlink.
fn open_dir_at(dir: BorrowedFd<'_>, name: &str) -> io::Result<OwnedFd> {
    Ok(rustix::fs::openat(
        dir,
        name,
        OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
        Mode::empty(),
    )?)
}

/// The type of an entry of `dir`, without following a symlink; `None` when absent.
fn entry_type(dir: BorrowedFd<'_>, name: &str) -> io::Result<Option<FileType>> {
    match rustix::fs::statat(dir, name, AtFlags::SYMLINK_NOFOLLOW) {
        Ok(st) => Ok(Some(FileType::from_raw_mode(st.st_mode))),
        Err(rustix::io::Errno::NOENT) => Ok(None),
        Err(e) => Err(e.into()),
    }
}

fn read_link_at(dir: BorrowedFd<'_>, name: &str) -> io::Result<Option<String>> {
    match rustix::fs::readlinkat(dir, name, Vec::new()) {
        Ok(t) => Ok(Some(t.to_string_lossy().into_owned())),
        Err(rustix::io::Errno::NOENT) | Err(rustix::io::Errno::INVAL) => Ok(None),
        Err(e) => Err(e.into()),
    }
}

/// Entry names of a directory (without `.` and `..`) when there are at most `limit`.
fn list_dir(dir: BorrowedFd<'_>, limit: usize) -> io::Result<Option<Vec<(String, FileType)>>> {
    let out = list_first(dir, limit.saturating_add(1))?;
    Ok((out.len() <= limit).then_some(out))
}

/// Removes the entry `name` of `dir`: a symlink or file is unlinked (never followed), a real
/// directory is emptied recursively (at most [`MAX_DEPTH`] deep) and removed.
fn remove_entry_at(dir: BorrowedFd<'_>, name: &str) -> io::Result<()> {
    remove_entry_depth(dir, name, 0)
}

fn remove_entry_depth(dir: BorrowedFd<'_>, name: &str, depth: usize) -> io::Result<()> {
    match entry_type(dir, name)? {
        None => return Ok(()),
        Some(FileType::Directory) => {}
        Some(_) => {
            return match rustix::fs::unlinkat(dir, name, AtFlags::empty()) {
                Ok(()) | Err(rustix::io::Errno::NOENT) => Ok(()),
                Err(e) => Err(e.into()),
            }
        }
    }
    if depth >= MAX_DEPTH {
        return Err(io::Error::other(format!(
            "directory tree deeper than {MAX_DEPTH} levels"
        )));
    }
    let sub = match open_dir_at(dir, name) {
        Ok(fd) => fd,
        Err(e) if errno_is(&e, io::ErrorKind::NotFound) => return Ok(()),
        Err(e) => return Err(e),
    };
    loop {
        // Bounded batches: remove what was listed, list again until empty.
        let batch = list_first(sub.as_fd(), 4096)?;
        if batch.is_empty() {
            break;
        }
        for (child, ft) in batch {
            if ft == FileType::Directory {
                remove_entry_depth(sub.as_fd(), &child, depth + 1)?;
            } else {
                match rustix::fs::unlinkat(sub.as_fd(), child.as_str(), AtFlags::empty()) {
                    Ok(()) | Err(rustix::io::Errno::NOENT) => {}
                    Err(e) => return Err(e.into()),
                }
            }
        }
    }
    match rustix::fs::unlinkat(dir, name, AtFlags::REMOVEDIR) {
        Ok(()) | Err(rustix::io::Errno::NOENT) => Ok(()),
        Err(e) => Err(e.into()),
    }
}

/// The first `n` entries of a directory.
fn list_first(dir: BorrowedFd<'_>, n: usize) -> io::Result<Vec<(String, FileType)>> {
    let mut out = Vec::new();
    for entry in rustix::fs::Dir::read_from(dir)? {
        let entry = entry?;
        let name = entry.file_name().to_bytes();
        if name == b"." || name == b".." {
            continue;
        }
        let name = String::from_utf8_lossy(name).into_owned();
        let ft = match entry.file_type() {
            FileType::Unknown => match entry_type(dir, &name)? {
                Some(t) => t,
                None => continue,
            },
            t => t,
        };
        out.push((name, ft));
        if out.len() >= n {
            break;
        }
    }
    Ok(out)
}

/// Atomic writer bound to one target directory.
#[derive(Debug, Clone)]
pub struct AtomicWriter {
    target: PathBuf,
}

/// Errors of one write, with the cleanup that undoes what it created so far.
struct Undo<'a> {
    target: &'a Path,
    dir: BorrowedFd<'a>,
    /// The new timestamp dir, once created.
    ts_name: Option<String>,
    /// User-visible symlinks created by this write (dangling until the switch).
    links: Vec<String>,
}

impl Undo<'_> {
    /// Removes what this write created and returns the error with the resulting state.
    fn fail(&self, path: PathBuf, context: &'static str, source: io::Error) -> WriteError {
        for l in &self.links {
            // dangling symlinks: harmless if they stay (cleanup removes them)
            let _ = rustix::fs::unlinkat(self.dir, l.as_str(), AtFlags::empty());
        }
        let _ = rustix::fs::unlinkat(self.dir, LINK_TMP, AtFlags::empty());
        let _ = rustix::fs::unlinkat(self.dir, DATA_DIR_TMP, AtFlags::empty());
        let state = match &self.ts_name {
            None => TargetState::Unchanged,
            Some(ts) => match remove_entry_at(self.dir, ts) {
                Ok(()) => TargetState::Unchanged,
                Err(error) => TargetState::Leftover {
                    name: ts.clone(),
                    error,
                },
            },
        };
        let _ = rustix::fs::fsync(self.dir);
        WriteError::Io {
            path,
            context,
            source,
            state,
        }
    }

    fn path(&self, name: &str) -> PathBuf {
        self.target.join(name)
    }
}

fn io_unchanged(path: &Path, context: &'static str) -> impl FnOnce(io::Error) -> WriteError {
    let path = path.to_path_buf();
    move |source| WriteError::Io {
        path,
        context,
        source,
        state: TargetState::Unchanged,
    }
}

impl AtomicWriter {
    pub fn new(target: impl Into<PathBuf>) -> AtomicWriter {
        AtomicWriter {
            target: target.into(),
        }
    }

    pub fn target(&self) -> &Path {
        &self.target
    }

    /// Opens the target directory (the path itself may go through symlinks: it is the caller's;
    /// nothing inside it is followed).
    fn open_target(&self) -> io::Result<OwnedFd> {
        Ok(rustix::fs::open(
            &self.target,
            OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC,
            Mode::empty(),
        )?)
    }

    fn current(dir: BorrowedFd<'_>) -> io::Result<Current> {
        match entry_type(dir, DATA_DIR)? {
            None => Ok(Current::None),
            Some(FileType::Symlink) => {
                let Some(text) = read_link_at(dir, DATA_DIR)? else {
                    return Ok(Current::Corrupt { is_link: true });
                };
                if is_timestamp_name(&text) && entry_type(dir, &text)? == Some(FileType::Directory)
                {
                    Ok(Current::Valid(text))
                } else {
                    Ok(Current::Corrupt { is_link: true })
                }
            }
            Some(_) => Ok(Current::Corrupt { is_link: false }),
        }
    }

    /// The timestamp dir `..data` points at, if `..data` is a valid link into the target.
    pub fn current_data_dir(&self) -> Result<Option<String>, WriteError> {
        let dir = match self.open_target() {
            Ok(d) => d,
            Err(e) if errno_is(&e, io::ErrorKind::NotFound) => return Ok(None),
            Err(e) => return Err(io_unchanged(&self.target, "open target directory")(e)),
        };
        match Self::current(dir.as_fd()).map_err(io_unchanged(&self.target, "read ..data"))? {
            Current::Valid(name) => Ok(Some(name)),
            _ => Ok(None),
        }
    }

    /// Remove leftovers of an interrupted write (also done by every write).
    pub fn cleanup(&self) -> Result<CleanupReport, WriteError> {
        let dir = match self.open_target() {
            Ok(d) => d,
            Err(e) if errno_is(&e, io::ErrorKind::NotFound) => return Ok(CleanupReport::default()),
            Err(e) => return Err(io_unchanged(&self.target, "open target directory")(e)),
        };
        let dir = dir.as_fd();
        let current = Self::current(dir).map_err(io_unchanged(&self.target, "read ..data"))?;
        let (keep, names) = match &current {
            Current::Valid(ts) => (
                Some(ts.as_str()),
                payload_top_level(dir, ts).map_err(io_unchanged(
                    &self.target.join(ts),
                    "read payload directory",
                ))?,
            ),
            _ => (None, BTreeSet::new()),
        };
        let mut report = CleanupReport::default();
        sweep(dir, keep, &names, &mut report)
            .map_err(io_unchanged(&self.target, "read target directory"))?;
        if !report.removed.is_empty() {
            if let Err(error) = rustix::fs::fsync(dir) {
                report.warnings.push(WriteWarning::NotDurable {
                    error: error.into(),
                });
            }
        }
        Ok(report)
    }

    /// [`AtomicWriter::cleanup`] on tokio's blocking pool.
    pub async fn cleanup_async(&self) -> Result<CleanupReport, WriteError> {
        let w = self.clone();
        tokio::task::spawn_blocking(move || w.cleanup())
            .await
            .map_err(|source| WriteError::Task { source })?
    }

    /// [`AtomicWriter::write`] on tokio's blocking pool (never blocks an async worker). The
    /// files are moved in and dropped (zeroized) when the write is done.
    pub async fn write_async(&self, files: Vec<OutFile>) -> Result<WriteOutcome, WriteError> {
        let w = self.clone();
        tokio::task::spawn_blocking(move || w.write(&files))
            .await
            .map_err(|source| WriteError::Task { source })?
    }

    /// Publish `files` atomically. Nothing is written when a path is invalid; see
    /// [`WriteError::target_state`] for what a failure leaves.
    pub fn write(&self, files: &[OutFile]) -> Result<WriteOutcome, WriteError> {
        let new_names = validate_payload(files)?;
        fs::create_dir_all(&self.target)
            .map_err(io_unchanged(&self.target, "create target directory"))?;
        let dir_fd = self
            .open_target()
            .map_err(io_unchanged(&self.target, "open target directory"))?;
        let dir = dir_fd.as_fd();
        let current = Self::current(dir).map_err(io_unchanged(&self.target, "read ..data"))?;

        if let Current::Valid(old) = &current {
            let same = unchanged(dir, old, files)
                .map_err(io_unchanged(&self.target.join(old), "read current payload"))?;
            if same {
                let mut report = CleanupReport::default();
                // Leftovers of earlier runs (e.g. an old generation that could not be removed).
                if let Err(error) = sweep(dir, Some(old), &new_names, &mut report) {
                    report.warnings.push(WriteWarning::Leftover {
                        name: ".".into(),
                        error,
                    });
                }
                return Ok(WriteOutcome {
                    changed: false,
                    data_dir: old.clone(),
                    warnings: report.warnings,
                });
            }
        }
        let old_names = match &current {
            Current::Valid(old) => payload_top_level(dir, old)
                .map_err(io_unchanged(&self.target.join(old), "read current payload"))?,
            _ => BTreeSet::new(),
        };

        // Refuse to shadow user-visible entries we do not manage.
        for name in &new_names {
            let p = self.target.join(name);
            match entry_type(dir, name).map_err(io_unchanged(&p, "stat user-visible name"))? {
                None => {}
                Some(FileType::Symlink) => {
                    let text = read_link_at(dir, name).map_err(io_unchanged(&p, "read symlink"))?;
                    if text.as_deref() != Some(&format!("{DATA_DIR}/{name}")) {
                        return Err(WriteError::Foreign { path: p });
                    }
                }
                Some(_) => return Err(WriteError::Foreign { path: p }),
            }
        }

        // 3. new payload into a fresh timestamp dir
        let mut undo = Undo {
            target: &self.target,
            dir,
            ts_name: None,
            links: Vec::new(),
        };
        let ts_name = loop {
            let name = timestamp_name();
            match rustix::fs::mkdirat(dir, name.as_str(), Mode::from_raw_mode(0o700)) {
                Ok(()) => break name,
                Err(rustix::io::Errno::EXIST) => continue,
                Err(e) => {
                    return Err(undo.fail(undo.path(&name), "create timestamp directory", e.into()))
                }
            }
        };
        undo.ts_name = Some(ts_name.clone());
        if let Err((path, context, e)) = fill_payload(dir, &ts_name, files) {
            return Err(undo.fail(self.target.join(&ts_name).join(path), context, e));
        }

        // 4. user-visible symlinks for new names (dangling until the switch)
        for name in new_names.difference(&old_names) {
            match entry_type(dir, name) {
                Ok(Some(_)) => continue, // already ours (checked above)
                Ok(None) => {}
                Err(e) => return Err(undo.fail(undo.path(name), "stat user-visible name", e)),
            }
            if let Err(e) = remove_entry_at(dir, LINK_TMP) {
                return Err(undo.fail(undo.path(LINK_TMP), "remove stale helper link", e));
            }
            let link_text = format!("{DATA_DIR}/{name}");
            if let Err(e) = rustix::fs::symlinkat(link_text.as_str(), dir, LINK_TMP) {
                return Err(undo.fail(undo.path(LINK_TMP), "create symlink", e.into()));
            }
            if let Err(e) = rustix::fs::renameat(dir, LINK_TMP, dir, name.as_str()) {
                return Err(undo.fail(undo.path(name), "rename symlink", e.into()));
            }
            undo.links.push(name.clone());
        }

        // 5. the switch (a `..data` that is not a symlink is moved aside first)
        if current == (Current::Corrupt { is_link: false }) {
            if let Err(e) = remove_entry_at(dir, CORRUPT_TMP) {
                return Err(undo.fail(undo.path(CORRUPT_TMP), "remove stale leftover", e));
            }
            if let Err(e) = rustix::fs::renameat(dir, DATA_DIR, dir, CORRUPT_TMP) {
                return Err(undo.fail(undo.path(DATA_DIR), "move corrupt ..data aside", e.into()));
            }
        }
        if let Err(e) = remove_entry_at(dir, DATA_DIR_TMP) {
            return Err(undo.fail(undo.path(DATA_DIR_TMP), "remove stale ..data_tmp", e));
        }
        if let Err(e) = rustix::fs::symlinkat(ts_name.as_str(), dir, DATA_DIR_TMP) {
            return Err(undo.fail(undo.path(DATA_DIR_TMP), "create ..data_tmp", e.into()));
        }
        if let Err(e) = rustix::fs::renameat(dir, DATA_DIR_TMP, dir, DATA_DIR) {
            return Err(undo.fail(
                undo.path(DATA_DIR),
                "rename ..data_tmp over ..data",
                e.into(),
            ));
        }
        // Published: from here on failures are warnings.
        let mut report = CleanupReport::default();
        if let Err(error) = rustix::fs::fsync(dir) {
            report.warnings.push(WriteWarning::NotDurable {
                error: error.into(),
            });
        }

        // 6. names that left the payload, 7. every other generation and leftover
        if let Err(error) = sweep(dir, Some(&ts_name), &new_names, &mut report) {
            report.warnings.push(WriteWarning::Leftover {
                name: ".".into(),
                error,
            });
        }
        if let Err(error) = rustix::fs::fsync(dir) {
            report.warnings.push(WriteWarning::NotDurable {
                error: error.into(),
            });
        }
        Ok(WriteOutcome {
            changed: true,
            data_dir: ts_name,
            warnings: report.warnings,
        })
    }
}

/// Top-level names of a payload directory (an entry of the target, not followed).
fn payload_top_level(dir: BorrowedFd<'_>, ts: &str) -> io::Result<BTreeSet<String>> {
    let sub = match open_dir_at(dir, ts) {
        Ok(fd) => fd,
        Err(e) if errno_is(&e, io::ErrorKind::NotFound) => return Ok(BTreeSet::new()),
        Err(e) => return Err(e),
    };
    Ok(list_first(sub.as_fd(), usize::MAX)?
        .into_iter()
        .map(|(n, _)| n)
        .collect())
}

/// Removes, in the target: timestamp dirs other than `keep`, `..*_tmp` leftovers, and our
/// user-visible symlinks (`<name> -> ..data/<name>`) whose name is not in `names`. Failures to
/// remove become warnings; only failing to list the target is an error.
fn sweep(
    dir: BorrowedFd<'_>,
    keep: Option<&str>,
    names: &BTreeSet<String>,
    report: &mut CleanupReport,
) -> io::Result<()> {
    for (name, ft) in list_first(dir, usize::MAX)? {
        let stale_generation = is_timestamp_name(&name) && keep != Some(name.as_str());
        let tmp_leftover = name.starts_with("..") && name.ends_with("_tmp");
        if stale_generation || tmp_leftover {
            match remove_entry_at(dir, &name) {
                Ok(()) => report.removed.push(name),
                Err(error) if stale_generation && ft == FileType::Directory => report
                    .warnings
                    .push(WriteWarning::StaleGeneration { name, error }),
                Err(error) => report.warnings.push(WriteWarning::Leftover { name, error }),
            }
        } else if !name.starts_with("..") && ft == FileType::Symlink && !names.contains(&name) {
            let ours = read_link_at(dir, &name)
                .ok()
                .flatten()
                .is_some_and(|t| t == format!("{DATA_DIR}/{name}"));
            if ours {
                match rustix::fs::unlinkat(dir, name.as_str(), AtFlags::empty()) {
                    Ok(()) | Err(rustix::io::Errno::NOENT) => report.removed.push(name),
                    Err(e) => report.warnings.push(WriteWarning::Leftover {
                        name,
                        error: e.into(),
                    }),
                }
            }
        }
    }
    Ok(())
}

/// True when the payload dir `ts` holds exactly these files (regular files, same modes and
/// contents) and nothing else. Never follows a link; stops at the first difference, so a
/// planted huge tree is not walked.
fn unchanged(dir: BorrowedFd<'_>, ts: &str, files: &[OutFile]) -> io::Result<bool> {
    let expected: BTreeMap<&str, &OutFile> = files.iter().map(|f| (f.path.as_str(), f)).collect();
    let dirs: BTreeSet<&str> = files
        .iter()
        .flat_map(|f| f.path.match_indices('/').map(move |(i, _)| &f.path[..i]))
        .collect();
    let root = match open_dir_at(dir, ts) {
        Ok(fd) => fd,
        Err(e) if errno_is(&e, io::ErrorKind::NotFound) => return Ok(false),
        Err(e) => return Err(e),
    };
    let mut seen = 0usize;
    // (directory fd, its payload-relative prefix)
    let mut stack: Vec<(OwnedFd, String)> = vec![(root, String::new())];
    while let Some((fd, prefix)) = stack.pop() {
        let Some(entries) = list_dir(fd.as_fd(), files.len() + 1)? else {
            return Ok(false);
        };
        for (name, ft) in entries {
            let rel = if prefix.is_empty() {
                name.clone()
            } else {
                format!("{prefix}/{name}")
            };
            match ft {
                FileType::Directory if dirs.contains(rel.as_str()) => {
                    let sub = open_dir_at(fd.as_fd(), &name)?;
                    stack.push((sub, rel));
                }
                FileType::RegularFile => {
                    let Some(want) = expected.get(rel.as_str()) else {
                        return Ok(false);
                    };
                    seen += 1;
                    if !same_file(fd.as_fd(), &name, want)? {
                        return Ok(false);
                    }
                }
                _ => return Ok(false),
            }
        }
    }
    Ok(seen == files.len())
}

fn same_file(dir: BorrowedFd<'_>, name: &str, want: &OutFile) -> io::Result<bool> {
    let fd = match rustix::fs::openat(
        dir,
        name,
        OFlags::RDONLY | OFlags::NOFOLLOW | OFlags::NONBLOCK | OFlags::CLOEXEC,
        Mode::empty(),
    ) {
        Ok(fd) => fd,
        Err(rustix::io::Errno::NOENT) | Err(rustix::io::Errno::LOOP) => return Ok(false),
        Err(e) => return Err(e.into()),
    };
    let st = rustix::fs::fstat(&fd)?;
    if FileType::from_raw_mode(st.st_mode) != FileType::RegularFile
        || st.st_mode & 0o7777 != want.mode
        || u64::try_from(st.st_size).ok() != Some(want.contents.len() as u64)
    {
        return Ok(false);
    }
    let mut cur = Zeroizing::new(Vec::with_capacity(want.contents.len()));
    File::from(fd)
        .take(want.contents.len() as u64 + 1)
        .read_to_end(&mut cur)?;
    Ok(*cur == *want.contents)
}

type FillError = (String, &'static str, io::Error);

/// Writes the payload into the new timestamp dir `ts` (created 0700 by the caller).
fn fill_payload(dir: BorrowedFd<'_>, ts: &str, files: &[OutFile]) -> Result<(), FillError> {
    let at = |p: &str, context: &'static str| {
        let p = p.to_string();
        move |e: rustix::io::Errno| (p, context, io::Error::from(e))
    };
    let root = open_dir_at(dir, ts).map_err(|e| (String::new(), "open timestamp directory", e))?;
    // Directories by payload-relative path, created on demand (0755), fsynced at the end.
    let mut dirs: BTreeMap<String, OwnedFd> = BTreeMap::new();
    for f in files {
        let (parent, file_name) = match f.path.rsplit_once('/') {
            Some((p, n)) => (Some(p), n),
            None => (None, f.path.as_str()),
        };
        let parent_fd: BorrowedFd<'_> = match parent {
            None => root.as_fd(),
            Some(p) => {
                let mut built = String::new();
                for seg in p.split('/') {
                    let rel = if built.is_empty() {
                        seg.to_string()
                    } else {
                        format!("{built}/{seg}")
                    };
                    if !dirs.contains_key(&rel) {
                        let base = match dirs.get(&built) {
                            Some(fd) => fd.as_fd(),
                            None => root.as_fd(),
                        };
                        rustix::fs::mkdirat(base, seg, Mode::from_raw_mode(0o755))
                            .map_err(at(&rel, "create payload subdirectory"))?;
                        let fd = open_dir_at(base, seg)
                            .map_err(|e| (rel.clone(), "open payload subdirectory", e))?;
                        // umask may have narrowed 0755
                        rustix::fs::fchmod(&fd, Mode::from_raw_mode(0o755))
                            .map_err(at(&rel, "chmod payload subdirectory"))?;
                        dirs.insert(rel.clone(), fd);
                    }
                    built = rel;
                }
                match dirs.get(&built) {
                    Some(fd) => fd.as_fd(),
                    None => root.as_fd(),
                }
            }
        };
        let fd = rustix::fs::openat(
            parent_fd,
            file_name,
            OFlags::WRONLY | OFlags::CREATE | OFlags::EXCL | OFlags::NOFOLLOW | OFlags::CLOEXEC,
            Mode::from_raw_mode(0o600),
        )
        .map_err(at(&f.path, "create payload file"))?;
        let mut file = File::from(fd);
        file.write_all(&f.contents)
            .map_err(|e| (f.path.clone(), "write payload file", e))?;
        rustix::fs::fchmod(&file, Mode::from_raw_mode(f.mode))
            .map_err(at(&f.path, "chmod payload file"))?;
        file.sync_all()
            .map_err(|e| (f.path.clone(), "fsync payload file", e))?;
    }
    // deepest first so each directory entry is durable before its parent's
    for (rel, fd) in dirs.iter().rev() {
        rustix::fs::fsync(fd).map_err(at(rel, "fsync payload directory"))?;
    }
    rustix::fs::fchmod(&root, Mode::from_raw_mode(0o755))
        .map_err(at("", "chmod timestamp directory"))?;
    rustix::fs::fsync(&root).map_err(at("", "fsync timestamp directory"))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::{symlink, PermissionsExt};

    fn f(path: &str, mode: u32, c: &str) -> OutFile {
        OutFile::new(path, mode, c.as_bytes().to_vec())
    }

    fn read(dir: &Path, p: &str) -> String {
        fs::read_to_string(dir.join(p)).unwrap()
    }

    fn mode(p: &Path) -> u32 {
        fs::metadata(p).unwrap().permissions().mode() & 0o7777
    }

    fn entries(dir: &Path) -> Vec<String> {
        let mut v: Vec<String> = fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        v.sort();
        v
    }

    #[test]
    fn layout_modes_and_removal() {
        let t = tempfile::tempdir().unwrap();
        let w = AtomicWriter::new(t.path().join("mnt"));
        let out = w
            .write(&[
                f("a", 0o644, "A1"),
                f("b", 0o600, "B1"),
                f("h/0", 0o640, "H0"),
                f("h/1", 0o640, "H1"),
                f("d/e/f", 0o644, "DEF"),
            ])
            .unwrap();
        assert!(out.changed);
        let dir = w.target();
        assert_eq!(read(dir, "a"), "A1");
        assert_eq!(read(dir, "h/1"), "H1");
        assert_eq!(read(dir, "d/e/f"), "DEF");
        assert_eq!(mode(&dir.join("b")), 0o600);
        assert_eq!(mode(&dir.join("h/0")), 0o640);
        assert_eq!(fs::read_link(dir.join("a")).unwrap(), Path::new("..data/a"));
        assert_eq!(fs::read_link(dir.join("h")).unwrap(), Path::new("..data/h"));
        assert_eq!(
            fs::read_link(dir.join("..data")).unwrap().to_string_lossy(),
            out.data_dir
        );
        assert_eq!(mode(&dir.join(&out.data_dir)), 0o755);
        let e = entries(dir);
        assert_eq!(e.len(), 6, "{e:?}"); // ..data, the timestamp dir, a, b, d, h

        // unchanged payload: nothing touched
        let again = w
            .write(&[
                f("a", 0o644, "A1"),
                f("b", 0o600, "B1"),
                f("h/0", 0o640, "H0"),
                f("h/1", 0o640, "H1"),
                f("d/e/f", 0o644, "DEF"),
            ])
            .unwrap();
        assert!(!again.changed);
        assert_eq!(again.data_dir, out.data_dir);

        // a mode change alone is a change
        let m = w
            .write(&[
                f("a", 0o600, "A1"),
                f("b", 0o600, "B1"),
                f("h/0", 0o640, "H0"),
                f("h/1", 0o640, "H1"),
                f("d/e/f", 0o644, "DEF"),
            ])
            .unwrap();
        assert!(m.changed);
        assert_eq!(mode(&dir.join("a")), 0o600);

        // names leave the payload
        let out2 = w
            .write(&[f("a", 0o644, "A2"), f("c", 0o644, "C2")])
            .unwrap();
        assert_eq!(read(dir, "a"), "A2");
        assert_eq!(read(dir, "c"), "C2");
        for gone in ["b", "h", "d"] {
            assert!(fs::symlink_metadata(dir.join(gone)).is_err(), "{gone}");
        }
        assert!(!dir.join(&out.data_dir).exists());
        assert_eq!(entries(dir), {
            let mut v = vec![
                "..data".to_string(),
                out2.data_dir.clone(),
                "a".into(),
                "c".into(),
            ];
            v.sort();
            v
        });

        // empty payload is allowed
        w.write(&[]).unwrap();
        let e = entries(dir);
        assert_eq!(e.len(), 2, "{e:?}");
    }

    #[test]
    fn invalid_paths_write_nothing() {
        let t = tempfile::tempdir().unwrap();
        let w = AtomicWriter::new(t.path());
        w.write(&[f("keep", 0o644, "K")]).unwrap();
        let before = entries(t.path());
        for bad in [
            vec![f("../x", 0o644, "")],
            vec![f("/abs", 0o644, "")],
            vec![f("a/../b", 0o644, "")],
            vec![f("..data", 0o644, "")],
            vec![f("..2020_x", 0o644, "")],
            vec![f("a//b", 0o644, "")],
            vec![f("", 0o644, "")],
            vec![f("./a", 0o644, "")],
            vec![f("a", 0o644, ""), f("a", 0o600, "")],
            vec![f("a", 0o644, ""), f("a/b", 0o644, "")],
            vec![f("x/y", 0o644, ""), f("x/y/z", 0o644, "")],
            vec![f("m", 0o10000, "")],
        ] {
            assert!(w.write(&bad).is_err(), "{bad:?}");
            assert_eq!(entries(t.path()), before);
        }
        assert_eq!(read(t.path(), "keep"), "K");
    }

    #[test]
    fn refuses_to_shadow_foreign_files() {
        let t = tempfile::tempdir().unwrap();
        fs::write(t.path().join("mine"), "user data").unwrap();
        let w = AtomicWriter::new(t.path());
        assert!(matches!(
            w.write(&[f("mine", 0o644, "x")]),
            Err(WriteError::Foreign { .. })
        ));
        assert_eq!(read(t.path(), "mine"), "user data");
        assert!(fs::symlink_metadata(t.path().join("..data")).is_err());
    }

    #[test]
    fn cleanup_removes_leftovers_only() {
        let t = tempfile::tempdir().unwrap();
        let w = AtomicWriter::new(t.path());
        let cur = w.write(&[f("a", 0o644, "A")]).unwrap();
        let d = t.path();
        fs::create_dir(d.join("..2001_01_01_00_00_00.000000001_1_0")).unwrap();
        fs::write(d.join("..2001_01_01_00_00_00.000000001_1_0/x"), "old").unwrap();
        symlink("..2001_01_01_00_00_00.000000001_1_0", d.join("..data_tmp")).unwrap();
        symlink("..data/b", d.join("..b_tmp")).unwrap();
        symlink("..data/gone", d.join("gone")).unwrap();
        fs::write(d.join("user-file"), "u").unwrap();
        let r = w.cleanup().unwrap();
        assert_eq!(r.removed.len(), 4, "{r:?}");
        let mut expect = vec![
            "..data".to_string(),
            cur.data_dir,
            "a".into(),
            "user-file".into(),
        ];
        expect.sort();
        assert_eq!(entries(d), expect);
        assert_eq!(read(d, "a"), "A");
        assert!(w.cleanup().unwrap().removed.is_empty());
        // cleanup of a missing directory is fine
        AtomicWriter::new(d.join("nope")).cleanup().unwrap();
    }

    #[test]
    fn timestamp_names_are_unique_and_recognised() {
        let a = timestamp_name();
        let b = timestamp_name();
        assert_ne!(a, b);
        assert!(is_timestamp_name(&a), "{a}");
        assert!(!is_timestamp_name("..data"));
        assert!(!is_timestamp_name("..data_tmp"));
        assert!(a.starts_with("..20"), "{a}");
    }
}
