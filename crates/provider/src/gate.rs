//! The Mount gate: what the provider decides from a Mount's first five bytes, before it reads
//! the rest.
//!
//! Every gRPC message starts with a prefix (a compression flag and the message length). The
//! gate reads that prefix and then:
//! - refuses a Mount longer than [`MAX_REQUEST_SIZE`] without reading its body (HTTP/2 flow
//!   control stops the sender after one window), after the refusal delay like every other
//!   refused Mount, with a message naming the size and the limits;
//! - makes a Mount longer than [`LARGE_REQUEST_BYTES`] wait for the provider's single lane for
//!   large requests before its body is read. The service releases the lane once the request is
//!   parsed, but never before `length / large_read_rate` has passed since it was taken, so a
//!   flood of large (in practice hostile: real classes are a few KiB) requests costs the node a
//!   bounded byte rate of reading and parsing, and ordinary Mounts never wait behind it;
//! - passes everything else on untouched (the bytes it read are replayed).

use std::collections::VecDeque;
use std::convert::Infallible;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use http_body::{Body as _, Frame};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::time::Instant;
use tonic::body::Body;
use tonic::codegen::{http, Bytes, Service};
use tonic::server::NamedService;
use tonic::Status;

use crate::listener::ConnInfo;
use crate::metrics::{GrpcMethod, Metrics};
use crate::service::{MAX_ATTRIBUTES_BYTES, MAX_SECRETS_BYTES};

/// Largest Mount request read: the attributes and secrets at their own limits, plus room for
/// the target path, permission and the previous object versions. Anything larger cannot come
/// from a class the API server stores (it refuses objects over ~1.5 MiB), and is refused from
/// its length prefix.
pub const MAX_REQUEST_SIZE: usize = MAX_ATTRIBUTES_BYTES + MAX_SECRETS_BYTES + 512 * 1024;

/// Mounts larger than this take the large-request lane (see the module documentation). A class
/// with the most objects the parser admits (1,000) is about 75 KiB; typical ones are 1-5 KiB.
pub const LARGE_REQUEST_BYTES: usize = 64 * 1024;

/// Default for [`crate::ProviderConfig::large_read_rate`]: bytes of large Mounts read and parsed
/// per second, at most.
pub const DEFAULT_LARGE_READ_RATE: u64 = 8 * 1024 * 1024;

/// How long the gate waits for a Mount's first bytes after its headers.
const PREFIX_TIMEOUT: Duration = Duration::from_secs(10);

/// The gRPC path of `Mount`.
const MOUNT_PATH: &str = "/v1alpha1.CSIDriverProvider/Mount";

/// The large-request lane, held by one Mount at a time.
#[derive(Debug)]
pub struct Lane {
    permit: Option<OwnedSemaphorePermit>,
    until: Instant,
}

impl Lane {
    /// Waits for the lane; once taken it stays taken for at least `len / rate`.
    pub async fn take(lane: &Arc<Semaphore>, len: usize, rate: u64) -> Self {
        // The semaphore is never closed; if it were, run without the lane rather than fail.
        let permit = lane.clone().acquire_owned().await.ok();
        let pace = Duration::from_secs_f64(len as f64 / rate.max(1) as f64);
        Self {
            permit,
            until: Instant::now() + pace.min(Duration::from_secs(60)),
        }
    }
}

impl Drop for Lane {
    /// Releases the lane, or hands it to a timer that releases it once its time is up.
    fn drop(&mut self) {
        let Some(permit) = self.permit.take() else {
            return;
        };
        if Instant::now() >= self.until {
            return;
        }
        if let Ok(rt) = tokio::runtime::Handle::try_current() {
            let until = self.until;
            rt.spawn(async move {
                tokio::time::sleep_until(until).await;
                drop(permit);
            });
        }
    }
}

/// The lane a Mount took in the gate, handed to the service through the request's extensions
/// (which must be `Clone`; the lane is taken out exactly once).
#[derive(Debug, Clone)]
pub struct GateLane(Arc<Mutex<Option<Lane>>>);

impl GateLane {
    pub fn take(&self) -> Option<Lane> {
        self.0.lock().ok().and_then(|mut l| l.take())
    }
}

/// Settings the gate shares with the service.
#[derive(Clone)]
pub struct GateConfig {
    pub lane: Arc<Semaphore>,
    pub large_read_rate: u64,
    pub refusal_delay: Duration,
    pub metrics: Arc<Metrics>,
}

/// Wraps the provider's gRPC service (see the module documentation).
#[derive(Clone)]
pub struct Gate<S> {
    inner: S,
    config: GateConfig,
}

impl<S> Gate<S> {
    pub fn new(inner: S, config: GateConfig) -> Self {
        Self { inner, config }
    }
}

impl<S: NamedService> NamedService for Gate<S> {
    const NAME: &'static str = S::NAME;
}

/// 1x to 1.5x of `delay`, so refusals that arrived together do not come back together.
pub async fn refusal_pause(delay: Duration) {
    if !delay.is_zero() {
        tokio::time::sleep(delay.mul_f64(1.0 + fastrand::f64() / 2.0)).await;
    }
}

/// The message length in a gRPC prefix split over `chunks` (at least 5 bytes in all).
fn prefix_len(chunks: &VecDeque<Result<Frame<Bytes>, Status>>) -> Option<usize> {
    let mut prefix = [0u8; 5];
    let mut have = 0;
    for chunk in chunks {
        let Some(data) = chunk.as_ref().ok().and_then(Frame::data_ref) else {
            continue;
        };
        for &b in data.iter().take(5 - have) {
            prefix[have] = b;
            have += 1;
        }
        if have == 5 {
            return Some(u32::from_be_bytes([prefix[1], prefix[2], prefix[3], prefix[4]]) as usize);
        }
    }
    None
}

/// The body as the gate found it: the frames it read, then the rest.
struct Replay {
    head: VecDeque<Result<Frame<Bytes>, Status>>,
    rest: Option<Body>,
}

impl http_body::Body for Replay {
    type Data = Bytes;
    type Error = Status;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Status>>> {
        if let Some(frame) = self.head.pop_front() {
            return Poll::Ready(Some(frame));
        }
        match self.rest.as_mut() {
            Some(body) => Pin::new(body).poll_frame(cx),
            None => Poll::Ready(None),
        }
    }

    fn is_end_stream(&self) -> bool {
        self.head.is_empty() && self.rest.as_ref().is_none_or(|b| b.is_end_stream())
    }
}

/// Reads frames until the gRPC prefix is in (or the body ends or fails).
async fn read_prefix(body: &mut Body) -> (VecDeque<Result<Frame<Bytes>, Status>>, bool) {
    let mut head = VecDeque::new();
    let mut have = 0usize;
    while have < 5 {
        match std::future::poll_fn(|cx| Pin::new(&mut *body).poll_frame(cx)).await {
            None => return (head, true),
            Some(Ok(frame)) => {
                let trailers = !frame.is_data();
                have += frame.data_ref().map_or(0, Bytes::len);
                head.push_back(Ok(frame));
                if trailers {
                    return (head, true);
                }
            }
            Some(Err(e)) => {
                head.push_back(Err(e));
                return (head, true);
            }
        }
    }
    (head, false)
}

type GateFuture =
    Pin<Box<dyn std::future::Future<Output = Result<http::Response<Body>, Infallible>> + Send>>;

impl<S> Service<http::Request<Body>> for Gate<S>
where
    S: Service<http::Request<Body>, Response = http::Response<Body>, Error = Infallible>
        + Clone
        + Send
        + 'static,
    S::Future: Send + 'static,
{
    type Response = http::Response<Body>;
    type Error = Infallible;
    type Future = GateFuture;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: http::Request<Body>) -> Self::Future {
        // The clone that was made ready is the one that is called.
        let clone = self.inner.clone();
        let mut inner = std::mem::replace(&mut self.inner, clone);
        if req.uri().path() != MOUNT_PATH {
            return Box::pin(inner.call(req));
        }
        let config = self.config.clone();
        Box::pin(async move {
            let start = std::time::Instant::now();
            let (mut parts, mut body) = req.into_parts();
            // A Mount waiting here is a call in flight: its connection is not idle.
            let _call = parts.extensions.get::<ConnInfo>().map(ConnInfo::call);
            let (head, ended) = match tokio::time::timeout(PREFIX_TIMEOUT, read_prefix(&mut body))
                .await
            {
                Ok(read) => read,
                Err(_) => {
                    let status = Status::invalid_argument(format!(
                        "Mount request: no message within {PREFIX_TIMEOUT:?} of its headers"
                    ));
                    config
                        .metrics
                        .observe_grpc(GrpcMethod::Mount, status.code(), start.elapsed());
                    return Ok(status.into_http());
                }
            };
            match prefix_len(&head) {
                Some(len) if len > MAX_REQUEST_SIZE => {
                    let status = Status::invalid_argument(format!(
                        "Mount request of {len} bytes is more than the limit of \
                         {MAX_REQUEST_SIZE} bytes (SecretProviderClass parameters and pod \
                         attributes at most {MAX_ATTRIBUTES_BYTES} bytes, the \
                         nodePublishSecretRef Secret at most {MAX_SECRETS_BYTES}): refused \
                         without reading it"
                    ));
                    config
                        .metrics
                        .observe_grpc(GrpcMethod::Mount, status.code(), start.elapsed());
                    tracing::error!(bytes = len, "mount refused: request too large");
                    // The body is dropped unread; the delay bounds how fast one caller can
                    // make the provider refuse.
                    drop(body);
                    refusal_pause(config.refusal_delay).await;
                    return Ok(status.into_http());
                }
                Some(len) if len > LARGE_REQUEST_BYTES => {
                    let lane = Lane::take(&config.lane, len, config.large_read_rate).await;
                    parts
                        .extensions
                        .insert(GateLane(Arc::new(Mutex::new(Some(lane)))));
                }
                _ => {}
            }
            let body = Body::new(Replay {
                head,
                rest: (!ended).then_some(body),
            });
            inner.call(http::Request::from_parts(parts, body)).await
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn data(b: &'static [u8]) -> Result<Frame<Bytes>, Status> {
        Ok(Frame::data(Bytes::from_static(b)))
    }

    #[test]
    fn prefix_is_read_across_frames() {
        let one: VecDeque<_> = [data(&[0, 0, 0, 1, 2, 9, 9])].into();
        assert_eq!(prefix_len(&one), Some(258));
        let split: VecDeque<_> = [
            data(&[0, 0x12]),
            data(&[]),
            data(&[0x34, 0x56]),
            data(&[0x78]),
        ]
        .into();
        assert_eq!(prefix_len(&split), Some(0x1234_5678));
        let short: VecDeque<_> = [data(&[0, 0, 0])].into();
        assert_eq!(prefix_len(&short), None);
        let failed: VecDeque<_> = [Err(Status::internal("x"))].into();
        assert_eq!(prefix_len(&failed), None);
    }

    #[tokio::test]
    async fn lane_is_held_for_its_pace_after_release() {
        let sem = Arc::new(Semaphore::new(1));
        let start = Instant::now();
        let lane = Lane::take(&sem, 100 * 1024, 1024 * 1024).await;
        drop(lane);
        // Released early: still held by the timer for the rest of its ~98 ms.
        assert_eq!(sem.available_permits(), 0);
        let _next = Lane::take(&sem, 0, 1024 * 1024).await;
        assert!(
            start.elapsed() >= Duration::from_millis(97),
            "{:?}",
            start.elapsed()
        );
        // Held as long as needed, then free: a lane past its time is released at once.
        drop(_next);
        assert_eq!(sem.available_permits(), 1);
    }
}
