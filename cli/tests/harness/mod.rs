//! The fault-injection harness: a whole Murmur network of real daemon
//! processes on loopback (`murmur-directory`, `murmur-mixnode`,
//! `murmur-mailbox`, each configured by its own `init` and then trimmed for
//! a test), in-process clients against it, a TCP proxy that can cut,
//! throttle and record a link, a sampler of the children's resident memory,
//! metrics scraping, and the exactly-once check of a recipient's inbox.
//!
//! The daemons are the binaries built next to `murmur` (`cargo test
//! --workspace` builds them; a targeted run builds them here if they are
//! missing or older than their sources).
#![allow(
    dead_code,
    unreachable_pub,
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    missing_docs
)]

pub mod hosts;
pub mod proxy;

use std::collections::HashMap;
use std::fs::OpenOptions;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use murmur_client::network::{AuthorityEntry, NetworkConfig, follow};
use murmur_client::{Body, Client, ClientOptions, ConsensusSource, Passphrase};
use murmur_directory::{AuthorityPin, DirectoryClient};
use murmur_net::http::HttpClient;
use murmur_wire::{IdentityKey, MessageId, NodeId, VerifiedConsensus};
use tokio_util::sync::CancellationToken;

/// The bound every daemon's resident memory is held to during a fault
/// (debug builds; these nodes run at 10–15 MB, and their queues are
/// bounded far below this).
pub const RSS_BOUND_KB: u64 = 64 * 1024;

// ------------------------------------------------------------ binaries

fn bin_dir() -> PathBuf {
    Path::new(env!("CARGO_BIN_EXE_murmur"))
        .parent()
        .unwrap()
        .to_owned()
}

fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .to_owned()
}

fn newest_mtime(path: &Path) -> SystemTime {
    let mut newest = UNIX_EPOCH;
    let Ok(meta) = std::fs::metadata(path) else {
        return newest;
    };
    if meta.is_dir() {
        for e in std::fs::read_dir(path).unwrap().flatten() {
            newest = newest.max(newest_mtime(&e.path()));
        }
    } else if let Ok(m) = meta.modified() {
        newest = m;
    }
    newest
}

/// Path of a daemon binary, built first if it is missing or older than
/// the sources it is made of.
pub fn daemon_bin(name: &str) -> PathBuf {
    static BUILT: OnceLock<()> = OnceLock::new();
    const BINS: [&str; 3] = ["murmur-directory", "murmur-mixnode", "murmur-mailbox"];
    BUILT.get_or_init(|| {
        let root = workspace_root();
        let sources = ["wire", "net", "directory", "node", "mixnode", "mailbox"]
            .iter()
            .map(|c| newest_mtime(&root.join(c).join("src")))
            .chain([newest_mtime(&root.join("Cargo.lock"))])
            .max()
            .unwrap();
        let stale = BINS.iter().any(|b| {
            std::fs::metadata(bin_dir().join(b))
                .and_then(|m| m.modified())
                .map_or(true, |built| built < sources)
        });
        if stale {
            let mut cmd = Command::new(env!("CARGO"));
            cmd.current_dir(&root).args(["build", "--locked", "--bins"]);
            for b in BINS {
                cmd.args(["-p", b]);
            }
            if bin_dir().ends_with("release") {
                cmd.arg("--release");
            }
            let status = cmd.status().unwrap();
            assert!(status.success(), "building the daemons failed");
        }
    });
    bin_dir().join(name)
}

/// A loopback address with a port nothing listens on right now, and that
/// this process has not handed out before (tests run in parallel, and the
/// kernel may give a released port to the next `bind` to port 0).
pub fn free_addr() -> SocketAddr {
    static GIVEN: Mutex<Vec<u16>> = Mutex::new(Vec::new());
    let mut given = GIVEN.lock().unwrap();
    let mut held = Vec::new();
    loop {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = l.local_addr().unwrap();
        if !given.contains(&addr.port()) {
            given.push(addr.port());
            return addr;
        }
        // Keep it bound so that the next try gets another port.
        held.push(l);
    }
}

pub fn now_secs() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

pub fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64
}

// ------------------------------------------------------------ processes

/// One daemon process, started with `run --config`; stdout and stderr go
/// to a log file (level `info`).
pub struct Daemon {
    pub name: String,
    bin: PathBuf,
    pub config: PathBuf,
    pub log: PathBuf,
    child: Option<Child>,
    /// The network namespace it runs in (a host of [`hosts::Hosts`]).
    netns: Option<String>,
}

impl Daemon {
    fn new(name: &str, bin: PathBuf, config: PathBuf, log: PathBuf) -> Self {
        Self {
            name: name.to_owned(),
            bin,
            config,
            log,
            child: None,
            netns: None,
        }
    }

    /// Runs it in the network namespace `netns`, if any.
    fn in_netns(mut self, netns: Option<String>) -> Self {
        self.netns = netns;
        self
    }

    /// Starts the process (again).
    pub fn start(&mut self) {
        assert!(!self.is_running(), "{} is already running", self.name);
        let log = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .unwrap();
        let mut command = match &self.netns {
            // `ip netns exec` enters the namespace and execs the daemon:
            // the child's pid is the daemon's.
            Some(ns) => {
                let mut c = Command::new("ip");
                c.args(["netns", "exec", ns]).arg(&self.bin);
                c
            }
            None => Command::new(&self.bin),
        };
        let child = command
            .args(["run", "--config"])
            .arg(&self.config)
            .env("RUST_LOG", "info")
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .unwrap();
        self.child = Some(child);
    }

    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    pub fn is_running(&mut self) -> bool {
        match &mut self.child {
            Some(c) => c.try_wait().unwrap().is_none(),
            None => false,
        }
    }

    /// SIGKILL: no chance to flush or say goodbye.
    pub fn kill9(&mut self) {
        if let Some(mut c) = self.child.take() {
            c.kill().unwrap();
            c.wait().unwrap();
        }
    }

    /// SIGTERM, then waits for a clean exit.
    pub fn terminate(&mut self) {
        if let Some(mut c) = self.child.take() {
            let ok = Command::new("kill")
                .args(["-TERM", &c.id().to_string()])
                .status()
                .unwrap();
            assert!(ok.success());
            let deadline = Instant::now() + Duration::from_secs(20);
            loop {
                if let Some(status) = c.try_wait().unwrap() {
                    assert!(status.success(), "{} exited with {status}", self.name);
                    return;
                }
                assert!(
                    Instant::now() < deadline,
                    "{} did not stop on SIGTERM",
                    self.name
                );
                std::thread::sleep(Duration::from_millis(20));
            }
        }
    }

    /// The process's log so far.
    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// Runs `bin args`, returns stdout; fails the test on a non-zero exit.
fn run_tool(bin: &Path, args: &[String]) -> String {
    let out = Command::new(bin).args(args).output().unwrap();
    assert!(
        out.status.success(),
        "{} {:?}: {}",
        bin.display(),
        args,
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Sets `dotted.key = value` in a TOML file.
pub fn edit_toml(path: &Path, edits: &[(&str, toml::Value)]) {
    let mut doc: toml::Table = toml::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
    for (key, value) in edits {
        let mut parts: Vec<&str> = key.split('.').collect();
        let last = parts.pop().unwrap();
        let mut table = &mut doc;
        for p in parts {
            table = table
                .entry(p)
                .or_insert_with(|| toml::Value::Table(toml::Table::new()))
                .as_table_mut()
                .unwrap();
        }
        table.insert(last.to_owned(), value.clone());
    }
    std::fs::write(path, toml::to_string(&doc).unwrap()).unwrap();
}

fn int(v: u64) -> toml::Value {
    toml::Value::Integer(v as i64)
}

fn float(v: f64) -> toml::Value {
    toml::Value::Float(v)
}

fn string(v: impl ToString) -> toml::Value {
    toml::Value::String(v.to_string())
}

// ------------------------------------------------------------ the network

/// The shape of a process network.
#[derive(Clone, Debug)]
pub struct NetOptions {
    pub authorities: usize,
    pub threshold: usize,
    /// Mix nodes per layer.
    pub width: usize,
    pub mailboxes: usize,
    pub epoch_secs: u64,
    pub mean_delay_ms: u64,
    pub max_delay_ms: u64,
    /// Node name ("mix-3", "mailbox-1") → the packet address published
    /// for it (a proxy in front of its real port).
    pub public_addrs: HashMap<String, SocketAddr>,
    /// Node name → extra config settings.
    pub node_edits: HashMap<String, Vec<(&'static str, toml::Value)>>,
    /// Run every daemon on a host of its own (a network namespace with its
    /// own address) instead of on loopback.
    pub hosts: Option<Arc<hosts::Hosts>>,
}

impl Default for NetOptions {
    fn default() -> Self {
        Self {
            authorities: 3,
            threshold: 2,
            width: 2,
            mailboxes: 2,
            epoch_secs: 3600,
            mean_delay_ms: 10,
            max_delay_ms: 500,
            public_addrs: HashMap::new(),
            node_edits: HashMap::new(),
            hosts: None,
        }
    }
}

pub struct Authority {
    pub daemon: Daemon,
    pub addr: SocketAddr,
    pub key: IdentityKey,
}

/// A mix node or mailbox process.
pub struct Node {
    pub daemon: Daemon,
    /// Where it listens for packets.
    pub listen_addr: SocketAddr,
    /// Where the consensus says it is.
    pub public_addr: SocketAddr,
    /// `/metrics` and `/healthz` (a mailbox's operator listener).
    pub http_addr: SocketAddr,
    /// A mailbox's fetch API (encrypted links).
    pub api_addr: Option<SocketAddr>,
    pub id: NodeId,
}

pub struct Net {
    pub dir: tempfile::TempDir,
    pub options: NetOptions,
    pub authorities: Vec<Authority>,
    pub mixes: Vec<Node>,
    pub mailboxes: Vec<Node>,
    pub network: NetworkConfig,
}

/// The identity key `murmur-mixnode init` / `murmur-mailbox init` printed.
fn identity_from(stdout: &str) -> String {
    let line = stdout
        .lines()
        .find_map(|l| l.strip_prefix("identity key"))
        .unwrap_or_else(|| panic!("no identity key in {stdout:?}"));
    let key = line.trim_start_matches(':').trim();
    IdentityKey::from_base58(key).unwrap();
    key.to_owned()
}

fn node_id_from(stdout: &str) -> NodeId {
    let line = stdout
        .lines()
        .find_map(|l| l.strip_prefix("node id"))
        .unwrap_or_else(|| panic!("no node id in {stdout:?}"));
    line.trim_start_matches(':').trim().parse().unwrap()
}

/// Where a daemon runs: on a host of its own (its namespace, and `slots`
/// addresses there) when the options ask for hosts, else on loopback.
fn place(o: &NetOptions, slots: usize) -> (Option<String>, Vec<SocketAddr>) {
    match &o.hosts {
        Some(hosts) => {
            let h = hosts.add();
            let addrs = (0..slots).map(|k| hosts.addr(h, 7000 + k as u16)).collect();
            (Some(hosts.namespace(h)), addrs)
        }
        None => (None, (0..slots).map(|_| free_addr()).collect()),
    }
}

impl Net {
    /// Starts a whole network of processes and waits until every node
    /// holds a consensus listing all of them.
    pub async fn start(options: NetOptions) -> Net {
        Self::start_proxied(options, &HashMap::new()).await
    }

    /// Starts the network with `proxies` (from [`proxy_nodes`]) in front of
    /// their nodes' packet ports, pointed at them before any node starts:
    /// the authorities' reachability probe goes through the proxy.
    pub async fn start_proxied(
        options: NetOptions,
        proxies: &HashMap<String, proxy::Proxy>,
    ) -> Net {
        let dir = tempfile::tempdir().unwrap();
        let opts = options.clone();
        let root = dir.path().to_owned();
        let (authorities, mixes, mailboxes) =
            tokio::task::spawn_blocking(move || Self::init_all(&root, &opts))
                .await
                .unwrap();
        let network = NetworkConfig {
            threshold: options.threshold,
            authorities: authorities
                .iter()
                .map(|a| AuthorityEntry {
                    address: a.addr,
                    key: a.key.to_base58(),
                })
                .collect(),
        };
        std::fs::write(dir.path().join("client.toml"), network.to_toml()).unwrap();
        let mut net = Net {
            dir,
            options,
            authorities,
            mixes,
            mailboxes,
            network,
        };
        connect_proxies(&net, proxies);
        for a in &mut net.authorities {
            a.daemon.start();
        }
        for n in net.mixes.iter_mut().chain(net.mailboxes.iter_mut()) {
            n.daemon.start();
        }
        net.wait_ready(Duration::from_secs(60)).await;
        net
    }

    fn init_all(root: &Path, o: &NetOptions) -> (Vec<Authority>, Vec<Node>, Vec<Node>) {
        // Authorities: init each, then tell each about its peers.
        let dir_bin = daemon_bin("murmur-directory");
        let mut authorities = Vec::new();
        for i in 0..o.authorities {
            let d = root.join(format!("authority-{i}"));
            let (netns, addrs) = place(o, 1);
            let addr = addrs[0];
            let out = run_tool(
                &dir_bin,
                &[
                    "init".into(),
                    "--dir".into(),
                    d.display().to_string(),
                    "--listen".into(),
                    addr.to_string(),
                ],
            );
            let key = out
                .lines()
                .find_map(|l| l.strip_prefix("authority public key: "))
                .unwrap();
            let key = IdentityKey::from_base58(key.trim()).unwrap();
            let name = format!("authority-{i}");
            authorities.push(Authority {
                daemon: Daemon::new(
                    &name,
                    dir_bin.clone(),
                    d.join("directory.toml"),
                    root.join(format!("{name}.log")),
                )
                .in_netns(netns),
                addr,
                key,
            });
        }
        for (i, a) in authorities.iter().enumerate() {
            let peers: Vec<toml::Value> = authorities
                .iter()
                .enumerate()
                .filter(|(j, _)| *j != i)
                .map(|(_, p)| {
                    let mut t = toml::Table::new();
                    t.insert("addr".into(), string(p.addr));
                    t.insert("key".into(), string(p.key.to_base58()));
                    toml::Value::Table(t)
                })
                .collect();
            edit_toml(
                &a.daemon.config,
                &[
                    ("epoch_secs", int(o.epoch_secs)),
                    ("threshold", int(o.threshold as u64)),
                    ("peers", toml::Value::Array(peers)),
                    ("params.mean_delay_ms", int(o.mean_delay_ms)),
                    ("params.max_delay_ms", int(o.max_delay_ms)),
                    // No cover: real packets go out as soon as they are queued.
                    ("params.client_rate", float(0.0)),
                    ("params.client_loop_rate", float(0.0)),
                    ("params.mix_loop_rate", float(0.0)),
                    ("timing.bootstrap_window_ms", int(1000)),
                    // Every node and client here connects from 127.0.0.1.
                    ("limits.max_connections_per_address", int(256)),
                ],
            );
        }
        let pins: Vec<String> = authorities
            .iter()
            .flat_map(|a| {
                [
                    "--authority".to_owned(),
                    format!("{}={}", a.addr, a.key.to_base58()),
                ]
            })
            .collect();
        let grace = (o.epoch_secs / 2).min(600);
        // Settings every node gets: one unwrap worker, a small replay
        // filter, quick reconnection to a peer that comes back.
        let common = |cfg: &Path, name: &str| {
            let mut edits = vec![
                ("network.epoch_secs", int(o.epoch_secs)),
                ("keys.grace_secs", int(grace)),
                ("engine.workers", int(1)),
                ("engine.reconnect_min_ms", int(50)),
                ("engine.reconnect_max_ms", int(500)),
                ("engine.connect_timeout_ms", int(1000)),
                ("replay.expected_packet_rate", float(50.0)),
                ("directory.request_timeout_ms", int(1000)),
            ];
            if let Some(extra) = o.node_edits.get(name) {
                edits.extend(extra.iter().cloned());
            }
            edit_toml(cfg, &edits);
        };

        let mix_bin = daemon_bin("murmur-mixnode");
        let mut node_keys = Vec::new();
        let mut mixes = Vec::new();
        for i in 0..3 * o.width {
            let name = format!("mix-{i}");
            let d = root.join(&name);
            let (netns, addrs) = place(o, 2);
            let (listen, http) = (addrs[0], addrs[1]);
            let public = o.public_addrs.get(&name).copied().unwrap_or(listen);
            let mut args: Vec<String> = vec![
                "init".into(),
                "--dir".into(),
                d.display().to_string(),
                "--listen".into(),
                listen.to_string(),
                "--public-addr".into(),
                public.to_string(),
                "--http".into(),
                http.to_string(),
                "--threshold".into(),
                o.threshold.to_string(),
            ];
            args.extend(pins.iter().cloned());
            let out = run_tool(&mix_bin, &args);
            node_keys.push(identity_from(&out));
            let id = node_id_from(&out);
            let config = d.join("mixnode.toml");
            common(&config, &name);
            mixes.push(Node {
                daemon: Daemon::new(
                    &name,
                    mix_bin.clone(),
                    config,
                    root.join(format!("{name}.log")),
                )
                .in_netns(netns),
                listen_addr: listen,
                public_addr: public,
                http_addr: http,
                api_addr: None,
                id,
            });
        }

        let box_bin = daemon_bin("murmur-mailbox");
        let mut mailboxes = Vec::new();
        for i in 0..o.mailboxes {
            let name = format!("mailbox-{i}");
            let d = root.join(&name);
            let (netns, addrs) = place(o, 3);
            let (listen, http, operator) = (addrs[0], addrs[1], addrs[2]);
            let public = o.public_addrs.get(&name).copied().unwrap_or(listen);
            let mut args: Vec<String> = vec![
                "init".into(),
                "--dir".into(),
                d.display().to_string(),
                "--listen".into(),
                listen.to_string(),
                "--public-addr".into(),
                public.to_string(),
                "--http".into(),
                http.to_string(),
                "--operator".into(),
                operator.to_string(),
                "--threshold".into(),
                o.threshold.to_string(),
            ];
            args.extend(pins.iter().cloned());
            let out = run_tool(&box_bin, &args);
            node_keys.push(identity_from(&out));
            let id = node_id_from(&out);
            let config = d.join("mailbox.toml");
            common(&config, &name);
            // Every test client is on 127.0.0.1.
            edit_toml(
                &config,
                &[
                    ("api.create_burst_per_address", int(1000)),
                    ("http.max_connections_per_address", int(256)),
                ],
            );
            mailboxes.push(Node {
                daemon: Daemon::new(
                    &name,
                    box_bin.clone(),
                    config,
                    root.join(format!("{name}.log")),
                )
                .in_netns(netns),
                listen_addr: listen,
                public_addr: public,
                http_addr: operator,
                api_addr: Some(http),
                id,
            });
        }
        // Each authority's operator admits the network's nodes.
        for a in &authorities {
            let mut args: Vec<String> = vec![
                "admit".into(),
                "--config".into(),
                a.daemon.config.display().to_string(),
            ];
            args.extend(node_keys.iter().cloned());
            run_tool(&dir_bin, &args);
        }
        (authorities, mixes, mailboxes)
    }

    pub fn network_file(&self) -> PathBuf {
        self.dir.path().join("client.toml")
    }

    /// A directory client pinning this network's authorities.
    pub fn directory(&self) -> DirectoryClient {
        let endpoints: Vec<AuthorityPin> = self
            .authorities
            .iter()
            .map(|a| AuthorityPin {
                addr: a.addr,
                key: a.key,
            })
            .collect();
        DirectoryClient::new(
            endpoints,
            self.options.threshold,
            HttpClient::new(Duration::from_secs(2)),
        )
        .unwrap()
    }

    /// The current consensus, fetched and verified now.
    pub async fn consensus(&self) -> Arc<VerifiedConsensus> {
        self.directory().fetch_current(now_secs()).await.unwrap()
    }

    /// Every node, mixes first.
    pub fn nodes(&self) -> impl Iterator<Item = &Node> {
        self.mixes.iter().chain(self.mailboxes.iter())
    }

    pub fn nodes_mut(&mut self) -> impl Iterator<Item = &mut Node> {
        self.mixes.iter_mut().chain(self.mailboxes.iter_mut())
    }

    pub fn mix_by_id(&self, id: &NodeId) -> usize {
        self.mixes.iter().position(|m| m.id == *id).unwrap()
    }

    /// Waits until the current consensus lists every node and every
    /// running node's `/healthz` is OK.
    pub async fn wait_ready(&mut self, limit: Duration) -> Arc<VerifiedConsensus> {
        let dir = self.directory();
        let deadline = Instant::now() + limit;
        loop {
            let why = match dir.fetch_current(now_secs()).await {
                Ok(c) => {
                    let missing = self.nodes().filter(|n| c.node(&n.id).is_none()).count();
                    if missing > 0 {
                        format!("consensus {} misses {missing} node(s)", c.epoch())
                    } else {
                        match self.unhealthy().await {
                            None => return c,
                            Some(why) => why,
                        }
                    }
                }
                Err(e) => e.to_string(),
            };
            if Instant::now() >= deadline {
                for n in self.nodes().map(|n| &n.daemon) {
                    eprintln!("---- {}\n{}", n.name, n.log_text());
                }
                panic!("the network did not become ready in {limit:?}: {why}");
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    /// The first running node whose `/healthz` is not OK, and why.
    pub async fn unhealthy(&mut self) -> Option<String> {
        let running: Vec<(String, SocketAddr)> = self
            .nodes_mut()
            .filter_map(|n| {
                n.daemon
                    .is_running()
                    .then(|| (n.daemon.name.clone(), n.http_addr))
            })
            .collect();
        for (name, addr) in running {
            if let Err(e) = healthz(addr).await {
                return Some(format!("{name}: {e}"));
            }
        }
        None
    }

    /// Fails unless every node but `except` is running and healthy.
    pub async fn assert_others_healthy(&mut self, except: &[&str]) {
        let others: Vec<(String, SocketAddr)> = self
            .nodes_mut()
            .filter(|n| !except.contains(&n.daemon.name.as_str()))
            .map(|n| {
                assert!(n.daemon.is_running(), "{} died", n.daemon.name);
                (n.daemon.name.clone(), n.http_addr)
            })
            .collect();
        for (name, addr) in others {
            if let Err(e) = healthz(addr).await {
                panic!("{name} is not healthy: {e}");
            }
        }
    }

    /// Every daemon's pid, by name, for the memory sampler.
    pub fn pids(&self) -> Vec<(String, u32)> {
        self.authorities
            .iter()
            .map(|a| &a.daemon)
            .chain(self.nodes().map(|n| &n.daemon))
            .filter_map(|d| d.pid().map(|p| (d.name.clone(), p)))
            .collect()
    }

    /// Every daemon's log, concatenated (for diagnostics and log checks).
    pub fn logs(&self) -> String {
        self.authorities
            .iter()
            .map(|a| &a.daemon)
            .chain(self.nodes().map(|n| &n.daemon))
            .map(|d| format!("---- {}\n{}", d.name, d.log_text()))
            .collect()
    }

    /// Waits until the network's current consensus is for epoch `epoch` or
    /// later; returns it.
    pub async fn wait_epoch(&self, epoch: u64, limit: Duration) -> Arc<VerifiedConsensus> {
        let dir = self.directory();
        let deadline = Instant::now() + limit;
        loop {
            if let Ok(c) = dir.fetch_current(now_secs()).await
                && c.epoch() >= epoch
            {
                return c;
            }
            assert!(
                Instant::now() < deadline,
                "no consensus for epoch {epoch} within {limit:?}\n{}",
                self.logs()
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
}

/// `GET /healthz` answers 200.
pub async fn healthz(addr: SocketAddr) -> Result<String, String> {
    let http = HttpClient::new(Duration::from_secs(2));
    match http.get(addr, "/healthz", 4096).await {
        Ok((status, body)) if status.is_success() => Ok(String::from_utf8_lossy(&body).into()),
        Ok((status, body)) => Err(format!(
            "{status} {}",
            String::from_utf8_lossy(&body).trim()
        )),
        Err(e) => Err(e.to_string()),
    }
}

/// Waits until `addr` answers `/healthz` with 200.
pub async fn wait_healthy(addr: SocketAddr, limit: Duration) -> String {
    let deadline = Instant::now() + limit;
    loop {
        match healthz(addr).await {
            Ok(body) => return body,
            Err(e) => assert!(Instant::now() < deadline, "not healthy in {limit:?}: {e}"),
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Waits until a node's `/healthz` answers OK for epoch `epoch` or later.
pub async fn wait_node_epoch(addr: SocketAddr, epoch: u64, limit: Duration) {
    let deadline = Instant::now() + limit;
    loop {
        let got = healthz(addr).await;
        let at = got.as_ref().ok().and_then(|body| {
            body.split("epoch ")
                .nth(1)?
                .split(|c: char| !c.is_ascii_digit())
                .next()?
                .parse::<u64>()
                .ok()
        });
        if at.is_some_and(|e| e >= epoch) {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "node at {addr} not healthy in epoch {epoch} within {limit:?}: {got:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

// ------------------------------------------------------------ metrics

/// A scrape of `/metrics`.
pub struct Metrics(pub String);

impl Metrics {
    pub async fn scrape(addr: SocketAddr) -> Metrics {
        let http = HttpClient::new(Duration::from_secs(5));
        let (status, body) = http.get(addr, "/metrics", 1 << 22).await.unwrap();
        assert!(status.is_success());
        Metrics(String::from_utf8(body.to_vec()).unwrap())
    }

    /// The sum of every series whose name and labels start with `series`
    /// (`name` alone sums over all its labels).
    pub fn sum(&self, series: &str) -> f64 {
        self.0
            .lines()
            .filter(|l| !l.starts_with('#'))
            .filter_map(|l| l.rsplit_once(' '))
            .filter(|(s, _)| {
                *s == series
                    || (!series.contains('{')
                        && s.strip_prefix(series)
                            .is_some_and(|rest| rest.starts_with('{')))
            })
            .filter_map(|(_, v)| v.parse::<f64>().ok())
            .sum()
    }

    /// One labelled series, e.g. `("murmur_mixnode_packets_dropped_total",
    /// "reason", "replay")`.
    pub fn labelled(&self, name: &str, label: &str, value: &str) -> f64 {
        self.sum(&format!("{name}{{{label}=\"{value}\"}}"))
    }
}

// ------------------------------------------------------------ memory

/// Samples `VmRSS` of child processes every 50 ms and keeps each one's
/// maximum.
pub struct RssSampler {
    pids: Arc<Mutex<Vec<(String, u32)>>>,
    max: Arc<Mutex<HashMap<String, u64>>>,
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

pub fn rss_kb(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
}

impl RssSampler {
    pub fn start(pids: Vec<(String, u32)>) -> Self {
        let pids = Arc::new(Mutex::new(pids));
        let max: Arc<Mutex<HashMap<String, u64>>> = Arc::default();
        let stop = Arc::new(AtomicBool::new(false));
        let thread = {
            let (pids, max, stop) = (pids.clone(), max.clone(), stop.clone());
            std::thread::spawn(move || {
                while !stop.load(Ordering::Relaxed) {
                    let list = pids.lock().unwrap().clone();
                    for (name, pid) in list {
                        if let Some(kb) = rss_kb(pid) {
                            let mut m = max.lock().unwrap();
                            let e = m.entry(name).or_insert(0);
                            *e = (*e).max(kb);
                        }
                    }
                    std::thread::sleep(Duration::from_millis(50));
                }
            })
        };
        Self {
            pids,
            max,
            stop,
            thread: Some(thread),
        }
    }

    /// Samples a (re)started process too.
    pub fn watch(&self, name: &str, pid: u32) {
        let mut pids = self.pids.lock().unwrap();
        pids.retain(|(n, _)| n != name);
        pids.push((name.to_owned(), pid));
    }

    /// Stops sampling; fails if any process went over `bound_kb`. Returns
    /// the largest sample and whose it was.
    pub fn finish(mut self, bound_kb: u64) -> (String, u64) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            t.join().unwrap();
        }
        let max = self.max.lock().unwrap().clone();
        assert!(!max.is_empty(), "no memory sample was taken");
        for (name, kb) in &max {
            assert!(
                *kb <= bound_kb,
                "{name} used {kb} kB of memory, over the bound of {bound_kb} kB"
            );
        }
        max.into_iter().max_by_key(|(_, kb)| *kb).unwrap()
    }
}

impl Drop for RssSampler {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

// ------------------------------------------------------------ clients

pub fn client_options() -> ClientOptions {
    ClientOptions {
        fetch_interval: Duration::from_millis(50),
        // The faults below keep a node away for a few seconds; each try
        // waits about 1.3 s for its acknowledgement.
        max_tries: 40,
        ..ClientOptions::default()
    }
}

/// The passphrase of the test clients' databases.
pub fn passphrase() -> Passphrase {
    Passphrase::new("test passphrase")
}

/// A consensus follower for in-process clients.
pub async fn follower(net: &Net, token: &CancellationToken) -> Arc<dyn ConsensusSource> {
    follow(&net.network, Duration::from_secs(30), token.clone())
        .await
        .unwrap()
}

/// Alice (home provider: mailbox 0) and Bob (mailbox 1 if there is one),
/// contacts of each other.
pub async fn pair(dir: &Path, net: &Net, consensus: &Arc<dyn ConsensusSource>) -> (Client, Client) {
    let last = net.mailboxes.len() - 1;
    let alice = Client::create(
        &dir.join("alice"),
        "alice",
        consensus.clone(),
        Some(net.mailboxes[0].id),
        client_options(),
        &passphrase(),
    )
    .await
    .unwrap();
    let bob = Client::create(
        &dir.join("bob"),
        "bob",
        consensus.clone(),
        Some(net.mailboxes[last].id),
        client_options(),
        &passphrase(),
    )
    .await
    .unwrap();
    let invitation = alice.invite(None).await.unwrap();
    assert_eq!(bob.accept(&invitation, None).await.unwrap(), "alice");
    tokio::time::timeout(Duration::from_secs(30), async {
        while !alice
            .contacts()
            .unwrap()
            .iter()
            .any(|c| c.name == "bob" && c.established)
        {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await
    .expect("alice learns of bob's acceptance");
    (alice, bob)
}

/// What one side sent: message id → body.
pub type Sent = HashMap<MessageId, Body>;

pub fn text(s: String) -> Body {
    Body::Text(s)
}

/// Sends `n` texts `"{prefix} {i}"` from `from` to `to`; records them in
/// `sent`; returns the handles.
pub async fn send_texts(
    from: &Client,
    to: &str,
    prefix: &str,
    n: usize,
    sent: &mut Sent,
) -> Vec<murmur_client::SendHandle> {
    let mut handles = Vec::new();
    for i in 0..n {
        let t = format!("{prefix} {i}");
        let h = from.send_text(to, &t).await.unwrap();
        sent.insert(h.id(), Body::Text(t));
        handles.push(h);
    }
    handles
}

/// Traffic in flight for a fault: a 60 kB file and 8 texts from Alice to
/// Bob, 8 texts back; returns once `acked` packets of the file are
/// acknowledged (the moment to strike), with what was sent each way, the
/// handles (the file's first) and the file's packet count.
pub async fn file_and_texts_in_flight(
    dir: &Path,
    alice: &Client,
    bob: &Client,
    acked: u32,
    limit: Duration,
) -> (Sent, Sent, Vec<murmur_client::SendHandle>, u32) {
    let mut to_bob = Sent::new();
    let mut to_alice = Sent::new();
    let file = random_bytes(60_000);
    let path = dir.join("report.bin");
    std::fs::write(&path, &file).unwrap();
    let h = alice.send_file("bob", &path).await.unwrap();
    to_bob.insert(
        h.id(),
        Body::File {
            name: "report.bin".into(),
            data: file,
        },
    );
    let total = h.progress().total;
    let mut handles = vec![h];
    handles.extend(send_texts(alice, "bob", "a→b", 8, &mut to_bob).await);
    handles.extend(send_texts(bob, "alice", "b→a", 8, &mut to_alice).await);
    tokio::time::timeout(limit, async {
        while handles[0].progress().acked < acked {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    })
    .await
    .unwrap();
    (to_bob, to_alice, handles, total)
}

pub fn random_bytes(n: usize) -> Vec<u8> {
    let mut v = vec![0u8; n];
    rand::Rng::fill_bytes(&mut rand::rng(), &mut v);
    v
}

/// Waits for every handle's acknowledgement.
pub async fn all_delivered(handles: Vec<murmur_client::SendHandle>, limit: Duration) {
    for h in handles {
        tokio::time::timeout(limit, h.delivered())
            .await
            .expect("acknowledged in time")
            .expect("delivered");
    }
}

/// What a recipient's inbox holds of what was sent.
#[derive(Debug, Default, Clone, Copy)]
pub struct Tally {
    pub sent: usize,
    /// Sent messages in the inbox with byte-identical bodies.
    pub delivered: usize,
    /// Inbox entries beyond the first for one message id.
    pub duplicated: usize,
    /// Sent messages whose inbox body differs.
    pub corrupted: usize,
}

impl Tally {
    pub fn lost(&self) -> usize {
        self.sent - self.delivered - self.corrupted
    }
}

/// Counts `sent` in `client`'s inbox (hellos aside).
pub fn tally(client: &Client, sent: &Sent) -> Tally {
    let mut seen: HashMap<MessageId, usize> = HashMap::new();
    let mut t = Tally {
        sent: sent.len(),
        ..Tally::default()
    };
    for (_, r) in client.inbox(false).unwrap() {
        if matches!(r.body, Body::Hello { .. }) {
            continue;
        }
        let n = seen.entry(r.message_id).or_insert(0);
        *n += 1;
        if *n > 1 {
            t.duplicated += 1;
            continue;
        }
        match sent.get(&r.message_id) {
            Some(b) if *b == r.body => t.delivered += 1,
            Some(_) => t.corrupted += 1,
            None => {}
        }
    }
    t
}

/// Waits (up to `limit`) until every message of `sent` is in `client`'s
/// inbox; returns the tally either way.
pub async fn wait_inbox(client: &Client, sent: &Sent, limit: Duration) -> Tally {
    let deadline = Instant::now() + limit;
    loop {
        let t = tally(client, sent);
        if t.delivered + t.corrupted == t.sent || Instant::now() >= deadline {
            return t;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Prints one row of the results table (`docs/reliability.md`) and fails
/// unless every message arrived once, intact.
pub fn report(fault: &str, tallies: &[Tally], notes: &str) {
    let sum = tallies.iter().fold(Tally::default(), |a, t| Tally {
        sent: a.sent + t.sent,
        delivered: a.delivered + t.delivered,
        duplicated: a.duplicated + t.duplicated,
        corrupted: a.corrupted + t.corrupted,
    });
    println!(
        "| {fault} | {} | {} | {} | {} | {notes} |",
        sum.sent,
        sum.delivered,
        sum.lost(),
        sum.duplicated
    );
    assert_eq!(sum.corrupted, 0, "{fault}: a message arrived altered");
    assert_eq!(sum.duplicated, 0, "{fault}: a message was delivered twice");
    assert_eq!(sum.lost(), 0, "{fault}: messages were lost");
}

// ------------------------------------------------------------ proxies

/// Puts a proxy in front of each named node: the node listens on its own
/// port and the consensus lists the proxy's. Call [`connect_proxies`] once
/// the network is up.
pub fn proxy_nodes(
    options: &mut NetOptions,
    names: &[String],
    record_limit: usize,
) -> HashMap<String, proxy::Proxy> {
    names
        .iter()
        .map(|n| {
            let p = proxy::Proxy::start(record_limit);
            options.public_addrs.insert(n.clone(), p.addr);
            (n.clone(), p)
        })
        .collect()
}

/// Points each proxy at its node's real packet port.
pub fn connect_proxies(net: &Net, proxies: &HashMap<String, proxy::Proxy>) {
    for n in net.nodes() {
        if let Some(p) = proxies.get(&n.daemon.name) {
            p.set_target(n.listen_addr);
        }
    }
}

pub fn mix_names(width: usize) -> Vec<String> {
    (0..3 * width).map(|i| format!("mix-{i}")).collect()
}

// ------------------------------------------------------------ raw packets

/// `n` valid frames of drop cover through `mixes` (one per layer, zero
/// delays; none for a packet straight to the mailbox) to `mailbox`, built
/// with this epoch's keys — what a load generator sends.
pub fn drop_cover_frames(
    consensus: &VerifiedConsensus,
    mixes: &[NodeId],
    mailbox: NodeId,
    n: usize,
) -> Vec<Vec<u8>> {
    use murmur_wire::{Destination, FinalPayload, QueueId, Route, build_forward_packet};
    let mut hops: Vec<_> = mixes
        .iter()
        .map(|id| consensus.node(id).unwrap().hop())
        .collect();
    hops.push(consensus.node(&mailbox).unwrap().hop());
    let route = Route::new(hops, vec![Duration::ZERO; mixes.len() + 1]).unwrap();
    let payload = FinalPayload::DropCover.encode();
    let mut rng = rand::rng();
    (0..n)
        .map(|_| {
            let dest = Destination::from(QueueId::random(&mut rng));
            let p = build_forward_packet(&mut rng, &route, dest, &payload).unwrap();
            let mut frame = murmur_wire::PacketCodec::header().to_vec();
            frame.extend_from_slice(p.as_bytes());
            frame
        })
        .collect()
}

/// The secret link key of a daemon (it derives from the identity key in
/// its directory): what a test uses to speak as that node.
pub fn link_key_of(node: &Node) -> murmur_wire::LinkSecretKey {
    let dir = node.daemon.config.parent().unwrap();
    let identity = murmur_net::keyfile::read_signing_key(&dir.join("identity.key")).unwrap();
    murmur_wire::LinkSecretKey::derive(&identity.to_bytes())
}

/// A packet link to the node at `addr` holding `key`, as a client (`as_node`
/// `None`) or as the node whose secret link key is given.
pub async fn packet_link(
    addr: SocketAddr,
    key: &murmur_wire::LinkPublicKey,
    as_node: Option<&murmur_wire::LinkSecretKey>,
) -> murmur_net::LinkStream<tokio::net::TcpStream> {
    murmur_net::connect(
        addr,
        murmur_wire::link::Purpose::Packets,
        as_node,
        key,
        &murmur_net::LinkSettings::default(),
    )
    .await
    .unwrap()
}

/// Writes `frames` over one link to `addr` (whose link key is `key`), as
/// a client or as a node, then closes it.
pub async fn send_frames(
    addr: SocketAddr,
    key: &murmur_wire::LinkPublicKey,
    as_node: Option<&murmur_wire::LinkSecretKey>,
    frames: &[Vec<u8>],
) {
    use tokio::io::AsyncWriteExt;
    let mut s = packet_link(addr, key, as_node).await;
    s.write_all(&frames.concat()).await.unwrap();
    s.flush().await.unwrap();
    s.shutdown().await.unwrap();
}

/// Writes `frames` over one client link to `addr` at about `per_sec`
/// frames a second, then closes it.
pub async fn send_frames_paced(
    addr: SocketAddr,
    key: murmur_wire::LinkPublicKey,
    frames: Vec<Vec<u8>>,
    per_sec: usize,
) {
    use tokio::io::AsyncWriteExt;
    let mut s = packet_link(addr, &key, None).await;
    let per_tick = (per_sec / 50).max(1);
    let mut tick = tokio::time::interval(Duration::from_millis(20));
    for chunk in frames.chunks(per_tick) {
        tick.tick().await;
        s.write_all(&chunk.concat()).await.unwrap();
        s.flush().await.unwrap();
    }
    s.flush().await.unwrap();
    s.shutdown().await.unwrap();
}

/// Replays `bytes` (a captured connection) on a fresh connection to
/// `addr`; true if the node closed it within `limit`.
pub async fn replayed_stream_is_refused(addr: SocketAddr, bytes: &[u8], limit: Duration) -> bool {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    if s.write_all(bytes).await.is_err() {
        return true;
    }
    let mut buf = [0u8; 4096];
    let deadline = tokio::time::Instant::now() + limit;
    loop {
        match tokio::time::timeout_at(deadline, s.read(&mut buf)).await {
            // The responder's handshake message 2 comes back first; the
            // replayed message 3 cannot match it, so the node closes.
            Ok(Ok(0)) | Ok(Err(_)) => return true,
            Ok(Ok(_)) => continue,
            Err(_) => return false,
        }
    }
}

/// Sends `bytes` of garbage on a fresh connection to `addr`; true if the
/// node closed the connection within `limit`.
pub async fn garbage_is_refused(addr: SocketAddr, bytes: usize, limit: Duration) -> bool {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    // The node may close before reading everything: a failed write is a
    // close too.
    if s.write_all(&random_bytes(bytes)).await.is_err() {
        return true;
    }
    let mut buf = [0u8; 64];
    matches!(
        tokio::time::timeout(limit, s.read(&mut buf)).await,
        Ok(Ok(0)) | Ok(Err(_))
    )
}

/// Samples the gauges `names` of a node's `/metrics` every 50 ms until
/// `stop` is cancelled; returns each one's maximum.
pub fn sample_gauges(
    addr: SocketAddr,
    names: &'static [&'static str],
    stop: CancellationToken,
) -> tokio::task::JoinHandle<HashMap<&'static str, f64>> {
    tokio::spawn(async move {
        let mut max: HashMap<&'static str, f64> = HashMap::new();
        loop {
            let http = HttpClient::new(Duration::from_secs(2));
            if let Ok((status, body)) = http.get(addr, "/metrics", 1 << 22).await
                && status.is_success()
            {
                let m = Metrics(String::from_utf8_lossy(&body).into_owned());
                for n in names {
                    let e = max.entry(n).or_insert(0.0);
                    *e = e.max(m.sum(n));
                }
            }
            tokio::select! {
                _ = stop.cancelled() => return max,
                _ = tokio::time::sleep(Duration::from_millis(50)) => {}
            }
        }
    })
}

// ------------------------------------------------------------ logs

/// Fails if any daemon's log (written at `info`) holds a client's queue
/// id, identity key or queue owner key, a message id, or a text sent.
pub fn assert_logs_clean(net: &Net, clients: &[&Client], sent: &[&Sent]) {
    let logs = net.logs();
    let mut needles: Vec<(String, String)> = Vec::new();
    fn forms(needles: &mut Vec<(String, String)>, what: &str, bytes: &[u8]) {
        needles.push((what.to_owned(), bs58::encode(bytes).into_string()));
        needles.push((what.to_owned(), hex::encode(bytes)));
    }
    for c in clients {
        forms(&mut needles, "an identity key", &c.identity().0);
        for q in c.owned_queues().unwrap() {
            forms(&mut needles, "a queue id", q.queue.as_bytes());
            forms(&mut needles, "a queue owner key", &q.owner_secret);
        }
    }
    for s in sent {
        for (id, body) in s.iter() {
            forms(&mut needles, "a message id", id.as_bytes());
            if let Body::Text(t) = body {
                needles.push(("a message's text".into(), t.clone()));
            }
        }
    }
    for (what, needle) in &needles {
        if let Some(line) = logs.lines().find(|l| l.contains(needle.as_str())) {
            panic!("{what} in a daemon's log: {line}");
        }
    }
}
