//! The CIFAR-10 recipes of the papers' table (teacher, PD, CD, CT, iCT)
//! parse, validate and build their networks, and carry the papers'
//! settings; the test prints each one's training compute and a GPU-time
//! estimate (the table in docs/pd.md).

use cm_core::ScheduleConfig;
use cm_distill::{CdRunConfig, PdRunConfig};
use cm_nets::{Model, NetConfig};
use cm_train::{CtRunConfig, TeacherConfig, TrainConfig};
use tch::Device;

fn configs() -> std::path::PathBuf {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../configs")
}

/// Sustained throughput assumed for the estimate: 100 TFLOP/s, about a
/// third of an A100's or H100's dense TF32 peak.
const ASSUMED_FLOPS: f64 = 100e12;

/// `(name, network, loop, network passes per sample per update, updates)`.
fn recipe(name: &str, net: &NetConfig, train: &TrainConfig, passes: f64, updates: f64) -> String {
    let model = Model::new(net.clone(), Device::Cpu).unwrap();
    let flops = model.flops_per_sample() as f64;
    assert!(
        model.num_params() > 1_000_000,
        "{name}: {}",
        model.num_params()
    );
    let total = flops * passes * train.batch_size as f64 * updates;
    format!(
        "| {name} | {:.1} M | {:.2} G | {} x {updates:.0} | {passes} | {:.2e} | {:.0} |",
        model.num_params() as f64 / 1e6,
        flops / 1e9,
        train.batch_size,
        total,
        total / ASSUMED_FLOPS / 3600.0
    )
}

#[test]
fn cifar10_recipes_build_and_carry_the_papers_settings() {
    let teacher: TeacherConfig =
        cm_core::load_toml(configs().join("teacher/cifar10.toml")).unwrap();
    let cd: CdRunConfig = cm_core::load_toml(configs().join("cd/cifar10.toml")).unwrap();
    let pd: PdRunConfig = cm_core::load_toml(configs().join("pd/cifar10.toml")).unwrap();
    let ct: CtRunConfig = cm_core::load_toml(configs().join("ct/cifar10-ct.toml")).unwrap();
    let ict: CtRunConfig = cm_core::load_toml(configs().join("ct/cifar10-ict.toml")).unwrap();
    // CD and PD distill the teacher preset itself.
    assert_eq!(cd.teacher, teacher);
    assert_eq!(pd.teacher, teacher);
    // CM paper, CIFAR-10 CD: N = 18, mu = 0.95, Heun, batch 512, 800k updates.
    let ScheduleConfig::Fixed(fixed) = cd.cd.recipe.schedule else {
        panic!("CD uses a fixed N")
    };
    assert_eq!((fixed.n, fixed.mu), (18, 0.95));
    assert_eq!((cd.train.batch_size, cd.train.steps), (512, 800_000));
    // Salimans & Ho, CIFAR-10: a teacher of 8192 steps, 13 halvings to 1,
    // 50k updates each, batch 128.
    assert_eq!(pd.pd.stages().len(), 13);
    assert_eq!(2 * pd.pd.stages()[0], 8192);
    assert_eq!((pd.train.batch_size, pd.train.steps), (128, 50_000));

    let stages = pd.pd.stages().len() as f64;
    let rows = [
        // Teacher: forward + backward (~3 forward passes).
        recipe(
            "EDM teacher",
            &teacher.net,
            &teacher.train,
            3.0,
            teacher.train.steps as f64,
        ),
        // PD: student forward + backward, two teacher Euler evaluations.
        recipe(
            "PD (13 stages)",
            &pd.teacher.net,
            &pd.train,
            5.0,
            stages * pd.train.steps as f64,
        ),
        // CD: student forward + backward, Heun teacher (2), target (1).
        recipe("CD", &cd.teacher.net, &cd.train, 6.0, cd.train.steps as f64),
        // CT / iCT: student forward + backward, target (1).
        recipe("CT", &ct.net, &ct.train, 4.0, ct.train.steps as f64),
        recipe("iCT", &ict.net, &ict.train, 4.0, ict.train.steps as f64),
    ];
    println!("| recipe | parameters | forward GFLOPs / sample | batch x updates | passes | training FLOPs | GPU hours at 100 TFLOP/s |");
    println!("| --- | ---: | ---: | ---: | ---: | ---: | ---: |");
    for row in rows {
        println!("{row}");
    }
}
