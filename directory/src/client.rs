//! The directory client nodes and clients use: fetch-and-verify from any of
//! the pinned authorities, keep the last good document, upload descriptors,
//! and a background follower that tracks the current epoch's document.

use std::collections::BTreeMap;
use std::fmt;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http::StatusCode;
use murmur_wire::policy::epoch_at;
use murmur_wire::{AuthoritySet, SignedConsensus, SignedDescriptor, VerifiedConsensus};
use rand::seq::SliceRandom;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use crate::error::Error;
use crate::pin::AuthorityPin;
use murmur_net::clock::Clock;
use murmur_net::http::{HttpClient, HttpError, POSTCARD};

/// The most bytes a consensus document (with its signatures) may take on
/// the wire; larger responses are refused unread.
pub const MAX_CONSENSUS_SIZE: usize = 8 * 1024 * 1024;

/// Largest error text kept from an authority's answer.
const MAX_REASON: usize = 200;

/// Why one authority did not give a usable answer.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum AttemptError {
    /// The authority could not be reached, timed out, or sent too much.
    #[error("unreachable")]
    Unreachable(#[source] HttpError),
    /// The authority answered with an error status.
    #[error("HTTP {status}: {message}")]
    Status {
        /// The status code.
        status: u16,
        /// The first line of its text body.
        message: String,
    },
    /// The document (or the answer) was refused: undecodable, under the
    /// threshold, forged, for another epoch, expired, ...
    #[error("refused")]
    Refused(#[source] murmur_wire::Error),
}

impl AttemptError {
    /// The reason with its cause, on one line.
    pub fn describe(&self) -> String {
        match self {
            AttemptError::Unreachable(e) => {
                let mut s = format!("unreachable: {e}");
                let mut src = std::error::Error::source(e);
                while let Some(cause) = src {
                    s.push_str(&format!(": {cause}"));
                    src = cause.source();
                }
                s
            }
            AttemptError::Status { .. } => self.to_string(),
            AttemptError::Refused(e) => format!("refused: {e}"),
        }
    }
}

/// One authority's outcome in a fetch or an upload.
#[derive(Debug)]
pub struct Attempt {
    /// The authority.
    pub authority: AuthorityPin,
    /// What went wrong with it.
    pub error: AttemptError,
}

/// No authority served a document that verifies; each one's reason.
#[derive(Debug, thiserror::Error)]
pub struct FetchError {
    /// The epoch asked for (`None`: the current document).
    pub epoch: Option<u64>,
    /// Every authority tried, in the order tried.
    pub attempts: Vec<Attempt>,
}

impl fmt::Display for FetchError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.epoch {
            Some(e) => write!(f, "no valid consensus for epoch {e}")?,
            None => write!(f, "no valid current consensus")?,
        }
        for a in &self.attempts {
            write!(
                f,
                "; authority {} at {}: {}",
                a.authority.key,
                a.authority.addr,
                a.error.describe()
            )?;
        }
        Ok(())
    }
}

/// The outcome of uploading a descriptor to every authority.
#[derive(Debug, Default)]
pub struct UploadReport {
    /// Authorities that accepted it.
    pub accepted: Vec<AuthorityPin>,
    /// Authorities that refused it or could not be reached, with why.
    pub failed: Vec<Attempt>,
}

impl UploadReport {
    /// True if every authority accepted it.
    pub fn all_accepted(&self) -> bool {
        self.failed.is_empty()
    }
}

impl fmt::Display for UploadReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "accepted by {} of {} authorities",
            self.accepted.len(),
            self.accepted.len() + self.failed.len()
        )?;
        for a in &self.failed {
            write!(f, "; {}: {}", a.authority.addr, a.error.describe())?;
        }
        Ok(())
    }
}

/// Fetch-and-verify client for the directory. Cheap to clone; clones share
/// the last good documents.
#[derive(Clone, Debug)]
pub struct DirectoryClient {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    endpoints: Vec<AuthorityPin>,
    set: AuthoritySet,
    http: HttpClient,
    /// Verified documents by epoch (the newest few).
    good: Mutex<BTreeMap<u64, Arc<VerifiedConsensus>>>,
}

/// Verified documents kept by a client.
const KEEP_GOOD: usize = 4;

fn first_line(body: &[u8]) -> String {
    let text = String::from_utf8_lossy(body);
    let line = text.lines().next().unwrap_or("").trim();
    line.chars()
        .filter(|c| !c.is_control())
        .take(MAX_REASON)
        .collect()
}

impl DirectoryClient {
    /// A client pinning `endpoints`' keys, accepting documents signed by at
    /// least `threshold` of them.
    pub fn new(
        endpoints: Vec<AuthorityPin>,
        threshold: usize,
        http: HttpClient,
    ) -> Result<Self, Error> {
        let set = AuthoritySet::new(endpoints.iter().map(|e| e.key).collect(), threshold).map_err(
            |source| Error::Wire {
                what: "invalid authority set",
                source,
            },
        )?;
        Ok(Self {
            inner: Arc::new(Inner {
                endpoints,
                set,
                http,
                good: Mutex::new(BTreeMap::new()),
            }),
        })
    }

    /// The pinned authorities and threshold.
    pub fn authorities(&self) -> &AuthoritySet {
        &self.inner.set
    }

    /// The pinned endpoints.
    pub fn endpoints(&self) -> &[AuthorityPin] {
        &self.inner.endpoints
    }

    fn shuffled(&self) -> Vec<AuthorityPin> {
        let mut order = self.inner.endpoints.clone();
        order.shuffle(&mut rand::rng());
        order
    }

    fn remember(&self, doc: &Arc<VerifiedConsensus>) {
        let mut good = self
            .inner
            .good
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        good.insert(doc.epoch(), doc.clone());
        while good.len() > KEEP_GOOD {
            good.pop_first();
        }
    }

    /// Tries every authority in turn (shuffled) until a document verifies
    /// (k of n signatures, right epoch, not expired); remembers it as the
    /// last good one. On failure, the error lists each authority's reason.
    pub async fn fetch(
        &self,
        epoch: u64,
        now_secs: u64,
    ) -> Result<Arc<VerifiedConsensus>, FetchError> {
        self.fetch_path(&format!("/v1/consensus/{epoch}"), Some(epoch), now_secs)
            .await
    }

    /// Like [`fetch`](Self::fetch) for the authorities' current document
    /// (`GET /v1/consensus/current`), for a caller that does not know the
    /// epoch length yet. Refuses a document not yet in force at `now_secs`.
    pub async fn fetch_current(&self, now_secs: u64) -> Result<Arc<VerifiedConsensus>, FetchError> {
        self.fetch_path("/v1/consensus/current", None, now_secs)
            .await
    }

    async fn fetch_path(
        &self,
        path: &str,
        epoch: Option<u64>,
        now_secs: u64,
    ) -> Result<Arc<VerifiedConsensus>, FetchError> {
        let mut attempts = Vec::new();
        for ep in self.shuffled() {
            match self.fetch_one(&ep, path, epoch, now_secs).await {
                Ok(doc) => {
                    let doc = Arc::new(doc);
                    self.remember(&doc);
                    return Ok(doc);
                }
                Err(error) => {
                    tracing::debug!(authority = %ep.key, error = %error.describe(), "directory fetch failed");
                    attempts.push(Attempt {
                        authority: ep,
                        error,
                    });
                }
            }
        }
        Err(FetchError { epoch, attempts })
    }

    async fn fetch_one(
        &self,
        ep: &AuthorityPin,
        path: &str,
        epoch: Option<u64>,
        now_secs: u64,
    ) -> Result<VerifiedConsensus, AttemptError> {
        let (status, body) = self
            .inner
            .http
            .get(ep.addr, path, MAX_CONSENSUS_SIZE)
            .await
            .map_err(AttemptError::Unreachable)?;
        if status != StatusCode::OK {
            return Err(AttemptError::Status {
                status: status.as_u16(),
                message: first_line(&body),
            });
        }
        let signed = SignedConsensus::from_bytes(&body).map_err(AttemptError::Refused)?;
        let doc = signed
            .verify(&self.inner.set, now_secs, epoch)
            .map_err(AttemptError::Refused)?;
        if epoch.is_none() && doc.document().valid_after > now_secs {
            return Err(AttemptError::Refused(murmur_wire::Error::NotYetValid {
                epoch: doc.epoch(),
                valid_after: doc.document().valid_after,
                now: now_secs,
            }));
        }
        Ok(doc)
    }

    /// The newest verified document in force at `now_secs` (its window has
    /// opened and not yet closed).
    pub fn last_good(&self, now_secs: u64) -> Option<Arc<VerifiedConsensus>> {
        let good = self
            .inner
            .good
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        good.values()
            .rev()
            .find(|d| d.document().valid_after <= now_secs && d.is_fresh(now_secs))
            .cloned()
    }

    /// A verified document for `epoch` already held (fetched earlier and
    /// still fresh at `now_secs`).
    pub fn cached(&self, epoch: u64, now_secs: u64) -> Option<Arc<VerifiedConsensus>> {
        let good = self
            .inner
            .good
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        good.get(&epoch).filter(|d| d.is_fresh(now_secs)).cloned()
    }

    /// POSTs the descriptor to every authority (concurrently); reports
    /// each one's outcome.
    pub async fn upload_descriptor(&self, d: &SignedDescriptor) -> UploadReport {
        let mut report = UploadReport::default();
        let body = match d.to_bytes() {
            Ok(b) => Bytes::from(b),
            Err(e) => {
                for ep in &self.inner.endpoints {
                    report.failed.push(Attempt {
                        authority: *ep,
                        error: AttemptError::Refused(murmur_wire::Error::Invalid {
                            what: "descriptor",
                            reason: format!("could not encode: {e}"),
                        }),
                    });
                }
                return report;
            }
        };
        let uploads = self.inner.endpoints.iter().map(|ep| {
            let body = body.clone();
            async move {
                let r = self
                    .inner
                    .http
                    .post(ep.addr, "/v1/descriptors", POSTCARD, body, 4096)
                    .await;
                (*ep, r)
            }
        });
        for (ep, r) in futures::future::join_all(uploads).await {
            match r {
                Ok((StatusCode::OK, _)) => report.accepted.push(ep),
                Ok((status, body)) => report.failed.push(Attempt {
                    authority: ep,
                    error: AttemptError::Status {
                        status: status.as_u16(),
                        message: first_line(&body),
                    },
                }),
                Err(e) => report.failed.push(Attempt {
                    authority: ep,
                    error: AttemptError::Unreachable(e),
                }),
            }
        }
        report
    }
}

// ------------------------------------------------------------------ follower

#[derive(Debug, Default)]
struct FollowerState {
    previous: Option<Arc<VerifiedConsensus>>,
    current: Option<Arc<VerifiedConsensus>>,
    next: Option<Arc<VerifiedConsensus>>,
    last_error: Option<String>,
}

/// A view of the documents a follower keeps. Cheap to clone.
#[derive(Clone, Debug)]
pub struct ConsensusWatch {
    rx: watch::Receiver<Option<Arc<VerifiedConsensus>>>,
    state: Arc<Mutex<FollowerState>>,
}

impl ConsensusWatch {
    fn lock(&self) -> std::sync::MutexGuard<'_, FollowerState> {
        self.state
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// The document in force: the current epoch's, or — while the current
    /// epoch's cannot be had — the previous one during its grace period.
    /// `None` before the first document and after the last one expired.
    pub fn current(&self) -> Option<Arc<VerifiedConsensus>> {
        self.rx.borrow().clone()
    }

    /// The previous, current or next epoch's document, if held.
    pub fn get(&self, epoch: u64) -> Option<Arc<VerifiedConsensus>> {
        let st = self.lock();
        [&st.previous, &st.current, &st.next]
            .into_iter()
            .flatten()
            .find(|d| d.epoch() == epoch)
            .cloned()
    }

    /// Waits until [`current`](Self::current) changes. Fails once the
    /// follower has stopped.
    pub async fn changed(&mut self) -> Result<(), Error> {
        self.rx.changed().await.map_err(|_| Error::FollowerStopped)
    }

    /// Why the newest fetch failed (each authority's reason), for users;
    /// `None` after a success.
    pub fn last_error(&self) -> Option<String> {
        self.lock().last_error.clone()
    }
}

/// Background task: keeps the current epoch's document (fetching as soon as
/// it is published, retrying with backoff), fetches the next epoch's ahead
/// of the boundary, switches at the boundary, and keeps the previous one
/// for packets in flight. Stops when `shutdown` is cancelled.
pub fn spawn_follower(
    client: DirectoryClient,
    clock: Arc<dyn Clock>,
    shutdown: CancellationToken,
) -> ConsensusWatch {
    let (tx, rx) = watch::channel(None);
    let state = Arc::new(Mutex::new(FollowerState::default()));
    let watch = ConsensusWatch {
        rx,
        state: state.clone(),
    };
    tokio::spawn(async move {
        let mut f = Follower {
            client,
            clock,
            tx,
            state,
            backoff: BACKOFF_MIN,
            retry_at_ms: 0,
        };
        loop {
            let wait = tokio::select! {
                _ = shutdown.cancelled() => break,
                wait = f.step() => wait,
            };
            tokio::select! {
                _ = shutdown.cancelled() => break,
                _ = tokio::time::sleep(wait) => {}
            }
        }
    });
    watch
}

const BACKOFF_MIN: Duration = Duration::from_millis(200);
const BACKOFF_MAX: Duration = Duration::from_secs(3);
/// The follower re-reads the clock at least this often (so a clock that
/// jumps, or a suspended machine, is noticed).
const MAX_SLEEP: Duration = Duration::from_millis(250);

struct Follower {
    client: DirectoryClient,
    clock: Arc<dyn Clock>,
    tx: watch::Sender<Option<Arc<VerifiedConsensus>>>,
    state: Arc<Mutex<FollowerState>>,
    backoff: Duration,
    retry_at_ms: u64,
}

impl Follower {
    fn lock(&self) -> std::sync::MutexGuard<'_, FollowerState> {
        self.state
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn now_ms(&self) -> u64 {
        u64::try_from(self.clock.now().as_millis()).unwrap_or(u64::MAX)
    }

    fn publish_current(&self) {
        let current = self.lock().current.clone();
        self.tx.send_if_modified(|held| {
            let same = match (&*held, &current) {
                (None, None) => true,
                (Some(a), Some(b)) => a.epoch() == b.epoch() && a.signed() == b.signed(),
                _ => false,
            };
            if !same {
                *held = current.clone();
            }
            !same
        });
    }

    fn failed(&mut self, now_ms: u64, error: String) {
        tracing::debug!(%error, "consensus fetch failed");
        self.lock().last_error = Some(error);
        self.retry_at_ms =
            now_ms.saturating_add(u64::try_from(self.backoff.as_millis()).unwrap_or(0));
        self.backoff = (self.backoff * 2).min(BACKOFF_MAX);
    }

    fn succeeded(&mut self) {
        self.lock().last_error = None;
        self.backoff = BACKOFF_MIN;
        self.retry_at_ms = 0;
    }

    /// One pass; returns how long to sleep.
    async fn step(&mut self) -> Duration {
        let now_ms = self.now_ms();
        let now = now_ms / 1000;
        // Switch at the boundary; drop what expired.
        {
            let mut st = self.lock();
            if let Some(next) = st.next.clone()
                && next.document().valid_after <= now
            {
                st.previous = st.current.take();
                st.current = Some(next);
                st.next = None;
            }
            if st.current.as_ref().is_some_and(|c| !c.is_fresh(now)) {
                st.current = None;
            }
            if st.previous.as_ref().is_some_and(|c| !c.is_fresh(now)) {
                st.previous = None;
            }
        }
        self.publish_current();
        if now_ms < self.retry_at_ms {
            return Duration::from_millis(self.retry_at_ms - now_ms).min(MAX_SLEEP);
        }

        let current = self.lock().current.clone();
        let Some(cur) = current else {
            // Nothing in force: ask for the current document.
            match self.client.fetch_current(now).await {
                Ok(doc) => {
                    self.succeeded();
                    let mut st = self.lock();
                    st.current = Some(doc);
                    drop(st);
                    self.publish_current();
                    return Duration::ZERO;
                }
                Err(e) => self.failed(now_ms, e.to_string()),
            }
            return BACKOFF_MIN.min(MAX_SLEEP);
        };
        let len = cur.params().epoch_secs.max(1);
        let epoch = epoch_at(now, len);
        if cur.epoch() < epoch {
            // The current epoch's document is missing: keep the previous
            // one (grace) and fetch the current one.
            match self.client.fetch(epoch, now).await {
                Ok(doc) => {
                    self.succeeded();
                    let mut st = self.lock();
                    st.previous = st.current.take();
                    st.current = Some(doc);
                    drop(st);
                    self.publish_current();
                    return Duration::ZERO;
                }
                Err(e) => self.failed(now_ms, e.to_string()),
            }
            return MAX_SLEEP;
        }
        // Fetch the next epoch's document once it should be published
        // (three quarters into the epoch), ahead of the boundary.
        let next_epoch = cur.epoch().saturating_add(1);
        let have_next = self
            .lock()
            .next
            .as_ref()
            .is_some_and(|n| n.epoch() == next_epoch);
        let next_start_ms = next_epoch.saturating_mul(len).saturating_mul(1000);
        let fetch_from_ms = next_start_ms.saturating_sub(len.saturating_mul(1000) / 4);
        if !have_next && now_ms >= fetch_from_ms {
            match self.client.fetch(next_epoch, now).await {
                Ok(doc) => {
                    self.succeeded();
                    self.lock().next = Some(doc);
                    return Duration::ZERO;
                }
                Err(e) => self.failed(now_ms, e.to_string()),
            }
            return MAX_SLEEP;
        }
        let until = if have_next {
            next_start_ms
        } else {
            fetch_from_ms
        };
        Duration::from_millis(until.saturating_sub(now_ms))
            .clamp(Duration::from_millis(10), MAX_SLEEP)
    }
}
