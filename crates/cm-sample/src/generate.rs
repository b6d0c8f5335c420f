//! Generating N samples from a model card: in chunks (memory stays that of
//! one chunk), reproducible per sample under a seed ([`SeededNoise`]: image
//! `i` is the same whatever the chunk size or device), optionally
//! class-conditional, with autograd off. The caller decides what to do with
//! each chunk (the CLI writes PNGs and a tensor file, and moves a progress
//! bar).

use tch::{Device, Kind, Tensor};

use cm_core::{ClassifierFreeGuidance, Conditioning, CoreError, Denoiser};
use cm_nets::Model;

use crate::card::ModelCard;
use crate::consistency::consistency_sample_with;
use crate::edm::MAX_SAMPLER_STEPS;
use crate::edm::{edm_sample_with, EdmSampler};
use crate::error::Result;
use crate::latent::LatentCodec;
use crate::noise::SeededNoise;

/// The largest chunk one sampler call may take (its activations are held
/// at once).
pub const MAX_BATCH_SIZE: usize = 65_536;

/// Which class each generated image gets.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ClassChoice {
    /// No class input (unconditional models; conditional ones get the null
    /// class).
    None,
    /// Every image of one class.
    Fixed(i64),
    /// Image `i` gets class `i mod num_classes`: a balanced set.
    Cycle,
}

/// What to generate.
#[derive(Clone, Debug, PartialEq)]
pub struct GenerateConfig {
    /// Number of images.
    pub count: usize,
    /// Images per chunk (one sampler call).
    pub batch_size: usize,
    /// Run seed: image `i` uses `sample_seed(seed, i)`.
    pub seed: u64,
    /// Consistency: 1 for one step, k for k-step sampling with `taus`
    /// (or the card's stored times). EDM: sampler steps.
    pub steps: usize,
    /// Explicit intermediate times (consistency only); `None` takes the
    /// card's.
    pub taus: Option<Vec<f64>>,
    /// Classes.
    pub classes: ClassChoice,
    /// Classifier-free guidance scale `w` in LCM's form
    /// `D = D_c + w (D_c - D_u)` ([`cm_core::ClassifierFreeGuidance`]; `0`
    /// is the plain conditional model, diffusers' `guidance_scale` is
    /// `1 + w`), for class-conditional models with class labels; `None`: no
    /// guidance. Each guided evaluation runs the network on a batch of `2B`.
    pub guidance: Option<f64>,
}

impl GenerateConfig {
    /// `count` one-step samples under `seed` (for an EDM card set `steps` to
    /// the sampler's step count).
    pub fn new(count: usize, seed: u64) -> Self {
        GenerateConfig {
            count,
            batch_size: 64,
            seed,
            steps: 1,
            taus: None,
            classes: ClassChoice::None,
            guidance: None,
        }
    }
}

/// One generated chunk.
#[derive(Debug)]
pub struct Chunk {
    /// Index of the chunk's first image in the run.
    pub first: usize,
    /// Images in `[-1, 1]`, `[B, C, H, W]` (or 2-D points `[B, D]`, not
    /// clamped), f32 on the CPU.
    pub images: Tensor,
    /// Their classes, when class-conditional.
    pub classes: Option<Tensor>,
}

/// Totals of a generation run.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Generated {
    /// Images generated.
    pub count: usize,
    /// Network evaluations per image (a guided evaluation counts two: the
    /// conditional and the unconditional half).
    pub nfe: usize,
    /// Seconds spent sampling (excluding the callback).
    pub seconds: f64,
}

/// Generates `config.count` images with `model` (loaded from `card`) on
/// `device`, handing each chunk to `on_chunk` in order. A model in an
/// autoencoder's latent space samples latents that `codec` (the card's
/// [`ModelCard::load_codec`]) decodes to images. A network that embeds the
/// guidance scale (LCM) gets `w` (`config.guidance`, else the card's
/// default) as conditioning: one evaluation per step. Runs without
/// autograd.
pub fn generate<E: From<crate::SampleError>>(
    card: &ModelCard,
    model: &Model,
    codec: Option<&LatentCodec>,
    config: &GenerateConfig,
    device: Device,
    on_chunk: &mut dyn FnMut(Chunk) -> std::result::Result<(), E>,
) -> std::result::Result<Generated, E> {
    let check = || -> Result<Vec<f64>> {
        if config.count == 0 || config.batch_size == 0 || config.batch_size > MAX_BATCH_SIZE {
            return Err(CoreError::invalid(
                "count / batch_size",
                format!("{} / {}", config.count, config.batch_size),
                format!("both at least 1, batch_size at most {MAX_BATCH_SIZE}"),
            )
            .into());
        }
        if !(1..=MAX_SAMPLER_STEPS).contains(&config.steps) {
            return Err(CoreError::invalid(
                "steps",
                config.steps,
                format!("1 to {MAX_SAMPLER_STEPS}"),
            )
            .into());
        }
        let num_classes = model.config().num_classes() as i64;
        let has_null = model.config().has_null_class();
        match config.classes {
            ClassChoice::None if num_classes > 0 && !has_null => {
                return Err(CoreError::invalid(
                    "classes",
                    "none",
                    format!(
                        "a class (0..{num_classes}) or a balanced set: this model is \
                         class-conditional without a null class (a diffusers U-Net)"
                    ),
                )
                .into())
            }
            ClassChoice::None => {}
            ClassChoice::Fixed(c) if (0..num_classes).contains(&c) => {}
            ClassChoice::Fixed(c) => {
                return Err(CoreError::invalid(
                    "class",
                    c,
                    format!("a class in 0..{num_classes} (the model has {num_classes} classes)"),
                )
                .into())
            }
            ClassChoice::Cycle if num_classes > 0 => {}
            ClassChoice::Cycle => {
                return Err(CoreError::invalid(
                    "classes",
                    "cycle",
                    "a class-conditional model (this one has no classes)",
                )
                .into())
            }
        }
        if let Some(w) = config.guidance {
            if !has_null {
                return Err(CoreError::invalid(
                    "guidance",
                    w,
                    "a model with a null class to guide away from (this one has none)",
                )
                .into());
            }
            if matches!(config.classes, ClassChoice::None) {
                return Err(CoreError::invalid(
                    "guidance",
                    w,
                    "class labels to guide towards (a class or a balanced set of classes)",
                )
                .into());
            }
            cm_core::check_guidance_scale("guidance", w)?;
        }
        match (card, &config.taus) {
            (ModelCard::Consistency { consistency, .. }, Some(taus)) => {
                if taus.len() + 1 != config.steps {
                    return Err(CoreError::invalid(
                        "taus",
                        format!("{taus:?}"),
                        format!(
                            "{} intermediate times for {}-step sampling",
                            config.steps.saturating_sub(1),
                            config.steps
                        ),
                    )
                    .into());
                }
                crate::consistency::check_taus(taus, consistency.sigma_min, consistency.sigma_max)?;
                Ok(taus.clone())
            }
            (ModelCard::Consistency { .. }, None) => card.taus(config.steps),
            (ModelCard::Edm { .. }, Some(_)) => Err(CoreError::invalid(
                "taus",
                "given",
                "no intermediate times for an EDM model (set the sampler's steps instead)",
            )
            .into()),
            (ModelCard::Edm { .. }, None) => Ok(Vec::new()),
        }
    };
    let taus = check().map_err(E::from)?;
    if card.autoencoder().is_some() != codec.is_some() {
        return Err(E::from(
            CoreError::invalid(
                "autoencoder",
                card.autoencoder()
                    .map_or("none".to_string(), |p| p.display().to_string()),
                "the card's autoencoder loaded as the codec (ModelCard::load_codec), and none \
                 for a model in image space",
            )
            .into(),
        ));
    }
    let shape = model.config().sample_shape();
    let num_classes = model.config().num_classes() as i64;
    let plain = card.denoiser(model);
    // LCM: the network embeds w; the guidance is its input, not two passes.
    let embedded = card
        .embedded_guidance()
        .map(|default| config.guidance.unwrap_or(default));
    if embedded.is_some() {
        if !model.config().embeds_guidance() {
            return Err(E::from(
                CoreError::invalid(
                    "guidance",
                    "in the card",
                    "a network that embeds w (guidance_embedding = true); this card's network \
                     does not: remove `guidance` from the card",
                )
                .into(),
            ));
        }
        if matches!(config.classes, ClassChoice::None) && num_classes > 0 {
            return Err(E::from(
                CoreError::invalid(
                    "classes",
                    "none",
                    "a class or a balanced set: a latent consistency model is distilled from \
                     the guided teacher's class-conditional model and never saw the null class",
                )
                .into(),
            ));
        }
    }
    if let Some(w) = embedded {
        cm_core::check_guidance_scale("guidance", w).map_err(|e| E::from(e.into()))?;
    }
    let guided = match config.guidance.filter(|_| embedded.is_none()) {
        // The null class is `num_classes` (cm-nets' label dropout).
        Some(w) => Some(
            ClassifierFreeGuidance::new(plain.as_ref(), w, num_classes)
                .map_err(|e| E::from(e.into()))?,
        ),
        None => None,
    };
    let f: &dyn Denoiser = match &guided {
        Some(g) => g,
        None => plain.as_ref(),
    };
    // The guided denoiser runs the network twice, except at w = 0 and
    // w = -1 (the conditional and the unconditional model, one evaluation).
    let evaluations_per_call = guided
        .as_ref()
        .map_or(1, ClassifierFreeGuidance::evaluations_per_call);
    let is_image = shape.len() == 3 || codec.is_some();
    let _guard = tch::no_grad_guard();
    let mut seconds = 0.0;
    let mut nfe = 0;
    let mut first = 0;
    while first < config.count {
        let n = config.batch_size.min(config.count - first);
        // Under `--threads auto`, follow the machine's load (cm-runtime).
        let _ = cm_runtime::tick();
        let started = std::time::Instant::now();
        let mut noise = SeededNoise::for_range(config.seed, first as u64, n);
        let latents = noise.draw(&shape, Kind::Float, device);
        let classes = match config.classes {
            ClassChoice::None => None,
            ClassChoice::Fixed(c) => Some(Tensor::full([n as i64], c, (Kind::Int64, device))),
            ClassChoice::Cycle => Some(
                Tensor::arange_start(first as i64, (first + n) as i64, (Kind::Int64, device))
                    .remainder(num_classes),
            ),
        };
        let w = embedded.map(|w| Tensor::full([n as i64], w, (Kind::Float, device)));
        let mut cond = Conditioning::from_class(classes.as_ref());
        if let Some(w) = &w {
            cond = cond.with_guidance(w);
        }
        let sampled = match card {
            ModelCard::Consistency { consistency, .. } => {
                consistency_sample_with(f, &latents, consistency.range(), &taus, cond, &mut noise)
                    .map_err(|e| E::from(e.into()))?
            }
            ModelCard::Edm { edm, sampler, .. } => {
                let sampler = EdmSampler {
                    steps: config.steps,
                    ..*sampler
                };
                edm_sample_with(f, &latents, &edm.grid(), &sampler, cond, &mut noise)
                    .map_err(|e| E::from(e.into()))?
            }
        };
        // Images live in [-1, 1]; 2-D points (unit-variance toy data) are
        // returned as they are.
        let x = match codec {
            Some(codec) => codec.decode(&sampled.x).map_err(E::from)?,
            None => sampled.x,
        };
        let images = if is_image { x.clamp(-1.0, 1.0) } else { x }.to_device(Device::Cpu);
        seconds += started.elapsed().as_secs_f64();
        nfe = sampled.nfe * evaluations_per_call;
        on_chunk(Chunk {
            first,
            images,
            classes: classes.map(|c| c.to_device(Device::Cpu)),
        })?;
        first += n;
    }
    Ok(Generated {
        count: config.count,
        nfe,
        seconds,
    })
}
