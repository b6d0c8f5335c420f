//! The smoke preset of `cargo xtask train-cd` runs end to end (teacher,
//! distillation, grids, report), and a second run reuses the finished
//! teacher.

use std::sync::atomic::AtomicBool;

use cm_distill::{run_cd, CdRunConfig};
use cm_train::Quiet;
use tch::Device;

#[test]
fn smoke_pipeline_runs_and_reuses_its_teacher() {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../configs/cd/smoke.toml");
    let config: CdRunConfig = cm_core::load_toml(path).unwrap();
    let dir = std::env::temp_dir().join(format!("cm-distill-smoke-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let never = AtomicBool::new(false);
    let started = std::time::Instant::now();
    let out = run_cd(
        &config,
        &dir.join("cd"),
        &dir.join("teachers"),
        false,
        Device::Cpu,
        &never,
        &mut Quiet,
    )
    .unwrap();
    println!("smoke train-cd: {:.1}s", started.elapsed().as_secs_f64());
    assert!(!out.teacher_reused);
    let report = std::fs::read_to_string(out.report.unwrap()).unwrap();
    for file in [
        "samples_teacher_heun35.png",
        "samples_cd_1step.png",
        "samples_cd_2step.png",
        "loss.png",
    ] {
        assert!(dir.join("cd").join(file).is_file(), "{file} missing");
        assert!(
            report.contains(file) || file == "loss.png",
            "report lacks {file}"
        );
    }
    assert!(report.contains("| CD, 1 step | 1 |"), "{report}");
    let again = run_cd(
        &config,
        &dir.join("cd2"),
        &dir.join("teachers"),
        false,
        Device::Cpu,
        &never,
        &mut Quiet,
    )
    .unwrap();
    assert!(again.teacher_reused, "the finished teacher was not reused");
    std::fs::remove_dir_all(&dir).unwrap();
}
