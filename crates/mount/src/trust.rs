//! The I/O edge of CA trust bundles ([`render::trust`]): reading the system bundle.

use std::io::Read as _;
use std::path::{Path, PathBuf};

use render::trust::{MAX_SYSTEM_BUNDLE_BYTES, SYSTEM_BUNDLE_PATHS};

/// Why the system bundle could not be read.
#[derive(Debug, thiserror::Error)]
pub enum SystemBundleError {
    #[error("cannot read the system CA bundle {}", path.display())]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("the system CA bundle {} is larger than {MAX_SYSTEM_BUNDLE_BYTES} bytes", path.display())]
    TooLarge { path: PathBuf },
}

/// Reads one bundle file, bounded by [`MAX_SYSTEM_BUNDLE_BYTES`] (never reading more).
pub fn read_bundle(path: &Path) -> Result<Vec<u8>, SystemBundleError> {
    let read_err = |source| SystemBundleError::Read {
        path: path.to_path_buf(),
        source,
    };
    let file = std::fs::File::open(path).map_err(read_err)?;
    let mut bytes = Vec::new();
    file.take(MAX_SYSTEM_BUNDLE_BYTES as u64 + 1)
        .read_to_end(&mut bytes)
        .map_err(read_err)?;
    if bytes.len() > MAX_SYSTEM_BUNDLE_BYTES {
        return Err(SystemBundleError::TooLarge {
            path: path.to_path_buf(),
        });
    }
    Ok(bytes)
}

/// The first of `candidates` that exists (normally [`SYSTEM_BUNDLE_PATHS`] under `/`), read;
/// `None` when none exists (distroless `static` images, scratch). Paths are taken under
/// `root` (`/` in production; a directory in tests).
pub fn find_system_bundle(root: &Path) -> Result<Option<(PathBuf, Vec<u8>)>, SystemBundleError> {
    for candidate in SYSTEM_BUNDLE_PATHS {
        let path = root.join(candidate.trim_start_matches('/'));
        match read_bundle(&path) {
            Ok(bytes) => return Ok(Some((path, bytes))),
            Err(SystemBundleError::Read { source, .. })
                if source.kind() == std::io::ErrorKind::NotFound =>
            {
                continue
            }
            Err(e) => return Err(e),
        }
    }
    Ok(None)
}

/// Which system bundle a trust bundle starts from (`--system-bundle` of `kvbridge trust`,
/// `kvbridge mount` and the provider).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum SystemBundle {
    /// The first of [`SYSTEM_BUNDLE_PATHS`] that exists; none is fine.
    #[default]
    Auto,
    /// The Key Vault CAs alone.
    None,
    /// This file (it must exist).
    File(PathBuf),
}

impl std::str::FromStr for SystemBundle {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        Ok(match s {
            "" => return Err("empty: use auto, none or a file".into()),
            "auto" => SystemBundle::Auto,
            "none" => SystemBundle::None,
            path => SystemBundle::File(PathBuf::from(path)),
        })
    }
}

impl SystemBundle {
    /// Reads the chosen bundle: its path and bytes, or `None`.
    pub fn load(&self) -> Result<Option<(PathBuf, Vec<u8>)>, SystemBundleError> {
        match self {
            SystemBundle::Auto => find_system_bundle(Path::new("/")),
            SystemBundle::None => Ok(None),
            SystemBundle::File(path) => Ok(Some((path.clone(), read_bundle(path)?))),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn first_existing_path_wins_and_missing_is_none() {
        let root = tempfile::tempdir().unwrap();
        assert!(find_system_bundle(root.path()).unwrap().is_none());
        let rhel = root.path().join("etc/pki/tls/certs");
        std::fs::create_dir_all(&rhel).unwrap();
        std::fs::write(rhel.join("ca-bundle.crt"), b"rhel").unwrap();
        let (path, bytes) = find_system_bundle(root.path()).unwrap().unwrap();
        assert_eq!(bytes, b"rhel");
        assert!(path.ends_with("etc/pki/tls/certs/ca-bundle.crt"));
        let debian = root.path().join("etc/ssl/certs");
        std::fs::create_dir_all(&debian).unwrap();
        std::fs::write(debian.join("ca-certificates.crt"), b"debian").unwrap();
        assert_eq!(
            find_system_bundle(root.path()).unwrap().unwrap().1,
            b"debian"
        );
        // A directory where the file should be is an error, not a silent skip.
        std::fs::remove_file(debian.join("ca-certificates.crt")).unwrap();
        std::fs::create_dir(debian.join("ca-certificates.crt")).unwrap();
        assert!(find_system_bundle(root.path()).is_err());
    }

    #[test]
    fn oversized_bundle_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("big.pem");
        std::fs::write(&path, vec![b'A'; MAX_SYSTEM_BUNDLE_BYTES + 1]).unwrap();
        assert!(matches!(
            read_bundle(&path),
            Err(SystemBundleError::TooLarge { .. })
        ));
    }
}
