//! The autoencoder (`arch = "autoencoder"`): latent shapes, the KL term
//! against the closed form computed element by element, the
//! reparameterised draw's moments, gradients, checkpoints and validation.

use cm_core::{Conditioning, Validate};
use cm_nets::{AutoencoderConfig, DiagonalGaussian, Model, NetConfig};
use tch::{Device, Kind, Tensor};

fn small(in_channels: usize, resolution: usize, mult: Vec<usize>) -> AutoencoderConfig {
    AutoencoderConfig {
        in_channels,
        resolution,
        base_channels: 8,
        channel_mult: mult,
        ..AutoencoderConfig::default()
    }
}

#[test]
fn latents_shrink_by_the_level_count_and_decode_back() {
    let _rng = cm_runtime::lock_global_rng();
    let _guard = tch::no_grad_guard();
    for (c, r, mult, side) in [
        (1, 28, vec![1, 2, 2], 7),
        (3, 32, vec![1, 2, 2], 8),
        (1, 28, vec![1, 2], 14),
        (3, 32, vec![1, 1, 2, 2], 4),
    ] {
        let cfg = small(c, r, mult.clone());
        assert_eq!(cfg.latent_shape(), vec![4, side, side], "{mult:?}");
        let model = Model::new(NetConfig::Autoencoder(cfg), Device::Cpu).unwrap();
        let ae = model.autoencoder().expect("an autoencoder");
        let x = Tensor::rand(
            [2, c as i64, r as i64, r as i64],
            (Kind::Float, Device::Cpu),
        ) * 2.0
            - 1.0;
        let q = ae.encode(&x);
        assert_eq!(q.mean.size(), [2, 4, side, side]);
        assert_eq!(q.logvar.size(), [2, 4, side, side]);
        assert_eq!(ae.decode(&q.mean).size(), x.size());
        // As a network, the model is its reconstruction decode(mean).
        let rec = model.forward_t(
            &x,
            &Tensor::zeros([2], (Kind::Float, Device::Cpu)),
            Conditioning::none(),
            false,
        );
        let want = ae.decode(&q.mean);
        assert_eq!(f64::try_from((rec - want).abs().max()).unwrap(), 0.0);
    }
    // Denoising networks are not autoencoders.
    let unet = Model::new(NetConfig::preset("fmnist-unet").unwrap(), Device::Cpu).unwrap();
    assert!(unet.autoencoder().is_none());
}

#[test]
fn kl_matches_the_closed_form_element_by_element() {
    // KL(N(m, s^2) || N(0, 1)) = -ln s + (s^2 + m^2) / 2 - 1/2 per element,
    // summed per example; computed here in f64 scalars.
    let means = [0.0f64, 1.5, -0.7, 2.0, 0.3, -1.1, 0.0, 0.9];
    let logvars = [0.0f64, -1.0, 0.5, -3.0, 1.2, 0.0, -0.2, 2.0];
    let q = DiagonalGaussian {
        mean: Tensor::from_slice(&means)
            .reshape([2, 1, 2, 2])
            .to_kind(Kind::Float),
        logvar: Tensor::from_slice(&logvars)
            .reshape([2, 1, 2, 2])
            .to_kind(Kind::Float),
    };
    let kl = Vec::<f64>::try_from(q.kl().to_kind(Kind::Double)).unwrap();
    for (b, got) in kl.iter().enumerate() {
        let want: f64 = (4 * b..4 * b + 4)
            .map(|i| {
                let s = (logvars[i] / 2.0).exp();
                -s.ln() + (s * s + means[i] * means[i]) / 2.0 - 0.5
            })
            .sum();
        assert!(
            (got - want).abs() < 1e-5 * want.abs().max(1.0),
            "{b}: {got} vs {want}"
        );
    }
    // The standard normal has no divergence from itself.
    let zero = DiagonalGaussian {
        mean: Tensor::zeros([3, 4, 2, 2], (Kind::Float, Device::Cpu)),
        logvar: Tensor::zeros([3, 4, 2, 2], (Kind::Float, Device::Cpu)),
    };
    assert_eq!(f64::try_from(zero.kl().abs().max()).unwrap(), 0.0);
}

#[test]
fn draws_have_the_posterior_moments() {
    let _rng = cm_runtime::lock_global_rng();
    tch::manual_seed(4);
    let n = 200_000;
    let q = DiagonalGaussian {
        mean: Tensor::full([n, 1, 1, 1], 1.5, (Kind::Float, Device::Cpu)),
        logvar: Tensor::full([n, 1, 1, 1], (0.25f64).ln(), (Kind::Float, Device::Cpu)),
    };
    let z = q.sample().to_kind(Kind::Double);
    let mean = f64::try_from(z.mean(Kind::Double)).unwrap();
    let var = f64::try_from(z.var(true)).unwrap();
    // Standard errors: 0.5 / sqrt(n) = 0.0011 for the mean, about
    // 0.25 sqrt(2 / n) = 0.0008 for the variance; 5 of each.
    assert!((mean - 1.5).abs() < 0.0056, "mean {mean}");
    assert!((var - 0.25).abs() < 0.004, "variance {var}");
    assert_eq!(q.mode().size(), [n, 1, 1, 1]);
}

#[test]
fn every_parameter_gets_a_gradient_and_checkpoints_round_trip() {
    let _rng = cm_runtime::lock_global_rng();
    tch::manual_seed(2);
    let cfg = small(3, 16, vec![1, 2, 2]);
    let model = Model::new(NetConfig::Autoencoder(cfg), Device::Cpu).unwrap();
    let ae = model.autoencoder().unwrap();
    let x = Tensor::rand([2, 3, 16, 16], (Kind::Float, Device::Cpu)) * 2.0 - 1.0;
    // The attention output projection starts at zero (its branch is off),
    // so perturb it first, as training would.
    tch::no_grad(|| {
        for (_, mut v) in model.var_store().variables() {
            let _ = v.g_add_(&(v.randn_like() * 0.01));
        }
    });
    let q = ae.encode(&x);
    let loss =
        (ae.decode(&q.sample()) - &x).abs().mean(Kind::Float) + q.kl().mean(Kind::Float) * 1e-3;
    loss.backward();
    for (name, var) in model.var_store().variables() {
        let g = var.grad();
        assert!(g.defined(), "`{name}` got no gradient");
        let g = f64::try_from(g.abs().sum(Kind::Double)).unwrap();
        assert!(g.is_finite() && g > 0.0, "`{name}` gradient {g}");
    }

    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("ae.safetensors");
    model.save(&path).unwrap();
    let loaded = Model::from_checkpoint(&path, Device::Cpu).unwrap();
    assert_eq!(loaded.config(), model.config());
    let _guard = tch::no_grad_guard();
    let a = ae.decode(ae.encode(&x).mode());
    let b = loaded.autoencoder().unwrap();
    let b = b.decode(b.encode(&x).mode());
    assert_eq!(f64::try_from((a - b).abs().max()).unwrap(), 0.0);
}

#[test]
fn invalid_configs_name_the_field_and_are_not_trainable_as_denoisers() {
    let cases = [
        (small(1, 30, vec![1, 2, 2]), "resolution"),
        (
            AutoencoderConfig {
                latent_channels: 0,
                ..AutoencoderConfig::default()
            },
            "latent_channels",
        ),
        (small(2, 28, vec![1, 2]), "in_channels"),
        (small(1, 28, vec![]), "channel_mult"),
        (
            AutoencoderConfig {
                base_channels: 60_000,
                ..AutoencoderConfig::default()
            },
            "parameters",
        ),
        (
            AutoencoderConfig {
                resolution: 4096,
                channel_mult: vec![1],
                ..AutoencoderConfig::default()
            },
            "mid_attention",
        ),
    ];
    for (cfg, field) in cases {
        let err = cfg.validate().unwrap_err().to_string();
        assert!(err.contains(field), "{field}: {err}");
    }
    let ae = NetConfig::preset("fmnist-autoencoder").unwrap();
    let err = ae.check_trainable().unwrap_err().to_string();
    assert!(err.contains("train-autoencoder"), "{err}");
    assert!(NetConfig::preset("fmnist-unet")
        .unwrap()
        .check_trainable()
        .is_ok());
}
