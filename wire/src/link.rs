//! Link encryption: every TCP connection of the network — packet links
//! between nodes, a client's link to its entry mix, the mailbox API — runs
//! a Noise handshake and then carries encrypted records.
//!
//! The handshake is `Noise_XKpsk3_25519_AESGCM_SHA256` with a
//! post-quantum pre-shared key: an ML-KEM-768 exchange done inside the first
//! two handshake messages, whose shared secrets become the `psk` mixed into
//! the third. This module is the protocol only (no I/O, no clock):
//! [`Initiator`] and [`Responder`] turn handshake messages into a
//! [`Transport`], which seals and opens records; `murmur-net` drives them on
//! sockets.
//!
//! ```text
//!   initiator                                                  responder
//!   -> e, es          payload: ek_E (ML-KEM ephemeral key, 1184)
//!                              ct_S = Encaps(responder's static ek) (1088)
//!   <- e, ee          payload: ct_E = Encaps(ek_E) (1088)
//!   psk = HKDF-SHA256(ss_S ‖ ss_E)      (both sides, after message 2)
//!   -> s, se, psk     payload: empty
//! ```
//!
//! * The responder is always authenticated: the initiator knows its static
//!   X25519 key and its ML-KEM-768 encapsulation key from the signed
//!   consensus ([`LinkPublicKey`] in every descriptor and consensus entry).
//! * A node initiates with its own static key, which the responder looks up
//!   in the consensus: both ends of a node-to-node link are authenticated.
//!   A client initiates with a fresh static key per connection: it is not
//!   identified, and its connections cannot be linked by key.
//! * Hybrid security: the transport keys depend on the X25519 exchanges
//!   (es, ee, se) *and* on the psk from ML-KEM. An attacker who later breaks
//!   X25519 (a quantum computer, against a recording) still lacks ss_S and
//!   ss_E; one who breaks ML-KEM still faces the Noise handshake. ss_E is
//!   ephemeral (forward secrecy against the recorder); ss_S is encapsulated
//!   to the responder's static KEM key, so only the real responder can
//!   derive the psk (post-quantum authentication of the responder).
//!
//! # Records
//!
//! After the handshake each direction is a stream of records, each
//! `length (u16, big-endian) ‖ Noise transport message`. A record's
//! plaintext is at most [`MAX_RECORD_PAYLOAD`] bytes of data; an empty
//! plaintext is a *rekey* record: after it, that direction's key is
//! replaced by its Noise `REKEY` (so a key seized later does not open what
//! was sent before). The sender decides when (see [`Transport::should_rekey`]).
//! Handshake messages are framed the same way.

use std::fmt;

use aes_gcm::aead::{AeadInOut, KeyInit};
use aes_gcm::{Aes256Gcm, Nonce, Tag};
use hkdf::Hkdf;
use ml_kem::kem::{Decapsulate, Encapsulate, Generate, KeyExport};
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use sha2::{Digest, Sha256};
use snow::params::{CipherChoice, DHChoice, HashChoice};
use snow::resolvers::CryptoResolver;
use snow::types::{Cipher, Dh, Hash, Random};
use x25519_dalek::{PublicKey, StaticSecret};
use zeroize::{Zeroize, Zeroizing};

use crate::error::{Error, Result};

/// The Noise protocol name of every link.
pub const NOISE_PARAMS: &str = "Noise_XKpsk3_25519_AESGCM_SHA256";
/// Bytes of an ML-KEM-768 encapsulation (public) key.
pub const KEM_PUBLIC_KEY_SIZE: usize = 1184;
/// Bytes of an ML-KEM-768 ciphertext.
pub const KEM_CIPHERTEXT_SIZE: usize = 1088;
/// Bytes of a record's length prefix.
pub const RECORD_HEADER_SIZE: usize = 2;
/// Bytes of the AEAD tag in every record and encrypted handshake payload.
pub const TAG_SIZE: usize = 16;
/// The largest Noise message (a record's body).
pub const MAX_MESSAGE: usize = 65_535;
/// The most data bytes one record carries.
pub const MAX_RECORD_PAYLOAD: usize = MAX_MESSAGE - TAG_SIZE;
/// Bytes of handshake message 1: e (32), payload (1184 + 1088), tag.
pub const MESSAGE1_SIZE: usize = 32 + KEM_PUBLIC_KEY_SIZE + KEM_CIPHERTEXT_SIZE + TAG_SIZE;
/// Bytes of handshake message 2: e (32), payload (1088), tag.
pub const MESSAGE2_SIZE: usize = 32 + KEM_CIPHERTEXT_SIZE + TAG_SIZE;
/// Bytes of handshake message 3: encrypted s (32 + tag), empty payload's tag.
pub const MESSAGE3_SIZE: usize = 32 + TAG_SIZE + TAG_SIZE;
/// A sender rekeys at the latest after this many records.
pub const REKEY_AFTER_RECORDS: u64 = 1 << 16;

const PROLOGUE: &[u8] = b"murmur/link/v1\0";
const PSK_INFO: &[u8] = b"murmur/link/pq-psk/v1";
const LINK_KEY_INFO_DH: &[u8] = b"murmur/link-key/x25519/v1";
const LINK_KEY_INFO_KEM: &[u8] = b"murmur/link-key/ml-kem-768/v1";

fn link_error(reason: &'static str) -> Error {
    Error::Link { reason }
}

/// What a listener serves: part of the handshake's prologue, so a client of
/// one service cannot complete a handshake with another.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Purpose {
    /// A packet link (fixed-size Sphinx frames).
    Packets,
    /// The mailbox fetch API (HTTP/1).
    MailboxApi,
}

impl Purpose {
    fn prologue(self) -> Vec<u8> {
        let name: &[u8] = match self {
            Purpose::Packets => b"packets",
            Purpose::MailboxApi => b"mailbox-api",
        };
        [PROLOGUE, name].concat()
    }
}

/// An ML-KEM-768 encapsulation key, checked to be well formed when parsed.
#[derive(Clone, PartialEq, Eq)]
pub struct KemPublicKey(Box<[u8; KEM_PUBLIC_KEY_SIZE]>);

impl KemPublicKey {
    /// Parses an encapsulation key (FIPS 203's modulus check included).
    pub fn from_bytes(bytes: &[u8]) -> Result<Self> {
        let arr: [u8; KEM_PUBLIC_KEY_SIZE] = bytes.try_into().map_err(|_| Error::WrongLength {
            what: "ML-KEM-768 public key",
            expected: KEM_PUBLIC_KEY_SIZE,
            actual: bytes.len(),
        })?;
        let key = Self(Box::new(arr));
        key.encapsulation_key()?;
        Ok(key)
    }

    /// The key's bytes.
    pub fn as_bytes(&self) -> &[u8; KEM_PUBLIC_KEY_SIZE] {
        &self.0
    }

    fn encapsulation_key(&self) -> Result<ml_kem::ml_kem_768::EncapsulationKey> {
        let key = ml_kem::Key::<ml_kem::ml_kem_768::EncapsulationKey>::from(*self.0);
        ml_kem::ml_kem_768::EncapsulationKey::new(&key).map_err(|_| Error::InvalidPublicKey {
            what: "ML-KEM-768 encapsulation key",
        })
    }
}

impl fmt::Debug for KemPublicKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "KemPublicKey({})", hex_prefix(&self.0[..]))
    }
}

impl Serialize for KemPublicKey {
    fn serialize<S: Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
        s.serialize_bytes(&self.0[..])
    }
}

impl<'de> Deserialize<'de> for KemPublicKey {
    fn deserialize<D: Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        struct V;
        impl serde::de::Visitor<'_> for V {
            type Value = KemPublicKey;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("an ML-KEM-768 encapsulation key")
            }
            fn visit_bytes<E: serde::de::Error>(
                self,
                v: &[u8],
            ) -> std::result::Result<KemPublicKey, E> {
                KemPublicKey::from_bytes(v).map_err(|_| E::invalid_length(v.len(), &self))
            }
        }
        d.deserialize_bytes(V)
    }
}

fn hex_prefix(bytes: &[u8]) -> String {
    bytes.iter().take(4).map(|b| format!("{b:02x}")).collect()
}

/// A node's public link key, as published in its descriptor and listed in
/// the consensus.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LinkPublicKey {
    /// The static X25519 key of the Noise handshake.
    pub dh: [u8; 32],
    /// The static ML-KEM-768 encapsulation key.
    pub kem: KemPublicKey,
}

impl fmt::Debug for LinkPublicKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "LinkPublicKey({})", hex_prefix(&self.dh))
    }
}

/// A node's secret link key: derived from its identity secret, so a node
/// has one secret to keep (`docs/protocol.md` §4).
pub struct LinkSecretKey {
    dh: StaticSecret,
    kem: ml_kem::ml_kem_768::DecapsulationKey,
    public: LinkPublicKey,
}

impl fmt::Debug for LinkSecretKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("LinkSecretKey")
            .field("public", &self.public)
            .finish_non_exhaustive()
    }
}

impl LinkSecretKey {
    /// Derives the link key from a 32-byte secret (the node's Ed25519
    /// identity secret): HKDF-SHA256 with one label for the X25519 key and
    /// another for the 64-byte ML-KEM-768 seed.
    pub fn derive(secret: &[u8; 32]) -> Self {
        let hk = Hkdf::<Sha256>::new(Some(b"murmur/link-key/v1"), secret);
        let mut dh = Zeroizing::new([0u8; 32]);
        let mut seed = Zeroizing::new([0u8; 64]);
        // Both lengths are far below HKDF-SHA256's limit of 8160 bytes.
        let _ = hk.expand(LINK_KEY_INFO_DH, &mut dh[..]);
        let _ = hk.expand(LINK_KEY_INFO_KEM, &mut seed[..]);
        Self::from_parts(*dh, &seed)
    }

    /// A random link key (clients' throwaway keys come from [`Initiator::start`]
    /// instead; this is for tests and tools).
    pub fn generate<R: rand::CryptoRng + ?Sized>(rng: &mut R) -> Self {
        let mut secret = Zeroizing::new([0u8; 32]);
        rng.fill_bytes(&mut secret[..]);
        Self::derive(&secret)
    }

    fn from_parts(dh: [u8; 32], seed: &[u8; 64]) -> Self {
        let dh = StaticSecret::from(dh);
        let kem = ml_kem::ml_kem_768::DecapsulationKey::from_seed(ml_kem::Seed::from(*seed));
        let kem_public = kem.encapsulation_key().to_bytes();
        let mut kem_bytes = [0u8; KEM_PUBLIC_KEY_SIZE];
        kem_bytes.copy_from_slice(kem_public.as_slice());
        let public = LinkPublicKey {
            dh: PublicKey::from(&dh).to_bytes(),
            kem: KemPublicKey(Box::new(kem_bytes)),
        };
        Self { dh, kem, public }
    }

    /// The public half.
    pub fn public(&self) -> &LinkPublicKey {
        &self.public
    }
}

/// The post-quantum psk: both ML-KEM shared secrets through HKDF-SHA256.
fn derive_psk(ss_static: &[u8], ss_ephemeral: &[u8]) -> Zeroizing<[u8; 32]> {
    let mut ikm = Zeroizing::new([0u8; 64]);
    ikm[..32].copy_from_slice(ss_static);
    ikm[32..].copy_from_slice(ss_ephemeral);
    let hk = Hkdf::<Sha256>::new(Some(PSK_INFO), &ikm[..]);
    let mut psk = Zeroizing::new([0u8; 32]);
    let _ = hk.expand(b"psk", &mut psk[..]);
    psk
}

fn builder_error(_: snow::Error) -> Error {
    link_error("could not set up the Noise handshake")
}

fn params() -> Result<snow::params::NoiseParams> {
    NOISE_PARAMS
        .parse()
        .map_err(|_| link_error("unsupported Noise parameters"))
}

/// The initiator's side of a handshake: [`Initiator::start`] gives message
/// 1, [`Initiator::finish`] reads message 2 and gives message 3 and the
/// transport.
pub struct Initiator {
    hs: snow::HandshakeState,
    kem_ephemeral: ml_kem::ml_kem_768::DecapsulationKey,
    ss_static: Zeroizing<[u8; 32]>,
}

impl fmt::Debug for Initiator {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Initiator")
    }
}

impl Initiator {
    /// Starts a handshake with the responder whose key is `remote`, as the
    /// node holding `local`, or — with `None` — as an unidentified client
    /// (a fresh static key for this connection only). Returns the state and
    /// message 1.
    pub fn start<R: rand::CryptoRng + ?Sized>(
        rng: &mut R,
        purpose: Purpose,
        local: Option<&LinkSecretKey>,
        remote: &LinkPublicKey,
    ) -> Result<(Self, Vec<u8>)> {
        let throwaway;
        let local_dh = match local {
            Some(k) => k.dh.to_bytes(),
            None => {
                let mut bytes = Zeroizing::new([0u8; 32]);
                rng.fill_bytes(&mut bytes[..]);
                throwaway = bytes;
                *throwaway
            }
        };
        let local_dh = Zeroizing::new(local_dh);
        let prologue = purpose.prologue();
        let mut hs = snow::Builder::with_resolver(params()?, Box::new(Resolver))
            .prologue(&prologue)
            .map_err(builder_error)?
            .local_private_key(&local_dh[..])
            .map_err(builder_error)?
            .remote_public_key(&remote.dh)
            .map_err(builder_error)?
            .build_initiator()
            .map_err(builder_error)?;
        let kem_ephemeral = ml_kem::ml_kem_768::DecapsulationKey::generate_from_rng(rng);
        let (ct_static, ss_static) = remote.kem.encapsulation_key()?.encapsulate_with_rng(rng);
        let mut payload = Zeroizing::new(Vec::with_capacity(
            KEM_PUBLIC_KEY_SIZE + KEM_CIPHERTEXT_SIZE,
        ));
        payload.extend_from_slice(kem_ephemeral.encapsulation_key().to_bytes().as_slice());
        payload.extend_from_slice(ct_static.as_slice());
        let mut msg = vec![0u8; MESSAGE1_SIZE];
        let n = hs
            .write_message(&payload, &mut msg)
            .map_err(|_| link_error("could not write handshake message 1"))?;
        msg.truncate(n);
        let mut ss = Zeroizing::new([0u8; 32]);
        ss.copy_from_slice(ss_static.as_slice());
        Ok((
            Self {
                hs,
                kem_ephemeral,
                ss_static: ss,
            },
            msg,
        ))
    }

    /// Reads message 2; returns message 3 and the transport.
    pub fn finish(mut self, message2: &[u8]) -> Result<(Vec<u8>, Transport)> {
        if message2.len() != MESSAGE2_SIZE {
            return Err(link_error("handshake message 2 has the wrong length"));
        }
        let mut payload = Zeroizing::new(vec![0u8; MESSAGE2_SIZE]);
        let n = self
            .hs
            .read_message(message2, &mut payload)
            .map_err(|_| link_error("handshake message 2 does not verify"))?;
        if n != KEM_CIPHERTEXT_SIZE {
            return Err(link_error("handshake message 2 has the wrong payload"));
        }
        let ss_ephemeral = self
            .kem_ephemeral
            .decapsulate_slice(&payload[..n])
            .map_err(|_| link_error("handshake message 2 has a malformed KEM ciphertext"))?;
        let psk = derive_psk(&self.ss_static[..], ss_ephemeral.as_slice());
        self.hs
            .set_psk(3, &psk[..])
            .map_err(|_| link_error("could not set the psk"))?;
        let mut msg = vec![0u8; MESSAGE3_SIZE];
        let n = self
            .hs
            .write_message(&[], &mut msg)
            .map_err(|_| link_error("could not write handshake message 3"))?;
        msg.truncate(n);
        let transport = Transport::new(self.hs)?;
        Ok((msg, transport))
    }
}

/// The responder's side: [`Responder::respond`] reads message 1 and gives
/// message 2, [`Responder::finish`] reads message 3.
pub struct Responder {
    hs: snow::HandshakeState,
}

impl fmt::Debug for Responder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Responder")
    }
}

/// What the responder learns of a finished handshake.
#[derive(Debug)]
pub struct Accepted {
    /// The transport.
    pub transport: Transport,
    /// The initiator's static X25519 key: a node's link key (look it up in
    /// the consensus) or, for a client, a key used for this connection only.
    pub remote_static: [u8; 32],
}

impl Responder {
    /// Reads message 1 sent to the holder of `local`; returns the state and
    /// message 2.
    pub fn respond<R: rand::CryptoRng + ?Sized>(
        rng: &mut R,
        purpose: Purpose,
        local: &LinkSecretKey,
        message1: &[u8],
    ) -> Result<(Self, Vec<u8>)> {
        if message1.len() != MESSAGE1_SIZE {
            return Err(link_error("handshake message 1 has the wrong length"));
        }
        let prologue = purpose.prologue();
        let local_dh = Zeroizing::new(local.dh.to_bytes());
        let mut hs = snow::Builder::with_resolver(params()?, Box::new(Resolver))
            .prologue(&prologue)
            .map_err(builder_error)?
            .local_private_key(&local_dh[..])
            .map_err(builder_error)?
            .build_responder()
            .map_err(builder_error)?;
        let mut payload = Zeroizing::new(vec![0u8; MESSAGE1_SIZE]);
        let n = hs
            .read_message(message1, &mut payload)
            .map_err(|_| link_error("handshake message 1 does not verify"))?;
        if n != KEM_PUBLIC_KEY_SIZE + KEM_CIPHERTEXT_SIZE {
            return Err(link_error("handshake message 1 has the wrong payload"));
        }
        let (ek, ct_static) = payload[..n].split_at(KEM_PUBLIC_KEY_SIZE);
        let ss_static = local
            .kem
            .decapsulate_slice(ct_static)
            .map_err(|_| link_error("handshake message 1 has a malformed KEM ciphertext"))?;
        let ek = KemPublicKey::from_bytes(ek)
            .map_err(|_| link_error("handshake message 1 has a malformed KEM key"))?;
        let (ct_ephemeral, ss_ephemeral) = ek.encapsulation_key()?.encapsulate_with_rng(rng);
        let psk = derive_psk(ss_static.as_slice(), ss_ephemeral.as_slice());
        hs.set_psk(3, &psk[..])
            .map_err(|_| link_error("could not set the psk"))?;
        let mut msg = vec![0u8; MESSAGE2_SIZE];
        let n = hs
            .write_message(ct_ephemeral.as_slice(), &mut msg)
            .map_err(|_| link_error("could not write handshake message 2"))?;
        msg.truncate(n);
        Ok((Self { hs }, msg))
    }

    /// Reads message 3: the handshake is complete.
    pub fn finish(mut self, message3: &[u8]) -> Result<Accepted> {
        if message3.len() != MESSAGE3_SIZE {
            return Err(link_error("handshake message 3 has the wrong length"));
        }
        let mut payload = [0u8; MESSAGE3_SIZE];
        let n = self
            .hs
            .read_message(message3, &mut payload)
            .map_err(|_| link_error("handshake message 3 does not verify"))?;
        if n != 0 {
            return Err(link_error("handshake message 3 has a payload"));
        }
        let remote_static: [u8; 32] = self
            .hs
            .get_remote_static()
            .and_then(|k| k.try_into().ok())
            .ok_or_else(|| link_error("the initiator sent no static key"))?;
        let transport = Transport::new(self.hs)?;
        Ok(Accepted {
            transport,
            remote_static,
        })
    }
}

/// What an opened record held.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Record {
    /// `n` bytes of data, written at the start of the output buffer.
    Data(usize),
    /// The sender rekeyed: the receiving key has now been rekeyed too.
    Rekeyed,
}

/// An established link: seals and opens records in each direction.
pub struct Transport {
    state: snow::TransportState,
    sent_since_rekey: u64,
}

impl fmt::Debug for Transport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Transport")
    }
}

impl Transport {
    fn new(hs: snow::HandshakeState) -> Result<Self> {
        let state = hs
            .into_transport_mode()
            .map_err(|_| link_error("the handshake is not complete"))?;
        Ok(Self {
            state,
            sent_since_rekey: 0,
        })
    }

    /// Seals `data` (1 ..= [`MAX_RECORD_PAYLOAD`] bytes) as one record
    /// appended to `out` (length prefix included).
    pub fn seal(&mut self, data: &[u8], out: &mut Vec<u8>) -> Result<()> {
        if data.is_empty() || data.len() > MAX_RECORD_PAYLOAD {
            return Err(link_error("a record holds 1 to 65519 data bytes"));
        }
        self.seal_raw(data, out)?;
        self.sent_since_rekey += 1;
        Ok(())
    }

    /// True once this side has sent [`REKEY_AFTER_RECORDS`] records under
    /// its current key (the driver also rekeys on a timer).
    pub fn should_rekey(&self) -> bool {
        self.sent_since_rekey >= REKEY_AFTER_RECORDS
    }

    /// Appends a rekey record to `out` and rekeys the sending direction.
    pub fn seal_rekey(&mut self, out: &mut Vec<u8>) -> Result<()> {
        self.seal_raw(&[], out)?;
        self.state.rekey_outgoing();
        self.sent_since_rekey = 0;
        Ok(())
    }

    fn seal_raw(&mut self, data: &[u8], out: &mut Vec<u8>) -> Result<()> {
        let start = out.len();
        let len = data.len() + TAG_SIZE;
        out.resize(start + RECORD_HEADER_SIZE + len, 0);
        let header = u16::try_from(len).map_err(|_| link_error("record too long"))?;
        out[start..start + RECORD_HEADER_SIZE].copy_from_slice(&header.to_be_bytes());
        match self
            .state
            .write_message(data, &mut out[start + RECORD_HEADER_SIZE..])
        {
            Ok(n) if n == len => Ok(()),
            _ => {
                out.truncate(start);
                Err(link_error("could not seal a record"))
            }
        }
    }

    /// Opens one record body (without its length prefix) into `out`, which
    /// must hold at least `body.len()` bytes.
    pub fn open(&mut self, body: &[u8], out: &mut [u8]) -> Result<Record> {
        if body.len() < TAG_SIZE {
            return Err(link_error("record shorter than its tag"));
        }
        let n = self
            .state
            .read_message(body, out)
            .map_err(|_| link_error("record does not verify"))?;
        if n == 0 {
            self.state.rekey_incoming();
            return Ok(Record::Rekeyed);
        }
        Ok(Record::Data(n))
    }
}

/// Frames a handshake message: length prefix and body.
pub fn frame_message(message: &[u8]) -> Result<Vec<u8>> {
    let len = u16::try_from(message.len()).map_err(|_| link_error("message too long"))?;
    let mut out = Vec::with_capacity(RECORD_HEADER_SIZE + message.len());
    out.extend_from_slice(&len.to_be_bytes());
    out.extend_from_slice(message);
    Ok(out)
}

// ---------------------------------------------------------------------------
// The resolver: Noise's primitives from the crates the rest of Murmur uses
// (x25519-dalek, sha2, and the RustCrypto AES the Sphinx code already
// brings) — snow's own resolver would bring older copies of them. AES-256-GCM
// rather than ChaCha20-Poly1305: with AES instructions (every server and
// phone CPU of the last decade; detected at run time) it seals a packet in
// 0.9 µs instead of 3.3 µs here (`cargo bench -p murmur-benches --bench
// micro -- link`), which is what a mix pays twice per packet; without them
// RustCrypto's AES falls back to a constant-time bitsliced implementation.

struct Resolver;

impl CryptoResolver for Resolver {
    fn resolve_rng(&self) -> Option<Box<dyn Random>> {
        Some(Box::new(SystemRandom))
    }

    fn resolve_dh(&self, choice: &DHChoice) -> Option<Box<dyn Dh>> {
        match choice {
            DHChoice::Curve25519 => Some(Box::new(X25519::default())),
            _ => None,
        }
    }

    fn resolve_hash(&self, choice: &HashChoice) -> Option<Box<dyn Hash>> {
        match choice {
            HashChoice::SHA256 => Some(Box::new(Sha256Hash(Sha256::new()))),
            _ => None,
        }
    }

    fn resolve_cipher(&self, choice: &CipherChoice) -> Option<Box<dyn Cipher>> {
        match choice {
            CipherChoice::AESGCM => Some(Box::new(AesGcm(None))),
            _ => None,
        }
    }
}

struct SystemRandom;

impl Random for SystemRandom {
    fn try_fill_bytes(&mut self, dest: &mut [u8]) -> std::result::Result<(), snow::Error> {
        rand::Rng::fill_bytes(&mut rand::rng(), dest);
        Ok(())
    }
}

#[derive(Default)]
struct X25519 {
    secret: Option<StaticSecret>,
    // Noise asks for the private key's bytes (never used by this module).
    secret_bytes: Zeroizing<[u8; 32]>,
    public: [u8; 32],
}

impl X25519 {
    fn set_secret(&mut self, bytes: [u8; 32]) {
        let secret = StaticSecret::from(bytes);
        self.public = PublicKey::from(&secret).to_bytes();
        *self.secret_bytes = bytes;
        self.secret = Some(secret);
    }
}

impl Dh for X25519 {
    fn name(&self) -> &'static str {
        "25519"
    }

    fn pub_len(&self) -> usize {
        32
    }

    fn priv_len(&self) -> usize {
        32
    }

    fn set(&mut self, privkey: &[u8]) {
        let mut bytes = Zeroizing::new([0u8; 32]);
        let n = privkey.len().min(32);
        bytes[..n].copy_from_slice(&privkey[..n]);
        self.set_secret(*bytes);
    }

    fn generate(&mut self, rng: &mut dyn Random) -> std::result::Result<(), snow::Error> {
        let mut bytes = Zeroizing::new([0u8; 32]);
        rng.try_fill_bytes(&mut bytes[..])?;
        self.set_secret(*bytes);
        Ok(())
    }

    fn pubkey(&self) -> &[u8] {
        &self.public
    }

    fn privkey(&self) -> &[u8] {
        &self.secret_bytes[..]
    }

    fn dh(&self, pubkey: &[u8], out: &mut [u8]) -> std::result::Result<(), snow::Error> {
        let secret = self.secret.as_ref().ok_or(snow::Error::Dh)?;
        let public: [u8; 32] = pubkey
            .get(..32)
            .and_then(|k| k.try_into().ok())
            .ok_or(snow::Error::Dh)?;
        let shared = secret.diffie_hellman(&PublicKey::from(public));
        // A low-order point gives the all-zero secret: refuse it rather than
        // let a peer force a known key.
        if !shared.was_contributory() {
            return Err(snow::Error::Dh);
        }
        let dst = out.get_mut(..32).ok_or(snow::Error::Dh)?;
        dst.copy_from_slice(shared.as_bytes());
        Ok(())
    }
}

/// AES-256-GCM with Noise's nonce encoding (32 zero bits, then the 64-bit
/// counter big-endian).
struct AesGcm(Option<Box<Aes256Gcm>>);

fn noise_nonce(n: u64) -> Nonce<aes_gcm::aead::consts::U12> {
    let mut nonce = [0u8; 12];
    nonce[4..].copy_from_slice(&n.to_be_bytes());
    Nonce::from(nonce)
}

impl Cipher for AesGcm {
    fn name(&self) -> &'static str {
        "AESGCM"
    }

    fn set(&mut self, key: &[u8; 32]) {
        self.0 = Some(Box::new(Aes256Gcm::new(&(*key).into())));
    }

    fn encrypt(&self, nonce: u64, authtext: &[u8], plaintext: &[u8], out: &mut [u8]) -> usize {
        // snow sizes `out` for plaintext + tag and sets a key before use; a
        // violated precondition yields 0 bytes, which the callers here
        // treat as a failure.
        let (Some(aead), Some(dst)) = (&self.0, out.get_mut(..plaintext.len() + TAG_SIZE)) else {
            return 0;
        };
        let (body, tag_dst) = dst.split_at_mut(plaintext.len());
        let Ok(buf) = aes_gcm::aead::inout::InOutBuf::new(plaintext, body) else {
            return 0;
        };
        match aead.encrypt_inout_detached(&noise_nonce(nonce), authtext, buf) {
            Ok(tag) => {
                tag_dst.copy_from_slice(tag.as_slice());
                plaintext.len() + TAG_SIZE
            }
            Err(_) => 0,
        }
    }

    fn decrypt(
        &self,
        nonce: u64,
        authtext: &[u8],
        ciphertext: &[u8],
        out: &mut [u8],
    ) -> std::result::Result<usize, snow::Error> {
        let aead = self.0.as_ref().ok_or(snow::Error::Decrypt)?;
        let len = ciphertext
            .len()
            .checked_sub(TAG_SIZE)
            .ok_or(snow::Error::Decrypt)?;
        let (body, tag) = ciphertext.split_at(len);
        let dst = out.get_mut(..len).ok_or(snow::Error::Decrypt)?;
        let tag = Tag::try_from(tag).map_err(|_| snow::Error::Decrypt)?;
        let buf =
            aes_gcm::aead::inout::InOutBuf::new(body, dst).map_err(|_| snow::Error::Decrypt)?;
        match aead.decrypt_inout_detached(&noise_nonce(nonce), authtext, buf, &tag) {
            Ok(()) => Ok(len),
            Err(_) => {
                dst.zeroize();
                Err(snow::Error::Decrypt)
            }
        }
    }
}

struct Sha256Hash(Sha256);

impl Hash for Sha256Hash {
    fn name(&self) -> &'static str {
        "SHA256"
    }

    fn block_len(&self) -> usize {
        64
    }

    fn hash_len(&self) -> usize {
        32
    }

    fn reset(&mut self) {
        self.0 = Sha256::new();
    }

    fn input(&mut self, data: &[u8]) {
        self.0.update(data);
    }

    fn result(&mut self, out: &mut [u8]) {
        let digest = std::mem::take(&mut self.0).finalize();
        if let Some(dst) = out.get_mut(..32) {
            dst.copy_from_slice(digest.as_slice());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;
    use rand_chacha::ChaCha20Rng;

    fn rng() -> ChaCha20Rng {
        ChaCha20Rng::seed_from_u64(7)
    }

    fn handshake(
        purpose_i: Purpose,
        purpose_r: Purpose,
        local: Option<&LinkSecretKey>,
        responder: &LinkSecretKey,
    ) -> Result<(Transport, Accepted)> {
        let mut rng = rng();
        let (init, m1) = Initiator::start(&mut rng, purpose_i, local, responder.public())?;
        assert_eq!(m1.len(), MESSAGE1_SIZE);
        let (resp, m2) = Responder::respond(&mut rng, purpose_r, responder, &m1)?;
        assert_eq!(m2.len(), MESSAGE2_SIZE);
        let (m3, t) = init.finish(&m2)?;
        assert_eq!(m3.len(), MESSAGE3_SIZE);
        Ok((t, resp.finish(&m3)?))
    }

    fn open_all(t: &mut Transport, mut wire: &[u8]) -> Vec<Vec<u8>> {
        let mut out = Vec::new();
        while !wire.is_empty() {
            let len = u16::from_be_bytes([wire[0], wire[1]]) as usize;
            let body = &wire[2..2 + len];
            let mut buf = vec![0u8; len];
            if let Record::Data(n) = t.open(body, &mut buf).unwrap() {
                out.push(buf[..n].to_vec());
            }
            wire = &wire[2 + len..];
        }
        out
    }

    #[test]
    fn a_node_handshake_authenticates_both_ends_and_records_flow_both_ways() {
        let mut rng = rng();
        let node = LinkSecretKey::generate(&mut rng);
        let server = LinkSecretKey::generate(&mut rng);
        let (mut init, mut accepted) =
            handshake(Purpose::Packets, Purpose::Packets, Some(&node), &server).unwrap();
        assert_eq!(accepted.remote_static, node.public().dh);
        let mut wire = Vec::new();
        init.seal(b"hello", &mut wire).unwrap();
        init.seal(&[7u8; MAX_RECORD_PAYLOAD], &mut wire).unwrap();
        let got = open_all(&mut accepted.transport, &wire);
        assert_eq!(got, vec![b"hello".to_vec(), vec![7u8; MAX_RECORD_PAYLOAD]]);
        let mut back = Vec::new();
        accepted.transport.seal(b"back", &mut back).unwrap();
        assert_eq!(open_all(&mut init, &back), vec![b"back".to_vec()]);
    }

    #[test]
    fn clients_use_a_fresh_static_key_per_connection() {
        let mut rng = rng();
        let server = LinkSecretKey::generate(&mut rng);
        let (init, m1) =
            Initiator::start(&mut rng, Purpose::Packets, None, server.public()).unwrap();
        let (resp, m2) = Responder::respond(&mut rng, Purpose::Packets, &server, &m1).unwrap();
        let (m3, _) = init.finish(&m2).unwrap();
        let a = resp.finish(&m3).unwrap().remote_static;
        let (init, m1) =
            Initiator::start(&mut rng, Purpose::Packets, None, server.public()).unwrap();
        let (resp, m2) = Responder::respond(&mut rng, Purpose::Packets, &server, &m1).unwrap();
        let (m3, _) = init.finish(&m2).unwrap();
        let b = resp.finish(&m3).unwrap().remote_static;
        assert_ne!(a, b);
    }

    #[test]
    fn a_wrong_responder_key_or_purpose_fails_the_handshake() {
        let mut rng = rng();
        let server = LinkSecretKey::generate(&mut rng);
        let impostor = LinkSecretKey::generate(&mut rng);
        // The initiator expects `server`; `impostor` answers.
        let (_, m1) = Initiator::start(&mut rng, Purpose::Packets, None, server.public()).unwrap();
        assert!(Responder::respond(&mut rng, Purpose::Packets, &impostor, &m1).is_err());
        // Same key, other service.
        assert!(handshake(Purpose::Packets, Purpose::MailboxApi, None, &server).is_err());
    }

    #[test]
    fn a_responder_with_the_right_dh_key_but_not_the_kem_key_cannot_finish() {
        // The X25519 half alone (what a quantum attacker could recover from
        // the consensus) is not enough: the psk needs the ML-KEM secret.
        let mut rng = rng();
        let server = LinkSecretKey::generate(&mut rng);
        let other_kem = LinkSecretKey::generate(&mut rng);
        let forged = LinkSecretKey {
            dh: server.dh.clone(),
            kem: other_kem.kem,
            public: server.public.clone(),
        };
        let (init, m1) =
            Initiator::start(&mut rng, Purpose::Packets, None, server.public()).unwrap();
        // ML-KEM decapsulation never fails (implicit rejection): the forged
        // responder gets a wrong secret, and the handshake fails at message 3.
        let (resp, m2) = Responder::respond(&mut rng, Purpose::Packets, &forged, &m1).unwrap();
        let (m3, _) = init.finish(&m2).unwrap();
        assert!(resp.finish(&m3).is_err());
    }

    #[test]
    fn tampering_with_any_handshake_byte_fails() {
        let mut rng = rng();
        let server = LinkSecretKey::generate(&mut rng);
        let (_, m1) = Initiator::start(&mut rng, Purpose::Packets, None, server.public()).unwrap();
        for i in (0..m1.len()).step_by(97) {
            let mut bad = m1.clone();
            bad[i] ^= 1;
            assert!(
                Responder::respond(&mut rng, Purpose::Packets, &server, &bad).is_err(),
                "byte {i}"
            );
        }
        let (init, m1) =
            Initiator::start(&mut rng, Purpose::Packets, None, server.public()).unwrap();
        let (_, m2) = Responder::respond(&mut rng, Purpose::Packets, &server, &m1).unwrap();
        let mut bad = m2.clone();
        bad[100] ^= 0x80;
        assert!(init.finish(&bad).is_err());
    }

    #[test]
    fn tampered_replayed_or_reordered_records_are_refused() {
        let mut rng = rng();
        let server = LinkSecretKey::generate(&mut rng);
        let (mut init, mut acc) =
            handshake(Purpose::Packets, Purpose::Packets, None, &server).unwrap();
        let mut one = Vec::new();
        init.seal(b"one", &mut one).unwrap();
        let mut two = Vec::new();
        init.seal(b"two", &mut two).unwrap();
        let mut buf = [0u8; 64];
        // Out of order: "two" under nonce 0 does not open.
        assert!(acc.transport.open(&two[2..], &mut buf).is_err());
        let (mut init, mut acc) =
            handshake(Purpose::Packets, Purpose::Packets, None, &server).unwrap();
        let mut one = Vec::new();
        init.seal(b"one", &mut one).unwrap();
        let mut tampered = one.clone();
        tampered[4] ^= 1;
        assert!(acc.transport.open(&tampered[2..], &mut buf).is_err());
        let (mut init, mut acc) =
            handshake(Purpose::Packets, Purpose::Packets, None, &server).unwrap();
        let mut one = Vec::new();
        init.seal(b"one", &mut one).unwrap();
        assert_eq!(
            acc.transport.open(&one[2..], &mut buf).unwrap(),
            Record::Data(3)
        );
        // The same record again (a replay) is under the wrong nonce now.
        assert!(acc.transport.open(&one[2..], &mut buf).is_err());
    }

    #[test]
    fn rekeying_changes_the_key_and_both_sides_follow() {
        let mut rng = rng();
        let server = LinkSecretKey::generate(&mut rng);
        let (mut init, mut acc) =
            handshake(Purpose::Packets, Purpose::Packets, None, &server).unwrap();
        let mut wire = Vec::new();
        init.seal(b"before", &mut wire).unwrap();
        init.seal_rekey(&mut wire).unwrap();
        init.seal(b"after", &mut wire).unwrap();
        assert_eq!(
            open_all(&mut acc.transport, &wire),
            vec![b"before".to_vec(), b"after".to_vec()]
        );
        // A receiver that missed the rekey cannot read what follows.
        let (mut init, mut acc) =
            handshake(Purpose::Packets, Purpose::Packets, None, &server).unwrap();
        let mut a = Vec::new();
        init.seal(b"x", &mut a).unwrap();
        let mut r = Vec::new();
        init.seal_rekey(&mut r).unwrap();
        let mut b = Vec::new();
        init.seal(b"y", &mut b).unwrap();
        let mut buf = [0u8; 32];
        acc.transport.open(&a[2..], &mut buf).unwrap();
        // Skipping the rekey record: its nonce is consumed, so the next
        // record fails anyway; and decrypting with the old key fails.
        assert!(acc.transport.open(&b[2..], &mut buf).is_err());
    }

    #[test]
    fn records_must_hold_data_of_a_bounded_size() {
        let mut rng = rng();
        let server = LinkSecretKey::generate(&mut rng);
        let (mut init, _) = handshake(Purpose::Packets, Purpose::Packets, None, &server).unwrap();
        let mut out = Vec::new();
        assert!(init.seal(&[], &mut out).is_err());
        assert!(
            init.seal(&vec![0; MAX_RECORD_PAYLOAD + 1], &mut out)
                .is_err()
        );
        assert!(out.is_empty());
    }

    #[test]
    fn link_keys_derive_deterministically_and_parse_back() {
        let a = LinkSecretKey::derive(&[1; 32]);
        let b = LinkSecretKey::derive(&[1; 32]);
        let c = LinkSecretKey::derive(&[2; 32]);
        assert_eq!(a.public(), b.public());
        assert_ne!(a.public(), c.public());
        let bytes = postcard::to_stdvec(a.public()).unwrap();
        let back: LinkPublicKey = postcard::from_bytes(&bytes).unwrap();
        assert_eq!(&back, a.public());
        assert!(KemPublicKey::from_bytes(&[0xff; KEM_PUBLIC_KEY_SIZE]).is_err());
        assert!(KemPublicKey::from_bytes(&[0; 10]).is_err());
    }

    proptest::proptest! {
        #[test]
        fn arbitrary_handshake_messages_never_panic(data in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..4000)) {
            let mut rng = rng();
            let server = LinkSecretKey::derive(&[9; 32]);
            let _ = Responder::respond(&mut rng, Purpose::Packets, &server, &data);
            let mut sized = data.clone();
            sized.resize(MESSAGE1_SIZE, 0);
            let _ = Responder::respond(&mut rng, Purpose::Packets, &server, &sized);
            let (init, _) = Initiator::start(&mut rng, Purpose::Packets, None, server.public()).unwrap();
            let mut m2 = data.clone();
            m2.resize(MESSAGE2_SIZE, 0);
            proptest::prop_assert!(init.finish(&m2).is_err());
        }
    }
}
