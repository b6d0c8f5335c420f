//! Training a parameter group: with part of a model frozen, the loop's
//! optimizer holds state for the trainable variables only, the frozen ones
//! come out bit-identical, and the trained ones move.

mod common;

use std::sync::atomic::AtomicBool;

use cm_nets::{Model, NetConfig};
use cm_train::{train, EdmObjective, Quiet, TensorSource, TrainConfig};
use common::{eight_gaussians, temp_dir};
use tch::{Device, Tensor};

#[test]
fn a_frozen_group_stays_put_and_the_optimizer_skips_it() {
    let (data, _) = eight_gaussians(256, 3);
    let source = TensorSource::new(data, None, 32, 0).unwrap();
    tch::manual_seed(0);
    let mut model = Model::new(NetConfig::preset("toy-mlp").unwrap(), Device::Cpu).unwrap();
    let names: Vec<String> = model
        .trainable_variables()
        .into_iter()
        .map(|v| v.0)
        .collect();
    let head = names.last().unwrap().split('.').next().unwrap().to_string();
    let trains = |n: &str| n.split('.').next() == Some(head.as_str());
    let n_trained = model.set_trainable(trains);
    assert!(n_trained > 0 && n_trained < names.len());
    let before: Vec<(String, Tensor)> = model
        .var_store()
        .variables()
        .into_iter()
        .map(|(n, t)| (n, t.copy()))
        .collect();
    let dir = temp_dir("param-groups");
    let config = TrainConfig {
        steps: 6,
        batch_size: 32,
        checkpoint_every: 6,
        sample_count: 8,
        log_every: 1,
        ..TrainConfig::default()
    };
    let mut objective = EdmObjective {
        config: Default::default(),
    };
    let out = train(
        &mut objective,
        model,
        &source,
        &config,
        &dir,
        false,
        &AtomicBool::new(false),
        &mut Quiet,
    )
    .unwrap();
    let after = out.online.var_store().variables();
    for (name, old) in &before {
        let same = after[name].equal(old);
        assert_eq!(
            same,
            !trains(name),
            "{name}: frozen ones stay, trained ones move"
        );
    }
    // Adam keeps two moments per trained variable, nothing for frozen ones.
    let state =
        Tensor::read_safetensors(out.checkpoint.unwrap().join("optimizer.safetensors")).unwrap();
    assert_eq!(
        state.len(),
        2 * n_trained,
        "{:?}",
        state.iter().map(|s| &s.0).collect::<Vec<_>>()
    );
    std::fs::remove_dir_all(&dir).unwrap();
}
