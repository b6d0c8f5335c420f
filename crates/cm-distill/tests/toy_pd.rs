//! Progressive distillation on 2-D toy data (configs/pd/toy.toml, 64 -> 1
//! steps): the 1-step student is within 2x of the teacher's 35-NFE Heun
//! distance to held-out data (sliced W2) and far better than the teacher's
//! own 1-step Euler; each stage's model samples with N evaluations.

use std::sync::atomic::AtomicBool;

use cm_core::{Conditioning, Solver};
use cm_data::{DataSource, Dataset};
use cm_distill::{run_pd, PdRunConfig};
use cm_eval::sliced_wasserstein;
use cm_nets::{Model, Preconditioned};
use cm_sample::{edm_sample, EdmSampler, ModelCard};
use cm_train::Quiet;
use tch::{Device, Kind, Tensor};

#[test]
fn toy_pd_one_step_approaches_the_teacher() {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../configs/pd/toy.toml");
    let config: PdRunConfig = cm_core::load_toml(path).unwrap();
    let tmp = tempfile::Builder::new()
        .prefix("cm-distill-toy-pd-")
        .tempdir()
        .unwrap();
    let started = std::time::Instant::now();
    let out = run_pd(
        &config,
        &tmp.path().join("pd"),
        &tmp.path().join("teachers"),
        false,
        Device::Cpu,
        &AtomicBool::new(false),
        &mut Quiet,
    )
    .unwrap();
    let secs = started.elapsed().as_secs_f64();
    assert_eq!(out.stages.len(), 7);

    let DataSource::Toy(_) = &config.teacher.data else {
        panic!("toy config")
    };
    let Dataset::Points(data) = config.teacher.data.load(None).unwrap() else {
        panic!("points")
    };
    let n = 2000.min(data.test.len()) as i64;
    let held_out = data.test.to_tensor().narrow(0, 0, n);
    let reference = data.train.to_tensor().narrow(0, 0, n);
    let sw = |x: &Tensor| sliced_wasserstein(x, &held_out, 128).unwrap();

    let teacher_ckpt = cm_train::latest_checkpoint(&out.teacher_dir).unwrap().1;
    let teacher =
        Model::from_checkpoint(teacher_ckpt.join("ema_0.995.safetensors"), Device::Cpu).unwrap();
    let edm = config.teacher.edm.edm;
    let d = Preconditioned::eval(&teacher, edm.preconditioning());
    tch::manual_seed(5);
    let z = Tensor::randn([n, 2], (Kind::Float, Device::Cpu));
    let teacher_with = |steps: usize, solver: Solver| {
        let s = EdmSampler {
            steps,
            solver,
            ..Default::default()
        };
        edm_sample(&d, &z, &edm.grid(), &s, Conditioning::none())
            .unwrap()
            .x
    };
    let (data_d, heun_d, euler1_d) = (
        sw(&reference),
        sw(&teacher_with(18, Solver::Heun)),
        sw(&teacher_with(1, Solver::Euler)),
    );
    let mut line = format!(
        "toy PD ({secs:.0}s incl. teacher): sliced W2 to held-out: data {data_d:.4}, teacher Heun-35 {heun_d:.4}, teacher Euler-1 {euler1_d:.4}"
    );
    let mut by_steps = std::collections::BTreeMap::new();
    for stage in &out.stages {
        let card = ModelCard::load(&stage.card).unwrap();
        let model = card.load_model(Device::Cpu).unwrap();
        let sampled = card
            .sample(&model, &z, stage.steps, Conditioning::none())
            .unwrap();
        assert_eq!(sampled.nfe, stage.steps);
        let dist = sw(&sampled.x);
        line.push_str(&format!(", PD {} step(s) {dist:.4}", stage.steps));
        by_steps.insert(stage.steps, dist);
    }
    println!("{line}");
    let one = by_steps[&1];
    assert!(
        one < euler1_d / 3.0,
        "PD 1-step {one} vs teacher Euler-1 {euler1_d}"
    );
    assert!(
        one < 2.0 * heun_d,
        "PD 1-step {one} vs teacher Heun-35 {heun_d}"
    );
}
