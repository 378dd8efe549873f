//! The directory authority: accepts node descriptors, votes, computes and
//! signs the consensus with its peers, and serves it over HTTP.
//!
//! One protocol loop per authority (`tick`) drives the rounds for the
//! current and the next epoch; HTTP handlers only read the rounds and only
//! write descriptors. The protocol is described step by step in
//! `docs/directory.md`.

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use bytes::Bytes;
use http::{Method, Request, StatusCode};
use hyper::body::Incoming;
use murmur_wire::directory::{MAX_DESCRIPTOR_SIZE, VOTE_VERSION};
use murmur_wire::ed25519_dalek::SigningKey;
use murmur_wire::policy::epoch_at;
use murmur_wire::{
    AuthoritySet, Consensus, Descriptor, IdentityKey, LinkPublicKey, NetworkParams, NodeId,
    SignedConsensus, SignedDescriptor, SignedVote, VerifiedDescriptor, Vote,
};
use prometheus_client::registry::Registry;
use sha2::{Digest, Sha256};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::admission::{
    AdmissionList, Admitted, FileStamp, LinkHandshakeProbe, ProbeState, ReachabilityProbe,
    host_key, is_routable, subnet_key,
};
use crate::client::MAX_CONSENSUS_SIZE;
use crate::config::{AdmissionMode, AuthorityConfig};
use crate::consensus::{self, quorum};
use crate::error::Error;
use crate::metrics::{EpochLabel, Metrics, OutcomeLabel, ReasonLabel, StatusLabel};
use crate::pin::AuthorityPin;
use crate::store::{Kind, Store};
use murmur_net::clock::Clock;
use murmur_net::http::{self as h, HttpClient, HttpResponse, POSTCARD};

/// Largest `POST /v1/descriptors` body: a signed descriptor's wire form.
pub const MAX_DESCRIPTOR_UPLOAD: usize = MAX_DESCRIPTOR_SIZE + 80;

/// A running authority.
#[derive(Debug)]
pub struct AuthorityHandle {
    /// The bound HTTP address.
    pub addr: SocketAddr,
    /// The authority's public key.
    pub key: IdentityKey,
    stop: CancellationToken,
    tracker: TaskTracker,
}

impl AuthorityHandle {
    /// This authority as clients pin it.
    pub fn endpoint(&self) -> AuthorityPin {
        AuthorityPin {
            addr: self.addr,
            key: self.key,
        }
    }

    /// Stops this authority (HTTP server and protocol loop) and waits for it.
    pub async fn stop(self) {
        self.stop.cancel();
        self.tracker.wait().await;
    }

    /// Waits until the authority has stopped (after its shutdown token fired).
    pub async fn wait(self) {
        self.tracker.wait().await;
    }
}

/// Starts an authority in this process: loads its state from the data
/// directory, binds its HTTP listener and runs its protocol loop until
/// `shutdown` is cancelled (or [`AuthorityHandle::stop`]).
pub async fn start_authority(
    config: AuthorityConfig,
    identity: SigningKey,
    clock: Arc<dyn Clock>,
    shutdown: CancellationToken,
) -> Result<AuthorityHandle, Error> {
    let listen = config.listen;
    let listener = tokio::net::TcpListener::bind(listen)
        .await
        .map_err(|source| Error::Bind {
            addr: listen,
            source,
        })?;
    start_authority_on(listener, config, identity, clock, shutdown).await
}

/// Like [`start_authority`] on a listener the caller already bound
/// (`config.listen` is ignored). Lets a caller that starts several
/// authorities (devnet, tests) learn every address before writing the
/// peers into each configuration.
pub async fn start_authority_on(
    listener: tokio::net::TcpListener,
    config: AuthorityConfig,
    identity: SigningKey,
    clock: Arc<dyn Clock>,
    shutdown: CancellationToken,
) -> Result<AuthorityHandle, Error> {
    let probe = Arc::new(LinkHandshakeProbe {
        timeout: Duration::from_millis(config.admission.probe_timeout_ms),
    });
    start_authority_with_probe(listener, config, identity, clock, probe, shutdown).await
}

/// Like [`start_authority_on`], with another reachability probe than the
/// link handshake (used when `admission.probe` is on).
pub async fn start_authority_with_probe(
    listener: tokio::net::TcpListener,
    mut config: AuthorityConfig,
    identity: SigningKey,
    clock: Arc<dyn Clock>,
    probe: Arc<dyn ReachabilityProbe>,
    shutdown: CancellationToken,
) -> Result<AuthorityHandle, Error> {
    let me = IdentityKey::from(&identity.verifying_key());
    let (peers, set) = config.validate(me)?;
    // `load` made a file's relative paths relative to it; an in-process
    // configuration's relative list file lives in the data directory.
    if config.admission.list_file.is_relative() {
        config.admission.list_file = config.data_dir.join(&config.admission.list_file);
    }
    let admitted = Admitted {
        config: config.admission.node_keys()?.into_iter().collect(),
        list: AdmissionList::load(&config.admission.list_file, &me)?,
        stamp: Some(FileStamp::of(&config.admission.list_file)),
    };
    let store = Store::open(&config.data_dir)?;
    let metrics = Metrics::default();
    let registry = metrics.register();
    let http = HttpClient::new(Duration::from_millis(config.timing.peer_timeout_ms.max(1)));
    let started_ms = now_ms(clock.as_ref());
    let authority = Arc::new(Authority {
        params: config.network_params(),
        vote_limit: vote_response_limit(set.keys().len(), config.limits.max_descriptors),
        key: identity,
        me,
        peers,
        set,
        clock,
        store,
        http,
        metrics,
        registry,
        started_ms,
        state: Mutex::new(State::default()),
        admitted: Mutex::new(admitted),
        probe_wake: tokio::sync::Notify::new(),
        cfg: config,
    });
    authority.load();

    let stop = shutdown.child_token();
    let tracker = TaskTracker::new();
    let limits = authority.cfg.limits.server();
    let handler_auth = authority.clone();
    let handler = move |req: Request<Incoming>| {
        let a = handler_auth.clone();
        async move { a.handle(req).await }
    };
    let addr = listener.local_addr().map_err(|source| Error::Bind {
        addr: authority.cfg.listen,
        source,
    })?;
    tracker.spawn(h::serve_with_metrics(
        listener,
        handler,
        limits,
        authority.metrics.http_server.clone(),
        stop.clone(),
    ));
    let loop_auth = authority.clone();
    let loop_stop = stop.clone();
    tracker.spawn(async move { loop_auth.run(loop_stop).await });
    if authority.cfg.admission.probe {
        let probe_auth = authority.clone();
        let probe_stop = stop.clone();
        tracker.spawn(async move { probe_auth.probe_loop(probe, probe_stop).await });
    }
    tracker.close();
    let (mode, admitted) = (authority.cfg.admission.mode, authority.admitted().len());
    authority
        .metrics
        .admitted_nodes
        .set(i64::try_from(admitted).unwrap_or(i64::MAX));
    tracing::info!(
        ?mode,
        admitted,
        probe = authority.cfg.admission.probe,
        "node admission"
    );
    if authority.set.threshold() < quorum(authority.n()) {
        tracing::warn!(
            k = authority.set.threshold(),
            n = authority.n(),
            "threshold is not a majority of the authorities: a minority could publish a document"
        );
    }
    tracing::info!(%addr, key = %me, n = authority.set.keys().len(), k = authority.set.threshold(), "directory authority started");
    Ok(AuthorityHandle {
        addr,
        key: me,
        stop,
        tracker,
    })
}

/// The value of `name` in a URL query string (`a=1&b=2`).
fn query_param<'a>(query: Option<&'a str>, name: &str) -> Option<&'a str> {
    query?
        .split('&')
        .find_map(|kv| kv.strip_prefix(name)?.strip_prefix('='))
}

fn now_ms(clock: &dyn Clock) -> u64 {
    u64::try_from(clock.now().as_millis()).unwrap_or(u64::MAX)
}

/// The most bytes a `GET /v1/votes/{epoch}` answer may take: up to two
/// votes per authority (an equivocator's pair), each of at most
/// `max_descriptors` descriptors.
fn vote_response_limit(n: usize, max_descriptors: usize) -> usize {
    let per_vote = max_descriptors
        .saturating_mul(MAX_DESCRIPTOR_UPLOAD + 16)
        .saturating_add(1024);
    per_vote.saturating_mul(n.saturating_mul(2)).max(64 * 1024)
}

struct Authority {
    cfg: AuthorityConfig,
    params: NetworkParams,
    key: SigningKey,
    me: IdentityKey,
    peers: Vec<AuthorityPin>,
    set: AuthoritySet,
    clock: Arc<dyn Clock>,
    store: Store,
    http: HttpClient,
    metrics: Metrics,
    registry: Registry,
    started_ms: u64,
    vote_limit: usize,
    state: Mutex<State>,
    /// The admitted node keys (configuration and signed list).
    admitted: Mutex<Admitted>,
    /// Wakes the probe loop when a descriptor is new or moved.
    probe_wake: tokio::sync::Notify,
}

#[derive(Default)]
struct State {
    descriptors: BTreeMap<NodeId, VerifiedDescriptor>,
    /// When the first descriptor was accepted since start (ms), or the start
    /// time if descriptors were loaded from disk.
    first_descriptor_ms: Option<u64>,
    rounds: BTreeMap<u64, Round>,
    published: BTreeMap<u64, SignedConsensus>,
    /// Reachability of the held descriptors' packet addresses.
    probes: BTreeMap<NodeId, ProbeState>,
}

#[derive(Default)]
struct Round {
    /// When this authority voted (ms); `None` until it has.
    voted_ms: Option<u64>,
    /// Verified votes per authority: one, or two for an equivocator.
    votes: BTreeMap<IdentityKey, Vec<SignedVote>>,
    /// The decoded vote of each authority that has exactly one.
    decoded: BTreeMap<IdentityKey, Vote>,
    /// This authority's document and the vote set it was computed from.
    candidate: Option<(SignedConsensus, BTreeSet<IdentityKey>)>,
    /// The vote set a computation last failed for (so failures count once).
    failed_for: Option<BTreeSet<IdentityKey>>,
}

impl Round {
    /// Adds a verified vote; returns whether the vote set changed.
    fn insert_vote(&mut self, metrics: &Metrics, signed: SignedVote, vote: Vote) -> bool {
        let held = self.votes.entry(vote.authority).or_default();
        if held.contains(&signed) || held.len() >= 2 {
            return false;
        }
        held.push(signed);
        if held.len() == 2 {
            metrics.equivocations.inc();
            tracing::warn!(authority = %vote.authority, epoch = vote.epoch, "authority signed two different votes; ignoring both");
            self.decoded.remove(&vote.authority);
        } else {
            self.decoded.insert(vote.authority, vote);
        }
        true
    }

    /// A digest of every vote held (own and peers', equivocators' pairs
    /// included), hex: two authorities with equal digests hold the same votes.
    fn digest(&self) -> String {
        let mut hashes: Vec<[u8; 32]> = self
            .votes
            .values()
            .flatten()
            .map(|v| {
                let mut h = Sha256::new();
                h.update(&v.body);
                h.update(v.signature.0);
                h.finalize().into()
            })
            .collect();
        hashes.sort_unstable();
        let mut h = Sha256::new();
        for x in &hashes {
            h.update(x);
        }
        h.finalize().iter().map(|b| format!("{b:02x}")).collect()
    }

    fn effective(&self) -> BTreeSet<IdentityKey> {
        self.decoded.keys().copied().collect()
    }
}

/// Why a descriptor upload was refused: (status, metric label, message).
struct Refusal(StatusCode, &'static str, String);

impl Authority {
    fn lock(&self) -> MutexGuard<'_, State> {
        // A panic while holding the lock would be a bug; the state is still
        // consistent (every mutation is a single insert/remove), so recover it.
        self.state
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn admitted(&self) -> MutexGuard<'_, Admitted> {
        // Replaced whole on reload: a poisoned value is still consistent.
        self.admitted
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn epoch_ms(&self) -> u64 {
        self.cfg.epoch_secs.saturating_mul(1000)
    }

    fn n(&self) -> usize {
        self.set.keys().len()
    }

    fn window_ms(&self) -> u64 {
        self.cfg.timing.bootstrap_window_ms
    }

    // ---------------------------------------------------------------- load

    fn load(&self) {
        let now = now_ms(self.clock.as_ref());
        let now_secs = now / 1000;
        let epoch = epoch_at(now_secs, self.cfg.epoch_secs);
        let mut st = self.lock();
        for (name, bytes) in self
            .store
            .load_all(Kind::Descriptor, MAX_DESCRIPTOR_UPLOAD as u64)
        {
            let Ok(d) = SignedDescriptor::from_bytes(&bytes).and_then(|s| s.verify()) else {
                tracing::warn!(file = %name, "stored descriptor does not verify; removing it");
                self.store.remove(Kind::Descriptor, &name);
                continue;
            };
            if Store::descriptor_name(&d.id()) != name
                || d.descriptor().last_epoch().unwrap_or(0) < epoch
                || !self.may_list(&d.descriptor().identity)
            {
                self.store.remove(Kind::Descriptor, &name);
                continue;
            }
            st.descriptors.insert(d.id(), d);
        }
        if !st.descriptors.is_empty() {
            st.first_descriptor_ms = Some(self.started_ms);
        }
        for (name, bytes) in self.store.load_all(Kind::Vote, self.vote_limit as u64) {
            let Ok(x) = name.parse::<u64>() else { continue };
            if x < epoch {
                self.store.remove(Kind::Vote, &name);
                continue;
            }
            match SignedVote::from_bytes(&bytes).and_then(|v| {
                let vote = v.verify(&self.me, x)?;
                Ok((v, vote))
            }) {
                Ok((signed, vote)) => {
                    let round = st.rounds.entry(x).or_default();
                    round.voted_ms = Some(self.started_ms);
                    round.insert_vote(&self.metrics, signed, vote);
                }
                Err(e) => {
                    tracing::warn!(epoch = x, error = %e, "stored own vote does not verify; ignoring it");
                }
            }
        }
        for (name, bytes) in self
            .store
            .load_all(Kind::Consensus, MAX_CONSENSUS_SIZE as u64)
        {
            let Ok(x) = name.parse::<u64>() else { continue };
            match self.check_stored_document(&bytes, x) {
                Ok(doc) => {
                    st.published.insert(x, doc);
                }
                Err(e) => {
                    tracing::warn!(epoch = x, error = %e, "stored document does not verify under the configured authorities; ignoring it");
                }
            }
        }
        self.metrics
            .descriptors_stored
            .set(i64::try_from(st.descriptors.len()).unwrap_or(i64::MAX));
        tracing::info!(
            descriptors = st.descriptors.len(),
            documents = st.published.len(),
            "loaded state from the data directory"
        );
    }

    fn check_stored_document(
        &self,
        bytes: &[u8],
        epoch: u64,
    ) -> Result<SignedConsensus, murmur_wire::Error> {
        let signed = SignedConsensus::from_bytes(bytes)?;
        let doc: Consensus =
            postcard::from_bytes(&signed.body).map_err(|source| murmur_wire::Error::Decode {
                what: "consensus",
                source,
            })?;
        // Check signatures and contents as of the document's own start.
        signed.verify(&self.set, doc.valid_after, Some(epoch))?;
        Ok(signed)
    }

    // ---------------------------------------------------------------- HTTP

    async fn handle(self: Arc<Self>, req: Request<Incoming>) -> HttpResponse {
        let resp = self.route(req).await;
        self.metrics
            .http_requests
            .get_or_create(&StatusLabel {
                status: resp.status().as_u16(),
            })
            .inc();
        resp
    }

    async fn route(&self, req: Request<Incoming>) -> HttpResponse {
        let path = req.uri().path().to_owned();
        let method = req.method().clone();
        let segments: Vec<&str> = path.trim_matches('/').split('/').collect();
        match (method, segments.as_slice()) {
            (Method::GET, ["healthz"]) => h::text(StatusCode::OK, "ok"),
            (Method::GET, ["metrics"]) => h::metrics(&self.registry),
            (Method::POST, ["v1", "descriptors"]) => self.post_descriptor(req).await,
            (Method::GET, ["v1", "consensus", "current"]) => self.get_current(),
            (Method::GET, ["v1", "consensus", epoch]) => match epoch.parse::<u64>() {
                Ok(x) => self.get_consensus(x),
                Err(_) => h::text(
                    StatusCode::BAD_REQUEST,
                    "epoch must be a number or \"current\"",
                ),
            },
            (Method::GET, ["v1", "votes", epoch]) => match epoch.parse::<u64>() {
                Ok(x) => self.get_votes(x, query_param(req.uri().query(), "have")),
                Err(_) => h::text(StatusCode::BAD_REQUEST, "epoch must be a number"),
            },
            (Method::GET, ["v1", "candidate", epoch]) => match epoch.parse::<u64>() {
                Ok(x) => self.get_candidate(x),
                Err(_) => h::text(StatusCode::BAD_REQUEST, "epoch must be a number"),
            },
            (
                _,
                ["healthz"]
                | ["metrics"]
                | ["v1", "descriptors"]
                | ["v1", "consensus", _]
                | ["v1", "votes", _]
                | ["v1", "candidate", _],
            ) => h::text(
                StatusCode::METHOD_NOT_ALLOWED,
                "method not allowed on this path",
            ),
            _ => h::text(StatusCode::NOT_FOUND, "no such endpoint"),
        }
    }

    fn encoded(result: murmur_wire::Result<Vec<u8>>) -> HttpResponse {
        match result {
            Ok(bytes) => h::response(StatusCode::OK, POSTCARD, bytes),
            Err(e) => {
                tracing::error!(error = %e, "could not encode a response");
                h::text(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "could not encode the response",
                )
            }
        }
    }

    fn get_current(&self) -> HttpResponse {
        let now = self.clock.now_secs();
        let epoch = epoch_at(now, self.cfg.epoch_secs);
        let st = self.lock();
        // The current epoch's document; during a late round, the previous
        // one while its grace period lasts.
        for x in [epoch, epoch.saturating_sub(1)] {
            if let Some(doc) = st.published.get(&x) {
                let (_, valid_until) = consensus::validity(x, self.cfg.epoch_secs);
                if now < valid_until {
                    return Self::encoded(doc.to_bytes());
                }
            }
        }
        h::text(
            StatusCode::NOT_FOUND,
            format!("no document for the current epoch {epoch} yet"),
        )
    }

    fn get_consensus(&self, x: u64) -> HttpResponse {
        let st = self.lock();
        if let Some(doc) = st.published.get(&x) {
            return Self::encoded(doc.to_bytes());
        }
        let msg = match st.rounds.get(&x).and_then(|r| r.candidate.as_ref()) {
            Some((c, _)) => format!(
                "no document for epoch {x} yet: {} of {} signatures collected",
                c.signatures.len(),
                self.set.threshold()
            ),
            None => format!("no document for epoch {x}"),
        };
        h::text(StatusCode::NOT_FOUND, msg)
    }

    fn get_candidate(&self, x: u64) -> HttpResponse {
        let st = self.lock();
        if let Some(doc) = st.published.get(&x) {
            return Self::encoded(doc.to_bytes());
        }
        match st.rounds.get(&x).and_then(|r| r.candidate.as_ref()) {
            Some((c, _)) => Self::encoded(c.to_bytes()),
            None => h::text(
                StatusCode::NOT_FOUND,
                format!("no candidate for epoch {x} yet"),
            ),
        }
    }

    fn get_votes(&self, x: u64, have: Option<&str>) -> HttpResponse {
        let st = self.lock();
        let Some(round) = st.rounds.get(&x).filter(|r| r.voted_ms.is_some()) else {
            return h::text(StatusCode::NOT_FOUND, format!("no vote for epoch {x} yet"));
        };
        // The asker already holds exactly these votes: nothing to send.
        if have.is_some_and(|d| d == round.digest()) {
            return h::response(StatusCode::NO_CONTENT, POSTCARD, Bytes::new());
        }
        // Own vote first, then every peer vote held (relayed, so that an
        // authority that cannot reach a peer still learns its vote).
        let mut all: Vec<SignedVote> = round.votes.get(&self.me).cloned().unwrap_or_default();
        for (k, vs) in &round.votes {
            if *k != self.me {
                all.extend(vs.iter().cloned());
            }
        }
        Self::encoded(
            postcard::to_stdvec(&all).map_err(|source| murmur_wire::Error::Encode {
                what: "votes",
                source,
            }),
        )
    }

    async fn post_descriptor(&self, req: Request<Incoming>) -> HttpResponse {
        let result = match h::read_body(req, MAX_DESCRIPTOR_UPLOAD).await {
            Ok((_, body)) => self.accept_descriptor(&body),
            Err(resp) => {
                let reason = if resp.status() == StatusCode::PAYLOAD_TOO_LARGE {
                    "oversized"
                } else {
                    "unreadable"
                };
                self.metrics
                    .descriptors_refused
                    .get_or_create(&ReasonLabel { reason })
                    .inc();
                return resp;
            }
        };
        match result {
            Ok(msg) => {
                self.metrics.descriptors_accepted.inc();
                h::text(StatusCode::OK, msg)
            }
            Err(Refusal(status, reason, msg)) => {
                self.metrics
                    .descriptors_refused
                    .get_or_create(&ReasonLabel { reason })
                    .inc();
                tracing::debug!(reason, "descriptor refused");
                h::text(status, msg)
            }
        }
    }

    /// Whether `key`'s descriptors may be kept and voted for: admitted, or
    /// any key in open mode.
    fn may_list(&self, key: &IdentityKey) -> bool {
        self.cfg.admission.mode == AdmissionMode::Open || self.admitted().contains(key)
    }

    /// Open mode's limits for a node nobody admitted: a routable packet
    /// address, and room on its host and in its subnet among the other
    /// identities' live descriptors.
    fn open_limits(&self, st: &State, d: &VerifiedDescriptor, epoch: u64) -> Result<(), Refusal> {
        let a = &self.cfg.admission;
        let ip = d.descriptor().packet_addr.ip();
        if !a.allow_private_addresses && !is_routable(ip) {
            return Err(Refusal(
                StatusCode::FORBIDDEN,
                "unroutable_address",
                "the packet address is not a public address (loopback, private or link-local)"
                    .into(),
            ));
        }
        let (host, subnet) = (host_key(ip), subnet_key(ip));
        let (mut on_host, mut in_subnet) = (0usize, 0usize);
        for o in st.descriptors.values() {
            if o.id() == d.id() || o.descriptor().last_epoch().unwrap_or(0) < epoch {
                continue;
            }
            let other = o.descriptor().packet_addr.ip();
            on_host += usize::from(host_key(other) == host);
            in_subnet += usize::from(subnet_key(other) == subnet);
        }
        if on_host >= a.max_per_address {
            return Err(Refusal(
                StatusCode::FORBIDDEN,
                "address_limit",
                format!(
                    "{on_host} node identities already registered on this host (admission.max_per_address)"
                ),
            ));
        }
        if in_subnet >= a.max_per_subnet {
            return Err(Refusal(
                StatusCode::FORBIDDEN,
                "subnet_limit",
                format!(
                    "{in_subnet} node identities already registered in this subnet (admission.max_per_subnet)"
                ),
            ));
        }
        Ok(())
    }

    /// Whether the held descriptor `d` may go into a vote: still admitted,
    /// and (with probing on) reached at its packet address.
    fn votable(&self, st: &State, d: &VerifiedDescriptor) -> bool {
        self.may_list(&d.descriptor().identity)
            && (!self.cfg.admission.probe
                || st
                    .probes
                    .get(&d.id())
                    .is_some_and(|p| p.reachable_at(d.descriptor().packet_addr)))
    }

    /// Re-reads the signed admission list if `admit`/`revoke` changed it,
    /// and forgets the descriptors of revoked nodes. A list that does not
    /// verify is refused: the previous one stays in force.
    fn reload_admission(&self) {
        let path = &self.cfg.admission.list_file;
        let stamp = FileStamp::of(path);
        if self.admitted().stamp == Some(stamp) {
            return;
        }
        match AdmissionList::load(path, &self.me) {
            Ok(list) => {
                let n = list.len();
                let total = {
                    let mut a = self.admitted();
                    a.list = list;
                    a.stamp = Some(stamp);
                    a.len()
                };
                self.metrics
                    .admitted_nodes
                    .set(i64::try_from(total).unwrap_or(i64::MAX));
                tracing::info!(admitted = n, "admission list reloaded");
            }
            Err(e) => {
                self.admitted().stamp = Some(stamp);
                self.metrics.admission_list_errors.inc();
                tracing::error!(error = %e, "admission list refused; the previous list stays in force");
                return;
            }
        }
        if self.cfg.admission.mode == AdmissionMode::Open {
            return;
        }
        let mut st = self.lock();
        let revoked: Vec<NodeId> = st
            .descriptors
            .values()
            .filter(|d| !self.may_list(&d.descriptor().identity))
            .map(|d| d.id())
            .collect();
        for id in &revoked {
            st.descriptors.remove(id);
            st.probes.remove(id);
            self.store
                .remove(Kind::Descriptor, &Store::descriptor_name(id));
        }
        if !revoked.is_empty() {
            tracing::info!(
                nodes = revoked.len(),
                "dropped the descriptors of revoked nodes"
            );
        }
        self.metrics
            .descriptors_stored
            .set(i64::try_from(st.descriptors.len()).unwrap_or(i64::MAX));
    }

    /// Probes every held descriptor's packet address when it is new or
    /// moved, again every `reprobe_secs` while reachable and every
    /// `probe_retry_secs` while not, at most `max_concurrent_probes` at once.
    async fn probe_loop(
        self: Arc<Self>,
        probe: Arc<dyn ReachabilityProbe>,
        stop: CancellationToken,
    ) {
        let a = &self.cfg.admission;
        let (reprobe, retry) = (
            a.reprobe_secs.saturating_mul(1000),
            a.probe_retry_secs.saturating_mul(1000),
        );
        let mut running = tokio::task::JoinSet::new();
        loop {
            let now = now_ms(self.clock.as_ref());
            let due: Vec<(NodeId, IdentityKey, SocketAddr, LinkPublicKey)> = {
                let mut st = self.lock();
                let State {
                    descriptors,
                    probes,
                    ..
                } = &mut *st;
                probes.retain(|id, _| descriptors.contains_key(id));
                let mut due = Vec::new();
                for d in descriptors.values() {
                    let addr = d.descriptor().packet_addr;
                    let state = probes
                        .entry(d.id())
                        .or_insert_with(|| ProbeState::new(addr));
                    if state.addr != addr {
                        *state = ProbeState::new(addr);
                    }
                    if running.len() + due.len() < a.max_concurrent_probes
                        && state.due(now, reprobe, retry)
                    {
                        state.in_flight = true;
                        due.push((
                            d.id(),
                            d.descriptor().identity,
                            addr,
                            d.descriptor().link_key.clone(),
                        ));
                    }
                }
                due
            };
            for (id, key, addr, link_key) in due {
                let probe = probe.clone();
                running.spawn(async move { (id, addr, probe.probe(key, addr, link_key).await) });
            }
            tokio::select! {
                _ = stop.cancelled() => break,
                _ = self.probe_wake.notified() => {}
                _ = tokio::time::sleep(Duration::from_secs(1)) => {}
                Some(done) = running.join_next(), if !running.is_empty() => {
                    if let Ok((id, addr, outcome)) = done {
                        self.probed(id, addr, outcome);
                    }
                }
            }
        }
        running.shutdown().await;
    }

    fn probed(&self, id: NodeId, addr: SocketAddr, outcome: Result<(), String>) {
        let now = now_ms(self.clock.as_ref());
        let ok = outcome.is_ok();
        self.metrics
            .probes
            .get_or_create(&OutcomeLabel {
                outcome: if ok { "reachable" } else { "unreachable" },
            })
            .inc();
        if let Err(why) = &outcome {
            tracing::debug!(node = %id, reason = %why, "node not reachable at its packet address");
        }
        let mut st = self.lock();
        if let Some(state) = st.probes.get_mut(&id)
            && state.addr == addr
        {
            state.last = Some((now, ok));
            state.in_flight = false;
        }
        let reachable = st
            .descriptors
            .values()
            .filter(|d| {
                st.probes
                    .get(&d.id())
                    .is_some_and(|p| p.reachable_at(d.descriptor().packet_addr))
            })
            .count();
        self.metrics
            .descriptors_reachable
            .set(i64::try_from(reachable).unwrap_or(i64::MAX));
    }

    fn accept_descriptor(&self, body: &Bytes) -> Result<&'static str, Refusal> {
        use murmur_wire::Error as W;
        let signed = SignedDescriptor::from_bytes(body).map_err(|e| {
            let status = if matches!(e, W::WrongLength { .. }) {
                StatusCode::PAYLOAD_TOO_LARGE
            } else {
                StatusCode::BAD_REQUEST
            };
            let reason = if status == StatusCode::PAYLOAD_TOO_LARGE {
                "oversized"
            } else {
                "undecodable"
            };
            Refusal(status, reason, format!("undecodable descriptor: {e}"))
        })?;
        // Admission before the signature: a stranger's upload costs no
        // signature check. (A body that does not decode is left to
        // `verify`, which says why.)
        if let Ok(peek) = postcard::from_bytes::<Descriptor>(&signed.body)
            && !self.may_list(&peek.identity)
        {
            return Err(Refusal(
                StatusCode::FORBIDDEN,
                "not_admitted",
                "this node identity is not admitted by this authority's operator (murmur-directory admit)"
                    .into(),
            ));
        }
        let d = signed.verify().map_err(|e| match e {
            W::BadSignature { .. } | W::InvalidPublicKey { .. } => Refusal(
                StatusCode::FORBIDDEN,
                "bad_signature",
                "descriptor signature does not verify under its identity key".into(),
            ),
            W::Invalid { reason, .. } => Refusal(
                StatusCode::BAD_REQUEST,
                "invalid",
                format!("invalid descriptor: {reason}"),
            ),
            W::WrongLength { .. } => Refusal(
                StatusCode::PAYLOAD_TOO_LARGE,
                "oversized",
                format!("descriptor too large: {e}"),
            ),
            other => Refusal(
                StatusCode::BAD_REQUEST,
                "undecodable",
                format!("undecodable descriptor (unknown role or version?): {other}"),
            ),
        })?;
        let now = now_ms(self.clock.as_ref());
        let epoch = epoch_at(now / 1000, self.cfg.epoch_secs);
        let last = d.descriptor().last_epoch().unwrap_or(0);
        if last < epoch {
            return Err(Refusal(
                StatusCode::UNPROCESSABLE_ENTITY,
                "stale",
                format!(
                    "descriptor has Sphinx keys up to epoch {last}, none for the current epoch {epoch} or later"
                ),
            ));
        }
        let mut st = self.lock();
        if let Some(old) = st.descriptors.get(&d.id()) {
            if old.signed() == d.signed() {
                return Ok("unchanged");
            }
            if old.descriptor().published_at >= d.descriptor().published_at {
                return Err(Refusal(
                    StatusCode::CONFLICT,
                    "duplicate",
                    format!(
                        "a different descriptor from this identity with published_at {} (>= {}) is already held; publish a newer one",
                        old.descriptor().published_at,
                        d.descriptor().published_at
                    ),
                ));
            }
        } else if st.descriptors.len() >= self.cfg.limits.max_descriptors {
            return Err(Refusal(
                StatusCode::SERVICE_UNAVAILABLE,
                "full",
                "this authority holds the most node descriptors it is configured for".into(),
            ));
        }
        let addr = d.descriptor().packet_addr;
        if self.cfg.admission.mode == AdmissionMode::Open
            && !self.admitted().contains(&d.descriptor().identity)
        {
            self.open_limits(&st, &d, epoch)?;
        }
        let claimed = st.descriptors.values().any(|o| {
            o.id() != d.id()
                && o.descriptor().packet_addr == addr
                && o.descriptor().last_epoch().unwrap_or(0) >= epoch
        });
        if claimed {
            return Err(Refusal(
                StatusCode::CONFLICT,
                "address_claimed",
                "packet address is already claimed by another node identity".into(),
            ));
        }
        let link = &d.descriptor().link_key.dh;
        let link_claimed = st.descriptors.values().any(|o| {
            o.id() != d.id()
                && o.descriptor().link_key.dh == *link
                && o.descriptor().last_epoch().unwrap_or(0) >= epoch
        });
        if link_claimed {
            return Err(Refusal(
                StatusCode::CONFLICT,
                "link_key_claimed",
                "link key is already claimed by another node identity".into(),
            ));
        }
        let name = Store::descriptor_name(&d.id());
        let stored = match d.signed().to_bytes() {
            Ok(bytes) => self
                .store
                .put(Kind::Descriptor, &name, &bytes)
                .map_err(|e| e.to_string()),
            Err(e) => Err(e.to_string()),
        };
        if let Err(e) = stored {
            tracing::error!(error = %e, "could not persist a descriptor");
            return Err(Refusal(
                StatusCode::INTERNAL_SERVER_ERROR,
                "storage",
                "could not store the descriptor".into(),
            ));
        }
        let moved = st
            .probes
            .get(&d.id())
            .is_none_or(|p| p.addr != d.descriptor().packet_addr);
        st.descriptors.insert(d.id(), d);
        if moved {
            self.probe_wake.notify_one();
        }
        if st.first_descriptor_ms.is_none() {
            st.first_descriptor_ms = Some(now);
        }
        self.metrics
            .descriptors_stored
            .set(i64::try_from(st.descriptors.len()).unwrap_or(i64::MAX));
        Ok("accepted")
    }

    // ------------------------------------------------------------ protocol

    async fn run(self: Arc<Self>, stop: CancellationToken) {
        let slow = self.cfg.tick();
        // While a round is between its vote and its publication, step
        // faster: each step waits on the peers' previous one, so this is
        // what makes a bootstrap document appear within seconds.
        let fast = slow.min(Duration::from_millis(100));
        loop {
            let wait = if self.round_in_progress() { fast } else { slow };
            tokio::select! {
                _ = stop.cancelled() => break,
                _ = tokio::time::sleep(wait) => {}
            }
            tokio::select! {
                _ = stop.cancelled() => break,
                _ = self.tick() => {}
            }
        }
        tracing::info!("directory authority stopped");
    }

    /// True if a round voted in the last 30 s is not published yet (after
    /// that, a stuck round waits for peers at the normal pace).
    fn round_in_progress(&self) -> bool {
        let now = now_ms(self.clock.as_ref());
        let st = self.lock();
        st.rounds.iter().any(|(x, r)| {
            r.voted_ms.is_some_and(|v| now.saturating_sub(v) < 30_000)
                && !st.published.contains_key(x)
        })
    }

    async fn tick(&self) {
        let now = now_ms(self.clock.as_ref());
        let epoch = now / self.epoch_ms().max(1);
        self.reload_admission();
        self.prune(epoch);
        for x in [epoch, epoch.saturating_add(1)] {
            self.step(x, now).await;
        }
    }

    fn prune(&self, epoch: u64) {
        let keep = self.cfg.timing.keep_epochs.max(2);
        let mut st = self.lock();
        let old_rounds: Vec<u64> = st.rounds.range(..epoch).map(|(x, _)| *x).collect();
        for x in old_rounds {
            st.rounds.remove(&x);
            self.store.remove(Kind::Vote, &x.to_string());
            self.metrics.signatures.remove(&EpochLabel { epoch: x });
        }
        let old_docs: Vec<u64> = st
            .published
            .range(..epoch.saturating_sub(keep))
            .map(|(x, _)| *x)
            .collect();
        for x in old_docs {
            st.published.remove(&x);
            self.store.remove(Kind::Consensus, &x.to_string());
        }
        for x in st
            .published
            .range(..epoch)
            .map(|(x, _)| *x)
            .collect::<Vec<_>>()
        {
            self.metrics.signatures.remove(&EpochLabel { epoch: x });
        }
        let stale: Vec<NodeId> = st
            .descriptors
            .values()
            .filter(|d| d.descriptor().last_epoch().unwrap_or(0) < epoch)
            .map(|d| d.id())
            .collect();
        for id in stale {
            st.descriptors.remove(&id);
            self.store
                .remove(Kind::Descriptor, &Store::descriptor_name(&id));
        }
        self.metrics
            .descriptors_stored
            .set(i64::try_from(st.descriptors.len()).unwrap_or(i64::MAX));
    }

    /// One step of the round for epoch `x`.
    async fn step(&self, x: u64, now: u64) {
        let l = self.epoch_ms();
        let start = x.saturating_mul(l);
        let n = self.n();

        // 1. Vote, when it is time.
        let (need_votes, published) = {
            let mut st = self.lock();
            let published = st.published.get(&x).map(|d| d.signatures.len());
            if published.is_none() {
                let ready = st
                    .first_descriptor_ms
                    .map(|t| t.saturating_add(self.window_ms()));
                let vote_at = ready.map(|r| r.max(start.saturating_sub(l / 2)));
                let voted = st.rounds.get(&x).and_then(|r| r.voted_ms).is_some();
                if !voted && vote_at.is_some_and(|t| now >= t) {
                    self.vote(&mut st, x, now);
                }
            }
            // Until publication, keep comparing vote sets with every peer
            // (cheap when they are equal: the digest matches and nothing is
            // sent): this is how a vote that differs per asker — an
            // equivocation — is found even once all n votes are held.
            let need_votes = st
                .rounds
                .get(&x)
                .filter(|r| published.is_none() && r.voted_ms.is_some())
                .map(Round::digest);
            (need_votes, published)
        };
        if published.is_some_and(|sigs| sigs >= n) {
            return;
        }

        // 2. Fetch the votes we lack (from every peer: they relay).
        if let Some(digest) = need_votes {
            self.fetch_votes(x, &digest).await;
        }

        // 3. Compute when every vote is in, or at the compute time with a
        // quorum. The votes are copied out so that verifying their
        // descriptors does not hold the lock the HTTP handlers need.
        if published.is_none() {
            let job = {
                let st = self.lock();
                st.rounds.get(&x).and_then(|round| {
                    let voted = round.voted_ms?;
                    let compute_at = start
                        .saturating_sub(l / 4)
                        .max(voted.saturating_add(self.window_ms().min(l / 4)));
                    let all_in = round.votes.len() >= n;
                    let effective = round.effective();
                    let changed =
                        round.candidate.as_ref().map(|(_, from)| from) != Some(&effective);
                    ((all_in || now >= compute_at)
                        && effective.len() >= quorum(n)
                        && changed
                        && round.failed_for.as_ref() != Some(&effective))
                    .then(|| {
                        (
                            effective,
                            round.decoded.values().cloned().collect::<Vec<_>>(),
                        )
                    })
                })
            };
            if let Some((effective, votes)) = job {
                let outcome = self.compute(x, &votes);
                let mut st = self.lock();
                if let Some(round) = st.rounds.get_mut(&x) {
                    match outcome {
                        Some(signed) => {
                            // Same bytes as before (the new votes changed
                            // nothing): keep the signatures collected.
                            let signed = match round.candidate.take() {
                                Some((old, _)) if old.body == signed.body => old,
                                _ => signed,
                            };
                            round.candidate = Some((signed, effective));
                        }
                        None => round.failed_for = Some(effective),
                    }
                }
            }
        }

        // 4. Exchange signatures; publish at k; adopt a peer's k-signed document.
        self.exchange_signatures(x, now).await;
    }

    fn vote(&self, st: &mut State, x: u64, now: u64) {
        let vote = Vote {
            version: VOTE_VERSION,
            epoch: x,
            authority: self.me,
            params: self.params.clone(),
            descriptors: consensus::vote_descriptors(
                st.descriptors.values().filter(|d| self.votable(st, d)),
                x,
            ),
        };
        let left_out = consensus::vote_descriptors(st.descriptors.values(), x)
            .len()
            .saturating_sub(vote.descriptors.len());
        let signed = match SignedVote::sign(&vote, &self.key) {
            Ok(s) => s,
            Err(e) => {
                tracing::error!(error = %e, "could not sign a vote");
                return;
            }
        };
        // Persist first: after a restart the authority must serve the same
        // vote, or its peers would see two votes and discard both.
        match signed.to_bytes() {
            Ok(bytes) => {
                if let Err(e) = self.store.put(Kind::Vote, &x.to_string(), &bytes) {
                    tracing::error!(error = %e, "could not persist a vote; not voting");
                    return;
                }
            }
            Err(e) => {
                tracing::error!(error = %e, "could not encode a vote");
                return;
            }
        }
        tracing::info!(
            epoch = x,
            nodes = vote.descriptors.len(),
            left_out_unreachable_or_revoked = left_out,
            "voted"
        );
        let round = st.rounds.entry(x).or_default();
        round.voted_ms = Some(now);
        round.insert_vote(&self.metrics, signed, vote);
    }

    async fn fetch_votes(&self, x: u64, digest: &str) {
        let path = format!("/v1/votes/{x}?have={digest}");
        let fetches = self.peers.iter().map(|p| {
            let path = path.clone();
            async move { (p, self.http.get(p.addr, &path, self.vote_limit).await) }
        });
        let results = futures::future::join_all(fetches).await;
        let mut st = self.lock();
        for (peer, result) in results {
            let votes: Vec<SignedVote> = match result {
                Ok((StatusCode::OK, body)) => match postcard::from_bytes(&body) {
                    Ok(v) => v,
                    Err(e) => {
                        self.metrics.vote_fetches_failed.inc();
                        tracing::debug!(peer = %peer.key, error = %e, "undecodable votes from peer");
                        continue;
                    }
                },
                Ok((status, _)) => {
                    // 404 before the peer has voted is normal; 204: it
                    // holds the same votes as we do.
                    if status != StatusCode::NOT_FOUND && status != StatusCode::NO_CONTENT {
                        self.metrics.vote_fetches_failed.inc();
                    }
                    continue;
                }
                Err(e) => {
                    self.metrics.vote_fetches_failed.inc();
                    tracing::debug!(peer = %peer.key, error = %e, "could not fetch votes");
                    continue;
                }
            };
            let Some(round) = st.rounds.get_mut(&x) else {
                return;
            };
            for signed in votes.into_iter().take(2 * self.n()) {
                let Ok(peek) = postcard::from_bytes::<Vote>(&signed.body) else {
                    self.metrics.votes_refused.inc();
                    continue;
                };
                if peek.authority == self.me {
                    continue;
                }
                if !self.set.contains(&peek.authority) {
                    self.metrics.votes_refused.inc();
                    continue;
                }
                match signed.verify(&peek.authority, x) {
                    Ok(vote) => {
                        if round.insert_vote(&self.metrics, signed, vote) {
                            self.metrics.votes_fetched.inc();
                        }
                    }
                    Err(e) => {
                        self.metrics.votes_refused.inc();
                        tracing::debug!(peer = %peer.key, error = %e, "refused a vote");
                    }
                }
            }
        }
    }

    /// Computes and signs the document for `x` from `votes`; `None` (logged
    /// and counted) if there is none.
    fn compute(&self, x: u64, votes: &[Vote]) -> Option<SignedConsensus> {
        let doc = match consensus::compute(x, votes, self.n(), self.cfg.epoch_secs) {
            Ok(doc) => doc,
            Err(e) => {
                self.metrics.compute_failures.inc();
                tracing::warn!(epoch = x, error = %e, "could not compute a consensus");
                return None;
            }
        };
        if doc.params != self.params {
            tracing::warn!(
                epoch = x,
                "the majority's network parameters differ from this authority's configuration"
            );
        }
        let signed = match SignedConsensus::sign(&doc, &self.key) {
            Ok(s) => s,
            Err(e) => {
                tracing::error!(error = %e, "could not sign a consensus");
                return None;
            }
        };
        self.metrics.documents_computed.inc();
        tracing::info!(
            epoch = x,
            mixes = doc.mixes.len(),
            mailboxes = doc.mailboxes.len(),
            votes = votes.len(),
            "computed and signed a consensus"
        );
        Some(signed)
    }

    fn count_valid(&self, doc: &SignedConsensus) -> usize {
        // merge_signature only ever adds signatures that verify, and
        // SignedConsensus::sign adds ours: all held signatures are valid.
        doc.signatures
            .iter()
            .filter(|s| self.set.contains(&s.authority))
            .count()
    }

    async fn exchange_signatures(&self, x: u64, now: u64) {
        let (body, missing) = {
            let st = self.lock();
            let doc = match st.published.get(&x) {
                Some(d) => d,
                None => match st.rounds.get(&x).and_then(|r| r.candidate.as_ref()) {
                    Some((c, _)) => c,
                    None => return,
                },
            };
            let have: BTreeSet<IdentityKey> = doc.signatures.iter().map(|s| s.authority).collect();
            let missing: Vec<AuthorityPin> = self
                .peers
                .iter()
                .filter(|p| !have.contains(&p.key))
                .cloned()
                .collect();
            (doc.body.clone(), missing)
        };
        let path = format!("/v1/candidate/{x}");
        let fetches = missing.iter().map(|p| {
            let path = path.clone();
            async move { (p, self.http.get(p.addr, &path, MAX_CONSENSUS_SIZE).await) }
        });
        let results = futures::future::join_all(fetches).await;
        let now_secs = now / 1000;
        let mut theirs_same = Vec::new();
        let mut adoptable = None;
        for (peer, result) in results {
            let Ok((StatusCode::OK, bytes)) = result else {
                continue;
            };
            let Ok(doc) = SignedConsensus::from_bytes(&bytes) else {
                tracing::debug!(peer = %peer.key, "undecodable candidate from peer");
                continue;
            };
            if doc.body == body {
                theirs_same.push(doc);
            } else {
                self.metrics.divergent_documents.inc();
                tracing::debug!(peer = %peer.key, epoch = x, "peer's document differs from ours");
                if adoptable.is_none() && doc.verify(&self.set, now_secs, Some(x)).is_ok() {
                    adoptable = Some(doc);
                }
            }
        }

        let mut st = self.lock();
        let State {
            rounds, published, ..
        } = &mut *st;
        let (doc, was_published) = match published.get_mut(&x) {
            Some(d) => (d, true),
            None => match rounds.get_mut(&x).and_then(|r| r.candidate.as_mut()) {
                Some((c, _)) => (c, false),
                None => return,
            },
        };
        if doc.body != body {
            return;
        }
        let before = doc.signatures.len();
        for theirs in &theirs_same {
            for sig in &theirs.signatures {
                if self.set.contains(&sig.authority)
                    && !doc.signatures.iter().any(|s| s.authority == sig.authority)
                {
                    doc.merge_signature(sig);
                }
            }
        }
        let gained = doc.signatures.len() > before;
        let valid = self.count_valid(doc);
        self.metrics
            .signatures
            .get_or_create(&EpochLabel { epoch: x })
            .set(i64::try_from(valid).unwrap_or(i64::MAX));
        if was_published {
            if gained {
                let doc = doc.clone();
                self.persist_document(x, &doc);
            }
            return;
        }
        if valid >= self.set.threshold() {
            let doc = doc.clone();
            self.persist_document(x, &doc);
            published.insert(x, doc);
            self.metrics.documents_published.inc();
            tracing::info!(epoch = x, signatures = valid, "published the consensus");
        } else if let Some(theirs) = adoptable {
            // Ours is under threshold and differs from a document that
            // already has k valid signatures: serve theirs (unsigned by us).
            self.persist_document(x, &theirs);
            published.insert(x, theirs);
            self.metrics.documents_adopted.inc();
            tracing::warn!(
                epoch = x,
                "adopted a peer's threshold-signed document that differs from ours"
            );
        }
    }

    fn persist_document(&self, x: u64, doc: &SignedConsensus) {
        match doc.to_bytes() {
            Ok(bytes) => {
                if let Err(e) = self.store.put(Kind::Consensus, &x.to_string(), &bytes) {
                    tracing::error!(error = %e, "could not persist a document");
                }
            }
            Err(e) => tracing::error!(error = %e, "could not encode a document"),
        }
    }
}
