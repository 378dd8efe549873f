//! `murmur-sim`: run one simulated Murmur network, or sweep parameters.

use std::path::PathBuf;
use std::time::Instant;

use anyhow::Context as _;
use clap::{Args, Parser, Subcommand};
use indicatif::{ProgressBar, ProgressStyle};
use murmur_sim::params::Params;
use murmur_sim::protocol::{ProtocolParams, simulate_protocol};
use murmur_sim::study::{self, Study, SweepAxis};
use murmur_sim::{LinkDelay, plot, simulate};
use tracing_subscriber::EnvFilter;

/// Discrete-event simulator of a Murmur mixnet (latency and anonymity),
/// driving the same policy code as the real nodes and clients.
#[derive(Parser)]
#[command(name = "murmur-sim", version)]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Simulate one network and print a summary (or one JSON object).
    Run(RunArgs),
    /// Simulate every point of a parameter grid, in parallel, and write a
    /// CSV and SVG plots.
    Sweep(SweepArgs),
    /// Run the protocol model: clients that are real client cores
    /// (murmur-client-core) with acknowledgements, retransmission, loss and
    /// dead mixes, and print a summary (or one JSON object).
    Protocol(ProtocolArgs),
}

/// The protocol model's parameters; each overrides its default.
#[derive(Args)]
struct ProtocolArgs {
    /// Mixes per layer W (3 layers) [default: 3].
    #[arg(long)]
    width: Option<usize>,
    /// Mailbox providers P [default: 2].
    #[arg(long)]
    providers: Option<usize>,
    /// Clients N, each a client core [default: 50].
    #[arg(long)]
    clients: Option<usize>,
    /// Real messages per second per client (Poisson) [default: 0.1].
    #[arg(long)]
    rate: Option<f64>,
    /// Fragments per message [default: 1].
    #[arg(long)]
    fragments: Option<u32>,
    /// Mean per-hop delay, seconds [default: 0.05].
    #[arg(long, value_name = "SECONDS")]
    mean_delay: Option<f64>,
    /// Per-hop delay clamp, seconds [default: 20 × mean delay].
    #[arg(long, value_name = "SECONDS")]
    max_delay: Option<f64>,
    /// Link latency, seconds: fixed (0.005) or uniform (0.001..0.005)
    /// [default: 0.005].
    #[arg(long, value_name = "SECONDS")]
    link_delay: Option<LinkDelay>,
    /// λ: the consensus's client send rate, packets/s; 0 = no cover
    /// [default: 2].
    #[arg(long, value_name = "PER_SECOND")]
    cover_rate: Option<f64>,
    /// λ_L: the consensus's client loop rate, packets/s [default: 0.5].
    #[arg(long, value_name = "PER_SECOND")]
    loop_rate: Option<f64>,
    /// How often a client fetches each queue, seconds [default: 1].
    #[arg(long, value_name = "SECONDS")]
    fetch_interval: Option<f64>,
    /// Round trip of a fetch, seconds [default: 0.05].
    #[arg(long, value_name = "SECONDS")]
    fetch_rtt: Option<f64>,
    /// Tries per fragment before its message fails [default: 10].
    #[arg(long)]
    max_tries: Option<u32>,
    /// Acknowledgement timeout, seconds [default: from the consensus].
    #[arg(long, value_name = "SECONDS")]
    ack_timeout: Option<f64>,
    /// Fraction of mixes that drop everything [default: 0].
    #[arg(long, value_name = "FRACTION")]
    dead_mixes: Option<f64>,
    /// Probability that a packet is lost [default: 0].
    #[arg(long, value_name = "PROBABILITY")]
    loss: Option<f64>,
    /// Messages are created for this long, seconds of virtual time
    /// [default: 600].
    #[arg(long, value_name = "SECONDS")]
    duration: Option<f64>,
    /// The longest the run goes on for messages to settle, seconds
    /// [default: twice a fragment's retry horizon + 60].
    #[arg(long, value_name = "SECONDS")]
    drain: Option<f64>,
    /// Random seed [default: 1].
    #[arg(long)]
    seed: Option<u64>,
    /// Print the whole report as one JSON object instead of the summary.
    #[arg(long)]
    json: bool,
}

impl ProtocolArgs {
    fn params(&self) -> ProtocolParams {
        let mut p = ProtocolParams::default();
        macro_rules! set {
            ($($field:ident),*) => {
                $(if let Some(v) = self.$field { p.$field = v; })*
            };
        }
        set!(
            width,
            providers,
            clients,
            rate,
            fragments,
            mean_delay,
            link_delay,
            cover_rate,
            loop_rate,
            fetch_interval,
            fetch_rtt,
            max_tries,
            dead_mixes,
            loss,
            duration,
            seed
        );
        p.max_delay = self.max_delay.or(p.max_delay);
        p.ack_timeout = self.ack_timeout.or(p.ack_timeout);
        p.drain = self.drain.or(p.drain);
        p
    }
}

#[derive(Args)]
struct RunArgs {
    #[command(flatten)]
    params: ParamArgs,
    /// Print the whole report as one JSON object instead of the summary.
    #[arg(long)]
    json: bool,
}

#[derive(Args)]
struct SweepArgs {
    #[command(flatten)]
    params: ParamArgs,
    /// A swept parameter and its values, as PARAM=V1,V2,... (e.g.
    /// mean-delay=0.01,0.02,0.05). Repeat for a grid: the first is the x
    /// axis of the plots, the others give one line each. Replaces the
    /// study file's axes.
    #[arg(long = "sweep", value_name = "PARAM=VALUES")]
    sweep: Vec<String>,
    /// Directory for sweep.csv, latency.svg and entropy.svg (created if
    /// missing).
    #[arg(long, default_value = "sweep-out")]
    out: PathBuf,
    /// Worker threads (default: one per core).
    #[arg(long)]
    threads: Option<usize>,
}

/// The parameters of a network; each overrides the study file's value.
#[derive(Args)]
struct ParamArgs {
    /// Study file (TOML): parameters as top-level keys, optional [[sweep]]
    /// axes. Flags override it.
    #[arg(long, value_name = "FILE")]
    study: Option<PathBuf>,
    /// Mix layers L [default: 3].
    #[arg(long)]
    layers: Option<usize>,
    /// Mixes per layer W [default: 4].
    #[arg(long)]
    width: Option<usize>,
    /// Clients N [default: 1000].
    #[arg(long)]
    clients: Option<usize>,
    /// Mailbox providers P [default: 4].
    #[arg(long)]
    providers: Option<usize>,
    /// Real messages per second per client (Poisson) [default: 0.2].
    #[arg(long)]
    rate: Option<f64>,
    /// Mean per-hop delay, seconds (exponential) [default: 0.05].
    #[arg(long, value_name = "SECONDS")]
    mean_delay: Option<f64>,
    /// Per-hop delay clamp, seconds [default: 20 × mean delay].
    #[arg(long, value_name = "SECONDS")]
    max_delay: Option<f64>,
    /// Link latency, seconds: fixed (0.005) or uniform in a range
    /// (0.001..0.005) [default: 0.005].
    #[arg(long, value_name = "SECONDS")]
    link_delay: Option<LinkDelay>,
    /// λ: each client's send-stream rate, packets/s; 0 = no cover (real
    /// packets sent immediately) [default: 2].
    #[arg(long, value_name = "PER_SECOND")]
    cover_rate: Option<f64>,
    /// λ_L: each client's loop-cover rate, packets/s [default: 1].
    #[arg(long, value_name = "PER_SECOND")]
    loop_rate: Option<f64>,
    /// Simulated time, seconds [default: 60].
    #[arg(long, value_name = "SECONDS")]
    duration: Option<f64>,
    /// Unmeasured start, seconds [default: 10].
    #[arg(long, value_name = "SECONDS")]
    warmup: Option<f64>,
    /// Target messages followed for the entropy estimate [default: 200].
    #[arg(long)]
    targets: Option<usize>,
    /// Fraction of mixes the adversary controls, 0..1 [default: 0].
    #[arg(long, value_name = "FRACTION")]
    compromised: Option<f64>,
    /// Random seed [default: 1].
    #[arg(long)]
    seed: Option<u64>,
    /// Pool-size sampling interval, seconds [default: duration / 200].
    #[arg(long, value_name = "SECONDS")]
    sample_interval: Option<f64>,
}

impl ParamArgs {
    fn study(&self) -> anyhow::Result<Study> {
        let mut study = match &self.study {
            Some(path) => Study::load(path)?,
            None => Study::default(),
        };
        let p = &mut study.params;
        macro_rules! set {
            ($($field:ident),*) => {
                $(if let Some(v) = self.$field { p.$field = v; })*
            };
        }
        set!(
            layers,
            width,
            clients,
            providers,
            rate,
            mean_delay,
            link_delay,
            cover_rate,
            loop_rate,
            duration,
            warmup,
            targets,
            compromised,
            seed
        );
        if let Some(v) = self.max_delay {
            p.max_delay = Some(v);
        }
        if let Some(v) = self.sample_interval {
            p.sample_interval = Some(v);
        }
        Ok(study)
    }
}

fn warn_about(p: &Params) {
    if p.cover_rate > 0.0 && p.rate >= p.cover_rate {
        tracing::warn!(
            rate = p.rate,
            cover_rate = p.cover_rate,
            "messages arrive at least as fast as send ticks: client outboxes grow without bound"
        );
    }
}

fn run(args: RunArgs) -> anyhow::Result<()> {
    let study = args.params.study()?;
    if !study.sweep.is_empty() {
        tracing::warn!("the study file's [[sweep]] axes are ignored by `run`; use `sweep`");
    }
    warn_about(&study.params);
    let report = simulate(&study.params)?;
    if args.json {
        println!("{}", serde_json::to_string(&report)?);
    } else {
        println!("{report}");
    }
    Ok(())
}

fn sweep(args: SweepArgs) -> anyhow::Result<()> {
    let mut study = args.params.study()?;
    if !args.sweep.is_empty() {
        study.sweep = args
            .sweep
            .iter()
            .map(|s| s.parse::<SweepAxis>())
            .collect::<Result<_, _>>()?;
    }
    if study.sweep.is_empty() {
        anyhow::bail!("nothing to sweep: give --sweep PARAM=V1,V2,... or [[sweep]] in the study");
    }
    let points = study.points()?;
    for p in &points {
        warn_about(&p.params);
    }
    let threads = args
        .threads
        .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()));
    std::fs::create_dir_all(&args.out)
        .with_context(|| format!("creating {}", args.out.display()))?;

    let bar = ProgressBar::new(points.len() as u64);
    bar.set_style(ProgressStyle::with_template(
        "{spinner} [{elapsed_precise}] {bar:40} {pos}/{len} points (eta {eta})",
    )?);
    let started = Instant::now();
    let reports = study::run_points(&points, threads, &|_| bar.inc(1))?;
    bar.finish_and_clear();
    let wall = started.elapsed().as_secs_f64();

    let csv_path = args.out.join("sweep.csv");
    std::fs::write(&csv_path, study::csv(&reports))
        .with_context(|| format!("writing {}", csv_path.display()))?;
    let plots = plot::plot_sweep(&reports, &study.sweep, &args.out)?;

    let names: Vec<&str> = study.sweep.iter().map(|a| a.flag).collect();
    println!(
        "{:<24} {:>12} {:>12} {:>14} {:>12} {:>8}",
        names.join(" "),
        "latency ms",
        "p95 ms",
        "entropy bits",
        "p5 bits",
        "wall s"
    );
    for (point, r) in points.iter().zip(&reports) {
        println!(
            "{:<24} {:>12.1} {:>12.1} {:>14.2} {:>12.2} {:>8.2}",
            point.values.join(" "),
            r.latency.mean * 1e3,
            r.latency.p95 * 1e3,
            r.anonymity.mean,
            r.anonymity.p5,
            r.perf.wall_seconds
        );
    }
    println!(
        "{} points on {} threads in {:.1} s; wrote {}",
        points.len(),
        threads,
        wall,
        std::iter::once(&csv_path)
            .chain(&plots)
            .map(|p| p.display().to_string())
            .collect::<Vec<_>>()
            .join(", ")
    );
    Ok(())
}

fn protocol(args: ProtocolArgs) -> anyhow::Result<()> {
    let p = args.params();
    if p.cover_rate > 0.0 && p.rate * f64::from(p.fragments) >= p.cover_rate {
        tracing::warn!(
            rate = p.rate,
            fragments = p.fragments,
            cover_rate = p.cover_rate,
            "fragments are queued at least as fast as send ticks: client outboxes grow without bound"
        );
    }
    let report = simulate_protocol(&p)?;
    if args.json {
        println!("{}", serde_json::to_string(&report)?);
    } else {
        println!("{report}");
    }
    Ok(())
}

fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("warn")),
        )
        .with_writer(std::io::stderr)
        .init();
    match Cli::parse().cmd {
        Cmd::Run(args) => run(args),
        Cmd::Sweep(args) => sweep(args),
        Cmd::Protocol(args) => protocol(args),
    }
}
