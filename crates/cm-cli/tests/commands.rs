//! The `cm sample`, `cm edit` and `cm export-images` commands end to end on
//! a small random-weight model: files written, reproducibility across
//! chunkings, known pixels kept through PNG round trips, errors named.

use std::path::{Path, PathBuf};
use std::process::Command;

use cm_core::ConsistencyConfig;
use cm_nets::{Model, NetConfig};
use cm_sample::ModelCard;
use tch::{Device, Kind, Tensor};

fn cm(args: &[&str]) -> (bool, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_cm"))
        .args(args)
        .args(["--threads", "1", "--device", "cpu"])
        .output()
        .expect("run cm");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// A consistency card for the fmnist-unet preset with random weights
/// (perturbed, so the zero-initialised output layer does not make every
/// sample the same).
fn card(dir: &Path) -> PathBuf {
    tch::manual_seed(0);
    let model = Model::new(NetConfig::preset("fmnist-unet").unwrap(), Device::Cpu).unwrap();
    tch::no_grad(|| {
        for mut v in model.var_store().trainable_variables() {
            let _ = v.g_add_(&(v.randn_like() * 0.05));
        }
    });
    model.save(dir.join("w.safetensors")).unwrap();
    let card = ModelCard::Consistency {
        weights: "w.safetensors".into(),
        consistency: ConsistencyConfig::default(),
        timesteps: [("2".to_string(), vec![0.821])].into(),
        scheduler: None,
        autoencoder: None,
        guidance: None,
        lora: Vec::new(),
    };
    let path = dir.join("model.toml");
    card.save(&path).unwrap();
    path
}

/// The same for a class-conditional network (10 classes).
fn conditional_card(dir: &Path) -> PathBuf {
    let NetConfig::Unet(mut unet) = NetConfig::preset("fmnist-unet").unwrap() else {
        panic!("fmnist-unet is a U-Net preset");
    };
    unet.num_classes = 10;
    tch::manual_seed(1);
    let model = Model::new(NetConfig::Unet(unet), Device::Cpu).unwrap();
    tch::no_grad(|| {
        for mut v in model.var_store().trainable_variables() {
            let _ = v.g_add_(&(v.randn_like() * 0.05));
        }
    });
    model.save(dir.join("wc.safetensors")).unwrap();
    let card = ModelCard::Consistency {
        weights: "wc.safetensors".into(),
        consistency: ConsistencyConfig::default(),
        timesteps: Default::default(),
        scheduler: None,
        autoencoder: None,
        guidance: None,
        lora: Vec::new(),
    };
    let path = dir.join("conditional.toml");
    card.save(&path).unwrap();
    path
}

fn tensor(path: &Path, name: &str) -> Tensor {
    let tensors = Tensor::read_safetensors(path).unwrap();
    tensors.into_iter().find(|(n, _)| n == name).unwrap().1
}

fn images(path: &Path) -> Tensor {
    let tensors = Tensor::read_safetensors(path).unwrap();
    let (_, t) = tensors.into_iter().find(|(n, _)| n == "images").unwrap();
    t
}

fn png(path: &Path) -> Vec<u8> {
    image::open(path).unwrap().to_luma8().into_raw()
}

#[test]
fn sample_edit_and_export() {
    let dir = tempfile::tempdir().unwrap();
    let card = card(dir.path());
    let card = card.to_str().unwrap();
    let out = |name: &str| dir.path().join(name).to_str().unwrap().to_string();

    // 5 two-step samples in chunks of 2, then in one chunk of 5.
    let (ok, err) = cm(&[
        "sample",
        "--card",
        card,
        "--steps",
        "2",
        "--count",
        "5",
        "--batch-size",
        "2",
        "--seed",
        "7",
        "--out",
        &out("a"),
    ]);
    assert!(ok, "{err}");
    let (ok, err) = cm(&[
        "sample",
        "--card",
        card,
        "--steps",
        "2",
        "--count",
        "5",
        "--batch-size",
        "5",
        "--seed",
        "7",
        "--out",
        &out("b"),
        "--no-png",
    ]);
    assert!(ok, "{err}");
    let a = images(&dir.path().join("a/samples.safetensors"));
    let b = images(&dir.path().join("b/samples.safetensors"));
    assert_eq!(a.size(), [5, 1, 28, 28]);
    assert_eq!(a.kind(), Kind::Uint8);
    // The noise is drawn per sample, so chunking changes nothing drawn; the
    // network's float rounding may differ between batch sizes (libtorch
    // switches convolution algorithms above batch 1, and cm-nets'
    // small-batch path runs the small chunks), by at most one level in a
    // rare pixel.
    let diff = (a.to_kind(Kind::Int16) - b.to_kind(Kind::Int16)).abs();
    let changed = diff.gt(0).sum(Kind::Int64).int64_value(&[]);
    assert!(
        diff.max().int64_value(&[]) <= 1 && changed * 200 <= a.numel() as i64,
        "chunking changed the samples: {changed} pixels differ"
    );
    // Samples differ from each other, and the PNGs hold the same pixels.
    assert!(!a.get(0).equal(&a.get(1)));
    let p3 = png(&dir.path().join("a/000003.png"));
    assert_eq!(p3, Vec::<u8>::try_from(a.get(3).flatten(0, -1)).unwrap());
    assert!(dir.path().join("a/grid.png").exists());
    assert!(!dir.path().join("b/000000.png").exists());
    // Explicit times: `--taus` sets the step count; the card's stored 2-step
    // time given explicitly reproduces the stored-time run.
    let (ok, err) = cm(&[
        "sample",
        "--card",
        card,
        "--taus",
        "0.821",
        "--count",
        "5",
        "--batch-size",
        "3",
        "--seed",
        "7",
        "--out",
        &out("t"),
        "--no-png",
    ]);
    assert!(ok, "{err}");
    assert!(images(&dir.path().join("t/samples.safetensors")).equal(&a));
    let (ok, err) = cm(&[
        "edit",
        "inpaint",
        "--card",
        card,
        "--data",
        "fashion-mnist",
        "--count",
        "2",
        "--taus",
        "2.0,0.5",
        "--samples",
        "1",
        "--out",
        &out("taus.png"),
    ]);
    assert!(ok, "{err}");
    assert!(err.contains("3 evaluations"), "{err}");
    // Another seed gives other samples.
    let (ok, err) = cm(&[
        "sample",
        "--card",
        card,
        "--steps",
        "2",
        "--count",
        "5",
        "--seed",
        "8",
        "--out",
        &out("c"),
        "--no-png",
    ]);
    assert!(ok, "{err}");
    assert!(!images(&dir.path().join("c/samples.safetensors")).equal(&a));

    // Inpainting a PNG: the pixels outside the box come back unchanged.
    let input = dir.path().join("a/000000.png");
    let (ok, err) = cm(&[
        "edit",
        "inpaint",
        "--card",
        card,
        "--input",
        input.to_str().unwrap(),
        "--mask",
        "box",
        "--box",
        "4,6,10,12",
        "--steps",
        "3",
        "--samples",
        "2",
        "--out",
        &out("inpaint.png"),
        "--out-dir",
        &out("inpaint"),
    ]);
    assert!(ok, "{err}");
    assert!(err.contains("3 evaluations"), "{err}");
    let before = png(&input);
    for s in 0..2 {
        let after = png(&dir.path().join(format!("inpaint/0000-{s}.png")));
        let mut changed = 0;
        for y in 0..28 {
            for x in 0..28 {
                let i = y * 28 + x;
                let inside = (4..14).contains(&y) && (6..18).contains(&x);
                if inside {
                    changed += usize::from(after[i] != before[i]);
                } else {
                    assert_eq!(after[i], before[i], "known pixel ({y}, {x}) changed");
                }
            }
        }
        assert!(
            changed > 20,
            "only {changed} of 120 generated pixels differ"
        );
    }
    assert!(dir.path().join("inpaint.png").exists());

    // Super-resolution keeps 2x2 means; the other editing commands run.
    let (ok, err) = cm(&[
        "edit",
        "super-res",
        "--card",
        card,
        "--input",
        input.to_str().unwrap(),
        "--factor",
        "2",
        "--steps",
        "2",
        "--samples",
        "1",
        "--out",
        &out("sr.png"),
    ]);
    assert!(ok, "{err}");
    let (ok, err) = cm(&[
        "edit",
        "denoise",
        "--card",
        card,
        "--input",
        input.to_str().unwrap(),
        "--sigma",
        "0.3",
        "--out",
        &out("dn.png"),
    ]);
    assert!(ok, "{err}");
    let (ok, err) = cm(&[
        "edit",
        "interpolate",
        "--card",
        card,
        "--pairs",
        "2",
        "--frames",
        "4",
        "--out",
        &out("interp.png"),
    ]);
    assert!(ok, "{err}");
    let (ok, err) = cm(&[
        "edit",
        "sdedit",
        "--card",
        card,
        "--input",
        input.to_str().unwrap(),
        "--tau",
        "1.5",
        "--steps",
        "4",
        "--samples",
        "1",
        "--out",
        &out("sd.png"),
    ]);
    assert!(ok, "{err}");
    for f in ["sr.png", "dn.png", "interp.png", "sd.png"] {
        assert!(dir.path().join(f).exists(), "{f}");
    }

    // An EDM card samples with its own sampler by default (18 Heun steps).
    let edm = ModelCard::Edm {
        weights: "w.safetensors".into(),
        edm: cm_core::EdmConfig::default(),
        sampler: cm_sample::EdmSampler::default(),
        autoencoder: None,
        lora: Vec::new(),
    };
    edm.save(dir.path().join("edm.toml")).unwrap();
    let (ok, err) = cm(&[
        "sample",
        "--card",
        &out("edm.toml"),
        "--count",
        "2",
        "--out",
        &out("edm"),
        "--no-png",
    ]);
    assert!(ok, "{err}");
    assert!(err.contains("2 images, 35 NFE each"), "{err}");
    // The stochastic sampler's churn noise is seeded per image too.
    let churn = ModelCard::Edm {
        weights: "w.safetensors".into(),
        edm: cm_core::EdmConfig::default(),
        sampler: cm_sample::EdmSampler {
            steps: 4,
            s_churn: 40.0,
            ..Default::default()
        },
        autoencoder: None,
        lora: Vec::new(),
    };
    churn.save(dir.path().join("churn.toml")).unwrap();
    for (name, batch) in [("churn1", "1"), ("churn3", "3")] {
        let (ok, err) = cm(&[
            "sample",
            "--card",
            &out("churn.toml"),
            "--count",
            "3",
            "--batch-size",
            batch,
            "--out",
            &out(name),
            "--no-png",
        ]);
        assert!(ok, "{err}");
    }
    assert!(images(&dir.path().join("churn1/samples.safetensors"))
        .equal(&images(&dir.path().join("churn3/samples.safetensors"))));

    // Class-conditional sampling: balanced classes, or one class, stored
    // beside the images; the class changes the samples.
    let cond = conditional_card(dir.path());
    let cond = cond.to_str().unwrap();
    let (ok, err) = cm(&[
        "sample",
        "--card",
        cond,
        "--balanced",
        "--count",
        "12",
        "--batch-size",
        "5",
        "--out",
        &out("bal"),
        "--no-png",
    ]);
    assert!(ok, "{err}");
    let labels = Vec::<i64>::try_from(tensor(
        &dir.path().join("bal/samples.safetensors"),
        "labels",
    ))
    .unwrap();
    assert_eq!(labels, [0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 0, 1]);
    let (ok, err) = cm(&[
        "sample",
        "--card",
        cond,
        "--class",
        "3",
        "--count",
        "12",
        "--out",
        &out("c3"),
        "--no-png",
    ]);
    assert!(ok, "{err}");
    let c3 = dir.path().join("c3/samples.safetensors");
    assert_eq!(
        Vec::<i64>::try_from(tensor(&c3, "labels")).unwrap(),
        [3; 12]
    );
    let balanced = tensor(&dir.path().join("bal/samples.safetensors"), "images");
    // Image 3 had class 3 in both runs (same seed): identical; image 0 did not.
    assert!(balanced.get(3).equal(&tensor(&c3, "images").get(3)));
    assert!(!balanced.get(0).equal(&tensor(&c3, "images").get(0)));
    let (ok, err) = cm(&[
        "sample",
        "--card",
        cond,
        "--class",
        "12",
        "--out",
        &out("c12"),
    ]);
    assert!(!ok);
    assert!(err.contains("class") && err.contains("12"), "{err}");
    let (ok, err) = cm(&["sample", "--card", card, "--balanced", "--out", &out("nb")]);
    assert!(!ok);
    assert!(err.contains("classes"), "{err}");

    // Bad input: clear errors naming what is wrong.
    let (ok, err) = cm(&[
        "edit",
        "colorize",
        "--card",
        card,
        "--input",
        input.to_str().unwrap(),
        "--out",
        &out("col.png"),
    ]);
    assert!(!ok);
    assert!(err.contains("channels"), "{err}");
    let (ok, err) = cm(&[
        "edit",
        "super-res",
        "--card",
        card,
        "--input",
        input.to_str().unwrap(),
        "--factor",
        "3",
        "--out",
        &out("sr3.png"),
    ]);
    assert!(!ok);
    assert!(err.contains("factor"), "{err}");
    let (ok, err) = cm(&["sample", "--card", card, "--steps", "3", "--out", &out("d")]);
    assert!(!ok);
    assert!(err.contains("steps") && err.contains("search"), "{err}");
    let (ok, err) = cm(&["sample", "--card", &out("missing.toml"), "--out", &out("e")]);
    assert!(!ok);
    assert!(err.contains("missing.toml"), "{err}");
}

/// `cm sample --diffusers` on the parity fixtures of cm-sample (small
/// random diffusers `UNet2DModel` folders): the images are the pipeline's
/// images for the same noise when the noise is replayed (tested in
/// cm-sample); here the command line: flags, card files, errors.
#[test]
fn sample_a_diffusers_folder() {
    let fixtures =
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../cm-sample/tests/fixtures/diffusers");
    let folder = fixtures.join("imagenet-like");
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("out");
    let run = |extra: &[&str]| {
        let mut args = vec!["sample", "--count", "3", "--out", out.to_str().unwrap()];
        args.extend_from_slice(extra);
        cm(&args)
    };
    let f = folder.to_str().unwrap();
    let (ok, err) = run(&["--diffusers", f, "--timesteps", "22,0", "--class", "4"]);
    assert!(ok, "{err}");
    assert!(err.contains("2 NFE"), "{err}");
    let two_step = images(&out.join("samples.safetensors"));
    assert_eq!(two_step.size(), [3, 3, 16, 16]);
    assert_eq!(
        tensor(&out.join("samples.safetensors"), "labels"),
        Tensor::from_slice(&[4i64, 4, 4])
    );
    // A card file naming the folder samples the same images.
    let card = dir.path().join("model.toml");
    std::fs::write(
        &card,
        format!("kind = \"diffusers\"\nfolder = {f:?}\n[timesteps]\n2 = [22, 0]\n"),
    )
    .unwrap();
    let (ok, err) = run(&[
        "--card",
        card.to_str().unwrap(),
        "--steps",
        "2",
        "--class",
        "4",
    ]);
    assert!(ok, "{err}");
    assert_eq!(images(&out.join("samples.safetensors")), two_step);
    // The search of continuous times cannot write diffusers timesteps.
    let (ok, err) = cm(&["search-timesteps", "--card", card.to_str().unwrap()]);
    assert!(!ok && err.contains("diffusers card"), "{err}");
    // Default spacing for other step counts; one step.
    let (ok, err) = run(&["--diffusers", f, "--steps", "3", "--balanced"]);
    assert!(ok && err.contains("3 NFE"), "{err}");
    let (ok, err) = run(&["--diffusers", f, "--balanced"]);
    assert!(ok && err.contains("1 NFE"), "{err}");
    // Errors that say what to do.
    for (extra, says) in [
        (&["--diffusers", f][..], "class"),
        (&["--diffusers", f, "--class", "10"][..], "0..10"),
        (
            &["--diffusers", f, "--timesteps", "30,10", "--class", "1"][..],
            "ending with 0",
        ),
        (
            &["--diffusers", f, "--timesteps", "0,22", "--class", "1"][..],
            "descending",
        ),
        (
            &[
                "--diffusers",
                f,
                "--steps",
                "3",
                "--timesteps",
                "22,0",
                "--class",
                "1",
            ][..],
            "one timestep per step",
        ),
        (
            &["--diffusers", f, "--steps", "41", "--class", "1"][..],
            "num_train_timesteps",
        ),
        (
            &["--diffusers", f, "--class", "1", "--guidance", "1"][..],
            "null class",
        ),
        (
            &["--diffusers", fixtures.to_str().unwrap()][..],
            "config.json",
        ),
    ] {
        let (ok, err) = run(extra);
        assert!(!ok, "{extra:?} should fail");
        assert!(err.contains(says), "{extra:?}: {err}");
    }
}

/// `cm export-diffusers`: a cm-rs U-Net consistency model (ADM noise
/// conditioning, widths where every GroupNorm has 32 groups) becomes a
/// diffusers pipeline folder that `cm sample --diffusers` samples to the
/// same images; a model whose architecture does not map is refused by name.
#[test]
fn export_a_model_as_a_diffusers_folder() {
    let dir = tempfile::tempdir().unwrap();
    let unet = cm_nets::UNetConfig {
        in_channels: 3,
        resolution: 8,
        model_channels: 128,
        channel_mult: vec![1, 1],
        num_res_blocks: 1,
        attn_resolutions: vec![4],
        num_classes: 3,
        ..cm_nets::UNetConfig::default()
    };
    tch::manual_seed(2);
    let model = Model::new(NetConfig::Unet(unet), Device::Cpu).unwrap();
    tch::no_grad(|| {
        for mut v in model.var_store().trainable_variables() {
            let _ = v.g_add_(&(v.randn_like() * 0.05));
        }
    });
    model.save(dir.path().join("w.safetensors")).unwrap();
    let card = ModelCard::Consistency {
        weights: "w.safetensors".into(),
        consistency: ConsistencyConfig {
            noise_conditioning: cm_core::NoiseConditioning::Adm,
            ..ConsistencyConfig::default()
        },
        timesteps: Default::default(),
        scheduler: None,
        autoencoder: None,
        guidance: None,
        lora: Vec::new(),
    };
    let card_path = dir.path().join("model.toml");
    card.save(&card_path).unwrap();
    let exported = dir.path().join("exported");
    let (ok, err) = cm(&[
        "export-diffusers",
        "--card",
        card_path.to_str().unwrap(),
        "--out",
        exported.to_str().unwrap(),
    ]);
    assert!(ok, "{err}");
    for file in [
        "model_index.json",
        "unet/config.json",
        "unet/diffusion_pytorch_model.safetensors",
        "scheduler/scheduler_config.json",
        "cm_rs_probe.safetensors",
    ] {
        assert!(exported.join(file).is_file(), "{file}");
    }
    // One step, same seeds: the same images (diffusers clips each step's
    // output; one step's output is clipped by `cm sample` anyway).
    let out_a = dir.path().join("a");
    let out_b = dir.path().join("b");
    let (ok, err) = cm(&[
        "sample",
        "--card",
        card_path.to_str().unwrap(),
        "--class",
        "1",
        "--count",
        "4",
        "--out",
        out_a.to_str().unwrap(),
        "--no-png",
    ]);
    assert!(ok, "{err}");
    let (ok, err) = cm(&[
        "sample",
        "--diffusers",
        exported.to_str().unwrap(),
        "--class",
        "1",
        "--count",
        "4",
        "--out",
        out_b.to_str().unwrap(),
        "--no-png",
    ]);
    assert!(ok, "{err}");
    let a = images(&out_a.join("samples.safetensors")).to_kind(Kind::Int64);
    let b = images(&out_b.join("samples.safetensors")).to_kind(Kind::Int64);
    // Float rounding may move a pixel across a u8 boundary, no further.
    assert!((a - b).abs().max().int64_value(&[]) <= 1);

    // The Fashion-MNIST preset does not map (48-channel attention heads).
    let (ok, err) = cm(&[
        "export-diffusers",
        "--card",
        crate::card(dir.path()).to_str().unwrap(),
        "--out",
        dir.path().join("no").to_str().unwrap(),
    ]);
    assert!(!ok);
    assert!(err.contains("channels_per_head"), "{err}");
}
