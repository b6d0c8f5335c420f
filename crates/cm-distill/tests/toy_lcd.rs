//! Guided consistency distillation (LCM's LCD) on 2-D toy data
//! (configs/lcd/toy.toml: two moons, 2 classes, a class-conditional teacher
//! with label dropout): at the guidance scale `w` the student embeds, its
//! 1- and 2-step samples of each class land closer to the teacher's guided
//! 35-NFE Heun samples than the teacher's own guided 2-step samplers (Heun
//! and Euler) do, by far (exact sliced Wasserstein distances, per class);
//! and the student follows `w` as the teacher does: at w = 0 and w = 3 its
//! samples are near the teacher's at the same w, far from the other's.

use std::sync::atomic::AtomicBool;

use cm_core::{
    IctExponentialSchedule, IndexSamplerConfig, LognormalIndex, ScheduleConfig, Solver, Validate,
    Weighting,
};
use cm_distill::{run_lcd, LcdRunConfig};
use cm_eval::sliced_wasserstein;
use cm_sample::{ClassChoice, GenerateConfig, ModelCard, Pipeline};
use cm_train::Quiet;
use tch::{Device, Kind, Tensor};

const N: usize = 2000;

/// `N` class-cycling samples (even rows class 0, odd rows class 1).
fn sample(pipe: &Pipeline, steps: usize, w: f64, seed: u64) -> Tensor {
    let config = GenerateConfig {
        steps,
        classes: ClassChoice::Cycle,
        guidance: Some(w),
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

fn toy_config() -> LcdRunConfig {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../configs/lcd/toy.toml");
    cm_core::load_toml(path).unwrap()
}

#[test]
fn toy_lcd_lands_closer_to_the_guided_teacher_than_its_two_step_sampler() {
    let _rng = cm_runtime::lock_global_rng();
    distil_and_check(&toy_config(), "lcm");
}

/// LCD on iCT's recipe (the N = 11 -> 321 doubling grid with no target EMA,
/// lognormal skipping-step pairs, 1 / (t_(n+k) - t_n) weights) with a
/// skipping step of 2 meets the same bars as LCM's fixed grid.
#[test]
fn toy_lcd_on_icts_schedule_with_lognormal_skipping_pairs_meets_the_same_bars() {
    let _rng = cm_runtime::lock_global_rng();
    let mut config = toy_config();
    config.lcd.skip = 2;
    config.lcd.recipe.schedule = ScheduleConfig::IctExponential(IctExponentialSchedule {
        s0: 10,
        s1: 320,
        total_steps: config.train.steps,
    });
    // iCT's P_mean = -1.1 at sigma_data = 0.5, moved by ln 2 for the toy's
    // sigma_data = 1 (the same t / sigma_data).
    config.lcd.recipe.noise = IndexSamplerConfig::Lognormal(LognormalIndex {
        p_mean: -0.4,
        p_std: 2.0,
    });
    config.lcd.recipe.weighting = Weighting::InverseStep;
    config.validate().unwrap();
    distil_and_check(&config, "ict");
}

/// Distils `config` into a fresh folder and checks the bars of the module
/// doc; `tag` names the folder and the printed figures.
fn distil_and_check(config: &LcdRunConfig, tag: &str) {
    let dir = std::env::temp_dir().join(format!("cm-distill-toy-lcd-{tag}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let started = std::time::Instant::now();
    let out = run_lcd(
        config,
        &dir.join("lcd"),
        &dir.join("teachers"),
        false,
        Device::Cpu,
        &AtomicBool::new(false),
        &mut Quiet,
    )
    .unwrap();
    let secs = started.elapsed().as_secs_f64();
    assert!(out.report.as_ref().unwrap().is_file());

    let teacher = Pipeline::load(out.teacher_dir.join("model.toml"), Device::Cpu).unwrap();
    // The same teacher with Euler as its default solver.
    let teacher_euler = {
        let mut card = teacher.card().clone();
        let ModelCard::Edm { sampler, .. } = &mut card else {
            panic!("an EDM teacher card")
        };
        sampler.solver = Solver::Euler;
        Pipeline::new(card.clone(), card.load_model(Device::Cpu).unwrap())
    };
    let lcm = Pipeline::load(out.card.as_ref().unwrap(), Device::Cpu).unwrap();
    let w = config.lcd.guidance;
    let reference = sample(&teacher, 18, w, 1);
    let d = |x: &Tensor| per_class_distance(x, &reference);
    let floor = d(&sample(&teacher, 18, w, 2));
    let heun2 = d(&sample(&teacher, 2, w, 2));
    let euler2 = d(&sample(&teacher_euler, 2, w, 2));
    let (d1, d2, d4) = (
        d(&sample(&lcm, 1, w, 2)),
        d(&sample(&lcm, 2, w, 2)),
        d(&sample(&lcm, 4, w, 2)),
    );
    println!(
        "toy LCD, {tag} ({secs:.0}s incl. teacher), w = {w}: per-class sliced W2 to the guided teacher's \
         Heun-35: teacher Heun-35 with other noise {floor:.4}, teacher 2-step Heun {heun2:.4}, \
         Euler {euler2:.4}; LCD 1-step {d1:.4}, 2-step {d2:.4}, 4-step {d4:.4}"
    );
    let teacher2 = heun2.min(euler2);
    for (steps, got) in [(1, d1), (2, d2), (4, d4)] {
        assert!(
            got < 0.5 * teacher2,
            "LCD {steps}-step {got} vs teacher 2-step {teacher2}"
        );
        assert!(got < 3.0 * floor, "LCD {steps}-step {got} vs noise {floor}");
    }

    // Guidance matters (the teacher's w = 0 and w = 3 differ far beyond
    // sampling noise) and the student follows it: its 2-step samples at each
    // w are near the teacher's at that w and far from the other's.
    let (t0, t3) = (sample(&teacher, 18, 0.0, 3), sample(&teacher, 18, 3.0, 3));
    let apart = per_class_distance(&t0, &t3);
    assert!(
        apart > 5.0 * floor,
        "w barely matters: {apart} vs noise {floor}"
    );
    for (w, same, other) in [(0.0, &t0, &t3), (3.0, &t3, &t0)] {
        let s = sample(&lcm, 2, w, 4);
        let (near, far) = (per_class_distance(&s, same), per_class_distance(&s, other));
        println!(
            "LCD 2-step at w = {w}: {near:.4} to the teacher's at w = {w}, {far:.4} to the other"
        );
        assert!(near < 0.5 * far, "w = {w}: {near} vs {far}");
        assert!(near < 3.0 * floor, "w = {w}: {near} vs noise {floor}");
    }
    std::fs::remove_dir_all(&dir).unwrap();
}
