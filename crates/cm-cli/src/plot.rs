//! `cm plot`: redraws a plot from a CSV file (a run's `metrics.csv`, an
//! evaluation's `results.csv`, a timestep search's table, an ablation
//! table) with cm-report, as PNG plus SVG.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};

use cm_report::{write_line_plot, write_loss_plot, LinePlot, LineSeries, SERIES_COLORS};

/// The plots `cm plot` draws.
#[derive(Debug, clap::Subcommand)]
pub enum PlotCommand {
    /// The loss curve of a run from its metrics.csv: step on x, loss on a
    /// log y axis, raw and smoothed.
    Loss(LossArgs),
    /// One curve per value of a column (e.g. FID against NFE per model),
    /// from any CSV with a header row.
    Lines(LinesArgs),
}

/// Arguments of `cm plot loss`.
#[derive(Debug, clap::Args)]
pub struct LossArgs {
    /// The run's metrics CSV (columns step, loss, ...).
    #[arg(long)]
    pub metrics: PathBuf,
    /// The column to plot against `step`.
    #[arg(long, default_value = "loss")]
    pub column: String,
    /// Output PNG (an SVG is written beside it; a .svg path writes the SVG only).
    #[arg(long)]
    pub out: PathBuf,
}

/// Arguments of `cm plot lines`.
#[derive(Debug, clap::Args)]
pub struct LinesArgs {
    /// CSV file with a header row (quoted fields may hold commas and newlines).
    #[arg(long)]
    pub csv: PathBuf,
    /// Column of x values. A cell of several space-separated numbers (the
    /// `taus` of a timestep search) counts as its last one: the searched time.
    #[arg(long)]
    pub x: String,
    /// Column of y values.
    #[arg(long)]
    pub y: String,
    /// Column whose values split the rows into curves, one per value, in
    /// order of first appearance (e.g. `model`, `steps`). Without it, one curve.
    #[arg(long)]
    pub series: Option<String>,
    /// Legend label of a curve, `{}` standing for its --series value (e.g. "{}-step").
    #[arg(long, default_value = "{}")]
    pub series_format: String,
    /// x on a log scale (NFE, times); rows with x <= 0 (the data row of an
    /// evaluation) are left out and listed.
    #[arg(long)]
    pub log_x: bool,
    /// Fit y to the data instead of starting the axis at 0.
    #[arg(long)]
    pub y_tight: bool,
    /// x axis title (default: the --x column, plus "(log scale)" with --log-x).
    #[arg(long)]
    pub x_label: Option<String>,
    /// y axis title (default: the --y column).
    #[arg(long)]
    pub y_label: Option<String>,
    /// Title above the plot.
    #[arg(long)]
    pub title: Option<String>,
    /// Output PNG (an SVG is written beside it; a .svg path writes the SVG only).
    #[arg(long)]
    pub out: PathBuf,
}

/// Runs `cm plot`.
pub fn plot(cmd: &PlotCommand) -> Result<()> {
    match cmd {
        PlotCommand::Loss(args) => loss(args),
        PlotCommand::Lines(args) => lines(args),
    }
}

/// A CSV file read into its header and records, each with the line it starts on.
struct Table {
    path: PathBuf,
    header: Vec<String>,
    rows: Vec<(usize, Vec<String>)>,
}

impl Table {
    fn read(path: &Path) -> Result<Table> {
        let text = cm_core::read_bounded_text(path, cm_train::MAX_METRICS_BYTES, "a CSV table")
            .with_context(|| format!("cannot read {}", path.display()))?;
        let mut records =
            parse_csv(&text).with_context(|| format!("parsing {}", path.display()))?;
        if records.is_empty() {
            bail!("{} is empty: expected a header row", path.display());
        }
        let (_, header) = records.remove(0);
        let header = header.into_iter().map(|h| h.trim().to_string()).collect();
        Ok(Table {
            path: path.to_path_buf(),
            header,
            rows: records,
        })
    }

    /// The index of column `name`, or an error listing the columns there are.
    fn column(&self, name: &str) -> Result<usize> {
        self.header.iter().position(|h| h == name).with_context(|| {
            format!(
                "{} has no column '{name}' (columns: {})",
                self.path.display(),
                self.header.join(", ")
            )
        })
    }

    /// Cell `col` of row `row` ("" where the row is short).
    fn cell<'a>(&self, row: &'a [String], col: usize) -> &'a str {
        row.get(col).map(|s| s.trim()).unwrap_or("")
    }

    /// The number in cell `col` (its last one when it holds several);
    /// `None` for an empty cell; an error naming file, line and column for
    /// anything else.
    fn number(&self, line: usize, row: &[String], col: usize) -> Result<Option<f64>> {
        let cell = self.cell(row, col);
        let Some(last) = cell.split_whitespace().last() else {
            return Ok(None);
        };
        last.parse::<f64>().map(Some).map_err(|_| {
            anyhow::anyhow!(
                "{} line {line}, column '{}': '{cell}' is not a number",
                self.path.display(),
                self.header[col]
            )
        })
    }
}

/// Splits CSV text into records (RFC 4180: fields in double quotes may hold
/// commas, newlines and doubled quotes), each with the line it starts on.
/// Blank lines are skipped.
fn parse_csv(text: &str) -> Result<Vec<(usize, Vec<String>)>> {
    let mut records = Vec::new();
    let mut record: Vec<String> = Vec::new();
    let mut field = String::new();
    let (mut line, mut start) = (1usize, 1usize);
    let mut quoted = false;
    let mut quote_line = 0;
    let mut chars = text.chars().peekable();
    let finish = |record: &mut Vec<String>, field: &mut String| {
        record.push(std::mem::take(field));
    };
    while let Some(c) = chars.next() {
        if quoted {
            match c {
                '"' if chars.peek() == Some(&'"') => {
                    chars.next();
                    field.push('"');
                }
                '"' => quoted = false,
                '\n' => {
                    line += 1;
                    field.push(c);
                }
                _ => field.push(c),
            }
            continue;
        }
        match c {
            '"' => {
                quoted = true;
                quote_line = line;
            }
            ',' => finish(&mut record, &mut field),
            '\r' => {}
            '\n' => {
                finish(&mut record, &mut field);
                if !(record.len() == 1 && record[0].trim().is_empty()) {
                    records.push((start, std::mem::take(&mut record)));
                }
                record.clear();
                line += 1;
                start = line;
            }
            _ => field.push(c),
        }
    }
    if quoted {
        bail!("line {quote_line}: a quoted field is never closed");
    }
    if !field.is_empty() || !record.is_empty() {
        finish(&mut record, &mut field);
        records.push((start, record));
    }
    Ok(records)
}

/// `cm plot loss`.
fn loss(args: &LossArgs) -> Result<()> {
    let table = Table::read(&args.metrics)?;
    let (step, value) = (table.column("step")?, table.column(&args.column)?);
    let mut points = Vec::new();
    for (line, row) in &table.rows {
        let (Some(s), Some(v)) = (
            table.number(*line, row, step)?,
            table.number(*line, row, value)?,
        ) else {
            continue;
        };
        if s < 0.0 || s.fract() != 0.0 {
            bail!(
                "{} line {line}, column 'step': {s} is not a step number",
                table.path.display()
            );
        }
        points.push((s as u64, v));
    }
    if points.is_empty() {
        bail!(
            "{}: no rows with both 'step' and '{}'",
            table.path.display(),
            args.column
        );
    }
    write_loss_plot(&points, &args.out)
        .with_context(|| format!("writing {}", args.out.display()))?;
    eprintln!(
        "{} points of '{}' -> {} and {}",
        points.len(),
        args.column,
        args.out.display(),
        cm_report::svg_path(&args.out).display()
    );
    Ok(())
}

/// `cm plot lines`.
fn lines(args: &LinesArgs) -> Result<()> {
    let table = Table::read(&args.csv)?;
    let (xc, yc) = (table.column(&args.x)?, table.column(&args.y)?);
    let sc = args
        .series
        .as_deref()
        .map(|s| table.column(s))
        .transpose()?;
    // Series in order of first appearance; per series, y values per x.
    let mut order: Vec<String> = Vec::new();
    let mut values: BTreeMap<usize, Vec<(f64, f64)>> = BTreeMap::new();
    let (mut empty, mut not_positive) = (Vec::new(), Vec::new());
    for (line, row) in &table.rows {
        let (Some(x), Some(y)) = (table.number(*line, row, xc)?, table.number(*line, row, yc)?)
        else {
            empty.push(*line);
            continue;
        };
        if args.log_x && x <= 0.0 {
            not_positive.push(*line);
            continue;
        }
        let name = sc
            .map(|c| table.cell(row, c).to_string())
            .unwrap_or_default();
        let i = match order.iter().position(|n| *n == name) {
            Some(i) => i,
            None => {
                order.push(name);
                order.len() - 1
            }
        };
        values.entry(i).or_default().push((x, y));
    }
    if !empty.is_empty() {
        eprintln!(
            "left out {} row(s) with an empty '{}' or '{}' (lines {:?})",
            empty.len(),
            args.x,
            args.y,
            empty
        );
    }
    if !not_positive.is_empty() {
        eprintln!(
            "left out {} row(s) with '{}' <= 0, which a log axis cannot show (lines {:?})",
            not_positive.len(),
            args.x,
            not_positive
        );
    }
    if values.is_empty() {
        bail!(
            "{}: no rows with numbers in both '{}' and '{}'",
            args.csv.display(),
            args.x,
            args.y
        );
    }
    let mut series = Vec::new();
    let mut averaged = 0;
    for (i, mut pts) in values {
        pts.sort_by(|a, b| a.0.total_cmp(&b.0));
        // Rows with equal x in one series (seeds of an ablation) are averaged.
        let mut merged: Vec<(f64, f64, usize)> = Vec::new();
        for (x, y) in pts {
            match merged.last_mut() {
                Some(m) if m.0 == x => {
                    m.1 += y;
                    m.2 += 1;
                    averaged += 1;
                }
                _ => merged.push((x, y, 1)),
            }
        }
        let label = if sc.is_some() {
            args.series_format.replace("{}", &order[i])
        } else {
            String::new()
        };
        series.push(LineSeries {
            label,
            points: merged.iter().map(|m| (m.0, m.1 / m.2 as f64)).collect(),
            color: SERIES_COLORS[i % SERIES_COLORS.len()],
        });
    }
    if averaged > 0 {
        eprintln!(
            "averaged rows with equal '{}' within a curve ({averaged} merged)",
            args.x
        );
    }
    let plot = LinePlot {
        log_x: args.log_x,
        y_from_zero: !args.y_tight,
        title: args.title.clone(),
        legend_title: args.series.clone(),
        ..LinePlot::new(
            args.x_label.clone().unwrap_or_else(|| {
                if args.log_x {
                    format!("{} (log scale)", args.x)
                } else {
                    args.x.clone()
                }
            }),
            args.y_label.clone().unwrap_or_else(|| args.y.clone()),
        )
    };
    write_line_plot(&series, &plot, &args.out).with_context(|| {
        format!(
            "plotting {} into {}",
            args.csv.display(),
            args.out.display()
        )
    })?;
    eprintln!(
        "{} curve(s) -> {} and {}",
        series.len(),
        args.out.display(),
        cm_report::svg_path(&args.out).display()
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::parse_csv;

    #[test]
    fn csv_fields_may_quote_commas_newlines_and_quotes() {
        let text = "a,b,c\n1,\"x, \"\"y\"\"\nz\",3\r\n\n4,,6";
        let r = parse_csv(text).unwrap();
        assert_eq!(r.len(), 3);
        assert_eq!(
            r[1],
            (2, vec!["1".into(), "x, \"y\"\nz".into(), "3".into()])
        );
        assert_eq!(r[2], (5, vec!["4".into(), "".into(), "6".into()]));
        assert!(parse_csv("a\n\"open").is_err());
    }
}
