//! The protocol model: a network whose clients are the real client protocol
//! core, `murmur_client_core::Core`, on virtual time.
//!
//! Where the [engine](crate::engine) models clients abstractly (a message is
//! one packet, nothing is lost, nothing is acknowledged) to measure
//! anonymity over large networks fast, this model runs every decision of
//! the client protocol as the client runs it: the Loopix send and loop
//! streams, route choice and the avoidance of suspect mixes, per-hop delays,
//! acknowledgement timeouts and retransmission backoff, fetch cursors and
//! deletes, reassembly. The world only carries packets and fetches, and
//! loses what dead mixes and lossy links lose. It measures what a user
//! sees: how long a message takes to arrive and to be confirmed, how many
//! retransmissions loss costs, what the cover costs, and whether the cores
//! find the dead mixes.
//!
//! ```rust
//! use murmur_sim::protocol::{ProtocolParams, simulate_protocol};
//!
//! let params = ProtocolParams {
//!     clients: 10,
//!     duration: 30.0,
//!     ..ProtocolParams::default()
//! };
//! let report = simulate_protocol(&params)?;
//! assert_eq!(report.messages.unsettled, 0);
//! # Ok::<(), murmur_sim::Error>(())
//! ```

mod network;
mod params;
mod report;
mod world;

use std::time::{Duration, Instant};

use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;

pub use params::{
    MAX_FRAGMENTS, MAX_PROTOCOL_CLIENTS, MAX_PROTOCOL_DURATION, MAX_PROTOCOL_WIDTH, ProtocolParams,
};
pub use report::{
    Expected, FragmentCounts, MessageCounts, MixRef, NetworkCounts, PacketCounts, ProtocolMix,
    ProtocolModel, ProtocolPerf, ProtocolReport, SuspicionReport,
};

use crate::error::Result;

/// Runs the protocol model once.
pub fn simulate_protocol(params: &ProtocolParams) -> Result<ProtocolReport> {
    params.check()?;
    let started = Instant::now();
    let ack_timeout = report::ack_timeout(params);
    let drain = match params.drain {
        Some(d) => Duration::from_secs_f64(d),
        None => {
            // Twice what a fragment takes to run out of tries, and a minute.
            let tries: Duration = (1..=params.max_tries)
                .map(|k| murmur_wire::policy::retry_timeout(ack_timeout, k))
                .sum();
            tries.saturating_mul(2) + Duration::from_secs(60)
        }
    };
    let mut world = world::World::new(params, ChaCha8Rng::seed_from_u64(params.seed), drain)?;
    world.run()?;
    let wall = started.elapsed().as_secs_f64();
    Ok(report::build(&world, ack_timeout, wall))
}
