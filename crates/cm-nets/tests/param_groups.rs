//! Parameter groups: a model says which variables train
//! (`set_trainable`), an optimizer takes exactly those
//! (`trainable_variables`), gradients reach only them, and a checkpoint can
//! hold a subset (`save_subset` / `load_subset`, strict by name, shape and
//! dtype) — what adapters need.

use cm_core::Conditioning;
use cm_nets::{MlpConfig, Model, NetConfig};
use tch::{Device, Kind, Tensor};

fn mlp(seed: i64) -> Model {
    tch::manual_seed(seed);
    Model::new(NetConfig::Mlp(MlpConfig::default()), Device::Cpu).unwrap()
}

/// The top-level module of a variable name (`blocks.0.fc1.weight` -> `blocks`).
fn group(name: &str) -> &str {
    name.split('.').next().unwrap_or(name)
}

#[test]
fn only_the_chosen_group_trains_and_gets_gradients() {
    let _rng = cm_runtime::lock_global_rng();
    let mut model = mlp(0);
    let all: Vec<String> = model
        .trainable_variables()
        .into_iter()
        .map(|v| v.0)
        .collect();
    assert_eq!(all.len(), model.var_store().trainable_variables().len());
    let chosen = group(&all[all.len() - 1]).to_string();
    let expected: Vec<&String> = all.iter().filter(|n| group(n) == chosen).collect();
    assert!(!expected.is_empty() && expected.len() < all.len());

    let count = model.set_trainable(|n| group(n) == chosen);
    assert_eq!(count, expected.len());
    let now: Vec<String> = model
        .trainable_variables()
        .into_iter()
        .map(|v| v.0)
        .collect();
    assert_eq!(
        now.iter().collect::<Vec<_>>(),
        expected,
        "sorted names of the group"
    );

    let x = Tensor::randn([4, 2], (Kind::Float, Device::Cpu));
    let c = Tensor::zeros([4], (Kind::Float, Device::Cpu));
    model
        .forward_t(&x, &c, Conditioning::none(), true)
        .square()
        .sum(Kind::Float)
        .backward();
    for (name, var) in model.var_store().variables() {
        let has_grad = var.grad().defined();
        assert_eq!(has_grad, group(&name) == chosen, "{name}");
    }

    // Everything trains again when asked.
    assert_eq!(model.set_trainable(|_| true), all.len());
}

#[test]
fn a_checkpoint_can_hold_a_subset() {
    let _rng = cm_runtime::lock_global_rng();
    let dir = std::env::temp_dir().join(format!("cm-nets-subset-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("part.safetensors");
    let a = mlp(1);
    let names: Vec<String> = a.trainable_variables().into_iter().map(|v| v.0).collect();
    let chosen = group(&names[0]).to_string();
    let keep = |n: &str| group(n) == chosen;
    let written = a.save_subset(&path, keep).unwrap();
    let file = Tensor::read_safetensors(&path).unwrap();
    assert_eq!(file.len(), written);
    assert!(file.iter().all(|(n, _)| keep(n)));

    // Loading the subset into another model changes exactly those variables.
    let mut b = mlp(2);
    let before = b.var_store().variables();
    b.load_subset(&path, keep).unwrap();
    let (va, vb) = (a.var_store().variables(), b.var_store().variables());
    for (name, t) in &vb {
        if keep(name) {
            assert!(t.equal(&va[name]), "{name} not loaded");
        } else {
            assert!(t.equal(&before[name]), "{name} changed");
        }
    }

    // Strict: a selection the file does not match is refused, by name.
    let err = b.load_subset(&path, |_| true).unwrap_err().to_string();
    assert!(err.contains("missing tensor"), "{err}");
    let err = b.load_weights(&path).unwrap_err().to_string();
    assert!(err.contains("missing tensor"), "{err}");
    // An empty selection writes nothing and says so.
    let err = a
        .save_subset(dir.join("none.safetensors"), |_| false)
        .unwrap_err();
    assert!(err.to_string().contains("no variable"), "{err}");
    std::fs::remove_dir_all(&dir).unwrap();
}
