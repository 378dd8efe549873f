//! The parameters of a protocol-model run.

use std::time::Duration;

use murmur_wire::NetworkParams;
use murmur_wire::mailbox::MAX_FETCH_LIMIT;
use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::params::LinkDelay;

/// The most mixes per layer and the most providers of a protocol run (each
/// gets a signed entry in the synthetic consensus).
pub const MAX_PROTOCOL_WIDTH: usize = 1000;

/// The most clients of a protocol run (each is a whole client core).
pub const MAX_PROTOCOL_CLIENTS: usize = 100_000;

/// The most fragments per message.
pub const MAX_FRAGMENTS: u32 = 1 << 16;

/// The longest simulated duration, seconds.
pub const MAX_PROTOCOL_DURATION: f64 = 1.0e7;

/// One run of the protocol model: a signed consensus of 3 mix layers of
/// `width` mixes and `providers` providers, `clients` client cores.
///
/// Times are seconds and rates per second, as `f64`; `None` takes the
/// default described on the field.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ProtocolParams {
    /// Mixes per layer `W` (there are 3 layers, as in the real network).
    pub width: usize,
    /// Mailbox providers `P`. Client `i`'s home provider is `i mod P`.
    pub providers: usize,
    /// Clients `N`, each a `murmur_client_core::Core`.
    pub clients: usize,
    /// Real messages per second per client (a Poisson process), each to a
    /// uniformly chosen other client.
    pub rate: f64,
    /// Fragments per message.
    pub fragments: u32,
    /// Mean per-hop delay, seconds (the consensus's `mean_delay_us`).
    pub mean_delay: f64,
    /// Per-hop delay clamp, seconds (`max_delay_us`). Absent: 20 × the mean.
    pub max_delay: Option<f64>,
    /// Latency of every link (client → mix, mix → mix, mix → provider,
    /// provider → mix for acknowledgements).
    pub link_delay: LinkDelay,
    /// λ, the clients' send-stream rate (`client_rate`), packets/s; 0 = no
    /// cover (real packets leave at once).
    pub cover_rate: f64,
    /// λ_L, the clients' loop-cover rate (`client_loop_rate`), packets/s.
    pub loop_rate: f64,
    /// How often each client fetches each of its queues, seconds (the
    /// core's `fetch_interval`).
    pub fetch_interval: f64,
    /// Round trip of one fetch or delete to the provider, seconds: the
    /// provider sees the request half-way, the client the answer at the end.
    pub fetch_rtt: f64,
    /// Tries per fragment before its message fails (the core's `max_tries`).
    pub max_tries: u32,
    /// Acknowledgement timeout, seconds. Absent: the core's default,
    /// `policy::ack_timeout` from the consensus.
    pub ack_timeout: Option<f64>,
    /// Fraction of mixes (rounded, chosen from the seed) that silently drop
    /// every packet.
    pub dead_mixes: f64,
    /// Probability that a packet (forward, acknowledgement, loop, drop
    /// cover) is lost on its way, independently.
    pub loss: f64,
    /// Messages are created in `[0, duration)`, seconds of virtual time;
    /// the run goes on (cover included) until each is settled.
    pub duration: f64,
    /// The longest the run goes on after `duration` for messages to settle,
    /// seconds. Absent: twice the time a fragment takes to run out of tries,
    /// plus a minute.
    pub drain: Option<f64>,
    /// Seed of everything random: keys, the dead mixes, the clients' cores,
    /// the traffic.
    pub seed: u64,
}

impl Default for ProtocolParams {
    fn default() -> Self {
        Self {
            width: 3,
            providers: 2,
            clients: 50,
            rate: 0.1,
            fragments: 1,
            mean_delay: 0.05,
            max_delay: None,
            link_delay: LinkDelay::Fixed(0.005),
            cover_rate: 2.0,
            loop_rate: 0.5,
            fetch_interval: 1.0,
            fetch_rtt: 0.05,
            max_tries: 10,
            ack_timeout: None,
            dead_mixes: 0.0,
            loss: 0.0,
            duration: 600.0,
            drain: None,
            seed: 1,
        }
    }
}

fn invalid(param: &'static str, reason: &str) -> Error {
    Error::InvalidParam {
        param: param.to_owned(),
        reason: reason.to_owned(),
    }
}

fn seconds(param: &'static str, v: f64, lo: f64, hi: f64) -> Result<()> {
    if v.is_finite() && v >= lo && v <= hi {
        Ok(())
    } else {
        Err(invalid(param, &format!("must be seconds in [{lo}, {hi}]")))
    }
}

impl ProtocolParams {
    /// Checks that the parameters make sense together.
    pub fn check(&self) -> Result<()> {
        if !(1..=MAX_PROTOCOL_WIDTH).contains(&self.width) {
            return Err(invalid(
                "width",
                &format!("must be in 1..={MAX_PROTOCOL_WIDTH}"),
            ));
        }
        if !(1..=MAX_PROTOCOL_WIDTH).contains(&self.providers) {
            return Err(invalid(
                "providers",
                &format!("must be in 1..={MAX_PROTOCOL_WIDTH}"),
            ));
        }
        if !(2..=MAX_PROTOCOL_CLIENTS).contains(&self.clients) {
            return Err(invalid(
                "clients",
                &format!("must be in 2..={MAX_PROTOCOL_CLIENTS} (messages go to another client)"),
            ));
        }
        if !(1..=MAX_FRAGMENTS).contains(&self.fragments) {
            return Err(invalid(
                "fragments",
                &format!("must be in 1..={MAX_FRAGMENTS}"),
            ));
        }
        for (name, rate) in [
            ("rate", self.rate),
            ("cover_rate", self.cover_rate),
            ("loop_rate", self.loop_rate),
        ] {
            if !(rate.is_finite() && (0.0..=1e6).contains(&rate)) {
                return Err(invalid(name, "must be a rate per second in [0, 1e6]"));
            }
        }
        seconds("mean_delay", self.mean_delay, 0.0, 3600.0)?;
        let max = self.max_delay();
        if !(max.is_finite() && max >= self.mean_delay && max <= 86_400.0) {
            return Err(invalid(
                "max_delay",
                "must be seconds, at least the mean delay and at most 86400",
            ));
        }
        self.link_delay.check()?;
        seconds("fetch_interval", self.fetch_interval, 0.001, 3600.0)?;
        seconds("fetch_rtt", self.fetch_rtt, 0.0, 3600.0)?;
        if !(1..=1000).contains(&self.max_tries) {
            return Err(invalid("max_tries", "must be in 1..=1000"));
        }
        if let Some(t) = self.ack_timeout {
            seconds("ack_timeout", t, 0.001, 86_400.0)?;
        }
        for (name, f) in [("dead_mixes", self.dead_mixes), ("loss", self.loss)] {
            if !(f.is_finite() && (0.0..=1.0).contains(&f)) {
                return Err(invalid(name, "must be a fraction in [0, 1]"));
            }
        }
        if !(self.duration.is_finite()
            && self.duration > 0.0
            && self.duration <= MAX_PROTOCOL_DURATION)
        {
            return Err(invalid(
                "duration",
                &format!("must be seconds in (0, {MAX_PROTOCOL_DURATION}]"),
            ));
        }
        if let Some(d) = self.drain {
            seconds("drain", d, 0.0, MAX_PROTOCOL_DURATION)?;
        }
        Ok(())
    }

    /// Mixes in the network (3 × `width`).
    pub fn mixes(&self) -> usize {
        murmur_wire::packet::MIX_LAYERS * self.width
    }

    /// How many mixes are dead.
    pub fn dead_count(&self) -> usize {
        ((self.dead_mixes * self.mixes() as f64).round() as usize).min(self.mixes())
    }

    /// The per-hop delay clamp in effect, seconds.
    pub fn max_delay(&self) -> f64 {
        self.max_delay.unwrap_or(20.0 * self.mean_delay)
    }

    /// The mean delay as the consensus carries it (whole microseconds).
    pub fn mean_delay_us(&self) -> u64 {
        (self.mean_delay * 1e6).round() as u64
    }

    /// The delay clamp as the consensus carries it (whole microseconds).
    pub fn max_delay_us(&self) -> u64 {
        (self.max_delay() * 1e6).round() as u64
    }

    /// The cores' fetch interval.
    pub fn fetch_interval_duration(&self) -> Duration {
        Duration::from_secs_f64(self.fetch_interval)
    }

    /// Entries a fetch returns at most (the mailbox API's page).
    pub fn page(&self) -> usize {
        MAX_FETCH_LIMIT as usize
    }

    /// The parameters the run's consensus carries (what the cores see).
    /// Mix nodes' own loops are not modelled: `mix_loop_rate` is 0.
    pub fn network_params(&self) -> NetworkParams {
        NetworkParams {
            epoch_secs: 3600,
            mean_delay_us: self.mean_delay_us(),
            max_delay_us: self.max_delay_us(),
            client_rate: self.cover_rate,
            client_loop_rate: self.loop_rate,
            mix_loop_rate: 0.0,
            packet_size: murmur_wire::PACKET_SIZE as u32,
        }
    }
}
