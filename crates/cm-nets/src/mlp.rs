//! A residual MLP with a noise-level embedding, for 2-D toy data (the toy
//! experiments of the consistency papers use small MLPs like this): input
//! projection, residual blocks `h + fc2(dropout(silu(fc1(silu(norm(h))) +
//! emb)))`, LayerNorm, SiLU and a zero-initialised output projection.

use tch::nn::{self, Module};
use tch::Tensor;

use crate::config::MlpConfig;
use crate::layers::{self, ClassEmbed, GuidanceEmbed, MacCounter, NoiseEmbed};
use crate::lora::{adapted_linear, AdaptedLinear};
use crate::network::Network;
use cm_core::Conditioning;

#[derive(Debug)]
struct ResBlock {
    norm: nn::LayerNorm,
    fc1: AdaptedLinear,
    emb: AdaptedLinear,
    fc2: AdaptedLinear,
}

/// The residual MLP; see the module docs.
#[derive(Debug)]
pub struct ResidualMlp {
    map_noise: NoiseEmbed,
    map_layer: AdaptedLinear,
    map_label: Option<ClassEmbed>,
    /// LCM's w-embedding, added to the noise embedding.
    map_guidance: Option<GuidanceEmbed>,
    input: AdaptedLinear,
    blocks: Vec<ResBlock>,
    out_norm: nn::LayerNorm,
    output: AdaptedLinear,
    dropout: f64,
}

impl ResidualMlp {
    /// Builds the network under `p` from a validated config; adds its
    /// multiply-accumulates per sample to `macs`.
    pub fn new(p: &nn::Path, cfg: &MlpConfig, macs: &mut MacCounter) -> Self {
        let (dim, hidden, emb) = (cfg.dim as i64, cfg.hidden as i64, cfg.emb_channels as i64);
        macs.linear(emb, emb, 1);
        macs.linear(dim, hidden, 1);
        let blocks = (0..cfg.depth)
            .map(|i| {
                let b = p / "blocks" / i;
                macs.linear(hidden, hidden, 2);
                macs.linear(emb, hidden, 1);
                ResBlock {
                    norm: nn::layer_norm(&b / "norm", vec![hidden], Default::default()),
                    fc1: adapted_linear(
                        &(&b / "fc1"),
                        nn::linear(&b / "fc1", hidden, hidden, Default::default()),
                    ),
                    emb: adapted_linear(
                        &(&b / "emb"),
                        nn::linear(&b / "emb", emb, hidden, Default::default()),
                    ),
                    fc2: adapted_linear(
                        &(&b / "fc2"),
                        layers::zero_linear(&b / "fc2", hidden, hidden),
                    ),
                }
            })
            .collect();
        macs.linear(hidden, dim, 1);
        ResidualMlp {
            map_noise: NoiseEmbed::new(
                &(p / "map_noise"),
                emb,
                cfg.noise_embedding,
                cfg.fourier_scale,
            ),
            map_layer: adapted_linear(
                &(p / "map_layer"),
                nn::linear(p / "map_layer", emb, emb, Default::default()),
            ),
            map_label: (cfg.num_classes > 0)
                .then(|| ClassEmbed::new(p / "map_label", cfg.num_classes as i64, emb)),
            map_guidance: cfg
                .guidance_embedding
                .then(|| GuidanceEmbed::new(p, emb, emb, cfg.guidance_class_gate, macs)),
            input: adapted_linear(
                &(p / "input"),
                nn::linear(p / "input", dim, hidden, Default::default()),
            ),
            blocks,
            out_norm: nn::layer_norm(p / "out_norm", vec![hidden], Default::default()),
            output: adapted_linear(
                &(p / "output"),
                layers::zero_linear(p / "output", hidden, dim),
            ),
            dropout: cfg.dropout,
        }
    }
}

impl Network for ResidualMlp {
    fn forward_t(
        &self,
        x: &Tensor,
        c_noise: &Tensor,
        cond: Conditioning<'_>,
        train: bool,
    ) -> Tensor {
        let mut emb = self
            .map_layer
            .forward_t(&self.map_noise.forward(c_noise), train);
        if let Some(labels) = &self.map_label {
            emb += crate::layers::class_embedding(
                labels,
                self.map_guidance.as_ref(),
                cond.class,
                cond.guidance,
                x.size()[0],
            );
        }
        if let Some(guidance) = &self.map_guidance {
            emb += guidance.forward(cond.guidance, x.size()[0], x.device());
        }
        let emb = emb.silu();
        let mut h = self.input.forward_t(x, train);
        for b in &self.blocks {
            let inner =
                b.fc1.forward_t(&b.norm.forward(&h).silu(), train) + b.emb.forward_t(&emb, train);
            h = &h
                + b.fc2.forward_t(
                    &crate::layers::dropout(&inner.silu(), self.dropout, train),
                    train,
                );
        }
        self.output
            .forward_t(&self.out_norm.forward(&h).silu(), train)
    }
}
