//! The HTTP layer shared by the Key Vault client and the credentials: one reqwest connection
//! pool (rustls + ring), `*.localhost` → loopback resolution, per-request timeout, retries with
//! jittered exponential backoff, `Retry-After` handling, an overall deadline and a per-vault
//! token-bucket rate limit. It records what it waited for in [`TransportStats`].

use std::collections::HashMap;
use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr};
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant, SystemTime};

use reqwest::header::{HeaderMap, HeaderValue, AUTHORIZATION, CONTENT_TYPE};
use reqwest::Method;
use url::Url;
use zeroize::Zeroizing;

use crate::error::{Error, HttpSource, Target};

/// Options for the HTTP layer and the Key Vault client.
#[derive(Debug, Clone)]
pub struct ClientOptions {
    /// Extra PEM CA certificates to trust (e.g. the dev vault's `ca.pem`), added to the system roots.
    pub ca_file: Option<PathBuf>,
    /// Trust the system CA bundle (`SSL_CERT_FILE` or the usual distro paths). Default true.
    pub use_system_roots: bool,
    /// Per attempt (connect + response body). Default 30 s.
    pub timeout: Duration,
    /// Retries after the first attempt. Default 10 (azure-core's default).
    pub max_retries: u32,
    /// Whole call including retries, backoff, Retry-After and rate-limit waits. Default 120 s.
    pub deadline: Duration,
    /// Client-side requests per second per vault (token bucket, 1 s burst). Default 200/s,
    /// half of Key Vault's published 4,000 GETs per 10 s per vault. `None` = unlimited.
    pub rate_limit_per_sec: Option<f64>,
    /// Key Vault api-version. Default "7.4" (GA, served by every Azure cloud).
    pub api_version: String,
    /// First backoff delay (doubles per retry, jittered). Default 500 ms.
    pub retry_base_delay: Duration,
    /// Cap on one backoff delay. Default 30 s.
    pub retry_max_delay: Duration,
    /// Require the vault host to be the challenge resource's host or a subdomain of it
    /// (as the Azure SDKs do). Default true.
    pub verify_challenge_resource: bool,
}

impl Default for ClientOptions {
    fn default() -> Self {
        Self {
            ca_file: None,
            use_system_roots: true,
            timeout: Duration::from_secs(30),
            max_retries: 10,
            deadline: Duration::from_secs(120),
            rate_limit_per_sec: Some(200.0),
            api_version: "7.4".into(),
            retry_base_delay: Duration::from_millis(500),
            retry_max_delay: Duration::from_secs(30),
            verify_challenge_resource: true,
        }
    }
}

/// What the transport did, for metrics and for tests that must *measure* retry behaviour.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TransportStats {
    /// HTTP attempts sent (including retries).
    pub attempts: u64,
    /// Attempts that were retries.
    pub retries: u64,
    /// 429 responses seen.
    pub throttled_responses: u64,
    /// Waits whose length the server dictated (`Retry-After`, `retry-after-ms`, `x-ms-retry-after-ms`).
    pub server_directed_waits: u64,
    /// Total time slept in server-directed waits.
    pub server_directed_wait_total: Duration,
    /// The shortest server-directed wait (zero when none).
    pub server_directed_wait_min: Duration,
    /// Backoff waits after 5xx/transport errors without a server hint.
    pub backoff_waits: u64,
    /// Transport failures (connect, reset, timeout) seen.
    pub transport_errors: u64,
    /// Waits imposed by the client-side rate limit, and their total.
    pub rate_limit_waits: u64,
    pub rate_limit_wait_total: Duration,
}

#[derive(Default)]
struct Counters {
    attempts: AtomicU64,
    retries: AtomicU64,
    throttled: AtomicU64,
    server_waits: AtomicU64,
    server_wait_us: AtomicU64,
    server_wait_min_us: AtomicU64,
    backoff_waits: AtomicU64,
    transport_errors: AtomicU64,
    rate_waits: AtomicU64,
    rate_wait_us: AtomicU64,
}

/// A shareable HTTP transport (cheap to clone: one connection pool).
#[derive(Clone)]
pub struct Transport {
    inner: Arc<Inner>,
}

struct Inner {
    client: reqwest::Client,
    options: ClientOptions,
    buckets: Mutex<HashMap<String, Arc<Mutex<Bucket>>>>,
    counters: Counters,
}

impl std::fmt::Debug for Transport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Transport")
            .field("options", &self.inner.options)
            .finish_non_exhaustive()
    }
}

/// Resolves `localhost` and `*.localhost` to loopback (RFC 6761) and everything else through
/// the system resolver.
#[derive(Debug, Clone, Copy, Default)]
pub struct LoopbackAwareResolver;

pub(crate) fn is_localhost_name(host: &str) -> bool {
    let h = host.trim_end_matches('.').to_ascii_lowercase();
    h == "localhost" || h.ends_with(".localhost")
}

impl reqwest::dns::Resolve for LoopbackAwareResolver {
    fn resolve(&self, name: reqwest::dns::Name) -> reqwest::dns::Resolving {
        let host = name.as_str().to_string();
        Box::pin(async move {
            if is_localhost_name(&host) {
                let addrs: Vec<SocketAddr> = vec![
                    (Ipv4Addr::LOCALHOST, 0).into(),
                    (Ipv6Addr::LOCALHOST, 0).into(),
                ];
                return Ok(Box::new(addrs.into_iter()) as reqwest::dns::Addrs);
            }
            let addrs: Vec<SocketAddr> =
                tokio::net::lookup_host((host.as_str(), 0)).await?.collect();
            Ok(Box::new(addrs.into_iter()) as reqwest::dns::Addrs)
        })
    }
}

/// The platform's trusted CAs, found as OpenSSL would (`SSL_CERT_FILE`, `SSL_CERT_DIR`, then the
/// distribution's bundle and directory paths) by `rustls-native-certs`. Unreadable or
/// unparsable entries are skipped with a warning; none at all leaves only `--ca-file` roots.
fn system_roots() -> Vec<reqwest::Certificate> {
    let found = rustls_native_certs::load_native_certs();
    for e in &found.errors {
        tracing::warn!(error = %e, "skipping part of the system CA store");
    }
    let certs: Vec<reqwest::Certificate> = found
        .certs
        .iter()
        .filter_map(|der| reqwest::Certificate::from_der(der.as_ref()).ok())
        .collect();
    if certs.is_empty() {
        tracing::warn!("no system CA certificates found; only --ca-file roots are trusted");
    } else {
        tracing::debug!(count = certs.len(), "loaded the system CA store");
    }
    certs
}

const CERTIFICATE_HINT: &str = "the server's TLS certificate was rejected (not retried); \
    trust its CA with --ca-file (or SSL_CERT_FILE) and check that the URL's host name is one the \
    certificate names";

/// Did TLS reject the server's certificate (unknown issuer, expired, wrong name, none sent)?
/// Such failures repeat on every attempt. `io::Error` hides its inner error from `source()`,
/// so an `io::Error` link is also looked into through `get_ref`.
fn rejected_certificate(e: &(dyn std::error::Error + 'static)) -> bool {
    fn walk(err: &(dyn std::error::Error + 'static), depth: u32) -> bool {
        if depth > 16 {
            return false;
        }
        if let Some(r) = err.downcast_ref::<rustls::Error>() {
            return matches!(
                r,
                rustls::Error::InvalidCertificate(_) | rustls::Error::NoCertificatesPresented
            );
        }
        let inner = err
            .downcast_ref::<std::io::Error>()
            .and_then(|io| io.get_ref());
        if inner.is_some_and(|i| walk(i, depth + 1)) {
            return true;
        }
        err.source().is_some_and(|s| walk(s, depth + 1))
    }
    walk(e, 0)
}

/// One request, rebuilt for every attempt.
pub(crate) struct Request {
    pub method: Method,
    pub url: Url,
    pub headers: Vec<(&'static str, String)>,
    pub bearer: Option<Zeroizing<String>>,
    /// `application/x-www-form-urlencoded` body (token requests).
    pub form: Option<Zeroizing<String>>,
    /// Largest response body accepted (bytes); larger ones fail with
    /// [`Error::ResponseTooLarge`] without being read further.
    pub max_body: usize,
}

/// Response body cap for Key Vault calls: a secret value is at most 25 KB and listings are
/// paged (25 items per page here), so 4 MiB is generous.
pub const MAX_VAULT_BODY: usize = 4 << 20;
/// Response body cap for token endpoints (Entra ID, IMDS, NMI): tokens are a few KB.
pub const MAX_TOKEN_BODY: usize = 256 << 10;

impl Request {
    /// A GET to a Key Vault (body cap [`MAX_VAULT_BODY`]).
    pub(crate) fn get(url: Url) -> Self {
        Self {
            method: Method::GET,
            url,
            headers: Vec::new(),
            bearer: None,
            form: None,
            max_body: MAX_VAULT_BODY,
        }
    }
}

/// A final response (success, non-retryable status, or the last retryable one).
pub(crate) struct Response {
    pub status: u16,
    pub headers: HeaderMap,
    pub body: Zeroizing<Vec<u8>>,
    pub attempts: u32,
    /// The server's last Retry-After hint, if any.
    pub retry_after: Option<Duration>,
    /// Set when the client gave up because the server asked for a wait longer than the time
    /// left before the deadline: the time that was left.
    pub beyond_deadline: Option<Duration>,
}

pub(crate) fn retryable_status(status: u16) -> bool {
    matches!(status, 408 | 429 | 500 | 502 | 503 | 504)
}

/// Seconds (possibly fractional, possibly absurdly large) as a Duration, saturating at
/// [`MAX_SERVER_WAIT`] instead of panicking; `None` for negative, NaN or non-numeric input.
fn secs_to_duration(secs: f64) -> Option<Duration> {
    if secs.is_nan() || secs < 0.0 {
        return None;
    }
    Some(
        Duration::try_from_secs_f64(secs)
            .unwrap_or(MAX_SERVER_WAIT)
            .min(MAX_SERVER_WAIT),
    )
}

/// Longest server-directed wait this client represents (larger hints saturate here; any wait
/// beyond the deadline fails at once anyway). 100 years.
pub const MAX_SERVER_WAIT: Duration = Duration::from_secs(100 * 365 * 24 * 3600);

/// `retry-after-ms`, `x-ms-retry-after-ms` (milliseconds) or `Retry-After` (seconds or HTTP date).
/// Never panics: huge values saturate at [`MAX_SERVER_WAIT`], garbage is ignored.
pub(crate) fn retry_after(headers: &HeaderMap, now: SystemTime) -> Option<Duration> {
    let text = |name: &str| {
        headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .map(str::trim)
    };
    for name in ["retry-after-ms", "x-ms-retry-after-ms"] {
        if let Some(d) = text(name)
            .and_then(|v| v.parse::<f64>().ok())
            .and_then(|ms| secs_to_duration(ms / 1000.0))
        {
            return Some(d);
        }
    }
    let v = text("retry-after")?;
    if let Ok(secs) = v.parse::<f64>() {
        return secs_to_duration(secs);
    }
    httpdate::parse_http_date(v).ok().map(|t| {
        t.duration_since(now)
            .unwrap_or(Duration::ZERO)
            .min(MAX_SERVER_WAIT)
    })
}

/// A number in [0, 1) without a RNG dependency: SipHash (randomly keyed per process) of a counter.
pub(crate) fn random_unit() -> f64 {
    use std::hash::{BuildHasher, Hasher};
    static KEYS: OnceLock<std::collections::hash_map::RandomState> = OnceLock::new();
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let mut h = KEYS.get_or_init(Default::default).build_hasher();
    h.write_u64(COUNTER.fetch_add(1, Ordering::Relaxed));
    (h.finish() >> 11) as f64 / (1u64 << 53) as f64
}

/// Random lowercase hex (JWT ids). Not for key material.
pub(crate) fn random_hex(bytes: usize) -> String {
    (0..bytes)
        .map(|_| format!("{:02x}", (random_unit() * 256.0) as u8))
        .collect()
}

struct Bucket {
    tokens: f64,
    last: Instant,
}

enum Last {
    Response(Response),
    Transport(HttpSource),
    Stalled(String),
}

/// Why a body could not be read.
enum BodyError {
    Http(reqwest::Error),
    TooLarge,
}

/// Reads a response body chunk by chunk into zeroizing memory, refusing more than `limit`
/// bytes (announced by Content-Length or actually sent).
async fn read_body(
    mut r: reqwest::Response,
    limit: usize,
) -> Result<Zeroizing<Vec<u8>>, BodyError> {
    let announced = r.content_length().unwrap_or(0);
    if announced > limit as u64 {
        return Err(BodyError::TooLarge);
    }
    let mut body = Zeroizing::new(Vec::with_capacity(announced as usize));
    while let Some(chunk) = r.chunk().await.map_err(BodyError::Http)? {
        if body.len() + chunk.len() > limit {
            return Err(BodyError::TooLarge);
        }
        if body.capacity() < body.len() + chunk.len() {
            // Grow by hand so that the old buffer is wiped rather than left behind by realloc.
            let mut bigger = Zeroizing::new(Vec::with_capacity(
                (body.len() + chunk.len())
                    .max(body.capacity() * 2)
                    .min(limit),
            ));
            bigger.extend_from_slice(&body);
            body = bigger;
        }
        body.extend_from_slice(&chunk);
    }
    Ok(body)
}

impl Transport {
    pub fn new(options: &ClientOptions) -> Result<Self, Error> {
        let mut b = reqwest::Client::builder()
            .use_rustls_tls()
            .tls_built_in_root_certs(false)
            .dns_resolver(Arc::new(LoopbackAwareResolver))
            .redirect(reqwest::redirect::Policy::none())
            .connect_timeout(options.timeout.min(Duration::from_secs(10)))
            .pool_idle_timeout(Duration::from_secs(90))
            .tcp_keepalive(Duration::from_secs(30))
            .user_agent(concat!("kvbridge/", env!("CARGO_PKG_VERSION")));
        if options.use_system_roots {
            for c in system_roots() {
                b = b.add_root_certificate(c);
            }
        }
        if let Some(path) = &options.ca_file {
            let pem = std::fs::read(path).map_err(|e| Error::read_file("CA file", path, e))?;
            let certs = reqwest::Certificate::from_pem_bundle(&pem).map_err(|_| {
                Error::invalid_file("CA file", path, "not a PEM certificate bundle")
            })?;
            if certs.is_empty() {
                return Err(Error::invalid_file(
                    "CA file",
                    path,
                    "holds no PEM certificate",
                ));
            }
            for c in certs {
                b = b.add_root_certificate(c);
            }
        }
        if let Some(r) = options.rate_limit_per_sec {
            // Below 1e-3/s a single wait would exceed 15 minutes: certainly a mistake.
            if !(r.is_finite() && r >= 1e-3) {
                return Err(Error::invalid_config(
                    "rate_limit_per_sec",
                    format!("must be at least 0.001 requests per second, got {r}"),
                ));
            }
        }
        let client = b.build().map_err(|e| Error::HttpClient {
            source: Error::http_source(e),
        })?;
        Ok(Self {
            inner: Arc::new(Inner {
                client,
                options: options.clone(),
                buckets: Mutex::new(HashMap::new()),
                counters: Counters::default(),
            }),
        })
    }

    /// A process-wide transport with default options (system roots), for credentials built
    /// without an explicit transport.
    // The one deliberate expect outside tests: default options name no CA file or proxy, so
    // building can fail only if the compiled-in TLS backend cannot initialise (a broken build,
    // found at first use), and the infallible credential constructors depend on this.
    #[allow(clippy::expect_used)]
    pub fn shared_default() -> Transport {
        static DEFAULT: OnceLock<Transport> = OnceLock::new();
        DEFAULT
            .get_or_init(|| {
                Transport::new(&ClientOptions::default()).expect("default transport builds")
            })
            .clone()
    }

    pub fn options(&self) -> &ClientOptions {
        &self.inner.options
    }

    pub fn stats(&self) -> TransportStats {
        let c = &self.inner.counters;
        let l = |a: &AtomicU64| a.load(Ordering::Relaxed);
        TransportStats {
            attempts: l(&c.attempts),
            retries: l(&c.retries),
            throttled_responses: l(&c.throttled),
            server_directed_waits: l(&c.server_waits),
            server_directed_wait_total: Duration::from_micros(l(&c.server_wait_us)),
            server_directed_wait_min: Duration::from_micros(l(&c.server_wait_min_us)),
            backoff_waits: l(&c.backoff_waits),
            transport_errors: l(&c.transport_errors),
            rate_limit_waits: l(&c.rate_waits),
            rate_limit_wait_total: Duration::from_micros(l(&c.rate_wait_us)),
        }
    }

    fn backoff(&self, retry: u32) -> Duration {
        let o = &self.inner.options;
        let exp = o
            .retry_base_delay
            .saturating_mul(1u32 << retry.saturating_sub(1).min(16))
            .min(o.retry_max_delay);
        // "Equal jitter": half fixed, half random.
        exp.mul_f64(0.5 + 0.5 * random_unit())
    }

    /// Reserves one request from the vault's bucket; sleeps when it is empty.
    async fn rate_limit(&self, key: &str, deadline: Instant) -> Result<(), Duration> {
        let Some(rate) = self.inner.options.rate_limit_per_sec else {
            return Ok(());
        };
        let bucket = {
            let mut map = self.inner.buckets.lock().unwrap_or_else(|p| p.into_inner());
            map.entry(key.to_string())
                .or_insert_with(|| {
                    Arc::new(Mutex::new(Bucket {
                        tokens: rate.max(1.0),
                        last: Instant::now(),
                    }))
                })
                .clone()
        };
        let wait = {
            let mut b = bucket.lock().unwrap_or_else(|p| p.into_inner());
            let now = Instant::now();
            b.tokens =
                (b.tokens + now.duration_since(b.last).as_secs_f64() * rate).min(rate.max(1.0));
            b.last = now;
            let wait = if b.tokens >= 1.0 {
                Duration::ZERO
            } else {
                secs_to_duration((1.0 - b.tokens) / rate).unwrap_or(MAX_SERVER_WAIT)
            };
            if wait > deadline.saturating_duration_since(now) {
                return Err(wait);
            }
            b.tokens -= 1.0;
            wait
        };
        if !wait.is_zero() {
            let c = &self.inner.counters;
            c.rate_waits.fetch_add(1, Ordering::Relaxed);
            c.rate_wait_us
                .fetch_add(wait.as_micros() as u64, Ordering::Relaxed);
            tokio::time::sleep(wait).await;
        }
        Ok(())
    }

    fn build(&self, req: &Request, timeout: Duration) -> Result<reqwest::RequestBuilder, Error> {
        let mut rb = self
            .inner
            .client
            .request(req.method.clone(), req.url.clone())
            .timeout(timeout);
        for (k, v) in &req.headers {
            rb = rb.header(*k, v.as_str());
        }
        if let Some(token) = &req.bearer {
            let value = Zeroizing::new(format!("Bearer {}", token.as_str()));
            let mut hv = HeaderValue::from_str(&value).map_err(|_| {
                Error::invalid_config(
                    "access token",
                    "contains characters not allowed in an HTTP header",
                )
            })?;
            hv.set_sensitive(true);
            rb = rb.header(AUTHORIZATION, hv);
        }
        if let Some(form) = &req.form {
            rb = rb
                .header(CONTENT_TYPE, "application/x-www-form-urlencoded")
                .body(form.as_bytes().to_vec());
        }
        Ok(rb)
    }

    /// Sends `req` with retries. Returns the final response for any status (the caller maps
    /// statuses to errors); returns an error only for transport failures, oversized bodies and
    /// the deadline. `rate_key` names the client-side rate-limit bucket (the vault origin), if any.
    ///
    /// A server-directed wait (`Retry-After` and friends) longer than the time left before the
    /// deadline is not slept: the last response is returned at once with
    /// [`Response::beyond_deadline`] set.
    pub(crate) async fn execute(
        &self,
        req: &Request,
        target: &Target,
        rate_key: Option<&str>,
    ) -> Result<Response, Error> {
        let o = &self.inner.options;
        let c = &self.inner.counters;
        let start = Instant::now();
        let deadline = start
            .checked_add(o.deadline)
            .or_else(|| start.checked_add(MAX_SERVER_WAIT))
            .unwrap_or(start);
        let timeout_err =
            |attempts: u32, last: Option<String>, source: Option<HttpSource>| Error::Timeout {
                target: Box::new(target.clone()),
                deadline: o.deadline,
                attempts,
                last,
                source,
            };
        let mut attempt: u32 = 0;
        let mut last_hint = None;
        loop {
            attempt += 1;
            if let Some(key) = rate_key {
                if let Err(wait) = self.rate_limit(key, deadline).await {
                    return Err(timeout_err(
                        attempt - 1,
                        Some(format!("client-side rate limit would wait {wait:?} more")),
                        None,
                    ));
                }
            }
            let remaining = deadline.saturating_duration_since(Instant::now());
            if remaining.is_zero() {
                return Err(timeout_err(
                    attempt - 1,
                    Some("no time left for another attempt".into()),
                    None,
                ));
            }
            let per_attempt = o.timeout.min(remaining);
            c.attempts.fetch_add(1, Ordering::Relaxed);
            if attempt > 1 {
                c.retries.fetch_add(1, Ordering::Relaxed);
            }
            let rb = self.build(req, per_attempt)?;
            let limit = req.max_body;
            let sent = tokio::time::timeout(per_attempt, async {
                let r = rb.send().await.map_err(|e| (0, BodyError::Http(e)))?;
                let status = r.status().as_u16();
                let headers = r.headers().clone();
                let body = read_body(r, limit).await.map_err(|e| (status, e))?;
                Ok::<_, (u16, BodyError)>((status, headers, body))
            })
            .await;
            let (last, delay, server_directed) = match sent {
                Ok(Ok((status, headers, body))) => {
                    if status == 429 {
                        c.throttled.fetch_add(1, Ordering::Relaxed);
                    }
                    let hint = retry_after(&headers, SystemTime::now());
                    if hint.is_some() {
                        last_hint = hint;
                    }
                    let resp = Response {
                        status,
                        headers,
                        body,
                        attempts: attempt,
                        retry_after: last_hint,
                        beyond_deadline: None,
                    };
                    if !retryable_status(status) {
                        return Ok(resp);
                    }
                    match hint {
                        // Honour the server, plus up to 10% jitter so that callers do not
                        // return in lockstep (saturating: the hint may be absurdly large).
                        Some(h) => {
                            let jitter = secs_to_duration(h.as_secs_f64() * 0.1 * random_unit())
                                .unwrap_or_default();
                            (Last::Response(resp), h.saturating_add(jitter), true)
                        }
                        None => (Last::Response(resp), self.backoff(attempt), false),
                    }
                }
                Ok(Err((status, BodyError::TooLarge))) => {
                    tracing::warn!(%target, status, limit, "response body too large; refused");
                    return Err(Error::ResponseTooLarge {
                        target: Box::new(target.clone()),
                        status,
                        limit,
                    });
                }
                Ok(Err((_, BodyError::Http(e)))) => {
                    tracing::debug!(%target, attempt, error = %crate::error::ErrorChain(&e), "transport error");
                    c.transport_errors.fetch_add(1, Ordering::Relaxed);
                    if rejected_certificate(&e) {
                        // Another attempt meets the same certificate: fail now, saying how to
                        // fix it, instead of retrying until the deadline.
                        return Err(Error::Transport {
                            target: Box::new(target.clone()),
                            attempts: attempt,
                            last: Some(CERTIFICATE_HINT.into()),
                            source: Some(Error::http_source(e)),
                        });
                    }
                    (
                        Last::Transport(Error::http_source(e)),
                        self.backoff(attempt),
                        false,
                    )
                }
                Err(_) => {
                    c.transport_errors.fetch_add(1, Ordering::Relaxed);
                    (
                        Last::Stalled(format!("no complete response within {per_attempt:?}")),
                        self.backoff(attempt),
                        false,
                    )
                }
            };
            let what = match &last {
                Last::Response(r) => format!("HTTP {}", r.status),
                Last::Transport(e) => crate::error::ErrorChain(e.as_ref()).to_string(),
                Last::Stalled(d) => d.clone(),
            };
            let give_up = |last: Last, beyond: Option<Duration>| match last {
                Last::Response(mut r) => {
                    r.beyond_deadline = beyond;
                    Ok(r)
                }
                Last::Transport(source) if beyond.is_none() => Err(Error::Transport {
                    target: Box::new(target.clone()),
                    attempts: attempt,
                    last: None,
                    source: Some(source),
                }),
                Last::Transport(source) => Err(timeout_err(attempt, None, Some(source))),
                Last::Stalled(d) if beyond.is_none() => Err(Error::Transport {
                    target: Box::new(target.clone()),
                    attempts: attempt,
                    last: Some(d),
                    source: None,
                }),
                Last::Stalled(d) => Err(timeout_err(attempt, Some(d), None)),
            };
            if attempt > o.max_retries {
                tracing::debug!(%target, attempts = attempt, last = %what, "retries exhausted");
                return give_up(last, None);
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if delay >= left {
                tracing::debug!(%target, attempts = attempt, last = %what, wait_ms = delay.as_millis() as u64, "deadline does not allow another retry");
                // A server-directed wait beyond the deadline is reported as such; a backoff
                // that does not fit is a plain timeout.
                return give_up(last, Some(left)).map(|mut r| {
                    if !server_directed {
                        r.beyond_deadline = None;
                    }
                    r
                });
            }
            if server_directed {
                c.server_waits.fetch_add(1, Ordering::Relaxed);
                let us = delay.as_micros().min(u64::MAX as u128) as u64;
                c.server_wait_us.fetch_add(us, Ordering::Relaxed);
                let _ =
                    c.server_wait_min_us
                        .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |m| {
                            (m == 0 || us < m).then_some(us)
                        });
            } else {
                c.backoff_waits.fetch_add(1, Ordering::Relaxed);
            }
            tracing::debug!(%target, attempt, last = %what, wait_ms = delay.as_millis() as u64, server_directed, "retrying");
            tokio::time::sleep(delay).await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retry_after_forms() {
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000);
        let mut h = HeaderMap::new();
        assert_eq!(retry_after(&h, now), None);
        h.insert("retry-after", HeaderValue::from_static("3"));
        assert_eq!(retry_after(&h, now), Some(Duration::from_secs(3)));
        h.insert(
            "retry-after",
            HeaderValue::from_str(&httpdate::fmt_http_date(now + Duration::from_secs(7))).unwrap(),
        );
        assert_eq!(retry_after(&h, now), Some(Duration::from_secs(7)));
        h.insert("x-ms-retry-after-ms", HeaderValue::from_static("250"));
        assert_eq!(retry_after(&h, now), Some(Duration::from_millis(250)));
        h.insert("retry-after-ms", HeaderValue::from_static("1500"));
        assert_eq!(retry_after(&h, now), Some(Duration::from_millis(1500)));
        let mut h = HeaderMap::new();
        h.insert("retry-after", HeaderValue::from_static("garbage"));
        assert_eq!(retry_after(&h, now), None);
    }

    #[test]
    fn localhost_names() {
        assert!(is_localhost_name("localhost"));
        assert!(is_localhost_name("kvbridge-demo.localhost"));
        assert!(is_localhost_name("A.LOCALHOST."));
        assert!(!is_localhost_name("localhost.example.com"));
        assert!(!is_localhost_name("notlocalhost"));
    }

    #[test]
    fn backoff_grows_with_jitter_and_cap() {
        let t = Transport::new(&ClientOptions {
            use_system_roots: false,
            ..Default::default()
        })
        .unwrap();
        for retry in 1..20 {
            let d = t.backoff(retry);
            let cap = Duration::from_millis(500)
                .saturating_mul(1 << (retry - 1).min(16))
                .min(Duration::from_secs(30));
            assert!(d >= cap / 2 && d <= cap, "{retry}: {d:?}");
        }
        let u: Vec<f64> = (0..100).map(|_| random_unit()).collect();
        assert!(u.iter().all(|x| (0.0..1.0).contains(x)));
        assert!(u.windows(2).any(|w| w[0] != w[1]));
    }

    #[tokio::test]
    async fn resolver_maps_localhost_names_to_loopback() {
        use reqwest::dns::Resolve;
        let r = LoopbackAwareResolver;
        let addrs: Vec<SocketAddr> = r
            .resolve("vault.localhost".parse().unwrap())
            .await
            .unwrap()
            .collect();
        assert_eq!(addrs[0].ip(), std::net::IpAddr::from(Ipv4Addr::LOCALHOST));
    }
}
