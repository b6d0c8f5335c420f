//! The run skeleton every method's pipeline is (teacher, CT / iCT, CD, and
//! each later method): check the config, write it into the run folder (on
//! resume, check it against the one the run started with), load the data,
//! let the method build its network and [`Objective`], train on the shared
//! loop ([`train`]), then sample the report grids from fixed noise, write
//! `report.md` and the model card `model.toml`.
//!
//! A method supplies only what differs, through [`Method`]: its config
//! section, the network and objective, the recipe in words, the samplers of
//! its report and its model card. "Adding a method" in docs/architecture.md
//! walks through it.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicBool;
use std::time::Instant;

use serde::de::DeserializeOwned;
use serde::Serialize;
use tch::{Device, Tensor};

use cm_core::Validate;
use cm_data::DataSource;
use cm_nets::Model;
use cm_sample::{AutoencoderCard, ModelCard, Sampled, CARD_FILE};

use crate::checkpoint::{final_weights, latest_checkpoint, refuse_existing_run};
use crate::config::TrainConfig;
use crate::error::{Result, TrainError};
use crate::objective::Objective;
use crate::observer::Observer;
use crate::source::{loader_for, LoaderOptions};
use crate::trainer::{eval_model, fixed_latents, in_chunks, mix_seed, train, TrainOutcome};

/// Where a run goes and how it is driven.
pub struct RunContext<'a> {
    /// The run folder (config, checkpoints, metrics, grids, report, card).
    pub run_dir: &'a Path,
    /// Continue from the newest checkpoint in the run folder, if any.
    pub resume: bool,
    /// Where the networks live.
    pub device: Device,
    /// Raised by Ctrl-C: the loop saves a checkpoint and returns.
    pub stop: &'a AtomicBool,
    /// Progress and messages.
    pub observer: &'a mut dyn Observer,
}

/// Draws samples from standard-normal latents `[N, ...]`.
pub type SampleFn<'a> = Box<dyn Fn(&Tensor) -> Result<Sampled> + 'a>;

/// One grid of the report: a sampler run on the run's fixed latents.
pub struct ReportSampler<'a> {
    /// The row label, e.g. `"1 step"`.
    pub label: String,
    /// The grid's file name in the run folder, e.g. `"samples_1step.png"`.
    pub file: String,
    /// Samples from standard-normal latents `[N, ...]`.
    pub sample: SampleFn<'a>,
}

/// The sections every run config has, whatever the method: the data, how
/// it is loaded, and the loop settings.
pub trait RunConfig: Serialize + DeserializeOwned + PartialEq + Validate {
    /// The training data and how it is loaded.
    fn data(&self) -> (&DataSource, LoaderOptions);
    /// The loop settings (`[train]`).
    fn train(&self) -> &TrainConfig;
    /// Copies the step counts of `new` into `self`: a resumed run may be
    /// extended, nothing else may change.
    fn take_steps_of(&mut self, new: &Self);
    /// The autoencoder whose latent space the run trains in (`[latent]`),
    /// if any: the data is encoded to latents and grids are decoded.
    fn latent(&self) -> Option<&crate::latent::LatentConfig> {
        None
    }
}

/// What a finished run writes as `model.toml` and every checkpoint carries
/// in its metadata ([`cm_sample::META_CARD`]): a sampler's [`ModelCard`],
/// or an autoencoder's [`AutoencoderCard`].
pub trait RunCard {
    /// Writes the card atomically.
    fn save(&self, path: &Path) -> Result<()>;
    /// The card as checkpoint metadata (JSON without the weights path).
    fn metadata_json(&self) -> String;
    /// Names the autoencoder of a latent run (`[latent]`), so sampling
    /// decodes; cards that cannot sample ignore it.
    fn set_latent(&mut self, _autoencoder: &Path) {}
}

impl RunCard for ModelCard {
    fn save(&self, path: &Path) -> Result<()> {
        Ok(ModelCard::save(self, path)?)
    }

    fn metadata_json(&self) -> String {
        ModelCard::metadata_json(self)
    }

    fn set_latent(&mut self, autoencoder: &Path) {
        // Absolute: the card is read from the run folder, the config's path
        // from the working directory.
        let path = std::fs::canonicalize(autoencoder).unwrap_or_else(|_| autoencoder.into());
        self.set_autoencoder(Some(path));
    }
}

impl RunCard for AutoencoderCard {
    fn save(&self, path: &Path) -> Result<()> {
        Ok(AutoencoderCard::save(self, path)?)
    }

    fn metadata_json(&self) -> String {
        AutoencoderCard::metadata_json(self)
    }
}

/// What a method adds to the run skeleton.
pub trait Method {
    /// The whole run config, as written to `config.toml`.
    type Config: RunConfig;
    /// The training objective.
    type Objective: Objective;
    /// The model card the run writes.
    type Card: RunCard;

    /// The report's title, e.g. `"Consistency training run"`.
    fn title(&self) -> &str;
    /// The resolved config.
    fn config(&self) -> &Self::Config;
    /// The online network at step 0 and the objective. Called with
    /// libtorch's generator seeded from `train.seed`, so fresh weights are
    /// reproducible.
    fn build(
        &mut self,
        device: Device,
        observer: &mut dyn Observer,
    ) -> Result<(Model, Self::Objective)>;
    /// The recipe in words and numbers, one report line each.
    fn describe(&self) -> Vec<String>;
    /// The samplers of the report's grids, on the evaluation network.
    fn report_samplers<'a>(
        &'a self,
        objective: &'a Self::Objective,
        eval: &'a Model,
    ) -> Vec<ReportSampler<'a>>;
    /// The model card of the finished run, its weights at `weights`
    /// (relative to the run folder).
    fn card(&self, weights: PathBuf) -> Self::Card;

    /// Runs once training has finished, before the report and the card:
    /// measurements of the evaluation network on the data (an autoencoder's
    /// scaling factor and reconstruction error). Returns extra report lines.
    fn finish(
        &mut self,
        _eval: &Model,
        _data: &cm_data::Dataset,
        _observer: &mut dyn Observer,
    ) -> Result<Vec<String>> {
        Ok(Vec::new())
    }
}

/// One row of the report's sampler table.
#[derive(Debug, Clone, PartialEq)]
pub struct SamplerRow {
    /// Row label.
    pub label: String,
    /// Grid file name.
    pub file: String,
    /// Network evaluations per sample.
    pub nfe: usize,
    /// Seconds for the whole grid.
    pub seconds: f64,
}

/// What a run leaves.
#[derive(Debug)]
pub struct RunOutcome<O> {
    /// The loop's outcome (online network, EMAs, losses, newest checkpoint).
    pub train: TrainOutcome,
    /// The objective (e.g. a target network or a teacher).
    pub objective: O,
    /// `report.md`, if the run finished.
    pub report: Option<PathBuf>,
    /// `model.toml`, if the run finished.
    pub card: Option<PathBuf>,
    /// The report's sampler rows, if the run finished.
    pub samplers: Vec<SamplerRow>,
}

/// Runs (or with `ctx.resume`, continues) `method` into `ctx.run_dir`.
pub fn run<M: Method>(method: &mut M, ctx: RunContext<'_>) -> Result<RunOutcome<M::Objective>> {
    let RunContext {
        run_dir,
        resume,
        device,
        stop,
        observer,
    } = ctx;
    method.config().validate()?;
    observer.on_stage(&stage_name(method.title()));
    let train_config = method.config().train().clone();
    if resume {
        if let Some((step, _)) = latest_checkpoint(run_dir) {
            if step > train_config.steps {
                return Err(TrainError::RunFolder {
                    path: run_dir.to_path_buf(),
                    reason: format!(
                        "the run is at step {step}, beyond this config's steps = {}; \
                         resume with steps >= {step} (its checkpoints stay as they are)",
                        train_config.steps
                    ),
                });
            }
        }
    }
    let comm = cm_dist::world();
    let writer = comm.rank() == 0;
    train_config.shards_for(comm.size(), "train.")?;
    if writer {
        write_run_config(run_dir, method.config(), resume)?;
    } else {
        check_run_folder(run_dir, method.config(), resume)?;
    }
    // A finished run resumed is a no-op: its report and card (which later
    // commands may have extended, e.g. the timestep search) stay as they are.
    // Rank 0 decides for every rank (the others may not see its files).
    let card = run_dir.join(CARD_FILE);
    let finished = cm_dist::tensors::broadcast_u64(
        &*comm,
        (resume
            && card.is_file()
            && latest_checkpoint(run_dir).is_some_and(|(step, _)| step >= train_config.steps))
            as u64,
    ) == 1;
    observer.on_message("loading data");
    let (data, loader) = method.config().data();
    // Rank 0 first: on a fresh machine it downloads and caches the data
    // set, and the others read the cache instead of racing to write it.
    let load = || {
        data.load(None)
            .map_err(|e| TrainError::Batch(e.to_string()))
    };
    let data = if writer {
        let data = load();
        comm.barrier();
        data?
    } else {
        comm.barrier();
        load()?
    };
    if let cm_data::Dataset::Images(images) = &data {
        if images.skipped_rows > 0 {
            observer.on_message(
                &method
                    .config()
                    .data()
                    .0
                    .skipped_message(images.skipped_rows),
            );
        }
    }
    // The latent route: the images become the autoencoder's scaled
    // latents (encoded once, cached), and grids are decoded to images.
    let codec = match method.config().latent() {
        Some(latent) => {
            let codec = latent.load_codec(device)?;
            let root = cm_eval::classifier::default_cache_root()?;
            let card = cm_sample::AutoencoderCard::load(&latent.autoencoder)?;
            // Rank 0 encodes and caches; the others then read the cache.
            let encode = |observer: &mut dyn Observer| {
                crate::latent::latent_dataset(&data, &codec, &card.weights, &root, observer)
            };
            let latents = if writer {
                let l = encode(observer);
                comm.barrier();
                l?
            } else {
                comm.barrier();
                encode(observer)?
            };
            Some((codec, latents))
        }
        None => None,
    };
    let (codec, data) = match codec {
        Some((codec, latents)) => (Some(codec), latents),
        None => (None, data),
    };
    tch::manual_seed(mix_seed(train_config.seed, u64::MAX));
    let (mut model, mut objective) = method.build(device, observer)?;
    // Every checkpoint says how to sample from it (cm_sample::META_CARD).
    let card_of = |method: &M, weights: PathBuf| {
        let mut card = method.card(weights);
        if let Some(latent) = method.config().latent() {
            card.set_latent(&latent.autoencoder);
        }
        card
    };
    model.set_metadata(
        cm_sample::META_CARD,
        card_of(method, PathBuf::new()).metadata_json(),
    );
    let source = loader_for(&data, loader, &train_config, model.config())?;
    observer.on_message(&format!(
        "network: {:.2} M parameters, {:.1} MFLOPs per sample",
        model.num_params() as f64 / 1e6,
        model.flops_per_sample() as f64 / 1e6
    ));
    let started = Instant::now();
    let mut decoding;
    let training: &mut dyn Objective = match &codec {
        Some(codec) => {
            decoding = crate::latent::Decoding {
                inner: &mut objective,
                codec,
            };
            &mut decoding
        }
        None => &mut objective,
    };
    let out = train(
        training,
        model,
        &source,
        &train_config,
        run_dir,
        resume,
        stop,
        observer,
    )?;
    let seconds = started.elapsed().as_secs_f64();
    if out.stopped {
        return Ok(RunOutcome {
            train: out,
            objective,
            report: None,
            card: None,
            samplers: Vec::new(),
        });
    }
    if finished {
        observer.on_message(&format!(
            "the run already finished at step {}; report.md and {CARD_FILE} left as they are",
            out.step
        ));
        let report = run_dir.join("report.md");
        return Ok(RunOutcome {
            train: out,
            objective,
            report: report.is_file().then_some(report),
            card: Some(card),
            samplers: Vec::new(),
        });
    }
    // Only rank 0 writes the report and the card; the others wait for them
    // (a later stage of the pipeline reads the card).
    // A failure here must not leave the other ranks waiting at the
    // barrier: they wait first, then the error is returned.
    let written = if writer {
        (|| -> Result<Vec<SamplerRow>> {
            let mut measured =
                method.finish(eval_model(&out.online, &out.emas), &data, observer)?;
            if let (Some(codec), Some(latent)) = (&codec, method.config().latent()) {
                measured.insert(
                    0,
                    format!(
                    "latent space of the autoencoder `{}`: latents {:?}, scaling_factor {:.5}; \
                     grids decoded to images",
                    latent.autoencoder.display(),
                    codec.latent_shape(),
                    codec.scaling_factor()
                ),
                );
            }
            let rows = write_report_grids(method, &objective, &out, codec.as_ref(), run_dir)?;
            write_report(
                method,
                &out,
                &rows,
                &measured,
                run_dir,
                seconds,
                comm.size(),
            )?;
            card_of(method, final_weights(&train_config)).save(&card)?;
            Ok(rows)
        })()
    } else {
        Ok(Vec::new())
    };
    comm.barrier();
    let rows = written?;
    Ok(RunOutcome {
        train: out,
        objective,
        report: Some(run_dir.join("report.md")),
        card: Some(card),
        samplers: rows,
    })
}

/// A method's title as a slug for [`Observer::on_stage`]: "EDM teacher
/// run" -> "edm-teacher".
fn stage_name(title: &str) -> String {
    let title = title.strip_suffix(" run").unwrap_or(title);
    title
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() {
                c.to_ascii_lowercase()
            } else {
                '-'
            }
        })
        .collect()
}

/// Every report grid from the same fixed latents, each sampler starting
/// from the same generator state, timed.
fn write_report_grids<M: Method>(
    method: &M,
    objective: &M::Objective,
    out: &TrainOutcome,
    codec: Option<&cm_sample::LatentCodec>,
    run_dir: &Path,
) -> Result<Vec<SamplerRow>> {
    let config = method.config().train();
    let eval = eval_model(&out.online, &out.emas);
    let latents = fixed_latents(eval, config.sample_count, config.seed);
    let mut rows = Vec::new();
    for sampler in method.report_samplers(objective, eval) {
        tch::manual_seed(mix_seed(config.seed, 77));
        let t = Instant::now();
        let mut nfe = 0;
        let x = in_chunks(&latents, objective.grid_chunk(config.batch_size), |l| {
            let sampled = (sampler.sample)(l)?;
            nfe = sampled.nfe;
            // A latent run's samples are decoded (the decoder's time counts).
            Ok(match codec {
                Some(codec) => codec.decode(&sampled.x)?,
                None => sampled.x,
            })
        })?;
        let seconds = t.elapsed().as_secs_f64();
        cm_report::write_samples(&x, &run_dir.join(&sampler.file))?;
        rows.push(SamplerRow {
            label: sampler.label,
            file: sampler.file,
            nfe,
            seconds,
        });
    }
    Ok(rows)
}

fn write_report<M: Method>(
    method: &M,
    out: &TrainOutcome,
    rows: &[SamplerRow],
    measured: &[String],
    run_dir: &Path,
    seconds: f64,
    ranks: usize,
) -> Result<PathBuf> {
    let config = method.config().train();
    let eval = eval_model(&out.online, &out.emas);
    let last = out.losses.last().map(|l| l.1).unwrap_or(f64::NAN);
    let mut md = String::new();
    let _ = writeln!(md, "# {}\n", method.title());
    let batch = if ranks > 1 {
        format!(
            "global batch {} = {ranks} ranks x {} per rank",
            config.batch_size,
            config.batch_size / ranks
        )
    } else {
        format!("batch {}", config.batch_size)
    };
    let _ = writeln!(
        md,
        "- {} steps, {batch}, {:.1} min in this session, final loss {last:.5}",
        out.step,
        seconds / 60.0
    );
    for line in method.describe().iter().chain(measured) {
        let _ = writeln!(md, "- {line}");
    }
    let _ = writeln!(
        md,
        "- optimizer: {}; EMA rates {:?}{}",
        config.optimizer.describe(),
        config.ema_rates,
        if config.ema_warmup {
            " with warm-up"
        } else {
            ""
        }
    );
    if out.online.device() == tch::Device::Cpu {
        let _ = writeln!(md, "- CPU: {}", cm_runtime::describe_current());
    }
    let _ = writeln!(
        md,
        "- network: {} parameters; evaluation weights `{}`\n",
        eval.num_params(),
        final_weights(config).display()
    );
    let _ = writeln!(
        md,
        "| sampler | NFE | seconds for {} samples | samples |",
        config.sample_count
    );
    let _ = writeln!(md, "| --- | ---: | ---: | --- |");
    for r in rows {
        let _ = writeln!(
            md,
            "| {} | {} | {:.2} | ![{}]({}) |",
            r.label, r.nfe, r.seconds, r.label, r.file
        );
    }
    let _ = writeln!(
        md,
        "\nLoss curve: ![loss](loss.png). Metrics: `metrics.csv`. Config: `config.toml`. \
         Model card: `{CARD_FILE}`."
    );
    let path = run_dir.join("report.md");
    std::fs::write(&path, md).map_err(TrainError::io("cannot write", &path))?;
    Ok(path)
}

/// Checks that `config` may run in `run_dir` before anything is trained:
/// a fresh run (`resume = false`) refuses a folder that already holds
/// checkpoints, and a resumed one refuses a config that differs from the
/// folder's `config.toml` in anything but the step counts
/// ([`RunConfig::take_steps_of`]): the checkpoints would otherwise continue
/// under settings they were not made with. Methods that train a teacher
/// first call this before the teacher stage.
pub fn check_run_folder<C: RunConfig>(run_dir: &Path, config: &C, resume: bool) -> Result<()> {
    if !resume {
        return refuse_existing_run(run_dir);
    }
    let path = run_dir.join("config.toml");
    if path.is_file() {
        let mut old: C = cm_core::load_toml(&path)?;
        old.take_steps_of(config);
        if old != *config {
            return Err(TrainError::RunFolder {
                path,
                reason: "the config differs from the one this run was started with (only step counts may change); \
                         restore it, or start a new run folder"
                    .into(),
            });
        }
    }
    Ok(())
}

/// Checks the run folder ([`check_run_folder`]), then writes `config` as its
/// `config.toml`.
pub fn write_run_config<C: RunConfig>(run_dir: &Path, config: &C, resume: bool) -> Result<()> {
    check_run_folder(run_dir, config, resume)?;
    std::fs::create_dir_all(run_dir)
        .map_err(TrainError::io("cannot create run folder", run_dir))?;
    let path = run_dir.join("config.toml");
    let text = toml::to_string(config).expect("configs serialize to TOML");
    // Atomically: data-parallel ranks and later stages read it meanwhile.
    Ok(cm_nets::write_atomic(&path, |tmp| {
        std::fs::write(tmp, &text).map_err(|source| cm_nets::NetError::Io {
            action: "cannot write",
            path: tmp.to_path_buf(),
            source,
        })
    })?)
}
