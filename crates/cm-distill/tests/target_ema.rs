//! The target network follows the student by `mu` from the schedule:
//! `theta- <- mu theta- + (1 - mu) theta`; `mu = 0` copies.

use cm_core::{ConsistencyRecipe, EdmConfig, FixedSchedule, ScheduleConfig};
use cm_distill::{CdConfig, CdObjective};
use cm_nets::{Model, NetConfig};
use cm_train::Objective;
use tch::{Device, Kind};

fn model(seed: i64) -> Model {
    tch::manual_seed(seed);
    let m = Model::new(NetConfig::preset("toy-mlp").unwrap(), Device::Cpu).unwrap();
    tch::no_grad(|| {
        for mut v in m.var_store().trainable_variables() {
            let _ = v.g_add_(&(v.randn_like() * 0.1));
        }
    });
    m
}

fn objective(mu: f64, student: &Model) -> CdObjective {
    let recipe = ConsistencyRecipe {
        schedule: ScheduleConfig::Fixed(FixedSchedule { n: 18, mu }),
        ..ConsistencyRecipe::cd()
    };
    CdObjective::new(
        CdConfig {
            recipe,
            ..CdConfig::default()
        },
        model(9),
        EdmConfig::default(),
        student,
        recipe.metric.build(784, "cd.recipe.metric.").unwrap(),
    )
    .unwrap()
}

#[test]
fn target_is_an_ema_of_the_student() {
    let _rng = cm_runtime::lock_global_rng();
    let start = model(1);
    for mu in [0.0, 0.95] {
        let mut obj = objective(mu, &start);
        let online = model(2);
        let before = obj.target().var_store().variables();
        let before: Vec<(String, tch::Tensor)> =
            before.into_iter().map(|(n, t)| (n, t.copy())).collect();
        obj.after_step(&online, 0).unwrap();
        let after = obj.target().var_store().variables();
        let src = online.var_store().variables();
        for (name, old) in before {
            let want = &old * mu + &src[&name] * (1.0 - mu);
            let diff = (&after[&name] - want).abs().max().double_value(&[]);
            assert!(diff < 1e-6, "mu {mu}: `{name}` off by {diff}");
        }
    }
}

#[test]
fn teacher_is_frozen_and_the_loss_trains_only_the_student() {
    let _rng = cm_runtime::lock_global_rng();
    let student = model(1);
    let mut obj = objective(0.95, &student);
    assert!(obj
        .teacher()
        .var_store()
        .trainable_variables()
        .iter()
        .all(|t| !t.requires_grad()));
    assert!(obj
        .target()
        .var_store()
        .trainable_variables()
        .iter()
        .all(|t| !t.requires_grad()));
    let batch = cm_train::Batch {
        x: tch::Tensor::randn([16, 2], (Kind::Float, Device::Cpu)),
        labels: None,
    };
    let loss = obj.loss(&student, &batch, 0).unwrap();
    assert!(loss.requires_grad() && loss.double_value(&[]) > 0.0);
    loss.backward();
    assert!(student
        .var_store()
        .trainable_variables()
        .iter()
        .any(|t| t.grad().defined()));
}
