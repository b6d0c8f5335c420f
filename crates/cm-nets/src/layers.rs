//! Building blocks shared by the networks: noise-level embeddings
//! (positional, Transformer / ADM style; random Fourier features, NCSN++
//! style), zero-initialised layers, GroupNorm with EDM's group rule,
//! multi-head self-attention, and a MAC counter for FLOP estimates.

use serde::{Deserialize, Serialize};
use tch::nn::{self, Module};
use tch::{Device, Kind, Tensor};

/// How the noise conditioning `c_noise` is embedded.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum NoiseEmbedding {
    /// Sinusoidal positional embedding, `max_positions = 10000` (ADM,
    /// EDM's `PositionalEmbedding`).
    #[default]
    Positional,
    /// Random Fourier features `[cos, sin](2π f c_noise)`, `f ~ N(0, scale²)`
    /// (NCSN++, EDM's `FourierEmbedding`; iCT uses a small scale).
    Fourier,
}

/// An embedding of a `[B]` tensor of noise conditionings to `[B, channels]`.
#[derive(Debug)]
pub struct NoiseEmbed {
    /// Frequencies, `[channels / 2]`; a fixed buffer saved in checkpoints
    /// (random for Fourier features).
    freqs: Tensor,
    kind: NoiseEmbedding,
}

impl NoiseEmbed {
    /// `channels` must be even. `fourier_scale` is used by [`NoiseEmbedding::Fourier`].
    pub fn new(p: &nn::Path, channels: i64, kind: NoiseEmbedding, fourier_scale: f64) -> Self {
        let half = channels / 2;
        let freqs = p.zeros_no_train("freqs", &[half]);
        let values = match kind {
            // EDM PositionalEmbedding(endpoint=False): (1/10000)^(i/half).
            NoiseEmbedding::Positional => {
                let i = Tensor::arange(half, (Kind::Float, p.device()));
                (i / half as f64 * (1.0f64 / 10_000.0).ln()).exp()
            }
            // EDM FourierEmbedding: randn * scale, then 2π in forward.
            NoiseEmbedding::Fourier => {
                Tensor::randn([half], (Kind::Float, p.device())) * fourier_scale
            }
        };
        tch::no_grad(|| freqs.shallow_clone().copy_(&values));
        NoiseEmbed { freqs, kind }
    }

    /// `[B] -> [B, channels]`: `[cos, sin]` of the scaled conditionings.
    pub fn forward(&self, c_noise: &Tensor) -> Tensor {
        let c = c_noise.to_kind(self.freqs.kind());
        let mut x = c.outer(&self.freqs);
        if self.kind == NoiseEmbedding::Fourier {
            x *= 2.0 * std::f64::consts::PI;
        }
        Tensor::cat(&[x.cos(), x.sin()], 1)
    }
}

/// LCM's w-embedding: a sinusoidal embedding of `1000 w` (like a timestep)
/// through a zero-initialised projection, added to a network's noise
/// embedding, so a student built from a teacher starts equal to it (LCM,
/// Luo et al. 2023: the w-condition of guided distillation). Its variables
/// live at `map_guidance` (the frequencies) and `map_guidance_proj` under
/// the network's path.
///
/// With the class gate (`guidance_class_gate`), a second zero-initialised
/// projection of the same features, `s(w)` at `map_guidance_gate`, also
/// moves the class embedding along the direction classifier-free guidance
/// moves the output: `e_c + s(w) (e_c - e_null)` per channel. An additive
/// w-embedding cannot make the class embedding's effect depend on `w` (the
/// guided target `D_c + w (D_c - D_u)` does: at `w = -1` it ignores the
/// class); the gate gives the student that product directly, and `s = -1`
/// is the null class's embedding exactly. It starts at `s = 0`, the plain
/// class embedding, so the student still starts equal to the teacher.
#[derive(Debug)]
pub struct GuidanceEmbed {
    embed: NoiseEmbed,
    proj: nn::Linear,
    gate: Option<nn::Linear>,
}

impl GuidanceEmbed {
    /// `channels` sinusoidal features (even) projected to `emb` channels;
    /// `class_gate` adds the class gate (see the type).
    pub fn new(
        p: &nn::Path,
        channels: i64,
        emb: i64,
        class_gate: bool,
        macs: &mut MacCounter,
    ) -> Self {
        macs.linear(channels, emb, 1);
        if class_gate {
            macs.linear(channels, emb, 1);
        }
        GuidanceEmbed {
            embed: NoiseEmbed::new(
                &(p / "map_guidance"),
                channels,
                NoiseEmbedding::Positional,
                1.0,
            ),
            proj: zero_linear(p / "map_guidance_proj", channels, emb),
            gate: class_gate.then(|| zero_linear(p / "map_guidance_gate", channels, emb)),
        }
    }

    /// The sinusoidal features of `1000 w`, `[batch, channels]`; no `w`
    /// means `w = 0` (the plain conditional model).
    fn features(&self, guidance: Option<&Tensor>, batch: i64, device: Device) -> Tensor {
        let w = match guidance {
            Some(w) => w.to_kind(Kind::Float).expand([batch], false) * 1000.0,
            None => Tensor::zeros([batch], (Kind::Float, device)),
        };
        self.embed.forward(&w)
    }

    /// `[batch, emb]` for per-example or shared scales `w`; no `w` means
    /// `w = 0` (the plain conditional model).
    pub fn forward(&self, guidance: Option<&Tensor>, batch: i64, device: Device) -> Tensor {
        self.proj.forward(&self.features(guidance, batch, device))
    }

    /// Whether the class gate is on.
    pub fn gates_class(&self) -> bool {
        self.gate.is_some()
    }

    /// The class embedding under the gate, `e_c + s(w) (e_c - e_null)`
    /// (`[batch, emb]` each); `e_c` unchanged without the gate.
    pub fn gated_class(&self, guidance: Option<&Tensor>, e_c: Tensor, e_null: &Tensor) -> Tensor {
        match &self.gate {
            None => e_c,
            Some(gate) => {
                let s = gate.forward(&self.features(guidance, e_c.size()[0], e_c.device()));
                &e_c + s * (&e_c - e_null)
            }
        }
    }

    /// The trainable weights (for version-counter caches).
    pub fn weights(&self) -> impl Iterator<Item = &Tensor> {
        std::iter::once(&self.proj.ws)
            .chain(self.proj.bs.iter())
            .chain(
                self.gate
                    .iter()
                    .flat_map(|g| std::iter::once(&g.ws).chain(g.bs.iter())),
            )
    }
}

/// The class embedding of `labels` (or the null class) plus, with a
/// w-embedding that gates the class ([`GuidanceEmbed::gated_class`]), its
/// guidance-gated form: what U-Net and MLP add to the noise embedding.
pub fn class_embedding(
    labels: &ClassEmbed,
    guidance: Option<&GuidanceEmbed>,
    class: Option<&Tensor>,
    w: Option<&Tensor>,
    batch: i64,
) -> Tensor {
    let e_c = labels.forward(class, batch);
    match guidance.filter(|g| g.gates_class()) {
        Some(g) if class.is_some() => g.gated_class(w, e_c, &labels.forward(None, batch)),
        // No labels: the null class, where e_c - e_null = 0.
        _ => e_c,
    }
}

/// EDM's GroupNorm rule: `min(32, channels / 4)` groups, lowered until it
/// divides `channels`; eps = 1e-5.
pub fn group_norm(p: nn::Path, channels: i64) -> nn::GroupNorm {
    nn::group_norm(p, group_count(channels), channels, Default::default())
}

/// EDM's group count for `channels`: `min(32, channels / 4)`, lowered
/// until it divides `channels`.
pub fn group_count(channels: i64) -> i64 {
    let mut groups = (channels / 4).clamp(1, 32);
    while channels % groups != 0 {
        groups -= 1;
    }
    groups
}

/// A convolution whose weights and bias start at zero (ADM's `zero_module`),
/// so a fresh residual branch or output layer contributes nothing.
pub fn zero_conv(p: nn::Path, cin: i64, cout: i64, k: i64) -> nn::Conv2D {
    nn::conv2d(p, cin, cout, k, zero_conv_config(k))
}

/// The config of [`zero_conv`]: "same" padding, zero weights and bias.
pub fn zero_conv_config(k: i64) -> nn::ConvConfig {
    nn::ConvConfig {
        padding: k / 2,
        ws_init: nn::Init::Const(0.0),
        bs_init: nn::Init::Const(0.0),
        ..Default::default()
    }
}

/// A `k x k` convolution with "same" padding and default (Kaiming) init.
pub fn conv(p: nn::Path, cin: i64, cout: i64, k: i64) -> nn::Conv2D {
    nn::conv2d(p, cin, cout, k, conv_config(k))
}

/// The config of [`conv`]: "same" padding, default init.
pub fn conv_config(k: i64) -> nn::ConvConfig {
    nn::ConvConfig {
        padding: k / 2,
        ..Default::default()
    }
}

/// A linear layer whose weights and bias start at zero.
pub fn zero_linear<'a>(
    p: impl std::borrow::Borrow<nn::Path<'a>>,
    din: i64,
    dout: i64,
) -> nn::Linear {
    let cfg = nn::LinearConfig {
        ws_init: nn::Init::Const(0.0),
        bs_init: Some(nn::Init::Const(0.0)),
        bias: true,
    };
    nn::linear(p, din, dout, cfg)
}

/// Multi-head scaled dot-product self-attention over `[B, heads, T, d]`
/// queries, keys and values (libtorch's fused kernel).
pub fn attention(q: &Tensor, k: &Tensor, v: &Tensor) -> Tensor {
    Tensor::scaled_dot_product_attention::<Tensor>(q, k, v, None, 0.0, false, None, false)
}

/// A class-label embedding with one extra row for the null class (index
/// `num_classes`), which classifier-free guidance uses for "no label".
#[derive(Debug)]
pub struct ClassEmbed {
    table: crate::lora::AdaptedEmbedding,
    num_classes: i64,
}

impl ClassEmbed {
    /// `num_classes + 1` rows of `channels`.
    pub fn new(p: nn::Path, num_classes: i64, channels: i64) -> Self {
        let cfg = nn::EmbeddingConfig {
            ws_init: nn::Init::Randn {
                mean: 0.0,
                stdev: 0.02,
            },
            ..Default::default()
        };
        let table = nn::embedding(&p, num_classes + 1, channels, cfg);
        ClassEmbed {
            table: crate::lora::adapted_embedding(&p, table),
            num_classes,
        }
    }

    /// The embedding table, `[num_classes + 1, channels]`.
    pub fn weight(&self) -> &Tensor {
        &self.table.base.ws
    }

    /// Version counters of the table and its adapters, for caches.
    pub fn all_versions(&self, out: &mut Vec<i64>) {
        self.table.all_versions(out);
    }

    /// `[B]` int64 labels, or `None` for the null class for all `batch`.
    pub fn forward(&self, class: Option<&Tensor>, batch: i64) -> Tensor {
        let device = self.table.base.ws.device();
        match class {
            Some(labels) => self.table.forward(&labels.to_device(device)),
            None => self.table.forward(&Tensor::full(
                [batch],
                self.num_classes,
                (Kind::Int64, device),
            )),
        }
    }
}

/// Dropout (Srivastava et al. 2014) as every network here applies it: in
/// training, each element is zeroed with probability `p` and the rest scaled
/// by `1 / (1 - p)`; in evaluation the identity.
///
/// On CPU the mask comes from a counter-based hash (SplitMix64 of the seed
/// and the element's index) instead of libtorch's
/// `bernoulli_`, which runs on one thread on non-Intel CPUs (its MKL path is
/// Intel-only) and cost 14% of a training step of the CPU U-Net
/// (docs/benchmarks.md). The seed is one draw from libtorch's generator, so
/// `tch::manual_seed` makes masks reproducible and two forward passes after
/// the same seed share their mask (the student and target of CD / CT / ECT).
/// Other devices and kinds use libtorch's dropout.
pub fn dropout(x: &Tensor, p: f64, train: bool) -> Tensor {
    if !train || p <= 0.0 {
        return x.shallow_clone();
    }
    if x.device() != Device::Cpu || x.kind() != Kind::Float || p >= 1.0 {
        return x.dropout(p, train);
    }
    let Some(strides) = dense_strides(&x.size(), &x.stride()) else {
        return x.dropout(p, train);
    };
    let seed = Tensor::randint(i64::MAX, [1], (Kind::Int64, Device::Cpu)).int64_value(&[0]);
    let mask = dropout_mask(x.numel(), p, seed as u64);
    // The mask is i.i.d., so it is laid out in x's own memory order: the
    // product keeps x's memory format (channels-last stays channels-last).
    let mask = Tensor::from_slice(&mask).as_strided(x.size(), strides, None::<i64>);
    x * mask
}

/// `strides` when they describe a dense, non-overlapping layout of `size`
/// (any dimension order: contiguous, channels-last, ...), else `None`.
fn dense_strides(size: &[i64], strides: &[i64]) -> Option<Vec<i64>> {
    let mut dims: Vec<usize> = (0..size.len()).collect();
    dims.sort_by_key(|&d| (strides[d], size[d]));
    let mut expected = 1i64;
    for &d in &dims {
        if size[d] != 1 && strides[d] != expected {
            return None;
        }
        expected *= size[d];
    }
    Some(strides.to_vec())
}

/// SplitMix64's output function (Steele et al. 2014): a bijection of u64
/// whose outputs pass BigCrush for consecutive inputs.
fn splitmix64(mut z: u64) -> u64 {
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// The values of a dropout mask of `n` elements: `1 / (1 - p)` where kept,
/// 0 where dropped. Elements `2j` and `2j + 1` use the low and high 32 bits
/// of `splitmix64(seed + (j + 1) golden)` (SplitMix64's stream) and are kept
/// when below `(1 - p) 2^32`, so the keep probability is `1 - p` to within
/// 2^-32. Filled on the calling thread: libtorch's OpenMP workers spin for a
/// while after each operation, and a second thread pool competing with them
/// measured slower than one thread (docs/benchmarks.md).
pub fn dropout_mask(n: usize, p: f64, seed: u64) -> Vec<f32> {
    const GOLDEN: u64 = 0x9E37_79B9_7F4A_7C15;
    let keep = ((1.0 - p) * 4_294_967_296.0).round() as u64;
    let scale = (1.0 / (1.0 - p)) as f32;
    let value = |bits: u64| if bits < keep { scale } else { 0.0 };
    let mut out = vec![0f32; n];
    let mut counter = seed;
    let mut pairs = out.chunks_exact_mut(2);
    for pair in &mut pairs {
        counter = counter.wrapping_add(GOLDEN);
        let h = splitmix64(counter);
        pair[0] = value(h & 0xFFFF_FFFF);
        pair[1] = value(h >> 32);
    }
    if let [last] = pairs.into_remainder() {
        *last = value(splitmix64(counter.wrapping_add(GOLDEN)) & 0xFFFF_FFFF);
    }
    out
}

/// Counts multiply-accumulates per sample while a network is built, for the
/// FLOP estimates in the docs (2 FLOPs per MAC; normalisation and activations
/// are not counted).
#[derive(Debug, Default, Clone, Copy)]
pub struct MacCounter {
    /// Multiply-accumulates per sample counted so far.
    pub macs: u64,
}

impl MacCounter {
    /// A `k x k` convolution producing `cout x h x w` from `cin` channels.
    pub fn conv(&mut self, cin: i64, cout: i64, k: i64, h: i64, w: i64) {
        self.macs += (cin * cout * k * k * h * w) as u64;
    }

    /// A linear layer applied to `tokens` vectors.
    pub fn linear(&mut self, din: i64, dout: i64, tokens: i64) {
        self.macs += (din * dout * tokens) as u64;
    }

    /// Self-attention scores and weighted sum over `tokens` of `channels`.
    pub fn attention(&mut self, tokens: i64, channels: i64) {
        self.macs += (2 * tokens * tokens * channels) as u64;
    }
}
