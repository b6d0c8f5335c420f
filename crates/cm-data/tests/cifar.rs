//! CIFAR-10 binary batches: a fake batch file round trip, a full fake
//! distribution folder, and truncated files.

use std::path::Path;

use cm_data::{load_cifar10_dir, read_cifar10_batch, DataError};

/// `n` records; record `i` has label `i % 10` and pixel bytes `(i + j) % 256`.
fn batch(n: usize, offset: usize) -> Vec<u8> {
    let mut b = Vec::new();
    for i in 0..n {
        b.push(((i + offset) % 10) as u8);
        b.extend((0..3072).map(|j| ((i + offset + j) % 256) as u8));
    }
    b
}

#[test]
fn batch_file_round_trip() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("data_batch_1.bin");
    std::fs::write(&p, batch(3, 0)).unwrap();
    let (pixels, labels) = read_cifar10_batch(&p).unwrap();
    assert_eq!(labels, vec![0, 1, 2]);
    assert_eq!(pixels.len(), 3 * 3072);
    // Image 1, channel 1 (G), row 0, col 0 = record byte 1 + 1024.
    assert_eq!(pixels[3072 + 1024], ((1 + 1024) % 256) as u8);
}

fn write_dist(d: &Path) {
    for i in 1..=5 {
        std::fs::write(d.join(format!("data_batch_{i}.bin")), batch(4, i)).unwrap();
    }
    std::fs::write(d.join("test_batch.bin"), batch(2, 0)).unwrap();
}

#[test]
fn distribution_folder() {
    let dir = tempfile::tempdir().unwrap();
    let nested = dir.path().join("cifar-10-batches-bin");
    std::fs::create_dir(&nested).unwrap();
    write_dist(&nested);
    // The parent folder works too.
    let ds = load_cifar10_dir(dir.path()).unwrap();
    assert_eq!(ds.train.len(), 20);
    assert_eq!(ds.test.len(), 2);
    assert_eq!(ds.shape(), [3, 32, 32]);
    assert_eq!(ds.num_classes, 10);
    assert_eq!(ds.class_names[0], "airplane");
    assert_eq!(ds.train.label(0), Some(1));

    std::fs::remove_file(nested.join("data_batch_3.bin")).unwrap();
    match load_cifar10_dir(&nested) {
        Err(DataError::MissingFile { path, .. }) => assert!(path.ends_with("data_batch_3.bin")),
        other => panic!("expected MissingFile, got {other:?}"),
    }
}

#[test]
fn truncated_batch_is_corrupt() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("test_batch.bin");
    let mut b = batch(2, 0);
    b.truncate(3073 + 100);
    std::fs::write(&p, &b).unwrap();
    let err = read_cifar10_batch(&p).unwrap_err();
    assert!(matches!(err, DataError::Corrupt { .. }), "{err}");
    let msg = err.to_string();
    assert!(msg.contains("3173") && msg.contains("3073"), "{msg}");

    std::fs::write(&p, []).unwrap();
    assert!(matches!(
        read_cifar10_batch(&p),
        Err(DataError::Corrupt { .. })
    ));

    let mut b = batch(1, 0);
    b[0] = 10;
    std::fs::write(&p, &b).unwrap();
    assert!(read_cifar10_batch(&p)
        .unwrap_err()
        .to_string()
        .contains("label 10"));
}

/// Only regular files are read: a pipe named like a batch file is refused
/// at once, and one named `batches.meta.txt` (which would hang a plain read)
/// falls back to the standard class names.
#[test]
fn pipes_are_not_read() {
    let dir = tempfile::tempdir().unwrap();
    write_dist(dir.path());
    let mkfifo = |p: &Path| {
        let made = std::process::Command::new("mkfifo")
            .arg(p)
            .status()
            .unwrap();
        assert!(made.success());
    };
    mkfifo(&dir.path().join("batches.meta.txt"));
    let ds = load_cifar10_dir(dir.path()).unwrap();
    assert_eq!(ds.class_names[0], "airplane");
    let pipe = dir.path().join("pipe.bin");
    mkfifo(&pipe);
    let err = read_cifar10_batch(&pipe).unwrap_err().to_string();
    assert!(err.contains("not a regular file"), "{err}");
}
