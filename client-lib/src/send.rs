//! Building the packets the core asked for: a real packet carries a stored
//! fragment's deposit body and an acknowledgement SURB; cover packets carry
//! nothing. Routes, SURB ids and timing are the core's; only the bytes and
//! the crypto are here. Runs on the blocking pool.

use std::sync::atomic::Ordering;
use std::time::Duration;

use murmur_client_core::{Action, Fragment};
use murmur_wire::{
    Deposit, Destination, FinalPayload, QueueId, Route, SurbId, build_forward_packet, build_surb,
};

use crate::client::Shared;
use crate::driver::Pending;
use crate::error::{Error, Result};
use crate::store::body_array;

/// After a try could not be built, how long before its fragment is tried
/// again.
const UNSENT_RETRY: Duration = Duration::from_secs(1);

/// Builds and sends each packet of `actions` (real, drop cover, loop).
pub(crate) fn build_all(shared: &Shared, actions: Vec<Action>) {
    let mut rng = rand::rng();
    for action in actions {
        let built = match action {
            Action::SendReal {
                fragment,
                route,
                ack_route,
                surb,
                first_try,
                dest,
            } => match build_real(
                shared, &mut rng, fragment, &route, &ack_route, dest.queue, surb,
            ) {
                Ok(packet) => {
                    let counter = if first_try {
                        &shared.counters.real_sent
                    } else {
                        &shared.counters.retransmissions
                    };
                    counter.fetch_add(1, Ordering::Relaxed);
                    Ok((route, packet))
                }
                Err(e) => {
                    tracing::debug!(error = %e, "could not build a packet; will retry");
                    let mut st = shared.lock();
                    st.surbs.remove(&surb);
                    st.core.on_try_unsent(surb, UNSENT_RETRY, shared.now());
                    drop(st);
                    shared.wake.notify_one();
                    continue;
                }
            },
            Action::SendDropCover { route, queue } => {
                shared
                    .counters
                    .drop_cover_sent
                    .fetch_add(1, Ordering::Relaxed);
                cover(&mut rng, &route, queue, FinalPayload::DropCover).map(|p| (route, p))
            }
            Action::SendLoop { route, id } => {
                shared
                    .counters
                    .loop_cover_sent
                    .fetch_add(1, Ordering::Relaxed);
                let queue = shared.profile.loop_queue.queue;
                cover(&mut rng, &route, queue, FinalPayload::LoopCover { id }).map(|p| (route, p))
            }
            _ => continue,
        };
        match built {
            Ok((route, packet)) => hand_to_link(shared, &route, packet),
            Err(e) => tracing::debug!(error = %e, "could not build a cover packet"),
        }
    }
}

fn hand_to_link(shared: &Shared, route: &Route, packet: murmur_wire::Packet) {
    let first = route.first_hop();
    let Some(node) = shared
        .consensus
        .current()
        .and_then(|c| c.node(&first).cloned())
    else {
        shared.counters.unroutable.fetch_add(1, Ordering::Relaxed);
        return;
    };
    shared
        .links
        .send(first, node.packet_addr, &node.link_key, packet);
}

fn build_real(
    shared: &Shared,
    rng: &mut impl rand::CryptoRng,
    fragment: Fragment,
    route: &Route,
    ack_route: &Route,
    dest: QueueId,
    surb_id: SurbId,
) -> Result<murmur_wire::Packet> {
    let stored = shared
        .store
        .out_fragment(&fragment.message, fragment.index)?
        .ok_or(Error::Corrupt {
            what: "outgoing fragment",
        })?;
    let body = body_array(&stored.body)?;
    let ack_queue = shared.profile.ack_queue.queue;
    let (surb, recovery) = build_surb(rng, ack_route, ack_queue.into(), surb_id)?;
    shared.lock().surbs.insert(
        surb_id,
        Pending {
            recovery,
            deposit_id: stored.deposit_id,
        },
    );
    let payload = FinalPayload::Deposit(Deposit {
        id: stored.deposit_id,
        ack: surb,
        body,
    })
    .encode();
    Ok(build_forward_packet(
        rng,
        route,
        Destination::from(dest),
        &payload,
    )?)
}

fn cover(
    rng: &mut impl rand::CryptoRng,
    route: &Route,
    queue: QueueId,
    payload: FinalPayload,
) -> Result<murmur_wire::Packet> {
    Ok(build_forward_packet(
        rng,
        route,
        Destination::from(queue),
        &payload.encode(),
    )?)
}
