//! The fetch API over HTTP: queue creation and owner requests (fetch,
//! delete entries, delete the queue), served on encrypted links
//! ([`Api::handle`]); and the operator's `/metrics` and `/healthz`, served
//! on a separate plain listener ([`Api::handle_operator`]).
//!
//! Every refusal is a 4xx/5xx with a one-line plain-text reason, counted by
//! reason in `murmur_mailbox_api_errors_total`:
//!
//! | status | reason label | when |
//! |---|---|---|
//! | 400 | `malformed` | the body does not decode, has an unknown version, asks for a fetch of 0 entries or a deletion of more than `MAX_DELETE` |
//! | 401 | `bad_signature` | the signature does not verify under the owner key (or the key is not a valid point) |
//! | 401 | `stale` | the timestamp is more than `FRESHNESS_WINDOW_SECS` away from the provider's clock, or older than the provider's start |
//! | 404 | `unknown_queue` | no such queue |
//! | 409 | `replayed` | the nonce was seen for this queue (or owner key) within the window |
//! | 413 | `too_large` | the body is over `MAX_REQUEST_SIZE` bytes |
//! | 429 | `throttled` | this queue (or creating key) sent so many requests that the replay cache forgot some signed at or before this one's timestamp; sign a new one |
//! | 429 | `rate_limited` | creation refused: this client address created its share of queues; retry later |
//! | 503 | `queue_cap` | creation refused: the provider holds its maximum number of queues |
//! | 503 | `busy` | creation refused: the provider created its share of queues for now; or the replay cache, full of single requests, forgot requests this old |
//! | 404/405 | `not_found` | unknown path or method |
//! | 500 | `internal` | storage failed (logged) |
//!
//! Checks run in this order: size, decoding, (creation: the address's
//! creation budget,) timestamp, queue lookup, signature, (creation: the
//! provider's creation budget,) nonce. A nonce is remembered only once the
//! signature has verified, so nobody but the owner can use up the owner's
//! nonces; the replay cache (`nonce.rs`) keeps a window per queue and
//! makes a flooding queue pay for its own flood.

use std::net::SocketAddr;
use std::sync::Arc;

use bytes::Bytes;
use http::{Method, Request, StatusCode};
use hyper::body::Incoming;
use murmur_net::clock::Clock;
use murmur_net::http::{HttpResponse, POSTCARD, read_body, remote_addr, response, text};
use murmur_wire::mailbox::{
    CreateQueueResponse, FRESHNESS_WINDOW_SECS, MAX_DELETE, MAX_REQUEST_SIZE, OwnerOp, OwnerReply,
    OwnerResponse, RequestDigest, SignedCreateQueue, SignedOwnerRequest,
};
use murmur_wire::{IdentityKey, QueueId};

use crate::limits::{CreationLimiter, Limited, QueueUsage};
use crate::metrics::Metrics;
use crate::nonce::{NonceCache, NonceCheck, Scope};
use crate::store::{CreateOutcome, Store};

/// Settings of the fetch API.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ApiConfig {
    /// Queues the provider holds at most; creation beyond is refused (503).
    pub max_queues: u64,
    /// Requests remembered at most, in all (each until its timestamp is
    /// older than the freshness window).
    pub nonce_cache_capacity: usize,
    /// Requests remembered per queue (or creating owner key) at most: a
    /// queue sending more forgets its oldest and is throttled for requests
    /// that old.
    pub nonces_per_queue: usize,
    /// Queues one client address (IPv4 address, IPv6 /64) may create at once.
    pub create_burst_per_address: u32,
    /// Queues one client address may create per hour after its burst.
    pub create_per_address_per_hour: u32,
    /// Queues the provider creates at once, from all addresses.
    pub create_burst: u32,
    /// Queues the provider creates per hour after that burst.
    pub create_per_hour: u32,
}

impl Default for ApiConfig {
    fn default() -> Self {
        Self {
            max_queues: 1_000_000,
            nonce_cache_capacity: 200_000,
            nonces_per_queue: 1024,
            create_burst_per_address: 20,
            create_per_address_per_hour: 60,
            create_burst: 200,
            create_per_hour: 36_000,
        }
    }
}

/// A refusal: status, reason label, one-line message.
struct Refusal {
    status: StatusCode,
    reason: &'static str,
    message: String,
}

fn refuse(status: StatusCode, reason: &'static str, message: impl Into<String>) -> Refusal {
    Refusal {
        status,
        reason,
        message: message.into(),
    }
}

fn internal(e: impl std::fmt::Display) -> Refusal {
    tracing::error!(error = %e, "fetch API request failed in storage");
    refuse(
        StatusCode::INTERNAL_SERVER_ERROR,
        "internal",
        "internal error",
    )
}

/// Maps a wire error on decoding/verifying a request to a refusal.
fn wire_refusal(e: murmur_wire::Error) -> Refusal {
    match e {
        murmur_wire::Error::BadSignature { .. } | murmur_wire::Error::InvalidPublicKey { .. } => {
            refuse(
                StatusCode::UNAUTHORIZED,
                "bad_signature",
                format!("bad signature: {e}"),
            )
        }
        other => refuse(
            StatusCode::BAD_REQUEST,
            "malformed",
            format!("malformed request: {other}"),
        ),
    }
}

/// The fetch API's state, shared by every request.
#[derive(Debug)]
pub struct Api {
    store: Arc<dyn Store>,
    clock: Arc<dyn Clock>,
    metrics: Arc<Metrics>,
    nonces: NonceCache,
    limiter: CreationLimiter,
    usage: Arc<QueueUsage>,
    config: ApiConfig,
    /// Requests signed before this (unix seconds) are refused: the nonce
    /// cache is in memory and starts empty, so this keeps a request captured
    /// before a restart from being replayed after it.
    not_before: u64,
    /// What `/healthz` answers; `ok` when not set.
    health: Option<HealthCheck>,
}

/// A health check: what `GET /healthz` answers (status and one line).
pub struct HealthCheck(Box<dyn Fn() -> (StatusCode, String) + Send + Sync>);

impl HealthCheck {
    /// A check that runs `f` for every request.
    pub fn new(f: impl Fn() -> (StatusCode, String) + Send + Sync + 'static) -> Self {
        Self(Box::new(f))
    }
}

impl std::fmt::Debug for HealthCheck {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("HealthCheck")
    }
}

impl std::fmt::Debug for dyn Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Store")
    }
}

impl Api {
    /// The API over `store`, judging freshness by `clock`.
    pub fn new(
        store: Arc<dyn Store>,
        clock: Arc<dyn Clock>,
        metrics: Arc<Metrics>,
        config: ApiConfig,
    ) -> Self {
        let not_before = clock.now_secs();
        Self {
            store,
            clock,
            metrics,
            nonces: NonceCache::new(
                config.nonce_cache_capacity,
                config.nonces_per_queue,
                FRESHNESS_WINDOW_SECS,
            ),
            limiter: CreationLimiter::new(
                config.create_burst_per_address,
                config.create_per_address_per_hour,
                config.create_burst,
                config.create_per_hour,
            ),
            usage: Arc::new(QueueUsage::default()),
            config,
            not_before,
            health: None,
        }
    }

    /// The record of owner requests per queue, which the reaper writes to
    /// the store before it expires queues nobody used
    /// ([`crate::reaper::run_reaper`]).
    pub fn queue_usage(&self) -> Arc<QueueUsage> {
        self.usage.clone()
    }

    /// Makes `/healthz` answer what `check` says instead of a plain `ok`
    /// (the daemon reports whether it is listed in the consensus).
    pub fn with_health(mut self, check: HealthCheck) -> Self {
        self.health = Some(check);
        self
    }

    /// Serves one request of the operator's listener: `/metrics` and
    /// `/healthz` (nothing of the fetch API).
    pub async fn handle_operator(self: Arc<Self>, req: Request<Incoming>) -> HttpResponse {
        match (req.method(), req.uri().path()) {
            (&Method::GET, "/healthz") => match &self.health {
                Some(check) => {
                    let (status, body) = (check.0)();
                    text(status, body)
                }
                None => text(StatusCode::OK, "ok"),
            },
            (&Method::GET, "/metrics") => match self.metrics.render() {
                Ok(body) => response(
                    StatusCode::OK,
                    "application/openmetrics-text; version=1.0.0; charset=utf-8",
                    body,
                ),
                Err(_) => text(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "could not encode metrics",
                ),
            },
            (_, "/healthz" | "/metrics") => {
                text(StatusCode::METHOD_NOT_ALLOWED, "method not allowed")
            }
            _ => text(StatusCode::NOT_FOUND, "no such endpoint"),
        }
    }

    /// Serves one request of the fetch API (on an encrypted link).
    pub async fn handle(self: Arc<Self>, req: Request<Incoming>) -> HttpResponse {
        let method = req.method().clone();
        let result = match (method, req.uri().path()) {
            (Method::POST, "/v1/queues") => {
                let from = remote_addr(&req);
                match self.body(req).await {
                    Ok(body) => self.create(&body, from).await,
                    Err(r) => Err(r),
                }
            }
            (Method::POST, "/v1/queue") => match self.body(req).await {
                Ok(body) => self.owner(&body).await,
                Err(r) => Err(r),
            },
            (_, "/v1/queues" | "/v1/queue") => Err(refuse(
                StatusCode::METHOD_NOT_ALLOWED,
                "not_found",
                "method not allowed",
            )),
            _ => Err(refuse(
                StatusCode::NOT_FOUND,
                "not_found",
                "no such endpoint",
            )),
        };
        match result {
            Ok(resp) => resp,
            Err(r) => {
                self.metrics.api_error(r.reason);
                tracing::debug!(status = %r.status, reason = r.reason, "refused a fetch API request");
                text(r.status, r.message)
            }
        }
    }

    async fn body(&self, req: Request<Incoming>) -> Result<Bytes, Refusal> {
        match read_body(req, MAX_REQUEST_SIZE).await {
            Ok((_, body)) => Ok(body),
            Err(resp) if resp.status() == StatusCode::PAYLOAD_TOO_LARGE => Err(refuse(
                StatusCode::PAYLOAD_TOO_LARGE,
                "too_large",
                format!("request body exceeds {MAX_REQUEST_SIZE} bytes"),
            )),
            Err(_) => Err(refuse(
                StatusCode::BAD_REQUEST,
                "malformed",
                "could not read the request body",
            )),
        }
    }

    fn check_time(&self, timestamp: u64) -> Result<u64, Refusal> {
        let now = self.clock.now_secs();
        if timestamp.abs_diff(now) > FRESHNESS_WINDOW_SECS {
            return Err(refuse(
                StatusCode::UNAUTHORIZED,
                "stale",
                format!(
                    "stale request: timestamp {timestamp} is more than {FRESHNESS_WINDOW_SECS} s from the provider's clock ({now})"
                ),
            ));
        }
        if timestamp < self.not_before {
            return Err(refuse(
                StatusCode::UNAUTHORIZED,
                "stale",
                format!(
                    "stale request: timestamp {timestamp} is older than the provider's last start ({})",
                    self.not_before
                ),
            ));
        }
        Ok(now)
    }

    fn check_nonce(
        &self,
        scope: Scope,
        nonce: [u8; 16],
        timestamp: u64,
        now: u64,
    ) -> Result<(), Refusal> {
        let checked = self.nonces.check(scope, nonce, timestamp, now, |why| {
            self.metrics.nonce_evicted(why);
        });
        self.metrics.nonces.set(self.nonces.len() as i64);
        match checked {
            NonceCheck::Fresh => Ok(()),
            NonceCheck::Replayed => Err(refuse(
                StatusCode::CONFLICT,
                "replayed",
                "replayed request: this nonce was already used",
            )),
            NonceCheck::Throttled => Err(refuse(
                StatusCode::TOO_MANY_REQUESTS,
                "throttled",
                "too many requests for this queue: requests signed this early can no longer be checked for replays; sign a new one",
            )),
            NonceCheck::Busy => Err(refuse(
                StatusCode::SERVICE_UNAVAILABLE,
                "busy",
                "too many recent requests to check one signed this early for replays; sign a new one",
            )),
        }
    }

    fn now_ms(&self) -> u64 {
        u64::try_from(self.clock.now().as_millis()).unwrap_or(u64::MAX)
    }

    async fn blocking<T: Send + 'static>(
        &self,
        f: impl FnOnce(&dyn Store) -> crate::Result<T> + Send + 'static,
    ) -> Result<T, Refusal> {
        let store = self.store.clone();
        match tokio::task::spawn_blocking(move || f(&*store)).await {
            Ok(Ok(v)) => Ok(v),
            Ok(Err(e)) => Err(internal(e)),
            Err(e) => Err(internal(e)),
        }
    }

    async fn create(&self, body: &[u8], from: Option<SocketAddr>) -> Result<HttpResponse, Refusal> {
        let signed = SignedCreateQueue::from_bytes(body).map_err(wire_refusal)?;
        // The address's budget first: a flood from one address costs no
        // signature checks once its budget is spent.
        if let Some(from) = from {
            self.limiter
                .check_address(from.ip(), self.now_ms())
                .map_err(limited)?;
        }
        let req = signed.verify().map_err(wire_refusal)?;
        let now = self.check_time(req.timestamp)?;
        // The provider's budget after the signature (junk cannot spend it)
        // and before the nonce (which bounds the creation nonces held).
        self.limiter.check_total(self.now_ms()).map_err(limited)?;
        let mut scope = [0u8; 33];
        scope[1..].copy_from_slice(&req.owner.0);
        self.check_nonce(scope, req.nonce, req.timestamp, now)?;
        let owner: IdentityKey = req.owner;
        let max = self.config.max_queues;
        let queue = self
            .blocking(move |store| {
                // A fresh random id collides with an existing one with
                // probability ~2^-200; try again rather than fail.
                for _ in 0..4 {
                    let queue = QueueId::random(&mut rand::rng());
                    match store.create_queue(&queue, &owner, now, max)? {
                        CreateOutcome::Created => return Ok(Some(queue)),
                        CreateOutcome::AtCapacity => return Ok(None),
                        CreateOutcome::Exists => continue,
                    }
                }
                Ok(None)
            })
            .await?;
        let Some(queue) = queue else {
            return Err(refuse(
                StatusCode::SERVICE_UNAVAILABLE,
                "queue_cap",
                "this provider holds its maximum number of queues",
            ));
        };
        self.metrics.queues_created.inc();
        self.metrics.queues.inc();
        encoded(
            CreateQueueResponse {
                request: RequestDigest::of(body),
                queue,
            }
            .to_bytes(),
        )
    }

    async fn owner(&self, body: &[u8]) -> Result<HttpResponse, Refusal> {
        let signed = SignedOwnerRequest::from_bytes(body).map_err(wire_refusal)?;
        let peeked = signed.peek().map_err(wire_refusal)?;
        let now = self.check_time(peeked.timestamp)?;
        let queue = peeked.queue;
        let info = self.blocking(move |store| store.queue(&queue)).await?;
        let Some(info) = info else {
            return Err(unknown_queue());
        };
        let req = signed.verify(&info.owner).map_err(wire_refusal)?;
        let mut scope = [1u8; 33];
        scope[1..].copy_from_slice(queue.as_bytes());
        self.check_nonce(scope, req.nonce, req.timestamp, now)?;
        // An authenticated, fresh owner request: the queue is in use.
        self.usage.touch(queue, now);
        let reply = match req.op {
            OwnerOp::Fetch { limit: 0, .. } => {
                return Err(refuse(
                    StatusCode::BAD_REQUEST,
                    "malformed",
                    "malformed request: a fetch must ask for at least one entry",
                ));
            }
            OwnerOp::Fetch { after, limit } => {
                let page = self
                    .blocking(move |store| store.fetch(&queue, after, limit))
                    .await?
                    .ok_or_else(unknown_queue)?;
                self.metrics.fetches.inc();
                OwnerReply::Fetched(page)
            }
            OwnerOp::Delete { seqs } if seqs.len() > MAX_DELETE => {
                return Err(refuse(
                    StatusCode::BAD_REQUEST,
                    "malformed",
                    format!("malformed request: a deletion names at most {MAX_DELETE} entries"),
                ));
            }
            OwnerOp::Delete { seqs } => {
                let deleted = self
                    .blocking(move |store| store.delete(&queue, &seqs))
                    .await?
                    .ok_or_else(unknown_queue)?;
                self.metrics.owner_deletions.inc();
                self.metrics.entries_deleted.inc_by(deleted);
                OwnerReply::Deleted { deleted }
            }
            OwnerOp::DeleteQueue => {
                if !self
                    .blocking(move |store| store.delete_queue(&queue))
                    .await?
                {
                    return Err(unknown_queue());
                }
                self.metrics.queues_deleted.inc();
                self.metrics.queues.dec();
                OwnerReply::QueueDeleted
            }
        };
        encoded(
            OwnerResponse {
                request: RequestDigest::of(body),
                reply,
            }
            .to_bytes(),
        )
    }
}

fn limited(why: Limited) -> Refusal {
    match why {
        Limited::Address => refuse(
            StatusCode::TOO_MANY_REQUESTS,
            "rate_limited",
            "too many queues created from this address; retry later",
        ),
        Limited::Total => refuse(
            StatusCode::SERVICE_UNAVAILABLE,
            "busy",
            "too many queues are being created; retry later",
        ),
    }
}

fn unknown_queue() -> Refusal {
    refuse(StatusCode::NOT_FOUND, "unknown_queue", "no such queue")
}

fn encoded(bytes: murmur_wire::Result<Vec<u8>>) -> Result<HttpResponse, Refusal> {
    match bytes {
        Ok(b) => Ok(response(StatusCode::OK, POSTCARD, b)),
        Err(e) => Err(internal(e)),
    }
}
