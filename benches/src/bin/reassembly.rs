//! Load run (e): the client's receive side, reassembling large messages.
//!
//! ```text
//! cargo run --release -p murmur-benches --bin reassembly -- [--json] [--sizes-mib 1,8,64]
//! ```
//!
//! For each size, a random sealed message of that many MiB is cut with
//! `murmur_client::fragment::split` into deposit bodies, as a sender's
//! client does, and the bodies are written to a file (the mailbox's
//! stand-in). Then the receive side runs as the client's fetch loop does:
//! the bodies are read back in pages of `murmur_wire::mailbox::MAX_FETCH_LIMIT`
//! (the most entries one fetch returns), each body is opened with
//! `fragment::open`, each page is stored with one `Store::add_fragments`
//! call (one transaction, one fsync) in an encrypted store in a temporary
//! directory, and the message is read back with `Store::assemble` and
//! compared with what was sent.
//!
//! Each size runs in a child process of this binary, so its memory figures
//! are its own. Memory is the process's peak resident set (`VmHWM` in
//! `/proc/self/status`) during the receive side alone: the child resets the
//! peak (`/proc/self/clear_refs`, "5") after the sender's half, the store's
//! creation (Argon2id's 64 MiB) and the freeing of both, so the figure is
//! what receiving needs: the page being stored, redb's cache and the
//! assembled message. If the reset is refused, the figure is the child's
//! whole peak, and the report says so.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, missing_docs)]

use std::io::{BufReader, Read, Write};
use std::path::Path;
use std::process::Command;
use std::time::Instant;

use anyhow::{Context, bail};
use clap::Parser;
use murmur_benches::Machine;
use murmur_client::Passphrase;
use murmur_client::fragment::{self, FragmentKey};
use murmur_client::store::{Added, InFragment, Store};
use murmur_wire::mailbox::MAX_FETCH_LIMIT;
use murmur_wire::{DEPOSIT_BODY_SIZE, MessageId, QueueId};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha20Rng;
use serde::{Deserialize, Serialize};

#[derive(Parser, Debug)]
#[command(about = "The client's receive side: store and reassemble large messages")]
struct Args {
    /// Message sizes, MiB.
    #[arg(long, value_delimiter = ',', default_value = "1,8,64")]
    sizes_mib: Vec<u64>,
    /// Print one JSON object instead of the report.
    #[arg(long)]
    json: bool,
    /// Where the temporary store goes (default: the system's temporary
    /// directory). The figures depend on its disk's fsync.
    #[arg(long)]
    dir: Option<std::path::PathBuf>,
    /// Internal: run one size (MiB) and print its figures as JSON.
    #[arg(long, hide = true)]
    child: Option<u64>,
}

#[derive(Debug, Serialize, Deserialize)]
struct SizeReport {
    mib: u64,
    bytes: u64,
    fragments: u64,
    pages: u64,
    /// Opening the bodies (`fragment::open`), all pages.
    open_s: f64,
    /// `add_fragments`, all pages.
    store_s: f64,
    /// `assemble`.
    assemble_s: f64,
    /// All three: the receive side.
    total_s: f64,
    mb_per_s: f64,
    /// Resident set when the peak was reset (the sender's half freed).
    rss_at_start_kib: u64,
    /// Peak resident set during the receive side.
    peak_kib: u64,
    /// True if the peak could be reset (else it is the child's whole peak).
    peak_reset: bool,
    peak_over_message: f64,
    /// Size of the database file at the end.
    db_file_bytes: u64,
    /// `Store::create` before the receive side (Argon2id at the defaults).
    create_s: f64,
}

#[derive(Serialize)]
struct Report {
    machine: Machine,
    page: u32,
    sizes: Vec<SizeReport>,
}

/// A `/proc/self/status` field, kB.
fn status_kib(field: &str) -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix(field))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0)
}

/// Runs one size in this process.
fn run_one(mib: u64, dir: &Path) -> anyhow::Result<SizeReport> {
    let size = usize::try_from(mib << 20)?;
    let queue = QueueId::from_bytes([7; 32]);
    let key = FragmentKey::derive(&[9; 32], &queue);
    let message_id = MessageId::from_bytes([3; 16]);
    let mailbox = dir.join("mailbox.bin");

    // The sender's half: a random sealed message cut into bodies, written
    // where the receive side will fetch them from.
    let (fragments, digest) = {
        let mut rng = ChaCha20Rng::seed_from_u64(mib);
        let mut sealed = vec![0u8; size];
        rng.fill_bytes(&mut sealed);
        let bodies = fragment::split(&mut rng, &key, &queue, message_id, &sealed)?;
        let mut out = std::io::BufWriter::new(std::fs::File::create(&mailbox)?);
        for b in &bodies {
            out.write_all(&b[..])?;
        }
        out.flush()?;
        (bodies.len() as u64, checksum(&sealed))
    };
    let t = Instant::now();
    let store = Store::create(
        &dir.join("client.redb"),
        &Passphrase::new("reassembly bench"),
    )?;
    let create_s = t.elapsed().as_secs_f64();

    // From here on: the receive side.
    let peak_reset = std::fs::write("/proc/self/clear_refs", "5").is_ok();
    let rss_at_start_kib = status_kib("VmRSS:");
    let mut input = BufReader::new(std::fs::File::open(&mailbox)?);
    let page = MAX_FETCH_LIMIT as usize;
    let mut buf = vec![0u8; page * DEPOSIT_BODY_SIZE];
    let (mut open_s, mut store_s, mut pages, mut left) = (0.0, 0.0, 0u64, fragments as usize);
    let t_all = Instant::now();
    while left > 0 {
        let n = left.min(page);
        let bytes = &mut buf[..n * DEPOSIT_BODY_SIZE];
        input.read_exact(bytes)?;
        let t = Instant::now();
        let opened = bytes
            .chunks(DEPOSIT_BODY_SIZE)
            .map(|b| fragment::open(&key, &queue, b))
            .collect::<Result<Vec<_>, _>>()?;
        open_s += t.elapsed().as_secs_f64();
        let batch: Vec<InFragment<'_>> = opened
            .iter()
            .map(|f| InFragment {
                message: f.message_id,
                index: f.index,
                count: f.count,
                chunk: &f.chunk,
            })
            .collect();
        let t = Instant::now();
        let added = store.add_fragments(&queue, &batch, 1)?;
        store_s += t.elapsed().as_secs_f64();
        if added.iter().any(|a| *a != Added::New) {
            bail!("a fragment was not new: {added:?}");
        }
        pages += 1;
        left -= n;
    }
    let t = Instant::now();
    let assembled = store
        .assemble(&queue, &message_id)?
        .context("the message is not complete")?;
    let assemble_s = t.elapsed().as_secs_f64();
    let total_s = t_all.elapsed().as_secs_f64();
    let peak_kib = status_kib("VmHWM:");
    if assembled.len() != size || checksum(&assembled) != digest {
        bail!("the assembled message differs from the one sent");
    }
    drop(store);
    let db_file_bytes = std::fs::metadata(dir.join("client.redb"))?.len();
    Ok(SizeReport {
        mib,
        bytes: size as u64,
        fragments,
        pages,
        open_s,
        store_s,
        assemble_s,
        total_s,
        mb_per_s: size as f64 / 1e6 / total_s,
        rss_at_start_kib,
        peak_kib,
        peak_reset,
        peak_over_message: (peak_kib as f64 * 1024.0) / size as f64,
        db_file_bytes,
        create_s,
    })
}

/// A cheap order-sensitive checksum (FNV-1a over 8-byte words): the
/// comparison needs no second copy of the message.
fn checksum(bytes: &[u8]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for w in bytes.chunks(8) {
        let mut word = [0u8; 8];
        word[..w.len()].copy_from_slice(w);
        h = (h ^ u64::from_le_bytes(word)).wrapping_mul(0x0000_0100_0000_01b3);
    }
    h ^ bytes.len() as u64
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let tmp = match &args.dir {
        Some(d) => tempfile::tempdir_in(d)?,
        None => tempfile::tempdir()?,
    };
    if let Some(mib) = args.child {
        let report = run_one(mib, tmp.path())?;
        println!("{}", serde_json::to_string(&report)?);
        return Ok(());
    }
    let machine = Machine::now();
    if !args.json {
        println!("{}", machine.line());
        println!(
            "receive side: open each body, add_fragments per page of {MAX_FETCH_LIMIT}, assemble; \
             each size in a child process, peak RSS of the receive side alone"
        );
    }
    let mut sizes: Vec<SizeReport> = Vec::new();
    for mib in &args.sizes_mib {
        let mut cmd = Command::new(std::env::current_exe()?);
        cmd.arg("--child").arg(mib.to_string());
        if let Some(d) = &args.dir {
            cmd.arg("--dir").arg(d);
        }
        let out = cmd.output()?;
        if !out.status.success() {
            bail!(
                "the {mib} MiB run failed: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        let r: SizeReport = serde_json::from_slice(&out.stdout)
            .with_context(|| format!("the {mib} MiB run's output"))?;
        if !args.json {
            println!(
                "{:>4} MiB: {:>6} fragments in {:>4} pages, {:>6.2} s (open {:.2}, store {:.2}, assemble {:.2}) = {:>6.1} MB/s; \
                 peak RSS {:>6.1} MiB = {:.2} × the message{}; database file {:.1} MiB",
                r.mib,
                r.fragments,
                r.pages,
                r.total_s,
                r.open_s,
                r.store_s,
                r.assemble_s,
                r.mb_per_s,
                r.peak_kib as f64 / 1024.0,
                r.peak_over_message,
                if r.peak_reset {
                    ""
                } else {
                    " (whole child: peak reset refused)"
                },
                r.db_file_bytes as f64 / 1048576.0,
            );
        }
        sizes.push(r);
    }
    if !args.json && !sizes.is_empty() {
        let create: Vec<String> = sizes.iter().map(|r| format!("{:.2}", r.create_s)).collect();
        println!(
            "Store::create (Argon2id, 64 MiB x 3 passes), outside the figures above: {} s",
            create.join(" / ")
        );
    }
    if args.json {
        let report = Report {
            machine,
            page: MAX_FETCH_LIMIT,
            sizes,
        };
        println!("{}", serde_json::to_string(&report)?);
    }
    Ok(())
}
