//! A KL-regularised convolutional autoencoder in the style of the
//! latent-diffusion VAE (Rombach et al. 2022, `AutoencoderKL`): a residual
//! encoder that halves the resolution at every level but the last and ends
//! in a diagonal Gaussian posterior `q(z | x) = N(mean, exp(logvar))`, and a
//! mirrored decoder. With `channel_mult = [1, 2, 2]` a 1x28x28 image becomes
//! a 4x7x7 latent (down-sampling by 4), a 3x32x32 one 4x8x8.
//!
//! Latent consistency models (Luo et al. 2023) run diffusion and consistency
//! distillation on `scaling_factor * mean` (the latent scaled to unit
//! variance, Stable Diffusion's `scaling_factor` role) and decode at the end.
//!
//! As a [`Network`] the autoencoder is its reconstruction `decode(mean(x))`
//! (the noise conditioning is ignored), so [`crate::Model`] owns, saves and
//! loads it like any other network; [`crate::Model::autoencoder`] gives the
//! encoder and decoder.

use tch::nn::{self, Module};
use tch::{Kind, Tensor};

use cm_core::Conditioning;

use crate::config::AutoencoderConfig;
use crate::layers::{self, MacCounter};
use crate::network::Network;
use crate::unet::SelfAttention;

/// LDM clamps the log-variance to this range before exponentiating.
const LOGVAR_RANGE: (f64, f64) = (-30.0, 20.0);

/// LDM's `ResnetBlock` without a time embedding: GroupNorm, SiLU, 3x3 conv,
/// GroupNorm, SiLU, 3x3 conv, plus the input (through a 1x1 conv when the
/// width changes).
#[derive(Debug)]
struct ResBlock {
    norm1: nn::GroupNorm,
    conv1: nn::Conv2D,
    norm2: nn::GroupNorm,
    conv2: nn::Conv2D,
    skip: Option<nn::Conv2D>,
}

impl ResBlock {
    fn new(p: nn::Path, cin: i64, cout: i64, res: i64, macs: &mut MacCounter) -> Self {
        macs.conv(cin, cout, 3, res, res);
        macs.conv(cout, cout, 3, res, res);
        let skip = (cin != cout).then(|| {
            macs.conv(cin, cout, 1, res, res);
            layers::conv(&p / "skip", cin, cout, 1)
        });
        ResBlock {
            norm1: layers::group_norm(&p / "norm1", cin),
            conv1: layers::conv(&p / "conv1", cin, cout, 3),
            norm2: layers::group_norm(&p / "norm2", cout),
            conv2: layers::conv(&p / "conv2", cout, cout, 3),
            skip,
        }
    }

    fn forward(&self, x: &Tensor) -> Tensor {
        let h = self.conv1.forward(&self.norm1.forward(x).silu());
        let h = self.conv2.forward(&self.norm2.forward(&h).silu());
        match &self.skip {
            Some(conv) => conv.forward(x) + h,
            None => x + h,
        }
    }
}

/// The middle of encoder and decoder: block, optional self-attention, block.
#[derive(Debug)]
struct Middle {
    block1: ResBlock,
    attn: Option<SelfAttention>,
    block2: ResBlock,
}

impl Middle {
    fn new(p: nn::Path, channels: i64, res: i64, attention: bool, macs: &mut MacCounter) -> Self {
        Middle {
            block1: ResBlock::new(&p / "block1", channels, channels, res, macs),
            // One head, as LDM's `AttnBlock`.
            attn: attention.then(|| SelfAttention::new(&p / "attn", channels, 1, res, macs)),
            block2: ResBlock::new(&p / "block2", channels, channels, res, macs),
        }
    }

    fn forward(&self, x: &Tensor) -> Tensor {
        let mut h = self.block1.forward(x);
        if let Some(attn) = &self.attn {
            h = attn.forward(&h, false) + h;
        }
        self.block2.forward(&h)
    }
}

/// One resolution level: residual blocks, then a resampling convolution
/// (strided 3x3 down in the encoder, nearest-neighbour x2 then 3x3 up in the
/// decoder) except at the last level.
#[derive(Debug)]
struct Level {
    blocks: Vec<ResBlock>,
    resample: Option<nn::Conv2D>,
}

/// The encoder `x -> (mean, logvar)`.
#[derive(Debug)]
struct Encoder {
    conv_in: nn::Conv2D,
    levels: Vec<Level>,
    middle: Middle,
    norm_out: nn::GroupNorm,
    conv_out: nn::Conv2D,
}

/// The decoder `z -> x`.
#[derive(Debug)]
struct Decoder {
    conv_in: nn::Conv2D,
    middle: Middle,
    levels: Vec<Level>,
    norm_out: nn::GroupNorm,
    conv_out: nn::Conv2D,
}

/// A diagonal Gaussian posterior `N(mean, exp(logvar))` over latents
/// `[B, latent_channels, h, w]`.
#[derive(Debug)]
pub struct DiagonalGaussian {
    /// The mean.
    pub mean: Tensor,
    /// The log-variance, clamped to LDM's `[-30, 20]`.
    pub logvar: Tensor,
}

impl DiagonalGaussian {
    /// A draw `mean + exp(logvar / 2) z` (libtorch's generator), the
    /// reparameterisation trick.
    pub fn sample(&self) -> Tensor {
        &self.mean + (&self.logvar * 0.5).exp() * self.mean.randn_like()
    }

    /// The posterior mode (its mean), what a latent data set is encoded to.
    pub fn mode(&self) -> &Tensor {
        &self.mean
    }

    /// `KL(q || N(0, I))` per example, summed over the latent's elements:
    /// `0.5 sum(mean^2 + exp(logvar) - 1 - logvar)`, `[B]`.
    pub fn kl(&self) -> Tensor {
        let terms = self.mean.square() + self.logvar.exp() - 1.0 - &self.logvar;
        terms.flatten(1, -1).sum_dim_intlist(1, false, Kind::Float) * 0.5
    }
}

/// The autoencoder: encoder, decoder and the sizes between them.
#[derive(Debug)]
pub struct Autoencoder {
    encoder: Encoder,
    decoder: Decoder,
    latent_channels: i64,
    factor: i64,
}

impl Autoencoder {
    /// Builds the autoencoder under `p` (encoder under `encoder.`, decoder
    /// under `decoder.`), counting its multiply-accumulates (encode plus
    /// decode) in `macs`. `cfg` must be validated.
    pub fn new(p: &nn::Path, cfg: &AutoencoderConfig, macs: &mut MacCounter) -> Self {
        let base = cfg.base_channels as i64;
        let widths: Vec<i64> = cfg.channel_mult.iter().map(|&m| base * m as i64).collect();
        let levels = widths.len();
        let z = cfg.latent_channels as i64;
        let res0 = cfg.resolution as i64;
        let cin = cfg.in_channels as i64;

        let e = p / "encoder";
        macs.conv(cin, base, 3, res0, res0);
        let conv_in = layers::conv(&e / "conv_in", cin, base, 3);
        let mut enc_levels = Vec::with_capacity(levels);
        let (mut ch, mut res) = (base, res0);
        for (i, &w) in widths.iter().enumerate() {
            let lp = &e / "down" / i;
            let blocks = (0..cfg.num_res_blocks)
                .map(|j| {
                    let b = ResBlock::new(&lp / "block" / j, ch, w, res, macs);
                    ch = w;
                    b
                })
                .collect();
            let resample = (i + 1 < levels).then(|| {
                res /= 2;
                macs.conv(ch, ch, 3, res, res);
                let c = nn::ConvConfig {
                    stride: 2,
                    padding: 1,
                    ..Default::default()
                };
                nn::conv2d(&lp / "downsample", ch, ch, 3, c)
            });
            enc_levels.push(Level { blocks, resample });
        }
        let middle = Middle::new(&e / "mid", ch, res, cfg.mid_attention, macs);
        macs.conv(ch, 2 * z, 3, res, res);
        let encoder = Encoder {
            conv_in,
            levels: enc_levels,
            middle,
            norm_out: layers::group_norm(&e / "norm_out", ch),
            conv_out: layers::conv(&e / "conv_out", ch, 2 * z, 3),
        };

        let d = p / "decoder";
        macs.conv(z, ch, 3, res, res);
        let conv_in = layers::conv(&d / "conv_in", z, ch, 3);
        let middle = Middle::new(&d / "mid", ch, res, cfg.mid_attention, macs);
        let mut dec_levels = Vec::with_capacity(levels);
        for i in (0..levels).rev() {
            let lp = &d / "up" / i;
            let w = widths[i];
            // One block more than the encoder, as LDM's decoder.
            let blocks = (0..=cfg.num_res_blocks)
                .map(|j| {
                    let b = ResBlock::new(&lp / "block" / j, ch, w, res, macs);
                    ch = w;
                    b
                })
                .collect();
            let resample = (i > 0).then(|| {
                res *= 2;
                macs.conv(ch, ch, 3, res, res);
                layers::conv(&lp / "upsample", ch, ch, 3)
            });
            dec_levels.push(Level { blocks, resample });
        }
        macs.conv(ch, cin, 3, res, res);
        let decoder = Decoder {
            conv_in,
            middle,
            levels: dec_levels,
            norm_out: layers::group_norm(&d / "norm_out", ch),
            conv_out: layers::conv(&d / "conv_out", ch, cin, 3),
        };
        Autoencoder {
            encoder,
            decoder,
            latent_channels: z,
            factor: 1 << (levels - 1),
        }
    }

    /// Latent channels.
    pub fn latent_channels(&self) -> i64 {
        self.latent_channels
    }

    /// How much each side shrinks (`2^(levels - 1)`).
    pub fn downsampling(&self) -> i64 {
        self.factor
    }

    /// `q(z | x)` for images `x` `[B, C, H, W]` in [-1, 1].
    pub fn encode(&self, x: &Tensor) -> DiagonalGaussian {
        let e = &self.encoder;
        let mut h = e.conv_in.forward(x);
        for level in &e.levels {
            for block in &level.blocks {
                h = block.forward(&h);
            }
            if let Some(down) = &level.resample {
                h = down.forward(&h);
            }
        }
        let h = e.middle.forward(&h);
        let moments = e.conv_out.forward(&e.norm_out.forward(&h).silu());
        let parts = moments.chunk(2, 1);
        DiagonalGaussian {
            mean: parts[0].shallow_clone(),
            logvar: parts[1].clamp(LOGVAR_RANGE.0, LOGVAR_RANGE.1),
        }
    }

    /// Images `[B, C, H, W]` from latents `[B, latent_channels, h, w]`
    /// (unscaled: divide a diffusion model's latent by the scaling factor
    /// first).
    pub fn decode(&self, z: &Tensor) -> Tensor {
        let d = &self.decoder;
        let mut h = d.middle.forward(&d.conv_in.forward(z));
        for level in &d.levels {
            for block in &level.blocks {
                h = block.forward(&h);
            }
            if let Some(up) = &level.resample {
                let (hh, ww) = (h.size()[2], h.size()[3]);
                let big = h.upsample_nearest2d([hh * 2, ww * 2], None::<f64>, None::<f64>);
                h = up.forward(&big);
            }
        }
        d.conv_out.forward(&d.norm_out.forward(&h).silu())
    }
}

impl Network for Autoencoder {
    /// The deterministic reconstruction `decode(mean(x))`; `c_noise` and
    /// `cond` play no part.
    fn forward_t(
        &self,
        x: &Tensor,
        _c_noise: &Tensor,
        _cond: Conditioning<'_>,
        _train: bool,
    ) -> Tensor {
        self.decode(self.encode(x).mode())
    }
}
