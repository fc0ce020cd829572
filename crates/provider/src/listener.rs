//! Connections on the provider socket: accepted with back-off, bounded in number, and closed
//! when they stay silent.
//!
//! Every pod on the node depends on this socket, so a misbehaving client must not take it
//! down: when accepting fails (out of file descriptors) the loop waits and retries instead of
//! spinning; at most [`ConnLimits::max_connections`] are served at once (more wait in the
//! kernel's backlog); a connection that sends nothing within
//! [`ConnLimits::first_byte_timeout`], or is silent for [`ConnLimits::idle_timeout`] with no
//! call in flight, is closed. A gRPC client such as the driver reconnects on its next call.

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use futures_util::Stream;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{UnixListener, UnixStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::time::{Instant, Sleep};

use crate::authority::AuthorityFix;

/// Bounds on the provider socket's connections.
#[derive(Debug, Clone)]
pub struct ConnLimits {
    /// Connections served at once.
    pub max_connections: usize,
    /// A new connection must send its first bytes within this time.
    pub first_byte_timeout: Duration,
    /// A connection with no call in flight is closed after this long without traffic.
    pub idle_timeout: Duration,
}

impl Default for ConnLimits {
    fn default() -> Self {
        Self {
            max_connections: 128,
            first_byte_timeout: Duration::from_secs(10),
            idle_timeout: Duration::from_secs(300),
        }
    }
}

const MIN_BACKOFF: Duration = Duration::from_millis(5);
const MAX_BACKOFF: Duration = Duration::from_secs(1);

/// Calls in flight on one connection; handlers hold a [`CallGuard`] while they run.
#[derive(Clone, Debug, Default)]
pub struct ConnInfo {
    in_flight: Arc<AtomicUsize>,
}

impl ConnInfo {
    /// Marks a call in flight until the guard is dropped.
    pub fn call(&self) -> CallGuard {
        self.in_flight.fetch_add(1, Ordering::SeqCst);
        CallGuard(self.in_flight.clone())
    }
}

/// See [`ConnInfo::call`].
pub struct CallGuard(Arc<AtomicUsize>);

impl Drop for CallGuard {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

/// One accepted connection, with its slot and silence timer.
pub struct Conn {
    io: UnixStream,
    _slot: OwnedSemaphorePermit,
    info: ConnInfo,
    timer: Pin<Box<Sleep>>,
    idle: Duration,
    /// Repairs `:authority` values that h2 would refuse (gRPC C-core clients).
    fix: AuthorityFix,
    /// Bytes the fix produced that the server has not read yet.
    ready: Vec<u8>,
    ready_at: usize,
}

impl Conn {
    fn activity(&mut self) {
        self.timer.as_mut().reset(Instant::now() + self.idle);
    }

    /// `Pending` while the connection may stay; an error once it has been silent too long.
    fn poll_silence(&mut self, cx: &mut Context<'_>) -> Poll<io::Error> {
        while self.timer.as_mut().poll(cx).is_ready() {
            if self.info.in_flight.load(Ordering::SeqCst) == 0 {
                return Poll::Ready(io::Error::new(
                    io::ErrorKind::TimedOut,
                    "provider socket connection silent for too long",
                ));
            }
            // A long Mount is running: the connection is busy, not idle.
            self.activity();
        }
        Poll::Pending
    }
}

impl AsyncRead for Conn {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        loop {
            if this.ready_at < this.ready.len() {
                let n = buf.remaining().min(this.ready.len() - this.ready_at);
                buf.put_slice(&this.ready[this.ready_at..this.ready_at + n]);
                this.ready_at += n;
                return Poll::Ready(Ok(()));
            }
            this.ready.clear();
            this.ready_at = 0;
            let mut raw = [0u8; 8192];
            let mut rb = ReadBuf::new(&mut raw);
            match Pin::new(&mut this.io).poll_read(cx, &mut rb) {
                Poll::Ready(Ok(())) => {
                    let n = rb.filled().len();
                    if n == 0 {
                        return Poll::Ready(Ok(()));
                    }
                    this.activity();
                    this.fix
                        .feed(&raw[..n], &mut this.ready)
                        .map_err(io::Error::other)?;
                }
                Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
                Poll::Pending => {
                    return match this.poll_silence(cx) {
                        Poll::Ready(e) => {
                            tracing::debug!("closing a silent provider socket connection");
                            Poll::Ready(Err(e))
                        }
                        Poll::Pending => Poll::Pending,
                    }
                }
            }
        }
    }
}

impl AsyncWrite for Conn {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let r = Pin::new(&mut this.io).poll_write(cx, data);
        if let Poll::Ready(Ok(n)) = &r {
            if *n > 0 {
                this.activity();
            }
        }
        r
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_shutdown(cx)
    }
}

impl tonic::transport::server::Connected for Conn {
    type ConnectInfo = ConnInfo;

    fn connect_info(&self) -> ConnInfo {
        self.info.clone()
    }
}

/// The connections accepted on `listener`, within `limits`. Never yields an error: failed
/// accepts are logged (once per burst) and retried after a growing pause.
pub fn incoming(
    listener: UnixListener,
    limits: ConnLimits,
) -> impl Stream<Item = Result<Conn, io::Error>> + Send {
    let slots = Arc::new(Semaphore::new(limits.max_connections.max(1)));
    futures_util::stream::unfold(
        (listener, slots, limits),
        |(listener, slots, limits)| async move {
            let mut backoff = MIN_BACKOFF;
            loop {
                // Wait for a free slot before accepting: excess clients wait in the backlog.
                let slot = slots.clone().acquire_owned().await.ok()?;
                match listener.accept().await {
                    Ok((io, _)) => {
                        let conn = Conn {
                            io,
                            _slot: slot,
                            info: ConnInfo::default(),
                            timer: Box::pin(tokio::time::sleep(limits.first_byte_timeout)),
                            idle: limits.idle_timeout,
                            fix: AuthorityFix::new(),
                            ready: Vec::new(),
                            ready_at: 0,
                        };
                        return Some((Ok(conn), (listener, slots, limits)));
                    }
                    Err(e) => {
                        drop(slot);
                        if backoff == MIN_BACKOFF {
                            tracing::warn!(error = %e, "accepting a provider socket connection failed; backing off");
                        }
                        tokio::time::sleep(backoff).await;
                        backoff = (backoff * 2).min(MAX_BACKOFF);
                    }
                }
            }
        },
    )
}
