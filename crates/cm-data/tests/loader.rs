//! The batch loader: determinism and random access, one visit per epoch,
//! scaling to [-1, 1], padding, flips, points, and invalid options.

use std::sync::Arc;

use cm_data::{BatchLoader, DataError, ImageSplit, LoaderConfig, ToyKind};
use tch::{Kind, Tensor};

fn to_vec(t: &Tensor) -> Vec<f32> {
    Vec::<f32>::try_from(t.to_kind(Kind::Float).flatten(0, -1)).unwrap()
}

/// `n` 1x4x5 images; image `i` has pixel `(y, x)` = `(i + 3y + 11x) % 256`
/// (no image is left-right symmetric), label `i % 3`.
fn images(n: usize) -> Arc<ImageSplit> {
    let mut px = Vec::new();
    for i in 0..n {
        for y in 0..4 {
            for x in 0..5 {
                px.push(((i + 3 * y + 11 * x) % 256) as u8);
            }
        }
    }
    let labels = (0..n as i64).map(|i| i % 3).collect();
    Arc::new(ImageSplit::new(px, Some(labels), [1, 4, 5]).unwrap())
}

#[test]
fn same_seed_and_step_give_identical_batches() {
    let data = images(50);
    let a = BatchLoader::new(data.clone(), LoaderConfig::new(8, 42).with_hflip(true)).unwrap();
    let b = BatchLoader::new(data.clone(), LoaderConfig::new(8, 42).with_hflip(true)).unwrap();
    // Random access in any order, from a fresh loader, gives the same batch.
    for step in [17u64, 0, 5, 17, 1_000_003, 6] {
        let x = a.batch(step).unwrap();
        let y = b.batch(step).unwrap();
        assert_eq!(to_vec(&x.x), to_vec(&y.x), "step {step}");
        assert_eq!(x.indices, y.indices);
        assert_eq!(x.flipped, y.flipped);
        assert_eq!(
            Vec::<i64>::try_from(x.labels.as_ref().unwrap()).unwrap(),
            Vec::<i64>::try_from(y.labels.as_ref().unwrap()).unwrap()
        );
    }
    // A clone (fresh cache) agrees too.
    assert_eq!(a.clone().indices(33), a.indices(33));
    // Different steps and different seeds differ.
    assert_ne!(a.indices(0), a.indices(1));
    assert_ne!(
        to_vec(&a.batch(0).unwrap().x),
        to_vec(&a.batch(1).unwrap().x)
    );
    let c = BatchLoader::new(data, LoaderConfig::new(8, 43)).unwrap();
    assert_ne!(a.indices(0), c.indices(0));
    // Epochs are reshuffled.
    assert_ne!(a.permutation(0), a.permutation(1));
}

#[test]
fn every_example_once_per_epoch_and_partial_batch_dropped() {
    let loader = BatchLoader::new(images(50), LoaderConfig::new(10, 7)).unwrap();
    assert_eq!(loader.batches_per_epoch(), 5);
    for epoch in 0..3u64 {
        let mut seen: Vec<usize> = (0..5).flat_map(|p| loader.indices(epoch * 5 + p)).collect();
        seen.sort_unstable();
        assert_eq!(seen, (0..50).collect::<Vec<_>>(), "epoch {epoch}");
        assert_eq!(loader.epoch_of(epoch * 5 + 4), epoch);
    }
    // 47 examples, batch 10: 4 batches, 40 distinct examples, 7 dropped.
    let loader = BatchLoader::new(images(47), LoaderConfig::new(10, 7)).unwrap();
    assert_eq!(loader.batches_per_epoch(), 4);
    let mut seen: Vec<usize> = (0..4).flat_map(|s| loader.indices(s)).collect();
    seen.sort_unstable();
    seen.dedup();
    assert_eq!(seen.len(), 40);
    assert_eq!(loader.batch(4).unwrap().epoch, 1);
}

#[test]
fn values_are_scaled_and_match_the_source() {
    let data = images(30);
    let loader = BatchLoader::new(data.clone(), LoaderConfig::new(6, 1)).unwrap();
    let batch = loader.batch(3).unwrap();
    assert_eq!(batch.x.size(), vec![6, 1, 4, 5]);
    assert_eq!(batch.x.kind(), Kind::Float);
    let x = to_vec(&batch.x);
    assert!(x.iter().all(|v| (-1.0..=1.0).contains(v)));
    for (b, &i) in batch.indices.iter().enumerate() {
        let img = data.image(i).unwrap();
        for (j, &p) in img.iter().enumerate() {
            assert_eq!(x[b * 20 + j], p as f32 / 127.5 - 1.0);
        }
    }
    let labels = Vec::<i64>::try_from(batch.labels.unwrap()).unwrap();
    assert_eq!(
        labels,
        batch
            .indices
            .iter()
            .map(|&i| (i % 3) as i64)
            .collect::<Vec<_>>()
    );
    // The extremes map to exactly -1 and 1.
    let ends = ImageSplit::new(vec![0, 255], None, [1, 1, 2]).unwrap();
    let b = BatchLoader::new(ends, LoaderConfig::new(1, 0))
        .unwrap()
        .batch(0)
        .unwrap();
    assert_eq!(to_vec(&b.x), vec![-1.0, 1.0]);
    assert!(b.labels.is_none());
}

#[test]
fn padding_gives_minus_one_borders() {
    // 28x28 images of value 255 (1.0 after scaling) padded by 2 to 32x32.
    let data = ImageSplit::new(vec![255; 3 * 784], None, [1, 28, 28]).unwrap();
    let loader = BatchLoader::new(data, LoaderConfig::new(2, 0).with_pad(2)).unwrap();
    assert_eq!(loader.batch_shape(), vec![2, 1, 32, 32]);
    let x = to_vec(&loader.batch(0).unwrap().x);
    assert_eq!(x.len(), 2 * 32 * 32);
    for b in 0..2 {
        for y in 0..32 {
            for xx in 0..32 {
                let v = x[b * 1024 + y * 32 + xx];
                let inside = (2..30).contains(&y) && (2..30).contains(&xx);
                assert_eq!(v, if inside { 1.0 } else { -1.0 }, "({b}, {y}, {xx})");
            }
        }
    }
}

#[test]
fn flips_only_when_enabled() {
    let data = images(40);
    let plain = BatchLoader::new(data.clone(), LoaderConfig::new(20, 9)).unwrap();
    let flip = BatchLoader::new(data.clone(), LoaderConfig::new(20, 9).with_hflip(true)).unwrap();
    let mut flipped = 0;
    let mut kept = 0;
    for step in 0..4 {
        let p = plain.batch(step).unwrap();
        let f = flip.batch(step).unwrap();
        assert!(p.flipped.iter().all(|&x| !x));
        assert_eq!(p.indices, f.indices, "flips do not change the order");
        let (px, fx) = (to_vec(&p.x), to_vec(&f.x));
        for (b, &was) in f.flipped.iter().enumerate() {
            let a = &px[b * 20..(b + 1) * 20];
            let c = &fx[b * 20..(b + 1) * 20];
            if was {
                flipped += 1;
                for y in 0..4 {
                    for x in 0..5 {
                        assert_eq!(c[y * 5 + x], a[y * 5 + 4 - x]);
                    }
                }
            } else {
                kept += 1;
                assert_eq!(a, c);
            }
        }
    }
    assert!(flipped > 15 && kept > 15, "flipped {flipped}, kept {kept}");
}

#[test]
fn toy_points_batches() {
    let pts = Arc::new(ToyKind::TwoMoons.sample(100, 3, 0));
    let loader = BatchLoader::new(pts.clone(), LoaderConfig::new(32, 5)).unwrap();
    let b = loader.batch(2).unwrap();
    assert_eq!(b.x.size(), vec![32, 2]);
    let x = to_vec(&b.x);
    for (k, &i) in b.indices.iter().enumerate() {
        assert_eq!([x[2 * k], x[2 * k + 1]], pts.point(i).unwrap());
    }
    assert_eq!(b.labels.unwrap().size(), vec![32]);
    assert!(matches!(
        BatchLoader::new(pts.clone(), LoaderConfig::new(8, 0).with_hflip(true)),
        Err(DataError::InvalidConfig { .. })
    ));
    assert!(matches!(
        BatchLoader::new(pts, LoaderConfig::new(8, 0).with_pad(2)),
        Err(DataError::InvalidConfig { .. })
    ));
}

#[test]
fn invalid_batch_sizes_are_rejected() {
    let data = images(10);
    for bad in [0, 11] {
        match BatchLoader::new(data.clone(), LoaderConfig::new(bad, 0)) {
            Err(DataError::InvalidConfig {
                field,
                value,
                expected,
            }) => {
                assert_eq!(field, "loader.batch_size");
                assert_eq!(value, bad.to_string());
                assert!(!expected.is_empty());
            }
            other => panic!("expected InvalidConfig, got {other:?}"),
        }
    }
    let full = BatchLoader::new(data, LoaderConfig::new(10, 0)).unwrap();
    assert_eq!(full.batches_per_epoch(), 1);
    let empty = ImageSplit::empty([1, 2, 2], true);
    assert!(BatchLoader::new(empty, LoaderConfig::new(1, 0)).is_err());
}

#[test]
fn float_examples_are_served_as_they_are_with_their_labels() {
    // 30 examples of shape [2, 3, 3] whose values encode (example, element).
    let per = 18;
    let values: Vec<f32> = (0..30 * per).map(|v| v as f32 * 0.5 - 7.0).collect();
    let labels: Vec<i64> = (0..30).map(|i| i % 4).collect();
    let split =
        cm_data::FloatSplit::new(values.clone(), vec![2, 3, 3], Some(labels.clone())).unwrap();
    assert_eq!((split.len(), split.example_len()), (30, per));
    let loader = BatchLoader::new(Arc::new(split), LoaderConfig::new(7, 5)).unwrap();
    for step in [0u64, 3, 4, 9] {
        let batch = loader.batch(step).unwrap();
        assert_eq!(batch.x.size(), [7, 2, 3, 3]);
        let got = Vec::<f32>::try_from(batch.x.flatten(0, -1)).unwrap();
        let got_labels = Vec::<i64>::try_from(batch.labels.unwrap()).unwrap();
        for (k, &i) in batch.indices.iter().enumerate() {
            assert_eq!(got[k * per..(k + 1) * per], values[i * per..(i + 1) * per]);
            assert_eq!(got_labels[k], labels[i]);
        }
    }
    // Flips and padding are for images.
    let split = cm_data::FloatSplit::new(vec![0.0; 4 * 8], vec![4, 2], None).unwrap();
    let err = BatchLoader::new(
        Arc::new(split.clone()),
        LoaderConfig::new(2, 0).with_hflip(true),
    )
    .unwrap_err()
    .to_string();
    assert!(
        err.contains("loader.hflip") && err.contains("latents"),
        "{err}"
    );
    let err = BatchLoader::new(Arc::new(split), LoaderConfig::new(2, 0).with_pad(1))
        .unwrap_err()
        .to_string();
    assert!(err.contains("loader.pad"), "{err}");
    // Bad parts are refused by name.
    let err = cm_data::FloatSplit::new(vec![0.0; 5], vec![2], None).unwrap_err();
    assert!(err.to_string().contains("values.len()"), "{err}");
    let err = cm_data::FloatSplit::new(vec![0.0; 4], vec![2], Some(vec![0])).unwrap_err();
    assert!(err.to_string().contains("labels.len()"), "{err}");
    let err = cm_data::FloatSplit::new(vec![f32::NAN, 0.0], vec![2], None).unwrap_err();
    assert!(err.to_string().contains("finite"), "{err}");
    // A tensor round trip.
    let t = Tensor::randn([3, 4, 2], (Kind::Float, tch::Device::Cpu));
    let s = cm_data::FloatSplit::from_tensor(&t, None).unwrap();
    assert_eq!(s.shape(), [4, 2]);
    assert_eq!(f64::try_from((s.to_tensor() - t).abs().max()).unwrap(), 0.0);
}
