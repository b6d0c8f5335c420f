//! The masks `Omega` of zero-shot inpainting (Song et al. 2023, "Consistency
//! Models", Algorithm 4 with `A = I`): box, half, random-stroke and
//! PNG/value masks (1 = to generate, 0 = known), and the check that a mask
//! fits the transform's output.

use cm_core::CoreError;
use tch::{Device, Kind, Tensor};

use crate::noise::sample_seed;

/// Which half of the image [`half_mask`] generates.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Side {
    /// The left `W / 2` columns (rounded down).
    Left,
    /// The right `W / 2` columns (rounded down).
    Right,
    /// The top `H / 2` rows (rounded down).
    Top,
    /// The bottom `H / 2` rows (rounded down).
    Bottom,
}

/// Checks that `mask` is 4-D, broadcastable to `target` (each size 1 or
/// equal) and holds only 0 and 1.
pub(crate) fn check_mask(field: &str, mask: &Tensor, target: &[i64]) -> cm_core::Result<()> {
    let shape = mask.size();
    let fits =
        shape.len() == target.len() && shape.iter().zip(target).all(|(&m, &t)| m == t || m == 1);
    if !fits {
        return Err(CoreError::invalid(
            field,
            format!("shape {shape:?}"),
            format!("a mask broadcastable to {target:?} (each size 1 or equal)"),
        ));
    }
    let binary = mask.eq(0.0).logical_or(&mask.eq(1.0)).all();
    if !bool::try_from(&binary).unwrap_or(false) {
        return Err(CoreError::invalid(
            field,
            "non-binary values",
            "a mask of 0 (known) and 1 (to generate) only",
        ));
    }
    Ok(())
}

/// Checks a mask size.
fn check_size(h: i64, w: i64) -> cm_core::Result<()> {
    if h <= 0 || w <= 0 {
        return Err(CoreError::invalid(
            "mask.size",
            format!("{h}x{w}"),
            "a positive height and width",
        ));
    }
    Ok(())
}

/// A `[1, 1, H, W]` f32 mask from row-major 0/1 values.
fn mask_tensor(values: &[f32], h: i64, w: i64) -> Tensor {
    Tensor::from_slice(values).reshape([1, 1, h, w])
}

/// An inpainting mask (`[1, 1, h, w]`, f32, 1 = to generate) that generates
/// the box of `height x width` pixels whose top-left corner is `(top,
/// left)`; the box must lie inside the image and be non-empty.
pub fn box_mask(
    h: i64,
    w: i64,
    top: i64,
    left: i64,
    height: i64,
    width: i64,
) -> cm_core::Result<Tensor> {
    check_size(h, w)?;
    let inside = top >= 0
        && left >= 0
        && height > 0
        && width > 0
        && top.checked_add(height).is_some_and(|b| b <= h)
        && left.checked_add(width).is_some_and(|r| r <= w);
    if !inside {
        return Err(CoreError::invalid(
            "box",
            format!("top {top}, left {left}, {height}x{width}"),
            format!("a non-empty box inside the {h}x{w} image"),
        ));
    }
    let values: Vec<f32> = (0..h)
        .flat_map(|r| {
            (0..w).map(move |c| {
                let hit = (top..top + height).contains(&r) && (left..left + width).contains(&c);
                f32::from(u8::from(hit))
            })
        })
        .collect();
    Ok(mask_tensor(&values, h, w))
}

/// An inpainting mask (`[1, 1, h, w]`, f32) that generates one half of the
/// image, `side` (half the rows or columns, rounded down), and keeps the
/// other.
pub fn half_mask(h: i64, w: i64, side: Side) -> cm_core::Result<Tensor> {
    check_size(h, w)?;
    let values: Vec<f32> = (0..h)
        .flat_map(|r| {
            (0..w).map(move |c| {
                let hit = match side {
                    Side::Left => c < w / 2,
                    Side::Right => c >= w - w / 2,
                    Side::Top => r < h / 2,
                    Side::Bottom => r >= h - h / 2,
                };
                f32::from(u8::from(hit))
            })
        })
        .collect();
    Ok(mask_tensor(&values, h, w))
}

/// An inpainting mask (`[1, 1, h, w]`, f32) of `strokes` random brush
/// strokes of `width` pixels, like the free-form masks of inpainting
/// benchmarks. Each stroke is a polyline of 4 segments starting at a
/// uniform point and turning at random, each segment 10–35 % of the longer
/// image side, clamped to the image; a pixel is generated when its centre is
/// within `width / 2` of a segment. Fully determined by `seed` (stroke `s`
/// draws from `sample_seed(seed, s)`), so masks are reproducible.
pub fn stroke_mask(
    h: i64,
    w: i64,
    strokes: usize,
    width: f64,
    seed: u64,
) -> cm_core::Result<Tensor> {
    check_size(h, w)?;
    if !(width > 0.0 && width.is_finite()) {
        return Err(CoreError::invalid(
            "width",
            width,
            "a finite stroke width > 0",
        ));
    }
    let (hf, wf) = (h as f64, w as f64);
    let side = hf.max(wf);
    let mut segments: Vec<[f64; 4]> = Vec::new();
    for s in 0..strokes {
        let key = sample_seed(seed, s as u64);
        let mut draw = 0u64;
        // Uniform in [0, 1) from the stroke's key and a counter.
        let mut uniform = || {
            draw += 1;
            (sample_seed(key, draw) >> 11) as f64 / (1u64 << 53) as f64
        };
        let (mut y, mut x) = (uniform() * hf, uniform() * wf);
        let mut angle = uniform() * std::f64::consts::TAU;
        for _ in 0..4 {
            let len = (0.10 + 0.25 * uniform()) * side;
            // Turn by up to ±90 degrees so strokes wander but stay strokes.
            angle += (uniform() - 0.5) * std::f64::consts::PI;
            let ny = (y + len * angle.sin()).clamp(0.0, hf);
            let nx = (x + len * angle.cos()).clamp(0.0, wf);
            segments.push([y, x, ny, nx]);
            (y, x) = (ny, nx);
        }
    }
    let radius2 = (width / 2.0).powi(2);
    let near = |py: f64, px: f64| {
        segments.iter().any(|&[y0, x0, y1, x1]| {
            let (dy, dx) = (y1 - y0, x1 - x0);
            let len2 = dy * dy + dx * dx;
            let t = if len2 > 0.0 {
                (((py - y0) * dy + (px - x0) * dx) / len2).clamp(0.0, 1.0)
            } else {
                0.0
            };
            let (ey, ex) = (py - (y0 + t * dy), px - (x0 + t * dx));
            ey * ey + ex * ex <= radius2
        })
    };
    let values: Vec<f32> = (0..h)
        .flat_map(|r| (0..w).map(move |c| (r, c)))
        .map(|(r, c)| f32::from(u8::from(near(r as f64 + 0.5, c as f64 + 0.5))))
        .collect();
    Ok(mask_tensor(&values, h, w))
}

/// An inpainting mask (`[1, 1, h, w]`, f32) from row-major 8-bit gray
/// values, e.g. a PNG mask: white (>= 128, above half of 255) = to generate,
/// black = known.
pub fn mask_from_values(values: &[u8], h: i64, w: i64) -> cm_core::Result<Tensor> {
    check_size(h, w)?;
    if values.len() as u64 != (h as u64) * (w as u64) {
        return Err(CoreError::invalid(
            "mask.values",
            format!("{} values", values.len()),
            format!("h * w = {} values ({h}x{w}, row-major)", h * w),
        ));
    }
    let values: Vec<f32> = values
        .iter()
        .map(|&v| f32::from(u8::from(v >= 128)))
        .collect();
    Ok(mask_tensor(&values, h, w))
}

/// An inpainting mask (`[1, 1, H, W]`, f32) from a mask image in the crate's
/// `[-1, 1]` convention (`[H, W]`, `[C, H, W]` or `[1, C, H, W]`): a pixel is
/// generated where the mean over channels is above 0 (white), known where it
/// is at most 0 (black).
pub fn mask_from_image(image: &Tensor) -> cm_core::Result<Tensor> {
    let shape = image.size();
    let chw = match shape.len() {
        2 => image.unsqueeze(0),
        3 => image.shallow_clone(),
        4 if shape[0] == 1 => image.squeeze_dim(0),
        _ => {
            return Err(CoreError::invalid(
                "mask.shape",
                format!("{shape:?}"),
                "one mask image, [H, W], [C, H, W] or [1, C, H, W]",
            ))
        }
    };
    if !image.is_floating_point() || chw.size().iter().any(|&s| s <= 0) {
        return Err(CoreError::invalid(
            "mask",
            format!("{:?} {shape:?}", image.kind()),
            "a non-empty floating-point image in [-1, 1]",
        ));
    }
    let mean = chw.to_kind(Kind::Double).mean_dim(0, true, Kind::Double);
    Ok(mean
        .gt(0.0)
        .to_kind(Kind::Float)
        .unsqueeze(0)
        .to_device(Device::Cpu))
}
