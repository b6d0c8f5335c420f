//! `cargo xtask bench-report`: what changed since the previous criterion
//! run. Criterion compares each benchmark with the last run it finds in
//! `target/criterion/<id>/base` and writes the relative change of the mean
//! to `<id>/change/estimates.json`; this command collects those changes,
//! flags slowdowns above [`THRESHOLD`] as regressions and prints a table
//! (also appended to `$GITHUB_STEP_SUMMARY` in GitHub Actions). It reports
//! and never fails: timings on shared CI runners are too noisy to gate on.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use crate::args::Args;
use crate::workspace;

/// The commands of this group.
pub const COMMANDS: &[&str] = &["bench-report"];

/// A slowdown above this fraction of the previous mean is a regression.
pub const THRESHOLD: f64 = 0.10;

/// One benchmark's comparison with the previous run.
#[derive(Debug, Clone, PartialEq)]
pub struct Change {
    /// Criterion's id (`group/function/parameter`).
    pub id: String,
    /// Relative change of the mean time (0.12 = 12% slower).
    pub mean: f64,
    /// The 95% confidence interval of that change.
    pub interval: (f64, f64),
    /// The new mean time in nanoseconds, when known.
    pub new_ns: Option<f64>,
}

/// The number after `"key":` inside the object that follows `"section":`.
pub fn estimate(json: &str, section: &str, key: &str) -> Option<f64> {
    let at = json.find(&format!("\"{section}\""))?;
    let rest = &json[at..];
    let k = rest.find(&format!("\"{key}\""))? + key.len() + 2;
    let rest = rest[k..].trim_start().strip_prefix(':')?.trim_start();
    let end = rest
        .find(|c: char| !(c.is_ascii_digit() || "+-.eE".contains(c)))
        .unwrap_or(rest.len());
    rest[..end].parse().ok()
}

/// Every `change/estimates.json` under `dir`, as changes, sorted by id.
pub fn collect(dir: &Path) -> Vec<Change> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        let Ok(entries) = std::fs::read_dir(&d) else {
            continue;
        };
        for e in entries.flatten() {
            let p = e.path();
            if !p.is_dir() || e.file_type().is_ok_and(|t| t.is_symlink()) {
                continue;
            }
            if p.file_name().is_some_and(|n| n == "change") {
                if let Some(c) = read_change(dir, &p) {
                    out.push(c);
                }
            } else {
                stack.push(p);
            }
        }
    }
    out.sort_by(|a, b| a.id.cmp(&b.id));
    out
}

fn read_change(root: &Path, change_dir: &Path) -> Option<Change> {
    let json = std::fs::read_to_string(change_dir.join("estimates.json")).ok()?;
    let mean = estimate(&json, "mean", "point_estimate")?;
    let lo = estimate(&json, "mean", "lower_bound").unwrap_or(mean);
    let hi = estimate(&json, "mean", "upper_bound").unwrap_or(mean);
    let bench_dir = change_dir.parent()?;
    let new_ns = std::fs::read_to_string(bench_dir.join("new").join("estimates.json"))
        .ok()
        .and_then(|j| estimate(&j, "mean", "point_estimate"));
    let id = bench_dir
        .strip_prefix(root)
        .ok()?
        .components()
        .map(|c| c.as_os_str().to_string_lossy().into_owned())
        .collect::<Vec<_>>()
        .join("/");
    Some(Change {
        id,
        mean,
        interval: (lo, hi),
        new_ns,
    })
}

fn human_ns(ns: f64) -> String {
    if ns >= 1e9 {
        format!("{:.3} s", ns / 1e9)
    } else if ns >= 1e6 {
        format!("{:.2} ms", ns / 1e6)
    } else if ns >= 1e3 {
        format!("{:.1} µs", ns / 1e3)
    } else {
        format!("{ns:.0} ns")
    }
}

/// The markdown report of `changes`: regressions first, then the rest.
pub fn report(changes: &[Change]) -> String {
    let mut md = String::from("## Benchmarks against the previous run\n\n");
    if changes.is_empty() {
        md.push_str(
            "No previous run to compare with (criterion wrote no `change/` folders): \
             this run is the baseline for the next.\n",
        );
        return md;
    }
    let regressions: Vec<&Change> = changes
        .iter()
        .filter(|c| c.interval.0 > THRESHOLD)
        .collect();
    let _ = writeln!(
        md,
        "{} benchmarks compared; {} slower by more than {:.0}% (the whole 95% interval above it).\n",
        changes.len(),
        regressions.len(),
        THRESHOLD * 100.0
    );
    md.push_str("| benchmark | now | change of the mean | 95% interval | |\n");
    md.push_str("| --- | ---: | ---: | ---: | --- |\n");
    let mut ordered: Vec<&Change> = changes.iter().collect();
    ordered.sort_by(|a, b| b.mean.total_cmp(&a.mean));
    for c in ordered {
        let flag = if c.interval.0 > THRESHOLD {
            "**regression**"
        } else if c.interval.1 < -THRESHOLD {
            "faster"
        } else {
            ""
        };
        let _ = writeln!(
            md,
            "| `{}` | {} | {:+.1}% | {:+.1}% .. {:+.1}% | {flag} |",
            c.id,
            c.new_ns.map_or("?".into(), human_ns),
            100.0 * c.mean,
            100.0 * c.interval.0,
            100.0 * c.interval.1
        );
    }
    md
}

/// Runs `cargo xtask bench-report [--out DIR]` (DIR: the criterion folder,
/// default `target/criterion`).
pub fn run(args: &Args) -> Result<ExitCode, String> {
    let root = workspace::root()?;
    let dir = match &args.out {
        Some(d) => PathBuf::from(d),
        None => std::env::var_os("CARGO_TARGET_DIR")
            .map(PathBuf::from)
            .unwrap_or_else(|| root.join("target"))
            .join("criterion"),
    };
    let changes = collect(&dir);
    let md = report(&changes);
    print!("{md}");
    if let Some(summary) = std::env::var_os("GITHUB_STEP_SUMMARY") {
        use std::io::Write;
        let written = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&summary)
            .and_then(|mut f| f.write_all(md.as_bytes()));
        if let Err(e) = written {
            eprintln!("xtask: cannot append to $GITHUB_STEP_SUMMARY: {e}");
        }
    }
    Ok(ExitCode::SUCCESS)
}

#[cfg(test)]
mod tests {
    use super::*;

    const CHANGE: &str = r#"{"mean":{"confidence_interval":{"confidence_level":0.95,"lower_bound":0.121,"upper_bound":0.2},"point_estimate":0.15,"standard_error":0.02},"median":{"confidence_interval":{"confidence_level":0.95,"lower_bound":-0.5,"upper_bound":0.5},"point_estimate":-0.3,"standard_error":0.1}}"#;

    #[test]
    fn reads_criterion_estimates() {
        assert_eq!(estimate(CHANGE, "mean", "point_estimate"), Some(0.15));
        assert_eq!(estimate(CHANGE, "mean", "lower_bound"), Some(0.121));
        assert_eq!(estimate(CHANGE, "median", "point_estimate"), Some(-0.3));
        assert_eq!(estimate(CHANGE, "slope", "point_estimate"), None);
        assert_eq!(
            estimate(
                r#"{"mean":{"point_estimate":1.5e6}}"#,
                "mean",
                "point_estimate"
            ),
            Some(1.5e6)
        );
    }

    #[test]
    fn collects_changes_and_flags_regressions() {
        let dir = std::env::temp_dir().join(format!("xtask-bench-report-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let slow = dir.join("fmnist-unet").join("forward_no_grad").join("64");
        let same = dir.join("core").join("pseudo_huber");
        for (d, change) in [
            (&slow, CHANGE.to_string()),
            (
                &same,
                CHANGE.replace("0.121", "-0.05").replace("0.15", "0.01"),
            ),
        ] {
            std::fs::create_dir_all(d.join("change")).unwrap();
            std::fs::create_dir_all(d.join("new")).unwrap();
            std::fs::write(d.join("change").join("estimates.json"), change).unwrap();
            std::fs::write(
                d.join("new").join("estimates.json"),
                r#"{"mean":{"point_estimate":82100000.0}}"#,
            )
            .unwrap();
        }
        let changes = collect(&dir);
        assert_eq!(changes.len(), 2);
        assert_eq!(changes[1].id, "fmnist-unet/forward_no_grad/64");
        assert_eq!(changes[1].new_ns, Some(82.1e6));
        let md = report(&changes);
        assert!(md.contains("1 slower by more than 10%"), "{md}");
        assert!(md.contains("| `fmnist-unet/forward_no_grad/64` | 82.10 ms | +15.0% | +12.1% .. +20.0% | **regression** |"), "{md}");
        assert!(!md
            .contains("`core/pseudo_huber` | 82.10 ms | +1.0% | -5.0% .. +20.0% | **regression**"));
        std::fs::remove_dir_all(&dir).unwrap();
        assert!(report(&[]).contains("No previous run"));
    }
}
