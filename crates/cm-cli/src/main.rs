//! `cm`: the cm-rs command line. Subcommands wire the library crates to
//! files, progress bars and Ctrl-C; the crates do the work.

mod progress;

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use anyhow::{bail, Context, Result};
use clap::{Parser, Subcommand, ValueEnum};
use tch::Device;

use cm_train::{run_teacher, TeacherConfig};

/// Consistency models in Rust: train, distill, sample and evaluate.
#[derive(Debug, Parser)]
#[command(name = "cm", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
enum DeviceArg {
    /// CPU.
    Cpu,
    /// The first CUDA GPU.
    Cuda,
    /// CUDA when available, else CPU.
    Auto,
}

#[derive(Debug, clap::Args)]
struct RunArgs {
    /// TOML config (see configs/teacher/*.toml; every section and field is
    /// documented in docs/teacher.md).
    #[arg(long, short)]
    config: PathBuf,
    /// Run folder: resolved config, checkpoints, metrics.csv, loss.png, sample grids.
    #[arg(long)]
    run_dir: PathBuf,
    /// Continue from the newest checkpoint in the run folder (if any).
    #[arg(long)]
    resume: bool,
    /// Where to train.
    #[arg(long, value_enum, default_value = "auto")]
    device: DeviceArg,
    /// libtorch intra-op threads (default: all cores).
    #[arg(long)]
    threads: Option<i32>,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Train an EDM diffusion teacher (Karras et al. 2022). Ctrl-C saves a
    /// checkpoint and exits; a second Ctrl-C exits at once.
    TrainTeacher(RunArgs),
}

fn device(arg: DeviceArg) -> Result<Device> {
    Ok(match arg {
        DeviceArg::Cpu => Device::Cpu,
        DeviceArg::Auto => Device::cuda_if_available(),
        DeviceArg::Cuda => {
            if !tch::Cuda::is_available() {
                bail!("--device cuda: no CUDA device is available (is this a CUDA build? `cargo xtask ... --cuda`)");
            }
            Device::Cuda(0)
        }
    })
}

/// The first Ctrl-C raises the flag (the loop saves and returns); a second
/// one exits at once.
fn install_stop_handler() -> Result<Arc<AtomicBool>> {
    let flag = Arc::new(AtomicBool::new(false));
    let handler_flag = flag.clone();
    ctrlc::set_handler(move || {
        if handler_flag.swap(true, Ordering::SeqCst) {
            eprintln!("\nsecond Ctrl-C: exiting without saving");
            std::process::exit(130);
        }
        eprintln!(
            "\nCtrl-C: saving a checkpoint at the end of this step (Ctrl-C again to exit at once)"
        );
    })
    .context("cannot install the Ctrl-C handler")?;
    Ok(flag)
}

fn train_teacher(args: &RunArgs) -> Result<()> {
    if let Some(n) = args.threads {
        if n < 1 {
            bail!("--threads must be at least 1, got {n}");
        }
        tch::set_num_threads(n);
    }
    let config: TeacherConfig = cm_core::load_toml(&args.config)
        .with_context(|| format!("loading {}", args.config.display()))?;
    let device = device(args.device)?;
    let stop = install_stop_handler()?;
    let mut observer = progress::BarObserver::new("teacher");
    eprintln!(
        "training the EDM teacher on {device:?} into {}",
        args.run_dir.display()
    );
    let out = run_teacher(
        &config,
        &args.run_dir,
        args.resume,
        device,
        &stop,
        &mut observer,
    )
    .with_context(|| format!("teacher run in {}", args.run_dir.display()))?;
    observer.finish();
    let t = &out.train;
    let last = t.losses.last().map(|l| l.1).unwrap_or(f64::NAN);
    if t.stopped {
        eprintln!("stopped at step {}; resume with --resume", t.step);
    } else {
        eprintln!(
            "done: step {}, final loss {last:.4}; samples in {}/samples_heun35.png",
            t.step,
            args.run_dir.display()
        );
    }
    Ok(())
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match &cli.command {
        Command::TrainTeacher(args) => train_teacher(args),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}
