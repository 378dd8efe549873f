//! The client side of the mailbox fetch API (docs/protocol.md §6): create a
//! queue with a fresh owner key, fetch, delete entries, delete a queue.
//! Every request is signed by the queue's own owner key and carries a fresh
//! timestamp and nonce; every answer must name the request it answers.
//! Every exchange runs inside an encrypted link to the provider, which
//! proves it holds the link key the consensus lists for it; the client is
//! unidentified on the link (a fresh key per connection).

use std::net::SocketAddr;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use http::StatusCode;
use murmur_net::LinkSettings;
use murmur_net::http::LinkHttpClient;
use murmur_net::http::POSTCARD;
use murmur_wire::ed25519_dalek::SigningKey;
use murmur_wire::link::{LinkPublicKey, Purpose};
use murmur_wire::mailbox::{
    CreateQueue, CreateQueueResponse, FetchResponse, MAILBOX_API_VERSION, MAX_DELETE,
    MAX_FETCH_LIMIT, MAX_RESPONSE_SIZE, OwnerOp, OwnerReply, OwnerRequest, OwnerResponse,
    RequestDigest, SignedCreateQueue, SignedOwnerRequest,
};
use murmur_wire::{IdentityKey, NodeId, NodeInfo};
use zeroize::Zeroizing;

use crate::error::{Error, Result};
use crate::store::OwnedQueue;

/// Where a provider's fetch API is and the link key it must prove.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Endpoint {
    /// The fetch API's address.
    pub addr: SocketAddr,
    /// The provider's link key.
    pub link_key: LinkPublicKey,
}

impl Endpoint {
    /// The fetch API of a provider as the consensus lists it (`None` for a
    /// mix).
    pub fn of(node: &NodeInfo) -> Option<Self> {
        Some(Self {
            addr: node.http_addr?,
            link_key: node.link_key.clone(),
        })
    }
}

/// Talks to mailbox providers.
#[derive(Clone, Debug)]
pub struct MailboxApi {
    http: LinkHttpClient,
}

fn now_secs() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

fn reason(body: &Bytes) -> String {
    let text = String::from_utf8_lossy(body);
    let line = text.lines().next().unwrap_or("").trim();
    line.chars().take(200).collect()
}

impl MailboxApi {
    /// A client whose requests time out after `timeout` (connection and
    /// link handshake included).
    pub fn new(timeout: Duration) -> Self {
        let settings = LinkSettings {
            handshake_timeout: timeout,
            ..LinkSettings::default()
        };
        Self {
            http: LinkHttpClient::new(Purpose::MailboxApi, settings, timeout),
        }
    }

    async fn post(
        &self,
        to: &Endpoint,
        path: &str,
        body: Vec<u8>,
        op: &'static str,
    ) -> Result<Bytes> {
        let (status, resp) = self
            .http
            .post(
                to.addr,
                &to.link_key,
                path,
                POSTCARD,
                Bytes::from(body),
                MAX_RESPONSE_SIZE,
            )
            .await
            .map_err(|e| Error::Unreachable {
                reason: format!("mailbox provider: {e}"),
            })?;
        if status != StatusCode::OK {
            return Err(Error::Mailbox {
                op,
                status: status.as_u16(),
                reason: reason(&resp),
            });
        }
        Ok(resp)
    }

    /// Creates a queue at the provider at `to`, owned by a fresh key.
    pub async fn create_queue<R: rand::CryptoRng + ?Sized>(
        &self,
        rng: &mut R,
        provider: NodeId,
        to: &Endpoint,
    ) -> Result<OwnedQueue> {
        let mut secret = Zeroizing::new([0u8; 32]);
        rng.fill_bytes(&mut secret[..]);
        let key = SigningKey::from_bytes(&secret);
        let mut nonce = [0u8; 16];
        rng.fill_bytes(&mut nonce);
        let req = CreateQueue {
            version: MAILBOX_API_VERSION,
            owner: IdentityKey::from(&key.verifying_key()),
            timestamp: now_secs(),
            nonce,
        };
        let body = SignedCreateQueue::sign(&req, &key)?.to_bytes()?;
        let digest = RequestDigest::of(&body);
        let resp = self.post(to, "/v1/queues", body, "queue creation").await?;
        let created = CreateQueueResponse::from_bytes(&resp)?;
        if created.request != digest {
            return Err(Error::Unbound {
                op: "queue creation",
            });
        }
        Ok(OwnedQueue {
            provider,
            queue: created.queue,
            owner_secret: *secret,
        })
    }

    async fn owner_request<R: rand::CryptoRng + ?Sized>(
        &self,
        rng: &mut R,
        to: &Endpoint,
        queue: &OwnedQueue,
        op: OwnerOp,
        what: &'static str,
    ) -> Result<OwnerReply> {
        let key = SigningKey::from_bytes(&queue.owner_secret);
        let mut nonce = [0u8; 16];
        rng.fill_bytes(&mut nonce);
        let req = OwnerRequest {
            version: MAILBOX_API_VERSION,
            queue: queue.queue,
            op,
            timestamp: now_secs(),
            nonce,
        };
        let body = SignedOwnerRequest::sign(&req, &key)?.to_bytes()?;
        let digest = RequestDigest::of(&body);
        let resp = self.post(to, "/v1/queue", body, what).await?;
        let resp = OwnerResponse::from_bytes(&resp)?;
        if resp.request != digest {
            return Err(Error::Unbound { op: what });
        }
        Ok(resp.reply)
    }

    /// Entries after sequence number `after`, a page at a time. The page is
    /// checked: increasing sequence numbers after `after`, no more than asked.
    pub async fn fetch<R: rand::CryptoRng + ?Sized>(
        &self,
        rng: &mut R,
        to: &Endpoint,
        queue: &OwnedQueue,
        after: u64,
    ) -> Result<FetchResponse> {
        let op = OwnerOp::Fetch {
            after,
            limit: MAX_FETCH_LIMIT,
        };
        match self.owner_request(rng, to, queue, op, "fetch").await? {
            OwnerReply::Fetched(page) => {
                page.check(after, MAX_FETCH_LIMIT)?;
                Ok(page)
            }
            _ => Err(Error::Unbound { op: "fetch" }),
        }
    }

    /// Deletes exactly the entries `seqs` (after storing them); at most
    /// [`MAX_DELETE`] at once. Returns how many were there.
    pub async fn delete<R: rand::CryptoRng + ?Sized>(
        &self,
        rng: &mut R,
        to: &Endpoint,
        queue: &OwnedQueue,
        seqs: &[u64],
    ) -> Result<u64> {
        let mut deleted = 0;
        for chunk in seqs.chunks(MAX_DELETE) {
            let op = OwnerOp::Delete {
                seqs: chunk.to_vec(),
            };
            match self.owner_request(rng, to, queue, op, "deletion").await? {
                OwnerReply::Deleted { deleted: n } if n <= chunk.len() as u64 => deleted += n,
                _ => return Err(Error::Unbound { op: "deletion" }),
            }
        }
        Ok(deleted)
    }

    /// Deletes a queue and everything in it.
    pub async fn delete_queue<R: rand::CryptoRng + ?Sized>(
        &self,
        rng: &mut R,
        to: &Endpoint,
        queue: &OwnedQueue,
    ) -> Result<()> {
        match self
            .owner_request(rng, to, queue, OwnerOp::DeleteQueue, "queue deletion")
            .await?
        {
            OwnerReply::QueueDeleted => Ok(()),
            _ => Err(Error::Unbound {
                op: "queue deletion",
            }),
        }
    }
}
