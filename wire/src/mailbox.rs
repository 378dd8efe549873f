//! The mailbox fetch API's messages: queue creation, and owner requests
//! (fetch, acknowledge-and-delete, delete queue) signed by the queue's owner
//! key, with freshness so a captured request cannot be replayed.
//!
//! HTTP endpoints (bodies are postcard, `application/x-postcard`):
//!
//! | request | body | success |
//! |---|---|---|
//! | `POST /v1/queues` | [`SignedCreateQueue`] | 200, [`CreateQueueResponse`] |
//! | `POST /v1/queue` | [`SignedOwnerRequest`] | 200, [`OwnerResponse`] |
//!
//! Each queue has its own owner key (a fresh Ed25519 key per queue), so
//! queues cannot be linked by key. A request is fresh if its timestamp is
//! within [`FRESHNESS_WINDOW_SECS`] of the provider's clock and its nonce has
//! not been seen for that queue within the window.
//!
//! Every answer names the request it answers: [`RequestDigest`], the SHA-256
//! of the signed request's wire bytes. The API runs inside an authenticated
//! link to the provider (`docs/protocol.md` §4); the digest also binds each
//! answer to its question, so an answer cannot be moved to another request.
//!
//! The owner deletes exactly the entries it has dealt with, by sequence
//! number ([`OwnerOp::Delete`]): never a range, so no answer can make it
//! delete entries it has not seen.

use serde::{Deserialize, Serialize};

use crate::directory::Signature;
use crate::error::{Error, Result};
use crate::ids::{MessageId, QueueId, SurbId};
use crate::keys::IdentityKey;
use ed25519_dalek::{Signer, SigningKey};

/// Version of the mailbox API messages.
pub const MAILBOX_API_VERSION: u8 = 2;
/// A request's timestamp must be within this many seconds of the provider's clock.
pub const FRESHNESS_WINDOW_SECS: u64 = 120;
/// The most entries one fetch returns.
pub const MAX_FETCH_LIMIT: u32 = 256;
/// The most entries one [`OwnerOp::Delete`] names.
pub const MAX_DELETE: usize = MAX_FETCH_LIMIT as usize;
/// The most bytes a request body may have (a deletion of [`MAX_DELETE`]
/// entries with the largest sequence numbers fits).
pub const MAX_REQUEST_SIZE: usize = 3072;
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

/// SHA-256 of a signed request's wire bytes: what an answer names to show
/// which request it answers.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct RequestDigest(pub [u8; 32]);

impl RequestDigest {
    /// The digest of `wire`, a request's exact bytes.
    pub fn of(wire: &[u8]) -> Self {
        use sha2::{Digest, Sha256};
        let mut h = Sha256::new();
        h.update(b"murmur/mailbox-request-digest/v1\0");
        h.update(wire);
        Self(h.finalize().into())
    }
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
    /// The request answered.
    pub request: RequestDigest,
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
    /// Delete exactly these entries (the owner has stored them durably:
    /// consume, then delete). At most [`MAX_DELETE`]; numbers of entries
    /// that are not there are ignored.
    Delete {
        /// Sequence numbers of the entries to delete.
        seqs: Vec<u64>,
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

/// A page of entries: what [`OwnerOp::Fetch`] returns.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct FetchResponse {
    /// Entries in sequence order.
    pub entries: Vec<QueueEntry>,
    /// True if more entries follow the last one returned.
    pub more: bool,
}

impl FetchResponse {
    /// Checks that this page can answer a fetch of at most `limit` entries
    /// after `after`: sequence numbers strictly increasing, all after
    /// `after`, no more than asked for.
    pub fn check(&self, after: u64, limit: u32) -> Result<()> {
        let malformed = |reason| Error::Malformed {
            what: "fetch response",
            reason,
        };
        if self.entries.len() > limit.min(MAX_FETCH_LIMIT) as usize {
            return Err(malformed("more entries than asked for"));
        }
        let mut last = after;
        for e in &self.entries {
            if e.seq <= last {
                return Err(malformed(
                    "sequence numbers not increasing after the cursor",
                ));
            }
            last = e.seq;
        }
        Ok(())
    }
}

/// What an owner request did.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum OwnerReply {
    /// Answer to [`OwnerOp::Fetch`].
    Fetched(FetchResponse),
    /// Answer to [`OwnerOp::Delete`]: entries deleted.
    Deleted {
        /// How many of the named entries were there and are now gone.
        deleted: u64,
    },
    /// Answer to [`OwnerOp::DeleteQueue`].
    QueueDeleted,
}

/// The provider's answer to a [`SignedOwnerRequest`].
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct OwnerResponse {
    /// The request answered.
    pub request: RequestDigest,
    /// What it did.
    pub reply: OwnerReply,
}

impl OwnerResponse {
    /// The page, if this answers a fetch.
    pub fn fetched(self) -> Option<FetchResponse> {
        match self.reply {
            OwnerReply::Fetched(page) => Some(page),
            _ => None,
        }
    }

    /// The count, if this answers a deletion of entries.
    pub fn deleted(&self) -> Option<u64> {
        match self.reply {
            OwnerReply::Deleted { deleted } => Some(deleted),
            _ => None,
        }
    }
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
wire_form!(OwnerResponse, "owner response");

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
            version: MAILBOX_API_VERSION,
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
            version: MAILBOX_API_VERSION,
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
        let page = FetchResponse {
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
        page.check(0, 2).unwrap();
        let resp = OwnerResponse {
            request: RequestDigest::of(b"request"),
            reply: OwnerReply::Fetched(page),
        };
        assert_eq!(
            OwnerResponse::from_bytes(&resp.to_bytes().unwrap()).unwrap(),
            resp
        );
    }

    #[test]
    fn pages_out_of_order_or_before_the_cursor_are_refused() {
        let entry = |seq| QueueEntry {
            seq,
            item: QueueItem::Loop {
                id: MessageId::from_bytes([2; 16]),
            },
        };
        let page = |seqs: &[u64]| FetchResponse {
            entries: seqs.iter().map(|s| entry(*s)).collect(),
            more: false,
        };
        assert!(page(&[3, 5, 9]).check(2, 10).is_ok());
        assert!(page(&[]).check(u64::MAX, 10).is_ok());
        assert!(page(&[3, 5, 9]).check(3, 10).is_err(), "at the cursor");
        assert!(page(&[3, 3]).check(0, 10).is_err(), "repeated");
        assert!(page(&[5, 4]).check(0, 10).is_err(), "decreasing");
        assert!(page(&[1, 2, 3]).check(0, 2).is_err(), "too many");
    }

    #[test]
    fn digests_differ_per_request() {
        assert_ne!(RequestDigest::of(b"a"), RequestDigest::of(b"b"));
        assert_eq!(RequestDigest::of(b"a"), RequestDigest::of(b"a"));
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
            let _ = OwnerResponse::from_bytes(&data);
            let _ = CreateQueueResponse::from_bytes(&data);
        }
    }
}
