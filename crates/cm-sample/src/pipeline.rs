//! The one-call API: a model card and its network, loaded once, that
//! generates `n` samples in `k` steps under a seed.
//!
//! ```no_run
//! use cm_sample::{images, Pipeline};
//!
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let pipe = Pipeline::load("runs/cd-fmnist/model.toml", tch::Device::Cpu)?;
//! let images = pipe.generate(16, 1, 0)?; // 16 one-step samples, seed 0: [16, 1, 28, 28] in [-1, 1]
//! images::write_image_grid(&images, "grid.png".as_ref())?;
//! # Ok(())
//! # }
//! ```
//!
//! Class-conditional models take a class (or a balanced set) and a
//! classifier-free guidance scale through [`Pipeline::generate_with`] and a
//! [`GenerateConfig`]. Everything runs without autograd, in chunks of
//! `batch_size`, and sample `i` is the same whatever the chunking
//! ([`crate::SeededNoise`]).

use std::path::Path;

use tch::{Device, Tensor};

use cm_core::CoreError;
use cm_nets::Model;

use crate::card::ModelCard;
use crate::error::{Result, SampleError};
use crate::generate::{generate, GenerateConfig, Generated};

/// A model ready to sample from: its card (how to sample) and its network.
#[derive(Debug)]
pub struct Pipeline {
    card: ModelCard,
    model: Model,
    /// The autoencoder of a model in latent space.
    codec: Option<crate::LatentCodec>,
}

impl Pipeline {
    /// Loads the model card at `card` (a `model.toml`; a run folder is
    /// refused with the card path to use) and its network on `device`.
    pub fn load(card: impl AsRef<Path>, device: Device) -> Result<Self> {
        Self::from_card(ModelCard::load(card)?, device)
    }

    /// The network a card in memory describes (with the adapters it lists,
    /// e.g. after [`ModelCard::push_lora`]) and its autoencoder, on
    /// `device`.
    pub fn from_card(card: ModelCard, device: Device) -> Result<Self> {
        let model = card.load_model(device)?;
        let codec = card.load_codec(device)?;
        Ok(Pipeline { card, model, codec })
    }

    /// A pipeline from a card and a network already in memory (e.g. one
    /// just trained). The network must be the one the card describes; a
    /// model in latent space needs [`Pipeline::with_codec`].
    pub fn new(card: ModelCard, model: Model) -> Self {
        Pipeline {
            card,
            model,
            codec: None,
        }
    }

    /// The same pipeline decoding its samples with `codec` (a model in an
    /// autoencoder's latent space).
    pub fn with_codec(self, codec: crate::LatentCodec) -> Self {
        Pipeline {
            codec: Some(codec),
            ..self
        }
    }

    /// `count` samples in `steps` network steps under `seed`: one-step or
    /// k-step consistency sampling (CM Algorithm 1; the card's stored
    /// intermediate times for `k`, else the default Karras times), or the
    /// EDM sampler with `steps` steps for a diffusion model (the card's
    /// sampler kind: 18 Heun steps are 35 evaluations). Unconditional
    /// models get no class; class-conditional ones the null class (a
    /// diffusers U-Net has none: pass classes with
    /// [`Pipeline::generate_with`]). Returns
    /// `[count, C, H, W]` images in `[-1, 1]` (or `[count, D]` points for a
    /// 2-D model), f32 on the CPU.
    pub fn generate(&self, count: usize, steps: usize, seed: u64) -> Result<Tensor> {
        let mut config = GenerateConfig::new(count, seed);
        config.steps = steps;
        Ok(self.generate_with(&config)?.0)
    }

    /// Samples as `config` says (classes, guidance, explicit times, chunk
    /// size), with the totals (NFE per sample, seconds). For consistency
    /// models without explicit `taus`, a step count the card stores no
    /// times for takes the default Karras times
    /// ([`ModelCard::taus_or_karras`]).
    pub fn generate_with(&self, config: &GenerateConfig) -> Result<(Tensor, Generated)> {
        check_count(config.count)?;
        let mut config = config.clone();
        if config.taus.is_none() && matches!(self.card, ModelCard::Consistency { .. }) {
            config.taus = Some(self.card.taus_or_karras(config.steps)?.0);
        }
        let mut chunks = Vec::new();
        let done = generate::<SampleError>(
            &self.card,
            &self.model,
            self.codec.as_ref(),
            &config,
            self.model.device(),
            &mut |chunk| {
                chunks.push(chunk.images);
                Ok(())
            },
        )?;
        Ok((Tensor::cat(&chunks, 0), done))
    }

    /// The model card.
    pub fn card(&self) -> &ModelCard {
        &self.card
    }

    /// The network.
    pub fn model(&self) -> &Model {
        &self.model
    }

    /// The shape of one sample: `[C, H, W]` for images (decoded from
    /// latents for a latent model), `[D]` for points.
    pub fn sample_shape(&self) -> Vec<i64> {
        match &self.codec {
            Some(codec) => codec.image_shape(),
            None => self.model.config().sample_shape(),
        }
    }

    /// Whether samples are images (`[C, H, W]`) rather than points.
    pub fn is_image(&self) -> bool {
        self.sample_shape().len() == 3
    }

    /// Number of classes (0: unconditional).
    pub fn num_classes(&self) -> usize {
        self.model.config().num_classes()
    }
}

/// The most samples one call returns: they are held in memory together
/// (use [`generate`] with a callback for more).
pub const MAX_PIPELINE_COUNT: usize = 1 << 20;

fn check_count(count: usize) -> Result<()> {
    if count == 0 || count > MAX_PIPELINE_COUNT {
        return Err(CoreError::invalid(
            "count",
            count,
            format!(
                "1 to {MAX_PIPELINE_COUNT} samples per call (more: cm_sample::generate with a callback)"
            ),
        )
        .into());
    }
    Ok(())
}
