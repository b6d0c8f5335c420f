//! The project's own feature network: a small CNN classifier trained on the
//! real training split, whose penultimate activations stand in for
//! Inception-v3's pool features (no pretrained weights can be downloaded
//! here). FID, KID and precision/recall are computed in its feature space,
//! the IS-like score from its softmax.
//!
//! Architecture (for `[C, H, W]` input in [-1, 1]):
//! `conv3x3(C -> c0) BN ReLU maxpool2`, `conv3x3(c0 -> c1) BN ReLU maxpool2`,
//! `conv3x3(c1 -> c2) BN ReLU`, flatten, `linear(-> features) ReLU` (the
//! feature vector), dropout, `linear(-> classes)`. Trained with Adam, a
//! cosine learning-rate decay and cross-entropy.
//!
//! [`feature_space`] trains it once per data set and config and caches it
//! in `<cache>/features/<dataset>-<hash of config>/`: the weights
//! (`classifier.safetensors`), a card with the config, test accuracy and
//! training time (`classifier.toml`, written last), and the test split's
//! reference features and statistics (`reference_test.safetensors`).

use std::path::{Path, PathBuf};
use std::time::Instant;

use serde::{Deserialize, Serialize};
use tch::{nn, nn::Module, nn::ModuleT, nn::OptimizerConfig, Device, Kind, Tensor};

use cm_core::{CoreError, Validate};
use cm_data::{BatchLoader, ImageDataset, ImageSplit, LoaderConfig};

use crate::error::{EvalError, Result};
use crate::frechet::FeatureStats;
use crate::progress::Progress;
use crate::weights::{load_var_store, save_var_store};

/// Version of the cache layout and training recipe; part of the cache key.
const CACHE_VERSION: u32 = 1;

/// Images per forward pass when extracting features.
pub const FEATURE_BATCH: i64 = 500;

/// Settings of the feature classifier. In TOML (`[classifier]` of an eval
/// config), every field optional.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ClassifierConfig {
    /// Channels of the three conv layers.
    pub channels: [i64; 3],
    /// Feature dimension (the penultimate layer).
    pub features: i64,
    /// Dropout before the last layer, in [0, 1).
    pub dropout: f64,
    /// Training steps.
    pub steps: u64,
    /// Batch size.
    pub batch_size: usize,
    /// Peak Adam learning rate (cosine decay to 0).
    pub lr: f64,
    /// Random translation of each training image by up to this many
    /// pixels in each direction; 0 (the default) disables it. MNIST needs
    /// it for 99% (8,576 training digits only).
    pub max_shift: i64,
    /// Random rotation of each training image by up to this many degrees
    /// either way; 0 (the default) disables it. Not written when 0, so
    /// configs without it keep their feature-network cache key.
    #[serde(skip_serializing_if = "is_zero")]
    pub max_rotate: f64,
    /// Random zoom of each training image by a factor in
    /// `[1 - max_scale, 1 + max_scale]`; 0 (the default) disables it.
    /// Rotation and zoom are what take MNIST's small training split past 99%.
    /// Not written when 0 (see `max_rotate`).
    #[serde(skip_serializing_if = "is_zero")]
    pub max_scale: f64,
    /// Seed of initialisation, dropout, batch order and augmentation.
    pub seed: u64,
}

fn is_zero(x: &f64) -> bool {
    *x == 0.0
}

impl Default for ClassifierConfig {
    /// Sized to train in a couple of minutes on 2 CPU cores.
    fn default() -> Self {
        ClassifierConfig {
            channels: [16, 32, 32],
            features: 128,
            dropout: 0.1,
            steps: 1500,
            batch_size: 64,
            lr: 3e-3,
            max_shift: 0,
            max_rotate: 0.0,
            max_scale: 0.0,
            seed: 0,
        }
    }
}

impl ClassifierConfig {
    /// Checks the fields; `prefix` names the section in errors.
    pub fn validate_at(&self, prefix: &str) -> cm_core::Result<()> {
        if self.channels.iter().any(|&c| c < 1) {
            return Err(CoreError::invalid(
                format!("{prefix}channels"),
                format!("{:?}", self.channels),
                "three channel counts >= 1",
            ));
        }
        if self.features < 1 {
            return Err(CoreError::invalid(
                format!("{prefix}features"),
                self.features,
                "at least 1",
            ));
        }
        if !(0.0..1.0).contains(&self.dropout) {
            return Err(CoreError::invalid(
                format!("{prefix}dropout"),
                self.dropout,
                "a probability in [0, 1)",
            ));
        }
        if self.steps == 0 || self.batch_size == 0 {
            return Err(CoreError::invalid(
                format!("{prefix}steps / batch_size"),
                format!("{} / {}", self.steps, self.batch_size),
                "both at least 1",
            ));
        }
        if !(self.lr.is_finite() && self.lr > 0.0) {
            return Err(CoreError::invalid(
                format!("{prefix}lr"),
                self.lr,
                "a finite number > 0",
            ));
        }
        if !(0..=8).contains(&self.max_shift) {
            return Err(CoreError::invalid(
                format!("{prefix}max_shift"),
                self.max_shift,
                "0 to 8 pixels",
            ));
        }
        if !(0.0..=45.0).contains(&self.max_rotate) {
            return Err(CoreError::invalid(
                format!("{prefix}max_rotate"),
                self.max_rotate,
                "0 to 45 degrees",
            ));
        }
        if !(0.0..0.5).contains(&self.max_scale) {
            return Err(CoreError::invalid(
                format!("{prefix}max_scale"),
                self.max_scale,
                "a zoom range in [0, 0.5)",
            ));
        }
        Ok(())
    }
}

impl Validate for ClassifierConfig {
    fn validate(&self) -> cm_core::Result<()> {
        self.validate_at("")
    }
}

/// What a trained classifier is: written beside its weights as
/// `classifier.toml`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClassifierCard {
    /// Data set name.
    pub dataset: String,
    /// Image shape `[C, H, W]`.
    pub shape: [i64; 3],
    /// Number of classes.
    pub num_classes: i64,
    /// Training settings.
    pub config: ClassifierConfig,
    /// Accuracy on the test split, in [0, 1].
    pub test_accuracy: f64,
    /// Wall-clock training time in seconds.
    pub train_seconds: f64,
    /// Training images.
    pub train_images: usize,
    /// Test images.
    pub test_images: usize,
}

impl Validate for ClassifierCard {
    fn validate(&self) -> cm_core::Result<()> {
        self.config.validate_at("config.")?;
        if self.shape.iter().any(|&s| s < 1) || self.num_classes < 2 {
            return Err(CoreError::invalid(
                "shape / num_classes",
                format!("{:?} / {}", self.shape, self.num_classes),
                "a [C, H, W] shape of positive sizes and at least 2 classes",
            ));
        }
        Ok(())
    }
}

/// The feature CNN.
#[derive(Debug)]
pub struct FeatureNet {
    vs: nn::VarStore,
    convs: Vec<(nn::Conv2D, nn::BatchNorm)>,
    fc: nn::Linear,
    head: nn::Linear,
    dropout: f64,
    shape: [i64; 3],
}

impl FeatureNet {
    /// A freshly initialised network for `shape` images and `num_classes`.
    pub fn new(
        config: &ClassifierConfig,
        shape: [i64; 3],
        num_classes: i64,
        device: Device,
    ) -> Result<Self> {
        config.validate_at("classifier.")?;
        let [c, h, w] = shape;
        if c < 1 || h < 4 || w < 4 || num_classes < 2 {
            return Err(EvalError::InvalidInput(format!(
                "classifier for images {shape:?} and {num_classes} classes: expected H, W >= 4 and >= 2 classes"
            )));
        }
        let vs = nn::VarStore::new(device);
        let root = vs.root();
        let conv_cfg = nn::ConvConfig {
            padding: 1,
            bias: false,
            ..Default::default()
        };
        let mut convs = Vec::new();
        let mut cin = c;
        for (i, &cout) in config.channels.iter().enumerate() {
            convs.push((
                nn::conv2d(&root / format!("conv{i}"), cin, cout, 3, conv_cfg),
                nn::batch_norm2d(&root / format!("bn{i}"), cout, Default::default()),
            ));
            cin = cout;
        }
        let flat = config.channels[2] * (h / 4) * (w / 4);
        let fc = nn::linear(&root / "fc", flat, config.features, Default::default());
        let head = nn::linear(
            &root / "head",
            config.features,
            num_classes,
            Default::default(),
        );
        Ok(FeatureNet {
            vs,
            convs,
            fc,
            head,
            dropout: config.dropout,
            shape,
        })
    }

    /// `(features, logits)` of images `[B, C, H, W]` in [-1, 1].
    pub fn forward_t(&self, x: &Tensor, train: bool) -> (Tensor, Tensor) {
        let mut h = x.shallow_clone();
        for (i, (conv, bn)) in self.convs.iter().enumerate() {
            h = bn.forward_t(&conv.forward(&h), train).relu();
            if i < 2 {
                h = h.max_pool2d_default(2);
            }
        }
        let features = self.fc.forward(&h.flatten(1, -1)).relu();
        let logits = self.head.forward(&features.dropout(self.dropout, train));
        (features, logits)
    }

    /// The variables.
    pub fn var_store(&self) -> &nn::VarStore {
        &self.vs
    }

    /// Input shape `[C, H, W]`.
    pub fn shape(&self) -> [i64; 3] {
        self.shape
    }

    /// Features `[N, D]` and logits `[N, K]` (f32, CPU) of images
    /// `[N, C, H, W]` in [-1, 1] (any float kind or device), in eval mode,
    /// without autograd, in chunks of [`FEATURE_BATCH`].
    pub fn features(&self, images: &Tensor) -> Result<(Tensor, Tensor)> {
        let size = images.size();
        if size.len() != 4 || size[1..] != self.shape[..] {
            return Err(EvalError::InvalidInput(format!(
                "the feature network takes images [N, {}, {}, {}], found {size:?}",
                self.shape[0], self.shape[1], self.shape[2]
            )));
        }
        let _guard = tch::no_grad_guard();
        let device = self.vs.device();
        let (mut feats, mut logits) = (Vec::new(), Vec::new());
        let mut start = 0;
        while start < size[0] {
            let len = FEATURE_BATCH.min(size[0] - start);
            let x = images
                .narrow(0, start, len)
                .to_device(device)
                .to_kind(Kind::Float);
            let (f, l) = self.forward_t(&x, false);
            feats.push(f.to_device(Device::Cpu));
            logits.push(l.to_device(Device::Cpu));
            start += len;
        }
        Ok((Tensor::cat(&feats, 0), Tensor::cat(&logits, 0)))
    }

    /// Features and logits of a u8 split (converted with `x / 127.5 - 1`).
    pub fn split_features(&self, split: &ImageSplit) -> Result<(Tensor, Tensor)> {
        self.features(&images_to_float(&split.to_tensor()))
    }

    /// Top-1 accuracy on a labelled split.
    pub fn accuracy(&self, split: &ImageSplit) -> Result<f64> {
        let labels = split
            .labels_tensor()
            .ok_or_else(|| EvalError::InvalidInput("accuracy needs a labelled split".into()))?;
        let (_, logits) = self.split_features(split)?;
        Ok(logits.accuracy_for_logits(&labels).double_value(&[]))
    }
}

/// u8 images `[N, C, H, W]` to f32 in [-1, 1], as the data loader does.
pub fn images_to_float(images: &Tensor) -> Tensor {
    images.to_kind(Kind::Float) / 127.5 - 1.0
}

/// Random affine augmentation of a training batch: each image gets its own
/// translation `(dy, dx)` in `[-max_shift, max_shift]` whole pixels (in
/// input coordinates, so rotated and zoomed with the image), rotation
/// in `[-max_rotate, max_rotate]` degrees and zoom in `[1 - max_scale,
/// 1 + max_scale]`, resampled bilinearly about the centre and filled with -1
/// (background). With rotation and zoom off, bilinear resampling at integer
/// offsets is an exact shift, and the random stream is the one shift-only
/// configs always drew (rotation and zoom draw after the shift, and only
/// when enabled).
fn augment_batch(
    x: &Tensor,
    rng: &mut crate::kid::SplitMix64,
    config: &ClassifierConfig,
) -> Tensor {
    let (b, h, w) = (x.size()[0], x.size()[2], x.size()[3]);
    let span = 2 * config.max_shift as u64 + 1;
    let uniform =
        |rng: &mut crate::kid::SplitMix64| (rng.next_u64() >> 11) as f64 / (1u64 << 53) as f64;
    let mut theta = Vec::with_capacity(6 * b as usize);
    for _ in 0..b {
        let dy = (rng.next_u64() % span) as i64 - config.max_shift;
        let dx = (rng.next_u64() % span) as i64 - config.max_shift;
        let angle = if config.max_rotate > 0.0 {
            (2.0 * uniform(rng) - 1.0) * config.max_rotate.to_radians()
        } else {
            0.0
        };
        let zoom = if config.max_scale > 0.0 {
            1.0 + (2.0 * uniform(rng) - 1.0) * config.max_scale
        } else {
            1.0
        };
        // theta maps output coordinates to input coordinates (normalised,
        // align_corners = false: 1 pixel = 2 / size), so zooming in by
        // `zoom` samples the input at `1 / zoom` times the distance.
        let (sin, cos) = angle.sin_cos();
        let inv = 1.0 / zoom;
        theta.extend_from_slice(&[
            (inv * cos) as f32,
            (-inv * sin) as f32,
            -2.0 * dx as f32 / w as f32,
            (inv * sin) as f32,
            (inv * cos) as f32,
            -2.0 * dy as f32 / h as f32,
        ]);
    }
    let theta = Tensor::from_slice(&theta)
        .reshape([b, 2, 3])
        .to_device(x.device());
    let grid = Tensor::affine_grid_generator(&theta, x.size(), false);
    // Zero padding of `x + 1` is -1 padding of `x`.
    Tensor::grid_sampler(&(x + 1.0), &grid, 0, 0, false) - 1.0
}

/// Trains a classifier on `data`'s train split and measures its test
/// accuracy. Seeds libtorch's global generator with `config.seed`.
pub fn train_classifier(
    config: &ClassifierConfig,
    data: &ImageDataset,
    device: Device,
    progress: &mut dyn Progress,
) -> Result<(FeatureNet, ClassifierCard)> {
    config.validate_at("classifier.")?;
    if !data.is_labelled() || data.num_classes < 2 {
        return Err(EvalError::InvalidInput(format!(
            "the feature classifier needs a labelled data set with >= 2 classes; `{}` has {}",
            data.name, data.num_classes
        )));
    }
    let shape = data.shape().map(|s| s as i64);
    tch::manual_seed(config.seed as i64);
    let net = FeatureNet::new(config, shape, data.num_classes as i64, device)?;
    let loader = BatchLoader::new(
        data.train.clone(),
        LoaderConfig::new(config.batch_size, config.seed),
    )?;
    let mut opt = nn::Adam::default().build(&net.vs, config.lr)?;
    let mut shifts = crate::kid::SplitMix64(config.seed ^ 0x7368_6966_7473);
    let started = Instant::now();
    progress.start("classifier", config.steps);
    for step in 0..config.steps {
        // Cosine decay (Loshchilov & Hutter 2017) from lr to 0.
        let lr = config.lr
            * 0.5
            * (1.0 + (std::f64::consts::PI * step as f64 / config.steps as f64).cos());
        opt.set_lr(lr);
        let batch = loader.batch(step)?;
        let labels = batch
            .labels
            .ok_or_else(|| EvalError::InvalidInput("training batch without labels".into()))?
            .to_device(device);
        let mut x = batch.x.to_device(device);
        if config.max_shift > 0 || config.max_rotate > 0.0 || config.max_scale > 0.0 {
            x = augment_batch(&x, &mut shifts, config);
        }
        let (_, logits) = net.forward_t(&x, true);
        let loss = logits.cross_entropy_for_logits(&labels);
        opt.backward_step(&loss);
        progress.advance(1);
        if (step + 1) % 250 == 0 {
            progress.message(&format!(
                "classifier step {}/{}: loss {:.4}, {:.0} s",
                step + 1,
                config.steps,
                loss.double_value(&[]),
                started.elapsed().as_secs_f64()
            ));
        }
    }
    progress.finish();
    let train_seconds = started.elapsed().as_secs_f64();
    let test_accuracy = net.accuracy(&data.test)?;
    let card = ClassifierCard {
        dataset: data.name.clone(),
        shape,
        num_classes: data.num_classes as i64,
        config: config.clone(),
        test_accuracy,
        train_seconds,
        train_images: data.train.len(),
        test_images: data.test.len(),
    };
    Ok((net, card))
}

/// The test split's features, logits and statistics: what generated
/// samples are compared against.
#[derive(Debug)]
pub struct Reference {
    /// Features `[N, D]` (f32, CPU).
    pub features: Tensor,
    /// Classifier logits `[N, K]` (f32, CPU).
    pub logits: Tensor,
    /// Mean and covariance of `features`.
    pub stats: FeatureStats,
}

impl Reference {
    /// Computes the reference of `split` with `net`.
    pub fn compute(net: &FeatureNet, split: &ImageSplit) -> Result<Self> {
        let (features, logits) = net.split_features(split)?;
        let stats = FeatureStats::from_features(&features)?;
        Ok(Reference {
            features,
            logits,
            stats,
        })
    }

    fn save(&self, path: &Path) -> Result<()> {
        let named = [
            ("features".to_string(), self.features.shallow_clone()),
            ("logits".to_string(), self.logits.shallow_clone()),
            ("mu".to_string(), self.stats.mu.shallow_clone()),
            ("sigma".to_string(), self.stats.sigma.shallow_clone()),
        ];
        cm_nets::write_atomic(path, |tmp| Ok(Tensor::write_safetensors(&named, tmp)?))?;
        Ok(())
    }

    fn load(path: &Path) -> Result<Self> {
        let tensors = Tensor::read_safetensors(path)
            .map_err(|e| EvalError::io("cannot read reference statistics", path, e))?;
        let get = |name: &str| {
            tensors
                .iter()
                .find(|(n, _)| n == name)
                .map(|(_, t)| t.shallow_clone())
                .ok_or_else(|| EvalError::io("missing tensor", path, format!("`{name}`")))
        };
        let features = get("features")?;
        let (n, d) = match features.size()[..] {
            [n, d] => (n, d),
            _ => return Err(EvalError::io("malformed features", path, "expected [N, D]")),
        };
        let stats = FeatureStats {
            mu: get("mu")?,
            sigma: get("sigma")?,
            n,
        };
        if stats.mu.size() != [d] || stats.sigma.size() != [d, d] {
            return Err(EvalError::io(
                "malformed statistics",
                path,
                "expected [D], [D, D]",
            ));
        }
        Ok(Reference {
            features,
            logits: get("logits")?,
            stats,
        })
    }
}

/// A trained feature network, its card, cache folder and the test split's
/// reference.
#[derive(Debug)]
pub struct FeatureSpace {
    /// The network.
    pub net: FeatureNet,
    /// Its card (config, accuracy, training time).
    pub card: ClassifierCard,
    /// The cache folder it lives in.
    pub dir: PathBuf,
    /// The test split's features and statistics.
    pub reference: Reference,
    /// Whether it was trained by this call (false: loaded from the cache).
    pub trained: bool,
}

/// FNV-1a, 64 bit: a stable hash for cache keys.
fn fnv1a(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |h, &b| {
        (h ^ b as u64).wrapping_mul(0x0100_0000_01b3)
    })
}

/// The cache folder root: the parent of cm-data's default data folder
/// (`$CM_RS_CACHE`, else `$XDG_CACHE_HOME/cm-rs`, else `~/.cache/cm-rs`).
pub fn default_cache_root() -> Result<PathBuf> {
    let data = cm_data::default_data_dir()?;
    Ok(data.parent().map(Path::to_path_buf).unwrap_or(data))
}

/// `<root>/features/<dataset>-<16 hex digits>`: the hash covers the cache
/// version, the data set's name, shape, split sizes and class count, and
/// the classifier config.
pub fn cache_dir(root: &Path, data: &ImageDataset, config: &ClassifierConfig) -> PathBuf {
    let key = format!(
        "v{CACHE_VERSION}|{}|{:?}|{}|{}|{}|{}",
        data.name,
        data.shape(),
        data.train.len(),
        data.test.len(),
        data.num_classes,
        toml::to_string(config).unwrap_or_default()
    );
    let safe: String = data
        .name
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' {
                c
            } else {
                '_'
            }
        })
        .collect();
    root.join("features")
        .join(format!("{safe}-{:016x}", fnv1a(key.as_bytes())))
}

/// The feature space of `data` for `config`: loaded from the cache folder
/// under `cache_root` (default [`default_cache_root`]) when a finished one
/// is there, else trained on the train split, evaluated on the test split
/// and written there (weights, reference, then the card, each atomically).
pub fn feature_space(
    data: &ImageDataset,
    config: &ClassifierConfig,
    cache_root: Option<&Path>,
    device: Device,
    progress: &mut dyn Progress,
) -> Result<FeatureSpace> {
    let root = match cache_root {
        Some(r) => r.to_path_buf(),
        None => default_cache_root()?,
    };
    let dir = cache_dir(&root, data, config);
    let card_path = dir.join("classifier.toml");
    let weights = dir.join("classifier.safetensors");
    let reference_path = dir.join("reference_test.safetensors");
    if card_path.is_file() && weights.is_file() {
        let card: ClassifierCard = cm_core::load_toml(&card_path)?;
        let net = FeatureNet::new(&card.config, card.shape, card.num_classes, device)?;
        load_var_store(&net.vs, &weights, &[])?;
        let reference = match Reference::load(&reference_path) {
            Ok(r) => r,
            Err(_) => {
                let r = Reference::compute(&net, &data.test)?;
                r.save(&reference_path)?;
                r
            }
        };
        progress.message(&format!(
            "feature network reused from {} (test accuracy {:.2}%)",
            dir.display(),
            100.0 * card.test_accuracy
        ));
        return Ok(FeatureSpace {
            net,
            card,
            dir,
            reference,
            trained: false,
        });
    }
    progress.message(&format!(
        "training the feature network on {} ({} images, {} steps) into {}",
        data.name,
        data.train.len(),
        config.steps,
        dir.display()
    ));
    let (net, card) = train_classifier(config, data, device, progress)?;
    std::fs::create_dir_all(&dir).map_err(|e| EvalError::io("cannot create folder", &dir, e))?;
    save_var_store(&net.vs, &weights)?;
    let reference = Reference::compute(&net, &data.test)?;
    reference.save(&reference_path)?;
    let text = toml::to_string(&card).map_err(|e| EvalError::io("cannot write", &card_path, e))?;
    cm_nets::write_atomic(&card_path, |tmp| {
        std::fs::write(tmp, &text).map_err(|source| cm_nets::NetError::Io {
            action: "cannot write",
            path: tmp.to_path_buf(),
            source,
        })
    })?;
    progress.message(&format!(
        "feature network: test accuracy {:.2}% after {:.0} s",
        100.0 * card.test_accuracy,
        card.train_seconds
    ));
    Ok(FeatureSpace {
        net,
        card,
        dir,
        reference,
        trained: true,
    })
}
