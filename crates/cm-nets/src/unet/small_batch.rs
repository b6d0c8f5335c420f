//! The U-Net's small-batch inference path: the same function as
//! [`super::UNet`]'s libtorch forward pass, run as direct 3x3 convolutions
//! ([`kernels::conv3x3_direct`], AVX-512; im2col + GEMM or oneDNN on other
//! CPUs) with everything between them fused into single passes over
//! channels-last buffers ([`crate::kernels`]).
//!
//! At batch 1 the CPU preset's pass is about 200 libtorch operations on
//! activations of 2,000-40,000 values, so dispatch, allocation and the
//! separate passes of GroupNorm, scale-shift, SiLU and the residual add
//! cost as much as the convolutions. Here a block is two GroupNorm passes
//! (statistics, then one `a x + b` with SiLU per value: the norm's affine,
//! the embedding's scale-shift and the activation folded together) and
//! two convolutions accumulating into one buffer (bias, skip 1x1 and
//! residual included).
//!
//! Used by `UNet::forward_t` for inference without autograd on the CPU at
//! batch <= [`batch_bound`] (3, or 64 with the direct convolution
//! on networks at most [`DIRECT_WIDE_COUT`] channels wide), for inputs
//! whose sides divide by 2 at every down-sampling, when every layer is a
//! plain one (no unmerged LoRA adapters) and resampling is the box filter;
//! anything else takes the libtorch path. Outputs agree with it to
//! rounding (crates/cm-nets/tests/small_batch.rs: within 1e-5).

use std::sync::atomic::{AtomicBool, Ordering};

use tch::nn;
use tch::{Device, Kind, Tensor};

use super::{Conv0, EmbParams, Scale, UNet, UNetBlock};
use crate::kernels::{self, HostTensor, NormSpec};
use crate::lora::AdaptedConv2d;

/// The largest batch the path takes where the CPU lacks AVX-512 (its
/// convolutions are then im2col + GEMM and oneDNN): above it the
/// convolutions dominate and libtorch's own pass is as fast (CPU preset, 2
/// threads, ms, path / libtorch: batch 1 1.84 / 2.51, 2 3.06 / 3.85, 3
/// 4.57 / 5.04, 4 5.91 / 5.84).
pub const MAX_BATCH: i64 = 3;

/// The largest batch the path takes with the direct convolution kernel
/// (AVX-512) on networks whose convolutions have at most
/// [`DIRECT_WIDE_COUT`] outputs: it is ahead of libtorch's pass at every
/// batch measured up to this one (CPU preset, 2 threads, ms, path /
/// libtorch: batch 1 1.02 / 2.27, 8 6.83 / 8.59, 32 29.3 / 32.1, 64 61.2 /
/// 68.5; 1 thread: 1.18x at 64; the preset with 32 model channels, 64 at
/// its widest: 2.10x at batch 1, 1.09x at 16, 1.01x at 64). Larger batches
/// were not measured, and go to libtorch.
pub const MAX_BATCH_DIRECT: i64 = 64;

/// The most output channels of a convolution for [`MAX_BATCH_DIRECT`];
/// wider networks keep [`MAX_BATCH`]: there MKL and oneDNN's large GEMMs
/// catch up with the direct kernel from a few images (the preset with 64
/// model channels, 128 at its widest: 1.38x at batch 1, 1.05x at 4, 0.97x
/// at 64; `cifar10-unet`, 256 channels: 1.18x at 1, 1.04x at 2, 0.93x at
/// 4).
pub const DIRECT_WIDE_COUT: usize = 64;

/// The largest batch the path may take on this CPU (the bound of
/// [`batch_bound`]): [`MAX_BATCH_DIRECT`] where the direct
/// convolution runs, else [`MAX_BATCH`].
pub fn max_batch() -> i64 {
    if kernels::direct_available() {
        MAX_BATCH_DIRECT
    } else {
        MAX_BATCH
    }
}

/// The largest batch the path takes for `unet`: [`MAX_BATCH_DIRECT`]
/// where the direct convolution runs and no 3x3 convolution has more than
/// [`DIRECT_WIDE_COUT`] outputs, else [`MAX_BATCH`]. From the weights'
/// shapes alone, before any weights are derived: a wide network's
/// no-grad passes at training batch sizes (a CD or CT target network,
/// updated every step) must not pack its weights for nothing.
pub(super) fn batch_bound(unet: &UNet) -> i64 {
    if !kernels::direct_available() {
        return MAX_BATCH;
    }
    let cout = |c: &AdaptedConv2d| c.base.ws.size().first().copied().unwrap_or(0) as usize;
    let mut widest = cout(&unet.conv_in).max(cout(&unet.out_conv));
    for b in unet.blocks() {
        if let Conv0::Filtered(c) = &b.conv0 {
            widest = widest.max(cout(c));
        }
        widest = widest.max(cout(&b.conv1));
    }
    if widest <= DIRECT_WIDE_COUT {
        MAX_BATCH_DIRECT
    } else {
        MAX_BATCH
    }
}

/// 3x3 convolutions on maps at least this wide go to oneDNN
/// (`mkldnn_convolution`) with one libtorch thread, and with more when
/// they have at least [`ONEDNN_MIN_CHANNELS_MT`] input channels; the rest
/// to im2col + MKL's GEMM. Batch 1, the PyTorch port's libtorch, AMD EPYC
/// (us; oneDNN / GEMM): one thread, 28x28 24 -> 24: 67 / 97, 14x14 48 ->
/// 48: 58 / 76, 7x7 48 -> 48: 35 / 22; two threads, 28x28 24 -> 24: 48 /
/// 49, 48 -> 48: 87 / 156, 14x14 24 -> 48: 33 / 22, 96 -> 48: 58 / 80.
const ONEDNN_MIN_WIDTH: usize = 14;

/// See [`ONEDNN_MIN_WIDTH`].
const ONEDNN_MIN_CHANNELS_MT: usize = 48;

/// 3x3 convolutions with at least this many output channels run the
/// direct kernel ([`kernels::conv3x3_direct`]) where the CPU has AVX-512;
/// below it (the 1-channel output convolution) a 16-lane vector of output
/// channels is mostly empty, and im2col + GEMM is faster.
const DIRECT_MIN_COUT: usize = 8;

/// GroupNorm's epsilon in every U-Net norm (`layers::group_norm`, tch's
/// default).
const EPS: f64 = 1e-5;

static ENABLED: AtomicBool = AtomicBool::new(true);

/// Turns the small-batch path on or off for the whole process (on by
/// default); off, every pass runs libtorch's operations (for A/B timing
/// and checks: `cm bench --eager`).
pub fn set_enabled(enabled: bool) {
    ENABLED.store(enabled, Ordering::Relaxed);
}

/// Whether the small-batch path is on.
pub fn enabled() -> bool {
    ENABLED.load(Ordering::Relaxed)
}

/// A convolution's weights as a `[k k cin, cout]` GEMM operand (rows in
/// im2col's `(ky, kx, channel)` order) and its bias.
#[derive(Debug)]
struct ConvW {
    w: Tensor,
    /// The packed weights of the direct kernel, for 3x3 convolutions with
    /// at least [`DIRECT_MIN_COUT`] outputs on AVX-512 CPUs.
    direct: Option<kernels::DirectConv>,
    bias: Vec<f32>,
    cout: usize,
    /// The weights and bias as libtorch's convolution takes them (oneDNN).
    ws: Tensor,
    bs: Tensor,
}

impl ConvW {
    fn new(conv: &nn::Conv2D, k: i64) -> Option<ConvW> {
        let float_cpu = |t: &Tensor| t.kind() == Kind::Float && t.device() == Device::Cpu;
        if !float_cpu(&conv.ws) || !conv.bs.as_ref().is_none_or(float_cpu) {
            return None;
        }
        let size = conv.ws.size();
        if size.len() != 4 || size[2] != k || size[3] != k {
            return None;
        }
        let (cout, cin) = (size[0], size[1]);
        let w = conv
            .ws
            .to_kind(Kind::Float)
            .permute([2, 3, 1, 0])
            .contiguous()
            .view([k * k * cin, cout]);
        let bias = match &conv.bs {
            Some(b) => Vec::<f32>::try_from(&b.to_kind(Kind::Float)).ok()?,
            None => vec![0.0; cout as usize],
        };
        let direct = if k == 3 && cout as usize >= DIRECT_MIN_COUT && kernels::direct_available() {
            let values = Vec::<f32>::try_from(&w.reshape([-1])).ok()?;
            Some(kernels::DirectConv::new(
                &values,
                &bias,
                cin as usize,
                cout as usize,
            ))
        } else {
            None
        };
        Some(ConvW {
            w,
            direct,
            ws: conv.ws.to_kind(Kind::Float),
            bs: Tensor::from_slice(&bias),
            bias,
            cout: cout as usize,
        })
    }
}

#[derive(Debug)]
struct NormW {
    gamma: Vec<f32>,
    beta: Vec<f32>,
    groups: usize,
}

impl NormW {
    fn new(norm: &nn::GroupNorm) -> Option<NormW> {
        let float_cpu = |t: &Tensor| t.kind() == Kind::Float && t.device() == Device::Cpu;
        if !norm.ws.iter().chain(norm.bs.iter()).all(float_cpu) {
            return None;
        }
        let c = norm.num_channels as usize;
        let read = |t: &Option<Tensor>, default: f32| match t {
            Some(t) => Vec::<f32>::try_from(&t.to_kind(Kind::Float)).ok(),
            None => Some(vec![default; c]),
        };
        Some(NormW {
            gamma: read(&norm.ws, 1.0)?,
            beta: read(&norm.bs, 0.0)?,
            groups: norm.num_groups as usize,
        })
    }

    fn spec(&self) -> NormSpec<'_> {
        NormSpec {
            groups: self.groups,
            eps: EPS,
            gamma: &self.gamma,
            beta: &self.beta,
        }
    }
}

#[derive(Debug)]
struct AttnW {
    norm: NormW,
    qkv: ConvW,
    proj: ConvW,
    heads: usize,
}

#[derive(Debug)]
struct BlockW {
    norm0: NormW,
    conv0: ConvW,
    norm1: NormW,
    conv1: ConvW,
    skip: Option<ConvW>,
    attn: Option<AttnW>,
    scale: Scale,
    skip_scale: f32,
    /// `skip`'s bias plus `conv1`'s: one fill for the block's output.
    out_bias: Vec<f32>,
}

/// The weights of the path, derived from the network's variables.
#[derive(Debug)]
pub(super) struct Weights {
    /// How many of `blocks` are the encoder's.
    enc_len: usize,
    /// How many blocks halve the resolution (inputs must divide by 2^downs).
    downs: u32,
    /// `detach()`ed handles of the variables the weights were derived from:
    /// they keep the old storage alive, so its address (part of the key)
    /// cannot be reused by a `set_data` that replaces it.
    _pins: Vec<Tensor>,
    conv_in: ConvW,
    blocks: Vec<BlockW>,
    out_norm: NormW,
    out_conv: ConvW,
}

fn plain(conv: &AdaptedConv2d) -> Option<&nn::Conv2D> {
    conv.is_plain().then_some(&conv.base)
}

/// What the derived weights depend on: each variable's version counter
/// (in-place updates) and data address (`set_data`, loading), and the
/// adapter slots'.
pub(super) fn weights_key(unet: &UNet) -> Vec<i64> {
    let mut key = Vec::with_capacity(256);
    for_each_weight(unet, &mut |t| {
        key.push(t.internal_version());
        key.push(t.data_ptr() as i64);
    });
    let mut slots = |c: &AdaptedConv2d| c.versions(&[], &mut key);
    slots(&unet.conv_in);
    slots(&unet.out_conv);
    for b in unet.blocks() {
        if let Conv0::Filtered(c) = &b.conv0 {
            slots(c);
        }
        slots(&b.conv1);
        b.skip.iter().for_each(&mut slots);
        if let Some(a) = &b.attn {
            slots(&a.qkv);
            slots(&a.proj);
        }
    }
    key
}

/// Every variable the path's weights are derived from.
fn for_each_weight(unet: &UNet, f: &mut dyn FnMut(&Tensor)) {
    let conv = |c: &AdaptedConv2d, f: &mut dyn FnMut(&Tensor)| {
        f(&c.base.ws);
        c.base.bs.iter().for_each(&mut *f);
    };
    let norm = |n: &nn::GroupNorm, f: &mut dyn FnMut(&Tensor)| {
        n.ws.iter().chain(n.bs.iter()).for_each(f);
    };
    conv(&unet.conv_in, f);
    for b in unet.blocks() {
        norm(&b.norm0, f);
        if let Conv0::Filtered(c) = &b.conv0 {
            conv(c, f);
        }
        norm(&b.norm1, f);
        conv(&b.conv1, f);
        if let Some(s) = &b.skip {
            conv(s, f);
        }
        if let Some(a) = &b.attn {
            norm(&a.norm, f);
            conv(&a.qkv, f);
            conv(&a.proj, f);
        }
    }
    norm(&unet.out_norm, f);
    conv(&unet.out_conv, f);
}

impl Weights {
    /// Whether the path runs an input of `size` (`[B, C, H, W]`): `H` and
    /// `W` divide by 2 at every down-sampling (else libtorch's pass, whose
    /// concatenation refuses the mismatch).
    pub(super) fn runs(&self, size: &[i64]) -> bool {
        let unit = 1i64 << self.downs;
        size.len() == 4 && size[2] > 0 && size[3] > 0 && size[2] % unit == 0 && size[3] % unit == 0
    }

    /// Whether every block's embedding parameters hold `batch` rows
    /// (libtorch's pass broadcasts a single row; the path does not).
    pub(super) fn embeddings_fit(&self, emb: &[HostEmb], batch: usize) -> bool {
        emb.len() == self.blocks.len()
            && emb.iter().zip(&self.blocks).all(|(e, b)| {
                let n = batch * b.conv0.cout;
                match e {
                    HostEmb::ScaleShift(s1, shift) => s1.len() == n && shift.len() == n,
                    HostEmb::Add(bias) => bias.len() == n,
                }
            })
    }

    /// The path's weights for `unet`, or `None` when the network has
    /// something the path does not run (learned resampling, unmerged
    /// adapters, weights that are not f32 on the CPU).
    pub(super) fn derive(unet: &UNet) -> Option<Weights> {
        let block = |b: &UNetBlock| -> Option<BlockW> {
            let conv0 = match &b.conv0 {
                Conv0::Filtered(c) => ConvW::new(plain(c)?, 3)?,
                _ => return None,
            };
            let conv1 = ConvW::new(plain(&b.conv1)?, 3)?;
            let skip = match &b.skip {
                Some(s) => Some(ConvW::new(plain(s)?, 1)?),
                None => None,
            };
            let attn = match &b.attn {
                Some(a) => Some(AttnW {
                    norm: NormW::new(&a.norm)?,
                    qkv: ConvW::new(plain(&a.qkv)?, 1)?,
                    proj: ConvW::new(plain(&a.proj)?, 1)?,
                    heads: a.heads as usize,
                }),
                None => None,
            };
            let out_bias = match &skip {
                Some(s) => s.bias.iter().zip(&conv1.bias).map(|(a, b)| a + b).collect(),
                None => conv1.bias.clone(),
            };
            Some(BlockW {
                norm0: NormW::new(&b.norm0)?,
                conv0,
                norm1: NormW::new(&b.norm1)?,
                conv1,
                skip,
                attn,
                scale: b.scale,
                skip_scale: b.skip_scale as f32,
                out_bias,
            })
        };
        let mut pins = Vec::new();
        for_each_weight(unet, &mut |t| pins.push(t.detach()));
        Some(Weights {
            _pins: pins,
            downs: unet.blocks().filter(|b| b.scale == Scale::Down).count() as u32,
            enc_len: unet.enc.len(),
            conv_in: ConvW::new(plain(&unet.conv_in)?, 3)?,
            blocks: unet.blocks().map(block).collect::<Option<Vec<_>>>()?,
            out_norm: NormW::new(&unet.out_norm)?,
            out_conv: ConvW::new(plain(&unet.out_conv)?, 3)?,
        })
    }
}

/// A block's embedding parameters on the host, `[batch, C]` each.
#[derive(Debug)]
pub(super) enum HostEmb {
    /// `(1 + scale, shift)`.
    ScaleShift(Vec<f32>, Vec<f32>),
    /// The bias added before `norm1`.
    Add(Vec<f32>),
}

impl HostEmb {
    pub(super) fn from_params(p: &EmbParams) -> Option<HostEmb> {
        let host = |t: &Tensor| Vec::<f32>::try_from(&t.to_kind(Kind::Float).reshape([-1])).ok();
        Some(match p {
            EmbParams::ScaleShift { scale1, shift } => {
                HostEmb::ScaleShift(host(scale1)?, host(shift)?)
            }
            EmbParams::Add(t) => HostEmb::Add(host(t)?),
        })
    }
}

thread_local! {
    /// Buffers of this thread's recent passes, for the next (the sizes
    /// repeat pass after pass), oldest first; at most [`POOL_BUFFERS`] of
    /// them and [`POOL_VALUES`] values. Without it every activation is a fresh
    /// allocation of 10-300 KB whose free makes glibc consolidate its bins.
    static POOL: std::cell::RefCell<Vec<HostTensor>> = const { std::cell::RefCell::new(Vec::new()) };
}

/// The most buffers a thread's pool keeps (a pass of the CPU preset
/// releases about 100), and the most values in all (16 M: 64 MB); the
/// oldest go first, so a new batch size or resolution takes over.
const POOL_BUFFERS: usize = 160;
const POOL_VALUES: usize = 16 << 20;

/// A contiguous f32 tensor of `size`, from the pool when one of that many
/// values is there.
fn take(size: &[i64]) -> HostTensor {
    let numel = size.iter().product::<i64>() as usize;
    let pooled = POOL.with(|p| {
        let mut p = p.borrow_mut();
        let i = p.iter().position(|t| t.len() == numel)?;
        Some(p.remove(i))
    });
    match pooled {
        Some(t) => HostTensor::new(t.into_tensor().view(size)),
        None => HostTensor::new(Tensor::empty(size, (Kind::Float, Device::Cpu))),
    }
}

/// Hands a buffer back to the pool. Only for tensors the path made and
/// shares with no other handle.
fn give(t: HostTensor) {
    POOL.with(|p| {
        let mut p = p.borrow_mut();
        p.push(t);
        let mut values: usize = p.iter().map(HostTensor::len).sum();
        while p.len() > POOL_BUFFERS || values > POOL_VALUES {
            values -= p.remove(0).len();
        }
    });
}

/// A channels-last activation: a contiguous `[batch, h, w, c]` tensor.
struct Act {
    t: HostTensor,
    batch: usize,
    h: usize,
    w: usize,
    c: usize,
    /// Whether the storage is the path's alone (then [`Act::release`]
    /// pools it); not for views of the caller's input or shared handles.
    owned: bool,
}

impl Act {
    fn new(batch: usize, h: usize, w: usize, c: usize) -> Act {
        let size = [batch, h, w, c].map(|d| d as i64);
        Act {
            t: take(&size),
            batch,
            h,
            w,
            c,
            owned: true,
        }
    }

    fn like(&self, c: usize) -> Act {
        Act::new(self.batch, self.h, self.w, c)
    }

    /// From an `[batch, c, h, w]` tensor (copied unless channels-last);
    /// `owned` when `t` is the path's own, fresh tensor.
    fn from_nchw(t: &Tensor, owned: bool) -> Act {
        let s = t.size();
        let t = t.to_kind(Kind::Float).permute([0, 2, 3, 1]).contiguous();
        Act {
            t: HostTensor::new(t),
            batch: s[0] as usize,
            c: s[1] as usize,
            h: s[2] as usize,
            w: s[3] as usize,
            owned,
        }
    }

    /// Done with: back to the pool when the path owns it.
    fn release(self) {
        if self.owned {
            give(self.t);
        }
    }

    /// `[batch, c, h, w]` with channels-last strides (a view).
    fn nchw(&self) -> Tensor {
        self.t.tensor().permute([0, 3, 1, 2])
    }

    fn rows(&self) -> usize {
        self.batch * self.h * self.w
    }

    /// `[rows, c]` (a view).
    fn matrix(&self) -> Tensor {
        self.t.tensor().view([self.rows() as i64, self.c as i64])
    }

    fn values(&self) -> &[f32] {
        self.t.slice()
    }

    fn values_mut(&mut self) -> &mut [f32] {
        self.t.slice_mut()
    }

    /// `self += a w`, `a` `[rows, k]`, `w` `[k, c]` (BLAS, in place).
    fn add_product(&mut self, a: &Tensor, w: &Tensor) {
        let mut m = self.matrix();
        let _ = m.addmm_(a, w);
    }
}

/// One pass of the network: `x` is `[batch, C, H, W]` float on the CPU
/// (any memory format), `emb` the blocks' embedding parameters in block
/// order. Returns `[batch, C, H, W]` (channels-last strides).
pub(super) fn forward(w: &Weights, x: &Tensor, emb: &[HostEmb]) -> Tensor {
    let input = Act::from_nchw(x, false);
    let mut skips = vec![conv3x3(&w.conv_in, &input, None)];
    input.release();
    let mut emb = emb.iter();
    let (enc, dec) = w.blocks.split_at(w.enc_len);
    for b in enc {
        let next = block(b, skips.last().expect("conv_in"), emb.next().expect("emb"));
        skips.push(next);
    }
    let last = skips.last().expect("conv_in");
    // The bottom activation is both the decoder's input and its first
    // skip: shared, never pooled.
    let mut h = Act {
        t: HostTensor::new(last.t.tensor().shallow_clone()),
        owned: false,
        ..*last
    };
    for b in dec {
        if h.c != b.norm0.gamma.len() {
            let skip = skips.pop().expect("one skip per encoder block");
            let mut cat = h.like(h.c + skip.c);
            kernels::cat_channels(h.values(), h.c, skip.values(), skip.c, cat.values_mut());
            h.release();
            skip.release();
            h = cat;
        }
        let next = block(b, &h, emb.next().expect("emb"));
        h.release();
        h = next;
    }
    skips.into_iter().for_each(Act::release);
    let mut normed = h.like(h.c);
    kernels::group_norm_act(
        h.values(),
        normed.values_mut(),
        h.batch,
        h.c,
        &w.out_norm.spec(),
        None,
        true,
    );
    h.release();
    // The output is the caller's: not released.
    let y = conv3x3(&w.out_conv, &normed, None).nchw();
    normed.release();
    y
}

/// A 3x3 convolution (stride 1, zero padding 1) of `x`; with `residual`,
/// added to it (`residual` then holds the result, and its values already
/// include this convolution's bias).
fn conv3x3(cw: &ConvW, x: &Act, residual: Option<Act>) -> Act {
    if let Some(direct) = &cw.direct {
        let mut padded = take(&[(x.batch * (x.h + 2) * (x.w + 2) * x.c) as i64]);
        kernels::pad1(x.values(), x.batch, x.h, x.w, x.c, padded.slice_mut());
        let (mut out, accumulate) = match residual {
            Some(r) => (r, true),
            None => (x.like(cw.cout), false),
        };
        kernels::conv3x3_direct(
            padded.slice(),
            x.batch,
            x.h,
            x.w,
            direct,
            out.values_mut(),
            accumulate,
        );
        give(padded);
        return out;
    }
    let use_dnn =
        x.w >= ONEDNN_MIN_WIDTH && (x.c >= ONEDNN_MIN_CHANNELS_MT || tch::get_num_threads() == 1);
    if use_dnn {
        let bias = if residual.is_some() {
            None
        } else {
            Some(&cw.bs)
        };
        let y = x
            .nchw()
            .mkldnn_convolution(&cw.ws, bias, [1, 1], [1, 1], [1, 1], 1);
        let mut y = Act::from_nchw(&y, true);
        if let Some(r) = residual {
            kernels::add_in_place(y.values_mut(), r.values());
            r.release();
        }
        return y;
    }
    let mut cols = take(&[x.rows() as i64, 9 * x.c as i64]);
    kernels::im2col3x3(x.values(), x.batch, x.h, x.w, x.c, cols.slice_mut());
    let mut out = match residual {
        Some(r) => r,
        None => {
            let mut a = x.like(cw.cout);
            kernels::fill_rows(a.values_mut(), &cw.bias);
            a
        }
    };
    out.add_product(cols.tensor(), &cw.w);
    give(cols);
    out
}

fn resample(x: &Act, scale: Scale) -> Option<Act> {
    match scale {
        Scale::Same => None,
        Scale::Down => {
            let mut out = Act::new(x.batch, x.h / 2, x.w / 2, x.c);
            kernels::avg_pool2(x.values(), x.batch, x.h, x.w, x.c, out.values_mut());
            Some(out)
        }
        Scale::Up => {
            let mut out = Act::new(x.batch, x.h * 2, x.w * 2, x.c);
            kernels::upsample2(x.values(), x.batch, x.h, x.w, x.c, out.values_mut());
            Some(out)
        }
    }
}

/// EDM's `UNetBlock` (see [`super::UNetBlock::forward`]), fused.
fn block(b: &BlockW, x: &Act, emb: &HostEmb) -> Act {
    let batch = x.batch;
    let cout = b.conv0.cout;
    // norm0 + SiLU, then the filter resampling.
    let mut a = x.like(x.c);
    kernels::group_norm_act(
        x.values(),
        a.values_mut(),
        batch,
        x.c,
        &b.norm0.spec(),
        None,
        true,
    );
    // conv0 (after the filter resampling); the embedding's bias when it is
    // added (not scale-shift) goes in before norm1.
    if let Some(r) = resample(&a, b.scale) {
        a.release();
        a = r;
    }
    let mut h0 = conv3x3(&b.conv0, &a, None);
    if let HostEmb::Add(e) = emb {
        let per = h0.rows() / batch * cout;
        let values = h0.values_mut();
        for n in 0..batch {
            let rows = &mut values[n * per..(n + 1) * per];
            kernels::add_bias_rows(rows, &e[n * cout..(n + 1) * cout]);
        }
    }
    // norm1, scale-shift and SiLU in one pass (dropout is off in inference).
    let mut h1 = h0.like(cout);
    let modulation = match emb {
        HostEmb::ScaleShift(s1, shift) => Some((s1.as_slice(), shift.as_slice())),
        HostEmb::Add(_) => None,
    };
    kernels::group_norm_act(
        h0.values(),
        h1.values_mut(),
        batch,
        cout,
        &b.norm1.spec(),
        modulation,
        true,
    );
    h0.release();
    // The skip path with both biases, then conv1 accumulated on top.
    let xs = resample(x, b.scale);
    let skip_in = xs.as_ref().unwrap_or(x);
    let mut out = h1.like(cout);
    match &b.skip {
        Some(s) => {
            kernels::fill_rows(out.values_mut(), &b.out_bias);
            out.add_product(&skip_in.matrix(), &s.w);
        }
        None => kernels::add_rows(skip_in.values(), &b.out_bias, out.values_mut()),
    }
    a.release();
    if let Some(xs) = xs {
        xs.release();
    }
    let mut out = conv3x3(&b.conv1, &h1, Some(out));
    h1.release();
    if b.skip_scale != 1.0 {
        kernels::scale_in_place(out.values_mut(), b.skip_scale);
    }
    match &b.attn {
        None => out,
        Some(at) => {
            let mut res = attention(at, &out);
            out.release();
            if b.skip_scale != 1.0 {
                kernels::scale_in_place(res.values_mut(), b.skip_scale);
            }
            res
        }
    }
}

/// `x + attention(x)` (see [`super::SelfAttention::forward`]).
fn attention(at: &AttnW, x: &Act) -> Act {
    let c = x.c;
    let mut a = x.like(c);
    kernels::group_norm_act(
        x.values(),
        a.values_mut(),
        x.batch,
        c,
        &at.norm.spec(),
        None,
        false,
    );
    let mut qkv = x.like(3 * c);
    kernels::fill_rows(qkv.values_mut(), &at.qkv.bias);
    qkv.add_product(&a.matrix(), &at.qkv.w);
    // Channel (k heads + head) d + i of qkv is element i of head `head`
    // of q, k or v (k = 0, 1, 2): `[batch, heads, pixels, d]` views.
    let (b, p, heads) = (x.batch as i64, (x.h * x.w) as i64, at.heads as i64);
    let d = c as i64 / heads;
    let qkv5 = qkv.t.tensor().view([b, p, 3, heads, d]);
    let part = |k: i64| qkv5.select(2, k).permute([0, 2, 1, 3]);
    let o = crate::layers::attention(&part(0), &part(1), &part(2));
    drop(qkv5);
    qkv.release();
    a.release();
    // Output channel head d + i.
    let o = o.permute([0, 2, 1, 3]).reshape([b * p, c as i64]);
    let mut out = x.like(c);
    kernels::add_rows(x.values(), &at.proj.bias, out.values_mut());
    out.add_product(&o, &at.proj.w);
    out
}
