//! cm-nets' contract: output shapes for every preset and resolution,
//! determinism under a seed, gradients reaching every parameter, class
//! conditioning and the null class, zero output at initialisation, bit-exact
//! checkpoint round trips and named errors for mismatched checkpoints.

use cm_core::Conditioning;
use cm_nets::{
    DiTConfig, MlpConfig, Model, NetConfig, NetError, NoiseEmbedding, Resample, UNetConfig, PRESETS,
};
use tch::{Device, Kind, Tensor};

fn small_unet(channels: usize, resolution: usize) -> UNetConfig {
    UNetConfig {
        in_channels: channels,
        resolution,
        model_channels: 16,
        channel_mult: vec![1, 2],
        num_res_blocks: 1,
        attn_resolutions: vec![resolution / 2],
        channels_per_head: 16,
        ..UNetConfig::default()
    }
}

fn small_dit(channels: usize, resolution: usize) -> DiTConfig {
    DiTConfig {
        in_channels: channels,
        resolution,
        patch_size: 4,
        hidden_size: 32,
        depth: 2,
        num_heads: 2,
        frequency_embedding_size: 32,
        ..DiTConfig::default()
    }
}

/// Small networks covering every architecture, option and supported size.
fn variants() -> Vec<(String, NetConfig)> {
    let mut v = Vec::new();
    for (c, r) in [(1, 28), (1, 32), (3, 32), (3, 64), (1, 64)] {
        v.push((format!("unet {c}x{r}"), NetConfig::Unet(small_unet(c, r))));
        v.push((format!("dit {c}x{r}"), NetConfig::Dit(small_dit(c, r))));
    }
    v.push((
        "unet learned resampling, fourier, additive, 3 levels, classes".into(),
        NetConfig::Unet(UNetConfig {
            channel_mult: vec![1, 2, 2],
            attn_resolutions: vec![8, 16],
            resample: Resample::Learned,
            noise_embedding: NoiseEmbedding::Fourier,
            fourier_scale: 0.02,
            scale_shift: false,
            skip_scale: std::f64::consts::FRAC_1_SQRT_2,
            num_classes: 10,
            dropout: 0.3,
            ..small_unet(3, 32)
        }),
    ));
    v.push((
        "dit fourier classes".into(),
        NetConfig::Dit(DiTConfig {
            noise_embedding: NoiseEmbedding::Fourier,
            num_classes: 10,
            dropout: 0.1,
            ..small_dit(1, 28)
        }),
    ));
    v.push(("mlp".into(), NetConfig::Mlp(MlpConfig::default())));
    v.push((
        "mlp fourier classes".into(),
        NetConfig::Mlp(MlpConfig {
            noise_embedding: NoiseEmbedding::Fourier,
            num_classes: 8,
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

/// Adds noise to every weight, so zero-initialised layers stop hiding the
/// gradients and outputs of the layers before them.
fn perturb(model: &Model) {
    tch::no_grad(|| {
        for mut v in model.var_store().trainable_variables() {
            let noise = v.randn_like() * 0.05;
            let _ = v.g_add_(&noise);
        }
    });
}

#[test]
fn every_preset_builds_and_keeps_the_shape() {
    let _rng = cm_runtime::lock_global_rng();
    for name in PRESETS {
        let config = NetConfig::preset(name).unwrap();
        tch::manual_seed(0);
        let model = Model::new(config.clone(), Device::Cpu).unwrap();
        assert!(
            model.num_params() > 0 && model.flops_per_sample() > 0,
            "{name}"
        );
        let _guard = tch::no_grad_guard();
        let (x, c) = batch(&model, 1);
        let classes = model.null_class().map(|n| Tensor::from_slice(&[n - 1]));
        model
            .check_input(&x, Conditioning::from_class(classes.as_ref()))
            .unwrap();
        let y = model.forward_t(&x, &c, Conditioning::from_class(classes.as_ref()), false);
        assert_eq!(y.size(), x.size(), "{name}");
    }
    // The ImageNet-64 preset is the ADM size the issue names.
    let NetConfig::Unet(adm) = NetConfig::preset("imagenet64-adm").unwrap() else {
        panic!()
    };
    assert_eq!(
        (
            adm.model_channels,
            adm.channel_mult.clone(),
            adm.num_res_blocks
        ),
        (192, vec![1, 2, 3, 4], 3)
    );
    assert_eq!(adm.attn_resolutions, vec![32, 16, 8]);
}

#[test]
fn preset_files_equal_code_presets() {
    let _rng = cm_runtime::lock_global_rng();
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../configs/nets");
    for name in PRESETS {
        let loaded: NetConfig = cm_core::load_toml(dir.join(format!("{name}.toml"))).unwrap();
        assert_eq!(loaded, NetConfig::preset(name).unwrap(), "{name}");
    }
}

#[test]
fn shapes_for_every_architecture_and_resolution() {
    let _rng = cm_runtime::lock_global_rng();
    for (name, config) in variants() {
        let model = Model::new(config, Device::Cpu).unwrap();
        let (x, c) = batch(&model, 3);
        let classes = model
            .null_class()
            .map(|_| Tensor::from_slice(&[0i64, 5, 2]));
        let y = model.forward_t(&x, &c, Conditioning::from_class(classes.as_ref()), true);
        assert_eq!(y.size(), x.size(), "{name}");
    }
}

#[test]
fn fresh_networks_output_zeros() {
    let _rng = cm_runtime::lock_global_rng();
    for (name, config) in variants() {
        let model = Model::new(config, Device::Cpu).unwrap();
        let (x, c) = batch(&model, 2);
        let y = model.forward_t(&x, &c, Conditioning::none(), false);
        assert_eq!(
            y.abs().max().double_value(&[]),
            0.0,
            "{name}: fresh output is not zero"
        );
    }
}

#[test]
fn every_parameter_receives_a_gradient() {
    let _rng = cm_runtime::lock_global_rng();
    for (name, config) in variants() {
        tch::manual_seed(5);
        let model = Model::new(config, Device::Cpu).unwrap();
        perturb(&model);
        let (x, c) = batch(&model, 2);
        let classes = model.null_class().map(|n| Tensor::from_slice(&[1i64, n]));
        let loss = model
            .forward_t(&x, &c, Conditioning::from_class(classes.as_ref()), true)
            .square()
            .mean(Kind::Float);
        loss.backward();
        for (pname, var) in model.var_store().variables() {
            if !var.requires_grad() {
                continue; // fixed buffers: embedding frequencies
            }
            let grad = var.grad();
            assert!(grad.defined(), "{name}: `{pname}` got no gradient");
            let g = grad.abs().sum(Kind::Double).double_value(&[]);
            assert!(
                g.is_finite() && g > 0.0,
                "{name}: `{pname}` gradient is {g}"
            );
        }
    }
}

#[test]
fn class_conditioning_changes_the_output_and_null_class_works() {
    let _rng = cm_runtime::lock_global_rng();
    for (name, config) in variants() {
        tch::manual_seed(11);
        let model = Model::new(config, Device::Cpu).unwrap();
        let Some(null) = model.null_class() else {
            continue;
        };
        perturb(&model);
        let _guard = tch::no_grad_guard();
        let (x, c) = batch(&model, 2);
        let a = model.forward_t(
            &x,
            &c,
            Conditioning::class(&Tensor::from_slice(&[0i64, 0])),
            false,
        );
        let b = model.forward_t(
            &x,
            &c,
            Conditioning::class(&Tensor::from_slice(&[3i64, 3])),
            false,
        );
        assert!(
            !a.allclose(&b, 1e-6, 1e-6, false),
            "{name}: class has no effect"
        );
        let explicit_null = model.forward_t(
            &x,
            &c,
            Conditioning::class(&Tensor::from_slice(&[null, null])),
            false,
        );
        let implicit_null = model.forward_t(&x, &c, Conditioning::none(), false);
        assert!(
            explicit_null.equal(&implicit_null),
            "{name}: None is not the null class"
        );
        assert!(
            !explicit_null.allclose(&a, 1e-6, 1e-6, false),
            "{name}: null class equals class 0"
        );
    }
}

#[test]
fn bad_inputs_are_errors_not_panics() {
    let _rng = cm_runtime::lock_global_rng();
    let model = Model::new(
        NetConfig::Unet(UNetConfig {
            num_classes: 10,
            ..small_unet(1, 28)
        }),
        Device::Cpu,
    )
    .unwrap();
    let x = Tensor::zeros([2, 1, 32, 32], (Kind::Float, Device::Cpu));
    let err = model
        .check_input(&x, Conditioning::none())
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("[B, 1, 28, 28]") && err.contains("[2, 1, 32, 32]"),
        "{err}"
    );
    let x = Tensor::zeros([2, 1, 28, 28], (Kind::Float, Device::Cpu));
    let err = model
        .check_input(&x, Conditioning::class(&Tensor::from_slice(&[0i64, 11])))
        .unwrap_err()
        .to_string();
    assert!(err.contains("0..=10"), "{err}");
    let mlp = Model::new(NetConfig::Mlp(MlpConfig::default()), Device::Cpu).unwrap();
    let err = mlp.check_input(
        &Tensor::zeros([4, 2], (Kind::Float, Device::Cpu)),
        Conditioning::class(&Tensor::from_slice(&[0i64; 4])),
    );
    assert!(err.unwrap_err().to_string().contains("unconditional"));
}

#[test]
fn invalid_configs_name_the_field() {
    let _rng = cm_runtime::lock_global_rng();
    let cases: Vec<(NetConfig, &str)> = vec![
        (
            NetConfig::Unet(UNetConfig {
                resolution: 30,
                channel_mult: vec![1, 2, 2],
                ..UNetConfig::default()
            }),
            "resolution",
        ),
        (
            NetConfig::Unet(UNetConfig {
                attn_resolutions: vec![5],
                ..UNetConfig::default()
            }),
            "attn_resolutions",
        ),
        (
            NetConfig::Unet(UNetConfig {
                in_channels: 65,
                ..UNetConfig::default()
            }),
            "in_channels",
        ),
        (
            NetConfig::Unet(UNetConfig {
                channel_mult: vec![],
                ..UNetConfig::default()
            }),
            "channel_mult",
        ),
        (
            NetConfig::Unet(UNetConfig {
                dropout: 1.0,
                ..UNetConfig::default()
            }),
            "dropout",
        ),
        (
            NetConfig::Unet(UNetConfig {
                model_channels: 100,
                channel_mult: vec![1, 2],
                attn_resolutions: vec![14],
                ..UNetConfig::default()
            }),
            "channels_per_head",
        ),
        (
            NetConfig::Dit(DiTConfig {
                patch_size: 3,
                ..DiTConfig::default()
            }),
            "resolution",
        ),
        (
            NetConfig::Dit(DiTConfig {
                hidden_size: 100,
                num_heads: 8,
                ..DiTConfig::default()
            }),
            "hidden_size",
        ),
        (
            NetConfig::Mlp(MlpConfig {
                noise_embedding: NoiseEmbedding::Fourier,
                fourier_scale: 0.0,
                ..MlpConfig::default()
            }),
            "fourier_scale",
        ),
    ];
    for (config, field) in cases {
        match Model::new(config, Device::Cpu) {
            Err(NetError::Config(e)) => {
                assert!(e.to_string().contains(&format!("`{field}`")), "{e}")
            }
            other => panic!("expected a config error naming {field}, got {other:?}"),
        }
    }
    let err =
        cm_core::parse_toml::<NetConfig>("arch = \"unet\"\nchannels = 3\n", "x.toml").unwrap_err();
    assert!(err.to_string().contains("channels"), "{err}");
}

fn temp_dir(tag: &str) -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(format!("cm-nets-{tag}-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

#[test]
fn checkpoint_round_trip_is_bit_identical() {
    let _rng = cm_runtime::lock_global_rng();
    let dir = temp_dir("roundtrip");
    for (i, (name, config)) in variants().into_iter().enumerate() {
        tch::manual_seed(i as i64);
        let model = Model::new(config, Device::Cpu).unwrap();
        perturb(&model);
        let path = dir.join(format!("net{i}.safetensors"));
        model.save(&path).unwrap();
        assert!(path.with_extension("toml").is_file());
        let loaded = Model::from_checkpoint(&path, Device::Cpu).unwrap();
        assert_eq!(loaded.config(), model.config());
        let (x, c) = batch(&model, 2);
        let a = model.forward_t(&x, &c, Conditioning::none(), false);
        let b = loaded.forward_t(&x, &c, Conditioning::none(), false);
        assert!(
            a.equal(&b),
            "{name}: outputs differ after a save/load round trip"
        );
    }
    // No temporary files are left behind.
    let leftovers: Vec<_> = std::fs::read_dir(&dir)
        .unwrap()
        .filter_map(|e| e.ok())
        .filter(|e| e.file_name().to_string_lossy().contains(".tmp-"))
        .collect();
    assert!(leftovers.is_empty(), "{leftovers:?}");
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn mismatched_checkpoints_name_each_tensor() {
    let _rng = cm_runtime::lock_global_rng();
    let dir = temp_dir("mismatch");
    let path = dir.join("wide.safetensors");
    Model::new(
        NetConfig::Unet(UNetConfig {
            model_channels: 32,
            ..small_unet(1, 28)
        }),
        Device::Cpu,
    )
    .unwrap()
    .save(&path)
    .unwrap();
    let mut narrow = Model::new(NetConfig::Unet(small_unet(1, 28)), Device::Cpu).unwrap();
    let err = narrow.load_weights(&path).unwrap_err();
    let msg = err.to_string();
    assert!(matches!(err, NetError::CheckpointMismatch { .. }), "{msg}");
    assert!(
        msg.contains(
            "tensor `enc.conv_in.weight`: expected shape [16, 1, 3, 3], found [32, 1, 3, 3]"
        ),
        "{msg}"
    );

    // A missing and an unexpected tensor (renamed) are both reported.
    let mut tensors = Tensor::read_safetensors(&path).unwrap();
    let (name, t) = tensors.pop().unwrap();
    tensors.push((format!("{name}_renamed"), t));
    let renamed = dir.join("renamed.safetensors");
    Tensor::write_safetensors(&tensors, &renamed).unwrap();
    let mut wide = Model::new(
        NetConfig::Unet(UNetConfig {
            model_channels: 32,
            ..small_unet(1, 28)
        }),
        Device::Cpu,
    )
    .unwrap();
    let msg = wide.load_weights(&renamed).unwrap_err().to_string();
    assert!(msg.contains(&format!("missing tensor `{name}`")), "{msg}");
    assert!(
        msg.contains(&format!("unexpected tensor `{name}_renamed`")),
        "{msg}"
    );

    // A corrupt or absent file is an error naming it, not a panic.
    let corrupt = dir.join("corrupt.safetensors");
    std::fs::write(&corrupt, b"not a safetensors file").unwrap();
    assert!(wide
        .load_weights(&corrupt)
        .unwrap_err()
        .to_string()
        .contains("corrupt.safetensors"));
    assert!(wide
        .load_weights(dir.join("absent.safetensors"))
        .unwrap_err()
        .to_string()
        .contains("absent.safetensors"));
    std::fs::remove_dir_all(&dir).unwrap();
}
