//! The command line of `cargo xtask`: one command, its options, and what
//! follows `--` (passed on to cargo or `cm`).

use std::env;

/// The most rounds `bench --vs-pytorch --rounds` takes.
pub const MAX_ROUNDS: usize = 1000;

/// The most ranks `--procs` takes.
pub const MAX_PROCS: usize = 4096;

/// Parsed command line: the command, `--cuda`, and what follows `--`.
#[derive(Debug, Default)]
pub struct Args {
    /// The command (`help` when none is given).
    pub command: String,
    /// `--cuda` or `CM_RS_CUDA=1`.
    pub cuda: bool,
    /// `--resume`.
    pub resume: bool,
    /// `--preset NAME`.
    pub preset: Option<String>,
    /// `--recipe NAME` (consistency training).
    pub recipe: Option<String>,
    /// `--config FILE`.
    pub config: Option<String>,
    /// `--run-dir DIR`.
    pub run_dir: Option<String>,
    /// `--out DIR`.
    pub out: Option<String>,
    /// `--cargo-config` (`env`: print a `.cargo/config.toml` table).
    pub cargo_config: bool,
    /// `--mpi` (`setup`: also Open MPI and libclang).
    pub mpi: bool,
    /// `--procs N`: train data-parallel on N MPI ranks.
    pub procs: Option<usize>,
    /// `--hostfile FILE`: with `--procs`, the machines to run on.
    pub hostfile: Option<String>,
    /// `--vs-pytorch` (`bench`: the side-by-side with PyTorch eager).
    pub vs_pytorch: bool,
    /// `--quick` (`bench`: criterion's quick mode; fewer rounds with
    /// `--vs-pytorch`).
    pub quick: bool,
    /// `--python PY` (`bench --vs-pytorch`: a Python with torch 2.13.0).
    pub python: Option<String>,
    /// `--threads N` (`bench --vs-pytorch`: threads on both sides).
    pub threads: Option<String>,
    /// `--rounds N` (`bench --vs-pytorch`).
    pub rounds: Option<usize>,
    /// Everything after `--`.
    pub passthrough: Vec<String>,
}

/// `v` as a count from 1 to `max`.
fn count_in(v: &str, max: usize) -> Option<usize> {
    v.parse::<usize>().ok().filter(|n| (1..=max).contains(n))
}

/// Parses the arguments after `cargo xtask`.
pub fn parse(args: Vec<String>) -> Result<Args, String> {
    let mut parsed = Args {
        cuda: env::var("CM_RS_CUDA").is_ok_and(|v| v == "1" || v == "true"),
        ..Args::default()
    };
    let mut command = None;
    let mut iter = args.into_iter();
    while let Some(arg) = iter.next() {
        let mut value = |name: &str| {
            iter.next()
                .filter(|v| !v.starts_with("--"))
                .ok_or_else(|| format!("`{name}` needs a value"))
        };
        match arg.as_str() {
            "--" => {
                parsed.passthrough.extend(iter.by_ref());
            }
            "--cuda" => parsed.cuda = true,
            "--resume" => parsed.resume = true,
            "--cargo-config" => parsed.cargo_config = true,
            "--mpi" => parsed.mpi = true,
            "--procs" => {
                let v = value("--procs")?;
                let max = MAX_PROCS;
                parsed.procs = Some(count_in(&v, max).ok_or_else(|| {
                    format!("--procs {v}: expected a number of ranks, 1 to {max}")
                })?);
            }
            "--vs-pytorch" => parsed.vs_pytorch = true,
            "--quick" => parsed.quick = true,
            "--python" => parsed.python = Some(value("--python")?),
            "--threads" => {
                let v = value("--threads")?;
                if count_in(&v, 1024).is_none() {
                    return Err(format!("--threads {v}: expected 1 to 1024"));
                }
                parsed.threads = Some(v);
            }
            "--rounds" => {
                let v = value("--rounds")?;
                let max = MAX_ROUNDS;
                parsed.rounds = Some(
                    count_in(&v, max)
                        .ok_or_else(|| format!("--rounds {v}: expected 1 to {max}"))?,
                );
            }
            "--hostfile" => parsed.hostfile = Some(value("--hostfile")?),
            "--preset" => parsed.preset = Some(value("--preset")?),
            "--recipe" => parsed.recipe = Some(value("--recipe")?),
            "--config" => parsed.config = Some(value("--config")?),
            "--run-dir" => parsed.run_dir = Some(value("--run-dir")?),
            "--out" => parsed.out = Some(value("--out")?),
            "-h" | "--help" => command = Some("help".to_string()),
            flag if flag.starts_with('-') => {
                return Err(format!("unknown option `{flag}` (try `cargo xtask help`)"))
            }
            name if command.is_none() => command = Some(name.to_string()),
            extra => {
                return Err(format!(
                    "unexpected argument `{extra}`; pass extra arguments after `--` \
                     (to cargo for test and bench, to `cm` for the training and eval commands)"
                ))
            }
        }
    }
    parsed.command = command.unwrap_or_else(|| "help".into());
    if parsed.hostfile.is_some() && parsed.procs.is_none() {
        return Err("--hostfile goes with --procs N (the number of ranks)".into());
    }
    Ok(parsed)
}

/// Owned strings of `v` (tests).
#[cfg(test)]
pub(crate) fn strings(v: &[&str]) -> Vec<String> {
    v.iter().map(|s| s.to_string()).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_command_flags_and_passthrough() {
        let a = parse(strings(&["test", "--cuda", "--", "-p", "cm-core"])).unwrap();
        assert_eq!(a.command, "test");
        assert!(a.cuda);
        assert_eq!(a.passthrough, strings(&["-p", "cm-core"]));
        assert_eq!(parse(vec![]).unwrap().command, "help");
    }

    #[test]
    fn parses_run_options() {
        let a = parse(strings(&[
            "train-teacher",
            "--preset",
            "toy",
            "--resume",
            "--run-dir",
            "r",
        ]))
        .unwrap();
        assert_eq!(
            (a.preset.as_deref(), a.run_dir.as_deref(), a.resume),
            (Some("toy"), Some("r"), true)
        );
        assert!(parse(strings(&["train-teacher", "--preset"]))
            .unwrap_err()
            .contains("--preset"));
    }

    #[test]
    fn parses_bench_options_with_bounds() {
        let a = parse(strings(&[
            "bench",
            "--vs-pytorch",
            "--rounds",
            "3",
            "--threads",
            "2",
            "--python",
            "/usr/bin/python3",
            "--quick",
        ]))
        .unwrap();
        assert!(a.vs_pytorch && a.quick);
        assert_eq!(
            (a.rounds, a.threads.as_deref(), a.python.as_deref()),
            (Some(3), Some("2"), Some("/usr/bin/python3"))
        );
        for (flag, value) in [
            ("--rounds", "0"),
            ("--rounds", "1001"),
            ("--threads", "0"),
            ("--threads", "x"),
        ] {
            let err = parse(strings(&["bench", flag, value])).unwrap_err();
            assert!(err.contains(flag) && err.contains("expected"), "{err}");
        }
    }

    #[test]
    fn rejects_unknown_flags_and_stray_arguments() {
        assert!(parse(strings(&["test", "--fast"]))
            .unwrap_err()
            .contains("--fast"));
        assert!(parse(strings(&["test", "cm-core"]))
            .unwrap_err()
            .contains("cm-core"));
    }
}
