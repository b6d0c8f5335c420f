//! The smoke preset of `cargo xtask train-pd` (configs/pd/smoke.toml) runs
//! end to end and leaves what the pipeline promises: one folder per stage
//! (4 -> 2 -> 1 steps), each restarted (its own metrics from step 1, its own
//! optimizer), each stage's teacher the previous stage's student, a model
//! card per stage that samples with its step count, the run's card (the
//! 1-step model, still valid after the folder moves) and report; a run
//! stopped when a stage begins and resumed ends bit-identical to the
//! uninterrupted one; a resumed finished run changes nothing and a fresh
//! run into the same folder is refused.

use std::sync::atomic::{AtomicBool, Ordering};

use cm_distill::{run_pd, stage_dir, PdRunConfig};
use cm_sample::{ModelCard, Pipeline, SamplingGrid};
use cm_train::{Observer, Quiet};

/// Raises the stop flag when the stage named `at` begins, as Ctrl-C would.
struct StopAtStage<'a> {
    at: &'a str,
    stop: &'a AtomicBool,
}

impl Observer for StopAtStage<'_> {
    fn on_stage(&mut self, name: &str) {
        if name == self.at {
            self.stop.store(true, Ordering::SeqCst);
        }
    }
}
use tch::Device;

#[test]
fn smoke_pd_pipeline_halves_restarts_and_leaves_a_card_per_stage() {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../configs/pd/smoke.toml");
    let config: PdRunConfig = cm_core::load_toml(path).unwrap();
    let tmp = tempfile::Builder::new()
        .prefix("cm-distill-smoke-pd-")
        .tempdir()
        .unwrap();
    let run_dir = tmp.path().join("pd");
    let teachers = tmp.path().join("teachers");
    let never = AtomicBool::new(false);
    let started = std::time::Instant::now();
    let out = run_pd(
        &config,
        &run_dir,
        &teachers,
        false,
        Device::Cpu,
        &never,
        &mut Quiet,
    )
    .unwrap();
    println!("smoke train-pd: {:.1}s", started.elapsed().as_secs_f64());
    let steps: Vec<usize> = out.stages.iter().map(|s| s.steps).collect();
    assert_eq!(steps, [4, 2, 1]);
    for (i, stage) in out.stages.iter().enumerate() {
        assert_eq!(stage.dir, stage_dir(&run_dir, stage.steps));
        assert_eq!(stage.train_steps, config.train.steps);
        // Restarted: the stage's metrics start at step 1 and its optimizer
        // has made exactly this stage's updates.
        let metrics = std::fs::read_to_string(stage.dir.join("metrics.csv")).unwrap();
        let rows: Vec<&str> = metrics.lines().skip(1).collect();
        assert_eq!(rows.len() as u64, config.train.steps);
        assert!(rows[0].starts_with("1,"), "{}", rows[0]);
        let (_, ckpt) = cm_train::latest_checkpoint(&stage.dir).unwrap();
        let state: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(ckpt.join("state.json")).unwrap())
                .unwrap();
        assert_eq!(state["optimizer_steps"], config.train.steps, "{state}");
        // The card samples with the stage's step count on the PD grid.
        let card = ModelCard::load(&stage.card).unwrap();
        let ModelCard::Edm { sampler, .. } = &card else {
            panic!("PD cards are EDM cards: {card:?}")
        };
        assert_eq!(
            (sampler.steps, sampler.grid, sampler.solver),
            (
                stage.steps,
                SamplingGrid::Progressive,
                cm_core::Solver::Euler
            )
        );
        // Each stage's teacher is the previous stage's student.
        let report = std::fs::read_to_string(stage.dir.join("report.md")).unwrap();
        if i == 0 {
            assert!(report.contains("the EDM teacher"), "{report}");
        } else {
            let prev = out.stages[i - 1].dir.file_name().unwrap().to_string_lossy();
            assert!(
                report.contains(&format!("{prev}/checkpoints/"))
                    && report.contains("online.safetensors"),
                "{report}"
            );
        }
        for file in [
            format!("samples_student_{}.png", stage.steps),
            format!("samples_teacher_{}.png", 2 * stage.steps),
        ] {
            assert!(stage.dir.join(&file).is_file(), "{file}");
        }
    }
    // The run's card is the 1-step model, usable from the library, also
    // after the run folder moves (its weights path is relative).
    let moved = tmp.path().join("moved");
    std::fs::create_dir(&moved).unwrap();
    let copy = |from: &std::path::Path, to: &std::path::Path| {
        let status = std::process::Command::new("cp")
            .arg("-r")
            .arg(from)
            .arg(to)
            .status()
            .unwrap();
        assert!(status.success());
    };
    copy(&run_dir, &moved);
    let card = moved.join("pd").join(cm_sample::CARD_FILE);
    let generated = Pipeline::load(&card, Device::Cpu)
        .unwrap()
        .generate(3, 1, 7)
        .unwrap();
    assert_eq!(generated.size(), [3, 1, 28, 28]);
    let report = std::fs::read_to_string(out.report.as_ref().unwrap()).unwrap();
    for name in ["steps-004", "steps-002", "steps-001"] {
        assert!(report.contains(&format!("{name}/model.toml")), "{report}");
    }

    // Resuming the finished run keeps every stage as it is.
    let weights = |dir: &std::path::Path| {
        let (_, ckpt) = cm_train::latest_checkpoint(dir).unwrap();
        std::fs::read(ckpt.join("online.safetensors")).unwrap()
    };
    let before = weights(&out.stages[2].dir);
    let again = run_pd(
        &config,
        &run_dir,
        &teachers,
        true,
        Device::Cpu,
        &never,
        &mut Quiet,
    )
    .unwrap();
    assert!(again.teacher_reused);
    assert_eq!(again.stages.len(), 3);
    assert_eq!(weights(&again.stages[2].dir), before);
    // Stopped as stage 2 begins (Ctrl-C), then resumed: the same weights
    // as the uninterrupted run, bit for bit, so stage 2's teacher was
    // stage 1's final student both times.
    let stopped_dir = tmp.path().join("pd-stopped");
    let stop = AtomicBool::new(false);
    let first = run_pd(
        &config,
        &stopped_dir,
        &teachers,
        false,
        Device::Cpu,
        &stop,
        &mut StopAtStage {
            at: "progressive-distillation-to-2-steps",
            stop: &stop,
        },
    )
    .unwrap();
    assert!(first.stopped_at.is_some());
    assert_eq!(first.stages.len(), 1);
    assert!(first.report.is_none());
    let resumed = run_pd(
        &config,
        &stopped_dir,
        &teachers,
        true,
        Device::Cpu,
        &never,
        &mut Quiet,
    )
    .unwrap();
    assert_eq!(resumed.stages.len(), 3);
    for (a, b) in resumed.stages.iter().zip(&out.stages) {
        let tensors = |dir: &std::path::Path| {
            let (_, ckpt) = cm_train::latest_checkpoint(dir).unwrap();
            let mut named = tch::Tensor::read_safetensors(ckpt.join("online.safetensors")).unwrap();
            named.sort_by(|a, b| a.0.cmp(&b.0));
            named
        };
        let (ta, tb) = (tensors(&a.dir), tensors(&b.dir));
        assert_eq!(ta.len(), tb.len());
        let differ: Vec<String> = ta
            .iter()
            .zip(&tb)
            .filter(|((na, xa), (nb, xb))| na != nb || !xa.equal(xb))
            .map(|((name, xa), (_, xb))| {
                format!(
                    "{name} (max |diff| {})",
                    (xa - xb).abs().max().double_value(&[])
                )
            })
            .collect();
        assert!(differ.is_empty(), "{} steps: {differ:?}", a.steps);
    }

    // A fresh run into the same folder is refused before anything trains.
    let err = run_pd(
        &config,
        &run_dir,
        &teachers,
        false,
        Device::Cpu,
        &never,
        &mut Quiet,
    )
    .unwrap_err();
    assert!(err.to_string().contains("already holds a run"), "{err}");
}
