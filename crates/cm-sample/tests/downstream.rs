//! A crate outside the workspace, built from the three files of
//! docs/embedding.md, depending on cm-sample and cm-build by path: it must
//! build with no `LIBTORCH` and no `LD_LIBRARY_PATH` in its environment (the
//! `[env]` table of `cargo xtask env --cargo-config` in its
//! `.cargo/config.toml`), start with an empty environment (the rpath from
//! cm-build), and write the PNG grid of its samples.
//!
//! The first run compiles tch and torch-sys for the scratch crate (a few
//! minutes on 2 cores) into `target/tmp/downstream-target`; later runs reuse
//! it.

use std::path::{Path, PathBuf};
use std::process::Command;

use cm_nets::{Model, NetConfig, UNetConfig};
use cm_sample::ModelCard;

fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../..")
        .canonicalize()
        .unwrap()
}

/// The first fenced block after the line naming `file` in docs/embedding.md.
fn doc_block(doc: &str, file: &str) -> String {
    let marker = format!("`my-sampler/{file}`");
    let at = doc
        .find(&marker)
        .unwrap_or_else(|| panic!("docs/embedding.md does not show {file}"));
    let rest = &doc[at..];
    let open = rest.find("```").unwrap();
    let body = &rest[open..];
    let start = body.find('\n').unwrap() + 1;
    let end = body[start..].find("```").unwrap();
    body[start..start + end].to_string()
}

#[test]
fn a_crate_outside_the_workspace_builds_and_runs_with_no_environment() {
    let root = workspace();
    let doc = std::fs::read_to_string(root.join("docs/embedding.md")).unwrap();
    let manifest = doc_block(&doc, "Cargo.toml");
    let build_rs = doc_block(&doc, "build.rs");
    let main_rs = doc_block(&doc, "src/main.rs");
    // The runnable example is the documented program, word for word.
    let example = std::fs::read_to_string(root.join("crates/cm-sample/examples/embed.rs")).unwrap();
    assert_eq!(
        example, main_rs,
        "examples/embed.rs differs from docs/embedding.md"
    );
    assert!(doc.contains("cargo xtask env --cargo-config"));

    let scratch = tempfile::tempdir().unwrap();
    let krate = scratch.path().join("my-sampler");
    std::fs::create_dir_all(krate.join("src")).unwrap();
    std::fs::create_dir_all(krate.join(".cargo")).unwrap();
    let root_str = root.to_str().unwrap();
    std::fs::write(
        krate.join("Cargo.toml"),
        manifest.replace("/path/to/cm-rs", root_str),
    )
    .unwrap();
    std::fs::write(krate.join("build.rs"), build_rs).unwrap();
    std::fs::write(krate.join("src/main.rs"), main_rs).unwrap();
    // What `cargo xtask env --cargo-config` prints, for the libtorch this
    // test suite was built against.
    let libtorch = cm_build::find_libtorch().expect("the test suite's libtorch");
    let config = cm_build::cargo_config(libtorch.lib.parent().unwrap());
    std::fs::write(krate.join(".cargo/config.toml"), config).unwrap();
    // The workspace's versions of every dependency (and so no download).
    std::fs::copy(root.join("Cargo.lock"), krate.join("Cargo.lock")).unwrap();

    let target = Path::new(env!("CARGO_TARGET_TMPDIR")).join("downstream-target");
    let mut build = Command::new(option_env!("CARGO").unwrap_or("cargo"));
    build
        .current_dir(&krate)
        .args(["build", "--offline"])
        .env_clear()
        .env("CARGO_TARGET_DIR", &target);
    // Only what finds the toolchain and the registry cache; no LIBTORCH, no
    // LD_LIBRARY_PATH.
    for keep in [
        "PATH",
        "HOME",
        "CARGO_HOME",
        "RUSTUP_HOME",
        "RUSTUP_TOOLCHAIN",
    ] {
        if let Some(v) = std::env::var_os(keep) {
            build.env(keep, v);
        }
    }
    let out = build.output().unwrap();
    assert!(
        out.status.success(),
        "the downstream crate did not build:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );

    // A card for it to sample from: a small random-weight U-Net (1x28x28).
    tch::manual_seed(0);
    let net = NetConfig::Unet(UNetConfig {
        model_channels: 16,
        ..UNetConfig::default()
    });
    let model = Model::new(net, tch::Device::Cpu).unwrap();
    tch::no_grad(|| {
        for mut v in model.var_store().trainable_variables() {
            let _ = v.g_add_(&(v.randn_like() * 0.05));
        }
    });
    let models = scratch.path().join("run");
    model.save(models.join("ema.safetensors")).unwrap();
    ModelCard::Consistency {
        weights: "ema.safetensors".into(),
        consistency: Default::default(),
        timesteps: Default::default(),
        scheduler: None,
        autoencoder: None,
        guidance: None,
        lora: Vec::new(),
    }
    .save(models.join("model.toml"))
    .unwrap();

    let png = scratch.path().join("grid.png");
    let out = Command::new(target.join("debug/my-sampler"))
        .args([models.join("model.toml"), png.clone()])
        .env_clear()
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "the downstream binary failed (code {:?}):\n{}",
        out.status.code(),
        String::from_utf8_lossy(&out.stderr)
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.contains("16 samples [1, 28, 28]"), "{stdout}");
    // 16 images of 28x28 in a 4x4 grid with 2-pixel gaps: 4 * 30 + 2.
    let img = image::open(&png).unwrap().to_rgb8();
    assert_eq!(img.dimensions(), (122, 122));
    // The samples are not blank: random weights give varied pixels.
    let first_cell: Vec<u8> = (2..30)
        .flat_map(|y| (2..30).map(move |x| (x, y)))
        .map(|(x, y)| img.get_pixel(x, y).0[0])
        .collect();
    let (lo, hi) = (
        first_cell.iter().min().unwrap(),
        first_cell.iter().max().unwrap(),
    );
    assert!(hi > lo, "a flat first sample");
}
