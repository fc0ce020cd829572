//! The writer against a target directory that someone else also writes (an emptyDir shared with
//! an application): planted links and directories never make it read, write or remove anything
//! outside the target; failures say what state the target is in and leave no secret copies.
#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a failed unwrap is a failed test

use std::fs;
use std::os::unix::fs::{symlink, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::Command;

use mount::writer::{AtomicWriter, OutFile, TargetState, WriteError, WriteWarning};

fn f(path: &str, c: &str) -> OutFile {
    OutFile::new(path, 0o644, c.as_bytes().to_vec())
}

fn entries(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    v.sort();
    v
}

fn generations(dir: &Path) -> Vec<String> {
    entries(dir)
        .into_iter()
        .filter(|n| n.starts_with("..") && n.as_bytes().get(2).is_some_and(u8::is_ascii_digit))
        .collect()
}

fn read(dir: &Path, p: &str) -> String {
    fs::read_to_string(dir.join(p)).unwrap_or_else(|e| panic!("{p}: {e}"))
}

/// `..data` is a link to one real timestamp dir of the target, which serves `want`.
fn assert_serves(target: &Path, want: &[(&str, &str)]) {
    let link = fs::read_link(target.join("..data")).expect("..data is a symlink");
    let name = link.to_str().unwrap();
    assert!(
        !name.contains('/') && name.starts_with(".."),
        "..data -> {name}"
    );
    assert!(fs::symlink_metadata(target.join(name)).unwrap().is_dir());
    for (p, c) in want {
        assert_eq!(read(target, p), *c, "{p}");
    }
}

/// Outside the target: a directory with a file, to check it is never touched.
fn victim(base: &Path) -> PathBuf {
    let v = base.join("victim");
    fs::create_dir_all(v.join("sub")).unwrap();
    fs::write(v.join("precious"), "do not delete").unwrap();
    fs::write(v.join("sub/a"), "S1").unwrap();
    v
}

fn assert_victim_intact(v: &Path) {
    assert_eq!(read(v, "precious"), "do not delete");
    assert_eq!(read(v, "sub/a"), "S1");
}

/// Issue 13.1: `..data -> ..9/../../victim` (a name the old check accepted as a timestamp dir)
/// made the next write `remove_dir_all` a directory outside the target.
#[test]
fn data_link_out_of_the_target_is_repaired_not_followed() {
    let base = tempfile::tempdir().unwrap();
    let target = base.path().join("t");
    let v = victim(base.path());
    let w = AtomicWriter::new(&target);
    w.write(&[f("a", "A1")]).unwrap();
    fs::create_dir(target.join("..9")).unwrap();
    fs::remove_file(target.join("..data")).unwrap();
    symlink("..9/../../victim", target.join("..data")).unwrap();

    w.write(&[f("a", "A2")]).unwrap();
    assert_victim_intact(&v);
    assert_serves(&target, &[("a", "A2")]);
    w.write(&[f("a", "A3")]).unwrap();
    assert_victim_intact(&v);
    assert_serves(&target, &[("a", "A3")]);
    assert_eq!(generations(&target).len(), 1, "{:?}", entries(&target));
}

/// A `..data` pointing outside the target at files equal to the new payload must not count as
/// "unchanged": the writer never reads through such a link, it repairs it.
#[test]
fn data_link_to_identical_files_outside_is_not_current() {
    let base = tempfile::tempdir().unwrap();
    let target = base.path().join("t");
    let outside = base.path().join("outside");
    fs::create_dir(&outside).unwrap();
    fs::write(outside.join("a"), "A1").unwrap();
    fs::set_permissions(outside.join("a"), fs::Permissions::from_mode(0o644)).unwrap();
    let w = AtomicWriter::new(&target);
    w.write(&[f("a", "A0")]).unwrap();
    fs::remove_file(target.join("..data")).unwrap();
    symlink(&outside, target.join("..data")).unwrap();
    let out = w.write(&[f("a", "A1")]).unwrap();
    assert!(
        out.changed,
        "a link out of the target is not the current payload"
    );
    assert_serves(&target, &[("a", "A1")]);
    assert_eq!(read(&outside, "a"), "A1");

    // `..data -> /`: repaired at once, nothing walked or removed
    fs::remove_file(target.join("..data")).unwrap();
    symlink("/", target.join("..data")).unwrap();
    let out = w.write(&[f("a", "A1")]).unwrap();
    assert!(out.changed);
    assert_serves(&target, &[("a", "A1")]);
}

/// `..data` planted as a directory or a regular file is corruption: repaired, not an endless
/// error, and a directory link planted as a timestamp dir is unlinked, not followed.
#[test]
fn data_that_is_not_a_link_is_repaired() {
    let base = tempfile::tempdir().unwrap();
    let target = base.path().join("t");
    let v = victim(base.path());
    let w = AtomicWriter::new(&target);
    w.write(&[f("a", "A1")]).unwrap();
    fs::remove_file(target.join("..data")).unwrap();
    fs::create_dir(target.join("..data")).unwrap();
    fs::write(target.join("..data/a"), "planted").unwrap();
    w.write(&[f("a", "A2")]).unwrap();
    assert_serves(&target, &[("a", "A2")]);

    fs::remove_file(target.join("..data")).unwrap();
    fs::write(target.join("..data"), "planted").unwrap();
    w.write(&[f("a", "A3")]).unwrap();
    assert_serves(&target, &[("a", "A3")]);

    // a timestamp-named symlink to a directory outside, and `..data` pointing at it
    symlink(&v, target.join("..2001_01_01_00_00_00.000000001_1_0")).unwrap();
    fs::remove_file(target.join("..data")).unwrap();
    symlink("..2001_01_01_00_00_00.000000001_1_0", target.join("..data")).unwrap();
    w.write(&[f("a", "A4")]).unwrap();
    assert_victim_intact(&v);
    assert_serves(&target, &[("a", "A4")]);
    w.cleanup().unwrap();
    assert_victim_intact(&v);
    let e = entries(&target);
    assert_eq!(e.len(), 3, "..data, one generation, a: {e:?}");
}

/// Links and files planted by an application never lead the writer out of the target.
#[test]
fn planted_links_are_never_followed() {
    let base = tempfile::tempdir().unwrap();
    let target = base.path().join("t");
    let v = victim(base.path());
    let w = AtomicWriter::new(&target);
    let first = w.write(&[f("a", "A1"), f("b", "B1")]).unwrap();
    // inside the current generation: a link to the victim and a directory link
    symlink(&v, target.join(&first.data_dir).join("evil")).unwrap();
    symlink(
        v.join("precious"),
        target.join(&first.data_dir).join("evil2"),
    )
    .unwrap();
    // a user-visible name replaced by a hostile link
    fs::remove_file(target.join("b")).unwrap();
    symlink(v.join("precious"), target.join("b")).unwrap();
    // a leftover-looking link to the victim
    symlink(&v, target.join("..data_tmp")).unwrap();
    symlink(&v, target.join("..x_tmp")).unwrap();

    // b is foreign now: refused, nothing written through it
    let e = w.write(&[f("a", "A2"), f("b", "B2")]).unwrap_err();
    assert!(matches!(e, WriteError::Foreign { .. }), "{e}");
    assert!(matches!(e.target_state(), TargetState::Unchanged));
    assert_victim_intact(&v);
    // without b: the old generation (with the planted links) is removed, links unlinked only
    w.write(&[f("a", "A2")]).unwrap();
    assert_victim_intact(&v);
    assert_serves(&target, &[("a", "A2")]);
    assert!(fs::symlink_metadata(target.join("b")).unwrap().is_symlink());
    assert!(fs::symlink_metadata(target.join("..data_tmp")).is_err());
    assert!(fs::symlink_metadata(target.join("..x_tmp")).is_err());
    assert!(!target.join(&first.data_dir).exists());
}

/// Issue 13.5: a top-level name of 245-255 bytes failed on the `..link_<name>_tmp` helper after
/// the new generation (holding the secret) was written, and that copy stayed behind.
#[test]
fn long_names_work_and_too_long_names_write_nothing() {
    let base = tempfile::tempdir().unwrap();
    let target = base.path().join("t");
    let w = AtomicWriter::new(&target);
    w.write(&[f("a", "A1")]).unwrap();
    for len in [245, 250, 255] {
        let name = "n".repeat(len);
        w.write(&[f("a", "A1"), f(&name, "secret")]).unwrap();
        assert_eq!(read(&target, &name), "secret", "{len}");
        assert_eq!(generations(&target).len(), 1, "{len}");
        let nested = format!("{}/{}", "d".repeat(255), "x".repeat(255));
        w.write(&[f("a", "A1"), f(&nested, "deep")]).unwrap();
        assert_eq!(read(&target, &nested), "deep");
    }
    let before = entries(&target);
    let e = w
        .write(&[f("a", "A2"), f(&"n".repeat(256), "secret")])
        .unwrap_err();
    assert!(e.to_string().contains("nothing was written"), "{e}");
    assert!(matches!(e.target_state(), TargetState::Unchanged));
    assert_eq!(entries(&target), before, "no secret copy left behind");
    assert_eq!(read(&target, "a"), "A1");
}

/// `chattr +i` works here (root on ext4/xfs/btrfs); a tmpfs or overlay may refuse.
fn immutable(p: &Path, on: bool) -> bool {
    Command::new("chattr")
        .arg(if on { "+i" } else { "-i" })
        .arg(p)
        .output()
        .map(|o| o.status.success())
        .unwrap_or(false)
}

struct Unfreeze(Vec<PathBuf>);

impl Drop for Unfreeze {
    fn drop(&mut self) {
        for p in &self.0 {
            immutable(p, false);
        }
    }
}

fn chattr_works(dir: &Path) -> bool {
    let probe = dir.join("chattr-probe");
    fs::write(&probe, "x").unwrap();
    let ok = immutable(&probe, true) && fs::remove_file(&probe).is_err();
    immutable(&probe, false);
    let _ = fs::remove_file(&probe);
    if !ok {
        eprintln!(
            "!!!!!!!! SKIPPED: `chattr +i` is refused on {} (not root, or a filesystem without immutable files); this test did not run !!!!!!!!",
            dir.display()
        );
    }
    ok
}

/// Issue 13.5: with an immutable file in the old generation the switch happened but the write
/// failed saying nothing was written. The new payload is published: success with a warning,
/// and the stale generation is removed by a later write once it can be.
#[test]
fn old_generation_that_cannot_be_removed_is_a_warning() {
    let base = tempfile::tempdir().unwrap();
    if !chattr_works(base.path()) {
        return;
    }
    let target = base.path().join("t");
    let w = AtomicWriter::new(&target);
    let first = w.write(&[f("a", "A1")]).unwrap();
    let frozen = target.join(&first.data_dir).join("a");
    let _guard = Unfreeze(vec![frozen.clone()]);
    assert!(immutable(&frozen, true));

    let out = w
        .write(&[f("a", "A2")])
        .expect("the new payload is published");
    assert!(out.changed);
    assert_serves(&target, &[("a", "A2")]);
    assert!(
        out.warnings.iter().any(
            |w| matches!(w, WriteWarning::StaleGeneration { name, .. } if *name == first.data_dir)
        ),
        "{:?}",
        out.warnings
    );
    // every write retries, also when the payload is unchanged
    let again = w.write(&[f("a", "A2")]).unwrap();
    assert!(!again.changed);
    assert_eq!(again.warnings.len(), 1, "{:?}", again.warnings);
    immutable(&frozen, false);
    let again = w.write(&[f("a", "A2")]).unwrap();
    assert!(!again.changed && again.warnings.is_empty(), "{again:?}");
    assert_eq!(generations(&target), vec![out.data_dir]);
}

/// A failure before the switch removes the new generation (no secret copy stays) and says the
/// target is unchanged.
#[test]
fn failure_before_the_switch_leaves_the_target_unchanged_and_clean() {
    let base = tempfile::tempdir().unwrap();
    if !chattr_works(base.path()) {
        return;
    }
    let target = base.path().join("t");
    let w = AtomicWriter::new(&target);
    w.write(&[f("a", "A1")]).unwrap();
    // a leftover `..data_tmp` that cannot be removed blocks the switch
    let blocker = target.join("..data_tmp");
    fs::write(&blocker, "").unwrap();
    let _guard = Unfreeze(vec![blocker.clone()]);
    assert!(immutable(&blocker, true));
    let before = entries(&target);
    let e = w
        .write(&[f("a", "A2-secret"), f("new", "N-secret")])
        .unwrap_err();
    assert!(matches!(e.target_state(), TargetState::Unchanged), "{e}");
    assert!(e.to_string().contains("not changed"), "{e}");
    assert!(!e.to_string().contains("secret"), "{e}");
    assert_eq!(entries(&target), before, "new generation and links removed");
    assert_serves(&target, &[("a", "A1")]);
    immutable(&blocker, false);
    w.write(&[f("a", "A2"), f("new", "N")]).unwrap();
    assert_serves(&target, &[("a", "A2"), ("new", "N")]);
    assert_eq!(entries(&target).len(), 4, "{:?}", entries(&target));
}

/// The async wrapper runs on the blocking pool and gives the same result.
#[tokio::test(flavor = "current_thread")]
async fn write_async_publishes() {
    let base = tempfile::tempdir().unwrap();
    let w = AtomicWriter::new(base.path().join("t"));
    let out = w.write_async(vec![f("a", "A1")]).await.unwrap();
    assert!(out.changed);
    assert_serves(w.target(), &[("a", "A1")]);
    assert!(w.cleanup_async().await.unwrap().removed.is_empty());
}
