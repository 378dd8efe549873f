//! The client's durable state, in one redb database: identity, contacts,
//! outbox, partial and received messages. Everything the client promises
//! (nothing lost on restart, each message delivered once) rests on a write
//! being committed here before the network is told (a fetched entry is
//! deleted from the mailbox only after it is stored; a message is "sent" once
//! its fragments are stored).
//!
//! Records are postcard-encoded. Tables:
//!
//! | table | key | value |
//! |---|---|---|
//! | `meta` | name | identity secret, home provider, ack/loop queues, profile |
//! | `contacts` | contact name | [`ContactRecord`] |
//! | `outbox` | message id | [`OutMessage`] |
//! | `out_fragments` | (message id, index) | [`OutFragment`] |
//! | `partials` | (queue id, message id, index) | (count, chunk) |
//! | `inbox` | local sequence number | [`Received`] |
//! | `delivered` | message id | unix ms when delivered (exactly-once) |

use std::path::{Path, PathBuf};

use murmur_wire::{DEPOSIT_BODY_SIZE, MessageId, NodeId, QueueId};
use redb::{Database, ReadableDatabase, ReadableTable, TableDefinition};
use serde::{Deserialize, Serialize, de::DeserializeOwned};
use zeroize::{Zeroize, ZeroizeOnDrop};

use crate::error::{Error, Result};
use crate::identity::{Identity, IdentityPublic};
use crate::seal::Body;

const META: TableDefinition<&str, &[u8]> = TableDefinition::new("meta");
const CONTACTS: TableDefinition<&str, &[u8]> = TableDefinition::new("contacts");
const OUTBOX: TableDefinition<[u8; 16], &[u8]> = TableDefinition::new("outbox");
const OUT_FRAGMENTS: TableDefinition<([u8; 16], u32), &[u8]> =
    TableDefinition::new("out_fragments");
/// (queue id, message id, fragment index).
type PartialKey = ([u8; 32], [u8; 16], u32);
const PARTIALS: TableDefinition<PartialKey, &[u8]> = TableDefinition::new("partials");
const INBOX: TableDefinition<u64, &[u8]> = TableDefinition::new("inbox");
const DELIVERED: TableDefinition<[u8; 16], u64> = TableDefinition::new("delivered");

const META_PROFILE: &str = "profile";

fn enc<T: Serialize>(value: &T, what: &'static str) -> Result<Vec<u8>> {
    postcard::to_stdvec(value)
        .map_err(|source| Error::Wire(murmur_wire::Error::Encode { what, source }))
}

fn dec<T: DeserializeOwned>(bytes: &[u8], what: &'static str) -> Result<T> {
    postcard::from_bytes(bytes).map_err(|_| Error::Corrupt { what })
}

/// A queue this client owns at a provider, with the queue's own owner key.
#[derive(Clone, Serialize, Deserialize, Zeroize, ZeroizeOnDrop)]
pub struct OwnedQueue {
    /// The provider.
    #[zeroize(skip)]
    pub provider: NodeId,
    /// The queue.
    #[zeroize(skip)]
    pub queue: QueueId,
    /// The queue's Ed25519 owner key (secret).
    pub owner_secret: [u8; 32],
}

impl std::fmt::Debug for OwnedQueue {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OwnedQueue").finish_non_exhaustive()
    }
}

/// Who this client is.
#[derive(Clone, Serialize, Deserialize)]
pub struct Profile {
    /// The identity secret key.
    pub identity_secret: [u8; 32],
    /// The name this client suggests for itself in invitations.
    pub name: String,
    /// The provider holding this client's queues.
    pub home_provider: NodeId,
    /// Where acknowledgements arrive.
    pub ack_queue: OwnedQueue,
    /// Where loop cover returns.
    pub loop_queue: OwnedQueue,
}

impl Drop for Profile {
    fn drop(&mut self) {
        self.identity_secret.zeroize();
    }
}

impl Profile {
    /// The identity.
    pub fn identity(&self) -> Identity {
        Identity::from_secret(self.identity_secret)
    }
}

/// Where a relation stands.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum ContactState {
    /// We invited them; their hello has not arrived.
    Invited,
    /// Both directions are set up.
    Established,
}

/// A contact.
#[derive(Clone, Serialize, Deserialize)]
pub struct ContactRecord {
    /// Local name.
    pub name: String,
    /// Invited or established.
    pub state: ContactState,
    /// Their identity key (known once established).
    pub identity: Option<IdentityPublic>,
    /// Where to deposit for them: provider and queue (known once established).
    pub address: Option<(NodeId, QueueId)>,
    /// The relation's secret (from the invitation).
    pub secret: [u8; 32],
    /// The queue we receive their messages in.
    pub inbox: OwnedQueue,
    /// When the relation was made, unix ms.
    pub created_ms: u64,
    /// True while the name is a placeholder (`invite-N`) to be replaced by
    /// the name the contact suggests in their hello.
    pub provisional_name: bool,
}

impl std::fmt::Debug for ContactRecord {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ContactRecord")
            .field("name", &self.name)
            .field("state", &self.state)
            .finish_non_exhaustive()
    }
}

/// Delivery state of an outgoing message.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum OutState {
    /// Some fragments are not acknowledged yet.
    Sending,
    /// Every fragment was acknowledged by the recipient's mailbox.
    Delivered,
    /// A fragment ran out of tries.
    Failed,
}

/// An outgoing message.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct OutMessage {
    /// The recipient's local name.
    pub contact: String,
    /// Fragments.
    pub fragments: u32,
    /// Fragments acknowledged.
    pub acked: u32,
    /// State.
    pub state: OutState,
    /// When it was queued, unix ms.
    pub created_ms: u64,
    /// Where it goes.
    pub provider: NodeId,
    /// Which queue.
    pub queue: QueueId,
}

/// One outgoing fragment, kept until acknowledged.
#[derive(Clone, Serialize, Deserialize)]
pub struct OutFragment {
    /// The deposit's message id (stable across retransmissions: the mailbox
    /// stores it once).
    pub deposit_id: MessageId,
    /// The encrypted deposit body.
    pub body: Vec<u8>,
    /// True once acknowledged.
    pub acked: bool,
}

/// A received message.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Received {
    /// The sender's local name.
    pub from: String,
    /// The message id.
    pub message_id: MessageId,
    /// When the sender sent it (their clock), unix ms.
    pub sent_at_ms: u64,
    /// When this client stored it, unix ms.
    pub received_at_ms: u64,
    /// What it says.
    pub body: Body,
    /// True once shown to the user by `inbox`.
    pub read: bool,
}

/// What storing a fragment led to.
#[derive(Debug)]
pub enum FragmentOutcome {
    /// Stored; more fragments are needed.
    Partial,
    /// Seen before; nothing changed.
    Duplicate,
    /// The message is complete: its sealed bytes (partials removed in the
    /// same transaction as the caller's delivery, see [`Store::deliver`]).
    Complete(Vec<u8>),
}

/// The client database.
#[derive(Debug)]
pub struct Store {
    db: Database,
    path: PathBuf,
}

impl Store {
    /// Opens (or creates) the database at `path`.
    pub fn open(path: &Path) -> Result<Self> {
        let db = Database::create(path)?;
        restrict_permissions(path);
        let txn = db.begin_write()?;
        {
            txn.open_table(META)?;
            txn.open_table(CONTACTS)?;
            txn.open_table(OUTBOX)?;
            txn.open_table(OUT_FRAGMENTS)?;
            txn.open_table(PARTIALS)?;
            txn.open_table(INBOX)?;
            txn.open_table(DELIVERED)?;
        }
        txn.commit()?;
        Ok(Self {
            db,
            path: path.to_owned(),
        })
    }

    /// Where the database lives.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The profile, if the client was initialised.
    pub fn profile(&self) -> Result<Option<Profile>> {
        let txn = self.db.begin_read()?;
        let t = txn.open_table(META)?;
        match t.get(META_PROFILE)? {
            Some(v) => Ok(Some(dec(v.value(), "profile")?)),
            None => Ok(None),
        }
    }

    /// Stores the profile.
    pub fn set_profile(&self, profile: &Profile) -> Result<()> {
        let bytes = enc(profile, "profile")?;
        let txn = self.db.begin_write()?;
        txn.open_table(META)?
            .insert(META_PROFILE, bytes.as_slice())?;
        txn.commit()?;
        Ok(())
    }

    /// All contacts, by name.
    pub fn contacts(&self) -> Result<Vec<ContactRecord>> {
        let txn = self.db.begin_read()?;
        let t = txn.open_table(CONTACTS)?;
        let mut out = Vec::new();
        for row in t.iter()? {
            let (_, v) = row?;
            out.push(dec(v.value(), "contact")?);
        }
        Ok(out)
    }

    /// One contact.
    pub fn contact(&self, name: &str) -> Result<Option<ContactRecord>> {
        let txn = self.db.begin_read()?;
        let t = txn.open_table(CONTACTS)?;
        match t.get(name)? {
            Some(v) => Ok(Some(dec(v.value(), "contact")?)),
            None => Ok(None),
        }
    }

    /// Adds a contact; refuses a name in use.
    pub fn add_contact(&self, contact: &ContactRecord) -> Result<()> {
        let bytes = enc(contact, "contact")?;
        let txn = self.db.begin_write()?;
        {
            let mut t = txn.open_table(CONTACTS)?;
            if t.get(contact.name.as_str())?.is_some() {
                return Err(Error::ContactExists {
                    name: contact.name.clone(),
                });
            }
            t.insert(contact.name.as_str(), bytes.as_slice())?;
        }
        txn.commit()?;
        Ok(())
    }

    /// Replaces a contact record (same name), or renames it when
    /// `old_name` differs.
    pub fn update_contact(&self, old_name: &str, contact: &ContactRecord) -> Result<()> {
        let bytes = enc(contact, "contact")?;
        let txn = self.db.begin_write()?;
        {
            let mut t = txn.open_table(CONTACTS)?;
            if old_name != contact.name && t.get(contact.name.as_str())?.is_some() {
                return Err(Error::ContactExists {
                    name: contact.name.clone(),
                });
            }
            t.remove(old_name)?;
            t.insert(contact.name.as_str(), bytes.as_slice())?;
        }
        txn.commit()?;
        Ok(())
    }

    /// Queues an outgoing message with its fragments, in one transaction.
    pub fn enqueue(
        &self,
        message_id: MessageId,
        message: &OutMessage,
        fragments: &[OutFragment],
    ) -> Result<()> {
        let bytes = enc(message, "outgoing message")?;
        let txn = self.db.begin_write()?;
        {
            let mut m = txn.open_table(OUTBOX)?;
            m.insert(message_id.to_bytes(), bytes.as_slice())?;
            let mut f = txn.open_table(OUT_FRAGMENTS)?;
            for (i, frag) in fragments.iter().enumerate() {
                let idx = u32::try_from(i).map_err(|_| Error::Corrupt {
                    what: "fragment index",
                })?;
                f.insert(
                    (message_id.to_bytes(), idx),
                    enc(frag, "fragment")?.as_slice(),
                )?;
            }
        }
        txn.commit()?;
        Ok(())
    }

    /// An outgoing message.
    pub fn out_message(&self, message_id: &MessageId) -> Result<Option<OutMessage>> {
        let txn = self.db.begin_read()?;
        let t = txn.open_table(OUTBOX)?;
        match t.get(message_id.to_bytes())? {
            Some(v) => Ok(Some(dec(v.value(), "outgoing message")?)),
            None => Ok(None),
        }
    }

    /// Every outgoing message.
    pub fn out_messages(&self) -> Result<Vec<(MessageId, OutMessage)>> {
        let txn = self.db.begin_read()?;
        let t = txn.open_table(OUTBOX)?;
        let mut out = Vec::new();
        for row in t.iter()? {
            let (k, v) = row?;
            out.push((
                MessageId::from_bytes(k.value()),
                dec(v.value(), "outgoing message")?,
            ));
        }
        Ok(out)
    }

    /// One outgoing fragment.
    pub fn out_fragment(&self, message_id: &MessageId, index: u32) -> Result<Option<OutFragment>> {
        let txn = self.db.begin_read()?;
        let t = txn.open_table(OUT_FRAGMENTS)?;
        match t.get((message_id.to_bytes(), index))? {
            Some(v) => Ok(Some(dec(v.value(), "fragment")?)),
            None => Ok(None),
        }
    }

    /// Fragments of messages still sending that are not acknowledged, in
    /// order: what a restarted client must (re)send.
    pub fn unacked(&self) -> Result<Vec<(MessageId, u32)>> {
        let txn = self.db.begin_read()?;
        let outbox = txn.open_table(OUTBOX)?;
        let frags = txn.open_table(OUT_FRAGMENTS)?;
        let mut out = Vec::new();
        let mut sending: Vec<(MessageId, u64)> = Vec::new();
        for row in outbox.iter()? {
            let (k, v) = row?;
            let m: OutMessage = dec(v.value(), "outgoing message")?;
            if m.state == OutState::Sending {
                sending.push((MessageId::from_bytes(k.value()), m.created_ms));
            }
        }
        sending.sort_by_key(|(_, t)| *t);
        for (id, _) in sending {
            for row in frags.range((id.to_bytes(), 0)..=(id.to_bytes(), u32::MAX))? {
                let (k, v) = row?;
                let f: OutFragment = dec(v.value(), "fragment")?;
                if !f.acked {
                    out.push((id, k.value().1));
                }
            }
        }
        Ok(out)
    }

    /// Marks a fragment acknowledged. Returns the message's new state if
    /// this acknowledgement changed anything.
    pub fn ack_fragment(&self, message_id: &MessageId, index: u32) -> Result<Option<OutMessage>> {
        let txn = self.db.begin_write()?;
        let result = {
            let mut frags = txn.open_table(OUT_FRAGMENTS)?;
            let key = (message_id.to_bytes(), index);
            let Some(mut f) = frags
                .get(key)?
                .map(|v| dec::<OutFragment>(v.value(), "fragment"))
                .transpose()?
            else {
                return Ok(None);
            };
            if f.acked {
                return Ok(None);
            }
            f.acked = true;
            // The body is no longer needed once the mailbox has it.
            f.body = Vec::new();
            frags.insert(key, enc(&f, "fragment")?.as_slice())?;
            let mut outbox = txn.open_table(OUTBOX)?;
            let Some(mut m) = outbox
                .get(message_id.to_bytes())?
                .map(|v| dec::<OutMessage>(v.value(), "outgoing message"))
                .transpose()?
            else {
                return Ok(None);
            };
            m.acked = m.acked.saturating_add(1).min(m.fragments);
            if m.acked == m.fragments && m.state == OutState::Sending {
                m.state = OutState::Delivered;
            }
            outbox.insert(
                message_id.to_bytes(),
                enc(&m, "outgoing message")?.as_slice(),
            )?;
            m
        };
        txn.commit()?;
        Ok(Some(result))
    }

    /// Marks a message failed (a fragment ran out of tries).
    pub fn fail_message(&self, message_id: &MessageId) -> Result<()> {
        let txn = self.db.begin_write()?;
        {
            let mut outbox = txn.open_table(OUTBOX)?;
            let m = outbox
                .get(message_id.to_bytes())?
                .map(|v| dec::<OutMessage>(v.value(), "outgoing message"))
                .transpose()?;
            if let Some(mut m) = m
                && m.state == OutState::Sending
            {
                m.state = OutState::Failed;
                outbox.insert(
                    message_id.to_bytes(),
                    enc(&m, "outgoing message")?.as_slice(),
                )?;
            }
        }
        txn.commit()?;
        Ok(())
    }

    /// True if a message id was delivered already.
    pub fn was_delivered(&self, message_id: &MessageId) -> Result<bool> {
        let txn = self.db.begin_read()?;
        Ok(txn
            .open_table(DELIVERED)?
            .get(message_id.to_bytes())?
            .is_some())
    }

    /// Stores one received fragment. When it completes its message, returns
    /// the sealed bytes; the partials stay until [`Store::deliver`] or
    /// [`Store::discard_partial`] removes them, so a crash in between loses
    /// nothing.
    pub fn add_fragment(
        &self,
        queue: &QueueId,
        message_id: &MessageId,
        index: u32,
        count: u32,
        chunk: &[u8],
    ) -> Result<FragmentOutcome> {
        if self.was_delivered(message_id)? {
            return Ok(FragmentOutcome::Duplicate);
        }
        let q = queue.to_bytes();
        let m = message_id.to_bytes();
        let txn = self.db.begin_write()?;
        let outcome = {
            let mut t = txn.open_table(PARTIALS)?;
            if t.get((q, m, index))?.is_some() {
                FragmentOutcome::Duplicate
            } else {
                let mut rec = Vec::with_capacity(4 + chunk.len());
                rec.extend_from_slice(&count.to_be_bytes());
                rec.extend_from_slice(chunk);
                t.insert((q, m, index), rec.as_slice())?;
                let mut have = 0u32;
                let mut total = Vec::new();
                let mut consistent = true;
                for row in t.range((q, m, 0)..=(q, m, u32::MAX))? {
                    let (_, v) = row?;
                    let v = v.value();
                    if v.len() < 4 || v[..4] != count.to_be_bytes() {
                        consistent = false;
                        break;
                    }
                    have += 1;
                    total.extend_from_slice(&v[4..]);
                }
                if !consistent {
                    return Err(Error::Crypto("fragments disagree about the message length"));
                }
                if have == count {
                    FragmentOutcome::Complete(total)
                } else {
                    FragmentOutcome::Partial
                }
            }
        };
        txn.commit()?;
        Ok(outcome)
    }

    /// Drops the partials of a message that cannot be opened.
    pub fn discard_partial(&self, queue: &QueueId, message_id: &MessageId) -> Result<()> {
        let (q, m) = (queue.to_bytes(), message_id.to_bytes());
        let txn = self.db.begin_write()?;
        {
            let mut t = txn.open_table(PARTIALS)?;
            t.extract_from_if((q, m, 0)..=(q, m, u32::MAX), |_, _| true)?
                .for_each(drop);
        }
        txn.commit()?;
        Ok(())
    }

    /// Delivers a complete message: stores it in the inbox (once per
    /// message id) and removes its partials, in one transaction. Returns the
    /// inbox sequence number, or `None` if it was delivered before.
    pub fn deliver(&self, queue: &QueueId, received: &Received) -> Result<Option<u64>> {
        let (q, m) = (queue.to_bytes(), received.message_id.to_bytes());
        let txn = self.db.begin_write()?;
        let seq = {
            let mut partials = txn.open_table(PARTIALS)?;
            partials
                .extract_from_if((q, m, 0)..=(q, m, u32::MAX), |_, _| true)?
                .for_each(drop);
            let mut delivered = txn.open_table(DELIVERED)?;
            if delivered.get(m)?.is_some() {
                None
            } else {
                delivered.insert(m, received.received_at_ms)?;
                let mut inbox = txn.open_table(INBOX)?;
                let next = inbox.last()?.map(|(k, _)| k.value() + 1).unwrap_or(1);
                inbox.insert(next, enc(received, "received message")?.as_slice())?;
                Some(next)
            }
        };
        txn.commit()?;
        Ok(seq)
    }

    /// Received messages, oldest first; only unread ones if `unread_only`.
    pub fn inbox(&self, unread_only: bool) -> Result<Vec<(u64, Received)>> {
        let txn = self.db.begin_read()?;
        let t = txn.open_table(INBOX)?;
        let mut out = Vec::new();
        for row in t.iter()? {
            let (k, v) = row?;
            let r: Received = dec(v.value(), "received message")?;
            if !unread_only || !r.read {
                out.push((k.value(), r));
            }
        }
        Ok(out)
    }

    /// Marks inbox entries read.
    pub fn mark_read(&self, seqs: &[u64]) -> Result<()> {
        let txn = self.db.begin_write()?;
        {
            let mut t = txn.open_table(INBOX)?;
            for seq in seqs {
                let r = t
                    .get(*seq)?
                    .map(|v| dec::<Received>(v.value(), "received message"))
                    .transpose()?;
                if let Some(mut r) = r {
                    r.read = true;
                    t.insert(*seq, enc(&r, "received message")?.as_slice())?;
                }
            }
        }
        txn.commit()?;
        Ok(())
    }
}

/// The deposit body of a stored fragment as a fixed-size array.
pub fn body_array(body: &[u8]) -> Result<Box<[u8; DEPOSIT_BODY_SIZE]>> {
    let arr: [u8; DEPOSIT_BODY_SIZE] = body.try_into().map_err(|_| Error::Corrupt {
        what: "fragment body",
    })?;
    Ok(Box::new(arr))
}

#[cfg(unix)]
fn restrict_permissions(path: &Path) {
    use std::os::unix::fs::PermissionsExt;
    if let Err(e) = std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600)) {
        tracing::warn!(error = %e, "could not restrict permissions of the client database");
    }
}

#[cfg(not(unix))]
fn restrict_permissions(_path: &Path) {}

#[cfg(test)]
mod tests {
    use super::*;

    fn store() -> (tempfile::TempDir, Store) {
        let dir = tempfile::tempdir().unwrap();
        let s = Store::open(&dir.path().join("client.redb")).unwrap();
        (dir, s)
    }

    #[test]
    fn fragments_complete_once_and_delivery_is_exactly_once() {
        let (_d, s) = store();
        let q = QueueId::from_bytes([1; 32]);
        let m = MessageId::from_bytes([2; 16]);
        assert!(matches!(
            s.add_fragment(&q, &m, 1, 2, b"world").unwrap(),
            FragmentOutcome::Partial
        ));
        assert!(matches!(
            s.add_fragment(&q, &m, 1, 2, b"world").unwrap(),
            FragmentOutcome::Duplicate
        ));
        let FragmentOutcome::Complete(bytes) = s.add_fragment(&q, &m, 0, 2, b"hello ").unwrap()
        else {
            panic!("expected complete");
        };
        assert_eq!(bytes, b"hello world");
        let r = Received {
            from: "bob".into(),
            message_id: m,
            sent_at_ms: 1,
            received_at_ms: 2,
            body: Body::Text("hello world".into()),
            read: false,
        };
        assert_eq!(s.deliver(&q, &r).unwrap(), Some(1));
        assert_eq!(s.deliver(&q, &r).unwrap(), None);
        assert!(matches!(
            s.add_fragment(&q, &m, 0, 2, b"hello ").unwrap(),
            FragmentOutcome::Duplicate
        ));
        assert_eq!(s.inbox(true).unwrap().len(), 1);
        s.mark_read(&[1]).unwrap();
        assert!(s.inbox(true).unwrap().is_empty());
        assert_eq!(s.inbox(false).unwrap().len(), 1);
    }

    #[test]
    fn outbox_tracks_acks_and_survives_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("c.redb");
        let m = MessageId::from_bytes([3; 16]);
        {
            let s = Store::open(&path).unwrap();
            let msg = OutMessage {
                contact: "bob".into(),
                fragments: 2,
                acked: 0,
                state: OutState::Sending,
                created_ms: 5,
                provider: NodeId::from_bytes([1; 32]),
                queue: QueueId::from_bytes([2; 32]),
            };
            let frag = |b| OutFragment {
                deposit_id: MessageId::from_bytes([b; 16]),
                body: vec![b; DEPOSIT_BODY_SIZE],
                acked: false,
            };
            s.enqueue(m, &msg, &[frag(1), frag(2)]).unwrap();
            assert_eq!(s.unacked().unwrap(), vec![(m, 0), (m, 1)]);
            let after = s.ack_fragment(&m, 0).unwrap().unwrap();
            assert_eq!(after.acked, 1);
            assert!(s.ack_fragment(&m, 0).unwrap().is_none());
        }
        let s = Store::open(&path).unwrap();
        assert_eq!(s.unacked().unwrap(), vec![(m, 1)]);
        let done = s.ack_fragment(&m, 1).unwrap().unwrap();
        assert_eq!(done.state, OutState::Delivered);
        assert!(s.unacked().unwrap().is_empty());
    }

    #[test]
    fn contact_names_are_unique() {
        let (_d, s) = store();
        let c = ContactRecord {
            name: "alice".into(),
            state: ContactState::Invited,
            identity: None,
            address: None,
            secret: [0; 32],
            inbox: OwnedQueue {
                provider: NodeId::from_bytes([1; 32]),
                queue: QueueId::from_bytes([1; 32]),
                owner_secret: [1; 32],
            },
            created_ms: 0,
            provisional_name: false,
        };
        s.add_contact(&c).unwrap();
        assert!(matches!(
            s.add_contact(&c),
            Err(Error::ContactExists { .. })
        ));
        let mut renamed = c.clone();
        renamed.name = "al".into();
        s.update_contact("alice", &renamed).unwrap();
        assert!(s.contact("alice").unwrap().is_none());
        assert!(s.contact("al").unwrap().is_some());
    }
}

// TEMPORARY (replaced by the encrypted store's reassembly API).
/// A received fragment to store.
#[derive(Clone, Copy, Debug)]
pub struct InFragment<'a> {
    /// Its message.
    pub message: MessageId,
    /// Its index.
    pub index: u32,
    /// Fragments in the message.
    pub count: u32,
    /// Its chunk of the sealed message.
    pub chunk: &'a [u8],
}

/// What storing a fragment did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Added {
    /// Stored.
    New,
    /// Stored before, or its message was delivered.
    Duplicate,
    /// Its count differs from its message's other fragments: not stored.
    CountMismatch,
}

/// A partial message, for restoring after a restart.
#[derive(Clone, Debug)]
pub struct PartialInfo {
    /// Its queue.
    pub queue: QueueId,
    /// Its id.
    pub message: MessageId,
    /// Fragments in all.
    pub count: u32,
    /// Indexes stored.
    pub have: Vec<u32>,
    /// First stored, unix ms.
    pub first_ms: u64,
}

impl Store {
    /// TEMPORARY.
    pub fn add_fragments(
        &self,
        queue: &QueueId,
        fragments: &[InFragment<'_>],
        _now_ms: u64,
    ) -> Result<Vec<Added>> {
        let q = queue.to_bytes();
        let txn = self.db.begin_write()?;
        let mut out = Vec::with_capacity(fragments.len());
        {
            let delivered = txn.open_table(DELIVERED)?;
            let mut t = txn.open_table(PARTIALS)?;
            for f in fragments {
                let m = f.message.to_bytes();
                if delivered.get(m)?.is_some() || t.get((q, m, f.index))?.is_some() {
                    out.push(Added::Duplicate);
                    continue;
                }
                let mismatch = match t.range((q, m, 0)..=(q, m, u32::MAX))?.next() {
                    Some(row) => {
                        let (_, v) = row?;
                        v.value().get(..4) != Some(&f.count.to_be_bytes()[..])
                    }
                    None => false,
                };
                if mismatch {
                    out.push(Added::CountMismatch);
                    continue;
                }
                let mut rec = Vec::with_capacity(4 + f.chunk.len());
                rec.extend_from_slice(&f.count.to_be_bytes());
                rec.extend_from_slice(f.chunk);
                t.insert((q, m, f.index), rec.as_slice())?;
                out.push(Added::New);
            }
        }
        txn.commit()?;
        Ok(out)
    }

    /// TEMPORARY.
    pub fn assemble(&self, queue: &QueueId, message: &MessageId) -> Result<Option<Vec<u8>>> {
        let (q, m) = (queue.to_bytes(), message.to_bytes());
        let txn = self.db.begin_read()?;
        let t = txn.open_table(PARTIALS)?;
        let mut total = Vec::new();
        let mut have = 0u32;
        let mut count = 0u32;
        for row in t.range((q, m, 0)..=(q, m, u32::MAX))? {
            let (_, v) = row?;
            let v = v.value();
            let Some(c) = v.get(..4) else {
                return Err(Error::Corrupt { what: "fragment" });
            };
            count = u32::from_be_bytes([c[0], c[1], c[2], c[3]]);
            have += 1;
            total.extend_from_slice(&v[4..]);
        }
        Ok((have == count && have > 0).then_some(total))
    }

    /// TEMPORARY.
    pub fn partials(&self) -> Result<Vec<PartialInfo>> {
        let txn = self.db.begin_read()?;
        let t = txn.open_table(PARTIALS)?;
        let mut out: Vec<PartialInfo> = Vec::new();
        for row in t.iter()? {
            let (k, v) = row?;
            let (q, m, i) = k.value();
            let v = v.value();
            let Some(c) = v.get(..4) else {
                continue;
            };
            let count = u32::from_be_bytes([c[0], c[1], c[2], c[3]]);
            let (queue, message) = (QueueId::from_bytes(q), MessageId::from_bytes(m));
            match out.last_mut() {
                Some(p) if p.queue == queue && p.message == message => p.have.push(i),
                _ => out.push(PartialInfo {
                    queue,
                    message,
                    count,
                    have: vec![i],
                    first_ms: 0,
                }),
            }
        }
        Ok(out)
    }
}
