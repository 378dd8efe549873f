//! The replay cache: per Sphinx key epoch, a chain of Bloom filters of
//! replay tags, persisted so that it survives a restart within the epoch.
//!
//! # Sizing, and why a chain
//!
//! One filter **segment** holds `expected_packet_rate × window` tags (the
//! window is the key's lifetime: an epoch plus the grace period) at the
//! configured false positive rate `p`; a false positive drops a fresh
//! packet as a replay. A single Bloom filter fed five to ten times the tags
//! it was sized for saturates: almost every bit is set and most fresh
//! packets look like replays until the key rotates — something a flood can
//! do on purpose. So when a segment holds its tags, a new one is started; a
//! tag is a replay if any segment of its epoch holds it. With `s` segments
//! the chance that a fresh packet is taken for a replay is at most `s × p`
//! (each full segment is at `p`), never the saturation of one filter.
//!
//! The chain is bounded: at most `max_segments` per epoch, enough for the
//! node's **capacity** — the most packets it can process a second
//! (`replay.max_packet_rate`, or measured at start: one worker's unwrap
//! rate × the cores it can use) — for the whole window, so that no flood
//! can fill it within a key's lifetime; and at most `replay.max_memory_mib`
//! of filters, which wins if it is smaller. Only when both bind can the
//! last segment be filled past its size: that is **saturation**, counted
//! tag by tag (`replay_saturated_tags_total`) and raised as an alarm
//! (`replay_filter_saturated`), with the false positive bound the chain
//! then has (`replay_false_positive_bound`). Segments are allocated only as
//! tags arrive: a quiet node holds one.
//!
//! The filters use `bloomfilter` (SipHash-1-3 keyed with a random
//! per-segment seed, stored with the filter).
//!
//! # Persistence
//!
//! Per epoch `e`, in the cache directory:
//!
//! * `epoch-e.snap` — a snapshot: every segment of the chain (its tag count
//!   and filter) with a generation number `G` and a SHA-256 checksum,
//!   written to a temporary file, fsynced and renamed into place (format 2;
//!   a format-1 snapshot of one filter is read as one full segment);
//! * `epoch-e.log-g` — append-only tag logs (32 bytes per tag). Every new tag
//!   is appended to the current log before its packet goes further; logs
//!   are flushed and fsynced every `fsync_interval_ms`.
//!
//! A snapshot of generation `G` holds every tag of every log `g < G`. Taking
//! one: switch appends to log `G` (under the lock), fsync the previous log,
//! write the snapshot (full segments are shared, only the filling one is
//! copied under the lock), then delete logs `< G`. Loading: the snapshot
//! (if any), then every log `g ≥ G`; a torn last record is ignored. At
//! open, each epoch is compacted into a fresh snapshot.
//!
//! **What a crash can lose**: the tags appended since the last fsync, i.e.
//! those of packets accepted in the last `fsync_interval_ms` before the
//! crash (plus the duration of one fsync). Those packets could be replayed
//! once after the restart. A graceful shutdown writes a snapshot of every
//! epoch and loses nothing.

use std::collections::BTreeMap;
use std::fs::{self, File, OpenOptions};
use std::hash::{Hash, Hasher};
use std::io::{BufReader, BufWriter, Read, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use bloomfilter::Bloom;
use murmur_wire::ReplayTag;
use rand::Rng;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::error::{Error, Result};
use crate::fsutil;

/// Replay cache settings (the `[replay]` table of the configuration).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ReplaySettings {
    /// Packets per second the node expects to process (sizes one filter
    /// segment).
    pub expected_packet_rate: f64,
    /// Probability that a fresh packet is taken for a replay when a
    /// segment holds the expected number of tags.
    pub false_positive_rate: f64,
    /// The most packets per second the node can process; the chain of
    /// segments is sized to hold that many for a key's whole lifetime.
    /// 0: measured at start (one worker's unwrap rate × usable cores).
    pub max_packet_rate: f64,
    /// The most memory the filters of one key epoch may take, MiB. If the
    /// capacity needs more, a flood at full capacity can saturate the last
    /// segment (counted and alarmed).
    pub max_memory_mib: u64,
    /// How often new tags are flushed and fsynced to the tag log, ms. A
    /// crash loses at most this much of the cache.
    pub fsync_interval_ms: u64,
    /// How often a snapshot of each epoch's filters is written, seconds.
    pub snapshot_interval_secs: u64,
}

impl Default for ReplaySettings {
    fn default() -> Self {
        Self {
            expected_packet_rate: 1000.0,
            false_positive_rate: 1e-6,
            max_packet_rate: 0.0,
            max_memory_mib: 1024,
            fsync_interval_ms: 200,
            snapshot_interval_secs: 300,
        }
    }
}

/// The largest filter segment allowed, bytes.
const MAX_FILTER_BYTES: usize = 1 << 30;
/// The most segments one epoch's chain may have, whatever the settings.
pub const MAX_SEGMENTS: usize = 4096;
/// The most epochs held at once (the key ring holds one or two).
const MAX_EPOCHS: usize = 4;
const TAG_LEN: usize = 32;
const SNAP_MAGIC_V1: &[u8; 8] = b"MURMRPC\x01";
const SNAP_MAGIC: &[u8; 8] = b"MURMRPC\x02";

/// How an epoch's chain of filters is sized (see the module documentation).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct ReplaySizing {
    /// Tags one segment holds at `false_positive_rate`.
    pub segment_items: usize,
    /// A full segment's false positive rate.
    pub false_positive_rate: f64,
    /// Segments one epoch may have.
    pub max_segments: usize,
}

impl ReplaySizing {
    /// One segment's size in bytes.
    pub fn segment_bytes(&self) -> usize {
        Bloom::<Tag>::compute_bitmap_size(self.segment_items.max(1), self.false_positive_rate)
    }

    /// The tags the whole chain holds before it saturates.
    pub fn capacity(&self) -> u64 {
        (self.segment_items as u64).saturating_mul(self.max_segments as u64)
    }
}

impl ReplaySettings {
    /// The number of tags one segment is sized for, given the window a key
    /// lives (an epoch plus the grace period).
    pub fn expected_items(&self, window: Duration) -> usize {
        let n = (self.expected_packet_rate * window.as_secs_f64()).ceil();
        if n.is_finite() && n >= 1000.0 {
            n.min(usize::MAX as f64) as usize
        } else {
            1000
        }
    }

    /// Checks the settings; returns one segment's size in bytes.
    pub fn check(&self, window: Duration) -> Result<usize> {
        if !(self.expected_packet_rate.is_finite() && self.expected_packet_rate > 0.0) {
            return Err(Error::Config(
                "replay.expected_packet_rate must be positive".into(),
            ));
        }
        if !(self.false_positive_rate > 0.0 && self.false_positive_rate <= 0.1) {
            return Err(Error::Config(
                "replay.false_positive_rate must be in (0, 0.1]".into(),
            ));
        }
        if !(self.max_packet_rate.is_finite() && self.max_packet_rate >= 0.0) {
            return Err(Error::Config(
                "replay.max_packet_rate must be 0 (measure) or positive".into(),
            ));
        }
        if self.fsync_interval_ms == 0 || self.fsync_interval_ms > 60_000 {
            return Err(Error::Config(
                "replay.fsync_interval_ms must be in 1..=60000".into(),
            ));
        }
        if self.snapshot_interval_secs == 0 || self.snapshot_interval_secs > 86_400 {
            return Err(Error::Config(
                "replay.snapshot_interval_secs must be in 1..=86400".into(),
            ));
        }
        let bytes = Bloom::<Tag>::compute_bitmap_size(
            self.expected_items(window),
            self.false_positive_rate,
        );
        if bytes > MAX_FILTER_BYTES {
            return Err(Error::Config(format!(
                "one replay filter segment would take {} MiB (over {} MiB): lower replay.expected_packet_rate or raise replay.false_positive_rate",
                bytes >> 20,
                MAX_FILTER_BYTES >> 20
            )));
        }
        if self.max_memory_mib.saturating_mul(1 << 20) < bytes as u64 {
            return Err(Error::Config(format!(
                "replay.max_memory_mib ({}) is less than one filter segment ({} MiB)",
                self.max_memory_mib,
                bytes.div_ceil(1 << 20)
            )));
        }
        Ok(bytes)
    }

    /// How the chain is sized for a key living `window`, on a node that
    /// can process `capacity` packets a second (the configured
    /// `max_packet_rate` if set, else the caller's measurement).
    pub fn sizing(&self, window: Duration, capacity: f64) -> ReplaySizing {
        let segment_items = self.expected_items(window);
        let one = ReplaySizing {
            segment_items,
            false_positive_rate: self.false_positive_rate,
            max_segments: 1,
        };
        let rate = if self.max_packet_rate > 0.0 {
            self.max_packet_rate
        } else {
            capacity
        };
        let most_tags = (rate.max(0.0) * window.as_secs_f64()).ceil();
        let needed = if most_tags.is_finite() {
            (most_tags / segment_items as f64).ceil().max(1.0) as usize
        } else {
            MAX_SEGMENTS
        };
        let by_memory = usize::try_from(self.max_memory_mib.saturating_mul(1 << 20))
            .unwrap_or(usize::MAX)
            / one.segment_bytes().max(1);
        ReplaySizing {
            max_segments: needed.min(by_memory).clamp(1, MAX_SEGMENTS),
            ..one
        }
    }
}

/// A tag as the filter hashes it: exactly its 32 bytes, no length prefix,
/// so that the hashing is stable across Rust versions.
struct Tag([u8; TAG_LEN]);

impl Hash for Tag {
    fn hash<H: Hasher>(&self, state: &mut H) {
        state.write(&self.0);
    }
}

/// A full segment: never written again, shared with snapshots.
struct Sealed {
    bloom: Arc<Bloom<Tag>>,
    count: u64,
}

struct EpochState {
    sealed: Vec<Sealed>,
    /// The segment taking new tags.
    active: Bloom<Tag>,
    active_count: u64,
    /// Tags recorded past the chain's capacity (saturation).
    saturated: u64,
    /// Generation of the current log; the last snapshot has this number.
    generation: u64,
    log: Option<BufWriter<File>>,
    /// The current log's file, shared so it can be fsynced off the lock.
    log_file: Option<Arc<File>>,
    unsynced: bool,
    since_snapshot: bool,
}

/// The outcome of [`ReplayCache::check_and_insert`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Seen {
    /// A fresh tag, now recorded.
    New,
    /// Seen before (or a false positive).
    Replay,
}

/// What the replay cache holds, over every epoch held (for metrics).
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct ReplayStats {
    /// Filter segments.
    pub segments: usize,
    /// Tags recorded.
    pub tags: u64,
    /// Tags recorded past a chain's capacity, since the epochs were opened.
    pub saturated_tags: u64,
    /// The largest, over epochs, of the estimated chance that a fresh
    /// packet is taken for a replay (the sum of the segments' rates at
    /// their fill).
    pub false_positive_bound: f64,
    /// Bytes of filters in memory.
    pub bytes: usize,
}

/// The replay cache the engine checks every packet against: per Sphinx key
/// epoch a chain of Bloom filters of replay tags; every new tag is appended
/// to a tag log that [`ReplayCache::sync`] fsyncs, and
/// [`ReplayCache::snapshot_all`] writes checksummed snapshots, so the cache
/// survives a restart. Public so that benchmarks and tools can drive the
/// engine's own code directly.
pub struct ReplayCache {
    dir: PathBuf,
    sizing: ReplaySizing,
    inner: Mutex<BTreeMap<u64, EpochState>>,
}

impl std::fmt::Debug for ReplayCache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ReplayCache")
            .field("dir", &self.dir)
            .field("sizing", &self.sizing)
            .finish_non_exhaustive()
    }
}

fn snap_path(dir: &Path, epoch: u64) -> PathBuf {
    dir.join(format!("epoch-{epoch}.snap"))
}

fn log_path(dir: &Path, epoch: u64, generation: u64) -> PathBuf {
    dir.join(format!("epoch-{epoch}.log-{generation}"))
}

enum CacheFile {
    Snapshot(u64),
    Log(u64, u64),
}

fn parse_name(name: &str) -> Option<CacheFile> {
    let rest = name.strip_prefix("epoch-")?;
    if let Some(e) = rest.strip_suffix(".snap") {
        return e.parse().ok().map(CacheFile::Snapshot);
    }
    let (e, g) = rest.split_once(".log-")?;
    Some(CacheFile::Log(e.parse().ok()?, g.parse().ok()?))
}

/// The estimated false positive rate of a filter of `bits` bits and `k`
/// hashes holding `n` tags.
fn fp_estimate(bits: u64, k: u32, n: u64) -> f64 {
    if bits == 0 {
        return 1.0;
    }
    let fill = 1.0 - (-(f64::from(k)) * n as f64 / bits as f64).exp();
    fill.powi(i32::try_from(k).unwrap_or(i32::MAX))
}

impl EpochState {
    fn new(active: Bloom<Tag>) -> Self {
        Self {
            sealed: Vec::new(),
            active,
            active_count: 0,
            saturated: 0,
            generation: 0,
            log: None,
            log_file: None,
            unsynced: false,
            since_snapshot: true,
        }
    }

    /// Records `t`; true if any segment held it already.
    fn check_and_set(
        &mut self,
        t: &Tag,
        sizing: &ReplaySizing,
        fresh: impl FnOnce() -> Option<Bloom<Tag>>,
    ) -> bool {
        if self.sealed.iter().any(|s| s.bloom.check(t)) || self.active.check_and_set(t) {
            return true;
        }
        self.active_count += 1;
        if self.active_count > sizing.segment_items as u64 {
            // Full, and the chain could not grow: saturating.
            self.saturated += 1;
        }
        self.rotate_if_full(sizing, fresh);
        false
    }

    /// Seals the filling segment once it holds its tags, if the chain may
    /// grow (and the new segment could be made).
    fn rotate_if_full(
        &mut self,
        sizing: &ReplaySizing,
        fresh: impl FnOnce() -> Option<Bloom<Tag>>,
    ) {
        if self.active_count >= sizing.segment_items as u64
            && self.sealed.len() + 1 < sizing.max_segments
            && let Some(next) = fresh()
        {
            let done = std::mem::replace(&mut self.active, next);
            self.sealed.push(Sealed {
                bloom: Arc::new(done),
                count: self.active_count,
            });
            self.active_count = 0;
        }
    }

    fn segments(&self) -> usize {
        self.sealed.len() + 1
    }

    fn tags(&self) -> u64 {
        self.sealed.iter().map(|s| s.count).sum::<u64>() + self.active_count
    }

    fn fp_bound(&self) -> f64 {
        let one = |b: &Bloom<Tag>, n: u64| fp_estimate(b.len(), b.number_of_hash_functions(), n);
        self.sealed
            .iter()
            .map(|s| one(&s.bloom, s.count))
            .sum::<f64>()
            + one(&self.active, self.active_count)
    }

    fn bytes(&self) -> usize {
        let one = |b: &Bloom<Tag>| usize::try_from(b.len() / 8).unwrap_or(usize::MAX);
        self.sealed.iter().map(|s| one(&s.bloom)).sum::<usize>() + one(&self.active)
    }
}

/// Everything a snapshot holds, taken under the lock.
struct SnapshotData {
    generation: u64,
    saturated: u64,
    sealed: Vec<(Arc<Bloom<Tag>>, u64)>,
    active: Vec<u8>,
    active_count: u64,
}

/// A writer that hashes what passes through it.
struct Hashing<W> {
    inner: W,
    hash: Sha256,
}

impl<W: Write> Write for Hashing<W> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.hash.update(&buf[..n]);
        Ok(n)
    }
    fn flush(&mut self) -> std::io::Result<()> {
        self.inner.flush()
    }
}

/// A reader that hashes what passes through it.
struct HashingReader<R> {
    inner: R,
    hash: Sha256,
}

impl<R: Read> Read for HashingReader<R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.hash.update(&buf[..n]);
        Ok(n)
    }
}

fn read_word(r: &mut impl Read) -> std::io::Result<u64> {
    let mut w = [0u8; 8];
    r.read_exact(&mut w)?;
    Ok(u64::from_be_bytes(w))
}

impl ReplayCache {
    /// Opens the cache in `dir` for chains sized by `sizing`, loading the
    /// epochs in `live` from disk and deleting the files of every other
    /// epoch.
    pub fn open(dir: &Path, sizing: ReplaySizing, live: &[u64]) -> Result<Self> {
        fsutil::private_dir(dir)?;
        let sizing = ReplaySizing {
            segment_items: sizing.segment_items.max(1),
            max_segments: sizing.max_segments.clamp(1, MAX_SEGMENTS),
            ..sizing
        };
        let cache = Self {
            dir: dir.to_owned(),
            sizing,
            inner: Mutex::new(BTreeMap::new()),
        };
        let files = cache.list()?;
        let mut loaded = BTreeMap::new();
        for &epoch in live.iter().take(MAX_EPOCHS) {
            if files.contains_key(&epoch) {
                let state = cache.load_epoch(epoch, &files[&epoch])?;
                loaded.insert(epoch, state);
            }
        }
        *cache.lock() = loaded;
        // Compact what was loaded into fresh snapshots, and remove the rest.
        cache.snapshot_all()?;
        cache.retain(live)?;
        Ok(cache)
    }

    /// How the chains are sized.
    pub fn sizing(&self) -> ReplaySizing {
        self.sizing
    }

    fn lock(&self) -> MutexGuard<'_, BTreeMap<u64, EpochState>> {
        self.inner.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Files on disk by epoch: (snapshot present, log generations).
    fn list(&self) -> Result<BTreeMap<u64, (bool, Vec<u64>)>> {
        let mut out: BTreeMap<u64, (bool, Vec<u64>)> = BTreeMap::new();
        let entries =
            fs::read_dir(&self.dir).map_err(|e| Error::io("could not list", &self.dir, e))?;
        for entry in entries {
            let entry = entry.map_err(|e| Error::io("could not list", &self.dir, e))?;
            let name = entry.file_name();
            let Some(name) = name.to_str() else { continue };
            if name.ends_with(".tmp") {
                fsutil::remove_if_exists(&entry.path())?;
                continue;
            }
            match parse_name(name) {
                Some(CacheFile::Snapshot(e)) => out.entry(e).or_default().0 = true,
                Some(CacheFile::Log(e, g)) => out.entry(e).or_default().1.push(g),
                None => {}
            }
        }
        Ok(out)
    }

    fn new_bloom(&self) -> Result<Bloom<Tag>> {
        let mut seed = [0u8; 32];
        rand::rng().fill_bytes(&mut seed);
        Bloom::new_for_fp_rate_with_seed(
            self.sizing.segment_items,
            self.sizing.false_positive_rate,
            &seed,
        )
        .map_err(|e| Error::Config(format!("replay filter: {e}")))
    }

    fn load_epoch(&self, epoch: u64, files: &(bool, Vec<u64>)) -> Result<EpochState> {
        let (has_snap, logs) = files;
        let (mut state, generation) = if *has_snap {
            match self.read_snapshot(epoch) {
                Ok(v) => v,
                Err(e) => {
                    // Keep the evidence, start this epoch from its logs.
                    tracing::error!(
                        error = %e,
                        epoch,
                        "replay cache snapshot unreadable; continuing with the tag logs only (replays of packets before the last snapshot are not detected this epoch)"
                    );
                    let path = snap_path(&self.dir, epoch);
                    let mut aside = path.clone().into_os_string();
                    aside.push(".corrupt");
                    let _ = fs::rename(&path, aside);
                    (EpochState::new(self.new_bloom()?), 0)
                }
            }
        } else {
            (EpochState::new(self.new_bloom()?), 0)
        };
        let mut max_gen = generation;
        for &g in logs {
            let path = log_path(&self.dir, epoch, g);
            if g < generation {
                fsutil::remove_if_exists(&path)?;
                continue;
            }
            max_gen = max_gen.max(g);
            let mut bytes = Vec::new();
            File::open(&path)
                .and_then(|mut f| f.read_to_end(&mut bytes))
                .map_err(|e| Error::io("could not read", &path, e))?;
            // A torn last record (crash mid-write) is ignored.
            for tag in bytes.chunks_exact(TAG_LEN) {
                let mut t = [0u8; TAG_LEN];
                t.copy_from_slice(tag);
                state.check_and_set(&Tag(t), &self.sizing, || self.new_bloom().ok());
            }
        }
        state.generation = max_gen;
        state.since_snapshot = true;
        Ok(state)
    }

    fn read_snapshot(&self, epoch: u64) -> Result<(EpochState, u64)> {
        let path = snap_path(&self.dir, epoch);
        let corrupt = |reason: &str| Error::Corrupt {
            path: path.clone(),
            reason: reason.to_owned(),
        };
        let file = File::open(&path).map_err(|e| Error::io("could not read", &path, e))?;
        let size = file
            .metadata()
            .map_err(|e| Error::io("could not read", &path, e))?
            .len();
        let mut r = HashingReader {
            inner: BufReader::with_capacity(1 << 20, file),
            hash: Sha256::new(),
        };
        let io = |e: std::io::Error| match e.kind() {
            std::io::ErrorKind::UnexpectedEof => corrupt("too short"),
            _ => Error::io("could not read", &path, e),
        };
        let mut magic = [0u8; 8];
        r.read_exact(&mut magic).map_err(io)?;
        let v1 = &magic == SNAP_MAGIC_V1;
        if !v1 && &magic != SNAP_MAGIC {
            return Err(corrupt("not a replay cache snapshot"));
        }
        if read_word(&mut r).map_err(io)? != epoch {
            return Err(corrupt("snapshot of another epoch"));
        }
        let generation = read_word(&mut r).map_err(io)?;
        let (segments, saturated) = if v1 {
            (1, 0)
        } else {
            (
                read_word(&mut r).map_err(io)?,
                read_word(&mut r).map_err(io)?,
            )
        };
        if segments == 0 || segments > MAX_SEGMENTS as u64 {
            return Err(corrupt("bad segment count"));
        }
        let mut blooms = Vec::new();
        let mut left = size;
        for _ in 0..segments {
            // Format 1 had no count: its one filter counts as full.
            let count = if v1 {
                self.sizing.segment_items as u64
            } else {
                read_word(&mut r).map_err(io)?
            };
            let len = read_word(&mut r).map_err(io)?;
            if len > left || len > MAX_FILTER_BYTES as u64 {
                return Err(corrupt("length mismatch"));
            }
            left -= len;
            let mut bytes = vec![0u8; usize::try_from(len).map_err(|_| corrupt("length"))?];
            r.read_exact(&mut bytes).map_err(io)?;
            let bloom = Bloom::from_bytes(bytes).map_err(corrupt)?;
            blooms.push((bloom, count));
        }
        let computed = r.hash.finalize_reset();
        let mut sum = [0u8; 32];
        r.inner.read_exact(&mut sum).map_err(io)?;
        if computed.as_slice() != sum {
            return Err(corrupt("checksum mismatch"));
        }
        let mut rest = [0u8; 1];
        if r.inner.read(&mut rest).map_err(io)? != 0 {
            return Err(corrupt("trailing bytes"));
        }
        let Some((active, active_count)) = blooms.pop() else {
            return Err(corrupt("no segment"));
        };
        let mut state = EpochState::new(active);
        state.active_count = active_count;
        state.saturated = saturated;
        state.sealed = blooms
            .into_iter()
            .map(|(b, count)| Sealed {
                bloom: Arc::new(b),
                count,
            })
            .collect();
        state.generation = generation;
        // A full last segment (a format-1 filter counts as full) gives way
        // to a new one before any tag is added.
        state.rotate_if_full(&self.sizing, || self.new_bloom().ok());
        Ok((state, generation))
    }

    fn open_log(
        &self,
        epoch: u64,
        generation: u64,
    ) -> std::io::Result<(BufWriter<File>, Arc<File>)> {
        let path = log_path(&self.dir, epoch, generation);
        let file = OpenOptions::new()
            .create(true)
            .append(true)
            .mode(0o600)
            .open(path)?;
        let shared = Arc::new(file.try_clone()?);
        Ok((BufWriter::with_capacity(16 * 1024, file), shared))
    }

    /// Records `tag` for key epoch `epoch`; tells whether it was seen before.
    /// A tag log write error is returned beside the answer (the answer still
    /// holds: the filter is in memory).
    pub fn check_and_insert(&self, epoch: u64, tag: &ReplayTag) -> (Seen, Option<std::io::Error>) {
        let mut inner = self.lock();
        if !inner.contains_key(&epoch) {
            let bloom = match self.new_bloom() {
                Ok(b) => b,
                // The size was checked at open; this cannot fail after.
                Err(_) => return (Seen::New, None),
            };
            if inner.len() >= MAX_EPOCHS
                && let Some((&oldest, _)) = inner.iter().next()
            {
                inner.remove(&oldest);
            }
            inner.insert(epoch, EpochState::new(bloom));
        }
        let Some(state) = inner.get_mut(&epoch) else {
            return (Seen::New, None);
        };
        let t = Tag(tag.0);
        if state.check_and_set(&t, &self.sizing, || self.new_bloom().ok()) {
            return (Seen::Replay, None);
        }
        state.since_snapshot = true;
        if state.log.is_none() {
            match self.open_log(epoch, state.generation) {
                Ok((w, f)) => {
                    state.log = Some(w);
                    state.log_file = Some(f);
                }
                Err(e) => return (Seen::New, Some(e)),
            }
        }
        let err = state.log.as_mut().and_then(|w| w.write_all(&t.0).err());
        state.unsynced = true;
        (Seen::New, err)
    }

    /// What the cache holds now.
    pub fn stats(&self) -> ReplayStats {
        let inner = self.lock();
        let mut out = ReplayStats::default();
        for state in inner.values() {
            out.segments += state.segments();
            out.tags += state.tags();
            out.saturated_tags += state.saturated;
            out.false_positive_bound = out.false_positive_bound.max(state.fp_bound());
            out.bytes += state.bytes();
        }
        out
    }

    /// Flushes the tag logs and fsyncs them (the fsync outside the lock).
    pub fn sync(&self) -> std::io::Result<()> {
        let mut files = Vec::new();
        let mut first_err = None;
        {
            let mut inner = self.lock();
            for state in inner.values_mut() {
                if !state.unsynced {
                    continue;
                }
                state.unsynced = false;
                if let Some(w) = state.log.as_mut()
                    && let Err(e) = w.flush()
                {
                    first_err.get_or_insert(e);
                }
                if let Some(f) = &state.log_file {
                    files.push(f.clone());
                }
            }
        }
        for f in files {
            if let Err(e) = f.sync_data() {
                first_err.get_or_insert(e);
            }
        }
        first_err.map_or(Ok(()), Err)
    }

    /// Writes a snapshot of every epoch that changed since its last one.
    pub fn snapshot_all(&self) -> Result<()> {
        let epochs: Vec<u64> = self.lock().keys().copied().collect();
        let mut first_err = None;
        for epoch in epochs {
            if let Err(e) = self.snapshot(epoch) {
                first_err.get_or_insert(e);
            }
        }
        first_err.map_or(Ok(()), Err)
    }

    fn snapshot(&self, epoch: u64) -> Result<()> {
        let (data, old_file) = {
            let mut inner = self.lock();
            let Some(state) = inner.get_mut(&epoch) else {
                return Ok(());
            };
            if !state.since_snapshot {
                return Ok(());
            }
            let next = state.generation.saturating_add(1);
            let flushed = match state.log.as_mut() {
                Some(w) => w.flush(),
                None => Ok(()),
            };
            flushed.map_err(|e| {
                Error::io(
                    "could not write",
                    log_path(&self.dir, epoch, state.generation),
                    e,
                )
            })?;
            // New tags go to the next log from now on; the snapshot holds
            // everything before. Full segments are shared, not copied.
            state.log = None;
            let old_file = state.log_file.take();
            state.generation = next;
            state.since_snapshot = false;
            state.unsynced = false;
            let data = SnapshotData {
                generation: next,
                saturated: state.saturated,
                sealed: state
                    .sealed
                    .iter()
                    .map(|s| (s.bloom.clone(), s.count))
                    .collect(),
                active: state.active.to_bytes(),
                active_count: state.active_count,
            };
            (data, old_file)
        };
        let generation = data.generation;
        if let Some(f) = old_file {
            f.sync_data().map_err(|e| {
                Error::io(
                    "could not sync",
                    log_path(&self.dir, epoch, generation - 1),
                    e,
                )
            })?;
        }
        let result = fsutil::write_private_with(&snap_path(&self.dir, epoch), |out| {
            let mut w = Hashing {
                inner: BufWriter::with_capacity(1 << 20, out),
                hash: Sha256::new(),
            };
            w.write_all(SNAP_MAGIC)?;
            w.write_all(&epoch.to_be_bytes())?;
            w.write_all(&data.generation.to_be_bytes())?;
            w.write_all(&(data.sealed.len() as u64 + 1).to_be_bytes())?;
            w.write_all(&data.saturated.to_be_bytes())?;
            for (bloom, count) in &data.sealed {
                let bytes = bloom.as_slice();
                w.write_all(&count.to_be_bytes())?;
                w.write_all(&(bytes.len() as u64).to_be_bytes())?;
                w.write_all(bytes)?;
            }
            w.write_all(&data.active_count.to_be_bytes())?;
            w.write_all(&(data.active.len() as u64).to_be_bytes())?;
            w.write_all(&data.active)?;
            let sum = w.hash.finalize_reset();
            w.inner.write_all(&sum)?;
            w.inner.flush()
        });
        if let Err(e) = result {
            // The logs still hold everything: mark the epoch for another try.
            if let Some(state) = self.lock().get_mut(&epoch) {
                state.since_snapshot = true;
            }
            return Err(e);
        }
        // Logs older than this snapshot are now redundant.
        for g in self
            .list()?
            .get(&epoch)
            .map(|f| f.1.clone())
            .unwrap_or_default()
        {
            if g < generation {
                fsutil::remove_if_exists(&log_path(&self.dir, epoch, g))?;
            }
        }
        Ok(())
    }

    /// Keeps the epochs in `live`, dropping the others from memory and disk.
    pub fn retain(&self, live: &[u64]) -> Result<()> {
        self.lock().retain(|e, _| live.contains(e));
        for (epoch, (has_snap, logs)) in self.list()? {
            if live.contains(&epoch) {
                continue;
            }
            if has_snap {
                fsutil::remove_if_exists(&snap_path(&self.dir, epoch))?;
            }
            for g in logs {
                fsutil::remove_if_exists(&log_path(&self.dir, epoch, g))?;
            }
        }
        Ok(())
    }

    /// The cache directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Epochs with a filter in memory.
    #[cfg(test)]
    pub(crate) fn epochs(&self) -> Vec<u64> {
        self.lock().keys().copied().collect()
    }

    /// Persists everything: a snapshot of every epoch and synced logs.
    pub fn close(&self) -> Result<()> {
        self.snapshot_all()?;
        self.sync()
            .map_err(|e| Error::io("could not sync", &self.dir, e))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tag(i: u32) -> ReplayTag {
        let mut t = [0u8; 32];
        t[..4].copy_from_slice(&i.to_be_bytes());
        t[31] = 0xaa;
        ReplayTag(t)
    }

    /// Segments at 1e-9. (False positives still happen in these small
    /// test filters more often than the rate says: `bloomfilter` derives
    /// its k probes as h1 + i·h2, and a tag whose h2 is a multiple of the
    /// filter's bit count probes one bit k times — about one tag in
    /// 2 × bits per full segment. At a node's sizes, a hundred million bits
    /// and more, that is far below 1e-6; at 40 000 bits it is not. So the
    /// tests allow a few false positives and compare them with the
    /// thousands of a saturated filter.)
    fn sized(items: usize, max_segments: usize) -> ReplaySizing {
        ReplaySizing {
            segment_items: items,
            false_positive_rate: 1e-9,
            max_segments,
        }
    }

    fn insert(c: &ReplayCache, e: u64, i: u32) -> Seen {
        let (seen, err) = c.check_and_insert(e, &tag(i));
        assert!(err.is_none());
        seen
    }

    #[test]
    fn settings_are_checked_and_sized() {
        let s = ReplaySettings::default();
        let bytes = s.check(Duration::from_secs(4200)).unwrap();
        // 4.2 M tags at 1e-6: about 15 MiB per segment.
        assert!(bytes > 14 << 20 && bytes < 16 << 20, "{bytes}");
        let bad = ReplaySettings {
            false_positive_rate: 0.0,
            ..s.clone()
        };
        assert!(bad.check(Duration::from_secs(10)).is_err());
        let huge = ReplaySettings {
            expected_packet_rate: 1e9,
            ..s
        };
        assert!(huge.check(Duration::from_secs(3600)).is_err());
    }

    #[test]
    fn the_chain_is_sized_for_the_capacity_within_the_memory_cap() {
        let window = Duration::from_secs(4200);
        let s = ReplaySettings::default();
        // 1000/s expected, 20 000/s possible: 20 segments of 4.2 M tags.
        let sizing = s.sizing(window, 20_000.0);
        assert_eq!(sizing.segment_items, 4_200_000);
        assert_eq!(sizing.max_segments, 20);
        assert!(sizing.capacity() >= 20_000 * 4200);
        // The configured rate wins over the measured one.
        let fixed = ReplaySettings {
            max_packet_rate: 5000.0,
            ..s.clone()
        };
        assert_eq!(fixed.sizing(window, 20_000.0).max_segments, 5);
        // The memory cap wins over both: 64 MiB is 4 segments of ~15 MiB.
        let small = ReplaySettings {
            max_memory_mib: 64,
            ..s.clone()
        };
        assert_eq!(small.sizing(window, 20_000.0).max_segments, 4);
        // Never less than one; a cap under one segment is refused.
        assert_eq!(s.sizing(window, 0.0).max_segments, 1);
        let tiny = ReplaySettings {
            max_memory_mib: 1,
            ..s
        };
        assert!(tiny.check(window).is_err());
    }

    /// A flood of tags five times what a segment is sized for, then fresh
    /// tags: with one filter (the old cache) most fresh tags come out as
    /// replays; with the chain, none does.
    #[test]
    fn a_saturating_flood_does_not_make_fresh_tags_replays() {
        let dir = tempfile::tempdir().unwrap();
        const ITEMS: u32 = 20_000;
        let single =
            ReplayCache::open(&dir.path().join("single"), sized(ITEMS as usize, 1), &[1]).unwrap();
        let chain =
            ReplayCache::open(&dir.path().join("chain"), sized(ITEMS as usize, 8), &[1]).unwrap();
        let mut flood_fp = 0;
        for i in 0..5 * ITEMS {
            let _ = insert(&single, 1, i);
            flood_fp += usize::from(insert(&chain, 1, i) == Seen::Replay);
        }
        assert!(flood_fp <= 3, "{flood_fp} flood tags taken for replays");
        let fresh = 10_000u32;
        let count = |c: &ReplayCache| {
            (0..fresh)
                .filter(|i| insert(c, 1, 1_000_000 + i) == Seen::Replay)
                .count()
        };
        let (single_fp, chain_fp) = (count(&single), count(&chain));
        // One filter at 5× its size: about half of fresh tags are lost.
        assert!(single_fp > fresh as usize / 4, "{single_fp}");
        assert!(chain_fp <= 2, "{chain_fp}");
        // Every flood tag is still recognised.
        for i in (0..5 * ITEMS).step_by(97) {
            assert_eq!(insert(&chain, 1, i), Seen::Replay, "tag {i}");
        }
        let st = chain.stats();
        assert_eq!(st.segments, 6);
        assert_eq!(
            st.tags,
            u64::from(5 * ITEMS + fresh) - (flood_fp + chain_fp) as u64
        );
        assert_eq!(st.saturated_tags, 0);
        assert!(
            st.false_positive_bound < 1e-8,
            "{}",
            st.false_positive_bound
        );
        let single_st = single.stats();
        assert!(single_st.saturated_tags > u64::from(3 * ITEMS));
        assert!(single_st.false_positive_bound > 0.1);
        println!(
            "| replay flood: {} tags into segments of {ITEMS} (1e-9), then {fresh} fresh tags | one filter (before): {single_fp} fresh tags taken for replays, false positive bound {:.2} | chain: {chain_fp} (and {flood_fp} during the flood), {} segments, bound {:.1e} |",
            5 * ITEMS,
            single_st.false_positive_bound,
            st.segments,
            st.false_positive_bound
        );
    }

    #[test]
    fn a_chain_at_its_memory_cap_counts_saturation() {
        let dir = tempfile::tempdir().unwrap();
        let c = ReplayCache::open(dir.path(), sized(1000, 3), &[1]).unwrap();
        let fresh = (0..3000).filter(|i| insert(&c, 1, *i) == Seen::New).count();
        assert!(fresh >= 2997, "{fresh}");
        assert_eq!(c.stats().saturated_tags, 0);
        for i in 3000..3500 {
            let _ = insert(&c, 1, i);
        }
        let st = c.stats();
        assert_eq!(st.segments, 3);
        assert!(st.saturated_tags >= 480, "{st:?}");
        assert!(st.false_positive_bound > 1e-9);
    }

    #[test]
    fn a_chain_survives_a_restart_and_a_format_1_snapshot_is_read() {
        let dir = tempfile::tempdir().unwrap();
        // A fresh tag may be a false positive in these small filters (see
        // `sized`): it is not stored as a tag, so count what was.
        let mut stored = 0;
        {
            let c = ReplayCache::open(dir.path(), sized(1000, 8), &[3]).unwrap();
            for i in 0..2500 {
                stored += u64::from(insert(&c, 3, i) == Seen::New);
            }
            c.snapshot_all().unwrap();
            for i in 2500..3200 {
                stored += u64::from(insert(&c, 3, i) == Seen::New);
            }
            c.close().unwrap();
        }
        assert!(stored >= 3195, "{stored} of 3200 fresh tags stored");
        let c = ReplayCache::open(dir.path(), sized(1000, 8), &[3]).unwrap();
        assert_eq!(c.stats().segments, 4);
        assert_eq!(c.stats().tags, stored);
        for i in 0..3200 {
            assert_eq!(insert(&c, 3, i), Seen::Replay, "tag {i}");
        }
        drop(c);

        // What the previous version wrote: one filter, no count.
        let v1 = tempfile::tempdir().unwrap();
        let mut bloom = Bloom::<Tag>::new_for_fp_rate_with_seed(1000, 1e-9, &[7; 32]).unwrap();
        for i in 0..10 {
            bloom.set(&Tag(tag(i).0));
        }
        let filter = bloom.to_bytes();
        let mut out = SNAP_MAGIC_V1.to_vec();
        out.extend_from_slice(&9u64.to_be_bytes());
        out.extend_from_slice(&1u64.to_be_bytes());
        out.extend_from_slice(&(filter.len() as u64).to_be_bytes());
        out.extend_from_slice(&filter);
        let sum = Sha256::digest(&out);
        out.extend_from_slice(&sum);
        fs::write(snap_path(v1.path(), 9), out).unwrap();
        let c = ReplayCache::open(v1.path(), sized(1000, 8), &[9]).unwrap();
        for i in 0..10 {
            assert_eq!(insert(&c, 9, i), Seen::Replay);
        }
        // It counts as full: the next tag starts a new segment.
        assert_eq!(insert(&c, 9, 99), Seen::New);
        assert_eq!(c.stats().segments, 2);
    }

    #[test]
    fn replays_are_detected_per_epoch() {
        let dir = tempfile::tempdir().unwrap();
        let c = ReplayCache::open(dir.path(), sized(10_000, 4), &[1, 2]).unwrap();
        assert_eq!(insert(&c, 1, 7), Seen::New);
        assert_eq!(insert(&c, 1, 7), Seen::Replay);
        // Same tag under another key epoch is another packet.
        assert_eq!(insert(&c, 2, 7), Seen::New);
        assert_eq!(insert(&c, 1, 8), Seen::New);
    }

    #[test]
    fn graceful_close_persists_everything() {
        let dir = tempfile::tempdir().unwrap();
        {
            let c = ReplayCache::open(dir.path(), sized(10_000, 4), &[5]).unwrap();
            for i in 0..500 {
                assert_eq!(insert(&c, 5, i), Seen::New);
            }
            c.snapshot_all().unwrap();
            for i in 500..1000 {
                assert_eq!(insert(&c, 5, i), Seen::New);
            }
            c.close().unwrap();
        }
        let c = ReplayCache::open(dir.path(), sized(10_000, 4), &[5]).unwrap();
        for i in 0..1000 {
            assert_eq!(insert(&c, 5, i), Seen::Replay, "tag {i}");
        }
        assert_eq!(insert(&c, 5, 5000), Seen::New);
    }

    #[test]
    fn a_crash_loses_only_what_was_not_synced() {
        let dir = tempfile::tempdir().unwrap();
        {
            let c = ReplayCache::open(dir.path(), sized(10_000, 4), &[5]).unwrap();
            for i in 0..300 {
                insert(&c, 5, i);
            }
            c.snapshot_all().unwrap();
            for i in 300..600 {
                insert(&c, 5, i);
            }
            c.sync().unwrap();
            for i in 600..610 {
                insert(&c, 5, i);
            }
            // A crash: no close, no flush of the last tags.
            std::mem::forget(c);
        }
        // A torn record at the end of the newest log is ignored.
        let mut logs: Vec<_> = fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().path())
            .filter(|p| p.to_string_lossy().contains(".log-"))
            .collect();
        logs.sort();
        let last = logs.last().unwrap();
        let mut f = OpenOptions::new().append(true).open(last).unwrap();
        f.write_all(&[1, 2, 3]).unwrap();
        drop(f);

        let c = ReplayCache::open(dir.path(), sized(10_000, 4), &[5]).unwrap();
        for i in 0..600 {
            assert_eq!(insert(&c, 5, i), Seen::Replay, "tag {i}");
        }
        // Tags after the last sync were lost (at 1e-6 none is a false positive).
        for i in 600..610 {
            assert_eq!(insert(&c, 5, i), Seen::New, "tag {i}");
        }
    }

    #[test]
    fn dead_epochs_are_removed_and_corrupt_snapshots_set_aside() {
        let dir = tempfile::tempdir().unwrap();
        {
            let c = ReplayCache::open(dir.path(), sized(10_000, 4), &[1, 2]).unwrap();
            insert(&c, 1, 1);
            insert(&c, 2, 2);
            c.close().unwrap();
            c.retain(&[2]).unwrap();
            assert_eq!(c.epochs(), vec![2]);
        }
        assert!(!snap_path(dir.path(), 1).exists());
        assert!(snap_path(dir.path(), 2).exists());
        // Corrupt the snapshot: it is set aside and the node still starts.
        let p = snap_path(dir.path(), 2);
        let mut bytes = fs::read(&p).unwrap();
        let n = bytes.len();
        bytes[n / 2] ^= 1;
        fs::write(&p, bytes).unwrap();
        let c = ReplayCache::open(dir.path(), sized(10_000, 4), &[2]).unwrap();
        assert_eq!(insert(&c, 2, 9), Seen::New);
        assert!(dir.path().join("epoch-2.snap.corrupt").exists());
    }
}
