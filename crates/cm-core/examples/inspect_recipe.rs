//! Prints what a consistency recipe does over training: `N(k)` and `mu(k)`
//! at a few steps, the training grid's end points, and where the pair sampler
//! puts its mass. A quick way to check a config before a long run.
//!
//! `cargo run -p cm-core --example inspect_recipe -- configs/core/ict.toml`
//! (with `cargo xtask env` exported, or through `cargo xtask`).

use std::process::ExitCode;

use cm_core::{load_toml, ConsistencyRecipe, DiscretizationSchedule, IndexSampler, ScheduleConfig};

fn main() -> ExitCode {
    let Some(path) = std::env::args().nth(1) else {
        eprintln!("usage: inspect_recipe <recipe.toml>   (e.g. configs/core/ict.toml)");
        return ExitCode::FAILURE;
    };
    let recipe: ConsistencyRecipe = match load_toml(&path) {
        Ok(r) => r,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::FAILURE;
        }
    };
    let total = match recipe.schedule {
        ScheduleConfig::Fixed(_) => 1,
        ScheduleConfig::CtAdaptive(s) => s.total_steps,
        ScheduleConfig::IctExponential(s) => s.total_steps,
    };
    let grid = recipe.consistency.grid();
    println!(
        "recipe {path}: {:?} schedule, {:?} weighting",
        recipe.schedule, recipe.weighting
    );
    println!(
        "{:>10} {:>6} {:>10} {:>12} {:>12} {:>26}",
        "step k", "N(k)", "mu(k)", "t_1", "t_N", "most likely pair (p)"
    );
    for frac in [0.0, 0.1, 0.25, 0.5, 0.75, 1.0] {
        let k = (frac * total as f64) as u64;
        let d = recipe.schedule.at(k);
        let sigmas = match grid.training_sigmas(d.n) {
            Ok(s) => s,
            Err(e) => {
                eprintln!("error: {e}");
                return ExitCode::FAILURE;
            }
        };
        let probs = recipe.noise.probabilities(&sigmas);
        let (best, p) =
            probs.iter().enumerate().fold(
                (0, 0.0),
                |acc, (i, &p)| if p > acc.1 { (i, p) } else { acc },
            );
        println!(
            "{k:>10} {:>6} {:>10.6} {:>12.6} {:>12.3} {:>14} ({p:.4})",
            d.n,
            d.mu,
            sigmas[0],
            sigmas[d.n - 1],
            format!("{:.4}->{:.4}", sigmas[best], sigmas[best + 1]),
        );
    }
    ExitCode::SUCCESS
}
