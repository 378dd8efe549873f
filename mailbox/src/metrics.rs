//! The provider's Prometheus metrics (served at `/metrics`).
//!
//! Counters only ever count events: no label carries a queue id, a message
//! id or anything else that would tell one queue or one sender from another.

use std::sync::OnceLock;
use std::sync::atomic::AtomicU64;

use murmur_net::http::HttpServerMetrics;
use murmur_wire::mailbox::QueueItem;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

use crate::store::InsertOutcome;

type Labels = [(&'static str, &'static str); 1];
type Counters = Family<Labels, Counter>;

/// Outcome labels of stored items.
const OUTCOMES: [&str; 6] = [
    "stored",
    "duplicate",
    "refused_full",
    "unknown_queue",
    "overloaded",
    "failed",
];

/// Why a final-hop item was not stored (or stored once more).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Outcome {
    Stored = 0,
    Duplicate = 1,
    RefusedFull = 2,
    UnknownQueue = 3,
    Overloaded = 4,
    Failed = 5,
}

impl From<InsertOutcome> for Outcome {
    fn from(o: InsertOutcome) -> Self {
        match o {
            InsertOutcome::Stored { .. } => Self::Stored,
            InsertOutcome::Duplicate { .. } => Self::Duplicate,
            InsertOutcome::QueueFull => Self::RefusedFull,
            InsertOutcome::UnknownQueue => Self::UnknownQueue,
        }
    }
}

/// The kinds of stored items, counted apart.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Kind {
    Deposit,
    Loop,
    Reply,
}

impl Kind {
    pub(crate) fn of(item: &QueueItem) -> Self {
        match item {
            QueueItem::Deposit { .. } => Self::Deposit,
            QueueItem::Loop { .. } => Self::Loop,
            QueueItem::Reply { .. } => Self::Reply,
        }
    }
}

/// Reasons the fetch API refuses a request, as metric labels.
pub(crate) const API_ERRORS: [&str; 12] = [
    "malformed",
    "bad_signature",
    "stale",
    "replayed",
    "unknown_queue",
    "too_large",
    "throttled",
    "rate_limited",
    "queue_cap",
    "busy",
    "not_found",
    "internal",
];

/// Why the replay cache forgot a request, as metric labels (see
/// `nonce.rs`).
const EVICTIONS: [&str; 3] = ["scope_full", "cache_full", "global"];

/// Every metric of a provider, registered in one [`Registry`].
#[derive(Debug)]
pub struct Metrics {
    registry: Registry,
    /// The node plumbing's metrics (packet engine, registration), attached
    /// once the engine has started and rendered after the provider's own.
    node: OnceLock<Registry>,
    deposits: [Counter; 6],
    loops: [Counter; 6],
    replies: [Counter; 6],
    pub(crate) drop_cover: Counter,
    pub(crate) malformed: Counter,
    pub(crate) acks_sent: Counter,
    pub(crate) acks_failed: Counter,
    batch_size: Histogram,
    // The histogram's count and sum, readable (the histogram's are not).
    batches: Counter,
    batched_items: Counter,
    pub(crate) commit_failures: Counter,
    pub(crate) fetches: Counter,
    pub(crate) owner_deletions: Counter,
    pub(crate) entries_deleted: Counter,
    pub(crate) queues_created: Counter,
    pub(crate) queues_deleted: Counter,
    pub(crate) reaped: Counter,
    pub(crate) queues: Gauge<u64, AtomicU64>,
    api_errors: Counters,
    api_handshakes: Counters,
    nonce_evictions: [Counter; 3],
    pub(crate) nonces: Gauge,
    pub(crate) queues_expired: Counter,
    http: HttpServerMetrics,
}

fn per_outcome(family: &Counters) -> [Counter; 6] {
    OUTCOMES.map(|o| family.get_or_create_owned(&[("outcome", o)]))
}

impl Metrics {
    /// Creates and registers every metric (prefix `murmur_mailbox`).
    pub fn new() -> Self {
        let mut registry = Registry::with_prefix("murmur_mailbox");
        let deposits = Counters::default();
        registry.register(
            "deposits",
            "Deposits received, by outcome (overloaded: the write queue was full; failed: the commit failed)",
            deposits.clone(),
        );
        let loops = Counters::default();
        registry.register(
            "loops",
            "Loop cover packets received, by outcome",
            loops.clone(),
        );
        let replies = Counters::default();
        registry.register(
            "replies",
            "SURB replies (acknowledgements for queue owners) received, by outcome",
            replies.clone(),
        );
        let api_errors = Counters::default();
        registry.register(
            "api_errors",
            "Fetch API requests refused, by reason",
            api_errors.clone(),
        );
        for reason in API_ERRORS {
            // Create each series up front so that it shows at zero.
            drop(api_errors.get_or_create(&[("reason", reason)]));
        }
        let api_handshakes = Counters::default();
        registry.register(
            "api_link_handshake_failures",
            "Link handshakes on the fetch API's listener that failed, by reason (timeout, io, bad_message1..3)",
            api_handshakes.clone(),
        );
        let evictions = Counters::default();
        registry.register(
            "nonce_evictions",
            "Requests the replay cache forgot to make room, by reason (scope_full: the queue's own window; cache_full: the largest queue paid; global: no queue held more than one)",
            evictions.clone(),
        );
        let m = Self {
            nonce_evictions: EVICTIONS.map(|r| evictions.get_or_create_owned(&[("reason", r)])),
            nonces: Gauge::default(),
            queues_expired: Counter::default(),
            deposits: per_outcome(&deposits),
            loops: per_outcome(&loops),
            replies: per_outcome(&replies),
            drop_cover: Counter::default(),
            malformed: Counter::default(),
            acks_sent: Counter::default(),
            acks_failed: Counter::default(),
            batch_size: Histogram::new(exponential_buckets(1.0, 2.0, 13)),
            batches: Counter::default(),
            batched_items: Counter::default(),
            commit_failures: Counter::default(),
            fetches: Counter::default(),
            owner_deletions: Counter::default(),
            entries_deleted: Counter::default(),
            queues_created: Counter::default(),
            queues_deleted: Counter::default(),
            reaped: Counter::default(),
            queues: Gauge::default(),
            api_errors,
            api_handshakes,
            http: HttpServerMetrics::default(),
            registry,
            node: OnceLock::new(),
        };
        m.register_rest()
    }

    fn register_rest(mut self) -> Self {
        let r = &mut self.registry;
        r.register(
            "drop_cover",
            "Drop cover packets received and discarded",
            self.drop_cover.clone(),
        );
        r.register(
            "malformed",
            "Final-hop packets whose payload could not be parsed, dropped",
            self.malformed.clone(),
        );
        r.register(
            "acks_sent",
            "Acknowledgements handed to the mixnet after a deposit was durable",
            self.acks_sent.clone(),
        );
        r.register(
            "acks_failed",
            "Acknowledgements that could not be built or sent",
            self.acks_failed.clone(),
        );
        r.register(
            "batch_size",
            "Items per group-commit transaction",
            self.batch_size.clone(),
        );
        r.register(
            "commit_failures",
            "Group-commit transactions that failed (their items were not stored or acknowledged)",
            self.commit_failures.clone(),
        );
        r.register("fetches", "Owner fetches served", self.fetches.clone());
        r.register(
            "owner_deletions",
            "Owner deletions of named entries served",
            self.owner_deletions.clone(),
        );
        r.register(
            "entries_deleted",
            "Entries deleted by their owner",
            self.entries_deleted.clone(),
        );
        r.register(
            "queues_created",
            "Queues created",
            self.queues_created.clone(),
        );
        r.register(
            "queues_deleted",
            "Queues deleted by their owners",
            self.queues_deleted.clone(),
        );
        r.register(
            "reaped",
            "Entries deleted by the reaper after the retention time",
            self.reaped.clone(),
        );
        r.register("queues", "Queues that exist", self.queues.clone());
        r.register(
            "queues_expired",
            "Queues deleted by the reaper because their owner had not used them for storage.queue_idle_secs",
            self.queues_expired.clone(),
        );
        r.register(
            "nonces",
            "Requests the replay cache holds (and queues kept only for their floor)",
            self.nonces.clone(),
        );
        self.http.register(r);
        self
    }

    pub(crate) fn nonce_evicted(&self, why: crate::nonce::Eviction) {
        use crate::nonce::Eviction;
        let i = match why {
            Eviction::ScopeFull => 0,
            Eviction::CacheFull => 1,
            Eviction::Global => 2,
        };
        self.nonce_evictions[i].inc();
    }

    /// Requests the replay cache forgot to make room, by reason:
    /// (own window full, largest queue paid, global floor).
    pub fn nonce_evictions(&self) -> [u64; 3] {
        [0, 1, 2].map(|i| self.nonce_evictions[i].get())
    }

    /// The fetch API listener's counters (connections, per-address
    /// refusals, timeouts), registered with the provider's own.
    pub fn http_server(&self) -> &HttpServerMetrics {
        &self.http
    }

    /// The registry of the provider's own metrics.
    pub fn registry(&self) -> &Registry {
        &self.registry
    }

    /// Attaches the node plumbing's registry (the packet engine's and the
    /// registration's metrics), rendered after the provider's own. Only the
    /// first call has an effect; returns whether this one did.
    pub fn attach_node_registry(&self, registry: Registry) -> bool {
        self.node.set(registry).is_ok()
    }

    /// Renders every metric in the Prometheus text exposition format.
    pub fn render(&self) -> Result<String, std::fmt::Error> {
        use prometheus_client::encoding::text::{encode_eof, encode_registry};
        let mut out = String::new();
        encode_registry(&mut out, &self.registry)?;
        if let Some(node) = self.node.get() {
            encode_registry(&mut out, node)?;
        }
        encode_eof(&mut out)?;
        Ok(out)
    }

    pub(crate) fn count(&self, kind: Kind, outcome: Outcome) {
        let set = match kind {
            Kind::Deposit => &self.deposits,
            Kind::Loop => &self.loops,
            Kind::Reply => &self.replies,
        };
        set[outcome as usize].inc();
    }

    pub(crate) fn batch(&self, items: usize) {
        self.batch_size.observe(items as f64);
        self.batches.inc();
        self.batched_items.inc_by(items as u64);
    }

    pub(crate) fn api_error(&self, reason: &'static str) {
        self.api_errors.get_or_create(&[("reason", reason)]).inc();
    }

    pub(crate) fn api_handshake_failed(&self, reason: &'static str) {
        self.api_handshakes
            .get_or_create(&[("reason", reason)])
            .inc();
    }

    /// Failed link handshakes on the fetch API's listener with the given
    /// reason label so far (for tests).
    pub fn api_handshake_failures(&self, reason: &'static str) -> u64 {
        self.api_handshakes
            .get_or_create(&[("reason", reason)])
            .get()
    }

    /// Deposits with the given outcome label so far (for tests and benchmarks).
    pub fn deposits(&self, outcome: &str) -> u64 {
        OUTCOMES
            .iter()
            .position(|o| *o == outcome)
            .map_or(0, |i| self.deposits[i].get())
    }

    /// Fetch API refusals with the given reason label so far.
    pub fn api_errors(&self, reason: &str) -> u64 {
        API_ERRORS.iter().find(|r| **r == reason).map_or(0, |r| {
            self.api_errors.get_or_create(&[("reason", *r)]).get()
        })
    }

    /// Queues deleted by the reaper because nobody used them.
    pub fn queues_expired(&self) -> u64 {
        self.queues_expired.get()
    }

    /// Group-commit transactions so far, and the items they held.
    pub fn batches(&self) -> (u64, u64) {
        (self.batches.get(), self.batched_items.get())
    }

    /// Owner fetches served so far.
    pub fn fetches(&self) -> u64 {
        self.fetches.get()
    }

    /// Entries deleted by their owners so far.
    pub fn entries_deleted(&self) -> u64 {
        self.entries_deleted.get()
    }

    /// Acknowledgements handed to the packet sink so far.
    pub fn acks_sent(&self) -> u64 {
        self.acks_sent.get()
    }

    /// Acknowledgements that could not be built or were refused by the
    /// packet sink so far.
    pub fn acks_failed(&self) -> u64 {
        self.acks_failed.get()
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}
