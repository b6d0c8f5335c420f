//! The IDX format of the original MNIST / Fashion-MNIST distribution
//! (LeCun et al., <http://yann.lecun.com/exdb/mnist/>): big-endian headers,
//! raw or gzipped.
//!
//! - images (`*-images-idx3-ubyte`): magic `0x00000803`, count, rows, cols,
//!   then `count * rows * cols` bytes;
//! - labels (`*-labels-idx1-ubyte`): magic `0x00000801`, count, then `count`
//!   bytes.
//!
//! [`load_idx_dir`] reads `train-images-idx3-ubyte`, `train-labels-idx1-ubyte`,
//! `t10k-images-idx3-ubyte` and `t10k-labels-idx1-ubyte` from a folder, each
//! raw or with a `.gz` suffix (the `train-images.idx3-ubyte` spelling is
//! accepted too).

use std::fs::File;
use std::io::{BufReader, Read};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use crate::dataset::{ImageDataset, ImageSplit};
use crate::error::{DataError, Result};

/// Magic number of an IDX image file (unsigned bytes, 3 dimensions).
pub const IDX_IMAGES_MAGIC: u32 = 0x0000_0803;
/// Magic number of an IDX label file (unsigned bytes, 1 dimension).
pub const IDX_LABELS_MAGIC: u32 = 0x0000_0801;

/// Opens a file, transparently gunzipping it when it starts with the gzip
/// magic bytes `1f 8b`.
fn open_maybe_gz(path: &Path) -> Result<Box<dyn Read>> {
    let mut file = File::open(path)
        .map_err(|e| DataError::open_failed("cannot open", path, "an IDX file (raw or .gz)", e))?;
    let mut head = [0u8; 2];
    let n = read_up_to(&mut file, &mut head).map_err(|e| DataError::io("cannot read", path, e))?;
    let reader = std::io::Cursor::new(head[..n].to_vec()).chain(file);
    let reader = BufReader::with_capacity(1 << 16, reader);
    if n == 2 && head == [0x1f, 0x8b] {
        Ok(Box::new(flate2::read::GzDecoder::new(reader)))
    } else {
        Ok(Box::new(reader))
    }
}

/// Reads until `buf` is full or the input ends; returns the bytes read.
fn read_up_to(r: &mut (impl Read + ?Sized), buf: &mut [u8]) -> std::io::Result<usize> {
    let mut filled = 0;
    while filled < buf.len() {
        match r.read(&mut buf[filled..]) {
            Ok(0) => break,
            Ok(n) => filled += n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(filled)
}

/// Reads the magic number (checked first, so a wrong file type is named as
/// such even when it is short) and then the `N` dimension sizes.
fn read_header<const N: usize>(
    r: &mut dyn Read,
    path: &Path,
    expected: u32,
    what: &'static str,
) -> Result<[u32; N]> {
    let mut buf = vec![0u8; 4 * (N + 1)];
    let n = read_up_to(r, &mut buf).map_err(|e| read_error(path, e))?;
    if n >= 4 {
        let magic = u32::from_be_bytes([buf[0], buf[1], buf[2], buf[3]]);
        if magic != expected {
            return Err(DataError::BadMagic {
                path: path.into(),
                found: magic,
                expected,
                what,
            });
        }
    }
    if n < buf.len() {
        return Err(DataError::corrupt(
            path,
            format!(
                "{n} bytes, shorter than the {}-byte {what} header",
                buf.len()
            ),
        ));
    }
    let mut out = [0u32; N];
    for (i, o) in out.iter_mut().enumerate() {
        let at = 4 * (i + 1);
        *o = u32::from_be_bytes([buf[at], buf[at + 1], buf[at + 2], buf[at + 3]]);
    }
    Ok(out)
}

fn read_error(path: &Path, e: std::io::Error) -> DataError {
    // A bad gzip stream surfaces as InvalidInput / InvalidData.
    match e.kind() {
        std::io::ErrorKind::InvalidData | std::io::ErrorKind::InvalidInput => {
            DataError::corrupt(path, format!("cannot decompress: {e}"))
        }
        _ => DataError::io("cannot read", path, e),
    }
}

/// Reads exactly `len` payload bytes and checks that nothing follows.
fn read_payload(r: &mut dyn Read, path: &Path, len: u64, what: &str) -> Result<Vec<u8>> {
    let mut data = Vec::new();
    // Never trust the header for the allocation: read at most len + 1 bytes.
    r.take(len.saturating_add(1))
        .read_to_end(&mut data)
        .map_err(|e| read_error(path, e))?;
    if (data.len() as u64) < len {
        return Err(DataError::corrupt(
            path,
            format!(
                "truncated: the header promises {len} bytes of {what}, the file holds {}",
                data.len()
            ),
        ));
    }
    if data.len() as u64 > len {
        return Err(DataError::corrupt(
            path,
            format!("trailing bytes after the {len} bytes of {what} the header promises"),
        ));
    }
    Ok(data)
}

/// The largest image side an IDX header may declare.
pub const MAX_IDX_SIDE: u32 = 16_384;
/// The most pixel bytes an IDX file may hold (4 GiB; MNIST's training
/// images are 47 MB).
pub const MAX_IDX_BYTES: u64 = 4 << 30;

/// Reads an IDX image file (raw or gzipped): pixels `[N, 1, rows, cols]` and
/// the shape `[1, rows, cols]`.
pub fn read_idx_images(path: &Path) -> Result<(Vec<u8>, [usize; 3])> {
    let mut r = open_maybe_gz(path)?;
    let [n, rows, cols] =
        read_header::<3>(&mut *r, path, IDX_IMAGES_MAGIC, "IDX images (idx3-ubyte)")?;
    if rows == 0 || cols == 0 {
        return Err(DataError::corrupt(
            path,
            format!("image size {rows}x{cols}; expected both sizes at least 1"),
        ));
    }
    if rows > MAX_IDX_SIDE || cols > MAX_IDX_SIDE {
        return Err(DataError::corrupt(
            path,
            format!("image size {rows}x{cols}; expected sides of at most {MAX_IDX_SIDE}"),
        ));
    }
    // Checked: a 16-byte header can name n = 2^22 images of 2^21 x 2^21,
    // whose product overflows u64.
    let len = u64::from(n)
        .checked_mul(u64::from(rows) * u64::from(cols))
        .filter(|&len| len <= MAX_IDX_BYTES)
        .ok_or_else(|| {
            DataError::corrupt(
                path,
                format!(
                    "the header promises {n} images of {rows}x{cols}, more than the \
                     {MAX_IDX_BYTES}-byte limit"
                ),
            )
        })?;
    let pixels = read_payload(&mut *r, path, len, "pixels")?;
    Ok((pixels, [1, rows as usize, cols as usize]))
}

/// Reads an IDX label file (raw or gzipped).
pub fn read_idx_labels(path: &Path) -> Result<Vec<u8>> {
    let mut r = open_maybe_gz(path)?;
    let [n] = read_header::<1>(&mut *r, path, IDX_LABELS_MAGIC, "IDX labels (idx1-ubyte)")?;
    read_payload(&mut *r, path, u64::from(n), "labels")
}

/// Reads an image file and its label file into a labelled split, checking
/// that the counts match.
pub fn read_idx_pair(images: &Path, labels: &Path) -> Result<ImageSplit> {
    let (pixels, shape) = read_idx_images(images)?;
    let raw = read_idx_labels(labels)?;
    let n_images = pixels.len() / (shape[1] * shape[2]);
    if n_images != raw.len() {
        return Err(DataError::CountMismatch {
            images_path: images.into(),
            images: n_images,
            labels_path: labels.into(),
            labels: raw.len(),
        });
    }
    ImageSplit::new(
        pixels,
        Some(raw.into_iter().map(i64::from).collect()),
        shape,
    )
}

/// Finds `stem` in `dir` under its usual spellings, raw or gzipped.
fn find_idx(dir: &Path, stem: &str) -> Result<PathBuf> {
    let dotted = stem.replacen("-idx", ".idx", 1);
    for name in [stem, &dotted] {
        for suffix in ["", ".gz"] {
            let p = dir.join(format!("{name}{suffix}"));
            if p.is_file() {
                return Ok(p);
            }
        }
    }
    Err(DataError::MissingFile {
        path: dir.join(stem),
        expected: format!("the IDX file {stem} (or {stem}.gz)"),
    })
}

/// Loads a folder of IDX files: `train-*` as the train split, `t10k-*` as the
/// test split. The number of classes is the largest label plus one; class
/// names are the label numbers.
pub fn load_idx_dir(dir: &Path) -> Result<ImageDataset> {
    if !dir.is_dir() {
        return Err(DataError::MissingFile {
            path: dir.into(),
            expected: "a folder holding train-images-idx3-ubyte[.gz] and friends".into(),
        });
    }
    let train = read_idx_pair(
        &find_idx(dir, "train-images-idx3-ubyte")?,
        &find_idx(dir, "train-labels-idx1-ubyte")?,
    )?;
    let test_images = find_idx(dir, "t10k-images-idx3-ubyte")?;
    let test = read_idx_pair(&test_images, &find_idx(dir, "t10k-labels-idx1-ubyte")?)?;
    if test.shape() != train.shape() {
        return Err(DataError::corrupt(
            &test_images,
            format!(
                "test images are {:?}, train images {:?}; the shapes must match",
                test.shape(),
                train.shape()
            ),
        ));
    }
    let max = train
        .labels()
        .into_iter()
        .chain(test.labels())
        .flatten()
        .copied()
        .max()
        .unwrap_or(-1);
    let num_classes = (max + 1) as usize;
    Ok(ImageDataset {
        name: dir
            .file_name()
            .map(|s| s.to_string_lossy().into_owned())
            .unwrap_or_else(|| "idx".into()),
        train: Arc::new(train),
        test: Arc::new(test),
        num_classes,
        class_names: (0..num_classes).map(|c| c.to_string()).collect(),
        skipped_rows: 0,
    })
}
