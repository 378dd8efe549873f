//! The sending side: the Loopix send loop (a Poisson stream of real or
//! drop-cover packets, and an independent loop-cover stream), packet
//! building with a fresh route and acknowledgement SURB per try, and
//! retransmission of packets not acknowledged in time.

use std::collections::HashSet;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use murmur_wire::packet::MIX_LAYERS;
use murmur_wire::policy::{ClientSchedule, Stream, erlang_quantile, select_route_avoiding};
use murmur_wire::{
    DEPOSIT_BODY_SIZE, Deposit, Destination, FinalPayload, LinkPublicKey, MessageId, NodeId,
    Packet, QueueId, SurbId, SurbRecovery, VerifiedConsensus, build_forward_packet, build_surb,
};
use rand::SeedableRng;
use rand::rngs::StdRng;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::client::{Inner, PendingSurb, SendState};
use crate::error::{Error, Result};
use crate::store::{OutState, body_array};

/// A mix is avoided after this many consecutive unacknowledged packets
/// through it.
const SUSPECT_AFTER: u32 = 2;
/// Loop ids remembered (older loops count as lost).
const MAX_OUTSTANDING_LOOPS: usize = 4096;

/// The mixes a client currently avoids: those blamed for at least
/// [`SUSPECT_AFTER`] timeouts since they last carried a packet. A layer is
/// never avoided whole: if every mix of a layer is suspect, only those
/// blamed more than the least-blamed of the layer are avoided.
pub(crate) fn suspects(state: &SendState, consensus: &VerifiedConsensus) -> HashSet<NodeId> {
    let blame = |id: &NodeId| state.suspicion.get(id).copied().unwrap_or(0);
    let mut avoid = HashSet::new();
    for layer in consensus.layers() {
        let least = layer.iter().map(|n| blame(&n.id)).min().unwrap_or(0);
        let bar = if least >= SUSPECT_AFTER {
            least + 1
        } else {
            SUSPECT_AFTER
        };
        avoid.extend(layer.iter().filter(|n| blame(&n.id) >= bar).map(|n| n.id));
    }
    avoid
}

/// Blames the mixes of a try, sent at `sent_at`, that timed out: each mix
/// that has not carried a try sent at or after it.
fn blame(state: &mut SendState, route: &[NodeId], sent_at: Instant) {
    for node in route {
        if state.proven.get(node).is_none_or(|p| *p < sent_at) {
            *state.suspicion.entry(*node).or_default() += 1;
        }
    }
}

/// The timeout of the `tries`-th try: doubled after each timeout of the same
/// packet up to four times the base, so that a slow network is not
/// flooded with retransmissions and a message survives a longer outage.
fn backoff(base: Duration, tries: u32) -> Duration {
    base * (1u32 << tries.saturating_sub(1).min(2))
}

/// How long to wait for an acknowledgement: the 99.9th percentile of the
/// six exponential mix delays a packet and its acknowledgement cross (capped
/// by the maximum delay), plus two fetch intervals and a second of slack.
pub(crate) fn ack_timeout(inner: &Inner, consensus: &VerifiedConsensus) -> Duration {
    if let Some(t) = inner.options.ack_timeout {
        return t;
    }
    let p = consensus.params();
    let hops = 2 * MIX_LAYERS as u32;
    let delays = erlang_quantile(hops, Duration::from_micros(p.mean_delay_us), 0.999)
        .min(Duration::from_micros(p.max_delay_us) * hops);
    delays + 2 * inner.options.fetch_interval + Duration::from_secs(1)
}

struct Built {
    first_hop: NodeId,
    addr: SocketAddr,
    link_key: LinkPublicKey,
    packet: Packet,
    surb: Option<(SurbId, SurbRecovery, MessageId)>,
    route: Vec<NodeId>,
}

fn first_hop_addr(
    consensus: &VerifiedConsensus,
    id: &NodeId,
) -> Result<(SocketAddr, LinkPublicKey)> {
    consensus
        .node(id)
        .map(|n| (n.packet_addr, n.link_key.clone()))
        .ok_or(Error::Unreachable {
            reason: "first hop missing from the consensus".into(),
        })
}

#[allow(clippy::too_many_arguments)]
fn build_real(
    consensus: &VerifiedConsensus,
    avoid: &HashSet<NodeId>,
    home: NodeId,
    ack_queue: QueueId,
    dest: (NodeId, QueueId),
    deposit_id: MessageId,
    body: Box<[u8; DEPOSIT_BODY_SIZE]>,
) -> Result<Built> {
    let mut rng = rand::rng();
    let route = select_route_avoiding(&mut rng, consensus, &dest.0, |n| avoid.contains(n))?;
    let ack_route = select_route_avoiding(&mut rng, consensus, &home, |n| avoid.contains(n))?;
    let surb_id = SurbId::random_nonzero(&mut rng);
    let (surb, recovery) = build_surb(&mut rng, &ack_route, ack_queue.into(), surb_id)?;
    let payload = FinalPayload::Deposit(Deposit {
        id: deposit_id,
        ack: surb,
        body,
    })
    .encode();
    let packet = build_forward_packet(&mut rng, &route, Destination::from(dest.1), &payload)?;
    let first_hop = route.first_hop();
    let mut nodes: Vec<NodeId> = route.hops()[..MIX_LAYERS].iter().map(|h| h.id).collect();
    nodes.extend(ack_route.hops()[..MIX_LAYERS].iter().map(|h| h.id));
    let (addr, link_key) = first_hop_addr(consensus, &first_hop)?;
    Ok(Built {
        first_hop,
        addr,
        link_key,
        packet,
        surb: Some((surb_id, recovery, deposit_id)),
        route: nodes,
    })
}

fn build_cover(
    consensus: &VerifiedConsensus,
    home: NodeId,
    loop_queue: QueueId,
    loop_id: Option<MessageId>,
) -> Result<Built> {
    let mut rng = rand::rng();
    let (provider, dest, payload) = match loop_id {
        Some(id) => (home, loop_queue, FinalPayload::LoopCover { id }),
        None => {
            // Drop cover goes to a random provider and a random queue: the
            // provider discards it.
            use rand::RngExt;
            let boxes = consensus.mailboxes();
            if boxes.is_empty() {
                return Err(Error::Unreachable {
                    reason: "no mailbox provider in the consensus".into(),
                });
            }
            let p = boxes[rng.random_range(0..boxes.len())].id;
            (p, QueueId::random(&mut rng), FinalPayload::DropCover)
        }
    };
    let route = select_route_avoiding(&mut rng, consensus, &provider, |_| false)?;
    let packet =
        build_forward_packet(&mut rng, &route, Destination::from(dest), &payload.encode())?;
    let first_hop = route.first_hop();
    let (addr, link_key) = first_hop_addr(consensus, &first_hop)?;
    Ok(Built {
        first_hop,
        addr,
        link_key,
        packet,
        surb: None,
        route: Vec::new(),
    })
}

fn pop_ready(inner: &Inner) -> Option<(MessageId, u32)> {
    let mut st = inner.lock_state();
    while let Some(key) = st.ready.pop_front() {
        if st.frags.contains_key(&key) {
            return Some(key);
        }
    }
    None
}

/// Most real packets built in one hand-off to the blocking pool (when
/// packets leave as soon as they are queued): one hand-off per packet cost
/// two thread wake-ups each, about 7 % of a client's CPU.
const BUILD_BATCH: usize = 16;

/// Sends one real packet for each fragment in `keys` (a try of each).
async fn send_real(
    inner: &Arc<Inner>,
    consensus: Arc<VerifiedConsensus>,
    keys: Vec<(MessageId, u32)>,
) {
    let timeout = ack_timeout(inner, &consensus);
    let avoid = {
        let mut st = inner.lock_state();
        // Forget mixes that left the network, so these maps stay small.
        st.suspicion.retain(|id, _| consensus.node(id).is_some());
        st.proven.retain(|id, _| consensus.node(id).is_some());
        suspects(&st, &consensus)
    };
    let mut prepared = Vec::with_capacity(keys.len());
    for key in keys {
        let dest = inner.lock_state().dests.get(&key.0).copied();
        let frag = match inner.store.out_fragment(&key.0, key.1) {
            Ok(Some(f)) if !f.acked => f,
            Ok(_) => {
                inner.lock_state().frags.remove(&key);
                continue;
            }
            Err(e) => {
                tracing::warn!(error = %e, "could not read an outgoing fragment; will retry");
                retry_later(inner, key, Duration::from_secs(1));
                continue;
            }
        };
        let Some(dest) = dest else {
            inner.lock_state().frags.remove(&key);
            continue;
        };
        prepared.push((key, dest, frag));
    }
    if prepared.is_empty() {
        return;
    }
    let home = inner.profile.home_provider;
    let ack_queue = inner.profile.ack_queue.queue;
    let built = tokio::task::spawn_blocking(move || {
        prepared
            .into_iter()
            .map(|(key, dest, frag)| {
                let built = body_array(&frag.body).and_then(|body| {
                    build_real(
                        &consensus,
                        &avoid,
                        home,
                        ack_queue,
                        dest,
                        frag.deposit_id,
                        body,
                    )
                });
                (key, built)
            })
            .collect::<Vec<_>>()
    })
    .await;
    let Ok(built) = built else {
        return;
    };
    for (key, built) in built {
        match built {
            Ok(b) => send_built(inner, key, b, timeout),
            Err(e) => {
                tracing::debug!(error = %e, "could not build a packet; will retry");
                retry_later(inner, key, timeout);
            }
        }
    }
}

/// Records a built try of fragment `key` and hands it to its link.
fn send_built(inner: &Inner, key: (MessageId, u32), built: Built, timeout: Duration) {
    let first_try;
    {
        let mut st = inner.lock_state();
        let Some(track) = st.frags.get_mut(&key) else {
            return;
        };
        first_try = track.tries == 0;
        track.tries += 1;
        let now = Instant::now();
        track.deadline = Some(now + backoff(timeout, track.tries));
        track.sent_at = Some(now);
        track.last_route = built.route.clone();
        if let Some((surb_id, recovery, deposit_id)) = built.surb {
            track.surbs.push(surb_id);
            st.surbs.insert(
                surb_id,
                PendingSurb {
                    fragment: key,
                    deposit_id,
                    recovery,
                    route: built.route,
                    sent_at: now,
                },
            );
        }
    }
    inner
        .links
        .send(built.first_hop, built.addr, &built.link_key, built.packet);
    let counter = if first_try {
        &inner.counters.real_sent
    } else {
        &inner.counters.retransmissions
    };
    counter.fetch_add(1, Ordering::Relaxed);
}

fn retry_later(inner: &Inner, key: (MessageId, u32), after: Duration) {
    let mut st = inner.lock_state();
    if let Some(track) = st.frags.get_mut(&key) {
        track.tries += 1;
        track.deadline = Some(Instant::now() + after);
    }
}

async fn send_cover(inner: &Arc<Inner>, consensus: Arc<VerifiedConsensus>, is_loop: bool) {
    let home = inner.profile.home_provider;
    let loop_queue = inner.profile.loop_queue.queue;
    let loop_id = is_loop.then(|| MessageId::random(&mut rand::rng()));
    let built =
        tokio::task::spawn_blocking(move || build_cover(&consensus, home, loop_queue, loop_id))
            .await;
    let Ok(Ok(built)) = built else {
        tracing::debug!("could not build a cover packet");
        return;
    };
    if let Some(id) = loop_id {
        let mut st = inner.lock_state();
        st.loops.push_back(id);
        while st.loops.len() > MAX_OUTSTANDING_LOOPS {
            st.loops.pop_front();
        }
        inner
            .counters
            .loop_cover_sent
            .fetch_add(1, Ordering::Relaxed);
    } else {
        inner
            .counters
            .drop_cover_sent
            .fetch_add(1, Ordering::Relaxed);
    }
    inner
        .links
        .send(built.first_hop, built.addr, &built.link_key, built.packet);
}

/// The Loopix send loop.
pub(crate) async fn send_loop(inner: Arc<Inner>, shutdown: CancellationToken) {
    let origin = Instant::now();
    let mut rng = StdRng::from_rng(&mut rand::rng());
    let mut schedule: Option<(ClientSchedule, (f64, f64))> = None;
    loop {
        if shutdown.is_cancelled() {
            return;
        }
        let Some(consensus) = inner.consensus.current() else {
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = tokio::time::sleep(Duration::from_millis(200)) => continue,
            }
        };
        let params = consensus.params();
        let rates = (params.client_rate, params.client_loop_rate);
        if schedule.as_ref().map(|(_, r)| *r) != Some(rates) {
            schedule = Some((
                ClientSchedule::new(&mut rng, rates.0, rates.1, origin.elapsed()),
                rates,
            ));
        }
        let Some((sched, _)) = schedule.as_mut() else {
            continue;
        };
        if sched.sends_immediately() {
            // No send stream: real packets go out as soon as they are
            // queued; the loop stream, if on, keeps its own clock.
            let next_loop = sched.peek().map(|(at, _)| origin + at);
            let loop_due = tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = inner.ready_notify.notified() => false,
                _ = tokio::time::sleep(Duration::from_millis(200)) => false,
                _ = sleep_until_opt(next_loop) => true,
            };
            if loop_due && let Some((_, Stream::Loop)) = sched.pop(&mut rng) {
                send_cover(&inner, consensus.clone(), true).await;
            }
            loop {
                let keys: Vec<_> = std::iter::from_fn(|| pop_ready(&inner))
                    .take(BUILD_BATCH)
                    .collect();
                if keys.is_empty() {
                    break;
                }
                send_real(&inner, consensus.clone(), keys).await;
                if shutdown.is_cancelled() {
                    return;
                }
            }
        } else {
            let Some((at, _)) = sched.peek() else {
                continue;
            };
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = tokio::time::sleep_until(origin + at) => {}
            }
            match sched.pop(&mut rng) {
                Some((_, Stream::Send)) => match pop_ready(&inner) {
                    Some(key) => send_real(&inner, consensus, vec![key]).await,
                    None => send_cover(&inner, consensus, false).await,
                },
                Some((_, Stream::Loop)) => send_cover(&inner, consensus, true).await,
                None => {}
            }
        }
    }
}

async fn sleep_until_opt(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

/// Finds packets whose acknowledgement is overdue: queues them again on a
/// fresh route, or fails their message once it is out of tries.
pub(crate) async fn retransmit_loop(inner: Arc<Inner>, shutdown: CancellationToken) {
    let mut tick = tokio::time::interval(Duration::from_millis(50));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tick.tick() => {}
        }
        let now = Instant::now();
        let mut failed = Vec::new();
        let mut requeued = false;
        {
            let mut st = inner.lock_state();
            let expired: Vec<(MessageId, u32)> = st
                .frags
                .iter()
                .filter(|(_, t)| t.deadline.is_some_and(|d| d <= now))
                .map(|(k, _)| *k)
                .collect();
            for key in expired {
                let Some(track) = st.frags.get_mut(&key) else {
                    continue;
                };
                track.deadline = None;
                let tries = track.tries;
                let route = std::mem::take(&mut track.last_route);
                if let Some(sent_at) = track.sent_at.take() {
                    blame(&mut st, &route, sent_at);
                }
                if tries >= inner.options.max_tries {
                    failed.push(key.0);
                } else {
                    st.ready.push_front(key);
                    requeued = true;
                }
            }
        }
        for id in failed {
            fail_message(&inner, &id);
        }
        if requeued {
            inner.ready_notify.notify_one();
        }
    }
}

fn fail_message(inner: &Inner, id: &MessageId) {
    {
        let mut st = inner.lock_state();
        let keys: Vec<(MessageId, u32)> = st.frags.keys().filter(|k| k.0 == *id).copied().collect();
        for key in keys {
            if let Some(track) = st.frags.remove(&key) {
                for s in track.surbs {
                    st.surbs.remove(&s);
                }
            }
        }
        st.ready.retain(|k| k.0 != *id);
        st.dests.remove(id);
    }
    tracing::info!("a message could not be delivered within its tries");
    if let Err(e) = inner.store.fail_message(id) {
        tracing::warn!(error = %e, "could not record a failed message");
    }
    if let Ok(Some(m)) = inner.store.out_message(id) {
        debug_assert_eq!(m.state, OutState::Failed);
        inner.notify_progress(id, &m);
    }
}

/// Records an acknowledgement for fragment `key` (already verified).
pub(crate) fn on_acked(inner: &Inner, key: (MessageId, u32), route: &[NodeId], sent_at: Instant) {
    {
        let mut st = inner.lock_state();
        if let Some(track) = st.frags.remove(&key) {
            for s in track.surbs {
                st.surbs.remove(&s);
            }
        }
        for node in route {
            st.suspicion.remove(node);
            let proven = st.proven.entry(*node).or_insert(sent_at);
            *proven = (*proven).max(sent_at);
        }
    }
    match inner.store.ack_fragment(&key.0, key.1) {
        Ok(Some(m)) => {
            inner.counters.acks.fetch_add(1, Ordering::Relaxed);
            if m.state != OutState::Sending {
                inner.lock_state().dests.remove(&key.0);
            }
            inner.notify_progress(&key.0, &m);
        }
        Ok(None) => {}
        Err(e) => tracing::warn!(error = %e, "could not record an acknowledgement"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use murmur_wire::ed25519_dalek::SigningKey;
    use murmur_wire::{
        AuthoritySet, Consensus, IdentityKey, MailboxEntry, MixEntry, NetworkParams,
        SignedConsensus, SphinxSecretKey,
    };

    fn key(n: u8) -> IdentityKey {
        IdentityKey::from(&SigningKey::from_bytes(&[n; 32]).verifying_key())
    }

    /// A consensus of two mixes per layer and one mailbox; the mixes of
    /// layer `l` are `layers()[l]`.
    fn consensus() -> VerifiedConsensus {
        let l = 3600;
        let addr = |port: u16| SocketAddr::from(([127, 0, 0, 1], port));
        let sphinx = SphinxSecretKey::from_bytes([7; 32]).public_key();
        let mut mixes: Vec<MixEntry> = (0..6u8)
            .map(|i| MixEntry {
                layer: i % 3,
                identity: key(i + 1),
                packet_addr: addr(1000 + u16::from(i)),
                link_key: murmur_wire::LinkSecretKey::derive(&[i + 1; 32])
                    .public()
                    .clone(),
                sphinx_key: sphinx,
            })
            .collect();
        mixes.sort_by_key(|m| (m.layer, m.identity));
        let doc = Consensus {
            version: murmur_wire::directory::CONSENSUS_VERSION,
            epoch: 10,
            valid_after: 10 * l,
            valid_until: 11 * l,
            params: NetworkParams {
                epoch_secs: l,
                mean_delay_us: 1_000,
                max_delay_us: 1_000_000,
                client_rate: 0.0,
                client_loop_rate: 0.0,
                mix_loop_rate: 0.0,
                packet_size: murmur_wire::PACKET_SIZE as u32,
            },
            mixes,
            mailboxes: vec![MailboxEntry {
                identity: key(50),
                packet_addr: addr(2000),
                http_addr: addr(2001),
                link_key: murmur_wire::LinkSecretKey::derive(&[50; 32])
                    .public()
                    .clone(),
                sphinx_key: sphinx,
            }],
        };
        let authority = SigningKey::from_bytes(&[200; 32]);
        let set =
            AuthoritySet::new(vec![IdentityKey::from(&authority.verifying_key())], 1).unwrap();
        SignedConsensus::sign(&doc, &authority)
            .unwrap()
            .verify(&set, 10 * l + 1, Some(10))
            .unwrap()
    }

    fn ids(c: &VerifiedConsensus, layer: usize) -> (NodeId, NodeId) {
        (c.layers()[layer][0].id, c.layers()[layer][1].id)
    }

    #[test]
    fn suspects_need_repeated_timeouts() {
        let c = consensus();
        let (a, b) = ids(&c, 0);
        let mut st = SendState::default();
        st.suspicion.insert(a, 1);
        let s = suspects(&st, &c);
        assert!(s.is_empty());
        st.suspicion.insert(b, SUSPECT_AFTER);
        let s = suspects(&st, &c);
        assert_eq!(s, HashSet::from([b]));
    }

    #[test]
    fn a_layer_is_never_avoided_whole() {
        let c = consensus();
        let (a, b) = ids(&c, 1);
        let mut st = SendState::default();
        st.suspicion.insert(a, SUSPECT_AFTER + 3);
        st.suspicion.insert(b, SUSPECT_AFTER);
        assert_eq!(
            suspects(&st, &c),
            HashSet::from([a]),
            "the least blamed stays"
        );
        st.suspicion.insert(b, SUSPECT_AFTER + 3);
        assert!(
            suspects(&st, &c).is_empty(),
            "equal blame: the layer is used whole"
        );
    }

    #[test]
    fn a_timeout_does_not_blame_a_mix_that_carried_a_later_packet() {
        let c = consensus();
        let (dead, alive) = ids(&c, 1);
        let mut st = SendState::default();
        let t0 = Instant::now();
        // Two tries sent at t0: one forward through the dead mix with its
        // acknowledgement through the live one, and the reverse; a try
        // through the live mix sent later was acknowledged.
        st.proven.insert(alive, t0 + Duration::from_millis(5));
        for _ in 0..2 {
            blame(&mut st, &[dead, alive], t0);
        }
        assert_eq!(suspects(&st, &c), HashSet::from([dead]));
        assert!(!st.suspicion.contains_key(&alive));
        // Without that proof both are blamed, and neither is avoided alone.
        let mut st = SendState::default();
        for _ in 0..2 {
            blame(&mut st, &[dead, alive], t0);
        }
        assert!(suspects(&st, &c).is_empty());
    }

    #[test]
    fn timeouts_back_off_to_four_times_the_base() {
        let base = Duration::from_secs(2);
        let t: Vec<Duration> = (1..=5).map(|k| backoff(base, k)).collect();
        assert_eq!(t, [2, 4, 8, 8, 8].map(Duration::from_secs).to_vec(),);
    }
}
