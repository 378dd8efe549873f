//! Slow clients at the shared HTTP server (every daemon's listener): one
//! host trickling headers and bodies on as many connections as it can open
//! holds at most its per-address share of the slots, each for at most the
//! header or body timeout, while another client is served throughout.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, missing_docs)]

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{Request, StatusCode};
use hyper::body::Incoming;
use murmur_net::http::{
    HttpClient, HttpServerMetrics, ServerLimits, read_body, response, spawn_server_with_metrics,
    text,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_util::sync::CancellationToken;

const TIMEOUT: Duration = Duration::from_secs(1);
const PER_ADDRESS: usize = 4;
const ATTACKERS: usize = 120;
const ATTACK: Duration = Duration::from_secs(4);

/// One slow connection from `from`, reconnecting until `until`: it sends a
/// request line and then one byte of headers (or, with `body`, complete
/// headers announcing 512 bytes and then one byte of body) every 100 ms.
/// Returns (connections made, the longest any of them stayed open).
async fn trickler(server: SocketAddr, from: &str, body: bool, until: Instant) -> (u64, Duration) {
    let mut made = 0;
    let mut longest = Duration::ZERO;
    while Instant::now() < until {
        let socket = tokio::net::TcpSocket::new_v4().unwrap();
        socket.bind(format!("{from}:0").parse().unwrap()).unwrap();
        let Ok(mut s) = socket.connect(server).await else {
            tokio::time::sleep(Duration::from_millis(20)).await;
            continue;
        };
        made += 1;
        let opened = Instant::now();
        let head: &[u8] = if body {
            b"POST /echo HTTP/1.1\r\nhost: x\r\ncontent-length: 512\r\n\r\n"
        } else {
            b"GET /healthz HTTP/1.1\r\nhost: x\r\n"
        };
        if s.write_all(head).await.is_err() {
            continue;
        }
        let mut buf = [0u8; 1024];
        let mut tick = tokio::time::interval(Duration::from_millis(100));
        loop {
            tokio::select! {
                // The server closed (or answered 408 and closed).
                r = s.read(&mut buf) => match r {
                    Ok(0) | Err(_) => break,
                    Ok(_) => continue,
                },
                _ = tick.tick() => {
                    if Instant::now() >= until + Duration::from_secs(5) {
                        panic!("a slow connection outlived every timeout");
                    }
                    if s.write_all(b"a").await.is_err() {
                        break;
                    }
                }
            }
        }
        longest = longest.max(opened.elapsed());
        // Do not spin on refusals (they close at once).
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    (made, longest)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slowloris_host_holds_at_most_its_share_of_slots_and_only_until_a_timeout() {
    let limits = ServerLimits {
        max_connections: 32,
        max_connections_per_address: PER_ADDRESS,
        header_timeout: TIMEOUT,
        body_timeout: TIMEOUT,
        connection_timeout: Duration::from_secs(30),
    };
    let metrics = HttpServerMetrics::default();
    let shutdown = CancellationToken::new();
    let handler = |req: Request<Incoming>| async move {
        if req.uri().path() == "/echo" {
            match read_body(req, 1024).await {
                Ok((_, body)) => response(StatusCode::OK, "application/octet-stream", body),
                Err(resp) => resp,
            }
        } else {
            text(StatusCode::OK, "ok")
        }
    };
    let (addr, task) = spawn_server_with_metrics(
        "127.0.0.1:0".parse().unwrap(),
        handler,
        limits,
        metrics.clone(),
        shutdown.clone(),
    )
    .await
    .unwrap();

    // The attacker: one host (127.0.0.2), many connections at once, half
    // trickling headers and half bodies, each reconnecting when closed.
    let until = Instant::now() + ATTACK;
    let mut attackers = Vec::new();
    for i in 0..ATTACKERS {
        attackers.push(tokio::spawn(trickler(addr, "127.0.0.2", i % 2 == 1, until)));
    }
    // A sampler of the open connections (the attacker's and the honest
    // client's at most one).
    let most_open = Arc::new(AtomicUsize::new(0));
    let sampler = {
        let (m, most) = (metrics.clone(), most_open.clone());
        tokio::spawn(async move {
            while Instant::now() < until {
                most.fetch_max(m.open() as usize, Ordering::Relaxed);
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        })
    };

    // The honest client (127.0.0.1), all through the attack.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let client = HttpClient::new(Duration::from_secs(10));
    let slowest = Arc::new(AtomicU64::new(0));
    let mut served = 0;
    while Instant::now() + Duration::from_millis(200) < until {
        let started = Instant::now();
        let (status, _) = client.get(addr, "/healthz", 1024).await.unwrap();
        assert_eq!(status, StatusCode::OK);
        let (status, body) = client
            .post(
                addr,
                "/echo",
                "application/octet-stream",
                Bytes::from_static(b"hello"),
                1024,
            )
            .await
            .unwrap();
        assert_eq!((status, &body[..]), (StatusCode::OK, &b"hello"[..]));
        slowest.fetch_max(started.elapsed().as_millis() as u64, Ordering::Relaxed);
        served += 1;
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let mut made = 0;
    let mut longest = Duration::ZERO;
    for a in attackers {
        let (n, l) = a.await.unwrap();
        made += n;
        longest = longest.max(l);
    }
    sampler.await.unwrap();
    let [headers, bodies, lifetimes] = metrics.timeouts();
    let refused = metrics.refused_per_address();
    let slowest = Duration::from_millis(slowest.load(Ordering::Relaxed));
    let most_open = most_open.load(Ordering::Relaxed);
    println!(
        "| slowloris: {ATTACKERS} slow connections at once from one address for {ATTACK:?} \
         ({made} made) | honest client: {served} rounds, slowest {slowest:?} | \
         open at most {most_open} (cap 32, {PER_ADDRESS} per address) | refused per address {refused}, \
         header timeouts {headers}, body timeouts {bodies}, lifetime {lifetimes}; \
         longest slow connection {longest:?} |"
    );
    // The honest client was served throughout, without waiting for a slot
    // (a generous bound for a loaded 2-core machine: a slot would take the
    // timeout, 1 s, to free).
    assert!(served >= 5, "{served}");
    assert!(slowest < Duration::from_millis(900), "{slowest:?}");
    // The attacker never held more than its share.
    assert!(most_open <= PER_ADDRESS + 2, "{most_open}");
    // Most of its connections were refused at once; those let in were
    // closed by a timeout, none lived much beyond it.
    assert!(refused > made / 2, "{refused} of {made}");
    assert!(headers >= 1 && bodies >= 1, "{headers} {bodies}");
    assert!(longest < TIMEOUT * 3, "{longest:?}");
    assert_eq!(lifetimes, 0);
    shutdown.cancel();
    task.await.unwrap();
    assert_eq!(metrics.open(), 0);
}
