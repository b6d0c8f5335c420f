//! Axis scales and tick marks: where a value lands on a linear or log axis,
//! which ticks to label so that no two labels overlap, and how to print them.
//!
//! Plots are drawn on linear plotters axes in *axis units*: the value itself
//! on a linear scale, `log10(value)` on a log scale ([`Scale::to_axis`]), so
//! NFE 1, 2, 4, 35 land at log-spaced positions.

use std::ops::Range;

/// How values map onto an axis.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Scale {
    /// Position proportional to the value.
    Linear,
    /// Position proportional to `log10(value)`; values must be > 0.
    Log,
}

impl Scale {
    /// The axis coordinate of a data value.
    pub fn to_axis(self, v: f64) -> f64 {
        match self {
            Scale::Linear => v,
            Scale::Log => v.log10(),
        }
    }

    /// The data value of an axis coordinate.
    pub fn from_axis(self, a: f64) -> f64 {
        match self {
            Scale::Linear => a,
            Scale::Log => 10f64.powf(a),
        }
    }

    /// Where `v` lands on an axis from `lo` to `hi` (data units): 0 at `lo`,
    /// 1 at `hi`.
    pub fn fraction(self, lo: f64, hi: f64, v: f64) -> f64 {
        let (a, b) = (self.to_axis(lo), self.to_axis(hi));
        (self.to_axis(v) - a) / (b - a)
    }
}

/// Prints a tick value short: up to 4 significant digits without trailing
/// zeros (`35`, `47.5`, `0.07`), thousands as `k` from 1000 (`2.5k`),
/// scientific below 1e-4 and from 1e7 (`1e-5`).
pub fn format_tick(v: f64) -> String {
    if v == 0.0 || !v.is_finite() {
        return if v.is_finite() {
            "0".into()
        } else {
            format!("{v}")
        };
    }
    let a = v.abs();
    if !(1e-4..1e7).contains(&a) {
        let s = format!("{v:.1e}");
        return s.replace(".0e", "e");
    }
    if a >= 1000.0 {
        return format!("{}k", trim(&format!("{:.2}", v / 1000.0)));
    }
    let decimals = (3 - a.log10().floor() as i32).clamp(0, 6) as usize;
    trim(&format!("{v:.decimals$}"))
}

/// Drops trailing zeros after a decimal point, and the point itself.
fn trim(s: &str) -> String {
    if s.contains('.') {
        s.trim_end_matches('0').trim_end_matches('.').to_string()
    } else {
        s.to_string()
    }
}

/// An axis: its scale, its range in data units and the ticks to label.
#[derive(Clone, Debug, PartialEq)]
pub struct Axis {
    /// Linear or log.
    pub scale: Scale,
    /// The lowest value shown (data units).
    pub lo: f64,
    /// The highest value shown (data units).
    pub hi: f64,
    /// Labelled ticks (data units), increasing, labels not overlapping.
    pub ticks: Vec<f64>,
}

/// How much room tick labels need along an axis.
#[derive(Clone, Copy, Debug)]
pub struct LabelRoom {
    /// Length of the axis in pixels.
    pub pixels: f64,
    /// Label font size in pixels.
    pub font_px: f64,
    /// Labels sit side by side (x axis) rather than stacked (y axis).
    pub horizontal: bool,
}

impl LabelRoom {
    /// The extent of `label` along the axis, plus a gap.
    fn extent(&self, label: &str) -> f64 {
        if self.horizontal {
            // DejaVu Sans digits are 0.64 em wide.
            0.64 * self.font_px * label.chars().count() as f64 + 0.8 * self.font_px
        } else {
            1.6 * self.font_px
        }
    }
}

impl Axis {
    /// A linear axis over `[lo, hi]` with "nice" ticks (1, 2 or 5 times a
    /// power of ten apart), as many as fit without overlapping labels.
    pub fn linear(lo: f64, hi: f64, room: LabelRoom) -> Axis {
        let (lo, hi) = widen(lo, hi, Scale::Linear);
        let ticks = linear_ticks(lo, hi, Scale::Linear, room);
        Axis {
            scale: Scale::Linear,
            lo,
            hi,
            ticks,
        }
    }

    /// A log axis over `[lo, hi]` (both > 0). With `preferred` ticks (e.g. the
    /// NFE values of the data, when they are few whole numbers) those are
    /// labelled, dropping any whose label would overlap its left neighbour;
    /// else ticks at 1, 2, 5 (or 1, 3, or 1) times powers of ten, else (a
    /// range inside one decade) linear nice ticks.
    pub fn log(lo: f64, hi: f64, preferred: Option<&[f64]>, room: LabelRoom) -> Axis {
        let (lo, hi) = widen(lo, hi, Scale::Log);
        let fits = |t: &[f64]| no_overlap(t, lo, hi, Scale::Log, room);
        let inside = |t: &f64| *t >= lo && *t <= hi;
        let mut ticks = Vec::new();
        if let Some(p) = preferred {
            let mut p: Vec<f64> = p.iter().copied().filter(inside).collect();
            p.sort_by(|a, b| a.total_cmp(b));
            p.dedup();
            ticks = thin(&p, lo, hi, Scale::Log, room);
        }
        if ticks.len() < 2 {
            let (first, last) = (lo.log10().floor() as i32, hi.log10().ceil() as i32);
            'sets: for (mantissas, every) in [
                (&[1.0, 2.0, 5.0][..], 1),
                (&[1.0, 3.0][..], 1),
                (&[1.0][..], 1),
                (&[1.0][..], 2),
                (&[1.0][..], 3),
                (&[1.0][..], 5),
                (&[1.0][..], 10),
            ] {
                let mut t = Vec::new();
                for e in first..=last {
                    if e.rem_euclid(every) != 0 {
                        continue;
                    }
                    for m in mantissas {
                        let v = m * 10f64.powi(e);
                        if inside(&v) {
                            t.push(v);
                        }
                    }
                }
                if t.len() >= 2 && fits(&t) {
                    ticks = t;
                    break 'sets;
                }
            }
        }
        if ticks.len() < 2 {
            ticks = linear_ticks(lo, hi, Scale::Log, room);
        }
        Axis {
            scale: Scale::Log,
            lo,
            hi,
            ticks,
        }
    }

    /// The axis range in axis units (see [`Scale::to_axis`]).
    pub fn range(&self) -> Range<f64> {
        self.scale.to_axis(self.lo)..self.scale.to_axis(self.hi)
    }

    /// The ticks in axis units.
    pub fn axis_ticks(&self) -> Vec<f64> {
        self.ticks.iter().map(|&t| self.scale.to_axis(t)).collect()
    }

    /// The label of the tick at axis coordinate `a`.
    pub fn label(&self, a: f64) -> String {
        format_tick(self.scale.from_axis(a))
    }
}

/// A range of non-zero width: an empty one grows around its value.
fn widen(lo: f64, hi: f64, scale: Scale) -> (f64, f64) {
    if hi > lo {
        return (lo, hi);
    }
    match scale {
        Scale::Log => (lo / 2.0, hi * 2.0),
        Scale::Linear if lo == 0.0 => (-1.0, 1.0),
        Scale::Linear => (lo - lo.abs() * 0.5, hi + hi.abs() * 0.5),
    }
}

/// Pixel position of `v` along an axis of `room.pixels`.
fn pixel(v: f64, lo: f64, hi: f64, scale: Scale, room: LabelRoom) -> f64 {
    scale.fraction(lo, hi, v) * room.pixels
}

/// Whether the labels of `ticks` (increasing) stay clear of each other.
fn no_overlap(ticks: &[f64], lo: f64, hi: f64, scale: Scale, room: LabelRoom) -> bool {
    ticks.windows(2).all(|w| {
        let gap = pixel(w[1], lo, hi, scale, room) - pixel(w[0], lo, hi, scale, room);
        gap >= (room.extent(&format_tick(w[0])) + room.extent(&format_tick(w[1]))) / 2.0
    })
}

/// `ticks` (increasing) without those whose label would overlap the last
/// kept one.
fn thin(ticks: &[f64], lo: f64, hi: f64, scale: Scale, room: LabelRoom) -> Vec<f64> {
    let mut kept: Vec<f64> = Vec::new();
    for &t in ticks {
        match kept.last() {
            Some(&k) if !no_overlap(&[k, t], lo, hi, scale, room) => {}
            _ => kept.push(t),
        }
    }
    kept
}

/// Nice ticks (1, 2, 5 times a power of ten apart, in data units) over
/// `[lo, hi]`, the most that fit.
fn linear_ticks(lo: f64, hi: f64, scale: Scale, room: LabelRoom) -> Vec<f64> {
    let mut best = vec![lo, hi];
    for n in (1..=12).rev() {
        let step = nice_step((hi - lo) / n as f64);
        let first = (lo / step).ceil() as i64;
        let last = (hi / step).floor() as i64;
        if last < first || last - first > 100 {
            continue;
        }
        // Multiply rather than accumulate, so 0.1 * 3 prints as 0.3.
        let t: Vec<f64> = (first..=last).map(|k| k as f64 * step).collect();
        if no_overlap(&t, lo, hi, scale, room) {
            return t;
        }
        best = t;
    }
    thin(&best, lo, hi, scale, room)
}

/// The 1, 2 or 5 times a power of ten nearest above `raw`.
fn nice_step(raw: f64) -> f64 {
    let p = 10f64.powf(raw.log10().floor());
    let m = raw / p;
    let nice = if m <= 1.0 {
        1.0
    } else if m <= 2.0 {
        2.0
    } else if m <= 5.0 {
        5.0
    } else {
        10.0
    };
    nice * p
}
