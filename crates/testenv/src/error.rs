use std::path::PathBuf;

/// Why the test environment could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(
        "{what} is missing at {}: run `bash tests/k8s/build.sh` (it builds etcd, kube-apiserver \
         and secrets-store-csi-driver from the Go module proxy into a cache outside the repo), or \
         point KVBRIDGE_TESTENV_DIR at a directory holding bin/ and crds/",
        path.display()
    )]
    MissingBinary { what: String, path: PathBuf },
    #[error("{what} ({})", path.display())]
    Io {
        what: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("generating the control plane's certificates")]
    Certificates(#[from] rcgen::Error),
    #[error("{name} exited before it was ready ({status}); its log ({}) ends with:\n{tail}", log.display())]
    Exited {
        name: String,
        status: String,
        log: PathBuf,
        tail: String,
    },
    #[error("{what} was not ready after {secs} s; the log ({}) ends with:\n{tail}", log.display())]
    NotReady {
        what: String,
        secs: u64,
        log: PathBuf,
        tail: String,
    },
    #[error("reading the kubeconfig {}", path.display())]
    Kubeconfig {
        path: PathBuf,
        #[source]
        source: kube::config::KubeconfigError,
    },
    #[error("Kubernetes API: {what}")]
    Kube {
        what: String,
        #[source]
        source: kube::Error,
    },
    #[error("{} is not valid YAML", path.display())]
    Yaml {
        path: PathBuf,
        #[source]
        source: serde_yaml_ng::Error,
    },
    #[error("{} holds a document that is not a CustomResourceDefinition", path.display())]
    NotACrd {
        path: PathBuf,
        #[source]
        source: serde_json::Error,
    },
    #[error("connecting to the gRPC socket {}", path.display())]
    Connect {
        path: PathBuf,
        #[source]
        source: tonic::transport::Error,
    },
    #[error("starting the test environment's runtime thread")]
    Runtime(#[source] std::io::Error),
}

impl Error {
    pub(crate) fn io(what: &'static str, path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        Error::Io {
            what,
            path: path.into(),
            source,
        }
    }

    pub(crate) fn kube(what: impl Into<String>, source: kube::Error) -> Self {
        Error::Kube {
            what: what.into(),
            source,
        }
    }
}

/// `err` and all its sources, one per line.
pub(crate) fn chain(err: &dyn std::error::Error) -> String {
    let mut s = err.to_string();
    let mut cur = err.source();
    while let Some(e) = cur {
        s.push_str("\n  caused by: ");
        s.push_str(&e.to_string());
        cur = e.source();
    }
    s
}
