//! A TCP proxy the test controls, placed in front of a node's packet port
//! and published as the node's address: it can cut the link (drop every
//! connection and refuse new ones), restore it, read slowly (a slow peer),
//! and record what passes towards the node (what an on-path observer
//! captures, to search and to replay later). The link handshake's answers
//! travel back unrecorded.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};
use tokio_util::sync::CancellationToken;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    /// Forward everything at full speed.
    Open,
    /// Drop every connection; accept new ones only to close them.
    Cut,
    /// Read from the connecting side at most this many bytes per second.
    Throttle(u64),
}

struct State {
    target: Mutex<Option<SocketAddr>>,
    mode: Mutex<Mode>,
    /// Cancelled on every cut: ends the connections open at that moment.
    generation: Mutex<CancellationToken>,
    /// Bytes forwarded towards the node.
    forwarded: AtomicU64,
    /// Connections refused or dropped while cut.
    refused: AtomicU64,
    /// One buffer per connection, from its first byte.
    recording: Mutex<Option<Vec<Vec<u8>>>>,
    record_limit: usize,
}

pub struct Proxy {
    pub addr: SocketAddr,
    state: Arc<State>,
    stop: CancellationToken,
}

impl Proxy {
    /// Binds a proxy on loopback (small receive buffers, so that a slow
    /// read is felt by the sender at once). Forwards nowhere until
    /// [`Proxy::set_target`].
    pub fn start(record_limit: usize) -> Proxy {
        let socket = TcpSocket::new_v4().unwrap();
        socket.set_reuseaddr(true).unwrap();
        socket.set_recv_buffer_size(16 * 1024).unwrap();
        socket.bind("127.0.0.1:0".parse().unwrap()).unwrap();
        let listener = socket.listen(128).unwrap();
        let addr = listener.local_addr().unwrap();
        let state = Arc::new(State {
            target: Mutex::new(None),
            mode: Mutex::new(Mode::Open),
            generation: Mutex::new(CancellationToken::new()),
            forwarded: AtomicU64::new(0),
            refused: AtomicU64::new(0),
            recording: Mutex::new(None),
            record_limit,
        });
        let stop = CancellationToken::new();
        {
            let (state, stop) = (state.clone(), stop.clone());
            tokio::spawn(async move {
                loop {
                    let (stream, _) = tokio::select! {
                        _ = stop.cancelled() => return,
                        r = listener.accept() => match r {
                            Ok(s) => s,
                            Err(_) => continue,
                        },
                    };
                    let mode = *state.mode.lock().unwrap();
                    let target = *state.target.lock().unwrap();
                    let (Some(target), false) = (target, mode == Mode::Cut) else {
                        state.refused.fetch_add(1, Ordering::Relaxed);
                        drop(stream);
                        continue;
                    };
                    let generation = state.generation.lock().unwrap().clone();
                    let state = state.clone();
                    let stop = stop.clone();
                    tokio::spawn(async move {
                        tokio::select! {
                            _ = stop.cancelled() => {}
                            _ = generation.cancelled() => {
                                state.refused.fetch_add(1, Ordering::Relaxed);
                            }
                            _ = pump(stream, target, state.clone()) => {}
                        }
                    });
                }
            });
        }
        Proxy { addr, state, stop }
    }

    pub fn set_target(&self, target: SocketAddr) {
        *self.state.target.lock().unwrap() = Some(target);
    }

    /// Drops every open connection and refuses new ones until restored.
    pub fn cut(&self) {
        *self.state.mode.lock().unwrap() = Mode::Cut;
        let mut g = self.state.generation.lock().unwrap();
        g.cancel();
        *g = CancellationToken::new();
    }

    /// Accepts and forwards again at full speed.
    pub fn restore(&self) {
        *self.state.mode.lock().unwrap() = Mode::Open;
    }

    /// Reads at most `bytes_per_sec` from each connection.
    pub fn throttle(&self, bytes_per_sec: u64) {
        *self.state.mode.lock().unwrap() = Mode::Throttle(bytes_per_sec);
    }

    pub fn forwarded(&self) -> u64 {
        self.state.forwarded.load(Ordering::Relaxed)
    }

    pub fn refused(&self) -> u64 {
        self.state.refused.load(Ordering::Relaxed)
    }

    /// Keeps a copy of the bytes forwarded towards the node on the
    /// connections opened from now on (at most `record_limit` bytes each).
    pub fn record(&self) {
        *self.state.recording.lock().unwrap() = Some(Vec::new());
    }

    /// What each recorded connection carried towards the node, as it was
    /// on the wire (an on-path observer's capture).
    pub fn recorded_streams(&self) -> Vec<Vec<u8>> {
        let rec = self.state.recording.lock().unwrap();
        rec.iter().flatten().cloned().collect()
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

/// Forwards a connection both ways: towards the node under the proxy's
/// mode (recorded, throttled), back at full speed (the link handshake's
/// answers). Ends when either side ends.
async fn pump(from: TcpStream, target: SocketAddr, state: Arc<State>) {
    let Ok(to) = TcpStream::connect(target).await else {
        return;
    };
    let (from_r, mut from_w) = from.into_split();
    let (mut to_r, to_w) = to.into_split();
    tokio::select! {
        _ = upstream(from_r, to_w, state) => {}
        _ = tokio::io::copy(&mut to_r, &mut from_w) => {}
    }
}

async fn upstream(
    mut from: tokio::net::tcp::OwnedReadHalf,
    mut to: tokio::net::tcp::OwnedWriteHalf,
    state: Arc<State>,
) {
    let mut buf = vec![0u8; 64 * 1024];
    let slot = state.recording.lock().unwrap().as_mut().map(|r| {
        r.push(Vec::new());
        r.len() - 1
    });
    loop {
        let mode = *state.mode.lock().unwrap();
        let (limit, pause) = match mode {
            Mode::Throttle(rate) => (((rate / 10).max(1) as usize).min(buf.len()), true),
            _ => (buf.len(), false),
        };
        let n = match from.read(&mut buf[..limit]).await {
            Ok(0) | Err(_) => return,
            Ok(n) => n,
        };
        if let (Some(rec), Some(slot)) = (state.recording.lock().unwrap().as_mut(), slot)
            && rec[slot].len() < state.record_limit
        {
            rec[slot].extend_from_slice(&buf[..n]);
        }
        if to.write_all(&buf[..n]).await.is_err() {
            return;
        }
        state.forwarded.fetch_add(n as u64, Ordering::Relaxed);
        if pause {
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}
