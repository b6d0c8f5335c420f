//! `cm plot` end to end: curves from the CSVs in docs/ (quoted fields,
//! multi-number cells, NFE 0 on a log axis), a loss curve from a metrics
//! CSV, and errors that name the file, line and column.

use std::path::Path;
use std::process::Command;

fn cm(args: &[&str]) -> (bool, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_cm"))
        .args(["plot"])
        .args(args)
        .output()
        .expect("run cm");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn docs(file: &str) -> String {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../docs")
        .join(file)
        .display()
        .to_string()
}

fn svg(path: &Path) -> String {
    std::fs::read_to_string(path.with_extension("svg")).expect("an SVG beside the PNG")
}

#[test]
fn lines_from_the_eval_table_have_a_legend_per_model() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("fid.png");
    let (ok, err) = cm(&[
        "lines",
        "--csv",
        &docs("results-eval-fmnist.csv"),
        "--x",
        "nfe",
        "--y",
        "fid",
        "--series",
        "model",
        "--log-x",
        "--out",
        out.to_str().unwrap(),
    ]);
    assert!(ok, "{err}");
    assert!(err.contains("'nfe' <= 0") && err.contains("[2]"), "{err}");
    assert!(out.is_file());
    let s = svg(&out);
    for t in [
        ">\nteacher\n<",
        ">\nCD\n<",
        ">\niCT\n<",
        ">\nnfe (log scale)\n<",
        ">\n35\n<",
    ] {
        assert!(s.contains(t), "no {t:?}");
    }
    assert!(!s.contains(">\ndata\n<"), "the NFE-0 data row has no curve");
}

#[test]
fn lines_from_search_and_ablation_tables() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("search.svg");
    let (ok, err) = cm(&[
        "lines",
        "--csv",
        &docs("search-cfmnist.csv"),
        "--x",
        "taus",
        "--y",
        "fid",
        "--series",
        "steps",
        "--series-format",
        "{}-step",
        "--log-x",
        "--y-tight",
        "--out",
        out.to_str().unwrap(),
    ]);
    assert!(ok, "{err}");
    let s = std::fs::read_to_string(&out).unwrap();
    assert!(s.contains(">\n2-step\n<") && s.contains(">\n3-step\n<"));
    assert!(
        !out.with_extension("png").exists(),
        ".svg writes the SVG only"
    );
    // Seeds of one rung are averaged; quoted names with commas and newlines parse.
    let out = dir.path().join("ablation.png");
    let (ok, err) = cm(&[
        "lines",
        "--csv",
        &docs("ct-ablation-toy.csv"),
        "--x",
        "rung",
        "--y",
        "sliced_w2",
        "--series",
        "steps",
        "--out",
        out.to_str().unwrap(),
    ]);
    assert!(ok, "{err}");
    assert!(err.contains("averaged"), "{err}");
}

#[test]
fn loss_from_a_metrics_csv() {
    let dir = tempfile::tempdir().unwrap();
    let metrics = dir.path().join("metrics.csv");
    let mut csv = String::from("step,loss,lr,grad_norm,elapsed_s,steps_per_s\n");
    for s in 1..=200 {
        csv.push_str(&format!("{s},{},0.001,1.0,{s},10\n", 1.0 / s as f64));
    }
    std::fs::write(&metrics, csv).unwrap();
    let out = dir.path().join("loss.png");
    let (ok, err) = cm(&[
        "loss",
        "--metrics",
        metrics.to_str().unwrap(),
        "--out",
        out.to_str().unwrap(),
    ]);
    assert!(ok, "{err}");
    assert!(svg(&out).contains(">\nmoving average\n<"));
    let (ok, err) = cm(&[
        "loss",
        "--metrics",
        metrics.to_str().unwrap(),
        "--column",
        "los",
        "--out",
        out.to_str().unwrap(),
    ]);
    assert!(!ok);
    assert!(
        err.contains("no column 'los'") && err.contains("metrics.csv"),
        "{err}"
    );
}

#[test]
fn errors_name_the_file_line_and_column() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("x.png");
    let out = out.to_str().unwrap();
    let eval = docs("results-eval-fmnist.csv");
    let (ok, err) = cm(&[
        "lines", "--csv", &eval, "--x", "nfe", "--y", "fdi", "--out", out,
    ]);
    assert!(
        !ok && err.contains("no column 'fdi'") && err.contains("columns: model"),
        "{err}"
    );
    let (ok, err) = cm(&[
        "lines", "--csv", &eval, "--x", "sampler", "--y", "fid", "--out", out,
    ]);
    assert!(!ok, "{err}");
    assert!(
        err.contains("line 2, column 'sampler'") && err.contains("not a number"),
        "{err}"
    );
    let (ok, err) = cm(&[
        "lines",
        "--csv",
        "no/such.csv",
        "--x",
        "a",
        "--y",
        "b",
        "--out",
        out,
    ]);
    assert!(!ok && err.contains("no/such.csv"), "{err}");
    let bad = dir.path().join("bad.csv");
    std::fs::write(&bad, "x,y\n1,\"2\n").unwrap();
    let (ok, err) = cm(&[
        "lines",
        "--csv",
        bad.to_str().unwrap(),
        "--x",
        "x",
        "--y",
        "y",
        "--out",
        out,
    ]);
    assert!(
        !ok && err.contains("never closed") && err.contains("bad.csv"),
        "{err}"
    );
}
