//! The optimizer against a second implementation: Adam, AdamW and RAdam
//! written out per scalar in f64 from the published algorithms (Kingma &
//! Ba 2015, Alg. 1; Loshchilov & Hutter 2019, Alg. 2 with PyTorch's
//! `lr`-scaled decay; Liu et al. 2020, Alg. 2), with global-norm clipping,
//! and the warm-up / cosine learning rate against its formula.

use cm_train::{LrSchedule, Optimizer, OptimizerConfig, OptimizerKind};
use tch::{Kind, Tensor};

/// One parameter vector's reference state.
struct Reference {
    p: Vec<f64>,
    m: Vec<f64>,
    v: Vec<f64>,
    t: i32,
}

impl Reference {
    fn step(&mut self, c: &OptimizerConfig, lr: f64, grads: &[f64], norm: f64) {
        self.t += 1;
        let t = self.t;
        let scale = match c.grad_clip {
            Some(max) if norm > max => max / (norm + 1e-6),
            _ => 1.0,
        };
        let (b1, b2) = (c.beta1, c.beta2);
        let rho_inf = 2.0 / (1.0 - b2) - 1.0;
        let rho_t = rho_inf - 2.0 * t as f64 * b2.powi(t) / (1.0 - b2.powi(t));
        for (i, grad) in grads.iter().enumerate() {
            let g = grad * scale;
            self.p[i] *= 1.0 - lr * c.weight_decay;
            self.m[i] = b1 * self.m[i] + (1.0 - b1) * g;
            self.v[i] = b2 * self.v[i] + (1.0 - b2) * g * g;
            let m_hat = self.m[i] / (1.0 - b1.powi(t));
            let v_hat = self.v[i] / (1.0 - b2.powi(t));
            self.p[i] -= match c.kind {
                OptimizerKind::Adam => lr * m_hat / (v_hat.sqrt() + c.eps),
                OptimizerKind::Radam if rho_t > 5.0 => {
                    let r = ((rho_t - 4.0) * (rho_t - 2.0) * rho_inf
                        / ((rho_inf - 4.0) * (rho_inf - 2.0) * rho_t))
                        .sqrt();
                    // PyTorch adds eps to sqrt(v), not to sqrt(v_hat).
                    let adaptive = (1.0 - b2.powi(t)).sqrt() / (self.v[i].sqrt() + c.eps);
                    lr * m_hat * r * adaptive
                }
                OptimizerKind::Radam => lr * m_hat,
            };
        }
    }
}

/// Runs `steps` updates with deterministic, varying gradients on two
/// parameters (a matrix and a vector) through `Optimizer` and the
/// reference; returns the largest relative difference of the weights.
fn largest_difference(config: OptimizerConfig, steps: u64) -> f64 {
    let init: Vec<f64> = (0..12).map(|i| ((i as f64) * 0.37).sin()).collect();
    let a = Tensor::from_slice(&init[..8].iter().map(|&x| x as f32).collect::<Vec<_>>())
        .reshape([2, 4])
        .set_requires_grad(true);
    let b = Tensor::from_slice(&init[8..].iter().map(|&x| x as f32).collect::<Vec<_>>())
        .set_requires_grad(true);
    let mut opt = Optimizer::new(
        vec![
            ("a".into(), a.shallow_clone()),
            ("b".into(), b.shallow_clone()),
        ],
        config,
    );
    let mut reference = Reference {
        p: init.clone(),
        m: vec![0.0; 12],
        v: vec![0.0; 12],
        t: 0,
    };
    for step in 0..steps {
        // Gradients of sum(p * g) are g: magnitudes vary over steps, so
        // clipping engages on some and not on others.
        let g: Vec<f64> = (0..12)
            .map(|i| (1.0 + 2.0 * ((step % 5) as f64)) * ((i * 7 + step as usize * 3) as f64).cos())
            .collect();
        let gt = |r: std::ops::Range<usize>| {
            Tensor::from_slice(&g[r].iter().map(|&x| x as f32).collect::<Vec<_>>())
        };
        opt.zero_grad();
        let loss =
            (&a * gt(0..8).reshape([2, 4])).sum(Kind::Float) + (&b * gt(8..12)).sum(Kind::Float);
        loss.backward();
        let norm = opt.grad_norm();
        let norm_ref = g.iter().map(|x| x * x).sum::<f64>().sqrt();
        assert!(
            (norm - norm_ref).abs() < 1e-5 * norm_ref,
            "grad norm {norm} vs {norm_ref}"
        );
        let lr = config.lr_at(step, steps);
        opt.step(lr, norm);
        reference.step(&config, lr, &g, norm_ref);
    }
    let got: Vec<f64> = [a, b]
        .iter()
        .flat_map(|t| Vec::<f32>::try_from(t.detach().flatten(0, -1)).unwrap())
        .map(f64::from)
        .collect();
    got.iter()
        .zip(&reference.p)
        .map(|(x, y)| (x - y).abs() / y.abs().max(1e-2))
        .fold(0.0, f64::max)
}

fn config(kind: OptimizerKind) -> OptimizerConfig {
    OptimizerConfig {
        kind,
        lr: 0.05,
        grad_clip: Some(6.0),
        ..OptimizerConfig::default()
    }
}

#[test]
fn adam_matches_the_algorithm() {
    let d = largest_difference(config(OptimizerKind::Adam), 30);
    assert!(d < 1e-5, "Adam: relative difference {d}");
}

#[test]
fn adamw_matches_the_algorithm_and_decays_the_weights() {
    let c = OptimizerConfig {
        weight_decay: 0.5,
        ..config(OptimizerKind::Adam)
    };
    let d = largest_difference(c, 30);
    assert!(d < 1e-5, "AdamW: relative difference {d}");
    // The decay is not a no-op: without it the weights differ.
    let without = OptimizerConfig {
        weight_decay: 0.0,
        ..c
    };
    let mut reference = Reference {
        p: vec![1.0],
        m: vec![0.0],
        v: vec![0.0],
        t: 0,
    };
    let mut plain = Reference {
        p: vec![1.0],
        m: vec![0.0],
        v: vec![0.0],
        t: 0,
    };
    reference.step(&c, 0.05, &[0.0], 0.0);
    plain.step(&without, 0.05, &[0.0], 0.0);
    assert!((reference.p[0] - 0.975).abs() < 1e-12 && plain.p[0] == 1.0);
}

#[test]
fn radam_matches_the_algorithm_through_its_rectification() {
    // rho_t passes 5 at step 6 with beta2 = 0.999: 30 steps cover both
    // branches.
    let d = largest_difference(config(OptimizerKind::Radam), 30);
    assert!(d < 1e-5, "RAdam: relative difference {d}");
    let c = OptimizerConfig {
        weight_decay: 0.1,
        ..config(OptimizerKind::Radam)
    };
    let d = largest_difference(c, 30);
    assert!(
        d < 1e-5,
        "RAdam with decoupled decay: relative difference {d}"
    );
}

#[test]
fn cosine_schedule_follows_its_formula_after_warm_up() {
    let c = OptimizerConfig {
        lr: 1e-3,
        warmup_steps: 10,
        schedule: LrSchedule::Cosine,
        min_lr_ratio: 0.1,
        ..OptimizerConfig::default()
    };
    let total = 110;
    // Warm-up: linear to lr.
    assert!((c.lr_at(0, total) - 1e-4).abs() < 1e-15);
    assert!((c.lr_at(9, total) - 1e-3).abs() < 1e-15);
    // Start, middle and end of the cosine: lr, the mean of lr and the
    // floor, the floor; p = (step - 10) / 99.
    assert!((c.lr_at(10, total) - 1e-3).abs() < 1e-15);
    let mid = 10 + 99 / 2;
    let p = (mid - 10) as f64 / 99.0;
    let expected = 1e-4 + 9e-4 * 0.5 * (1.0 + (std::f64::consts::PI * p).cos());
    assert!((c.lr_at(mid, total) - expected).abs() < 1e-15);
    assert!((c.lr_at(109, total) - 1e-4).abs() < 1e-15);
    // Beyond the run (a resume with more steps is a new schedule): the floor.
    assert!((c.lr_at(500, total) - 1e-4).abs() < 1e-15);
    // Monotone after warm-up.
    let rates: Vec<f64> = (10..total).map(|s| c.lr_at(s, total)).collect();
    assert!(rates.windows(2).all(|w| w[1] <= w[0]));
    // Constant ignores the total.
    let flat = OptimizerConfig {
        schedule: LrSchedule::Constant,
        ..c
    };
    assert_eq!(flat.lr_at(50, total), 1e-3);
}

#[test]
fn out_of_range_decay_and_floor_are_refused_by_name() {
    for (wd, floor, field) in [
        (1.5, 0.0, "weight_decay"),
        (-0.1, 0.0, "weight_decay"),
        (0.0, 1.5, "min_lr_ratio"),
    ] {
        let c = OptimizerConfig {
            weight_decay: wd,
            min_lr_ratio: floor,
            ..OptimizerConfig::default()
        };
        let err = c.validate_at("train.optimizer.").unwrap_err().to_string();
        assert!(err.contains(&format!("train.optimizer.{field}")), "{err}");
    }
    let flips = OptimizerConfig {
        lr: 2.0,
        weight_decay: 0.9,
        ..OptimizerConfig::default()
    };
    let err = flips
        .validate_at("train.optimizer.")
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("train.optimizer.weight_decay") && err.contains("lr * weight_decay"),
        "{err}"
    );
    let toml = "lr = 1e-3\nschedule = \"cosine\"\nmin_lr_ratio = 0.05\nweight_decay = 0.01\n";
    let parsed: OptimizerConfig = toml::from_str(toml).unwrap();
    assert_eq!(parsed.schedule, LrSchedule::Cosine);
    assert!(toml::from_str::<OptimizerConfig>("schedule = \"linear\"").is_err());
}

#[test]
fn defaults_write_the_same_toml_as_before_the_schedule_existed() {
    // Stage folders (teachers, autoencoders) are keyed by their config's
    // TOML text: new fields at their defaults must not change it.
    let text = toml::to_string(&OptimizerConfig::default()).unwrap();
    assert_eq!(
        text,
        "kind = \"adam\"\nlr = 0.0002\nbeta1 = 0.9\nbeta2 = 0.999\neps = 0.00000001\nwarmup_steps = 0\n"
    );
    let cosine = OptimizerConfig {
        schedule: LrSchedule::Cosine,
        min_lr_ratio: 0.1,
        weight_decay: 0.01,
        ..OptimizerConfig::default()
    };
    let back: OptimizerConfig = toml::from_str(&toml::to_string(&cosine).unwrap()).unwrap();
    assert_eq!(back, cosine);
}
