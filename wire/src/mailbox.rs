//! The mailbox fetch API's messages: queue creation, and owner requests
//! (fetch, acknowledge-and-delete, delete queue) signed by the queue's owner
//! key, with freshness so a captured request cannot be replayed.
//!
//! HTTP endpoints (bodies are postcard, `application/x-postcard`):
//!
//! | request | body | success |
//! |---|---|---|
//! | `POST /v1/queues` | [`SignedCreateQueue`] | 200, [`CreateQueueResponse`] |
//! | `POST /v1/queue` | [`SignedOwnerRequest`] | 200, [`FetchResponse`] / [`AckResponse`] / empty |
//!
//! Each queue has its own owner key (a fresh Ed25519 key per queue), so
//! queues cannot be linked by key. A request is fresh if its timestamp is
//! within [`FRESHNESS_WINDOW_SECS`] of the provider's clock and its nonce has
//! not been seen for that queue within the window.

use serde::{Deserialize, Serialize};

use crate::directory::Signature;
use crate::error::{Error, Result};
use crate::ids::{MessageId, QueueId, SurbId};
use crate::keys::IdentityKey;
use ed25519_dalek::{Signer, SigningKey};

/// Version of the mailbox API messages.
pub const MAILBOX_API_VERSION: u8 = 1;
/// A request's timestamp must be within this many seconds of the provider's clock.
pub const FRESHNESS_WINDOW_SECS: u64 = 120;
/// The most entries one fetch returns.
pub const MAX_FETCH_LIMIT: u32 = 256;
/// The most bytes a request body may have.
pub const MAX_REQUEST_SIZE: usize = 1024;
/// The most bytes a fetch response may have (a full page of the largest entries).
pub const MAX_RESPONSE_SIZE: usize = MAX_FETCH_LIMIT as usize * 2600 + 64;

const CREATE_CONTEXT: &[u8] = b"murmur/mailbox-create/v1\0";
const REQUEST_CONTEXT: &[u8] = b"murmur/mailbox-request/v1\0";

fn signed_message(context: &[u8], body: &[u8]) -> Vec<u8> {
    let mut msg = Vec::with_capacity(context.len() + body.len());
    msg.extend_from_slice(context);
    msg.extend_from_slice(body);
    msg
}

fn check(key: &IdentityKey, context: &[u8], body: &[u8], sig: &Signature) -> Result<()> {
    let vk = key.verifying_key("queue owner")?;
    vk.verify_strict(
        &signed_message(context, body),
        &ed25519_dalek::Signature::from_bytes(&sig.0),
    )
    .map_err(|_| Error::BadSignature {
        what: "mailbox request",
    })
}

fn decode<'a, T: Deserialize<'a>>(bytes: &'a [u8], what: &'static str) -> Result<T> {
    if bytes.len() > MAX_RESPONSE_SIZE {
        return Err(Error::WrongLength {
            what,
            expected: MAX_RESPONSE_SIZE,
            actual: bytes.len(),
        });
    }
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

fn encode<T: Serialize>(value: &T, what: &'static str) -> Result<Vec<u8>> {
    postcard::to_stdvec(value).map_err(|source| Error::Encode { what, source })
}

/// Asks a provider for a new queue owned by `owner`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct CreateQueue {
    /// [`MAILBOX_API_VERSION`].
    pub version: u8,
    /// The queue's owner key; the request is signed with it (proof of possession).
    pub owner: IdentityKey,
    /// Unix seconds.
    pub timestamp: u64,
    /// Random, never reused.
    pub nonce: [u8; 16],
}

/// A [`CreateQueue`] signed by its owner key.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SignedCreateQueue {
    /// postcard of [`CreateQueue`].
    pub body: Vec<u8>,
    /// The owner key's signature.
    pub signature: Signature,
}

impl SignedCreateQueue {
    /// Signs a creation request with the new queue's owner key.
    pub fn sign(req: &CreateQueue, owner: &SigningKey) -> Result<Self> {
        let body = encode(req, "create-queue request")?;
        let signature = Signature(
            owner
                .sign(&signed_message(CREATE_CONTEXT, &body))
                .to_bytes(),
        );
        Ok(Self { body, signature })
    }

    /// The wire form.
    pub fn to_bytes(&self) -> Result<Vec<u8>> {
        encode(self, "signed create-queue request")
    }

    /// Parses the wire form.
    pub fn from_bytes(bytes: &[u8]) -> Result<Self> {
        decode(bytes, "signed create-queue request")
    }

    /// Decodes the request and checks the signature by the owner key inside.
    /// Freshness (timestamp, nonce) is the provider's to check.
    pub fn verify(&self) -> Result<CreateQueue> {
        let req: CreateQueue = decode(&self.body, "create-queue request")?;
        if req.version != MAILBOX_API_VERSION {
            return Err(Error::UnsupportedVersion {
                what: "create-queue request",
                version: req.version,
            });
        }
        check(&req.owner, CREATE_CONTEXT, &self.body, &self.signature)?;
        Ok(req)
    }
}

/// The provider's answer to a [`CreateQueue`].
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct CreateQueueResponse {
    /// The new queue's id: the address deposits are sent to.
    pub queue: QueueId,
}

/// What an owner asks of its queue.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum OwnerOp {
    /// Entries with a sequence number greater than `after`, at most `limit`
    /// (capped at [`MAX_FETCH_LIMIT`]).
    Fetch {
        /// Sequence number to start after (0: from the start).
        after: u64,
        /// Page size.
        limit: u32,
    },
    /// Delete every entry with a sequence number up to and including
    /// `up_to` (the owner has stored them durably: consume-then-ack).
    Ack {
        /// Last sequence number to delete.
        up_to: u64,
    },
    /// Delete the queue and everything in it (revoking a contact).
    DeleteQueue,
}

/// A request by a queue's owner.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct OwnerRequest {
    /// [`MAILBOX_API_VERSION`].
    pub version: u8,
    /// The queue.
    pub queue: QueueId,
    /// What to do.
    pub op: OwnerOp,
    /// Unix seconds.
    pub timestamp: u64,
    /// Random, never reused.
    pub nonce: [u8; 16],
}

/// An [`OwnerRequest`] signed by the queue's owner key.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SignedOwnerRequest {
    /// postcard of [`OwnerRequest`].
    pub body: Vec<u8>,
    /// The owner key's signature.
    pub signature: Signature,
}

impl SignedOwnerRequest {
    /// Signs a request with the queue's owner key.
    pub fn sign(req: &OwnerRequest, owner: &SigningKey) -> Result<Self> {
        let body = encode(req, "owner request")?;
        let signature = Signature(
            owner
                .sign(&signed_message(REQUEST_CONTEXT, &body))
                .to_bytes(),
        );
        Ok(Self { body, signature })
    }

    /// The wire form.
    pub fn to_bytes(&self) -> Result<Vec<u8>> {
        encode(self, "signed owner request")
    }

    /// Parses the wire form.
    pub fn from_bytes(bytes: &[u8]) -> Result<Self> {
        if bytes.len() > MAX_REQUEST_SIZE {
            return Err(Error::WrongLength {
                what: "signed owner request (at most)",
                expected: MAX_REQUEST_SIZE,
                actual: bytes.len(),
            });
        }
        decode(bytes, "signed owner request")
    }

    /// Decodes the request *without* checking the signature, so the
    /// provider can look up the queue's owner key. Call
    /// [`SignedOwnerRequest::verify`] before acting on it.
    pub fn peek(&self) -> Result<OwnerRequest> {
        let req: OwnerRequest = decode(&self.body, "owner request")?;
        if req.version != MAILBOX_API_VERSION {
            return Err(Error::UnsupportedVersion {
                what: "owner request",
                version: req.version,
            });
        }
        Ok(req)
    }

    /// Checks the signature against the queue's owner key and returns the request.
    pub fn verify(&self, owner: &IdentityKey) -> Result<OwnerRequest> {
        let req = self.peek()?;
        check(owner, REQUEST_CONTEXT, &self.body, &self.signature)?;
        Ok(req)
    }
}

/// One stored entry of a queue.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct QueueEntry {
    /// Per-queue sequence number, increasing, starting at 1.
    pub seq: u64,
    /// What was stored.
    pub item: QueueItem,
}

/// What a queue holds.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum QueueItem {
    /// A deposit's opaque body ([`crate::DEPOSIT_BODY_SIZE`] bytes).
    Deposit {
        /// The deposit's message id.
        id: MessageId,
        /// The opaque body.
        body: Vec<u8>,
    },
    /// A SURB reply (an acknowledgement), sealed for the queue's owner.
    Reply {
        /// The SURB id it arrived under.
        surb_id: SurbId,
        /// The sealed payload ([`crate::packet::SPHINX_PAYLOAD_SIZE`] bytes).
        sealed: Vec<u8>,
    },
    /// A client's loop cover packet that came back.
    Loop {
        /// The loop id.
        id: MessageId,
    },
}

/// Answer to [`OwnerOp::Fetch`].
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct FetchResponse {
    /// Entries in sequence order.
    pub entries: Vec<QueueEntry>,
    /// True if more entries follow the last one returned.
    pub more: bool,
}

/// Answer to [`OwnerOp::Ack`].
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct AckResponse {
    /// Entries deleted.
    pub deleted: u64,
}

macro_rules! wire_form {
    ($t:ty, $what:literal) => {
        impl $t {
            /// The wire form.
            pub fn to_bytes(&self) -> Result<Vec<u8>> {
                encode(self, $what)
            }

            /// Parses the wire form.
            pub fn from_bytes(bytes: &[u8]) -> Result<Self> {
                decode(bytes, $what)
            }
        }
    };
}

wire_form!(CreateQueueResponse, "create-queue response");
wire_form!(FetchResponse, "fetch response");
wire_form!(AckResponse, "ack response");

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn owner() -> SigningKey {
        SigningKey::from_bytes(&[4u8; 32])
    }

    #[test]
    fn owner_requests_verify_only_under_the_owner_key() {
        let req = OwnerRequest {
            version: 1,
            queue: QueueId::from_bytes([1; 32]),
            op: OwnerOp::Fetch {
                after: 0,
                limit: 10,
            },
            timestamp: 100,
            nonce: [7; 16],
        };
        let signed = SignedOwnerRequest::sign(&req, &owner()).unwrap();
        let wire = SignedOwnerRequest::from_bytes(&signed.to_bytes().unwrap()).unwrap();
        let key = IdentityKey::from(&owner().verifying_key());
        assert_eq!(wire.verify(&key).unwrap(), req);
        let other = IdentityKey::from(&SigningKey::from_bytes(&[5u8; 32]).verifying_key());
        assert!(matches!(
            wire.verify(&other),
            Err(Error::BadSignature { .. })
        ));
        assert_eq!(wire.peek().unwrap(), req);
    }

    #[test]
    fn a_create_request_cannot_pass_as_an_owner_request() {
        let create = CreateQueue {
            version: 1,
            owner: IdentityKey::from(&owner().verifying_key()),
            timestamp: 1,
            nonce: [0; 16],
        };
        let signed = SignedCreateQueue::sign(&create, &owner()).unwrap();
        assert_eq!(signed.verify().unwrap(), create);
        let disguised = SignedOwnerRequest {
            body: signed.body.clone(),
            signature: signed.signature,
        };
        assert!(disguised.verify(&create.owner).is_err());
    }

    #[test]
    fn responses_round_trip() {
        let resp = FetchResponse {
            entries: vec![
                QueueEntry {
                    seq: 1,
                    item: QueueItem::Deposit {
                        id: MessageId::from_bytes([1; 16]),
                        body: vec![9; 2048],
                    },
                },
                QueueEntry {
                    seq: 2,
                    item: QueueItem::Loop {
                        id: MessageId::from_bytes([2; 16]),
                    },
                },
            ],
            more: true,
        };
        assert_eq!(
            FetchResponse::from_bytes(&resp.to_bytes().unwrap()).unwrap(),
            resp
        );
    }

    proptest! {
        #[test]
        fn arbitrary_bytes_never_panic(data in proptest::collection::vec(any::<u8>(), 0..1200)) {
            if let Ok(r) = SignedOwnerRequest::from_bytes(&data) {
                let _ = r.peek();
                let _ = r.verify(&IdentityKey([1; 32]));
            }
            if let Ok(r) = SignedCreateQueue::from_bytes(&data) {
                let _ = r.verify();
            }
            let _ = FetchResponse::from_bytes(&data);
            let _ = AckResponse::from_bytes(&data);
            let _ = CreateQueueResponse::from_bytes(&data);
        }
    }
}
