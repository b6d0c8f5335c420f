//! The U-Net's embedding cache for inference at repeated noise levels: the
//! same output as computing afresh, and never stale (new noise levels, new
//! labels, weights updated in place) or in the way of gradients.

use cm_core::Conditioning;
use cm_nets::{Model, NetConfig, UNetConfig};
use tch::{Device, Kind, Tensor};

/// The cached calls take the small-batch path (batch <= 4), whose float
/// rounding differs from the libtorch pass the fresh ones take by about
/// 1e-6 (crates/cm-nets/tests/small_batch.rs); a stale embedding moves the
/// output by far more (the `1e-4` refusals below).
const TOL: f64 = 1e-5;

fn small(num_classes: usize) -> Model {
    tch::manual_seed(0);
    let config = NetConfig::Unet(UNetConfig {
        resolution: 8,
        model_channels: 8,
        channel_mult: vec![1, 2],
        attn_resolutions: vec![4],
        num_classes,
        ..UNetConfig::default()
    });
    let model = Model::new(config, Device::Cpu).unwrap();
    tch::no_grad(|| {
        for mut v in model.var_store().trainable_variables() {
            let _ = v.g_add_(&(v.randn_like() * 0.1));
        }
    });
    model
}

/// The output computed with autograd on (the cache is never used then).
fn fresh(model: &Model, x: &Tensor, c: &Tensor, cond: Conditioning<'_>) -> Tensor {
    model.forward_t(x, c, cond, false).detach()
}

fn cached(model: &Model, x: &Tensor, c: &Tensor, cond: Conditioning<'_>) -> Tensor {
    tch::no_grad(|| model.forward_t(x, c, cond, false))
}

#[test]
fn repeated_calls_match_fresh_computation() {
    let _rng = cm_runtime::lock_global_rng();
    let model = small(0);
    let x = Tensor::randn([2, 1, 8, 8], (Kind::Float, Device::Cpu));
    let c = Tensor::from_slice(&[0.3f32, 0.3]);
    let first = cached(&model, &x, &c, Conditioning::none());
    let second = cached(&model, &x, &c, Conditioning::none()); // a cache hit
    let reference = fresh(&model, &x, &c, Conditioning::none());
    assert!(first.equal(&second));
    assert!(second.allclose(&reference, TOL, TOL, false));
    // New noise levels are not served from the cache.
    let c2 = Tensor::from_slice(&[0.3f32, -1.0]);
    let other = cached(&model, &x, &c2, Conditioning::none());
    assert!(other.allclose(
        &fresh(&model, &x, &c2, Conditioning::none()),
        TOL,
        TOL,
        false
    ));
    assert!(!other.allclose(&second, 1e-4, 1e-4, false));
}

#[test]
fn in_place_weight_updates_invalidate_it() {
    let _rng = cm_runtime::lock_global_rng();
    let model = small(0);
    let x = Tensor::randn([1, 1, 8, 8], (Kind::Float, Device::Cpu));
    let c = Tensor::from_slice(&[1.5f32]);
    let before = cached(&model, &x, &c, Conditioning::none());
    // An EMA-style in-place update of one block's affine layer only.
    tch::no_grad(|| {
        for (name, mut v) in model.var_store().variables() {
            if name.ends_with("affine.weight") && name.contains("enc.") {
                let _ = v.lerp_(&(v.randn_like()), 0.5);
                break;
            }
        }
    });
    let after = cached(&model, &x, &c, Conditioning::none());
    let reference = fresh(&model, &x, &c, Conditioning::none());
    assert!(after.allclose(&reference, TOL, TOL, false));
    assert!(
        !after.allclose(&before, 1e-4, 1e-4, false),
        "the stale embedding was used"
    );
}

#[test]
fn labels_are_part_of_the_key_and_gradients_bypass_it() {
    let _rng = cm_runtime::lock_global_rng();
    let model = small(3);
    let x = Tensor::randn([2, 1, 8, 8], (Kind::Float, Device::Cpu));
    let c = Tensor::from_slice(&[0.1f32, 0.1]);
    let a = Tensor::from_slice(&[0i64, 1]);
    let b = Tensor::from_slice(&[2i64, 1]);
    let ya = cached(&model, &x, &c, Conditioning::from_class(Some(&a)));
    let yb = cached(&model, &x, &c, Conditioning::from_class(Some(&b)));
    assert!(yb.allclose(
        &fresh(&model, &x, &c, Conditioning::from_class(Some(&b))),
        TOL,
        TOL,
        false
    ));
    assert!(!ya.allclose(&yb, 1e-4, 1e-4, false));
    // With autograd on, the embedding MLP gets its gradient.
    let _ = cached(&model, &x, &c, Conditioning::none());
    let y = model.forward_t(&x, &c, Conditioning::none(), false);
    y.sum(Kind::Float).backward();
    let g = model
        .var_store()
        .variables()
        .into_iter()
        .find(|(n, _)| n == "map_layer0.weight")
        .map(|(_, v)| v.grad())
        .unwrap();
    assert!(g.defined() && g.abs().sum(Kind::Float).double_value(&[]) > 0.0);
}
