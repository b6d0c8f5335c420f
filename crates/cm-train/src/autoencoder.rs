//! The autoencoder of latent consistency models, trained on the run
//! skeleton (`cm train-autoencoder`): the latent-diffusion VAE's objective
//! (Rombach et al. 2022, Appendix G; their `LPIPSWithDiscriminator` without
//! the discriminator) per example,
//!
//! `|x - D(z)|_1 + w_p d_feature(x, D(z)) + w_kl KL(q(z|x) || N(0, I))`,
//! `z ~ q(z|x)` by reparameterisation,
//!
//! with the reconstruction and KL terms summed over elements as LDM does
//! and divided by the pixel count (the same ratio, on the scale of a
//! per-pixel loss), `w_kl = 1e-6` as Stable Diffusion's VAE, and the
//! optional perceptual term on the project's feature network (cm-eval's
//! LPIPS-style distance) instead of LPIPS.
//!
//! When the run finishes ([`Method::finish`]) it measures what the latent
//! route needs: the scaling factor `1 / std` of the encoded training
//! latents (Stable Diffusion's `scaling_factor`, written into the card),
//! and on the test split the reconstruction MSE, PSNR and FID in the
//! feature space against the same number of real test images (FID of a
//! finite sample is biased up; the real images show that floor). The
//! reconstruction FID bounds what any model decoded from these latents can
//! reach.

use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicBool;

use serde::{Deserialize, Serialize};
use tch::{Device, Kind, Tensor};

use cm_core::{Conditioning, CoreError, DistanceMetric, MetricConfig, Validate};
use cm_data::{DataSource, Dataset};
use cm_eval::{feature_space, frechet_distance, ClassifierConfig, FeatureStats};
use cm_nets::{Model, NetConfig};
use cm_sample::{AutoencoderCard, LatentCodec, Sampled};

use crate::config::TrainConfig;
use crate::error::{Result, TrainError};
use crate::metric::build_metric;
use crate::objective::{Batch, Objective};
use crate::observer::Observer;
use crate::run::{run, Method, ReportSampler, RunConfig, RunContext, RunOutcome};
use crate::source::LoaderOptions;

/// Training images encoded to measure the scaling factor.
pub const SCALING_IMAGES: usize = 4096;
/// Test images reconstructed for the error and the FID.
pub const RECONSTRUCTION_IMAGES: usize = 2000;

/// The pixel distance of the reconstruction term.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Reconstruction {
    /// `|x - x^|` (LDM).
    #[default]
    L1,
    /// `(x - x^)^2`.
    L2,
}

/// Settings of the autoencoder objective (`[autoencoder]`).
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AutoencoderObjectiveConfig {
    /// The pixel distance.
    pub reconstruction: Reconstruction,
    /// Weight of the KL term (Stable Diffusion's VAE: 1e-6).
    pub kl_weight: f64,
    /// Weight of the feature-space perceptual distance (0: off; LDM uses
    /// 1 with LPIPS). Needs image data with a feature network (trained on
    /// first use and cached, as for `cm eval`).
    pub perceptual_weight: f64,
}

impl Default for AutoencoderObjectiveConfig {
    fn default() -> Self {
        AutoencoderObjectiveConfig {
            reconstruction: Reconstruction::L1,
            kl_weight: 1e-6,
            perceptual_weight: 0.0,
        }
    }
}

impl AutoencoderObjectiveConfig {
    /// Checks the ranges; `prefix` is the dotted path of the section.
    pub fn validate_at(&self, prefix: &str) -> cm_core::Result<()> {
        for (name, value) in [
            ("kl_weight", self.kl_weight),
            ("perceptual_weight", self.perceptual_weight),
        ] {
            if !(value.is_finite() && (0.0..=1e3).contains(&value)) {
                return Err(CoreError::invalid(
                    format!("{prefix}{name}"),
                    value,
                    "a weight in [0, 1000]",
                ));
            }
        }
        Ok(())
    }
}

/// An autoencoder run: `[data]`, `[loader]`, `[net]` (`arch =
/// "autoencoder"`), `[train]`, `[autoencoder]` (see
/// `configs/autoencoder/*.toml`).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AutoencoderRunConfig {
    /// The image data set.
    #[serde(default)]
    pub data: DataSource,
    /// Flip and padding.
    #[serde(default)]
    pub loader: LoaderOptions,
    /// The network (`arch = "autoencoder"`).
    pub net: NetConfig,
    /// Loop settings.
    #[serde(default)]
    pub train: TrainConfig,
    /// The objective.
    #[serde(default)]
    pub autoencoder: AutoencoderObjectiveConfig,
}

impl Validate for AutoencoderRunConfig {
    fn validate(&self) -> cm_core::Result<()> {
        self.net.validate()?;
        if !self.net.is_autoencoder() {
            return Err(CoreError::invalid(
                "net.arch",
                self.net.arch(),
                "\"autoencoder\" (cm train-autoencoder trains an autoencoder)",
            ));
        }
        if matches!(self.data, DataSource::Toy(_)) {
            return Err(CoreError::invalid(
                "data.kind",
                "toy",
                "an image data set (an autoencoder compresses images)",
            ));
        }
        self.train.validate_at("train.")?;
        self.autoencoder.validate_at("autoencoder.")
    }
}

impl RunConfig for AutoencoderRunConfig {
    fn data(&self) -> (&DataSource, LoaderOptions) {
        (&self.data, self.loader)
    }

    fn train(&self) -> &TrainConfig {
        &self.train
    }

    fn take_steps_of(&mut self, new: &Self) {
        self.train.steps = new.train.steps;
    }
}

/// The autoencoder objective, with a fixed batch of real images for the
/// periodic grids.
pub struct AutoencoderObjective {
    config: AutoencoderObjectiveConfig,
    perceptual: Option<Box<dyn DistanceMetric + Send>>,
    preview: Tensor,
}

impl std::fmt::Debug for AutoencoderObjective {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AutoencoderObjective")
            .field("config", &self.config)
            .field("perceptual", &self.perceptual.is_some())
            .finish_non_exhaustive()
    }
}

impl AutoencoderObjective {
    /// `preview`: real images `[N, C, H, W]` in [-1, 1] the grids
    /// reconstruct; `perceptual`: the feature distance when its weight is
    /// above 0.
    pub fn new(
        config: AutoencoderObjectiveConfig,
        perceptual: Option<Box<dyn DistanceMetric + Send>>,
        preview: Tensor,
    ) -> Self {
        AutoencoderObjective {
            config,
            perceptual,
            preview,
        }
    }

    /// Originals and reconstructions of the preview images, alternate rows
    /// of a grid `columns` wide (`count` images in all).
    pub fn reconstruction_grid(&self, model: &Model, count: i64) -> Result<Tensor> {
        let ae = autoencoder_of(model)?;
        let columns = ((count as f64).sqrt().ceil() as i64).max(1);
        let pairs = (count / 2).min(self.preview.size()[0]).max(1);
        let x = self.preview.narrow(0, 0, pairs).to_device(model.device());
        let rec = tch::no_grad(|| ae.decode(ae.encode(&x).mode())).clamp(-1.0, 1.0);
        let mut rows = Vec::new();
        let mut start = 0;
        while start < pairs {
            let len = columns.min(pairs - start);
            rows.push(x.narrow(0, start, len));
            rows.push(rec.narrow(0, start, len));
            start += len;
        }
        Ok(Tensor::cat(&rows, 0))
    }
}

fn autoencoder_of(model: &Model) -> Result<&cm_nets::Autoencoder> {
    model.autoencoder().ok_or_else(|| {
        CoreError::invalid("net.arch", model.config().arch(), "\"autoencoder\"").into()
    })
}

impl Objective for AutoencoderObjective {
    fn name(&self) -> &str {
        "autoencoder"
    }

    fn loss(&mut self, online: &Model, batch: &Batch, _step: u64) -> Result<Tensor> {
        let ae = autoencoder_of(online)?;
        let x = &batch.x;
        let pixels = x.numel() as f64 / x.size()[0] as f64;
        let q = ae.encode(x);
        let rec = ae.decode(&q.sample());
        let diff = &rec - x;
        let per_pixel = match self.config.reconstruction {
            Reconstruction::L1 => diff.abs(),
            Reconstruction::L2 => diff.square(),
        };
        let mut loss = per_pixel.mean(Kind::Float)
            + q.kl().mean(Kind::Float) * (self.config.kl_weight / pixels);
        if let Some(metric) = &self.perceptual {
            loss += metric.distance(&rec, x).mean(Kind::Float) * self.config.perceptual_weight;
        }
        Ok(loss)
    }

    /// Originals and reconstructions of the preview images (the noise
    /// `latents` only sets how many): an autoencoder does not sample.
    fn sample(&self, model: &Model, latents: &Tensor, _: Conditioning<'_>) -> Result<Tensor> {
        self.reconstruction_grid(model, latents.size()[0])
    }

    /// One call: the grid pairs each preview image with its reconstruction
    /// (`latents` only sets the count), so chunks would repeat the first
    /// images; the preview set bounds the memory.
    fn grid_chunk(&self, _batch_size: usize) -> Option<usize> {
        None
    }
}

/// The autoencoder on the run skeleton.
#[derive(Debug)]
pub struct AutoencoderMethod<'a> {
    config: &'a AutoencoderRunConfig,
    scaling_factor: Option<f64>,
}

impl<'a> AutoencoderMethod<'a> {
    /// The method for `config`.
    pub fn new(config: &'a AutoencoderRunConfig) -> Self {
        AutoencoderMethod {
            config,
            scaling_factor: None,
        }
    }
}

/// The first `n` images of a split as floats in [-1, 1] on `device`.
fn split_images(split: &cm_data::ImageSplit, n: usize, device: Device) -> Result<Tensor> {
    let n = n.min(split.len());
    let indices: Vec<usize> = (0..n).collect();
    let part = split
        .select(&indices)
        .map_err(|e| TrainError::Batch(e.to_string()))?;
    Ok(cm_eval::classifier::images_to_float(&part.to_tensor()).to_device(device))
}

/// Reconstruction MSE (on [-1, 1]) and PSNR (dB, on [0, 1]) of `x` by `rec`.
pub fn reconstruction_error(x: &Tensor, rec: &Tensor) -> (f64, f64) {
    let mse = f64::try_from((rec - x).square().mean(Kind::Double)).unwrap_or(f64::NAN);
    // Pixels in [0, 1] are (x + 1) / 2: their squared error is mse / 4.
    let psnr = -10.0 * (mse / 4.0).log10();
    (mse, psnr)
}

impl Method for AutoencoderMethod<'_> {
    type Config = AutoencoderRunConfig;
    type Objective = AutoencoderObjective;
    type Card = AutoencoderCard;

    fn title(&self) -> &str {
        "Autoencoder run"
    }

    fn config(&self) -> &AutoencoderRunConfig {
        self.config
    }

    fn build(
        &mut self,
        device: Device,
        observer: &mut dyn Observer,
    ) -> Result<(Model, AutoencoderObjective)> {
        let model = Model::new(self.config.net.clone(), device)?;
        let Dataset::Images(images) = self
            .config
            .data
            .load(None)
            .map_err(|e| TrainError::Batch(e.to_string()))?
        else {
            return Err(CoreError::invalid("data.kind", "points", "an image data set").into());
        };
        let count = self.config.train.sample_count.div_ceil(2).max(1);
        let split = if images.test.is_empty() {
            &images.train
        } else {
            &images.test
        };
        let preview = split_images(split, count, device)?;
        let perceptual = if self.config.autoencoder.perceptual_weight > 0.0 {
            Some(build_metric(
                &MetricConfig::Feature,
                "autoencoder.perceptual.",
                &self.config.net.sample_shape(),
                &self.config.data,
                device,
                observer,
            )?)
        } else {
            None
        };
        Ok((
            model,
            AutoencoderObjective::new(self.config.autoencoder, perceptual, preview),
        ))
    }

    fn describe(&self) -> Vec<String> {
        let a = &self.config.autoencoder;
        let NetConfig::Autoencoder(net) = &self.config.net else {
            return Vec::new();
        };
        let mut lines = vec![
            format!(
                "objective: {:?} reconstruction + {:e} x KL (sums per example over the pixel count){}",
                a.reconstruction,
                a.kl_weight,
                if a.perceptual_weight > 0.0 {
                    format!(" + {} x feature distance", a.perceptual_weight)
                } else {
                    String::new()
                }
            ),
            format!(
                "latent {:?} from images {:?} (down-sampling by {})",
                net.latent_shape(),
                self.config.net.sample_shape(),
                net.downsampling()
            ),
        ];
        lines.push("grids: originals (odd rows) above their reconstructions (even rows)".into());
        lines
    }

    fn report_samplers<'a>(
        &'a self,
        objective: &'a AutoencoderObjective,
        eval: &'a Model,
    ) -> Vec<ReportSampler<'a>> {
        vec![ReportSampler {
            label: "reconstructions (originals above)".into(),
            file: "reconstructions.png".into(),
            sample: Box::new(move |latents: &Tensor| {
                Ok(Sampled {
                    x: objective.reconstruction_grid(eval, latents.size()[0])?,
                    nfe: 1,
                })
            }),
        }]
    }

    fn card(&self, weights: PathBuf) -> AutoencoderCard {
        AutoencoderCard::new(weights, self.scaling_factor)
    }

    fn finish(
        &mut self,
        eval: &Model,
        data: &Dataset,
        observer: &mut dyn Observer,
    ) -> Result<Vec<String>> {
        let Dataset::Images(images) = data else {
            return Ok(Vec::new());
        };
        let device = eval.device();
        observer.on_message("measuring the latent scale and the reconstructions");
        let ae = autoencoder_of(eval)?;
        let _guard = tch::no_grad_guard();
        // Stable Diffusion's scaling factor: 1 / std of the latents. We use
        // the posterior means (what the latent data set holds) over many
        // images rather than one batch of draws.
        let x = split_images(&images.train, SCALING_IMAGES, device)?;
        let mut means = Vec::new();
        for chunk in x.split(cm_sample::CODEC_CHUNK, 0) {
            means.push(ae.encode(&chunk).mean);
        }
        let means = Tensor::cat(&means, 0);
        let std = f64::try_from(means.to_kind(Kind::Double).std(true)).unwrap_or(f64::NAN);
        if !(std.is_finite() && std > 0.0) {
            return Err(TrainError::Batch(format!(
                "the encoded latents have standard deviation {std}: the autoencoder collapsed \
                 (lower autoencoder.kl_weight or train longer)"
            )));
        }
        let scaling_factor = 1.0 / std;
        self.scaling_factor = Some(scaling_factor);
        let codec = LatentCodec::new(
            {
                let mut copy = Model::new(eval.config().clone(), device)?;
                copy.copy_from(eval)?;
                copy
            },
            scaling_factor,
        )?;
        let mut lines = vec![format!(
            "latent scale: std {std:.4} over {} training images -> scaling_factor {scaling_factor:.5}",
            x.size()[0]
        )];
        let (test, which) = if images.test.is_empty() {
            (&images.train, "training")
        } else {
            (&images.test, "test")
        };
        let real = split_images(test, RECONSTRUCTION_IMAGES, device)?;
        let rec = codec.decode(&codec.encode(&real)?)?.clamp(-1.0, 1.0);
        let (mse, psnr) = reconstruction_error(&real, &rec);
        lines.push(format!(
            "reconstruction of {} {which} images: MSE {mse:.5} (on [-1, 1]), PSNR {psnr:.2} dB",
            real.size()[0]
        ));
        let space = feature_space(
            images,
            &ClassifierConfig::default(),
            None,
            device,
            &mut crate::metric::Messages(observer),
        )?;
        let stats = |x: &Tensor| -> Result<FeatureStats> {
            let (features, _) = space.net.features(x)?;
            Ok(FeatureStats::from_features(&features)?)
        };
        let fid_rec = frechet_distance(&stats(&rec)?, &space.reference.stats)?;
        let fid_real = frechet_distance(&stats(&real)?, &space.reference.stats)?;
        lines.push(format!(
            "reconstruction FID (feature space, {n} images vs the whole test split): {fid_rec:.2}; \
             the same {n} real images: {fid_real:.2} (the small-sample floor)",
            n = real.size()[0]
        ));
        for line in &lines {
            observer.on_message(line);
        }
        Ok(lines)
    }
}

/// What an autoencoder run leaves.
pub type AutoencoderOutcome = RunOutcome<AutoencoderObjective>;

/// Runs (or with `resume`, continues) an autoencoder run into `run_dir`;
/// unless stopped it writes `reconstructions.png`, `report.md` (with the
/// scaling factor, reconstruction error and FID) and the autoencoder's
/// `model.toml`.
pub fn run_autoencoder(
    config: &AutoencoderRunConfig,
    run_dir: &Path,
    resume: bool,
    device: Device,
    stop: &AtomicBool,
    observer: &mut dyn Observer,
) -> Result<AutoencoderOutcome> {
    run(
        &mut AutoencoderMethod::new(config),
        RunContext {
            run_dir,
            resume,
            device,
            stop,
            observer,
        },
    )
}
