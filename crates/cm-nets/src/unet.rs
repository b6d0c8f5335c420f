//! An ADM / EDM-style U-Net (Dhariwal & Nichol 2021; Karras et al. 2022,
//! `DhariwalUNet` in `training/networks.py`, with `SongUNet`'s Fourier
//! embedding and skip scaling as options).
//!
//! Encoder: a 3x3 input convolution, then per level `num_res_blocks` residual
//! blocks (self-attention at `attn_resolutions`) and a down-sampling block
//! between levels. Middle: two blocks, the first with attention. Decoder: per
//! level an up-sampling block (but at the lowest level) and `num_res_blocks +
//! 1` blocks, each taking a skip connection from the encoder by
//! concatenation. Output: GroupNorm, SiLU, zero-initialised 3x3 convolution.
//! Each block's second convolution and attention projection also start at
//! zero, so a fresh block is the identity on its skip path.

use std::sync::Arc;

use tch::nn::{self, Module};
use tch::Tensor;

use crate::config::{Resample, UNetConfig};
use crate::layers::{self, ClassEmbed, GuidanceEmbed, MacCounter, NoiseEmbed};
use crate::lora::{adapted_conv, adapted_linear, AdaptedConv2d, AdaptedLinear};
use crate::network::Network;
use cm_core::Conditioning;

pub mod small_batch;

use small_batch::{HostEmb, Weights};

/// Multi-head self-attention over the pixels of a feature map.
#[derive(Debug)]
pub(crate) struct SelfAttention {
    norm: nn::GroupNorm,
    qkv: AdaptedConv2d,
    proj: AdaptedConv2d,
    heads: i64,
}

impl SelfAttention {
    pub(crate) fn new(
        p: nn::Path,
        channels: i64,
        heads: i64,
        res: i64,
        macs: &mut MacCounter,
    ) -> Self {
        macs.conv(channels, 3 * channels, 1, res, res);
        macs.attention(res * res, channels);
        macs.conv(channels, channels, 1, res, res);
        SelfAttention {
            norm: layers::group_norm(&p / "norm", channels),
            qkv: adapted_conv(
                &(&p / "qkv"),
                channels,
                3 * channels,
                1,
                layers::conv_config(1),
            ),
            proj: adapted_conv(
                &(&p / "proj"),
                channels,
                channels,
                1,
                layers::zero_conv_config(1),
            ),
            heads,
        }
    }

    /// Returns the attention branch (to be added to `x`).
    pub(crate) fn forward(&self, x: &Tensor, train: bool) -> Tensor {
        let (b, c, h, w) = x.size4().expect("feature map is 4-D");
        let qkv = self.qkv.forward_t(&self.norm.forward(x), train);
        // [B, 3C, H, W] -> 3 x [B, heads, HW, C/heads]
        let qkv = qkv
            .reshape([b, 3, self.heads, c / self.heads, h * w])
            .permute([1, 0, 2, 4, 3]);
        let out = layers::attention(&qkv.get(0), &qkv.get(1), &qkv.get(2));
        let out = out.permute([0, 1, 3, 2]).reshape([b, c, h, w]);
        self.proj.forward_t(&out, train)
    }
}

/// Up- or down-sampling inside a block.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Scale {
    Same,
    Up,
    Down,
}

/// EDM's `UNetBlock`: GroupNorm, SiLU, (resample), conv; scale-shift from
/// the embedding; GroupNorm, SiLU, dropout, zero-init conv; skip (1x1 conv if
/// the width changes); optional self-attention.
#[derive(Debug)]
struct UNetBlock {
    norm0: nn::GroupNorm,
    conv0: Conv0,
    affine: AdaptedLinear,
    norm1: nn::GroupNorm,
    conv1: AdaptedConv2d,
    skip: Option<AdaptedConv2d>,
    attn: Option<SelfAttention>,
    scale: Scale,
    in_channels: i64,
    dropout: f64,
    skip_scale: f64,
    scale_shift: bool,
}

/// The first convolution of a block, with its resampling.
#[derive(Debug)]
enum Conv0 {
    /// Plain 3x3, or box-filter resampling then 3x3.
    Filtered(AdaptedConv2d),
    /// Learned strided down-sampling.
    StridedDown(AdaptedConv2d),
    /// Learned transposed up-sampling.
    TransposedUp(nn::ConvTranspose2D),
}

fn resample_filter(x: &Tensor, scale: Scale) -> Tensor {
    match scale {
        Scale::Same => x.shallow_clone(),
        Scale::Down => x.avg_pool2d([2, 2], [2, 2], [0, 0], false, true, None::<i64>),
        Scale::Up => {
            x.upsample_nearest2d([x.size()[2] * 2, x.size()[3] * 2], None::<f64>, None::<f64>)
        }
    }
}

struct BlockSpec {
    cin: i64,
    cout: i64,
    emb: i64,
    res_in: i64,
    scale: Scale,
    attention: bool,
}

impl UNetBlock {
    fn new(p: nn::Path, spec: BlockSpec, cfg: &UNetConfig, macs: &mut MacCounter) -> Self {
        let BlockSpec {
            cin,
            cout,
            emb,
            res_in,
            scale,
            attention,
        } = spec;
        let res = match scale {
            Scale::Same => res_in,
            Scale::Up => res_in * 2,
            Scale::Down => res_in / 2,
        };
        let conv0 = match (cfg.resample, scale) {
            (Resample::Learned, Scale::Down) => {
                let c = nn::ConvConfig {
                    stride: 2,
                    padding: 1,
                    ..Default::default()
                };
                Conv0::StridedDown(adapted_conv(&(&p / "conv0"), cin, cout, 3, c))
            }
            (Resample::Learned, Scale::Up) => {
                let c = nn::ConvTransposeConfig {
                    stride: 2,
                    padding: 1,
                    ..Default::default()
                };
                Conv0::TransposedUp(nn::conv_transpose2d(&p / "conv0", cin, cout, 4, c))
            }
            _ => Conv0::Filtered(adapted_conv(
                &(&p / "conv0"),
                cin,
                cout,
                3,
                layers::conv_config(3),
            )),
        };
        let kernel = if matches!(conv0, Conv0::TransposedUp(_)) {
            4
        } else {
            3
        };
        // Transposed conv: each input pixel meets k*k weights per channel pair.
        let conv0_res = if kernel == 4 { res_in } else { res };
        macs.conv(cin, cout, kernel, conv0_res, conv0_res);
        let affine_out = if cfg.scale_shift { 2 * cout } else { cout };
        macs.linear(emb, affine_out, 1);
        macs.conv(cout, cout, 3, res, res);
        let skip = (cin != cout).then(|| {
            macs.conv(cin, cout, 1, res, res);
            adapted_conv(&(&p / "skip"), cin, cout, 1, layers::conv_config(1))
        });
        let heads = (cout / cfg.channels_per_head as i64).max(1);
        let attn = attention.then(|| SelfAttention::new(&p / "attn", cout, heads, res, macs));
        UNetBlock {
            norm0: layers::group_norm(&p / "norm0", cin),
            conv0,
            affine: adapted_linear(
                &(&p / "affine"),
                nn::linear(&p / "affine", emb, affine_out, Default::default()),
            ),
            norm1: layers::group_norm(&p / "norm1", cout),
            conv1: adapted_conv(&(&p / "conv1"), cout, cout, 3, layers::zero_conv_config(3)),
            skip,
            attn,
            scale,
            in_channels: cin,
            dropout: cfg.dropout,
            skip_scale: cfg.skip_scale,
            scale_shift: cfg.scale_shift,
        }
    }

    /// What the block takes from the embedding: `(1 + scale, shift)` with
    /// scale-shift, else the bias to add; `[B, C, 1, 1]` each.
    fn emb_params(&self, emb: &Tensor, train: bool) -> EmbParams {
        let params = self
            .affine
            .forward_t(emb, train)
            .unsqueeze(-1)
            .unsqueeze(-1);
        if self.scale_shift {
            let chunks = params.chunk(2, 1);
            EmbParams::ScaleShift {
                scale1: &chunks[0] + 1.0,
                shift: chunks[1].shallow_clone(),
            }
        } else {
            EmbParams::Add(params)
        }
    }

    /// Version counters of what [`Self::emb_params`] reads (for the
    /// embedding cache).
    fn emb_versions(&self, out: &mut Vec<i64>) {
        self.affine.all_versions(out);
    }

    fn forward(&self, x: &Tensor, emb: &EmbParams, train: bool) -> Tensor {
        let h = self.norm0.forward(x).silu();
        let h = match &self.conv0 {
            Conv0::Filtered(conv) => conv.forward_t(&resample_filter(&h, self.scale), train),
            Conv0::StridedDown(conv) => conv.forward_t(&h, train),
            Conv0::TransposedUp(conv) => conv.forward(&h),
        };
        let h = match emb {
            EmbParams::ScaleShift { scale1, shift } => {
                shift.addcmul(&self.norm1.forward(&h), scale1).silu()
            }
            EmbParams::Add(params) => self.norm1.forward(&(h + params)).silu(),
        };
        let h = self
            .conv1
            .forward_t(&crate::layers::dropout(&h, self.dropout, train), train);
        let skip = resample_filter(x, self.scale);
        let skip = match &self.skip {
            Some(conv) => conv.forward_t(&skip, train),
            None => skip,
        };
        let mut out = (h + skip) * self.skip_scale;
        if let Some(attn) = &self.attn {
            out = (attn.forward(&out, train) + out) * self.skip_scale;
        }
        out
    }
}

/// A block's share of the noise (and class) embedding.
#[derive(Debug)]
enum EmbParams {
    /// `(1 + scale, shift)` of the scale-shift norm.
    ScaleShift { scale1: Tensor, shift: Tensor },
    /// A bias added before the norm.
    Add(Tensor),
}

impl EmbParams {
    fn shallow_clone(&self) -> EmbParams {
        match self {
            EmbParams::ScaleShift { scale1, shift } => EmbParams::ScaleShift {
                scale1: scale1.shallow_clone(),
                shift: shift.shallow_clone(),
            },
            EmbParams::Add(t) => EmbParams::Add(t.shallow_clone()),
        }
    }
}

/// The blocks' embedding parameters of the last inference call, with what
/// they were computed from. Sampling evaluates the network again and again
/// at the same noise levels (1-step sampling always at `sigma_max`), where
/// the noise MLP and every block's affine layer give the same values: about
/// 70 small operations of a pass of the CPU U-Net.
#[derive(Debug)]
struct EmbCache {
    /// `c_noise`, class labels and guidance scales, bit for bit.
    key: (Vec<u32>, Option<Vec<i64>>, Option<Vec<u32>>),
    /// libtorch's version counters of the weights read: any in-place
    /// update (optimizer, EMA, loading) changes one and misses the cache.
    versions: Vec<i64>,
    params: Vec<EmbParams>,
    /// The same on the host, for the small-batch path (made on its first
    /// use).
    host: Option<Arc<Vec<HostEmb>>>,
}

/// The small-batch path's derived weights (`None`: this network has
/// something the path does not run) with the key they were derived for.
#[derive(Debug, Default)]
struct SmallBatchState {
    weights: Option<(Vec<i64>, Option<Weights>)>,
}

/// The U-Net; see the module docs.
#[derive(Debug)]
pub struct UNet {
    map_noise: NoiseEmbed,
    map_layer0: AdaptedLinear,
    map_layer1: AdaptedLinear,
    map_label: Option<ClassEmbed>,
    /// LCM's w-embedding, added to the noise embedding.
    map_guidance: Option<GuidanceEmbed>,
    conv_in: AdaptedConv2d,
    enc: Vec<UNetBlock>,
    dec: Vec<UNetBlock>,
    out_norm: nn::GroupNorm,
    out_conv: AdaptedConv2d,
    emb_cache: std::sync::Mutex<Option<EmbCache>>,
    small_batch: std::sync::Mutex<SmallBatchState>,
}

impl UNet {
    /// Builds the network under `p` from a validated config; adds its
    /// multiply-accumulates per sample to `macs`.
    pub fn new(p: &nn::Path, cfg: &UNetConfig, macs: &mut MacCounter) -> Self {
        let mc = cfg.model_channels as i64;
        let emb = mc * cfg.emb_mult as i64;
        let img_c = cfg.in_channels as i64;
        let map_noise = NoiseEmbed::new(
            &(p / "map_noise"),
            mc,
            cfg.noise_embedding,
            cfg.fourier_scale,
        );
        macs.linear(mc, emb, 1);
        macs.linear(emb, emb, 1);
        let map_layer0 = adapted_linear(
            &(p / "map_layer0"),
            nn::linear(p / "map_layer0", mc, emb, Default::default()),
        );
        let map_layer1 = adapted_linear(
            &(p / "map_layer1"),
            nn::linear(p / "map_layer1", emb, emb, Default::default()),
        );
        let map_label = (cfg.num_classes > 0)
            .then(|| ClassEmbed::new(p / "map_label", cfg.num_classes as i64, emb));
        let map_guidance = cfg
            .guidance_embedding
            .then(|| GuidanceEmbed::new(p, mc, emb, cfg.guidance_class_gate, macs));

        let res0 = cfg.resolution as i64;
        let attn_at = |res: i64| cfg.attn_resolutions.contains(&(res as usize));
        let mut block =
            |path: nn::Path, cin: i64, cout: i64, res_in: i64, scale: Scale, attention: bool| {
                UNetBlock::new(
                    path,
                    BlockSpec {
                        cin,
                        cout,
                        emb,
                        res_in,
                        scale,
                        attention,
                    },
                    cfg,
                    macs,
                )
            };
        let enc_p = p / "enc";
        let conv_in = adapted_conv(&(&enc_p / "conv_in"), img_c, mc, 3, layers::conv_config(3));
        let mut enc = Vec::new();
        let mut skips = vec![mc];
        let mut cout = mc;
        for (level, &mult) in cfg.channel_mult.iter().enumerate() {
            let res = res0 >> level;
            if level > 0 {
                enc.push(block(
                    &enc_p / format!("{res}x{res}_down"),
                    cout,
                    cout,
                    res * 2,
                    Scale::Down,
                    false,
                ));
                skips.push(cout);
            }
            for idx in 0..cfg.num_res_blocks {
                let cin = cout;
                cout = mc * mult as i64;
                enc.push(block(
                    &enc_p / format!("{res}x{res}_block{idx}"),
                    cin,
                    cout,
                    res,
                    Scale::Same,
                    attn_at(res),
                ));
                skips.push(cout);
            }
        }

        let dec_p = p / "dec";
        let mut dec = Vec::new();
        let levels = cfg.channel_mult.len();
        for (level, &mult) in cfg.channel_mult.iter().enumerate().rev() {
            let res = res0 >> level;
            if level == levels - 1 {
                dec.push(block(
                    &dec_p / format!("{res}x{res}_in0"),
                    cout,
                    cout,
                    res,
                    Scale::Same,
                    true,
                ));
                dec.push(block(
                    &dec_p / format!("{res}x{res}_in1"),
                    cout,
                    cout,
                    res,
                    Scale::Same,
                    false,
                ));
            } else {
                dec.push(block(
                    &dec_p / format!("{res}x{res}_up"),
                    cout,
                    cout,
                    res / 2,
                    Scale::Up,
                    false,
                ));
            }
            for idx in 0..=cfg.num_res_blocks {
                let cin = cout + skips.pop().expect("one skip per encoder block");
                cout = mc * mult as i64;
                dec.push(block(
                    &dec_p / format!("{res}x{res}_block{idx}"),
                    cin,
                    cout,
                    res,
                    Scale::Same,
                    attn_at(res),
                ));
            }
        }
        macs.conv(img_c, mc, 3, res0, res0);
        macs.conv(cout, img_c, 3, res0, res0);
        UNet {
            map_noise,
            map_layer0,
            map_layer1,
            map_label,
            map_guidance,
            conv_in,
            enc,
            dec,
            out_norm: layers::group_norm(&dec_p / "out_norm", cout),
            out_conv: adapted_conv(
                &(&dec_p / "out_conv"),
                cout,
                img_c,
                3,
                layers::zero_conv_config(3),
            ),
            emb_cache: std::sync::Mutex::new(None),
            small_batch: std::sync::Mutex::new(SmallBatchState::default()),
        }
    }

    fn blocks(&self) -> impl Iterator<Item = &UNetBlock> {
        self.enc.iter().chain(self.dec.iter())
    }

    /// Every block's embedding parameters, computed.
    fn compute_emb_params(
        &self,
        c_noise: &Tensor,
        cond: Conditioning<'_>,
        batch: i64,
        train: bool,
    ) -> Vec<EmbParams> {
        let mut emb = self.map_layer1.forward_t(
            &self
                .map_layer0
                .forward_t(&self.map_noise.forward(c_noise), train)
                .silu(),
            train,
        );
        if let Some(labels) = &self.map_label {
            emb += layers::class_embedding(
                labels,
                self.map_guidance.as_ref(),
                cond.class,
                cond.guidance,
                batch,
            );
        }
        if let Some(guidance) = &self.map_guidance {
            emb += guidance.forward(cond.guidance, batch, c_noise.device());
        }
        let emb = emb.silu();
        self.blocks().map(|b| b.emb_params(&emb, train)).collect()
    }

    /// Version counters of the weights the embedding parameters read.
    fn emb_versions(&self) -> Vec<i64> {
        let mut versions = Vec::new();
        self.map_layer0.all_versions(&mut versions);
        self.map_layer1.all_versions(&mut versions);
        if let Some(label) = &self.map_label {
            label.all_versions(&mut versions);
        }
        if let Some(guidance) = &self.map_guidance {
            versions.extend(guidance.weights().map(Tensor::internal_version));
        }
        for b in self.blocks() {
            b.emb_versions(&mut versions);
        }
        versions
    }

    /// The embedding parameters of an inference call, from the cache when
    /// the same noise levels, labels and weights were seen last time; with
    /// `host`, also their host copy for the small-batch path (`None` if it
    /// cannot be made).
    fn cached_emb(
        &self,
        c_noise: &Tensor,
        cond: Conditioning<'_>,
        batch: i64,
        host: bool,
    ) -> (Vec<EmbParams>, Option<Arc<Vec<HostEmb>>>) {
        let key = (
            Vec::<f32>::try_from(&c_noise.to_kind(tch::Kind::Float))
                .map(|v| v.iter().map(|f| f.to_bits()).collect())
                .unwrap_or_default(),
            cond.class
                .map(|c| Vec::<i64>::try_from(c).unwrap_or_default()),
            cond.guidance.map(|w| {
                Vec::<f32>::try_from(&w.to_kind(tch::Kind::Float))
                    .map(|v| v.iter().map(|f| f.to_bits()).collect())
                    .unwrap_or_default()
            }),
        );
        let versions = self.emb_versions();
        let to_host = |params: &[EmbParams]| {
            params
                .iter()
                .map(HostEmb::from_params)
                .collect::<Option<Vec<_>>>()
                .map(Arc::new)
        };
        let Ok(mut cache) = self.emb_cache.lock() else {
            let params = self.compute_emb_params(c_noise, cond, batch, false);
            let host = if host { to_host(&params) } else { None };
            return (params, host);
        };
        if let Some(hit) = cache
            .as_mut()
            .filter(|c| c.key == key && c.versions == versions)
        {
            if host && hit.host.is_none() {
                hit.host = to_host(&hit.params);
            }
            let params = hit.params.iter().map(EmbParams::shallow_clone).collect();
            return (params, hit.host.clone().filter(|_| host));
        }
        let params = self.compute_emb_params(c_noise, cond, batch, false);
        let host_params = if host { to_host(&params) } else { None };
        *cache = Some(EmbCache {
            key,
            versions,
            params: params.iter().map(EmbParams::shallow_clone).collect(),
            host: host_params.clone(),
        });
        (params, host_params)
    }

    /// The small-batch path's pass (`small_batch`), or `None` when this
    /// network or call is not one it runs.
    fn small_batch_forward(
        &self,
        x: &Tensor,
        c_noise: &Tensor,
        cond: Conditioning<'_>,
        batch: i64,
    ) -> Option<Tensor> {
        let size = x.size();
        if size.len() != 4
            || batch < 1
            || batch > small_batch::batch_bound(self)
            || x.device() != tch::Device::Cpu
            || x.kind() != tch::Kind::Float
        {
            return None;
        }
        let key = small_batch::weights_key(self);
        // The state is a cache: a panic while it was held leaves it usable.
        let mut state = self.small_batch.lock().unwrap_or_else(|e| e.into_inner());
        if state.weights.as_ref().is_none_or(|(k, _)| *k != key) {
            let derived = Weights::derive(self);
            state.weights = Some((key, derived));
        }
        let weights = state.weights.as_ref()?.1.as_ref()?;
        if !weights.runs(&size) {
            return None;
        }
        let (_, host) = self.cached_emb(c_noise, cond, batch, true);
        let host = host?;
        if !weights.embeddings_fit(&host, batch as usize) {
            return None;
        }
        Some(small_batch::forward(weights, x, &host))
    }
}

impl Network for UNet {
    fn forward_t(
        &self,
        x: &Tensor,
        c_noise: &Tensor,
        cond: Conditioning<'_>,
        train: bool,
    ) -> Tensor {
        let batch = x.size()[0];
        // Inference without autograd may reuse the last call's embedding
        // parameters (sampling at fixed noise levels); training never does.
        let inference =
            !train && c_noise.device() == tch::Device::Cpu && !crate::kernels::grad_mode_enabled();
        if inference && batch <= small_batch::max_batch() && small_batch::enabled() {
            if let Some(y) = self.small_batch_forward(x, c_noise, cond, batch) {
                return y;
            }
        }
        let params = if inference {
            self.cached_emb(c_noise, cond, batch, false).0
        } else {
            self.compute_emb_params(c_noise, cond, batch, train)
        };
        let mut params = params.iter();
        let mut h = self.conv_in.forward_t(x, train);
        let mut skips = vec![h.shallow_clone()];
        for block in &self.enc {
            let p = params.next().expect("one embedding per block");
            h = block.forward(&h, p, train);
            skips.push(h.shallow_clone());
        }
        for block in &self.dec {
            if h.size()[1] != block.in_channels {
                let skip = skips.pop().expect("one skip per encoder block");
                h = Tensor::cat(&[h, skip], 1);
            }
            let p = params.next().expect("one embedding per block");
            h = block.forward(&h, p, train);
        }
        self.out_conv
            .forward_t(&self.out_norm.forward(&h).silu(), train)
    }
}
