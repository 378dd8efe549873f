//! The parameters of one simulated network, with their defaults, units,
//! text forms (flags and sweep values) and validation.

use std::fmt;
use std::str::FromStr;
use std::time::Duration;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::error::{Error, Result};

/// The most mix layers a path may have (paths are stored inline).
pub const MAX_LAYERS: usize = 16;

/// The most mixes per layer and the most providers (indices are `u16`).
pub const MAX_WIDTH: usize = u16::MAX as usize;

/// The most pool-size samples one run records.
pub const MAX_SAMPLES: usize = 100_000;

/// The most mixes (`L × W`) a network may have (each holds a slot of
/// probability mass per concurrently followed target).
pub const MAX_MIXES: usize = 100_000;

/// The most pool sizes (samples × mixes) one run records.
pub const MAX_POOL_RECORDS: usize = 20_000_000;

/// The longest simulated duration, seconds (virtual time is kept in
/// nanoseconds in a `u64`; this leaves a wide margin).
pub const MAX_DURATION: f64 = 1.0e7;

/// The latency of one link (client → mix, mix → mix, mix → provider).
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum LinkDelay {
    /// Every packet takes exactly this long, seconds.
    Fixed(f64),
    /// Each packet on each link takes a time drawn uniformly from
    /// `[lo, hi]`, seconds.
    Uniform {
        /// Shortest latency, seconds.
        lo: f64,
        /// Longest latency, seconds.
        hi: f64,
    },
}

impl LinkDelay {
    /// The mean latency of one link, seconds.
    pub fn mean(&self) -> f64 {
        match *self {
            LinkDelay::Fixed(d) => d,
            LinkDelay::Uniform { lo, hi } => (lo + hi) / 2.0,
        }
    }

    /// The longest latency of one link, seconds.
    pub fn max(&self) -> f64 {
        match *self {
            LinkDelay::Fixed(d) => d,
            LinkDelay::Uniform { hi, .. } => hi,
        }
    }

    pub(crate) fn check(&self) -> Result<()> {
        let (lo, hi) = match *self {
            LinkDelay::Fixed(d) => (d, d),
            LinkDelay::Uniform { lo, hi } => (lo, hi),
        };
        if !(lo.is_finite() && hi.is_finite() && lo >= 0.0 && lo <= hi && hi <= 3600.0) {
            return Err(invalid(
                "link_delay",
                "must be seconds in [0, 3600], a range as LO..HI with LO <= HI",
            ));
        }
        Ok(())
    }
}

impl fmt::Display for LinkDelay {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            LinkDelay::Fixed(d) => write!(f, "{d}"),
            LinkDelay::Uniform { lo, hi } => write!(f, "{lo}..{hi}"),
        }
    }
}

impl FromStr for LinkDelay {
    type Err = Error;

    fn from_str(s: &str) -> Result<Self> {
        let bad = || invalid("link_delay", "expected seconds, as 0.001 or 0.001..0.005");
        let delay = match s.split_once("..") {
            Some((lo, hi)) => {
                let lo: f64 = lo.trim().parse().map_err(|_| bad())?;
                let hi: f64 = hi.trim().parse().map_err(|_| bad())?;
                if lo == hi {
                    LinkDelay::Fixed(lo)
                } else {
                    LinkDelay::Uniform { lo, hi }
                }
            }
            None => LinkDelay::Fixed(s.trim().parse().map_err(|_| bad())?),
        };
        delay.check()?;
        Ok(delay)
    }
}

impl Serialize for LinkDelay {
    fn serialize<S: Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
        match self {
            LinkDelay::Fixed(d) => s.serialize_f64(*d),
            LinkDelay::Uniform { .. } => s.serialize_str(&self.to_string()),
        }
    }
}

impl<'de> Deserialize<'de> for LinkDelay {
    fn deserialize<D: Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Form {
            Number(f64),
            Text(String),
        }
        match Form::deserialize(d)? {
            Form::Number(x) => {
                let delay = LinkDelay::Fixed(x);
                delay.check().map_err(serde::de::Error::custom)?;
                Ok(delay)
            }
            Form::Text(t) => t.parse().map_err(serde::de::Error::custom),
        }
    }
}

/// Everything that defines one simulated network and one run over it.
///
/// Times are seconds and rates per second, as `f64`. The TOML keys of a
/// study file are the field names; the command-line flags are the same
/// names with `-` for `_`. [`PARAMS`] describes each one.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Params {
    /// Mix layers `L` (stratified topology): every path has one mix per layer.
    pub layers: usize,
    /// Mixes per layer `W`.
    pub width: usize,
    /// Clients `N`.
    pub clients: usize,
    /// Mailbox providers `P`, the final hop. Client `i` has provider `i mod P`.
    pub providers: usize,
    /// Real messages per second per client (a Poisson process).
    pub rate: f64,
    /// Mean of the exponential per-hop delay, seconds.
    pub mean_delay: f64,
    /// Senders clamp each per-hop delay to this, seconds. Absent: 20 × the
    /// mean delay (the clamp then touches a fraction e^-20 of the delays).
    pub max_delay: Option<f64>,
    /// Latency of every link.
    pub link_delay: LinkDelay,
    /// λ: the rate of each client's send stream (real or drop cover),
    /// packets/s. Zero: no cover; real packets are sent as soon as they
    /// are created.
    pub cover_rate: f64,
    /// λ_L: the rate of each client's loop-cover stream, packets/s.
    pub loop_rate: f64,
    /// Simulated time, seconds. Messages created in `[warmup, duration)`
    /// are measured; the run then goes on until they are delivered.
    pub duration: f64,
    /// Seconds at the start during which nothing is measured.
    pub warmup: f64,
    /// How many target messages to follow for the anonymity estimate,
    /// spread evenly over the measured window.
    pub targets: usize,
    /// Fraction of mix nodes the adversary controls, in `[0, 1]`; that many
    /// mixes (rounded) are chosen at random.
    pub compromised: f64,
    /// Seed of the run's random number generator.
    pub seed: u64,
    /// Interval between pool-size samples, seconds. Absent: `duration / 200`.
    pub sample_interval: Option<f64>,
}

impl Default for Params {
    fn default() -> Self {
        Self {
            layers: 3,
            width: 4,
            clients: 1000,
            providers: 4,
            rate: 0.2,
            mean_delay: 0.05,
            max_delay: None,
            link_delay: LinkDelay::Fixed(0.005),
            cover_rate: 2.0,
            loop_rate: 1.0,
            duration: 60.0,
            warmup: 10.0,
            targets: 200,
            compromised: 0.0,
            seed: 1,
            sample_interval: None,
        }
    }
}

/// Describes one parameter: its names, unit and default, for help, docs,
/// CSV headers and plot labels.
#[derive(Clone, Copy, Debug)]
pub struct ParamInfo {
    /// The flag and sweep name (`mean-delay`).
    pub flag: &'static str,
    /// The TOML key and CSV column (`mean_delay`).
    pub key: &'static str,
    /// The unit, or `""`.
    pub unit: &'static str,
    /// A short label for plot axes.
    pub label: &'static str,
}

/// Every parameter, in the order of [`Params`].
pub const PARAMS: &[ParamInfo] = &[
    ParamInfo {
        flag: "layers",
        key: "layers",
        unit: "",
        label: "mix layers L",
    },
    ParamInfo {
        flag: "width",
        key: "width",
        unit: "",
        label: "mixes per layer W",
    },
    ParamInfo {
        flag: "clients",
        key: "clients",
        unit: "",
        label: "clients N",
    },
    ParamInfo {
        flag: "providers",
        key: "providers",
        unit: "",
        label: "providers P",
    },
    ParamInfo {
        flag: "rate",
        key: "rate",
        unit: "messages/s per client",
        label: "message rate",
    },
    ParamInfo {
        flag: "mean-delay",
        key: "mean_delay",
        unit: "s",
        label: "mean per-hop delay",
    },
    ParamInfo {
        flag: "max-delay",
        key: "max_delay",
        unit: "s",
        label: "maximum per-hop delay",
    },
    ParamInfo {
        flag: "link-delay",
        key: "link_delay",
        unit: "s",
        label: "link latency",
    },
    ParamInfo {
        flag: "cover-rate",
        key: "cover_rate",
        unit: "packets/s per client",
        label: "send rate λ",
    },
    ParamInfo {
        flag: "loop-rate",
        key: "loop_rate",
        unit: "packets/s per client",
        label: "loop rate λ_L",
    },
    ParamInfo {
        flag: "duration",
        key: "duration",
        unit: "s",
        label: "duration",
    },
    ParamInfo {
        flag: "warmup",
        key: "warmup",
        unit: "s",
        label: "warm-up",
    },
    ParamInfo {
        flag: "targets",
        key: "targets",
        unit: "",
        label: "targets",
    },
    ParamInfo {
        flag: "compromised",
        key: "compromised",
        unit: "fraction of mixes",
        label: "compromised mixes",
    },
    ParamInfo {
        flag: "seed",
        key: "seed",
        unit: "",
        label: "seed",
    },
    ParamInfo {
        flag: "sample-interval",
        key: "sample_interval",
        unit: "s",
        label: "pool sample interval",
    },
];

/// Finds a parameter by flag (`mean-delay`) or TOML key (`mean_delay`).
pub fn param_info(name: &str) -> Option<&'static ParamInfo> {
    PARAMS.iter().find(|p| p.flag == name || p.key == name)
}

fn invalid(param: &'static str, reason: &str) -> Error {
    Error::InvalidParam {
        param: param.to_owned(),
        reason: reason.to_owned(),
    }
}

fn parse_num<T: FromStr>(param: &'static str, value: &str) -> Result<T> {
    value
        .trim()
        .parse()
        .map_err(|_| invalid(param, &format!("cannot parse {value:?}")))
}

impl Params {
    /// Sets one parameter from its text form, by flag or TOML key; used by
    /// sweeps. Does not validate the whole (see [`Params::check`]).
    pub fn set(&mut self, name: &str, value: &str) -> Result<()> {
        let info = param_info(name).ok_or_else(|| Error::UnknownParam(name.to_owned()))?;
        let k = info.key;
        match k {
            "layers" => self.layers = parse_num(k, value)?,
            "width" => self.width = parse_num(k, value)?,
            "clients" => self.clients = parse_num(k, value)?,
            "providers" => self.providers = parse_num(k, value)?,
            "rate" => self.rate = parse_num(k, value)?,
            "mean_delay" => self.mean_delay = parse_num(k, value)?,
            "max_delay" => self.max_delay = Some(parse_num(k, value)?),
            "link_delay" => self.link_delay = value.parse()?,
            "cover_rate" => self.cover_rate = parse_num(k, value)?,
            "loop_rate" => self.loop_rate = parse_num(k, value)?,
            "duration" => self.duration = parse_num(k, value)?,
            "warmup" => self.warmup = parse_num(k, value)?,
            "targets" => self.targets = parse_num(k, value)?,
            "compromised" => self.compromised = parse_num(k, value)?,
            "seed" => self.seed = parse_num(k, value)?,
            "sample_interval" => self.sample_interval = Some(parse_num(k, value)?),
            _ => return Err(Error::UnknownParam(name.to_owned())),
        }
        Ok(())
    }

    /// The text form of one parameter (as [`Params::set`] reads it), by
    /// flag or TOML key; `None` for an unknown name.
    pub fn get(&self, name: &str) -> Option<String> {
        let info = param_info(name)?;
        Some(match info.key {
            "layers" => self.layers.to_string(),
            "width" => self.width.to_string(),
            "clients" => self.clients.to_string(),
            "providers" => self.providers.to_string(),
            "rate" => self.rate.to_string(),
            "mean_delay" => self.mean_delay.to_string(),
            "max_delay" => self.max_delay().to_string(),
            "link_delay" => self.link_delay.to_string(),
            "cover_rate" => self.cover_rate.to_string(),
            "loop_rate" => self.loop_rate.to_string(),
            "duration" => self.duration.to_string(),
            "warmup" => self.warmup.to_string(),
            "targets" => self.targets.to_string(),
            "compromised" => self.compromised.to_string(),
            "seed" => self.seed.to_string(),
            "sample_interval" => self.sample_interval().to_string(),
            _ => return None,
        })
    }

    /// The per-hop delay clamp in effect, seconds.
    pub fn max_delay(&self) -> f64 {
        self.max_delay.unwrap_or(20.0 * self.mean_delay)
    }

    /// The pool-size sampling interval in effect, seconds.
    pub fn sample_interval(&self) -> f64 {
        self.sample_interval.unwrap_or(self.duration / 200.0)
    }

    /// The mean per-hop delay as a [`Duration`] (what the policy takes).
    pub fn mean_delay_duration(&self) -> Duration {
        Duration::from_secs_f64(self.mean_delay)
    }

    /// The delay clamp as a [`Duration`].
    pub fn max_delay_duration(&self) -> Duration {
        Duration::from_secs_f64(self.max_delay())
    }

    /// Checks that the parameters make sense together.
    pub fn check(&self) -> Result<()> {
        if !(1..=MAX_LAYERS).contains(&self.layers) {
            return Err(invalid("layers", &format!("must be in 1..={MAX_LAYERS}")));
        }
        if !(1..=MAX_WIDTH).contains(&self.width) {
            return Err(invalid("width", &format!("must be in 1..={MAX_WIDTH}")));
        }
        if self.mixes() > MAX_MIXES {
            return Err(invalid(
                "width",
                &format!("layers × width must be at most {MAX_MIXES}"),
            ));
        }
        if !(1..=MAX_WIDTH).contains(&self.providers) {
            return Err(invalid("providers", &format!("must be in 1..={MAX_WIDTH}")));
        }
        if !(1..=u32::MAX as usize / 2).contains(&self.clients) {
            return Err(invalid("clients", "must be at least 1"));
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
        if !(self.mean_delay.is_finite() && (0.0..=3600.0).contains(&self.mean_delay)) {
            return Err(invalid("mean_delay", "must be seconds in [0, 3600]"));
        }
        let max = self.max_delay();
        if !(max.is_finite() && max >= self.mean_delay && max <= 86_400.0) {
            return Err(invalid(
                "max_delay",
                "must be seconds, at least the mean delay and at most 86400",
            ));
        }
        self.link_delay.check()?;
        if !(self.duration.is_finite() && self.duration > 0.0 && self.duration <= MAX_DURATION) {
            return Err(invalid(
                "duration",
                &format!("must be seconds in (0, {MAX_DURATION}]"),
            ));
        }
        if !(self.warmup.is_finite() && self.warmup >= 0.0 && self.warmup < self.duration) {
            return Err(invalid("warmup", "must be seconds in [0, duration)"));
        }
        if !(self.compromised.is_finite() && (0.0..=1.0).contains(&self.compromised)) {
            return Err(invalid("compromised", "must be a fraction in [0, 1]"));
        }
        let interval = self.sample_interval();
        if !(interval.is_finite()
            && interval > 0.0
            && self.duration / interval <= MAX_SAMPLES as f64)
        {
            return Err(invalid(
                "sample_interval",
                &format!("must be positive, with at most {MAX_SAMPLES} samples per run"),
            ));
        }
        if (self.duration / interval).ceil() * self.mixes() as f64 > MAX_POOL_RECORDS as f64 {
            return Err(invalid(
                "sample_interval",
                &format!("samples × mixes must be at most {MAX_POOL_RECORDS}: sample less often"),
            ));
        }
        Ok(())
    }

    /// Mixes in the network (`L × W`).
    pub fn mixes(&self) -> usize {
        self.layers * self.width
    }

    /// How many mixes the adversary controls.
    pub fn compromised_mixes(&self) -> usize {
        ((self.compromised * self.mixes() as f64).round() as usize).min(self.mixes())
    }

    /// Packets per second entering the network from all clients.
    pub fn packet_rate(&self) -> f64 {
        let send = if self.cover_rate > 0.0 {
            self.cover_rate
        } else {
            self.rate
        };
        self.clients as f64 * (send + self.loop_rate)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_valid_and_round_trip_through_toml() {
        let p = Params::default();
        p.check().unwrap();
        let text = toml::to_string(&p).unwrap();
        let back: Params = toml::from_str(&text).unwrap();
        assert_eq!(back, p);
    }

    #[test]
    fn link_delay_forms() {
        assert_eq!(
            "0.001".parse::<LinkDelay>().unwrap(),
            LinkDelay::Fixed(0.001)
        );
        assert_eq!(
            "0.001..0.005".parse::<LinkDelay>().unwrap(),
            LinkDelay::Uniform {
                lo: 0.001,
                hi: 0.005
            }
        );
        assert!("0.005..0.001".parse::<LinkDelay>().is_err());
        assert!("-1".parse::<LinkDelay>().is_err());
        assert!("fast".parse::<LinkDelay>().is_err());
        let p: Params = toml::from_str("link_delay = \"0.002..0.004\"").unwrap();
        assert_eq!(p.link_delay.mean(), 0.003);
        let p: Params = toml::from_str("link_delay = 0.002").unwrap();
        assert_eq!(p.link_delay, LinkDelay::Fixed(0.002));
    }

    #[test]
    fn unknown_keys_are_named() {
        let err = toml::from_str::<Params>("layerz = 3").unwrap_err();
        assert!(err.to_string().contains("layerz"), "{err}");
    }

    #[test]
    fn set_and_get_by_either_name() {
        let mut p = Params::default();
        p.set("mean-delay", "0.2").unwrap();
        p.set("cover_rate", "0").unwrap();
        p.set("link-delay", "0.001..0.002").unwrap();
        assert_eq!(p.mean_delay, 0.2);
        assert_eq!(p.cover_rate, 0.0);
        assert_eq!(p.get("link_delay").unwrap(), "0.001..0.002");
        assert_eq!(p.get("max-delay").unwrap(), "4");
        assert!(p.set("nope", "1").is_err());
        assert!(p.set("layers", "x").is_err());
        for info in PARAMS {
            let v = p.get(info.flag).unwrap();
            let mut q = p.clone();
            q.set(info.key, &v).unwrap();
        }
    }

    #[test]
    fn bad_values_are_refused() {
        let cases: &[(&str, &str)] = &[
            ("layers", "0"),
            ("layers", "17"),
            ("width", "0"),
            ("providers", "0"),
            ("clients", "0"),
            ("rate", "-1"),
            ("rate", "NaN"),
            ("mean-delay", "-0.1"),
            ("max-delay", "0.01"),
            ("duration", "0"),
            ("warmup", "60"),
            ("compromised", "1.5"),
            ("sample-interval", "0"),
            ("width", "40000"),
        ];
        for (k, v) in cases {
            let mut p = Params::default();
            p.set(k, v).unwrap();
            assert!(p.check().is_err(), "{k}={v} accepted");
        }
    }
}
