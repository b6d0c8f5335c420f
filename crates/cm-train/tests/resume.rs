//! Exact resume: a run stopped at step s (as by Ctrl-C) and resumed
//! reproduces the losses and weights of an uninterrupted run bit for bit.
//! Alone in its binary: libtorch's generator is process-global.

mod common;

use std::sync::atomic::AtomicBool;

use cm_nets::{MlpConfig, Model, NetConfig};
use cm_train::loader_for;
use cm_train::{
    train, EdmObjective, LoaderOptions, LrSchedule, OptimizerConfig, Quiet, TrainConfig,
};
use common::{temp_dir, StopAt};
use tch::Device;

fn config() -> TrainConfig {
    TrainConfig {
        steps: 40,
        batch_size: 32,
        seed: 3,
        optimizer: OptimizerConfig {
            lr: 1e-3,
            warmup_steps: 10,
            grad_clip: Some(1.0),
            // The schedule and decay are state a resume must reproduce.
            schedule: LrSchedule::Cosine,
            min_lr_ratio: 0.1,
            weight_decay: 0.01,
            ..Default::default()
        },
        ema_rates: vec![0.9, 0.99],
        checkpoint_every: 15,
        keep_last: 2,
        sample_every: 0,
        sample_count: 16,
        log_every: 1,
        ..TrainConfig::default()
    }
}

/// The toy MLP with dropout, so the per-step reseeding of dropout masks is
/// exercised too.
fn net() -> NetConfig {
    NetConfig::Mlp(MlpConfig {
        dropout: 0.2,
        ..MlpConfig::default()
    })
}

fn fresh_model() -> Model {
    tch::manual_seed(0);
    Model::new(net(), Device::Cpu).unwrap()
}

#[test]
fn stopped_and_resumed_run_matches_uninterrupted_run() {
    // The real loader path: cm-data's toy data through `LoaderSource`.
    let toy = cm_data::ToyConfig {
        n_train: 2000,
        n_test: 100,
        ..cm_data::ToyConfig::new(cm_data::ToyKind::TwoMoons, 4)
    };
    let data = cm_data::DataSource::Toy(toy).load(None).unwrap();
    let cfg0 = config();
    let source = loader_for(&data, LoaderOptions::default(), &cfg0, &net()).unwrap();
    let cfg = config();
    let never = AtomicBool::new(false);

    let dir_a = temp_dir("uninterrupted");
    let mut obj = EdmObjective {
        config: Default::default(),
    };
    let a = train(
        &mut obj,
        fresh_model(),
        &source,
        &cfg,
        &dir_a,
        false,
        &never,
        &mut Quiet,
    )
    .unwrap();
    assert_eq!(a.step, 40);
    assert!(!a.stopped);

    let dir_b = temp_dir("interrupted");
    let flag = AtomicBool::new(false);
    let mut obj = EdmObjective {
        config: Default::default(),
    };
    let b1 = train(
        &mut obj,
        fresh_model(),
        &source,
        &cfg,
        &dir_b,
        false,
        &flag,
        &mut StopAt {
            flag: &flag,
            at: 22,
        },
    )
    .unwrap();
    assert!(b1.stopped);
    assert_eq!(
        b1.step, 22,
        "the stop flag is honoured at the next step boundary"
    );
    assert!(dir_b.join("checkpoints/step_0000022/state.json").is_file());

    // Resume into a network with different initial weights: everything must
    // come from the checkpoint.
    tch::manual_seed(1234);
    let other = Model::new(net(), Device::Cpu).unwrap();
    let mut obj = EdmObjective {
        config: Default::default(),
    };
    let b2 = train(
        &mut obj, other, &source, &cfg, &dir_b, true, &never, &mut Quiet,
    )
    .unwrap();
    assert_eq!(b2.step, 40);
    assert_eq!(b2.losses.first().map(|l| l.0), Some(23));

    let tail_a: Vec<_> = a.losses.iter().filter(|(s, _)| *s > 22).collect();
    let tail_b: Vec<_> = b2.losses.iter().collect();
    assert_eq!(
        tail_a, tail_b,
        "losses after resuming differ from the uninterrupted run"
    );
    assert_eq!(
        cm_train::ema::max_weight_difference(&a.online, &b2.online),
        0.0
    );
    for (ea, eb) in a.emas.iter().zip(&b2.emas) {
        assert_eq!(
            cm_train::ema::max_weight_difference(&ea.model, &eb.model),
            0.0,
            "EMA {}",
            ea.rate
        );
    }
    // The metrics file of the resumed run has every step exactly once.
    let metrics = std::fs::read_to_string(dir_b.join("metrics.csv")).unwrap();
    let steps: Vec<u64> = metrics
        .lines()
        .skip(1)
        .map(|l| l.split(',').next().unwrap().parse().unwrap())
        .collect();
    assert_eq!(steps, (1..=40).collect::<Vec<_>>());
    // Retention: only the newest 2 checkpoints remain (30 and 40).
    let mut kept: Vec<String> = std::fs::read_dir(dir_b.join("checkpoints"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    kept.sort();
    assert_eq!(kept, vec!["step_0000030", "step_0000040"]);
    for d in [dir_a, dir_b] {
        std::fs::remove_dir_all(d).unwrap();
    }
}
