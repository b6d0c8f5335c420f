//! Standard FID's network: Inception-v3 as pytorch-fid builds it
//! (`pytorch_fid.inception.fid_inception_v3`, the port of the TensorFlow
//! FID graph of Heusel et al. 2017), for users who supply its weights.
//!
//! Layout (Szegedy et al. 2016, "Rethinking the Inception architecture",
//! torchvision's `Inception3` with pytorch-fid's patched blocks):
//! `Conv2d_1a_3x3 .. Conv2d_4a_3x3` with two max-pools, `Mixed_5b/5c/5d`
//! (`FIDInceptionA`: average pooling without padding in the count),
//! `Mixed_6a` (InceptionB), `Mixed_6b..6e` (`FIDInceptionC`), `Mixed_7a`
//! (InceptionD), `Mixed_7b` (`FIDInceptionE_1`, average pool) and
//! `Mixed_7c` (`FIDInceptionE_2`, max pool), global average pooling to the
//! 2048-d "pool3" features FID uses, and the 1008-way `fc` layer.
//! Every `BasicConv2d` is a bias-free convolution, batch norm (eps 0.001)
//! and ReLU.
//!
//! Input: images in [-1, 1] (pytorch-fid's `normalize_input` maps [0, 1]
//! to this range), 1 or 3 channels (grey is repeated), any size: resized
//! bilinearly to 299 x 299 (`align_corners = false`) as pytorch-fid's
//! `resize_input` does.
//!
//! Weights: a safetensors file with the parameter names of pytorch-fid's
//! `pt_inception-2015-12-05-6726825d.pth` state dict
//! (`Conv2d_1a_3x3.conv.weight`, `Mixed_5b.branch_pool.bn.running_var`,
//! `fc.weight`, ...), converted once in Python:
//!
//! ```python
//! import torch, safetensors.torch
//! sd = torch.load("pt_inception-2015-12-05-6726825d.pth", map_location="cpu")
//! safetensors.torch.save_file({k: v.contiguous() for k, v in sd.items()}, "pt_inception.safetensors")
//! ```
//!
//! Loading is strict (cm-nets' loader): every tensor must be present with
//! its shape and dtype (float32, as the conversion above keeps it); only
//! PyTorch's `num_batches_tracked` counters may be left over.

use std::path::Path;

use tch::{nn, nn::Module, nn::ModuleT, Device, Kind, Tensor};

use crate::error::{EvalError, Result};
use crate::weights::load_var_store;

/// Dimension of the pool3 features.
pub const POOL3_DIM: i64 = 2048;
/// Classes of the FID network's `fc` layer (TensorFlow's 1008).
pub const FC_CLASSES: i64 = 1008;
/// Input resolution.
pub const INPUT_SIZE: i64 = 299;

/// Images per forward pass when extracting features.
const BATCH: i64 = 50;

/// Convolution + batch norm (eps 0.001) + ReLU, as torchvision's `BasicConv2d`.
#[derive(Debug)]
struct BasicConv2d {
    conv: nn::Conv2D,
    bn: nn::BatchNorm,
}

impl BasicConv2d {
    fn new(
        p: nn::Path,
        cin: i64,
        cout: i64,
        kernel: [i64; 2],
        stride: i64,
        padding: [i64; 2],
    ) -> Self {
        let conv = nn::conv(
            &p / "conv",
            cin,
            cout,
            kernel,
            nn::ConvConfigND {
                stride: [stride, stride],
                padding,
                bias: false,
                ..Default::default()
            },
        );
        let bn = nn::batch_norm2d(
            &p / "bn",
            cout,
            nn::BatchNormConfig {
                eps: 0.001,
                ..Default::default()
            },
        );
        BasicConv2d { conv, bn }
    }

    fn square(p: nn::Path, cin: i64, cout: i64, k: i64, stride: i64, pad: i64) -> Self {
        Self::new(p, cin, cout, [k, k], stride, [pad, pad])
    }

    fn forward(&self, x: &Tensor) -> Tensor {
        self.bn.forward_t(&self.conv.forward(x), false).relu()
    }
}

/// 3x3 average pooling, stride 1, padding 1, padded zeros not counted
/// (pytorch-fid's `count_include_pad=False`).
fn avg_pool_3x3(x: &Tensor) -> Tensor {
    x.avg_pool2d([3, 3], [1, 1], [1, 1], false, false, None)
}

/// `FIDInceptionA` (Mixed_5b/c/d).
#[derive(Debug)]
struct InceptionA {
    branch1x1: BasicConv2d,
    branch5x5_1: BasicConv2d,
    branch5x5_2: BasicConv2d,
    branch3x3dbl_1: BasicConv2d,
    branch3x3dbl_2: BasicConv2d,
    branch3x3dbl_3: BasicConv2d,
    branch_pool: BasicConv2d,
}

impl InceptionA {
    fn new(p: nn::Path, cin: i64, pool_features: i64) -> Self {
        InceptionA {
            branch1x1: BasicConv2d::square(&p / "branch1x1", cin, 64, 1, 1, 0),
            branch5x5_1: BasicConv2d::square(&p / "branch5x5_1", cin, 48, 1, 1, 0),
            branch5x5_2: BasicConv2d::square(&p / "branch5x5_2", 48, 64, 5, 1, 2),
            branch3x3dbl_1: BasicConv2d::square(&p / "branch3x3dbl_1", cin, 64, 1, 1, 0),
            branch3x3dbl_2: BasicConv2d::square(&p / "branch3x3dbl_2", 64, 96, 3, 1, 1),
            branch3x3dbl_3: BasicConv2d::square(&p / "branch3x3dbl_3", 96, 96, 3, 1, 1),
            branch_pool: BasicConv2d::square(&p / "branch_pool", cin, pool_features, 1, 1, 0),
        }
    }

    fn forward(&self, x: &Tensor) -> Tensor {
        let b1 = self.branch1x1.forward(x);
        let b5 = self.branch5x5_2.forward(&self.branch5x5_1.forward(x));
        let b3 = self
            .branch3x3dbl_3
            .forward(&self.branch3x3dbl_2.forward(&self.branch3x3dbl_1.forward(x)));
        let bp = self.branch_pool.forward(&avg_pool_3x3(x));
        Tensor::cat(&[b1, b5, b3, bp], 1)
    }
}

/// InceptionB (Mixed_6a): grid reduction 35 -> 17.
#[derive(Debug)]
struct InceptionB {
    branch3x3: BasicConv2d,
    branch3x3dbl_1: BasicConv2d,
    branch3x3dbl_2: BasicConv2d,
    branch3x3dbl_3: BasicConv2d,
}

impl InceptionB {
    fn new(p: nn::Path, cin: i64) -> Self {
        InceptionB {
            branch3x3: BasicConv2d::square(&p / "branch3x3", cin, 384, 3, 2, 0),
            branch3x3dbl_1: BasicConv2d::square(&p / "branch3x3dbl_1", cin, 64, 1, 1, 0),
            branch3x3dbl_2: BasicConv2d::square(&p / "branch3x3dbl_2", 64, 96, 3, 1, 1),
            branch3x3dbl_3: BasicConv2d::square(&p / "branch3x3dbl_3", 96, 96, 3, 2, 0),
        }
    }

    fn forward(&self, x: &Tensor) -> Tensor {
        let b3 = self.branch3x3.forward(x);
        let bd = self
            .branch3x3dbl_3
            .forward(&self.branch3x3dbl_2.forward(&self.branch3x3dbl_1.forward(x)));
        let bp = x.max_pool2d([3, 3], [2, 2], [0, 0], [1, 1], false);
        Tensor::cat(&[b3, bd, bp], 1)
    }
}

/// `FIDInceptionC` (Mixed_6b..6e): factorised 7x7 convolutions.
#[derive(Debug)]
struct InceptionC {
    branch1x1: BasicConv2d,
    branch7x7: [BasicConv2d; 3],
    branch7x7dbl: [BasicConv2d; 5],
    branch_pool: BasicConv2d,
}

impl InceptionC {
    fn new(p: nn::Path, cin: i64, c7: i64) -> Self {
        let row = |name: &str, a, b| BasicConv2d::new(&p / name, a, b, [1, 7], 1, [0, 3]);
        let col = |name: &str, a, b| BasicConv2d::new(&p / name, a, b, [7, 1], 1, [3, 0]);
        InceptionC {
            branch1x1: BasicConv2d::square(&p / "branch1x1", cin, 192, 1, 1, 0),
            branch7x7: [
                BasicConv2d::square(&p / "branch7x7_1", cin, c7, 1, 1, 0),
                row("branch7x7_2", c7, c7),
                col("branch7x7_3", c7, 192),
            ],
            branch7x7dbl: [
                BasicConv2d::square(&p / "branch7x7dbl_1", cin, c7, 1, 1, 0),
                col("branch7x7dbl_2", c7, c7),
                row("branch7x7dbl_3", c7, c7),
                col("branch7x7dbl_4", c7, c7),
                row("branch7x7dbl_5", c7, 192),
            ],
            branch_pool: BasicConv2d::square(&p / "branch_pool", cin, 192, 1, 1, 0),
        }
    }

    fn forward(&self, x: &Tensor) -> Tensor {
        let b1 = self.branch1x1.forward(x);
        let b7 = self
            .branch7x7
            .iter()
            .fold(x.shallow_clone(), |h, l| l.forward(&h));
        let bd = self
            .branch7x7dbl
            .iter()
            .fold(x.shallow_clone(), |h, l| l.forward(&h));
        let bp = self.branch_pool.forward(&avg_pool_3x3(x));
        Tensor::cat(&[b1, b7, bd, bp], 1)
    }
}

/// InceptionD (Mixed_7a): grid reduction 17 -> 8.
#[derive(Debug)]
struct InceptionD {
    branch3x3: [BasicConv2d; 2],
    branch7x7x3: [BasicConv2d; 4],
}

impl InceptionD {
    fn new(p: nn::Path, cin: i64) -> Self {
        InceptionD {
            branch3x3: [
                BasicConv2d::square(&p / "branch3x3_1", cin, 192, 1, 1, 0),
                BasicConv2d::square(&p / "branch3x3_2", 192, 320, 3, 2, 0),
            ],
            branch7x7x3: [
                BasicConv2d::square(&p / "branch7x7x3_1", cin, 192, 1, 1, 0),
                BasicConv2d::new(&p / "branch7x7x3_2", 192, 192, [1, 7], 1, [0, 3]),
                BasicConv2d::new(&p / "branch7x7x3_3", 192, 192, [7, 1], 1, [3, 0]),
                BasicConv2d::square(&p / "branch7x7x3_4", 192, 192, 3, 2, 0),
            ],
        }
    }

    fn forward(&self, x: &Tensor) -> Tensor {
        let b3 = self
            .branch3x3
            .iter()
            .fold(x.shallow_clone(), |h, l| l.forward(&h));
        let b7 = self
            .branch7x7x3
            .iter()
            .fold(x.shallow_clone(), |h, l| l.forward(&h));
        let bp = x.max_pool2d([3, 3], [2, 2], [0, 0], [1, 1], false);
        Tensor::cat(&[b3, b7, bp], 1)
    }
}

/// `FIDInceptionE_1` / `FIDInceptionE_2` (Mixed_7b / Mixed_7c): expanded
/// filter banks; the pool branch averages (E_1, padding not counted) or
/// takes the maximum (E_2).
#[derive(Debug)]
struct InceptionE {
    branch1x1: BasicConv2d,
    branch3x3_1: BasicConv2d,
    branch3x3_2a: BasicConv2d,
    branch3x3_2b: BasicConv2d,
    branch3x3dbl_1: BasicConv2d,
    branch3x3dbl_2: BasicConv2d,
    branch3x3dbl_3a: BasicConv2d,
    branch3x3dbl_3b: BasicConv2d,
    branch_pool: BasicConv2d,
    max_pool: bool,
}

impl InceptionE {
    fn new(p: nn::Path, cin: i64, max_pool: bool) -> Self {
        let row = |name: &str, a, b| BasicConv2d::new(&p / name, a, b, [1, 3], 1, [0, 1]);
        let col = |name: &str, a, b| BasicConv2d::new(&p / name, a, b, [3, 1], 1, [1, 0]);
        InceptionE {
            branch1x1: BasicConv2d::square(&p / "branch1x1", cin, 320, 1, 1, 0),
            branch3x3_1: BasicConv2d::square(&p / "branch3x3_1", cin, 384, 1, 1, 0),
            branch3x3_2a: row("branch3x3_2a", 384, 384),
            branch3x3_2b: col("branch3x3_2b", 384, 384),
            branch3x3dbl_1: BasicConv2d::square(&p / "branch3x3dbl_1", cin, 448, 1, 1, 0),
            branch3x3dbl_2: BasicConv2d::square(&p / "branch3x3dbl_2", 448, 384, 3, 1, 1),
            branch3x3dbl_3a: row("branch3x3dbl_3a", 384, 384),
            branch3x3dbl_3b: col("branch3x3dbl_3b", 384, 384),
            branch_pool: BasicConv2d::square(&p / "branch_pool", cin, 192, 1, 1, 0),
            max_pool,
        }
    }

    fn forward(&self, x: &Tensor) -> Tensor {
        let b1 = self.branch1x1.forward(x);
        let h = self.branch3x3_1.forward(x);
        let b3 = Tensor::cat(
            &[self.branch3x3_2a.forward(&h), self.branch3x3_2b.forward(&h)],
            1,
        );
        let h = self.branch3x3dbl_2.forward(&self.branch3x3dbl_1.forward(x));
        let bd = Tensor::cat(
            &[
                self.branch3x3dbl_3a.forward(&h),
                self.branch3x3dbl_3b.forward(&h),
            ],
            1,
        );
        let pooled = if self.max_pool {
            x.max_pool2d([3, 3], [1, 1], [1, 1], [1, 1], false)
        } else {
            avg_pool_3x3(x)
        };
        let bp = self.branch_pool.forward(&pooled);
        Tensor::cat(&[b1, b3, bd, bp], 1)
    }
}

/// pytorch-fid's Inception-v3.
#[derive(Debug)]
pub struct InceptionV3 {
    vs: nn::VarStore,
    stem: Vec<BasicConv2d>,
    mixed_5: Vec<InceptionA>,
    mixed_6a: InceptionB,
    mixed_6: Vec<InceptionC>,
    mixed_7a: InceptionD,
    mixed_7: Vec<InceptionE>,
    fc: nn::Linear,
}

impl InceptionV3 {
    /// The network with random weights (for shape checks; load real ones
    /// with [`InceptionV3::load`]).
    pub fn new(device: Device) -> Self {
        let vs = nn::VarStore::new(device);
        let r = vs.root();
        let stem = vec![
            BasicConv2d::square(&r / "Conv2d_1a_3x3", 3, 32, 3, 2, 0),
            BasicConv2d::square(&r / "Conv2d_2a_3x3", 32, 32, 3, 1, 0),
            BasicConv2d::square(&r / "Conv2d_2b_3x3", 32, 64, 3, 1, 1),
            BasicConv2d::square(&r / "Conv2d_3b_1x1", 64, 80, 1, 1, 0),
            BasicConv2d::square(&r / "Conv2d_4a_3x3", 80, 192, 3, 1, 0),
        ];
        let mixed_5 = vec![
            InceptionA::new(&r / "Mixed_5b", 192, 32),
            InceptionA::new(&r / "Mixed_5c", 256, 64),
            InceptionA::new(&r / "Mixed_5d", 288, 64),
        ];
        let mixed_6a = InceptionB::new(&r / "Mixed_6a", 288);
        let mixed_6 = vec![
            InceptionC::new(&r / "Mixed_6b", 768, 128),
            InceptionC::new(&r / "Mixed_6c", 768, 160),
            InceptionC::new(&r / "Mixed_6d", 768, 160),
            InceptionC::new(&r / "Mixed_6e", 768, 192),
        ];
        let mixed_7a = InceptionD::new(&r / "Mixed_7a", 768);
        let mixed_7 = vec![
            InceptionE::new(&r / "Mixed_7b", 1280, false),
            InceptionE::new(&r / "Mixed_7c", 2048, true),
        ];
        let fc = nn::linear(&r / "fc", POOL3_DIM, FC_CLASSES, Default::default());
        InceptionV3 {
            vs,
            stem,
            mixed_5,
            mixed_6a,
            mixed_6,
            mixed_7a,
            mixed_7,
            fc,
        }
    }

    /// Builds the network and loads pytorch-fid weights from `path`
    /// (safetensors, strict; see the module docs).
    pub fn load(path: &Path, device: Device) -> Result<Self> {
        let net = InceptionV3::new(device);
        load_var_store(&net.vs, path, &["num_batches_tracked"])?;
        Ok(net)
    }

    /// The variables (names as in pytorch-fid's state dict).
    pub fn var_store(&self) -> &nn::VarStore {
        &self.vs
    }

    /// Resizes `[B, C, H, W]` images in [-1, 1] (C = 1 or 3) to 3 x 299 x 299.
    pub fn prepare(images: &Tensor) -> Result<Tensor> {
        let size = images.size();
        if size.len() != 4 || !(size[1] == 1 || size[1] == 3) {
            return Err(EvalError::InvalidInput(format!(
                "Inception-v3 takes images [B, 1 or 3, H, W], found {size:?}"
            )));
        }
        let x = images.to_kind(Kind::Float);
        let x = if size[1] == 1 {
            x.repeat([1, 3, 1, 1])
        } else {
            x
        };
        Ok(x.upsample_bilinear2d([INPUT_SIZE, INPUT_SIZE], false, None, None))
    }

    /// Pool3 features `[B, 2048]` and fc logits `[B, 1008]` of images
    /// already prepared (`[B, 3, 299, 299]`).
    pub fn forward(&self, x: &Tensor) -> (Tensor, Tensor) {
        let mut h = x.shallow_clone();
        for (i, conv) in self.stem.iter().enumerate() {
            h = conv.forward(&h);
            // Max-pools after Conv2d_2b_3x3 and Conv2d_4a_3x3.
            if i == 2 || i == 4 {
                h = h.max_pool2d([3, 3], [2, 2], [0, 0], [1, 1], false);
            }
        }
        for block in &self.mixed_5 {
            h = block.forward(&h);
        }
        h = self.mixed_6a.forward(&h);
        for block in &self.mixed_6 {
            h = block.forward(&h);
        }
        h = self.mixed_7a.forward(&h);
        for block in &self.mixed_7 {
            h = block.forward(&h);
        }
        let pool = h.adaptive_avg_pool2d([1, 1]).flatten(1, -1);
        let logits = self.fc.forward(&pool);
        (pool, logits)
    }

    /// Pool3 features `[N, 2048]` (f32, CPU) of images `[N, C, H, W]` in
    /// [-1, 1], in eval mode, without autograd, in chunks.
    pub fn features(&self, images: &Tensor) -> Result<Tensor> {
        let _guard = tch::no_grad_guard();
        let n = images.size().first().copied().unwrap_or(0);
        let mut parts = Vec::new();
        let mut start = 0;
        while start < n {
            let len = BATCH.min(n - start);
            let x = Self::prepare(&images.narrow(0, start, len).to_device(self.vs.device()))?;
            parts.push(self.forward(&x).0.to_device(Device::Cpu));
            start += len;
        }
        if parts.is_empty() {
            return Err(EvalError::InvalidInput("no images".into()));
        }
        Ok(Tensor::cat(&parts, 0))
    }
}
