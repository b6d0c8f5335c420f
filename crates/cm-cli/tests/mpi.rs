//! Data-parallel training over MPI, end to end through `mpirun` (built with
//! `--features mpi`; `cargo xtask test` does when Open MPI is installed):
//! two ranks give the parameters one rank gives on the same data and noise
//! (teacher, CD, ECT, iCT, and every stage of the LCM pipeline),
//! a killed two-rank run resumes to the same bits, and a dead rank ends the
//! job instead of hanging it.
#![cfg(feature = "mpi")]

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use tch::Tensor;

/// The flags `cargo xtask ... --procs N` gives mpirun (root in containers,
/// more ranks than cores in CI, no pinning so ranks share the cores).
const MPIRUN_FLAGS: &[&str] = &[
    "--allow-run-as-root",
    "--oversubscribe",
    "--bind-to",
    "none",
];

fn cm() -> &'static str {
    env!("CARGO_BIN_EXE_cm")
}

fn mpirun(ranks: usize, args: &[&str]) -> Command {
    let mut c = Command::new("mpirun");
    c.args(MPIRUN_FLAGS)
        .args(["-n", &ranks.to_string(), cm()])
        .args(args);
    c
}

fn check(out: Output, what: &str) -> String {
    let log = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        out.status.success(),
        "{what} failed ({:?}):\n{log}",
        out.status
    );
    log
}

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// The toy teacher preset cut to `steps` steps of a global batch of 64 in
/// two shards (so one rank and two ranks see the same shards and noise).
fn teacher_toml(steps: u64, checkpoint_every: u64) -> String {
    format!(
        r#"include = "{}"
[train]
steps = {steps}
batch_size = 64
shards = 2
checkpoint_every = {checkpoint_every}
keep_last = 2
sample_every = 0
sample_count = 64
log_every = 5
"#,
        root().join("configs/teacher/toy.toml").display()
    )
}

fn write(dir: &Path, name: &str, text: &str) -> PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, text).unwrap();
    path
}

/// The tensors of a safetensors file, by name.
fn tensors(path: &Path) -> Vec<(String, Tensor)> {
    let mut t =
        Tensor::read_safetensors(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    t.sort_by(|a, b| a.0.cmp(&b.0));
    t
}

/// The largest absolute difference between two checkpoint files' tensors
/// (same names and shapes required).
fn max_diff(a: &Path, b: &Path) -> f64 {
    let (a, b) = (tensors(a), tensors(b));
    assert_eq!(
        a.iter().map(|t| &t.0).collect::<Vec<_>>(),
        b.iter().map(|t| &t.0).collect::<Vec<_>>()
    );
    a.iter()
        .zip(&b)
        .map(|((n, x), (_, y))| {
            assert_eq!(x.size(), y.size(), "{n}");
            (x - y).abs().max().double_value(&[])
        })
        .fold(0.0, f64::max)
}

fn final_checkpoint(run: &Path, step: u64) -> PathBuf {
    run.join(format!("checkpoints/step_{step:07}"))
}

/// Runs `cm <args>` on one process (with `--threads 1`) or through mpirun.
fn cm_on(ranks: usize, args: &[&str]) -> String {
    let out = if ranks == 1 {
        Command::new(cm())
            .args(args)
            .args(["--threads", "1"])
            .output()
    } else {
        mpirun(ranks, args).output()
    };
    check(out.unwrap(), &format!("cm {} on {ranks} rank(s)", args[0]))
}

/// Asserts that `files` of the final checkpoints of two runs agree within
/// 1e-5.
fn assert_close(what: &str, a: &Path, b: &Path, step: u64, files: &[&str]) {
    for file in files {
        let d = max_diff(
            &final_checkpoint(a, step).join(file),
            &final_checkpoint(b, step).join(file),
        );
        assert!(d < 1e-5, "{what} {file}: max difference {d:e}");
    }
}

/// The only teacher run under `teachers`.
fn teacher_run(teachers: &Path) -> PathBuf {
    std::fs::read_dir(teachers)
        .unwrap()
        .next()
        .expect("a teacher run")
        .unwrap()
        .path()
}

#[test]
fn two_ranks_of_32_give_the_parameters_of_one_rank_of_64_for_teacher_cd_ect_and_ict() {
    let dir = tempfile::tempdir().unwrap();
    let p = |name: &str| dir.path().join(name).to_str().unwrap().to_string();
    write(dir.path(), "teacher.toml", &teacher_toml(20, 10));
    let shorten = |text: String| {
        text.replace(
            "include = \"../teacher/toy.toml\"",
            "include = \"teacher.toml\"",
        )
        .replace("steps = 2000", "steps = 20")
        .replace("steps = 3000", "steps = 20")
        .replace("batch_size = 256", "batch_size = 64\nshards = 2")
        .replace("sample_count = 2000", "sample_count = 64")
    };
    let preset = |path: &str| std::fs::read_to_string(root().join(path)).unwrap();
    write(
        dir.path(),
        "cd.toml",
        &shorten(preset("configs/cd/toy.toml")),
    );
    write(
        dir.path(),
        "ect.toml",
        &shorten(preset("configs/ect/toy.toml")),
    );
    write(
        dir.path(),
        "ict.toml",
        &shorten(preset("configs/ct/toy-ict.toml")),
    );
    for (ranks, name) in [(1, "one"), (2, "two")] {
        // Each trains its own teacher inside the CD pipeline (on `ranks`
        // ranks), which the ECT run then reuses.
        let teachers = p(&format!("teachers-{name}"));
        let log = cm_on(
            ranks,
            &[
                "distill",
                "--config",
                &p("cd.toml"),
                "--run-dir",
                &p(&format!("cd-{name}")),
                "--teachers",
                &teachers,
                "--device",
                "cpu",
            ],
        );
        if ranks == 2 {
            assert!(log.contains("global batch 64 = 2 ranks x 32"), "{log}");
        }
        cm_on(
            ranks,
            &[
                "train-ect",
                "--config",
                &p("ect.toml"),
                "--run-dir",
                &p(&format!("ect-{name}")),
                "--teachers",
                &teachers,
                "--device",
                "cpu",
            ],
        );
        cm_on(
            ranks,
            &[
                "train-ct",
                "--config",
                &p("ict.toml"),
                "--run-dir",
                &p(&format!("ict-{name}")),
                "--device",
                "cpu",
            ],
        );
    }
    let d = |name: &str| dir.path().join(name);
    let (t1, t2) = (
        teacher_run(&d("teachers-one")),
        teacher_run(&d("teachers-two")),
    );
    let all = [
        "online.safetensors",
        "ema_0.995.safetensors",
        "optimizer.safetensors",
    ];
    assert_close("teacher", &t1, &t2, 20, &all);
    assert_close(
        "CD",
        &d("cd-one"),
        &d("cd-two"),
        20,
        &[all[0], all[1], all[2], "target.safetensors"],
    );
    assert_close("ECT", &d("ect-one"), &d("ect-two"), 20, &all);
    assert_close(
        "iCT",
        &d("ict-one"),
        &d("ict-two"),
        20,
        &[all[0], all[1], all[2], "target.safetensors"],
    );
    // The check has teeth: one shard (other noise) moves the parameters by
    // far more than the tolerance.
    write(
        dir.path(),
        "one-shard.toml",
        &teacher_toml(20, 10).replace("shards = 2", "shards = 1"),
    );
    cm_on(
        1,
        &[
            "train-teacher",
            "--config",
            &p("one-shard.toml"),
            "--run-dir",
            &p("teacher-one-shard"),
        ],
    );
    let diff = max_diff(
        &final_checkpoint(&t1, 20).join("online.safetensors"),
        &final_checkpoint(&d("teacher-one-shard"), 20).join("online.safetensors"),
    );
    assert!(
        diff > 1e-4,
        "one shard and two shards agree to {diff:e}: the noise is not keyed by shard"
    );
}

/// The one entry of `dir` whose name starts with `prefix`.
fn entry_starting(dir: &Path, prefix: &str) -> PathBuf {
    let found: Vec<PathBuf> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| {
            p.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with(prefix))
        })
        .collect();
    assert_eq!(found.len(), 1, "{prefix}* in {}: {found:?}", dir.display());
    found[0].clone()
}

/// Asserts that every weights file of the final checkpoints of two runs
/// agrees within 1e-5.
fn assert_checkpoints_close(what: &str, a: &Path, b: &Path, step: u64) {
    let ckpt = final_checkpoint(a, step);
    let files: Vec<String> = std::fs::read_dir(&ckpt)
        .unwrap()
        .filter_map(|e| e.unwrap().file_name().into_string().ok())
        .filter(|n| n.ends_with(".safetensors"))
        .collect();
    assert!(files.len() >= 3, "{what}: {files:?} in {}", ckpt.display());
    let files: Vec<&str> = files.iter().map(String::as_str).collect();
    assert_close(what, a, b, step, &files);
}

#[test]
fn two_ranks_of_16_give_the_lcm_pipeline_of_one_rank_of_32_and_reuse_its_stages() {
    // The smoke LCM pipeline (autoencoder, guided latent teacher, LCD on
    // real Fashion-MNIST latents), every stage cut to 20 steps of a global
    // batch of 32 in two shards.
    let dir = tempfile::tempdir().unwrap();
    let p = |name: &str| dir.path().join(name).to_str().unwrap().to_string();
    let stage = |section: &str| {
        format!("[{section}]\nsteps = 20\nshards = 2\ncheckpoint_every = 20\nsample_every = 0\n")
    };
    let config = format!(
        "include = \"{}\"\n\n{}\n{}\n{}",
        root().join("configs/lcm/smoke.toml").display(),
        stage("autoencoder.train"),
        stage("teacher.train"),
        stage("train"),
    );
    write(dir.path(), "lcm.toml", &config);
    let run = |ranks: usize, name: &str, teachers: &str| {
        cm_on(
            ranks,
            &[
                "train-lcm",
                "--config",
                &p("lcm.toml"),
                "--run-dir",
                &p(name),
                "--teachers",
                &p(teachers),
                "--device",
                "cpu",
            ],
        )
    };
    run(1, "lcm-one", "teachers-one");
    let log = run(2, "lcm-two", "teachers-two");
    assert!(log.contains("global batch 32 = 2 ranks x 16"), "{log}");
    let d = |name: &str| dir.path().join(name);
    for prefix in ["autoencoder-", "teacher-"] {
        assert_checkpoints_close(
            prefix,
            &entry_starting(&d("teachers-one"), prefix),
            &entry_starting(&d("teachers-two"), prefix),
            20,
        );
    }
    assert_checkpoints_close("LCD", &d("lcm-one"), &d("lcm-two"), 20);
    for run_dir in ["lcm-one", "lcm-two"] {
        assert!(d(run_dir).join("model.toml").is_file(), "{run_dir}");
    }
    // A second two-rank run reuses both finished stages on every rank.
    let log = run(2, "lcm-again", "teachers-two");
    assert!(log.contains("reusing the finished autoencoder"), "{log}");
    assert!(log.contains("reusing the finished teacher"), "{log}");
    assert!(d("lcm-again").join("model.toml").is_file());
}

/// Every process whose environment says it is MPI rank `rank` and whose
/// command line mentions `needle`.
fn rank_pids(rank: usize, needle: &str) -> Vec<u32> {
    let want = format!("OMPI_COMM_WORLD_RANK={rank}");
    std::fs::read_dir("/proc")
        .unwrap()
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| {
            let env = std::fs::read(format!("/proc/{pid}/environ")).unwrap_or_default();
            let cmd = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
            env.split(|&b| b == 0).any(|v| v == want.as_bytes())
                && String::from_utf8_lossy(&cmd).contains(needle)
        })
        .collect()
}

/// Waits up to `limit` for `child` to exit.
fn wait_for(child: &mut Child, limit: Duration) -> Option<std::process::ExitStatus> {
    let t = Instant::now();
    while t.elapsed() < limit {
        if let Some(status) = child.try_wait().unwrap() {
            return Some(status);
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    None
}

fn wait_until(limit: Duration, mut ok: impl FnMut() -> bool) -> bool {
    let t = Instant::now();
    while t.elapsed() < limit {
        if ok() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    false
}

fn kill(signal: &str, target: &str) {
    let _ = Command::new("kill").args([signal, "--", target]).status();
}

#[test]
fn a_two_rank_run_killed_and_resumed_ends_bit_identical_to_an_uninterrupted_one() {
    use std::os::unix::process::CommandExt;
    let dir = tempfile::tempdir().unwrap();
    let config = write(dir.path(), "teacher.toml", &teacher_toml(400, 50));
    let run = |name: &str, resume: bool| -> Command {
        let run_dir = dir.path().join(name);
        let mut args = vec![
            "train-teacher".to_string(),
            "--config".into(),
            config.to_str().unwrap().into(),
            "--run-dir".into(),
            run_dir.to_str().unwrap().into(),
        ];
        if resume {
            args.push("--resume".into());
        }
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        mpirun(2, &args)
    };
    check(
        run("whole", false).output().unwrap(),
        "the uninterrupted run",
    );

    // Killed hard (mpirun and both ranks, SIGKILL: no chance to save) once
    // a checkpoint past the first exists.
    let killed = dir.path().join("killed");
    let mut child = run("killed", false)
        .process_group(0)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let reached = wait_until(Duration::from_secs(120), || {
        cm_train::latest_checkpoint(&killed).is_some_and(|(s, _)| s >= 100)
    });
    kill("-KILL", &format!("-{}", child.id()));
    let status = wait_for(&mut child, Duration::from_secs(30)).expect("mpirun exits after SIGKILL");
    assert!(reached, "no checkpoint at step >= 100 within 2 minutes");
    let (at, _) = cm_train::latest_checkpoint(&killed).unwrap();
    assert!(
        !status.success() && at < 400,
        "the run finished before it was killed (step {at})"
    );

    let log = check(run("killed", true).output().unwrap(), "the resumed run");
    assert!(log.contains("resumed from"), "{log}");
    for file in [
        "online.safetensors",
        "ema_0.995.safetensors",
        "optimizer.safetensors",
    ] {
        let (a, b) = (
            tensors(&final_checkpoint(&dir.path().join("whole"), 400).join(file)),
            tensors(&final_checkpoint(&killed, 400).join(file)),
        );
        assert_eq!(a.len(), b.len());
        for ((n, x), (_, y)) in a.iter().zip(&b) {
            assert!(
                x.equal(y),
                "{file}: {n} differs after resuming from step {at}"
            );
        }
    }
    let losses = |run: &Path| -> String {
        std::fs::read_to_string(run.join("metrics.csv"))
            .unwrap()
            .lines()
            .map(|l| l.split(',').take(4).collect::<Vec<_>>().join(","))
            .collect::<Vec<_>>()
            .join("\n")
    };
    assert_eq!(losses(&dir.path().join("whole")), losses(&killed));
}

#[test]
fn a_rank_that_dies_ends_the_job_with_an_error_instead_of_hanging_it() {
    let dir = tempfile::tempdir().unwrap();
    let config = write(
        dir.path(),
        "teacher.toml",
        &teacher_toml(1_000_000, 100_000),
    );
    let run_dir = dir.path().join("doomed-run");
    let mut child = mpirun(
        2,
        &[
            "train-teacher",
            "--config",
            config.to_str().unwrap(),
            "--run-dir",
            run_dir.to_str().unwrap(),
        ],
    )
    .stdout(Stdio::null())
    .stderr(Stdio::piped())
    .spawn()
    .unwrap();
    let metrics = run_dir.join("metrics.csv");
    assert!(
        wait_until(Duration::from_secs(120), || std::fs::read_to_string(
            &metrics
        )
        .is_ok_and(|m| m.lines().count() > 10)),
        "training did not start"
    );
    let needle = run_dir.to_str().unwrap();
    let victims = rank_pids(1, needle);
    assert_eq!(victims.len(), 1, "rank 1's process: {victims:?}");
    kill("-KILL", &victims[0].to_string());
    let status = wait_for(&mut child, Duration::from_secs(60));
    if status.is_none() {
        let _ = child.kill();
        for pid in rank_pids(0, needle) {
            kill("-KILL", &pid.to_string());
        }
    }
    let status = status.expect("rank 0 and mpirun still running 60 s after rank 1 died");
    assert!(
        !status.success(),
        "mpirun reported success after a rank died"
    );
    assert!(rank_pids(0, needle).is_empty(), "rank 0 outlived the job");
}

#[test]
fn commands_that_do_not_train_refuse_several_ranks() {
    let dir = tempfile::tempdir().unwrap();
    let out = mpirun(
        2,
        &[
            "sample",
            "--card",
            "missing.toml",
            "--out",
            dir.path().to_str().unwrap(),
        ],
    )
    .output()
    .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        err.contains(
            "only train-teacher, train-autoencoder, distill, train-pd, train-ect, train-lcm, \
             train-lcd and train-ct train data-parallel"
        ),
        "{err}"
    );
}
