//! `cm edit`: zero-shot editing with a consistency model (CM Algorithm 4,
//! cm-sample's `edit` module), PNG in and PNG out.
//!
//! Inputs are PNG files (`--input`, repeatable) or test images of a data set
//! (`--data`, `--first`, `--count`). The result is a grid with one row per
//! input: the reference, what the model is given (masked, grey, low
//! resolution, noisy or strokes), then `--samples` results from different
//! seeds; `--out-dir` also writes every result as its own PNG.

use std::path::PathBuf;

use anyhow::{bail, Context, Result};
use tch::{Device, Kind, Tensor};

use cm_core::{Conditioning, NoiseRange};
use cm_report::{write_image_grid_with_columns, write_png};
use cm_sample::edit::{
    box_mask, half_mask, interpolate, sdedit, stroke_mask, EditTask, Side, Transform,
};
use cm_sample::{ModelCard, SeededNoise};

use crate::images::{data_images, read_images, read_mask};
use crate::sample::{load_card, DataArg};

/// The editing tasks.
#[derive(Debug, clap::Subcommand)]
pub enum EditCommand {
    /// Fill in the masked pixels (A = I, Omega = the mask).
    Inpaint(InpaintArgs),
    /// Colour a grey image: keep the luma, generate the two chroma axes of an
    /// orthogonal colour transform (RGB models only).
    Colorize(TaskArgs),
    /// Generate the detail of each factor x factor patch, keeping the patch
    /// means (an orthogonal per-patch basis whose first vector is the mean).
    SuperRes(SuperResArgs),
    /// Add Gaussian noise of a known level sigma to the inputs and remove it
    /// with one evaluation f(x + sigma z, sigma).
    Denoise(DenoiseArgs),
    /// Spherical interpolation between pairs of noises, each frame f(T z, T).
    Interpolate(InterpolateArgs),
    /// Stroke-guided generation (SDEdit): noise a stroke image to a middle
    /// time tau and continue the multistep chain.
    Sdedit(SdeditArgs),
}

/// Arguments every task shares.
#[derive(Debug, clap::Args)]
pub struct CommonArgs {
    /// Consistency model card (model.toml).
    #[arg(long)]
    pub card: PathBuf,
    /// Output grid PNG: one row per input (reference, model input, results).
    #[arg(long)]
    pub out: PathBuf,
    /// Also write every result as a PNG into this folder.
    #[arg(long)]
    pub out_dir: Option<PathBuf>,
    /// Enlarge the grid by this factor (nearest neighbour; the per-result
    /// PNGs keep the model's resolution).
    #[arg(long, default_value_t = 1)]
    pub zoom: i64,
    /// Run seed (per image and per sample: results do not depend on batching).
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Where to run.
    #[arg(long, value_enum, default_value = "auto")]
    pub device: crate::DeviceArg,
    /// libtorch intra-op threads: `auto` (one per core available to this
    /// process) or a count.
    #[arg(long, default_value = "auto")]
    pub threads: cm_runtime::Threads,
}

/// Where the images to edit come from.
#[derive(Debug, clap::Args)]
pub struct InputArgs {
    /// Input PNG / JPEG (repeatable); resized to the model's resolution.
    #[arg(long, conflicts_with = "data")]
    pub input: Vec<PathBuf>,
    /// Take test images of this data set instead of --input.
    #[arg(long, value_enum)]
    pub data: Option<DataArg>,
    /// Index of the first test image (with --data).
    #[arg(long, default_value_t = 0)]
    pub first: usize,
    /// Number of test images (with --data).
    #[arg(long, default_value_t = 8)]
    pub count: usize,
}

/// The multistep chain of Algorithm 4.
#[derive(Debug, clap::Args)]
pub struct ChainArgs {
    /// Network evaluations: the first at T (sdedit: at --tau), then
    /// steps - 1 re-noised ones at the interior times of the Karras grid
    /// down to sigma_min (or --taus).
    #[arg(long, default_value_t = 8)]
    pub steps: usize,
    /// Explicit times tau_1 > tau_2 > ... after the first evaluation.
    #[arg(long, value_delimiter = ',')]
    pub taus: Option<Vec<f64>>,
    /// Results per input, each from its own seed.
    #[arg(long, default_value_t = 3)]
    pub samples: usize,
}

/// Arguments of a task without options of its own.
#[derive(Debug, clap::Args)]
pub struct TaskArgs {
    #[command(flatten)]
    common: CommonArgs,
    #[command(flatten)]
    input: InputArgs,
    #[command(flatten)]
    chain: ChainArgs,
}

/// Inpainting masks.
#[derive(Debug, Clone, Copy, clap::ValueEnum)]
pub enum MaskArg {
    /// A centred box of half the image side (or --box).
    Box,
    /// The left half.
    Left,
    /// The right half.
    Right,
    /// The top half.
    Top,
    /// The bottom half.
    Bottom,
    /// Random brush strokes (--strokes of them, from --seed).
    Strokes,
}

/// Arguments of `cm edit inpaint`.
#[derive(Debug, clap::Args)]
pub struct InpaintArgs {
    #[command(flatten)]
    task: TaskArgs,
    /// The region to generate.
    #[arg(long, value_enum, default_value = "box", conflicts_with = "mask_png")]
    mask: MaskArg,
    /// A mask PNG instead (white = generate, black = keep), resized to the model.
    #[arg(long)]
    mask_png: Option<PathBuf>,
    /// The box as top,left,height,width pixels (with --mask box).
    #[arg(long, value_delimiter = ',')]
    r#box: Option<Vec<i64>>,
    /// Number of strokes (with --mask strokes).
    #[arg(long, default_value_t = 4)]
    strokes: usize,
    /// Stroke width in pixels (with --mask strokes).
    #[arg(long, default_value_t = 3.0)]
    stroke_width: f64,
}

/// Arguments of `cm edit super-res`.
#[derive(Debug, clap::Args)]
pub struct SuperResArgs {
    #[command(flatten)]
    task: TaskArgs,
    /// Upsampling factor (patch side): 2 or 4 (any divisor of the resolution).
    /// The model keeps the mean of every factor x factor patch of the input
    /// and generates the rest.
    #[arg(long, default_value_t = 2)]
    factor: i64,
    /// The --input PNGs are low-resolution images (side = resolution /
    /// factor) whose pixels are the patch means; without it inputs are
    /// full-resolution images whose patch means are kept.
    #[arg(long)]
    low_res: bool,
}

/// Arguments of `cm edit denoise`.
#[derive(Debug, clap::Args)]
pub struct DenoiseArgs {
    #[command(flatten)]
    common: CommonArgs,
    #[command(flatten)]
    input: InputArgs,
    /// The noise level sigma (in the model's [-1, 1] pixel units).
    #[arg(long, default_value_t = 0.5)]
    sigma: f64,
    /// The inputs already carry noise of level --sigma: do not add any.
    #[arg(long)]
    already_noisy: bool,
}

/// Arguments of `cm edit interpolate`.
#[derive(Debug, clap::Args)]
// Interpolation takes no inputs: its grid's rows are its own.
#[command(mut_arg("out", |a| a.help(
    "Output grid PNG: one row per pair of end points, one column per frame"
)))]
pub struct InterpolateArgs {
    #[command(flatten)]
    common: CommonArgs,
    /// Pairs of end points (rows of the grid); row r goes from image 2r to
    /// image 2r + 1 of the run seed.
    #[arg(long, default_value_t = 4)]
    pairs: usize,
    /// Frames per row, end points included.
    #[arg(long, default_value_t = 8)]
    frames: usize,
}

/// Arguments of `cm edit sdedit`.
#[derive(Debug, clap::Args)]
pub struct SdeditArgs {
    #[command(flatten)]
    task: TaskArgs,
    /// The time the stroke image is noised to: higher follows the strokes
    /// less closely and looks more like data.
    #[arg(long, default_value_t = 2.0)]
    tau: f64,
}

/// The consistency card's noise range, or an error for an EDM card.
fn consistency_range(card: &ModelCard, path: &std::path::Path) -> Result<NoiseRange> {
    if let Some(ae) = card.autoencoder() {
        bail!(
            "{}: zero-shot editing works in pixel space; this model works in the latent space \
             of the autoencoder {} (edits of latents are not built)",
            path.display(),
            ae.display()
        );
    }
    match card {
        ModelCard::Consistency { consistency, .. } => Ok(consistency.range()),
        ModelCard::Edm { .. } => bail!(
            "{}: zero-shot editing needs a consistency model (kind = \"consistency\"), \
             this card is an EDM teacher",
            path.display()
        ),
    }
}

/// The images to edit, `[N, C, H, W]` in [-1, 1].
fn inputs(args: &InputArgs, shape: &[i64]) -> Result<Tensor> {
    let images = match (&args.data, args.input.is_empty()) {
        (Some(data), true) => {
            let d = data.load()?;
            if d.shape().map(|s| s as i64) != shape {
                bail!(
                    "--data {} has images {:?}, the model makes {shape:?}",
                    data.name(),
                    d.shape()
                );
            }
            data_images(&d.test, args.first, args.count)?
        }
        (None, false) => read_images(&args.input, shape)?,
        (None, true) => bail!("give the images to edit: --input FILE.png ... or --data NAME"),
        (Some(_), false) => bail!("--input and --data exclude each other"),
    };
    Ok(images)
}

/// Low-resolution inputs (`side = resolution / factor`), blown up with
/// nearest neighbour so every factor x factor patch has the low-resolution
/// pixel as its mean. Test images (`--data`) are averaged over patches first.
fn low_res_inputs(args: &InputArgs, shape: &[i64], factor: i64) -> Result<Tensor> {
    let (c, h) = (shape[0], shape[1]);
    if factor < 2 || h % factor != 0 {
        bail!("--factor {factor}: expected a divisor >= 2 of the resolution {h}");
    }
    let small = if args.input.is_empty() {
        inputs(args, shape)?.avg_pool2d(
            [factor, factor],
            [factor, factor],
            [0, 0],
            false,
            true,
            None::<i64>,
        )
    } else {
        read_images(&args.input, &[c, h / factor, h / factor])?
    };
    Ok(small.upsample_nearest2d([h, h], None, None))
}

/// The times after the first evaluation: --taus, or the interior of the
/// Karras sampling grid from `start` (sigma_max, or SDEdit's tau) down to
/// sigma_min with `steps + 1` levels ([`ModelCard::karras_taus`]), so that
/// `--steps k` means k network evaluations.
fn chain_taus(chain: &ChainArgs, card: &ModelCard, start: Option<f64>) -> Result<Vec<f64>> {
    if let Some(t) = &chain.taus {
        return Ok(t.clone());
    }
    if !(1..=1000).contains(&chain.steps) {
        bail!("--steps {}: expected 1 to 1000", chain.steps);
    }
    if !matches!(card, ModelCard::Consistency { .. }) {
        bail!("editing needs a consistency model");
    }
    Ok(card.karras_taus(chain.steps, start)?)
}

/// Per-image, per-result noise: result `s` of input `i` is seeded by
/// `(seed, i, s)`, so it does not change with the number of inputs or results.
fn result_noise(seed: u64, n: usize, s: usize) -> SeededNoise {
    SeededNoise::new(
        (0..n as u64)
            .map(|i| cm_sample::sample_seed(cm_sample::sample_seed(seed, i), s as u64))
            .collect(),
    )
}

/// Checks the options every task shares before any work is done.
fn check_common(common: &CommonArgs, samples: usize) -> Result<()> {
    if !(1..=16).contains(&common.zoom) {
        bail!("--zoom {}: expected 1 to 16", common.zoom);
    }
    if !(1..=64).contains(&samples) {
        bail!("--samples {samples}: expected 1 to 64 results per input");
    }
    Ok(())
}

/// Writes the grid (and the per-result PNGs) of an editing run.
fn write_results(
    common: &CommonArgs,
    reference: &Tensor,
    given: &Tensor,
    results: &[Tensor],
) -> Result<()> {
    let n = reference.size()[0];
    let mut rows = Vec::new();
    for i in 0..n {
        rows.push(reference.get(i));
        rows.push(given.get(i));
        for r in results {
            rows.push(r.get(i));
        }
    }
    let columns = 2 + results.len() as i64;
    let grid = zoomed(&Tensor::stack(&rows, 0), common.zoom)?;
    if let Some(parent) = common.out.parent().filter(|p| !p.as_os_str().is_empty()) {
        std::fs::create_dir_all(parent)
            .with_context(|| format!("creating {}", parent.display()))?;
    }
    write_image_grid_with_columns(&grid, columns, &common.out)
        .with_context(|| format!("writing {}", common.out.display()))?;
    if let Some(dir) = &common.out_dir {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        for (s, r) in results.iter().enumerate() {
            for i in 0..n {
                let path = dir.join(format!("{i:04}-{s}.png"));
                write_png(&r.get(i), &path)
                    .with_context(|| format!("writing {}", path.display()))?;
            }
        }
    }
    eprintln!(
        "{} x {} (reference, model input, {}) -> {}",
        crate::progress::count(n as u64, "row", "rows"),
        crate::progress::count(columns as u64, "column", "columns"),
        crate::progress::count(results.len() as u64, "result", "results"),
        common.out.display()
    );
    Ok(())
}

/// Nearest-neighbour enlargement of `[N, C, H, W]` images for viewing.
fn zoomed(images: &Tensor, zoom: i64) -> Result<Tensor> {
    if !(1..=16).contains(&zoom) {
        bail!("--zoom {zoom}: expected 1 to 16");
    }
    if zoom == 1 {
        return Ok(images.shallow_clone());
    }
    let (h, w) = (images.size()[2], images.size()[3]);
    Ok(images.upsample_nearest2d([h * zoom, w * zoom], None, None))
}

/// The colour-transform view of what colorization is given: the luma as grey.
fn luma_as_grey(x: &Tensor) -> Tensor {
    let w = Tensor::from_slice(&[0.299f32, 0.587, 0.114])
        .reshape([1, 3, 1, 1])
        .to_device(x.device());
    (x * w)
        .sum_dim_intlist([1i64].as_slice(), true, Kind::Float)
        .repeat([1, 3, 1, 1])
}

/// Runs one of the `cm edit` tasks.
pub fn edit(cmd: &EditCommand) -> Result<()> {
    match cmd {
        EditCommand::Inpaint(a) => {
            let common = &a.task.common;
            if a.strokes > 64 || !(a.stroke_width > 0.0 && a.stroke_width <= 64.0) {
                bail!(
                    "--strokes {} / --stroke-width {}: expected at most 64 / in (0, 64]",
                    a.strokes,
                    a.stroke_width
                );
            }
            run_task(&a.task, None, |shape| {
                let (h, w) = (shape[2], shape[3]);
                let mask = if let Some(png) = &a.mask_png {
                    read_mask(png, h)?
                } else {
                    match a.mask {
                        MaskArg::Box => match a.r#box.as_deref() {
                            Some(&[top, left, height, width]) => {
                                box_mask(h, w, top, left, height, width)?
                            }
                            Some(other) => bail!(
                                "--box {other:?}: expected four numbers top,left,height,width"
                            ),
                            None => box_mask(h, w, h / 4, w / 4, h / 2, w / 2)?,
                        },
                        MaskArg::Left => half_mask(h, w, Side::Left)?,
                        MaskArg::Right => half_mask(h, w, Side::Right)?,
                        MaskArg::Top => half_mask(h, w, Side::Top)?,
                        MaskArg::Bottom => half_mask(h, w, Side::Bottom)?,
                        MaskArg::Strokes => {
                            stroke_mask(h, w, a.strokes, a.stroke_width, common.seed)?
                        }
                    }
                };
                Ok(EditTask::Inpaint { mask })
            })
        }
        EditCommand::Colorize(a) => run_task(a, None, |_| Ok(EditTask::Colorize)),
        EditCommand::SuperRes(a) => run_task(&a.task, a.low_res.then_some(a.factor), |_| {
            Ok(EditTask::SuperResolution { factor: a.factor })
        }),
        EditCommand::Denoise(a) => run_denoise(a),
        EditCommand::Interpolate(a) => run_interpolate(a),
        EditCommand::Sdedit(a) => run_sdedit(a),
    }
}

fn setup(common: &CommonArgs) -> Result<(Device, ModelCard, cm_nets::Model, NoiseRange)> {
    crate::set_threads(common.threads)?;
    let device = crate::device(common.device)?;
    let (card, model) = load_card(&common.card, device)?;
    if model.config().num_classes() > 0 && !model.config().has_null_class() {
        bail!(
            "{}: editing runs unconditionally (the null class), and this class-conditional \
             model has no null class",
            common.card.display()
        );
    }
    let range = consistency_range(&card, &common.card)?;
    Ok((device, card, model, range))
}

/// Inpainting, colorization and super-resolution: Algorithm 4 with the
/// task's transform and mask.
fn run_task(
    a: &TaskArgs,
    low_res: Option<i64>,
    task: impl Fn(&[i64]) -> Result<EditTask>,
) -> Result<()> {
    check_common(&a.common, a.chain.samples)?;
    let (device, card, model, range) = setup(&a.common)?;
    let shape = model.config().sample_shape();
    let y = match low_res {
        Some(factor) => low_res_inputs(&a.input, &shape, factor)?,
        None => inputs(&a.input, &shape)?,
    }
    .to_device(device);
    let task = task(&y.size())?;
    let plan = task
        .plan(&y.size())
        .with_context(|| format!("{} on {:?}", task.name(), y.size()))?;
    let taus = chain_taus(&a.chain, &card, None)?;
    let f = card.denoiser(&model);
    let n = y.size()[0] as usize;
    let started = std::time::Instant::now();
    let mut results = Vec::new();
    for s in 0..a.chain.samples {
        let mut noise = result_noise(a.common.seed, n, s);
        let out = task
            .run(
                f.as_ref(),
                &y,
                range,
                &taus,
                Conditioning::none(),
                &mut noise,
            )
            .with_context(|| task.name())?;
        results.push(out.x.clamp(-1.0, 1.0).to_device(Device::Cpu));
    }
    let given = match &task {
        EditTask::Colorize => luma_as_grey(&y),
        _ => {
            // What Algorithm 4 keeps of y: A^-1[(A y) (1 - Omega)]; for
            // inpainting the masked pixels show as mid-grey (0).
            let t: &dyn Transform = plan.transform.as_ref();
            let keep = 1.0 - plan.omega.to_device(device);
            t.inverse(&(t.forward(&y) * keep))
        }
    };
    eprintln!(
        "{}: {} x {}, {} evaluations each (taus {:?}), {:.2} s",
        task.name(),
        crate::progress::count(n as u64, "image", "images"),
        crate::progress::count(results.len() as u64, "sample", "samples"),
        1 + taus.len(),
        taus.iter()
            .map(|t| (t * 1e3).round() / 1e3)
            .collect::<Vec<_>>(),
        started.elapsed().as_secs_f64()
    );
    write_results(
        &a.common,
        &y.to_device(Device::Cpu),
        &given.to_device(Device::Cpu),
        &results,
    )
}

fn run_denoise(a: &DenoiseArgs) -> Result<()> {
    check_common(&a.common, 1)?;
    let (device, card, model, range) = setup(&a.common)?;
    let shape = model.config().sample_shape();
    let y = inputs(&a.input, &shape)?.to_device(device);
    let n = y.size()[0] as usize;
    let noisy = if a.already_noisy {
        y.shallow_clone()
    } else {
        let mut noise = SeededNoise::for_range(a.common.seed, 0, n);
        &y + noise.draw(&shape, Kind::Float, device) * a.sigma
    };
    let f = card.denoiser(&model);
    let out = cm_sample::edit::denoise(f.as_ref(), &noisy, a.sigma, range, Conditioning::none())
        .context("denoise")?;
    let mse = |x: &Tensor| (x - &y).square().mean(Kind::Float).double_value(&[]);
    if !a.already_noisy {
        eprintln!(
            "sigma {}: PSNR (peak 2) noisy {:.2} dB -> denoised {:.2} dB",
            a.sigma,
            10.0 * (4.0 / mse(&noisy.clamp(-1.0, 1.0))).log10(),
            10.0 * (4.0 / mse(&out.x.clamp(-1.0, 1.0))).log10()
        );
    }
    write_results(
        &a.common,
        &y.to_device(Device::Cpu),
        &noisy.clamp(-1.0, 1.0).to_device(Device::Cpu),
        &[out.x.clamp(-1.0, 1.0).to_device(Device::Cpu)],
    )
}

fn run_interpolate(a: &InterpolateArgs) -> Result<()> {
    check_common(&a.common, 1)?;
    if !(1..=64).contains(&a.pairs) || !(2..=64).contains(&a.frames) {
        bail!(
            "--pairs {} / --frames {}: expected 1 to 64 / 2 to 64",
            a.pairs,
            a.frames
        );
    }
    let (device, card, model, range) = setup(&a.common)?;
    let shape = model.config().sample_shape();
    let f = card.denoiser(&model);
    let mut frames = Vec::new();
    for p in 0..a.pairs {
        let mut noise = SeededNoise::for_range(a.common.seed, 2 * p as u64, 2);
        let z = noise.draw(&shape, Kind::Float, device);
        let out = interpolate(
            f.as_ref(),
            &z.narrow(0, 0, 1),
            &z.narrow(0, 1, 1),
            a.frames,
            range.sigma_max,
            Conditioning::none(),
        )
        .context("interpolate")?;
        frames.push(out.x.clamp(-1.0, 1.0).to_device(Device::Cpu));
    }
    let grid = Tensor::cat(&frames, 0);
    let big = zoomed(&grid, a.common.zoom)?;
    if let Some(parent) = a.common.out.parent().filter(|p| !p.as_os_str().is_empty()) {
        std::fs::create_dir_all(parent)
            .with_context(|| format!("creating {}", parent.display()))?;
    }
    write_image_grid_with_columns(&big, a.frames as i64, &a.common.out)
        .with_context(|| format!("writing {}", a.common.out.display()))?;
    if let Some(dir) = &a.common.out_dir {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        for i in 0..grid.size()[0] {
            let path = dir.join(format!("{i:04}.png"));
            write_png(&grid.get(i), &path)
                .with_context(|| format!("writing {}", path.display()))?;
        }
    }
    eprintln!(
        "{} of {} (slerp between two noises, one evaluation per frame) -> {}",
        crate::progress::count(a.pairs as u64, "row", "rows"),
        crate::progress::count(a.frames as u64, "frame", "frames"),
        a.common.out.display()
    );
    Ok(())
}

fn run_sdedit(a: &SdeditArgs) -> Result<()> {
    check_common(&a.task.common, a.task.chain.samples)?;
    let (device, card, model, range) = setup(&a.task.common)?;
    let NoiseRange {
        sigma_min,
        sigma_max,
    } = range;
    let shape = model.config().sample_shape();
    let strokes = inputs(&a.task.input, &shape)?.to_device(device);
    if !(a.tau > sigma_min && a.tau <= sigma_max) {
        bail!(
            "--tau {}: expected a time in ({sigma_min}, {sigma_max}]",
            a.tau
        );
    }
    let taus = chain_taus(&a.task.chain, &card, Some(a.tau))?;
    let f = card.denoiser(&model);
    let n = strokes.size()[0] as usize;
    let mut results = Vec::new();
    for s in 0..a.task.chain.samples {
        let mut noise = result_noise(a.task.common.seed, n, s);
        let out = sdedit(
            f.as_ref(),
            &strokes,
            a.tau,
            &taus,
            range,
            Conditioning::none(),
            &mut noise,
        )
        .context("sdedit")?;
        results.push(out.x.clamp(-1.0, 1.0).to_device(Device::Cpu));
    }
    eprintln!(
        "sdedit from tau {}: {} evaluations each (then taus {:?})",
        a.tau,
        1 + taus.len(),
        taus.iter()
            .map(|t| (t * 1e3).round() / 1e3)
            .collect::<Vec<_>>()
    );
    // What the first evaluation of result 0 sees (the same noise draw): the
    // strokes noised to tau, shown clamped.
    let mut noise = result_noise(a.task.common.seed, n, 0);
    let seen = (&strokes
        + noise.draw(&shape, Kind::Float, device) * (a.tau * a.tau - sigma_min * sigma_min).sqrt())
    .clamp(-1.0, 1.0);
    write_results(
        &a.task.common,
        &strokes.to_device(Device::Cpu),
        &seen.to_device(Device::Cpu),
        &results,
    )
}
