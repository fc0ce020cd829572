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
//!    also a directory of another);
//! 2. skips everything when the payload equals the current one;
//! 3. writes the new payload into a fresh timestamp dir (0700 while writing), each file with its
//!    mode and fsynced, then directories fsynced and the dir made 0755;
//! 4. creates the user-visible symlinks of names that are new (they dangle until step 5, which
//!    looks like "absent", consistent with the old payload);
//! 5. creates `..data_tmp -> <new dir>` and renames it over `..data` (the one atomic switch);
//! 6. removes the user-visible symlinks of names that left the payload (they dangle after step 5,
//!    consistent with the new payload);
//! 7. removes the old timestamp dir last.
//!
//! A crash at any point therefore shows, through `..data`, either the complete old or the
//! complete new payload. [`AtomicWriter::cleanup`] removes leftovers (`..*_tmp`, timestamp
//! dirs `..data` does not point at, dangling user-visible symlinks into `..data`).
//!
//! Readers that need several files from one generation should resolve `..data` once
//! (`readlink`) and read through the timestamp directory; a reader that reads the user-visible
//! names one by one gets each file atomically but may see different generations across files,
//! exactly as with Kubernetes projected volumes.

use std::collections::{BTreeMap, BTreeSet};
use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::{symlink, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

use zeroize::Zeroizing;

pub use render::output::OutFile;

pub const DATA_DIR: &str = "..data";
pub const DATA_DIR_TMP: &str = "..data_tmp";

#[derive(Debug, thiserror::Error)]
pub enum WriteError {
    #[error("invalid payload path {path:?}: {reason}")]
    InvalidPath { path: String, reason: String },
    #[error("payload path {path:?} conflicts with {other:?}")]
    Conflict { path: String, other: String },
    #[error("{path}: {context}: {source}")]
    Io {
        path: PathBuf,
        context: &'static str,
        #[source]
        source: io::Error,
    },
    #[error("{path}: exists and is not managed by the writer (not a symlink into ..data)")]
    Foreign { path: PathBuf },
}

fn io_err(path: &Path, context: &'static str) -> impl FnOnce(io::Error) -> WriteError {
    let path = path.to_path_buf();
    move |source| WriteError::Io {
        path,
        context,
        source,
    }
}

/// Result of a write.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WriteOutcome {
    /// False when the payload equalled the current one and nothing was touched.
    pub changed: bool,
    /// Name of the timestamp dir `..data` points at afterwards.
    pub data_dir: String,
}

/// What [`AtomicWriter::cleanup`] removed.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CleanupReport {
    pub removed: Vec<String>,
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
    for seg in path.split('/') {
        if seg.is_empty() || seg == "." {
            return Err(bad("empty or '.' path segment"));
        }
        if seg == ".." {
            return Err(bad("must not contain '..'"));
        }
        if seg.len() > 255 {
            return Err(bad("path segment longer than 255 bytes"));
        }
    }
    if path.starts_with("..") {
        return Err(bad(
            "must not start with '..' (reserved for ..data and timestamp dirs)",
        ));
    }
    Ok(())
}

fn validate_payload(files: &[OutFile]) -> Result<BTreeSet<String>, WriteError> {
    let mut paths: BTreeMap<&str, ()> = BTreeMap::new();
    for f in files {
        validate_payload_path(&f.path)?;
        if f.mode > 0o7777 {
            return Err(WriteError::InvalidPath {
                path: f.path.clone(),
                reason: format!("mode {:#o} out of range", f.mode),
            });
        }
        if paths.insert(&f.path, ()).is_some() {
            return Err(WriteError::Conflict {
                path: f.path.clone(),
                other: f.path.clone(),
            });
        }
    }
    // A file must not be a directory of another: sorted order puts "a" right before "a/..."
    // (or before "a-x", "a.x" which sort between: check every ancestor instead).
    for f in files {
        let mut prefix = f.path.as_str();
        while let Some((parent, _)) = prefix.rsplit_once('/') {
            if paths.contains_key(parent) {
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

fn fsync_dir(dir: &Path) -> Result<(), WriteError> {
    File::open(dir)
        .and_then(|f| f.sync_all())
        .map_err(io_err(dir, "fsync directory"))
}

static COUNTER: AtomicU64 = AtomicU64::new(0);

fn timestamp_name() -> String {
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default();
    let secs = now.as_secs();
    // civil date from days since epoch (Howard Hinnant's algorithm), UTC
    let days = (secs / 86_400) as i64;
    let rem = secs % 86_400;
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!(
        "..{y:04}_{m:02}_{d:02}_{:02}_{:02}_{:02}.{:09}_{}_{}",
        rem / 3600,
        (rem / 60) % 60,
        rem % 60,
        now.subsec_nanos(),
        std::process::id(),
        COUNTER.fetch_add(1, Ordering::Relaxed)
    )
}

/// Is `name` one of our timestamp dirs (`..` + digit)?
fn is_timestamp_name(name: &str) -> bool {
    name.strip_prefix("..")
        .and_then(|r| r.bytes().next())
        .is_some_and(|b| b.is_ascii_digit())
}

/// Atomic writer bound to one target directory.
#[derive(Debug, Clone)]
pub struct AtomicWriter {
    target: PathBuf,
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

    /// The timestamp dir `..data` points at, if any.
    pub fn current_data_dir(&self) -> Result<Option<String>, WriteError> {
        let link = self.target.join(DATA_DIR);
        match fs::read_link(&link) {
            Ok(p) => Ok(Some(p.to_string_lossy().into_owned())),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(io_err(&link, "read ..data")(e)),
        }
    }

    /// Remove leftovers of an interrupted write. Call once on start.
    pub fn cleanup(&self) -> Result<CleanupReport, WriteError> {
        let mut report = CleanupReport::default();
        let entries = match fs::read_dir(&self.target) {
            Ok(e) => e,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(report),
            Err(e) => return Err(io_err(&self.target, "read target directory")(e)),
        };
        let current = self.current_data_dir()?;
        let current_names = match &current {
            Some(d) => self.payload_top_level(d)?,
            None => BTreeSet::new(),
        };
        for entry in entries {
            let entry = entry.map_err(io_err(&self.target, "read target directory"))?;
            let name = entry.file_name().to_string_lossy().into_owned();
            let path = entry.path();
            let ft = entry
                .file_type()
                .map_err(io_err(&path, "stat directory entry"))?;
            let tmp_leftover = name.starts_with("..") && name.ends_with("_tmp");
            let orphan_dir = is_timestamp_name(&name) && current.as_deref() != Some(name.as_str());
            if tmp_leftover || orphan_dir {
                remove_any(&path, ft.is_dir() && !ft.is_symlink())?;
                report.removed.push(name);
            } else if !name.starts_with("..") && ft.is_symlink() {
                let dest = fs::read_link(&path).map_err(io_err(&path, "read symlink"))?;
                if dest == Path::new(DATA_DIR).join(&name) && !current_names.contains(&name) {
                    fs::remove_file(&path).map_err(io_err(&path, "remove stale symlink"))?;
                    report.removed.push(name);
                }
            }
        }
        if !report.removed.is_empty() {
            fsync_dir(&self.target)?;
        }
        Ok(report)
    }

    fn payload_top_level(&self, data_dir: &str) -> Result<BTreeSet<String>, WriteError> {
        let dir = self.target.join(data_dir);
        let mut out = BTreeSet::new();
        match fs::read_dir(&dir) {
            Ok(entries) => {
                for e in entries {
                    let e = e.map_err(io_err(&dir, "read payload directory"))?;
                    out.insert(e.file_name().to_string_lossy().into_owned());
                }
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(io_err(&dir, "read payload directory")(e)),
        }
        Ok(out)
    }

    /// True when the current payload has exactly these files, contents and modes.
    fn unchanged(&self, data_dir: &str, files: &[OutFile]) -> Result<bool, WriteError> {
        let dir = self.target.join(data_dir);
        let mut existing = BTreeSet::new();
        collect_files(&dir, "", &mut existing)?;
        if existing.len() != files.len() {
            return Ok(false);
        }
        for f in files {
            if !existing.contains(&f.path) {
                return Ok(false);
            }
            let p = dir.join(&f.path);
            let meta = match fs::symlink_metadata(&p) {
                Ok(m) => m,
                Err(_) => return Ok(false),
            };
            if !meta.is_file() || meta.permissions().mode() & 0o7777 != f.mode {
                return Ok(false);
            }
            let cur = Zeroizing::new(fs::read(&p).map_err(io_err(&p, "read payload file"))?);
            if *cur != *f.contents {
                return Ok(false);
            }
        }
        Ok(true)
    }

    /// Publish `files` atomically. Nothing is written when a path is invalid.
    pub fn write(&self, files: &[OutFile]) -> Result<WriteOutcome, WriteError> {
        let new_names = validate_payload(files)?;
        fs::create_dir_all(&self.target)
            .map_err(io_err(&self.target, "create target directory"))?;

        let old_dir = self.current_data_dir()?;
        if let Some(old) = &old_dir {
            if self.unchanged(old, files)? {
                return Ok(WriteOutcome {
                    changed: false,
                    data_dir: old.clone(),
                });
            }
        }
        let old_names = match &old_dir {
            Some(d) => self.payload_top_level(d)?,
            None => BTreeSet::new(),
        };

        // Refuse to shadow user-visible entries we do not manage.
        for name in &new_names {
            let p = self.target.join(name);
            match fs::symlink_metadata(&p) {
                Ok(m) => {
                    let ours = m.file_type().is_symlink()
                        && fs::read_link(&p)
                            .map(|d| d == Path::new(DATA_DIR).join(name))
                            .unwrap_or(false);
                    if !ours {
                        return Err(WriteError::Foreign { path: p });
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                Err(e) => return Err(io_err(&p, "stat user-visible name")(e)),
            }
        }

        // 3. new payload into a fresh timestamp dir
        let (ts_name, ts_dir) = loop {
            let name = timestamp_name();
            let dir = self.target.join(&name);
            match fs::create_dir(&dir) {
                Ok(()) => break (name, dir),
                Err(e) if e.kind() == io::ErrorKind::AlreadyExists => continue,
                Err(e) => return Err(io_err(&dir, "create timestamp directory")(e)),
            }
        };
        if let Err(e) = self.fill_payload(&ts_dir, files) {
            let _ = fs::remove_dir_all(&ts_dir);
            return Err(e);
        }

        // 4. user-visible symlinks for new names (dangling until the switch)
        for name in new_names.difference(&old_names) {
            let link = self.target.join(name);
            if fs::symlink_metadata(&link).is_ok() {
                continue; // already ours (checked above)
            }
            let tmp = self.target.join(format!("..link_{name}_tmp"));
            let _ = fs::remove_file(&tmp);
            symlink(Path::new(DATA_DIR).join(name), &tmp)
                .map_err(io_err(&tmp, "create symlink"))?;
            fs::rename(&tmp, &link).map_err(io_err(&link, "rename symlink"))?;
        }

        // 5. the switch
        let tmp_link = self.target.join(DATA_DIR_TMP);
        match fs::remove_file(&tmp_link) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(io_err(&tmp_link, "remove stale ..data_tmp")(e)),
        }
        symlink(&ts_name, &tmp_link).map_err(io_err(&tmp_link, "create ..data_tmp"))?;
        let data_link = self.target.join(DATA_DIR);
        fs::rename(&tmp_link, &data_link)
            .map_err(io_err(&data_link, "rename ..data_tmp over ..data"))?;
        fsync_dir(&self.target)?;

        // 6. names that left the payload
        for name in old_names.difference(&new_names) {
            let link = self.target.join(name);
            if let Ok(dest) = fs::read_link(&link) {
                if dest == Path::new(DATA_DIR).join(name) {
                    fs::remove_file(&link).map_err(io_err(&link, "remove old symlink"))?;
                }
            }
        }

        // 7. old payload last
        if let Some(old) = old_dir {
            if old != ts_name && is_timestamp_name(&old) {
                let p = self.target.join(&old);
                match fs::remove_dir_all(&p) {
                    Ok(()) => {}
                    Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                    Err(e) => return Err(io_err(&p, "remove old timestamp directory")(e)),
                }
            }
        }
        fsync_dir(&self.target)?;
        Ok(WriteOutcome {
            changed: true,
            data_dir: ts_name,
        })
    }

    fn fill_payload(&self, ts_dir: &Path, files: &[OutFile]) -> Result<(), WriteError> {
        fs::set_permissions(ts_dir, fs::Permissions::from_mode(0o700))
            .map_err(io_err(ts_dir, "chmod timestamp directory"))?;
        let mut dirs: BTreeSet<PathBuf> = BTreeSet::new();
        for f in files {
            let path = ts_dir.join(&f.path);
            if let Some(parent) = path.parent() {
                if parent != ts_dir && !dirs.contains(parent) {
                    fs::create_dir_all(parent)
                        .map_err(io_err(parent, "create payload subdirectory"))?;
                    let mut p = parent.to_path_buf();
                    while p != ts_dir {
                        fs::set_permissions(&p, fs::Permissions::from_mode(0o755))
                            .map_err(io_err(&p, "chmod payload subdirectory"))?;
                        dirs.insert(p.clone());
                        if !p.pop() {
                            break;
                        }
                    }
                }
            }
            let mut file = OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o600)
                .open(&path)
                .map_err(io_err(&path, "create payload file"))?;
            file.write_all(&f.contents)
                .map_err(io_err(&path, "write payload file"))?;
            file.set_permissions(fs::Permissions::from_mode(f.mode))
                .map_err(io_err(&path, "chmod payload file"))?;
            file.sync_all()
                .map_err(io_err(&path, "fsync payload file"))?;
        }
        // deepest first so each directory entry is durable before its parent's
        for d in dirs.iter().rev() {
            fsync_dir(d)?;
        }
        fs::set_permissions(ts_dir, fs::Permissions::from_mode(0o755))
            .map_err(io_err(ts_dir, "chmod timestamp directory"))?;
        fsync_dir(ts_dir)?;
        Ok(())
    }
}

fn remove_any(path: &Path, is_dir: bool) -> Result<(), WriteError> {
    let r = if is_dir {
        fs::remove_dir_all(path)
    } else {
        fs::remove_file(path)
    };
    match r {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(io_err(path, "remove leftover")(e)),
    }
}

fn collect_files(dir: &Path, prefix: &str, out: &mut BTreeSet<String>) -> Result<(), WriteError> {
    let entries = match fs::read_dir(dir) {
        Ok(e) => e,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(io_err(dir, "read payload directory")(e)),
    };
    for e in entries {
        let e = e.map_err(io_err(dir, "read payload directory"))?;
        let name = e.file_name().to_string_lossy().into_owned();
        let rel = if prefix.is_empty() {
            name
        } else {
            format!("{prefix}/{name}")
        };
        let ft = e.file_type().map_err(io_err(dir, "stat payload entry"))?;
        if ft.is_dir() {
            collect_files(&e.path(), &rel, out)?;
        } else {
            out.insert(rel);
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

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
