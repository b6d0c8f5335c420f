//! The CT pipeline's files and rules: a finished run leaves grids, a report
//! and a model card whose samples equal the run's EMA; a stopped run leaves
//! no card and resumes to the same end; a changed config is refused.

mod common;

use cm_core::Conditioning;
use std::sync::atomic::AtomicBool;

use cm_sample::ModelCard;
use cm_train::{run_ct, CtRunConfig, Quiet};
use common::{temp_dir, StopAt};
use tch::{Device, Kind, Tensor};

fn short_toy() -> CtRunConfig {
    let path =
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../configs/ct/toy-ict.toml");
    let mut c: CtRunConfig = cm_core::load_toml(path).unwrap();
    c.train.steps = 60;
    c.train.checkpoint_every = 30;
    c.train.sample_every = 60;
    c.train.log_every = 1;
    c.train.sample_count = 256;
    if let cm_core::ScheduleConfig::IctExponential(s) = &mut c.ct.recipe.schedule {
        s.total_steps = 60;
    }
    c
}

/// An observer that keeps the run's messages.
#[derive(Default)]
struct Messages(Vec<String>);

impl cm_train::Observer for Messages {
    fn on_message(&mut self, message: &str) {
        self.0.push(message.to_string());
    }
}

#[test]
fn finished_stopped_and_resumed_runs() {
    tch::set_num_threads(1);
    let config = short_toy();

    // A full run.
    let full = temp_dir("ct-full");
    let out = run_ct(
        &config,
        &full,
        false,
        Device::Cpu,
        &AtomicBool::new(false),
        &mut Quiet,
    )
    .unwrap();
    for f in [
        "report.md",
        "samples_1step.png",
        "samples_2step.png",
        "loss.png",
        "metrics.csv",
        "config.toml",
    ] {
        assert!(full.join(f).is_file(), "missing {f}");
    }
    let card = ModelCard::load(out.card.as_ref().unwrap()).unwrap();
    assert_eq!(card.taus(2).unwrap(), vec![config.ct.two_step_tau]);
    let from_card = card.load_model(Device::Cpu).unwrap();
    let z = Tensor::randn([64, 2], (Kind::Float, Device::Cpu));
    let a = card
        .sample(&from_card, &z, 1, Conditioning::none())
        .unwrap()
        .x;
    let b = card
        .sample(&out.train.emas[0].model, &z, 1, Conditioning::none())
        .unwrap()
        .x;
    assert_eq!(
        f64::try_from((&a - b).abs().max()).unwrap(),
        0.0,
        "the card names the EMA"
    );
    // The weights file alone says how to sample from it (the card in its
    // safetensors metadata) and gives the same samples.
    let from_weights = ModelCard::from_weights(card.weights()).unwrap();
    assert_eq!(from_weights, card);
    let c = from_weights
        .sample(&from_card, &z, 1, Conditioning::none())
        .unwrap()
        .x;
    assert_eq!(c, a);
    // The target network is not the model the card describes: its file
    // carries no card.
    let (_, last) = cm_train::latest_checkpoint(&full).unwrap();
    assert!(ModelCard::from_weights(last.join("target.safetensors")).is_err());
    assert!(ModelCard::from_weights(last.join("online.safetensors")).is_ok());

    // Resuming the finished run changes nothing: what a later command
    // added to the card (here stored 3-step times) and the report stay.
    let card_path = out.card.clone().unwrap();
    let mut extended = ModelCard::load(&card_path).unwrap();
    if let ModelCard::Consistency { timesteps, .. } = &mut extended {
        timesteps.insert("3".into(), vec![1.0, 0.1]);
    }
    extended.save_over(&card_path).unwrap();
    let (card_text, report_text) = (
        std::fs::read(&card_path).unwrap(),
        std::fs::read(full.join("report.md")).unwrap(),
    );
    let mut messages = Messages::default();
    let again = run_ct(
        &config,
        &full,
        true,
        Device::Cpu,
        &AtomicBool::new(false),
        &mut messages,
    )
    .unwrap();
    assert!(
        messages
            .0
            .iter()
            .any(|m| m.contains("already finished at step 60") && m.contains("left as they are")),
        "a finished run resumed says so: {:?}",
        messages.0
    );
    assert_eq!(again.train.step, 60);
    assert!(again.card.is_some() && again.report.is_some());
    assert_eq!(std::fs::read(&card_path).unwrap(), card_text);
    assert_eq!(std::fs::read(full.join("report.md")).unwrap(), report_text);

    // Stopped at step 30: no card; resuming ends at the same weights.
    let part = temp_dir("ct-part");
    let flag = AtomicBool::new(false);
    let stopped = run_ct(
        &config,
        &part,
        false,
        Device::Cpu,
        &flag,
        &mut StopAt {
            flag: &flag,
            at: 30,
        },
    )
    .unwrap();
    assert!(stopped.train.stopped && stopped.card.is_none() && stopped.report.is_none());
    assert!(!part.join("model.toml").exists());
    let resumed = run_ct(
        &config,
        &part,
        true,
        Device::Cpu,
        &AtomicBool::new(false),
        &mut Quiet,
    )
    .unwrap();
    assert_eq!(resumed.train.step, 60);
    let diff = cm_train::ema::max_weight_difference(&resumed.train.online, &out.train.online);
    assert_eq!(diff, 0.0, "resume must continue the same run");

    // A changed recipe is refused on resume.
    let mut changed = config.clone();
    changed.ct.two_step_tau = 0.5;
    let err = run_ct(
        &changed,
        &part,
        true,
        Device::Cpu,
        &AtomicBool::new(false),
        &mut Quiet,
    )
    .unwrap_err()
    .to_string();
    assert!(err.contains("config differs"), "{err}");
    std::fs::remove_dir_all(full).unwrap();
    std::fs::remove_dir_all(part).unwrap();
}
