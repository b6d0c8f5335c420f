//! The CIFAR-10 binary format (Krizhevsky 2009,
//! <https://www.cs.toronto.edu/~kriz/cifar.html>, "binary version"): each
//! file is a run of 3,073-byte records, one label byte (0..9) followed by a
//! 32x32 RGB image stored channel by channel (`[3, 32, 32]`, R then G then B,
//! rows top to bottom).
//!
//! [`load_cifar10_dir`] reads `data_batch_1.bin` .. `data_batch_5.bin` as the
//! train split and `test_batch.bin` as the test split, from the folder given
//! or its `cifar-10-batches-bin` sub-folder; class names come from
//! `batches.meta.txt` when present.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use crate::dataset::{ImageDataset, ImageSplit};
use crate::error::{DataError, Result};

/// Bytes of one CIFAR-10 image, `3 * 32 * 32`.
pub const CIFAR_IMAGE_BYTES: usize = 3 * 32 * 32;
/// Bytes of one record: the label byte plus the image.
pub const CIFAR_RECORD_BYTES: usize = 1 + CIFAR_IMAGE_BYTES;

/// The CIFAR-10 class names, in label order.
pub const CIFAR10_CLASSES: [&str; 10] = [
    "airplane",
    "automobile",
    "bird",
    "cat",
    "deer",
    "dog",
    "frog",
    "horse",
    "ship",
    "truck",
];

/// The largest CIFAR-10 batch file read: 1 GiB, about 349,000 records (the
/// real ones hold 10,000, 30.7 MB).
pub const MAX_CIFAR_BATCH_BYTES: u64 = 1 << 30;

/// Reads one CIFAR-10 batch file: pixels `[N, 3, 32, 32]` and labels. Fails
/// when the file size is not a whole number of records or a label is not in
/// `0..10`.
pub fn read_cifar10_batch(path: &Path) -> Result<(Vec<u8>, Vec<i64>)> {
    let bytes = cm_core::read_bounded(path, MAX_CIFAR_BATCH_BYTES, "a CIFAR-10 binary batch file")
        .map_err(|e| {
            DataError::open_failed("cannot read", path, "a CIFAR-10 binary batch file", e)
        })?;
    if bytes.is_empty() || !bytes.len().is_multiple_of(CIFAR_RECORD_BYTES) {
        return Err(DataError::corrupt(
            path,
            format!(
                "{} bytes is not a positive multiple of the {CIFAR_RECORD_BYTES}-byte record \
                 (1 label byte + 3x32x32 pixels); truncated or not a CIFAR-10 binary file",
                bytes.len()
            ),
        ));
    }
    let n = bytes.len() / CIFAR_RECORD_BYTES;
    let mut pixels = Vec::with_capacity(n * CIFAR_IMAGE_BYTES);
    let mut labels = Vec::with_capacity(n);
    for (i, record) in bytes.chunks_exact(CIFAR_RECORD_BYTES).enumerate() {
        let label = record[0];
        if label >= 10 {
            return Err(DataError::corrupt(
                path,
                format!("record {i} has label {label}, expected 0..=9"),
            ));
        }
        labels.push(i64::from(label));
        pixels.extend_from_slice(&record[1..]);
    }
    Ok((pixels, labels))
}

fn read_batches(paths: &[PathBuf]) -> Result<ImageSplit> {
    let mut pixels = Vec::new();
    let mut labels = Vec::new();
    for p in paths {
        let (px, lb) = read_cifar10_batch(p)?;
        pixels.extend_from_slice(&px);
        labels.extend_from_slice(&lb);
    }
    ImageSplit::new(pixels, Some(labels), [3, 32, 32])
}

/// Loads the CIFAR-10 binary distribution from `dir` (or from
/// `dir/cifar-10-batches-bin`): 50,000 train and 10,000 test images for the
/// real files, whatever the batch files hold otherwise.
pub fn load_cifar10_dir(dir: &Path) -> Result<ImageDataset> {
    let nested = dir.join("cifar-10-batches-bin");
    let root = if dir.join("data_batch_1.bin").is_file() || !nested.is_dir() {
        dir.to_path_buf()
    } else {
        nested
    };
    let train_files: Vec<PathBuf> = (1..=5)
        .map(|i| root.join(format!("data_batch_{i}.bin")))
        .collect();
    let test_file = root.join("test_batch.bin");
    for p in train_files.iter().chain([&test_file]) {
        if !p.is_file() {
            return Err(DataError::MissingFile {
                path: p.clone(),
                expected: "a CIFAR-10 binary batch (data_batch_1..5.bin and test_batch.bin)".into(),
            });
        }
    }
    let train = read_batches(&train_files)?;
    let test = read_batches(std::slice::from_ref(&test_file))?;
    // The class names file is small (10 lines); anything else falls back
    // to the standard names.
    let meta =
        cm_core::read_bounded_text(&root.join("batches.meta.txt"), 1 << 16, "batches.meta.txt")
            .ok();
    let class_names = match meta {
        Some(text) => {
            let names: Vec<String> = text
                .lines()
                .map(str::trim)
                .filter(|l| !l.is_empty())
                .map(str::to_string)
                .collect();
            if names.len() == 10 {
                names
            } else {
                CIFAR10_CLASSES.iter().map(|s| s.to_string()).collect()
            }
        }
        None => CIFAR10_CLASSES.iter().map(|s| s.to_string()).collect(),
    };
    Ok(ImageDataset {
        name: "cifar10".into(),
        train: Arc::new(train),
        test: Arc::new(test),
        num_classes: 10,
        class_names,
        skipped_rows: 0,
    })
}
