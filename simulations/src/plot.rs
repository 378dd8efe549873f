//! SVG plots of a sweep: latency (mean and p95) and entropy (mean and 5th
//! percentile) against the first swept parameter, one colour per value of
//! the other swept parameters.

use std::path::{Path, PathBuf};

use plotters::element::DashedPathElement;
use plotters::prelude::*;

use crate::error::{Error, Result};
use crate::params::{Params, param_info};
use crate::report::Report;
use crate::study::SweepAxis;

/// Okabe–Ito colours (distinguishable with the common colour-vision
/// deficiencies).
const COLOURS: &[RGBColor] = &[
    RGBColor(0, 114, 178),
    RGBColor(213, 94, 0),
    RGBColor(0, 158, 115),
    RGBColor(204, 121, 167),
    RGBColor(86, 180, 233),
    RGBColor(230, 159, 0),
    RGBColor(0, 0, 0),
];

const SIZE: (u32, u32) = (1000, 560);
const LEGEND_WIDTH: u32 = 230;
const FONT: &str = "sans-serif";

/// One line on a chart.
struct Line {
    label: String,
    points: Vec<(f64, f64)>,
    colour: RGBColor,
    dashed: bool,
}

/// The numeric value of parameter `key` in `p` (a range's mean for the
/// link latency).
fn numeric(p: &Params, key: &str) -> f64 {
    match key {
        "link_delay" => p.link_delay.mean(),
        _ => p.get(key).and_then(|v| v.parse().ok()).unwrap_or(f64::NAN),
    }
}

fn axis_label(key: &str) -> String {
    match param_info(key) {
        Some(i) if i.unit.is_empty() => i.label.to_owned(),
        Some(i) if i.key == "link_delay" => format!("{} ({}, mean)", i.label, i.unit),
        Some(i) => format!("{} ({})", i.label, i.unit),
        None => key.to_owned(),
    }
}

fn short(key: &str) -> &'static str {
    match key {
        "layers" => "L",
        "width" => "W",
        "clients" => "N",
        "providers" => "P",
        "cover_rate" => "λ",
        "loop_rate" => "λ_L",
        "mean_delay" => "μ",
        "rate" => "msg rate",
        "compromised" => "compromised",
        "link_delay" => "link",
        "max_delay" => "max delay",
        _ => param_info(key).map_or("?", |i| i.flag),
    }
}

/// `μ=0.05 s`, `λ=2/s`, `L=3`.
fn short_value(p: &Params, key: &str) -> String {
    let v = p.get(key).unwrap_or_default();
    let unit = match key {
        "rate" | "cover_rate" | "loop_rate" => "/s",
        "mean_delay" | "max_delay" | "link_delay" => " s",
        _ => "",
    };
    format!("{}={v}{unit}", short(key))
}

/// The fixed parameters worth naming in a title.
fn fixed_summary(p: &Params, swept: &[SweepAxis]) -> String {
    let is_swept = |k: &str| swept.iter().any(|a| a.key == k);
    let mut parts = Vec::new();
    for key in [
        "layers",
        "width",
        "clients",
        "cover_rate",
        "loop_rate",
        "rate",
        "mean_delay",
        "link_delay",
        "compromised",
    ] {
        if is_swept(key) || (key == "compromised" && p.compromised == 0.0) {
            continue;
        }
        parts.push(short_value(p, key));
    }
    parts.join(", ")
}

/// Groups reports by the values of every axis but the first, keeping point
/// order: (label, reports).
fn groups<'a>(reports: &'a [Report], axes: &[SweepAxis]) -> Vec<(String, Vec<&'a Report>)> {
    let mut out: Vec<(String, Vec<&Report>)> = Vec::new();
    for r in reports {
        let label = axes
            .iter()
            .skip(1)
            .map(|a| {
                format!(
                    "{}={}",
                    short(a.key),
                    r.params.get(a.key).unwrap_or_default()
                )
            })
            .collect::<Vec<_>>()
            .join(", ");
        match out.iter_mut().find(|(l, _)| *l == label) {
            Some((_, v)) => v.push(r),
            None => out.push((label, vec![r])),
        }
    }
    out
}

fn with_group(what: &str, group: &str) -> String {
    if group.is_empty() {
        what.to_owned()
    } else {
        format!("{what} ({group})")
    }
}

fn draw(path: &Path, title: &str, x_label: &str, y_label: &str, lines: &[Line]) -> Result<()> {
    let plot_err = |e: &dyn std::fmt::Display| Error::Plot {
        path: path.to_owned(),
        reason: e.to_string(),
    };
    let finite = |v: &f64| v.is_finite();
    let xs: Vec<f64> = lines
        .iter()
        .flat_map(|l| l.points.iter().map(|p| p.0))
        .filter(finite)
        .collect();
    let ys: Vec<f64> = lines
        .iter()
        .flat_map(|l| l.points.iter().map(|p| p.1))
        .filter(finite)
        .collect();
    let (x0, x1) = span(&xs, false);
    let (y0, y1) = span(&ys, true);
    let root = SVGBackend::new(path, SIZE).into_drawing_area();
    root.fill(&WHITE).map_err(|e| plot_err(&e))?;
    let root = root.titled(title, (FONT, 21)).map_err(|e| plot_err(&e))?;
    // The legend gets its own panel on the right, so it never hides data.
    let (left, right) = root.split_horizontally(SIZE.0 - LEGEND_WIDTH);
    let mut chart = ChartBuilder::on(&left)
        .margin(15)
        .x_label_area_size(55)
        .y_label_area_size(75)
        .build_cartesian_2d(x0..x1, y0..y1)
        .map_err(|e| plot_err(&e))?;
    chart
        .configure_mesh()
        .x_desc(x_label)
        .y_desc(y_label)
        .label_style((FONT, 15))
        .axis_desc_style((FONT, 18))
        .light_line_style(WHITE)
        .bold_line_style(RGBColor(225, 225, 225))
        .draw()
        .map_err(|e| plot_err(&e))?;
    for line in lines {
        let pts: Vec<(f64, f64)> = line
            .points
            .iter()
            .copied()
            .filter(|(x, y)| x.is_finite() && y.is_finite())
            .collect();
        let style = line.colour.stroke_width(2);
        let colour = line.colour;
        if line.dashed {
            chart
                .draw_series(DashedLineSeries::new(pts.clone(), 9, 5, style))
                .map_err(|e| plot_err(&e))?;
            chart
                .draw_series(
                    pts.iter()
                        .map(|&p| TriangleMarker::new(p, 5, colour.filled())),
                )
                .map_err(|e| plot_err(&e))?;
        } else {
            chart
                .draw_series(LineSeries::new(pts.clone(), style))
                .map_err(|e| plot_err(&e))?;
            chart
                .draw_series(pts.iter().map(|&p| Circle::new(p, 4, colour.filled())))
                .map_err(|e| plot_err(&e))?;
        }
    }
    for (i, line) in lines.iter().enumerate() {
        let y = 40 + 26 * i as i32;
        let style = line.colour.stroke_width(2);
        let draw_err = |e: &dyn std::fmt::Display| plot_err(e);
        if line.dashed {
            right
                .draw(&DashedPathElement::new(vec![(5, y), (37, y)], 7, 4, style))
                .map_err(|e| draw_err(&e))?;
            right
                .draw(&TriangleMarker::new((21, y), 5, line.colour.filled()))
                .map_err(|e| draw_err(&e))?;
        } else {
            right
                .draw(&PathElement::new(vec![(5, y), (37, y)], style))
                .map_err(|e| draw_err(&e))?;
            right
                .draw(&Circle::new((21, y), 4, line.colour.filled()))
                .map_err(|e| draw_err(&e))?;
        }
        right
            .draw(&Text::new(line.label.clone(), (45, y - 7), (FONT, 15)))
            .map_err(|e| draw_err(&e))?;
    }
    root.present().map_err(|e| plot_err(&e))?;
    Ok(())
}

/// A padded axis range over `vs`; from zero if `from_zero` and all values
/// are positive.
fn span(vs: &[f64], from_zero: bool) -> (f64, f64) {
    let lo = vs.iter().copied().fold(f64::INFINITY, f64::min);
    let hi = vs.iter().copied().fold(f64::NEG_INFINITY, f64::max);
    if !lo.is_finite() || !hi.is_finite() {
        return (0.0, 1.0);
    }
    let pad = if hi > lo {
        (hi - lo) * 0.05
    } else {
        hi.abs().max(1.0) * 0.1
    };
    let lo = if from_zero && lo >= 0.0 {
        0.0
    } else {
        lo - pad
    };
    (lo, hi + pad)
}

/// Draws `latency.svg` and `entropy.svg` for a sweep into `dir`; returns
/// their paths. The x axis is the first swept parameter.
pub fn plot_sweep(reports: &[Report], axes: &[SweepAxis], dir: &Path) -> Result<Vec<PathBuf>> {
    let Some(x_axis) = axes.first() else {
        return Ok(Vec::new());
    };
    let Some(first) = reports.first() else {
        return Ok(Vec::new());
    };
    let x_key = x_axis.key;
    let x_label = axis_label(x_key);
    let fixed = fixed_summary(&first.params, axes);
    let x_name = param_info(x_key).map_or(x_key, |i| i.label);
    let groups = groups(reports, axes);

    let max_latency = reports
        .iter()
        .map(|r| r.latency.p95)
        .filter(|v| v.is_finite())
        .fold(0.0, f64::max);
    let (scale, unit) = if max_latency < 1.0 {
        (1e3, "ms")
    } else {
        (1.0, "s")
    };
    let mut latency_lines = Vec::new();
    let mut entropy_lines = Vec::new();
    for (i, (group, rs)) in groups.iter().enumerate() {
        let colour = COLOURS[i % COLOURS.len()];
        let xy = |f: &dyn Fn(&Report) -> f64| -> Vec<(f64, f64)> {
            rs.iter()
                .map(|r| (numeric(&r.params, x_key), f(r)))
                .collect()
        };
        latency_lines.push(Line {
            label: with_group("mean", group),
            points: xy(&|r| r.latency.mean * scale),
            colour,
            dashed: false,
        });
        latency_lines.push(Line {
            label: with_group("95th percentile", group),
            points: xy(&|r| r.latency.p95 * scale),
            colour,
            dashed: true,
        });
        entropy_lines.push(Line {
            label: with_group("mean", group),
            points: xy(&|r| r.anonymity.mean),
            colour,
            dashed: false,
        });
        entropy_lines.push(Line {
            label: with_group("5th percentile", group),
            points: xy(&|r| r.anonymity.p5),
            colour,
            dashed: true,
        });
    }
    let latency_path = dir.join("latency.svg");
    draw(
        &latency_path,
        &format!("End-to-end latency vs {x_name} ({fixed})"),
        &x_label,
        &format!("end-to-end latency ({unit})"),
        &latency_lines,
    )?;
    let entropy_path = dir.join("entropy.svg");
    draw(
        &entropy_path,
        &format!("Anonymity vs {x_name} ({fixed})"),
        &x_label,
        "entropy over delivered packets (bits)",
        &entropy_lines,
    )?;
    Ok(vec![latency_path, entropy_path])
}
