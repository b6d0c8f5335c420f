//! A folder of PNG / JPEG images as a data set, torchvision `ImageFolder`
//! style: images in sub-folders are labelled by the sub-folder (classes
//! sorted alphabetically by name, label = position), images lying directly in
//! the folder are unlabelled. Each image is centre-cropped to a square (its
//! shorter side), resized to the configured resolution (triangle filter),
//! and converted to grey or RGB (alpha dropped).
//!
//! Bounded and safe on hostile folders: images are decoded under limits
//! ([`MAX_DECODE_SIDE`] per side, [`MAX_DECODE_BYTES`] per image), cropped
//! before resizing (a 1 x 1,000,000 strip never becomes a 28 x 28,000,000
//! intermediate), links to folders are not followed (a `loop -> ..` link
//! would read the tree again and mislabel it), and entries that are not
//! regular files (a FIFO named `x.png` would block the read) are skipped;
//! both are counted in [`ImageDataset::skipped_rows`].

use std::fs;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use image::imageops::{self, FilterType};
use image::{ImageBuffer, Pixel};
use serde::{Deserialize, Serialize};

use crate::dataset::{split_stratified, ImageDataset, ImageSplit, SplitRule};
use crate::error::{DataError, Result};

/// Colour of the loaded images.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum ColorMode {
    /// One channel (luma, ITU-R BT.709 weights as in the `image` crate).
    Grey,
    /// Three channels, R, G, B.
    #[default]
    Rgb,
}

impl ColorMode {
    /// Channels per pixel: 1 or 3.
    pub fn channels(&self) -> usize {
        match self {
            ColorMode::Grey => 1,
            ColorMode::Rgb => 3,
        }
    }
}

/// Options of [`load_image_folder`].
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ImageFolderConfig {
    /// Side of the square output images, in pixels (1..=4096; default 32).
    pub resolution: u32,
    /// Grey or RGB output (default RGB).
    pub color: ColorMode,
    /// Train/test split per class (default: everything trains). Unlabelled
    /// folders are split as one class.
    pub split: SplitRule,
}

impl Default for ImageFolderConfig {
    fn default() -> Self {
        ImageFolderConfig {
            resolution: 32,
            color: ColorMode::Rgb,
            split: SplitRule::NoTest,
        }
    }
}

impl ImageFolderConfig {
    /// Checks the resolution range.
    pub fn validate(&self) -> Result<()> {
        if !(1..=4096).contains(&self.resolution) {
            return Err(DataError::invalid(
                "image_folder.resolution",
                self.resolution,
                "between 1 and 4096 pixels",
            ));
        }
        Ok(())
    }
}

fn is_image(path: &Path) -> bool {
    path.extension()
        .and_then(|e| e.to_str())
        .map(|e| matches!(e.to_ascii_lowercase().as_str(), "png" | "jpg" | "jpeg"))
        .unwrap_or(false)
}

fn is_hidden(path: &Path) -> bool {
    path.file_name()
        .and_then(|n| n.to_str())
        .is_some_and(|n| n.starts_with('.'))
}

/// The largest image side decoded.
pub const MAX_DECODE_SIDE: u32 = 16_384;
/// The most memory one image's decoding may allocate.
pub const MAX_DECODE_BYTES: u64 = 512 << 20;

/// Sorted entries of `dir`: (sub-folders, image files, skipped entries);
/// hidden entries are ignored. Links to folders and image-named entries
/// that are not regular files (FIFOs, devices) are skipped and counted;
/// links to image files are read.
fn list(dir: &Path) -> Result<(Vec<PathBuf>, Vec<PathBuf>, usize)> {
    let rd = fs::read_dir(dir).map_err(|e| DataError::io("cannot list folder", dir, e))?;
    let mut dirs = Vec::new();
    let mut files = Vec::new();
    let mut skipped = 0;
    for entry in rd {
        let entry = entry.map_err(|e| DataError::io("cannot list folder", dir, e))?;
        let path = entry.path();
        if is_hidden(&path) {
            continue;
        }
        // file_type does not follow links.
        let kind = entry
            .file_type()
            .map_err(|e| DataError::io("cannot list folder", dir, e))?;
        if kind.is_dir() {
            dirs.push(path);
        } else if kind.is_symlink() {
            match fs::metadata(&path) {
                Ok(m) if m.is_file() && is_image(&path) => files.push(path),
                Ok(m) if m.is_dir() => skipped += 1,
                _ if is_image(&path) => skipped += 1,
                _ => {}
            }
        } else if is_image(&path) {
            if kind.is_file() {
                files.push(path);
            } else {
                skipped += 1;
            }
        }
    }
    dirs.sort();
    files.sort();
    Ok((dirs, files, skipped))
}

/// Every image below `dir`, recursively, in sorted path order, and the
/// count of skipped entries.
fn images_below(dir: &Path) -> Result<(Vec<PathBuf>, usize)> {
    let (dirs, mut files, mut skipped) = list(dir)?;
    for d in dirs {
        let (more, s) = images_below(&d)?;
        files.extend(more);
        skipped += s;
    }
    Ok((files, skipped))
}

/// Decodes one image and returns it as `[C, res, res]` u8: centre-cropped
/// to a square, resized to `res` (triangle filter), grey or RGB.
/// `resolution` is 1 to 4096, as in [`ImageFolderConfig`].
pub fn load_image(path: &Path, resolution: u32, color: ColorMode) -> Result<Vec<u8>> {
    if !(1..=4096).contains(&resolution) {
        return Err(DataError::invalid(
            "resolution",
            resolution,
            "between 1 and 4096 pixels",
        ));
    }
    match fs::metadata(path) {
        Ok(m) if m.is_file() => {}
        Ok(_) => {
            return Err(DataError::corrupt(
                path,
                "not a regular file (a folder, device or pipe)".to_string(),
            ))
        }
        Err(e) => return Err(DataError::io("cannot open", path, e)),
    }
    let mut reader = image::ImageReader::open(path)
        .map_err(|e| DataError::io("cannot open", path, e))?
        .with_guessed_format()
        .map_err(|e| DataError::io("cannot read", path, e))?;
    let mut limits = image::Limits::default();
    limits.max_image_width = Some(MAX_DECODE_SIDE);
    limits.max_image_height = Some(MAX_DECODE_SIDE);
    limits.max_alloc = Some(MAX_DECODE_BYTES);
    reader.limits(limits);
    let img = reader.decode().map_err(|e| {
        DataError::corrupt(
            path,
            format!(
                "cannot decode image: {e} (limits: {MAX_DECODE_SIDE} pixels per side, \
                 {} MiB per image)",
                MAX_DECODE_BYTES >> 20
            ),
        )
    })?;
    Ok(match color {
        ColorMode::Grey => fit_square(&img.to_luma8(), resolution),
        ColorMode::Rgb => fit_square(&img.to_rgb8(), resolution),
    })
}

/// Centre-crops `img` to a square and resizes it to `res`, returning
/// `[C, res, res]`. Cropping first keeps every intermediate at most the
/// size of the input.
fn fit_square<P>(img: &ImageBuffer<P, Vec<u8>>, res: u32) -> Vec<u8>
where
    P: Pixel<Subpixel = u8> + 'static,
{
    let (w, h) = img.dimensions();
    let side = w.min(h);
    let square = imageops::crop_imm(img, (w - side) / 2, (h - side) / 2, side, side).to_image();
    let crop = if side == res {
        square
    } else {
        imageops::resize(&square, res, res, FilterType::Triangle)
    };
    let c = usize::from(P::CHANNEL_COUNT);
    let raw = crop.as_raw();
    let plane = (res * res) as usize;
    let mut out = vec![0u8; c * plane];
    for (i, px) in raw.chunks_exact(c).enumerate() {
        for (ch, &v) in px.iter().enumerate() {
            out[ch * plane + i] = v;
        }
    }
    out
}

/// Loads every PNG / JPEG image in `dir` (see the module docs for labels,
/// resizing and cropping). Fails on a missing or empty folder, a folder that
/// mixes loose images with class sub-folders, or an undecodable image.
pub fn load_image_folder(dir: &Path, config: &ImageFolderConfig) -> Result<ImageDataset> {
    config.validate()?;
    if !dir.is_dir() {
        return Err(DataError::MissingFile {
            path: dir.into(),
            expected: "a folder of PNG/JPEG images (optionally in class sub-folders)".into(),
        });
    }
    let (sub_dirs, loose, mut skipped) = list(dir)?;
    let mut classes: Vec<(String, Vec<PathBuf>)> = Vec::new();
    for d in sub_dirs {
        let (files, s) = images_below(&d)?;
        skipped += s;
        if !files.is_empty() {
            let name = d
                .file_name()
                .map(|s| s.to_string_lossy().into_owned())
                .unwrap_or_default();
            classes.push((name, files));
        }
    }
    // `list` sorts by full path, which for siblings is by name; sort by name
    // anyway so the rule ("alphabetical") holds whatever the folder path.
    classes.sort_by(|a, b| a.0.cmp(&b.0));
    let labelled = !classes.is_empty();
    if labelled && !loose.is_empty() {
        return Err(DataError::EmptyFolder {
            path: dir.into(),
            reason: format!(
                "{} images lie directly in the folder next to {} class sub-folders; \
                 put every image in a class sub-folder, or none",
                loose.len(),
                classes.len()
            ),
        });
    }
    if !labelled && loose.is_empty() {
        return Err(DataError::EmptyFolder {
            path: dir.into(),
            reason: "no PNG or JPEG image (*.png, *.jpg, *.jpeg) in it or its sub-folders".into(),
        });
    }
    let groups: Vec<Vec<PathBuf>> = if labelled {
        classes.iter().map(|(_, f)| f.clone()).collect()
    } else {
        vec![loose]
    };
    let res = config.resolution;
    let shape = [config.color.channels(), res as usize, res as usize];
    let mut per_class = Vec::with_capacity(groups.len());
    for files in &groups {
        let mut pixels = Vec::with_capacity(files.len() * shape.iter().product::<usize>());
        for f in files {
            pixels.extend(load_image(f, res, config.color)?);
        }
        per_class.push(pixels);
    }
    let (train, test) = split_stratified(&per_class, shape, config.split)?;
    let (train, test) = if labelled {
        (train, test)
    } else {
        let strip = |s: ImageSplit| {
            let (pixels, _, shape) = s.into_parts();
            ImageSplit::new(pixels, None, shape)
        };
        (strip(train)?, strip(test)?)
    };
    Ok(ImageDataset {
        name: dir
            .file_name()
            .map(|s| s.to_string_lossy().into_owned())
            .unwrap_or_else(|| "images".into()),
        train: Arc::new(train),
        test: Arc::new(test),
        num_classes: classes.len(),
        class_names: classes.into_iter().map(|(n, _)| n).collect(),
        skipped_rows: skipped,
    })
}
