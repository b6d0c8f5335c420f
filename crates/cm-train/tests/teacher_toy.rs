//! The EDM teacher on 2-D toy data: after a few thousand steps its 35-NFE
//! Heun samples are about as close to held-out data as a second data sample
//! is, and much closer than its own 1-step Euler samples.

mod common;

use cm_core::Conditioning;
use std::sync::atomic::AtomicBool;

use cm_core::Solver;
use cm_eval::{energy_distance, mode_coverage, sliced_wasserstein};
use cm_nets::{Model, NetConfig, Preconditioned};
use cm_sample::{edm_sample, EdmSampler};
use cm_train::{train, EdmObjective, OptimizerConfig, Quiet, TensorSource, TrainConfig};
use common::{eight_gaussians, temp_dir};
use tch::{Device, Kind, Tensor};

/// Allowed ratio of (teacher vs held-out) to (data vs held-out) distance.
const FACTOR: f64 = 2.0;

#[test]
fn toy_teacher_matches_the_data() {
    let (train_data, centers) = eight_gaussians(20_000, 1);
    let (held_out, _) = eight_gaussians(2_000, 2);
    let (reference, _) = eight_gaussians(2_000, 3);
    let source = TensorSource::new(train_data, None, 256, 7).unwrap();
    let cfg = TrainConfig {
        steps: 3000,
        batch_size: 256,
        seed: 0,
        optimizer: OptimizerConfig {
            lr: 2e-3,
            warmup_steps: 100,
            ..Default::default()
        },
        ema_rates: vec![0.995],
        checkpoint_every: 3000,
        keep_last: 1,
        sample_count: 512,
        log_every: 100,
        ..TrainConfig::default()
    };
    tch::manual_seed(0);
    let model = Model::new(NetConfig::preset("toy-mlp").unwrap(), Device::Cpu).unwrap();
    let dir = temp_dir("teacher-toy");
    let mut objective = EdmObjective {
        config: Default::default(),
    };
    let started = std::time::Instant::now();
    let out = train(
        &mut objective,
        model,
        &source,
        &cfg,
        &dir,
        false,
        &AtomicBool::new(false),
        &mut Quiet,
    )
    .unwrap();
    let train_s = started.elapsed().as_secs_f64();
    assert!(dir.join("loss.png").is_file() && dir.join("samples/step_0003000.png").is_file());

    let edm = objective.config.edm;
    let denoiser = Preconditioned::eval(&out.emas[0].model, edm.preconditioning());
    tch::manual_seed(42);
    let latents = Tensor::randn([2000, 2], (Kind::Float, Device::Cpu));
    let heun = edm_sample(
        &denoiser,
        &latents,
        &edm.grid(),
        &EdmSampler::default(),
        Conditioning::none(),
    )
    .unwrap();
    assert_eq!(heun.nfe, 35);
    let euler1 = EdmSampler {
        steps: 1,
        solver: Solver::Euler,
        ..Default::default()
    };
    let one = edm_sample(
        &denoiser,
        &latents,
        &edm.grid(),
        &euler1,
        Conditioning::none(),
    )
    .unwrap();
    assert_eq!(one.nfe, 1);

    let baseline = sliced_wasserstein(&reference, &held_out, 128).unwrap();
    let teacher = sliced_wasserstein(&heun.x, &held_out, 128).unwrap();
    let one_step = sliced_wasserstein(&one.x, &held_out, 128).unwrap();
    let (covered, in_modes) = mode_coverage(&heun.x, &centers, 0.5, 20);
    println!(
        "toy EDM teacher ({train_s:.1}s, 3000 steps): sliced W2 to held-out: data {baseline:.4}, \
         Heun-35 {teacher:.4} ({:.2}x), Euler-1 {one_step:.4}; energy: data {:.5}, Heun {:.5}; \
         modes covered {covered}/8, {:.1}% of samples within 0.5 of a mode",
        teacher / baseline,
        energy_distance(&reference, &held_out),
        energy_distance(&heun.x, &held_out),
        100.0 * in_modes
    );
    assert!(
        teacher < FACTOR * baseline,
        "teacher {teacher} vs data {baseline}"
    );
    assert!(
        one_step > 3.0 * teacher,
        "1-step Euler {one_step} should be far worse than Heun {teacher}"
    );
    assert_eq!(covered, 8);
    std::fs::remove_dir_all(dir).unwrap();
}
