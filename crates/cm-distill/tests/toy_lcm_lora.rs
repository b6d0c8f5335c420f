//! LCM-LoRA on 2-D toy data (configs/lcd/toy-lora.toml): the guided
//! two-moons teacher of the LCD toy test, frozen, plus rank-4 adapters
//! trained by LCD at one fixed `w`. Its 1-, 2- and 4-step samples of each
//! class land closer to the teacher's guided 35-NFE Heun samples than the
//! teacher's own guided 2-step samplers do (exact sliced Wasserstein
//! distances, per class); the adapters hold under 10% of the base's
//! parameters and are written as a PEFT-keyed adapter file the card loads;
//! and an adapter-only run stopped halfway and resumed ends bit-identical to
//! an uninterrupted one.

use std::path::Path;
use std::sync::atomic::AtomicBool;

use cm_core::Solver;
use cm_distill::{run_lcd, LcdRunConfig};
use cm_eval::sliced_wasserstein;
use cm_nets::lora;
use cm_sample::{ClassChoice, GenerateConfig, ModelCard, Pipeline};
use cm_train::Quiet;
use tch::{Device, Kind, Tensor};

const N: usize = 2000;

/// `N` class-cycling samples (even rows class 0, odd rows class 1).
fn sample(pipe: &Pipeline, steps: usize, w: Option<f64>, seed: u64) -> Tensor {
    let config = GenerateConfig {
        steps,
        classes: ClassChoice::Cycle,
        guidance: w,
        batch_size: 500,
        ..GenerateConfig::new(N, seed)
    };
    pipe.generate_with(&config).unwrap().0
}

/// The mean over classes of the sliced W2 distance between the class's
/// samples of `a` and of `b`.
fn per_class_distance(a: &Tensor, b: &Tensor) -> f64 {
    (0..2i64)
        .map(|class| {
            let rows = Tensor::arange_start_step(class, N as i64, 2, (Kind::Int64, Device::Cpu));
            sliced_wasserstein(&a.index_select(0, &rows), &b.index_select(0, &rows), 128).unwrap()
        })
        .sum::<f64>()
        / 2.0
}

fn config() -> LcdRunConfig {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../configs/lcd/toy-lora.toml");
    cm_core::load_toml(path).unwrap()
}

fn run(config: &LcdRunConfig, dir: &Path, name: &str, resume: bool) -> cm_distill::LcdOutcome {
    run_lcd(
        config,
        &dir.join(name),
        &dir.join("teachers"),
        resume,
        Device::Cpu,
        &AtomicBool::new(false),
        &mut Quiet,
    )
    .unwrap()
}

#[test]
fn toy_lcm_lora_lands_closer_to_the_guided_teacher_than_its_two_step_sampler() {
    let _rng = cm_runtime::lock_global_rng();
    let config = config();
    let dir = std::env::temp_dir().join(format!("cm-distill-toy-lcm-lora-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let started = std::time::Instant::now();
    let out = run(&config, &dir, "lora", false);
    let secs = started.elapsed().as_secs_f64();
    let card_path = out.card.as_ref().unwrap();
    let card = ModelCard::load(card_path).unwrap();
    assert_eq!(card.lora().len(), 1);
    assert_eq!(card.embedded_guidance(), None);

    // The adapter file: PEFT keys only, under 10% of the base.
    let adapter = &card.lora()[0].file;
    let shapes = cm_nets::checkpoint::read_shapes(adapter).unwrap();
    assert!(shapes
        .keys()
        .all(|k| k.ends_with(".lora_A.weight") || k.ends_with(".lora_B.weight")));
    let adapter_params: i64 = shapes.values().map(|s| s.iter().product::<i64>()).sum();
    let teacher = Pipeline::load(out.teacher_dir.join("model.toml"), Device::Cpu).unwrap();
    let base_params = teacher.model().num_params();
    assert!(
        (adapter_params as f64) < 0.10 * base_params as f64,
        "{adapter_params} adapter parameters vs {base_params}"
    );
    // The card's model is the teacher's weights plus the adapter, which
    // changed them.
    let lcm = Pipeline::load(card_path, Device::Cpu).unwrap();
    assert!(lcm
        .model()
        .var_store()
        .variables()
        .keys()
        .any(|n| lora::is_adapter_variable(n)));

    let teacher_euler = {
        let mut card = teacher.card().clone();
        let ModelCard::Edm { sampler, .. } = &mut card else {
            panic!("an EDM teacher card")
        };
        sampler.solver = Solver::Euler;
        Pipeline::new(card.clone(), card.load_model(Device::Cpu).unwrap())
    };
    let w = config.lcd.guidance;
    let reference = sample(&teacher, 18, Some(w), 1);
    let d = |x: &Tensor| per_class_distance(x, &reference);
    let floor = d(&sample(&teacher, 18, Some(w), 2));
    let heun2 = d(&sample(&teacher, 2, Some(w), 2));
    let euler2 = d(&sample(&teacher_euler, 2, Some(w), 2));
    let (d1, d2, d4) = (
        d(&sample(&lcm, 1, None, 2)),
        d(&sample(&lcm, 2, None, 2)),
        d(&sample(&lcm, 4, None, 2)),
    );
    println!(
        "toy LCM-LoRA ({secs:.0}s incl. teacher; {adapter_params} adapter parameters, base \
         {base_params}), w = {w}: per-class sliced W2 to the guided teacher's Heun-35: teacher \
         Heun-35 with other noise {floor:.4}, teacher 2-step Heun {heun2:.4}, Euler {euler2:.4}; \
         LCM-LoRA 1-step {d1:.4}, 2-step {d2:.4}, 4-step {d4:.4}"
    );
    let teacher2 = heun2.min(euler2);
    for (steps, got) in [(1, d1), (2, d2), (4, d4)] {
        assert!(
            got < 0.5 * teacher2,
            "LCM-LoRA {steps}-step {got} vs teacher 2-step {teacher2}"
        );
        assert!(
            got < 4.0 * floor,
            "LCM-LoRA {steps}-step {got} vs noise {floor}"
        );
    }
    std::fs::remove_dir_all(&dir).unwrap();
}

/// Adapter-only checkpoints: a run stopped at its first checkpoint and
/// resumed ends with the same adapter as an uninterrupted run, bit for bit,
/// and no checkpoint holds a base weight.
#[test]
fn an_adapter_only_run_resumes_exactly() {
    let _rng = cm_runtime::lock_global_rng();
    let mut config = config();
    config.train.steps = 120;
    config.train.checkpoint_every = 60;
    config.train.sample_every = 0;
    let dir = std::env::temp_dir().join(format!("cm-distill-lora-resume-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let whole = run(&config, &dir, "whole", false);
    let mut half = config.clone();
    half.train.steps = 60;
    run(&half, &dir, "split", false);
    let resumed = run(&config, &dir, "split", true);

    for entry in std::fs::read_dir(dir.join("split/checkpoints/step_0000120")).unwrap() {
        let path = entry.unwrap().path();
        let name = path.file_name().unwrap().to_string_lossy().into_owned();
        if name.ends_with(".safetensors") && name != "optimizer.safetensors" {
            let shapes = cm_nets::checkpoint::read_shapes(&path).unwrap();
            assert!(!shapes.is_empty(), "{name}");
            assert!(
                shapes.keys().all(|k| lora::is_adapter_variable(k)),
                "{name} holds a base weight"
            );
        }
    }
    let read = |out: &cm_distill::LcdOutcome| {
        let card = ModelCard::load(out.card.as_ref().unwrap()).unwrap();
        let mut tensors = Tensor::read_safetensors(&card.lora()[0].file).unwrap();
        tensors.sort_by(|x, y| x.0.cmp(&y.0));
        assert!(!tensors.is_empty());
        tensors
    };
    let (a, b) = (read(&whole), read(&resumed));
    assert_eq!(a.len(), b.len());
    for ((na, ta), (nb, tb)) in a.iter().zip(&b) {
        assert_eq!(na, nb);
        assert!(ta.equal(tb), "{na} differs after resume");
    }
    std::fs::remove_dir_all(&dir).unwrap();
}
