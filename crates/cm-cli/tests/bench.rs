//! `cm bench` (the rows of the PyTorch side-by-side) and the CPU set-up
//! every `cm` command applies: the table, the JSON-lines worker protocol of
//! `cargo xtask bench --vs-pytorch`, bounds, and the allocator re-execution.

use std::io::{BufRead, BufReader, Write};
use std::process::{Command, Stdio};

fn cm() -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_cm"));
    c.env_remove("GLIBC_TUNABLES").env_remove("CM_RS_TUNE");
    c
}

#[test]
fn prints_a_row_table_with_the_cpu_setup() {
    let dir = tempfile::tempdir().unwrap();
    let out = cm()
        .args([
            "bench",
            "--rows",
            "forward_b1,sample_1step_b1",
            "--reps",
            "2",
        ])
        .args(["--threads", "1", "--dir"])
        .arg(dir.path())
        .output()
        .unwrap();
    let (stdout, stderr) = (
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr),
    );
    assert!(out.status.success(), "{stderr}");
    for row in ["| forward_b1 |", "| sample_1step_b1 |"] {
        let line = stdout.lines().find(|l| l.starts_with(row)).expect(row);
        let ms: Vec<f64> = line
            .split('|')
            .filter_map(|c| c.trim().parse().ok())
            .collect();
        assert_eq!(ms.len(), 2, "{line}");
        assert!(
            ms[0] > 0.0 && ms[1] > 0.0 && ms[1] <= ms[0],
            "median >= min: {line}"
        );
    }
    // cm re-executed itself with the allocator tunables (cm-runtime).
    assert!(stderr.contains("threads 1 = 1"), "{stderr}");
    assert!(stderr.contains("glibc malloc tunables"), "{stderr}");
    // The weights and reference input/output the PyTorch port checks.
    assert!(dir.path().join("weights.safetensors").is_file());
    assert!(dir.path().join("io.safetensors").is_file());

    // CM_RS_TUNE=0 keeps the environment as it is.
    let out = cm()
        .env("CM_RS_TUNE", "0")
        .args([
            "bench",
            "--rows",
            "forward_b1",
            "--reps",
            "1",
            "--threads",
            "1",
            "--dir",
        ])
        .arg(dir.path())
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert!(stderr.contains("glibc malloc defaults"), "{stderr}");
}

#[test]
fn serves_rows_as_json_lines() {
    let dir = tempfile::tempdir().unwrap();
    let mut child = cm()
        .args(["bench", "--serve", "--threads", "1", "--dir"])
        .arg(dir.path())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut stdin = child.stdin.take().unwrap();
    let mut stdout = BufReader::new(child.stdout.take().unwrap());
    let mut line = String::new();
    stdout.read_line(&mut line).unwrap();
    let ready: serde_json::Value = serde_json::from_str(&line).unwrap();
    assert_eq!(ready["ok"], true);
    assert_eq!(ready["params"], 772_489, "the fmnist-unet preset");
    assert!(ready["flops_per_sample"].as_u64().unwrap() > 200_000_000);
    writeln!(
        stdin,
        r#"{{"cmd": "run", "row": "edm_step_b64", "reps": 2}}"#
    )
    .unwrap();
    line.clear();
    stdout.read_line(&mut line).unwrap();
    let reply: serde_json::Value = serde_json::from_str(&line).unwrap();
    let ms = reply["ms"].as_array().unwrap();
    assert_eq!(ms.len(), 2);
    assert!(ms.iter().all(|t| t.as_f64().unwrap() > 0.0));
    // A request it does not understand ends the worker with an error.
    writeln!(stdin, r#"{{"cmd": "run", "row": "nope", "reps": 1}}"#).unwrap();
    drop(stdin);
    let status = child.wait().unwrap();
    assert!(!status.success());
}

#[test]
fn refuses_bad_arguments_by_name() {
    for (args, expected) in [
        (vec!["--reps", "0"], "--reps 0: expected 1 to 10000"),
        (vec!["--rows", "forward_b2"], "unknown row \"forward_b2\""),
        (vec!["--threads", "0"], "expected `auto` or 1 to"),
        (vec!["--threads", "lots"], "expected `auto` or 1 to"),
    ] {
        let out = cm().arg("bench").args(&args).output().unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{args:?}");
        assert!(stderr.contains(expected), "{args:?}: {stderr}");
    }
}
