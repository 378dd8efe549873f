//! `murmur demo`: a devnet in a temporary folder, two clients that become
//! contacts, text messages and a file each way, and a summary of what
//! arrived, how fast, and at what cost in cover traffic.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use murmur_client::network::follow;
use murmur_client::{
    Body, Client, ClientOptions, ClientStats, ConsensusSource, Passphrase, SendHandle,
};
use murmur_wire::{MessageId, QueueId};
use rand::{Rng, RngExt};
use serde::Serialize;
use tokio_util::sync::CancellationToken;

use crate::devnet::{Devnet, DevnetOptions};

/// The passphrase of the demo's two clients: they live in a temporary
/// folder that is removed at the end, so it protects nothing and is fixed.
pub const DEMO_PASSPHRASE: &str = "murmur-demo";

/// What the demo does.
#[derive(Clone, Debug)]
pub struct DemoOptions {
    /// Text messages each way.
    pub messages: usize,
    /// Bytes of the file sent each way (0: no file).
    pub file_size: usize,
    /// Stop one mix node while messages are in flight.
    pub kill_mix: bool,
    /// Print one JSON object instead of a summary.
    pub json: bool,
    /// Give up after this long.
    pub timeout: Duration,
    /// How often the clients poll their mailboxes.
    pub fetch_interval: Duration,
    /// Pause between sending one text each way and the next (zero: send
    /// them all at once).
    pub message_interval: Duration,
    /// The network.
    pub net: DevnetOptions,
}

#[derive(Debug, Serialize)]
struct LatencySummary {
    count: usize,
    mean_ms: f64,
    p50_ms: u64,
    p95_ms: u64,
    max_ms: u64,
}

fn summarize(mut v: Vec<u64>) -> LatencySummary {
    v.sort_unstable();
    let q = |p: f64| -> u64 {
        if v.is_empty() {
            return 0;
        }
        let i = ((v.len() as f64 - 1.0) * p).round() as usize;
        v[i.min(v.len() - 1)]
    };
    LatencySummary {
        count: v.len(),
        mean_ms: if v.is_empty() {
            0.0
        } else {
            v.iter().sum::<u64>() as f64 / v.len() as f64
        },
        p50_ms: q(0.5),
        p95_ms: q(0.95),
        max_ms: v.last().copied().unwrap_or(0),
    }
}

#[derive(Debug, Serialize)]
struct CoverSummary {
    drop_cover_packets: u64,
    loop_cover_packets: u64,
    loops_returned: u64,
    real_packets: u64,
    retransmissions: u64,
}

#[derive(Debug, Serialize)]
struct Config {
    mix_layers: usize,
    mixes_per_layer: usize,
    mailboxes: usize,
    authorities: usize,
    threshold: usize,
    mean_delay_ms: u64,
    client_rate: f64,
    client_loop_rate: f64,
    mix_loop_rate: f64,
    fetch_interval_ms: u64,
    message_interval_ms: u64,
    messages_each_way: usize,
    file_bytes: usize,
    kill_mix: bool,
}

#[derive(Debug, Serialize)]
struct Summary {
    ok: bool,
    sent: usize,
    delivered: usize,
    duplicates: usize,
    lost: usize,
    corrupted: usize,
    files_identical: bool,
    latency_text: LatencySummary,
    latency_all: LatencySummary,
    file_transfer_ms: Vec<u64>,
    cover: CoverSummary,
    killed_mix: Option<String>,
    elapsed_s: f64,
    config: Config,
}

struct Expected {
    to_alice: bool,
    body: Body,
}

fn add_stats(a: ClientStats, b: ClientStats) -> CoverSummary {
    CoverSummary {
        drop_cover_packets: a.drop_cover_sent + b.drop_cover_sent,
        loop_cover_packets: a.loop_cover_sent + b.loop_cover_sent,
        loops_returned: a.loops_returned + b.loops_returned,
        real_packets: a.real_sent + b.real_sent,
        retransmissions: a.retransmissions + b.retransmissions,
    }
}

/// What the demo's traffic must hide from an observer of its links: every
/// queue id of both clients, every text sent, and where the mailbox APIs
/// are (their connections must carry no plaintext). Returned to in-process
/// callers (the capture test), never printed.
#[derive(Clone, Debug, Default)]
pub struct Secrets {
    /// Every queue both clients own (acknowledgements, loops, inboxes).
    pub queues: Vec<QueueId>,
    /// The text messages sent.
    pub texts: Vec<String>,
    /// The mailbox providers' fetch API addresses.
    pub mailbox_apis: Vec<std::net::SocketAddr>,
    /// Every address the network's clients and nodes connect to: the
    /// authorities, every node's packet address, the fetch APIs.
    pub network: Vec<std::net::SocketAddr>,
}

/// Runs the demo; returns an error if anything was lost or changed.
pub async fn run(options: DemoOptions) -> Result<Secrets> {
    let started = Instant::now();
    let say = |s: &str| {
        if !options.json {
            eprintln!("{s}");
        }
    };
    let tmp = tempfile::tempdir().context("creating a temporary folder")?;
    let mut net_opts = options.net.clone();
    net_opts.dir = tmp.path().join("devnet");
    let mut devnet = Devnet::start(net_opts).await?;
    say(&format!("devnet: {}", devnet.describe()));
    let consensus = devnet.wait_ready(Duration::from_secs(60)).await?;
    say(&format!(
        "devnet ready: consensus for epoch {} verified",
        consensus.epoch()
    ));

    let shutdown = CancellationToken::new();
    let result = async {
        let source: Arc<dyn ConsensusSource> =
            follow(devnet.network(), Duration::from_secs(30), shutdown.clone()).await?;
        let client_opts = ClientOptions {
            fetch_interval: options.fetch_interval,
            ..ClientOptions::default()
        };
        let alice = Client::create(
            &tmp.path().join("alice"),
            "alice",
            source.clone(),
            None,
            client_opts.clone(),
            &Passphrase::new(DEMO_PASSPHRASE),
        )
        .await?;
        let bob = Client::create(
            &tmp.path().join("bob"),
            "bob",
            source.clone(),
            None,
            client_opts,
            &Passphrase::new(DEMO_PASSPHRASE),
        )
        .await?;
        let outcome = exchange(&options, &mut devnet, &alice, &bob, &tmp, &say).await;
        let mut secrets = Secrets::default();
        if let Some(c) = source.current() {
            secrets.mailbox_apis = c.mailboxes().iter().filter_map(|m| m.http_addr).collect();
            let nodes = c.layers().iter().flatten().chain(c.mailboxes());
            secrets.network = nodes.map(|n| n.packet_addr).collect();
            secrets.network.extend(secrets.mailbox_apis.iter().copied());
        }
        secrets
            .network
            .extend(devnet.network().authorities.iter().map(|a| a.address));
        for c in [&alice, &bob] {
            secrets
                .queues
                .extend(c.owned_queues()?.into_iter().map(|q| q.queue));
        }
        alice.shutdown().await;
        bob.shutdown().await;
        outcome.map(|(parts, killed, texts)| {
            secrets.texts = texts;
            (parts, killed, secrets)
        })
    }
    .await;
    shutdown.cancel();
    devnet.shutdown().await;
    let (summary_parts, killed, secrets) = result?;
    let summary = finish(&options, summary_parts, killed, started.elapsed());
    if options.json {
        println!("{}", serde_json::to_string(&summary)?);
    } else {
        print_summary(&summary);
    }
    if !summary.ok {
        bail!(
            "{} lost, {} duplicated, {} corrupted",
            summary.lost,
            summary.duplicates,
            summary.corrupted
        );
    }
    Ok(secrets)
}

struct Parts {
    sent: usize,
    delivered: usize,
    duplicates: usize,
    corrupted: usize,
    files_identical: bool,
    text_latencies: Vec<u64>,
    all_latencies: Vec<u64>,
    file_ms: Vec<u64>,
    cover: CoverSummary,
}

async fn exchange(
    options: &DemoOptions,
    devnet: &mut Devnet,
    alice: &Client,
    bob: &Client,
    tmp: &tempfile::TempDir,
    say: &dyn Fn(&str),
) -> Result<(Parts, Option<String>, Vec<String>)> {
    // Contact: Alice invites, Bob accepts; Alice learns of it by his hello.
    let invitation = alice.invite(None).await?;
    let alice_name = bob.accept(&invitation, None).await?;
    say(&format!(
        "bob accepted alice's invitation (as {alice_name:?}); waiting for his hello..."
    ));
    let deadline = Instant::now() + Duration::from_secs(120);
    let bob_name = loop {
        if let Some(c) = alice.contacts()?.into_iter().find(|c| c.established) {
            break c.name;
        }
        if Instant::now() > deadline {
            bail!("alice never received bob's hello");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let sn_a = alice.safety_number(&bob_name)?;
    let sn_b = bob.safety_number(&alice_name)?;
    if sn_a != sn_b {
        bail!("safety numbers differ: {sn_a} / {sn_b}");
    }
    say(&format!(
        "contacts established; safety numbers match ({sn_a})"
    ));

    // Everything either client receives, as one stream.
    let mut incoming = Box::pin(futures::stream::select(
        alice.incoming().into_stream(),
        bob.incoming().into_stream(),
    ));
    let mut rng = rand::rng();
    let mut expected: HashMap<MessageId, Expected> = HashMap::new();
    let mut handles: Vec<SendHandle> = Vec::new();
    let mut texts = Vec::new();
    for i in 0..options.messages {
        for (from, to, to_alice) in [(alice, &bob_name, false), (bob, &alice_name, true)] {
            let text = format!(
                "message {i} from {} — {:016x}",
                from.name(),
                rng.random::<u64>()
            );
            let h = from.send_text(to, &text).await?;
            texts.push(text.clone());
            expected.insert(
                h.id(),
                Expected {
                    to_alice,
                    body: Body::Text(text),
                },
            );
            handles.push(h);
        }
        if !options.message_interval.is_zero() {
            tokio::time::sleep(options.message_interval).await;
        }
    }
    if options.file_size > 0 {
        for (from, to, to_alice) in [(alice, &bob_name, false), (bob, &alice_name, true)] {
            let mut data = vec![0u8; options.file_size];
            rng.fill_bytes(&mut data);
            let name = format!("from-{}.bin", from.name());
            let path = tmp.path().join(&name);
            std::fs::write(&path, &data)?;
            let h = from.send_file(to, &path).await?;
            expected.insert(
                h.id(),
                Expected {
                    to_alice,
                    body: Body::File { name, data },
                },
            );
            handles.push(h);
        }
    }
    let sent = expected.len();
    let packets: u32 = handles.iter().map(|h| h.progress().total).sum();
    say(&format!(
        "sent {sent} messages ({packets} packets) through the mixnet..."
    ));

    let mut killed = None;
    if options.kill_mix {
        // Let traffic flow, then stop a middle-layer mix.
        tokio::time::sleep(Duration::from_secs(2)).await;
        let consensus = devnet.wait_ready(Duration::from_secs(10)).await?;
        let victim = consensus
            .layers()
            .get(1)
            .and_then(|l| l.first())
            .map(|n| n.id);
        let index = devnet.mix_ids().iter().position(|id| *id == victim);
        if let Some(i) = index
            && let Some(id) = devnet.stop_mix(i).await
        {
            say(&format!("stopped mix node {id} (layer 2) mid-transfer"));
            killed = Some(id.to_string());
        }
    }

    // Wait for every message at its recipient, and every acknowledgement.
    let mut received: HashMap<MessageId, (Body, u64, u64)> = HashMap::new();
    let mut duplicates = 0;
    let deadline = tokio::time::Instant::now() + options.timeout;
    while received.len() < sent {
        let next = tokio::select! {
            m = futures::StreamExt::next(&mut incoming) => m,
            _ = tokio::time::sleep_until(deadline) => None,
        };
        let Some(m) = next else { break };
        if matches!(m.message.body, Body::Hello { .. }) {
            continue;
        }
        let r = m.message;
        if received
            .insert(r.message_id, (r.body, r.sent_at_ms, r.received_at_ms))
            .is_some()
        {
            duplicates += 1;
        }
    }
    let mut failed_acks = 0;
    for h in handles {
        match tokio::time::timeout_at(deadline, h.delivered()).await {
            Ok(Ok(_)) => {}
            _ => failed_acks += 1,
        }
    }
    if failed_acks > 0 {
        say(&format!(
            "{failed_acks} message(s) were not acknowledged in time"
        ));
    }
    // Inboxes are the durable record: count duplicates there too.
    for c in [alice, bob] {
        let mut seen = std::collections::HashSet::new();
        for (_, r) in c.inbox(false)? {
            if !matches!(r.body, Body::Hello { .. }) && !seen.insert(r.message_id) {
                duplicates += 1;
            }
        }
    }

    let mut corrupted = 0;
    let mut files_identical = true;
    let mut text_latencies = Vec::new();
    let mut all_latencies = Vec::new();
    let mut file_ms = Vec::new();
    for (id, exp) in &expected {
        let Some((body, sent_at, received_at)) = received.get(id) else {
            continue;
        };
        let ms = received_at.saturating_sub(*sent_at);
        all_latencies.push(ms);
        if *body != exp.body {
            corrupted += 1;
            if matches!(exp.body, Body::File { .. }) {
                files_identical = false;
            }
            continue;
        }
        let _ = exp.to_alice;
        match body {
            Body::Text(_) => text_latencies.push(ms),
            Body::File { .. } => file_ms.push(ms),
            Body::Hello { .. } => {}
        }
    }
    let delivered = expected
        .keys()
        .filter(|id| received.contains_key(id))
        .count();
    if options.file_size > 0 && file_ms.len() < 2 {
        files_identical = false;
    }
    Ok((
        Parts {
            sent,
            delivered,
            duplicates,
            corrupted,
            files_identical,
            text_latencies,
            all_latencies,
            file_ms,
            cover: add_stats(alice.stats(), bob.stats()),
        },
        killed,
        texts,
    ))
}

fn finish(options: &DemoOptions, p: Parts, killed: Option<String>, elapsed: Duration) -> Summary {
    let lost = p.sent - p.delivered;
    Summary {
        ok: lost == 0 && p.duplicates == 0 && p.corrupted == 0 && p.files_identical,
        sent: p.sent,
        delivered: p.delivered,
        duplicates: p.duplicates,
        lost,
        corrupted: p.corrupted,
        files_identical: p.files_identical,
        latency_text: summarize(p.text_latencies),
        latency_all: summarize(p.all_latencies),
        file_transfer_ms: p.file_ms,
        cover: p.cover,
        killed_mix: killed,
        elapsed_s: elapsed.as_secs_f64(),
        config: Config {
            mix_layers: 3,
            mixes_per_layer: options.net.width,
            mailboxes: options.net.mailboxes,
            authorities: options.net.authorities,
            threshold: options.net.threshold,
            mean_delay_ms: options.net.mean_delay_ms,
            client_rate: options.net.client_rate,
            client_loop_rate: options.net.client_loop_rate,
            mix_loop_rate: options.net.mix_loop_rate,
            fetch_interval_ms: u64::try_from(options.fetch_interval.as_millis())
                .unwrap_or(u64::MAX),
            message_interval_ms: u64::try_from(options.message_interval.as_millis())
                .unwrap_or(u64::MAX),
            messages_each_way: options.messages,
            file_bytes: options.file_size,
            kill_mix: options.kill_mix,
        },
    }
}

fn print_summary(s: &Summary) {
    println!();
    println!(
        "Murmur demo — {}",
        if s.ok {
            "every message delivered exactly once"
        } else {
            "FAILED"
        }
    );
    println!(
        "  messages:   {} sent, {} delivered, {} duplicated, {} lost, {} corrupted",
        s.sent, s.delivered, s.duplicates, s.lost, s.corrupted
    );
    if s.config.file_bytes > 0 {
        println!(
            "  files:      2 × {} bytes, {} (transfer {} ms)",
            s.config.file_bytes,
            if s.files_identical {
                "byte-identical"
            } else {
                "NOT identical"
            },
            s.file_transfer_ms
                .iter()
                .map(|m| m.to_string())
                .collect::<Vec<_>>()
                .join(" / ")
        );
    }
    println!(
        "  latency:    texts p50 {} ms, p95 {} ms, max {} ms (mean per-hop delay {} ms × 3 mixes)",
        s.latency_text.p50_ms, s.latency_text.p95_ms, s.latency_text.max_ms, s.config.mean_delay_ms
    );
    println!(
        "  traffic:    {} real packets, {} retransmissions, {} drop-cover, {} loop-cover ({} returned)",
        s.cover.real_packets,
        s.cover.retransmissions,
        s.cover.drop_cover_packets,
        s.cover.loop_cover_packets,
        s.cover.loops_returned
    );
    if let Some(k) = &s.killed_mix {
        println!("  fault:      mix node {k} was stopped mid-transfer");
    }
    println!("  elapsed:    {:.1} s", s.elapsed_s);
}
