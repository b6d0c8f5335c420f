//! Consistency training on 2-D toy data, no teacher, with the shipped
//! presets (`configs/ct/toy-ct.toml`, `configs/ct/toy-ict.toml`): the same
//! data, network size and budget (3,000 steps), 1-step samples through each
//! run's model card against held-out data. iCT learns one-step generation and
//! beats CT. Alone in its binary (global generator).

use std::sync::atomic::AtomicBool;

use cm_core::Conditioning;
use cm_data::Dataset;
use cm_eval::sliced_wasserstein;
use cm_sample::ModelCard;
use cm_train::{run_ct, CtRunConfig, Quiet};
use tch::{Device, Kind, Tensor};

fn preset(name: &str) -> CtRunConfig {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../configs/ct")
        .join(name);
    cm_core::load_toml(path).unwrap()
}

/// Sliced W2 of 1-step samples to `held_out`, before and after training.
fn train_and_measure(config: &CtRunConfig, tag: &str, held_out: &Tensor) -> (f64, f64, f64) {
    let dir = std::env::temp_dir().join(format!("cm-ct-toy-{tag}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let out = run_ct(
        config,
        &dir,
        false,
        Device::Cpu,
        &AtomicBool::new(false),
        &mut Quiet,
    )
    .unwrap();
    let card = ModelCard::load(out.card.unwrap()).unwrap();
    let model = card.load_model(Device::Cpu).unwrap();
    tch::manual_seed(9);
    let z = Tensor::randn([held_out.size()[0], 2], (Kind::Float, Device::Cpu));
    let one = card.sample(&model, &z, 1, Conditioning::none()).unwrap().x;
    let two = card.sample(&model, &z, 2, Conditioning::none()).unwrap().x;
    // The untrained network of the same architecture and seed.
    let mut fresh = config.clone();
    fresh.train.steps = 0;
    let untrained = {
        tch::manual_seed(cm_train::mix_seed(config.train.seed, u64::MAX));
        let m = cm_nets::Model::new(config.net.clone(), Device::Cpu).unwrap();
        card.sample(&m, &z, 1, Conditioning::none()).unwrap().x
    };
    std::fs::remove_dir_all(dir).unwrap();
    let d = |x: &Tensor| sliced_wasserstein(x, held_out, 128).unwrap();
    (d(&untrained), d(&one), d(&two))
}

#[test]
fn ict_learns_one_step_generation_and_beats_ct_at_the_same_budget() {
    tch::set_num_threads(1); // tiny MLP: one thread is fastest and deterministic
    let ct = preset("toy-ct.toml");
    let ict = preset("toy-ict.toml");
    assert_eq!(
        (ct.train.steps, ct.train.batch_size),
        (ict.train.steps, ict.train.batch_size)
    );
    let Dataset::Points(points) = ct.data.load(None).unwrap() else {
        panic!("toy presets hold 2-D points");
    };
    let held_out = points.test.to_tensor().narrow(0, 0, 4000);
    let second = points.train.to_tensor().narrow(0, 0, 4000);
    let data = sliced_wasserstein(&second, &held_out, 128).unwrap();
    let (untrained, ct_1, ct_2) = train_and_measure(&ct, "ct", &held_out);
    let (_, ict_1, ict_2) = train_and_measure(&ict, "ict", &held_out);
    println!(
        "toy, {} steps: sliced W2 to held-out: data {data:.4}, untrained {untrained:.4}, \
         CT 1-step {ct_1:.4} 2-step {ct_2:.4}, iCT 1-step {ict_1:.4} 2-step {ict_2:.4}",
        ct.train.steps
    );
    // iCT's 1-step samples land near the data: within 2x of a second
    // sample of the data itself, and far from where training started.
    assert!(ict_1 < 2.0 * data, "iCT 1-step {ict_1} vs data {data}");
    assert!(
        ict_1 < untrained / 4.0,
        "iCT did not learn: {untrained} -> {ict_1}"
    );
    // The claim: iCT beats CT at the same budget, clearly.
    assert!(
        ict_1 < ct_1 / 2.0,
        "iCT {ict_1} is not clearly better than CT {ct_1}"
    );
    assert!(ict_2 < 2.0 * data, "iCT 2-step {ict_2} vs data {data}");
}
