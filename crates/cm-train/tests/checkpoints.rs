//! Checkpoint safety: folders appear complete or not at all, a corrupt
//! checkpoint gives an error naming the file, a non-finite loss stops the
//! run and keeps the last good checkpoint, bad loop settings name the field.

mod common;

use cm_core::Conditioning;
use std::sync::atomic::AtomicBool;

use cm_nets::{Model, NetConfig};
use cm_train::{
    train, Batch, EdmObjective, Objective, Quiet, TensorSource, TrainConfig, TrainError,
};
use common::{eight_gaussians, temp_dir};
use tch::{Device, Tensor};

fn model() -> Model {
    Model::new(NetConfig::preset("toy-mlp").unwrap(), Device::Cpu).unwrap()
}

fn config(steps: u64) -> TrainConfig {
    TrainConfig {
        steps,
        batch_size: 16,
        checkpoint_every: 5,
        keep_last: 3,
        sample_count: 8,
        log_every: 1,
        ..TrainConfig::default()
    }
}

#[test]
fn checkpoints_are_complete_and_corruption_is_reported() {
    let (data, _) = eight_gaussians(200, 1);
    let source = TensorSource::new(data, None, 16, 0).unwrap();
    let dir = temp_dir("corrupt");
    let never = AtomicBool::new(false);
    let mut obj = EdmObjective {
        config: Default::default(),
    };
    train(
        &mut obj,
        model(),
        &source,
        &config(10),
        &dir,
        false,
        &never,
        &mut Quiet,
    )
    .unwrap();
    let names: Vec<String> = std::fs::read_dir(dir.join("checkpoints"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert!(
        names.iter().all(|n| n.starts_with("step_")),
        "leftover temporary folders: {names:?}"
    );
    let ckpt = dir.join("checkpoints/step_0000010");
    for f in [
        "online.safetensors",
        "online.toml",
        "ema_0.999.safetensors",
        "optimizer.safetensors",
        "state.json",
    ] {
        assert!(ckpt.join(f).is_file(), "{f} missing");
    }

    // Corrupt the weights of the newest checkpoint: resuming names the file.
    std::fs::write(ckpt.join("online.safetensors"), b"garbage").unwrap();
    let err = train(
        &mut obj,
        model(),
        &source,
        &config(20),
        &dir,
        true,
        &never,
        &mut Quiet,
    )
    .unwrap_err();
    assert!(
        err.to_string().contains("step_0000010/online.safetensors"),
        "{err}"
    );
    // A corrupt state file too.
    std::fs::write(ckpt.join("state.json"), b"{ not json").unwrap();
    let err = train(
        &mut obj,
        model(),
        &source,
        &config(20),
        &dir,
        true,
        &never,
        &mut Quiet,
    )
    .unwrap_err();
    assert!(
        err.to_string().contains("state.json") && err.to_string().contains("corrupt"),
        "{err}"
    );
    std::fs::remove_dir_all(dir).unwrap();
}

/// An objective whose loss turns NaN at a given step.
struct NanAt {
    inner: EdmObjective,
    at: u64,
}

impl Objective for NanAt {
    fn name(&self) -> &str {
        "edm"
    }
    fn loss(&mut self, online: &Model, batch: &Batch, step: u64) -> cm_train::Result<Tensor> {
        let loss = self.inner.loss(online, batch, step)?;
        Ok(if step == self.at {
            loss * f64::NAN
        } else {
            loss
        })
    }
    fn sample(
        &self,
        model: &Model,
        latents: &Tensor,
        cond: Conditioning<'_>,
    ) -> cm_train::Result<Tensor> {
        self.inner.sample(model, latents, cond)
    }
}

#[test]
fn non_finite_loss_stops_and_keeps_the_last_good_checkpoint() {
    let (data, _) = eight_gaussians(200, 1);
    let source = TensorSource::new(data, None, 16, 0).unwrap();
    let dir = temp_dir("nan");
    let mut obj = NanAt {
        inner: EdmObjective {
            config: Default::default(),
        },
        at: 7,
    };
    let err = train(
        &mut obj,
        model(),
        &source,
        &config(20),
        &dir,
        false,
        &AtomicBool::new(false),
        &mut Quiet,
    )
    .unwrap_err();
    match &err {
        TrainError::NonFiniteLoss {
            step,
            last_checkpoint,
            ..
        } => {
            assert_eq!(*step, 7);
            assert!(
                last_checkpoint.as_ref().unwrap().ends_with("step_0000005"),
                "{err}"
            );
        }
        other => panic!("expected NonFiniteLoss, got {other}"),
    }
    assert!(err.to_string().contains("NaN at step 7"), "{err}");
    assert!(dir.join("checkpoints/step_0000005/state.json").is_file());
    assert!(!dir.join("checkpoints/step_0000007").exists());
    std::fs::remove_dir_all(dir).unwrap();
}

#[test]
fn bad_settings_name_the_field() {
    let (data, _) = eight_gaussians(50, 1);
    let source = TensorSource::new(data.shallow_clone(), None, 16, 0).unwrap();
    let dir = temp_dir("bad");
    let mut obj = EdmObjective {
        config: Default::default(),
    };
    let bad = TrainConfig {
        ema_rates: vec![1.5],
        ..config(5)
    };
    let err = train(
        &mut obj,
        model(),
        &source,
        &bad,
        &dir,
        false,
        &AtomicBool::new(false),
        &mut Quiet,
    )
    .unwrap_err();
    assert!(err.to_string().contains("train.ema_rates"), "{err}");
    let err = TensorSource::new(data, None, 100, 0).unwrap_err();
    assert!(err.to_string().contains("batch size 100"), "{err}");
    std::fs::remove_dir_all(dir).unwrap();
}
