//! cm-runtime: how a cm-rs process uses the CPU.
//!
//! libtorch parallelises each operation over an OpenMP team (GNU libgomp in
//! the PyPI build cm-rs installs). Two process-wide settings decide how that
//! behaves, and both must be in place before libtorch is loaded, because
//! libgomp and glibc read them from the environment when the process starts:
//!
//! - **The OpenMP wait policy.** By default an idle libgomp thread spins
//!   300,000 times before it sleeps. On a quiet machine that saves a wake-up
//!   per operation; on a shared one the spinning threads take the cores the
//!   working threads need, and a 2-thread run was measured 17-28x slower than
//!   1 thread while another process ran. cm-rs sets `GOMP_SPINCOUNT` to
//!   [`SPIN_COUNT`] (measurements in docs/benchmarks.md).
//! - **The allocator.** glibc returns freed blocks above its mmap threshold
//!   to the OS and takes fresh zeroed pages for the next step: about 40,000
//!   page faults per training step of the CPU U-Net. [`MALLOC_TUNABLES`]
//!   keeps them in the heap.
//!
//! [`prepare_process`] applies both by re-executing the program once with
//! the variables set (the user's own settings win), before anything else
//! runs; [`apply_threads`] sets the intra-op thread count from a
//! [`Threads`] policy. Programs that embed cm-rs call both at the start of
//! `main` (docs/embedding.md).

use std::ffi::OsString;
use std::fmt;
use std::str::FromStr;

use thiserror::Error;

/// libgomp's spin count before an idle thread sleeps (`GOMP_SPINCOUNT`).
/// Chosen by measurement, quiet and with a competing process
/// (docs/benchmarks.md, "Threads on a shared CPU").
pub const SPIN_COUNT: u64 = 10_000;

/// glibc malloc settings (`GLIBC_TUNABLES`): blocks up to 32 MiB come from
/// the heap rather than fresh mmap pages, and the heap is trimmed only when
/// 512 MiB are free at its top.
pub const MALLOC_TUNABLES: &str =
    "glibc.malloc.mmap_threshold=33554432:glibc.malloc.trim_threshold=536870912";

/// Set in the re-executed process so it does not re-execute again.
const MARKER: &str = "CM_RS_RUNTIME";

/// Set to `0` to keep the environment as it is (no re-execution).
pub const OPT_OUT: &str = "CM_RS_TUNE";

/// `--threads N` takes 1 to this many times the machine's cores
/// (oversubscribed OpenMP threads only spin; libgomp runs out of memory
/// long before `i32::MAX`).
pub const MAX_THREADS_PER_CORE: usize = 4;

/// Errors of the runtime set-up.
#[derive(Debug, Error)]
pub enum RuntimeError {
    /// A thread count out of range or not a number.
    #[error("--threads {value:?}: expected `auto` or 1 to {max} ({MAX_THREADS_PER_CORE} x the {cores} cores available)")]
    Threads {
        /// What was given.
        value: String,
        /// The largest count allowed here.
        max: usize,
        /// Cores available to this process.
        cores: usize,
    },
    /// The program could not be re-executed with the tuned environment.
    #[error("cannot re-execute {program} with the tuned OpenMP/allocator environment (set {OPT_OUT}=0 to skip): {source}")]
    Reexec {
        /// The program.
        program: String,
        /// The OS error.
        source: std::io::Error,
    },
}

/// How many intra-op threads libtorch uses.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Threads {
    /// One per core available to this process (its CPU affinity and cgroup
    /// quota, not the machine's total), with the tuned wait policy.
    #[default]
    Auto,
    /// Exactly this many.
    Count(usize),
}

impl FromStr for Threads {
    type Err = RuntimeError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let t = s.trim();
        if t.eq_ignore_ascii_case("auto") {
            return Ok(Threads::Auto);
        }
        let cores = available_cores();
        let max = cores * MAX_THREADS_PER_CORE;
        match t.parse::<usize>() {
            Ok(n) if (1..=max).contains(&n) => Ok(Threads::Count(n)),
            _ => Err(RuntimeError::Threads {
                value: s.to_string(),
                max,
                cores,
            }),
        }
    }
}

impl fmt::Display for Threads {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Threads::Auto => write!(f, "auto"),
            Threads::Count(n) => write!(f, "{n}"),
        }
    }
}

/// Cores this process may run on: its CPU affinity mask and cgroup CPU
/// quota (what `std::thread::available_parallelism` reports), at least 1.
pub fn available_cores() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get())
}

/// What [`apply_threads`] set, for logs and reports.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Applied {
    /// The policy asked for.
    pub policy: Threads,
    /// Intra-op threads now in use.
    pub threads: usize,
    /// Cores available to the process.
    pub cores: usize,
    /// `GOMP_SPINCOUNT` / `OMP_WAIT_POLICY` in effect (`None`: libgomp's
    /// default, 300,000 spins).
    pub wait_policy: Option<String>,
}

impl Applied {
    /// One line for logs and reports, e.g.
    /// `threads auto = 2 (2 cores), GOMP_SPINCOUNT=10000`.
    pub fn describe(&self) -> String {
        let wait = self
            .wait_policy
            .clone()
            .unwrap_or_else(|| "OpenMP default wait policy (300,000 spins)".into());
        format!(
            "threads {} = {} ({} core{} available), {wait}",
            self.policy,
            self.threads,
            self.cores,
            if self.cores == 1 { "" } else { "s" }
        )
    }
}

/// The thread count of a policy on this machine.
pub fn resolve(policy: Threads) -> usize {
    match policy {
        Threads::Auto => available_cores(),
        Threads::Count(n) => n,
    }
}

/// Sets libtorch's intra-op thread count from `policy`.
pub fn apply_threads(policy: Threads) -> Result<Applied, RuntimeError> {
    let threads = resolve(policy);
    let cores = available_cores();
    let max = cores * MAX_THREADS_PER_CORE;
    if threads == 0 || threads > max {
        return Err(RuntimeError::Threads {
            value: threads.to_string(),
            max,
            cores,
        });
    }
    tch::set_num_threads(threads as i32);
    Ok(Applied {
        policy,
        threads,
        cores,
        wait_policy: wait_policy(),
    })
}

/// The OpenMP wait setting of this process's environment.
pub fn wait_policy() -> Option<String> {
    ["GOMP_SPINCOUNT", "OMP_WAIT_POLICY"]
        .iter()
        .find_map(|k| std::env::var(k).ok().map(|v| format!("{k}={v}")))
}

/// The variables [`prepare_process`] would add to `env` (a snapshot of the
/// environment): the spin count unless the user set a wait policy, the
/// allocator tunables unless the user set malloc tunables. Empty when
/// nothing is to change, the opt-out is set, or this is the re-executed
/// process.
pub fn tuned_environment(env: &[(OsString, OsString)]) -> Vec<(String, String)> {
    let get = |key: &str| {
        env.iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.to_string_lossy().into_owned())
    };
    if get(MARKER).is_some() || get(OPT_OUT).as_deref() == Some("0") {
        return Vec::new();
    }
    let mut out = Vec::new();
    if get("GOMP_SPINCOUNT").is_none() && get("OMP_WAIT_POLICY").is_none() {
        out.push(("GOMP_SPINCOUNT".to_string(), SPIN_COUNT.to_string()));
    }
    match get("GLIBC_TUNABLES") {
        Some(user) if user.contains("glibc.malloc.") => {}
        Some(user) if !user.is_empty() => {
            out.push(("GLIBC_TUNABLES".into(), format!("{user}:{MALLOC_TUNABLES}")))
        }
        _ => out.push(("GLIBC_TUNABLES".into(), MALLOC_TUNABLES.into())),
    }
    out
}

/// Re-executes the running program once with [`tuned_environment`] applied
/// (same arguments, same process id), so libgomp and glibc start with the
/// tuned settings. Returns `Ok(())` without doing anything when there is
/// nothing to change; on success it does not return. Call it first thing in
/// `main`, before threads are started or files opened.
#[cfg(unix)]
pub fn prepare_process() -> Result<(), RuntimeError> {
    use std::os::unix::process::CommandExt;

    let env: Vec<(OsString, OsString)> = std::env::vars_os().collect();
    let tuned = tuned_environment(&env);
    if tuned.is_empty() {
        return Ok(());
    }
    let program = match std::env::current_exe() {
        Ok(p) => p,
        // No way to find ourselves (e.g. the binary was deleted): run as is.
        Err(_) => return Ok(()),
    };
    let mut args = std::env::args_os();
    let argv0 = args
        .next()
        .unwrap_or_else(|| program.clone().into_os_string());
    let mut cmd = std::process::Command::new(&program);
    cmd.arg0(argv0).args(args).env(MARKER, "1");
    for (k, v) in &tuned {
        cmd.env(k, v);
    }
    let source = cmd.exec();
    Err(RuntimeError::Reexec {
        program: program.display().to_string(),
        source,
    })
}

/// On other platforms the environment is left as it is.
#[cfg(not(unix))]
pub fn prepare_process() -> Result<(), RuntimeError> {
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(pairs: &[(&str, &str)]) -> Vec<(OsString, OsString)> {
        pairs
            .iter()
            .map(|(k, v)| (OsString::from(k), OsString::from(v)))
            .collect()
    }

    #[test]
    fn tunes_a_plain_environment() {
        let t = tuned_environment(&env(&[("PATH", "/bin")]));
        assert_eq!(
            t,
            vec![
                ("GOMP_SPINCOUNT".to_string(), SPIN_COUNT.to_string()),
                ("GLIBC_TUNABLES".to_string(), MALLOC_TUNABLES.to_string()),
            ]
        );
    }

    #[test]
    fn the_users_settings_win() {
        let t = tuned_environment(&env(&[
            ("OMP_WAIT_POLICY", "active"),
            ("GLIBC_TUNABLES", "glibc.malloc.arena_max=2"),
        ]));
        assert!(t.is_empty(), "{t:?}");
        let t = tuned_environment(&env(&[("GLIBC_TUNABLES", "glibc.cpu.hwcaps=-AVX512F")]));
        assert_eq!(
            t[1].1,
            format!("glibc.cpu.hwcaps=-AVX512F:{MALLOC_TUNABLES}"),
            "other tunables are kept"
        );
    }

    #[test]
    fn never_twice_and_opt_out() {
        assert!(tuned_environment(&env(&[(MARKER, "1")])).is_empty());
        assert!(tuned_environment(&env(&[(OPT_OUT, "0")])).is_empty());
        assert!(!tuned_environment(&env(&[(OPT_OUT, "1")])).is_empty());
    }

    #[test]
    fn thread_policies_parse_with_bounds() {
        assert_eq!("auto".parse::<Threads>().unwrap(), Threads::Auto);
        assert_eq!(" AUTO ".parse::<Threads>().unwrap(), Threads::Auto);
        assert_eq!("1".parse::<Threads>().unwrap(), Threads::Count(1));
        let max = available_cores() * MAX_THREADS_PER_CORE;
        assert_eq!(
            max.to_string().parse::<Threads>().unwrap(),
            Threads::Count(max)
        );
        for bad in ["0", "-1", "two", "", "2147483647", &(max + 1).to_string()] {
            let err = bad.parse::<Threads>().unwrap_err().to_string();
            assert!(err.contains("expected `auto` or 1 to"), "{bad}: {err}");
        }
        assert_eq!(resolve(Threads::Auto), available_cores());
        assert_eq!(resolve(Threads::Count(3)), 3);
    }
}
