//! The feature classifier trains whatever the caller's grad mode: the
//! feature space is trained on first use, which can be inside a caller's
//! `no_grad` evaluation (the autoencoder's reconstruction FID did this, and
//! its backward pass failed on a machine without the cached classifier).

use std::sync::Arc;

use cm_data::{ImageDataset, ImageSplit};
use cm_eval::classifier::train_classifier;
use cm_eval::{ClassifierConfig, Silent};
use tch::Device;

fn split(n: usize) -> ImageSplit {
    // Two classes: bright left half or bright right half.
    let mut pixels = Vec::with_capacity(n * 28 * 28);
    let mut labels = Vec::with_capacity(n);
    for i in 0..n {
        let class = (i % 2) as i64;
        for _y in 0..28 {
            for x in 0..28 {
                let bright = (x < 14) == (class == 0);
                pixels.push(if bright {
                    200 + (i % 50) as u8
                } else {
                    (i % 30) as u8
                });
            }
        }
        labels.push(class);
    }
    ImageSplit::new(pixels, Some(labels), [1, 28, 28]).unwrap()
}

#[test]
fn trains_inside_no_grad() {
    let _rng = cm_runtime::lock_global_rng();
    let data = ImageDataset {
        name: "halves".into(),
        train: Arc::new(split(64)),
        test: Arc::new(split(16)),
        num_classes: 2,
        class_names: vec!["left".into(), "right".into()],
        skipped_rows: 0,
    };
    let config = ClassifierConfig {
        steps: 3,
        batch_size: 16,
        ..ClassifierConfig::default()
    };
    let trained = tch::no_grad(|| train_classifier(&config, &data, Device::Cpu, &mut Silent));
    let (_net, card) = trained.expect("training under the caller's no_grad");
    assert_eq!(card.num_classes, 2);
}
