//! Outbound links: one persistent connection per next hop, created on
//! demand, reconnecting with backoff, each with a bounded queue.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use futures::SinkExt;
use murmur_net::{LinkSettings, LinkStream};
use murmur_wire::link::Purpose;
use murmur_wire::{NodeId, Packet, PacketCodec};
use rand::RngExt;
use tokio::net::TcpStream;
use tokio::sync::mpsc;
use tokio_util::codec::FramedWrite;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::metrics::{DropReason, EngineMetrics};
use super::{EngineLimits, LinkConfig, Topology, resolve};

/// Most packets written between two flushes.
const BATCH: usize = 64;

struct Entry {
    generation: u64,
    tx: mpsc::Sender<Packet>,
}

pub(crate) struct Links {
    topology: Arc<dyn Topology>,
    link: Arc<LinkConfig>,
    queue: usize,
    max_queued: i64,
    max_links: usize,
    connect_timeout: Duration,
    write_timeout: Duration,
    idle_timeout: Duration,
    backoff_min: Duration,
    backoff_max: Duration,
    pub(crate) metrics: EngineMetrics,
    map: Mutex<HashMap<NodeId, Entry>>,
    generation: AtomicU64,
    /// Set once `shutdown` is cancelled (a plain flag: the token's own
    /// check takes a lock, and this is read for every packet).
    stopped: Arc<AtomicBool>,
    runtime: tokio::runtime::Handle,
    tracker: TaskTracker,
    shutdown: CancellationToken,
}

impl std::fmt::Debug for Links {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Links").finish_non_exhaustive()
    }
}

enum Outcome {
    Failed,
    Idle,
    Stop,
}

fn drain(rx: &mut mpsc::Receiver<Packet>, batch: &mut Vec<Packet>) {
    while batch.len() < BATCH {
        match rx.try_recv() {
            Ok(p) => batch.push(p),
            Err(_) => break,
        }
    }
}

impl Links {
    pub(crate) fn new(
        topology: Arc<dyn Topology>,
        link: Arc<LinkConfig>,
        limits: &EngineLimits,
        metrics: EngineMetrics,
        runtime: tokio::runtime::Handle,
        tracker: TaskTracker,
        shutdown: CancellationToken,
    ) -> Self {
        let stopped = Arc::new(AtomicBool::new(false));
        let flag = stopped.clone();
        let token = shutdown.clone();
        tracker.spawn_on(
            async move {
                token.cancelled().await;
                flag.store(true, Ordering::Release);
            },
            &runtime,
        );
        Self {
            topology,
            link,
            queue: limits.link_queue,
            max_queued: i64::try_from(limits.max_link_queued).unwrap_or(i64::MAX),
            max_links: limits.max_links,
            connect_timeout: Duration::from_millis(limits.connect_timeout_ms),
            write_timeout: Duration::from_millis(limits.write_timeout_ms),
            idle_timeout: Duration::from_secs(limits.link_idle_timeout_secs),
            backoff_min: Duration::from_millis(limits.reconnect_min_ms),
            backoff_max: Duration::from_millis(limits.reconnect_max_ms),
            metrics,
            map: Mutex::new(HashMap::new()),
            generation: AtomicU64::new(0),
            stopped,
            runtime,
            tracker,
            shutdown,
        }
    }

    fn lock(&self) -> MutexGuard<'_, HashMap<NodeId, Entry>> {
        self.map.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Queues `packet` for `next_hop`, creating the link if needed. Never
    /// blocks; on `Err` the caller counts the drop.
    pub(crate) fn send(
        self: &Arc<Self>,
        next_hop: NodeId,
        packet: Packet,
    ) -> Result<(), DropReason> {
        if self.stopped.load(Ordering::Acquire) {
            return Err(DropReason::Shutdown);
        }
        let mut map = self.lock();
        self.send_locked(&mut map, next_hop, packet)
    }

    /// [`Links::send`] for many packets under one lock; drops are counted
    /// here. Empties `batch`.
    pub(crate) fn send_batch(self: &Arc<Self>, batch: &mut Vec<(NodeId, Packet)>) {
        if self.stopped.load(Ordering::Acquire) {
            self.metrics
                .drop_n(DropReason::Shutdown, batch.len() as u64);
            batch.clear();
            return;
        }
        let mut map = self.lock();
        for (next_hop, packet) in batch.drain(..) {
            if let Err(reason) = self.send_locked(&mut map, next_hop, packet) {
                self.metrics.drop(reason);
            }
        }
    }

    fn send_locked(
        self: &Arc<Self>,
        map: &mut HashMap<NodeId, Entry>,
        next_hop: NodeId,
        packet: Packet,
    ) -> Result<(), DropReason> {
        // Every enqueue happens under the map's lock, so a link that finds
        // its queue empty under it can retire without losing a packet.
        if self.metrics.link_queue.get() >= self.max_queued {
            return Err(DropReason::OverloadLink);
        }
        let mut packet = packet;
        if let Some(entry) = map.get(&next_hop) {
            match entry.tx.try_send(packet) {
                Ok(()) => {
                    self.metrics.link_queue.inc();
                    return Ok(());
                }
                Err(mpsc::error::TrySendError::Full(_)) => return Err(DropReason::OverloadLink),
                Err(mpsc::error::TrySendError::Closed(p)) => {
                    map.remove(&next_hop);
                    packet = p;
                }
            }
        }
        if resolve(&*self.topology, &next_hop).is_none() {
            return Err(DropReason::UnknownNextHop);
        }
        if map.len() >= self.max_links {
            return Err(DropReason::OverloadLinks);
        }
        let (tx, rx) = mpsc::channel(self.queue);
        if tx.try_send(packet).is_err() {
            return Err(DropReason::OverloadLink);
        }
        self.metrics.link_queue.inc();
        let generation = self.generation.fetch_add(1, Ordering::Relaxed);
        map.insert(next_hop, Entry { generation, tx });
        self.tracker
            .spawn_on(self.clone().run(next_hop, generation, rx), &self.runtime);
        Ok(())
    }

    /// The life of one link: connect, write, reconnect on failure; retire
    /// when idle, when the next hop leaves the consensus, or on shutdown.
    async fn run(
        self: Arc<Self>,
        next_hop: NodeId,
        generation: u64,
        mut rx: mpsc::Receiver<Packet>,
    ) {
        let mut backoff = self.backoff_min;
        let mut batch = Vec::with_capacity(BATCH);
        let leftover_reason = loop {
            if self.shutdown.is_cancelled() {
                break DropReason::Shutdown;
            }
            let Some((addr, link_key)) = resolve(&*self.topology, &next_hop) else {
                break DropReason::UnknownNextHop;
            };
            let settings = LinkSettings {
                handshake_timeout: self.connect_timeout,
                ..self.link.settings
            };
            // The next hop proves it holds the link key the consensus lists
            // for it; this node proves it holds its own.
            let connect = murmur_net::connect(
                addr,
                Purpose::Packets,
                Some(&self.link.key),
                &link_key,
                &settings,
            );
            let connected = tokio::select! {
                _ = self.shutdown.cancelled() => break DropReason::Shutdown,
                r = connect => r,
            };
            let stream = match connected {
                Ok(s) => s,
                Err(e) => {
                    self.metrics.link_connect_failures.inc();
                    self.metrics.handshake_failed("outbound", e.label());
                    tracing::debug!(error = %e, "outbound link could not connect; backing off");
                    let jitter = rand::rng().random_range(0.5..1.0);
                    tokio::select! {
                        _ = self.shutdown.cancelled() => break DropReason::Shutdown,
                        _ = tokio::time::sleep(backoff.mul_f64(jitter)) => {}
                    }
                    backoff = (backoff * 2).min(self.backoff_max);
                    continue;
                }
            };
            backoff = self.backoff_min;
            self.metrics.links_up.inc();
            let outcome = self.serve(stream, &mut rx, &mut batch).await;
            self.metrics.links_up.dec();
            match outcome {
                Outcome::Failed => {
                    tracing::debug!("outbound link failed; reconnecting");
                    continue;
                }
                Outcome::Stop => break DropReason::Shutdown,
                Outcome::Idle => {
                    let mut map = self.lock();
                    if rx.is_empty() {
                        if map
                            .get(&next_hop)
                            .is_some_and(|e| e.generation == generation)
                        {
                            map.remove(&next_hop);
                        }
                        return;
                    }
                    // Something arrived just now: keep going.
                    continue;
                }
            }
        };
        {
            let mut map = self.lock();
            if map
                .get(&next_hop)
                .is_some_and(|e| e.generation == generation)
            {
                map.remove(&next_hop);
            }
        }
        rx.close();
        let mut left = 0u64;
        while rx.try_recv().is_ok() {
            left += 1;
        }
        self.metrics.link_queue.dec_by(left as i64);
        self.metrics.drop_n(leftover_reason, left);
    }

    async fn serve(
        &self,
        stream: LinkStream<TcpStream>,
        rx: &mut mpsc::Receiver<Packet>,
        batch: &mut Vec<Packet>,
    ) -> Outcome {
        let mut sink = FramedWrite::new(stream, PacketCodec);
        sink.set_backpressure_boundary(64 * 1024);
        let cancelled = self.shutdown.cancelled();
        tokio::pin!(cancelled);
        let idle = tokio::time::sleep(self.idle_timeout);
        tokio::pin!(idle);
        let mut last_send = tokio::time::Instant::now();
        loop {
            let first = tokio::select! {
                biased;
                _ = &mut cancelled => return Outcome::Stop,
                p = rx.recv() => match p {
                    Some(p) => p,
                    None => return Outcome::Stop,
                },
                _ = &mut idle => {
                    // Moved only when it fires: idle_timeout after the last send.
                    let deadline = last_send + self.idle_timeout;
                    if tokio::time::Instant::now() >= deadline {
                        return Outcome::Idle;
                    }
                    idle.as_mut().reset(deadline);
                    continue;
                }
            };
            batch.push(first);
            drain(rx, batch);
            if batch.len() < BATCH / 2 {
                // Under load more packets are on their way: letting them
                // arrive saves a write (and a wakeup) per packet.
                tokio::task::yield_now().await;
                drain(rx, batch);
            }
            let n = batch.len();
            self.metrics.link_queue.dec_by(n as i64);
            let write = async {
                for p in batch.drain(..) {
                    sink.feed(p).await?;
                }
                SinkExt::<Packet>::flush(&mut sink).await
            };
            match tokio::time::timeout(self.write_timeout, write).await {
                Ok(Ok(())) => {
                    self.metrics.forwarded.inc_by(n as u64);
                }
                _ => {
                    batch.clear();
                    self.metrics.drop_n(DropReason::LinkFailed, n as u64);
                    return Outcome::Failed;
                }
            }
            last_send = tokio::time::Instant::now();
        }
    }
}
