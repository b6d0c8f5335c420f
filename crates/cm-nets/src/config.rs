//! Network configs: serde structs with sensible defaults, separate from the
//! weights, validated on load, and the named presets written out under
//! `configs/nets/`.

use serde::{Deserialize, Serialize};

use cm_core::{CoreError, Validate};

use crate::diffusers::DiffusersUNetConfig;
use crate::layers::NoiseEmbedding;
pub use crate::limits::{MAX_DIM, MAX_PARAMS, MAX_RESOLUTION, MAX_TOKENS};

/// How the U-Net changes resolution between levels.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Resample {
    /// Fixed box filter: 2x2 average pooling down, nearest-neighbour up, then
    /// a 3x3 convolution (EDM's `resample_filter = [1, 1]`).
    #[default]
    Filter,
    /// Learned: a strided 3x3 convolution down, a 4x4 transposed convolution
    /// (stride 2) up.
    Learned,
}

/// An ADM / EDM-style U-Net (Dhariwal & Nichol 2021; EDM's `DhariwalUNet`,
/// with `SongUNet`'s options: Fourier embedding, `skip_scale`).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct UNetConfig {
    /// Image channels in and out (1 or 3).
    pub in_channels: usize,
    /// Image side (square images), divisible by `2^(levels - 1)`.
    pub resolution: usize,
    /// Base channel count.
    pub model_channels: usize,
    /// Channel multiplier per resolution level.
    pub channel_mult: Vec<usize>,
    /// Residual blocks per level (the decoder has one more).
    pub num_res_blocks: usize,
    /// Resolutions at which blocks add self-attention.
    pub attn_resolutions: Vec<usize>,
    /// Channels per attention head (heads = channels / this, at least 1).
    pub channels_per_head: usize,
    /// Dropout before each block's second convolution.
    pub dropout: f64,
    /// How levels change resolution.
    pub resample: Resample,
    /// Noise-level embedding.
    pub noise_embedding: NoiseEmbedding,
    /// Standard deviation of the Fourier frequencies (16 in NCSN++, small in iCT).
    pub fourier_scale: f64,
    /// Embedding width = `model_channels * emb_mult`.
    pub emb_mult: usize,
    /// Number of classes; 0 for an unconditional network.
    pub num_classes: usize,
    /// Scale applied after each residual sum (1 in ADM, sqrt(1/2) in NCSN++).
    pub skip_scale: f64,
    /// Scale-shift conditioning `norm(x) (1 + scale) + shift`, else additive.
    pub scale_shift: bool,
    /// Embed a guidance scale `w` (LCM's w-conditioning: a sinusoidal
    /// embedding of `1000 w` through a zero-initialised projection added to
    /// the noise embedding, so a student built from a teacher starts equal
    /// to it). Written only when set, so configs (and the teacher folders
    /// keyed by their hash) of networks without it are unchanged.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub guidance_embedding: bool,
    /// With `guidance_embedding`: also gate the class embedding by `w`,
    /// `e_c + s(w) (e_c - e_null)` with `s` a zero-initialised projection
    /// of the w features (cm-nets `GuidanceEmbed`), so the class's effect
    /// can scale with `w` as guidance's does. Written only when set.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub guidance_class_gate: bool,
}

impl Default for UNetConfig {
    /// A small 1x28x28 U-Net (the Fashion-MNIST CPU preset).
    fn default() -> Self {
        UNetConfig {
            in_channels: 1,
            resolution: 28,
            model_channels: 24,
            channel_mult: vec![1, 2, 2],
            num_res_blocks: 1,
            attn_resolutions: vec![7],
            channels_per_head: 64,
            dropout: 0.1,
            resample: Resample::Filter,
            noise_embedding: NoiseEmbedding::Positional,
            fourier_scale: 16.0,
            emb_mult: 4,
            num_classes: 0,
            skip_scale: 1.0,
            scale_shift: true,
            guidance_embedding: false,
            guidance_class_gate: false,
        }
    }
}

/// A Diffusion Transformer (Peebles & Xie 2023): patchify, 2-D sin-cos
/// positions, adaLN-Zero blocks conditioned on noise level and class.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DiTConfig {
    /// Image channels in and out (1 or 3).
    pub in_channels: usize,
    /// Image side, divisible by `patch_size`.
    pub resolution: usize,
    /// Patch side.
    pub patch_size: usize,
    /// Token width.
    pub hidden_size: usize,
    /// Transformer blocks.
    pub depth: usize,
    /// Attention heads (divides `hidden_size`).
    pub num_heads: usize,
    /// MLP width = `hidden_size * mlp_ratio`.
    pub mlp_ratio: f64,
    /// Dropout on the attention and MLP branches.
    pub dropout: f64,
    /// Width of the noise-level embedding before its MLP (256 in DiT).
    pub frequency_embedding_size: usize,
    /// Noise-level embedding.
    pub noise_embedding: NoiseEmbedding,
    /// Standard deviation of the Fourier frequencies.
    pub fourier_scale: f64,
    /// Number of classes; 0 for an unconditional network.
    pub num_classes: usize,
}

impl Default for DiTConfig {
    /// A small 1x28x28 DiT (the Fashion-MNIST CPU preset).
    fn default() -> Self {
        DiTConfig {
            in_channels: 1,
            resolution: 28,
            patch_size: 4,
            hidden_size: 128,
            depth: 6,
            num_heads: 4,
            mlp_ratio: 4.0,
            dropout: 0.0,
            frequency_embedding_size: 256,
            noise_embedding: NoiseEmbedding::Positional,
            fourier_scale: 16.0,
            num_classes: 0,
        }
    }
}

/// A residual MLP with a noise-level embedding, for 2-D toy data.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct MlpConfig {
    /// Data dimension (2 for the toy distributions).
    pub dim: usize,
    /// Hidden width.
    pub hidden: usize,
    /// Residual blocks.
    pub depth: usize,
    /// Width of the noise-level embedding.
    pub emb_channels: usize,
    /// Noise-level embedding.
    pub noise_embedding: NoiseEmbedding,
    /// Standard deviation of the Fourier frequencies.
    pub fourier_scale: f64,
    /// Dropout inside the residual blocks.
    pub dropout: f64,
    /// Number of classes; 0 for an unconditional network.
    pub num_classes: usize,
    /// Embed a guidance scale `w` (LCM's w-conditioning, as
    /// [`UNetConfig::guidance_embedding`]); written only when set.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub guidance_embedding: bool,
    /// The class gate, as [`UNetConfig::guidance_class_gate`].
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub guidance_class_gate: bool,
}

impl Default for MlpConfig {
    /// The 2-D toy preset.
    fn default() -> Self {
        MlpConfig {
            dim: 2,
            hidden: 128,
            depth: 3,
            emb_channels: 64,
            noise_embedding: NoiseEmbedding::Positional,
            fourier_scale: 16.0,
            dropout: 0.0,
            num_classes: 0,
            guidance_embedding: false,
            guidance_class_gate: false,
        }
    }
}

/// A KL-regularised convolutional autoencoder (the latent-diffusion VAE's
/// design, [`crate::Autoencoder`]): `2^(levels - 1)` down-sampling, a
/// `latent_channels`-channel diagonal Gaussian latent.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AutoencoderConfig {
    /// Image channels in and out (1 or 3).
    pub in_channels: usize,
    /// Image side (square images), divisible by `2^(levels - 1)`.
    pub resolution: usize,
    /// Channels of the latent (4 in Stable Diffusion).
    pub latent_channels: usize,
    /// Base channel count.
    pub base_channels: usize,
    /// Channel multiplier per level; every level but the last halves the
    /// resolution (`[1, 2, 2]`: 28x28 -> 7x7).
    pub channel_mult: Vec<usize>,
    /// Residual blocks per encoder level (the decoder has one more).
    pub num_res_blocks: usize,
    /// Self-attention in the middle of encoder and decoder (as LDM).
    pub mid_attention: bool,
}

impl Default for AutoencoderConfig {
    /// The Fashion-MNIST CPU preset: 1x28x28 -> 4x7x7.
    fn default() -> Self {
        AutoencoderConfig {
            in_channels: 1,
            resolution: 28,
            latent_channels: 4,
            base_channels: 16,
            channel_mult: vec![1, 2, 2],
            num_res_blocks: 1,
            mid_attention: true,
        }
    }
}

impl AutoencoderConfig {
    /// How much each side shrinks, `2^(levels - 1)`.
    pub fn downsampling(&self) -> usize {
        1 << self.channel_mult.len().saturating_sub(1)
    }

    /// The shape of one latent, `[latent_channels, h, w]`.
    pub fn latent_shape(&self) -> Vec<i64> {
        let side = (self.resolution / self.downsampling()) as i64;
        vec![self.latent_channels as i64, side, side]
    }

    /// An upper-side estimate of the parameter count: per level and side
    /// (encoder, decoder) up to `num_res_blocks + 1` blocks of two 3x3
    /// convolutions and a 1x1 skip, a resampling conv, and the middle.
    pub fn approx_params(&self) -> f64 {
        let base = self.base_channels as f64;
        let blocks = self.num_res_blocks as f64 + 1.0;
        let levels: f64 = self
            .channel_mult
            .iter()
            .map(|&m| {
                let w = base * m as f64;
                2.0 * (blocks * (18.0 * w * w + w * w) + 9.0 * w * w)
            })
            .sum();
        let top = base * self.channel_mult.iter().copied().max().unwrap_or(1) as f64;
        levels
            + 2.0 * (36.0 * top * top + 4.0 * top * top)
            + 18.0 * (self.latent_channels as f64 + self.in_channels as f64) * top
    }
}

impl Validate for AutoencoderConfig {
    fn validate(&self) -> cm_core::Result<()> {
        check_channels(self.in_channels)?;
        check_positive("resolution", self.resolution)?;
        check_positive("base_channels", self.base_channels)?;
        check_positive("num_res_blocks", self.num_res_blocks)?;
        if self.latent_channels == 0 || self.latent_channels > 64 {
            return Err(invalid("latent_channels", self.latent_channels, "1 to 64"));
        }
        if self.channel_mult.is_empty()
            || self.channel_mult.len() > 6
            || self.channel_mult.iter().any(|&m| m == 0 || m > 64)
        {
            return Err(invalid(
                "channel_mult",
                &self.channel_mult,
                "1 to 6 multipliers, each 1 to 64",
            ));
        }
        if self.resolution > MAX_RESOLUTION {
            return Err(invalid(
                "resolution",
                self.resolution,
                format!("1 to {MAX_RESOLUTION}"),
            ));
        }
        let factor = self.downsampling();
        if !self.resolution.is_multiple_of(factor) {
            return Err(invalid(
                "resolution",
                self.resolution,
                format!(
                    "a multiple of 2^(levels-1) = {factor} for {} levels",
                    self.channel_mult.len()
                ),
            ));
        }
        let side = self.resolution / factor;
        if self.mid_attention && side * side > MAX_TOKENS {
            return Err(invalid(
                "mid_attention",
                true,
                format!(
                    "false at a {side}x{side} latent (attention holds at most {MAX_TOKENS} tokens; \
                     add a level)"
                ),
            ));
        }
        check_params(self.approx_params())
    }
}

/// Any cm-nets network, selected by `arch` in TOML.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "arch", rename_all = "snake_case")]
// Built once per model and passed by reference: its size does not matter.
#[allow(clippy::large_enum_variant)]
pub enum NetConfig {
    /// `arch = "unet"`.
    Unet(UNetConfig),
    /// `arch = "dit"`.
    Dit(DiTConfig),
    /// `arch = "mlp"`.
    Mlp(MlpConfig),
    /// `arch = "diffusers_unet2d"`: diffusers' `UNet2DModel`, read from a
    /// diffusers folder's `config.json` ([`DiffusersUNetConfig::from_json`]).
    DiffusersUnet2d(DiffusersUNetConfig),
    /// `arch = "autoencoder"`: the latent-diffusion-style autoencoder of
    /// latent consistency models.
    Autoencoder(AutoencoderConfig),
}

/// The named presets, as in `configs/nets/<name>.toml`.
pub const PRESETS: &[&str] = &[
    "toy-mlp",
    "fmnist-unet",
    "fmnist-dit",
    "cifar10-unet",
    "imagenet64-adm",
    "fmnist-autoencoder",
    "cifar10-autoencoder",
];

impl NetConfig {
    /// A named preset (see [`PRESETS`]); `None` for an unknown name.
    ///
    /// - `toy-mlp`: 2-D toy data, 4 residual blocks of width 128.
    /// - `fmnist-unet`, `fmnist-dit`: 1x28x28 (Fashion-MNIST, MNIST), sized
    ///   for training on 2 CPU cores (see docs/nets.md for step times).
    /// - `cifar10-unet`: 3x32x32, NCSN++/DDPM++-like width (128 channels,
    ///   multipliers 2,2,2, 4 blocks, attention at 16, dropout 0.3, Fourier
    ///   embedding with iCT's small scale), for GPUs.
    /// - `imagenet64-adm`: 3x64x64 class-conditional ADM (192 channels,
    ///   multipliers 1,2,3,4, 3 blocks, attention at 32, 16, 8), for GPUs.
    /// - `fmnist-autoencoder`: 1x28x28 -> 4x7x7 (16 channels, multipliers
    ///   1,2,2, 1 block per level, middle attention), for 2 CPU cores.
    /// - `cifar10-autoencoder`: 3x32x32 -> 4x8x8 (64 channels, multipliers
    ///   1,2,2, 2 blocks per level), for GPUs.
    pub fn preset(name: &str) -> Option<NetConfig> {
        Some(match name {
            "toy-mlp" => NetConfig::Mlp(MlpConfig::default()),
            "fmnist-unet" => NetConfig::Unet(UNetConfig::default()),
            "fmnist-dit" => NetConfig::Dit(DiTConfig::default()),
            "cifar10-unet" => NetConfig::Unet(UNetConfig {
                in_channels: 3,
                resolution: 32,
                model_channels: 128,
                channel_mult: vec![2, 2, 2],
                num_res_blocks: 4,
                attn_resolutions: vec![16],
                dropout: 0.3,
                noise_embedding: NoiseEmbedding::Fourier,
                fourier_scale: 0.02,
                skip_scale: std::f64::consts::FRAC_1_SQRT_2,
                ..UNetConfig::default()
            }),
            "imagenet64-adm" => NetConfig::Unet(UNetConfig {
                in_channels: 3,
                resolution: 64,
                model_channels: 192,
                channel_mult: vec![1, 2, 3, 4],
                num_res_blocks: 3,
                attn_resolutions: vec![32, 16, 8],
                dropout: 0.1,
                num_classes: 1000,
                ..UNetConfig::default()
            }),
            "fmnist-autoencoder" => NetConfig::Autoencoder(AutoencoderConfig::default()),
            "cifar10-autoencoder" => NetConfig::Autoencoder(AutoencoderConfig {
                in_channels: 3,
                resolution: 32,
                base_channels: 64,
                num_res_blocks: 2,
                ..AutoencoderConfig::default()
            }),
            _ => return None,
        })
    }

    /// The shape of one sample, `[C, H, W]` or `[dim]`.
    pub fn sample_shape(&self) -> Vec<i64> {
        match self {
            NetConfig::Unet(c) => vec![
                c.in_channels as i64,
                c.resolution as i64,
                c.resolution as i64,
            ],
            NetConfig::Dit(c) => vec![
                c.in_channels as i64,
                c.resolution as i64,
                c.resolution as i64,
            ],
            NetConfig::Mlp(c) => vec![c.dim as i64],
            NetConfig::DiffusersUnet2d(c) => {
                let (h, w) = c.hw();
                vec![c.in_channels as i64, h as i64, w as i64]
            }
            NetConfig::Autoencoder(c) => vec![
                c.in_channels as i64,
                c.resolution as i64,
                c.resolution as i64,
            ],
        }
    }

    /// The `arch` name of the config.
    pub fn arch(&self) -> &'static str {
        match self {
            NetConfig::Unet(_) => "unet",
            NetConfig::Dit(_) => "dit",
            NetConfig::Mlp(_) => "mlp",
            NetConfig::DiffusersUnet2d(_) => "diffusers_unet2d",
            NetConfig::Autoencoder(_) => "autoencoder",
        }
    }

    /// Refuses a network training cannot use: a class-conditional diffusers
    /// U-Net has no null class for label dropout, unlabelled previews and
    /// guidance (train a cm-rs `unet`; diffusers U-Nets are for loading
    /// published models).
    pub fn check_trainable(&self) -> cm_core::Result<()> {
        if self.is_autoencoder() {
            return Err(invalid(
                "net.arch",
                self.arch(),
                "a denoising network (unet, dit or mlp); an autoencoder trains with \
                 `cm train-autoencoder`",
            ));
        }
        if !self.has_null_class() && self.num_classes() > 0 {
            return Err(invalid(
                "net.arch",
                self.arch(),
                "a network with a null class for class-conditional training (arch = \"unet\", \
                 \"dit\" or \"mlp\"); class-conditional diffusers U-Nets are for sampling",
            ));
        }
        Ok(())
    }

    /// Whether the network embeds a guidance scale `w` (LCM).
    pub fn embeds_guidance(&self) -> bool {
        match self {
            NetConfig::Unet(c) => c.guidance_embedding,
            NetConfig::Mlp(c) => c.guidance_embedding,
            _ => false,
        }
    }

    /// Whether this is an autoencoder (not a denoiser `F(x, c_noise)`).
    pub fn is_autoencoder(&self) -> bool {
        matches!(self, NetConfig::Autoencoder(_))
    }

    /// Whether label `num_classes` is a null class ("no label", what
    /// classifier-free guidance and unlabelled sampling use). cm-rs's
    /// networks have one; diffusers' class-conditional U-Nets do not, and
    /// need a label in `0..num_classes` for every sample.
    pub fn has_null_class(&self) -> bool {
        !matches!(self, NetConfig::DiffusersUnet2d(_))
    }

    /// Number of classes (0 = unconditional). Label `num_classes` is the null
    /// class used by classifier-free guidance.
    pub fn num_classes(&self) -> usize {
        match self {
            NetConfig::Unet(c) => c.num_classes,
            NetConfig::Dit(c) => c.num_classes,
            NetConfig::Mlp(c) => c.num_classes,
            NetConfig::DiffusersUnet2d(c) => c.num_classes(),
            NetConfig::Autoencoder(_) => 0,
        }
    }
}

fn invalid(field: &str, value: impl std::fmt::Debug, expected: impl Into<String>) -> CoreError {
    CoreError::invalid_debug(field, value, expected)
}

fn check_positive(field: &str, value: usize) -> cm_core::Result<()> {
    if value == 0 || value > MAX_DIM {
        return Err(invalid(field, value, format!("1 to {MAX_DIM}")));
    }
    Ok(())
}

/// The class gate needs the w-embedding it projects and classes to gate.
fn check_class_gate(gate: bool, embedding: bool, num_classes: usize) -> cm_core::Result<()> {
    if gate && !(embedding && num_classes > 0) {
        return Err(invalid(
            "guidance_class_gate",
            gate,
            format!(
                "false unless guidance_embedding = true and num_classes > 0 (found {embedding} \
                 and {num_classes}): the gate projects the w-embedding onto the class embedding"
            ),
        ));
    }
    Ok(())
}

fn check_num_classes(value: usize) -> cm_core::Result<()> {
    if value > MAX_DIM {
        return Err(invalid("num_classes", value, format!("0 to {MAX_DIM}")));
    }
    Ok(())
}

/// Refuses a config whose parameter estimate exceeds [`MAX_PARAMS`].
fn check_params(estimate: f64) -> cm_core::Result<()> {
    if estimate > MAX_PARAMS {
        return Err(invalid(
            "net",
            format!("about {:.2e} parameters", estimate),
            format!(
                "at most {MAX_PARAMS:.0e} parameters (about {:.0} GB of f32 weights); \
                 make the network narrower or shallower",
                MAX_PARAMS * 4.0 / 1e9
            ),
        ));
    }
    Ok(())
}

impl UNetConfig {
    /// An upper-side estimate of the parameter count from the sizes alone
    /// (float arithmetic, no overflow): per level, `2 num_res_blocks + 2`
    /// residual blocks of two 3x3 convolutions with inputs up to twice the
    /// level's width, a 1x1 skip, the embedding projection and attention.
    pub fn approx_params(&self) -> f64 {
        let mc = self.model_channels as f64;
        let emb = mc * self.emb_mult as f64;
        let blocks = 2.0 * self.num_res_blocks as f64 + 2.0;
        let per_level: f64 = self
            .channel_mult
            .iter()
            .map(|&m| {
                let w = mc * m as f64;
                blocks * (9.0 * (2.0 * w * w + w * w) + 2.0 * w * w + 2.0 * emb * w + 4.0 * w * w)
            })
            .sum();
        per_level + 2.0 * emb * emb + (self.num_classes as f64 + 1.0) * emb
    }
}

impl DiTConfig {
    /// An estimate of the parameter count: per block attention (4 h^2),
    /// MLP (2 ratio h^2) and adaLN modulation (6 h^2), plus the embeddings,
    /// the final layer and the position table.
    pub fn approx_params(&self) -> f64 {
        let h = self.hidden_size as f64;
        let patch = (self.patch_size * self.patch_size * self.in_channels) as f64;
        self.depth as f64 * (10.0 + 2.0 * self.mlp_ratio) * h * h
            + 2.0 * patch * h
            + self.frequency_embedding_size as f64 * h
            + 4.0 * h * h
            + ((self.resolution / self.patch_size.max(1)) as f64).powi(2) * h
            + (self.num_classes as f64 + 1.0) * h
    }
}

impl MlpConfig {
    /// An estimate of the parameter count: per block two hidden x hidden
    /// layers and the embedding projection, plus the embedding MLP.
    pub fn approx_params(&self) -> f64 {
        let h = self.hidden as f64;
        let e = self.emb_channels as f64;
        self.depth as f64 * (2.0 * h * h + 2.0 * e * h)
            + 2.0 * self.dim as f64 * h
            + 2.0 * e * e
            + (self.num_classes as f64 + 1.0) * e
    }
}

impl NetConfig {
    /// An estimate of the parameter count (see each architecture's
    /// `approx_params`); validation refuses above [`MAX_PARAMS`].
    pub fn approx_params(&self) -> f64 {
        match self {
            NetConfig::Unet(c) => c.approx_params(),
            NetConfig::Dit(c) => c.approx_params(),
            NetConfig::Mlp(c) => c.approx_params(),
            NetConfig::DiffusersUnet2d(c) => c.num_params().unwrap_or(f64::INFINITY),
            NetConfig::Autoencoder(c) => c.approx_params(),
        }
    }
}

fn check_dropout(value: f64) -> cm_core::Result<()> {
    if !(0.0..1.0).contains(&value) {
        return Err(invalid("dropout", value, "a probability in [0, 1)"));
    }
    Ok(())
}

fn check_embedding(kind: NoiseEmbedding, scale: f64) -> cm_core::Result<()> {
    if kind == NoiseEmbedding::Fourier && !(scale.is_finite() && scale > 0.0) {
        return Err(invalid("fourier_scale", scale, "a finite number > 0"));
    }
    Ok(())
}

/// Channels of a denoising network's input: images (1 or 3) or an
/// autoencoder's latents (up to [`MAX_LATENT_CHANNELS`]).
fn check_sample_channels(channels: usize) -> cm_core::Result<()> {
    if channels == 0 || channels > MAX_LATENT_CHANNELS {
        return Err(invalid(
            "in_channels",
            channels,
            format!(
                "1 (grey) or 3 (RGB) for images, up to {MAX_LATENT_CHANNELS} for an autoencoder's latents"
            ),
        ));
    }
    Ok(())
}

/// The most latent channels an autoencoder may have (and a latent-space
/// network may take).
pub const MAX_LATENT_CHANNELS: usize = 64;

fn check_channels(channels: usize) -> cm_core::Result<()> {
    if channels != 1 && channels != 3 {
        return Err(invalid("in_channels", channels, "1 (grey) or 3 (RGB)"));
    }
    Ok(())
}

impl Validate for UNetConfig {
    fn validate(&self) -> cm_core::Result<()> {
        check_sample_channels(self.in_channels)?;
        check_positive("model_channels", self.model_channels)?;
        check_positive("num_res_blocks", self.num_res_blocks)?;
        check_positive("channels_per_head", self.channels_per_head)?;
        check_positive("emb_mult", self.emb_mult)?;
        check_positive("resolution", self.resolution)?;
        check_num_classes(self.num_classes)?;
        check_class_gate(
            self.guidance_class_gate,
            self.guidance_embedding,
            self.num_classes,
        )?;
        if self.channel_mult.is_empty()
            || self.channel_mult.len() > 8
            || self.channel_mult.iter().any(|&m| m == 0 || m > 64)
        {
            return Err(invalid(
                "channel_mult",
                &self.channel_mult,
                "1 to 8 multipliers, each 1 to 64",
            ));
        }
        check_params(self.approx_params())?;
        if self.resolution > MAX_RESOLUTION {
            return Err(invalid(
                "resolution",
                self.resolution,
                format!("1 to {MAX_RESOLUTION}"),
            ));
        }
        if !self.model_channels.is_multiple_of(2) {
            return Err(invalid(
                "model_channels",
                self.model_channels,
                "an even number (the noise embedding is [cos, sin])",
            ));
        }
        let levels = self.channel_mult.len() as u32;
        let factor = 1usize << (levels - 1);
        if self.resolution == 0 || !self.resolution.is_multiple_of(factor) {
            return Err(invalid(
                "resolution",
                self.resolution,
                format!("a multiple of 2^(levels-1) = {factor} for {levels} levels (pad 28 -> 32 for 4 levels)"),
            ));
        }
        let level_res: Vec<usize> = (0..levels).map(|l| self.resolution >> l).collect();
        // Attention at a level holds a (res^2 x res^2) matrix per head.
        for (level, &res) in level_res.iter().enumerate() {
            let attends = self.attn_resolutions.contains(&res) || level + 1 == levels as usize;
            if attends && res * res > MAX_TOKENS {
                return Err(invalid(
                    "attn_resolutions",
                    format!("{:?}", self.attn_resolutions),
                    format!(
                        "attention only where res^2 <= {MAX_TOKENS} tokens (level {level} is {res}x{res}; \
                         the lowest level always attends: add a level or lower the resolution)"
                    ),
                ));
            }
        }
        // Every attention block splits its width into whole heads (the
        // lowest level always has one, in the middle of the U-Net).
        for (level, &mult) in self.channel_mult.iter().enumerate() {
            let attends =
                self.attn_resolutions.contains(&level_res[level]) || level + 1 == levels as usize;
            let width = self.model_channels * mult;
            let heads = (width / self.channels_per_head).max(1);
            if attends && !width.is_multiple_of(heads) {
                return Err(invalid(
                    "channels_per_head",
                    self.channels_per_head,
                    format!("a value giving a whole number of heads for the {width} channels at resolution {}", level_res[level]),
                ));
            }
        }
        if let Some(r) = self
            .attn_resolutions
            .iter()
            .find(|r| !level_res.contains(r))
        {
            return Err(invalid(
                "attn_resolutions",
                r,
                format!("one of the level resolutions {level_res:?}"),
            ));
        }
        check_dropout(self.dropout)?;
        check_embedding(self.noise_embedding, self.fourier_scale)?;
        if !(self.skip_scale.is_finite() && self.skip_scale > 0.0) {
            return Err(invalid(
                "skip_scale",
                self.skip_scale,
                "a finite number > 0",
            ));
        }
        Ok(())
    }
}

impl Validate for DiTConfig {
    fn validate(&self) -> cm_core::Result<()> {
        check_sample_channels(self.in_channels)?;
        check_positive("patch_size", self.patch_size)?;
        check_positive("depth", self.depth)?;
        check_positive("num_heads", self.num_heads)?;
        check_positive("resolution", self.resolution)?;
        check_positive("hidden_size", self.hidden_size)?;
        check_positive("frequency_embedding_size", self.frequency_embedding_size)?;
        check_num_classes(self.num_classes)?;
        if !(self.mlp_ratio.is_finite() && self.mlp_ratio > 0.0 && self.mlp_ratio <= 64.0) {
            return Err(invalid("mlp_ratio", self.mlp_ratio, "a number in (0, 64]"));
        }
        if self.resolution > MAX_RESOLUTION {
            return Err(invalid(
                "resolution",
                self.resolution,
                format!("1 to {MAX_RESOLUTION}"),
            ));
        }
        if self.resolution == 0 || !self.resolution.is_multiple_of(self.patch_size) {
            return Err(invalid(
                "resolution",
                self.resolution,
                format!("a multiple of patch_size = {}", self.patch_size),
            ));
        }
        if self.hidden_size == 0
            || !self.hidden_size.is_multiple_of(2 * self.num_heads)
            || !self.hidden_size.is_multiple_of(4)
        {
            return Err(invalid(
                "hidden_size",
                self.hidden_size,
                format!(
                    "a multiple of 4 and of 2 * num_heads = {}",
                    2 * self.num_heads
                ),
            ));
        }
        if self.frequency_embedding_size == 0 || !self.frequency_embedding_size.is_multiple_of(2) {
            return Err(invalid(
                "frequency_embedding_size",
                self.frequency_embedding_size,
                "an even number >= 2",
            ));
        }
        let tokens = (self.resolution / self.patch_size).pow(2);
        if tokens > MAX_TOKENS {
            return Err(invalid(
                "resolution",
                self.resolution,
                format!(
                    "at most {MAX_TOKENS} tokens: (resolution / patch_size)^2 = {tokens} (raise patch_size)"
                ),
            ));
        }
        check_params(self.approx_params())?;
        check_dropout(self.dropout)?;
        check_embedding(self.noise_embedding, self.fourier_scale)
    }
}

impl Validate for MlpConfig {
    fn validate(&self) -> cm_core::Result<()> {
        check_positive("dim", self.dim)?;
        check_positive("hidden", self.hidden)?;
        check_positive("depth", self.depth)?;
        check_positive("emb_channels", self.emb_channels)?;
        check_num_classes(self.num_classes)?;
        check_class_gate(
            self.guidance_class_gate,
            self.guidance_embedding,
            self.num_classes,
        )?;
        check_params(self.approx_params())?;
        if self.emb_channels == 0 || !self.emb_channels.is_multiple_of(2) {
            return Err(invalid(
                "emb_channels",
                self.emb_channels,
                "an even number >= 2",
            ));
        }
        check_dropout(self.dropout)?;
        check_embedding(self.noise_embedding, self.fourier_scale)
    }
}

impl Validate for NetConfig {
    fn validate(&self) -> cm_core::Result<()> {
        match self {
            NetConfig::Unet(c) => c.validate(),
            NetConfig::Dit(c) => c.validate(),
            NetConfig::Mlp(c) => c.validate(),
            NetConfig::DiffusersUnet2d(c) => c.validate(),
            NetConfig::Autoencoder(c) => c.validate(),
        }
    }
}
