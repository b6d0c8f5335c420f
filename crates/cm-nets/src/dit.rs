//! A Diffusion Transformer (Peebles & Xie 2023, "Scalable Diffusion Models
//! with Transformers", `models.py` of facebookresearch/DiT): patchify with a
//! strided convolution, fixed 2-D sin-cos positional embedding, transformer
//! blocks with adaLN-Zero conditioning on `c_noise` and class, a final
//! adaLN layer, unpatchify. The adaLN modulations and the final projection
//! start at zero, so a fresh DiT returns zeros and each block starts as the
//! identity.

use tch::nn::{self, Module};
use tch::{Kind, Tensor};

use crate::config::DiTConfig;
use crate::layers::{self, ClassEmbed, MacCounter, NoiseEmbed};
use crate::lora::{adapted, AdaptedLinear};
use crate::network::Network;
use cm_core::Conditioning;

/// DiT's 2-D sin-cos positional embedding for a `grid x grid` token grid,
/// `[grid*grid, dim]`: half the channels encode the row, half the column,
/// each as `[sin, cos](pos / 10000^(2i/(dim/2)))`.
pub fn sincos_2d(dim: i64, grid: i64) -> Tensor {
    let quarter = dim / 4;
    let omega = (Tensor::arange(quarter, (Kind::Double, tch::Device::Cpu)) / quarter as f64
        * -(10_000f64.ln()))
    .exp();
    let pos = Tensor::arange(grid, (Kind::Double, tch::Device::Cpu));
    let embed_1d = |p: &Tensor| {
        let out = p.outer(&omega);
        Tensor::cat(&[out.sin(), out.cos()], 1)
    };
    // Token t = row * grid + col; DiT's meshgrid puts w (column) first.
    let rows = pos.repeat_interleave_self_int(grid, 0, None);
    let cols = pos.repeat([grid]);
    Tensor::cat(&[embed_1d(&cols), embed_1d(&rows)], 1).to_kind(Kind::Float)
}

/// `x (1 + scale) + shift`, with per-example `scale`, `shift` of `[B, D]`.
fn modulate(x: &Tensor, shift: &Tensor, scale: &Tensor) -> Tensor {
    shift.unsqueeze(1).addcmul(x, &(scale.unsqueeze(1) + 1.0))
}

fn layer_norm(p: nn::Path, dim: i64) -> nn::LayerNorm {
    let cfg = nn::LayerNormConfig {
        elementwise_affine: false,
        eps: 1e-6,
        ..Default::default()
    };
    nn::layer_norm(p, vec![dim], cfg)
}

#[derive(Debug)]
struct DiTBlock {
    norm1: nn::LayerNorm,
    qkv: AdaptedLinear,
    proj: AdaptedLinear,
    norm2: nn::LayerNorm,
    fc1: AdaptedLinear,
    fc2: AdaptedLinear,
    ada_ln: AdaptedLinear,
    heads: i64,
    dropout: f64,
}

impl DiTBlock {
    fn new(p: nn::Path, cfg: &DiTConfig, tokens: i64, macs: &mut MacCounter) -> Self {
        let d = cfg.hidden_size as i64;
        let hidden = (d as f64 * cfg.mlp_ratio) as i64;
        macs.linear(d, 3 * d, tokens);
        macs.attention(tokens, d);
        macs.linear(d, d, tokens);
        macs.linear(d, hidden, tokens);
        macs.linear(hidden, d, tokens);
        macs.linear(d, 6 * d, 1);
        DiTBlock {
            norm1: layer_norm(&p / "norm1", d),
            qkv: adapted(&p / "attn" / "qkv", |q| {
                nn::linear(q, d, 3 * d, Default::default())
            }),
            proj: adapted(&p / "attn" / "proj", |q| {
                nn::linear(q, d, d, Default::default())
            }),
            norm2: layer_norm(&p / "norm2", d),
            fc1: adapted(&p / "mlp" / "fc1", |q| {
                nn::linear(q, d, hidden, Default::default())
            }),
            fc2: adapted(&p / "mlp" / "fc2", |q| {
                nn::linear(q, hidden, d, Default::default())
            }),
            ada_ln: adapted(&p / "adaLN_modulation", |q| {
                layers::zero_linear(q, d, 6 * d)
            }),
            heads: cfg.num_heads as i64,
            dropout: cfg.dropout,
        }
    }

    fn attention(&self, x: &Tensor, train: bool) -> Tensor {
        let (b, t, d) = x.size3().expect("tokens are 3-D");
        let qkv = self
            .qkv
            .forward_t(x, train)
            .reshape([b, t, 3, self.heads, d / self.heads])
            .permute([2, 0, 3, 1, 4]);
        let out = layers::attention(&qkv.get(0), &qkv.get(1), &qkv.get(2));
        self.proj
            .forward_t(&out.transpose(1, 2).reshape([b, t, d]), train)
    }

    fn forward(&self, x: &Tensor, c: &Tensor, train: bool) -> Tensor {
        let m = self.ada_ln.forward_t(&c.silu(), train).chunk(6, 1);
        let (shift_msa, scale_msa, gate_msa) = (&m[0], &m[1], &m[2]);
        let (shift_mlp, scale_mlp, gate_mlp) = (&m[3], &m[4], &m[5]);
        let h = self.attention(
            &modulate(&self.norm1.forward(x), shift_msa, scale_msa),
            train,
        );
        let x = x + gate_msa.unsqueeze(1) * crate::layers::dropout(&h, self.dropout, train);
        let h = modulate(&self.norm2.forward(&x), shift_mlp, scale_mlp);
        let h = self
            .fc2
            .forward_t(&self.fc1.forward_t(&h, train).gelu("tanh"), train);
        &x + gate_mlp.unsqueeze(1) * crate::layers::dropout(&h, self.dropout, train)
    }
}

/// The Diffusion Transformer; see the module docs.
#[derive(Debug)]
pub struct DiT {
    x_embedder: nn::Conv2D,
    pos_embed: Tensor,
    t_freq: NoiseEmbed,
    t_mlp0: nn::Linear,
    t_mlp2: nn::Linear,
    y_embedder: Option<ClassEmbed>,
    blocks: Vec<DiTBlock>,
    norm_final: nn::LayerNorm,
    final_ada_ln: nn::Linear,
    final_linear: nn::Linear,
    patch: i64,
    channels: i64,
    grid: i64,
}

impl DiT {
    /// Builds the network under `p` from a validated config; adds its
    /// multiply-accumulates per sample to `macs`.
    pub fn new(p: &nn::Path, cfg: &DiTConfig, macs: &mut MacCounter) -> Self {
        let d = cfg.hidden_size as i64;
        let patch = cfg.patch_size as i64;
        let channels = cfg.in_channels as i64;
        let grid = (cfg.resolution / cfg.patch_size) as i64;
        let tokens = grid * grid;
        let f = cfg.frequency_embedding_size as i64;
        let conv = nn::ConvConfig {
            stride: patch,
            ..Default::default()
        };
        macs.conv(channels, d, patch, grid, grid);
        macs.linear(f, d, 1);
        macs.linear(d, d, 1);
        let blocks = (0..cfg.depth)
            .map(|i| DiTBlock::new(p / "blocks" / i, cfg, tokens, macs))
            .collect();
        macs.linear(d, 2 * d, 1);
        macs.linear(d, patch * patch * channels, tokens);
        let fin = p / "final_layer";
        DiT {
            x_embedder: nn::conv2d(p / "x_embedder" / "proj", channels, d, patch, conv),
            pos_embed: {
                // A fixed buffer in the VarStore: saved, loaded and moved with the weights.
                let buffer = p.zeros_no_train("pos_embed", &[tokens, d]);
                tch::no_grad(|| buffer.shallow_clone().copy_(&sincos_2d(d, grid)));
                buffer
            },
            t_freq: NoiseEmbed::new(
                &(p / "t_embedder" / "freq"),
                f,
                cfg.noise_embedding,
                cfg.fourier_scale,
            ),
            t_mlp0: nn::linear(p / "t_embedder" / "mlp0", f, d, Default::default()),
            t_mlp2: nn::linear(p / "t_embedder" / "mlp2", d, d, Default::default()),
            y_embedder: (cfg.num_classes > 0)
                .then(|| ClassEmbed::new(p / "y_embedder", cfg.num_classes as i64, d)),
            blocks,
            norm_final: layer_norm(&fin / "norm_final", d),
            final_ada_ln: layers::zero_linear(&fin / "adaLN_modulation", d, 2 * d),
            final_linear: layers::zero_linear(&fin / "linear", d, patch * patch * channels),
            patch,
            channels,
            grid,
        }
    }
}

impl Network for DiT {
    fn forward_t(
        &self,
        x: &Tensor,
        c_noise: &Tensor,
        cond: Conditioning<'_>,
        train: bool,
    ) -> Tensor {
        let b = x.size()[0];
        // [B, C, H, W] -> [B, D, g, g] -> [B, T, D]
        let h = self.x_embedder.forward(x).flatten(2, 3).transpose(1, 2) + &self.pos_embed;
        let mut c = self
            .t_mlp2
            .forward(&self.t_mlp0.forward(&self.t_freq.forward(c_noise)).silu());
        if let Some(y) = &self.y_embedder {
            c += y.forward(cond.class, b);
        }
        let mut h = h;
        for block in &self.blocks {
            h = block.forward(&h, &c, train);
        }
        let m = self.final_ada_ln.forward(&c.silu()).chunk(2, 1);
        let h = self
            .final_linear
            .forward(&modulate(&self.norm_final.forward(&h), &m[0], &m[1]));
        // Unpatchify: [B, T, p*p*C] -> [B, C, H, W].
        let (g, p, ch) = (self.grid, self.patch, self.channels);
        h.reshape([b, g, g, p, p, ch])
            .permute([0, 5, 1, 3, 2, 4])
            .reshape([b, ch, g * p, g * p])
    }
}
