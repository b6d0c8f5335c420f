//! The U-Net's small-batch inference path (`cm_nets::unet::small_batch`)
//! against libtorch's own pass: the same outputs within 1e-5 for every
//! option it runs (scale-shift or additive embedding, skip scaling,
//! attention with several heads, classes and w-embedding, batches 1 to
//! `max_batch()`, channels-last or contiguous input), and the libtorch pass, unchanged,
//! for what it does not (learned resampling, adapters applied on the fly,
//! batches above its bound, sides that do not halve evenly).

use std::sync::Mutex;

use cm_core::Conditioning;
use cm_nets::unet::small_batch;
use cm_nets::{LoraConfig, Model, NetConfig, Resample, UNetConfig};
use tch::{Device, Kind, Tensor};

/// `small_batch::set_enabled` is process-wide: one test at a time.
static SWITCH: Mutex<()> = Mutex::new(());

fn model(config: UNetConfig) -> Model {
    tch::manual_seed(3);
    let model = Model::new(NetConfig::Unet(config), Device::Cpu).unwrap();
    // Zero-initialised layers made non-zero, as after training.
    tch::no_grad(|| {
        for mut v in model.var_store().trainable_variables() {
            let _ = v.g_add_(&(v.randn_like() * 0.2));
        }
    });
    model
}

/// (small-batch path, libtorch pass) for one input.
fn both(model: &Model, x: &Tensor, c: &Tensor, cond: Conditioning<'_>) -> (Tensor, Tensor) {
    let _switch = SWITCH.lock().unwrap_or_else(|e| e.into_inner());
    tch::no_grad(|| {
        small_batch::set_enabled(true);
        let fast = model.forward_t(x, c, cond, false);
        small_batch::set_enabled(false);
        let eager = model.forward_t(x, c, cond, false);
        small_batch::set_enabled(true);
        (fast, eager)
    })
}

/// `max |fast - eager|` over the output's scale (`max |eager|`, at least
/// 1): float rounding differs between the two (summation order in the
/// GEMMs and the norms' statistics), by about 1e-6 of the scale.
fn rel_diff(fast: &Tensor, eager: &Tensor) -> f64 {
    max_diff(fast, eager) / eager.abs().max().double_value(&[]).max(1.0)
}

fn max_diff(a: &Tensor, b: &Tensor) -> f64 {
    assert_eq!(a.size(), b.size());
    (a - b).abs().max().double_value(&[])
}

fn input(batch: i64, res: i64) -> (Tensor, Tensor) {
    let x = Tensor::randn([batch, 1, res, res], (Kind::Float, Device::Cpu));
    let c = Tensor::rand([batch], (Kind::Float, Device::Cpu)) * 4.0 - 2.0;
    (x, c)
}

#[test]
fn preset_matches_libtorch_at_every_batch_it_runs() {
    let net = model(UNetConfig::default());
    // Every batch up to 3, then a few up to the bound (64 with the direct
    // convolution kernel).
    let bound = small_batch::max_batch();
    let mut batches: Vec<i64> = [1, 2, 3, 5, 8, 17, bound]
        .into_iter()
        .filter(|&b| b <= bound)
        .collect();
    batches.dedup();
    for batch in batches {
        let (x, c) = input(batch, 28);
        let (fast, eager) = both(&net, &x, &c, Conditioning::none());
        let d = rel_diff(&fast, &eager);
        assert!(d < 1e-5, "batch {batch}: max |fast - eager| / scale = {d}");
        // The path ran (a fallback would give libtorch's bits exactly).
        assert!(!fast.equal(&eager), "batch {batch}: the path did not run");
        // Not a copy of the input or a constant: the network did something.
        assert!(max_diff(&eager, &x) > 1e-2 && eager.std(false).double_value(&[]) > 1e-2);
        // Channels-last input gives the same.
        let x_cl = x
            .contiguous()
            .permute([0, 2, 3, 1])
            .contiguous()
            .permute([0, 3, 1, 2]);
        let (fast_cl, _) = both(&net, &x_cl, &c, Conditioning::none());
        assert!(max_diff(&fast_cl, &fast) < 1e-6);
    }
}

#[test]
fn options_match_libtorch() {
    let configs = [
        // Additive embedding, skip scaling, two heads, three levels.
        UNetConfig {
            resolution: 16,
            model_channels: 16,
            channel_mult: vec![1, 2, 2],
            attn_resolutions: vec![8, 4],
            channels_per_head: 16,
            scale_shift: false,
            skip_scale: std::f64::consts::FRAC_1_SQRT_2,
            ..UNetConfig::default()
        },
        // Classes with a null class, the w-embedding and its class gate,
        // two blocks per level.
        UNetConfig {
            resolution: 16,
            model_channels: 8,
            channel_mult: vec![1, 2],
            num_res_blocks: 2,
            attn_resolutions: vec![8],
            num_classes: 10,
            guidance_embedding: true,
            guidance_class_gate: true,
            ..UNetConfig::default()
        },
    ];
    for (i, config) in configs.into_iter().enumerate() {
        let classes = config.num_classes > 0;
        let net = model(config);
        let (x, c) = input(2, 16);
        let labels = Tensor::from_slice(&[3i64, 10]);
        let w = Tensor::from_slice(&[1.5f32, -0.5]);
        let mut cond = Conditioning::none();
        if classes {
            cond = Conditioning::from_class(Some(&labels)).with_guidance(&w);
        }
        let (fast, eager) = both(&net, &x, &c, cond);
        let d = rel_diff(&fast, &eager);
        assert!(d < 1e-5, "config {i}: max |fast - eager| / scale = {d}");
    }
}

#[test]
fn what_the_path_does_not_run_takes_libtorch() {
    // Learned resampling, a batch above the bound, an adapter on the fly:
    // the output is libtorch's, bit for bit.
    let learned = model(UNetConfig {
        resolution: 16,
        model_channels: 8,
        channel_mult: vec![1, 2],
        attn_resolutions: vec![8],
        resample: Resample::Learned,
        ..UNetConfig::default()
    });
    let (x, c) = input(1, 16);
    let (fast, eager) = both(&learned, &x, &c, Conditioning::none());
    assert!(fast.equal(&eager));

    let net = model(UNetConfig::default());
    let (x, c) = input(small_batch::max_batch() + 1, 28);
    let (fast, eager) = both(&net, &x, &c, Conditioning::none());
    assert!(fast.equal(&eager));
    // A network wider than the direct kernel's batch bound is measured
    // for: the path up to MAX_BATCH, libtorch above it.
    let wide = model(UNetConfig {
        resolution: 8,
        model_channels: small_batch::DIRECT_WIDE_COUT + 16,
        channel_mult: vec![1],
        attn_resolutions: vec![],
        ..UNetConfig::default()
    });
    let (x, c) = input(small_batch::MAX_BATCH, 8);
    let (fast, eager) = both(&wide, &x, &c, Conditioning::none());
    assert!(!fast.equal(&eager) && rel_diff(&fast, &eager) < 1e-5);
    let (x, c) = input(small_batch::MAX_BATCH + 1, 8);
    let (fast, eager) = both(&wide, &x, &c, Conditioning::none());
    assert!(fast.equal(&eager));
    let (x, c) = input(1, 30);
    let _switch = SWITCH.lock().unwrap_or_else(|e| e.into_inner());
    let fast = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        tch::no_grad(|| net.forward_t(&x, &c, Conditioning::none(), false))
    }));
    // libtorch's concatenation refuses 30 -> 15 -> 7 -> 14 (a panic in
    // tch); the path must not answer instead.
    assert!(fast.is_err(), "an input libtorch refuses was answered");
    drop(_switch);

    let mut net = model(UNetConfig::default());
    let (x, c) = input(1, 28);
    let (before, _) = both(&net, &x, &c, Conditioning::none());
    net.add_adapter("style", &LoraConfig::default(), 1.0)
        .unwrap();
    // A fresh adapter is zero: perturb it so it changes the output.
    tch::no_grad(|| {
        for mut v in net.var_store().trainable_variables() {
            let _ = v.g_add_(&(v.randn_like() * 0.05));
        }
    });
    let (fast, eager) = both(&net, &x, &c, Conditioning::none());
    assert!(fast.equal(&eager));
    assert!(
        max_diff(&fast, &before) > 1e-4,
        "the adapter changed nothing"
    );
}
