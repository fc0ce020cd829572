//! Where tests/k8s/build.sh puts the binaries and CRDs.

use std::path::{Path, PathBuf};

/// tests/k8s/versions.env, the versions build.sh builds (and so the cache directory's name).
const VERSIONS: &str = include_str!("../../../tests/k8s/versions.env");

/// The binaries tests need, as named in `bin/`.
pub const BINARIES: [&str; 3] = ["etcd", "kube-apiserver", "secrets-store-csi-driver"];

/// The directory build.sh fills: `bin/{etcd,kube-apiserver,secrets-store-csi-driver}` and
/// `crds/*.yaml` (the CSI driver's CRDs).
#[derive(Debug, Clone)]
pub struct Layout {
    pub root: PathBuf,
}

impl Layout {
    /// `KVBRIDGE_TESTENV_DIR`, or the directory build.sh uses by default:
    /// `${KVBRIDGE_TESTENV_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/kvbridge-testenv}/<versions>`.
    pub fn locate() -> Layout {
        if let Some(dir) = env_nonempty("KVBRIDGE_TESTENV_DIR") {
            return Layout {
                root: PathBuf::from(dir),
            };
        }
        let cache = env_nonempty("KVBRIDGE_TESTENV_CACHE")
            .map(PathBuf::from)
            .unwrap_or_else(|| {
                env_nonempty("XDG_CACHE_HOME")
                    .map(PathBuf::from)
                    .unwrap_or_else(|| {
                        PathBuf::from(env_nonempty("HOME").unwrap_or_else(|| "/root".into()))
                            .join(".cache")
                    })
                    .join("kvbridge-testenv")
            });
        Layout {
            root: cache.join(version_key()),
        }
    }

    pub fn bin(&self, name: &str) -> PathBuf {
        self.root.join("bin").join(name)
    }

    pub fn crds(&self) -> PathBuf {
        self.root.join("crds")
    }

    /// The binaries that are not there (or not executable).
    pub fn missing(&self) -> Vec<PathBuf> {
        BINARIES
            .iter()
            .map(|b| self.bin(b))
            .filter(|p| !is_executable(p))
            .collect()
    }
}

/// `k8s-v1.36.3_etcd-v3.6.16_csi-v1.6.0`, as build.sh names the directory.
pub fn version_key() -> String {
    format!(
        "k8s-{}_etcd-{}_csi-{}",
        version("K8S_VERSION"),
        version("ETCD_VERSION"),
        version("CSI_DRIVER_VERSION")
    )
}

/// A version from tests/k8s/versions.env (empty when the key is absent).
pub fn version(key: &str) -> &'static str {
    VERSIONS
        .lines()
        .filter_map(|l| l.trim().split_once('='))
        .find(|(k, _)| k.trim() == key)
        .map(|(_, v)| v.trim())
        .unwrap_or("")
}

fn env_nonempty(key: &str) -> Option<String> {
    std::env::var(key).ok().filter(|v| !v.is_empty())
}

fn is_executable(p: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(p)
        .map(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
        .unwrap_or(false)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn versions_file_names_every_version() {
        for key in ["K8S_VERSION", "ETCD_VERSION", "CSI_DRIVER_VERSION"] {
            let v = version(key);
            assert!(v.starts_with('v') && v.contains('.'), "{key}={v:?}");
        }
        assert!(version_key().starts_with("k8s-v1."));
    }
}
