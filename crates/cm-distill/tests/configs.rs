//! The distillation presets parse, validate, and embed exactly the teacher
//! presets they name (so `train-cd` reuses a teacher trained by
//! `train-teacher` with the same preset).

use cm_distill::CdRunConfig;
use cm_train::TeacherConfig;

fn configs() -> std::path::PathBuf {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../configs")
}

#[test]
fn cd_presets_parse_and_embed_the_teacher_presets() {
    for (cd, teacher) in [
        ("fmnist", Some("fmnist")),
        ("toy", Some("toy")),
        ("smoke", None),
    ] {
        let run: CdRunConfig = cm_core::load_toml(configs().join(format!("cd/{cd}.toml"))).unwrap();
        if let Some(t) = teacher {
            let alone: TeacherConfig =
                cm_core::load_toml(configs().join(format!("teacher/{t}.toml"))).unwrap();
            assert_eq!(
                run.teacher, alone,
                "configs/cd/{cd}.toml [teacher] differs from configs/teacher/{t}.toml"
            );
        }
    }
}

#[test]
fn bad_cd_values_name_the_field() {
    let text = std::fs::read_to_string(configs().join("cd/smoke.toml")).unwrap();
    let bad = text.replace("mu = 0.95", "mu = 1.5");
    let err = cm_core::parse_toml::<CdRunConfig>(&bad, "smoke.toml").unwrap_err();
    assert!(err.to_string().contains("cd.recipe.schedule.mu"), "{err}");
    let bad = text.replace(
        "[cd]\nsolver = \"heun\"",
        "[cd]\nsolver = \"heun\"\ntwo_step_tau = 100.0",
    );
    let err = cm_core::parse_toml::<CdRunConfig>(&bad, "smoke.toml").unwrap_err();
    assert!(err.to_string().contains("cd.two_step_tau"), "{err}");
}
