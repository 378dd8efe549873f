//! The one error type of murmur-wire.

/// Everything that can go wrong while parsing, building or verifying what
/// crosses the network.
///
/// Each variant names what was wrong; where a lower library failed, its error
/// is the `#[source]` and is not repeated in the message.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// A link handshake or record failed (wrong key, tampering, a
    /// malformed message): the connection must be closed.
    #[error("link: {reason}")]
    Link {
        /// What failed.
        reason: &'static str,
    },

    /// A textual id (node id, queue id, message id) is not valid.
    #[error("invalid {kind}: {reason}")]
    InvalidId {
        /// Which kind of id was being parsed.
        kind: &'static str,
        /// What was wrong with it.
        reason: &'static str,
    },

    /// A byte string has the wrong length for what it should hold.
    #[error("{what} must be {expected} bytes, got {actual}")]
    WrongLength {
        /// What was being parsed.
        what: &'static str,
        /// The length it must have.
        expected: usize,
        /// The length it had.
        actual: usize,
    },

    /// Building a packet or SURB failed inside the Sphinx library.
    #[error("could not build {what}")]
    SphinxBuild {
        /// What was being built.
        what: &'static str,
        /// The Sphinx library's error.
        #[source]
        source: sphinx_packet::Error,
    },

    /// A packet's header was not made for any key in the key ring (or was
    /// tampered with): the header MAC does not verify.
    #[error("packet header does not verify under any key in the ring")]
    HeaderMac,

    /// Processing a packet that passed its MAC check failed.
    #[error("could not process packet")]
    SphinxProcess {
        /// The Sphinx library's error.
        #[source]
        source: sphinx_packet::Error,
    },

    /// The key ring has no keys.
    #[error("key ring is empty")]
    EmptyKeyRing,

    /// A route does not have the shape Murmur uses.
    #[error("invalid route: {0}")]
    InvalidRoute(&'static str),

    /// A final-hop payload could not be recovered (tampered payload, or a
    /// packet that was not built for this hop).
    #[error("payload integrity check failed")]
    PayloadIntegrity,

    /// An encoded structure has a version this implementation does not know.
    #[error("unsupported {what} version {version}")]
    UnsupportedVersion {
        /// What was being parsed.
        what: &'static str,
        /// The version found.
        version: u8,
    },

    /// An encoded structure is malformed.
    #[error("malformed {what}: {reason}")]
    Malformed {
        /// What was being parsed.
        what: &'static str,
        /// What was wrong.
        reason: &'static str,
    },

    /// A canonical (postcard) encoding could not be decoded.
    #[error("could not decode {what}")]
    Decode {
        /// What was being decoded.
        what: &'static str,
        /// The decoder's error.
        #[source]
        source: postcard::Error,
    },

    /// A canonical (postcard) encoding could not be produced.
    #[error("could not encode {what}")]
    Encode {
        /// What was being encoded.
        what: &'static str,
        /// The encoder's error.
        #[source]
        source: postcard::Error,
    },

    /// An Ed25519 public key is not a valid curve point.
    #[error("invalid {what} public key")]
    InvalidPublicKey {
        /// Whose key it is.
        what: &'static str,
    },

    /// A signature does not verify.
    #[error("bad signature on {what}")]
    BadSignature {
        /// What was signed.
        what: &'static str,
    },

    /// A consensus document carries fewer valid signatures from pinned
    /// authorities than the threshold.
    #[error(
        "consensus has {valid} valid signature(s) from pinned authorities, {required} required ({invalid} invalid)"
    )]
    UnderThreshold {
        /// Distinct pinned authorities whose signature verified.
        valid: usize,
        /// The threshold k.
        required: usize,
        /// Signatures by pinned authorities that did not verify.
        invalid: usize,
    },

    /// A consensus document is for another epoch than the one asked for.
    #[error("consensus is for epoch {actual}, expected epoch {expected}")]
    WrongEpoch {
        /// The epoch asked for.
        expected: u64,
        /// The epoch in the document.
        actual: u64,
    },

    /// A consensus document's validity window has passed.
    #[error("consensus for epoch {epoch} expired at {valid_until} (now {now})")]
    Expired {
        /// The document's epoch.
        epoch: u64,
        /// End of its validity window, unix seconds.
        valid_until: u64,
        /// The time it was checked at, unix seconds.
        now: u64,
    },

    /// A consensus document's validity window has not started yet.
    #[error("consensus for epoch {epoch} is not valid before {valid_after} (now {now})")]
    NotYetValid {
        /// The document's epoch.
        epoch: u64,
        /// Start of its validity window, unix seconds.
        valid_after: u64,
        /// The time it was checked at, unix seconds.
        now: u64,
    },

    /// A document or parameter is self-inconsistent.
    #[error("invalid {what}: {reason}")]
    Invalid {
        /// What was being checked.
        what: &'static str,
        /// What was wrong.
        reason: String,
    },

    /// A link frame has the wrong magic bytes or version.
    #[error("bad frame header")]
    BadFrameHeader,

    /// A link frame announces a length other than the one packet size.
    #[error("frame announces {announced} bytes, packets are {expected}")]
    BadFrameLength {
        /// The length in the frame header.
        announced: u32,
        /// The only length allowed.
        expected: usize,
    },

    /// The link ended in the middle of a frame.
    #[error("link closed inside a frame ({buffered} bytes buffered)")]
    TruncatedFrame {
        /// Bytes of the incomplete frame that had arrived.
        buffered: usize,
    },

    /// An I/O error on the link under the codec.
    #[error("link I/O error")]
    Io(#[from] std::io::Error),
}

/// Result alias for murmur-wire.
pub type Result<T, E = Error> = std::result::Result<T, E>;
