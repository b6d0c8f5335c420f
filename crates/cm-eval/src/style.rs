//! The style score of LCM-LoRA's universal-acceleration check: how many of
//! a row's samples a small classifier assigns to a style (a data set in a
//! visually distinct style, [`cm_data::Style`]) rather than to the base data.
//!
//! The classifier is the project's feature CNN ([`crate::FeatureNet`], the
//! same architecture and training as the FID feature network) trained on a
//! two-class data set built here: the style's images labelled 1, the base's
//! labelled 0, both training splits; its accuracy is measured on both test
//! splits (equal sizes: a balanced accuracy). It is cached like the feature
//! network. A row's style score is the share of its samples the classifier
//! calls the style.

use cm_data::{ImageDataset, ImageSplit};

use crate::error::{EvalError, Result};

/// The two-class data set of `style` (label 1) and `base` (label 0): each
/// split the base's images then the style's, named
/// `style-STYLE-vs-BASE`.
pub fn style_dataset(style: &ImageDataset, base: &ImageDataset) -> Result<ImageDataset> {
    if style.shape() != base.shape() {
        return Err(EvalError::InvalidInput(format!(
            "style_base: its images are {:?}, {}'s are {:?}",
            base.shape(),
            style.name,
            style.shape()
        )));
    }
    let join = |b: &ImageSplit, s: &ImageSplit| -> Result<ImageSplit> {
        let mut pixels = Vec::with_capacity(b.pixels().len() + s.pixels().len());
        pixels.extend_from_slice(b.pixels());
        pixels.extend_from_slice(s.pixels());
        let labels: Vec<i64> = std::iter::repeat_n(0, b.len())
            .chain(std::iter::repeat_n(1, s.len()))
            .collect();
        Ok(ImageSplit::new(pixels, Some(labels), b.shape())?)
    };
    Ok(ImageDataset {
        name: format!("style-{}-vs-{}", style.name, base.name),
        train: join(&base.train, &style.train)?.into(),
        test: join(&base.test, &style.test)?.into(),
        num_classes: 2,
        class_names: vec![base.name.clone(), style.name.clone()],
        skipped_rows: 0,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn data(name: &str, value: u8, train: usize, test: usize) -> ImageDataset {
        let split =
            |n: usize| ImageSplit::new(vec![value; n * 4], Some(vec![3; n]), [1, 2, 2]).unwrap();
        ImageDataset {
            name: name.into(),
            train: split(train).into(),
            test: split(test).into(),
            num_classes: 10,
            class_names: Vec::new(),
            skipped_rows: 0,
        }
    }

    #[test]
    fn the_two_class_set_labels_style_one_and_base_zero() {
        let d = style_dataset(&data("s", 200, 3, 2), &data("b", 10, 2, 1)).unwrap();
        assert_eq!(d.name, "style-s-vs-b");
        assert_eq!((d.train.len(), d.test.len(), d.num_classes), (5, 3, 2));
        assert_eq!(d.train.labels().unwrap(), &[0, 0, 1, 1, 1]);
        assert_eq!(d.train.image(0).unwrap(), &[10; 4]);
        assert_eq!(d.train.image(4).unwrap(), &[200; 4]);
        assert_eq!(d.test.labels().unwrap(), &[0, 1, 1]);
        let other = ImageDataset {
            train: ImageSplit::new(vec![0; 9], Some(vec![0]), [1, 3, 3])
                .unwrap()
                .into(),
            ..data("x", 0, 1, 1)
        };
        let err = style_dataset(&other, &data("b", 10, 2, 1))
            .unwrap_err()
            .to_string();
        assert!(err.contains("style_base"), "{err}");
    }
}
