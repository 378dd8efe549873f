#![doc = include_str!("../README.md")]
#![forbid(unsafe_code)]

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use murmur_wire::ed25519_dalek::SigningKey;
use murmur_wire::{
    AuthoritySet, Consensus, Hop, IdentityKey, LinkPublicKey, LinkSecretKey, MailboxEntry,
    MixEntry, NetworkParams, NodeId, Route, SignedConsensus, SphinxPublicKey, SphinxSecretKey,
    VerifiedConsensus,
};
use rand::SeedableRng;
use rand_chacha::ChaCha20Rng;
use serde::Serialize;

/// A seeded RNG, so runs are comparable.
pub fn rng() -> ChaCha20Rng {
    ChaCha20Rng::seed_from_u64(0x6d75726d7572)
}

/// Four hops with fresh keys (three mixes and a provider) and their secret keys.
pub fn four_hops(rng: &mut ChaCha20Rng) -> (Vec<SphinxSecretKey>, Route) {
    let keys: Vec<SphinxSecretKey> = (0..4).map(|_| SphinxSecretKey::random(rng)).collect();
    let hops = keys
        .iter()
        .enumerate()
        .map(|(i, k)| Hop {
            id: NodeId::from_bytes([i as u8 + 1; 32]),
            key: k.public_key(),
        })
        .collect();
    let route = Route::new(hops, vec![Duration::from_millis(10); 4])
        .unwrap_or_else(|_| unreachable!("four hops with four delays is a valid route"));
    (keys, route)
}

/// Logical CPUs this process may use.
pub fn cores() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get())
}

/// The 1, 5 and 15 minute load averages (zeros where unreadable).
pub fn loadavg() -> [f64; 3] {
    let text = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    let mut out = [0.0; 3];
    for (slot, v) in out.iter_mut().zip(text.split_whitespace()) {
        *slot = v.parse().unwrap_or(0.0);
    }
    out
}

/// What a figure was measured on, printed with every run.
#[derive(Clone, Debug, Serialize)]
pub struct Machine {
    /// CPU model name.
    pub cpu: String,
    /// Logical CPUs available.
    pub cores: usize,
    /// Kernel release.
    pub kernel: String,
    /// Load averages (1, 5, 15 min) when the run started.
    pub load_at_start: [f64; 3],
}

impl Machine {
    /// Reads the machine's description now.
    pub fn now() -> Self {
        let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
        let cpu = cpuinfo
            .lines()
            .find_map(|l| l.strip_prefix("model name"))
            .and_then(|l| l.split_once(':'))
            .map_or_else(|| "unknown".to_owned(), |(_, v)| v.trim().to_owned());
        let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease")
            .map_or_else(|_| "unknown".to_owned(), |s| s.trim().to_owned());
        Self {
            cpu,
            cores: cores(),
            kernel,
            load_at_start: loadavg(),
        }
    }

    /// One line for the human-readable output.
    pub fn line(&self) -> String {
        format!(
            "machine: {} × {}, Linux {}, load average {:.2} {:.2} {:.2}",
            self.cores,
            self.cpu,
            self.kernel,
            self.load_at_start[0],
            self.load_at_start[1],
            self.load_at_start[2]
        )
    }
}

/// Clock ticks per second of `/proc` CPU times (`sysconf(_SC_CLK_TCK)`,
/// 100 on every Linux platform Murmur targets).
const CLK_TCK: f64 = 100.0;

/// utime + stime, in seconds, from the text of a `/proc/.../stat` file.
fn stat_cpu_secs(stat: &str) -> Option<f64> {
    // Fields after the ")" that closes the command name: state is field 3;
    // utime and stime are fields 14 and 15.
    let rest = stat.rsplit_once(')')?.1;
    let f: Vec<&str> = rest.split_whitespace().collect();
    let utime: f64 = f.get(11)?.parse().ok()?;
    let stime: f64 = f.get(12)?.parse().ok()?;
    Some((utime + stime) / CLK_TCK)
}

/// CPU seconds (user + system) this process has used so far, all threads
/// including those that have exited (Linux `/proc/self/stat`; 10 ms
/// resolution).
pub fn process_cpu_secs() -> f64 {
    std::fs::read_to_string("/proc/self/stat")
        .ok()
        .and_then(|s| stat_cpu_secs(&s))
        .unwrap_or(0.0)
}

/// CPU seconds a thread has run, from its `/proc` directory: the
/// scheduler's nanosecond count (`schedstat`) where the kernel keeps it,
/// else utime + stime in clock ticks.
fn task_cpu_secs(dir: &std::path::Path) -> Option<f64> {
    let ns = std::fs::read_to_string(dir.join("schedstat"))
        .ok()
        .and_then(|s| s.split_whitespace().next()?.parse::<u64>().ok());
    match ns {
        Some(ns) => Some(ns as f64 / 1e9),
        None => stat_cpu_secs(&std::fs::read_to_string(dir.join("stat")).ok()?),
    }
}

/// CPU seconds the calling thread has run so far.
pub fn this_thread_cpu_secs() -> f64 {
    task_cpu_secs(std::path::Path::new("/proc/thread-self")).unwrap_or(0.0)
}

/// CPU seconds used so far by this process's live threads, summed by thread
/// name with trailing digits removed (`murmur-unwrap-0` and `-1` count
/// together).
pub fn thread_cpu() -> BTreeMap<String, f64> {
    let mut out = BTreeMap::new();
    let Ok(tasks) = std::fs::read_dir("/proc/self/task") else {
        return out;
    };
    for t in tasks.flatten() {
        let comm = std::fs::read_to_string(t.path().join("comm")).unwrap_or_default();
        let Some(secs) = task_cpu_secs(&t.path()) else {
            continue;
        };
        let name = comm
            .trim()
            .trim_end_matches(|c: char| c.is_ascii_digit())
            .trim_end_matches('-')
            .to_owned();
        *out.entry(name).or_insert(0.0) += secs;
    }
    out
}

/// CPU seconds used between two [`thread_cpu`] readings by threads whose
/// name starts with `prefix`.
pub fn cpu_between(
    before: &BTreeMap<String, f64>,
    after: &BTreeMap<String, f64>,
    prefix: &str,
) -> f64 {
    after
        .iter()
        .filter(|(n, _)| n.starts_with(prefix))
        .map(|(n, a)| a - before.get(n).copied().unwrap_or(0.0))
        .sum()
}

/// The `q` quantile (0..=1, nearest rank) of sorted values; 0 when empty.
pub fn quantile(sorted: &[f64], q: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let i = ((sorted.len() - 1) as f64 * q.clamp(0.0, 1.0)).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

/// Sorts `v` (NaNs last) and returns it.
pub fn sorted(mut v: Vec<f64>) -> Vec<f64> {
    v.sort_by(f64::total_cmp);
    v
}

/// Median, minimum and maximum of repeated measurements.
#[derive(Clone, Copy, Debug, Default, Serialize)]
pub struct Spread {
    /// The median.
    pub median: f64,
    /// The smallest value.
    pub min: f64,
    /// The largest value.
    pub max: f64,
}

impl Spread {
    /// The spread of `values` (all zero when empty).
    pub fn of(values: &[f64]) -> Self {
        let s = sorted(values.to_vec());
        Self {
            median: quantile(&s, 0.5),
            min: s.first().copied().unwrap_or(0.0),
            max: s.last().copied().unwrap_or(0.0),
        }
    }
}

/// A node of a benchmark network: what the consensus lists about it.
#[derive(Clone, Debug)]
pub struct BenchNode {
    /// Its identity key.
    pub identity: IdentityKey,
    /// Its packet address.
    pub packet_addr: SocketAddr,
    /// Its Sphinx public key for the consensus epoch.
    pub sphinx_key: SphinxPublicKey,
    /// Its link key (derived from the identity secret, as a real node's).
    pub link_key: LinkPublicKey,
}

impl BenchNode {
    /// A node with identity seed `seed` (its signing key is all `seed`
    /// bytes) at `packet_addr`.
    pub fn new(seed: u8, packet_addr: SocketAddr, sphinx_key: SphinxPublicKey) -> Self {
        let signing = SigningKey::from_bytes(&[seed; 32]);
        Self {
            identity: IdentityKey::from(&signing.verifying_key()),
            packet_addr,
            sphinx_key,
            link_key: bench_link_key(seed).public().clone(),
        }
    }

    /// Its node id.
    pub fn id(&self) -> NodeId {
        self.identity.node_id()
    }
}

/// The secret link key of the benchmark node with identity seed `seed`.
pub fn bench_link_key(seed: u8) -> LinkSecretKey {
    LinkSecretKey::derive(&[seed; 32])
}

/// The epoch length of [`bench_consensus`], seconds.
pub const BENCH_EPOCH_SECS: u64 = 3600;

/// A consensus for the current epoch, signed by a one-of-one benchmark
/// authority and verified: `mixes[l]` are the mixes of layer `l`.
/// `http_addr` of every mailbox is `127.0.0.1:9` (nothing listens there).
pub fn bench_consensus(
    mixes: &[Vec<BenchNode>],
    mailboxes: &[BenchNode],
    params: NetworkParams,
) -> anyhow::Result<Arc<VerifiedConsensus>> {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)?
        .as_secs();
    let epoch = now / params.epoch_secs.max(1);
    let authority = SigningKey::from_bytes(&[0xA5; 32]);
    let doc = Consensus {
        version: murmur_wire::directory::CONSENSUS_VERSION,
        epoch,
        valid_after: epoch * params.epoch_secs,
        valid_until: (epoch + 1) * params.epoch_secs,
        mixes: mixes
            .iter()
            .enumerate()
            .flat_map(|(layer, nodes)| {
                nodes.iter().map(move |n| MixEntry {
                    layer: layer as u8,
                    identity: n.identity,
                    packet_addr: n.packet_addr,
                    link_key: n.link_key.clone(),
                    sphinx_key: n.sphinx_key,
                })
            })
            .collect(),
        mailboxes: mailboxes
            .iter()
            .map(|n| MailboxEntry {
                identity: n.identity,
                packet_addr: n.packet_addr,
                http_addr: SocketAddr::from(([127, 0, 0, 1], 9)),
                link_key: n.link_key.clone(),
                sphinx_key: n.sphinx_key,
            })
            .collect(),
        params,
    };
    let set = AuthoritySet::new(vec![IdentityKey::from(&authority.verifying_key())], 1)?;
    let verified = SignedConsensus::sign(&doc, &authority)?.verify(&set, now, Some(epoch))?;
    Ok(Arc::new(verified))
}

/// Network parameters for benchmark consensuses: no cover anywhere, the
/// given mean and largest per-hop delay.
pub fn bench_params(mean_delay: Duration, max_delay: Duration) -> NetworkParams {
    NetworkParams {
        epoch_secs: BENCH_EPOCH_SECS,
        mean_delay_us: u64::try_from(mean_delay.as_micros()).unwrap_or(u64::MAX),
        max_delay_us: u64::try_from(max_delay.as_micros()).unwrap_or(u64::MAX),
        client_rate: 0.0,
        client_loop_rate: 0.0,
        mix_loop_rate: 0.0,
        packet_size: murmur_wire::PACKET_SIZE as u32,
    }
}

/// A TCP listener on a free loopback port, registered with `harness` (the
/// runtime that will serve it, which need not be the caller's).
pub fn loopback_listener(
    harness: &tokio::runtime::Handle,
) -> std::io::Result<tokio::net::TcpListener> {
    let _in = harness.enter();
    let std = std::net::TcpListener::bind("127.0.0.1:0")?;
    std.set_nonblocking(true)?;
    tokio::net::TcpListener::from_std(std)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stat_line_parses_with_spaces_in_the_name() {
        let line = "42 (a name) with) S 1 2 3 4 5 6 7 8 9 10 250 150 0 0";
        assert_eq!(stat_cpu_secs(line), Some(4.0));
    }

    #[test]
    fn quantiles_and_spread() {
        let v = sorted(vec![5.0, 1.0, 3.0, 2.0, 4.0]);
        assert_eq!(quantile(&v, 0.5), 3.0);
        assert_eq!(quantile(&v, 1.0), 5.0);
        assert_eq!(quantile(&[], 0.5), 0.0);
        let s = Spread::of(&[3.0, 1.0, 2.0]);
        assert_eq!((s.median, s.min, s.max), (2.0, 1.0, 3.0));
    }
}
