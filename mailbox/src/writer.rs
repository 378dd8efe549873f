//! Group commit: one writer thread turns a bounded stream of items into
//! batches, commits each batch in one durable transaction, and only then
//! tells each item's submitter what happened.
//!
//! An fsync costs milliseconds; a deposit is a few kilobytes. Committing
//! every item on its own would cap the provider at a few hundred deposits a
//! second. Instead the writer takes everything that queued up while the
//! previous commit was running (up to a batch limit) and commits it at once,
//! so the fsync is shared: under load batches grow, at idle a lone item is
//! committed at once.
//!
//! The queue in front of the writer is bounded. When it is full, submitting
//! fails at once (the caller drops the item and counts it; a deposit's
//! sender retransmits when no acknowledgement comes).

use std::sync::Arc;
use std::thread::JoinHandle;

use murmur_net::clock::Clock;
use tokio::sync::{mpsc, oneshot};

use crate::error::{Error, Result};
use crate::metrics::{Kind, Metrics, Outcome};
use crate::store::{InsertOutcome, NewItem, Store};

/// The result a submitter receives: the item's outcome once its batch is
/// durable, or `Err` if the batch could not be committed (nothing of it was
/// written).
pub type Completion = std::result::Result<InsertOutcome, CommitFailed>;

/// The batch holding the item could not be committed; the item was not
/// stored. The cause was logged and counted by the writer.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
#[error("the batch holding this item could not be committed")]
pub struct CommitFailed;

/// Settings of the write path.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct WriterConfig {
    /// Items waiting for the writer at most; more are refused.
    pub queue_capacity: usize,
    /// Items committed in one transaction at most.
    pub max_batch: usize,
}

impl Default for WriterConfig {
    fn default() -> Self {
        Self {
            queue_capacity: 16_384,
            max_batch: 8192,
        }
    }
}

struct Request {
    item: NewItem,
    done: Option<oneshot::Sender<Completion>>,
}

/// Why [`Writer::submit`] refused an item.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SubmitError {
    /// The queue in front of the writer is full.
    Overloaded,
    /// The writer has stopped.
    Closed,
}

/// The submitting side of the write path. Cheap to clone; the writer thread
/// stops once every clone is dropped and the queue is drained.
#[derive(Clone, Debug)]
pub struct Writer {
    tx: mpsc::Sender<Request>,
}

impl Writer {
    /// Starts the writer thread. Returns the submitting side and the
    /// thread's handle (joined to wait for the last commit at shutdown).
    pub fn start(
        store: Arc<dyn Store>,
        clock: Arc<dyn Clock>,
        config: WriterConfig,
        metrics: Arc<Metrics>,
    ) -> Result<(Self, JoinHandle<()>)> {
        let (tx, rx) = mpsc::channel(config.queue_capacity.max(1));
        let max_batch = config.max_batch.max(1);
        let thread = std::thread::Builder::new()
            .name("mailbox-writer".into())
            .spawn(move || run(rx, store, clock, max_batch, metrics))
            .map_err(|source| Error::Thread {
                what: "mailbox writer",
                source,
            })?;
        Ok((Self { tx }, thread))
    }

    /// Queues `item` for the next batch without waiting. With `wants_result`
    /// the returned receiver resolves once the batch is durable (or failed).
    pub fn submit(
        &self,
        item: NewItem,
        wants_result: bool,
    ) -> std::result::Result<Option<oneshot::Receiver<Completion>>, SubmitError> {
        let (done, rx) = if wants_result {
            let (tx, rx) = oneshot::channel();
            (Some(tx), Some(rx))
        } else {
            (None, None)
        };
        match self.tx.try_send(Request { item, done }) {
            Ok(()) => Ok(rx),
            Err(mpsc::error::TrySendError::Full(_)) => Err(SubmitError::Overloaded),
            Err(mpsc::error::TrySendError::Closed(_)) => Err(SubmitError::Closed),
        }
    }
}

fn run(
    mut rx: mpsc::Receiver<Request>,
    store: Arc<dyn Store>,
    clock: Arc<dyn Clock>,
    max_batch: usize,
    metrics: Arc<Metrics>,
) {
    let mut requests: Vec<Request> = Vec::with_capacity(max_batch);
    let mut items: Vec<NewItem> = Vec::with_capacity(max_batch);
    let mut dones: Vec<Option<oneshot::Sender<Completion>>> = Vec::with_capacity(max_batch);
    loop {
        // Wait for the first item, then take whatever else is queued.
        let Some(first) = rx.blocking_recv() else {
            break;
        };
        requests.push(first);
        while requests.len() < max_batch {
            match rx.try_recv() {
                Ok(r) => requests.push(r),
                Err(_) => break,
            }
        }
        for r in requests.drain(..) {
            items.push(r.item);
            dones.push(r.done);
        }
        metrics.batch(items.len());
        let now = clock.now_secs();
        match store.insert_batch(&items, now) {
            Ok(outcomes) => {
                for ((item, outcome), done) in items.iter().zip(&outcomes).zip(dones.drain(..)) {
                    metrics.count(Kind::of(&item.item), (*outcome).into());
                    if let Some(done) = done {
                        // The submitter may have gone (shutdown); nothing to tell.
                        let _ = done.send(Ok(*outcome));
                    }
                }
            }
            Err(e) => {
                tracing::error!(error = %e, items = items.len(), "could not commit a batch; its items were not stored");
                metrics.commit_failures.inc();
                for item in &items {
                    metrics.count(Kind::of(&item.item), Outcome::Failed);
                }
                for done in dones.drain(..).flatten() {
                    let _ = done.send(Err(CommitFailed));
                }
            }
        }
        items.clear();
        dones.clear();
    }
    tracing::debug!("mailbox writer stopped");
}
