//! Helpers shared by the integration tests: in-process authority networks on
//! loopback with a shared offset clock, and signed node descriptors.
#![allow(dead_code, unreachable_pub)]

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use murmur_directory::{
    AuthorityConfig, AuthorityHandle, AuthorityPin, DirectoryClient, start_authority_on,
};
use murmur_net::clock::{Clock, OffsetClock};
use murmur_net::http::HttpClient;
use murmur_wire::ed25519_dalek::SigningKey;
use murmur_wire::{
    Descriptor, EpochKey, IdentityKey, Role, SignedConsensus, SignedDescriptor, SphinxPublicKey,
};
use tokio_util::sync::CancellationToken;

pub const EPOCH: u64 = 60;

pub fn key(seed: u8) -> SigningKey {
    SigningKey::from_bytes(&[seed; 32])
}

pub fn ident(k: &SigningKey) -> IdentityKey {
    IdentityKey::from(&k.verifying_key())
}

/// A descriptor for node `seed` with keys for `first..first+count`.
pub fn descriptor(
    seed: u8,
    role: Role,
    port: u16,
    first: u64,
    count: u64,
    published_at: u64,
) -> SignedDescriptor {
    let k = key(seed);
    let d = Descriptor {
        version: murmur_wire::directory::DESCRIPTOR_VERSION,
        identity: ident(&k),
        role,
        packet_addr: SocketAddr::from(([127, 0, 0, 1], port)),
        http_addr: (role == Role::Mailbox).then(|| SocketAddr::from(([127, 0, 0, 2], port))),
        link_key: murmur_wire::LinkSecretKey::derive(&k.to_bytes())
            .public()
            .clone(),
        sphinx_keys: (first..first + count)
            .map(|e| EpochKey {
                epoch: e,
                key: SphinxPublicKey([seed ^ (e as u8); 32]),
            })
            .collect(),
        published_at,
    };
    SignedDescriptor::sign(&d, &k).unwrap()
}

/// 9 mixes and 2 mailboxes with keys for `first..first+3`.
pub fn network_descriptors(first: u64, published_at: u64) -> Vec<SignedDescriptor> {
    let mut out: Vec<_> = (0..9u8)
        .map(|i| {
            descriptor(
                100 + i,
                Role::Mix,
                20_000 + u16::from(i),
                first,
                3,
                published_at,
            )
        })
        .collect();
    out.extend((0..2u8).map(|i| {
        descriptor(
            150 + i,
            Role::Mailbox,
            21_000 + u16::from(i),
            first,
            3,
            published_at,
        )
    }));
    out
}

/// A clock placed `into_ms` milliseconds into an epoch of `EPOCH` seconds.
pub fn clock_at(into_ms: u64) -> (OffsetClock, u64) {
    let clock = OffsetClock::new();
    let now = clock.now().as_millis() as u64;
    let l = EPOCH * 1000;
    let next = (now / l + 1) * l;
    clock.set_offset_ms((next + into_ms - now) as i64);
    let epoch = clock.now_secs() / EPOCH;
    (clock, epoch)
}

/// Moves `clock` to `ms` milliseconds (unix) exactly.
pub fn set_time_ms(clock: &OffsetClock, ms: u64) {
    let base = murmur_net::clock::SystemClock.now().as_millis() as i64;
    clock.set_offset_ms(ms as i64 - base);
}

/// Admits every node key the tests make (`key(seed)`) and turns the
/// reachability probe off: these descriptors name addresses nothing listens
/// on. Admission and the probe are tested in `admission.rs`.
pub fn admit_test_nodes(cfg: &mut AuthorityConfig) {
    cfg.admission.nodes = (0..=255u8).map(|s| ident(&key(s)).to_base58()).collect();
    cfg.admission.probe = false;
}

pub fn config(dir: &std::path::Path) -> AuthorityConfig {
    let mut cfg = AuthorityConfig::new(dir);
    cfg.epoch_secs = EPOCH;
    cfg.timing.bootstrap_window_ms = 300;
    cfg.timing.tick_ms = 50;
    cfg.timing.peer_timeout_ms = 1000;
    admit_test_nodes(&mut cfg);
    cfg
}

pub struct Net {
    pub clock: OffsetClock,
    pub shutdown: CancellationToken,
    pub keys: Vec<SigningKey>,
    pub addrs: Vec<SocketAddr>,
    pub dirs: Vec<tempfile::TempDir>,
    pub configs: Vec<AuthorityConfig>,
    pub handles: Vec<Option<AuthorityHandle>>,
    pub threshold: usize,
}

impl Net {
    /// Starts `n` authorities (threshold `k`) on loopback sharing `clock`.
    pub async fn start(n: usize, k: usize, clock: OffsetClock) -> Self {
        Self::start_with(n, k, clock, |_, _| {}).await
    }

    /// Like `start`, letting `tweak(i, config)` change authority i's config.
    pub async fn start_with(
        n: usize,
        k: usize,
        clock: OffsetClock,
        tweak: impl Fn(usize, &mut AuthorityConfig),
    ) -> Self {
        let mut listeners = Vec::new();
        let mut addrs = Vec::new();
        for _ in 0..n {
            let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
            addrs.push(l.local_addr().unwrap());
            listeners.push(l);
        }
        let keys: Vec<SigningKey> = (0..n).map(|i| key(1 + i as u8)).collect();
        let dirs: Vec<_> = (0..n).map(|_| tempfile::tempdir().unwrap()).collect();
        let shutdown = CancellationToken::new();
        let mut configs = Vec::new();
        let mut handles = Vec::new();
        for (i, listener) in listeners.into_iter().enumerate() {
            let mut cfg = config(dirs[i].path());
            cfg.listen = addrs[i];
            cfg.threshold = k;
            cfg.peers = (0..n)
                .filter(|j| *j != i)
                .map(|j| AuthorityPin {
                    addr: addrs[j],
                    key: ident(&keys[j]),
                })
                .collect();
            tweak(i, &mut cfg);
            let h = start_authority_on(
                listener,
                cfg.clone(),
                keys[i].clone(),
                Arc::new(clock.clone()),
                shutdown.clone(),
            )
            .await
            .unwrap();
            configs.push(cfg);
            handles.push(Some(h));
        }
        Self {
            clock,
            shutdown,
            keys,
            addrs,
            dirs,
            configs,
            handles,
            threshold: k,
        }
    }

    pub fn endpoints(&self) -> Vec<AuthorityPin> {
        self.keys
            .iter()
            .zip(&self.addrs)
            .map(|(k, a)| AuthorityPin {
                addr: *a,
                key: ident(k),
            })
            .collect()
    }

    pub fn client(&self) -> DirectoryClient {
        DirectoryClient::new(
            self.endpoints(),
            self.threshold,
            HttpClient::new(Duration::from_secs(2)),
        )
        .unwrap()
    }

    pub async fn stop(&mut self, i: usize) {
        if let Some(h) = self.handles[i].take() {
            h.stop().await;
        }
    }

    pub async fn restart(&mut self, i: usize) {
        let h = murmur_directory::start_authority(
            self.configs[i].clone(),
            self.keys[i].clone(),
            Arc::new(self.clock.clone()),
            self.shutdown.clone(),
        )
        .await
        .unwrap();
        self.handles[i] = Some(h);
    }

    pub fn now(&self) -> u64 {
        self.clock.now_secs()
    }

    pub async fn shutdown(mut self) {
        self.shutdown.cancel();
        for h in self.handles.iter_mut() {
            if let Some(h) = h.take() {
                h.wait().await;
            }
        }
    }
}

/// GETs `path` from `addr`.
pub async fn get(addr: SocketAddr, path: &str) -> (u16, Vec<u8>) {
    let c = HttpClient::new(Duration::from_secs(2));
    let (s, b) = c.get(addr, path, 16 << 20).await.unwrap();
    (s.as_u16(), b.to_vec())
}

/// The document authority `addr` serves for `epoch`, if any.
pub async fn served(addr: SocketAddr, epoch: u64) -> Option<SignedConsensus> {
    let (status, body) = get(addr, &format!("/v1/consensus/{epoch}")).await;
    (status == 200).then(|| SignedConsensus::from_bytes(&body).unwrap())
}

/// Polls `f` every 50 ms until it returns `Some`, for at most `secs`.
pub async fn eventually<T, F, Fut>(secs: u64, what: &str, mut f: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = tokio::time::Instant::now() + Duration::from_secs(secs);
    loop {
        if let Some(v) = f().await {
            return v;
        }
        if tokio::time::Instant::now() > deadline {
            panic!("timed out waiting for {what}");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Waits until every listed authority serves a document for `epoch` with
/// `sigs` signatures; returns them.
pub async fn all_serve(addrs: &[SocketAddr], epoch: u64, sigs: usize) -> Vec<SignedConsensus> {
    eventually(
        15,
        &format!("epoch {epoch} with {sigs} signatures"),
        || async {
            let mut docs = Vec::new();
            for a in addrs {
                match served(*a, epoch).await {
                    Some(d) if d.signatures.len() >= sigs => docs.push(d),
                    _ => return None,
                }
            }
            Some(docs)
        },
    )
    .await
}

/// The value of metric sample `name` (with labels, as printed) on `addr`.
pub async fn metric(addr: SocketAddr, sample: &str) -> f64 {
    let (_, body) = get(addr, "/metrics").await;
    let text = String::from_utf8(body).unwrap();
    text.lines()
        .find_map(|l| l.strip_prefix(sample).and_then(|v| v.strip_prefix(' ')))
        .map(|v| v.trim().parse().unwrap())
        .unwrap_or(0.0)
}
