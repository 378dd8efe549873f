//! What an observer of the loopback interface sees while `murmur demo`
//! runs: a real packet capture (tcpdump), searched for everything the
//! links must hide — the mailbox API's requests and responses, every queue
//! id of both clients (bytes and base58), the texts sent, and packet frames
//! in the clear.
//!
//! Controls, so that a capture that saw nothing cannot pass: the capture
//! must hold the directory's own plain HTTP (which is public and not
//! encrypted) and a marker the test sends over a plain loopback connection,
//! and every mailbox API connection must have carried bytes.
//!
//! Needs tcpdump and the right to capture (root or CAP_NET_RAW). Without
//! them the test says so and passes, unless `MURMUR_REQUIRE_CAPTURE=1`
//! (`.ci/run` installs tcpdump and sets it): then it fails.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, missing_docs)]

use std::collections::HashMap;
use std::net::{Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use murmur::demo::{DemoOptions, run};
use murmur::devnet::DevnetOptions;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};

fn tcpdump() -> Option<PathBuf> {
    ["/usr/bin/tcpdump", "/usr/sbin/tcpdump", "/sbin/tcpdump"]
        .iter()
        .map(PathBuf::from)
        .find(|p| p.exists())
}

/// One TCP flow's payload, in capture order: (source, destination).
type Flows = HashMap<(SocketAddr, SocketAddr), Vec<u8>>;

/// Reassembles the TCP payloads of an IPv4 pcap file (Ethernet or Linux
/// cooked framing), in capture order, per direction of each connection.
/// Loopback neither loses nor reorders, and a retransmitted segment would
/// only repeat bytes, which cannot hide a needle.
fn flows(pcap: &Path) -> Flows {
    let data = std::fs::read(pcap).unwrap();
    assert!(data.len() >= 24, "no pcap header");
    let magic = u32::from_le_bytes(data[..4].try_into().unwrap());
    let le = match magic {
        0xa1b2c3d4 | 0xa1b23c4d => true,
        0xd4c3b2a1 | 0x4d3cb2a1 => false,
        _ => panic!("not a pcap file"),
    };
    let u32_at = |b: &[u8]| {
        let a: [u8; 4] = b.try_into().unwrap();
        if le {
            u32::from_le_bytes(a)
        } else {
            u32::from_be_bytes(a)
        }
    };
    let link = u32_at(&data[20..24]);
    let l2 = match link {
        1 => 14,   // Ethernet (what Linux gives for lo)
        113 => 16, // Linux cooked capture
        276 => 20, // Linux cooked capture v2
        0 => 4,    // BSD loopback
        other => panic!("unexpected link type {other}"),
    };
    let mut out = Flows::new();
    let mut at = 24;
    while at + 16 <= data.len() {
        let incl = u32_at(&data[at + 8..at + 12]) as usize;
        let frame = &data[at + 16..(at + 16 + incl).min(data.len())];
        at += 16 + incl;
        let Some(ip) = frame.get(l2..) else { continue };
        if ip.len() < 20 || ip[0] >> 4 != 4 || ip[9] != 6 {
            continue;
        }
        let ihl = usize::from(ip[0] & 0x0f) * 4;
        let total = usize::from(u16::from_be_bytes([ip[2], ip[3]])).min(ip.len());
        let Some(tcp) = ip.get(ihl..total) else {
            continue;
        };
        if tcp.len() < 20 {
            continue;
        }
        let off = usize::from(tcp[12] >> 4) * 4;
        let Some(payload) = tcp.get(off..) else {
            continue;
        };
        if payload.is_empty() {
            continue;
        }
        let addr = |a: &[u8], p: &[u8]| {
            SocketAddr::from((
                Ipv4Addr::new(a[0], a[1], a[2], a[3]),
                u16::from_be_bytes([p[0], p[1]]),
            ))
        };
        let key = (addr(&ip[12..16], &tcp[0..2]), addr(&ip[16..20], &tcp[2..4]));
        out.entry(key).or_default().extend_from_slice(payload);
    }
    out
}

fn contains(hay: &[u8], needle: &[u8]) -> bool {
    !needle.is_empty() && hay.windows(needle.len()).any(|w| w == needle)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_capture_of_the_demo_shows_no_mailbox_api_plaintext_and_no_queue_id() {
    let required = std::env::var("MURMUR_REQUIRE_CAPTURE").is_ok_and(|v| v == "1");
    let Some(tcpdump) = tcpdump() else {
        assert!(
            !required,
            "MURMUR_REQUIRE_CAPTURE=1 but tcpdump is not installed"
        );
        eprintln!("SKIPPED: tcpdump is not installed (apt-get install tcpdump)");
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let pcap = dir.path().join("demo.pcap");
    let mut capture = tokio::process::Command::new(&tcpdump)
        .args(["-i", "lo", "-n", "-U", "-s", "0", "-w"])
        .arg(&pcap)
        .arg("tcp")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    // tcpdump says "listening on lo" once it captures.
    let mut stderr = BufReader::new(capture.stderr.take().unwrap()).lines();
    let listening = tokio::time::timeout(Duration::from_secs(10), async {
        while let Ok(Some(line)) = stderr.next_line().await {
            if line.contains("listening on") {
                return Ok(());
            }
            if line.contains("ermission") || line.contains("rror") {
                return Err(line);
            }
        }
        Err("tcpdump exited".to_owned())
    })
    .await;
    let why = match listening {
        Ok(Ok(())) => None,
        Ok(Err(why)) => Some(why),
        Err(_) => Some("no answer in 10 s".to_owned()),
    };
    if let Some(why) = why {
        assert!(
            !required,
            "MURMUR_REQUIRE_CAPTURE=1 but tcpdump cannot capture: {why}"
        );
        eprintln!("SKIPPED: tcpdump cannot capture here: {why}");
        return;
    }
    // Keep draining tcpdump's stderr.
    tokio::spawn(async move { while let Ok(Some(_)) = stderr.next_line().await {} });

    // Control: a marker over a plain loopback connection.
    let marker = format!("capture-control-{:016x}", rand::random::<u64>());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let control_addr = listener.local_addr().unwrap();
    let sink = tokio::spawn(async move {
        let (mut s, _) = listener.accept().await.unwrap();
        let mut buf = Vec::new();
        tokio::io::AsyncReadExt::read_to_end(&mut s, &mut buf)
            .await
            .unwrap();
    });
    let mut c = tokio::net::TcpStream::connect(control_addr).await.unwrap();
    c.write_all(marker.as_bytes()).await.unwrap();
    c.shutdown().await.unwrap();
    drop(c);
    sink.await.unwrap();

    // The demo, as `murmur demo` runs it, with a smaller file.
    let secrets = run(DemoOptions {
        messages: 6,
        file_size: 120_000,
        kill_mix: false,
        json: true,
        timeout: Duration::from_secs(300),
        fetch_interval: Duration::from_millis(50),
        message_interval: Duration::ZERO,
        net: DevnetOptions::default(),
    })
    .await
    .unwrap();
    assert!(secrets.queues.len() >= 6, "{secrets:?}");
    assert_eq!(secrets.texts.len(), 12);
    assert!(!secrets.mailbox_apis.is_empty());

    // Let tcpdump write out what it holds, then stop it.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let pid = capture.id().unwrap().to_string();
    std::process::Command::new("kill")
        .args(["-INT", &pid])
        .status()
        .unwrap();
    tokio::time::timeout(Duration::from_secs(20), capture.wait())
        .await
        .unwrap()
        .unwrap();

    // The network's connections: those to or from one of its listeners
    // (the machine may carry other loopback traffic meanwhile).
    let flows: Flows = flows(&pcap)
        .into_iter()
        .filter(|((src, dst), _)| {
            secrets
                .network
                .iter()
                .any(|a| a.port() == src.port() || a.port() == dst.port())
        })
        .collect();
    let all: Vec<&Vec<u8>> = flows.values().collect();
    let total: usize = all.iter().map(|f| f.len()).sum();
    let anywhere = |needle: &[u8]| all.iter().any(|f| contains(f, needle));

    // The controls: the capture saw plain payloads.
    let everything = self::flows(&pcap);
    assert!(
        everything.values().any(|f| contains(f, marker.as_bytes())),
        "the control marker is missing"
    );
    assert!(
        anywhere(b"GET /v1/consensus/"),
        "the directory's plain HTTP is missing from the capture"
    );
    let api_flows: Vec<(&(SocketAddr, SocketAddr), &Vec<u8>)> = flows
        .iter()
        .filter(|((src, dst), _)| {
            secrets
                .mailbox_apis
                .iter()
                .any(|a| a.port() == src.port() || a.port() == dst.port())
        })
        .collect();
    let api_bytes: usize = api_flows.iter().map(|(_, f)| f.len()).sum();
    assert!(
        api_bytes > 10_000,
        "the mailbox API connections carried only {api_bytes} bytes"
    );

    // What must not be there: no HTTP at all on the mailbox API's
    // connections (requests or responses), no API path anywhere.
    for needle in [&b"/v1/queue"[..], b"POST ", b"HTTP/1.1", b"x-postcard"] {
        for (k, f) in &api_flows {
            assert!(
                !contains(f, needle),
                "{:?} in the clear on a mailbox API connection {k:?}",
                String::from_utf8_lossy(needle)
            );
        }
    }
    assert!(!anywhere(b"/v1/queue"), "a mailbox API path in the clear");
    assert!(
        !anywhere(&murmur_wire::PacketCodec::header()),
        "a packet frame in the clear"
    );
    for q in &secrets.queues {
        assert!(!anywhere(q.as_bytes()), "a queue id (bytes) in the clear");
        assert!(
            !anywhere(q.to_string().as_bytes()),
            "a queue id (base58) in the clear"
        );
    }
    for t in &secrets.texts {
        assert!(!anywhere(t.as_bytes()), "a message text in the clear");
    }
    println!(
        "capture: {} flows, {total} payload bytes, {} mailbox API flows ({api_bytes} bytes), {} queue ids and {} texts searched: none found; controls found",
        flows.len(),
        api_flows.len(),
        secrets.queues.len(),
        secrets.texts.len()
    );
}
