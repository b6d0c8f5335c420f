//! Plots of a run, drawn with plotters as PNG plus SVG: the loss curve
//! (log-scale loss against step, raw and smoothed), line plots of several
//! series (e.g. FID against NFE, NFE on a log axis) and scatter plots of 2-D
//! samples (equal aspect). Every plot has axis titles; line plots with
//! labelled series have a legend.

use std::path::Path;

use plotters::chart::{ChartBuilder, ChartContext, SeriesLabelPosition};
use plotters::coord::cartesian::Cartesian2d;
use plotters::coord::ranged1d::{DefaultFormatting, KeyPointHint, Ranged};
use plotters::coord::types::RangedCoordf64;
use plotters::coord::Shift;
use plotters::element::{Circle, PathElement, Text};
use plotters::prelude::{DrawingArea, DrawingBackend};
use plotters::style::text_anchor::{HPos, Pos, VPos};
use plotters::style::{Color, IntoFont, RGBColor, TextStyle, BLACK, WHITE};
use tch::{Kind, Tensor};

use crate::error::{ReportError, Result};
use crate::figure::{write_figure, DrawResult, Figure, FAMILY};
use crate::ticks::{Axis, LabelRoom};

/// Tick label font size (pixels).
const LABEL_PX: u32 = 14;
/// Axis title font size (pixels).
const DESC_PX: u32 = 16;
/// Plot title font size (pixels).
const TITLE_PX: u32 = 18;
/// Space around the chart (pixels).
const MARGIN: u32 = 14;
/// Height of the area under the x axis (tick labels and axis title).
const X_AREA: u32 = 52;
/// Width of the area left of the y axis (tick labels and axis title).
const Y_AREA: u32 = 72;
/// Grid line colour.
const GRID: RGBColor = RGBColor(225, 225, 225);

/// A linear plotters axis in axis units (see [`crate::ticks::Scale::to_axis`])
/// whose tick marks are ours ([`Axis::axis_ticks`]).
struct Ticked {
    linear: RangedCoordf64,
    ticks: Vec<f64>,
}

impl Ticked {
    fn new(axis: &Axis) -> Self {
        Ticked {
            linear: axis.range().into(),
            ticks: axis.axis_ticks(),
        }
    }
}

impl Ranged for Ticked {
    type FormatOption = DefaultFormatting;
    type ValueType = f64;

    fn map(&self, value: &f64, limit: (i32, i32)) -> i32 {
        self.linear.map(value, limit)
    }

    fn key_points<Hint: KeyPointHint>(&self, hint: Hint) -> Vec<f64> {
        // Light (minor) grid lines: none.
        if hint.weight().allow_light_points() {
            Vec::new()
        } else {
            self.ticks.clone()
        }
    }

    fn range(&self) -> std::ops::Range<f64> {
        self.linear.range()
    }
}

/// A chart on two [`Ticked`] axes.
type Coord = Cartesian2d<Ticked, Ticked>;

/// Axis titles, plot title and the axes of one chart.
struct Frame<'a> {
    x: &'a Axis,
    y: &'a Axis,
    x_desc: &'a str,
    y_desc: &'a str,
    title: Option<&'a str>,
}

/// Pixels of the plotting area of a chart of `(w, h)` on `frame`'s layout.
fn plot_pixels((w, h): (u32, u32), titled: bool) -> (f64, f64) {
    let caption = if titled { TITLE_PX + 12 } else { 0 };
    (
        (w.saturating_sub(2 * MARGIN + Y_AREA)) as f64,
        (h.saturating_sub(2 * MARGIN + X_AREA + caption)) as f64,
    )
}

/// Room for x and y tick labels on a plotting area of `(pw, ph)` pixels.
fn rooms((pw, ph): (f64, f64)) -> (LabelRoom, LabelRoom) {
    let font_px = LABEL_PX as f64;
    (
        LabelRoom {
            pixels: pw,
            font_px,
            horizontal: true,
        },
        LabelRoom {
            pixels: ph,
            font_px,
            horizontal: false,
        },
    )
}

/// Builds the chart of `frame` on `area` and draws its grid, axes, tick
/// labels and axis titles.
fn chart<'a, DB: DrawingBackend>(
    area: &'a DrawingArea<DB, Shift>,
    frame: &Frame,
) -> std::result::Result<
    ChartContext<'a, DB, Coord>,
    plotters::drawing::DrawingAreaErrorKind<DB::ErrorType>,
> {
    let mut builder = ChartBuilder::on(area);
    builder
        .margin(MARGIN)
        .x_label_area_size(X_AREA)
        .y_label_area_size(Y_AREA);
    if let Some(t) = frame.title {
        builder.caption(t, (FAMILY, TITLE_PX));
    }
    let mut chart = builder.build_cartesian_2d(Ticked::new(frame.x), Ticked::new(frame.y))?;
    let (x, y) = (frame.x, frame.y);
    let fx = |a: &f64| x.label(*a);
    let fy = |a: &f64| y.label(*a);
    chart
        .configure_mesh()
        .bold_line_style(GRID)
        .axis_style(BLACK)
        .label_style((FAMILY, LABEL_PX))
        .axis_desc_style((FAMILY, DESC_PX))
        .x_desc(frame.x_desc)
        .y_desc(frame.y_desc)
        .x_label_formatter(&fx)
        .y_label_formatter(&fy)
        .draw()?;
    Ok(chart)
}

/// The colour of a `[r, g, b]` triple.
fn rgb(c: [u8; 3]) -> RGBColor {
    RGBColor(c[0], c[1], c[2])
}

/// `text` left-aligned and vertically centred, in `px`-pixel type.
fn left_text(px: u32) -> TextStyle<'static> {
    (FAMILY, px)
        .into_font()
        .color(&BLACK)
        .pos(Pos::new(HPos::Left, VPos::Center))
}

// ---------------------------------------------------------------- loss plot

/// Points of the loss figure, in data units.
struct LossFigure {
    raw: Vec<(f64, f64)>,
    smooth: Vec<(f64, f64)>,
    x: Axis,
    y: Axis,
}

/// Raw loss colour (light) and moving-average colour (dark).
const RAW_COLOR: RGBColor = RGBColor(190, 190, 190);
const SMOOTH_COLOR: RGBColor = RGBColor(20, 80, 200);
/// Loss plot size.
const LOSS_SIZE: (u32, u32) = (800, 480);

impl Figure for LossFigure {
    fn size(&self) -> (u32, u32) {
        LOSS_SIZE
    }

    fn draw<DB: DrawingBackend>(&self, root: &DrawingArea<DB, Shift>) -> DrawResult<DB> {
        root.fill(&WHITE)?;
        let frame = Frame {
            x: &self.x,
            y: &self.y,
            x_desc: "step",
            y_desc: "loss (log scale)",
            title: None,
        };
        let mut chart = chart(root, &frame)?;
        let (sx, sy) = (self.x.scale, self.y.scale);
        let at = move |&(x, y): &(f64, f64)| (sx.to_axis(x), sy.to_axis(y));
        if self.raw.len() < 2 {
            let (xr, yr) = (self.x.range(), self.y.range());
            chart.draw_series(std::iter::once(Text::new(
                "no finite positive loss values yet",
                (
                    xr.start + 0.3 * (xr.end - xr.start),
                    yr.start + 0.5 * (yr.end - yr.start),
                ),
                (FAMILY, DESC_PX).into_font().color(&BLACK),
            )))?;
            return Ok(());
        }
        for (points, label, color, width) in [
            (&self.raw, "loss", RAW_COLOR, 1),
            (&self.smooth, "moving average", SMOOTH_COLOR, 2),
        ] {
            chart
                .draw_series(plotters::series::LineSeries::new(
                    points.iter().map(at),
                    color.stroke_width(width),
                ))?
                .label(label)
                .legend(move |(x, y)| {
                    PathElement::new(vec![(x, y), (x + 24, y)], color.stroke_width(2))
                });
        }
        chart
            .configure_series_labels()
            .position(SeriesLabelPosition::UpperRight)
            .background_style(WHITE.mix(0.85))
            .border_style(BLACK)
            .label_font((FAMILY, LABEL_PX))
            .draw()
    }
}

/// At most `2 * buckets` points keeping each bucket's lowest and highest
/// value, so long curves draw fast and small SVGs keep their envelope.
fn envelope(points: &[(f64, f64)], buckets: usize) -> Vec<(f64, f64)> {
    if points.len() <= 2 * buckets {
        return points.to_vec();
    }
    let per = points.len().div_ceil(buckets);
    let mut out = Vec::with_capacity(2 * buckets);
    for chunk in points.chunks(per) {
        let lo = chunk
            .iter()
            .copied()
            .fold(chunk[0], |a, p| if p.1 < a.1 { p } else { a });
        let hi = chunk
            .iter()
            .copied()
            .fold(chunk[0], |a, p| if p.1 > a.1 { p } else { a });
        if lo.0 <= hi.0 {
            out.extend([lo, hi]);
        } else {
            out.extend([hi, lo]);
        }
    }
    out
}

/// Writes the loss curve as PNG at `path` plus SVG beside it: raw losses in
/// light grey, an exponential moving average of log-loss (span ~ 2% of the
/// run) in dark blue, log-scale y, steps on x, axis titles and a legend.
/// Non-finite and non-positive losses (which a log axis cannot show) are
/// left out; with fewer than 2 points left the axes say so (a run's first
/// checkpoint can come before its first logged loss), so this never fails
/// on the values.
pub fn write_loss_plot(points: &[(u64, f64)], path: &Path) -> Result<()> {
    let raw: Vec<(f64, f64)> = points
        .iter()
        .filter(|(_, l)| l.is_finite() && *l > 0.0)
        .map(|&(s, l)| (s as f64, l))
        .collect();
    let (xr, yr) = rooms(plot_pixels(LOSS_SIZE, false));
    if raw.len() < 2 {
        let fig = LossFigure {
            raw,
            smooth: Vec::new(),
            x: Axis::linear(0.0, 1.0, xr),
            y: Axis::log(0.1, 1.0, None, yr),
        };
        return write_figure(&fig, path);
    }
    let alpha = 1.0 / (raw.len() as f64 / 50.0).max(1.0);
    let mut s = raw[0].1.log10();
    let smooth: Vec<(f64, f64)> = raw
        .iter()
        .map(|&(x, l)| {
            s = (1.0 - alpha) * s + alpha * l.log10();
            (x, 10f64.powf(s))
        })
        .collect();
    let xmin = raw.iter().map(|p| p.0).fold(f64::INFINITY, f64::min);
    let xmax = raw.iter().map(|p| p.0).fold(f64::NEG_INFINITY, f64::max);
    let ymin = raw.iter().map(|p| p.1).fold(f64::INFINITY, f64::min);
    let ymax = raw.iter().map(|p| p.1).fold(f64::NEG_INFINITY, f64::max);
    let fig = LossFigure {
        raw: envelope(&raw, 1500),
        smooth: envelope(&smooth, 1500),
        x: Axis::linear(xmin, xmax, xr),
        y: Axis::log(ymin / 1.15, ymax * 1.15, None, yr),
    };
    write_figure(&fig, path)
}

// ---------------------------------------------------------------- line plot

/// One curve of [`write_line_plot`]: points `(x, y)` joined in order, in
/// one colour, each point marked with a dot, named in the legend.
#[derive(Clone, Debug, PartialEq)]
pub struct LineSeries {
    /// The legend entry ("" leaves the series out of the legend).
    pub label: String,
    /// The points, in drawing order.
    pub points: Vec<(f64, f64)>,
    /// RGB colour.
    pub color: [u8; 3],
}

/// Colours for successive series: blue, orange, green, red, purple, brown.
pub const SERIES_COLORS: [[u8; 3]; 6] = [
    [31, 119, 180],
    [255, 127, 14],
    [44, 160, 44],
    [214, 39, 40],
    [148, 103, 189],
    [140, 86, 75],
];

/// Titles and scales of a [`write_line_plot`].
#[derive(Clone, Debug, PartialEq)]
pub struct LinePlot {
    /// The x axis title (e.g. "NFE").
    pub x_label: String,
    /// The y axis title (e.g. "FID").
    pub y_label: String,
    /// x on a log scale (every x must be > 0); ticks at the data's x values
    /// when they are a few whole numbers (NFE), else at 1, 2, 5 x 10^k.
    pub log_x: bool,
    /// y from 0 (or the lowest y when negative) rather than fitted to the data.
    pub y_from_zero: bool,
    /// A title above the plot.
    pub title: Option<String>,
    /// A heading above the legend (e.g. the column the series come from).
    pub legend_title: Option<String>,
}

impl LinePlot {
    /// A plot with these axis titles: linear x, y from 0, no titles.
    pub fn new(x_label: impl Into<String>, y_label: impl Into<String>) -> Self {
        LinePlot {
            x_label: x_label.into(),
            y_label: y_label.into(),
            log_x: false,
            y_from_zero: true,
            title: None,
            legend_title: None,
        }
    }
}

/// Line plot size (without the legend, which widens it).
const LINE_SIZE: (u32, u32) = (760, 480);
/// Longest legend label before it is shortened.
const LEGEND_CHARS: usize = 40;

struct LineFigure {
    series: Vec<LineSeries>,
    plot: LinePlot,
    x: Axis,
    y: Axis,
    legend_w: u32,
}

/// A legend label on one line, at most [`LEGEND_CHARS`] characters.
fn legend_label(s: &str) -> String {
    let one_line = s.split_whitespace().collect::<Vec<_>>().join(" ");
    if one_line.chars().count() > LEGEND_CHARS {
        let mut t: String = one_line.chars().take(LEGEND_CHARS - 1).collect();
        t.push('…');
        t
    } else {
        one_line
    }
}

/// Width of the legend column for these labels (0: no legend).
fn legend_width(series: &[LineSeries], heading: Option<&str>) -> u32 {
    let labels: Vec<String> = series
        .iter()
        .filter(|s| !s.label.is_empty())
        .map(|s| legend_label(&s.label))
        .collect();
    if labels.is_empty() {
        return 0;
    }
    let chars = labels
        .iter()
        .map(|l| l.chars().count())
        .chain(heading.map(|h| legend_label(h).chars().count()))
        .max()
        .unwrap_or(0);
    (0.62 * LABEL_PX as f64 * chars as f64) as u32 + 60
}

impl Figure for LineFigure {
    fn size(&self) -> (u32, u32) {
        (LINE_SIZE.0 + self.legend_w, LINE_SIZE.1)
    }

    fn draw<DB: DrawingBackend>(&self, root: &DrawingArea<DB, Shift>) -> DrawResult<DB> {
        root.fill(&WHITE)?;
        let (plot_area, legend_area) = root.split_horizontally(LINE_SIZE.0);
        let frame = Frame {
            x: &self.x,
            y: &self.y,
            x_desc: &self.plot.x_label,
            y_desc: &self.plot.y_label,
            title: self.plot.title.as_deref(),
        };
        let mut chart = chart(&plot_area, &frame)?;
        let (sx, sy) = (self.x.scale, self.y.scale);
        for s in &self.series {
            let color = rgb(s.color);
            let pts: Vec<(f64, f64)> = s
                .points
                .iter()
                .map(|&(x, y)| (sx.to_axis(x), sy.to_axis(y)))
                .collect();
            chart.draw_series(plotters::series::LineSeries::new(
                pts.iter().copied(),
                color.stroke_width(2),
            ))?;
            chart.draw_series(pts.iter().map(|&p| Circle::new(p, 4, color.filled())))?;
        }
        if self.legend_w == 0 {
            return Ok(());
        }
        let top = MARGIN as i32 + if self.plot.title.is_some() { 30 } else { 0 } + 10;
        let mut y = top;
        if let Some(h) = &self.plot.legend_title {
            legend_area.draw(&Text::new(legend_label(h), (4, y), left_text(LABEL_PX + 1)))?;
            y += 24;
        }
        for s in self.series.iter().filter(|s| !s.label.is_empty()) {
            let color = rgb(s.color);
            legend_area.draw(&PathElement::new(
                vec![(4, y), (30, y)],
                color.stroke_width(3),
            ))?;
            legend_area.draw(&Circle::new((17, y), 4, color.filled()))?;
            legend_area.draw(&Text::new(
                legend_label(&s.label),
                (38, y),
                left_text(LABEL_PX),
            ))?;
            y += 22;
        }
        Ok(())
    }
}

/// Checks the series of a line plot, naming the series and point at fault.
fn check_series(series: &[LineSeries], log_x: bool) -> Result<()> {
    if series.is_empty() {
        return Err(ReportError::invalid("line plot", "no series to draw"));
    }
    for (i, s) in series.iter().enumerate() {
        let name = if s.label.is_empty() {
            format!("line plot series {i}")
        } else {
            format!("line plot series '{}'", s.label)
        };
        if s.points.is_empty() {
            return Err(ReportError::invalid(name, "has no points"));
        }
        for (j, &(x, y)) in s.points.iter().enumerate() {
            if !x.is_finite() || !y.is_finite() {
                return Err(ReportError::invalid(
                    format!("{name}, point {j}"),
                    format!("({x}, {y}) is not finite"),
                ));
            }
            if log_x && x <= 0.0 {
                return Err(ReportError::invalid(
                    format!("{name}, point {j}"),
                    format!("x = {x} cannot go on a log axis (needs x > 0)"),
                ));
            }
        }
    }
    Ok(())
}

/// Writes a line plot of several series (e.g. FID against NFE) as PNG at
/// `path` plus SVG beside it: axis titles from `plot`, x on a log scale when
/// `plot.log_x`, a legend of the labelled series to the right of the plot.
/// Fails, naming the series and point, on no series, an empty series, a
/// non-finite value, or x <= 0 on a log axis.
pub fn write_line_plot(series: &[LineSeries], plot: &LinePlot, path: &Path) -> Result<()> {
    check_series(series, plot.log_x)?;
    let pts = || series.iter().flat_map(|s| s.points.iter().copied());
    let xmin = pts().map(|p| p.0).fold(f64::INFINITY, f64::min);
    let xmax = pts().map(|p| p.0).fold(f64::NEG_INFINITY, f64::max);
    let ymin = pts().map(|p| p.1).fold(f64::INFINITY, f64::min);
    let ymax = pts().map(|p| p.1).fold(f64::NEG_INFINITY, f64::max);
    let legend_w = legend_width(series, plot.legend_title.as_deref());
    let (xr, yr) = rooms(plot_pixels(LINE_SIZE, plot.title.is_some()));
    let x = if plot.log_x {
        // 4% of the (log) width of padding each side, so end points clear the frame.
        let pad = if xmax > xmin {
            (xmax / xmin).powf(0.04)
        } else {
            1.25
        };
        let mut xs: Vec<f64> = pts().map(|p| p.0).collect();
        xs.sort_by(|a, b| a.total_cmp(b));
        xs.dedup();
        let whole = xs.len() <= 16 && xs.iter().all(|v| v.fract() == 0.0);
        Axis::log(xmin / pad, xmax * pad, whole.then_some(&xs[..]), xr)
    } else {
        let pad = if xmax > xmin {
            0.04 * (xmax - xmin)
        } else {
            0.5
        };
        Axis::linear(xmin - pad, xmax + pad, xr)
    };
    let span = (ymax - ymin).max(ymax.abs() * 1e-3).max(1e-12);
    let (ylo, yhi) = if plot.y_from_zero {
        let lo = ymin.min(0.0);
        (lo, ymax + 0.08 * (ymax - lo).max(span))
    } else {
        (ymin - 0.06 * span, ymax + 0.06 * span)
    };
    let fig = LineFigure {
        series: series.to_vec(),
        plot: plot.clone(),
        x,
        y: Axis::linear(ylo, yhi, yr),
        legend_w,
    };
    write_figure(&fig, path)
}

// ------------------------------------------------------------- scatter plot

/// Scatter plot size: square, with equal label areas left and below, so the
/// plotting area is square too (equal aspect).
const SCATTER_SIZE: (u32, u32) = (560, 560);
/// The fixed range of both scatter axes.
const SCATTER_LIMIT: f64 = 4.0;
const POINT_COLOR: RGBColor = RGBColor(20, 80, 200);

struct ScatterFigure {
    points: Vec<(f64, f64)>,
    axis: Axis,
    note: Option<String>,
}

impl Figure for ScatterFigure {
    fn size(&self) -> (u32, u32) {
        SCATTER_SIZE
    }

    fn draw<DB: DrawingBackend>(&self, root: &DrawingArea<DB, Shift>) -> DrawResult<DB> {
        root.fill(&WHITE)?;
        let mut chart = ChartBuilder::on(root)
            .margin(MARGIN)
            .x_label_area_size(X_AREA)
            .y_label_area_size(X_AREA)
            .build_cartesian_2d(Ticked::new(&self.axis), Ticked::new(&self.axis))?;
        let f = |a: &f64| self.axis.label(*a);
        chart
            .configure_mesh()
            .bold_line_style(GRID)
            .axis_style(BLACK)
            .label_style((FAMILY, LABEL_PX))
            .axis_desc_style((FAMILY, DESC_PX))
            .x_desc(match &self.note {
                Some(n) => format!("x[0]    ({n})"),
                None => "x[0]".into(),
            })
            .y_desc("x[1]")
            .x_label_formatter(&f)
            .y_label_formatter(&f)
            .draw()?;
        chart.draw_series(
            self.points
                .iter()
                .map(|&p| Circle::new(p, 2, POINT_COLOR.filled())),
        )?;
        Ok(())
    }
}

/// Writes a scatter plot of `[N, 2]` points (2-D toy samples) as PNG at
/// `path` plus SVG beside it: both axes fixed to [-4, 4] so plots of a run
/// are comparable, equal aspect, axis titles `x[0]` and `x[1]`. Points
/// outside the square or not finite are not drawn; the x axis title says
/// how many (a diverged toy run still gets its picture).
/// Fails, naming the shape, unless the tensor is `[N, 2]`.
pub fn write_scatter(points: &Tensor, path: &Path) -> Result<()> {
    let size = points.size();
    if size.len() != 2 || size[1] != 2 {
        return Err(ReportError::invalid(
            "scatter plot",
            format!("needs [N, 2] points, got shape {size:?}"),
        ));
    }
    let flat = Vec::<f64>::try_from(
        points
            .to_device(tch::Device::Cpu)
            .to_kind(Kind::Double)
            .flatten(0, -1),
    )?;
    let inside = |v: f64| v.is_finite() && v.abs() <= SCATTER_LIMIT;
    let all: Vec<(f64, f64)> = flat.chunks_exact(2).map(|p| (p[0], p[1])).collect();
    let shown: Vec<(f64, f64)> = all
        .iter()
        .copied()
        .filter(|&(x, y)| inside(x) && inside(y))
        .collect();
    let non_finite = all
        .iter()
        .filter(|(x, y)| !x.is_finite() || !y.is_finite())
        .count();
    let outside = all.len() - shown.len() - non_finite;
    let mut notes = Vec::new();
    if outside > 0 {
        notes.push(format!("{outside} of {} points outside [-4, 4]", all.len()));
    }
    if non_finite > 0 {
        notes.push(format!(
            "{non_finite} of {} points NaN or infinite",
            all.len()
        ));
    }
    let (room, _) = rooms(plot_pixels(SCATTER_SIZE, false));
    let fig = ScatterFigure {
        points: shown,
        axis: Axis::linear(-SCATTER_LIMIT, SCATTER_LIMIT, room),
        note: (!notes.is_empty()).then(|| format!("not shown: {}", notes.join(", "))),
    };
    write_figure(&fig, path)
}
