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
//!
//! The code follows those seams: [`network`] (the CNN and its feature
//! extraction), [`train`] (augmentation and the training loop) and
//! [`cache`] (the cache folder, the test split's reference and
//! [`feature_space`]); this module holds the config and the card.

use serde::{Deserialize, Serialize};

use cm_core::{CoreError, Validate};

pub mod cache;
pub mod network;
pub mod train;

pub use cache::{cache_dir, default_cache_root, feature_space, FeatureSpace, Reference};
pub use network::{images_to_float, FeatureNet, FEATURE_BATCH};
pub use train::train_classifier;

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
        if self.steps == 0 {
            return Err(CoreError::invalid(
                format!("{prefix}steps"),
                0,
                "at least 1",
            ));
        }
        if self.batch_size == 0 {
            return Err(CoreError::invalid(
                format!("{prefix}batch_size"),
                0,
                "at least 1",
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
        if self.shape.iter().any(|&s| s < 1) {
            return Err(CoreError::invalid(
                "shape",
                format!("{:?}", self.shape),
                "a [C, H, W] shape of positive sizes",
            ));
        }
        if self.num_classes < 2 {
            return Err(CoreError::invalid(
                "num_classes",
                self.num_classes,
                "at least 2",
            ));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The field path of a config error.
    fn field(e: CoreError) -> String {
        match e {
            CoreError::InvalidConfig { field, .. } => field,
            other => panic!("expected an invalid-config error, got {other}"),
        }
    }

    #[test]
    fn every_invalid_field_is_named_by_its_path() {
        let ok = ClassifierConfig::default();
        ok.validate().unwrap();
        let cases: Vec<(ClassifierConfig, &str)> = vec![
            (
                ClassifierConfig {
                    channels: [1, 0, 1],
                    ..ok.clone()
                },
                "channels",
            ),
            (
                ClassifierConfig {
                    features: 0,
                    ..ok.clone()
                },
                "features",
            ),
            (
                ClassifierConfig {
                    dropout: 1.0,
                    ..ok.clone()
                },
                "dropout",
            ),
            (
                ClassifierConfig {
                    steps: 0,
                    ..ok.clone()
                },
                "steps",
            ),
            (
                ClassifierConfig {
                    batch_size: 0,
                    ..ok.clone()
                },
                "batch_size",
            ),
            (
                ClassifierConfig {
                    lr: f64::NAN,
                    ..ok.clone()
                },
                "lr",
            ),
            (
                ClassifierConfig {
                    max_shift: 9,
                    ..ok.clone()
                },
                "max_shift",
            ),
            (
                ClassifierConfig {
                    max_rotate: 50.0,
                    ..ok.clone()
                },
                "max_rotate",
            ),
            (
                ClassifierConfig {
                    max_scale: 0.5,
                    ..ok.clone()
                },
                "max_scale",
            ),
        ];
        for (config, name) in cases {
            assert_eq!(
                field(config.validate_at("classifier.").unwrap_err()),
                format!("classifier.{name}")
            );
        }
        let card = ClassifierCard {
            dataset: "d".into(),
            shape: [1, 28, 28],
            num_classes: 10,
            config: ok.clone(),
            test_accuracy: 0.9,
            train_seconds: 1.0,
            train_images: 10,
            test_images: 10,
        };
        card.validate().unwrap();
        let bad = |f: fn(&mut ClassifierCard)| {
            let mut c = card.clone();
            f(&mut c);
            field(c.validate().unwrap_err())
        };
        assert_eq!(bad(|c| c.shape = [1, 0, 28]), "shape");
        assert_eq!(bad(|c| c.num_classes = 1), "num_classes");
        assert_eq!(bad(|c| c.config.steps = 0), "config.steps");
    }
}
