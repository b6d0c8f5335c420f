//! `cm lora merge`, `cm lora show` and `cm sample --lora` end to end on a
//! small random-weight model with two random adapters: the merged card
//! samples what the base card with the adapters applied on the fly samples;
//! an adapter of another base, a bad `FILE:WEIGHT` and an occupied output
//! folder are clear errors.

use std::path::{Path, PathBuf};
use std::process::Command;

use cm_core::ConsistencyConfig;
use cm_nets::lora::LoraConfig;
use cm_nets::{Model, NetConfig, UNetConfig};
use cm_sample::ModelCard;
use tch::{Device, Tensor};

fn cm(args: &[&str]) -> (bool, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_cm"))
        .args(args)
        .output()
        .expect("run cm");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn net() -> NetConfig {
    NetConfig::Unet(UNetConfig {
        model_channels: 16,
        channel_mult: vec![1, 2],
        attn_resolutions: vec![14],
        ..UNetConfig::default()
    })
}

/// A random base model (every weight perturbed) and its consistency card.
fn base(dir: &Path, seed: i64) -> (Model, PathBuf) {
    tch::manual_seed(seed);
    let model = Model::new(net(), Device::Cpu).unwrap();
    tch::no_grad(|| {
        for mut v in model.var_store().trainable_variables() {
            let _ = v.g_add_(&(v.randn_like() * 0.05));
        }
    });
    std::fs::create_dir_all(dir).unwrap();
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
    (model, path)
}

/// A random adapter of `model` written to `path`.
fn adapter(model: &mut Model, name: &str, rank: usize, seed: i64, path: &Path) {
    let config = LoraConfig {
        rank,
        alpha: rank as f64,
        ..LoraConfig::default()
    };
    model.add_adapter(name, &config, 1.0).unwrap();
    tch::manual_seed(seed);
    tch::no_grad(|| {
        for (n, mut v) in model.var_store().variables() {
            if n.contains(&format!(".{name}.")) {
                let r = v.randn_like() * 0.2;
                v.copy_(&r);
            }
        }
    });
    model.save_adapter(name, path).unwrap();
}

fn samples(dir: &Path) -> Tensor {
    let t = Tensor::read_safetensors(dir.join("samples.safetensors")).unwrap();
    t.into_iter().find(|(n, _)| n == "images").unwrap().1
}

fn sample(card: &Path, out: &Path, extra: &[&str]) {
    let mut args = vec![
        "sample",
        "--card",
        card.to_str().unwrap(),
        "--count",
        "6",
        "--steps",
        "2",
        "--no-png",
        "--threads",
        "1",
        "--device",
        "cpu",
        "--out",
        out.to_str().unwrap(),
    ];
    args.extend_from_slice(extra);
    let (ok, err) = cm(&args);
    assert!(ok, "{err}");
}

#[test]
fn merged_cards_sample_what_adapters_on_the_fly_sample() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let (mut model, card) = base(&d.join("base"), 0);
    let (style, fast) = (d.join("style.safetensors"), d.join("fast.safetensors"));
    adapter(&mut model, "style", 4, 1, &style);
    adapter(&mut model, "fast", 2, 2, &fast);
    let lora = |f: &Path, w: &str| format!("{}:{w}", f.display());
    let (style_arg, fast_arg) = (lora(&style, "0.6"), lora(&fast, "1.2"));

    sample(&card, &d.join("plain"), &[]);
    sample(
        &card,
        &d.join("fly"),
        &["--lora", &style_arg, "--lora", &fast_arg],
    );
    let (ok, err) = cm(&[
        "lora",
        "merge",
        "--base",
        card.to_str().unwrap(),
        "--adapter",
        &style_arg,
        "--adapter",
        &fast_arg,
        "--out",
        d.join("merged").to_str().unwrap(),
    ]);
    assert!(ok, "{err}");
    assert!(err.contains("merged 2 adapter(s)"), "{err}");
    let merged_card = d.join("merged/model.toml");
    let loaded = ModelCard::load(&merged_card).unwrap();
    assert!(loaded.lora().is_empty());
    sample(&merged_card, &d.join("merged-out"), &[]);

    let (plain, fly, merged) = (
        samples(&d.join("plain")),
        samples(&d.join("fly")),
        samples(&d.join("merged-out")),
    );
    let diff = |a: &Tensor, b: &Tensor| {
        (a.to_kind(tch::Kind::Int) - b.to_kind(tch::Kind::Int))
            .abs()
            .max()
            .int64_value(&[])
    };
    assert!(diff(&plain, &fly) > 10, "the adapters changed nothing");
    // u8 pixels: merged and on-the-fly agree up to float rounding.
    assert!(diff(&fly, &merged) <= 1, "{}", diff(&fly, &merged));

    // The merged model remembers its base: an adapter of the base loads.
    sample(
        &merged_card,
        &d.join("merged-style"),
        &["--lora", &style_arg],
    );

    // `cm lora show`.
    let out = Command::new(env!("CARGO_BIN_EXE_cm"))
        .args(["lora", "show", style.to_str().unwrap()])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success());
    assert!(
        text.contains("\"rank\":4") && text.contains(".lora_A.weight"),
        "{text}"
    );

    // Errors: another base, a bad weight, an occupied folder.
    let (mut other, _) = base(&d.join("other"), 9);
    let stranger = d.join("stranger.safetensors");
    adapter(&mut other, "x", 2, 3, &stranger);
    let (ok, err) = cm(&[
        "sample",
        "--card",
        card.to_str().unwrap(),
        "--lora",
        stranger.to_str().unwrap(),
        "--out",
        d.join("bad").to_str().unwrap(),
        "--threads",
        "1",
    ]);
    assert!(!ok);
    assert!(err.contains("trained on base weights"), "{err}");
    let (ok, err) = cm(&[
        "sample",
        "--card",
        card.to_str().unwrap(),
        "--lora",
        &lora(&style, "heavy"),
        "--out",
        d.join("bad").to_str().unwrap(),
    ]);
    assert!(!ok);
    assert!(err.contains("FILE:WEIGHT"), "{err}");
    let (ok, err) = cm(&[
        "lora",
        "merge",
        "--base",
        card.to_str().unwrap(),
        "--adapter",
        &style_arg,
        "--out",
        d.join("merged").to_str().unwrap(),
    ]);
    assert!(!ok);
    assert!(err.contains("already holds a model card"), "{err}");
}
