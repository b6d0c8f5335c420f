//! The latent space of latent consistency models (Luo et al. 2023): an
//! autoencoder's card ([`AutoencoderCard`], `kind = "autoencoder"` in a
//! run's `model.toml`) and [`LatentCodec`], which encodes images to scaled
//! latents `scaling_factor * mean(q(z | x))` and decodes them back, in
//! chunks, without autograd. Diffusion models and consistency models of the
//! latent route see only scaled latents; samplers decode at the end.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use tch::{Device, Kind, Tensor};

use cm_core::{CoreError, Validate};
use cm_nets::Model;

use crate::error::{Result, SampleError};

/// The `kind` of an autoencoder card.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
enum AutoencoderKind {
    #[default]
    Autoencoder,
}

/// Images per encoder or decoder call.
pub const CODEC_CHUNK: i64 = 256;

/// An autoencoder's model card. In TOML:
///
/// ```toml
/// kind = "autoencoder"
/// weights = "checkpoints/step_0004000/ema_0.999.safetensors"
/// scaling_factor = 0.79
/// ```
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AutoencoderCard {
    kind: AutoencoderKind,
    /// Weights file (`.safetensors`), relative to the card's folder or absolute.
    pub weights: PathBuf,
    /// The latent scaling factor (Stable Diffusion's `scaling_factor`):
    /// `1 / std` of the encoded training latents, so diffusion runs on
    /// latents of unit variance like images in [-1, 1]. Measured when the
    /// autoencoder run finishes; a card written before (the metadata of
    /// its checkpoints) has none.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub scaling_factor: Option<f64>,
}

impl Validate for AutoencoderCard {
    fn validate(&self) -> cm_core::Result<()> {
        if let Some(s) = self.scaling_factor {
            if !(s.is_finite() && s > 0.0 && s < 1e6) {
                return Err(CoreError::invalid(
                    "scaling_factor",
                    s,
                    "a finite number in (0, 1e6): 1 / std of the encoded latents",
                ));
            }
        }
        Ok(())
    }
}

impl AutoencoderCard {
    /// A card for `weights` with its scaling factor (if measured yet).
    pub fn new(weights: PathBuf, scaling_factor: Option<f64>) -> Self {
        AutoencoderCard {
            kind: AutoencoderKind::Autoencoder,
            weights,
            scaling_factor,
        }
    }

    /// Reads and validates a card; a relative `weights` path is resolved
    /// against the card's folder. A card without a scaling factor (the run
    /// has not finished) is refused: latents would have the wrong scale.
    pub fn load(path: impl AsRef<Path>) -> Result<Self> {
        let path = path.as_ref();
        let bad = |message: String| SampleError::Card {
            path: path.to_path_buf(),
            message,
        };
        if path.is_dir() {
            return Err(bad(format!(
                "is a folder; pass the autoencoder's card inside it, {}",
                path.join(crate::CARD_FILE).display()
            )));
        }
        let kind: KindOnly = cm_core::load_toml(path)?;
        if kind.kind.as_deref() != Some("autoencoder") {
            return Err(bad(format!(
                "is a `kind = {:?}` card, not an autoencoder's (`kind = \"autoencoder\"`, written \
                 by `cm train-autoencoder`)",
                kind.kind.unwrap_or_default()
            )));
        }
        let mut card: AutoencoderCard = cm_core::load_toml(path)?;
        if card.scaling_factor.is_none() {
            return Err(bad(
                "has no scaling_factor (written when the autoencoder run finishes); \
                 finish the run first"
                    .into(),
            ));
        }
        if card.weights.is_relative() {
            let dir = path.parent().unwrap_or(Path::new("."));
            card.weights = dir.join(&card.weights);
        }
        Ok(card)
    }

    /// Writes the card atomically (`weights` as it is: keep it relative to
    /// `path`'s folder to keep a run folder movable).
    pub fn save(&self, path: impl AsRef<Path>) -> Result<()> {
        self.validate()?;
        crate::card::write_toml_atomic(self, path.as_ref())
    }

    /// The card as checkpoint metadata: JSON without the weights path.
    pub fn metadata_json(&self) -> String {
        let mut value = serde_json::to_value(self).expect("cards serialize to JSON");
        if let Some(map) = value.as_object_mut() {
            map.remove("weights");
        }
        value.to_string()
    }

    /// Loads the autoencoder and pairs it with the scaling factor.
    pub fn load_codec(&self, device: Device) -> Result<LatentCodec> {
        let model = Model::from_checkpoint(&self.weights, device)?;
        let scaling_factor = self.scaling_factor.ok_or_else(|| SampleError::Card {
            path: self.weights.clone(),
            message: "the autoencoder card has no scaling_factor".into(),
        })?;
        LatentCodec::new(model, scaling_factor).map_err(|e| match e {
            SampleError::Core(c) => SampleError::Card {
                path: self.weights.clone(),
                message: c.to_string(),
            },
            other => other,
        })
    }
}

#[derive(Deserialize)]
struct KindOnly {
    kind: Option<String>,
}

impl Validate for KindOnly {
    fn validate(&self) -> cm_core::Result<()> {
        Ok(())
    }
}

/// An autoencoder with its scaling factor: images <-> scaled latents.
#[derive(Debug)]
pub struct LatentCodec {
    model: Model,
    scaling_factor: f64,
}

impl LatentCodec {
    /// `model` must be an autoencoder (`arch = "autoencoder"`) and
    /// `scaling_factor` finite and positive.
    pub fn new(model: Model, scaling_factor: f64) -> Result<Self> {
        if model.autoencoder().is_none() {
            return Err(CoreError::invalid(
                "net.arch",
                model.config().arch(),
                "an autoencoder (arch = \"autoencoder\")",
            )
            .into());
        }
        if !(scaling_factor.is_finite() && scaling_factor > 0.0) {
            return Err(CoreError::invalid(
                "scaling_factor",
                scaling_factor,
                "a finite number > 0",
            )
            .into());
        }
        Ok(LatentCodec {
            model,
            scaling_factor,
        })
    }

    /// The autoencoder.
    pub fn model(&self) -> &Model {
        &self.model
    }

    /// The scaling factor.
    pub fn scaling_factor(&self) -> f64 {
        self.scaling_factor
    }

    /// The shape of one image, `[C, H, W]`.
    pub fn image_shape(&self) -> Vec<i64> {
        self.model.config().sample_shape()
    }

    /// The shape of one latent, `[c, h, w]`.
    pub fn latent_shape(&self) -> Vec<i64> {
        match self.model.config() {
            cm_nets::NetConfig::Autoencoder(c) => c.latent_shape(),
            _ => unreachable!("checked in LatentCodec::new"),
        }
    }

    /// Scaled latents `scaling_factor * mean(q(z | x))` `[N, c, h, w]` (f32,
    /// on `x`'s device) of images `x` `[N, C, H, W]` in [-1, 1].
    pub fn encode(&self, x: &Tensor) -> Result<Tensor> {
        self.check(x, &self.image_shape(), "images")?;
        let ae = self.model.autoencoder().expect("checked in new");
        Ok(self.chunked(x, |c| ae.encode(c).mean * self.scaling_factor))
    }

    /// Images `[N, C, H, W]` (f32, on `z`'s device) of scaled latents `z`
    /// `[N, c, h, w]`: `decode(z / scaling_factor)`.
    pub fn decode(&self, z: &Tensor) -> Result<Tensor> {
        self.check(z, &self.latent_shape(), "latents")?;
        let ae = self.model.autoencoder().expect("checked in new");
        Ok(self.chunked(z, |c| ae.decode(&(c / self.scaling_factor))))
    }

    fn check(&self, x: &Tensor, want: &[i64], what: &str) -> Result<()> {
        let got = x.size();
        if got.len() != want.len() + 1 || got[1..] != *want || !x.is_floating_point() {
            return Err(CoreError::invalid(
                what,
                format!("{:?} {got:?}", x.kind()),
                format!("floating-point {what} of shape [N, {want:?}]"),
            )
            .into());
        }
        Ok(())
    }

    fn chunked(&self, x: &Tensor, f: impl Fn(&Tensor) -> Tensor) -> Tensor {
        let _guard = tch::no_grad_guard();
        let device = self.model.device();
        let n = x.size()[0];
        let mut out = Vec::new();
        let mut start = 0;
        while start < n {
            let len = CODEC_CHUNK.min(n - start);
            let c = x
                .narrow(0, start, len)
                .to_device(device)
                .to_kind(Kind::Float);
            out.push(f(&c).to_device(x.device()));
            start += len;
        }
        if out.is_empty() {
            return Tensor::zeros([0], (Kind::Float, x.device()));
        }
        Tensor::cat(&out, 0)
    }
}
