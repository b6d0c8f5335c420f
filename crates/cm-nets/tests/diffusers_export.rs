//! cm-rs's U-Net exported as a diffusers `UNet2DModel` computes the same
//! function: the exported weights, loaded back through the diffusers
//! builder (`DiffusersUNet`, itself checked against diffusers by
//! cm-sample's parity fixtures), give the original network's outputs.

use cm_core::Conditioning;
use cm_nets::diffusers_export::{to_diffusers, unet_to_diffusers_config};
use cm_nets::{Model, NetConfig, UNetConfig};
use tch::{Device, Kind, Tensor};

/// The smallest widths where every GroupNorm has 32 groups (C >= 128).
fn mappable(num_classes: usize, scale_shift: bool) -> UNetConfig {
    UNetConfig {
        in_channels: 3,
        resolution: 8,
        model_channels: 128,
        channel_mult: vec![1, 1],
        num_res_blocks: 1,
        attn_resolutions: vec![4],
        channels_per_head: 64,
        dropout: 0.1,
        num_classes,
        scale_shift,
        ..UNetConfig::default()
    }
}

fn perturbed(config: UNetConfig) -> Model {
    tch::manual_seed(1);
    let model = Model::new(NetConfig::Unet(config), Device::Cpu).unwrap();
    // The zero-initialised output and residual convolutions would hide
    // mistakes: give every weight a value (not the embedding's frequency
    // buffer, which diffusers computes rather than stores).
    tch::no_grad(|| {
        for mut v in model.var_store().trainable_variables() {
            let _ = v.g_add_(&(v.randn_like() * 0.05));
        }
    });
    model
}

#[test]
fn an_exported_unet_computes_the_same_function() {
    let _rng = cm_runtime::lock_global_rng();
    for (classes, scale_shift) in [(0, true), (10, true), (0, false)] {
        let model = perturbed(mappable(classes, scale_shift));
        let (config, tensors) = to_diffusers(&model).unwrap();
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("config.json"), config.to_json()).unwrap();
        let weights = dir.path().join("diffusion_pytorch_model.safetensors");
        Tensor::write_safetensors(&tensors, &weights).unwrap();
        let back = Model::from_diffusers(&weights, Device::Cpu).unwrap();
        assert_eq!(back.num_params(), model.num_params());
        let x = Tensor::randn([3, 3, 8, 8], (Kind::Float, Device::Cpu));
        let c_noise = Tensor::from_slice(&[1.2f32, -0.3, -1.5]);
        let labels = Tensor::from_slice(&[0i64, 9, 10]); // 10: the null class row
        let cond = Conditioning::from_class((classes > 0).then_some(&labels));
        let want = tch::no_grad(|| model.forward_t(&x, &c_noise, cond, false));
        let got = tch::no_grad(|| back.forward_t(&x, &c_noise, cond, false));
        let err = (&got - &want).abs().max().double_value(&[]) / want.abs().max().double_value(&[]);
        assert!(
            err < 1e-5,
            "classes {classes}, scale_shift {scale_shift}: {err:e}"
        );
    }
}

#[test]
fn what_does_not_map_is_named() {
    let _rng = cm_runtime::lock_global_rng();
    let fmnist = match NetConfig::preset("fmnist-unet").unwrap() {
        NetConfig::Unet(c) => c,
        _ => unreachable!(),
    };
    // 48 channels at the attention level: not whole 64-channel heads.
    let err = unet_to_diffusers_config(&fmnist).unwrap_err().to_string();
    assert!(err.contains("channels_per_head"), "{err}");
    // 64 channels get 16 groups in cm-rs, their 128-channel concatenations 32.
    let narrow = UNetConfig {
        model_channels: 64,
        ..mappable(0, true)
    };
    let err = unet_to_diffusers_config(&narrow).unwrap_err().to_string();
    assert!(err.contains("group count"), "{err}");
    for (config, field) in [
        (
            UNetConfig {
                noise_embedding: cm_nets::layers::NoiseEmbedding::Fourier,
                ..mappable(0, true)
            },
            "noise_embedding",
        ),
        (
            UNetConfig {
                resample: cm_nets::Resample::Learned,
                ..mappable(0, true)
            },
            "resample",
        ),
        (
            UNetConfig {
                skip_scale: std::f64::consts::FRAC_1_SQRT_2,
                ..mappable(0, true)
            },
            "skip_scale",
        ),
        (
            UNetConfig {
                channels_per_head: 96,
                ..mappable(0, true)
            },
            "channels_per_head",
        ),
        (
            UNetConfig {
                channel_mult: vec![2, 2],
                ..mappable(0, true)
            },
            "channel_mult",
        ),
    ] {
        let err = unet_to_diffusers_config(&config).unwrap_err().to_string();
        assert!(err.contains(field), "{field}: {err}");
    }
    let dit = Model::new(NetConfig::preset("fmnist-dit").unwrap(), Device::Cpu).unwrap();
    assert!(to_diffusers(&dit).unwrap_err().to_string().contains("arch"));
}

#[test]
fn size_estimates_of_unvalidated_diffusers_configs_do_not_panic() {
    let _rng = cm_runtime::lock_global_rng();
    use cm_nets::DiffusersUNetConfig;
    for config in [
        DiffusersUNetConfig {
            block_out_channels: vec![],
            ..DiffusersUNetConfig::default()
        },
        DiffusersUNetConfig {
            down_block_types: vec!["DownBlock2D".into()],
            ..DiffusersUNetConfig::default()
        },
    ] {
        let net = NetConfig::DiffusersUnet2d(config);
        assert!(net.approx_params().is_infinite());
        assert!(cm_core::Validate::validate(&net).is_err());
    }
}
