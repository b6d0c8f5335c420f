//! What a new user hits first: sampling a 2-D toy card (scatter + CSV),
//! guided sampling, a run folder passed as a card, a missing card (the OS
//! error said once), k-step sampling without stored times (the error names
//! `--taus`), and Ctrl-C during training (exit code 130, checkpoint and
//! TensorBoard events written).

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use cm_core::ConsistencyConfig;
use cm_nets::{Model, NetConfig, UNetConfig};
use cm_sample::ModelCard;
use tch::{Device, Tensor};

fn cm(args: &[&str]) -> (Option<i32>, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_cm"))
        .args(args)
        .output()
        .expect("run cm");
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// `cm sample --card CARD --out OUT` on one CPU thread, plus `extra`.
fn sample(card: &Path, out: &Path, extra: &[&str]) -> (Option<i32>, String) {
    let mut args = vec![
        "sample",
        "--card",
        card.to_str().unwrap(),
        "--out",
        out.to_str().unwrap(),
        "--device",
        "cpu",
        "--threads",
        "1",
    ];
    args.extend_from_slice(extra);
    cm(&args)
}

/// A consistency card around `net` with random (perturbed) weights.
fn card_for(dir: &Path, net: NetConfig, name: &str) -> PathBuf {
    tch::manual_seed(3);
    let model = Model::new(net, Device::Cpu).unwrap();
    tch::no_grad(|| {
        for mut v in model.var_store().trainable_variables() {
            let _ = v.g_add_(&(v.randn_like() * 0.05));
        }
    });
    model.save(dir.join(format!("{name}.safetensors"))).unwrap();
    let card = ModelCard::Consistency {
        weights: format!("{name}.safetensors").into(),
        consistency: ConsistencyConfig::default(),
        timesteps: Default::default(),
        scheduler: None,
        autoencoder: None,
        guidance: None,
        lora: Vec::new(),
    };
    let path = dir.join(format!("card-{name}.toml"));
    card.save(&path).unwrap();
    path
}

/// A consistency card around a small random 1x28x28 U-Net.
fn small_unet_card(dir: &Path) -> PathBuf {
    let net = NetConfig::Unet(UNetConfig {
        model_channels: 16,
        ..UNetConfig::default()
    });
    card_for(dir, net, "net")
}

fn tensor(path: &Path, name: &str) -> Tensor {
    Tensor::read_safetensors(path)
        .unwrap()
        .into_iter()
        .find(|(n, _)| n == name)
        .unwrap_or_else(|| panic!("{} has no `{name}`", path.display()))
        .1
}

#[test]
fn sample_writes_a_scatter_plot_and_csv_for_a_toy_card() {
    let dir = tempfile::tempdir().unwrap();
    let card = card_for(dir.path(), NetConfig::preset("toy-mlp").unwrap(), "toy");
    let out = dir.path().join("toy-samples");
    let (code, err) = sample(&card, &out, &["--count", "300", "--batch-size", "128"]);
    assert_eq!(code, Some(0), "{err}");
    for f in [
        "samples.csv",
        "scatter.png",
        "scatter.svg",
        "samples.safetensors",
    ] {
        assert!(out.join(f).is_file(), "{f} missing: {err}");
    }
    assert!(!out.join("grid.png").exists() && !out.join("000000.png").exists());
    // The CSV holds exactly the tensor file's points.
    let points = tensor(&out.join("samples.safetensors"), "points");
    assert_eq!(points.size(), [300, 2]);
    let values = Vec::<f32>::try_from(points.flatten(0, -1)).unwrap();
    let text = std::fs::read_to_string(out.join("samples.csv")).unwrap();
    let mut lines = text.lines();
    assert_eq!(lines.next(), Some("x0,x1"));
    let csv: Vec<f32> = lines
        .flat_map(|l| {
            l.split(',')
                .map(|v| v.parse::<f32>().unwrap())
                .collect::<Vec<_>>()
        })
        .collect();
    assert_eq!(csv, values);
    // --no-png is harmless for points.
    let (code, err) = sample(&card, &out, &["--count", "10", "--no-png"]);
    assert_eq!(code, Some(0), "{err}");
    // One sample is "1 point", not "1 points".
    let (code, err) = sample(&card, &out, &["--count", "1", "--no-png"]);
    assert_eq!(code, Some(0), "{err}");
    assert!(err.contains("1 point, 1 NFE each"), "{err}");
}

/// Each editing task's `--out` help describes its own grid: interpolation
/// has no inputs, so its help does not mention them.
#[test]
fn edit_help_describes_each_grid() {
    let help = |task: &str| {
        let out = Command::new(env!("CARGO_BIN_EXE_cm"))
            .args(["edit", task, "--help"])
            .output()
            .expect("run cm");
        assert!(out.status.success());
        // Whitespace collapsed: clap wraps long help lines.
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        text.split_whitespace().collect::<Vec<_>>().join(" ")
    };
    let interpolate = help("interpolate");
    assert!(
        interpolate.contains("one row per pair of end points"),
        "{interpolate}"
    );
    assert!(!interpolate.contains("model input"), "{interpolate}");
    let inpaint = help("inpaint");
    assert!(
        inpaint.contains("one row per input (reference, model input, results)"),
        "{inpaint}"
    );
    assert!(!inpaint.contains("pair of end points"), "{inpaint}");
}

#[test]
fn guided_sampling_doubles_the_evaluations_and_needs_classes() {
    let dir = tempfile::tempdir().unwrap();
    let net = NetConfig::Unet(UNetConfig {
        model_channels: 16,
        num_classes: 10,
        ..UNetConfig::default()
    });
    let card = card_for(dir.path(), net, "cond");
    let out = dir.path().join("guided");
    let run = |extra: &[&str]| {
        let mut args = vec!["--count", "4", "--no-png"];
        args.extend_from_slice(extra);
        sample(&card, &out, &args)
    };
    let (code, err) = run(&["--class", "3"]);
    assert_eq!(code, Some(0), "{err}");
    assert!(err.contains("1 NFE each"), "{err}");
    let plain = tensor(&out.join("samples.safetensors"), "images");
    let (code, err) = run(&["--class", "3", "--guidance", "2"]);
    assert_eq!(code, Some(0), "{err}");
    assert!(err.contains("2 NFE each"), "{err}");
    let guided = tensor(&out.join("samples.safetensors"), "images");
    assert_ne!(plain, guided, "guidance changed nothing");
    // w = 0 is the plain conditional model, exactly, at one evaluation.
    let (code, err) = run(&["--class", "3", "--guidance", "0"]);
    assert_eq!(code, Some(0), "{err}");
    assert!(err.contains("1 NFE each"), "{err}");
    assert_eq!(tensor(&out.join("samples.safetensors"), "images"), plain);
    let (code, err) = run(&["--guidance", "2"]);
    assert_eq!(code, Some(1));
    assert!(err.contains("guidance") && err.contains("class"), "{err}");
    let (code, err) = run(&["--class", "3", "--guidance=-1.5"]);
    assert_eq!(code, Some(1));
    assert!(
        err.contains("guidance") && err.contains("[-1, 100]"),
        "{err}"
    );
}

#[test]
fn card_errors_say_what_to_pass() {
    let dir = tempfile::tempdir().unwrap();
    let card = small_unet_card(dir.path());
    let out = dir.path().join("o");
    // A run folder as --card: the card inside it is named.
    let (code, err) = sample(dir.path(), &out, &[]);
    assert_eq!(code, Some(1));
    assert!(
        err.contains("is a folder") && err.contains("has none"),
        "{err}"
    );
    std::fs::copy(&card, dir.path().join("model.toml")).unwrap();
    let (code, err) = sample(dir.path(), &out, &[]);
    assert_eq!(code, Some(1));
    let inside = dir.path().join("model.toml");
    assert!(
        err.contains(&format!(
            "pass the model card inside it, {}",
            inside.display()
        )),
        "{err}"
    );
    // A missing card: the OS error appears once.
    let (code, err) = sample(&dir.path().join("nope.toml"), &out, &[]);
    assert_eq!(code, Some(1));
    assert_eq!(err.matches("os error 2").count(), 1, "{err}");
    // 3 steps without stored times: the error names --taus and the search.
    let (code, err) = sample(&card, &out, &["--steps", "3", "--count", "2"]);
    assert_eq!(code, Some(1));
    assert!(
        err.contains("--taus") && err.contains("search-timesteps"),
        "{err}"
    );
}

#[test]
fn ctrl_c_exits_130_after_saving() {
    let dir = tempfile::tempdir().unwrap();
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    let config = std::fs::read_to_string(root.join("configs/teacher/toy.toml"))
        .unwrap()
        .replace("steps = 3000", "steps = 1000000")
        .replace("log_every = 100", "log_every = 5")
        .replace("checkpoint_every = 1000", "checkpoint_every = 100000");
    let config_path = dir.path().join("teacher.toml");
    std::fs::write(&config_path, config).unwrap();
    let run_dir = dir.path().join("run");
    let mut child = Command::new(env!("CARGO_BIN_EXE_cm"))
        .args([
            "train-teacher",
            "--config",
            config_path.to_str().unwrap(),
            "--run-dir",
            run_dir.to_str().unwrap(),
            "--device",
            "cpu",
            "--threads",
            "1",
            "--tensorboard",
        ])
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stderr = BufReader::new(child.stderr.take().unwrap());
    let mut log = String::new();
    // Wait until two steps have been logged, then interrupt as a shell would.
    let mut logged = 0;
    while logged < 2 {
        let mut line = String::new();
        if stderr.read_line(&mut line).unwrap() == 0 {
            panic!("cm exited early: {log}");
        }
        logged += line.contains(": step ") as usize;
        log.push_str(&line);
    }
    let status = Command::new("kill")
        .args(["-INT", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    let mut rest = String::new();
    std::io::Read::read_to_string(&mut stderr, &mut rest).unwrap();
    log.push_str(&rest);
    let code = child.wait().unwrap().code();
    assert_eq!(code, Some(130), "{log}");
    assert!(log.contains("continue with --resume"), "{log}");
    assert!(
        cm_train::latest_checkpoint(&run_dir).is_some(),
        "no checkpoint: {log}"
    );
    // The TensorBoard events hold the logged losses (read back with the
    // module's reader, which checks every record's CRCs).
    let events: Vec<_> = std::fs::read_dir(run_dir.join("tensorboard/edm-teacher"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    assert_eq!(events.len(), 1, "{events:?}");
    let scalars = cm_train::tensorboard::read_scalars(&events[0]).unwrap();
    let losses: Vec<_> = scalars.iter().filter(|s| s.1 == "train/loss").collect();
    assert!(losses.len() >= 2, "{scalars:?}");
    assert_eq!(losses[0].0, 5);
    assert!(losses.iter().all(|l| l.2.is_finite() && l.2 > 0.0));
}

#[test]
fn sizes_on_the_command_line_and_in_cards_are_bounded() {
    let dir = tempfile::tempdir().unwrap();
    let card = small_unet_card(dir.path());
    let out = dir.path().join("o");
    let (code, err) = cm(&[
        "sample",
        "--card",
        card.to_str().unwrap(),
        "--out",
        out.to_str().unwrap(),
        "--threads",
        "2147483647",
    ]);
    // A bad argument is a usage error (clap's exit code 2), named.
    assert_eq!(code, Some(2));
    assert!(
        err.contains("--threads 2147483647: expected `auto` or 1 to"),
        "{err}"
    );
    let (code, err) = sample(&card, &out, &["--count", "1000000000000"]);
    assert_eq!(code, Some(1));
    assert!(err.contains("GiB") && err.contains("--count"), "{err}");
    let (code, err) = sample(&card, &out, &["--steps", "100000000", "--taus", "1.0"]);
    assert_eq!(code, Some(1));
    assert!(err.contains("steps") && err.contains("10000"), "{err}");
    // An EDM card asking for 2^32 - 1 sampler steps is refused on load.
    let text =
        "kind = \"edm\"\nweights = \"net.safetensors\"\n[edm]\n[sampler]\nsteps = 4294967295\n";
    let edm = dir.path().join("edm.toml");
    std::fs::write(&edm, text).unwrap();
    let (code, err) = sample(&edm, &out, &[]);
    assert_eq!(code, Some(1));
    assert!(err.contains("sampler.steps"), "{err}");
    assert!(!out.join("samples.safetensors").exists());
}
