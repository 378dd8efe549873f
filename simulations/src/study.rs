//! Studies: a TOML file of parameters and sweep axes; running the points of
//! a sweep in parallel; the CSV of a sweep.

use std::fmt::Write as _;
use std::path::Path;
use std::str::FromStr;
use std::sync::Mutex;
use std::sync::atomic::{AtomicUsize, Ordering};

use serde::Deserialize;

use crate::engine::simulate;
use crate::error::{Error, Result};
use crate::params::{PARAMS, Params, param_info};
use crate::report::Report;

/// The most points one sweep may have.
pub const MAX_POINTS: usize = 10_000;

/// One swept parameter and its values (text forms, as [`Params::set`]
/// reads them).
#[derive(Clone, Debug, PartialEq)]
pub struct SweepAxis {
    /// The parameter's TOML key (`mean_delay`).
    pub key: &'static str,
    /// The parameter's flag name (`mean-delay`).
    pub flag: &'static str,
    /// The values, in order.
    pub values: Vec<String>,
}

impl SweepAxis {
    /// An axis over `values` of the parameter named `name` (flag or key).
    pub fn new(name: &str, values: Vec<String>) -> Result<Self> {
        let bad = |reason: &str| Error::InvalidSweep {
            spec: format!("{name}={}", values.join(",")),
            reason: reason.to_owned(),
        };
        let info = param_info(name).ok_or_else(|| bad("no such parameter"))?;
        if values.is_empty() {
            return Err(bad("no values"));
        }
        let mut p = Params::default();
        for v in &values {
            p.set(info.key, v)?;
        }
        Ok(Self {
            key: info.key,
            flag: info.flag,
            values,
        })
    }
}

impl FromStr for SweepAxis {
    type Err = Error;

    /// `mean-delay=0.01,0.02,0.05`.
    fn from_str(s: &str) -> Result<Self> {
        let (name, values) = s.split_once('=').ok_or_else(|| Error::InvalidSweep {
            spec: s.to_owned(),
            reason: "expected PARAM=V1,V2,...".to_owned(),
        })?;
        let values = values
            .split(',')
            .map(|v| v.trim().to_owned())
            .filter(|v| !v.is_empty())
            .collect();
        Self::new(name.trim(), values)
    }
}

/// One point of a sweep.
#[derive(Clone, Debug, PartialEq)]
pub struct SweepPoint {
    /// The full parameters of the point.
    pub params: Params,
    /// The value of each axis at this point, in axis order.
    pub values: Vec<String>,
}

/// A study: base parameters and the axes to sweep (none for a single run).
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Study {
    /// The parameters every point starts from.
    pub params: Params,
    /// The swept parameters; points are their cartesian product, the first
    /// axis varying slowest.
    pub sweep: Vec<SweepAxis>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct AxisFile {
    param: String,
    values: Vec<toml::Value>,
}

impl Study {
    /// Reads a study file: parameters as top-level keys (see [`Params`]),
    /// and optionally sweep axes as `[[sweep]]` tables with `param` and
    /// `values`. Unknown keys are an error that names the key.
    pub fn load(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path).map_err(|source| Error::Io {
            path: path.to_owned(),
            source,
        })?;
        Self::parse(&text).map_err(|e| match e {
            Error::Study { source, .. } => Error::Study {
                path: path.to_owned(),
                source,
            },
            other => other,
        })
    }

    /// Parses the text of a study file (see [`Study::load`]).
    pub fn parse(text: &str) -> Result<Self> {
        let study_err = |source| Error::Study {
            path: "<study>".into(),
            source,
        };
        let mut table: toml::Table = toml::from_str(text).map_err(study_err)?;
        let axes = match table.remove("sweep") {
            None => Vec::new(),
            Some(v) => Vec::<AxisFile>::deserialize(v).map_err(study_err)?,
        };
        let params = Params::deserialize(toml::Value::Table(table)).map_err(study_err)?;
        let sweep = axes
            .into_iter()
            .map(|a| {
                let values = a
                    .values
                    .iter()
                    .map(|v| match v {
                        toml::Value::String(s) => s.clone(),
                        other => other.to_string(),
                    })
                    .collect();
                SweepAxis::new(&a.param, values)
            })
            .collect::<Result<_>>()?;
        Ok(Self { params, sweep })
    }

    /// The points of the sweep (one point, the base, if there are no axes),
    /// each checked.
    pub fn points(&self) -> Result<Vec<SweepPoint>> {
        let count = self
            .sweep
            .iter()
            .try_fold(1usize, |n, a| n.checked_mul(a.values.len()))
            .filter(|&n| n <= MAX_POINTS)
            .ok_or_else(|| Error::InvalidSweep {
                spec: self
                    .sweep
                    .iter()
                    .map(|a| a.flag)
                    .collect::<Vec<_>>()
                    .join(" × "),
                reason: format!("more than {MAX_POINTS} points"),
            })?;
        let mut points = Vec::with_capacity(count);
        for i in 0..count {
            let mut params = self.params.clone();
            let mut values = Vec::with_capacity(self.sweep.len());
            let mut rest = i;
            let mut stride = count;
            for axis in &self.sweep {
                stride /= axis.values.len();
                let v = &axis.values[rest / stride];
                rest %= stride;
                params.set(axis.key, v)?;
                values.push(v.clone());
            }
            params.check()?;
            points.push(SweepPoint { params, values });
        }
        Ok(points)
    }
}

/// Runs every point on `threads` threads (at least one), calling `done`
/// after each point finishes. Reports come back in point order.
pub fn run_points(
    points: &[SweepPoint],
    threads: usize,
    done: &(dyn Fn(&Report) + Sync),
) -> Result<Vec<Report>> {
    let next = AtomicUsize::new(0);
    let results: Mutex<Vec<Option<Result<Report>>>> =
        Mutex::new((0..points.len()).map(|_| None).collect());
    std::thread::scope(|s| {
        for _ in 0..threads.clamp(1, points.len().max(1)) {
            s.spawn(|| {
                loop {
                    let i = next.fetch_add(1, Ordering::Relaxed);
                    let Some(point) = points.get(i) else { break };
                    let result = simulate(&point.params);
                    if let Ok(r) = &result {
                        done(r);
                    }
                    if let Ok(mut slots) = results.lock() {
                        slots[i] = Some(result);
                    }
                }
            });
        }
    });
    let slots = results.into_inner().unwrap_or_else(|e| e.into_inner());
    slots
        .into_iter()
        .map(|r| {
            r.unwrap_or_else(|| {
                Err(Error::InvalidSweep {
                    spec: String::new(),
                    reason: "a worker thread stopped before finishing its point".to_owned(),
                })
            })
        })
        .collect()
}

/// The metric columns of a sweep CSV, after the parameter columns.
pub const METRIC_COLUMNS: &[&str] = &[
    "latency_mean",
    "latency_p50",
    "latency_p95",
    "latency_p99",
    "latency_max",
    "network_latency_mean",
    "network_latency_p95",
    "messages",
    "messages_undelivered",
    "entropy_mean",
    "entropy_std",
    "entropy_min",
    "entropy_p5",
    "entropy_p50",
    "targets_finished",
    "targets_unfinished",
    "mix_entropy_mean",
    "mean_pool",
    "expected_pool",
    "traversals",
    "wall_seconds",
];

fn metrics(r: &Report) -> [f64; 21] {
    let honest: Vec<f64> = r
        .mixes
        .iter()
        .map(|m| m.entropy_mean)
        .filter(|x| !x.is_nan())
        .collect();
    let mix_entropy = if honest.is_empty() {
        f64::NAN
    } else {
        honest.iter().sum::<f64>() / honest.len() as f64
    };
    let mean_pool = if r.mixes.is_empty() {
        f64::NAN
    } else {
        r.mixes.iter().map(|m| m.mean_pool).sum::<f64>() / r.mixes.len() as f64
    };
    [
        r.latency.mean,
        r.latency.p50,
        r.latency.p95,
        r.latency.p99,
        r.latency.max,
        r.network_latency.mean,
        r.network_latency.p95,
        r.counters.messages as f64,
        r.counters.measured_undelivered as f64,
        r.anonymity.mean,
        r.anonymity.std,
        r.anonymity.min,
        r.anonymity.p5,
        r.anonymity.p50,
        r.anonymity.targets as f64,
        r.anonymity.unfinished as f64,
        mix_entropy,
        mean_pool,
        r.model.expected_pool,
        r.counters.traversals as f64,
        r.perf.wall_seconds,
    ]
}

/// The CSV of a sweep: a header, then one row per report with every
/// parameter (TOML keys as column names) and every metric
/// ([`METRIC_COLUMNS`]; seconds, bits, counts). Empty metrics are `NaN`.
pub fn csv(reports: &[Report]) -> String {
    let mut out = String::new();
    let header: Vec<&str> = PARAMS
        .iter()
        .map(|p| p.key)
        .chain(METRIC_COLUMNS.iter().copied())
        .collect();
    out.push_str(&header.join(","));
    out.push('\n');
    for r in reports {
        let params = PARAMS
            .iter()
            .map(|p| r.params.get(p.key).unwrap_or_default());
        let metrics = metrics(r).into_iter().map(|x| x.to_string());
        let row: Vec<String> = params.chain(metrics).collect();
        let _ = writeln!(out, "{}", row.join(","));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn axis_from_flag_text() {
        let a: SweepAxis = "mean-delay=0.01, 0.02,0.05".parse().unwrap();
        assert_eq!(a.key, "mean_delay");
        assert_eq!(a.values, vec!["0.01", "0.02", "0.05"]);
        assert!("mean-delay".parse::<SweepAxis>().is_err());
        assert!("nope=1".parse::<SweepAxis>().is_err());
        assert!("layers=x".parse::<SweepAxis>().is_err());
        assert!("layers=".parse::<SweepAxis>().is_err());
    }

    #[test]
    fn study_file_with_two_axes() {
        let s = Study::parse(
            r#"
            layers = 2
            link_delay = "0.001..0.002"
            [[sweep]]
            param = "mean_delay"
            values = [0.01, 0.02, 0.05]
            [[sweep]]
            param = "cover-rate"
            values = [1, 2.5]
            "#,
        )
        .unwrap();
        assert_eq!(s.params.layers, 2);
        let points = s.points().unwrap();
        assert_eq!(points.len(), 6);
        assert_eq!(points[1].values, vec!["0.01", "2.5"]);
        assert_eq!(points[1].params.cover_rate, 2.5);
        assert_eq!(points[5].params.mean_delay, 0.05);
        assert!(points.iter().all(|p| p.params.layers == 2));
    }

    #[test]
    fn study_file_errors_name_the_key() {
        let e = Study::parse("widht = 3").unwrap_err();
        assert!(format!("{:?}", e).contains("widht"), "{e:?}");
        let e = Study::parse("[[sweep]]\nparam = \"mean_delay\"\nvalus = [1]").unwrap_err();
        assert!(format!("{:?}", e).contains("valus"), "{e:?}");
        assert!(Study::parse("[[sweep]]\nparam = \"nope\"\nvalues = [1]").is_err());
    }

    #[test]
    fn invalid_points_are_refused_before_running() {
        let s = Study {
            params: Params::default(),
            sweep: vec!["warmup=5,100".parse().unwrap()],
        };
        assert!(s.points().is_err());
    }
}
