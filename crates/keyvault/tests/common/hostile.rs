//! A scripted, hostile HTTP(S) endpoint on 127.0.0.1: it reads each request head and answers
//! whatever bytes the test scripts (absurd headers, endless bodies), over plain TCP or over TLS
//! with a certificate from the dev vault's CA code (so the client verifies it for real).
#![allow(dead_code)]

use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpListener;

/// What to answer to one request.
pub enum Reply {
    /// These bytes, then close the connection.
    Raw(Vec<u8>),
    /// This head (status line + headers, no final CRLF), then an endless body of 64 KiB
    /// chunks until the client goes away (at most `max_bytes`, so the test always ends).
    Endless { head: String, max_bytes: u64 },
}

impl Reply {
    /// A complete response with a body and `Connection: close`.
    pub fn full(status: &str, headers: &[(&str, &str)], body: &str) -> Reply {
        let mut s = format!("HTTP/1.1 {status}\r\n");
        for (k, v) in headers {
            s.push_str(&format!("{k}: {v}\r\n"));
        }
        s.push_str(&format!(
            "content-length: {}\r\nconnection: close\r\n\r\n{body}",
            body.len()
        ));
        Reply::Raw(s.into_bytes())
    }
}

type Script = Arc<dyn Fn(usize, &str) -> Reply + Send + Sync>;

pub struct Hostile {
    pub port: u16,
    /// CA certificate that verifies the TLS endpoint (None for plain HTTP).
    pub ca: Option<PathBuf>,
    /// Requests received so far.
    pub requests: Arc<AtomicUsize>,
    /// Body bytes written so far (all connections).
    pub written: Arc<std::sync::atomic::AtomicU64>,
    _dir: tempfile::TempDir,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Hostile {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn read_head<S: AsyncRead + Unpin>(s: &mut S) -> Option<String> {
    let mut buf = Vec::new();
    let mut byte = [0u8; 1];
    while !buf.ends_with(b"\r\n\r\n") {
        if buf.len() > 64 * 1024 || s.read(&mut byte).await.ok()? == 0 {
            return None;
        }
        buf.push(byte[0]);
    }
    Some(String::from_utf8_lossy(&buf).into_owned())
}

async fn serve_one<S: AsyncRead + AsyncWrite + Unpin>(
    mut s: S,
    script: Script,
    requests: Arc<AtomicUsize>,
    written: Arc<std::sync::atomic::AtomicU64>,
) {
    let Some(head) = read_head(&mut s).await else {
        return;
    };
    let n = requests.fetch_add(1, Ordering::SeqCst);
    match script(n, &head) {
        Reply::Raw(bytes) => {
            let _ = s.write_all(&bytes).await;
            let _ = s.shutdown().await;
        }
        Reply::Endless { head, max_bytes } => {
            if s.write_all(format!("{head}\r\n\r\n").as_bytes())
                .await
                .is_err()
            {
                return;
            }
            let chunk = vec![b'A'; 64 * 1024];
            let mut sent = 0u64;
            while sent < max_bytes {
                if s.write_all(&chunk).await.is_err() {
                    return;
                }
                sent += chunk.len() as u64;
                written.fetch_add(chunk.len() as u64, Ordering::Relaxed);
            }
            let _ = s.shutdown().await;
        }
    }
}

impl Hostile {
    /// Plain HTTP (token endpoints: IMDS, NMI).
    pub async fn http(script: impl Fn(usize, &str) -> Reply + Send + Sync + 'static) -> Hostile {
        Self::start(script, false).await
    }

    /// HTTPS with a certificate for `localhost` / `*.localhost` / 127.0.0.1 (vaults).
    pub async fn https(script: impl Fn(usize, &str) -> Reply + Send + Sync + 'static) -> Hostile {
        Self::start(script, true).await
    }

    async fn start(
        script: impl Fn(usize, &str) -> Reply + Send + Sync + 'static,
        tls: bool,
    ) -> Hostile {
        let _ = rustls::crypto::ring::default_provider().install_default();
        let dir = tempfile::tempdir().unwrap();
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let script: Script = Arc::new(script);
        let requests = Arc::new(AtomicUsize::new(0));
        let written = Arc::new(std::sync::atomic::AtomicU64::new(0));
        let (acceptor, ca) = if tls {
            let files = devvault::tls::TlsFiles::in_dir(dir.path());
            let config = devvault::tls::ensure(
                &files,
                &devvault::tls::wanted_sans(&["hostile".to_string()]),
            )
            .unwrap();
            (
                Some(tokio_rustls::TlsAcceptor::from(config)),
                Some(files.ca_cert.clone()),
            )
        } else {
            (None, None)
        };
        let (r, w) = (requests.clone(), written.clone());
        let task = tokio::spawn(async move {
            loop {
                let Ok((tcp, _)) = listener.accept().await else {
                    continue;
                };
                let (script, r, w, acceptor) =
                    (script.clone(), r.clone(), w.clone(), acceptor.clone());
                tokio::spawn(async move {
                    match acceptor {
                        Some(a) => {
                            if let Ok(tls) = a.accept(tcp).await {
                                serve_one(tls, script, r, w).await;
                            }
                        }
                        None => serve_one(tcp, script, r, w).await,
                    }
                });
            }
        });
        Hostile {
            port,
            ca,
            requests,
            written,
            _dir: dir,
            task,
        }
    }
}
