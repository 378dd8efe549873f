//! Links on loopback: handshakes, streams, refusals, timeouts, HTTP.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, missing_docs)]

use std::time::Duration;

use bytes::Bytes;
use futures::{SinkExt, StreamExt};
use http::{Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use murmur_net::http::LinkHttpClient;
use murmur_net::{LinkSecretKey, LinkSettings, Purpose, accept, connect};
use murmur_wire::{PACKET_SIZE, Packet, PacketCodec};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;
use tokio_util::codec::{FramedRead, FramedWrite};

fn key(seed: u8) -> LinkSecretKey {
    LinkSecretKey::derive(&[seed; 32])
}

fn packet(i: u32) -> Packet {
    let mut bytes = vec![0u8; PACKET_SIZE];
    bytes[..4].copy_from_slice(&i.to_be_bytes());
    Packet::from_bytes(Bytes::from(bytes)).unwrap()
}

#[tokio::test]
async fn packets_cross_a_node_link_and_the_responder_learns_the_initiator() {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let server = key(1);
    let node = key(2);
    let settings = LinkSettings::default();
    let server_public = server.public().clone();
    let accept_task = tokio::spawn(async move {
        let (tcp, _) = listener.accept().await.unwrap();
        let link = accept(tcp, Purpose::Packets, &server, &LinkSettings::default())
            .await
            .unwrap();
        let remote = link.remote_static;
        let mut frames = FramedRead::new(link.stream, PacketCodec);
        let mut got = Vec::new();
        while let Some(p) = frames.next().await {
            got.push(p.unwrap());
        }
        (remote, got)
    });
    let stream = connect(
        addr,
        Purpose::Packets,
        Some(&node),
        &server_public,
        &settings,
    )
    .await
    .unwrap();
    let mut sink = FramedWrite::new(stream, PacketCodec);
    for i in 0..500 {
        sink.feed(packet(i)).await.unwrap();
    }
    SinkExt::<Packet>::close(&mut sink).await.unwrap();
    let (remote, got) = accept_task.await.unwrap();
    assert_eq!(remote, node.public().dh);
    assert_eq!(got.len(), 500);
    for (i, p) in got.iter().enumerate() {
        assert_eq!(p, &packet(i as u32));
    }
}

#[tokio::test]
async fn what_crosses_the_socket_is_not_the_plaintext() {
    // A relay between the two ends records every byte: the plaintext
    // pattern never appears, in either direction.
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let relay = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let (addr, relay_addr) = (listener.local_addr().unwrap(), relay.local_addr().unwrap());
    let server = key(3);
    let public = server.public().clone();
    let marker = b"POST /v1/queue HTTP/1.1 queue=SECRET-QUEUE-ID".repeat(50);
    let m = marker.clone();
    let echo = tokio::spawn(async move {
        let (tcp, _) = listener.accept().await.unwrap();
        let mut link = accept(tcp, Purpose::MailboxApi, &server, &LinkSettings::default())
            .await
            .unwrap()
            .stream;
        let mut buf = vec![0u8; m.len()];
        link.read_exact(&mut buf).await.unwrap();
        link.write_all(&buf).await.unwrap();
        link.flush().await.unwrap();
    });
    let recorder = tokio::spawn(async move {
        let (mut a, _) = relay.accept().await.unwrap();
        let mut b = tokio::net::TcpStream::connect(addr).await.unwrap();
        let (mut ar, mut aw) = a.split();
        let (mut br, mut bw) = b.split();
        let up = async {
            let mut seen = Vec::new();
            let mut buf = [0u8; 4096];
            loop {
                let n = ar.read(&mut buf).await.unwrap_or(0);
                if n == 0 {
                    break;
                }
                seen.extend_from_slice(&buf[..n]);
                if bw.write_all(&buf[..n]).await.is_err() {
                    break;
                }
            }
            let _ = bw.shutdown().await;
            seen
        };
        let down = async {
            let mut seen = Vec::new();
            let mut buf = [0u8; 4096];
            loop {
                let n = br.read(&mut buf).await.unwrap_or(0);
                if n == 0 {
                    break;
                }
                seen.extend_from_slice(&buf[..n]);
                if aw.write_all(&buf[..n]).await.is_err() {
                    break;
                }
            }
            seen
        };
        let (u, d) = tokio::join!(up, down);
        [u, d].concat()
    });
    let mut link = connect(
        relay_addr,
        Purpose::MailboxApi,
        None,
        &public,
        &LinkSettings::default(),
    )
    .await
    .unwrap();
    link.write_all(&marker).await.unwrap();
    link.flush().await.unwrap();
    let mut back = vec![0u8; marker.len()];
    link.read_exact(&mut back).await.unwrap();
    assert_eq!(back, marker);
    drop(link);
    echo.await.unwrap();
    let seen = recorder.await.unwrap();
    assert!(seen.len() > 2 * marker.len());
    for needle in [&b"POST"[..], b"HTTP/1.1", b"SECRET-QUEUE-ID"] {
        assert!(
            !seen.windows(needle.len()).any(|w| w == needle),
            "{} on the wire",
            String::from_utf8_lossy(needle)
        );
    }
}

#[tokio::test]
async fn a_peer_without_the_listed_key_cannot_complete_a_handshake() {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let impostor = key(4);
    let expected = key(5).public().clone();
    let accept_task = tokio::spawn(async move {
        let (tcp, _) = listener.accept().await.unwrap();
        accept(tcp, Purpose::Packets, &impostor, &LinkSettings::default())
            .await
            .map(|_| ())
    });
    let res = connect(
        addr,
        Purpose::Packets,
        None,
        &expected,
        &LinkSettings::default(),
    )
    .await;
    let served = accept_task.await.unwrap();
    assert!(served.is_err(), "the impostor must fail");
    assert!(res.is_err(), "the initiator must not get a link");
}

#[tokio::test]
async fn garbage_and_silence_fail_the_handshake_with_a_label() {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let server = key(6);
    let settings = LinkSettings {
        handshake_timeout: Duration::from_millis(300),
        ..LinkSettings::default()
    };
    let accept_task = tokio::spawn(async move {
        let mut labels = Vec::new();
        for _ in 0..3 {
            let (tcp, _) = listener.accept().await.unwrap();
            let err = accept(tcp, Purpose::Packets, &server, &settings)
                .await
                .unwrap_err();
            labels.push(err.label());
        }
        labels
    });
    // An HTTP request instead of a handshake: a wrong length, refused at once.
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    s.write_all(b"GET / HTTP/1.1\r\nhost: x\r\n\r\n")
        .await
        .unwrap();
    // The right length of random bytes.
    let mut s2 = tokio::net::TcpStream::connect(addr).await.unwrap();
    let len = murmur_wire::link::MESSAGE1_SIZE as u16;
    let mut junk = len.to_be_bytes().to_vec();
    junk.extend(std::iter::repeat_n(0x5a, len.into()));
    s2.write_all(&junk).await.unwrap();
    // Silence: the handshake times out.
    let _s3 = tokio::net::TcpStream::connect(addr).await.unwrap();
    let labels = accept_task.await.unwrap();
    assert_eq!(labels, vec!["bad_message1", "bad_message1", "timeout"]);
}

#[tokio::test(start_paused = true)]
async fn long_lived_links_rekey_on_the_interval_and_keep_working() {
    let (a, b) = tokio::io::duplex(1 << 20);
    let server = key(7);
    let public = server.public().clone();
    let settings = LinkSettings {
        handshake_timeout: Duration::from_secs(5),
        rekey_interval: Duration::from_secs(60),
    };
    let responder = tokio::spawn(async move {
        let mut link = accept(b, Purpose::Packets, &server, &settings)
            .await
            .unwrap()
            .stream;
        let mut got = Vec::new();
        let mut buf = [0u8; 5];
        for _ in 0..10 {
            link.read_exact(&mut buf).await.unwrap();
            got.push(buf);
        }
        got
    });
    let mut link = murmur_net::initiate(a, Purpose::Packets, None, &public, &settings)
        .await
        .unwrap();
    for i in 0..10u8 {
        link.write_all(&[i; 5]).await.unwrap();
        link.flush().await.unwrap();
        // Ten minutes pass between writes: every write is under a new key.
        tokio::time::advance(Duration::from_secs(61)).await;
    }
    let got = responder.await.unwrap();
    assert_eq!(got, (0..10u8).map(|i| [i; 5]).collect::<Vec<_>>());
}

#[tokio::test]
async fn http_requests_travel_over_a_kept_link() {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let server = std::sync::Arc::new(key(8));
    let public = server.public().clone();
    let accepts = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let counter = accepts.clone();
    tokio::spawn(async move {
        loop {
            let (tcp, _) = listener.accept().await.unwrap();
            counter.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            let server = server.clone();
            tokio::spawn(async move {
                let link = accept(tcp, Purpose::MailboxApi, &server, &LinkSettings::default())
                    .await
                    .unwrap();
                let service = service_fn(|req: Request<Incoming>| async move {
                    let body = req.into_body().collect().await?.to_bytes();
                    Ok::<_, hyper::Error>(Response::new(Full::new(body)))
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(link.stream), service)
                    .await;
            });
        }
    });
    let client = LinkHttpClient::new(
        Purpose::MailboxApi,
        LinkSettings::default(),
        Duration::from_secs(5),
    );
    for i in 0..5u8 {
        let (status, body) = client
            .post(
                addr,
                &public,
                "/echo",
                "application/octet-stream",
                Bytes::from(vec![i; 100]),
                1024,
            )
            .await
            .unwrap();
        assert_eq!(status, StatusCode::OK);
        assert_eq!(body, Bytes::from(vec![i; 100]));
    }
    assert_eq!(accepts.load(std::sync::atomic::Ordering::SeqCst), 1);
    // A response over its limit is an error.
    let err = client
        .post(
            addr,
            &public,
            "/echo",
            "application/octet-stream",
            Bytes::from(vec![1u8; 2000]),
            1024,
        )
        .await;
    assert!(err.is_err());
    // The wrong key: no exchange.
    let err = client
        .post(
            addr,
            key(9).public(),
            "/echo",
            "application/octet-stream",
            Bytes::from_static(b"x"),
            1024,
        )
        .await;
    assert!(err.is_err());
}
