//! Dealing with fetched entries (on the storage worker): acknowledgements
//! are opened with the SURB material of their try, loops are counted,
//! deposits are opened with the contact's fragment key and stored a page
//! per transaction; a message whose fragments are all stored is assembled,
//! opened and delivered. What becomes of each entry goes back to the core,
//! which decides what is deleted at the provider.

use std::sync::atomic::Ordering;

use murmur_client_core::EntryOutcome;
use murmur_wire::mailbox::{QueueEntry, QueueItem};
use murmur_wire::{Ack, MessageId, QueueId};

use crate::client::{ReceivedMessage, Shared, now_ms};
use crate::error::{Error, Result};
use crate::fragment::{self, FragmentKey};
use crate::seal::{self, Body};
use crate::store::{Added, ContactRecord, ContactState, InFragment, OwnedQueue, Received, Store};

/// What a fetched queue is for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum QueueKind {
    /// Acknowledgements of this client's packets.
    Acks,
    /// This client's loop cover, returned.
    Loops,
    /// A contact's deposits.
    Inbox,
}

/// Deals with one page of `queue`'s entries, in order; returns what became
/// of each, up to the first that could not be stored.
pub(crate) fn process(
    shared: &Shared,
    store: &Store,
    kind: &QueueKind,
    queue: &OwnedQueue,
    entries: Vec<QueueEntry>,
) -> Vec<(u64, EntryOutcome)> {
    match kind {
        QueueKind::Acks => acks(shared, entries),
        QueueKind::Loops => {
            let mut st = shared.lock();
            entries
                .into_iter()
                .map(|e| match e.item {
                    QueueItem::Loop { id } => {
                        st.core.on_loop_returned(id);
                        (e.seq, EntryOutcome::Used)
                    }
                    _ => {
                        shared.counters.bad_entries.fetch_add(1, Ordering::Relaxed);
                        (e.seq, EntryOutcome::Unopened)
                    }
                })
                .collect()
        }
        QueueKind::Inbox => deposits(shared, store, &queue.queue, entries),
    }
}

fn bad(shared: &Shared) -> EntryOutcome {
    shared.counters.bad_entries.fetch_add(1, Ordering::Relaxed);
    EntryOutcome::Unopened
}

/// Acknowledgements: each opens with its try's recovery material, or is
/// left (a try this client no longer tracks, after a restart or once its
/// fragment was acknowledged: it expires at the provider).
fn acks(shared: &Shared, entries: Vec<QueueEntry>) -> Vec<(u64, EntryOutcome)> {
    let mut out = Vec::with_capacity(entries.len());
    let mut opened = Vec::new();
    for e in entries {
        let QueueItem::Reply { surb_id, sealed } = e.item else {
            out.push((e.seq, bad(shared)));
            continue;
        };
        let pending = shared.lock().surbs.get(&surb_id).cloned();
        let Some(pending) = pending else {
            out.push((e.seq, EntryOutcome::Unopened));
            continue;
        };
        match pending.recovery.open(&sealed).and_then(|p| Ack::parse(&p)) {
            Ok(ack) if ack.id == pending.deposit_id => {
                opened.push(surb_id);
                out.push((e.seq, EntryOutcome::Used));
            }
            _ => out.push((e.seq, bad(shared))),
        }
    }
    let mut st = shared.lock();
    let now = shared.now();
    for surb in opened {
        st.core.on_ack(surb, now);
    }
    out
}

/// Deposits into a contact's inbox: opened, checked, stored in one
/// transaction, then counted by the core.
fn deposits(
    shared: &Shared,
    store: &Store,
    queue: &QueueId,
    entries: Vec<QueueEntry>,
) -> Vec<(u64, EntryOutcome)> {
    let contact = match store.contacts() {
        Ok(cs) => cs.into_iter().find(|c| c.inbox.queue == *queue),
        Err(e) => {
            tracing::warn!(error = %e, "could not read contacts; will fetch again");
            return entries
                .first()
                .map(|e| vec![(e.seq, EntryOutcome::NotStored)])
                .unwrap_or_default();
        }
    };
    let Some(contact) = contact else {
        return entries.iter().map(|e| (e.seq, bad(shared))).collect();
    };
    let key = FragmentKey::derive(&contact.secret, queue);
    // Open and check every entry first; `slots[i]` is the position in
    // `fragments` of entry i's fragment, if it has one.
    let mut out = Vec::with_capacity(entries.len());
    let mut fragments = Vec::new();
    let mut slots = Vec::with_capacity(entries.len());
    {
        let st = shared.lock();
        for e in &entries {
            let opened = match &e.item {
                QueueItem::Deposit { body, .. } => fragment::open(&key, queue, body).ok(),
                _ => None,
            };
            let Some(f) = opened else {
                slots.push(None);
                out.push((e.seq, bad(shared)));
                continue;
            };
            if st
                .core
                .check_fragment(queue, &f.message_id, f.index, f.count)
                .is_err()
            {
                slots.push(None);
                out.push((e.seq, bad(shared)));
                continue;
            }
            slots.push(Some(fragments.len()));
            out.push((e.seq, EntryOutcome::Used));
            fragments.push(f);
        }
    }
    if fragments.is_empty() {
        return out;
    }
    let batch: Vec<InFragment<'_>> = fragments
        .iter()
        .map(|f| InFragment {
            message: f.message_id,
            index: f.index,
            count: f.count,
            chunk: &f.chunk,
        })
        .collect();
    let added = match store.add_fragments(queue, &batch, now_ms()) {
        Ok(a) => a,
        Err(e) => {
            tracing::warn!(error = %e, "could not store fetched fragments; will fetch them again");
            // Everything up to the first fragment stands; from it on, fetched again.
            let first = slots.iter().position(Option::is_some).unwrap_or(0);
            out.truncate(first);
            if let Some(e) = entries.get(first) {
                out.push((e.seq, EntryOutcome::NotStored));
            }
            return out;
        }
    };
    let mut st = shared.lock();
    let now = shared.now();
    for (i, slot) in slots.iter().enumerate() {
        let Some(j) = *slot else { continue };
        let (Some(f), Some(a)) = (fragments.get(j), added.get(j)) else {
            continue;
        };
        match a {
            Added::New => {
                if st
                    .core
                    .on_fragment(*queue, f.message_id, f.index, f.count, now)
                    .is_err()
                {
                    shared.counters.bad_entries.fetch_add(1, Ordering::Relaxed);
                }
            }
            Added::Duplicate => {}
            Added::CountMismatch => {
                shared.counters.bad_entries.fetch_add(1, Ordering::Relaxed);
                if let Some(o) = out.get_mut(i) {
                    o.1 = EntryOutcome::Unopened;
                }
            }
        }
    }
    out
}

/// Every fragment of `message` is stored: assembles, opens and delivers
/// it. A message that does not open is counted and discarded.
pub(crate) fn complete(shared: &Shared, store: &Store, queue: &QueueId, message: &MessageId) {
    match deliver(shared, store, queue, message) {
        Ok(()) => {}
        Err(Error::Crypto(_)) => {
            shared.counters.bad_entries.fetch_add(1, Ordering::Relaxed);
            if let Err(e) = store.discard_partial(queue, message) {
                tracing::warn!(error = %e, "could not discard a message that did not open");
            }
        }
        Err(e) => {
            tracing::warn!(error = %e, "could not deliver a complete message; it stays stored");
        }
    }
}

fn deliver(shared: &Shared, store: &Store, queue: &QueueId, message: &MessageId) -> Result<()> {
    let Some(sealed) = store.assemble(queue, message)? else {
        return Ok(());
    };
    let Some(contact) = store
        .contacts()?
        .into_iter()
        .find(|c| c.inbox.queue == *queue)
    else {
        return Err(Error::Crypto("no contact owns the queue"));
    };
    // The first message that opens on an invitation's queue (a hello, which
    // names its sender) binds the relation to its sender; later ones must
    // come from the same key.
    let expected = match (contact.identity, seal::claimed_sender(&sealed)?) {
        (Some(known), _) => known,
        (None, Some(claimed)) => claimed,
        (None, None) => {
            return Err(Error::Crypto(
                "the first message on an invitation's queue is not a hello",
            ));
        }
    };
    // Held until the advanced ratchet is stored with the message.
    let _ratchet_guard = shared.ratchet_lock();
    let (envelope, ratchet) = if seal::is_ratcheted(&sealed) {
        let Some(mut r) = store.ratchet(queue)? else {
            return Err(Error::Crypto(
                "a ratchet message on a relation without a ratchet",
            ));
        };
        let env = seal::open_ratcheted(&mut r, &mut rand::rng(), queue, &sealed)?;
        (env, Some(r))
    } else {
        let (env, started) = seal::open_hello(
            &mut rand::rng(),
            &shared.identity,
            &expected,
            queue,
            &sealed,
        )?;
        // Only the hello that establishes the relation starts its ratchet
        // (a hello seen again must not reset it).
        let fresh = contact.state == ContactState::Invited && store.ratchet(queue)?.is_none();
        (env, started.filter(|_| fresh))
    };
    if envelope.message_id != *message {
        return Err(Error::Crypto("the message id does not match its fragments"));
    }
    let updated = update_contact(
        store,
        &contact,
        expected,
        envelope.sender_pq.as_ref(),
        &envelope.body,
    )?;
    let received = Received {
        from: updated.name.clone(),
        message_id: envelope.message_id,
        sent_at_ms: envelope.sent_at_ms,
        received_at_ms: now_ms(),
        body: envelope.body,
        read: false,
    };
    if let Some(seq) = store.deliver_ratcheted(queue, &received, ratchet.as_ref())? {
        shared.counters.delivered.fetch_add(1, Ordering::Relaxed);
        let _ = shared.incoming.send(ReceivedMessage {
            seq,
            message: received,
        });
    }
    Ok(())
}

/// Binds the contact to the sender's identity; a hello on an invitation's
/// queue establishes the relation (and names it, if the name was
/// provisional).
fn update_contact(
    store: &Store,
    contact: &ContactRecord,
    identity: crate::identity::IdentityPublic,
    sender_pq: Option<&crate::identity::PqPublic>,
    body: &Body,
) -> Result<ContactRecord> {
    let mut updated = contact.clone();
    updated.identity = Some(identity);
    // They wrote to us, so they know our keys: our seals stop naming us.
    updated.known_to_them = true;
    if let Body::Hello {
        reply_provider,
        reply_queue,
        name: suggested,
    } = body
        && contact.state == ContactState::Invited
    {
        // `seal::open` refuses a hello without the sender's X-Wing key.
        let Some(pq) = sender_pq else {
            return Err(Error::Crypto("a hello lacks its sender's post-quantum key"));
        };
        updated.pq_identity = Some(pq.clone());
        updated.address = Some((*reply_provider, *reply_queue));
        updated.state = ContactState::Established;
        if contact.provisional_name {
            updated.name = free_name(store, suggested)?;
            updated.provisional_name = false;
        }
    }
    if updated.identity != contact.identity
        || updated.pq_identity != contact.pq_identity
        || updated.known_to_them != contact.known_to_them
        || updated.state != contact.state
        || updated.name != contact.name
    {
        store.update_contact(&contact.name, &updated)?;
        if updated.state == ContactState::Established && contact.state == ContactState::Invited {
            tracing::info!("an invitation was accepted");
        }
    }
    Ok(updated)
}

/// `suggested`, or `suggested-2`, `-3`, … if taken (invalid suggestions
/// become `contact`).
fn free_name(store: &Store, suggested: &str) -> Result<String> {
    let base = if crate::invite::check_name(suggested).is_ok() {
        suggested.to_owned()
    } else {
        "contact".to_owned()
    };
    let taken: Vec<String> = store.contacts()?.into_iter().map(|c| c.name).collect();
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
