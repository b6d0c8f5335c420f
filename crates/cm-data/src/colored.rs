//! Coloured Fashion-MNIST: an RGB variant of a grey data set, for showing
//! zero-shot colorization (CM Algorithm 4) on a model small enough to train
//! on a CPU.
//!
//! Each image is tinted with its own colour: `rgb = grey * colour`, so the
//! black background stays black and the garment's shading is kept. The hue
//! is set by the class (`class * 360 / num_classes` degrees, so that trousers
//! and bags get different colours and a model has something to learn from
//! shape) plus a per-image jitter of up to ±`hue_jitter` degrees; saturation
//! is drawn in `[0.6, 1]` and value is 1. The draws come from a ChaCha stream
//! keyed by the seed and the image index, so the variant is a pure function
//! of the grey data set.

use crate::dataset::{ImageDataset, ImageSplit};
use crate::error::{DataError, Result};
use crate::rng::{chacha, unit_f64, Tag};

/// Default per-image hue jitter, degrees either way.
pub const DEFAULT_HUE_JITTER: f64 = 20.0;

/// HSV (hue in degrees, saturation and value in [0, 1]) to RGB in [0, 1].
pub fn hsv_to_rgb(hue: f64, saturation: f64, value: f64) -> [f64; 3] {
    let h = hue.rem_euclid(360.0) / 60.0;
    let c = value * saturation;
    let x = c * (1.0 - (h % 2.0 - 1.0).abs());
    let (r, g, b) = match h as u32 {
        0 => (c, x, 0.0),
        1 => (x, c, 0.0),
        2 => (0.0, c, x),
        3 => (0.0, x, c),
        4 => (x, 0.0, c),
        _ => (c, 0.0, x),
    };
    let m = value - c;
    [r + m, g + m, b + m]
}

/// The tint of image `index` of class `class` (see the module docs).
pub fn tint(seed: u64, index: u64, class: i64, num_classes: usize, hue_jitter: f64) -> [f64; 3] {
    let mut rng = chacha(seed, Tag::Colour, index);
    let base = if num_classes > 0 {
        class as f64 * 360.0 / num_classes as f64
    } else {
        0.0
    };
    let hue = base + (2.0 * unit_f64(&mut rng) - 1.0) * hue_jitter;
    let saturation = 0.6 + 0.4 * unit_f64(&mut rng);
    hsv_to_rgb(hue, saturation, 1.0)
}

/// The coloured variant of a one-channel split; `offset` keeps the test
/// split's draws apart from the train split's.
pub fn colorize_split(
    split: &ImageSplit,
    num_classes: usize,
    seed: u64,
    offset: u64,
    hue_jitter: f64,
) -> Result<ImageSplit> {
    let [c, h, w] = split.shape();
    if c != 1 {
        return Err(DataError::invalid(
            "channels",
            c,
            "a one-channel (grey) data set to colour",
        ));
    }
    let per = h * w;
    let mut pixels = Vec::with_capacity(split.len() * 3 * per);
    for i in 0..split.len() {
        let class = split.labels().map_or(0, |l| l[i]);
        let colour = tint(seed, offset + i as u64, class, num_classes, hue_jitter);
        let grey = split.image(i).expect("index within the split");
        for channel in colour {
            pixels.extend(grey.iter().map(|&p| (p as f64 * channel).round() as u8));
        }
    }
    ImageSplit::new(pixels, split.labels().map(<[i64]>::to_vec), [3, h, w])
}

/// The coloured variant of a one-channel data set (named `colored-NAME`).
pub fn colorize_dataset(data: &ImageDataset, seed: u64, hue_jitter: f64) -> Result<ImageDataset> {
    let train = colorize_split(&data.train, data.num_classes, seed, 0, hue_jitter)?;
    let test = colorize_split(
        &data.test,
        data.num_classes,
        seed,
        data.train.len() as u64,
        hue_jitter,
    )?;
    Ok(ImageDataset {
        name: format!("colored-{}", data.name),
        train: train.into(),
        test: test.into(),
        num_classes: data.num_classes,
        class_names: data.class_names.clone(),
        skipped_rows: data.skipped_rows,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hsv_primaries_and_greys() {
        let close = |a: [f64; 3], b: [f64; 3]| a.iter().zip(b).all(|(x, y)| (x - y).abs() < 1e-12);
        assert!(close(hsv_to_rgb(0.0, 1.0, 1.0), [1.0, 0.0, 0.0]));
        assert!(close(hsv_to_rgb(120.0, 1.0, 1.0), [0.0, 1.0, 0.0]));
        assert!(close(hsv_to_rgb(240.0, 1.0, 1.0), [0.0, 0.0, 1.0]));
        assert!(close(hsv_to_rgb(60.0, 1.0, 1.0), [1.0, 1.0, 0.0]));
        assert!(close(hsv_to_rgb(300.0, 0.5, 1.0), [1.0, 0.5, 1.0]));
        assert!(close(hsv_to_rgb(-60.0, 1.0, 1.0), [1.0, 0.0, 1.0]));
        assert!(close(hsv_to_rgb(77.0, 0.0, 0.4), [0.4, 0.4, 0.4]));
    }

    #[test]
    fn tinting_keeps_shading_and_background() {
        let grey = ImageSplit::new(
            vec![0, 255, 128, 64, 0, 10, 200, 255],
            Some(vec![1, 3]),
            [1, 2, 2],
        )
        .unwrap();
        let col = colorize_split(&grey, 10, 5, 0, 20.0).unwrap();
        assert_eq!(col.shape(), [3, 2, 2]);
        assert_eq!(col.labels(), Some(&[1i64, 3][..]));
        for i in 0..2 {
            let t = tint(5, i as u64, [1, 3][i], 10, 20.0);
            let (g, c) = (grey.image(i).unwrap(), col.image(i).unwrap());
            for ch in 0..3 {
                for p in 0..4 {
                    assert_eq!(c[ch * 4 + p], (g[p] as f64 * t[ch]).round() as u8);
                }
            }
            // Background (0) stays black; value 1 keeps the brightest channel.
            // Pixel 0 is black (0) in both grey images.
            assert_eq!([c[0], c[4], c[8]], [0, 0, 0]);
            assert!(t.iter().cloned().fold(0.0, f64::max) > 0.999);
        }
        // Deterministic, and different images get different tints.
        assert_eq!(colorize_split(&grey, 10, 5, 0, 20.0).unwrap(), col);
        assert_ne!(tint(5, 0, 1, 10, 20.0), tint(5, 1, 1, 10, 20.0));
        // Colour needs one channel.
        assert!(colorize_split(&col, 10, 5, 0, 20.0).is_err());
    }
}
