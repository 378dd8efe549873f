//! The replay cache: one Bloom filter of replay tags per Sphinx key epoch,
//! persisted so that it survives a restart within the epoch.
//!
//! # Sizing
//!
//! A filter holds `expected_packet_rate × window` tags (the window is the
//! key's lifetime: an epoch plus the grace period) at the configured false
//! positive rate; a false positive drops a fresh packet as a replay. The
//! filter uses `bloomfilter` (SipHash-1-3 keyed with a random per-filter
//! seed, stored with the filter). Past the expected count the false positive
//! rate rises gradually; nothing grows.
//!
//! # Persistence
//!
//! Per epoch `e`, in the cache directory:
//!
//! * `epoch-e.snap` — a snapshot: the filter with a generation number `G`
//!   and a SHA-256 checksum, written to a temporary file, fsynced and
//!   renamed into place;
//! * `epoch-e.log-g` — append-only tag logs (32 bytes per tag). Every new tag
//!   is appended to the current log before its packet goes further; logs
//!   are flushed and fsynced every `fsync_interval_ms`.
//!
//! A snapshot of generation `G` holds every tag of every log `g < G`. Taking
//! one: switch appends to log `G` (under the lock), fsync the previous log,
//! write the snapshot, then delete logs `< G`. Loading: the snapshot (if
//! any), then every log `g ≥ G`; a torn last record is ignored. At open,
//! each epoch is compacted into a fresh snapshot.
//!
//! **What a crash can lose**: the tags appended since the last fsync, i.e.
//! those of packets accepted in the last `fsync_interval_ms` before the
//! crash (plus the duration of one fsync). Those packets could be replayed
//! once after the restart. A graceful shutdown writes a snapshot of every
//! epoch and loses nothing.

use std::collections::BTreeMap;
use std::fs::{self, File, OpenOptions};
use std::hash::{Hash, Hasher};
use std::io::{BufWriter, Read, Write};
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
    /// Packets per second the node expects to process (sizes the filter).
    pub expected_packet_rate: f64,
    /// Probability that a fresh packet is taken for a replay when the
    /// filter holds the expected number of tags.
    pub false_positive_rate: f64,
    /// How often new tags are flushed and fsynced to the tag log, ms. A
    /// crash loses at most this much of the cache.
    pub fsync_interval_ms: u64,
    /// How often a snapshot of each epoch's filter is written, seconds.
    pub snapshot_interval_secs: u64,
}

impl Default for ReplaySettings {
    fn default() -> Self {
        Self {
            expected_packet_rate: 1000.0,
            false_positive_rate: 1e-6,
            fsync_interval_ms: 200,
            snapshot_interval_secs: 300,
        }
    }
}

/// The largest filter allowed, bytes.
const MAX_FILTER_BYTES: usize = 1 << 30;
/// The most epochs held at once (the key ring holds one or two).
const MAX_EPOCHS: usize = 4;
const TAG_LEN: usize = 32;
const SNAP_MAGIC: &[u8; 8] = b"MURMRPC\x01";
const SNAP_HEADER: usize = 8 + 8 + 8 + 8;

impl ReplaySettings {
    /// The number of tags one filter is sized for, given the window a key
    /// lives (an epoch plus the grace period).
    pub fn expected_items(&self, window: Duration) -> usize {
        let n = (self.expected_packet_rate * window.as_secs_f64()).ceil();
        if n.is_finite() && n >= 1000.0 {
            n.min(usize::MAX as f64) as usize
        } else {
            1000
        }
    }

    /// Checks the settings; returns the filter size in bytes.
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
                "the replay filter would take {} MiB (over {} MiB): lower replay.expected_packet_rate or raise replay.false_positive_rate",
                bytes >> 20,
                MAX_FILTER_BYTES >> 20
            )));
        }
        Ok(bytes)
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

struct EpochState {
    bloom: Bloom<Tag>,
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

/// The replay cache the engine checks every packet against: one Bloom
/// filter of replay tags per Sphinx key epoch; every new tag is appended to
/// a tag log that [`ReplayCache::sync`] fsyncs, and
/// [`ReplayCache::snapshot_all`] writes checksummed snapshots, so the cache
/// survives a restart. Public so that benchmarks and tools can drive the
/// engine's own code directly.
pub struct ReplayCache {
    dir: PathBuf,
    items: usize,
    fp: f64,
    inner: Mutex<BTreeMap<u64, EpochState>>,
}

impl std::fmt::Debug for ReplayCache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ReplayCache")
            .field("dir", &self.dir)
            .field("items", &self.items)
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

impl ReplayCache {
    /// Opens the cache in `dir` for filters of `items` tags at false
    /// positive rate `fp`, loading the epochs in `live` from disk and
    /// deleting the files of every other epoch.
    pub fn open(dir: &Path, items: usize, fp: f64, live: &[u64]) -> Result<Self> {
        fsutil::private_dir(dir)?;
        let cache = Self {
            dir: dir.to_owned(),
            items,
            fp,
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
        Bloom::new_for_fp_rate_with_seed(self.items, self.fp, &seed)
            .map_err(|e| Error::Config(format!("replay filter: {e}")))
    }

    fn load_epoch(&self, epoch: u64, files: &(bool, Vec<u64>)) -> Result<EpochState> {
        let (has_snap, logs) = files;
        let (mut bloom, generation) = if *has_snap {
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
                    (self.new_bloom()?, 0)
                }
            }
        } else {
            (self.new_bloom()?, 0)
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
                bloom.set(&Tag(t));
            }
        }
        Ok(EpochState {
            bloom,
            generation: max_gen,
            log: None,
            log_file: None,
            unsynced: false,
            since_snapshot: true,
        })
    }

    fn read_snapshot(&self, epoch: u64) -> Result<(Bloom<Tag>, u64)> {
        let path = snap_path(&self.dir, epoch);
        let bytes = fs::read(&path).map_err(|e| Error::io("could not read", &path, e))?;
        let corrupt = |reason: &str| Error::Corrupt {
            path: path.clone(),
            reason: reason.to_owned(),
        };
        if bytes.len() < SNAP_HEADER + 32 {
            return Err(corrupt("too short"));
        }
        let (body, sum) = bytes.split_at(bytes.len() - 32);
        if Sha256::digest(body).as_slice() != sum {
            return Err(corrupt("checksum mismatch"));
        }
        if &body[..8] != SNAP_MAGIC {
            return Err(corrupt("not a replay cache snapshot"));
        }
        let word = |i: usize| {
            let mut w = [0u8; 8];
            w.copy_from_slice(&body[i..i + 8]);
            u64::from_be_bytes(w)
        };
        if word(8) != epoch {
            return Err(corrupt("snapshot of another epoch"));
        }
        let generation = word(16);
        let len = word(24);
        let filter = &body[SNAP_HEADER..];
        if filter.len() as u64 != len {
            return Err(corrupt("length mismatch"));
        }
        let bloom = Bloom::from_bytes(filter.to_vec()).map_err(corrupt)?;
        Ok((bloom, generation))
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
            inner.insert(
                epoch,
                EpochState {
                    bloom,
                    generation: 0,
                    log: None,
                    log_file: None,
                    unsynced: false,
                    since_snapshot: true,
                },
            );
        }
        let Some(state) = inner.get_mut(&epoch) else {
            return (Seen::New, None);
        };
        let t = Tag(tag.0);
        if state.bloom.check_and_set(&t) {
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
        let (bytes, generation, old_file) = {
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
            // everything before.
            state.log = None;
            let old_file = state.log_file.take();
            state.generation = next;
            state.since_snapshot = false;
            state.unsynced = false;
            (state.bloom.to_bytes(), next, old_file)
        };
        if let Some(f) = old_file {
            f.sync_data().map_err(|e| {
                Error::io(
                    "could not sync",
                    log_path(&self.dir, epoch, generation - 1),
                    e,
                )
            })?;
        }
        let mut out = Vec::with_capacity(SNAP_HEADER + bytes.len() + 32);
        out.extend_from_slice(SNAP_MAGIC);
        out.extend_from_slice(&epoch.to_be_bytes());
        out.extend_from_slice(&generation.to_be_bytes());
        out.extend_from_slice(&(bytes.len() as u64).to_be_bytes());
        out.extend_from_slice(&bytes);
        let sum = Sha256::digest(&out);
        out.extend_from_slice(&sum);
        let result = fsutil::write_private(&snap_path(&self.dir, epoch), &out);
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

    fn insert(c: &ReplayCache, e: u64, i: u32) -> Seen {
        let (seen, err) = c.check_and_insert(e, &tag(i));
        assert!(err.is_none());
        seen
    }

    #[test]
    fn settings_are_checked_and_sized() {
        let s = ReplaySettings::default();
        let bytes = s.check(Duration::from_secs(4200)).unwrap();
        // 4.2 M tags at 1e-6: about 15 MiB.
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
    fn replays_are_detected_per_epoch() {
        let dir = tempfile::tempdir().unwrap();
        let c = ReplayCache::open(dir.path(), 10_000, 1e-6, &[1, 2]).unwrap();
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
            let c = ReplayCache::open(dir.path(), 10_000, 1e-6, &[5]).unwrap();
            for i in 0..500 {
                assert_eq!(insert(&c, 5, i), Seen::New);
            }
            c.snapshot_all().unwrap();
            for i in 500..1000 {
                assert_eq!(insert(&c, 5, i), Seen::New);
            }
            c.close().unwrap();
        }
        let c = ReplayCache::open(dir.path(), 10_000, 1e-6, &[5]).unwrap();
        for i in 0..1000 {
            assert_eq!(insert(&c, 5, i), Seen::Replay, "tag {i}");
        }
        assert_eq!(insert(&c, 5, 5000), Seen::New);
    }

    #[test]
    fn a_crash_loses_only_what_was_not_synced() {
        let dir = tempfile::tempdir().unwrap();
        {
            let c = ReplayCache::open(dir.path(), 10_000, 1e-6, &[5]).unwrap();
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

        let c = ReplayCache::open(dir.path(), 10_000, 1e-6, &[5]).unwrap();
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
            let c = ReplayCache::open(dir.path(), 10_000, 1e-6, &[1, 2]).unwrap();
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
        let c = ReplayCache::open(dir.path(), 10_000, 1e-6, &[2]).unwrap();
        assert_eq!(insert(&c, 2, 9), Seen::New);
        assert!(dir.path().join("epoch-2.snap.corrupt").exists());
    }
}
