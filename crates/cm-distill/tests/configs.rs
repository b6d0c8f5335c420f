//! The distillation presets (CD and PD) parse, validate, and embed exactly
//! the teacher presets they name (so `train-cd`, `train-pd` and
//! `train-teacher` with the same preset share one teacher).

use cm_distill::{CdRunConfig, PdRunConfig};
use cm_train::TeacherConfig;

fn configs() -> std::path::PathBuf {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../configs")
}

#[test]
fn cd_presets_parse_and_embed_the_teacher_presets() {
    for preset in ["fmnist", "toy", "smoke", "cifar10"] {
        let alone: TeacherConfig =
            cm_core::load_toml(configs().join(format!("teacher/{preset}.toml"))).unwrap();
        let cd: CdRunConfig =
            cm_core::load_toml(configs().join(format!("cd/{preset}.toml"))).unwrap();
        let pd: PdRunConfig =
            cm_core::load_toml(configs().join(format!("pd/{preset}.toml"))).unwrap();
        assert_eq!(cd.teacher, alone, "configs/cd/{preset}.toml [teacher]");
        assert_eq!(pd.teacher, alone, "configs/pd/{preset}.toml [teacher]");
    }
}

/// The metric ablation's presets (`cd/fmnist-{l2,l1,feature}.toml`) are the
/// CM paper's CD recipe (`cd/fmnist-1k.toml`) with only `[cd.recipe.metric]`
/// changed, so their rows in docs/results-cd.md differ by the metric alone.
#[test]
fn cd_metric_ablation_presets_change_only_the_metric() {
    use cm_core::MetricConfig;
    let base: CdRunConfig = cm_core::load_toml(configs().join("cd/fmnist-1k.toml")).unwrap();
    assert!(matches!(
        base.cd.recipe.metric,
        MetricConfig::PseudoHuber { .. }
    ));
    for (name, metric) in [
        ("l2", MetricConfig::L2),
        ("l1", MetricConfig::L1),
        ("feature", MetricConfig::Feature),
    ] {
        let variant: CdRunConfig =
            cm_core::load_toml(configs().join(format!("cd/fmnist-{name}.toml"))).unwrap();
        assert_eq!(variant.cd.recipe.metric, metric, "cd/fmnist-{name}.toml");
        let mut same = variant.clone();
        same.cd.recipe.metric = base.cd.recipe.metric;
        assert_eq!(
            same, base,
            "cd/fmnist-{name}.toml differs beyond the metric"
        );
    }
}

/// The default CD preset is the CM paper's recipe (`cd/fmnist-1k.toml`) on
/// iCT's schedule: the N curriculum with no target EMA, lognormal pairs
/// (P_mean moved from iCT's -1.1 to -0.6) and 1/(t_(n+1) - t_n) weights,
/// 3,000 steps, three times the learning rate (6e-4), the evaluation EMA
/// 0.998 without warm-up, and the search of the 1-step start time and the
/// 2-step time after training; nothing else differs (same teacher, metric,
/// optimizer settings otherwise, and the 2-step time of the training grids).
#[test]
fn cd_default_preset_is_the_paper_recipe_on_icts_schedule() {
    use cm_core::{IndexSamplerConfig, LognormalIndex, ScheduleConfig, Weighting};
    let paper: CdRunConfig = cm_core::load_toml(configs().join("cd/fmnist-1k.toml")).unwrap();
    let default: CdRunConfig = cm_core::load_toml(configs().join("cd/fmnist.toml")).unwrap();
    let ScheduleConfig::IctExponential(s) = default.cd.recipe.schedule else {
        panic!("cd/fmnist.toml: expected the ict_exponential schedule");
    };
    assert_eq!((s.s0, s.s1, s.total_steps), (10, 320, default.train.steps));
    assert_eq!(default.train.steps, 3000);
    assert_eq!(
        default.cd.recipe.noise,
        IndexSamplerConfig::Lognormal(LognormalIndex {
            p_mean: -0.6,
            p_std: 2.0
        })
    );
    assert_eq!(default.cd.recipe.weighting, Weighting::InverseStep);
    // Three times the paper's rate, compared to within float rounding (6e-4
    // and 3 x 2e-4 differ in the last bit).
    assert!(
        (default.train.optimizer.lr - 3.0 * paper.train.optimizer.lr).abs() < 1e-12,
        "lr {} is not 3 x the paper's {}",
        default.train.optimizer.lr,
        paper.train.optimizer.lr
    );
    assert_eq!(
        (default.train.ema_rates.as_slice(), default.train.ema_warmup),
        ([0.998].as_slice(), false)
    );
    let mut same = default.clone();
    same.train.optimizer.lr = paper.train.optimizer.lr;
    same.train.ema_rates = paper.train.ema_rates.clone();
    same.train.ema_warmup = paper.train.ema_warmup;
    same.cd.recipe.schedule = paper.cd.recipe.schedule;
    same.cd.recipe.noise = paper.cd.recipe.noise;
    same.cd.recipe.weighting = paper.cd.recipe.weighting;
    same.train.steps = paper.train.steps;
    same.train.checkpoint_every = paper.train.checkpoint_every;
    // The preset ends with the FID search of its 1-step start time in
    // [10, 80] and of its 2-step time below it (CM Section 6), at `cm
    // search-timesteps`' settings; the paper's recipe keeps 80 and 0.821.
    let search = same
        .search
        .take()
        .expect("cd/fmnist.toml: a [search] section");
    assert_eq!(
        search,
        cm_train::TimestepSearchConfig {
            start_lower: Some(10.0),
            ..Default::default()
        }
    );
    assert_eq!(same, paper, "cd/fmnist.toml differs beyond the schedule");
}

/// `text` as `cd/smoke.toml` beside a copy of the smoke teacher preset it
/// includes, loaded.
fn load_smoke_variant(text: &str) -> cm_core::Result<CdRunConfig> {
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(dir.path().join("cd")).unwrap();
    std::fs::create_dir_all(dir.path().join("teacher")).unwrap();
    std::fs::copy(
        configs().join("teacher/smoke.toml"),
        dir.path().join("teacher/smoke.toml"),
    )
    .unwrap();
    std::fs::write(dir.path().join("cd/smoke.toml"), text).unwrap();
    cm_core::load_toml(dir.path().join("cd/smoke.toml"))
}

#[test]
fn bad_cd_values_name_the_field() {
    let text = std::fs::read_to_string(configs().join("cd/smoke.toml")).unwrap();
    let bad = text.replace("mu = 0.95", "mu = 1.5");
    assert!(load_smoke_variant(&text).is_ok());
    let err = load_smoke_variant(&bad).unwrap_err();
    assert!(err.to_string().contains("cd.recipe.schedule.mu"), "{err}");
    let bad = text.replace(
        "[cd]\nsolver = \"heun\"",
        "[cd]\nsolver = \"heun\"\ntwo_step_tau = 100.0",
    );
    let err = load_smoke_variant(&bad).unwrap_err();
    assert!(err.to_string().contains("cd.two_step_tau"), "{err}");
}

/// `[search]` is checked when the config loads, before any training: its
/// sizes by field, and that the teacher's data are images in pixel space.
#[test]
fn search_settings_are_checked_on_load() {
    use cm_core::Validate;
    let mut toy: CdRunConfig = cm_core::load_toml(configs().join("cd/toy.toml")).unwrap();
    toy.search = Some(cm_train::TimestepSearchConfig::default());
    let err = toy.validate().unwrap_err().to_string();
    assert!(
        err.contains("search") && err.contains("image data set"),
        "{err}"
    );
    let text = std::fs::read_to_string(configs().join("cd/smoke.toml")).unwrap();
    let ok = format!("{text}\n[search]\nsamples = 64\n");
    let config = load_smoke_variant(&ok).unwrap();
    assert_eq!(config.search.map(|s| (s.samples, s.rounds)), Some((64, 10)));
    for (bad, field) in [
        ("[search]\nsamples = 1", "search.samples"),
        ("[search]\nrounds = 31", "search.rounds"),
        ("[search]\nmax_steps = 9", "search.max_steps"),
        ("[search]\nstart_lower = 80.0", "search.start_lower"),
        ("[search]\nstart_lower = 0.001", "search.start_lower"),
        ("[search]\nstart_lower = -1.0", "search.start_lower"),
        ("[search]\nsample = 64", "unknown field `sample`"),
    ] {
        let err = load_smoke_variant(&format!("{text}\n{bad}\n")).unwrap_err();
        assert!(err.to_string().contains(field), "{bad}: {err}");
    }
}
