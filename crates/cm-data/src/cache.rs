//! The data cache: where converted data sets live
//! (`$CM_RS_CACHE/data`, else `$XDG_CACHE_HOME/cm-rs/data`, else
//! `$HOME/.cache/cm-rs/data`), atomic file writes (temp file, then rename),
//! and the compact binary format converted image data sets are stored in.
//!
//! # Cache file format, version 2 (all integers little-endian)
//!
//! | offset | size | field |
//! | --- | --- | --- |
//! | 0 | 8 | magic `CMRSDATA` |
//! | 8 | 4 | format version (2) |
//! | 12 | 4 x 3 | channels, height, width |
//! | 24 | 4 | number of classes (at most 256) |
//! | 28 | 4 | train images `n_train` |
//! | 32 | 4 | test images `n_test` |
//! | 36 | 4 | rows skipped on import |
//! | 40 | 1 | 1 when labelled, else 0 |
//! | 41 | 3 | reserved, zero |
//! | 44 | 32 | sha256 of the source (e.g. the npm tarball) |
//! | 76 | 4 | length `L` of the names block |
//! | 80 | L | UTF-8: data set name, then one class name per line (`\n`-separated) |
//! | 80+L | | train pixels `[n_train, C, H, W]` u8, train labels `n_train` u8 (if labelled), test pixels, test labels (if labelled) |
//! | end-32 | 32 | sha256 of every byte before it (version 2) |
//!
//! The file must end exactly after the content hash, and the hash must
//! match: a flipped pixel or a changed label is detected on read (version 1
//! files had no hash and are rebuilt).

use std::fs::{self, File};
use std::io::{BufWriter, Read, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use sha2::{Digest, Sha256};

use crate::dataset::{ImageDataset, ImageSplit};
use crate::error::{DataError, Result};

/// First 8 bytes of a cache file.
pub const CACHE_MAGIC: [u8; 8] = *b"CMRSDATA";
/// Version of the cache format (and of the split rules that produced it).
pub const CACHE_VERSION: u32 = 2;
const HEADER_LEN: usize = 80;
/// The content hash at the end of a version-2 file.
const TRAILER_LEN: usize = 32;

/// The data folder when none is given: `$CM_RS_CACHE/data`, else
/// `$XDG_CACHE_HOME/cm-rs/data`, else `$HOME/.cache/cm-rs/data` (empty
/// variables count as unset).
pub fn default_data_dir() -> Result<PathBuf> {
    let var = |name: &str| std::env::var_os(name).filter(|v| !v.is_empty());
    if let Some(root) = var("CM_RS_CACHE") {
        return Ok(PathBuf::from(root).join("data"));
    }
    if let Some(xdg) = var("XDG_CACHE_HOME") {
        return Ok(PathBuf::from(xdg).join("cm-rs").join("data"));
    }
    if let Some(home) = var("HOME") {
        return Ok(PathBuf::from(home)
            .join(".cache")
            .join("cm-rs")
            .join("data"));
    }
    Err(DataError::invalid(
        "data folder",
        "(none)",
        "CM_RS_CACHE, XDG_CACHE_HOME or HOME set, or a data folder given explicitly",
    ))
}

/// `explicit` when given, else [`default_data_dir`]; the folder is created.
pub fn resolve_data_dir(explicit: Option<&Path>) -> Result<PathBuf> {
    let dir = match explicit {
        Some(d) => d.to_path_buf(),
        None => default_data_dir()?,
    };
    fs::create_dir_all(&dir).map_err(|e| DataError::io("cannot create folder", &dir, e))?;
    Ok(dir)
}

/// A name for a temporary sibling of `path`, unique to this process and call.
pub(crate) fn temp_sibling(path: &Path, what: &str) -> PathBuf {
    static COUNTER: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0);
    let n = COUNTER.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let name = path
        .file_name()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_else(|| "file".into());
    path.with_file_name(format!(".{name}.{what}-{}-{nanos}-{n}", std::process::id()))
}

/// Writes a file atomically: `write` fills a temporary file next to `path`,
/// which is synced and renamed over `path`; on failure the temporary file is
/// removed and `path` is untouched.
pub fn write_atomic(
    path: &Path,
    write: impl FnOnce(&mut dyn Write) -> std::io::Result<()>,
) -> Result<()> {
    if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
        fs::create_dir_all(parent).map_err(|e| DataError::io("cannot create folder", parent, e))?;
    }
    let tmp = temp_sibling(path, "tmp");
    let result = (|| -> std::io::Result<()> {
        let file = File::create(&tmp)?;
        let mut out = BufWriter::new(file);
        write(&mut out)?;
        let file = out.into_inner().map_err(|e| e.into_error())?;
        file.sync_all()
    })();
    if let Err(e) = result {
        let _ = fs::remove_file(&tmp);
        return Err(DataError::io("cannot write", &tmp, e));
    }
    fs::rename(&tmp, path).map_err(|e| {
        let _ = fs::remove_file(&tmp);
        DataError::io("cannot rename into place", path, e)
    })
}

/// The fixed-size part of a cache file.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CacheHeader {
    /// Format version.
    pub version: u32,
    /// `[C, H, W]`.
    pub shape: [usize; 3],
    /// Number of classes.
    pub num_classes: usize,
    /// Train images.
    pub n_train: usize,
    /// Test images.
    pub n_test: usize,
    /// Rows skipped on import.
    pub skipped_rows: usize,
    /// Whether labels are stored.
    pub labelled: bool,
    /// sha256 of the source the file was converted from.
    pub source_sha256: [u8; 32],
    /// Length of the names block.
    names_len: usize,
}

impl CacheHeader {
    fn payload_len(&self) -> Option<u64> {
        let per = self
            .shape
            .iter()
            .try_fold(1u64, |a, &s| a.checked_mul(s as u64))?;
        let n = (self.n_train as u64).checked_add(self.n_test as u64)?;
        let pixels = per.checked_mul(n)?;
        let labels = if self.labelled { n } else { 0 };
        (HEADER_LEN as u64 + TRAILER_LEN as u64)
            .checked_add(self.names_len as u64)?
            .checked_add(pixels)?
            .checked_add(labels)
    }
}

fn u32_at(b: &[u8], at: usize) -> u32 {
    u32::from_le_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]])
}

/// Reads and checks the header of a cache file: magic number, and for the
/// current version, a file length that matches the counts.
pub fn read_cache_header(path: &Path) -> Result<CacheHeader> {
    let mut file = File::open(path).map_err(|e| DataError::io("cannot open", path, e))?;
    let mut b = [0u8; HEADER_LEN];
    file.read_exact(&mut b).map_err(|e| {
        if e.kind() == std::io::ErrorKind::UnexpectedEof {
            DataError::corrupt(path, format!("shorter than the {HEADER_LEN}-byte header"))
        } else {
            DataError::io("cannot read", path, e)
        }
    })?;
    if b[..8] != CACHE_MAGIC {
        return Err(DataError::BadMagic {
            path: path.into(),
            found: u32::from_be_bytes([b[0], b[1], b[2], b[3]]),
            expected: u32::from_be_bytes([
                CACHE_MAGIC[0],
                CACHE_MAGIC[1],
                CACHE_MAGIC[2],
                CACHE_MAGIC[3],
            ]),
            what: "cm-data cache file (CMRSDATA)",
        });
    }
    let mut source_sha256 = [0u8; 32];
    source_sha256.copy_from_slice(&b[44..76]);
    let header = CacheHeader {
        version: u32_at(&b, 8),
        shape: [
            u32_at(&b, 12) as usize,
            u32_at(&b, 16) as usize,
            u32_at(&b, 20) as usize,
        ],
        num_classes: u32_at(&b, 24) as usize,
        n_train: u32_at(&b, 28) as usize,
        n_test: u32_at(&b, 32) as usize,
        skipped_rows: u32_at(&b, 36) as usize,
        labelled: b[40] != 0,
        source_sha256,
        names_len: u32_at(&b, 76) as usize,
    };
    if header.version == CACHE_VERSION {
        let len = file
            .metadata()
            .map_err(|e| DataError::io("cannot stat", path, e))?
            .len();
        let want = header.payload_len();
        if want != Some(len) {
            return Err(DataError::corrupt(
                path,
                format!(
                    "file is {len} bytes, header implies {}; delete it to rebuild the cache",
                    want.map_or("an impossible size".into(), |w| w.to_string())
                ),
            ));
        }
        if header.shape.contains(&0) {
            return Err(DataError::corrupt(
                path,
                format!("image shape {:?} has a zero size", header.shape),
            ));
        }
    }
    Ok(header)
}

/// Writes `dataset` to `path` in the cache format (atomically), recording
/// `source_sha256`. Fails if it has more than 256 classes or a label outside
/// `0..num_classes`, or counts beyond `u32`.
pub fn write_cache(path: &Path, dataset: &ImageDataset, source_sha256: &[u8; 32]) -> Result<()> {
    let labelled = dataset.train.labels().is_some();
    if labelled != dataset.test.labels().is_some() && !dataset.test.is_empty() {
        return Err(DataError::invalid(
            "dataset.test.labels",
            "labelled differently from train",
            "both splits labelled or both unlabelled",
        ));
    }
    if dataset.num_classes > 256 {
        return Err(DataError::invalid(
            "num_classes",
            dataset.num_classes,
            "at most 256 for the u8 labels of the cache",
        ));
    }
    if dataset.test.shape() != dataset.train.shape() {
        return Err(DataError::invalid(
            "dataset.test.shape",
            format!("{:?}", dataset.test.shape()),
            format!("the train shape {:?}", dataset.train.shape()),
        ));
    }
    let to_u32 = |field: &str, v: usize| {
        u32::try_from(v).map_err(|_| DataError::invalid(field, v, "at most u32::MAX"))
    };
    let mut labels_u8 = Vec::new();
    for split in [&dataset.train, &dataset.test] {
        let mut out = Vec::new();
        if labelled {
            for &l in split.labels().unwrap_or(&[]) {
                if l < 0 || l as usize >= dataset.num_classes {
                    return Err(DataError::invalid(
                        "label",
                        l,
                        format!("in 0..{}", dataset.num_classes),
                    ));
                }
                out.push(l as u8);
            }
        }
        labels_u8.push(out);
    }
    let mut names = dataset.name.replace('\n', " ");
    for c in &dataset.class_names {
        names.push('\n');
        names.push_str(&c.replace('\n', " "));
    }
    let shape = dataset.shape();
    let mut header = Vec::with_capacity(HEADER_LEN);
    header.extend_from_slice(&CACHE_MAGIC);
    header.extend_from_slice(&CACHE_VERSION.to_le_bytes());
    for (field, v) in [
        ("channels", shape[0]),
        ("height", shape[1]),
        ("width", shape[2]),
        ("num_classes", dataset.num_classes),
        ("train images", dataset.train.len()),
        ("test images", dataset.test.len()),
        ("skipped_rows", dataset.skipped_rows),
    ] {
        header.extend_from_slice(&to_u32(field, v)?.to_le_bytes());
    }
    header.extend_from_slice(&[u8::from(labelled), 0, 0, 0]);
    header.extend_from_slice(source_sha256);
    header.extend_from_slice(&to_u32("names", names.len())?.to_le_bytes());
    debug_assert_eq!(header.len(), HEADER_LEN);
    let parts: [&[u8]; 6] = [
        &header,
        names.as_bytes(),
        dataset.train.pixels(),
        &labels_u8[0],
        dataset.test.pixels(),
        &labels_u8[1],
    ];
    let mut hasher = Sha256::new();
    for part in parts {
        hasher.update(part);
    }
    let digest = hasher.finalize();
    write_atomic(path, |out| {
        for part in parts {
            out.write_all(part)?;
        }
        out.write_all(&digest)?;
        Ok(())
    })
}

/// Reads a cache file written by [`write_cache`]: the data set and the
/// sha256 of its source. Fails on a wrong magic number, another format
/// version, a length that does not match the header, or a label out of
/// range.
pub fn read_cache(path: &Path) -> Result<(ImageDataset, [u8; 32])> {
    let header = read_cache_header(path)?;
    if header.version != CACHE_VERSION {
        return Err(DataError::corrupt(
            path,
            format!(
                "cache format version {} (this build reads version {CACHE_VERSION}); delete it to rebuild",
                header.version
            ),
        ));
    }
    let file = File::open(path).map_err(|e| DataError::io("cannot open", path, e))?;
    let mut file = std::io::BufReader::with_capacity(1 << 20, file);
    let hasher = std::cell::RefCell::new(Sha256::new());
    // Every byte read is hashed; the trailer must match at the end. (The
    // header's length check bounds every read by the file's real size.)
    let read = |file: &mut std::io::BufReader<File>, n: usize| -> Result<Vec<u8>> {
        let mut v = vec![0u8; n];
        file.read_exact(&mut v)
            .map_err(|e| DataError::io("cannot read", path, e))?;
        hasher.borrow_mut().update(&v);
        Ok(v)
    };
    read(&mut file, HEADER_LEN)?;
    let names = read(&mut file, header.names_len)?;
    let names = String::from_utf8(names)
        .map_err(|_| DataError::corrupt(path, "names block is not UTF-8"))?;
    let mut lines = names.split('\n').map(str::to_string);
    let name = lines.next().unwrap_or_default();
    let class_names: Vec<String> = lines.collect();
    let per = header.shape[0] * header.shape[1] * header.shape[2];
    let mut read_split = |n: usize| -> Result<Arc<ImageSplit>> {
        let pixels = read(&mut file, n * per)?;
        let labels = if header.labelled {
            let raw = read(&mut file, n)?;
            if let Some(&bad) = raw.iter().find(|&&l| l as usize >= header.num_classes) {
                return Err(DataError::corrupt(
                    path,
                    format!("label {bad} outside 0..{}", header.num_classes),
                ));
            }
            Some(raw.into_iter().map(i64::from).collect())
        } else {
            None
        };
        Ok(Arc::new(ImageSplit::new(pixels, labels, header.shape)?))
    };
    // Train first: the file stores it first.
    let train = read_split(header.n_train)?;
    let test = read_split(header.n_test)?;
    let mut stored = [0u8; TRAILER_LEN];
    file.read_exact(&mut stored)
        .map_err(|e| DataError::io("cannot read", path, e))?;
    if hasher.into_inner().finalize().as_slice() != stored {
        return Err(DataError::corrupt(
            path,
            "content hash mismatch: the cached data changed after it was written",
        ));
    }
    Ok((
        ImageDataset {
            name,
            train,
            test,
            num_classes: header.num_classes,
            class_names,
            skipped_rows: header.skipped_rows,
        },
        header.source_sha256,
    ))
}
