//! Consistency distillation on 2-D toy data (configs/cd/toy.toml): the CD
//! model's 1-step samples are much closer to held-out data than the teacher's
//! own 1-step Euler sample, within 2x of the teacher's 35-NFE Heun distance,
//! and its 2-step samples within 1.5x; the same with ECT's continuous pairs
//! (`[cd.pairs] kind = "ect"`) in place of the fixed 18-point grid.

use cm_core::{Conditioning, Validate};
use std::sync::atomic::AtomicBool;

use cm_core::Solver;
use cm_data::{DataSource, Dataset};
use cm_distill::{run_cd, CdPairs, CdRunConfig, EctPairs};
use cm_eval::sliced_wasserstein;
use cm_nets::{Model, Preconditioned};
use cm_sample::{consistency_sample, edm_sample, EdmSampler};
use cm_train::Quiet;
use tch::{Device, Kind, Tensor};

fn toy_config() -> CdRunConfig {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../configs/cd/toy.toml");
    cm_core::load_toml(path).unwrap()
}

#[test]
fn toy_cd_one_step_approaches_the_teacher() {
    distill_and_measure(&toy_config(), "grid");
}

#[test]
fn toy_cd_with_ect_pairs_approaches_the_teacher() {
    let mut config = toy_config();
    // ECT's pairs replace the grid's N, mu and index sampler (which must
    // then be left unset); weights 1 / (t - r) as ECT's.
    let unset = cm_core::ConsistencyRecipe::cd();
    config.cd.recipe.schedule = unset.schedule;
    config.cd.recipe.noise = unset.noise;
    config.cd.recipe.weighting = cm_core::Weighting::InverseStep;
    config.cd.pairs = CdPairs::Ect(EctPairs {
        stages: cm_core::EctStages {
            stage_steps: 200,
            max_stage: 7,
        },
        ..EctPairs::default()
    });
    config.validate().unwrap();
    distill_and_measure(&config, "ect");
}

fn distill_and_measure(config: &CdRunConfig, tag: &str) {
    // The trainer reseeds libtorch's global generator: one test at a time.
    let _rng = cm_runtime::lock_global_rng();
    let dir = std::env::temp_dir().join(format!("cm-distill-toy-{tag}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let started = std::time::Instant::now();
    let out = run_cd(
        config,
        &dir.join("cd"),
        &dir.join("teachers"),
        false,
        Device::Cpu,
        &AtomicBool::new(false),
        &mut Quiet,
    )
    .unwrap();
    let secs = started.elapsed().as_secs_f64();
    assert!(out.report.as_ref().unwrap().is_file());

    let DataSource::Toy(toy) = &config.teacher.data else {
        panic!("toy config")
    };
    let Dataset::Points(data) = config.teacher.data.load(None).unwrap() else {
        panic!("points")
    };
    let n = 2000.min(data.test.len()) as i64;
    let held_out = data.test.to_tensor().narrow(0, 0, n);
    let reference = data.train.to_tensor().narrow(0, 0, n);
    assert!(toy.n_test >= n as usize);

    let teacher_ckpt = cm_train::latest_checkpoint(&out.teacher_dir).unwrap().1;
    let teacher =
        Model::from_checkpoint(teacher_ckpt.join("ema_0.995.safetensors"), Device::Cpu).unwrap();
    let edm = config.teacher.edm.edm;
    let d = Preconditioned::eval(&teacher, edm.preconditioning());
    let c = config.cd.recipe.consistency;
    let f = Preconditioned::eval(&out.train.emas[0].model, c.parameterization());
    tch::manual_seed(5);
    let z = Tensor::randn([n, 2], (Kind::Float, Device::Cpu));
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
        &EdmSampler {
            steps: 1,
            solver: Solver::Euler,
            ..Default::default()
        },
        Conditioning::none(),
    )
    .unwrap()
    .x;
    let one = consistency_sample(&f, &z, c.range(), &[], Conditioning::none()).unwrap();
    let two = consistency_sample(
        &f,
        &z,
        c.range(),
        &[config.cd.two_step_tau],
        Conditioning::none(),
    )
    .unwrap();
    assert_eq!((one.nfe, two.nfe), (1, 2));

    let sw = |x: &Tensor| sliced_wasserstein(x, &held_out, 128).unwrap();
    let (data_d, heun_d, euler_d, one_d, two_d) = (
        sw(&reference),
        sw(&heun),
        sw(&euler1),
        sw(&one.x),
        sw(&two.x),
    );
    println!(
        "toy CD, {tag} pairs ({secs:.0}s incl. teacher): sliced W2 to held-out: data {data_d:.4}, teacher Heun-35 {heun_d:.4}, \
         teacher Euler-1 {euler_d:.4}, CD 1-step {one_d:.4} ({:.2}x Heun), CD 2-step {two_d:.4} ({:.2}x Heun)",
        one_d / heun_d,
        two_d / heun_d
    );
    assert!(
        one_d < euler_d / 3.0,
        "CD 1-step {one_d} vs teacher Euler-1 {euler_d}"
    );
    assert!(
        one_d < 2.0 * heun_d,
        "CD 1-step {one_d} vs teacher Heun {heun_d}"
    );
    assert!(
        two_d < 1.5 * heun_d,
        "CD 2-step {two_d} vs teacher Heun {heun_d}"
    );
    std::fs::remove_dir_all(&dir).unwrap();
}
