//! Pictures of a run, as PNG: sample grids (images in [-1, 1]), scatter
//! plots of 2-D samples, and the loss curve (log scale, raw and smoothed,
//! with numbered axes drawn by a tiny built-in digit font so no system font
//! is needed). All files are written atomically.

use std::path::Path;

use image::{Rgb, RgbImage};
use tch::{Kind, Tensor};

use crate::error::{Result, TrainError};

/// Writes an 8-bit grey or RGB image as PNG, atomically.
fn save<P>(img: &image::ImageBuffer<P, Vec<u8>>, path: &Path) -> Result<()>
where
    P: image::PixelWithColorType<Subpixel = u8>,
{
    cm_nets::write_atomic(path, |tmp| {
        img.save_with_format(tmp, image::ImageFormat::Png)
            .map_err(|e| cm_nets::NetError::Io {
                action: "cannot write PNG",
                path: tmp.to_path_buf(),
                source: std::io::Error::other(e),
            })
    })
    .map_err(TrainError::from)
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
    let (n, c, h, w) = images.size4().map_err(TrainError::from)?;
    if c != 1 && c != 3 {
        return Err(TrainError::Batch(format!(
            "image grid needs 1 or 3 channels, found {c}"
        )));
    }
    if columns < 1 {
        return Err(TrainError::Batch(format!(
            "image grid needs at least 1 column, got {columns}"
        )));
    }
    let cols = columns;
    let rows = (n + cols - 1) / cols;
    let gap = 2;
    let pixels = ((images.to_device(tch::Device::Cpu).to_kind(Kind::Float) + 1.0) * 127.5)
        .clamp(0.0, 255.0)
        .round()
        .to_kind(Kind::Uint8);
    let data = Vec::<u8>::try_from(pixels.flatten(0, -1)).map_err(TrainError::from)?;
    let (gw, gh) = (cols * (w + gap) + gap, rows * (h + gap) + gap);
    let mut img = RgbImage::from_pixel(gw as u32, gh as u32, Rgb([40, 40, 40]));
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
                    (gap + col * (w + gap) + x) as u32,
                    (gap + r * (h + gap) + y) as u32,
                    px,
                );
            }
        }
    }
    save(&img, path)
}

/// Writes one `[C, H, W]` image in [-1, 1] (C = 1: grey PNG, C = 3: RGB
/// PNG) at its own size, atomically.
pub fn write_png(image: &Tensor, path: &Path) -> Result<()> {
    let (c, h, w) = image.size3().map_err(TrainError::from)?;
    let pixels = ((image.to_device(tch::Device::Cpu).to_kind(Kind::Float) + 1.0) * 127.5)
        .clamp(0.0, 255.0)
        .round()
        .to_kind(Kind::Uint8)
        .permute([1, 2, 0])
        .contiguous();
    let data = Vec::<u8>::try_from(pixels.flatten(0, -1)).map_err(TrainError::from)?;
    match c {
        1 => {
            let img = image::GrayImage::from_raw(w as u32, h as u32, data)
                .ok_or_else(|| TrainError::Batch("image buffer size".into()))?;
            save(&img, path)
        }
        3 => {
            let img = RgbImage::from_raw(w as u32, h as u32, data)
                .ok_or_else(|| TrainError::Batch("image buffer size".into()))?;
            save(&img, path)
        }
        _ => Err(TrainError::Batch(format!(
            "a PNG needs 1 or 3 channels, found {c}"
        ))),
    }
}

/// Writes samples as a picture: an image grid for `[N, C, H, W]`, a
/// scatter plot for `[N, 2]` points.
pub fn write_samples(samples: &Tensor, path: &Path) -> Result<()> {
    if samples.dim() == 4 {
        write_image_grid(samples, path)
    } else {
        write_scatter(samples, path)
    }
}

/// 3x5 glyphs for the characters axis labels need.
fn glyph(ch: char) -> [u8; 5] {
    match ch {
        '0' => [7, 5, 5, 5, 7],
        '1' => [2, 6, 2, 2, 7],
        '2' => [7, 1, 7, 4, 7],
        '3' => [7, 1, 7, 1, 7],
        '4' => [5, 5, 7, 1, 1],
        '5' => [7, 4, 7, 1, 7],
        '6' => [7, 4, 7, 5, 7],
        '7' => [7, 1, 1, 1, 1],
        '8' => [7, 5, 7, 5, 7],
        '9' => [7, 5, 7, 1, 7],
        '.' => [0, 0, 0, 0, 2],
        '-' => [0, 0, 7, 0, 0],
        'e' => [0, 7, 7, 4, 7],
        'k' => [4, 5, 6, 5, 5],
        _ => [0; 5],
    }
}

/// Draws `text` with its top-left corner at `(x, y)`, each font pixel `scale` wide.
fn draw_text(img: &mut RgbImage, text: &str, x: i64, y: i64, scale: i64, color: Rgb<u8>) {
    for (i, ch) in text.chars().enumerate() {
        let rows = glyph(ch);
        for (ry, bits) in rows.iter().enumerate() {
            for rx in 0..3 {
                if bits & (4 >> rx) != 0 {
                    for dy in 0..scale {
                        for dx in 0..scale {
                            let px = x + (i as i64 * 4 + rx) * scale + dx;
                            let py = y + ry as i64 * scale + dy;
                            if px >= 0
                                && py >= 0
                                && (px as u32) < img.width()
                                && (py as u32) < img.height()
                            {
                                img.put_pixel(px as u32, py as u32, color);
                            }
                        }
                    }
                }
            }
        }
    }
}

fn draw_line(img: &mut RgbImage, (x0, y0): (f64, f64), (x1, y1): (f64, f64), color: Rgb<u8>) {
    let steps = ((x1 - x0).abs().max((y1 - y0).abs()).ceil() as usize).max(1);
    for i in 0..=steps {
        let t = i as f64 / steps as f64;
        let (x, y) = (x0 + t * (x1 - x0), y0 + t * (y1 - y0));
        if x >= 0.0 && y >= 0.0 && (x as u32) < img.width() && (y as u32) < img.height() {
            img.put_pixel(x as u32, y as u32, color);
        }
    }
}

fn short_number(v: f64) -> String {
    if v >= 10_000.0 {
        format!("{}k", (v / 1000.0).round())
    } else if v >= 1.0 || v == 0.0 {
        format!("{}", (v * 100.0).round() / 100.0)
    } else {
        format!("{v:.0e}")
    }
}

/// Writes the loss curve: raw losses in grey, an exponential moving average
/// (span ~ 2% of the run) in blue, log-scale y, steps on x.
pub fn write_loss_plot(points: &[(u64, f64)], path: &Path) -> Result<()> {
    let (w, h, left, bottom, top, right) = (720i64, 420i64, 70i64, 40i64, 20i64, 20i64);
    let mut img = RgbImage::from_pixel(w as u32, h as u32, Rgb([255, 255, 255]));
    let pts: Vec<(f64, f64)> = points
        .iter()
        .filter(|(_, l)| l.is_finite() && *l > 0.0)
        .map(|&(s, l)| (s as f64, l.log10()))
        .collect();
    let axis = Rgb([0, 0, 0]);
    draw_line(
        &mut img,
        (left as f64, top as f64),
        (left as f64, (h - bottom) as f64),
        axis,
    );
    draw_line(
        &mut img,
        (left as f64, (h - bottom) as f64),
        ((w - right) as f64, (h - bottom) as f64),
        axis,
    );
    if pts.len() >= 2 {
        let (xmin, xmax) = (pts[0].0, pts[pts.len() - 1].0.max(pts[0].0 + 1.0));
        let (ymin, ymax) = pts
            .iter()
            .fold((f64::MAX, f64::MIN), |(a, b), p| (a.min(p.1), b.max(p.1)));
        let (ylo, yhi) = (ymin.floor().min(ymin - 0.05), ymax.ceil().max(ymax + 0.05));
        let px = |x: f64| left as f64 + (x - xmin) / (xmax - xmin) * (w - left - right) as f64;
        let py = |y: f64| top as f64 + (yhi - y) / (yhi - ylo) * (h - top - bottom) as f64;
        // Decade grid lines and labels.
        let mut d = ylo.ceil();
        while d <= yhi {
            let y = py(d);
            draw_line(
                &mut img,
                (left as f64, y),
                ((w - right) as f64, y),
                Rgb([225, 225, 225]),
            );
            draw_text(
                &mut img,
                &short_number(10f64.powf(d)),
                4,
                y as i64 - 5,
                2,
                axis,
            );
            d += 1.0;
        }
        for i in 0..=4 {
            let xv = xmin + (xmax - xmin) * i as f64 / 4.0;
            let x = px(xv);
            draw_line(
                &mut img,
                (x, (h - bottom) as f64),
                (x, (h - bottom + 5) as f64),
                axis,
            );
            draw_text(
                &mut img,
                &short_number(xv.round()),
                x as i64 - 10,
                h - bottom + 10,
                2,
                axis,
            );
        }
        for pair in pts.windows(2) {
            draw_line(
                &mut img,
                (px(pair[0].0), py(pair[0].1)),
                (px(pair[1].0), py(pair[1].1)),
                Rgb([190, 190, 190]),
            );
        }
        let alpha = 1.0 / (pts.len() as f64 / 50.0).max(1.0);
        let mut smooth = pts[0].1;
        let mut prev = (px(pts[0].0), py(smooth));
        for p in &pts[1..] {
            smooth = (1.0 - alpha) * smooth + alpha * p.1;
            let cur = (px(p.0), py(smooth));
            draw_line(&mut img, prev, cur, Rgb([20, 80, 200]));
            draw_line(
                &mut img,
                (prev.0, prev.1 + 1.0),
                (cur.0, cur.1 + 1.0),
                Rgb([20, 80, 200]),
            );
            prev = cur;
        }
    }
    save(&img, path)
}

/// Writes a scatter plot of `[N, 2]` points (2-D toy samples), axes fixed
/// to [-4, 4] so plots of a run are comparable.
pub fn write_scatter(points: &Tensor, path: &Path) -> Result<()> {
    let size = 480i64;
    let mut img = RgbImage::from_pixel(size as u32, size as u32, Rgb([255, 255, 255]));
    let pts = Vec::<f64>::try_from(
        points
            .to_device(tch::Device::Cpu)
            .to_kind(Kind::Double)
            .flatten(0, -1),
    )
    .map_err(TrainError::from)?;
    let to_px = |v: f64| ((v + 4.0) / 8.0 * (size - 1) as f64).round() as i64;
    draw_line(
        &mut img,
        (0.0, (size / 2) as f64),
        (size as f64, (size / 2) as f64),
        Rgb([220, 220, 220]),
    );
    draw_line(
        &mut img,
        ((size / 2) as f64, 0.0),
        ((size / 2) as f64, size as f64),
        Rgb([220, 220, 220]),
    );
    for xy in pts.chunks(2) {
        if xy.len() == 2 {
            let (x, y) = (to_px(xy[0]), size - 1 - to_px(xy[1]));
            for (dx, dy) in [(0, 0), (1, 0), (0, 1), (1, 1)] {
                let (a, b) = (x + dx, y + dy);
                if a >= 0 && b >= 0 && a < size && b < size {
                    img.put_pixel(a as u32, b as u32, Rgb([20, 80, 200]));
                }
            }
        }
    }
    save(&img, path)
}

/// One curve of [`write_line_plot`]: points `(x, y)` joined in order, in
/// one colour, each point marked with a small square.
#[derive(Clone, Debug)]
pub struct LineSeries {
    /// The points.
    pub points: Vec<(f64, f64)>,
    /// RGB colour.
    pub color: [u8; 3],
}

/// Colours for successive series: blue, orange, green, red, purple, brown.
pub const SERIES_COLORS: [[u8; 3]; 6] = [
    [31, 119, 180],
    [255, 127, 14],
    [44, 160, 44],
    [214, 39, 40],
    [148, 103, 189],
    [140, 86, 75],
];

/// Writes a line plot of several series (e.g. FID against NFE): x on a log2
/// scale when `log_x` (all x > 0), y linear from 0 (or the smallest y when
/// negative); numbered ticks at the distinct x values and at 5 y levels.
/// No legend is drawn (the built-in font has digits only): name the colours
/// where the plot is shown.
pub fn write_line_plot(series: &[LineSeries], log_x: bool, path: &Path) -> Result<()> {
    let (w, h, left, bottom, top, right) = (720i64, 420i64, 70i64, 40i64, 20i64, 30i64);
    let mut img = RgbImage::from_pixel(w as u32, h as u32, Rgb([255, 255, 255]));
    let axis = Rgb([0, 0, 0]);
    let tx = |x: f64| if log_x { x.log2() } else { x };
    let pts: Vec<(f64, f64)> = series
        .iter()
        .flat_map(|s| s.points.iter().copied())
        .filter(|(x, y)| x.is_finite() && y.is_finite() && (!log_x || *x > 0.0))
        .collect();
    draw_line(
        &mut img,
        (left as f64, top as f64),
        (left as f64, (h - bottom) as f64),
        axis,
    );
    draw_line(
        &mut img,
        (left as f64, (h - bottom) as f64),
        ((w - right) as f64, (h - bottom) as f64),
        axis,
    );
    if !pts.is_empty() {
        let (xmin, xmax) = pts.iter().fold((f64::MAX, f64::MIN), |(a, b), p| {
            (a.min(tx(p.0)), b.max(tx(p.0)))
        });
        let (xmin, xmax) = if xmax > xmin {
            (xmin, xmax)
        } else {
            (xmin - 1.0, xmax + 1.0)
        };
        let ymax = pts.iter().fold(f64::MIN, |a, p| a.max(p.1));
        let ylo = pts.iter().fold(0.0f64, |a, p| a.min(p.1));
        let yhi = if ymax > ylo { ymax * 1.08 } else { ylo + 1.0 };
        let pad = 0.04 * (xmax - xmin);
        let px = |x: f64| {
            left as f64
                + (tx(x) - xmin + pad) / (xmax - xmin + 2.0 * pad) * (w - left - right) as f64
        };
        let py = |y: f64| top as f64 + (yhi - y) / (yhi - ylo) * (h - top - bottom) as f64;
        for i in 0..=4 {
            let yv = ylo + (yhi - ylo) * i as f64 / 4.0;
            let y = py(yv);
            draw_line(
                &mut img,
                (left as f64, y),
                ((w - right) as f64, y),
                Rgb([225, 225, 225]),
            );
            draw_text(&mut img, &short_number(yv), 4, y as i64 - 5, 2, axis);
        }
        let mut xs: Vec<f64> = pts.iter().map(|p| p.0).collect();
        xs.sort_by(|a, b| a.total_cmp(b));
        xs.dedup();
        for xv in xs {
            let x = px(xv);
            draw_line(
                &mut img,
                (x, (h - bottom) as f64),
                (x, (h - bottom + 5) as f64),
                axis,
            );
            draw_text(
                &mut img,
                &short_number(xv),
                x as i64 - 4,
                h - bottom + 10,
                2,
                axis,
            );
        }
        for s in series {
            let color = Rgb(s.color);
            let ok: Vec<(f64, f64)> = s
                .points
                .iter()
                .copied()
                .filter(|(x, y)| x.is_finite() && y.is_finite() && (!log_x || *x > 0.0))
                .map(|(x, y)| (px(x), py(y)))
                .collect();
            for pair in ok.windows(2) {
                for d in [0.0, 1.0] {
                    draw_line(
                        &mut img,
                        (pair[0].0, pair[0].1 + d),
                        (pair[1].0, pair[1].1 + d),
                        color,
                    );
                }
            }
            for (x, y) in ok {
                for dy in -3..=3 {
                    draw_line(
                        &mut img,
                        (x - 3.0, y + dy as f64),
                        (x + 3.0, y + dy as f64),
                        color,
                    );
                }
            }
        }
    }
    save(&img, path)
}
