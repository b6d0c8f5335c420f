//! Easy consistency tuning end to end: on 2-D toy data (configs/ect/toy.toml)
//! the ECT model's 1-step samples come within 1.5x of the teacher's 35-NFE
//! Heun samples in sliced Wasserstein distance to held-out data (and far
//! closer than the teacher's own 1-step Euler sample); the Fashion-MNIST
//! smoke preset runs the whole pipeline (teacher, tuning, grids, report,
//! card) and its card samples; the presets validate, and a student whose
//! noise settings differ from its teacher's is refused by name.

use std::path::Path;
use std::sync::atomic::AtomicBool;

use cm_core::{Conditioning, Solver, Validate};
use cm_data::{DataSource, Dataset};
use cm_eval::sliced_wasserstein;
use cm_nets::{Model, Preconditioned};
use cm_sample::{consistency_sample, edm_sample, EdmSampler};
use cm_train::{run_ect, EctRunConfig, Quiet};
use tch::{Device, Kind, Tensor};

fn preset(name: &str) -> EctRunConfig {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join(format!("../../configs/ect/{name}.toml"));
    cm_core::load_toml(path).unwrap()
}

#[test]
fn toy_ect_one_step_comes_within_1_5x_of_the_teachers_heun() {
    let _rng = cm_runtime::lock_global_rng();
    let config = preset("toy");
    let dir = std::env::temp_dir().join(format!("cm-train-ect-toy-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let started = std::time::Instant::now();
    let out = run_ect(
        &config,
        &dir.join("ect"),
        &dir.join("teachers"),
        false,
        Device::Cpu,
        &AtomicBool::new(false),
        &mut Quiet,
    )
    .unwrap();
    let secs = started.elapsed().as_secs_f64();
    assert!(out.report.as_ref().unwrap().is_file());

    let Dataset::Points(data) = config.teacher.data.load(None).unwrap() else {
        panic!("points")
    };
    let DataSource::Toy(toy) = &config.teacher.data else {
        panic!("toy config")
    };
    let n = 2000.min(data.test.len()) as i64;
    assert!(toy.n_test >= n as usize);
    let held_out = data.test.to_tensor().narrow(0, 0, n);

    let teacher_ckpt = cm_train::latest_checkpoint(&out.teacher_dir).unwrap().1;
    let teacher =
        Model::from_checkpoint(teacher_ckpt.join("ema_0.995.safetensors"), Device::Cpu).unwrap();
    let edm = config.teacher.edm.edm;
    let d = Preconditioned::eval(&teacher, edm.preconditioning());
    let c = config.ect.consistency;
    let f = Preconditioned::eval(&out.train.emas[0].model, c.parameterization());
    tch::manual_seed(5);
    let z = Tensor::randn([n, 2], (Kind::Float, Device::Cpu));
    let sampler = |steps, solver| EdmSampler {
        steps,
        solver,
        ..Default::default()
    };
    let heun = edm_sample(
        &d,
        &z,
        &edm.grid(),
        &EdmSampler::default(),
        Conditioning::none(),
    )
    .unwrap()
    .x;
    let euler1 = edm_sample(
        &d,
        &z,
        &edm.grid(),
        &sampler(1, Solver::Euler),
        Conditioning::none(),
    )
    .unwrap()
    .x;
    let one = consistency_sample(&f, &z, c.range(), &[], Conditioning::none()).unwrap();
    let two = consistency_sample(
        &f,
        &z,
        c.range(),
        &[config.ect.two_step_tau],
        Conditioning::none(),
    )
    .unwrap();
    assert_eq!((one.nfe, two.nfe), (1, 2));

    let sw = |x: &Tensor| sliced_wasserstein(x, &held_out, 128).unwrap();
    let (heun_d, euler_d, one_d, two_d) = (sw(&heun), sw(&euler1), sw(&one.x), sw(&two.x));
    println!(
        "toy ECT ({secs:.0}s incl. teacher): sliced W2 to held-out: teacher Heun-35 {heun_d:.4}, \
         teacher Euler-1 {euler_d:.4}, ECT 1-step {one_d:.4} ({:.2}x Heun), ECT 2-step {two_d:.4} ({:.2}x Heun)",
        one_d / heun_d,
        two_d / heun_d
    );
    assert!(
        one_d < euler_d / 3.0,
        "ECT 1-step {one_d} vs teacher Euler-1 {euler_d}"
    );
    assert!(
        one_d < 1.5 * heun_d,
        "ECT 1-step {one_d} vs teacher Heun {heun_d}"
    );
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn the_smoke_preset_runs_the_whole_pipeline_and_its_card_samples() {
    let _rng = cm_runtime::lock_global_rng();
    let config = preset("smoke");
    let dir = std::env::temp_dir().join(format!("cm-train-ect-smoke-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let out = run_ect(
        &config,
        &dir.join("ect"),
        &dir.join("teachers"),
        false,
        Device::Cpu,
        &AtomicBool::new(false),
        &mut Quiet,
    )
    .unwrap();
    assert_eq!(out.train.step, 100);
    let report = std::fs::read_to_string(out.report.unwrap()).unwrap();
    for file in [
        "samples_teacher_heun35.png",
        "samples_ect_1step.png",
        "samples_ect_2step.png",
    ] {
        assert!(dir.join("ect").join(file).is_file(), "{file} missing");
        assert!(report.contains(file), "report lacks {file}");
    }
    assert!(report.contains("easy consistency tuning"), "{report}");
    assert!(report.contains("stage s = min(step / 25, 3)"), "{report}");
    let pipeline = cm_sample::Pipeline::load(out.card.unwrap(), Device::Cpu).unwrap();
    let images = pipeline.generate(4, 2, 7).unwrap();
    assert_eq!(images.size(), [4, 1, 28, 28]);
    assert!(bool::try_from(images.isfinite().all()).unwrap());

    // The learned perceptual distance as ECT's metric: the same teacher
    // (reused), a few steps, finite losses that move the weights.
    let mut feature = config.clone();
    feature.ect.metric = cm_core::MetricConfig::Feature;
    feature.train.steps = 4;
    feature.train.checkpoint_every = 4;
    let out = run_ect(
        &feature,
        &dir.join("ect-feature"),
        &dir.join("teachers"),
        false,
        Device::Cpu,
        &AtomicBool::new(false),
        &mut Quiet,
    )
    .unwrap();
    assert!(out.teacher_reused);
    assert_eq!(out.train.losses.len(), 4);
    assert!(
        out.train
            .losses
            .iter()
            .all(|(_, l)| l.is_finite() && *l > 0.0),
        "{:?}",
        out.train.losses
    );
    let report = std::fs::read_to_string(out.report.unwrap()).unwrap();
    assert!(report.contains("learned perceptual"), "{report}");
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn presets_validate_and_a_student_off_its_teachers_noise_is_refused() {
    let _rng = cm_runtime::lock_global_rng();
    for name in ["toy", "smoke", "fmnist", "fmnist-2k", "fmnist-feature"] {
        preset(name)
            .validate()
            .unwrap_or_else(|e| panic!("{name}: {e}"));
    }
    // The metric ablation's ECT row differs from the 2,000-step preset by
    // the distance alone, and that one from the default by its length.
    let mut feature = preset("fmnist-feature");
    assert_eq!(feature.ect.metric, cm_core::MetricConfig::Feature);
    let short = preset("fmnist-2k");
    feature.ect.metric = short.ect.metric;
    assert_eq!(feature, short);
    let mut long = preset("fmnist");
    assert_eq!((long.train.steps, long.ect.stages.stage_steps), (4000, 500));
    long.train.steps = 2000;
    long.ect.stages.stage_steps = 250;
    assert_eq!(long, short);
    let mut c = preset("toy");
    c.ect.consistency.sigma_max = 40.0;
    let err = c.validate().unwrap_err().to_string();
    assert!(
        err.contains("ect.consistency.sigma_max") && err.contains("teacher.edm.edm.sigma_max"),
        "{err}"
    );
    let mut c = preset("toy");
    c.ect.mapping.q = 0.5;
    assert!(c
        .validate()
        .unwrap_err()
        .to_string()
        .contains("ect.mapping.q"));
    let mut c = preset("toy");
    c.ect.two_step_tau = 100.0;
    assert!(c
        .validate()
        .unwrap_err()
        .to_string()
        .contains("ect.two_step_tau"));
    let mut c = preset("toy");
    c.ect.stages.max_stage = 20;
    let err = c.validate().unwrap_err().to_string();
    assert!(err.contains("ect.stages.max_stage"), "{err}");
    c.ect.stages.max_stage = 15;
    c.validate().unwrap();
    let mut c = preset("toy");
    c.ect.adaptive.p = 2.0;
    assert!(c
        .validate()
        .unwrap_err()
        .to_string()
        .contains("ect.adaptive.p"));
}
