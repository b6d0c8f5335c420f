//! Styled variants of an image data set: the same images, labels and
//! splits, redrawn in a visually distinct style. LCM-LoRA's universal
//! acceleration check fine-tunes a model on a style (a style LoRA) and
//! measures how far samples are in that style; each style here is a pure,
//! exactly invertible pixel map, so a style is a property of the data alone.

use serde::{Deserialize, Serialize};

use crate::dataset::{ImageDataset, ImageSplit};
use crate::error::Result;

/// A style of a grey or colour image data set.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Style {
    /// The photographic negative: `255 - p` per pixel (dark garments on a
    /// white ground).
    Invert,
    /// Upside down: rows in reverse order.
    FlipVertical,
}

impl Style {
    /// The name configs use (`invert`, `flip-vertical`).
    pub fn name(self) -> &'static str {
        match self {
            Style::Invert => "invert",
            Style::FlipVertical => "flip-vertical",
        }
    }

    /// One image `[C, H, W]` (row-major u8) in the style.
    pub fn apply_image(self, image: &[u8], shape: [usize; 3], out: &mut Vec<u8>) {
        let [c, h, w] = shape;
        match self {
            Style::Invert => out.extend(image.iter().map(|&p| 255 - p)),
            Style::FlipVertical => {
                for ch in 0..c {
                    let plane = &image[ch * h * w..(ch + 1) * h * w];
                    for row in (0..h).rev() {
                        out.extend_from_slice(&plane[row * w..(row + 1) * w]);
                    }
                }
            }
        }
    }

    /// A split in the style (labels kept).
    pub fn apply_split(self, split: &ImageSplit) -> Result<ImageSplit> {
        let shape = split.shape();
        let mut pixels = Vec::with_capacity(split.pixels().len());
        for i in 0..split.len() {
            self.apply_image(
                split.image(i).expect("index within the split"),
                shape,
                &mut pixels,
            );
        }
        ImageSplit::new(pixels, split.labels().map(<[i64]>::to_vec), shape)
    }

    /// The data set in the style (named `NAME-STYLE`).
    pub fn apply(self, data: &ImageDataset) -> Result<ImageDataset> {
        Ok(ImageDataset {
            name: format!("{}-{}", data.name, self.name()),
            train: self.apply_split(&data.train)?.into(),
            test: self.apply_split(&data.test)?.into(),
            num_classes: data.num_classes,
            class_names: data.class_names.clone(),
            skipped_rows: data.skipped_rows,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn split() -> ImageSplit {
        // Two 1x3x2 images: rows (0, 10), (20, 30), (40, 255) and 7s.
        let pixels = vec![0, 10, 20, 30, 40, 255, 7, 7, 7, 7, 7, 7];
        ImageSplit::new(pixels, Some(vec![3, 1]), [1, 3, 2]).unwrap()
    }

    #[test]
    fn invert_is_the_negative_and_its_own_inverse() {
        let s = Style::Invert.apply_split(&split()).unwrap();
        assert_eq!(s.image(0).unwrap(), &[255, 245, 235, 225, 215, 0]);
        assert_eq!(s.labels().unwrap(), &[3, 1]);
        let back = Style::Invert.apply_split(&s).unwrap();
        assert_eq!(back.pixels(), split().pixels());
    }

    #[test]
    fn flip_reverses_rows_per_channel_and_is_its_own_inverse() {
        let s = Style::FlipVertical.apply_split(&split()).unwrap();
        assert_eq!(s.image(0).unwrap(), &[40, 255, 20, 30, 0, 10]);
        let rgb = ImageSplit::new((0..12).collect(), None, [2, 3, 2]).unwrap();
        let f = Style::FlipVertical.apply_split(&rgb).unwrap();
        assert_eq!(f.image(0).unwrap(), &[4, 5, 2, 3, 0, 1, 10, 11, 8, 9, 6, 7]);
        let back = Style::FlipVertical.apply_split(&s).unwrap();
        assert_eq!(back.pixels(), split().pixels());
    }

    #[test]
    fn names_round_trip_through_serde() {
        for style in [Style::Invert, Style::FlipVertical] {
            let text = serde_json::to_string(&style).unwrap();
            assert_eq!(text, format!("\"{}\"", style.name()));
        }
    }
}
