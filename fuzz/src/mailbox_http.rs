//! The mailbox fetch API's HTTP handler, driven with raw request bytes.
//!
//! `Api::handle` takes a hyper `Request<Incoming>`, which only hyper's own
//! connection code can make, so the target runs a real hyper HTTP/1 server
//! connection (the settings of `murmur_net::http::serve`) over an
//! in-memory duplex pipe: the input is written to it as the client's side
//! of the connection and then closed. Several pipelined requests in one
//! input are served in turn. The API's state (a real redb store in a
//! temporary directory, the nonce cache) lives for the whole process, on a
//! fixed clock, so seeded requests signed for [`keys::NOW`] are fresh.

use std::convert::Infallible;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use murmur_mailbox::{Api, ApiConfig, Mailbox, Metrics, PacketSink, Quota, RedbStore, Store};
use murmur_net::clock::Clock;
use murmur_wire::{Delivery, Destination, NodeId, PACKET_SIZE, Packet, QueueId, SurbId};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::keys;

/// A clock stopped at [`keys::NOW`].
#[derive(Debug)]
struct FixedClock;

impl Clock for FixedClock {
    fn now(&self) -> Duration {
        Duration::from_secs(keys::NOW)
    }
}

/// Where the provider's acknowledgements go: checked and dropped.
#[derive(Debug)]
struct CheckSink;

impl PacketSink for CheckSink {
    fn send(&self, _first_hop: NodeId, packet: Packet) -> bool {
        assert_eq!(packet.as_bytes().len(), PACKET_SIZE);
        true
    }
}

struct State {
    runtime: tokio::runtime::Runtime,
    api: Arc<Api>,
    mailbox: Mailbox,
    _dir: tempfile::TempDir,
}

fn state() -> &'static State {
    static STATE: OnceLock<State> = OnceLock::new();
    STATE.get_or_init(|| {
        let dir = match tempfile::tempdir() {
            Ok(d) => d,
            Err(e) => panic!("no temporary directory: {e}"),
        };
        let store = match RedbStore::open(
            &dir.path().join("mailbox.redb"),
            Quota {
                max_messages: 4096,
                max_bytes: 16 << 20,
            },
        ) {
            Ok(s) => Arc::new(s),
            Err(e) => panic!("could not open the store: {e}"),
        };
        // The fixed queue, owned by the fixed owner: deposits to it are
        // stored, and the seeded owner requests find it.
        if let Err(e) = store.create_queue(
            &QueueId::from_bytes(keys::QUEUE),
            &keys::owner_identity(),
            keys::NOW,
            u64::MAX,
        ) {
            panic!("could not create the fixed queue: {e}");
        }
        let runtime = match tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
        {
            Ok(r) => r,
            Err(e) => panic!("no tokio runtime: {e}"),
        };
        let metrics = Arc::new(Metrics::new());
        let mailbox = {
            let _guard = runtime.enter();
            match Mailbox::start(
                store.clone(),
                Arc::new(CheckSink),
                Arc::new(FixedClock),
                murmur_mailbox::WriterConfig::default(),
                metrics.clone(),
            ) {
                // The writer thread lives as long as the process.
                Ok((m, _thread)) => m,
                Err(e) => panic!("could not start the mailbox: {e}"),
            }
        };
        let api = Arc::new(Api::new(
            store,
            Arc::new(FixedClock),
            metrics,
            ApiConfig {
                max_queues: 64,
                nonce_cache_capacity: 1024,
                ..ApiConfig::default()
            },
        ));
        State {
            runtime,
            api,
            mailbox,
            _dir: dir,
        }
    })
}

/// Serves the input as the bytes of one HTTP/1 connection to the mailbox
/// fetch API. Every response must be well-formed HTTP (or the connection
/// refused), and the whole exchange must end within 10 s.
pub fn mailbox_http(data: &[u8]) {
    let _ = mailbox_http_exchange(data);
}

/// [`mailbox_http`], returning the bytes the server sent back.
pub fn mailbox_http_exchange(data: &[u8]) -> Vec<u8> {
    let st = state();
    let api = st.api.clone();
    let request = data.to_vec();
    st.runtime.block_on(async move {
        let (client, server) = tokio::io::duplex(256 * 1024);
        let service = service_fn(move |req| {
            let api = api.clone();
            async move { Ok::<_, Infallible>(api.handle(req).await) }
        });
        let conn = http1::Builder::new()
            .timer(TokioTimer::new())
            .header_read_timeout(Duration::from_secs(5))
            .max_buf_size(64 * 1024)
            // The input is written and then the write side is closed; the
            // server must still answer what it read.
            .half_close(true)
            .serve_connection(TokioIo::new(server), service);
        let talk = async move {
            let (mut rd, mut wr) = tokio::io::split(client);
            let write = async {
                let _ = wr.write_all(&request).await;
                let _ = wr.shutdown().await;
            };
            let mut out = Vec::new();
            let read = rd.read_to_end(&mut out);
            let (_, read) = tokio::join!(write, read);
            let _ = read;
            out
        };
        let exchange = async { tokio::join!(conn, talk) };
        let (_, out) = match tokio::time::timeout(Duration::from_secs(10), exchange).await {
            Ok(v) => v,
            Err(_) => panic!("the mailbox API did not finish a connection within 10 s"),
        };
        if !out.is_empty() {
            assert!(
                out.starts_with(b"HTTP/1.1 ") || out.starts_with(b"HTTP/1.0 "),
                "response is not HTTP: {:?}",
                String::from_utf8_lossy(&out[..out.len().min(64)])
            );
        }
        out
    })
}

/// The mailbox provider's final-hop path, `Mailbox::handle_final`, on the
/// input as a forward payload and as a reply to the fixed queue: parsing,
/// storing through the writer thread, and for a stored deposit, the
/// acknowledgement through its SURB (into a sink that checks it). Shares
/// the store with [`mailbox_http`], whose seeded owner requests fetch and
/// acknowledge what lands here.
pub(crate) fn mailbox_final(data: &[u8]) {
    let st = state();
    let queue = Destination(keys::QUEUE);
    st.runtime.block_on(async {
        st.mailbox.handle_final(
            queue,
            Delivery::Forward {
                plaintext: data.to_vec(),
            },
        );
        st.mailbox.handle_final(
            queue,
            Delivery::Reply {
                surb_id: SurbId::from_bytes([1; 16]),
                sealed: data.to_vec(),
            },
        );
        // Let earlier deposits' acknowledgement tasks run.
        tokio::task::yield_now().await;
    });
}

/// Deposits stored (or found duplicate) and acknowledgements sent so far by
/// the process-wide provider (for the smoke test).
pub fn mailbox_counts() -> (u64, u64) {
    let m = state().mailbox.metrics();
    (
        m.deposits("stored") + m.deposits("duplicate"),
        m.acks_sent(),
    )
}
