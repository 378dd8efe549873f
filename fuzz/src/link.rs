//! The link layer: the Noise handshake messages a responder and an
//! initiator read from the network, and the encrypted record stream after
//! it (`murmur_wire::link` and `murmur_net::LinkStream`).
//!
//! Random bytes never get past a handshake's first AEAD check, so besides
//! feeding raw bytes to both sides, the structured modes run a real
//! handshake with the fixed keys and then hand the fuzzer the record
//! stream: raw records (to the sans-I/O opener and to `LinkStream` over an
//! in-memory pipe), and records sealed by a genuine sender with
//! fuzzer-chosen sizes and rekeys, then mutated at one byte. Oracles: what
//! a genuine sender sealed opens to itself, in order; a mutated stream
//! fails (never yields different data).

use std::sync::OnceLock;
use std::time::Duration;

use murmur_wire::link::{
    Initiator, MAX_RECORD_PAYLOAD, MESSAGE1_SIZE, MESSAGE2_SIZE, MESSAGE3_SIZE, Purpose, Record,
    Responder, Transport,
};
use rand::SeedableRng;
use rand_chacha::ChaCha20Rng;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::{fit, keys, mode};

fn runtime() -> &'static tokio::runtime::Runtime {
    static RT: OnceLock<tokio::runtime::Runtime> = OnceLock::new();
    RT.get_or_init(|| {
        match tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .build()
        {
            Ok(rt) => rt,
            Err(e) => panic!("no runtime: {e}"),
        }
    })
}

/// A completed handshake with the fixed keys: the initiator's transport and
/// the responder's.
fn pair(seed: u64) -> (Transport, Transport) {
    let mut rng = ChaCha20Rng::seed_from_u64(seed);
    let server = keys::link_key(1);
    fn ok<T>(what: &str, r: murmur_wire::Result<T>) -> T {
        match r {
            Ok(v) => v,
            Err(e) => panic!("a genuine handshake failed at {what}: {e}"),
        }
    }
    let (init, m1) = ok(
        "message 1",
        Initiator::start(
            &mut rng,
            Purpose::Packets,
            Some(keys::link_key(2)),
            server.public(),
        ),
    );
    let (resp, m2) = ok(
        "message 2",
        Responder::respond(&mut rng, Purpose::Packets, server, &m1),
    );
    let (m3, tx) = ok("message 3", init.finish(&m2));
    let accepted = ok("the end", resp.finish(&m3));
    assert_eq!(accepted.remote_static, keys::link_key(2).public().dh);
    (tx, accepted.transport)
}

/// Opens every whole record of `wire` (length-prefixed); stops at the first
/// that fails. Returns the data opened.
fn open_stream(rx: &mut Transport, mut wire: &[u8]) -> (Vec<u8>, bool) {
    let mut out = Vec::new();
    let mut buf = vec![0u8; 65_536];
    while wire.len() >= 2 {
        let len = usize::from(u16::from_be_bytes([wire[0], wire[1]]));
        if wire.len() < 2 + len {
            break;
        }
        match rx.open(&wire[2..2 + len], &mut buf) {
            Ok(Record::Data(n)) => out.extend_from_slice(&buf[..n]),
            Ok(Record::Rekeyed) => {}
            Err(_) => return (out, false),
        }
        wire = &wire[2 + len..];
    }
    (out, true)
}

/// Feeds `bytes` after a genuine handshake to a responder's `LinkStream`
/// over an in-memory pipe and reads until it ends or fails.
fn stream_after_handshake(bytes: &[u8]) -> Vec<u8> {
    runtime().block_on(async {
        let (client, server) = tokio::io::duplex(1 << 20);
        let settings = murmur_net::LinkSettings {
            handshake_timeout: Duration::from_secs(5),
            rekey_interval: Duration::from_secs(3600),
        };
        let responder = tokio::spawn(async move {
            let Ok(link) =
                murmur_net::accept(server, Purpose::Packets, keys::link_key(1), &settings).await
            else {
                panic!("a genuine handshake failed");
            };
            let mut stream = link.stream;
            let mut got = Vec::new();
            let mut buf = [0u8; 4096];
            loop {
                match tokio::time::timeout(Duration::from_secs(1), stream.read(&mut buf)).await {
                    Ok(Ok(0)) | Ok(Err(_)) | Err(_) => return got,
                    Ok(Ok(n)) => got.extend_from_slice(&buf[..n]),
                }
            }
        });
        let Ok(mut link) = murmur_net::initiate(
            client,
            Purpose::Packets,
            None,
            keys::link_key(1).public(),
            &settings,
        )
        .await
        else {
            panic!("a genuine handshake failed");
        };
        // Past the link's encryption: raw bytes on the pipe.
        let _ = link.get_mut().write_all(bytes).await;
        let _ = link.get_mut().shutdown().await;
        match responder.await {
            Ok(got) => got,
            Err(e) => panic!("the responder task failed: {e}"),
        }
    })
}

/// The fuzz target.
pub fn link(data: &[u8]) {
    let Some((m, rest)) = mode(data) else {
        return;
    };
    let mut rng = ChaCha20Rng::seed_from_u64(u64::from(m));
    match m % 6 {
        // Raw bytes as handshake message 1 (as they come, and at its size).
        0 => {
            let server = keys::link_key(1);
            let _ = Responder::respond(&mut rng, Purpose::Packets, server, rest);
            let sized = fit(rest, MESSAGE1_SIZE);
            if let Ok((resp, m2)) = Responder::respond(&mut rng, Purpose::Packets, server, &sized) {
                assert_eq!(m2.len(), MESSAGE2_SIZE);
                assert!(resp.finish(&fit(rest, MESSAGE3_SIZE)).is_err());
            }
        }
        // Raw bytes as message 2 to a genuine initiator.
        1 => {
            let server = keys::link_key(1);
            if let Ok((init, _)) =
                Initiator::start(&mut rng, Purpose::Packets, None, server.public())
            {
                assert!(init.finish(&fit(rest, MESSAGE2_SIZE)).is_err());
            }
        }
        // Raw bytes as message 3 after a genuine message 1.
        2 => {
            let server = keys::link_key(1);
            let Ok((_, m1)) = Initiator::start(&mut rng, Purpose::Packets, None, server.public())
            else {
                return;
            };
            if let Ok((resp, _)) = Responder::respond(&mut rng, Purpose::Packets, server, &m1) {
                assert!(resp.finish(&fit(rest, MESSAGE3_SIZE)).is_err());
            }
        }
        // Raw records to the opener after a genuine handshake.
        3 => {
            let (_, mut rx) = pair(u64::from(m));
            let (opened, _) = open_stream(&mut rx, rest);
            assert!(opened.is_empty(), "random bytes opened as a record");
        }
        // Raw bytes into a LinkStream after a genuine handshake.
        4 => {
            let got = stream_after_handshake(rest);
            assert!(got.is_empty(), "random bytes read as data");
        }
        // Genuine records of fuzzer-chosen sizes and rekeys, then one
        // mutated byte.
        _ => {
            let (mut tx, mut rx) = pair(u64::from(m));
            let mut wire = Vec::new();
            let mut sent = Vec::new();
            let mut cursor = rest;
            while cursor.len() >= 2 && sent.len() < 16 {
                let size = usize::from(u16::from_be_bytes([cursor[0], cursor[1]]))
                    .clamp(1, MAX_RECORD_PAYLOAD)
                    .min(4096);
                if cursor[0] & 0x80 != 0 && tx.seal_rekey(&mut wire).is_err() {
                    panic!("a rekey failed");
                }
                let chunk: Vec<u8> = cursor.iter().cycle().take(size).copied().collect();
                if tx.seal(&chunk, &mut wire).is_err() {
                    panic!("a record of {size} bytes could not be sealed");
                }
                sent.extend_from_slice(&chunk);
                cursor = &cursor[2..];
            }
            if wire.is_empty() {
                return;
            }
            let mut mutated = wire.clone();
            let (opened, ok) = open_stream(&mut rx, &wire);
            assert!(ok, "a genuine stream failed to open");
            assert_eq!(opened, sent, "a genuine stream opened to something else");
            let at = usize::from(rest.first().copied().unwrap_or(0)) * 131 % mutated.len();
            mutated[at] ^= rest.last().copied().unwrap_or(1) | 1;
            let (_, mut rx2) = pair(u64::from(m));
            let (opened, _) = open_stream(&mut rx2, &mutated);
            assert!(
                sent.starts_with(&opened),
                "a mutated stream opened to data that was never sent"
            );
            assert!(opened.len() < sent.len(), "a mutated stream opened whole");
        }
    }
}
