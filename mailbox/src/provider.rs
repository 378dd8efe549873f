//! The final hop: what the provider does with each packet the mixnet
//! delivers to one of its queues.
//!
//! | delivery | action |
//! |---|---|
//! | forward, `Deposit` | store once per message id (group commit); once durable, acknowledge through the deposit's SURB — again for a duplicate; unknown queue or full queue: dropped and counted, no acknowledgement |
//! | forward, `DropCover` | discard, count |
//! | forward, `LoopCover` | store as [`QueueItem::Loop`] in the destination (the client's loop queue), no acknowledgement |
//! | SURB reply | store as [`QueueItem::Reply`] (once per SURB id) for the queue's owner |
//! | unparsable payload | drop, count |
//!
//! [`Mailbox::handle_final`] never blocks: it hands the item to the writer
//! thread's bounded queue (or drops it when the queue is full) and returns.
//! Acknowledgements are built and sent by small tasks on the tokio runtime
//! once the writer reports the batch durable.

use std::sync::Arc;
use std::thread::JoinHandle;

use murmur_net::clock::Clock;
use murmur_node::engine::{FinalHop, Outbound};
use murmur_wire::mailbox::QueueItem;
use murmur_wire::{Ack, Delivery, Destination, FinalPayload, MessageId, NodeId, Packet, QueueId};
use murmur_wire::{Deposit, Surb};
use tokio::runtime::Handle;
use tokio_util::task::TaskTracker;

use crate::error::{Error, Result};
use crate::metrics::{Kind, Metrics, Outcome};
use crate::store::{InsertOutcome, NewItem, Store};
use crate::writer::{SubmitError, Writer, WriterConfig};

/// Where the provider sends its acknowledgements: into the mixnet, towards
/// the SURB's first hop. Implemented by the packet engine's
/// [`Outbound`] (what the daemon uses); tests plug in their own.
pub trait PacketSink: Send + Sync + 'static {
    /// Queues `packet` for `first_hop`. Returns false if it was dropped
    /// (unknown hop, link queue full); the deposit's sender then retransmits
    /// and gets acknowledged again.
    fn send(&self, first_hop: NodeId, packet: Packet) -> bool;
}

/// The provider's final-hop handler. Cheap to clone.
#[derive(Clone, Debug)]
pub struct Mailbox {
    writer: Writer,
    sink: Arc<dyn PacketSink>,
    metrics: Arc<Metrics>,
    runtime: Handle,
    tasks: TaskTracker,
}

impl std::fmt::Debug for dyn PacketSink {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("PacketSink")
    }
}

/// The writer thread behind a [`Mailbox`].
#[derive(Debug)]
pub struct WriterThread(JoinHandle<()>);

impl WriterThread {
    /// Waits (blocking) until the writer has committed everything queued and
    /// stopped, which happens once every clone of its [`Mailbox`] (and of its
    /// [`Writer`]) is dropped.
    pub fn join(self) {
        if self.0.join().is_err() {
            tracing::error!("the mailbox writer thread panicked");
        }
    }
}

impl Mailbox {
    /// Starts the write path (the group-commit writer thread) over `store`
    /// and returns the handler. Must be called inside a tokio runtime, which
    /// runs the acknowledgement tasks.
    pub fn start(
        store: Arc<dyn Store>,
        sink: Arc<dyn PacketSink>,
        clock: Arc<dyn Clock>,
        config: WriterConfig,
        metrics: Arc<Metrics>,
    ) -> Result<(Self, WriterThread)> {
        let runtime = Handle::try_current().map_err(|_| Error::NoRuntime)?;
        let (writer, thread) = Writer::start(store, clock, config, metrics.clone())?;
        Ok((
            Self {
                writer,
                sink,
                metrics,
                runtime,
                tasks: TaskTracker::new(),
            },
            WriterThread(thread),
        ))
    }

    /// The metrics this handler counts into.
    pub fn metrics(&self) -> &Arc<Metrics> {
        &self.metrics
    }

    /// Acknowledgement tasks in flight; `close()` then `wait()` on it at
    /// shutdown to let them finish.
    pub fn tasks(&self) -> &TaskTracker {
        &self.tasks
    }

    /// Handles one packet for which this provider is the final hop;
    /// `destination` is the queue id. Never blocks.
    pub fn handle_final(&self, destination: Destination, delivery: Delivery) {
        let queue = QueueId::from_bytes(destination.0);
        match delivery {
            Delivery::Forward { plaintext } => match FinalPayload::parse(&plaintext) {
                Ok(FinalPayload::Deposit(deposit)) => self.deposit(queue, deposit),
                Ok(FinalPayload::DropCover) => {
                    self.metrics.drop_cover.inc();
                }
                Ok(FinalPayload::LoopCover { id }) => {
                    self.store_quietly(queue, QueueItem::Loop { id });
                }
                Err(e) => {
                    self.metrics.malformed.inc();
                    tracing::debug!(error = %e, "dropped a final-hop packet with a malformed payload");
                }
            },
            Delivery::Reply { surb_id, sealed } => {
                self.store_quietly(queue, QueueItem::Reply { surb_id, sealed });
            }
        }
    }

    /// Stores an item that is not acknowledged (loops, replies); the writer
    /// counts the outcome.
    fn store_quietly(&self, queue: QueueId, item: QueueItem) {
        let kind = Kind::of(&item);
        if let Err(e) = self.writer.submit(NewItem { queue, item }, false) {
            self.metrics.count(kind, refused(e));
        }
    }

    fn deposit(&self, queue: QueueId, deposit: Deposit) {
        let Deposit { id, ack, body } = deposit;
        let item = QueueItem::Deposit {
            id,
            body: body.to_vec(),
        };
        match self.writer.submit(NewItem { queue, item }, true) {
            Ok(Some(done)) => {
                let sink = self.sink.clone();
                let metrics = self.metrics.clone();
                self.tasks.spawn_on(
                    async move {
                        match done.await {
                            // Durable now (or durable before, for a
                            // retransmission): acknowledge.
                            Ok(Ok(
                                InsertOutcome::Stored { .. } | InsertOutcome::Duplicate { .. },
                            )) => {
                                acknowledge(&*sink, &metrics, ack, id);
                            }
                            // Refused and counted by the writer: no ack.
                            Ok(Ok(InsertOutcome::QueueFull | InsertOutcome::UnknownQueue)) => {}
                            // The commit failed (counted by the writer):
                            // not stored, no ack.
                            Ok(Err(_)) => {}
                            // The writer went away without an answer.
                            Err(_) => metrics.count(Kind::Deposit, Outcome::Failed),
                        }
                    },
                    &self.runtime,
                );
            }
            Ok(None) => {}
            Err(e) => self.metrics.count(Kind::Deposit, refused(e)),
        }
    }
}

/// The packet engine hands the packets for which this provider is the final
/// hop to [`Mailbox::handle_final`] (on an unwrap worker thread; it never
/// blocks).
impl FinalHop for Mailbox {
    fn deliver(&self, destination: Destination, delivery: Delivery) {
        self.handle_final(destination, delivery);
    }
}

/// Acknowledgements leave through the packet engine's outbound links.
impl PacketSink for Outbound {
    fn send(&self, first_hop: NodeId, packet: Packet) -> bool {
        Outbound::send(self, first_hop, packet)
    }
}

fn refused(e: SubmitError) -> Outcome {
    match e {
        SubmitError::Overloaded => Outcome::Overloaded,
        SubmitError::Closed => Outcome::Failed,
    }
}

fn acknowledge(sink: &dyn PacketSink, metrics: &Metrics, surb: Surb, id: MessageId) {
    match surb.into_packet(&Ack { id }.encode()) {
        Ok((first_hop, packet)) => {
            if sink.send(first_hop, packet) {
                metrics.acks_sent.inc();
            } else {
                metrics.acks_failed.inc();
                tracing::debug!("the packet sink refused an acknowledgement");
            }
        }
        Err(e) => {
            metrics.acks_failed.inc();
            tracing::debug!(error = %e, "could not build an acknowledgement from a deposit's SURB");
        }
    }
}
