//! Training the feature classifier (see [`super`]): seeded random affine
//! augmentation and the Adam loop with a cosine learning-rate decay
//! (Loshchilov & Hutter 2017) and cross-entropy.

use std::time::Instant;

use tch::{nn, nn::OptimizerConfig, Device, Tensor};

use cm_data::{BatchLoader, ImageDataset, LoaderConfig};

use super::{ClassifierCard, ClassifierConfig, FeatureNet};
use crate::error::{EvalError, Result};
use crate::progress::Progress;

/// Random affine augmentation of a training batch: each image gets its own
/// translation `(dy, dx)` in `[-max_shift, max_shift]` whole pixels (in
/// input coordinates, so rotated and zoomed with the image), rotation
/// in `[-max_rotate, max_rotate]` degrees and zoom in `[1 - max_scale,
/// 1 + max_scale]`, resampled bilinearly about the centre and filled with -1
/// (background). With rotation and zoom off, bilinear resampling at integer
/// offsets is an exact shift, and the random stream is the one shift-only
/// configs always drew (rotation and zoom draw after the shift, and only
/// when enabled).
fn augment_batch(
    x: &Tensor,
    rng: &mut crate::kid::SplitMix64,
    config: &ClassifierConfig,
) -> Tensor {
    let (b, h, w) = (x.size()[0], x.size()[2], x.size()[3]);
    let span = 2 * config.max_shift as u64 + 1;
    let mut theta = Vec::with_capacity(6 * b as usize);
    for _ in 0..b {
        let dy = (rng.next_u64() % span) as i64 - config.max_shift;
        let dx = (rng.next_u64() % span) as i64 - config.max_shift;
        let angle = if config.max_rotate > 0.0 {
            (2.0 * rng.unit_f64() - 1.0) * config.max_rotate.to_radians()
        } else {
            0.0
        };
        let zoom = if config.max_scale > 0.0 {
            1.0 + (2.0 * rng.unit_f64() - 1.0) * config.max_scale
        } else {
            1.0
        };
        // theta maps output coordinates to input coordinates (normalised,
        // align_corners = false: 1 pixel = 2 / size), so zooming in by
        // `zoom` samples the input at `1 / zoom` times the distance.
        let (sin, cos) = angle.sin_cos();
        let inv = 1.0 / zoom;
        theta.extend_from_slice(&[
            (inv * cos) as f32,
            (-inv * sin) as f32,
            -2.0 * dx as f32 / w as f32,
            (inv * sin) as f32,
            (inv * cos) as f32,
            -2.0 * dy as f32 / h as f32,
        ]);
    }
    let theta = Tensor::from_slice(&theta)
        .reshape([b, 2, 3])
        .to_device(x.device());
    let grid = Tensor::affine_grid_generator(&theta, x.size(), false);
    // Zero padding of `x + 1` is -1 padding of `x`.
    Tensor::grid_sampler(&(x + 1.0), &grid, 0, 0, false) - 1.0
}

/// Trains a classifier on `data`'s train split and measures its test
/// accuracy. Seeds libtorch's global generator with `config.seed`. Records
/// gradients whatever the caller's grad mode (the feature space is trained
/// on first use, which may be inside a caller's `no_grad` evaluation).
pub fn train_classifier(
    config: &ClassifierConfig,
    data: &ImageDataset,
    device: Device,
    progress: &mut dyn Progress,
) -> Result<(FeatureNet, ClassifierCard)> {
    tch::with_grad(|| train_classifier_with_grad(config, data, device, progress))
}

fn train_classifier_with_grad(
    config: &ClassifierConfig,
    data: &ImageDataset,
    device: Device,
    progress: &mut dyn Progress,
) -> Result<(FeatureNet, ClassifierCard)> {
    config.validate_at("classifier.")?;
    if !data.is_labelled() || data.num_classes < 2 {
        return Err(EvalError::InvalidInput(format!(
            "the feature classifier needs a labelled data set with >= 2 classes; `{}` has {}",
            data.name, data.num_classes
        )));
    }
    let shape = data.shape().map(|s| s as i64);
    tch::manual_seed(config.seed as i64);
    let net = FeatureNet::new(config, shape, data.num_classes as i64, device)?;
    let loader = BatchLoader::new(
        data.train.clone(),
        LoaderConfig::new(config.batch_size, config.seed),
    )?;
    let mut opt = nn::Adam::default().build(net.var_store(), config.lr)?;
    let mut shifts = crate::kid::SplitMix64(config.seed ^ 0x7368_6966_7473);
    let started = Instant::now();
    progress.start("classifier", config.steps);
    for step in 0..config.steps {
        // Cosine decay (Loshchilov & Hutter 2017) from lr to 0.
        let lr = config.lr
            * 0.5
            * (1.0 + (std::f64::consts::PI * step as f64 / config.steps as f64).cos());
        opt.set_lr(lr);
        let batch = loader.batch(step)?;
        let labels = batch
            .labels
            .ok_or_else(|| EvalError::InvalidInput("training batch without labels".into()))?
            .to_device(device);
        let mut x = batch.x.to_device(device);
        if config.max_shift > 0 || config.max_rotate > 0.0 || config.max_scale > 0.0 {
            x = augment_batch(&x, &mut shifts, config);
        }
        let (_, logits) = net.forward_t(&x, true);
        let loss = logits.cross_entropy_for_logits(&labels);
        opt.backward_step(&loss);
        progress.advance(1);
        if (step + 1) % 250 == 0 {
            progress.message(&format!(
                "classifier step {}/{}: loss {:.4}, {:.0} s",
                step + 1,
                config.steps,
                loss.double_value(&[]),
                started.elapsed().as_secs_f64()
            ));
        }
    }
    progress.finish();
    let train_seconds = started.elapsed().as_secs_f64();
    let test_accuracy = net.accuracy(&data.test)?;
    let card = ClassifierCard {
        dataset: data.name.clone(),
        shape,
        num_classes: data.num_classes as i64,
        config: config.clone(),
        test_accuracy,
        train_seconds,
        train_images: data.train.len(),
        test_images: data.test.len(),
    };
    Ok((net, card))
}
