//! The engine's counters, registered in the owner's Prometheus registry.

use std::sync::atomic::AtomicU64;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

/// Why the engine dropped a packet (the `reason` label of `packets_dropped`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum DropReason {
    /// Not a packet for any key in the ring (header MAC), or Sphinx
    /// processing failed (e.g. a final-hop payload that fails its check).
    Malformed,
    /// The replay tag was seen before in this key epoch.
    Replay,
    /// The next hop is in neither the current nor the previous consensus
    /// (or there is no consensus yet).
    UnknownNextHop,
    /// The header asks for a longer delay than the consensus allows.
    DelayTooLong,
    /// The packet waited longer than `max_unwrap_dwell_ms` before a worker
    /// picked it up.
    DwellExceeded,
    /// The unwrap queue was full.
    OverloadUnwrap,
    /// The delay queue was full.
    OverloadDelay,
    /// The next hop's link queue (or all link queues together) was full:
    /// a slow or unreachable next hop.
    OverloadLink,
    /// Too many outbound links were open to create one more.
    OverloadLinks,
    /// The link to the next hop failed while the packet was being written.
    LinkFailed,
    /// The node shut down while the packet was held for its delay.
    Shutdown,
}

impl DropReason {
    /// Every reason.
    pub const ALL: [Self; 11] = [
        Self::Malformed,
        Self::Replay,
        Self::UnknownNextHop,
        Self::DelayTooLong,
        Self::DwellExceeded,
        Self::OverloadUnwrap,
        Self::OverloadDelay,
        Self::OverloadLink,
        Self::OverloadLinks,
        Self::LinkFailed,
        Self::Shutdown,
    ];

    /// The label value.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Malformed => "malformed",
            Self::Replay => "replay",
            Self::UnknownNextHop => "unknown_next_hop",
            Self::DelayTooLong => "delay_too_long",
            Self::DwellExceeded => "dwell_exceeded",
            Self::OverloadUnwrap => "overload_unwrap",
            Self::OverloadDelay => "overload_delay",
            Self::OverloadLink => "overload_link",
            Self::OverloadLinks => "overload_links",
            Self::LinkFailed => "link_failed",
            Self::Shutdown => "shutdown",
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Hash, EncodeLabelSet)]
struct DropLabels {
    reason: &'static str,
}

/// Why an inbound connection was closed (the `reason` label of
/// `inbound_closed`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum CloseReason {
    /// The peer closed the connection cleanly between frames.
    Eof,
    /// The frame header was not a Murmur packet frame (magic, version, kind).
    Garbage,
    /// The frame announced a length other than the packet size.
    WrongSize,
    /// The connection ended inside a frame.
    Truncated,
    /// No complete frame within the read timeout.
    Timeout,
    /// A socket error.
    Io,
    /// The node shut down.
    Shutdown,
    /// The link handshake failed or timed out (see `link_handshake_failures`).
    Handshake,
    /// A link record did not verify (tampering, or not a Murmur link).
    BadRecord,
    /// An unidentified initiator (a client) at a node that takes packets
    /// only from nodes (an inner-layer mix, a mailbox).
    ClientRefused,
}

impl CloseReason {
    /// Every reason.
    pub const ALL: [Self; 10] = [
        Self::Eof,
        Self::Garbage,
        Self::WrongSize,
        Self::Truncated,
        Self::Timeout,
        Self::Io,
        Self::Shutdown,
        Self::Handshake,
        Self::BadRecord,
        Self::ClientRefused,
    ];

    /// The label value.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Eof => "eof",
            Self::Garbage => "garbage",
            Self::WrongSize => "wrong_size",
            Self::Truncated => "truncated",
            Self::Timeout => "timeout",
            Self::Io => "io",
            Self::Shutdown => "shutdown",
            Self::Handshake => "handshake",
            Self::BadRecord => "bad_record",
            Self::ClientRefused => "client_refused",
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Hash, EncodeLabelSet)]
struct HandshakeLabels {
    side: &'static str,
    reason: &'static str,
}

#[derive(Clone, Debug, PartialEq, Eq, Hash, EncodeLabelSet)]
struct PeerLabels {
    kind: &'static str,
}

#[derive(Clone, Debug, PartialEq, Eq, Hash, EncodeLabelSet)]
struct CloseLabels {
    reason: &'static str,
}

/// All engine metrics. Cheap to clone (every metric is a shared handle).
#[derive(Clone, Debug)]
pub(crate) struct EngineMetrics {
    pub(crate) received: Counter,
    pub(crate) forwarded: Counter,
    pub(crate) delivered: Counter,
    pub(crate) sent_own: Counter,
    dropped: Family<DropLabels, Counter>,
    closed: Family<CloseLabels, Counter>,
    pub(crate) connections_open: Gauge,
    pub(crate) connections_accepted: Counter,
    pub(crate) links_up: Gauge,
    pub(crate) link_connect_failures: Counter,
    handshake_failures: Family<HandshakeLabels, Counter>,
    peers: Family<PeerLabels, Counter>,
    pub(crate) unwrap_queue: Gauge,
    pub(crate) delay_queue: Gauge,
    pub(crate) link_queue: Gauge,
    pub(crate) processing: Histogram,
    pub(crate) replay_persist_errors: Counter,
    pub(crate) replay_segments: Gauge,
    pub(crate) replay_tags: Gauge,
    pub(crate) replay_capacity: Gauge,
    pub(crate) replay_bytes: Gauge,
    pub(crate) replay_saturated_tags: Counter,
    pub(crate) replay_saturated: Gauge,
    pub(crate) replay_fp_bound: Gauge<f64, AtomicU64>,
}

impl EngineMetrics {
    pub(crate) fn register(registry: &mut Registry) -> Self {
        let m = Self {
            received: Counter::default(),
            forwarded: Counter::default(),
            delivered: Counter::default(),
            sent_own: Counter::default(),
            dropped: Family::default(),
            closed: Family::default(),
            connections_open: Gauge::default(),
            connections_accepted: Counter::default(),
            links_up: Gauge::default(),
            link_connect_failures: Counter::default(),
            handshake_failures: Family::default(),
            peers: Family::default(),
            unwrap_queue: Gauge::default(),
            delay_queue: Gauge::default(),
            link_queue: Gauge::default(),
            // 25 µs .. ~0.8 s.
            processing: Histogram::new(exponential_buckets(25e-6, 2.0, 16)),
            replay_persist_errors: Counter::default(),
            replay_segments: Gauge::default(),
            replay_tags: Gauge::default(),
            replay_capacity: Gauge::default(),
            replay_bytes: Gauge::default(),
            replay_saturated_tags: Counter::default(),
            replay_saturated: Gauge::default(),
            replay_fp_bound: Gauge::default(),
        };
        // Show every reason from the start, at zero.
        for reason in DropReason::ALL {
            let _ = m.dropped.get_or_create(&DropLabels {
                reason: reason.as_str(),
            });
        }
        for reason in CloseReason::ALL {
            let _ = m.closed.get_or_create(&CloseLabels {
                reason: reason.as_str(),
            });
        }
        registry.register(
            "packets_received",
            "Packets read from inbound links (complete, well-formed frames)",
            m.received.clone(),
        );
        registry.register(
            "packets_forwarded",
            "Packets written to the next hop's link",
            m.forwarded.clone(),
        );
        registry.register(
            "packets_delivered",
            "Packets for which this node is the final hop, handed to the final-hop handler",
            m.delivered.clone(),
        );
        registry.register(
            "packets_sent_own",
            "Packets the node itself sent through its links (loops, acknowledgements), accepted into a link queue",
            m.sent_own.clone(),
        );
        registry.register(
            "packets_dropped",
            "Packets dropped, by reason",
            m.dropped.clone(),
        );
        registry.register(
            "inbound_closed",
            "Inbound connections closed, by reason (garbage, wrong_size and truncated are bad frames)",
            m.closed.clone(),
        );
        registry.register(
            "inbound_connections",
            "Inbound connections open",
            m.connections_open.clone(),
        );
        registry.register(
            "inbound_accepted",
            "Inbound connections accepted",
            m.connections_accepted.clone(),
        );
        registry.register("links_up", "Outbound links connected", m.links_up.clone());
        registry.register(
            "link_connect_failures",
            "Failed attempts to connect an outbound link",
            m.link_connect_failures.clone(),
        );
        registry.register(
            "link_handshake_failures",
            "Link handshakes that failed, by side (inbound, outbound) and reason (timeout, io, bad_message1..3)",
            m.handshake_failures.clone(),
        );
        registry.register(
            "inbound_peers",
            "Inbound links after their handshake, by the initiator's kind (node: its link key is in the consensus; client: unidentified)",
            m.peers.clone(),
        );
        registry.register(
            "unwrap_queue_depth",
            "Packets waiting for a worker",
            m.unwrap_queue.clone(),
        );
        registry.register(
            "delay_queue_depth",
            "Packets held for their delay",
            m.delay_queue.clone(),
        );
        registry.register(
            "link_queue_depth",
            "Packets waiting in outbound link queues (all links)",
            m.link_queue.clone(),
        );
        registry.register(
            "processing_seconds",
            "Time from a packet's arrival to the end of its unwrapping (queueing included)",
            m.processing.clone(),
        );
        registry.register(
            "replay_persist_errors",
            "Failed writes of the replay cache (tag log, snapshot); replay protection continues in memory",
            m.replay_persist_errors.clone(),
        );
        registry.register(
            "replay_filter_segments",
            "Replay filter segments held (all key epochs; a chain grows a segment when one is full)",
            m.replay_segments.clone(),
        );
        registry.register(
            "replay_filter_tags",
            "Replay tags recorded (all key epochs held)",
            m.replay_tags.clone(),
        );
        registry.register(
            "replay_filter_capacity_tags",
            "Replay tags one key epoch's chain holds before it saturates (segments allowed x tags per segment)",
            m.replay_capacity.clone(),
        );
        registry.register(
            "replay_filter_bytes",
            "Memory of the replay filters held, bytes",
            m.replay_bytes.clone(),
        );
        registry.register(
            "replay_saturated_tags",
            "Replay tags recorded past a chain's capacity (the filter is saturating: fresh packets may be dropped as replays)",
            m.replay_saturated_tags.clone(),
        );
        registry.register(
            "replay_filter_saturated",
            "1 while a held key epoch's replay filter chain is past its capacity (an alarm), else 0",
            m.replay_saturated.clone(),
        );
        registry.register(
            "replay_false_positive_bound",
            "Estimated chance that a fresh packet is taken for a replay (largest over the key epochs held)",
            m.replay_fp_bound.clone(),
        );
        m
    }

    pub(crate) fn drop(&self, reason: DropReason) {
        self.dropped
            .get_or_create(&DropLabels {
                reason: reason.as_str(),
            })
            .inc();
    }

    pub(crate) fn drop_n(&self, reason: DropReason, n: u64) {
        if n > 0 {
            self.dropped
                .get_or_create(&DropLabels {
                    reason: reason.as_str(),
                })
                .inc_by(n);
        }
    }

    pub(crate) fn dropped(&self, reason: DropReason) -> u64 {
        self.dropped
            .get_or_create(&DropLabels {
                reason: reason.as_str(),
            })
            .get()
    }

    pub(crate) fn handshake_failed(&self, side: &'static str, reason: &'static str) {
        self.handshake_failures
            .get_or_create(&HandshakeLabels { side, reason })
            .inc();
    }

    pub(crate) fn handshake_failures(&self) -> u64 {
        let mut total = 0;
        for side in ["inbound", "outbound"] {
            for reason in [
                "timeout",
                "io",
                "connect",
                "bad_message1",
                "bad_message2",
                "bad_message3",
                "http",
            ] {
                total += self
                    .handshake_failures
                    .get_or_create(&HandshakeLabels { side, reason })
                    .get();
            }
        }
        total
    }

    pub(crate) fn peer(&self, kind: &'static str) {
        self.peers.get_or_create(&PeerLabels { kind }).inc();
    }

    pub(crate) fn peers(&self, kind: &'static str) -> u64 {
        self.peers.get_or_create(&PeerLabels { kind }).get()
    }

    pub(crate) fn closed(&self, reason: CloseReason) {
        self.closed
            .get_or_create(&CloseLabels {
                reason: reason.as_str(),
            })
            .inc();
    }

    pub(crate) fn closed_count(&self, reason: CloseReason) -> u64 {
        self.closed
            .get_or_create(&CloseLabels {
                reason: reason.as_str(),
            })
            .get()
    }
}
