//! Sphinx packets: geometry, building, SURBs and one-hop processing.
//!
//! Every packet on every link is exactly [`PACKET_SIZE`] bytes: a Sphinx
//! header of [`HEADER_SIZE`] bytes and a Lioness-encrypted payload of
//! [`SPHINX_PAYLOAD_SIZE`] bytes. Real messages, cover and acknowledgements
//! all look the same. `docs/protocol.md` holds the byte budget.
//!
//! Two kinds of packets reach a final hop, told apart by the Sphinx
//! identifier the final hop reads from the header:
//! * **forward packets** (identifier all zeros): built by a sender with
//!   [`build_forward_packet`]; the payload plaintext is a
//!   [`crate::FinalPayload`] the final hop reads;
//! * **SURB replies** (identifier = a non-zero [`SurbId`]): built by whoever
//!   holds a [`Surb`]; the payload stays sealed and only the SURB's creator
//!   can open it with its [`SurbRecovery`].
//!
//! Nothing here does I/O or reads a clock; randomness is passed in.

use std::fmt;
use std::time::Duration;

use bytes::Bytes;
use sphinx_packet::header::delays::Delay;
use sphinx_packet::route::{Destination as SphinxDestination, DestinationAddressBytes, Node};
use sphinx_packet::{ProcessedPacketData, SURBMaterial, SphinxPacket, SphinxPacketBuilder};
use x25519_dalek::StaticSecret;
use zeroize::Zeroize;

use crate::error::{Error, Result};
use crate::ids::{NodeId, SurbId};
use crate::keys::{SphinxPublicKey, SphinxSecretKey};

/// Bytes of a Sphinx header (group element, MAC, encrypted routing info for
/// up to [`MAX_HOPS`] hops).
pub const HEADER_SIZE: usize = sphinx_packet::header::HEADER_SIZE;

/// Bytes of the Sphinx payload (the Lioness block).
pub const SPHINX_PAYLOAD_SIZE: usize = 2496;

/// Bytes of every packet on every link.
pub const PACKET_SIZE: usize = HEADER_SIZE + SPHINX_PAYLOAD_SIZE;

/// Plaintext bytes a forward packet can carry to its final hop: the payload
/// minus Sphinx's 16 zero bytes (the integrity check) and its padding marker.
pub const PAYLOAD_CAPACITY: usize =
    SPHINX_PAYLOAD_SIZE - sphinx_packet::payload::PAYLOAD_OVERHEAD_SIZE;

/// Mix layers every route crosses.
pub const MIX_LAYERS: usize = 3;

/// Hops of a forward route: one mix per layer, then the mailbox provider.
pub const ROUTE_LEN: usize = MIX_LAYERS + 1;

/// The most hops a Sphinx header can carry.
pub const MAX_HOPS: usize = sphinx_packet::constants::MAX_PATH_LENGTH;

/// Bytes of a serialized SURB: header, first-hop address and the one payload
/// key seed a single-seed SURB hands out.
pub const SURB_SIZE: usize = HEADER_SIZE + 32 + sphinx_packet::constants::PAYLOAD_KEY_SEED_SIZE;

/// Bytes of a replay tag.
pub const REPLAY_TAG_SIZE: usize = sphinx_packet::constants::REPLAY_TAG_SIZE;

/// The Sphinx identifier of forward packets.
const FORWARD_IDENTIFIER: [u8; 16] = [0u8; 16];

/// One hop of a route: the node's id (its Sphinx address) and its Sphinx
/// public key for the epoch the packet is built in.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Hop {
    /// The node's id.
    pub id: NodeId,
    /// The node's Sphinx key for the packet's epoch.
    pub key: SphinxPublicKey,
}

/// A route of 1 to [`MAX_HOPS`] hops, with one delay per hop.
#[derive(Clone, Debug)]
pub struct Route {
    hops: Vec<Hop>,
    delays: Vec<Duration>,
}

impl Route {
    /// A route through `hops`, where hop `i` holds the packet for `delays[i]`
    /// (the final hop's delay is carried but not used by Murmur's final hops).
    pub fn new(hops: Vec<Hop>, delays: Vec<Duration>) -> Result<Self> {
        if hops.is_empty() {
            return Err(Error::InvalidRoute("no hops"));
        }
        if hops.len() > MAX_HOPS {
            return Err(Error::InvalidRoute("more hops than a Sphinx header holds"));
        }
        if hops.len() != delays.len() {
            return Err(Error::InvalidRoute("one delay per hop is required"));
        }
        Ok(Self { hops, delays })
    }

    /// The hops, first to last.
    pub fn hops(&self) -> &[Hop] {
        &self.hops
    }

    /// The per-hop delays.
    pub fn delays(&self) -> &[Duration] {
        &self.delays
    }

    /// The first hop, where the packet is sent.
    pub fn first_hop(&self) -> NodeId {
        // Route::new refuses empty routes.
        self.hops[0].id
    }

    /// Sum of the delays of every hop but the last (what the mixes hold it).
    pub fn total_mix_delay(&self) -> Duration {
        self.delays[..self.delays.len() - 1].iter().sum()
    }

    fn sphinx_nodes(&self) -> Vec<Node> {
        self.hops
            .iter()
            .map(|h| {
                Node::new(
                    sphinx_packet::route::NodeAddressBytes::from_bytes(h.id.to_bytes()),
                    h.key.to_dalek(),
                )
            })
            .collect()
    }

    fn sphinx_delays(&self) -> Vec<Delay> {
        self.delays.iter().map(|d| to_delay(*d)).collect()
    }
}

fn to_delay(d: Duration) -> Delay {
    Delay::new_from_nanos(u64::try_from(d.as_nanos()).unwrap_or(u64::MAX))
}

/// A packet of exactly [`PACKET_SIZE`] bytes. Cheap to clone.
#[derive(Clone, PartialEq, Eq)]
pub struct Packet(Bytes);

impl Packet {
    /// Wraps bytes that must be exactly [`PACKET_SIZE`] long.
    pub fn from_bytes(bytes: Bytes) -> Result<Self> {
        if bytes.len() != PACKET_SIZE {
            return Err(Error::WrongLength {
                what: "packet",
                expected: PACKET_SIZE,
                actual: bytes.len(),
            });
        }
        Ok(Self(bytes))
    }

    /// The packet's bytes.
    pub fn as_bytes(&self) -> &[u8] {
        &self.0
    }

    /// The packet's bytes, by value.
    pub fn into_bytes(self) -> Bytes {
        self.0
    }

    fn from_sphinx(packet: &SphinxPacket) -> Result<Self> {
        Self::from_bytes(Bytes::from(packet.to_bytes()))
    }

    fn to_sphinx(&self) -> Result<SphinxPacket> {
        SphinxPacket::from_bytes(&self.0).map_err(|source| Error::SphinxProcess { source })
    }
}

impl fmt::Debug for Packet {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Packet({} bytes)", self.0.len())
    }
}

/// The 32-byte final destination of a packet: a mailbox queue id, or a
/// node id for a mix node's own loop packets.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct Destination(pub [u8; 32]);

impl From<crate::QueueId> for Destination {
    fn from(q: crate::QueueId) -> Self {
        Self(q.to_bytes())
    }
}

impl From<NodeId> for Destination {
    fn from(n: NodeId) -> Self {
        Self(n.to_bytes())
    }
}

impl fmt::Debug for Destination {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Destination(<redacted>)")
    }
}

/// Builds a forward packet carrying `plaintext` (at most [`PAYLOAD_CAPACITY`]
/// bytes, normally an encoded [`crate::FinalPayload`]) along `route` to
/// `destination`.
pub fn build_forward_packet<R: rand::CryptoRng + ?Sized>(
    rng: &mut R,
    route: &Route,
    destination: Destination,
    plaintext: &[u8],
) -> Result<Packet> {
    if plaintext.len() > PAYLOAD_CAPACITY {
        return Err(Error::WrongLength {
            what: "forward payload (at most)",
            expected: PAYLOAD_CAPACITY,
            actual: plaintext.len(),
        });
    }
    let initial = StaticSecret::random_from_rng(rng);
    let dest = SphinxDestination::new(
        DestinationAddressBytes::from_bytes(destination.0),
        FORWARD_IDENTIFIER,
    );
    let packet = SphinxPacketBuilder::new()
        .with_payload_size(SPHINX_PAYLOAD_SIZE)
        .with_initial_secret(&initial)
        .build_packet(
            plaintext,
            &route.sphinx_nodes(),
            &dest,
            &route.sphinx_delays(),
        )
        .map_err(|source| Error::SphinxBuild {
            what: "forward packet",
            source,
        })?;
    Packet::from_sphinx(&packet)
}

/// A single-use reply block, validated, as handed to whoever will reply
/// (the mailbox provider, for acknowledgements). Exactly [`SURB_SIZE`] bytes.
///
/// It carries only the last hop's payload key seed (Sphinx version 260), so
/// the SURB's user cannot follow the reply through the network.
#[derive(Clone, PartialEq, Eq)]
pub struct Surb(Box<[u8; SURB_SIZE]>);

impl Surb {
    /// Parses and checks a serialized SURB.
    pub fn from_bytes(bytes: &[u8]) -> Result<Self> {
        let arr: [u8; SURB_SIZE] = bytes.try_into().map_err(|_| Error::WrongLength {
            what: "SURB",
            expected: SURB_SIZE,
            actual: bytes.len(),
        })?;
        let surb = sphinx_packet::SURB::from_bytes(&arr).map_err(|_| Error::Malformed {
            what: "SURB",
            reason: "not a single-seed SURB",
        })?;
        if surb.materials_count() != 1 {
            return Err(Error::Malformed {
                what: "SURB",
                reason: "not a single-seed SURB",
            });
        }
        Ok(Self(Box::new(arr)))
    }

    /// The serialized SURB.
    pub fn as_bytes(&self) -> &[u8; SURB_SIZE] {
        &self.0
    }

    /// The node the reply must be sent to first.
    pub fn first_hop(&self) -> NodeId {
        let mut id = [0u8; 32];
        id.copy_from_slice(&self.0[HEADER_SIZE..HEADER_SIZE + 32]);
        NodeId::from_bytes(id)
    }

    /// Uses the SURB: wraps `plaintext` (at most [`PAYLOAD_CAPACITY`] bytes)
    /// into a reply packet, returned with the node to send it to.
    pub fn into_packet(self, plaintext: &[u8]) -> Result<(NodeId, Packet)> {
        let surb =
            sphinx_packet::SURB::from_bytes(&self.0[..]).map_err(|source| Error::SphinxBuild {
                what: "SURB reply",
                source,
            })?;
        let (packet, first) = surb
            .use_surb(plaintext, SPHINX_PAYLOAD_SIZE)
            .map_err(|source| Error::SphinxBuild {
                what: "SURB reply",
                source,
            })?;
        Ok((
            NodeId::from_bytes(first.to_bytes()),
            Packet::from_sphinx(&packet)?,
        ))
    }
}

impl fmt::Debug for Surb {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Surb(<redacted>)")
    }
}

/// What the creator of a SURB keeps to open the reply: the SURB id and every
/// hop's payload key seed. Secret; zeroized on drop.
#[derive(Clone)]
pub struct SurbRecovery(sphinx_packet::SurbReplyRecovery);

impl SurbRecovery {
    /// The SURB's id, which the reply arrives under.
    pub fn id(&self) -> SurbId {
        SurbId::from_bytes(*self.0.identifier())
    }

    /// Serialized form, for durable client state.
    pub fn to_bytes(&self) -> zeroize::Zeroizing<Vec<u8>> {
        zeroize::Zeroizing::new(self.0.to_bytes())
    }

    /// Restores serialized recovery material.
    pub fn from_bytes(bytes: &[u8]) -> Result<Self> {
        sphinx_packet::SurbReplyRecovery::from_bytes(bytes)
            .map(Self)
            .map_err(|_| Error::Malformed {
                what: "SURB recovery material",
                reason: "bad length or seed count",
            })
    }

    /// Opens a reply's sealed payload (as stored by the final hop) and
    /// returns the plaintext the SURB's user sent. Fails if the payload was
    /// not produced with this SURB or was tampered with.
    pub fn open(&self, sealed: &[u8]) -> Result<Vec<u8>> {
        if sealed.len() != SPHINX_PAYLOAD_SIZE {
            return Err(Error::WrongLength {
                what: "sealed reply payload",
                expected: SPHINX_PAYLOAD_SIZE,
                actual: sealed.len(),
            });
        }
        let payload = sphinx_packet::payload::Payload::from_bytes(sealed)
            .map_err(|_| Error::PayloadIntegrity)?;
        self.0
            .recover_plaintext(payload)
            .map_err(|_| Error::PayloadIntegrity)
    }
}

impl fmt::Debug for SurbRecovery {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("SurbRecovery(<redacted>)")
    }
}

/// Builds a SURB along `route` whose replies are delivered to `destination`
/// under `id`. Returns the SURB to hand out and the recovery material to keep.
pub fn build_surb<R: rand::CryptoRng + ?Sized>(
    rng: &mut R,
    route: &Route,
    destination: Destination,
    id: SurbId,
) -> Result<(Surb, SurbRecovery)> {
    if id.is_zero() {
        return Err(Error::InvalidRoute("a SURB id must not be all zeros"));
    }
    let material = SURBMaterial::new(
        route.sphinx_nodes(),
        route.sphinx_delays(),
        SphinxDestination::new(
            DestinationAddressBytes::from_bytes(destination.0),
            id.to_bytes(),
        ),
        sphinx_packet::version::SINGLE_SEED_SURB_VERSION,
    );
    let initial = StaticSecret::random_from_rng(rng);
    let (surb, recovery) =
        sphinx_packet::SURB::new_recoverable(initial, material).map_err(|source| {
            Error::SphinxBuild {
                what: "SURB",
                source,
            }
        })?;
    let bytes = surb.to_bytes();
    let arr: [u8; SURB_SIZE] = bytes
        .as_slice()
        .try_into()
        .map_err(|_| Error::WrongLength {
            what: "built SURB",
            expected: SURB_SIZE,
            actual: bytes.len(),
        })?;
    Ok((Surb(Box::new(arr)), SurbRecovery(recovery)))
}

/// A packet's replay tag: equal for two copies of one packet at one node,
/// different otherwise. Mix nodes keep the tags they have seen per key epoch.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct ReplayTag(pub [u8; REPLAY_TAG_SIZE]);

impl fmt::Debug for ReplayTag {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("ReplayTag(<redacted>)")
    }
}

/// A node's Sphinx secret keys by epoch: the current epoch's key and, during
/// the grace period after a rotation, the previous one.
#[derive(Clone, Debug, Default)]
pub struct KeyRing {
    /// Newest first.
    keys: Vec<(u64, SphinxSecretKey)>,
}

impl KeyRing {
    /// An empty ring.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds (or replaces) the key for `epoch`.
    pub fn insert(&mut self, epoch: u64, key: SphinxSecretKey) {
        self.keys.retain(|(e, _)| *e != epoch);
        self.keys.push((epoch, key));
        self.keys.sort_by_key(|k| std::cmp::Reverse(k.0));
    }

    /// Drops keys of epochs before `epoch` (erased once the last copy drops).
    pub fn retain_from(&mut self, epoch: u64) {
        self.keys.retain(|(e, _)| *e >= epoch);
    }

    /// The epochs this ring holds keys for, newest first.
    pub fn epochs(&self) -> Vec<u64> {
        self.keys.iter().map(|(e, _)| *e).collect()
    }

    /// The key for `epoch`, if held.
    pub fn get(&self, epoch: u64) -> Option<&SphinxSecretKey> {
        self.keys.iter().find(|(e, _)| *e == epoch).map(|(_, k)| k)
    }

    /// First step of processing: finds the key the header was built for by
    /// checking its MAC (newest key first), and yields the replay tag. Costs
    /// one X25519 operation per key tried. Check the tag before
    /// [`Unwrapped::finish`], which does the rest of the work.
    pub fn unwrap(&self, packet: &Packet) -> Result<Unwrapped> {
        if self.keys.is_empty() {
            return Err(Error::EmptyKeyRing);
        }
        let sphinx = packet.to_sphinx()?;
        for (epoch, key) in &self.keys {
            let secret = sphinx.header.compute_expanded_shared_secret(key.dalek());
            if sphinx.header.ensure_header_integrity(&secret).is_ok() {
                let tag = ReplayTag(*secret.replay_tag());
                return Ok(Unwrapped {
                    packet: sphinx,
                    secret,
                    epoch: *epoch,
                    tag,
                });
            }
        }
        Err(Error::HeaderMac)
    }

    /// [`KeyRing::unwrap`] and [`Unwrapped::finish`] in one step, with the
    /// replay tag returned beside the result.
    pub fn process(&self, packet: &Packet) -> Result<(ReplayTag, Processed)> {
        let unwrapped = self.unwrap(packet)?;
        let tag = unwrapped.tag;
        Ok((tag, unwrapped.finish()?))
    }
}

/// A packet whose header MAC verified under one of the ring's keys.
pub struct Unwrapped {
    packet: SphinxPacket,
    secret: sphinx_packet::header::shared_secret::ExpandedSharedSecret,
    epoch: u64,
    tag: ReplayTag,
}

impl Unwrapped {
    /// The replay tag.
    pub fn replay_tag(&self) -> ReplayTag {
        self.tag
    }

    /// The epoch of the key that opened the header.
    pub fn key_epoch(&self) -> u64 {
        self.epoch
    }

    /// Removes this hop's layer: decrypts the routing information and the
    /// payload, blinds the header for the next hop.
    pub fn finish(self) -> Result<Processed> {
        let Unwrapped {
            packet, mut secret, ..
        } = self;
        let processed = packet.process_with_expanded_secret(&secret);
        secret.zeroize();
        let processed = processed.map_err(|source| Error::SphinxProcess { source })?;
        match processed.data {
            ProcessedPacketData::ForwardHop {
                next_hop_packet,
                next_hop_address,
                delay,
            } => Ok(Processed::Forward {
                next_hop: NodeId::from_bytes(next_hop_address.to_bytes()),
                delay: delay.to_duration(),
                packet: Packet::from_sphinx(&next_hop_packet)?,
            }),
            ProcessedPacketData::FinalHop {
                destination,
                identifier,
                payload,
            } => {
                let destination = Destination(destination.as_bytes());
                if identifier == FORWARD_IDENTIFIER {
                    let plaintext = payload
                        .recover_plaintext()
                        .map_err(|_| Error::PayloadIntegrity)?;
                    Ok(Processed::Final {
                        destination,
                        delivery: Delivery::Forward { plaintext },
                    })
                } else {
                    Ok(Processed::Final {
                        destination,
                        delivery: Delivery::Reply {
                            surb_id: SurbId::from_bytes(identifier),
                            sealed: payload.into_bytes(),
                        },
                    })
                }
            }
        }
    }
}

impl fmt::Debug for Unwrapped {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Unwrapped")
            .field("epoch", &self.epoch)
            .finish_non_exhaustive()
    }
}

/// The result of processing one layer.
#[derive(Debug)]
pub enum Processed {
    /// Hold the packet for `delay`, then send it to `next_hop`.
    Forward {
        /// The node to send to.
        next_hop: NodeId,
        /// How long to hold the packet first (the sender's choice).
        delay: Duration,
        /// The packet for the next hop.
        packet: Packet,
    },
    /// This node is the final hop.
    Final {
        /// The 32-byte destination the sender addressed.
        destination: Destination,
        /// What arrived.
        delivery: Delivery,
    },
}

/// What a final hop receives.
pub enum Delivery {
    /// A forward packet: the sender's plaintext, integrity-checked (normally
    /// an encoded [`crate::FinalPayload`]).
    Forward {
        /// The plaintext.
        plaintext: Vec<u8>,
    },
    /// A SURB reply: sealed for the SURB's creator, who opens it with its
    /// [`SurbRecovery`]. Exactly [`SPHINX_PAYLOAD_SIZE`] bytes.
    Reply {
        /// The SURB's id.
        surb_id: SurbId,
        /// The sealed payload.
        sealed: Vec<u8>,
    },
}

impl fmt::Debug for Delivery {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Forward { plaintext } => write!(f, "Forward({} bytes)", plaintext.len()),
            Self::Reply { sealed, .. } => write!(f, "Reply({} bytes)", sealed.len()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;
    use rand_chacha::ChaCha20Rng;

    #[test]
    fn geometry_is_what_the_docs_say() {
        assert_eq!(HEADER_SIZE, 348);
        assert_eq!(PACKET_SIZE, 2844);
        assert_eq!(SURB_SIZE, 396);
        assert_eq!(PAYLOAD_CAPACITY, 2479);
        const { assert!(ROUTE_LEN <= MAX_HOPS) };
    }

    #[test]
    fn wrong_size_packets_are_refused() {
        assert!(Packet::from_bytes(Bytes::from(vec![0u8; PACKET_SIZE - 1])).is_err());
        assert!(Packet::from_bytes(Bytes::from(vec![0u8; PACKET_SIZE + 1])).is_err());
        assert!(Packet::from_bytes(Bytes::from(vec![0u8; PACKET_SIZE])).is_ok());
    }

    #[test]
    fn routes_are_checked() {
        let hop = Hop {
            id: NodeId::from_bytes([1; 32]),
            key: SphinxPublicKey([2; 32]),
        };
        assert!(Route::new(vec![], vec![]).is_err());
        assert!(Route::new(vec![hop], vec![]).is_err());
        assert!(Route::new(vec![hop; MAX_HOPS + 1], vec![Duration::ZERO; MAX_HOPS + 1]).is_err());
        assert!(Route::new(vec![hop; 4], vec![Duration::ZERO; 4]).is_ok());
    }

    #[test]
    fn empty_ring_refuses() {
        let mut rng = ChaCha20Rng::seed_from_u64(1);
        let key = SphinxSecretKey::random(&mut rng);
        let route = Route::new(
            vec![Hop {
                id: NodeId::from_bytes([1; 32]),
                key: key.public_key(),
            }],
            vec![Duration::ZERO],
        )
        .unwrap();
        let p = build_forward_packet(&mut rng, &route, Destination([0; 32]), b"x").unwrap();
        assert!(matches!(
            KeyRing::new().unwrap(&p),
            Err(Error::EmptyKeyRing)
        ));
    }
}
