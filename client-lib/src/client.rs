//! The client: its public API and the state its background tasks share.

use rand::SeedableRng;
use rand::rngs::StdRng;
use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use murmur_client_core::{Config, Core, Destination};
use murmur_wire::{MessageId, NodeId, QueueId, VerifiedConsensus};
use tokio::sync::{Notify, broadcast, mpsc, watch};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::driver::{self, State, StoreJob};

use crate::error::{Error, Result};
use crate::fragment::{self, FragmentKey};
use crate::identity::{Identity, IdentityPublic, safety_number};
use crate::invite::{Invitation, check_name};
use crate::links::Links;
use crate::mailbox_api::{Endpoint, MailboxApi};
use crate::seal::{self, Body, Envelope, SealKind};
use crate::store::{
    ContactRecord, ContactState, OutFragment, OutMessage, OutState, OwnedQueue, Passphrase, PqSeed,
    Profile, Received, Store,
};

/// The largest message (text or file) a client sends, in bytes.
pub const MAX_MESSAGE_SIZE: usize = 64 * 1024 * 1024;
const DB_FILE: &str = "client.redb";

/// Where the client learns the verified network.
pub trait ConsensusSource: Send + Sync + 'static {
    /// The verified consensus for the current epoch, if there is one.
    fn current(&self) -> Option<Arc<VerifiedConsensus>>;
    /// Why there is none (for error messages), if known.
    fn unavailable_reason(&self) -> Option<String>;
}

/// Tunables of a client.
#[derive(Clone, Debug)]
pub struct ClientOptions {
    /// How often the client polls its queues.
    pub fetch_interval: Duration,
    /// Sends per packet before the message is reported failed.
    pub max_tries: u32,
    /// Acknowledgement timeout; derived from the consensus delays if unset.
    pub ack_timeout: Option<Duration>,
    /// Timeout of each HTTP request to a mailbox.
    pub request_timeout: Duration,
}

impl Default for ClientOptions {
    fn default() -> Self {
        Self {
            fetch_interval: Duration::from_secs(1),
            max_tries: 10,
            ack_timeout: None,
            request_timeout: Duration::from_secs(10),
        }
    }
}

/// A contact, as listed to the user.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ContactInfo {
    /// Local name.
    pub name: String,
    /// True once they accepted (or we accepted theirs).
    pub established: bool,
}

/// Progress of one outgoing message.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Progress {
    /// Packets acknowledged by the recipient's mailbox.
    pub acked: u32,
    /// Packets in the message.
    pub total: u32,
    /// Where it stands.
    pub state: OutState,
}

/// A message being sent: resolves once every packet is acknowledged.
#[derive(Debug)]
pub struct SendHandle {
    id: MessageId,
    rx: watch::Receiver<Progress>,
    max_tries: u32,
}

impl SendHandle {
    /// The message's id.
    pub fn id(&self) -> MessageId {
        self.id
    }

    /// Current progress.
    pub fn progress(&self) -> Progress {
        *self.rx.borrow()
    }

    /// Waits for the next change of progress; `None` once the client stops.
    pub async fn changed(&mut self) -> Option<Progress> {
        self.rx.changed().await.ok()?;
        Some(*self.rx.borrow())
    }

    /// Waits until the message is delivered (every packet acknowledged by the
    /// recipient's mailbox) or has failed.
    pub async fn delivered(mut self) -> Result<Progress> {
        loop {
            let p = *self.rx.borrow_and_update();
            match p.state {
                OutState::Delivered => return Ok(p),
                OutState::Failed => {
                    return Err(Error::SendFailed {
                        tries: self.max_tries,
                    });
                }
                OutState::Sending => {}
            }
            if self.rx.changed().await.is_err() {
                return Err(Error::Closed);
            }
        }
    }
}

/// A message as delivered to the user.
#[derive(Clone, Debug)]
pub struct ReceivedMessage {
    /// Position in the local inbox.
    pub seq: u64,
    /// The record.
    pub message: Received,
}

/// The stream of received messages.
#[derive(Debug)]
pub struct Incoming {
    rx: broadcast::Receiver<ReceivedMessage>,
}

impl Incoming {
    /// The next message; `None` once the client stops. If this stream fell
    /// behind, skipped messages are still in the inbox ([`Client::inbox`]).
    pub async fn next(&mut self) -> Option<ReceivedMessage> {
        loop {
            match self.rx.recv().await {
                Ok(m) => return Some(m),
                Err(broadcast::error::RecvError::Lagged(_)) => continue,
                Err(broadcast::error::RecvError::Closed) => return None,
            }
        }
    }

    /// The same messages as a [`futures::Stream`].
    pub fn into_stream(self) -> impl futures::Stream<Item = ReceivedMessage> + Send {
        futures::stream::unfold(self, |mut incoming| async move {
            incoming.next().await.map(|m| (m, incoming))
        })
    }
}

/// Counters a client keeps (since it started).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize)]
pub struct ClientStats {
    /// Real packets sent, first tries.
    pub real_sent: u64,
    /// Real packets sent again after a timeout.
    pub retransmissions: u64,
    /// Drop-cover packets sent.
    pub drop_cover_sent: u64,
    /// Loop-cover packets sent.
    pub loop_cover_sent: u64,
    /// Loop-cover packets that came back.
    pub loops_returned: u64,
    /// Acknowledgements verified.
    pub acks: u64,
    /// Packets the links dropped.
    pub link_drops: u64,
    /// Fetched entries that could not be used (garbage, wrong key).
    pub bad_entries: u64,
    /// Messages delivered to this client.
    pub delivered: u64,
}

#[derive(Debug, Default)]
pub(crate) struct Counters {
    pub(crate) real_sent: AtomicU64,
    pub(crate) retransmissions: AtomicU64,
    pub(crate) drop_cover_sent: AtomicU64,
    pub(crate) loop_cover_sent: AtomicU64,
    pub(crate) acks: AtomicU64,
    pub(crate) bad_entries: AtomicU64,
    pub(crate) delivered: AtomicU64,
    /// Packets whose first hop left the consensus before they were sent.
    pub(crate) unroutable: AtomicU64,
}

/// What the client's tasks share. The protocol core is in `state`, locked
/// only to feed it an event or take its actions.
pub(crate) struct Shared {
    pub(crate) store: Arc<Store>,
    pub(crate) profile: Profile,
    pub(crate) identity: Identity,
    pub(crate) consensus: Arc<dyn ConsensusSource>,
    pub(crate) mailbox: MailboxApi,
    pub(crate) links: Links,
    pub(crate) options: ClientOptions,
    state: Mutex<State>,
    /// Wakes the driver: the core has something new to say.
    pub(crate) wake: Notify,
    /// A fetch finished (for `fetch_now`).
    pub(crate) fetched: Notify,
    waiters: Mutex<HashMap<MessageId, watch::Sender<Progress>>>,
    pub(crate) incoming: broadcast::Sender<ReceivedMessage>,
    pub(crate) counters: Counters,
    files_dir: PathBuf,
    /// The core's time origin.
    pub(crate) origin: tokio::time::Instant,
    store_jobs: mpsc::UnboundedSender<StoreJob>,
    pub(crate) tracker: TaskTracker,
    pub(crate) shutdown: CancellationToken,
    /// Held while a relation's ratchet is read, advanced and written back
    /// (sealing on a blocking thread, opening on the storage worker), so
    /// that no two uses start from the same state: a message key is never
    /// used twice.
    ratchets: Mutex<()>,
}

impl Shared {
    /// The ratchet lock (see the field).
    pub(crate) fn ratchet_lock(&self) -> std::sync::MutexGuard<'_, ()> {
        self.ratchets.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub(crate) fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        // A panic while holding this lock would be a bug; recover the data
        // rather than take the client down with it.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The core's clock.
    pub(crate) fn now(&self) -> Duration {
        self.origin.elapsed()
    }

    /// Runs `job` on the storage worker, after the jobs before it. Dropped
    /// if the client is stopping.
    pub(crate) fn store_job(&self, job: impl FnOnce(&Store) + Send + 'static) {
        let _ = self.store_jobs.send(Box::new(job));
    }

    pub(crate) fn current_consensus(&self) -> Result<Arc<VerifiedConsensus>> {
        self.consensus.current().ok_or_else(|| Error::Unreachable {
            reason: self
                .consensus
                .unavailable_reason()
                .unwrap_or_else(|| "no verified consensus yet".into()),
        })
    }

    pub(crate) fn provider_endpoint(&self, provider: &NodeId) -> Result<Endpoint> {
        let c = self.current_consensus()?;
        c.node(provider)
            .and_then(Endpoint::of)
            .ok_or_else(|| Error::Unreachable {
                reason: "the mailbox provider is not in the current consensus".into(),
            })
    }

    pub(crate) fn notify_progress(&self, id: &MessageId, progress: Progress) {
        let mut waiters = self.waiters.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(tx) = waiters.get(id) {
            let _ = tx.send(progress);
        }
        if progress.state != OutState::Sending {
            waiters.remove(id);
        }
    }
}

pub(crate) fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
        .unwrap_or(0)
}

/// A Murmur client: one person's identity, contacts and mail.
///
/// Opening a client starts its background tasks (the driver of the
/// protocol core: the Loopix streams with cover traffic, retransmission,
/// fetching; the links; the storage worker). [`Client::shutdown`] stops
/// them and waits; dropping the client stops them too.
pub struct Client {
    inner: Arc<Shared>,
    tracker: TaskTracker,
    shutdown: CancellationToken,
}

impl Drop for Client {
    fn drop(&mut self) {
        self.shutdown.cancel();
    }
}

impl std::fmt::Debug for Client {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Client")
            .field("name", &self.inner.profile.name)
            .finish_non_exhaustive()
    }
}

impl Client {
    /// Locks the client in `home` with a new passphrase, offline: the
    /// database's data key is wrapped again (fresh salt); nothing else is
    /// rewritten. The client must not be open (redb holds a lock).
    pub async fn change_passphrase(home: &Path, old: &Passphrase, new: &Passphrase) -> Result<()> {
        let path = db_path(home);
        let (old, new) = (old.clone(), new.clone());
        tokio::task::spawn_blocking(move || {
            let store = Store::open(&path, &old)?;
            store.change_passphrase(&new)
        })
        .await
        .map_err(|_| Error::Closed)?
    }
}

fn db_path(home: &Path) -> PathBuf {
    home.join(DB_FILE)
}

fn prepare_home(home: &Path) -> Result<()> {
    std::fs::create_dir_all(home).map_err(|source| Error::File {
        path: home.to_owned(),
        source,
    })?;
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let _ = std::fs::set_permissions(home, std::fs::Permissions::from_mode(0o700));
    }
    Ok(())
}

impl Client {
    /// True if `home` holds a client.
    pub fn exists(home: &Path) -> bool {
        db_path(home).exists()
    }

    /// Creates a client in `home`: a fresh identity, a home provider (the
    /// one given, or one chosen at random from the consensus), and its
    /// acknowledgement and loop queues there. Then starts it. Its database
    /// is encrypted under `passphrase`.
    pub async fn create(
        home: &Path,
        name: &str,
        consensus: Arc<dyn ConsensusSource>,
        provider: Option<NodeId>,
        options: ClientOptions,
        passphrase: &Passphrase,
    ) -> Result<Client> {
        check_name(name)?;
        if Self::exists(home) {
            return Err(Error::AlreadyInitialised {
                home: home.to_owned(),
            });
        }
        let current = consensus.current().ok_or_else(|| Error::Unreachable {
            reason: consensus
                .unavailable_reason()
                .unwrap_or_else(|| "no verified consensus".into()),
        })?;
        let provider = match provider {
            Some(p) => current
                .mailboxes()
                .iter()
                .find(|m| m.id == p)
                .cloned()
                .ok_or_else(|| Error::Unreachable {
                    reason: format!("provider {p} is not in the consensus"),
                })?,
            None => {
                let boxes = current.mailboxes();
                if boxes.is_empty() {
                    return Err(Error::Unreachable {
                        reason: "the consensus lists no mailbox provider".into(),
                    });
                }
                use rand::RngExt;
                boxes[rand::rng().random_range(0..boxes.len())].clone()
            }
        };
        let http = Endpoint::of(&provider).ok_or(Error::Unreachable {
            reason: "provider has no HTTP address".into(),
        })?;
        let api = MailboxApi::new(options.request_timeout);
        // A Send generator: the future holds it across the requests.
        let mut rng = StdRng::from_rng(&mut rand::rng());
        let ack_queue = api.create_queue(&mut rng, provider.id, &http).await?;
        let loop_queue = api.create_queue(&mut rng, provider.id, &http).await?;
        let identity = Identity::generate(&mut rng);
        let pq_seed = PqSeed(*identity.pq_seed());
        let profile = Profile {
            identity_secret: *identity.secret_bytes(),
            name: name.to_owned(),
            home_provider: provider.id,
            ack_queue,
            loop_queue,
        };
        prepare_home(home)?;
        let (path, pass) = (db_path(home), passphrase.clone());
        tokio::task::spawn_blocking(move || -> Result<()> {
            let store = Store::create(&path, &pass)?;
            store.set_pq_seed(&pq_seed)?;
            store.set_profile(&profile)
        })
        .await
        .map_err(|_| Error::Closed)??;
        Self::open(home, consensus, options, passphrase).await
    }

    /// Opens the client in `home` and starts it; unacknowledged packets of
    /// messages being sent are queued again. A wrong `passphrase` is
    /// [`Error::WrongPassphrase`].
    pub async fn open(
        home: &Path,
        consensus: Arc<dyn ConsensusSource>,
        options: ClientOptions,
        passphrase: &Passphrase,
    ) -> Result<Client> {
        if !Self::exists(home) {
            return Err(Error::NotInitialised {
                home: home.to_owned(),
            });
        }
        // Argon2id takes a fraction of a second of CPU: not on an async thread.
        let (path, pass) = (db_path(home), passphrase.clone());
        let store = tokio::task::spawn_blocking(move || Store::open(&path, &pass))
            .await
            .map_err(|_| Error::Closed)??;
        let store = Arc::new(store);
        let profile = store.profile()?.ok_or(Error::NotInitialised {
            home: home.to_owned(),
        })?;
        let pq_seed = match store.pq_seed()? {
            Some(seed) => seed,
            None => {
                // A client made before post-quantum keys: it gets an X-Wing
                // key now. Its existing contacts lack one of their own and
                // must be invited again (see `Error::LegacyContact`).
                let mut seed = PqSeed([0u8; 32]);
                rand::Rng::fill_bytes(&mut rand::rng(), &mut seed.0);
                store.set_pq_seed(&seed)?;
                seed
            }
        };
        let identity = profile.identity(&pq_seed);
        let tracker = TaskTracker::new();
        let shutdown = CancellationToken::new();
        let (incoming, _) = broadcast::channel(1024);
        let mut cfg = Config::new(
            profile.home_provider,
            profile.ack_queue.queue,
            profile.loop_queue.queue,
        );
        cfg.max_tries = options.max_tries;
        cfg.ack_timeout = options.ack_timeout;
        cfg.fetch_interval = options.fetch_interval;
        cfg.max_fragments = fragment::MAX_FRAGMENTS;
        let mut seed = [0u8; 32];
        rand::Rng::fill_bytes(&mut rand::rng(), &mut seed);
        let store_jobs = driver::spawn_store_worker(store.clone(), &tracker, shutdown.clone());
        let inner = Arc::new(Shared {
            store,
            profile,
            identity,
            consensus,
            mailbox: MailboxApi::new(options.request_timeout),
            links: Links::new(tracker.clone(), shutdown.clone()),
            options,
            state: Mutex::new(State::new(Core::new(cfg, seed))),
            wake: Notify::new(),
            fetched: Notify::new(),
            waiters: Mutex::default(),
            incoming,
            counters: Counters::default(),
            files_dir: home.join("files"),
            origin: tokio::time::Instant::now(),
            store_jobs,
            tracker: tracker.clone(),
            shutdown: shutdown.clone(),
            ratchets: Mutex::new(()),
        });
        {
            let mut st = inner.lock();
            driver::restore(&inner, &mut st)?;
        }
        tracker.spawn(driver::run(inner.clone()));
        Ok(Client {
            inner,
            tracker,
            shutdown,
        })
    }

    /// Stops the background tasks and waits for them (storage jobs already
    /// queued are finished first).
    pub async fn shutdown(self) {
        self.shutdown.cancel();
        self.tracker.close();
        self.tracker.wait().await;
    }

    /// The name this client goes by in its invitations.
    pub fn name(&self) -> &str {
        &self.inner.profile.name
    }

    /// This client's identity public key.
    pub fn identity(&self) -> IdentityPublic {
        self.inner.identity.public()
    }

    /// Where received files are saved.
    pub fn files_dir(&self) -> &Path {
        &self.inner.files_dir
    }

    /// Creates an invitation: a queue at the home provider for the new
    /// contact, and the string to hand over out of band. `name` is the
    /// local name for the contact; without one, the name they suggest is
    /// used when they accept.
    pub async fn invite(&self, name: Option<&str>) -> Result<String> {
        let contacts = self.inner.store.contacts()?;
        let (local_name, provisional) = match name {
            Some(n) => {
                check_name(n)?;
                if contacts.iter().any(|c| c.name == n) {
                    return Err(Error::ContactExists { name: n.to_owned() });
                }
                (n.to_owned(), false)
            }
            None => {
                let mut i = 1;
                while contacts.iter().any(|c| c.name == format!("invite-{i}")) {
                    i += 1;
                }
                (format!("invite-{i}"), true)
            }
        };
        let provider = self.inner.profile.home_provider;
        let http = self.inner.provider_endpoint(&provider)?;
        let mut secret = [0u8; 32];
        {
            use rand::Rng;
            rand::rng().fill_bytes(&mut secret);
        }
        let mut rng = StdRng::from_rng(&mut rand::rng());
        let queue = self
            .inner
            .mailbox
            .create_queue(&mut rng, provider, &http)
            .await?;
        let invitation = Invitation::new(
            self.identity(),
            self.inner.identity.pq_public().clone(),
            provider,
            queue.queue,
            secret,
            self.inner.profile.name.clone(),
        )?;
        self.inner.store.add_contact(&ContactRecord {
            name: local_name,
            state: ContactState::Invited,
            identity: None,
            address: None,
            secret,
            inbox: queue,
            created_ms: now_ms(),
            provisional_name: provisional,
            pq_identity: None,
            known_to_them: true,
        })?;
        self.refresh_queues()?;
        invitation.to_text()
    }

    /// Accepts an invitation: creates a queue for the inviter at the home
    /// provider and sends them a hello through the mixnet, sealed from this
    /// identity. Returns the contact's local name (`name`, or the one the
    /// invitation suggests). Messages can be sent right away.
    pub async fn accept(&self, invitation: &str, name: Option<&str>) -> Result<String> {
        let inv = Invitation::parse(invitation)?;
        if inv.identity == self.identity() {
            return Err(Error::OwnInvitation);
        }
        let contacts = self.inner.store.contacts()?;
        if contacts
            .iter()
            .any(|c| c.address == Some((inv.provider, inv.queue)))
        {
            return Err(Error::ContactExists {
                name: contacts
                    .iter()
                    .find(|c| c.address == Some((inv.provider, inv.queue)))
                    .map(|c| c.name.clone())
                    .unwrap_or_default(),
            });
        }
        let local_name = name.unwrap_or(&inv.name).to_owned();
        check_name(&local_name)?;
        if contacts.iter().any(|c| c.name == local_name) {
            return Err(Error::ContactExists { name: local_name });
        }
        let consensus = self.inner.current_consensus()?;
        if consensus.node(&inv.provider).is_none() {
            return Err(Error::Unreachable {
                reason: "the invitation's mailbox provider is not in the current consensus".into(),
            });
        }
        let provider = self.inner.profile.home_provider;
        let http = self.inner.provider_endpoint(&provider)?;
        let mut rng = StdRng::from_rng(&mut rand::rng());
        let queue = self
            .inner
            .mailbox
            .create_queue(&mut rng, provider, &http)
            .await?;
        let hello = Body::Hello {
            reply_provider: provider,
            reply_queue: queue.queue,
            name: self.inner.profile.name.clone(),
        };
        let record = ContactRecord {
            name: local_name.clone(),
            state: ContactState::Established,
            identity: Some(inv.identity),
            address: Some((inv.provider, inv.queue)),
            secret: inv.secret,
            inbox: queue,
            created_ms: now_ms(),
            provisional_name: false,
            pq_identity: Some(inv.pq_identity.clone()),
            known_to_them: false,
        };
        self.inner.store.add_contact(&record)?;
        self.refresh_queues()?;
        self.queue_message(&record, hello).await?;
        Ok(local_name)
    }

    /// The contacts.
    pub fn contacts(&self) -> Result<Vec<ContactInfo>> {
        Ok(self
            .inner
            .store
            .contacts()?
            .into_iter()
            .map(|c| ContactInfo {
                established: c.state == ContactState::Established,
                name: c.name,
            })
            .collect())
    }

    /// The safety number of the relation with `contact`, to compare out of band.
    pub fn safety_number(&self, contact: &str) -> Result<String> {
        let c = self.contact(contact)?;
        let theirs = c.identity.ok_or_else(|| Error::ContactPending {
            name: contact.to_owned(),
        })?;
        let theirs_pq = c.pq_identity.ok_or_else(|| Error::LegacyContact {
            name: contact.to_owned(),
        })?;
        Ok(safety_number(
            (&self.identity(), self.inner.identity.pq_public()),
            (&theirs, &theirs_pq),
        ))
    }

    fn contact(&self, name: &str) -> Result<ContactRecord> {
        self.inner
            .store
            .contact(name)?
            .ok_or_else(|| Error::UnknownContact {
                name: name.to_owned(),
            })
    }

    /// Sends a text message.
    pub async fn send_text(&self, contact: &str, text: &str) -> Result<SendHandle> {
        self.send(contact, Body::Text(text.to_owned())).await
    }

    /// Sends a file.
    pub async fn send_file(&self, contact: &str, path: &Path) -> Result<SendHandle> {
        let meta = std::fs::metadata(path).map_err(|source| Error::File {
            path: path.to_owned(),
            source,
        })?;
        if !meta.is_file() {
            return Err(Error::File {
                path: path.to_owned(),
                source: std::io::Error::other("not a regular file"),
            });
        }
        if meta.len() > MAX_MESSAGE_SIZE as u64 {
            return Err(Error::TooLarge {
                size: usize::try_from(meta.len()).unwrap_or(usize::MAX),
                max: MAX_MESSAGE_SIZE,
            });
        }
        let data = std::fs::read(path).map_err(|source| Error::File {
            path: path.to_owned(),
            source,
        })?;
        let name = path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_else(|| "file".into());
        self.send(contact, Body::File { name, data }).await
    }

    /// Sends a message. Returns once it is stored in the outbox (it will be
    /// sent even if the client restarts); the handle resolves when it is
    /// delivered.
    pub async fn send(&self, contact: &str, body: Body) -> Result<SendHandle> {
        let c = self.contact(contact)?;
        if c.state != ContactState::Established {
            return Err(Error::ContactPending {
                name: contact.to_owned(),
            });
        }
        self.queue_message(&c, body).await
    }

    async fn queue_message(&self, contact: &ContactRecord, body: Body) -> Result<SendHandle> {
        let size = match &body {
            Body::Text(t) => t.len(),
            Body::File { data, .. } => data.len(),
            Body::Hello { .. } => 0,
        };
        if size > MAX_MESSAGE_SIZE {
            return Err(Error::TooLarge {
                size,
                max: MAX_MESSAGE_SIZE,
            });
        }
        let (Some(theirs), Some((provider, queue))) = (contact.identity, contact.address) else {
            return Err(Error::ContactPending {
                name: contact.name.clone(),
            });
        };
        let Some(theirs_pq) = contact.pq_identity.clone() else {
            return Err(Error::LegacyContact {
                name: contact.name.clone(),
            });
        };
        let kind = if contact.known_to_them {
            SealKind::Contact
        } else {
            SealKind::Named
        };
        let inner = self.inner.clone();
        let contact_name = contact.name.clone();
        let secret = contact.secret;
        let inbox = contact.inbox.queue;
        let (id, message) = tokio::task::spawn_blocking(move || -> Result<_> {
            let mut rng = rand::rng();
            let id = MessageId::random(&mut rng);
            let envelope = Envelope::new(id, now_ms(), body);
            let to = (&theirs, &theirs_pq);
            // The ratchet lock is held until the advanced state is stored
            // with the message (below).
            let _ratchet_guard = inner.ratchet_lock();
            let (sealed, ratchet) = match inner.store.ratchet(&inbox)? {
                _ if matches!(envelope.body, Body::Hello { .. }) => {
                    let (sealed, r) =
                        seal::seal_hello(&mut rng, &inner.identity, to, &queue, &envelope)?;
                    (sealed, Some(r))
                }
                Some(mut r) if r.can_send() => {
                    (seal::seal_ratcheted(&mut r, &queue, &envelope)?, Some(r))
                }
                // The one who accepted, before the inviter's first message:
                // post-quantum sealed, not yet ratcheted.
                _ => (
                    seal::seal(&mut rng, &inner.identity, to, &queue, &envelope, kind)?,
                    None,
                ),
            };
            let key = FragmentKey::derive(&secret, &queue);
            let bodies = fragment::split(&mut rng, &key, &queue, id, &sealed)?;
            let frags: Vec<OutFragment> = bodies
                .into_iter()
                .map(|b| OutFragment {
                    deposit_id: MessageId::random(&mut rng),
                    body: b.to_vec(),
                    acked: false,
                })
                .collect();
            let message = OutMessage {
                contact: contact_name,
                fragments: u32::try_from(frags.len()).unwrap_or(u32::MAX),
                acked: 0,
                state: OutState::Sending,
                created_ms: now_ms(),
                provider,
                queue,
            };
            inner.store.enqueue_ratcheted(
                id,
                &message,
                &frags,
                ratchet.as_ref().map(|r| (&inbox, r)),
            )?;
            Ok((id, message))
        })
        .await
        .map_err(|_| Error::Closed)??;
        let (tx, rx) = watch::channel(Progress {
            acked: 0,
            total: message.fragments,
            state: OutState::Sending,
        });
        self.inner
            .waiters
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(id, tx);
        {
            let pending: Vec<u32> = (0..message.fragments).collect();
            let now = self.inner.now();
            let mut st = self.inner.lock();
            st.core.queue_message(
                id,
                Destination { provider, queue },
                message.fragments,
                &pending,
                now,
            );
        }
        self.inner.wake.notify_one();
        Ok(SendHandle {
            id,
            rx,
            max_tries: self.inner.options.max_tries,
        })
    }

    /// Progress of a message sent earlier (also across restarts).
    pub fn message_progress(&self, id: &MessageId) -> Result<Option<Progress>> {
        Ok(self.inner.store.out_message(id)?.map(|m| Progress {
            acked: m.acked,
            total: m.fragments,
            state: m.state,
        }))
    }

    /// New messages as they arrive.
    pub fn incoming(&self) -> Incoming {
        Incoming {
            rx: self.inner.incoming.subscribe(),
        }
    }

    /// The inbox, oldest first (only unread messages if `unread_only`).
    pub fn inbox(&self, unread_only: bool) -> Result<Vec<(u64, Received)>> {
        self.inner.store.inbox(unread_only)
    }

    /// Marks inbox entries read.
    pub fn mark_read(&self, seqs: &[u64]) -> Result<()> {
        self.inner.store.mark_read(seqs)
    }

    /// Fetches from every queue now (the background loop also does, every
    /// fetch interval) and waits for those fetches, and the pages after
    /// them, to be dealt with. Returns how many messages were delivered; an
    /// error if nothing was and some fetch failed.
    pub async fn fetch_now(&self) -> Result<u64> {
        let delivered_before = self.inner.counters.delivered.load(Ordering::Relaxed);
        let asked = self.inner.now();
        {
            let mut st = self.inner.lock();
            st.fetch_failures = 0;
            st.core.fetch_now(asked);
        }
        self.inner.wake.notify_one();
        loop {
            let done = self.inner.fetched.notified();
            tokio::pin!(done);
            done.as_mut().enable();
            if !self.inner.lock().core.fetching(asked) {
                break;
            }
            tokio::select! {
                _ = self.shutdown.cancelled() => return Err(Error::Closed),
                _ = done => {}
                // A fetch still out after the request timeout has failed.
                _ = tokio::time::sleep(self.inner.options.request_timeout * 2) => break,
            }
        }
        // What those fetches completed is assembled and delivered by storage
        // jobs: dispatch them, then wait for them.
        driver::pump(&self.inner);
        let (tx, rx) = tokio::sync::oneshot::channel();
        self.inner.store_job(move |_| {
            let _ = tx.send(());
        });
        let _ = rx.await;
        let delivered = self.inner.counters.delivered.load(Ordering::Relaxed) - delivered_before;
        let failures = self.inner.lock().fetch_failures;
        if delivered == 0 && failures > 0 {
            return Err(Error::Unreachable {
                reason: format!("{failures} fetch(es) from the mailbox provider failed"),
            });
        }
        Ok(delivered)
    }

    fn refresh_queues(&self) -> Result<()> {
        let mut st = self.inner.lock();
        driver::refresh_queues(&self.inner, &mut st)?;
        drop(st);
        self.inner.wake.notify_one();
        Ok(())
    }

    /// Counters since start.
    pub fn stats(&self) -> ClientStats {
        let c = &self.inner.counters;
        let load = |a: &AtomicU64| a.load(Ordering::Relaxed);
        ClientStats {
            real_sent: load(&c.real_sent),
            retransmissions: load(&c.retransmissions),
            drop_cover_sent: load(&c.drop_cover_sent),
            loop_cover_sent: load(&c.loop_cover_sent),
            loops_returned: self.inner.lock().core.stats().loops_returned,
            acks: load(&c.acks),
            link_drops: self.inner.links.stats().dropped.load(Ordering::Relaxed),
            bad_entries: load(&c.bad_entries),
            delivered: load(&c.delivered),
        }
    }

    /// Messages still being sent (stored in the outbox, not all acknowledged).
    pub fn outbox_pending(&self) -> Result<usize> {
        Ok(self
            .inner
            .store
            .out_messages()?
            .iter()
            .filter(|(_, m)| m.state == OutState::Sending)
            .count())
    }

    /// Packets waiting to be sent (not counting those in flight).
    pub fn pending_packets(&self) -> usize {
        self.inner.lock().core.waiting()
    }

    /// Mixes this client currently avoids because packets through them
    /// were not acknowledged.
    pub fn suspected_nodes(&self) -> HashSet<NodeId> {
        self.inner.lock().core.suspected(self.inner.now())
    }

    /// The queue id a contact deposits into (for tests and diagnostics).
    pub fn inbox_queue_of(&self, contact: &str) -> Result<QueueId> {
        Ok(self.contact(contact)?.inbox.queue)
    }

    /// The home provider.
    pub fn home_provider(&self) -> NodeId {
        self.inner.profile.home_provider
    }

    #[doc(hidden)]
    pub fn owned_queues(&self) -> Result<Vec<OwnedQueue>> {
        let mut out = vec![
            self.inner.profile.ack_queue.clone(),
            self.inner.profile.loop_queue.clone(),
        ];
        out.extend(
            self.inner
                .store
                .contacts()?
                .into_iter()
                .map(|c| c.inbox.clone()),
        );
        Ok(out)
    }
}

/// The client's futures can run on any runtime thread (a daemon serves
/// several commands at once from `tokio::spawn`ed tasks): a compile-time check.
#[cfg(test)]
#[allow(dead_code)]
fn client_futures_are_send(client: &Client, path: &Path) {
    fn send<T: Send>(_: T) {}
    send(client.invite(None));
    send(client.accept("", None));
    send(client.send_text("", ""));
    send(client.send_file("", path));
    send(client.fetch_now());
}
