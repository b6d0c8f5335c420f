//! `cm eval`: sample N images from each model card with each step count,
//! measure them in the feature network's space against the test split, and
//! tabulate FID, KID, precision/recall and the IS-like score against NFE and
//! sampling time.
//!
//! ```toml
//! samples = 2000        # N per row
//! seed = 0
//! batch_size = 250
//! [data]
//! kind = "fashion-mnist"
//! [[models]]
//! name = "teacher"
//! card = "runs/teachers/teacher-fd2cb7ceff85b1fb/model.toml"
//! steps = [18, 9, 5, 3]       # EDM: sampler steps (Heun: 2 steps - 1 NFE)
//! [[models]]
//! name = "CD"
//! card = "runs/cd-fmnist/model.toml"
//! steps = [1, 2, 4]           # consistency: 1, 2, 4-step sampling
//! optional = true             # skip (and say so) when the card is missing
//! ```
//!
//! Reference sets: FID against the statistics of the whole test split; KID
//! and precision/recall against N test images drawn with `seed` (the
//! manifold radii depend on the set size, so both sets have N). A "data"
//! row measures N training images the same way: the floor a perfect model
//! would reach at this N (FID is biased upwards at small N).
//!
//! Consistency sampling with k steps uses the card's stored times
//! (`[timesteps]`) when present, otherwise the interior points of the
//! (k+1)-level EDM sampling grid (Karras et al. 2022, Eq. 5), which the
//! table marks as "Karras times".

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::time::Instant;

use serde::{Deserialize, Serialize};
use tch::{Device, Kind, Tensor};

use cm_core::{Conditioning, CoreError, Solver, Validate};
use cm_data::{DataSource, Dataset, ImageDataset};
use cm_sample::{
    check_taus, consistency_sample, edm_sample, EdmSampler, ModelCard, SamplingGrid, TauSource,
};

use crate::classifier::{
    feature_space, images_to_float, ClassifierCard, ClassifierConfig, FeatureNet,
};
use crate::error::{EvalError, Result};
use crate::frechet::{frechet_distance, FeatureStats};
use crate::inception_score::{inception_score, InceptionScore};
use crate::kid::{kid, Kid, KidConfig, SplitMix64};
use crate::precision_recall::{precision_recall, DEFAULT_K};
use crate::progress::Progress;
use crate::row_cache::{
    model_identity, read_cached_row, row_key, write_cached_row, RowShape, SampledRow,
};
use crate::style::style_dataset;

pub use crate::row_cache::GRID_IMAGES;

/// One model to evaluate.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ModelEntry {
    /// Name in the table.
    pub name: String,
    /// Its model card (`model.toml`); a relative path is taken from the
    /// current folder.
    pub card: PathBuf,
    /// Step counts: consistency steps, or EDM sampler steps.
    pub steps: Vec<usize>,
    /// EDM only: the solver (default: the card's).
    #[serde(default)]
    pub solver: Option<Solver>,
    /// EDM only: ancestral (DDPM-like) sampling with `solver = "euler"`
    /// (default: the card's).
    #[serde(default)]
    pub ancestral: Option<bool>,
    /// Skip the model, noting it in the results, when the card is missing.
    #[serde(default)]
    pub optional: bool,
    /// Samples per row of this model (default: the config's `samples`),
    /// e.g. fewer for a 256-NFE sampler.
    #[serde(default)]
    pub samples: Option<usize>,
    /// Whether the method needs a trained teacher (the table's "teacher"
    /// column; omitted: "-").
    #[serde(default)]
    pub teacher: Option<bool>,
    /// Classifier-free guidance scale `w` (LCM's form `D_c + w (D_c -
    /// D_u)`) for a class-conditional model: around the denoiser (two
    /// evaluations each), or for an LCM card (`guidance` in the card) its
    /// embedded `w` (default: the card's). Omitted: no guidance.
    #[serde(default)]
    pub guidance: Option<f64>,
    /// Run folders whose training wall time the table reports, summed over
    /// each folder's `metrics.csv` and those of its direct subfolders (PD's
    /// stages), and over resumed sessions.
    #[serde(default)]
    pub training: Vec<PathBuf>,
    /// LoRA adapters stacked on those the card lists, each `{ file, weight
    /// }` (a style adapter on an LCM-LoRA card); one naming an adapter the
    /// card lists sets its weight (LCM-LoRA's `lambda` grid).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub lora: Vec<cm_sample::LoraRef>,
    /// Consistency cards only: the intermediate times of the row with
    /// `taus.len() + 1` steps, in place of the card's stored ones (e.g.
    /// `[2.4]` for 2 steps), so that one config puts a card's stored times
    /// beside searched or published ones. Decreasing, inside
    /// `(sigma_min, sigma_max)`; that step count must be in `steps`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub taus: Vec<f64>,
    /// Consistency cards only: where sampling starts (1-step sampling
    /// `f(T z, T)`, and the first step of k-step sampling), in place of the
    /// card's `sigma_max`: e.g. 80, CM's start, on a card whose search
    /// stored another (`[search] start_lower`). Above the card's
    /// `sigma_min`, at most [`MAX_START`].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub start: Option<f64>,
}

/// Largest `start` of a model row (the EDM and CM papers' `sigma_max` is
/// 80; far above it the network is extrapolating).
pub const MAX_START: f64 = 1000.0;

impl ModelEntry {
    /// Samples per row of this model.
    pub fn samples_or(&self, default: usize) -> usize {
        self.samples.unwrap_or(default)
    }
}

/// The `cm eval` config (`configs/eval/*.toml`).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EvalConfig {
    /// The data set whose test split is the reference.
    #[serde(default)]
    pub data: DataSource,
    /// Samples per row (N).
    #[serde(default = "default_samples")]
    pub samples: usize,
    /// Seed of latents, reference subsets and KID subsets.
    #[serde(default)]
    pub seed: u64,
    /// Samples per sampler call.
    #[serde(default = "default_batch")]
    pub batch_size: usize,
    /// Neighbourhood size of precision/recall (Kynkäänniemi et al.: 3).
    #[serde(default = "default_k")]
    pub k: usize,
    /// Splits of the IS-like score.
    #[serde(default = "default_is_splits")]
    pub is_splits: usize,
    /// Also measure N training images (the "data" row).
    #[serde(default = "default_true")]
    pub data_row: bool,
    /// The feature network.
    #[serde(default)]
    pub classifier: ClassifierConfig,
    /// KID subsets.
    #[serde(default)]
    pub kid: KidConfig,
    /// The unstyled data set when `data` is a style of it (LCM-LoRA's style
    /// check): each row gets a style score, the share of its samples a small
    /// classifier (the feature CNN trained to tell `data` from this,
    /// [`crate::style_dataset`]; cached) assigns to `data`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub style_base: Option<DataSource>,
    /// The models.
    pub models: Vec<ModelEntry>,
}

fn default_samples() -> usize {
    2000
}
fn default_batch() -> usize {
    250
}
fn default_k() -> usize {
    DEFAULT_K
}
fn default_is_splits() -> usize {
    10
}
fn default_true() -> bool {
    true
}

impl Validate for EvalConfig {
    fn validate(&self) -> cm_core::Result<()> {
        if self.samples < 2 || self.samples <= self.k || self.samples < self.is_splits {
            return Err(CoreError::invalid(
                "samples",
                self.samples,
                format!(
                    "at least 2, more than k = {} and at least is_splits = {}",
                    self.k, self.is_splits
                ),
            ));
        }
        if self.batch_size == 0 {
            return Err(CoreError::invalid("batch_size", 0, "at least 1"));
        }
        if self.k == 0 {
            return Err(CoreError::invalid("k", 0, "at least 1"));
        }
        if self.is_splits == 0 {
            return Err(CoreError::invalid("is_splits", 0, "at least 1"));
        }
        if matches!(self.data, DataSource::Toy(_)) {
            return Err(CoreError::invalid(
                "data.kind",
                "toy",
                "an image data set (2-D toys use cm_eval::toy)",
            ));
        }
        self.classifier.validate_at("classifier.")?;
        self.kid.validate_at("kid.")?;
        if self.models.is_empty() {
            return Err(CoreError::invalid(
                "models",
                "[]",
                "at least one [[models]] entry",
            ));
        }
        for (i, m) in self.models.iter().enumerate() {
            if m.name.trim().is_empty() {
                return Err(CoreError::invalid(
                    format!("models[{i}].name"),
                    "\"\"",
                    "a non-empty name",
                ));
            }
            if let Some(n) = m.samples {
                if n < 2 || n <= self.k || n < self.is_splits {
                    return Err(CoreError::invalid(
                        format!("models[{i}].samples"),
                        n,
                        format!(
                            "at least 2, more than k = {} and at least is_splits = {}",
                            self.k, self.is_splits
                        ),
                    ));
                }
            }
            if let Some(w) = m.guidance {
                cm_core::check_guidance_scale(format!("models[{i}].guidance"), w)?;
            }
            if m.steps.is_empty() || m.steps.contains(&0) {
                return Err(CoreError::invalid(
                    format!("models[{i}].steps"),
                    format!("{:?}", m.steps),
                    "a non-empty list of step counts >= 1",
                ));
            }
            if let Some(t) = m.start {
                if !(t > 0.0 && t <= MAX_START) {
                    return Err(CoreError::invalid(
                        format!("models[{i}].start"),
                        t,
                        format!("a time in (0, {MAX_START}] (above the card's sigma_min)"),
                    ));
                }
            }
            if !m.taus.is_empty() {
                if m.taus.len() >= cm_sample::MAX_SAMPLER_STEPS {
                    return Err(CoreError::invalid(
                        format!("models[{i}].taus"),
                        format!("{} times", m.taus.len()),
                        format!("fewer than {} times", cm_sample::MAX_SAMPLER_STEPS),
                    ));
                }
                if !m.steps.contains(&(m.taus.len() + 1)) {
                    return Err(CoreError::invalid(
                        format!("models[{i}].taus"),
                        format!("{:?}", m.taus),
                        format!(
                            "the times of one of the rows' step counts {:?} ({} times are for {} steps)",
                            m.steps,
                            m.taus.len(),
                            m.taus.len() + 1
                        ),
                    ));
                }
            }
        }
        Ok(())
    }
}

/// One row of the results table.
#[derive(Clone, Debug, PartialEq)]
pub struct EvalRow {
    /// Model name (`data` for the training-split row).
    pub model: String,
    /// Sampler description.
    pub sampler: String,
    /// Sampler steps (0 for data).
    pub steps: usize,
    /// Network evaluations per sample (0 for data).
    pub nfe: usize,
    /// FID in the feature network's space, against the test split.
    pub fid: f64,
    /// KID (unbiased MMD^2 with the cubic kernel), mean and std over subsets.
    pub kid: Kid,
    /// Precision (Kynkäänniemi et al.).
    pub precision: f64,
    /// Recall.
    pub recall: f64,
    /// IS-like score from the classifier.
    pub is: InceptionScore,
    /// Sampling wall time per sample in seconds (feature extraction
    /// excluded; 0 for data).
    pub seconds_per_sample: f64,
    /// File name of its sample grid.
    pub grid: String,
    /// Samples behind the row (N).
    pub samples: usize,
    /// Whether the method needs a teacher, if the config says.
    pub needs_teacher: Option<bool>,
    /// Training wall time of the model's runs in seconds, if known.
    pub training_seconds: Option<f64>,
    /// Whether the samples' features came from the cache.
    pub cached: bool,
    /// Top-1 accuracy of the feature classifier against the requested
    /// class (class-conditional samples; the data row: against the labels).
    pub class_accuracy: Option<f64>,
    /// The share of samples in `data`'s style (with `style_base`).
    pub style_score: Option<f64>,
}

/// What [`evaluate`] returns.
#[derive(Debug)]
pub struct EvalOutput {
    /// The rows, in config order (data first).
    pub rows: Vec<EvalRow>,
    /// First [`GRID_IMAGES`] samples of each row (in [-1, 1], CPU).
    pub grids: Vec<Tensor>,
    /// Models skipped, with the reason.
    pub skipped: Vec<(String, String)>,
    /// The feature network's card.
    pub classifier: ClassifierCard,
    /// Its cache folder.
    pub classifier_dir: PathBuf,
    /// Test images behind the FID statistics.
    pub reference_images: i64,
    /// Samples per row.
    pub samples: usize,
    /// Notes on the samplers (default times).
    pub notes: Vec<String>,
    /// The style classifier's held-out accuracy on both test splits (with
    /// `style_base`).
    pub style_accuracy: Option<f64>,
    /// Device the run used.
    pub device: String,
}

fn grid_name(model: &str, sampler_tag: &str) -> String {
    let clean: String = format!("{model}-{sampler_tag}")
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' {
                c.to_ascii_lowercase()
            } else {
                '_'
            }
        })
        .collect();
    format!("samples_{clean}.png")
}

/// Metrics of generated (or data) features against the reference.
struct Scorer<'a> {
    stats: &'a FeatureStats,
    /// Test-split features, all of them.
    test: &'a Tensor,
    /// The reference subsets of KID and precision/recall, one per N.
    real: HashMap<usize, Tensor>,
    config: &'a EvalConfig,
}

impl Scorer<'_> {
    /// `n` test features for KID and precision/recall (both sets of the
    /// same size: the manifold radii depend on it). The config's N keeps
    /// the draw it always had; other N get their own seeded draw.
    fn real(&mut self, n: usize, rng: &mut SplitMix64) -> Tensor {
        let test_len = self.test.size()[0] as usize;
        self.real
            .entry(n)
            .or_insert_with(|| {
                let idx = if n == self.config.samples {
                    rng.choose(test_len, n)
                } else {
                    SplitMix64(self.config.seed ^ 0x7265_616c ^ n as u64).choose(test_len, n)
                };
                self.test.index_select(0, &Tensor::from_slice(&idx))
            })
            .shallow_clone()
    }

    fn score(
        &self,
        features: &Tensor,
        logits: &Tensor,
        real: &Tensor,
    ) -> Result<(f64, Kid, f64, f64, InceptionScore)> {
        let fid = frechet_distance(self.stats, &FeatureStats::from_features(features)?)?;
        let k = kid(real, features, &self.config.kid)?;
        let pr = precision_recall(real, features, self.config.k)?;
        let is = inception_score(logits, self.config.is_splits)?;
        Ok((fid, k, pr.precision, pr.recall, is))
    }
}

/// The data set's images, or an error naming the source.
fn image_dataset(config: &EvalConfig) -> Result<ImageDataset> {
    match config.data.load(None)? {
        Dataset::Images(d) => Ok(d),
        Dataset::Points(_) | Dataset::Latents(_) => Err(EvalError::InvalidInput(
            "cm eval needs an image data set".into(),
        )),
    }
}

/// Runs the evaluation (module docs). Seeds libtorch's global generator
/// with `config.seed` before each row, so rows start from the same latents.
pub fn evaluate(
    config: &EvalConfig,
    device: Device,
    progress: &mut dyn Progress,
) -> Result<EvalOutput> {
    evaluate_cached(config, device, None, progress)
}

/// [`evaluate`], keeping each row's sample features in `cache` (a folder):
/// a row whose card, weights, sampler, N, seed, batch size, device and
/// feature network are unchanged is scored from its cached features
/// instead of being sampled again (its sampling time is the measured one).
pub fn evaluate_cached(
    config: &EvalConfig,
    device: Device,
    cache: Option<&Path>,
    progress: &mut dyn Progress,
) -> Result<EvalOutput> {
    config.validate()?;
    let data = image_dataset(config)?;
    let sizes = std::iter::once(("samples".to_string(), config.samples)).chain(
        config
            .models
            .iter()
            .enumerate()
            .filter_map(|(i, m)| m.samples.map(|n| (format!("models[{i}].samples"), n))),
    );
    for (field, n) in sizes {
        if data.test.len() < n {
            return Err(EvalError::InvalidInput(format!(
                "{field} = {n} but the test split of {} has only {} images",
                data.name,
                data.test.len()
            )));
        }
    }
    if data.skipped_rows > 0 {
        progress.message(&config.data.skipped_message(data.skipped_rows));
    }
    let space = feature_space(&data, &config.classifier, None, device, progress)?;
    let n = config.samples;
    let mut rng = SplitMix64(config.seed ^ 0x7265_6665_7265_6e63);
    let mut scorer = Scorer {
        stats: &space.reference.stats,
        test: &space.reference.features,
        real: HashMap::new(),
        config,
    };
    // Drawn first, as always: the data row's subset comes after it.
    let _ = scorer.real(n, &mut rng);
    let classifier_id = format!(
        "{}|{}",
        space.dir.display(),
        toml::to_string(&space.card).unwrap_or_default()
    );
    let shape: Vec<i64> = data.shape().iter().map(|&s| s as i64).collect();
    let style = match &config.style_base {
        Some(base) => {
            let Dataset::Images(base) = base.load(None)? else {
                return Err(EvalError::InvalidInput(
                    "style_base: expected an image data set".into(),
                ));
            };
            let two = style_dataset(&data, &base)?;
            let space = feature_space(&two, &config.classifier, None, device, progress)?;
            progress.message(&format!(
                "style classifier ({}): held-out accuracy {:.2}%",
                two.name,
                100.0 * space.card.test_accuracy
            ));
            Some(space)
        }
        None => None,
    };
    // Part of every row's cache key when on: rows without a style score
    // are not reused for one.
    let style_id = style
        .as_ref()
        .map(|s| {
            format!(
                "style {}|{}",
                s.dir.display(),
                toml::to_string(&s.card).unwrap_or_default()
            )
        })
        .unwrap_or_default();
    let style_net = style.as_ref().map(|s| &s.net);
    let mut rows = Vec::new();
    let mut grids = Vec::new();
    let mut skipped = Vec::new();
    let mut notes = Vec::new();

    if config.data_row {
        let idx: Vec<usize> = rng
            .choose(data.train.len(), n)
            .into_iter()
            .map(|i| i as usize)
            .collect();
        let subset = data.train.select(&idx)?;
        let images = images_to_float(&subset.to_tensor());
        let (f, l) = space.net.features(&images)?;
        let real = scorer.real(n, &mut rng);
        let (fid, k, p, r, is) = scorer.score(&f, &l, &real)?;
        let grid = grid_name("data", "train");
        rows.push(EvalRow {
            model: "data".into(),
            sampler: format!("{n} training images"),
            steps: 0,
            nfe: 0,
            fid,
            kid: k,
            precision: p,
            recall: r,
            is,
            seconds_per_sample: 0.0,
            grid,
            samples: n,
            needs_teacher: None,
            training_seconds: None,
            cached: false,
            class_accuracy: subset.labels_tensor().map(|labels| top1(&l, &labels)),
            style_score: style_net.map(|net| style_share(net, &images)).transpose()?,
        });
        grids.push(images.narrow(0, 0, GRID_IMAGES.min(n as i64)));
    }

    for (index, entry) in config.models.iter().enumerate() {
        if !entry.card.is_file() {
            let reason = format!("card {} not found", entry.card.display());
            if entry.optional {
                progress.message(&format!("skipping {}: {reason}", entry.name));
                skipped.push((entry.name.clone(), reason));
                continue;
            }
            return Err(EvalError::InvalidInput(format!(
                "model `{}`: {reason} (mark it `optional = true` to skip it)",
                entry.name
            )));
        }
        let mut card = ModelCard::load(&entry.card)?;
        card.push_lora(&entry.lora)?;
        if let Some(start) = entry.start {
            card = match &card {
                ModelCard::Consistency {
                    consistency,
                    scheduler: None,
                    timesteps,
                    ..
                } if start > consistency.sigma_min => {
                    let dropped: Vec<&String> = timesteps
                        .iter()
                        .filter(|(_, taus)| taus.iter().any(|&t| t >= start))
                        .map(|(k, _)| k)
                        .collect();
                    if !dropped.is_empty() {
                        notes.push(format!(
                            "`{}` starts at {start}: the card's stored times for {dropped:?} steps \
                             are not below it and were not used",
                            entry.name
                        ));
                    }
                    crate::timestep_search::with_start(&card, start)
                }
                _ => {
                    return Err(CoreError::invalid(
                        format!("models[{index}].start"),
                        start,
                        format!(
                            "a start time above the card's sigma_min, on a consistency card with \
                             continuous times (`{}` is {})",
                            entry.name,
                            match &card {
                                ModelCard::Edm { .. } => "an EDM card".to_string(),
                                ModelCard::Consistency {
                                    scheduler: Some(_), ..
                                } => "a diffusers card".to_string(),
                                c => format!("sigma_min {}", c.range().sigma_min),
                            }
                        ),
                    )
                    .into())
                }
            };
        }
        let model = card.load_model(device)?;
        // A latent model's samples are decoded by its autoencoder.
        let codec = card.load_codec(device)?;
        let model_shape = match &codec {
            Some(codec) => codec.image_shape(),
            None => model.config().sample_shape(),
        };
        if model_shape != shape {
            return Err(EvalError::InvalidInput(format!(
                "model `{}` makes samples {:?} but {} images are {:?}",
                entry.name, model_shape, data.name, shape
            )));
        }
        let n = entry.samples_or(config.samples);
        let real = scorer.real(n, &mut rng);
        let training_seconds = training_seconds(&entry.training);
        // The card and its weights, read once per model for the cache keys.
        let identity = match cache {
            Some(_) => Some(model_identity(&entry.card, &card)?),
            None => None,
        };
        let num_classes = model.config().num_classes() as i64;
        for &steps in &entry.steps {
            let (plan, mut sampler, tag) = plan_row(&card, entry, index, steps, &mut notes)?;
            if let Some(w) = entry.guidance.or(card.embedded_guidance()) {
                sampler.push_str(&format!(", guidance w = {w}"));
            }
            if let Some(start) = entry.start {
                sampler.push_str(&format!(", start T = {start}"));
            }
            let key = identity.as_ref().map(|id| {
                let mut sampler_id = format!(
                    "{plan:?}|{steps}|{n}|{}|{}|{device:?}|{:?}",
                    config.seed, config.batch_size, entry.guidance
                );
                // The card file's text is in `id`; a start set here is not
                // (rows without one keep their keys).
                if let Some(start) = entry.start {
                    sampler_id.push_str(&format!("|start {start}"));
                }
                let mut parts: Vec<&[u8]> = vec![
                    id.as_bytes(),
                    sampler_id.as_bytes(),
                    classifier_id.as_bytes(),
                ];
                if !style_id.is_empty() {
                    parts.push(style_id.as_bytes());
                }
                row_key(&parts)
            });
            let cache_file = cache
                .zip(key)
                .map(|(dir, key)| dir.join(format!("row-{key:016x}.safetensors")));
            let row_shape = RowShape {
                n,
                features: space.reference.features.size()[1],
                classes: space.card.num_classes,
                image: &shape,
            };
            let hit = cache_file
                .as_deref()
                .and_then(|path| read_cached_row(path, row_shape, progress));
            let cached = hit.is_some();
            let row = match hit {
                Some(row) => {
                    progress.message(&format!("{}: {sampler} (cached features)", entry.name));
                    row
                }
                None => {
                    progress.message(&format!("{}: {sampler}", entry.name));
                    let row = sample_row(
                        &card,
                        &model,
                        &plan,
                        SampleSetup {
                            name: &entry.name,
                            n,
                            shape: &model.config().sample_shape(),
                            num_classes,
                            config,
                            device,
                            codec: codec.as_ref(),
                            guidance: entry.guidance,
                        },
                        &space.net,
                        style_net,
                        progress,
                    )?;
                    if let Some(path) = &cache_file {
                        write_cached_row(path, &row)?;
                    }
                    row
                }
            };
            let (fid, k, p, r, is) = scorer.score(&row.features, &row.logits, &real)?;
            progress.message(&format!(
                "{} {sampler}: NFE {}, FID {fid:.3}, KID {:.4}, P {p:.3}, R {r:.3}",
                entry.name, row.nfe, k.mean
            ));
            rows.push(EvalRow {
                model: entry.name.clone(),
                sampler,
                steps,
                nfe: row.nfe,
                fid,
                kid: k,
                precision: p,
                recall: r,
                is,
                seconds_per_sample: row.sampling_seconds / n as f64,
                grid: grid_name(&entry.name, &tag),
                samples: n,
                needs_teacher: entry.teacher,
                training_seconds,
                cached,
                class_accuracy: row.class_accuracy,
                style_score: row.style_score,
            });
            grids.push(row.grid);
        }
    }
    Ok(EvalOutput {
        rows,
        grids,
        skipped,
        classifier: space.card,
        classifier_dir: space.dir,
        reference_images: space.reference.stats.n,
        samples: n,
        notes,
        style_accuracy: style.as_ref().map(|s| s.card.test_accuracy),
        device: format!("{device:?}"),
    })
}

/// How one row samples.
#[derive(Debug)]
enum Plan {
    /// Consistency sampling at these intermediate times.
    Consistency(Vec<f64>),
    /// A diffusion sampler.
    Edm(EdmSampler),
}

/// The sampler of row `steps` of `entry`: the plan, its description and a
/// file tag. Consistency rows without stored times add a note.
fn plan_row(
    card: &ModelCard,
    entry: &ModelEntry,
    index: usize,
    steps: usize,
    notes: &mut Vec<String>,
) -> Result<(Plan, String, String)> {
    Ok(match card {
        ModelCard::Consistency { .. } => {
            for (field, set) in [
                ("solver", entry.solver.is_some()),
                ("ancestral", entry.ancestral.is_some()),
            ] {
                if set {
                    return Err(CoreError::invalid(
                        format!("models[{index}].{field}"),
                        "set",
                        format!(
                            "no value: `{}` is a consistency model (the field is for EDM cards)",
                            entry.name
                        ),
                    )
                    .into());
                }
            }
            let given = !entry.taus.is_empty() && steps == entry.taus.len() + 1;
            let (taus, how) = if given {
                let range = card.range();
                check_taus(&entry.taus, range.sigma_min, range.sigma_max).map_err(|e| {
                    CoreError::invalid(
                        format!("models[{index}].taus"),
                        format!("{:?}", entry.taus),
                        format!("times the card's model can sample at ({e})"),
                    )
                })?;
                (entry.taus.clone(), "given times")
            } else {
                match card.taus_or_karras(steps)? {
                    (t, TauSource::Stored) => (t, if steps == 1 { "" } else { "stored times" }),
                    (taus, TauSource::Karras) => {
                        notes.push(format!(
                        "`{}` {steps}-step: the card stores no times; used the interior points of the {}-level EDM sampling grid, {:?}",
                        entry.name,
                        steps + 1,
                        taus.iter().map(|t| (t * 1000.0).round() / 1000.0).collect::<Vec<_>>()
                    ));
                        (taus, "Karras times")
                    }
                    (taus, TauSource::Scheduler) => (taus, "scheduler times"),
                }
            };
            let desc = if steps == 1 {
                "consistency, 1 step".to_string()
            } else {
                let times = taus
                    .iter()
                    .map(|t| format!("{t:.3}"))
                    .collect::<Vec<_>>()
                    .join(", ");
                format!("consistency, {steps} steps ({how}: {times})")
            };
            (Plan::Consistency(taus), desc, format!("{steps}step"))
        }
        ModelCard::Edm { sampler, .. } => {
            let s = EdmSampler {
                steps,
                solver: entry.solver.unwrap_or(sampler.solver),
                ancestral: entry.ancestral.unwrap_or(sampler.ancestral),
                ..*sampler
            };
            s.validate_at(&format!("models[{index}]."))?;
            let tag = match (s.ancestral, s.grid, s.solver) {
                (true, _, _) => "ancestral",
                (false, SamplingGrid::Progressive, _) => "pd",
                (false, SamplingGrid::Karras, Solver::Euler) => "euler",
                (false, SamplingGrid::Karras, Solver::Heun) => "heun",
            };
            (
                Plan::Edm(s),
                format!("EDM {}", s.describe()),
                format!("{tag}{steps}"),
            )
        }
    })
}

/// What sampling a row needs besides the model and the plan.
struct SampleSetup<'a> {
    name: &'a str,
    n: usize,
    shape: &'a [i64],
    num_classes: i64,
    config: &'a EvalConfig,
    device: Device,
    /// The autoencoder of a latent model.
    codec: Option<&'a cm_sample::LatentCodec>,
    /// The row's guidance scale.
    guidance: Option<f64>,
}

/// Samples `setup.n` images in batches from latents seeded by the config's
/// seed, and extracts their features.
fn sample_row(
    card: &ModelCard,
    model: &cm_nets::Model,
    plan: &Plan,
    setup: SampleSetup<'_>,
    net: &FeatureNet,
    style_net: Option<&FeatureNet>,
    progress: &mut dyn Progress,
) -> Result<SampledRow> {
    let SampleSetup {
        name,
        n,
        shape,
        num_classes,
        config,
        device,
        codec,
        guidance,
    } = setup;
    tch::manual_seed(config.seed as i64);
    let plain = card.denoiser(model);
    // An LCM embeds w; other class-conditional models are guided around
    // the denoiser (two evaluations each).
    let embedded = card.embedded_guidance().map(|d| guidance.unwrap_or(d));
    let guided = match guidance.filter(|_| embedded.is_none()) {
        Some(w) => {
            let null = model.null_class().ok_or_else(|| {
                EvalError::InvalidInput(format!(
                    "model `{name}`: guidance needs a class-conditional model with a null class"
                ))
            })?;
            Some(cm_core::ClassifierFreeGuidance::new(
                plain.as_ref(),
                w,
                null,
            )?)
        }
        None => None,
    };
    let evaluations = guided
        .as_ref()
        .map_or(1, cm_core::ClassifierFreeGuidance::evaluations_per_call);
    let denoiser: &dyn cm_core::Denoiser = match &guided {
        Some(g) => g,
        None => plain.as_ref(),
    };
    let (mut feats, mut logits) = (Vec::new(), Vec::new());
    let mut grid: Option<Tensor> = None;
    let mut sampling_seconds = 0.0;
    let mut nfe = 0;
    let mut correct = 0.0;
    let mut styled = 0.0;
    progress.start(name, n as u64);
    let mut done = 0usize;
    while done < n {
        let b = config.batch_size.min(n - done) as i64;
        let mut latent_shape = vec![b];
        latent_shape.extend(shape);
        let latents = Tensor::randn(&latent_shape, (Kind::Float, device));
        // Balanced classes: sample i gets class i mod K (the test splits of
        // the class-labelled data sets are balanced), so a grid of K columns
        // is a grid per class.
        let class = (num_classes > 0).then(|| {
            Tensor::arange_start(done as i64, done as i64 + b, (Kind::Int64, device))
                .remainder(num_classes)
        });
        let started = Instant::now();
        // LCM: a network that embeds w gets the card's default scale.
        let w = embedded.map(|w| Tensor::full([b], w, (Kind::Float, device)));
        let mut cond = Conditioning::from_class(class.as_ref());
        if let Some(w) = &w {
            cond = cond.with_guidance(w);
        }
        let sampled = match plan {
            Plan::Consistency(taus) => {
                consistency_sample(denoiser, &latents, card.range(), taus, cond)?
            }
            Plan::Edm(s) => {
                let grid = match card {
                    ModelCard::Edm { edm, .. } => edm.grid(),
                    ModelCard::Consistency { consistency, .. } => consistency.grid(),
                };
                edm_sample(denoiser, &latents, &grid, s, cond)?
            }
        };
        let x = match codec {
            Some(codec) => codec.decode(&sampled.x)?,
            None => sampled.x,
        };
        let x = x.clamp(-1.0, 1.0).to_device(Device::Cpu);
        sampling_seconds += started.elapsed().as_secs_f64();
        nfe = sampled.nfe * evaluations;
        let (f, l) = net.features(&x)?;
        if let Some(style_net) = style_net {
            styled += style_share(style_net, &x)? * b as f64;
        }
        if let Some(class) = &class {
            correct += top1(&l, &class.to_device(Device::Cpu)) * b as f64;
        }
        feats.push(f);
        logits.push(l);
        let have = grid.as_ref().map_or(0, |g| g.size()[0]);
        if have < GRID_IMAGES {
            let more = x.narrow(0, 0, (GRID_IMAGES - have).min(b));
            grid = Some(match grid {
                Some(g) => Tensor::cat(&[g, more], 0),
                None => more,
            });
        }
        done += b as usize;
        progress.advance(b as u64);
    }
    progress.finish();
    Ok(SampledRow {
        features: Tensor::cat(&feats, 0),
        logits: Tensor::cat(&logits, 0),
        grid: grid.unwrap_or_else(|| Tensor::zeros([0], (Kind::Float, Device::Cpu))),
        nfe,
        sampling_seconds,
        class_accuracy: (num_classes > 0).then(|| correct / n as f64),
        style_score: style_net.map(|_| styled / n as f64),
    })
}

/// The share of `images` the style classifier calls the style (class 1).
fn style_share(net: &FeatureNet, images: &Tensor) -> Result<f64> {
    let (_, logits) = net.features(images)?;
    let ones = Tensor::ones([images.size()[0]], (Kind::Int64, Device::Cpu));
    Ok(top1(&logits, &ones))
}

/// The share of `logits` `[N, K]` whose top class is `labels` `[N]`.
fn top1(logits: &Tensor, labels: &Tensor) -> f64 {
    let hits = logits
        .argmax(1, false)
        .eq_tensor(&labels.to_kind(Kind::Int64));
    f64::try_from(hits.to_kind(Kind::Double).mean(Kind::Double)).unwrap_or(f64::NAN)
}

/// Training wall time of run folders in seconds: for each `metrics.csv` in
/// a folder or its direct subfolders (PD's stages), the sum over sessions
/// of each session's last `elapsed_s` (a resumed session starts its clock
/// at 0 again). `None` when no folder has a metrics file.
pub fn training_seconds(dirs: &[PathBuf]) -> Option<f64> {
    let mut files = Vec::new();
    for dir in dirs {
        files.push(dir.join("metrics.csv"));
        if let Ok(entries) = std::fs::read_dir(dir) {
            let mut subs: Vec<PathBuf> = entries
                .flatten()
                .map(|e| e.path().join("metrics.csv"))
                .collect();
            subs.sort();
            files.extend(subs);
        }
    }
    let mut total = None;
    for file in files.iter().filter(|f| f.is_file()) {
        let Ok(text) =
            cm_core::read_bounded_text(file, cm_core::MAX_METRICS_BYTES, "a metrics.csv")
        else {
            continue;
        };
        let mut sum = 0.0;
        let mut last = 0.0f64;
        for line in text.lines().skip(1) {
            let Some(elapsed) = line.split(',').nth(4).and_then(|v| v.parse::<f64>().ok()) else {
                continue;
            };
            if elapsed < last {
                sum += last;
            }
            last = elapsed;
        }
        *total.get_or_insert(0.0) += sum + last;
    }
    total
}

/// The results as CSV (RFC 4180: one header line, one line per row, text
/// fields quoted; `teacher` is `yes`, `no` or empty, `training_s` and
/// `class_accuracy` and `style_score` (in [0, 1]) empty when unknown).
pub fn results_csv(out: &EvalOutput) -> String {
    let mut s = String::from(
        "model,sampler,steps,nfe,fid,kid,kid_std,precision,recall,is,is_std,seconds_per_sample,samples,teacher,training_s,class_accuracy,style_score\n",
    );
    for r in &out.rows {
        s.push_str(&format!(
            "{},{},{},{},{:.6},{:.6},{:.6},{:.4},{:.4},{:.4},{:.4},{:.6},{},{},{},{},{}\n",
            csv_text(&r.model),
            csv_text(&r.sampler),
            r.steps,
            r.nfe,
            r.fid,
            r.kid.mean,
            r.kid.std,
            r.precision,
            r.recall,
            r.is.mean,
            r.is.std,
            r.seconds_per_sample,
            r.samples,
            match r.needs_teacher {
                Some(true) => "yes",
                Some(false) => "no",
                None => "",
            },
            r.training_seconds
                .map(|t| format!("{t:.1}"))
                .unwrap_or_default(),
            r.class_accuracy
                .map(|a| format!("{a:.4}"))
                .unwrap_or_default(),
            r.style_score.map(|a| format!("{a:.4}")).unwrap_or_default()
        ));
    }
    s
}

/// A CSV text field, quoted with inner quotes doubled (model names such as
/// "teacher, w = 1" hold commas).
fn csv_text(text: &str) -> String {
    format!("\"{}\"", text.replace('"', "\"\""))
}

/// Minutes (or seconds under one minute) for the table.
fn duration(seconds: f64) -> String {
    if seconds < 60.0 {
        format!("{seconds:.0} s")
    } else {
        format!("{:.1} min", seconds / 60.0)
    }
}

/// The results table alone, with its notes (markdown; no set-up lines and
/// no image links, so it can be pasted into other documents).
pub fn results_table(out: &EvalOutput) -> String {
    let mut s = String::from(
        "| model | sampler | steps | NFE | N | FID | KID x 1e3 | precision | recall | IS-like | teacher | training | s / sample |\n",
    );
    s.push_str("| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | :---: | ---: | ---: |\n");
    for r in &out.rows {
        s.push_str(&format!(
            "| {} | {} | {} | {} | {} | {:.2} | {:.2} ± {:.2} | {:.3} | {:.3} | {:.2} | {} | {} | {} |\n",
            r.model,
            r.sampler,
            r.steps,
            r.nfe,
            r.samples,
            r.fid,
            1e3 * r.kid.mean,
            1e3 * r.kid.std,
            r.precision,
            r.recall,
            r.is.mean,
            match r.needs_teacher {
                Some(true) => "yes",
                Some(false) => "no",
                None => "-",
            },
            r.training_seconds.map(duration).unwrap_or_else(|| "-".into()),
            if r.nfe == 0 {
                "-".to_string()
            } else {
                format!("{:.4}", r.seconds_per_sample)
            }
        ));
    }
    s.push('\n');
    for r in &out.rows {
        if let Some(a) = r.class_accuracy {
            s.push_str(&format!(
                "- class accuracy (the feature classifier's top-1 against the {}): {} / {}: {:.1}%\n",
                if r.nfe == 0 { "labels" } else { "requested class" },
                r.model,
                r.sampler,
                100.0 * a
            ));
        }
    }
    if let Some(a) = out.style_accuracy {
        s.push_str(&format!(
            "- style score: the share of samples a small CNN classifier (style vs base data) \
             calls the data's style (its accuracy on both test splits: {:.2}%)\n",
            100.0 * a
        ));
        for r in &out.rows {
            if let Some(v) = r.style_score {
                s.push_str(&format!(
                    "- style score: {} / {}: {:.1}%\n",
                    r.model,
                    r.sampler,
                    100.0 * v
                ));
            }
        }
    }
    for note in &out.notes {
        s.push_str(&format!("- {note}\n"));
    }
    for (name, reason) in &out.skipped {
        s.push_str(&format!("- skipped `{name}`: {reason}\n"));
    }
    let cached = out.rows.iter().filter(|r| r.cached).count();
    if cached > 0 {
        s.push_str(&format!(
            "- {cached} of {} rows scored from cached sample features (same card, weights, sampler and N)\n",
            out.rows.len()
        ));
    }
    s
}

/// The results as a markdown report: set-up, the table, notes, grids.
pub fn results_markdown(out: &EvalOutput, command: &str) -> String {
    let c = &out.classifier;
    let mut s = String::from("# Sample quality\n\n");
    s.push_str(&format!(
        "- data: {} test split; FID against its {} images' statistics, KID and precision/recall (k = {}) against N of them\n",
        c.dataset, out.reference_images, DEFAULT_K
    ));
    s.push_str(&format!(
        "- N = {} samples per row unless the N column says otherwise (FID is biased upwards at small N: compare rows of the same N with each other and with the `data` row, not with published numbers)\n",
        out.samples
    ));
    s.push_str(&format!(
        "- feature network: the project's CNN classifier ({}-d features), test accuracy {:.2}%, trained in {:.0} s on {} images (`{}`)\n",
        c.config.features,
        100.0 * c.test_accuracy,
        c.train_seconds,
        c.train_images,
        out.classifier_dir.display()
    ));
    s.push_str("- teacher: whether the method needs a trained diffusion teacher; training: wall time of the model's own runs (CD and PD also need the teacher's)\n");
    s.push_str(&format!(
        "- device: {}; command: `{command}`\n\n",
        out.device
    ));
    s.push_str(&results_table(out));
    s.push_str("\nFID against NFE: ![FID vs NFE](fid_vs_nfe.png)\n\n");
    for r in &out.rows {
        s.push_str(&format!(
            "- {} / {}: ![{}]({})\n",
            r.model, r.sampler, r.model, r.grid
        ));
    }
    s
}

/// Writes `text` to `path` atomically.
pub fn write_text(path: &Path, text: &str) -> Result<()> {
    cm_nets::write_atomic(path, |tmp| {
        std::fs::write(tmp, text).map_err(|source| cm_nets::NetError::Io {
            action: "cannot write",
            path: tmp.to_path_buf(),
            source,
        })
    })?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Splits one CSV line (RFC 4180 quoting) into its fields.
    fn csv_fields(line: &str) -> Vec<String> {
        let (mut fields, mut field, mut quoted) = (Vec::new(), String::new(), false);
        let mut chars = line.chars().peekable();
        while let Some(c) = chars.next() {
            match (c, quoted) {
                ('"', true) if chars.peek() == Some(&'"') => {
                    field.push('"');
                    chars.next();
                }
                ('"', _) => quoted = !quoted,
                (',', false) => fields.push(std::mem::take(&mut field)),
                (c, _) => field.push(c),
            }
        }
        fields.push(field);
        fields
    }

    #[test]
    fn csv_text_fields_keep_commas_and_quotes() {
        let name = "teacher, w = 1.5 \"guided\"";
        let line = format!("{},{},3", csv_text(name), csv_text("EDM Heun, 18 steps"));
        assert_eq!(
            csv_fields(&line),
            vec![name.to_string(), "EDM Heun, 18 steps".into(), "3".into()]
        );
    }

    #[test]
    fn training_time_sums_sessions_and_stage_folders() {
        let dir = tempfile::tempdir().unwrap();
        let header = "step,loss,lr,grad_norm,elapsed_s,steps_per_s\n";
        // Two sessions (resumed at step 3): 20 s + 15 s.
        std::fs::write(
            dir.path().join("metrics.csv"),
            format!("{header}1,1,1,1,10.0,1\n2,1,1,1,20.0,1\n3,1,1,1,5.0,1\n4,1,1,1,15.0,1\n"),
        )
        .unwrap();
        // A stage folder: 7 s more.
        std::fs::create_dir(dir.path().join("steps-002")).unwrap();
        std::fs::write(
            dir.path().join("steps-002/metrics.csv"),
            format!("{header}1,1,1,1,3.0,1\n2,1,1,1,7.0,1\n"),
        )
        .unwrap();
        let total = training_seconds(&[dir.path().to_path_buf()]).unwrap();
        assert!((total - 42.0).abs() < 1e-9, "{total}");
        assert_eq!(training_seconds(&[dir.path().join("missing")]), None);
        assert_eq!(training_seconds(&[]), None);
    }
}
