//! The tokio driver of the protocol core (`murmur_client_core::Core`): one
//! task owns the core's clock and carries out its actions — packets are
//! built on the blocking pool and handed to the links, fetches and deletes
//! go to the mailbox API, storage runs in order on one blocking worker —
//! and feeds the results back. No protocol decision is made here.
//!
//! The core lives behind a mutex held only to feed it an event or take its
//! actions, never across I/O or crypto.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use murmur_client_core::{Action, Core, Fragment, MessageState};
use murmur_wire::mailbox::QueueEntry;
use murmur_wire::{MessageId, QueueId, SurbId, SurbRecovery, VerifiedConsensus};
use rand::SeedableRng;
use rand::rngs::StdRng;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::client::{Shared, now_ms};
use crate::receive::{self, QueueKind};
use crate::send;
use crate::store::{OutState, OwnedQueue, Store};

/// What the driver keeps beside the core: the SURB recovery material of
/// tries in flight, and the queues it fetches.
pub(crate) struct State {
    pub(crate) core: Core,
    pub(crate) surbs: HashMap<SurbId, Pending>,
    pub(crate) queues: HashMap<QueueId, (QueueKind, OwnedQueue)>,
    consensus: Option<Arc<VerifiedConsensus>>,
    /// Fetches that failed since the counter was last read (`fetch_now`).
    pub(crate) fetch_failures: u64,
}

/// A try's acknowledgement material.
#[derive(Clone)]
pub(crate) struct Pending {
    pub(crate) recovery: SurbRecovery,
    pub(crate) deposit_id: MessageId,
}

impl State {
    pub(crate) fn new(core: Core) -> Self {
        Self {
            core,
            surbs: HashMap::new(),
            queues: HashMap::new(),
            consensus: None,
            fetch_failures: 0,
        }
    }
}

/// A job for the storage worker, run in order.
pub(crate) type StoreJob = Box<dyn FnOnce(&Store) + Send>;

/// Runs storage jobs one after another on the blocking pool. On shutdown
/// the jobs already queued are finished, then the worker stops.
pub(crate) fn spawn_store_worker(
    store: Arc<Store>,
    tracker: &TaskTracker,
    shutdown: CancellationToken,
) -> mpsc::UnboundedSender<StoreJob> {
    let (tx, mut rx) = mpsc::unbounded_channel::<StoreJob>();
    tracker.spawn(async move {
        loop {
            let first = tokio::select! {
                biased;
                job = rx.recv() => job,
                _ = shutdown.cancelled() => None,
            };
            let mut batch: Vec<StoreJob> = first.into_iter().collect();
            while let Ok(next) = rx.try_recv() {
                batch.push(next);
            }
            if batch.is_empty() {
                return;
            }
            let store = store.clone();
            let done = tokio::task::spawn_blocking(move || {
                for job in batch {
                    job(&store);
                }
            })
            .await;
            if done.is_err() {
                tracing::warn!("a storage job failed");
            }
        }
    });
    tx
}

/// The driver task: runs until `shutdown`.
pub(crate) async fn run(shared: Arc<Shared>) {
    let mut consensus_poll = tokio::time::interval(Duration::from_millis(500));
    consensus_poll.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        let next = pump(&shared);
        let sleep = async {
            match next {
                Some(at) => tokio::time::sleep_until(shared.origin + at).await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            _ = shared.shutdown.cancelled() => return,
            _ = shared.wake.notified() => {}
            _ = consensus_poll.tick() => {}
            _ = sleep => {}
        }
    }
}

/// Brings the core up to date (consensus, timers), carries out what it
/// asks for, and returns when it next needs the time. Anyone may pump:
/// actions are dispatched in the order the core gave them.
pub(crate) fn pump(shared: &Arc<Shared>) -> Option<Duration> {
    let mut st = shared.lock();
    let now = shared.now();
    refresh_consensus(shared, &mut st, now);
    if st.core.poll_timeout().is_some_and(|t| t <= now) {
        st.core.handle_timeout(now);
    }
    let actions: Vec<Action> = std::iter::from_fn(|| st.core.poll_action()).collect();
    // Dispatch under the lock so that two pumps cannot reorder actions;
    // dispatching only queues work.
    if !actions.is_empty() {
        dispatch(shared, &mut st, actions);
    }
    st.core.poll_timeout()
}

fn refresh_consensus(shared: &Shared, st: &mut State, now: Duration) {
    let Some(c) = shared.consensus.current() else {
        return;
    };
    if st
        .consensus
        .as_ref()
        .is_some_and(|old| Arc::ptr_eq(old, &c))
    {
        return;
    }
    st.core.set_consensus(c.clone(), now);
    st.consensus = Some(c);
}

/// Carries out the core's actions, in order where order matters: storage
/// through the ordered worker, packets in one batch on the blocking pool.
fn dispatch(shared: &Arc<Shared>, st: &mut State, actions: Vec<Action>) {
    let (tracker, shutdown) = (&shared.tracker, &shared.shutdown);
    let mut packets = Vec::new();
    for action in actions {
        match action {
            Action::SendReal { .. } | Action::SendDropCover { .. } | Action::SendLoop { .. } => {
                packets.push(action)
            }
            Action::FragmentAcked { fragment, surbs } => {
                for s in &surbs {
                    st.surbs.remove(s);
                }
                shared.counters.acks.fetch_add(1, Ordering::Relaxed);
                store_ack(shared, fragment);
            }
            Action::Progress {
                message,
                acked,
                total,
                state,
            } => progress(shared, message, acked, total, state),
            Action::ForgetSurbs { surbs } => {
                for s in &surbs {
                    st.surbs.remove(s);
                }
            }
            Action::Fetch { queue, after } => {
                tracker.spawn(fetch(shared.clone(), shutdown.clone(), queue, after));
            }
            Action::Delete { queue, seqs } => {
                tracker.spawn(delete(shared.clone(), shutdown.clone(), queue, seqs));
            }
            Action::Complete { queue, message } => {
                let worker = shared.clone();
                shared.store_job(move |store| {
                    receive::complete(&worker, store, &queue, &message);
                });
            }
            Action::DiscardPartial { queue, message } => {
                shared.store_job(move |store| {
                    tracing::debug!("discarding a partial message that expired");
                    if let Err(e) = store.discard_partial(&queue, &message) {
                        tracing::warn!(error = %e, "could not discard a partial message");
                    }
                });
            }
        }
    }
    if !packets.is_empty() {
        let shared = shared.clone();
        tracker.spawn(async move {
            let worker = shared.clone();
            let built =
                tokio::task::spawn_blocking(move || send::build_all(&worker, packets)).await;
            if built.is_err() {
                tracing::warn!("building packets failed");
            }
        });
    }
}

fn store_ack(shared: &Arc<Shared>, fragment: Fragment) {
    shared.store_job(move |store| {
        if let Err(e) = store.ack_fragment(&fragment.message, fragment.index) {
            tracing::warn!(error = %e, "could not record an acknowledgement");
        }
    });
}

/// Records a message's progress (after the acknowledgements before it) and
/// tells whoever waits for it.
fn progress(shared: &Arc<Shared>, message: MessageId, acked: u32, total: u32, state: MessageState) {
    let worker = shared.clone();
    shared.store_job(move |store| {
        let state = match state {
            MessageState::Sending => OutState::Sending,
            MessageState::Delivered => OutState::Delivered,
            MessageState::Failed => {
                tracing::info!("a message could not be delivered within its tries");
                if let Err(e) = store.fail_message(&message) {
                    tracing::warn!(error = %e, "could not record a failed message");
                }
                OutState::Failed
            }
        };
        worker.notify_progress(
            &message,
            crate::Progress {
                acked,
                total,
                state,
            },
        );
    });
}

/// Fetches one page of `queue`, deals with its entries, reports back.
async fn fetch(shared: Arc<Shared>, shutdown: CancellationToken, queue: QueueId, after: u64) {
    let owned = shared.lock().queues.get(&queue).cloned();
    let Some((kind, owned)) = owned else {
        // A queue that is no longer ours (a contact removed meanwhile).
        let mut st = shared.lock();
        st.core.on_fetch_failed(queue, shared.now());
        return;
    };
    let result = tokio::select! {
        _ = shutdown.cancelled() => return,
        r = async {
            let to = shared.provider_endpoint(&owned.provider)?;
            let mut rng = StdRng::from_rng(&mut rand::rng());
            shared.mailbox.fetch(&mut rng, &to, &owned, after).await
        } => r,
    };
    let page = match result {
        Ok(page) => page,
        Err(e) => {
            tracing::debug!(error = %e, "fetch failed; retrying at the next interval");
            let mut st = shared.lock();
            st.fetch_failures += 1;
            st.core.on_fetch_failed(queue, shared.now());
            drop(st);
            shared.fetched.notify_waiters();
            shared.wake.notify_one();
            return;
        }
    };
    let more = page.more;
    let entries: Vec<QueueEntry> = page.entries;
    let worker = shared.clone();
    shared.store_job(move |store| {
        let outcomes = receive::process(&worker, store, &kind, &owned, entries);
        let mut st = worker.lock();
        st.core.on_fetched(queue, &outcomes, more, worker.now());
        drop(st);
        worker.fetched.notify_waiters();
        worker.wake.notify_one();
    });
}

async fn delete(shared: Arc<Shared>, shutdown: CancellationToken, queue: QueueId, seqs: Vec<u64>) {
    let owned = shared.lock().queues.get(&queue).map(|(_, o)| o.clone());
    let Some(owned) = owned else {
        return;
    };
    let result = tokio::select! {
        _ = shutdown.cancelled() => return,
        r = async {
            let to = shared.provider_endpoint(&owned.provider)?;
            let mut rng = StdRng::from_rng(&mut rand::rng());
            shared.mailbox.delete(&mut rng, &to, &owned, &seqs).await
        } => r,
    };
    if let Err(e) = result {
        tracing::debug!(error = %e, "deletion failed; the entries are fetched again");
        shared.lock().core.on_delete_failed(queue, &seqs);
        shared.wake.notify_one();
    }
}

/// Loads what the core needs after a start: messages being sent, partial
/// messages, the queues to fetch.
pub(crate) fn restore(shared: &Shared, st: &mut State) -> crate::Result<()> {
    let now = shared.now();
    let store = &shared.store;
    let mut pending: HashMap<MessageId, Vec<u32>> = HashMap::new();
    for (id, index) in store.unacked()? {
        pending.entry(id).or_default().push(index);
    }
    for (id, m) in store.out_messages()? {
        if m.state != OutState::Sending {
            continue;
        }
        let idx = pending.remove(&id).unwrap_or_default();
        let dest = murmur_client_core::Destination {
            provider: m.provider,
            queue: m.queue,
        };
        st.core.queue_message(id, dest, m.fragments, &idx, now);
    }
    let wall = now_ms();
    for p in store.partials()? {
        let age = Duration::from_millis(wall.saturating_sub(p.first_ms));
        if st
            .core
            .restore_partial(p.queue, p.message, p.count, &p.have, age, now)
            .is_err()
        {
            store.discard_partial(&p.queue, &p.message)?;
        }
    }
    refresh_queues(shared, st)?;
    Ok(())
}

/// Tells the core which queues to fetch: the acknowledgement and loop
/// queues and every contact's inbox.
pub(crate) fn refresh_queues(shared: &Shared, st: &mut State) -> crate::Result<()> {
    let profile = &shared.profile;
    let mut queues = HashMap::new();
    queues.insert(
        profile.ack_queue.queue,
        (QueueKind::Acks, profile.ack_queue.clone()),
    );
    queues.insert(
        profile.loop_queue.queue,
        (QueueKind::Loops, profile.loop_queue.clone()),
    );
    let mut inboxes = Vec::new();
    for c in shared.store.contacts()? {
        inboxes.push(c.inbox.queue);
        queues.insert(c.inbox.queue, (QueueKind::Inbox, c.inbox));
    }
    st.queues = queues;
    st.core.set_inboxes(&inboxes, shared.now());
    Ok(())
}
