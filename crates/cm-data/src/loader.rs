//! The batch loader: shuffled mini-batches as float tensors, random-access
//! and stateless, so training resumes exactly at any step.
//!
//! `batch(step)` is a pure function of `(seed, step)` and the data:
//! - epoch `e = step / batches_per_epoch`, position `p = step % batches_per_epoch`,
//!   where `batches_per_epoch = N / batch_size` (the last partial batch of an
//!   epoch is dropped);
//! - the epoch's order is a Fisher-Yates permutation of `0..N` drawn from
//!   ChaCha8 keyed by `(seed, "permutation")` on stream `e`; batch `p` takes
//!   positions `p*B .. (p+1)*B` of it, so each epoch visits every example at
//!   most once (exactly once when `B` divides `N`);
//! - with `hflip`, example `i` of the batch is mirrored left-right when bit 0
//!   of the `i`-th u32 of ChaCha8 keyed by `(seed, "flip")` on stream `step`
//!   is set (probability 1/2, independent of the order).
//!
//! Images become `x / 127.5 - 1` in `[-1, 1]`, then are padded with `pad`
//! pixels of value -1 on each side (28 -> 32 with `pad = 2`). Points are
//! copied as they are. The last epoch's permutation is cached, which changes
//! nothing but speed.

use std::sync::{Arc, Mutex};

use rand::RngCore;
use serde::{Deserialize, Serialize};
use tch::{Device, Tensor};

use crate::dataset::{FloatSplit, ImageSplit, PointSplit};
use crate::error::{DataError, Result};
use crate::rng::{self, Tag};

/// Options of a [`BatchLoader`].
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LoaderConfig {
    /// Examples per batch, `1..=N` (default 64).
    pub batch_size: usize,
    /// Seed of the permutations and flips (default 0).
    pub seed: u64,
    /// Mirror each image left-right with probability 1/2 (images only;
    /// default off).
    pub hflip: bool,
    /// Pixels of value -1 added on every side (images only; 2 turns 28x28
    /// into 32x32; default 0).
    pub pad: usize,
}

impl Default for LoaderConfig {
    fn default() -> Self {
        LoaderConfig {
            batch_size: 64,
            seed: 0,
            hflip: false,
            pad: 0,
        }
    }
}

impl LoaderConfig {
    /// Batch size and seed, no flip, no padding.
    pub fn new(batch_size: usize, seed: u64) -> Self {
        LoaderConfig {
            batch_size,
            seed,
            ..LoaderConfig::default()
        }
    }

    /// Sets random horizontal flips.
    pub fn with_hflip(mut self, hflip: bool) -> Self {
        self.hflip = hflip;
        self
    }

    /// Sets the padding on each side.
    pub fn with_pad(mut self, pad: usize) -> Self {
        self.pad = pad;
        self
    }
}

/// What a loader draws from: an image split or a point split.
#[derive(Clone, Debug)]
pub enum LoaderData {
    /// u8 images, scaled to `[-1, 1]`.
    Images(Arc<ImageSplit>),
    /// f32 points, as they are.
    Points(Arc<PointSplit>),
    /// f32 examples of any shape (latents), as they are.
    Floats(Arc<FloatSplit>),
}

impl LoaderData {
    /// Number of examples.
    pub fn len(&self) -> usize {
        match self {
            LoaderData::Images(s) => s.len(),
            LoaderData::Points(s) => s.len(),
            LoaderData::Floats(s) => s.len(),
        }
    }

    /// Whether there is no example.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn labels(&self) -> Option<&[i64]> {
        match self {
            LoaderData::Images(s) => s.labels(),
            LoaderData::Points(s) => s.labels(),
            LoaderData::Floats(s) => s.labels(),
        }
    }
}

impl From<Arc<ImageSplit>> for LoaderData {
    fn from(s: Arc<ImageSplit>) -> Self {
        LoaderData::Images(s)
    }
}

impl From<ImageSplit> for LoaderData {
    fn from(s: ImageSplit) -> Self {
        LoaderData::Images(Arc::new(s))
    }
}

impl From<Arc<PointSplit>> for LoaderData {
    fn from(s: Arc<PointSplit>) -> Self {
        LoaderData::Points(s)
    }
}

impl From<Arc<FloatSplit>> for LoaderData {
    fn from(s: Arc<FloatSplit>) -> Self {
        LoaderData::Floats(s)
    }
}

impl From<PointSplit> for LoaderData {
    fn from(s: PointSplit) -> Self {
        LoaderData::Points(Arc::new(s))
    }
}

/// One mini-batch.
#[derive(Debug)]
pub struct Batch {
    /// f32 on the CPU: `[B, C, H + 2 pad, W + 2 pad]` in `[-1, 1]` for
    /// images, `[B, 2]` for points.
    pub x: Tensor,
    /// i64 labels `[B]` on the CPU, when the data has labels.
    pub labels: Option<Tensor>,
    /// The step this batch belongs to.
    pub step: u64,
    /// Its epoch, `step / batches_per_epoch`.
    pub epoch: u64,
    /// Indices of the examples in the split, in batch order.
    pub indices: Vec<usize>,
    /// Whether each example was mirrored (all false without `hflip`).
    pub flipped: Vec<bool>,
}

impl Batch {
    /// Moves the tensors to `device`.
    pub fn to_device(self, device: Device) -> Batch {
        Batch {
            x: self.x.to_device(device),
            labels: self.labels.map(|l| l.to_device(device)),
            ..self
        }
    }
}

/// `v / 127.5 - 1` for every byte value.
const SCALE: [f32; 256] = {
    let mut table = [0.0f32; 256];
    let mut i = 0;
    while i < 256 {
        table[i] = i as f32 / 127.5 - 1.0;
        i += 1;
    }
    table
};

/// Random-access, deterministic batch loader (see the module docs).
#[derive(Debug)]
pub struct BatchLoader {
    data: LoaderData,
    config: LoaderConfig,
    batches_per_epoch: u64,
    /// The last permutation computed: (epoch, order). A pure cache.
    cache: Mutex<Option<(u64, Arc<Vec<u32>>)>>,
}

impl Clone for BatchLoader {
    fn clone(&self) -> Self {
        BatchLoader {
            data: self.data.clone(),
            config: self.config.clone(),
            batches_per_epoch: self.batches_per_epoch,
            cache: Mutex::new(None),
        }
    }
}

impl BatchLoader {
    /// A loader over `data`. Fails when the batch size is 0 or larger than
    /// the data, or when `hflip` / `pad` are asked of points.
    pub fn new(data: impl Into<LoaderData>, config: LoaderConfig) -> Result<Self> {
        let data = data.into();
        let n = data.len();
        if config.batch_size == 0 {
            return Err(DataError::invalid("loader.batch_size", 0, "at least 1"));
        }
        if config.batch_size > n {
            return Err(DataError::invalid(
                "loader.batch_size",
                config.batch_size,
                format!("at most the number of examples in the split ({n})"),
            ));
        }
        if u32::try_from(n).is_err() {
            return Err(DataError::invalid(
                "number of examples",
                n,
                "at most u32::MAX",
            ));
        }
        let what = match data {
            LoaderData::Points(_) => Some("2-D points"),
            LoaderData::Floats(_) => Some("float examples (latents)"),
            LoaderData::Images(_) => None,
        };
        if let Some(what) = what {
            if config.hflip {
                return Err(DataError::invalid(
                    "loader.hflip",
                    true,
                    format!("false for {what} (flips apply to images)"),
                ));
            }
            if config.pad != 0 {
                return Err(DataError::invalid(
                    "loader.pad",
                    config.pad,
                    format!("0 for {what} (padding applies to images)"),
                ));
            }
        }
        if config.pad > 1024 {
            return Err(DataError::invalid(
                "loader.pad",
                config.pad,
                "at most 1024 pixels",
            ));
        }
        Ok(BatchLoader {
            batches_per_epoch: (n / config.batch_size) as u64,
            data,
            config,
            cache: Mutex::new(None),
        })
    }

    /// The options.
    pub fn config(&self) -> &LoaderConfig {
        &self.config
    }

    /// The data drawn from.
    pub fn data(&self) -> &LoaderData {
        &self.data
    }

    /// Number of examples in the split.
    pub fn num_examples(&self) -> usize {
        self.data.len()
    }

    /// Full batches per epoch, `N / batch_size` rounded down.
    pub fn batches_per_epoch(&self) -> u64 {
        self.batches_per_epoch
    }

    /// The epoch `step` falls in.
    pub fn epoch_of(&self, step: u64) -> u64 {
        step / self.batches_per_epoch
    }

    /// Shape of `Batch::x`: `[B, C, H + 2 pad, W + 2 pad]` or `[B, 2]`.
    pub fn batch_shape(&self) -> Vec<i64> {
        let b = self.config.batch_size as i64;
        match &self.data {
            LoaderData::Images(s) => {
                let p = 2 * self.config.pad as i64;
                vec![
                    b,
                    s.channels() as i64,
                    s.height() as i64 + p,
                    s.width() as i64 + p,
                ]
            }
            LoaderData::Points(_) => vec![b, 2],
            LoaderData::Floats(split) => {
                let mut shape = vec![b];
                shape.extend(split.shape().iter().map(|&d| d as i64));
                shape
            }
        }
    }

    /// The order of epoch `epoch`: a permutation of `0..N`.
    pub fn permutation(&self, epoch: u64) -> Vec<usize> {
        self.order(epoch).iter().map(|&i| i as usize).collect()
    }

    fn order(&self, epoch: u64) -> Arc<Vec<u32>> {
        // A poisoned lock only means another thread panicked mid-update of a
        // pure cache: recompute.
        let mut guard = match self.cache.lock() {
            Ok(g) => g,
            Err(poisoned) => poisoned.into_inner(),
        };
        if let Some((e, order)) = guard.as_ref() {
            if *e == epoch {
                return Arc::clone(order);
            }
        }
        let mut order: Vec<u32> = (0..self.data.len() as u32).collect();
        rng::shuffle(
            &mut order,
            &mut rng::chacha(self.config.seed, Tag::Permutation, epoch),
        );
        let order = Arc::new(order);
        *guard = Some((epoch, Arc::clone(&order)));
        order
    }

    /// Indices (into the split) of the examples of batch `step`.
    pub fn indices(&self, step: u64) -> Vec<usize> {
        let epoch = self.epoch_of(step);
        let pos = (step % self.batches_per_epoch) as usize;
        let b = self.config.batch_size;
        self.order(epoch)[pos * b..(pos + 1) * b]
            .iter()
            .map(|&i| i as usize)
            .collect()
    }

    /// Which examples of batch `step` are mirrored (all false without `hflip`).
    pub fn flips(&self, step: u64) -> Vec<bool> {
        let b = self.config.batch_size;
        if !self.config.hflip {
            return vec![false; b];
        }
        let mut rng = rng::chacha(self.config.seed, Tag::Flip, step);
        (0..b).map(|_| rng.next_u32() & 1 == 1).collect()
    }

    /// Batch `step`: a pure function of the seed, the step and the data.
    pub fn batch(&self, step: u64) -> Result<Batch> {
        let indices = self.indices(step);
        let flipped = self.flips(step);
        let shape = self.batch_shape();
        let x = match &self.data {
            LoaderData::Images(split) => {
                let buf = assemble_images(split, &indices, &flipped, self.config.pad);
                Tensor::f_from_slice(&buf)?.f_reshape(&shape)?
            }
            LoaderData::Points(split) => {
                let pts = split.points();
                let mut buf = Vec::with_capacity(2 * indices.len());
                for &i in &indices {
                    buf.extend_from_slice(&pts[2 * i..2 * i + 2]);
                }
                Tensor::f_from_slice(&buf)?.f_reshape(&shape)?
            }
            LoaderData::Floats(split) => {
                let (values, per) = (split.values(), split.example_len());
                let mut buf = Vec::with_capacity(per * indices.len());
                for &i in &indices {
                    buf.extend_from_slice(&values[per * i..per * (i + 1)]);
                }
                Tensor::f_from_slice(&buf)?.f_reshape(&shape)?
            }
        };
        let labels = match self.data.labels() {
            Some(l) => {
                let picked: Vec<i64> = indices.iter().map(|&i| l[i]).collect();
                Some(Tensor::f_from_slice(&picked)?)
            }
            None => None,
        };
        Ok(Batch {
            x,
            labels,
            step,
            epoch: self.epoch_of(step),
            indices,
            flipped,
        })
    }

    /// Batches `start`, `start + 1`, ... without end.
    pub fn iter_from(&self, start: u64) -> impl Iterator<Item = Result<Batch>> + '_ {
        (start..).map(move |step| self.batch(step))
    }
}

/// Scales, mirrors and pads the chosen images into one f32 buffer
/// `[B, C, H + 2 pad, W + 2 pad]`.
fn assemble_images(
    split: &ImageSplit,
    indices: &[usize],
    flipped: &[bool],
    pad: usize,
) -> Vec<f32> {
    let [c, h, w] = split.shape();
    let (ph, pw) = (h + 2 * pad, w + 2 * pad);
    let out_per = c * ph * pw;
    let fill = if pad > 0 { -1.0 } else { 0.0 };
    let mut buf = vec![fill; indices.len() * out_per];
    let pixels = split.pixels();
    let per = c * h * w;
    for ((&idx, &flip), out) in indices
        .iter()
        .zip(flipped)
        .zip(buf.chunks_exact_mut(out_per))
    {
        let img = &pixels[idx * per..(idx + 1) * per];
        for ch in 0..c {
            for y in 0..h {
                let src = &img[(ch * h + y) * w..(ch * h + y + 1) * w];
                let start = ch * ph * pw + (y + pad) * pw + pad;
                let dst = &mut out[start..start + w];
                if flip {
                    for (d, &s) in dst.iter_mut().zip(src.iter().rev()) {
                        *d = SCALE[usize::from(s)];
                    }
                } else {
                    for (d, &s) in dst.iter_mut().zip(src) {
                        *d = SCALE[usize::from(s)];
                    }
                }
            }
        }
    }
    buf
}
