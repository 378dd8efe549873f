//! The authority's Prometheus metrics.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

use murmur_net::http::HttpServerMetrics;

/// Label: why a descriptor was refused.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(crate) struct ReasonLabel {
    pub(crate) reason: &'static str,
}

/// Label: a probe's outcome.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(crate) struct OutcomeLabel {
    pub(crate) outcome: &'static str,
}

/// Label: HTTP status code.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(crate) struct StatusLabel {
    pub(crate) status: u16,
}

/// Label: an epoch number.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(crate) struct EpochLabel {
    pub(crate) epoch: u64,
}

/// Every metric the authority exports.
#[derive(Debug, Default)]
pub(crate) struct Metrics {
    pub(crate) descriptors_accepted: Counter,
    pub(crate) descriptors_refused: Family<ReasonLabel, Counter>,
    pub(crate) descriptors_stored: Gauge,
    pub(crate) votes_fetched: Counter,
    pub(crate) vote_fetches_failed: Counter,
    pub(crate) votes_refused: Counter,
    pub(crate) equivocations: Counter,
    pub(crate) signatures: Family<EpochLabel, Gauge>,
    pub(crate) documents_computed: Counter,
    pub(crate) documents_published: Counter,
    pub(crate) documents_adopted: Counter,
    pub(crate) divergent_documents: Counter,
    pub(crate) compute_failures: Counter,
    pub(crate) http_requests: Family<StatusLabel, Counter>,
    pub(crate) http_server: HttpServerMetrics,
    pub(crate) probes: Family<OutcomeLabel, Counter>,
    pub(crate) descriptors_reachable: Gauge,
    pub(crate) admitted_nodes: Gauge,
    pub(crate) admission_list_errors: Counter,
}

impl Metrics {
    /// Registers every metric in a fresh registry.
    pub(crate) fn register(&self) -> Registry {
        let mut r = Registry::with_prefix("murmur_directory");
        r.register(
            "descriptors_accepted",
            "Descriptors accepted (new, newer or identical re-uploads)",
            self.descriptors_accepted.clone(),
        );
        r.register(
            "descriptors_refused",
            "Descriptors refused, by reason",
            self.descriptors_refused.clone(),
        );
        r.register(
            "descriptors_stored",
            "Node descriptors currently held",
            self.descriptors_stored.clone(),
        );
        r.register(
            "votes_fetched",
            "Peer votes fetched and verified (direct or relayed)",
            self.votes_fetched.clone(),
        );
        r.register(
            "vote_fetches_failed",
            "Vote fetches from peers that failed (unreachable, HTTP error, undecodable)",
            self.vote_fetches_failed.clone(),
        );
        r.register(
            "votes_refused",
            "Votes refused (bad signature, unpinned authority, wrong epoch)",
            self.votes_refused.clone(),
        );
        r.register(
            "equivocations",
            "Authorities seen signing two different votes for one epoch",
            self.equivocations.clone(),
        );
        r.register(
            "consensus_signatures",
            "Valid authority signatures on this authority's document, by epoch",
            self.signatures.clone(),
        );
        r.register(
            "documents_computed",
            "Consensus documents computed and signed",
            self.documents_computed.clone(),
        );
        r.register(
            "documents_published",
            "Consensus documents that reached the threshold here",
            self.documents_published.clone(),
        );
        r.register(
            "documents_adopted",
            "Documents adopted from a peer (threshold-signed, different from ours)",
            self.documents_adopted.clone(),
        );
        r.register(
            "divergent_documents",
            "Peer documents whose bytes differ from ours (fetches that saw one)",
            self.divergent_documents.clone(),
        );
        r.register(
            "compute_failures",
            "Rounds that could not compute a document (no majority of votes or params)",
            self.compute_failures.clone(),
        );
        r.register(
            "http_requests",
            "HTTP requests served, by status",
            self.http_requests.clone(),
        );
        self.http_server.register(&mut r);
        r.register(
            "probes",
            "Reachability probes of node packet addresses, by outcome",
            self.probes.clone(),
        );
        r.register(
            "descriptors_reachable",
            "Held descriptors whose packet address the last probe reached",
            self.descriptors_reachable.clone(),
        );
        r.register(
            "admitted_nodes",
            "Node identity keys admitted (configuration and signed list)",
            self.admitted_nodes.clone(),
        );
        r.register(
            "admission_list_errors",
            "Admission list reloads refused (the file does not verify or parse)",
            self.admission_list_errors.clone(),
        );
        r
    }
}
