//! The mailbox fetch API's HTTP handler, driven with raw request bytes.
//!
//! `Api::handle` takes a hyper `Request<Incoming>`, which only hyper's own
//! connection code can make, so the target runs a real hyper HTTP/1 server
//! connection (the settings of `murmur_directory::http::serve`) over an
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
use murmur_directory::clock::Clock;
use murmur_mailbox::{Api, ApiConfig, Metrics, Quota, RedbStore};
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

struct State {
    runtime: tokio::runtime::Runtime,
    api: Arc<Api>,
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
                max_messages: 64,
                max_bytes: 1 << 20,
            },
        ) {
            Ok(s) => s,
            Err(e) => panic!("could not open the store: {e}"),
        };
        let runtime = match tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
        {
            Ok(r) => r,
            Err(e) => panic!("no tokio runtime: {e}"),
        };
        let api = Arc::new(Api::new(
            Arc::new(store),
            Arc::new(FixedClock),
            Arc::new(Metrics::new()),
            ApiConfig {
                max_queues: 64,
                nonce_cache_capacity: 1024,
            },
        ));
        State {
            runtime,
            api,
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
