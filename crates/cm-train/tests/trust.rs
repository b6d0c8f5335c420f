//! Resume trusts nothing it reads, divergence that stays finite is caught
//! before it becomes "the last good checkpoint", and temporaries of
//! interrupted writes are cleaned. Each case tampers with a real run folder
//! of the toy iCT run.

mod common;

use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicBool;

use cm_train::{latest_checkpoint, run_ct, CtRunConfig, Quiet, TrainError};
use common::temp_dir;
use tch::{Device, Kind, Tensor};

fn short_toy(steps: u64) -> CtRunConfig {
    let path =
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../configs/ct/toy-ict.toml");
    let mut c: CtRunConfig = cm_core::load_toml(path).unwrap();
    c.train.steps = steps;
    c.train.checkpoint_every = 10;
    c.train.sample_every = 0;
    c.train.log_every = 10;
    c.train.sample_count = 64;
    if let cm_core::ScheduleConfig::IctExponential(s) = &mut c.ct.recipe.schedule {
        s.total_steps = steps;
    }
    c
}

fn go(config: &CtRunConfig, dir: &Path, resume: bool) -> cm_train::Result<u64> {
    run_ct(
        config,
        dir,
        resume,
        Device::Cpu,
        &AtomicBool::new(false),
        &mut Quiet,
    )
    .map(|o| o.train.step)
}

/// A run of 20 steps stopped after its step-10 checkpoint: a folder with one
/// complete checkpoint to tamper with (the final one removed).
fn partial(tag: &str) -> (CtRunConfig, PathBuf, PathBuf) {
    let config = short_toy(20);
    let dir = temp_dir(tag);
    go(&config, &dir, false).unwrap();
    let (_, last) = latest_checkpoint(&dir).unwrap();
    std::fs::remove_dir_all(&last).unwrap();
    std::fs::remove_file(dir.join("model.toml")).unwrap();
    let (step, ckpt) = latest_checkpoint(&dir).unwrap();
    assert_eq!(step, 10);
    (config, dir, ckpt)
}

fn rewrite(path: &Path, mut f: impl FnMut(&str, Tensor) -> Tensor) {
    let tensors: Vec<(String, Tensor)> = Tensor::read_safetensors(path)
        .unwrap()
        .into_iter()
        .map(|(n, t)| {
            let t = f(&n, t);
            (n, t)
        })
        .collect();
    Tensor::write_safetensors(&tensors, path).unwrap();
}

#[test]
fn resume_checks_state_dtypes_and_finiteness() {
    tch::set_num_threads(1);
    // A state.json whose step disagrees with its folder.
    let (config, dir, ckpt) = partial("trust-step");
    let state = ckpt.join("state.json");
    let text = std::fs::read_to_string(&state).unwrap();
    std::fs::write(&state, text.replace("\"step\": 10", "\"step\": 7")).unwrap();
    let err = go(&config, &dir, true).unwrap_err().to_string();
    assert!(err.contains("state.json says step 7"), "{err}");
    // The case: step 999999 written into the step-10 checkpoint
    // (it used to report the run done).
    std::fs::write(&state, text.replace("\"step\": 10", "\"step\": 999999")).unwrap();
    let err = go(&config, &dir, true).unwrap_err().to_string();
    assert!(err.contains("state.json says step 999999"), "{err}");
    // A checkpoint beyond the run's steps (state.json still says 999999).
    let far = dir.join("checkpoints/step_0999999");
    std::fs::rename(&ckpt, &far).unwrap();
    let err = go(&config, &dir, true).unwrap_err().to_string();
    assert!(err.contains("beyond this config's steps = 20"), "{err}");
    assert!(
        !dir.join("model.toml").exists(),
        "no card for a missing checkpoint"
    );
    std::fs::remove_dir_all(&dir).unwrap();

    // Optimizer moments of another dtype.
    let (config, dir, ckpt) = partial("trust-dtype");
    rewrite(&ckpt.join("optimizer.safetensors"), |_, t| {
        t.to_kind(Kind::Double)
    });
    let err = go(&config, &dir, true).unwrap_err().to_string();
    assert!(err.contains("expected dtype Float, found Double"), "{err}");
    std::fs::remove_dir_all(&dir).unwrap();

    // NaN in the EMA weights.
    let (config, dir, ckpt) = partial("trust-nan");
    let ema = std::fs::read_dir(&ckpt)
        .unwrap()
        .map(|e| e.unwrap().path())
        .find(|p| {
            let n = p.file_name().unwrap().to_string_lossy().into_owned();
            n.starts_with("ema") && n.ends_with(".safetensors")
        })
        .unwrap();
    let mut first = true;
    rewrite(&ema, |_, t| {
        if std::mem::take(&mut first) {
            t.fill(f64::NAN)
        } else {
            t
        }
    });
    let err = go(&config, &dir, true).unwrap_err().to_string();
    assert!(err.contains("non-finite"), "{err}");
    std::fs::remove_dir_all(&dir).unwrap();

    // A pipe in place of state.json: the checkpoint counts as incomplete
    // (never opened, so the resume cannot hang) and the run starts over.
    let (config, dir, ckpt) = partial("trust-fifo");
    let state = ckpt.join("state.json");
    std::fs::remove_file(&state).unwrap();
    let made = std::process::Command::new("mkfifo")
        .arg(&state)
        .status()
        .unwrap();
    assert!(made.success());
    assert_eq!(cm_train::latest_checkpoint(&dir), None);
    assert_eq!(go(&config, &dir, true).unwrap(), 20);
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn finite_divergence_is_caught_and_never_checkpointed() {
    tch::set_num_threads(1);
    for lr in [1e3, 1e30] {
        let mut config = short_toy(40);
        config.train.optimizer.lr = lr;
        config.train.optimizer.warmup_steps = 0;
        config.train.checkpoint_every = 1;
        let dir = temp_dir(&format!("trust-lr-{lr}"));
        let err = go(&config, &dir, false).unwrap_err();
        // lr = 1e3 stays finite (the case that used to exit 0): only the
        // divergence guard can stop it. lr = 1e30 may also end in NaN.
        let caught = match lr {
            1e3 => matches!(err, TrainError::Diverged { .. }),
            _ => matches!(
                err,
                TrainError::Diverged { .. }
                    | TrainError::NonFiniteLoss { .. }
                    | TrainError::NonFiniteGradient { .. }
            ),
        };
        assert!(caught, "lr {lr}: {err}");
        // Whatever checkpoint is left resumes (its weights are healthy),
        // and the message names it only if it exists.
        let text = err.to_string();
        match latest_checkpoint(&dir) {
            Some((_, ckpt)) => {
                assert!(text.contains(&ckpt.display().to_string()), "{text}");
                let w = Tensor::read_safetensors(ckpt.join("online.safetensors")).unwrap();
                let norm: f64 = w
                    .iter()
                    .map(|(_, t)| t.square().sum(Kind::Double).double_value(&[]))
                    .sum::<f64>()
                    .sqrt();
                assert!(norm.is_finite() && norm < 1e6, "lr {lr}: norm {norm}");
            }
            None => assert!(text.contains("no checkpoint was written yet"), "{text}"),
        }
        assert!(!dir.join("model.toml").exists());
        std::fs::remove_dir_all(&dir).unwrap();
    }
}

#[test]
fn stale_temporaries_are_cleaned_on_start() {
    tch::set_num_threads(1);
    let (config, dir, _) = partial("trust-tmp");
    let stale_dir = dir.join("checkpoints/.tmp-step_0000011-99999999");
    std::fs::create_dir_all(&stale_dir).unwrap();
    std::fs::write(stale_dir.join("online.safetensors"), b"half").unwrap();
    let stale_file = dir.join(".model.toml.tmp-99999999");
    std::fs::write(&stale_file, b"half").unwrap();
    // A temporary of a process that still runs (here this test's own) is
    // being written: it stays.
    let live_file = dir.join(format!(".report.md.tmp-{}", std::process::id()));
    std::fs::write(&live_file, b"writing").unwrap();
    assert_eq!(go(&config, &dir, true).unwrap(), 20);
    assert!(!stale_dir.exists() && !stale_file.exists());
    assert!(live_file.exists());

    // Resuming the finished run with fewer steps than it has done is
    // refused before config.toml is touched.
    let before = std::fs::read(dir.join("config.toml")).unwrap();
    let mut fewer = config.clone();
    fewer.train.steps = 10;
    if let cm_core::ScheduleConfig::IctExponential(s) = &mut fewer.ct.recipe.schedule {
        s.total_steps = 10;
    }
    let err = go(&fewer, &dir, true).unwrap_err().to_string();
    assert!(err.contains("beyond this config's steps = 10"), "{err}");
    assert_eq!(std::fs::read(dir.join("config.toml")).unwrap(), before);
    std::fs::remove_dir_all(&dir).unwrap();
}
