//! `cm eval`: sample quality of model cards against the test split
//! (cm-eval's pipeline), with progress bars, the results table (markdown and
//! CSV), a sample grid per row and the FID-against-NFE plot.

use std::collections::BTreeMap;
use std::path::PathBuf;

use anyhow::{Context, Result};

use cm_eval::pipeline::{results_csv, results_markdown, results_table, write_text};
use cm_eval::{evaluate_cached, EvalConfig};
use cm_report::{
    write_image_grid, write_image_grid_with_columns, write_line_plot, LinePlot, LineSeries,
    SERIES_COLORS,
};

/// Arguments of `cm eval`.
#[derive(Debug, clap::Args)]
pub struct EvalArgs {
    /// TOML config (configs/eval/*.toml; fields in docs/eval.md).
    #[arg(long, short)]
    pub config: PathBuf,
    /// Output folder: results.md, results.csv, fid_vs_nfe.png, sample grids.
    #[arg(long)]
    pub out: PathBuf,
    /// Override the config's samples per row (N); models with their own
    /// `samples` keep it.
    #[arg(long)]
    pub samples: Option<usize>,
    /// Sample every row again instead of reusing the sample features cached
    /// in OUT/cache (a row is reused only when its card, weights, sampler,
    /// N, seed, batch size, device and feature network are unchanged).
    #[arg(long)]
    pub no_cache: bool,
    /// Where to run.
    #[arg(long, value_enum, default_value = "auto")]
    pub device: crate::DeviceArg,
    /// libtorch intra-op threads: `auto` (one per core available to this
    /// process) or a count.
    #[arg(long, default_value = "auto")]
    pub threads: cm_runtime::Threads,
}

/// Runs `cm eval`.
pub fn eval(args: &EvalArgs) -> Result<()> {
    crate::set_threads(args.threads)?;
    let mut config: EvalConfig = cm_core::load_toml(&args.config)
        .with_context(|| format!("loading {}", args.config.display()))?;
    if let Some(n) = args.samples {
        config.samples = n;
        cm_core::Validate::validate(&config).context("--samples")?;
    }
    let device = crate::device(args.device)?;
    let device_name = crate::device_name(device);
    eprintln!(
        "evaluating {}, {} per row, on {device_name} into {}",
        crate::progress::count(config.models.len() as u64, "model", "models"),
        crate::progress::count(config.samples as u64, "sample", "samples"),
        args.out.display()
    );
    let mut bars = crate::progress::Bars::new();
    let cache = args.out.join("cache");
    let out = evaluate_cached(
        &config,
        device,
        (!args.no_cache).then_some(cache.as_path()),
        &mut bars,
    )
    .with_context(|| format!("evaluation of {}", args.config.display()))?;
    std::fs::create_dir_all(&args.out)
        .with_context(|| format!("creating {}", args.out.display()))?;
    for (row, grid) in out.rows.iter().zip(&out.grids) {
        if grid.dim() == 4 {
            let path = args.out.join(&row.grid);
            // Class-conditional rows sample classes cycling (image i gets
            // class i mod K): K columns make it a grid per class.
            let k = out.classifier.num_classes;
            let n = grid.size()[0];
            let written = if row.nfe > 0 && row.class_accuracy.is_some() && n >= k {
                write_image_grid_with_columns(&grid.narrow(0, 0, n / k * k), k, &path)
            } else {
                write_image_grid(grid, &path)
            };
            written.with_context(|| format!("writing {}", path.display()))?;
        }
    }
    // FID against NFE, one curve per model (data rows have no NFE).
    let mut curves: BTreeMap<usize, (String, Vec<(f64, f64)>)> = BTreeMap::new();
    let mut order: Vec<String> = Vec::new();
    for r in out.rows.iter().filter(|r| r.nfe > 0) {
        if !order.contains(&r.model) {
            order.push(r.model.clone());
        }
        let i = order.iter().position(|m| m == &r.model).unwrap_or(0);
        curves
            .entry(i)
            .or_insert_with(|| (r.model.clone(), Vec::new()))
            .1
            .push((r.nfe as f64, r.fid));
    }
    let mut series = Vec::new();
    for (i, (label, mut points)) in curves {
        points.sort_by(|a, b| a.0.total_cmp(&b.0));
        let color = SERIES_COLORS[i % SERIES_COLORS.len()];
        series.push(LineSeries {
            label,
            points,
            color,
        });
    }
    let plot = args.out.join("fid_vs_nfe.png");
    if !series.is_empty() {
        let axes = LinePlot {
            log_x: true,
            legend_title: Some("model".into()),
            ..LinePlot::new("NFE (log scale)", "FID")
        };
        write_line_plot(&series, &axes, &plot)
            .with_context(|| format!("writing {}", plot.display()))?;
    }
    let command = format!(
        "cm eval --config {} --out {}{}",
        args.config.display(),
        args.out.display(),
        args.samples
            .map(|n| format!(" --samples {n}"))
            .unwrap_or_default()
    );
    let mut md = results_markdown(&out, &command);
    if !series.is_empty() {
        md.push_str(
            "\nPlot: fid_vs_nfe.png (and .svg), FID against NFE (log scale), one curve per model.\n",
        );
    }
    let md_path = args.out.join("results.md");
    write_text(&md_path, &md).with_context(|| format!("writing {}", md_path.display()))?;
    // The table alone, for documents that show it (cargo xtask compare
    // pastes it into docs/results.md).
    let table_path = args.out.join("results_table.md");
    write_text(&table_path, &results_table(&out))
        .with_context(|| format!("writing {}", table_path.display()))?;
    let csv_path = args.out.join("results.csv");
    write_text(&csv_path, &results_csv(&out))
        .with_context(|| format!("writing {}", csv_path.display()))?;
    eprintln!(
        "{}",
        md.lines()
            .filter(|l| l.starts_with('|'))
            .collect::<Vec<_>>()
            .join("\n")
    );
    eprintln!("results in {}", md_path.display());
    Ok(())
}
