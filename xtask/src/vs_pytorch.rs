//! `cargo xtask bench --vs-pytorch`: cm-rs against a PyTorch eager port of
//! the same network and training steps, interleaved in one run.
//!
//! Two long-lived workers time the same rows: `cm bench --serve` (the Rust
//! side, through the library) and `xtask/pytorch/cm_port.py` (the port,
//! which loads the Rust worker's weights and refuses to run unless its
//! output matches). Each round asks both for a few repetitions of each row,
//! alternating who goes first, so that a change in the machine's load hits
//! both sides alike, after a pause that lets the other side's OpenMP
//! threads stop spinning. The table gives median and minimum milliseconds, the
//! ratio of medians (PyTorch / cm-rs: above 1 means cm-rs is faster), FLOPs
//! per image and the achieved GFLOP/s against the CPU's nominal FP32 peak.
//!
//! The Python comes from `--python PY` or `CM_RS_TORCH_PYTHON`, else a
//! virtual environment in the cm-rs cache made on first use with
//! `pip install torch==2.13.0 safetensors` (the PyPI wheel; about 3 GB with
//! its CUDA dependencies, which `import torch` needs even on CPU).

use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, ChildStdout, Command, ExitCode, Stdio};

use crate::args::Args;
use crate::libtorch::{self, Flavor};
use crate::workspace;

/// The rows, with batch size and forward passes per image each costs
/// (forward 1, forward + backward 3, EDM step 3, CD step 3 + target 1 +
/// Heun teacher 2 = 6), and repetitions per round.
const ROWS: &[(&str, &str, u64, u64, usize)] = &[
    ("forward_b1", "forward, batch 1", 1, 1, 40),
    ("forward_b64", "forward, batch 64", 64, 1, 4),
    (
        "forward_backward_b64",
        "forward + backward, batch 64",
        64,
        3,
        2,
    ),
    ("edm_step_b64", "EDM training step, batch 64", 64, 3, 2),
    ("cd_step_b64", "CD training step, batch 64", 64, 6, 1),
    ("sample_1step_b1", "1-step sampling, batch 1", 1, 1, 40),
    ("sample_1step_b64", "1-step sampling, batch 64", 64, 1, 4),
];

/// The pause before each batch of repetitions. Both sides' OpenMP threads
/// spin for a few milliseconds after their last operation (libgomp's
/// default wait policy) before they sleep; without the pause the side that
/// goes second shares the cores with the first side's spinning threads for
/// its first repetitions (and cm-rs's `--threads auto` may count them as
/// load), which no single-process user sees.
const SETTLE: std::time::Duration = std::time::Duration::from_millis(50);

/// The PyTorch version the port is compared with (the libtorch cm-rs links).
const TORCH_VERSION: &str = "2.13.0";

struct Worker {
    name: &'static str,
    child: Child,
    stdin: ChildStdin,
    stdout: BufReader<ChildStdout>,
}

impl Worker {
    fn start(name: &'static str, mut cmd: Command) -> Result<Worker, String> {
        let mut child = cmd
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .map_err(|e| format!("cannot start the {name} worker: {e}"))?;
        let stdin = child.stdin.take().expect("piped stdin");
        let stdout = BufReader::new(child.stdout.take().expect("piped stdout"));
        Ok(Worker {
            name,
            child,
            stdin,
            stdout,
        })
    }

    fn read(&mut self) -> Result<String, String> {
        let mut line = String::new();
        let n = self
            .stdout
            .read_line(&mut line)
            .map_err(|e| format!("reading from the {} worker: {e}", self.name))?;
        if n == 0 {
            return Err(format!(
                "the {} worker stopped (its error is above)",
                self.name
            ));
        }
        Ok(line.trim().to_string())
    }

    fn ask(&mut self, request: &str) -> Result<String, String> {
        writeln!(self.stdin, "{request}")
            .and_then(|_| self.stdin.flush())
            .map_err(|e| format!("writing to the {} worker: {e}", self.name))?;
        self.read()
    }

    fn time(&mut self, row: &str, reps: usize) -> Result<Vec<f64>, String> {
        let reply = self.ask(&format!(
            "{{\"cmd\": \"run\", \"row\": \"{row}\", \"reps\": {reps}}}"
        ))?;
        let ms = number_list(&reply, "ms")
            .ok_or_else(|| format!("{} worker: unexpected reply {reply}", self.name))?;
        if ms.len() != reps {
            return Err(format!(
                "{} worker: {} times for {reps} repetitions",
                self.name,
                ms.len()
            ));
        }
        Ok(ms)
    }

    fn quit(mut self) {
        let _ = writeln!(self.stdin, "{{\"cmd\": \"quit\"}}");
        drop(self.stdin);
        let _ = self.child.wait();
    }
}

/// The raw text of a JSON value `"key": VALUE` in a one-line object (the
/// workers' replies are flat; no JSON library in xtask).
pub fn json_value<'a>(line: &'a str, key: &str) -> Option<&'a str> {
    let at = line.find(&format!("\"{key}\""))? + key.len() + 2;
    let rest = line[at..].trim_start().strip_prefix(':')?.trim_start();
    let end = if rest.starts_with('[') {
        rest.find(']')? + 1
    } else if let Some(s) = rest.strip_prefix('"') {
        s.find('"')? + 2
    } else {
        rest.find([',', '}']).unwrap_or(rest.len())
    };
    Some(rest[..end].trim())
}

/// A JSON list of numbers under `key`.
pub fn number_list(line: &str, key: &str) -> Option<Vec<f64>> {
    let raw = json_value(line, key)?;
    let inner = raw.strip_prefix('[')?.strip_suffix(']')?;
    if inner.trim().is_empty() {
        return Some(Vec::new());
    }
    inner.split(',').map(|v| v.trim().parse().ok()).collect()
}

fn string_value(line: &str, key: &str) -> Option<String> {
    json_value(line, key).map(|v| v.trim_matches('"').to_string())
}

/// Median and minimum.
pub fn median_min(ms: &[f64]) -> (f64, f64) {
    let mut v = ms.to_vec();
    v.sort_by(f64::total_cmp);
    if v.is_empty() {
        return (f64::NAN, f64::NAN);
    }
    let n = v.len();
    let median = if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    };
    (median, v[0])
}

/// The nominal FP32 peak of the cores this process may use, in GFLOP/s:
/// cores x GHz x FLOPs per cycle (64 with AVX-512: two 16-lane FMA units;
/// 32 with AVX2 + FMA), from /proc/cpuinfo. `None` when it cannot be read.
pub fn nominal_peak_gflops(cpuinfo: &str, cores: usize) -> Option<(f64, String)> {
    let flags = cpuinfo
        .lines()
        .find(|l| l.starts_with("flags"))?
        .split(':')
        .nth(1)?;
    let has = |f: &str| flags.split_whitespace().any(|x| x == f);
    let (per_cycle, isa) = if has("avx512f") {
        (64.0, "AVX-512, 2 FMA units")
    } else if has("avx2") && has("fma") {
        (32.0, "AVX2 + FMA, 2 FMA units")
    } else {
        return None;
    };
    let mhz: f64 = cpuinfo
        .lines()
        .find(|l| l.starts_with("cpu MHz"))?
        .split(':')
        .nth(1)?
        .trim()
        .parse()
        .ok()?;
    let ghz = mhz / 1000.0;
    Some((
        cores as f64 * ghz * per_cycle,
        format!("{cores} cores x {ghz:.2} GHz x {per_cycle} FLOP/cycle ({isa}; inferred)"),
    ))
}

fn python(args: &Args) -> Result<PathBuf, String> {
    if let Some(p) = args
        .python
        .clone()
        .or_else(|| std::env::var("CM_RS_TORCH_PYTHON").ok())
    {
        return Ok(PathBuf::from(p));
    }
    let venv = libtorch::cache_root()?.join(format!("pytorch-{TORCH_VERSION}"));
    let py = venv.join("bin").join("python");
    let ok = |py: &Path| {
        Command::new(py)
            .args([
                "-c",
                "import torch, safetensors, sys; sys.exit(torch.__version__.split('+')[0] != '2.13.0')",
            ])
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success())
    };
    if py.exists() && ok(&py) {
        return Ok(py);
    }
    let system = std::env::var("CM_RS_PYTHON").unwrap_or_else(|_| "python3".into());
    eprintln!(
        "xtask: making a Python with torch {TORCH_VERSION} for the comparison in {} \
         (pip install torch=={TORCH_VERSION} safetensors; about 3 GB once; or pass --python PY)",
        venv.display()
    );
    let steps: [(&str, Vec<String>); 2] = [
        (
            system.as_str(),
            vec!["-m".into(), "venv".into(), venv.display().to_string()],
        ),
        (
            py.to_str().unwrap_or("python"),
            vec![
                "-m".into(),
                "pip".into(),
                "install".into(),
                "--quiet".into(),
                format!("torch=={TORCH_VERSION}"),
                "safetensors".into(),
            ],
        ),
    ];
    for (program, a) in steps {
        let status = Command::new(program)
            .args(&a)
            .status()
            .map_err(|e| format!("cannot run {program}: {e}"))?;
        if !status.success() {
            return Err(format!(
                "`{program} {}` failed; pass --python PY (a Python with torch {TORCH_VERSION} and safetensors)",
                a.join(" ")
            ));
        }
    }
    if !ok(&py) {
        return Err(format!(
            "{} does not import torch {TORCH_VERSION} and safetensors",
            py.display()
        ));
    }
    Ok(py)
}

/// Runs `cargo xtask bench --vs-pytorch`.
pub fn run(args: &Args, flavor: Flavor) -> Result<ExitCode, String> {
    if flavor == Flavor::Cuda {
        return Err("--vs-pytorch compares the CPU presets; drop --cuda".into());
    }
    let root = workspace::root()?;
    let torch = libtorch::ensure(flavor)?;
    let py = python(args)?;
    let cm = crate::process::build_cm(&root, &torch, &[])?;
    let rounds = args.rounds.unwrap_or(if args.quick { 2 } else { 8 });
    // cm-rs runs its own default policy (`auto`) unless told a count;
    // PyTorch gets the count or all cores, its own default.
    let threads = args.threads.clone().unwrap_or_else(|| {
        std::thread::available_parallelism()
            .map_or(1, |n| n.get())
            .to_string()
    });
    let rust_threads = args.threads.clone().unwrap_or_else(|| "auto".into());
    let out = root.join("target").join("vs-pytorch");
    let mut rust_cmd = Command::new(&cm);
    rust_cmd.current_dir(&root).args([
        "bench",
        "--serve",
        "--threads",
        &rust_threads,
        "--dir",
        &out.display().to_string(),
    ]);
    let mut rust = Worker::start("cm-rs", rust_cmd)?;
    let ready = rust.read()?;
    let flops = json_value(&ready, "flops_per_sample")
        .and_then(|v| v.parse::<f64>().ok())
        .ok_or_else(|| format!("cm-rs worker: unexpected first line {ready}"))?;
    let policy = string_value(&ready, "policy").unwrap_or_default();
    let params = json_value(&ready, "params").unwrap_or("?").to_string();
    let mut port_cmd = Command::new(&py);
    port_cmd
        .current_dir(&root)
        .arg(root.join("xtask").join("pytorch").join("cm_port.py"));
    let mut port = Worker::start("PyTorch", port_cmd)?;
    let setup = port.ask(&format!(
        "{{\"cmd\": \"setup\", \"weights\": \"{}\", \"io\": \"{}\", \"threads\": {threads}}}",
        out.join("weights.safetensors").display(),
        out.join("io.safetensors").display(),
    ))?;
    let diff = json_value(&setup, "max_abs_diff")
        .unwrap_or("?")
        .to_string();
    if json_value(&setup, "ok") != Some("true") {
        return Err(format!(
            "the PyTorch port does not reproduce cm-rs's forward pass (max abs difference {diff}): {setup}"
        ));
    }
    let torch_version = string_value(&setup, "torch").unwrap_or_default();
    eprintln!(
        "xtask: cm-rs ({policy}) vs PyTorch {torch_version} eager ({threads} threads); \
         {params} parameters; the port matches cm-rs's forward within {diff}; {rounds} rounds"
    );
    let mut times: Vec<[Vec<f64>; 2]> = ROWS.iter().map(|_| [Vec::new(), Vec::new()]).collect();
    // One untimed round warms both up (allocator, OpenMP team, caches).
    for (round, _) in (0..=rounds).enumerate() {
        for (i, &(row, _, _, _, reps)) in ROWS.iter().enumerate() {
            let order: [usize; 2] = if (round + i) % 2 == 0 { [0, 1] } else { [1, 0] };
            for side in order {
                let worker = if side == 0 { &mut rust } else { &mut port };
                // Let the other side's OpenMP threads stop spinning first.
                std::thread::sleep(SETTLE);
                let ms = worker.time(row, reps)?;
                if round > 0 {
                    times[i][side].extend(ms);
                }
            }
        }
        if round > 0 {
            eprintln!("xtask: round {round}/{rounds} done");
        }
    }
    rust.quit();
    port.quit();

    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    let peak = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|c| nominal_peak_gflops(&c, threads.parse().unwrap_or(cores)));
    let mut md = String::new();
    md.push_str(&format!(
        "cm-rs: {policy}; PyTorch {torch_version} eager, {threads} threads; fmnist-unet, {params} parameters, \
         {:.1} MFLOP per image forward; {rounds} interleaved rounds; median / min ms.\n\n",
        flops / 1e6
    ));
    md.push_str(
        "| row | cm-rs | PyTorch eager | PyTorch / cm-rs | GFLOP/s cm-rs | share of peak |\n",
    );
    md.push_str("| --- | ---: | ---: | ---: | ---: | ---: |\n");
    for (i, &(_, label, batch, passes, _)) in ROWS.iter().enumerate() {
        let (rm, rmin) = median_min(&times[i][0]);
        let (pm, pmin) = median_min(&times[i][1]);
        let gflops = flops * (batch * passes) as f64 / (rm / 1e3) / 1e9;
        let share = peak.as_ref().map_or("n/a".to_string(), |(p, _)| {
            format!("{:.0}%", 100.0 * gflops / p)
        });
        md.push_str(&format!(
            "| {label} | {rm:.2} / {rmin:.2} | {pm:.2} / {pmin:.2} | **{:.2}x** | {gflops:.1} | {share} |\n",
            pm / rm
        ));
    }
    if let Some((p, how)) = &peak {
        md.push_str(&format!("\nNominal FP32 peak: {p:.0} GFLOP/s = {how}.\n"));
    }
    print!("{md}");
    let table = out.join("table.md");
    std::fs::write(&table, &md).map_err(|e| format!("writing {}: {e}", table.display()))?;
    eprintln!("xtask: table written to {}", table.display());
    Ok(ExitCode::SUCCESS)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_flat_json_replies() {
        let line = r#"{"ok": true, "max_abs_diff": 4.7e-07, "ms": [1.5, 2.0, 3], "torch": "2.13.0+cu130"}"#;
        assert_eq!(json_value(line, "ok"), Some("true"));
        assert_eq!(json_value(line, "max_abs_diff"), Some("4.7e-07"));
        assert_eq!(number_list(line, "ms"), Some(vec![1.5, 2.0, 3.0]));
        assert_eq!(string_value(line, "torch").as_deref(), Some("2.13.0+cu130"));
        assert_eq!(json_value(line, "missing"), None);
        assert_eq!(number_list(r#"{"ms": [1, x]}"#, "ms"), None);
        assert_eq!(number_list(r#"{"ms":[]}"#, "ms"), Some(vec![]));
    }

    #[test]
    fn median_and_min() {
        assert_eq!(median_min(&[3.0, 1.0, 2.0]), (2.0, 1.0));
        assert_eq!(median_min(&[4.0, 1.0, 2.0, 3.0]), (2.5, 1.0));
        assert!(median_min(&[]).0.is_nan());
    }

    #[test]
    fn nominal_peak_from_cpuinfo() {
        let info = "processor : 0\ncpu MHz : 2600.000\nflags : fpu avx2 fma avx512f\n";
        let (p, how) = nominal_peak_gflops(info, 2).unwrap();
        assert!((p - 332.8).abs() < 1e-9, "{p}");
        assert!(how.contains("AVX-512"));
        let avx2 = "cpu MHz : 3000\nflags : avx2 fma\n";
        assert!((nominal_peak_gflops(avx2, 4).unwrap().0 - 384.0).abs() < 1e-9);
        assert!(nominal_peak_gflops("flags : sse2\ncpu MHz : 1000", 1).is_none());
    }
}
