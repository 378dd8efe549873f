#![doc = include_str!("../README.md")]
#![forbid(unsafe_code)]

pub mod directory;
mod error;
pub mod frame;
mod ids;
mod keys;
pub mod link;
pub mod mailbox;
pub mod packet;
pub mod payload;
pub mod policy;

pub use directory::{
    AuthoritySet, Consensus, Descriptor, EpochKey, MailboxEntry, MixEntry, NetworkParams, NodeInfo,
    Role, SignedConsensus, SignedDescriptor, SignedVote, VerifiedConsensus, VerifiedDescriptor,
    Vote,
};
pub use error::{Error, Result};
pub use frame::PacketCodec;
pub use ids::{MessageId, NodeId, QueueId, SurbId};
pub use keys::{IdentityKey, SphinxPublicKey, SphinxSecretKey};
pub use link::{LinkPublicKey, LinkSecretKey};
pub use packet::{
    Delivery, Destination, Hop, KeyRing, PACKET_SIZE, Packet, Processed, ReplayTag, Route, Surb,
    SurbRecovery, build_forward_packet, build_surb,
};
pub use payload::{Ack, DEPOSIT_BODY_SIZE, Deposit, FinalPayload};

/// Re-exported so that users sign with the same Ed25519 implementation.
pub use ed25519_dalek;
