//! `cm ct-ablation` end to end on a shortened toy ladder (files and table
//! written), and the size limits of `cm ct-ablation` and
//! `cm search-timesteps` (clear errors before any work).

use std::path::Path;
use std::process::Command;

/// Runs `cm` with one thread: (success, stdout, stderr).
fn cm(args: &[&str]) -> (bool, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_cm"))
        .args(args)
        .args(["--threads", "1"])
        .output()
        .expect("run cm");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// The toy CT / iCT preset cut down to 10 steps of a small network.
fn short_config(name: &str, dir: &Path, n_test: usize) -> String {
    let preset = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../configs/ct")
        .join(name);
    let mut text = std::fs::read_to_string(&preset).unwrap();
    for (from, to) in [
        ("steps = 3000", "steps = 10"),
        ("checkpoint_every = 1000", "checkpoint_every = 10"),
        ("sample_every = 1000", "sample_every = 10"),
        ("sample_count = 2000", "sample_count = 64"),
        ("log_every = 100", "log_every = 10"),
        ("batch_size = 256", "batch_size = 64"),
        ("hidden = 128", "hidden = 32"),
        (
            "distribution = \"eight-gaussians\"",
            &format!("distribution = \"eight-gaussians\"\nn_test = {n_test}"),
        ),
    ] {
        assert!(text.contains(from), "{name}: {from}");
        text = text.replace(from, to);
    }
    let path = dir.join(name);
    std::fs::write(&path, text).unwrap();
    path.to_str().unwrap().to_string()
}

#[test]
fn ct_ablation_writes_the_table_and_bounds_its_sizes() {
    let dir = tempfile::tempdir().unwrap();
    let ct = short_config("toy-ct.toml", dir.path(), 1000);
    let ict = short_config("toy-ict.toml", dir.path(), 1000);
    let out = dir.path().join("ablation");
    let out_s = out.to_str().unwrap();
    let (ok, stdout, err) = cm(&[
        "ct-ablation",
        "--ct",
        &ct,
        "--ict",
        &ict,
        "--out",
        out_s,
        "--seeds",
        "1",
        "--samples",
        "200",
    ]);
    assert!(ok, "{err}");
    let md = std::fs::read_to_string(out.join("ablation.md")).unwrap();
    assert_eq!(stdout, md);
    // Header, rule, data row, 7 rungs, blank line, note.
    let lines: Vec<&str> = md.lines().collect();
    assert_eq!(lines.len(), 12, "{md}");
    assert!(lines[0].ends_with("1-step modes |"), "{md}");
    assert!(
        lines[2].contains("training data") && lines[2].ends_with("/8 |"),
        "{md}"
    );
    assert!(lines[3].starts_with("| 0 | CT (CM Alg. 3) |"), "{md}");
    assert!(lines[9].starts_with("| 6 | + network"), "{md}");
    assert!(md.contains("over 1 training seeds; 200 samples"), "{md}");
    let csv = std::fs::read_to_string(out.join("ablation.csv")).unwrap();
    let csv: Vec<&str> = csv.lines().collect();
    assert_eq!(csv[0], "rung,name,seed,steps,sliced_w2,energy,modes");
    assert_eq!(csv.len(), 1 + 7 * 2);
    assert!(
        csv[1].starts_with("0,\"CT (CM Alg. 3)\",0,1,"),
        "{}",
        csv[1]
    );
    for r in 0..7 {
        assert!(out.join(format!("rung{r}_1step.png")).is_file());
        assert!(out.join(format!("rung{r}-seed0/model.toml")).is_file());
    }

    for (flag, value) in [
        ("--seeds", "0"),
        ("--seeds", "101"),
        ("--seeds", "18446744073709551615"),
        ("--samples", "99"),
        ("--samples", "10001"),
    ] {
        let (ok, _, err) = cm(&[
            "ct-ablation",
            "--ct",
            &ct,
            "--ict",
            &ict,
            "--out",
            out_s,
            flag,
            value,
        ]);
        assert!(!ok, "{flag} {value}");
        assert!(err.contains(flag.trim_start_matches('-')), "{err}");
    }
    // More samples than held-out points.
    let (ok, _, err) = cm(&[
        "ct-ablation",
        "--ct",
        &ct,
        "--ict",
        &ict,
        "--out",
        out_s,
        "--samples",
        "1001",
    ]);
    assert!(!ok);
    assert!(err.contains("held-out") && err.contains("1000"), "{err}");
}

#[test]
fn search_timesteps_bounds_its_sizes() {
    let dir = tempfile::tempdir().unwrap();
    let card = dir.path().join("missing.toml");
    let card = card.to_str().unwrap();
    for (flag, value, field) in [
        ("--max-steps", "1", "max_steps"),
        ("--max-steps", "9", "max_steps"),
        ("--rounds", "0", "rounds"),
        ("--rounds", "31", "rounds"),
        ("--samples", "1", "samples"),
        ("--samples", "50001", "samples"),
    ] {
        let (ok, _, err) = cm(&[
            "search-timesteps",
            "--card",
            card,
            "--device",
            "cpu",
            flag,
            value,
        ]);
        assert!(!ok, "{flag} {value}");
        assert!(err.contains(field) && err.contains(value), "{err}");
    }
}
