//! Reading the Azure environment JSON a class names in `cloudEnvFileName`.
//!
//! The file name comes from the class author, the file from the node. So that a class can
//! neither read arbitrary node files nor stall the reader: the resolved path (symlinks
//! followed) must lie inside an allowed directory (the provider's `--cloud-env-dir`, default
//! [`DEFAULT_CLOUD_ENV_DIR`]); only a regular file is opened, without blocking (a FIFO or a
//! device never is), and at most [`MAX_CLOUD_ENV_BYTES`] are read. Results are cached by path,
//! modification time and size, so a node reads each file once until it changes.
//!
//! The functions here do blocking file I/O: async callers run them with
//! `tokio::task::spawn_blocking`.

use std::collections::HashMap;
use std::fs::{File, OpenOptions};
use std::io::Read;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::SystemTime;

use keyvault::Cloud;

/// Where AKS and Azure Stack Hub nodes keep their environment files.
pub const DEFAULT_CLOUD_ENV_DIR: &str = "/etc/kubernetes";
/// Largest environment file read (real ones are about 1 KiB).
pub const MAX_CLOUD_ENV_BYTES: u64 = 64 * 1024;
/// Cached files; beyond this the cache starts over.
const MAX_CACHED: usize = 256;

#[derive(Debug, thiserror::Error)]
pub enum CloudEnvError {
    #[error("cloudEnvFileName {name:?}: resolves to {resolved}, outside {dir} (the directory environment files may be read from; see --cloud-env-dir)")]
    OutsideDir {
        name: String,
        resolved: PathBuf,
        dir: PathBuf,
    },
    #[error("cloudEnvFileName {name:?}: cannot read {path}")]
    Io {
        name: String,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("cloudEnvFileName {name:?}: {path} is not a regular file")]
    NotRegular { name: String, path: PathBuf },
    #[error("cloudEnvFileName {name:?}: {path} is {size} bytes, more than the limit of {limit}")]
    TooLarge {
        name: String,
        path: PathBuf,
        size: u64,
        limit: u64,
    },
    #[error("cloudEnvFileName {name:?}: {path} is not an Azure environment JSON file: {reason}")]
    Invalid {
        name: String,
        path: PathBuf,
        reason: String,
    },
}

#[derive(Clone, PartialEq, Eq)]
struct Stamp {
    modified: Option<SystemTime>,
    len: u64,
    ino: u64,
}

/// Resolves and reads environment files for classes; shared by every mount of a node.
#[derive(Default)]
pub struct CloudEnvFiles {
    /// Canonical allowed directory; `None` = any path (the CLI's own class files).
    dir: Option<PathBuf>,
    /// The allowed directory as configured (before resolving symlinks).
    dir_given: Option<PathBuf>,
    cache: Mutex<HashMap<PathBuf, (Stamp, Cloud)>>,
}

impl std::fmt::Debug for CloudEnvFiles {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CloudEnvFiles")
            .field("dir", &self.dir)
            .finish_non_exhaustive()
    }
}

impl CloudEnvFiles {
    /// Files may only be read from inside `dir` (symlinks resolved). A directory that does not
    /// exist allows nothing until it does.
    pub fn within(dir: &Path) -> Self {
        Self {
            dir: Some(std::fs::canonicalize(dir).unwrap_or_else(|_| dir.to_path_buf())),
            dir_given: Some(dir.to_path_buf()),
            cache: Mutex::default(),
        }
    }

    /// Files may be read from anywhere (still regular files only, bounded): for `kvbridge
    /// mount`, whose class is the user's own.
    pub fn anywhere() -> Self {
        Self::default()
    }

    /// The allowed directory, if any.
    pub fn dir(&self) -> Option<&Path> {
        self.dir.as_deref()
    }

    /// The cloud described by `name`: relative names are taken from `base` (else the allowed
    /// directory). Blocking; never waits on a FIFO or device.
    pub fn read(&self, name: &str, base: Option<&Path>) -> Result<Cloud, CloudEnvError> {
        let given = Path::new(name);
        let joined = if given.is_absolute() {
            given.to_path_buf()
        } else {
            match base.or(self.dir.as_deref()) {
                Some(b) => b.join(given),
                None => given.to_path_buf(),
            }
        };
        let io = |path: &Path, source| CloudEnvError::Io {
            name: name.to_string(),
            path: path.to_path_buf(),
            source,
        };
        let outside = |resolved: PathBuf, dir: &Path| CloudEnvError::OutsideDir {
            name: name.to_string(),
            resolved,
            dir: dir.to_path_buf(),
        };
        // Names outside the directory are refused before the filesystem is even asked.
        if let (Some(dir), Some(given)) = (&self.dir, &self.dir_given) {
            if !joined.starts_with(dir) && !joined.starts_with(given) {
                return Err(outside(joined, dir));
            }
        }
        // canonicalize only stats the components: it does not open the file.
        let path = std::fs::canonicalize(&joined).map_err(|e| io(&joined, e))?;
        if let Some(dir) = &self.dir {
            if !path.starts_with(dir) {
                return Err(outside(path, dir));
            }
        }
        let meta = std::fs::metadata(&path).map_err(|e| io(&path, e))?;
        self.check_meta(name, &path, &meta)?;
        let seen = stamp(&meta);
        if let Some((s, cloud)) = self.lock().get(&path) {
            if *s == seen {
                return Ok(cloud.clone());
            }
        }
        // O_NONBLOCK: if the file was swapped for a FIFO since the stat, open does not wait
        // for a writer; O_NOFOLLOW: nor for a symlink out of the directory.
        let mut file = OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_NONBLOCK | libc::O_NOFOLLOW | libc::O_CLOEXEC)
            .open(&path)
            .map_err(|e| io(&path, e))?;
        let meta = file.metadata().map_err(|e| io(&path, e))?;
        self.check_meta(name, &path, &meta)?;
        let text = read_bounded(&mut file).map_err(|e| io(&path, e))?;
        let text = match text {
            Some(t) => t,
            None => {
                return Err(CloudEnvError::TooLarge {
                    name: name.to_string(),
                    path,
                    size: meta.len(),
                    limit: MAX_CLOUD_ENV_BYTES,
                })
            }
        };
        let cloud = Cloud::from_env_json(&text).map_err(|reason| CloudEnvError::Invalid {
            name: name.to_string(),
            path: path.clone(),
            reason,
        })?;
        let mut cache = self.lock();
        if cache.len() >= MAX_CACHED {
            cache.clear();
        }
        cache.insert(path, (stamp(&meta), cloud.clone()));
        Ok(cloud)
    }

    fn check_meta(
        &self,
        name: &str,
        path: &Path,
        meta: &std::fs::Metadata,
    ) -> Result<(), CloudEnvError> {
        if !meta.is_file() {
            return Err(CloudEnvError::NotRegular {
                name: name.to_string(),
                path: path.to_path_buf(),
            });
        }
        if meta.len() > MAX_CLOUD_ENV_BYTES {
            return Err(CloudEnvError::TooLarge {
                name: name.to_string(),
                path: path.to_path_buf(),
                size: meta.len(),
                limit: MAX_CLOUD_ENV_BYTES,
            });
        }
        Ok(())
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<PathBuf, (Stamp, Cloud)>> {
        self.cache.lock().unwrap_or_else(|p| p.into_inner())
    }
}

fn stamp(meta: &std::fs::Metadata) -> Stamp {
    use std::os::unix::fs::MetadataExt;
    Stamp {
        modified: meta.modified().ok(),
        len: meta.len(),
        ino: meta.ino(),
    }
}

/// The file's text, or `None` when it is longer than the limit (files that grow after the
/// stat, or report a wrong size, are still cut off).
fn read_bounded(file: &mut File) -> std::io::Result<Option<String>> {
    let mut buf = Vec::new();
    file.take(MAX_CLOUD_ENV_BYTES + 1).read_to_end(&mut buf)?;
    if buf.len() as u64 > MAX_CLOUD_ENV_BYTES {
        return Ok(None);
    }
    String::from_utf8(buf)
        .map(Some)
        .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidData, e))
}

#[cfg(test)]
mod tests {
    use super::*;

    const ENV: &str = r#"{"name":"AzureStackCloud","activeDirectoryEndpoint":"https://login.example/","keyVaultDNSSuffix":"vault.example","resourceIdentifiers":{"keyVault":"https://vault.example"}}"#;

    #[allow(unsafe_code)]
    fn mkfifo(path: &Path) {
        let c = std::ffi::CString::new(path.as_os_str().as_encoded_bytes()).unwrap();
        // SAFETY: a valid NUL-terminated path.
        assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o600) }, 0);
    }

    #[test]
    fn reads_and_caches_a_file_in_the_directory() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("env.json"), ENV).unwrap();
        let files = CloudEnvFiles::within(dir.path());
        let c = files.read("env.json", None).unwrap();
        assert_eq!(c.vault_url("kv1"), "https://kv1.vault.example");
        let abs = dir.path().join("env.json");
        assert_eq!(files.read(abs.to_str().unwrap(), None).unwrap(), c);
        // A change (new size) is seen.
        std::fs::write(
            dir.path().join("env.json"),
            ENV.replace("vault.example\"", "vault2.example\""),
        )
        .unwrap();
        let c2 = files.read("env.json", None).unwrap();
        assert_eq!(c2.vault_url("kv1"), "https://kv1.vault2.example");
    }

    // Issue 13.2: a FIFO, /dev/zero or /proc/self/fd/2 stalled the provider or was read
    // without bound.
    #[test]
    fn refuses_paths_outside_fifos_devices_and_big_files() {
        let dir = tempfile::tempdir().unwrap();
        let allowed = dir.path().join("allowed");
        std::fs::create_dir(&allowed).unwrap();
        std::fs::write(dir.path().join("outside.json"), ENV).unwrap();
        let files = CloudEnvFiles::within(&allowed);
        for name in [
            "/dev/zero",
            "/proc/self/fd/2",
            "../outside.json",
            dir.path().join("outside.json").to_str().unwrap(),
        ] {
            let e = files.read(name, None).unwrap_err();
            assert!(matches!(e, CloudEnvError::OutsideDir { .. }), "{name}: {e}");
            assert!(e.to_string().contains("--cloud-env-dir"), "{e}");
        }
        // A symlink inside the directory pointing out of it is outside too.
        std::os::unix::fs::symlink(dir.path().join("outside.json"), allowed.join("link.json"))
            .unwrap();
        assert!(matches!(
            files.read("link.json", None),
            Err(CloudEnvError::OutsideDir { .. })
        ));
        // A FIFO inside the directory is refused without waiting for a writer.
        mkfifo(&allowed.join("fifo"));
        let e = files.read("fifo", None).unwrap_err();
        assert!(matches!(e, CloudEnvError::NotRegular { .. }), "{e}");
        // Even with no directory restriction, devices and FIFOs are never opened.
        let any = CloudEnvFiles::anywhere();
        assert!(matches!(
            any.read("/dev/zero", None),
            Err(CloudEnvError::NotRegular { .. })
        ));
        assert!(matches!(
            any.read(allowed.join("fifo").to_str().unwrap(), None),
            Err(CloudEnvError::NotRegular { .. })
        ));
        // Big files are refused by size.
        std::fs::write(allowed.join("big.json"), vec![b' '; 70_000]).unwrap();
        let e = files.read("big.json", None).unwrap_err();
        assert!(
            e.to_string().contains("more than the limit of 65536"),
            "{e}"
        );
        // Missing and invalid files name the path.
        let e = files.read("missing.json", None).unwrap_err();
        assert!(e.to_string().contains("missing.json"), "{e}");
        std::fs::write(allowed.join("bad.json"), "{").unwrap();
        let e = files.read("bad.json", None).unwrap_err();
        assert!(matches!(e, CloudEnvError::Invalid { .. }), "{e}");
    }

    #[test]
    fn relative_names_use_the_base() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("env.json"), ENV).unwrap();
        let c = CloudEnvFiles::anywhere()
            .read("env.json", Some(dir.path()))
            .unwrap();
        assert_eq!(c.vault_url("x"), "https://x.vault.example");
    }
}
