//! The smoke preset of `cargo xtask train-cd` runs end to end (teacher,
//! distillation, grids, report), and a second run reuses the finished
//! teacher and ends with the `[search]` stage (the 2-step time by FID,
//! stored in the card and used by the report's grid).

mod common;

use std::sync::atomic::AtomicBool;

use cm_distill::{run_cd, CdRunConfig};
use cm_train::Quiet;
use tch::Device;

#[test]
fn smoke_pipeline_runs_and_reuses_its_teacher() {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../configs/cd/smoke.toml");
    let config: CdRunConfig = cm_core::load_toml(path).unwrap();
    let dir = std::env::temp_dir().join(format!("cm-distill-smoke-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let never = AtomicBool::new(false);
    let started = std::time::Instant::now();
    let out = run_cd(
        &config,
        &dir.join("cd"),
        &dir.join("teachers"),
        false,
        Device::Cpu,
        &never,
        &mut Quiet,
    )
    .unwrap();
    println!("smoke train-cd: {:.1}s", started.elapsed().as_secs_f64());
    assert!(!out.teacher_reused);
    let report = std::fs::read_to_string(out.report.unwrap()).unwrap();
    for file in [
        "samples_teacher_heun35.png",
        "samples_cd_1step.png",
        "samples_cd_2step.png",
        "loss.png",
    ] {
        assert!(dir.join("cd").join(file).is_file(), "{file} missing");
        assert!(
            report.contains(file) || file == "loss.png",
            "report lacks {file}"
        );
    }
    assert!(report.contains("| CD, 1 step | 1 |"), "{report}");
    // The second run adds the search stage, on a small feature network.
    let mut searched = config.clone();
    searched.search = Some(cm_train::TimestepSearchConfig {
        samples: 64,
        rounds: 2,
        start_lower: Some(20.0),
        classifier: common::tiny_feature_network(),
        ..Default::default()
    });
    let again = run_cd(
        &searched,
        &dir.join("cd2"),
        &dir.join("teachers"),
        false,
        Device::Cpu,
        &never,
        &mut Quiet,
    )
    .unwrap();
    assert!(again.teacher_reused, "the finished teacher was not reused");
    // The card holds the best of the probes the report lists.
    let card = cm_sample::ModelCard::load(again.card.unwrap()).unwrap();
    let cm_sample::ModelCard::Consistency {
        timesteps,
        consistency,
        ..
    } = card
    else {
        panic!("expected a consistency card");
    };
    let tau = timesteps["2"][0];
    let report = std::fs::read_to_string(again.report.unwrap()).unwrap();
    assert!(
        report.contains("few-step times searched by FID"),
        "{report}"
    );
    let listed = |label: &str| -> Vec<(f64, f64)> {
        report
            .lines()
            .find_map(|l| l.split(label).nth(1))
            .unwrap_or_else(|| panic!("the report lists {label}"))
            .split(", ")
            .map(|p| {
                let (t, f) = p.split_once(" -> ").unwrap();
                (t.parse().unwrap(), f.trim().parse().unwrap())
            })
            .collect()
    };
    // The start time: sigma_max probed first, the card's sigma_max the
    // best start probe, in [start_lower, sigma_max].
    let starts = listed("start probes (T -> FID): ");
    assert_eq!(starts.len(), 1 + 2 + 2, "{starts:?}");
    assert_eq!(starts[0].0, config.cd.recipe.consistency.sigma_max);
    let start = consistency.sigma_max;
    assert!((20.0..=80.0).contains(&start), "{start}");
    assert_kept_the_best(&starts, start);
    let probes = listed("probes (taus -> FID): ");
    assert_eq!(probes.len(), 2 + 2, "rounds + 2 probes: {probes:?}");
    assert_kept_the_best(&probes, tau);
    assert!(
        tau > 0.01 && tau < start / 2.0 + 1e-9,
        "{tau} for start {start}"
    );
    assert!(
        report.contains(&format!(
            "2-step sampling re-noises to tau = {}",
            config.cd.two_step_tau
        )),
        "{report}"
    );
    std::fs::remove_dir_all(&dir).unwrap();
}

/// `kept` (the card's time) is a probe at the lowest FID of `probes`
/// (`(time, FID)` as the report rounds them: any probe at the lowest FID
/// may be the one kept).
fn assert_kept_the_best(probes: &[(f64, f64)], kept: f64) {
    let lowest = probes.iter().map(|p| p.1).fold(f64::INFINITY, f64::min);
    assert!(
        probes
            .iter()
            .any(|p| p.1 == lowest && (p.0 - kept).abs() <= 1e-4 * (1.0 + kept)),
        "card {kept}, probes {probes:?}"
    );
}
