//! The signed directory: node descriptors, authority votes and the
//! threshold-signed consensus document, with their verification.
//!
//! Everything is encoded canonically with postcard (serde) and signed as
//! bytes: a signature covers `context || body`, where the context names the
//! document type, so a signature on one kind of document can never be
//! replayed as another. Verification returns a `Verified*` value; code that
//! holds one never re-checks it.

use std::collections::{HashMap, HashSet};
use std::fmt;
use std::net::SocketAddr;

use ed25519_dalek::{Signer, SigningKey};
use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::error::{Error, Result};
use crate::ids::NodeId;
use crate::keys::{IdentityKey, SphinxPublicKey};
use crate::link::LinkPublicKey;
use crate::packet::{Hop, MIX_LAYERS, PACKET_SIZE};

/// Version of the descriptor format (2: with the link key).
pub const DESCRIPTOR_VERSION: u8 = 2;
/// Version of the vote format.
pub const VOTE_VERSION: u8 = 1;
/// Version of the consensus format (2: with link keys).
pub const CONSENSUS_VERSION: u8 = 2;
/// The most Sphinx keys one descriptor may publish (current and upcoming epochs).
pub const MAX_DESCRIPTOR_KEYS: usize = 4;
/// The most bytes an encoded descriptor may take (postcard is compact: a
/// real descriptor is about 1 470 bytes, 1 216 of them its link key).
pub const MAX_DESCRIPTOR_SIZE: usize = 2048;

const DESCRIPTOR_CONTEXT: &[u8] = b"murmur/descriptor/v1\0";
const VOTE_CONTEXT: &[u8] = b"murmur/vote/v1\0";
const CONSENSUS_CONTEXT: &[u8] = b"murmur/consensus/v1\0";

/// An Ed25519 signature (64 bytes).
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct Signature(pub [u8; 64]);

impl fmt::Debug for Signature {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Signature(..)")
    }
}

impl Serialize for Signature {
    fn serialize<S: Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
        s.serialize_bytes(&self.0)
    }
}

impl<'de> Deserialize<'de> for Signature {
    fn deserialize<D: Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        struct V;
        impl serde::de::Visitor<'_> for V {
            type Value = Signature;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("64 signature bytes")
            }
            fn visit_bytes<E: serde::de::Error>(
                self,
                v: &[u8],
            ) -> std::result::Result<Signature, E> {
                let arr: [u8; 64] = v
                    .try_into()
                    .map_err(|_| E::invalid_length(v.len(), &self))?;
                Ok(Signature(arr))
            }
        }
        d.deserialize_bytes(V)
    }
}

fn sign(key: &SigningKey, context: &[u8], body: &[u8]) -> Signature {
    let mut msg = Vec::with_capacity(context.len() + body.len());
    msg.extend_from_slice(context);
    msg.extend_from_slice(body);
    Signature(key.sign(&msg).to_bytes())
}

fn verify(
    key: &IdentityKey,
    context: &[u8],
    body: &[u8],
    sig: &Signature,
    what: &'static str,
) -> Result<()> {
    let vk = key.verifying_key(what)?;
    let mut msg = Vec::with_capacity(context.len() + body.len());
    msg.extend_from_slice(context);
    msg.extend_from_slice(body);
    vk.verify_strict(&msg, &ed25519_dalek::Signature::from_bytes(&sig.0))
        .map_err(|_| Error::BadSignature { what })
}

fn encode<T: Serialize>(value: &T, what: &'static str) -> Result<Vec<u8>> {
    postcard::to_stdvec(value).map_err(|source| Error::Encode { what, source })
}

fn decode<'a, T: Deserialize<'a>>(bytes: &'a [u8], what: &'static str) -> Result<T> {
    let (value, rest) =
        postcard::take_from_bytes(bytes).map_err(|source| Error::Decode { what, source })?;
    if !rest.is_empty() {
        return Err(Error::Malformed {
            what,
            reason: "trailing bytes",
        });
    }
    Ok(value)
}

/// What a node does in the network.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum Role {
    /// A mix node: placed in one of the mix layers.
    Mix,
    /// A mailbox provider: the final hop, holding queues.
    Mailbox,
}

/// A Sphinx public key for one epoch.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct EpochKey {
    /// The epoch the key is for.
    pub epoch: u64,
    /// The key.
    pub key: SphinxPublicKey,
}

/// What a node says about itself, signed by its identity key.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Descriptor {
    /// [`DESCRIPTOR_VERSION`].
    pub version: u8,
    /// The node's Ed25519 identity key; its node id derives from it.
    pub identity: IdentityKey,
    /// Mix or mailbox.
    pub role: Role,
    /// Where the node accepts packet links.
    pub packet_addr: SocketAddr,
    /// Where a mailbox serves its fetch API (mailboxes only).
    pub http_addr: Option<SocketAddr>,
    /// The static key of the node's encrypted links (packet links and the
    /// mailbox API), `docs/protocol.md` §4.
    pub link_key: LinkPublicKey,
    /// Sphinx keys for the current and upcoming epochs, oldest first.
    pub sphinx_keys: Vec<EpochKey>,
    /// When the node made this descriptor, unix seconds.
    pub published_at: u64,
}

impl Descriptor {
    /// The node's id.
    pub fn node_id(&self) -> NodeId {
        self.identity.node_id()
    }

    /// The Sphinx key for `epoch`, if published.
    pub fn key_for(&self, epoch: u64) -> Option<SphinxPublicKey> {
        self.sphinx_keys
            .iter()
            .find(|k| k.epoch == epoch)
            .map(|k| k.key)
    }

    /// The latest epoch this descriptor has a key for.
    pub fn last_epoch(&self) -> Option<u64> {
        self.sphinx_keys.iter().map(|k| k.epoch).max()
    }

    fn check(&self) -> Result<()> {
        let invalid = |reason: &str| Error::Invalid {
            what: "descriptor",
            reason: reason.to_owned(),
        };
        if self.version != DESCRIPTOR_VERSION {
            return Err(Error::UnsupportedVersion {
                what: "descriptor",
                version: self.version,
            });
        }
        match (self.role, self.http_addr) {
            (Role::Mailbox, None) => return Err(invalid("a mailbox must give its HTTP address")),
            (Role::Mix, Some(_)) => return Err(invalid("a mix has no HTTP address")),
            _ => {}
        }
        if self.sphinx_keys.is_empty() || self.sphinx_keys.len() > MAX_DESCRIPTOR_KEYS {
            return Err(invalid("between 1 and 4 Sphinx keys are required"));
        }
        if self
            .sphinx_keys
            .windows(2)
            .any(|w| w[1].epoch != w[0].epoch.saturating_add(1))
        {
            return Err(invalid(
                "Sphinx keys must be for consecutive epochs, oldest first",
            ));
        }
        Ok(())
    }
}

/// A descriptor as signed by its node: the exact bytes and the signature.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SignedDescriptor {
    /// The postcard encoding of a [`Descriptor`].
    pub body: Vec<u8>,
    /// The identity key's signature over the body.
    pub signature: Signature,
}

impl SignedDescriptor {
    /// Encodes and signs a descriptor with the node's identity key.
    pub fn sign(descriptor: &Descriptor, key: &SigningKey) -> Result<Self> {
        let body = encode(descriptor, "descriptor")?;
        let signature = sign(key, DESCRIPTOR_CONTEXT, &body);
        Ok(Self { body, signature })
    }

    /// The wire form (what `POST /v1/descriptors` carries).
    pub fn to_bytes(&self) -> Result<Vec<u8>> {
        encode(self, "signed descriptor")
    }

    /// Parses the wire form; refuses anything over the size limit.
    pub fn from_bytes(bytes: &[u8]) -> Result<Self> {
        if bytes.len() > MAX_DESCRIPTOR_SIZE + 80 {
            return Err(Error::WrongLength {
                what: "signed descriptor (at most)",
                expected: MAX_DESCRIPTOR_SIZE + 80,
                actual: bytes.len(),
            });
        }
        decode(bytes, "signed descriptor")
    }

    /// Checks the signature against the identity key inside, and the
    /// descriptor's own consistency.
    pub fn verify(&self) -> Result<VerifiedDescriptor> {
        if self.body.len() > MAX_DESCRIPTOR_SIZE {
            return Err(Error::WrongLength {
                what: "descriptor (at most)",
                expected: MAX_DESCRIPTOR_SIZE,
                actual: self.body.len(),
            });
        }
        let descriptor: Descriptor = decode(&self.body, "descriptor")?;
        verify(
            &descriptor.identity,
            DESCRIPTOR_CONTEXT,
            &self.body,
            &self.signature,
            "descriptor",
        )?;
        descriptor.check()?;
        Ok(VerifiedDescriptor {
            id: descriptor.node_id(),
            descriptor,
            signed: self.clone(),
        })
    }
}

/// A descriptor whose signature and contents were checked.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct VerifiedDescriptor {
    id: NodeId,
    descriptor: Descriptor,
    signed: SignedDescriptor,
}

impl VerifiedDescriptor {
    /// The node's id.
    pub fn id(&self) -> NodeId {
        self.id
    }

    /// The descriptor.
    pub fn descriptor(&self) -> &Descriptor {
        &self.descriptor
    }

    /// The signed form it was verified from.
    pub fn signed(&self) -> &SignedDescriptor {
        &self.signed
    }
}

/// The parameters every node and client of a network runs with. Rates are
/// per second; delays in microseconds.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct NetworkParams {
    /// Epoch length in seconds; epoch `e` covers `[e·len, (e+1)·len)` in unix time.
    pub epoch_secs: u64,
    /// Mean of the exponential per-hop delay senders draw, µs.
    pub mean_delay_us: u64,
    /// Nodes drop a packet whose delay exceeds this, µs; senders clamp to it.
    pub max_delay_us: u64,
    /// λ: rate of a client's send stream (real or drop cover), packets/s.
    /// Zero turns cover off: real packets go out as soon as they are queued.
    pub client_rate: f64,
    /// λ_L: rate of a client's loop cover stream, packets/s (0 = off).
    pub client_loop_rate: f64,
    /// Rate of each mix node's loop cover, packets/s (0 = off).
    pub mix_loop_rate: f64,
    /// Bytes of every packet; must equal [`PACKET_SIZE`].
    pub packet_size: u32,
}

impl NetworkParams {
    /// Checks that the parameters make sense together.
    pub fn check(&self) -> Result<()> {
        let invalid = |reason: String| Error::Invalid {
            what: "network parameters",
            reason,
        };
        if self.epoch_secs == 0 {
            return Err(invalid("epoch length must be positive".into()));
        }
        if self.max_delay_us < self.mean_delay_us {
            return Err(invalid("max delay is below the mean delay".into()));
        }
        for (name, rate) in [
            ("client rate", self.client_rate),
            ("client loop rate", self.client_loop_rate),
            ("mix loop rate", self.mix_loop_rate),
        ] {
            if !rate.is_finite() || !(0.0..=1e6).contains(&rate) {
                return Err(invalid(format!("{name} must be in [0, 1e6]")));
            }
        }
        if self.packet_size as usize != PACKET_SIZE {
            return Err(invalid(format!(
                "packet size {} is not this implementation's {}",
                self.packet_size, PACKET_SIZE
            )));
        }
        Ok(())
    }
}

/// An authority's vote for an epoch: the descriptors it accepted.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Vote {
    /// [`VOTE_VERSION`].
    pub version: u8,
    /// The epoch voted on.
    pub epoch: u64,
    /// The voting authority.
    pub authority: IdentityKey,
    /// The authority's network parameters (all authorities must agree).
    pub params: NetworkParams,
    /// Signed descriptors the authority accepted for the epoch.
    pub descriptors: Vec<SignedDescriptor>,
}

/// A vote as signed by its authority.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SignedVote {
    /// The postcard encoding of a [`Vote`].
    pub body: Vec<u8>,
    /// The authority's signature over the body.
    pub signature: Signature,
}

impl SignedVote {
    /// Encodes and signs a vote.
    pub fn sign(vote: &Vote, key: &SigningKey) -> Result<Self> {
        let body = encode(vote, "vote")?;
        let signature = sign(key, VOTE_CONTEXT, &body);
        Ok(Self { body, signature })
    }

    /// The wire form.
    pub fn to_bytes(&self) -> Result<Vec<u8>> {
        encode(self, "signed vote")
    }

    /// Parses the wire form.
    pub fn from_bytes(bytes: &[u8]) -> Result<Self> {
        decode(bytes, "signed vote")
    }

    /// Verifies the vote was signed by `authority` for `epoch`. Descriptors
    /// inside are not checked here; check each with
    /// [`SignedDescriptor::verify`] before counting it.
    pub fn verify(&self, authority: &IdentityKey, epoch: u64) -> Result<Vote> {
        let vote: Vote = decode(&self.body, "vote")?;
        if vote.version != VOTE_VERSION {
            return Err(Error::UnsupportedVersion {
                what: "vote",
                version: vote.version,
            });
        }
        if vote.authority != *authority {
            return Err(Error::Invalid {
                what: "vote",
                reason: "signed by another authority than expected".into(),
            });
        }
        verify(authority, VOTE_CONTEXT, &self.body, &self.signature, "vote")?;
        if vote.epoch != epoch {
            return Err(Error::WrongEpoch {
                expected: epoch,
                actual: vote.epoch,
            });
        }
        Ok(vote)
    }
}

/// A mix node as listed in a consensus.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct MixEntry {
    /// Layer, `0..MIX_LAYERS` (layer 0 receives from clients).
    pub layer: u8,
    /// Identity key (the node id derives from it).
    pub identity: IdentityKey,
    /// Packet address.
    pub packet_addr: SocketAddr,
    /// Link key.
    pub link_key: LinkPublicKey,
    /// Sphinx key for the document's epoch.
    pub sphinx_key: SphinxPublicKey,
}

/// A mailbox provider as listed in a consensus.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct MailboxEntry {
    /// Identity key (the node id derives from it).
    pub identity: IdentityKey,
    /// Packet address.
    pub packet_addr: SocketAddr,
    /// Fetch API address.
    pub http_addr: SocketAddr,
    /// Link key.
    pub link_key: LinkPublicKey,
    /// Sphinx key for the document's epoch.
    pub sphinx_key: SphinxPublicKey,
}

/// The network for one epoch, as the authorities agreed on it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Consensus {
    /// [`CONSENSUS_VERSION`].
    pub version: u8,
    /// The epoch this document is for.
    pub epoch: u64,
    /// Start of the validity window, unix seconds.
    pub valid_after: u64,
    /// End of the validity window, unix seconds.
    pub valid_until: u64,
    /// The network's parameters.
    pub params: NetworkParams,
    /// Mix nodes, sorted by (layer, identity).
    pub mixes: Vec<MixEntry>,
    /// Mailbox providers, sorted by identity.
    pub mailboxes: Vec<MailboxEntry>,
}

/// One authority's signature on a consensus.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct AuthoritySignature {
    /// The signing authority.
    pub authority: IdentityKey,
    /// Its signature over the consensus body.
    pub signature: Signature,
}

/// A consensus with the signatures collected for it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SignedConsensus {
    /// The postcard encoding of a [`Consensus`].
    pub body: Vec<u8>,
    /// Signatures by authorities, at most one per authority.
    pub signatures: Vec<AuthoritySignature>,
}

/// The pinned authorities and how many of them must sign.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AuthoritySet {
    keys: Vec<IdentityKey>,
    threshold: usize,
}

impl AuthoritySet {
    /// `threshold` of the distinct `keys` must sign; `1 ≤ threshold ≤ keys.len()`.
    pub fn new(keys: Vec<IdentityKey>, threshold: usize) -> Result<Self> {
        let distinct: HashSet<_> = keys.iter().collect();
        if distinct.len() != keys.len() {
            return Err(Error::Invalid {
                what: "authority set",
                reason: "an authority key is listed twice".into(),
            });
        }
        if threshold == 0 || threshold > keys.len() {
            return Err(Error::Invalid {
                what: "authority set",
                reason: format!("threshold {threshold} is not in 1..={}", keys.len()),
            });
        }
        for k in &keys {
            k.verifying_key("authority")?;
        }
        Ok(Self { keys, threshold })
    }

    /// The pinned keys.
    pub fn keys(&self) -> &[IdentityKey] {
        &self.keys
    }

    /// The threshold k.
    pub fn threshold(&self) -> usize {
        self.threshold
    }

    /// True if `key` is pinned.
    pub fn contains(&self, key: &IdentityKey) -> bool {
        self.keys.contains(key)
    }
}

impl SignedConsensus {
    /// Encodes a consensus and signs it: the first signature.
    pub fn sign(consensus: &Consensus, key: &SigningKey) -> Result<Self> {
        let body = encode(consensus, "consensus")?;
        let mut signed = Self {
            body,
            signatures: Vec::new(),
        };
        signed.add_signature(key);
        Ok(signed)
    }

    /// Adds (or replaces) `key`'s signature over the body.
    pub fn add_signature(&mut self, key: &SigningKey) {
        let authority = IdentityKey::from(&key.verifying_key());
        let signature = sign(key, CONSENSUS_CONTEXT, &self.body);
        self.signatures.retain(|s| s.authority != authority);
        self.signatures.push(AuthoritySignature {
            authority,
            signature,
        });
        self.signatures.sort_by_key(|s| s.authority);
    }

    /// Adds a signature made by another authority, if it verifies over this
    /// body. Returns whether it was added.
    pub fn merge_signature(&mut self, sig: &AuthoritySignature) -> bool {
        if verify(
            &sig.authority,
            CONSENSUS_CONTEXT,
            &self.body,
            &sig.signature,
            "consensus",
        )
        .is_err()
        {
            return false;
        }
        self.signatures.retain(|s| s.authority != sig.authority);
        self.signatures.push(sig.clone());
        self.signatures.sort_by_key(|s| s.authority);
        true
    }

    /// The wire form.
    pub fn to_bytes(&self) -> Result<Vec<u8>> {
        encode(self, "signed consensus")
    }

    /// Parses the wire form.
    pub fn from_bytes(bytes: &[u8]) -> Result<Self> {
        decode(bytes, "signed consensus")
    }

    /// Verifies the document: at least `k` valid signatures from distinct
    /// pinned authorities, the expected epoch (if given), a validity window
    /// that `now` (unix seconds) has not passed, and consistent contents.
    ///
    /// A document is usable from one epoch before its window opens, so that
    /// the next epoch's document can be fetched and checked ahead of time.
    pub fn verify(
        &self,
        authorities: &AuthoritySet,
        now: u64,
        expected_epoch: Option<u64>,
    ) -> Result<VerifiedConsensus> {
        let mut valid = HashSet::new();
        let mut invalid = 0;
        // At most one signature per authority is checked: a document padded
        // with many bad signatures for one pinned key costs one verification
        // per pinned authority, not one per entry.
        let mut seen = HashSet::new();
        for sig in &self.signatures {
            if !authorities.contains(&sig.authority) || !seen.insert(sig.authority) {
                continue;
            }
            match verify(
                &sig.authority,
                CONSENSUS_CONTEXT,
                &self.body,
                &sig.signature,
                "consensus",
            ) {
                Ok(()) => {
                    valid.insert(sig.authority);
                }
                Err(_) => invalid += 1,
            }
        }
        if valid.len() < authorities.threshold() {
            return Err(Error::UnderThreshold {
                valid: valid.len(),
                required: authorities.threshold(),
                invalid,
            });
        }
        let doc: Consensus = decode(&self.body, "consensus")?;
        if doc.version != CONSENSUS_VERSION {
            return Err(Error::UnsupportedVersion {
                what: "consensus",
                version: doc.version,
            });
        }
        if let Some(expected) = expected_epoch
            && doc.epoch != expected
        {
            return Err(Error::WrongEpoch {
                expected,
                actual: doc.epoch,
            });
        }
        if now >= doc.valid_until {
            return Err(Error::Expired {
                epoch: doc.epoch,
                valid_until: doc.valid_until,
                now,
            });
        }
        let early = doc.params.epoch_secs;
        if now.saturating_add(early) < doc.valid_after {
            return Err(Error::NotYetValid {
                epoch: doc.epoch,
                valid_after: doc.valid_after,
                now,
            });
        }
        VerifiedConsensus::from_parts(doc, self.clone())
    }
}

/// A node as a verified consensus lists it, with its id computed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NodeInfo {
    /// The node id.
    pub id: NodeId,
    /// The identity key.
    pub identity: IdentityKey,
    /// Mix or mailbox.
    pub role: Role,
    /// The layer of a mix.
    pub layer: Option<u8>,
    /// Packet address.
    pub packet_addr: SocketAddr,
    /// Fetch API address of a mailbox.
    pub http_addr: Option<SocketAddr>,
    /// Link key: what a link to this node must authenticate.
    pub link_key: LinkPublicKey,
    /// Sphinx key for the document's epoch.
    pub sphinx_key: SphinxPublicKey,
}

impl NodeInfo {
    /// This node as a route hop.
    pub fn hop(&self) -> Hop {
        Hop {
            id: self.id,
            key: self.sphinx_key,
        }
    }
}

/// A consensus that passed [`SignedConsensus::verify`].
#[derive(Clone, Debug)]
pub struct VerifiedConsensus {
    doc: Consensus,
    signed: SignedConsensus,
    layers: Vec<Vec<NodeInfo>>,
    mailboxes: Vec<NodeInfo>,
    index: HashMap<NodeId, (Option<usize>, usize)>,
    by_link_key: HashMap<[u8; 32], NodeId>,
}

impl VerifiedConsensus {
    fn from_parts(doc: Consensus, signed: SignedConsensus) -> Result<Self> {
        let invalid = |reason: String| Error::Invalid {
            what: "consensus",
            reason,
        };
        doc.params.check()?;
        if doc.valid_until <= doc.valid_after {
            return Err(invalid("empty validity window".into()));
        }
        let mut layers = vec![Vec::new(); MIX_LAYERS];
        let mut index = HashMap::new();
        let mut addrs = HashSet::new();
        let mut by_link_key = HashMap::new();
        for m in &doc.mixes {
            let layer = usize::from(m.layer);
            let Some(slot) = layers.get_mut(layer) else {
                return Err(invalid(format!("mix in layer {layer}")));
            };
            let id = m.identity.node_id();
            if index.insert(id, (Some(layer), slot.len())).is_some() {
                return Err(invalid("a node is listed twice".into()));
            }
            if !addrs.insert(m.packet_addr) {
                return Err(invalid("two nodes share a packet address".into()));
            }
            if by_link_key.insert(m.link_key.dh, id).is_some() {
                return Err(invalid("two nodes share a link key".into()));
            }
            slot.push(NodeInfo {
                id,
                identity: m.identity,
                role: Role::Mix,
                layer: Some(m.layer),
                packet_addr: m.packet_addr,
                http_addr: None,
                link_key: m.link_key.clone(),
                sphinx_key: m.sphinx_key,
            });
        }
        let mut mailboxes = Vec::with_capacity(doc.mailboxes.len());
        for m in &doc.mailboxes {
            let id = m.identity.node_id();
            if index.insert(id, (None, mailboxes.len())).is_some() {
                return Err(invalid("a node is listed twice".into()));
            }
            if !addrs.insert(m.packet_addr) {
                return Err(invalid("two nodes share a packet address".into()));
            }
            if by_link_key.insert(m.link_key.dh, id).is_some() {
                return Err(invalid("two nodes share a link key".into()));
            }
            mailboxes.push(NodeInfo {
                id,
                identity: m.identity,
                role: Role::Mailbox,
                layer: None,
                packet_addr: m.packet_addr,
                http_addr: Some(m.http_addr),
                link_key: m.link_key.clone(),
                sphinx_key: m.sphinx_key,
            });
        }
        Ok(Self {
            doc,
            signed,
            layers,
            mailboxes,
            index,
            by_link_key,
        })
    }

    /// The epoch.
    pub fn epoch(&self) -> u64 {
        self.doc.epoch
    }

    /// The network parameters.
    pub fn params(&self) -> &NetworkParams {
        &self.doc.params
    }

    /// The document.
    pub fn document(&self) -> &Consensus {
        &self.doc
    }

    /// The signed form it was verified from.
    pub fn signed(&self) -> &SignedConsensus {
        &self.signed
    }

    /// Mix layers, `MIX_LAYERS` of them (a layer may be empty).
    pub fn layers(&self) -> &[Vec<NodeInfo>] {
        &self.layers
    }

    /// True if every mix layer has at least one node and there is a mailbox.
    pub fn is_routable(&self) -> bool {
        self.layers.iter().all(|l| !l.is_empty()) && !self.mailboxes.is_empty()
    }

    /// Mailbox providers.
    pub fn mailboxes(&self) -> &[NodeInfo] {
        &self.mailboxes
    }

    /// Looks a node up by id.
    pub fn node(&self, id: &NodeId) -> Option<&NodeInfo> {
        match self.index.get(id)? {
            (Some(layer), i) => self.layers.get(*layer)?.get(*i),
            (None, i) => self.mailboxes.get(*i),
        }
    }

    /// The node whose link key has the static X25519 half `dh` (what the
    /// responder of a link learns of its initiator).
    pub fn node_by_link_key(&self, dh: &[u8; 32]) -> Option<&NodeInfo> {
        self.node(self.by_link_key.get(dh)?)
    }

    /// True if `now` (unix seconds) is before the end of the validity window.
    pub fn is_fresh(&self, now: u64) -> bool {
        now < self.doc.valid_until
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn signature_serde_checks_length() {
        let sig = Signature([7u8; 64]);
        let bytes = postcard::to_stdvec(&sig).unwrap();
        let back: Signature = postcard::from_bytes(&bytes).unwrap();
        assert_eq!(sig, back);
        let short = postcard::to_stdvec(&serde_bytes_vec(vec![1u8; 63])).unwrap();
        assert!(postcard::from_bytes::<Signature>(&short).is_err());
    }

    fn serde_bytes_vec(v: Vec<u8>) -> impl Serialize {
        struct B(Vec<u8>);
        impl Serialize for B {
            fn serialize<S: Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
                s.serialize_bytes(&self.0)
            }
        }
        B(v)
    }

    #[test]
    fn authority_sets_are_checked() {
        let k = IdentityKey(
            SigningKey::from_bytes(&[1u8; 32])
                .verifying_key()
                .to_bytes(),
        );
        assert!(AuthoritySet::new(vec![k], 0).is_err());
        assert!(AuthoritySet::new(vec![k], 2).is_err());
        assert!(AuthoritySet::new(vec![k, k], 1).is_err());
        assert!(AuthoritySet::new(vec![k], 1).is_ok());
    }

    #[test]
    fn repeated_signatures_are_checked_once_per_authority() {
        let key = SigningKey::from_bytes(&[1u8; 32]);
        let me = IdentityKey::from(&key.verifying_key());
        let set = AuthoritySet::new(vec![me], 1).unwrap();
        let doc = SignedConsensus {
            body: vec![0; 8],
            signatures: vec![
                AuthoritySignature {
                    authority: me,
                    signature: Signature([9; 64]),
                };
                1000
            ],
        };
        match doc.verify(&set, 0, None) {
            Err(Error::UnderThreshold { valid, invalid, .. }) => {
                assert_eq!((valid, invalid), (0, 1));
            }
            other => panic!("{other:?}"),
        }
    }

    proptest! {
        #[test]
        fn arbitrary_bytes_never_panic(data in proptest::collection::vec(any::<u8>(), 0..2000)) {
            if let Ok(d) = SignedDescriptor::from_bytes(&data) {
                let _ = d.verify();
            }
            if let Ok(v) = SignedVote::from_bytes(&data) {
                let _ = v.verify(&IdentityKey([0; 32]), 0);
            }
            if let Ok(c) = SignedConsensus::from_bytes(&data) {
                let set = AuthoritySet::new(vec![IdentityKey(SigningKey::from_bytes(&[1u8; 32]).verifying_key().to_bytes())], 1).unwrap();
                let _ = c.verify(&set, 0, None);
            }
            let _ = postcard::from_bytes::<Descriptor>(&data);
            let _ = postcard::from_bytes::<Consensus>(&data);
        }
    }
}
