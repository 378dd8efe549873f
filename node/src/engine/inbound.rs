//! Inbound packet links: the listener and one task per connection (link
//! handshake as the responder, peer check, then frames).

use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use murmur_wire::PacketCodec;
use murmur_wire::link::Purpose;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;
use tokio::time::Instant;
use tokio_util::codec::FramedRead;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::metrics::{CloseReason, DropReason, EngineMetrics};
use super::worker::Job;
use super::{LinkConfig, Topology};

/// Bytes read from a connection at a time: about 11 frames.
const READ_BUFFER: usize = 32 * 1024;

pub(super) struct Limits {
    pub(super) max_connections: usize,
    pub(super) read_timeout: Duration,
}

/// Who the listener is and whom it takes: this node's link configuration
/// and the consensus peers are checked against.
pub(super) struct Peers {
    pub(super) link: Arc<LinkConfig>,
    pub(super) topology: Arc<dyn Topology>,
}

/// Accepts connections until `shutdown`, at most `max_connections` at once
/// (further peers wait in the backlog).
pub(super) async fn accept(
    listener: TcpListener,
    unwrap: crossbeam_channel::Sender<Job>,
    metrics: EngineMetrics,
    limits: Limits,
    peers: Peers,
    tracker: TaskTracker,
    shutdown: CancellationToken,
) {
    let permits = Arc::new(Semaphore::new(limits.max_connections));
    loop {
        let permit = tokio::select! {
            _ = shutdown.cancelled() => break,
            p = permits.clone().acquire_owned() => match p {
                Ok(p) => p,
                Err(_) => break,
            },
        };
        let stream = tokio::select! {
            _ = shutdown.cancelled() => break,
            accepted = listener.accept() => match accepted {
                Ok((stream, _peer)) => stream,
                Err(e) => {
                    // E.g. out of file descriptors: back off briefly.
                    tracing::debug!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        metrics.connections_accepted.inc();
        metrics.connections_open.inc();
        let unwrap = unwrap.clone();
        let metrics = metrics.clone();
        let shutdown = shutdown.clone();
        let read_timeout = limits.read_timeout;
        let (link, topology) = (peers.link.clone(), peers.topology.clone());
        tracker.spawn(async move {
            let reason = match handshake(stream, &link, &*topology, &metrics, &shutdown).await {
                Ok(frames) => serve(frames, &unwrap, &metrics, read_timeout, &shutdown).await,
                Err(reason) => reason,
            };
            metrics.closed(reason);
            metrics.connections_open.dec();
            tracing::debug!(reason = reason.as_str(), "inbound connection closed");
            drop(permit);
        });
    }
}

fn classify(e: &murmur_wire::Error) -> CloseReason {
    match e {
        murmur_wire::Error::BadFrameHeader => CloseReason::Garbage,
        murmur_wire::Error::BadFrameLength { .. } => CloseReason::WrongSize,
        murmur_wire::Error::TruncatedFrame { .. } => CloseReason::Truncated,
        murmur_wire::Error::Io(io) => match io.kind() {
            // From the link stream: a record that does not open, or the
            // connection ending inside one.
            std::io::ErrorKind::InvalidData => CloseReason::BadRecord,
            std::io::ErrorKind::UnexpectedEof => CloseReason::Truncated,
            _ => CloseReason::Io,
        },
        _ => CloseReason::Garbage,
    }
}

type Frames = FramedRead<murmur_net::LinkStream<TcpStream>, PacketCodec>;

/// The link handshake as the responder, then the peer check: a node (its
/// link key is in a recent consensus) or an unidentified client, which
/// only some nodes take ([`super::ClientPolicy`]).
async fn handshake(
    stream: TcpStream,
    link: &LinkConfig,
    topology: &dyn Topology,
    metrics: &EngineMetrics,
    shutdown: &CancellationToken,
) -> Result<Frames, CloseReason> {
    let _ = stream.set_nodelay(true);
    let accepted = tokio::select! {
        _ = shutdown.cancelled() => return Err(CloseReason::Shutdown),
        r = murmur_net::accept(stream, Purpose::Packets, &link.key, &link.settings) => r,
    };
    let accepted = accepted.map_err(|e| {
        metrics.handshake_failed("inbound", e.label());
        tracing::debug!(error = %e, "inbound link handshake failed");
        CloseReason::Handshake
    })?;
    if link.is_node(topology, &accepted.remote_static) {
        metrics.peer("node");
    } else if link.takes_clients(topology) {
        metrics.peer("client");
    } else {
        return Err(CloseReason::ClientRefused);
    }
    // Room for several frames per read (the decoder never asks for more
    // than one frame, so this bounds the buffer).
    Ok(FramedRead::with_capacity(
        accepted.stream,
        PacketCodec,
        READ_BUFFER,
    ))
}

async fn serve(
    mut frames: Frames,
    unwrap: &crossbeam_channel::Sender<Job>,
    metrics: &EngineMetrics,
    read_timeout: Duration,
    shutdown: &CancellationToken,
) -> CloseReason {
    // Both futures live across frames: creating a cancellation waiter and a
    // timer per frame would cost a lock each.
    let cancelled = shutdown.cancelled();
    tokio::pin!(cancelled);
    let idle = tokio::time::sleep(read_timeout);
    tokio::pin!(idle);
    let mut last_frame = Instant::now();
    loop {
        let next = tokio::select! {
            biased;
            _ = &mut cancelled => return CloseReason::Shutdown,
            next = frames.next() => next,
            _ = &mut idle => {
                // The timer is moved only when it fires: the deadline is
                // read_timeout after the last complete frame.
                let deadline = last_frame + read_timeout;
                if Instant::now() >= deadline {
                    return CloseReason::Timeout;
                }
                idle.as_mut().reset(deadline);
                continue;
            }
        };
        let packet = match next {
            None => return CloseReason::Eof,
            Some(Err(e)) => return classify(&e),
            Some(Ok(packet)) => packet,
        };
        let received = Instant::now();
        last_frame = received;
        metrics.received.inc();
        metrics.unwrap_queue.inc();
        match unwrap.try_send(Job { packet, received }) {
            Ok(()) => {}
            Err(crossbeam_channel::TrySendError::Full(_)) => {
                metrics.unwrap_queue.dec();
                metrics.drop(DropReason::OverloadUnwrap);
            }
            Err(crossbeam_channel::TrySendError::Disconnected(_)) => {
                metrics.unwrap_queue.dec();
                metrics.drop(DropReason::Shutdown);
                return CloseReason::Shutdown;
            }
        }
    }
}
