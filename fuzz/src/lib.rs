//! Fuzz target bodies for Murmur's parsers of network and user input.
//!
//! Each public function takes arbitrary bytes and feeds them to the real
//! parsing code through the crates' public APIs. None of them may panic,
//! hang or allocate what the input asks for: a panic here is a bug in the
//! crate under test. The cargo-fuzz binaries in `fuzz_targets/` call these
//! functions (nightly, `--features libfuzzer`); `tests/smoke.rs` calls them
//! on stable over the checked-in corpora, the regressions and generated
//! inputs. See `docs/fuzzing.md`.
//!
//! Where a check comes after a signature or an AEAD tag, random bytes never
//! reach it, so the structure-aware modes sign or encrypt fuzzer-chosen
//! contents with the fixed test keys of [`keys`] (the way a hostile but
//! legitimate sender could) before handing them to the parser.
//!
//! Besides "no panic", some targets check an oracle: whatever parses
//! re-encodes to something that parses to the same value, and a packet
//! built and processed hop by hop delivers what was put in.

#![forbid(unsafe_code)]

pub mod keys;
mod link;
mod mailbox_http;
pub mod seeds;

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::path::Path;
use std::time::Duration;

use arbitrary::{Arbitrary, Unstructured};
use bytes::{Bytes, BytesMut};
use murmur_client::fragment::{self, Reassembly};
use murmur_client::invite::Invitation;
use murmur_client::seal;
use murmur_wire::mailbox::{
    CreateQueueResponse, OwnerReply, OwnerResponse, SignedCreateQueue, SignedOwnerRequest,
};
use murmur_wire::packet::{PAYLOAD_CAPACITY, SPHINX_PAYLOAD_SIZE};
use murmur_wire::{
    Ack, Consensus, Delivery, Descriptor, Destination, EpochKey, FinalPayload, Hop, IdentityKey,
    MailboxEntry, MixEntry, NetworkParams, PACKET_SIZE, Packet, PacketCodec, Processed, Role,
    Route, SignedConsensus, SignedDescriptor, SignedVote, SphinxPublicKey, Surb, SurbId,
    SurbRecovery, build_forward_packet, build_surb,
};
use rand::SeedableRng;
use rand_chacha::ChaCha20Rng;
use tokio_util::codec::Decoder;

pub use link::link;
pub use mailbox_http::{mailbox_counts, mailbox_http, mailbox_http_exchange};

/// A target's body.
pub type Target = fn(&[u8]);

/// The targets, by name, as cargo-fuzz and the smoke test know them.
pub const TARGETS: &[(&str, Target)] = &[
    ("frame", frame),
    ("link", link),
    ("sphinx_packet", sphinx_packet),
    ("sphinx_structured", sphinx_structured),
    ("final_payload", final_payload),
    ("descriptor", descriptor),
    ("consensus", consensus),
    ("mailbox_api", mailbox_api),
    ("mailbox_http", mailbox_http),
    ("invitation", invitation),
    ("client_fragments", client_fragments),
    ("configs", configs),
];

/// Splits off the first byte (a mode selector), or `None` for empty input.
fn mode(data: &[u8]) -> Option<(u8, &[u8])> {
    data.split_first().map(|(m, rest)| (*m, rest))
}

/// `data` cut or zero-padded to exactly `len` bytes.
fn fit(data: &[u8], len: usize) -> Vec<u8> {
    let mut v = data[..data.len().min(len)].to_vec();
    v.resize(len, 0);
    v
}

// ---------------------------------------------------------------------------
// frame

/// `PacketCodec` over a hostile stream: the bytes arrive in chunks whose
/// sizes the input chooses. Each decoded packet must be the 2nd..N-th bytes
/// of a frame; a decode error ends the stream (the link is closed); the
/// buffer never grows past one frame plus one chunk.
pub fn frame(data: &[u8]) {
    // First byte: chunk-size seed. The rest: the stream.
    let Some((seed, stream)) = mode(data) else {
        return;
    };
    let mut codec = PacketCodec;
    let mut buf = BytesMut::new();
    let mut fed = 0usize;
    let mut step = usize::from(seed) + 1;
    let mut packets = 0usize;
    while fed < stream.len() {
        // Chunk sizes vary deterministically with the seed: 1..=256 bytes,
        // sometimes a whole frame at once.
        step = (step * 31 + 7) % 257;
        let n = if step % 5 == 0 {
            murmur_wire::frame::FRAME_SIZE
        } else {
            step + 1
        };
        let end = (fed + n).min(stream.len());
        buf.extend_from_slice(&stream[fed..end]);
        fed = end;
        loop {
            match codec.decode(&mut buf) {
                Ok(Some(p)) => {
                    assert_eq!(p.as_bytes().len(), PACKET_SIZE);
                    packets += 1;
                }
                Ok(None) => break,
                Err(_) => return,
            }
        }
        assert!(
            buf.len() < murmur_wire::frame::FRAME_SIZE,
            "decoder left a whole frame undecoded"
        );
        assert!(
            buf.capacity() <= 2 * murmur_wire::frame::FRAME_SIZE + 512,
            "decoder reserved {} bytes",
            buf.capacity()
        );
    }
    let _ = codec.decode_eof(&mut buf);
    assert!(packets <= stream.len() / murmur_wire::frame::FRAME_SIZE);
}

// ---------------------------------------------------------------------------
// sphinx_packet

/// Arbitrary bytes as a packet: `Packet::from_bytes` on the input as it is
/// (length check), then the input cut or padded to a packet and processed
/// with the fixed mix key ring (`KeyRing::unwrap`, then `finish`).
pub fn sphinx_packet(data: &[u8]) {
    let _ = Packet::from_bytes(Bytes::copy_from_slice(data));
    let Ok(packet) = Packet::from_bytes(Bytes::from(fit(data, PACKET_SIZE))) else {
        panic!("a packet-sized buffer was refused");
    };
    let ring = keys::key_ring(0);
    if let Ok(unwrapped) = ring.unwrap(&packet) {
        let _ = unwrapped.replay_tag();
        let _ = unwrapped.key_epoch();
        let _ = unwrapped.finish();
    }
    let _ = ring.process(&packet);
}

/// What `sphinx_structured` builds and mutates.
#[derive(Arbitrary, Debug)]
struct SphinxCase {
    /// Nodes (indexes into the fixed nodes) of the route, in order.
    hops: Vec<u8>,
    /// Per-hop delays, µs.
    delays: Vec<u64>,
    /// Build a SURB reply instead of a forward packet.
    reply: bool,
    surb_id: [u8; 16],
    destination: [u8; 32],
    plaintext: Vec<u8>,
    /// Key epoch the packet is built for (0 or 1: both are in the rings).
    epoch: bool,
    seed: [u8; 32],
    /// Byte flips: (hop at which to apply, position, xor mask).
    mutations: Vec<(u8, u16, u8)>,
    /// Build the forward packet with `sphinx-packet` directly, as a hostile
    /// client can: any header version, any hop addresses, any identifier.
    raw: Option<RawSphinx>,
}

/// What a hostile client can choose that `build_forward_packet` does not
/// let it.
#[derive(Arbitrary, Debug)]
struct RawSphinx {
    version: u16,
    /// Per hop: the address written in the header instead of the node id.
    addresses: Vec<Option<[u8; 32]>>,
    identifier: [u8; 16],
    secret: [u8; 32],
}

/// Builds a forward packet with `sphinx-packet`'s own builder.
fn build_raw(
    raw: &RawSphinx,
    route: &Route,
    destination: [u8; 32],
    plaintext: &[u8],
) -> Option<Packet> {
    use sphinx_packet::route::{DestinationAddressBytes, Node as SphinxNode, NodeAddressBytes};
    let nodes: Vec<SphinxNode> = route
        .hops()
        .iter()
        .enumerate()
        .map(|(i, h)| {
            let addr = raw
                .addresses
                .get(i)
                .copied()
                .flatten()
                .unwrap_or(h.id.to_bytes());
            SphinxNode::new(
                NodeAddressBytes::from_bytes(addr),
                x25519_dalek::PublicKey::from(h.key.0),
            )
        })
        .collect();
    let delays: Vec<_> = route
        .delays()
        .iter()
        .map(|d| {
            sphinx_packet::header::delays::Delay::new_from_nanos(
                u64::try_from(d.as_nanos()).unwrap_or(u64::MAX),
            )
        })
        .collect();
    let dest = sphinx_packet::route::Destination::new(
        DestinationAddressBytes::from_bytes(destination),
        raw.identifier,
    );
    let secret = x25519_dalek::StaticSecret::from(raw.secret);
    let packet = sphinx_packet::SphinxPacketBuilder::new()
        .with_version(sphinx_packet::version::Version(raw.version))
        .with_payload_size(SPHINX_PAYLOAD_SIZE)
        .with_initial_secret(&secret)
        .build_packet(plaintext, &nodes, &dest, &delays)
        .ok()?;
    Packet::from_bytes(Bytes::from(packet.to_bytes())).ok()
}

/// Structure-aware Sphinx: builds a real packet (forward, or a reply through
/// a SURB) along a fuzzer-chosen route of the fixed nodes, then processes it
/// hop by hop with each node's key ring, flipping fuzzer-chosen bytes on the
/// way. Flips in the payload pass the header MAC, so `finish`, the payload
/// decryption and the final-hop integrity check see hostile bytes too.
/// Without flips, the final hop must deliver exactly what was sent.
pub fn sphinx_structured(data: &[u8]) {
    let _ = sphinx_structured_delivers(data);
}

/// [`sphinx_structured`], telling whether the packet reached its final hop
/// and was delivered intact (the smoke test checks that generated inputs
/// get that far).
pub fn sphinx_structured_delivers(data: &[u8]) -> bool {
    let mut u = Unstructured::new(data);
    let Ok(case) = SphinxCase::arbitrary(&mut u) else {
        return false;
    };
    let nodes = keys::nodes();
    let epoch = u64::from(case.epoch);
    let hops: Vec<Hop> = case
        .hops
        .iter()
        .take(murmur_wire::packet::MAX_HOPS + 1)
        .map(|i| nodes[usize::from(*i) % nodes.len()].hop(epoch))
        .collect();
    let delays: Vec<Duration> = case
        .delays
        .iter()
        .take(murmur_wire::packet::MAX_HOPS + 1)
        .map(|d| Duration::from_micros(*d))
        .collect();
    let Ok(route) = Route::new(hops, delays) else {
        return false;
    };
    let mut rng = ChaCha20Rng::from_seed(case.seed);
    let destination = Destination(case.destination);
    let plaintext = &case.plaintext;
    // A raw packet is processed by the nodes of its route in order, whatever
    // addresses its header names; nothing is promised about the outcome.
    if let Some(raw) = &case.raw {
        let Some(mut packet) = build_raw(raw, &route, case.destination, plaintext) else {
            return false;
        };
        let order: Vec<usize> = case
            .hops
            .iter()
            .map(|i| usize::from(*i) % nodes.len())
            .collect();
        for (hop, node) in order.iter().enumerate().take(route.hops().len()) {
            for (_, pos, mask) in case.mutations.iter().filter(|m| usize::from(m.0) == hop) {
                let mut bytes = packet.as_bytes().to_vec();
                bytes[usize::from(*pos) % PACKET_SIZE] ^= mask;
                let Ok(p) = Packet::from_bytes(Bytes::from(bytes)) else {
                    panic!("a packet-sized buffer was refused");
                };
                packet = p;
            }
            let Ok(unwrapped) = nodes[*node].ring.unwrap(&packet) else {
                return false;
            };
            match unwrapped.finish() {
                Ok(Processed::Forward { packet: next, .. }) => packet = next,
                Ok(Processed::Final { delivery, .. }) => {
                    if let Delivery::Forward { plaintext: p } = delivery {
                        let _ = FinalPayload::parse(&p);
                    }
                    return false;
                }
                Err(_) => return false,
            }
        }
        return false;
    }
    let (first, mut packet, recovery) = if case.reply {
        let id = SurbId::from_bytes(case.surb_id);
        let (surb, recovery) = match build_surb(&mut rng, &route, destination, id) {
            Ok(v) => v,
            Err(_) => {
                assert!(id.is_zero(), "a SURB with a nonzero id was refused");
                return false;
            }
        };
        let surb = match Surb::from_bytes(surb.as_bytes()) {
            Ok(s) => s,
            Err(e) => panic!("a SURB we built does not parse: {e}"),
        };
        let first = surb.first_hop();
        let (to, packet) = match surb.into_packet(plaintext) {
            Ok(v) => v,
            Err(_) => {
                assert!(
                    plaintext.len() > PAYLOAD_CAPACITY,
                    "a reply that fits was refused"
                );
                return false;
            }
        };
        assert_eq!(to, first);
        (to, packet, Some(recovery))
    } else {
        match build_forward_packet(&mut rng, &route, destination, plaintext) {
            Ok(p) => (route.first_hop(), p, None),
            Err(_) => {
                assert!(
                    plaintext.len() > PAYLOAD_CAPACITY,
                    "a payload that fits was refused"
                );
                return false;
            }
        }
    };
    let mut mutated = false;
    let mut at = first;
    for hop in 0..route.hops().len() {
        let flips: Vec<_> = case
            .mutations
            .iter()
            .filter(|m| usize::from(m.0) == hop && m.2 != 0)
            .collect();
        if !flips.is_empty() {
            let mut bytes = packet.as_bytes().to_vec();
            for (_, pos, mask) in flips {
                bytes[usize::from(*pos) % PACKET_SIZE] ^= mask;
            }
            mutated |= bytes != packet.as_bytes();
            packet = match Packet::from_bytes(Bytes::from(bytes)) {
                Ok(p) => p,
                Err(e) => panic!("a packet-sized buffer was refused: {e}"),
            };
        }
        let Some(node) = nodes.iter().find(|n| n.id == at) else {
            assert!(mutated, "an intact packet went to a node not on its route");
            return false;
        };
        let unwrapped = match node.ring.unwrap(&packet) {
            Ok(u) => u,
            Err(e) => {
                assert!(mutated, "an intact packet was refused at hop {hop}: {e}");
                return false;
            }
        };
        assert_eq!(unwrapped.key_epoch(), epoch, "opened under the wrong key");
        let processed = match unwrapped.finish() {
            Ok(p) => p,
            Err(e) => {
                assert!(mutated, "an intact packet failed at hop {hop}: {e}");
                return false;
            }
        };
        let last = hop + 1 == route.hops().len();
        match processed {
            Processed::Forward {
                next_hop,
                delay,
                packet: next,
            } => {
                if !mutated {
                    assert!(!last, "the last hop forwarded");
                    assert_eq!(next_hop, route.hops()[hop + 1].id);
                    let want = route.delays()[hop];
                    assert!(
                        delay.abs_diff(want) < Duration::from_micros(2)
                            || want.as_nanos() > u128::from(u64::MAX),
                        "delay {delay:?} is not the {want:?} sent"
                    );
                }
                at = next_hop;
                packet = next;
            }
            Processed::Final {
                destination: got,
                delivery,
            } => {
                if mutated {
                    return false;
                }
                assert!(last, "a middle hop delivered");
                assert!(got == destination, "delivered to another destination");
                match (delivery, &recovery) {
                    (Delivery::Forward { plaintext: p }, None) => {
                        assert_eq!(&p, plaintext, "forward plaintext changed");
                    }
                    (Delivery::Reply { surb_id, sealed }, Some(rec)) => {
                        assert_eq!(surb_id, rec.id());
                        match rec.open(&sealed) {
                            Ok(p) => assert_eq!(&p, plaintext, "reply plaintext changed"),
                            Err(e) => panic!("an intact reply does not open: {e}"),
                        }
                    }
                    _ => panic!("a forward packet arrived as a reply or the reverse"),
                }
                return true;
            }
        }
    }
    assert!(mutated, "an intact packet was never delivered");
    false
}

// ---------------------------------------------------------------------------
// final_payload

/// Final-hop payloads and reply material: `FinalPayload::parse`,
/// `Ack::parse`, `Surb::from_bytes` (and, for one that parses,
/// `into_packet` and processing at its first hop), `SurbRecovery::from_bytes`
/// and `open` of the input cut or padded to a sealed payload; then the
/// mailbox provider's whole final-hop path on the input (see
/// `mailbox_http::mailbox_final`). Whatever parses must re-encode to the
/// same bytes.
pub fn final_payload(data: &[u8]) {
    if let Ok(p) = FinalPayload::parse(data) {
        let again = p.encode();
        assert_eq!(again, data, "final payload does not re-encode to its input");
        match FinalPayload::parse(&again) {
            Ok(q) => assert_eq!(p, q),
            Err(e) => panic!("re-encoded final payload does not parse: {e}"),
        }
    }
    if let Ok(a) = Ack::parse(data) {
        assert_eq!(a.encode().as_slice(), data);
    }
    // The payload after a 1-byte offset too, so that a SURB inside a
    // deposit lines up with the input in one of the two.
    for off in [0usize, 18] {
        let Some(bytes) = data.get(off..) else {
            continue;
        };
        let surb_bytes = &bytes[..bytes.len().min(murmur_wire::packet::SURB_SIZE)];
        if let Ok(surb) = Surb::from_bytes(surb_bytes) {
            assert_eq!(surb.as_bytes().as_slice(), surb_bytes);
            let first = surb.first_hop();
            let rest = &bytes[surb_bytes.len()..];
            if let Ok((to, packet)) = surb.into_packet(&rest[..rest.len().min(PAYLOAD_CAPACITY)]) {
                assert_eq!(to, first);
                let _ = keys::key_ring(0).process(&packet);
            }
        }
    }
    mailbox_http::mailbox_final(data);
    if let Ok(rec) = SurbRecovery::from_bytes(data) {
        let _ = rec.id();
        let again = rec.to_bytes();
        match SurbRecovery::from_bytes(&again) {
            Ok(r2) => assert_eq!(r2.id(), rec.id()),
            Err(e) => panic!("re-encoded SURB recovery does not parse: {e}"),
        }
        let _ = rec.open(&fit(data, SPHINX_PAYLOAD_SIZE));
        let _ = rec.open(data);
    }
}

// ---------------------------------------------------------------------------
// descriptor

/// A descriptor a (hostile) node could sign with its own key.
#[derive(Arbitrary, Debug)]
struct DescriptorCase {
    version: u8,
    link_key: u8,
    mailbox: bool,
    packet_addr: ArbAddr,
    http_addr: Option<ArbAddr>,
    sphinx_keys: Vec<(u64, [u8; 32])>,
    published_at: u64,
}

/// A socket address from arbitrary bytes.
#[derive(Arbitrary, Debug, Clone, Copy)]
enum ArbAddr {
    V4([u8; 4], u16),
    V6([u8; 16], u16),
}

impl From<ArbAddr> for SocketAddr {
    fn from(a: ArbAddr) -> Self {
        match a {
            ArbAddr::V4(ip, port) => SocketAddr::new(IpAddr::V4(Ipv4Addr::from(ip)), port),
            ArbAddr::V6(ip, port) => SocketAddr::new(IpAddr::V6(Ipv6Addr::from(ip)), port),
        }
    }
}

/// Mode byte: even, the rest is a signed descriptor's wire form
/// (`SignedDescriptor::from_bytes`, `verify`); odd, the rest is a
/// descriptor's contents, signed with a fixed node key, so that the checks
/// after the signature see hostile (but authentic) documents.
pub fn descriptor(data: &[u8]) {
    let Some((m, rest)) = mode(data) else {
        return;
    };
    let signed = if m % 2 == 0 {
        match SignedDescriptor::from_bytes(rest) {
            Ok(s) => s,
            Err(_) => return,
        }
    } else {
        let mut u = Unstructured::new(rest);
        let Ok(case) = DescriptorCase::arbitrary(&mut u) else {
            return;
        };
        let key = keys::node_signing_key(0);
        let d = Descriptor {
            version: case.version,
            identity: IdentityKey::from(&key.verifying_key()),
            role: if case.mailbox {
                Role::Mailbox
            } else {
                Role::Mix
            },
            packet_addr: case.packet_addr.into(),
            http_addr: case.http_addr.map(Into::into),
            link_key: keys::link_key(case.link_key).public().clone(),
            sphinx_keys: case
                .sphinx_keys
                .iter()
                .take(8)
                .map(|(epoch, k)| EpochKey {
                    epoch: *epoch,
                    key: SphinxPublicKey(*k),
                })
                .collect(),
            published_at: case.published_at,
        };
        let Ok(s) = SignedDescriptor::sign(&d, &key) else {
            return;
        };
        s
    };
    if let Ok(v) = signed.verify() {
        let d = v.descriptor();
        assert_eq!(v.id(), d.node_id());
        let _ = d.last_epoch();
        if let Some(e) = d.last_epoch() {
            assert!(d.key_for(e).is_some());
        }
        // Round trip of the wire form.
        if let Ok(bytes) = signed.to_bytes() {
            match SignedDescriptor::from_bytes(&bytes) {
                Ok(again) => assert_eq!(again, signed),
                Err(e) => panic!("a verified descriptor does not re-parse: {e}"),
            }
        }
    }
}

// ---------------------------------------------------------------------------
// consensus

/// A consensus the (trusted, but possibly buggy) authorities could sign.
#[derive(Arbitrary, Debug)]
struct ConsensusCase {
    version: u8,
    epoch: u64,
    valid_after: u64,
    valid_until: u64,
    params: ArbParams,
    mixes: Vec<(u8, u8, ArbAddr, [u8; 32])>,
    mailboxes: Vec<(u8, ArbAddr, ArbAddr, [u8; 32])>,
    now: u64,
    expected_epoch: Option<u64>,
    signers: u8,
    seed: u64,
}

#[derive(Arbitrary, Debug)]
struct ArbParams {
    epoch_secs: u64,
    mean_delay_us: u64,
    max_delay_us: u64,
    client_rate: f64,
    client_loop_rate: f64,
    mix_loop_rate: f64,
    /// Usually the real packet size.
    packet_size: Option<u32>,
}

impl From<&ArbParams> for NetworkParams {
    fn from(p: &ArbParams) -> Self {
        NetworkParams {
            epoch_secs: p.epoch_secs,
            mean_delay_us: p.mean_delay_us,
            max_delay_us: p.max_delay_us,
            client_rate: p.client_rate,
            client_loop_rate: p.client_loop_rate,
            mix_loop_rate: p.mix_loop_rate,
            packet_size: p.packet_size.unwrap_or(PACKET_SIZE as u32),
        }
    }
}

/// Mode byte % 4:
/// 0. the rest is a `SignedConsensus` wire form, verified against the fixed
///    authority set (2 of 3) at a fixed time;
/// 1. the rest is a consensus *body*, signed by the fixed authorities (so
///    the decoding and checks after the signatures see it);
/// 2. the rest describes a consensus (structure-aware), signed by a
///    fuzzer-chosen subset of the authorities, verified at a fuzzer-chosen
///    time; a verified one is then used as a client would (route
///    selection, lookups);
/// 3. the rest is a `SignedVote` wire form, verified for a fixed authority
///    and epoch.
pub fn consensus(data: &[u8]) {
    let Some((m, rest)) = mode(data) else {
        return;
    };
    let set = keys::authority_set();
    match m % 4 {
        0 => {
            if let Ok(s) = SignedConsensus::from_bytes(rest) {
                let _ = s.verify(&set, keys::NOW, None);
                if let Ok(v) = s.verify(&set, keys::NOW, Some(keys::EPOCH)) {
                    use_consensus(&v, 0);
                }
            }
        }
        1 => {
            let s = keys::sign_consensus_body(rest.to_vec(), 0b011);
            for now in [keys::NOW, 0, u64::MAX] {
                if let Ok(v) = s.verify(&set, now, None) {
                    use_consensus(&v, now);
                }
            }
        }
        2 => {
            let mut u = Unstructured::new(rest);
            let Ok(case) = ConsensusCase::arbitrary(&mut u) else {
                return;
            };
            let doc = Consensus {
                version: case.version,
                epoch: case.epoch,
                valid_after: case.valid_after,
                valid_until: case.valid_until,
                params: NetworkParams::from(&case.params),
                mixes: case
                    .mixes
                    .iter()
                    .take(64)
                    .map(|(layer, who, addr, k)| MixEntry {
                        layer: *layer % 4,
                        identity: keys::node_identity(*who),
                        packet_addr: (*addr).into(),
                        link_key: keys::link_key(*who).public().clone(),
                        sphinx_key: SphinxPublicKey(*k),
                    })
                    .collect(),
                mailboxes: case
                    .mailboxes
                    .iter()
                    .take(16)
                    .map(|(who, addr, http, k)| MailboxEntry {
                        identity: keys::node_identity(*who),
                        packet_addr: (*addr).into(),
                        http_addr: (*http).into(),
                        link_key: keys::link_key(*who).public().clone(),
                        sphinx_key: SphinxPublicKey(*k),
                    })
                    .collect(),
            };
            let Ok(body) = postcard::to_stdvec(&doc) else {
                return;
            };
            let s = keys::sign_consensus_body(body, case.signers);
            let Ok(wire) = s.to_bytes() else {
                return;
            };
            let s = match SignedConsensus::from_bytes(&wire) {
                Ok(s) => s,
                Err(e) => panic!("an encoded consensus does not parse: {e}"),
            };
            if let Ok(v) = s.verify(&set, case.now, case.expected_epoch) {
                assert!(
                    (case.signers & 0b111).count_ones() >= 2,
                    "verified under threshold"
                );
                use_consensus(&v, case.seed);
            }
        }
        _ => {
            if let Ok(v) = SignedVote::from_bytes(rest) {
                let auth = keys::authority_identity(0);
                let _ = v.verify(&auth, keys::EPOCH);
                if let Ok(vote) = v.verify(&auth, keys::EPOCH) {
                    let _ = vote.params.check();
                    for d in &vote.descriptors {
                        let _ = d.verify();
                    }
                }
            }
        }
    }
}

/// Uses a verified consensus as clients and nodes do.
fn use_consensus(v: &murmur_wire::VerifiedConsensus, seed: u64) {
    let mut rng = ChaCha20Rng::seed_from_u64(seed);
    let _ = v.epoch();
    let _ = v.params().check();
    let _ = v.is_routable();
    let _ = v.is_fresh(keys::NOW);
    let _ = v.is_fresh(u64::MAX);
    let _ = v.document();
    for layer in v.layers() {
        for n in layer {
            assert!(v.node(&n.id).is_some());
            let _ = n.hop();
        }
    }
    let first_mix = v.layers().iter().flatten().next().map(|n| n.id);
    for m in v.mailboxes() {
        assert!(v.node(&m.id).is_some());
        let _ = murmur_wire::policy::select_route(&mut rng, v, &m.id);
        let _ = murmur_wire::policy::select_route_avoiding(&mut rng, v, &m.id, |id| {
            Some(*id) == first_mix
        });
    }
    let _ = murmur_wire::policy::select_mixes(&mut rng, v);
    let mut schedule =
        murmur_wire::policy::ClientSchedule::from_params(&mut rng, v.params(), Duration::ZERO);
    for _ in 0..4 {
        let _ = schedule.pop(&mut rng);
    }
    let _ = murmur_wire::policy::epoch_at(keys::NOW, v.params().epoch_secs);
    let _ = murmur_wire::policy::epoch_start(v.epoch(), v.params().epoch_secs);
}

// ---------------------------------------------------------------------------
// mailbox_api

/// The mailbox fetch API's wire forms: the requests a provider parses
/// (`SignedCreateQueue` and `SignedOwnerRequest`: `from_bytes`, `peek`,
/// `verify`) and the responses a client parses (`OwnerResponse`, with its
/// page check, and `CreateQueueResponse`). Whatever parses re-encodes to
/// something that parses to the same value.
pub fn mailbox_api(data: &[u8]) {
    if let Ok(c) = SignedCreateQueue::from_bytes(data) {
        if let Ok(req) = c.verify() {
            let _ = req.owner.node_id();
        }
        round_trip(&c, c.to_bytes(), SignedCreateQueue::from_bytes);
    }
    if let Ok(r) = SignedOwnerRequest::from_bytes(data) {
        let peeked = r.peek();
        let verified = r.verify(&keys::owner_identity());
        if let Ok(v) = &verified {
            assert_eq!(Some(v), peeked.as_ref().ok(), "verify and peek disagree");
        }
        let _ = r.verify(&IdentityKey([0; 32]));
        round_trip(&r, r.to_bytes(), SignedOwnerRequest::from_bytes);
    }
    if let Ok(o) = OwnerResponse::from_bytes(data) {
        if let OwnerReply::Fetched(page) = &o.reply {
            assert!(page.entries.len() <= data.len(), "more entries than bytes");
            let _ = page.check(0, u32::MAX);
        }
        round_trip(&o, o.to_bytes(), OwnerResponse::from_bytes);
    }
    if let Ok(c) = CreateQueueResponse::from_bytes(data) {
        round_trip(&c, c.to_bytes(), CreateQueueResponse::from_bytes);
    }
}

/// A parsed value re-encodes to bytes that parse to the same value. (Not
/// to the same bytes: postcard accepts overlong varints, so one value has
/// several encodings. Harmless here: signatures cover the inner body
/// bytes as received, not a re-encoding.)
fn round_trip<T: PartialEq + std::fmt::Debug>(
    value: &T,
    encoded: murmur_wire::Result<Vec<u8>>,
    parse: fn(&[u8]) -> murmur_wire::Result<T>,
) {
    let bytes = match encoded {
        Ok(b) => b,
        Err(e) => panic!("a parsed {value:?} does not re-encode: {e}"),
    };
    match parse(&bytes) {
        Ok(again) => assert_eq!(&again, value, "value changed in a round trip"),
        Err(e) => panic!("a re-encoded {value:?} does not parse: {e}"),
    }
}

// ---------------------------------------------------------------------------
// invitation

/// `Invitation::parse` on the input as text (lossily decoded if it is not
/// UTF-8), and on `murmur-invite:` followed by the base58 of the input (so
/// the checksum and postcard layers see arbitrary bytes). Mode byte odd: the
/// input is an invitation body and gets a valid checksum first. The text
/// also goes to the other base58 parsers a user meets (identity keys, node
/// and queue ids), which must round-trip what they accept.
pub fn invitation(data: &[u8]) {
    if let Ok(text) = std::str::from_utf8(data) {
        check_invitation(text);
    } else {
        check_invitation(&String::from_utf8_lossy(data));
    }
    let Some((m, rest)) = mode(data) else {
        return;
    };
    let mut bytes = rest.to_vec();
    if m % 2 == 1 {
        use sha2::Digest;
        let sum = sha2::Sha256::digest(&bytes);
        bytes.extend_from_slice(&sum[..4]);
    }
    let text = format!("murmur-invite:{}", bs58_encode(&bytes));
    check_invitation(&text);
}

fn check_invitation(text: &str) {
    // The other strings a user pastes: ids and keys in base58.
    if let Ok(k) = IdentityKey::from_base58(text.trim()) {
        assert_eq!(IdentityKey::from_base58(&k.to_base58()).ok(), Some(k));
    }
    if let Ok(id) = text.trim().parse::<murmur_wire::NodeId>() {
        assert_eq!(id.to_base58().parse::<murmur_wire::NodeId>().ok(), Some(id));
    }
    if let Ok(q) = text.trim().parse::<murmur_wire::QueueId>() {
        assert_eq!(q.to_base58().parse::<murmur_wire::QueueId>().ok(), Some(q));
    }

    if let Ok(inv) = Invitation::parse(text) {
        assert!(murmur_client::invite::check_name(&inv.name).is_ok());
        match inv.to_text().map(|t| Invitation::parse(&t)) {
            Ok(Ok(again)) => assert!(again == inv, "invitation changed in a round trip"),
            Ok(Err(e)) => panic!("a re-encoded invitation does not parse: {e}"),
            Err(e) => panic!("a parsed invitation does not encode: {e}"),
        }
    }
}

/// Base58 (Bitcoin alphabet), as invitations use; the input is bounded by
/// the fuzzer's maximum length, and the parser refuses long texts first.
fn bs58_encode(bytes: &[u8]) -> String {
    const ALPHABET: &[u8; 58] = b"123456789ABCDEFGHJKLMNPQRSTUVWXYZabcdefghijkmnopqrstuvwxyz";
    let bytes = &bytes[..bytes.len().min(1024)];
    let zeros = bytes.iter().take_while(|b| **b == 0).count();
    let mut digits: Vec<u8> = Vec::with_capacity(bytes.len() * 138 / 100 + 1);
    for &b in &bytes[zeros..] {
        let mut carry = u32::from(b);
        for d in digits.iter_mut() {
            carry += u32::from(*d) << 8;
            *d = (carry % 58) as u8;
            carry /= 58;
        }
        while carry > 0 {
            digits.push((carry % 58) as u8);
            carry /= 58;
        }
    }
    let mut out = String::with_capacity(zeros + digits.len());
    out.extend(std::iter::repeat_n('1', zeros));
    out.extend(
        digits
            .iter()
            .rev()
            .map(|d| ALPHABET[usize::from(*d)] as char),
    );
    out
}

// ---------------------------------------------------------------------------
// client_fragments

/// Mode byte % 4:
/// 0. the rest is a deposit body: `fragment::open` under the fixed
///    relation key (as it is, and cut or padded to a body);
/// 1. the rest is fragment *plaintexts*, encrypted under the fixed relation
///    key (as a hostile contact could), opened and fed to a `Reassembly`;
/// 2. the rest is a sealed message: `seal::claimed_sender` and `seal::open`
///    with the fixed identities, and `seal::open_ratcheted` with the fixed
///    responder ratchet (which must be unchanged unless it opened);
/// 3. the rest is an envelope *plaintext*, sealed by the fixed sender
///    identity (as a hostile contact could) and opened.
pub fn client_fragments(data: &[u8]) {
    let Some((m, rest)) = mode(data) else {
        return;
    };
    let (key, queue) = keys::fragment_key();
    match m % 4 {
        0 => {
            let _ = fragment::open(&key, &queue, rest);
            let body = fit(rest, murmur_wire::DEPOSIT_BODY_SIZE);
            let _ = fragment::open(&key, &queue, &body);
        }
        1 => {
            let mut reassembly = Reassembly::default();
            let plain_len = murmur_wire::DEPOSIT_BODY_SIZE - 24 - 16;
            for (i, chunk) in rest.chunks(plain_len).take(64).enumerate() {
                let body = keys::encrypt_fragment(&fit(chunk, plain_len), i as u8);
                let Ok(f) = fragment::open(&key, &queue, &body) else {
                    continue;
                };
                assert!(f.index < f.count);
                assert!(f.chunk.len() <= fragment::CHUNK_SIZE);
                let _ = reassembly.add(f);
                assert!(reassembly.have() <= reassembly.count());
            }
            if let Some(all) = reassembly.assemble() {
                assert!(reassembly.is_complete());
                let _ = seal::claimed_sender(&all);
            }
        }
        2 => {
            let _ = seal::claimed_sender(rest);
            let recipient = keys::recipient_identity();
            let sender = keys::sender_identity().public();
            let _ = seal::open(&recipient, &sender, &queue, rest);
            if let Ok(Some(claimed)) = seal::claimed_sender(rest) {
                let _ = seal::open(&recipient, &claimed, &queue, rest);
            }
            let mut ratchet = keys::ratchet_responder();
            let before = postcard::to_stdvec(&ratchet).ok();
            let mut rng = ChaCha20Rng::seed_from_u64(2);
            if seal::open_ratcheted(&mut ratchet, &mut rng, &queue, rest).is_err() {
                assert_eq!(
                    postcard::to_stdvec(&ratchet).ok(),
                    before,
                    "a message that did not open changed the ratchet"
                );
            }
        }
        _ => {
            let sealed = keys::seal_plaintext(rest);
            let recipient = keys::recipient_identity();
            let sender = keys::sender_identity().public();
            match seal::claimed_sender(&sealed) {
                Ok(s) => assert!(s == Some(sender)),
                Err(e) => panic!("a sealed message has no sender: {e}"),
            }
            if let Ok(env) = seal::open(&recipient, &sender, &queue, &sealed) {
                // Authentic and decodable: it must survive a round trip
                // (a hello gets the sender's own X-Wing key).
                let mut rng = ChaCha20Rng::seed_from_u64(1);
                let from = keys::sender_identity();
                let mut expected = env.clone();
                if matches!(expected.body, seal::Body::Hello { .. }) {
                    expected.sender_pq = Some(from.pq_public().clone());
                }
                let s2 = seal::seal(
                    &mut rng,
                    &from,
                    (&recipient.public(), recipient.pq_public()),
                    &queue,
                    &env,
                    seal::SealKind::Named,
                );
                match s2.map(|s| seal::open(&recipient, &sender, &queue, &s)) {
                    Ok(Ok(e2)) => assert_eq!(e2, expected),
                    Ok(Err(e)) => panic!("a resealed envelope does not open: {e}"),
                    Err(e) => panic!("an opened envelope does not reseal: {e}"),
                }
            }
        }
    }
}

// ---------------------------------------------------------------------------
// configs

/// Every TOML file a user or operator writes, parsed by its real parser:
/// the directory authority config, the mix node config, the mailbox
/// config, the client's network file and the simulator's study file. What
/// parses is then used as the daemons use it (derived settings, sweep
/// points, parameter checks). Input that is not UTF-8 is decoded lossily.
pub fn configs(data: &[u8]) {
    let owned;
    let text = match std::str::from_utf8(data) {
        Ok(t) => t,
        Err(_) => {
            owned = String::from_utf8_lossy(data).into_owned();
            &owned
        }
    };
    let path = Path::new("fuzz.toml");
    if let Ok(c) = murmur_directory::AuthorityConfig::from_toml(text, path) {
        let _ = c.network_params().check();
        let _ = c.tick();
    }
    if let Ok(c) = murmur_mixnode::MixNodeConfig::parse(text, path) {
        let _ = c.key_lifetime();
        let _ = c.validate();
        let _ = c.replay.expected_items(c.key_lifetime());
    }
    if let Ok(c) = murmur_mailbox::Config::parse(text, path) {
        let _ = c.http.limits();
        let _ = c.storage.quota();
        let _ = c.storage.writer();
        let _ = c.api.api();
        let _ = c.database_path();
        let _ = c.identity_path();
    }
    if let Ok(c) = murmur_client::network::NetworkConfig::parse(text) {
        let _ = c.endpoints();
        match murmur_client::network::NetworkConfig::parse(&c.to_toml()) {
            Ok(again) => assert_eq!(again, c, "network file changed in a round trip"),
            Err(e) => panic!("a re-written network file does not parse: {e}"),
        }
    }
    if let Ok(study) = murmur_sim::Study::parse(text)
        && let Ok(points) = study.points()
    {
        for p in points.iter().take(64) {
            let params = &p.params;
            let _ = params.mixes();
            let _ = params.compromised_mixes();
            let _ = params.packet_rate();
            let _ = params.max_delay_duration();
            let _ = params.mean_delay_duration();
            let _ = params.sample_interval();
            for info in murmur_sim::params::PARAMS {
                if let Some(v) = params.get(info.key) {
                    let mut q = params.clone();
                    if let Err(e) = q.set(info.key, &v) {
                        panic!("{} = {v:?} does not read back: {e}", info.key);
                    }
                }
            }
        }
    }
    // Sweep axes from the command line (`--sweep name=v1,v2`).
    if text.len() < 4096 {
        for line in text.lines().take(8) {
            let _ = line.parse::<murmur_sim::SweepAxis>();
        }
    }
}

/// `len` deterministic pseudo-random bytes from `seed` (seeds and the
/// smoke test's generated inputs).
pub fn pseudo_random(seed: u64, len: usize) -> Vec<u8> {
    use rand::Rng;
    let mut v = vec![0u8; len];
    ChaCha20Rng::seed_from_u64(seed).fill_bytes(&mut v);
    v
}
