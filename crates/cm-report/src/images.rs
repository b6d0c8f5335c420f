//! Images from tensors: `[-1, 1]` floats to 8-bit pixels, one image as a
//! PNG, many as a grid with 2-pixel gaps, and [`write_samples`], which picks a
//! grid for images and a scatter plot for 2-D points.

use std::path::{Path, PathBuf};

use image::{Rgb, RgbImage};
use tch::{Kind, Tensor};

use crate::error::{ReportError, Result};
use crate::fsio::{save_png, write_atomic};

/// Background of the gaps between grid cells.
const GAP_COLOR: Rgb<u8> = Rgb([40, 40, 40]);
/// Pixels between grid cells and around the grid.
const GAP: i64 = 2;

/// Pixel values of images in [-1, 1]: `round(clamp((x + 1) * 127.5, 0, 255))`
/// as a `Uint8` tensor of the same shape, on the CPU.
pub fn to_u8(images: &Tensor) -> Tensor {
    ((images.to_device(tch::Device::Cpu).to_kind(Kind::Float) + 1.0) * 127.5)
        .clamp(0.0, 255.0)
        .round()
        .to_kind(Kind::Uint8)
}

/// The shape of `t` if it has `rank` dimensions, else an error naming `what`
/// and the expected layout.
fn shape_of(t: &Tensor, rank: usize, what: &str, layout: &str) -> Result<Vec<i64>> {
    let size = t.size();
    if size.len() != rank {
        return Err(ReportError::invalid(
            what,
            format!("needs a {layout} tensor, got shape {size:?}"),
        ));
    }
    Ok(size)
}

/// Writes `[N, C, H, W]` images in [-1, 1] (C = 1 or 3) as a square-ish
/// grid with 2-pixel gaps.
pub fn write_image_grid(images: &Tensor, path: &Path) -> Result<()> {
    let n = images.size().first().copied().unwrap_or(0);
    let cols = ((n as f64).sqrt().ceil() as i64).max(1);
    write_image_grid_with_columns(images, cols, path)
}

/// Writes `[N, C, H, W]` images in [-1, 1] (C = 1 or 3) as a grid of
/// `columns` columns (row-major) with 2-pixel gaps: editing results are laid
/// out one example per row (reference, degraded input, result, ...).
pub fn write_image_grid_with_columns(images: &Tensor, columns: i64, path: &Path) -> Result<()> {
    let size = shape_of(images, 4, "image grid", "[N, C, H, W]")?;
    let (n, c, h, w) = (size[0], size[1], size[2], size[3]);
    if c != 1 && c != 3 {
        return Err(ReportError::invalid(
            "image grid",
            format!("needs 1 or 3 channels, found {c} (shape {size:?})"),
        ));
    }
    if columns < 1 {
        return Err(ReportError::invalid(
            "image grid",
            format!("needs at least 1 column, got {columns}"),
        ));
    }
    let cols = columns;
    let rows = (n + cols - 1) / cols;
    let data = Vec::<u8>::try_from(to_u8(images).flatten(0, -1))?;
    let (gw, gh) = (cols * (w + GAP) + GAP, rows * (h + GAP) + GAP);
    let mut img = RgbImage::from_pixel(gw as u32, gh as u32, GAP_COLOR);
    for i in 0..n {
        let (r, col) = (i / cols, i % cols);
        for y in 0..h {
            for x in 0..w {
                let at = |ch: i64| data[(((i * c + ch) * h + y) * w + x) as usize];
                let px = if c == 1 {
                    Rgb([at(0); 3])
                } else {
                    Rgb([at(0), at(1), at(2)])
                };
                img.put_pixel(
                    (GAP + col * (w + GAP) + x) as u32,
                    (GAP + r * (h + GAP) + y) as u32,
                    px,
                );
            }
        }
    }
    save_png(&img, path)
}

/// Writes one `[C, H, W]` image in [-1, 1] (C = 1: grey PNG, C = 3: RGB
/// PNG) at its own size, atomically.
pub fn write_png(image: &Tensor, path: &Path) -> Result<()> {
    let size = shape_of(image, 3, "PNG image", "[C, H, W]")?;
    let (c, h, w) = (size[0], size[1], size[2]);
    if c != 1 && c != 3 {
        return Err(ReportError::invalid(
            "PNG image",
            format!("needs 1 or 3 channels, found {c} (shape {size:?})"),
        ));
    }
    let pixels = to_u8(image).permute([1, 2, 0]).contiguous();
    let data = Vec::<u8>::try_from(pixels.flatten(0, -1))?;
    let wrong_size = || ReportError::invalid("PNG image", format!("buffer does not fit {size:?}"));
    if c == 1 {
        let img = image::GrayImage::from_raw(w as u32, h as u32, data).ok_or_else(wrong_size)?;
        save_png(&img, path)
    } else {
        let img = RgbImage::from_raw(w as u32, h as u32, data).ok_or_else(wrong_size)?;
        save_png(&img, path)
    }
}

/// Writes `[N, C, H, W]` images in [-1, 1] as one PNG each,
/// `dir/{first + i:06}.png` (the numbering of `cm sample`), creating `dir`;
/// returns the paths in order.
pub fn write_pngs(images: &Tensor, dir: &Path, first: usize) -> Result<Vec<PathBuf>> {
    let size = shape_of(images, 4, "PNG images", "[N, C, H, W]")?;
    (0..size[0])
        .map(|i| {
            let path = dir.join(format!("{:06}.png", first + i as usize));
            write_png(&images.get(i), &path)?;
            Ok(path)
        })
        .collect()
}

/// Writes `[N, D]` points (2-D toy samples) as CSV: a header `x0,x1,...`
/// (plus `class` when `classes` is given, `[N]` int64), then one row per
/// point with values as f32 prints them (round-trip exact), atomically.
pub fn write_points_csv(points: &Tensor, classes: Option<&Tensor>, path: &Path) -> Result<()> {
    let size = shape_of(points, 2, "points CSV", "[N, D]")?;
    let (n, d) = (size[0], size[1]);
    let values = Vec::<f32>::try_from(
        points
            .to_device(tch::Device::Cpu)
            .to_kind(Kind::Float)
            .flatten(0, -1),
    )?;
    let labels = match classes {
        Some(c) if c.size() != [n] => {
            return Err(ReportError::invalid(
                "points CSV",
                format!("needs [{n}] class labels, got shape {:?}", c.size()),
            ))
        }
        Some(c) => Some(Vec::<i64>::try_from(
            c.to_device(tch::Device::Cpu).to_kind(Kind::Int64),
        )?),
        None => None,
    };
    let mut text = (0..d)
        .map(|j| format!("x{j}"))
        .collect::<Vec<_>>()
        .join(",");
    if labels.is_some() {
        text.push_str(",class");
    }
    text.push('\n');
    for (i, row) in values.chunks_exact(d.max(1) as usize).enumerate() {
        let row: Vec<String> = row.iter().map(|v| v.to_string()).collect();
        text.push_str(&row.join(","));
        if let Some(l) = &labels {
            text.push_str(&format!(",{}", l[i]));
        }
        text.push('\n');
    }
    write_atomic(path, |tmp| {
        std::fs::write(tmp, text.as_bytes()).map_err(ReportError::io("cannot write", tmp))
    })
}

/// Writes samples as a picture: an image grid for `[N, C, H, W]`, a
/// scatter plot ([`crate::write_scatter`], PNG plus SVG) for `[N, 2]` points.
pub fn write_samples(samples: &Tensor, path: &Path) -> Result<()> {
    if samples.dim() == 4 {
        write_image_grid(samples, path)
    } else {
        crate::plot::write_scatter(samples, path)
    }
}
