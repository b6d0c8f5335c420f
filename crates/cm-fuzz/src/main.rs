//! `cm-fuzz`: the long fuzz run (docs/reliability.md).
//!
//! ```sh
//! cargo run --release -p cm-fuzz -- [--cases N] [--seed S] [--target NAME] [--out DIR]
//! ```
//!
//! Runs `N` cases (default 10,000) of every target (or one), prints cases,
//! errors, values, panics, the slowest case and the peak resident memory of
//! the process, and writes every panicking input into `DIR` (default
//! `fuzz-failures/`). Exits 1 if any case panicked or the peak resident
//! memory reached `cm_fuzz::MAX_PEAK_RSS` (1 GiB).

use std::process::ExitCode;

use anyhow::{bail, Context, Result};

fn main() -> ExitCode {
    match run() {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::FAILURE,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn run() -> Result<bool> {
    let mut cases = 10_000usize;
    let mut seed = cm_fuzz::DEFAULT_SEED;
    let mut only: Option<String> = None;
    let mut out = std::path::PathBuf::from("fuzz-failures");
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        let mut value = |name: &str| args.next().with_context(|| format!("{name} needs a value"));
        match a.as_str() {
            "--cases" => cases = value("--cases")?.parse().context("--cases")?,
            "--seed" => seed = value("--seed")?.parse().context("--seed")?,
            "--target" => only = Some(value("--target")?),
            "--out" => out = value("--out")?.into(),
            "-h" | "--help" => {
                println!("cm-fuzz [--cases N] [--seed S] [--target NAME] [--out DIR]");
                println!("targets: {}", cm_fuzz::TARGETS.join(", "));
                return Ok(true);
            }
            other => bail!("unknown argument `{other}` (try --help)"),
        }
    }
    if !(1..=10_000_000).contains(&cases) {
        bail!("--cases {cases}: expected 1 to 10000000");
    }
    tch::set_num_threads(1);
    let targets: Vec<&str> = match &only {
        Some(t) if cm_fuzz::TARGETS.contains(&t.as_str()) => vec![t.as_str()],
        Some(t) => bail!(
            "--target {t}: expected one of {}",
            cm_fuzz::TARGETS.join(", ")
        ),
        None => cm_fuzz::TARGETS.to_vec(),
    };
    let mut clean = true;
    for target in targets {
        let report = cm_fuzz::fuzz(target, cases, seed, Some(&out))?;
        println!("{report}");
        clean &= report.panics == 0;
    }
    println!("peak resident memory: {}", cm_fuzz::peak_rss());
    match cm_fuzz::peak_rss_bytes() {
        Some(peak) if peak >= cm_fuzz::MAX_PEAK_RSS => {
            println!(
                "peak resident memory {peak} bytes is above the bound of {} bytes",
                cm_fuzz::MAX_PEAK_RSS
            );
            clean = false;
        }
        Some(_) => {}
        None => println!("peak resident memory unknown: the bound was not checked"),
    }
    Ok(clean)
}
