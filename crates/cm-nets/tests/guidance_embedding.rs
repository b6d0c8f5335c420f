//! LCM's w-embedding in the U-Net and the toy MLP (`guidance_embedding =
//! true`, the shared `GuidanceEmbed` layer): a student
//! built from its teacher with `copy_matching_from` starts equal to it for
//! every `w` (the projection is zero-initialised); once trained, `w`
//! changes the output, also through the inference embedding cache; inputs
//! are checked.

use cm_core::Conditioning;
use cm_nets::{MlpConfig, Model, NetConfig, UNetConfig};
use tch::{Device, Kind, Tensor};

fn teacher_config() -> UNetConfig {
    UNetConfig {
        in_channels: 4,
        resolution: 8,
        model_channels: 16,
        channel_mult: vec![1, 2],
        attn_resolutions: vec![4],
        channels_per_head: 16,
        num_classes: 3,
        dropout: 0.0,
        ..UNetConfig::default()
    }
}

fn mlp_config() -> MlpConfig {
    MlpConfig {
        hidden: 32,
        depth: 2,
        emb_channels: 16,
        num_classes: 3,
        ..MlpConfig::default()
    }
}

#[test]
fn a_student_starts_equal_to_its_teacher_and_w_then_matters() {
    let unet = |g| {
        NetConfig::Unet(UNetConfig {
            guidance_embedding: g,
            ..teacher_config()
        })
    };
    let mlp = |g| {
        NetConfig::Mlp(MlpConfig {
            guidance_embedding: g,
            ..mlp_config()
        })
    };
    student_starts_equal(unet(false), unet(true), &[3, 4, 8, 8]);
    student_starts_equal(mlp(false), mlp(true), &[3, 2]);
}

fn student_starts_equal(teacher: NetConfig, student: NetConfig, shape: &[i64]) {
    let _rng = cm_runtime::lock_global_rng();
    tch::manual_seed(11);
    let teacher = Model::new(teacher, Device::Cpu).unwrap();
    // Non-trivial teacher weights (fresh output layers are zero).
    tch::no_grad(|| {
        for (_, mut v) in teacher.var_store().variables() {
            let _ = v.g_add_(&(v.randn_like() * 0.05));
        }
    });
    let mut student = Model::new(student, Device::Cpu).unwrap();
    let missing = student.copy_matching_from(&teacher).unwrap();
    assert_eq!(
        missing,
        vec![
            "map_guidance.freqs".to_string(),
            "map_guidance_proj.bias".into(),
            "map_guidance_proj.weight".into()
        ]
    );
    let x = Tensor::randn(shape, (Kind::Float, Device::Cpu));
    let c = Tensor::from_slice(&[0.1f32, -0.5, 1.2]);
    let labels = Tensor::from_slice(&[0i64, 2, 3]);
    let _guard = tch::no_grad_guard();
    let want = teacher.forward_t(&x, &c, Conditioning::class(&labels), false);
    for w in [0.0f64, 1.5, 7.0] {
        let ws = Tensor::full([3], w, (Kind::Float, Device::Cpu));
        let cond = Conditioning::class(&labels).with_guidance(&ws);
        student.check_input(&x, cond).unwrap();
        let got = student.forward_t(&x, &c, cond, false);
        assert_eq!(
            f64::try_from((got - &want).abs().max()).unwrap(),
            0.0,
            "w = {w}"
        );
    }
    // A trained projection: different w, different outputs (the second
    // call at the same noise levels goes through the embedding cache).
    for (name, mut v) in student.var_store().variables() {
        if name.starts_with("map_guidance_proj") {
            let _ = v.g_add_(&(v.randn_like() * 0.1));
        }
    }
    let out = |w: f64| {
        let ws = Tensor::full([3], w, (Kind::Float, Device::Cpu));
        student.forward_t(
            &x,
            &c,
            Conditioning::class(&labels).with_guidance(&ws),
            false,
        )
    };
    let (a, b, a_again) = (out(1.0), out(4.0), out(1.0));
    assert!(f64::try_from((&a - &b).abs().max()).unwrap() > 1e-4);
    assert_eq!(f64::try_from((&a - a_again).abs().max()).unwrap(), 0.0);
    // No w is w = 0.
    let none = student.forward_t(&x, &c, Conditioning::class(&labels), false);
    let zero = out(0.0);
    assert_eq!(f64::try_from((none - zero).abs().max()).unwrap(), 0.0);
}

#[test]
fn guidance_inputs_are_checked_and_copies_must_fit() {
    let _rng = cm_runtime::lock_global_rng();
    let plain = Model::new(NetConfig::Unet(teacher_config()), Device::Cpu).unwrap();
    let x = Tensor::zeros([2, 4, 8, 8], (Kind::Float, Device::Cpu));
    let w = Tensor::ones([2], (Kind::Float, Device::Cpu));
    let err = plain
        .check_input(&x, Conditioning::none().with_guidance(&w))
        .unwrap_err()
        .to_string();
    assert!(err.contains("does not embed a guidance scale"), "{err}");
    let mut student = Model::new(
        NetConfig::Unet(UNetConfig {
            guidance_embedding: true,
            ..teacher_config()
        }),
        Device::Cpu,
    )
    .unwrap();
    let bad = Tensor::ones([3], (Kind::Float, Device::Cpu));
    let err = student
        .check_input(&x, Conditioning::none().with_guidance(&bad))
        .unwrap_err()
        .to_string();
    assert!(err.contains("guidance scales of shape [2]"), "{err}");
    // The teacher must fit inside the student, not the other way round.
    let mut teacher = Model::new(NetConfig::Unet(teacher_config()), Device::Cpu).unwrap();
    let err = teacher
        .copy_matching_from(&student)
        .unwrap_err()
        .to_string();
    assert!(err.contains("map_guidance"), "{err}");
    let wider = Model::new(
        NetConfig::Unet(UNetConfig {
            model_channels: 32,
            ..teacher_config()
        }),
        Device::Cpu,
    )
    .unwrap();
    assert!(student.copy_matching_from(&wider).is_err());
    // diffusers' UNet2DModel has no w-embedding: export refuses it.
    let NetConfig::Unet(c) = student.config().clone() else {
        unreachable!()
    };
    let err = cm_nets::diffusers_export::unet_to_diffusers_config(&c)
        .unwrap_err()
        .to_string();
    assert!(err.contains("guidance_embedding"), "{err}");
}

/// The class gate (`guidance_class_gate`): zero-initialised, the student
/// still starts equal to its teacher; with the gate's output held at `s`
/// (bias `s`, weights 0) the student is the teacher whose class rows were
/// moved by hand to `e_c + s (e_c - e_null)`: `s = -1` is the teacher's
/// null class (the unconditional model) for every label.
#[test]
fn the_class_gate_starts_closed_and_moves_the_class_towards_or_from_null() {
    let unet = |e, g| {
        NetConfig::Unet(UNetConfig {
            guidance_embedding: e,
            guidance_class_gate: g,
            ..teacher_config()
        })
    };
    let mlp = |e, g| {
        NetConfig::Mlp(MlpConfig {
            guidance_embedding: e,
            guidance_class_gate: g,
            ..mlp_config()
        })
    };
    class_gate_matches_edited_tables(unet(false, false), unet(true, true), &[3, 4, 8, 8]);
    class_gate_matches_edited_tables(mlp(false, false), mlp(true, true), &[3, 2]);
    for config in [unet(false, true), mlp(false, true)] {
        let err = Model::new(config, Device::Cpu).unwrap_err().to_string();
        assert!(err.contains("guidance_class_gate"), "{err}");
    }
    let unconditional = NetConfig::Unet(UNetConfig {
        guidance_embedding: true,
        guidance_class_gate: true,
        num_classes: 0,
        ..teacher_config()
    });
    assert!(Model::new(unconditional, Device::Cpu).is_err());
}

fn class_gate_matches_edited_tables(teacher: NetConfig, student: NetConfig, shape: &[i64]) {
    let _rng = cm_runtime::lock_global_rng();
    tch::manual_seed(12);
    let teacher = Model::new(teacher, Device::Cpu).unwrap();
    tch::no_grad(|| {
        for (_, mut v) in teacher.var_store().variables() {
            let _ = v.g_add_(&(v.randn_like() * 0.05));
        }
    });
    let mut student = Model::new(student, Device::Cpu).unwrap();
    let mut missing = student.copy_matching_from(&teacher).unwrap();
    missing.sort();
    assert!(
        missing.contains(&"map_guidance_gate.weight".to_string()),
        "{missing:?}"
    );
    assert!(
        missing.contains(&"map_guidance_gate.bias".to_string()),
        "{missing:?}"
    );
    let x = Tensor::randn(shape, (Kind::Float, Device::Cpu));
    let c = Tensor::from_slice(&[0.1f32, -0.5, 1.2]);
    let labels = Tensor::from_slice(&[0i64, 2, 1]);
    let nulls = Tensor::from_slice(&[3i64, 3, 3]);
    let ws = Tensor::from_slice(&[-1.0f32, 0.7, 4.0]);
    let max_diff = |a: &Tensor, b: &Tensor| f64::try_from((a - b).abs().max()).unwrap();
    let _guard = tch::no_grad_guard();
    let student_out = |student: &Model| {
        student.forward_t(
            &x,
            &c,
            Conditioning::class(&labels).with_guidance(&ws),
            false,
        )
    };
    let want = teacher.forward_t(&x, &c, Conditioning::class(&labels), false);
    assert_eq!(max_diff(&student_out(&student), &want), 0.0, "closed gate");
    for s in [-1.0f64, 0.5] {
        for (name, mut v) in student.var_store().variables() {
            if name == "map_guidance_gate.bias" {
                let _ = v.fill_(s);
            }
        }
        let got = student_out(&student);
        // The teacher with every class row moved by hand.
        let mut edited = Model::new(teacher.config().clone(), Device::Cpu).unwrap();
        edited.copy_matching_from(&teacher).unwrap();
        for (name, mut v) in edited.var_store().variables() {
            if name == "map_label.weight" {
                let null = v.get(3);
                let moved = &v * (1.0 + s) - null.unsqueeze(0) * s;
                let _ = v.copy_(&moved);
            }
        }
        let want = edited.forward_t(&x, &c, Conditioning::class(&labels), false);
        assert!(
            max_diff(&got, &want) < 1e-5,
            "s = {s}: {}",
            max_diff(&got, &want)
        );
        if s == -1.0 {
            let unconditional = teacher.forward_t(&x, &c, Conditioning::class(&nulls), false);
            assert!(
                max_diff(&got, &unconditional) < 1e-5,
                "s = -1 is the null class"
            );
        }
    }
}
