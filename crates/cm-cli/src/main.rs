//! `cm`: the cm-rs command line. Subcommands wire the library crates to
//! files, progress bars and Ctrl-C; the crates do the work.

/// `eprintln!` on rank 0 only: data-parallel ranks (mpirun) would print
/// each line once per rank.
macro_rules! say {
    ($($arg:tt)*) => {
        if cm_dist::world().rank() == 0 {
            eprintln!($($arg)*);
        }
    };
}

mod bench;
mod ct;
mod edit;
mod eval;
mod images;
mod interop;
mod lora;
mod plot;
mod progress;
mod sample;

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use anyhow::{bail, Context, Result};
use clap::{Parser, Subcommand, ValueEnum};
use tch::Device;

use cm_distill::{run_cd, run_pd, CdRunConfig, PdRunConfig};
use cm_train::{run_autoencoder, run_teacher, AutoencoderRunConfig, TeacherConfig};

/// Consistency models in Rust: train, distill, sample and evaluate.
#[derive(Debug, Parser)]
#[command(name = "cm", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
pub(crate) enum DeviceArg {
    /// CPU.
    Cpu,
    /// The first CUDA GPU.
    Cuda,
    /// CUDA when available, else CPU.
    Auto,
}

#[derive(Debug, clap::Args)]
pub(crate) struct RunArgs {
    /// TOML config (configs/teacher/*.toml, configs/cd/*.toml,
    /// configs/pd/*.toml, configs/ct/*.toml, configs/ect/*.toml,
    /// configs/lcm/*.toml, configs/lcd/*.toml or configs/autoencoder/*.toml;
    /// the fields are documented in docs/teacher.md, docs/distill.md,
    /// docs/pd.md, docs/ct.md, docs/ect.md and docs/lcm.md).
    #[arg(long, short)]
    pub config: PathBuf,
    /// Run folder: resolved config, checkpoints, metrics.csv, loss.png, sample grids.
    #[arg(long)]
    pub run_dir: PathBuf,
    /// Continue from the newest checkpoint in the run folder (if any).
    #[arg(long)]
    pub resume: bool,
    /// Where to train.
    #[arg(long, value_enum, default_value = "auto")]
    pub device: DeviceArg,
    /// libtorch intra-op threads: `auto` (one per core available to this
    /// process; 1 per rank when started by mpirun with several ranks) or a
    /// count.
    #[arg(long, default_value = "auto")]
    pub threads: cm_runtime::Threads,
    /// Also log loss, learning rate, gradient norm and steps/s as
    /// TensorBoard event files in RUN/tensorboard/ (watch live with
    /// `tensorboard --logdir RUN/tensorboard`); metrics.csv is always written.
    #[arg(long)]
    pub tensorboard: bool,
}

/// A training run stopped by Ctrl-C after saving its checkpoint: `cm`
/// exits with code 130 (as shells report SIGINT), so a script can tell it
/// from a finished run (0) and from a failure (1).
#[derive(Debug)]
pub(crate) struct Interrupted {
    /// The step the saved checkpoint holds.
    pub step: u64,
}

impl std::fmt::Display for Interrupted {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "stopped by Ctrl-C at step {}, checkpoint saved; continue with --resume",
            self.step
        )
    }
}

impl std::error::Error for Interrupted {}

/// Exit code of a run stopped by Ctrl-C (128 + SIGINT).
pub(crate) const EXIT_INTERRUPTED: u8 = 130;

/// Runs a training command with its progress bar, and with `--tensorboard`
/// a TensorBoard event file beside it; closes the bar afterwards.
pub(crate) fn observe<T>(
    args: &RunArgs,
    label: &'static str,
    f: impl FnOnce(&mut dyn cm_train::Observer) -> Result<T>,
) -> Result<T> {
    if cm_dist::world().rank() != 0 {
        // Data-parallel ranks other than 0 train silently; rank 0 reports.
        return f(&mut cm_train::Quiet);
    }
    let mut bars = progress::BarObserver::new(label);
    let out = if args.tensorboard {
        let dir = args.run_dir.join("tensorboard");
        let mut tb = cm_train::tensorboard::TensorBoard::new(&dir, &mut bars)
            .with_context(|| format!("creating a TensorBoard event file in {}", dir.display()))?;
        eprintln!(
            "TensorBoard events in {} (one folder per stage; tensorboard --logdir {})",
            dir.display(),
            dir.display()
        );
        f(&mut tb)
    } else {
        f(&mut bars)
    };
    bars.finish();
    out
}

#[derive(Debug, clap::Args)]
struct DistillArgs {
    #[command(flatten)]
    run: RunArgs,
    /// Folder of teacher runs, one per teacher config (default: `teachers`
    /// beside the run folder). A finished teacher with the same config is
    /// reused.
    #[arg(long)]
    teachers: Option<PathBuf>,
}

impl DistillArgs {
    /// `--teachers`, or `teachers` beside the run folder.
    fn teachers_dir(&self) -> PathBuf {
        match &self.teachers {
            Some(dir) => dir.clone(),
            None => self
                .run
                .run_dir
                .parent()
                .map(|p| p.join("teachers"))
                .unwrap_or_else(|| PathBuf::from("teachers")),
        }
    }
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Train an EDM diffusion teacher (Karras et al. 2022), or with
    /// [fine_tune] fine-tune a finished one with LoRA adapters (its weights
    /// frozen; a style adapter, written as RUN/lora.safetensors). Ctrl-C
    /// saves a checkpoint and exits; a second Ctrl-C exits at once.
    TrainTeacher(RunArgs),
    /// Train the KL autoencoder of latent consistency models (the
    /// latent-diffusion VAE's design): reconstruction + KL (+ optional
    /// feature distance); then measure the latent scaling factor and the
    /// reconstruction error and FID, and write reconstructions.png,
    /// report.md and the autoencoder's model.toml. Ctrl-C saves a
    /// checkpoint; --resume continues.
    TrainAutoencoder(RunArgs),
    /// Consistency distillation (Song et al. 2023, Algorithm 2): train or
    /// reuse the teacher of the config's [teacher] section, distill it, with
    /// a [search] section choose the 2-step time by FID (stored in
    /// model.toml), write 1-step and 2-step grids beside the teacher's and a
    /// report.md. Ctrl-C saves a checkpoint; --resume continues.
    Distill(DistillArgs),
    /// Progressive distillation (Salimans & Ho 2022), the papers' baseline:
    /// train or reuse the teacher of the config's [teacher] section, then
    /// halve the step count stage by stage ([pd] start_steps down to
    /// end_steps, [train] steps updates each), each stage in RUN/steps-NNN
    /// with its grids, report.md and model card; RUN/report.md lists them.
    /// Ctrl-C saves a checkpoint; --resume continues.
    TrainPd(DistillArgs),
    /// Easy consistency tuning (ECT, Geng et al. 2024): train or reuse the
    /// teacher of the config's [teacher] section, start the consistency
    /// model from its weights and tune it with ECT's continuous pairs
    /// ([ect]); 1-step and 2-step grids beside the teacher's and a
    /// report.md. Ctrl-C saves a checkpoint; --resume continues.
    TrainEct(DistillArgs),
    /// Latent consistency model (LCM, Luo et al. 2023): train or reuse the
    /// autoencoder ([autoencoder]) and the class-conditional latent teacher
    /// ([teacher], label dropout for classifier-free guidance), then
    /// latent consistency distillation ([lcd]: guided teacher steps with
    /// w ~ U[w_min, w_max], skipping step k, a student that embeds w) and,
    /// with [search], the card's few-step times chosen by FID (CM Section
    /// 6); decoded 1-, 2- and 4-step grids beside the guided teacher's, a
    /// report.md and a card that `cm sample --guidance W --class C --steps
    /// N` reads. With [lora] (LCM-LoRA) the student is the frozen teacher
    /// plus LoRA adapters at one fixed w, written as
    /// RUN/lcm_lora.safetensors. Ctrl-C saves a checkpoint; --resume
    /// continues.
    TrainLcm(DistillArgs),
    /// Guided consistency distillation alone (LCM's LCD, Algorithm 1, in
    /// the space the teacher learns: latents when its config has
    /// [teacher.latent], else data, e.g. 2-D toy points): train or reuse the
    /// class-conditional teacher of [teacher] (label dropout for
    /// classifier-free guidance), then distill it with [lcd] into a student
    /// that embeds w; 1-, 2- and 4-step samples beside the guided teacher's,
    /// a report.md and a card for `cm sample --guidance W --class C`.
    /// configs/lcd/toy.toml is the 2-D example. Ctrl-C saves a checkpoint;
    /// --resume continues.
    TrainLcd(DistillArgs),
    /// Consistency training from data alone (CT, Song et al. 2023,
    /// Algorithm 3, or the improved recipe iCT, Song & Dhariwal 2023; the
    /// config's [ct.recipe] decides): train, then write 1-step and 2-step
    /// grids, report.md and the model card model.toml. Ctrl-C saves a
    /// checkpoint; --resume continues.
    TrainCt(RunArgs),
    /// The path from CT to iCT one change at a time on 2-D toy data: trains
    /// every rung for several seeds and writes a table of exact 1-step and
    /// 2-step distances to held-out data (ablation.md, ablation.csv).
    CtAblation(ct::AblationArgs),
    /// Sample quality (FID, KID, precision/recall, IS-like in the project's
    /// feature space) of model cards against the test split, against NFE and
    /// time: results.md, results.csv, fid_vs_nfe.png and sample grids.
    Eval(eval::EvalArgs),
    /// Generate N images from a model card (CM Algorithm 1 for consistency
    /// models, the EDM sampler for a teacher): a folder of PNGs, a tensor
    /// file (samples.safetensors) and a grid, in chunks, reproducible per
    /// image under --seed.
    Sample(sample::SampleArgs),
    /// Search the intermediate times of 2- and 3-step consistency sampling
    /// by FID (golden-section search over ln tau, greedy as in CM Section 6)
    /// and store them in the model card, where sample / eval / edit use them.
    SearchTimesteps(sample::SearchArgs),
    /// Time the rows of the PyTorch side-by-side (docs/benchmarks.md) on the
    /// CPU U-Net preset: forward, forward + backward, EDM and CD training
    /// steps, 1-step sampling; `--serve` is the worker of `cargo xtask bench
    /// --vs-pytorch`.
    Bench(bench::BenchArgs),
    /// Zero-shot editing with a consistency model (CM Algorithm 4):
    /// inpainting, colorization, super-resolution, denoising, interpolation
    /// and stroke-guided generation (SDEdit), PNG in and out.
    #[command(subcommand)]
    Edit(edit::EditCommand),
    /// Write data set images as PNG files (inputs for `cm edit`).
    ExportImages(images::ExportArgs),
    /// Export a cm-rs U-Net model as a diffusers folder (UNet2DModel config
    /// and weights; a ConsistencyModelPipeline folder for consistency
    /// models with ADM noise conditioning), where the architecture maps.
    ExportDiffusers(interop::ExportDiffusersArgs),
    /// LoRA adapter files: merge adapters into a model (a new model card),
    /// or show an adapter file's config and layers.
    #[command(subcommand)]
    Lora(lora::LoraCommand),
    /// Redraw a plot (PNG plus SVG) from a CSV: a run's loss curve from its
    /// metrics.csv, or curves such as FID against NFE from a results table.
    #[command(subcommand)]
    Plot(plot::PlotCommand),
}

pub(crate) fn device(arg: DeviceArg) -> Result<Device> {
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

/// A device as `--device` spells it ("cpu", "cuda:0"), for messages.
pub(crate) fn device_name(device: Device) -> String {
    match device {
        Device::Cpu => "cpu".to_string(),
        Device::Cuda(i) => format!("cuda:{i}"),
        other => format!("{other:?}").to_lowercase(),
    }
}

/// The first Ctrl-C raises the flag (the loop saves and returns); a second
/// one exits at once.
pub(crate) fn install_stop_handler() -> Result<Arc<AtomicBool>> {
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

/// Sets libtorch's intra-op threads from `--threads` (cm-runtime's
/// policy) and says what it chose on stderr.
pub(crate) fn set_threads(threads: cm_runtime::Threads) -> Result<cm_runtime::Applied> {
    // Ranks on one machine share its cores: one thread each unless told.
    let threads = match threads {
        cm_runtime::Threads::Auto if cm_dist::world().size() > 1 => cm_runtime::Threads::Count(1),
        other => other,
    };
    let applied = cm_runtime::apply_threads(threads)?;
    say!("cm: {}", applied.describe());
    Ok(applied)
}

/// What every teacher-based pipeline command sets up first: the thread
/// count, its config, the device, the teachers folder and the Ctrl-C flag.
struct DistillSetup<C> {
    config: C,
    device: Device,
    teachers: PathBuf,
    stop: Arc<AtomicBool>,
}

impl DistillArgs {
    fn setup<C: serde::de::DeserializeOwned + cm_core::Validate>(&self) -> Result<DistillSetup<C>> {
        let run = &self.run;
        set_threads(run.threads)?;
        let config: C = cm_core::load_toml(&run.config)
            .with_context(|| format!("loading {}", run.config.display()))?;
        Ok(DistillSetup {
            config,
            device: device(run.device)?,
            teachers: self.teachers_dir(),
            stop: install_stop_handler()?,
        })
    }
}

/// The signature of a pipeline that starts from a teacher (CD, ECT).
type FromTeacherPipeline<C> = fn(
    &C,
    &std::path::Path,
    &std::path::Path,
    bool,
    Device,
    &AtomicBool,
    &mut dyn cm_train::Observer,
) -> cm_train::Result<cm_train::FromTeacherOutcome>;

/// Runs a method that starts from a teacher: set-up, the pipeline under a
/// progress bar, and the closing line (or [`Interrupted`]).
fn from_teacher<C: serde::de::DeserializeOwned + cm_core::Validate>(
    args: &DistillArgs,
    what: &str,
    label: &'static str,
    pipeline: FromTeacherPipeline<C>,
) -> Result<()> {
    let run = &args.run;
    let DistillSetup {
        config,
        device,
        teachers,
        stop,
    } = args.setup::<C>()?;
    let device_name = crate::device_name(device);
    say!("{what} on {device_name} into {}", run.run_dir.display());
    let out = observe(run, label, |observer| {
        pipeline(
            &config,
            &run.run_dir,
            &teachers,
            run.resume,
            device,
            &stop,
            observer,
        )
        .with_context(|| format!("{what} run in {}", run.run_dir.display()))
    })?;
    match &out.report {
        Some(report) => say!(
            "done: {} steps; report in {}",
            out.train.step,
            report.display()
        ),
        None => {
            return Err(Interrupted {
                step: out.train.step,
            }
            .into())
        }
    }
    Ok(())
}

fn distill(args: &DistillArgs) -> Result<()> {
    from_teacher::<CdRunConfig>(args, "consistency distillation", "cd", run_cd)
}

fn train_ect(args: &DistillArgs) -> Result<()> {
    from_teacher::<cm_train::EctRunConfig>(
        args,
        "easy consistency tuning",
        "ect",
        cm_train::run_ect,
    )
}

fn train_lcm(args: &DistillArgs) -> Result<()> {
    from_teacher::<cm_distill::LcmRunConfig>(
        args,
        "latent consistency model (autoencoder, guided latent teacher, LCD)",
        "lcm",
        |config, run_dir, teachers, resume, device, stop, observer| {
            Ok(cm_distill::run_lcm(config, run_dir, teachers, resume, device, stop, observer)?.lcd)
        },
    )
}

fn train_lcd(args: &DistillArgs) -> Result<()> {
    from_teacher::<cm_distill::LcdRunConfig>(
        args,
        "guided consistency distillation (LCD)",
        "lcd",
        cm_distill::run_lcd,
    )
}

fn train_pd(args: &DistillArgs) -> Result<()> {
    let run = &args.run;
    let DistillSetup {
        config,
        device,
        teachers,
        stop,
    } = args.setup::<PdRunConfig>()?;
    let device_name = crate::device_name(device);
    say!(
        "progressive distillation {:?} on {device_name} into {}",
        config.pd.stages(),
        run.run_dir.display()
    );
    let out = observe(run, "pd", |observer| {
        run_pd(
            &config,
            &run.run_dir,
            &teachers,
            run.resume,
            device,
            &stop,
            observer,
        )
        .with_context(|| format!("progressive distillation run in {}", run.run_dir.display()))
    })?;
    if let Some(step) = out.stopped_at {
        return Err(Interrupted { step }.into());
    }
    let report = out.report.context("the run finished without a report")?;
    say!(
        "done: {} stages; report in {}",
        out.stages.len(),
        report.display()
    );
    Ok(())
}

fn train_teacher(args: &RunArgs) -> Result<()> {
    set_threads(args.threads)?;
    let config: TeacherConfig = cm_core::load_toml(&args.config)
        .with_context(|| format!("loading {}", args.config.display()))?;
    let device = device(args.device)?;
    let stop = install_stop_handler()?;
    let device_name = crate::device_name(device);
    match &config.fine_tune {
        None => say!(
            "training the EDM teacher on {device_name} into {}",
            args.run_dir.display()
        ),
        Some(ft) => say!(
            "LoRA fine-tune (EDM loss) of {} on {device_name} into {}",
            ft.base.display(),
            args.run_dir.display()
        ),
    }
    let out = observe(args, "teacher", |observer| {
        run_teacher(&config, &args.run_dir, args.resume, device, &stop, observer)
            .with_context(|| format!("teacher run in {}", args.run_dir.display()))
    })?;
    let t = &out.train;
    let last = t.losses.last().map(|l| l.1).unwrap_or(f64::NAN);
    if t.stopped {
        return Err(Interrupted { step: t.step }.into());
    } else {
        say!(
            "done: step {}, final loss {last:.4}; samples in {}/samples_heun35.png",
            t.step,
            args.run_dir.display()
        );
    }
    Ok(())
}

fn train_autoencoder(args: &RunArgs) -> Result<()> {
    set_threads(args.threads)?;
    let config: AutoencoderRunConfig = cm_core::load_toml(&args.config)
        .with_context(|| format!("loading {}", args.config.display()))?;
    let device = device(args.device)?;
    let stop = install_stop_handler()?;
    let device_name = crate::device_name(device);
    say!(
        "training the autoencoder on {device_name} into {}",
        args.run_dir.display()
    );
    let out = observe(args, "autoencoder", |observer| {
        run_autoencoder(&config, &args.run_dir, args.resume, device, &stop, observer)
            .with_context(|| format!("autoencoder run in {}", args.run_dir.display()))
    })?;
    let t = &out.train;
    if t.stopped {
        return Err(Interrupted { step: t.step }.into());
    }
    say!(
        "done: step {}, final loss {:.4}; card {}, reconstructions in {}/reconstructions.png",
        t.step,
        t.losses.last().map(|l| l.1).unwrap_or(f64::NAN),
        out.card
            .as_deref()
            .unwrap_or(std::path::Path::new("-"))
            .display(),
        args.run_dir.display()
    );
    Ok(())
}

fn main() -> ExitCode {
    // First of all: glibc reads its allocator tunables when the process
    // starts, so the tuned allocator needs one re-execution with them set
    // (cm-runtime; CM_RS_TUNE=0 skips it).
    if let Err(e) = cm_runtime::prepare_process() {
        eprintln!("warning: {e}");
    }
    let cli = Cli::parse();
    let code = run_command(&cli);
    // Open MPI counts a rank that exits without MPI_Finalize as failed.
    cm_dist::finalize();
    code
}

/// The commands that train data-parallel when started by mpirun.
const DATA_PARALLEL_COMMANDS: &str =
    "train-teacher, train-autoencoder, distill, train-pd, train-ect, train-lcm, train-lcd and train-ct";

fn run_command(cli: &Cli) -> ExitCode {
    let data_parallel = matches!(
        cli.command,
        Command::TrainTeacher(_)
            | Command::TrainAutoencoder(_)
            | Command::TrainLcm(_)
            | Command::TrainLcd(_)
            | Command::Distill(_)
            | Command::TrainPd(_)
            | Command::TrainEct(_)
            | Command::TrainCt(_)
    );
    if let Some(ranks) = cm_dist::launcher_size().filter(|&n| n > 1) {
        if !data_parallel {
            // Say it once, from the launcher's first rank.
            if std::env::var("OMPI_COMM_WORLD_RANK").map_or(true, |r| r == "0") {
                eprintln!(
                    "error: started by mpirun with {ranks} ranks, but only {DATA_PARALLEL_COMMANDS} \
                     train data-parallel; run this command in one process"
                );
            }
            return ExitCode::FAILURE;
        }
    }
    let world = match cm_dist::init_from_env() {
        Ok(world) => world,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::FAILURE;
        }
    };
    let result = match &cli.command {
        Command::TrainTeacher(args) => train_teacher(args),
        Command::TrainAutoencoder(args) => train_autoencoder(args),
        Command::TrainLcm(args) => train_lcm(args),
        Command::TrainLcd(args) => train_lcd(args),
        Command::Distill(args) => distill(args),
        Command::TrainPd(args) => train_pd(args),
        Command::TrainEct(args) => train_ect(args),
        Command::TrainCt(args) => ct::train_ct(args),
        Command::CtAblation(args) => ct::ct_ablation(args),
        Command::Eval(args) => eval::eval(args),
        Command::Sample(args) => sample::sample(args),
        Command::SearchTimesteps(args) => sample::search(args),
        Command::Edit(cmd) => edit::edit(cmd),
        Command::ExportImages(args) => images::export(args),
        Command::ExportDiffusers(args) => interop::export(args),
        Command::Plot(cmd) => plot::plot(cmd),
        Command::Lora(cmd) => lora::lora(cmd),
        Command::Bench(args) => bench::bench(args),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => match e.downcast_ref::<Interrupted>() {
            Some(stopped) => {
                if world.rank() == 0 {
                    eprintln!("{stopped}");
                }
                ExitCode::from(EXIT_INTERRUPTED)
            }
            None if world.size() > 1 => {
                // The other ranks may be waiting in a collective for this
                // one: end the whole job rather than leave them hanging.
                eprintln!("error (rank {}): {}", world.rank(), error_chain(&e));
                world.abort(1)
            }
            None => {
                eprintln!("error: {}", error_chain(&e));
                ExitCode::FAILURE
            }
        },
    }
}

/// The error and its causes joined by ": ", skipping a cause whose text the
/// message before it already ends with (errors that print their source,
/// such as an I/O error's "No such file or directory (os error 2)", would
/// otherwise show it twice).
fn error_chain(e: &anyhow::Error) -> String {
    let mut parts: Vec<String> = Vec::new();
    for cause in e.chain() {
        let text = cause.to_string();
        if parts.last().is_some_and(|last| last.ends_with(&text)) {
            continue;
        }
        parts.push(text);
    }
    parts.join(": ")
}
