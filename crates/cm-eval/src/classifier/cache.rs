//! The feature-network cache of [`super`]:
//! `<cache>/features/<dataset>-<hash of config>/` holds the weights
//! (`classifier.safetensors`), the card (`classifier.toml`, written last)
//! and the test split's [`Reference`] (`reference_test.safetensors`);
//! [`feature_space`] loads it or trains and writes it.

use std::path::{Path, PathBuf};

use tch::{Device, Tensor};

use cm_data::{ImageDataset, ImageSplit};

use super::{train_classifier, ClassifierCard, ClassifierConfig, FeatureNet};
use crate::error::{EvalError, Result};
use crate::frechet::FeatureStats;
use crate::progress::Progress;
use crate::weights::{load_var_store, save_var_store};

/// Version of the cache layout and training recipe; part of the cache key.
const CACHE_VERSION: u32 = 1;

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
        .join(format!("{safe}-{:016x}", cm_core::fnv1a64(key.as_bytes())))
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
        load_var_store(net.var_store(), &weights, &[])?;
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
    save_var_store(net.var_store(), &weights)?;
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
