//! Determinism under a seed, alone in its own test binary: libtorch's
//! generator is process-global, so tests running in parallel threads would
//! interleave their draws.

use cm_core::Conditioning;
use cm_nets::{DiTConfig, MlpConfig, Model, NetConfig, UNetConfig, PRESETS};
use tch::{Device, Kind, Tensor};

fn variants() -> Vec<(String, NetConfig)> {
    let mut v: Vec<(String, NetConfig)> = ["toy-mlp", "fmnist-unet", "fmnist-dit"]
        .iter()
        .map(|n| (n.to_string(), NetConfig::preset(n).unwrap()))
        .collect();
    assert!(PRESETS.len() >= v.len());
    v.push((
        "unet 3x32 classes".into(),
        NetConfig::Unet(UNetConfig {
            in_channels: 3,
            resolution: 32,
            model_channels: 16,
            channel_mult: vec![1, 2],
            attn_resolutions: vec![16],
            num_classes: 4,
            ..UNetConfig::default()
        }),
    ));
    v.push((
        "dit classes".into(),
        NetConfig::Dit(DiTConfig {
            depth: 2,
            num_classes: 4,
            ..DiTConfig::default()
        }),
    ));
    v.push((
        "mlp classes".into(),
        NetConfig::Mlp(MlpConfig {
            num_classes: 4,
            ..MlpConfig::default()
        }),
    ));
    v
}

fn batch(model: &Model, b: i64) -> (Tensor, Tensor) {
    let mut shape = vec![b];
    shape.extend(model.config().sample_shape());
    (
        Tensor::randn(shape, (Kind::Float, Device::Cpu)),
        Tensor::randn([b], (Kind::Float, Device::Cpu)),
    )
}

fn perturb(model: &Model) {
    tch::no_grad(|| {
        for mut v in model.var_store().trainable_variables() {
            let noise = v.randn_like() * 0.05;
            let _ = v.g_add_(&noise);
        }
    });
}

#[test]
fn same_seed_same_network_and_output() {
    for (name, config) in variants() {
        let run = |seed| {
            tch::manual_seed(seed);
            let model = Model::new(config.clone(), Device::Cpu).unwrap();
            perturb(&model);
            tch::manual_seed(99);
            let (x, c) = batch(&model, 2);
            model.forward_t(&x, &c, Conditioning::none(), false)
        };
        let (a, b, other) = (run(1), run(1), run(2));
        assert!(a.equal(&b), "{name}: not deterministic under a seed");
        assert!(
            !a.equal(&other),
            "{name}: different seeds gave the same network"
        );
    }
}
