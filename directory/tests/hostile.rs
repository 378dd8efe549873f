//! Hostile and broken requests: refusals with the right status and counter,
//! garbage that never takes an authority down, and restarts that keep state.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, missing_docs)]

mod common;

use std::net::SocketAddr;
use std::time::Duration;

use bytes::Bytes;
use common::*;
use murmur_net::http::{HttpClient, POSTCARD};
use murmur_wire::directory::Signature;
use murmur_wire::ed25519_dalek::Signer;
use murmur_wire::{Descriptor, EpochKey, Role, SignedDescriptor, SphinxPublicKey};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

async fn post(addr: SocketAddr, body: Vec<u8>) -> (u16, String) {
    let c = HttpClient::new(Duration::from_secs(2));
    let (s, b) = c
        .post(addr, "/v1/descriptors", POSTCARD, Bytes::from(body), 4096)
        .await
        .unwrap();
    (s.as_u16(), String::from_utf8_lossy(&b).into_owned())
}

async fn refused(addr: SocketAddr, reason: &str) -> f64 {
    metric(
        addr,
        &format!("murmur_directory_descriptors_refused_total{{reason=\"{reason}\"}}"),
    )
    .await
}

fn sign_raw(seed: u8, body: Vec<u8>) -> SignedDescriptor {
    let mut msg = b"murmur/descriptor/v1\0".to_vec();
    msg.extend_from_slice(&body);
    SignedDescriptor {
        body,
        signature: Signature(key(seed).sign(&msg).to_bytes()),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn descriptor_refusals_have_the_right_status_and_counter() {
    let (clock, e) = clock_at(1_000);
    let net = Net::start(1, 1, clock).await;
    let a = net.addrs[0];
    let good = descriptor(1, Role::Mix, 5000, e, 2, 100);

    let cases: Vec<(&str, Vec<u8>, u16, &str)> = {
        let mut bad_sig = good.clone();
        bad_sig.signature.0[5] ^= 1;
        let bytes = good.to_bytes().unwrap();
        // Role is the varint after the version byte and the 32-byte key.
        let mut d: Descriptor = postcard::from_bytes(&good.body).unwrap();
        let mut unknown_role = postcard::to_stdvec(&d).unwrap();
        unknown_role[33] = 7;
        d.http_addr = None;
        d.role = Role::Mailbox;
        let mailbox_without_http = sign_raw(1, postcard::to_stdvec(&d).unwrap());
        vec![
            ("undecodable", vec![0xff; 40], 400, "undecodable"),
            (
                "truncated",
                bytes[..bytes.len() / 2].to_vec(),
                400,
                "undecodable",
            ),
            ("oversized", vec![1; 5000], 413, "oversized"),
            (
                "bad signature",
                bad_sig.to_bytes().unwrap(),
                403,
                "bad_signature",
            ),
            (
                "unknown role",
                sign_raw(1, unknown_role).to_bytes().unwrap(),
                400,
                "undecodable",
            ),
            (
                "mailbox without http address",
                mailbox_without_http.to_bytes().unwrap(),
                400,
                "invalid",
            ),
            (
                "keys only for past epochs",
                descriptor(2, Role::Mix, 5001, e - 3, 3, 100)
                    .to_bytes()
                    .unwrap(),
                422,
                "stale",
            ),
        ]
    };
    for (what, body, status, reason) in cases {
        let before = refused(a, reason).await;
        let (got, text) = post(a, body).await;
        assert_eq!(got, status, "{what}: {text}");
        assert_eq!(text.lines().count(), 1, "{what}: one-line reason: {text}");
        assert_eq!(
            refused(a, reason).await,
            before + 1.0,
            "{what} counted as {reason}"
        );
    }

    // Accepted, then idempotent re-upload, then duplicates.
    assert_eq!(post(a, good.to_bytes().unwrap()).await.0, 200);
    assert_eq!(post(a, good.to_bytes().unwrap()).await.0, 200);
    let same_time_other_bytes = descriptor(1, Role::Mix, 5002, e, 2, 100);
    let (s, text) = post(a, same_time_other_bytes.to_bytes().unwrap()).await;
    assert_eq!(s, 409, "{text}");
    assert!(text.contains("published_at"), "{text}");
    let older = descriptor(1, Role::Mix, 5000, e, 3, 99);
    assert_eq!(post(a, older.to_bytes().unwrap()).await.0, 409);
    assert_eq!(refused(a, "duplicate").await, 2.0);
    let newer = descriptor(1, Role::Mix, 5000, e, 3, 101);
    assert_eq!(post(a, newer.to_bytes().unwrap()).await.0, 200);
    // Another identity claiming the same packet address.
    let squatter = descriptor(3, Role::Mix, 5000, e, 2, 100);
    let (s, text) = post(a, squatter.to_bytes().unwrap()).await;
    assert_eq!(s, 409, "{text}");
    assert_eq!(refused(a, "address_claimed").await, 1.0);
    assert_eq!(
        metric(a, "murmur_directory_descriptors_accepted_total").await,
        3.0
    );
    assert_eq!(metric(a, "murmur_directory_descriptors_stored").await, 1.0);
    assert!(metric(a, "murmur_directory_http_requests_total{status=\"409\"}").await >= 3.0);
    net.shutdown().await;
}

async fn raw(addr: SocketAddr, bytes: &[u8], close_write: bool) -> String {
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    // The server may close before reading everything; that is fine.
    let _ = s.write_all(bytes).await;
    if close_write {
        let _ = s.shutdown().await;
    }
    let mut out = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(5), s.read_to_end(&mut out)).await;
    String::from_utf8_lossy(&out).into_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn garbage_never_takes_an_authority_down() {
    let (clock, _) = clock_at(1_000);
    let net = Net::start(1, 1, clock).await;
    let a = net.addrs[0];

    let answer = raw(a, b"NOT HTTP AT ALL\r\n\r\n", false).await;
    assert!(
        answer.is_empty() || answer.starts_with("HTTP/1.1 400"),
        "{answer}"
    );
    // A body shorter than announced, then the client gives up.
    let answer = raw(
        a,
        b"POST /v1/descriptors HTTP/1.1\r\nhost: x\r\ncontent-length: 500\r\n\r\n0123456789",
        true,
    )
    .await;
    assert!(
        answer.is_empty() || answer.starts_with("HTTP/1.1 400"),
        "{answer}"
    );
    // An announced body over the limit is refused without reading it.
    let answer = raw(
        a,
        b"POST /v1/descriptors HTTP/1.1\r\nhost: x\r\ncontent-length: 99999999\r\n\r\n",
        false,
    )
    .await;
    assert!(answer.starts_with("HTTP/1.1 413"), "{answer}");
    // Oversized headers.
    let mut huge = b"GET /healthz HTTP/1.1\r\nx-junk: ".to_vec();
    huge.extend(std::iter::repeat_n(b'a', 200_000));
    huge.extend_from_slice(b"\r\n\r\n");
    let answer = raw(a, &huge, false).await;
    assert!(!answer.starts_with("HTTP/1.1 200"), "{answer}");
    // Random bytes.
    let junk: Vec<u8> = (0..4096u32).map(|i| (i * 7919 % 251) as u8).collect();
    raw(a, &junk, true).await;

    for (path, status) in [
        ("/v1/consensus/not-a-number", 400),
        ("/v1/consensus/18446744073709551615", 404),
        ("/v1/votes/12", 404),
        ("/v1/candidate/x", 400),
        ("/nope", 404),
        ("/v1/descriptors", 405),
    ] {
        assert_eq!(get(a, path).await.0, status, "{path}");
    }
    assert_eq!(get(a, "/healthz").await, (200, b"ok\n".to_vec()));
    assert!(refused(a, "oversized").await >= 1.0);
    net.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restarted_authority_keeps_descriptors_and_documents() {
    let (clock, e) = clock_at(1_000);
    let mut net = Net::start(1, 1, clock.clone()).await;
    let client = net.client();
    for d in network_descriptors(e, net.now()) {
        assert!(client.upload_descriptor(&d).await.all_accepted());
    }
    let before = all_serve(&net.addrs, e, 1).await.remove(0);
    net.stop(0).await;
    net.restart(0).await;
    assert_eq!(served(net.addrs[0], e).await.unwrap(), before);
    assert_eq!(
        metric(net.addrs[0], "murmur_directory_descriptors_stored").await,
        11.0
    );
    // The next epoch's document lists the nodes without them re-registering.
    set_time_ms(&clock, (e + 1) * EPOCH * 1000 - EPOCH * 1000 / 2 + 100);
    let next = all_serve(&net.addrs, e + 1, 1).await.remove(0);
    let next = next
        .verify(client.authorities(), net.now(), Some(e + 1))
        .unwrap();
    assert_eq!(next.layers().iter().map(Vec::len).sum::<usize>(), 9);
    assert_eq!(next.mailboxes().len(), 2);
    net.shutdown().await;
}

#[test]
fn descriptor_helper_makes_valid_descriptors() {
    let d = descriptor(4, Role::Mailbox, 7000, 10, 2, 5);
    let v = d.verify().unwrap();
    assert_eq!(
        v.descriptor().sphinx_keys,
        vec![
            EpochKey {
                epoch: 10,
                key: SphinxPublicKey([4 ^ 10; 32])
            },
            EpochKey {
                epoch: 11,
                key: SphinxPublicKey([4 ^ 11; 32])
            }
        ]
    );
}
