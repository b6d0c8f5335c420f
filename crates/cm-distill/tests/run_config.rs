//! A CD config names its teacher's config (`[teacher] include = ...`)
//! instead of copying it; the noise settings student and teacher share must
//! agree (the error names both fields); and a resumed CD run checks its
//! config against the one it started with (only step counts may change).

use std::sync::atomic::AtomicBool;

use cm_distill::{run_cd, CdRunConfig};
use cm_train::{Quiet, TeacherConfig, TrainError};
use tch::Device;

fn configs() -> std::path::PathBuf {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../configs")
}

/// A scratch folder, removed when the guard drops (also when a test fails).
fn scratch(tag: &str) -> tempfile::TempDir {
    tempfile::Builder::new()
        .prefix(&format!("cm-distill-{tag}-"))
        .tempdir()
        .unwrap()
}

/// A toy CD config that includes the toy teacher preset, with `extra` TOML
/// appended.
fn toy_cd(
    dir: &std::path::Path,
    teacher_steps: u64,
    cd_steps: u64,
    extra: &str,
) -> std::path::PathBuf {
    let teacher = configs().join("teacher/toy.toml");
    let text = format!(
        "[teacher]\ninclude = {:?}\n[teacher.train]\nsteps = {teacher_steps}\ncheckpoint_every = {teacher_steps}\n\
         sample_every = 0\n\n[train]\nsteps = {cd_steps}\nbatch_size = 64\nseed = 1\nema_rates = [0.995]\n\
         checkpoint_every = 5\nsample_count = 16\n\n[cd.recipe.consistency]\nsigma_data = 1.0\n\n\
         [cd.recipe.schedule]\nkind = \"fixed\"\nn = 18\nmu = 0.95\n{extra}",
        teacher.display().to_string()
    );
    let path = dir.join(format!("cd-{cd_steps}.toml"));
    std::fs::write(&path, text).unwrap();
    path
}

#[test]
fn the_teacher_section_includes_the_preset_and_overrides_it() {
    let guard = scratch("include");
    let dir = guard.path().to_path_buf();
    let run: CdRunConfig = cm_core::load_toml(toy_cd(&dir, 40, 10, "")).unwrap();
    let mut preset: TeacherConfig = cm_core::load_toml(configs().join("teacher/toy.toml")).unwrap();
    assert_ne!(
        run.teacher, preset,
        "the override of teacher.train.steps applies"
    );
    preset.train.steps = 40;
    preset.train.checkpoint_every = 40;
    preset.train.sample_every = 0;
    assert_eq!(run.teacher, preset);
}

#[test]
fn student_and_teacher_noise_settings_must_agree() {
    let guard = scratch("agree");
    let dir = guard.path().to_path_buf();
    let path = toy_cd(&dir, 40, 10, "");
    let text = std::fs::read_to_string(&path).unwrap().replace(
        "[cd.recipe.consistency]\nsigma_data = 1.0",
        "[cd.recipe.consistency]\nsigma_data = 0.5",
    );
    std::fs::write(&path, text).unwrap();
    let err = cm_core::load_toml::<CdRunConfig>(&path)
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("cd.recipe.consistency.sigma_data")
            && err.contains("teacher.edm.edm.sigma_data"),
        "{err}"
    );
}

#[test]
fn a_resumed_cd_run_keeps_its_config() {
    let guard = scratch("resume");
    let dir = guard.path().to_path_buf();
    let first: CdRunConfig = cm_core::load_toml(toy_cd(&dir, 20, 10, "")).unwrap();
    let never = AtomicBool::new(false);
    let run = |config: &CdRunConfig, resume: bool| {
        run_cd(
            config,
            &dir.join("cd"),
            &dir.join("teachers"),
            resume,
            Device::Cpu,
            &never,
            &mut Quiet,
        )
    };
    let out = run(&first, false).unwrap();
    assert_eq!(out.train.step, 10);
    assert!(dir.join("cd/model.toml").is_file() && out.report.is_some());

    // Another recipe on the same run folder: refused before any training.
    let mut changed = first.clone();
    if let cm_core::ScheduleConfig::Fixed(f) = &mut changed.cd.recipe.schedule {
        f.mu = 0.5;
    }
    changed.train.steps = 15;
    match run(&changed, true) {
        Err(TrainError::RunFolder { reason, .. }) => {
            assert!(reason.contains("differs"), "{reason}")
        }
        other => panic!("expected a run-folder error, got {other:?}"),
    }
    // Another teacher: refused before the (long) teacher stage starts, so
    // no second teacher folder appears.
    let mut other_teacher = first.clone();
    other_teacher.teacher.train.steps = 30;
    assert!(matches!(
        run(&other_teacher, true),
        Err(TrainError::RunFolder { .. })
    ));
    // A fresh run into a folder that holds one: refused the same way.
    assert!(matches!(
        run(&first, false),
        Err(TrainError::RunFolder { .. })
    ));
    assert_eq!(std::fs::read_dir(dir.join("teachers")).unwrap().count(), 1);
    // More steps of the same recipe: continues from step 10.
    let mut longer = first.clone();
    longer.train.steps = 15;
    let out = run(&longer, true).unwrap();
    assert!(out.teacher_reused);
    assert_eq!(out.train.step, 15);
    assert_eq!(out.train.losses.first().map(|l| l.0), Some(11));
}

/// The eval configs name their teacher by its folder, which is keyed by
/// the teacher config's text: they must follow the config.
#[test]
fn eval_configs_name_the_current_teachers() {
    for (preset, evals) in [
        (
            "fmnist",
            &["eval/fmnist.toml", "eval/compare-fmnist.toml"][..],
        ),
        ("smoke", &["eval/compare-smoke.toml"][..]),
    ] {
        let teacher: cm_train::TeacherConfig =
            cm_core::load_toml(configs().join(format!("teacher/{preset}.toml"))).unwrap();
        let dir = cm_train::teacher_dir(std::path::Path::new("runs/teachers"), &teacher);
        let card = format!("{}/model.toml", dir.display());
        for eval in evals {
            let text = std::fs::read_to_string(configs().join(eval)).unwrap();
            assert!(
                text.contains(&card),
                "{eval} does not name the teacher card {card}"
            );
            // Every teacher folder it names (cards, training times) is this one.
            let want = dir.display().to_string();
            for (at, _) in text.match_indices("runs/teachers/teacher-") {
                let named = &text[at..at + want.len()];
                assert_eq!(named, want, "{eval}: a stale teacher folder");
            }
        }
    }
}

/// The teacher folder and autoencoder folder `cargo xtask` gives the
/// pipeline of `preset` (it keeps its stages under runs/teachers; the
/// teacher's key covers its [latent] card, the autoencoder's folder).
fn lcm_stage_dirs(
    preset: &str,
) -> (
    cm_distill::LcmRunConfig,
    std::path::PathBuf,
    std::path::PathBuf,
) {
    let config: cm_distill::LcmRunConfig = cm_core::load_toml(configs().join(preset)).unwrap();
    let teachers = std::path::Path::new("runs/teachers");
    let ae = cm_distill::autoencoder_dir(teachers, &config.autoencoder);
    let lcd = config.lcd_config(ae.join("model.toml"));
    let dir = cm_train::teacher_dir(teachers, &lcd.teacher);
    (config, ae, dir)
}

/// `file` names the teacher card in `dir` (or, `folder_only`, the folder),
/// no other teacher folder, and the autoencoder folder `ae`.
fn assert_names_stages(file: &str, dir: &std::path::Path, ae: &std::path::Path, folder_only: bool) {
    let text = std::fs::read_to_string(configs().join(file)).unwrap();
    let folder = dir.display().to_string();
    let named = if folder_only {
        folder.clone()
    } else {
        format!("{folder}/model.toml")
    };
    assert!(text.contains(&named), "{file} does not name {named}");
    for (at, _) in text.match_indices("runs/teachers/teacher-") {
        assert_eq!(
            &text[at..at + folder.len()],
            folder,
            "{file}: a stale teacher folder"
        );
    }
    assert!(
        text.contains(&ae.display().to_string()),
        "{file}: {}",
        ae.display()
    );
}

#[test]
fn the_lcm_eval_config_names_the_current_teacher() {
    let (_, ae, dir) = lcm_stage_dirs("lcm/fmnist.toml");
    assert_names_stages("eval/lcm-fmnist.toml", &dir, &ae, false);
}

#[test]
fn the_lcm_lora_configs_name_the_current_teacher() {
    // The LCM-LoRA evaluations and the style LoRA (its base and
    // autoencoder) name the LCM-LoRA pipeline's folders.
    let (config, ae, dir) = lcm_stage_dirs("lcm-lora/fmnist.toml");
    for file in [
        "eval/lcm-lora-fmnist.toml",
        "eval/lcm-lora-style.toml",
        "lcm-lora/style/fmnist.toml",
    ] {
        // The style check's training times name the folder, not the card.
        assert_names_stages(file, &dir, &ae, file.ends_with("lcm-lora-style.toml"));
    }
    let card = format!("{}/model.toml", dir.display());
    let style: cm_train::TeacherConfig =
        cm_core::load_toml(configs().join("lcm-lora/style/fmnist.toml")).unwrap();
    assert_eq!(
        style.net, config.teacher.net,
        "the style LoRA keeps the teacher's network"
    );
    assert_eq!(
        style.fine_tune.unwrap().base,
        std::path::PathBuf::from(&card)
    );
}
