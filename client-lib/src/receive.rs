//! The receiving side: fetching from the client's own queues (contacts'
//! inboxes, the acknowledgement queue, the loop queue), storing what
//! arrived durably, and only then deleting it at the mailbox.

use std::sync::Arc;
use std::sync::atomic::Ordering;

use murmur_wire::Ack;
use murmur_wire::mailbox::{QueueEntry, QueueItem};
use rand::SeedableRng;
use rand::rngs::StdRng;
use tokio_util::sync::CancellationToken;

use crate::client::{Inner, ReceivedMessage, now_ms};
use crate::error::{Error, Result};
use crate::fragment::{self, FragmentKey};
use crate::seal::{self, Body};
use crate::send::on_acked;
use crate::store::{Added, ContactState, InFragment, OwnedQueue, Received};

#[derive(Clone)]
enum QueueKind {
    Acks,
    Loops,
    Contact(String),
}

/// Polls every queue once per fetch interval.
pub(crate) async fn fetch_loop(inner: Arc<Inner>, shutdown: CancellationToken) {
    let mut tick = tokio::time::interval(inner.options.fetch_interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tick.tick() => {}
        }
        if let Err(e) = fetch_round(&inner).await {
            tracing::debug!(error = %e, "fetch round failed; retrying at the next interval");
        }
    }
}

/// One pass over every queue. Returns messages delivered.
pub(crate) async fn fetch_round(inner: &Arc<Inner>) -> Result<u64> {
    let mut cursors = inner.fetch_lock.lock().await;
    let mut delivered = 0;
    let mut first_error = None;
    let mut queues = vec![
        (QueueKind::Acks, inner.profile.ack_queue.clone()),
        (QueueKind::Loops, inner.profile.loop_queue.clone()),
    ];
    for c in inner.store.contacts()? {
        queues.push((QueueKind::Contact(c.name.clone()), c.inbox.clone()));
    }
    for (kind, queue) in queues {
        let cursor = cursors.entry(queue.queue).or_insert(0);
        match drain(inner, kind, &queue, cursor).await {
            Ok(n) => delivered += n,
            Err(e) => {
                first_error.get_or_insert(e);
            }
        }
    }
    match first_error {
        Some(e) if delivered == 0 => Err(e),
        _ => Ok(delivered),
    }
}

/// Fetches `queue` from after `cursor`, stores what arrived, then deletes
/// exactly the entries dealt with. Entries that could not be opened are
/// left at the provider (never deleted) and skipped by moving the cursor.
async fn drain(
    inner: &Arc<Inner>,
    kind: QueueKind,
    queue: &OwnedQueue,
    cursor: &mut u64,
) -> Result<u64> {
    let to = inner.provider_http(&queue.provider)?;
    let mut rng = StdRng::from_rng(&mut rand::rng());
    let mut delivered = 0;
    // Bounded: a queue holds at most its quota; stop after a generous number
    // of pages so one busy queue cannot starve the others.
    for _ in 0..64 {
        let resp = inner.mailbox.fetch(&mut rng, &to, queue, *cursor).await?;
        if resp.entries.is_empty() {
            break;
        }
        let job_inner = inner.clone();
        let job_kind = kind.clone();
        let outcome =
            tokio::task::spawn_blocking(move || process(&job_inner, &job_kind, resp.entries))
                .await
                .map_err(|_| Error::Closed)?;
        delivered += outcome.delivered;
        if !outcome.delete.is_empty() {
            inner
                .mailbox
                .delete(&mut rng, &to, queue, &outcome.delete)
                .await?;
        }
        let stopped_early = outcome.stopped_early;
        if let Some(seen) = outcome.seen {
            *cursor = seen;
        }
        if stopped_early || !resp.more {
            break;
        }
    }
    Ok(delivered)
}

/// What [`process`] did with a page.
struct Processed {
    /// Messages delivered.
    delivered: u64,
    /// Entries dealt with (stored durably, or used): delete them.
    delete: Vec<u64>,
    /// The last entry looked at, if any: the new cursor.
    seen: Option<u64>,
    /// A storage error stopped processing: the rest is fetched again.
    stopped_early: bool,
}

/// Handles entries in order. Entries that were stored or used are to be
/// deleted; entries that could not be opened (garbage, a wrong key, an
/// acknowledgement this client no longer tracks) are left alone. Processing
/// stops at the first storage error, before the cursor passes the entry, so
/// it is fetched again.
fn process(inner: &Inner, kind: &QueueKind, entries: Vec<QueueEntry>) -> Processed {
    let mut out = Processed {
        delivered: 0,
        delete: Vec::new(),
        seen: None,
        stopped_early: false,
    };
    for entry in entries {
        let result = match (&kind, entry.item) {
            (QueueKind::Acks, QueueItem::Reply { surb_id, sealed }) => {
                Ok(Dealt::from(handle_ack(inner, &surb_id, &sealed)))
            }
            (QueueKind::Loops, QueueItem::Loop { id }) => {
                let mut st = inner.lock_state();
                if let Some(pos) = st.loops.iter().position(|l| *l == id) {
                    st.loops.remove(pos);
                    inner
                        .counters
                        .loops_returned
                        .fetch_add(1, Ordering::Relaxed);
                }
                // A loop carries nothing to open: ours, returned.
                Ok(Dealt::Used)
            }
            (QueueKind::Contact(name), QueueItem::Deposit { body, .. }) => {
                handle_deposit(inner, name, &body)
            }
            _ => {
                inner.counters.bad_entries.fetch_add(1, Ordering::Relaxed);
                Ok(Dealt::Unopened)
            }
        };
        match result {
            Ok(dealt) => {
                if dealt == Dealt::Delivered {
                    out.delivered += 1;
                }
                if dealt != Dealt::Unopened {
                    out.delete.push(entry.seq);
                }
                out.seen = Some(entry.seq);
            }
            Err(e) => {
                tracing::warn!(error = %e, "could not store a fetched entry; will fetch it again");
                out.stopped_early = true;
                break;
            }
        }
    }
    out
}

/// What became of one fetched entry.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Dealt {
    /// It completed a message, now delivered and stored.
    Delivered,
    /// It was opened and stored or used (a fragment, an acknowledgement, a
    /// loop, a duplicate of something stored).
    Used,
    /// It could not be opened: left at the provider.
    Unopened,
}

impl From<bool> for Dealt {
    fn from(opened: bool) -> Self {
        if opened { Dealt::Used } else { Dealt::Unopened }
    }
}

/// True if the acknowledgement opened (it was ours and is now used).
fn handle_ack(inner: &Inner, surb_id: &murmur_wire::SurbId, sealed: &[u8]) -> bool {
    let pending = {
        let st = inner.lock_state();
        st.surbs.get(surb_id).map(|p| {
            (
                p.fragment,
                p.deposit_id,
                p.recovery.clone(),
                p.route.clone(),
                p.sent_at,
            )
        })
    };
    let Some((key, deposit_id, recovery, route, sent_at)) = pending else {
        // An acknowledgement for a try this client no longer tracks (after a
        // restart, or a fragment acknowledged already): it cannot be opened,
        // so it is left to expire at the provider.
        return false;
    };
    match recovery.open(sealed).and_then(|p| Ack::parse(&p)) {
        Ok(ack) if ack.id == deposit_id => {
            on_acked(inner, key, &route, sent_at);
            true
        }
        _ => {
            inner.counters.bad_entries.fetch_add(1, Ordering::Relaxed);
            false
        }
    }
}

/// A deposit in a contact's inbox queue. A body that does not open under
/// the contact's fragment key is counted and left ([`Dealt::Unopened`]);
/// once it opened, the entry is the contact's and is used, even if the
/// message it completes then fails to open (counted, discarded). Storage
/// failures are errors.
fn handle_deposit(inner: &Inner, name: &str, body: &[u8]) -> Result<Dealt> {
    let Some(contact) = inner.store.contact(name)? else {
        return Ok(Dealt::Unopened);
    };
    let queue = contact.inbox.queue;
    let key = FragmentKey::derive(&contact.secret, &queue);
    let bad = |dealt| {
        inner.counters.bad_entries.fetch_add(1, Ordering::Relaxed);
        Ok(dealt)
    };
    let Ok(frag) = fragment::open(&key, &queue, body) else {
        return bad(Dealt::Unopened);
    };
    let one = [InFragment {
        message: frag.message_id,
        index: frag.index,
        count: frag.count,
        chunk: &frag.chunk,
    }];
    match inner.store.add_fragments(&queue, &one, now_ms()) {
        Ok(added) if added.first() == Some(&Added::New) => {}
        Ok(added) if added.first() == Some(&Added::Duplicate) => return Ok(Dealt::Used),
        Ok(_) | Err(Error::Crypto(_)) => return bad(Dealt::Used),
        Err(e) => return Err(e),
    }
    let Some(sealed) = inner.store.assemble(&queue, &frag.message_id)? else {
        return Ok(Dealt::Used);
    };
    let Ok(claimed) = seal::claimed_sender(&sealed) else {
        inner.store.discard_partial(&queue, &frag.message_id)?;
        return bad(Dealt::Used);
    };
    // The first message that opens on an invitation's queue binds the
    // relation to its sender; later ones must come from the same key.
    let expected = contact.identity.unwrap_or(claimed);
    let envelope = match seal::open(&inner.identity, &expected, &queue, &sealed) {
        Ok(env) if env.message_id == frag.message_id => env,
        _ => {
            inner.store.discard_partial(&queue, &frag.message_id)?;
            return bad(Dealt::Used);
        }
    };
    let mut updated = contact.clone();
    updated.identity = Some(expected);
    if let Body::Hello {
        reply_provider,
        reply_queue,
        name: suggested,
    } = &envelope.body
        && contact.state == ContactState::Invited
    {
        updated.address = Some((*reply_provider, *reply_queue));
        updated.state = ContactState::Established;
        if contact.provisional_name {
            updated.name = free_name(inner, suggested)?;
            updated.provisional_name = false;
        }
    }
    if updated.identity != contact.identity
        || updated.state != contact.state
        || updated.name != contact.name
    {
        inner.store.update_contact(&contact.name, &updated)?;
        if updated.state == ContactState::Established && contact.state == ContactState::Invited {
            tracing::info!("an invitation was accepted");
        }
    }
    let received = Received {
        from: updated.name.clone(),
        message_id: envelope.message_id,
        sent_at_ms: envelope.sent_at_ms,
        received_at_ms: now_ms(),
        body: envelope.body,
        read: false,
    };
    match inner.store.deliver(&queue, &received)? {
        Some(seq) => {
            inner.counters.delivered.fetch_add(1, Ordering::Relaxed);
            let _ = inner.incoming.send(ReceivedMessage {
                seq,
                message: received,
            });
            Ok(Dealt::Delivered)
        }
        None => Ok(Dealt::Used),
    }
}

/// `suggested`, or `suggested-2`, `-3`, … if taken (invalid suggestions
/// become `contact`).
fn free_name(inner: &Inner, suggested: &str) -> Result<String> {
    let base = if crate::invite::check_name(suggested).is_ok() {
        suggested.to_owned()
    } else {
        "contact".to_owned()
    };
    let taken: Vec<String> = inner
        .store
        .contacts()?
        .into_iter()
        .map(|c| c.name)
        .collect();
    if !taken.contains(&base) {
        return Ok(base);
    }
    for i in 2.. {
        let candidate = format!("{}-{i}", base.chars().take(56).collect::<String>());
        if !taken.contains(&candidate) {
            return Ok(candidate);
        }
    }
    Ok(base)
}
