//! Inbound packet links: the listener and one task per connection.

use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use murmur_wire::PacketCodec;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;
use tokio::time::Instant;
use tokio_util::codec::FramedRead;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::metrics::{CloseReason, DropReason, EngineMetrics};
use super::worker::Job;

pub(super) struct Limits {
    pub(super) max_connections: usize,
    pub(super) read_timeout: Duration,
}

/// Accepts connections until `shutdown`, at most `max_connections` at once
/// (further peers wait in the backlog).
pub(super) async fn accept(
    listener: TcpListener,
    unwrap: crossbeam_channel::Sender<Job>,
    metrics: EngineMetrics,
    limits: Limits,
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
        tracker.spawn(async move {
            let reason = serve(stream, &unwrap, &metrics, read_timeout, &shutdown).await;
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
        murmur_wire::Error::Io(_) => CloseReason::Io,
        _ => CloseReason::Garbage,
    }
}

async fn serve(
    stream: TcpStream,
    unwrap: &crossbeam_channel::Sender<Job>,
    metrics: &EngineMetrics,
    read_timeout: Duration,
    shutdown: &CancellationToken,
) -> CloseReason {
    let _ = stream.set_nodelay(true);
    let mut frames =
        FramedRead::with_capacity(stream, PacketCodec, murmur_wire::frame::FRAME_SIZE * 4);
    loop {
        let next = tokio::select! {
            _ = shutdown.cancelled() => return CloseReason::Shutdown,
            next = tokio::time::timeout(read_timeout, frames.next()) => next,
        };
        let packet = match next {
            Err(_) => return CloseReason::Timeout,
            Ok(None) => return CloseReason::Eof,
            Ok(Some(Err(e))) => return classify(&e),
            Ok(Some(Ok(packet))) => packet,
        };
        metrics.received.inc();
        metrics.unwrap_queue.inc();
        let job = Job {
            packet,
            received: Instant::now(),
        };
        match unwrap.try_send(job) {
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
