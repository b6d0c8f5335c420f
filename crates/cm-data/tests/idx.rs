//! IDX files: raw and gzipped round trips, wrong magic numbers, truncated
//! files and image/label count mismatches.

use std::io::Write;
use std::path::Path;

use cm_data::{load_idx_dir, read_idx_images, read_idx_labels, read_idx_pair, DataError};

fn images_bytes(magic: u32, n: u32, rows: u32, cols: u32, pixels: &[u8]) -> Vec<u8> {
    let mut b = Vec::new();
    for v in [magic, n, rows, cols] {
        b.extend_from_slice(&v.to_be_bytes());
    }
    b.extend_from_slice(pixels);
    b
}

fn labels_bytes(magic: u32, labels: &[u8]) -> Vec<u8> {
    let mut b = Vec::new();
    b.extend_from_slice(&magic.to_be_bytes());
    b.extend_from_slice(&(labels.len() as u32).to_be_bytes());
    b.extend_from_slice(labels);
    b
}

fn write(path: &Path, bytes: &[u8], gz: bool) {
    if gz {
        let f = std::fs::File::create(path).unwrap();
        let mut enc = flate2::write::GzEncoder::new(f, flate2::Compression::default());
        enc.write_all(bytes).unwrap();
        enc.finish().unwrap();
    } else {
        std::fs::write(path, bytes).unwrap();
    }
}

fn pixels(n: usize, rows: usize, cols: usize) -> Vec<u8> {
    (0..n * rows * cols).map(|i| (i * 7 % 256) as u8).collect()
}

#[test]
fn raw_and_gzipped_round_trip() {
    let dir = tempfile::tempdir().unwrap();
    let px = pixels(5, 4, 3);
    for gz in [false, true] {
        let suffix = if gz { ".gz" } else { "" };
        let ip = dir.path().join(format!("imgs{suffix}"));
        let lp = dir.path().join(format!("lbls{suffix}"));
        write(&ip, &images_bytes(0x803, 5, 4, 3, &px), gz);
        write(&lp, &labels_bytes(0x801, &[3, 1, 4, 1, 5]), gz);
        let (read, shape) = read_idx_images(&ip).unwrap();
        assert_eq!(shape, [1, 4, 3]);
        assert_eq!(read, px);
        assert_eq!(read_idx_labels(&lp).unwrap(), vec![3, 1, 4, 1, 5]);
        let split = read_idx_pair(&ip, &lp).unwrap();
        assert_eq!(split.len(), 5);
        assert_eq!(split.labels().unwrap(), &[3, 1, 4, 1, 5]);
        assert_eq!(split.image(1).unwrap(), &px[12..24]);
    }
}

#[test]
fn folder_of_idx_files() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    // Train gzipped, test raw, test with the dotted spelling.
    write(
        &d.join("train-images-idx3-ubyte.gz"),
        &images_bytes(0x803, 6, 28, 28, &pixels(6, 28, 28)),
        true,
    );
    write(
        &d.join("train-labels-idx1-ubyte.gz"),
        &labels_bytes(0x801, &[0, 1, 2, 9, 4, 5]),
        true,
    );
    write(
        &d.join("t10k-images.idx3-ubyte"),
        &images_bytes(0x803, 2, 28, 28, &pixels(2, 28, 28)),
        false,
    );
    write(
        &d.join("t10k-labels-idx1-ubyte"),
        &labels_bytes(0x801, &[7, 3]),
        false,
    );
    let ds = load_idx_dir(d).unwrap();
    assert_eq!(ds.train.len(), 6);
    assert_eq!(ds.test.len(), 2);
    assert_eq!(ds.num_classes, 10);
    assert_eq!(ds.shape(), [1, 28, 28]);
    assert_eq!(ds.test.labels().unwrap(), &[7, 3]);

    std::fs::remove_file(d.join("t10k-labels-idx1-ubyte")).unwrap();
    match load_idx_dir(d) {
        Err(DataError::MissingFile { path, .. }) => {
            assert!(path.ends_with("t10k-labels-idx1-ubyte"), "{path:?}")
        }
        other => panic!("expected MissingFile, got {other:?}"),
    }
}

#[test]
fn wrong_magic_is_reported() {
    let dir = tempfile::tempdir().unwrap();
    let ip = dir.path().join("imgs");
    let lp = dir.path().join("lbls");
    // Swapped: a label file read as images and vice versa.
    write(&ip, &labels_bytes(0x801, &[1, 2]), false);
    write(&lp, &images_bytes(0x803, 1, 2, 2, &[0; 4]), true);
    match read_idx_images(&ip) {
        Err(DataError::BadMagic {
            found,
            expected,
            path,
            ..
        }) => {
            assert_eq!((found, expected), (0x801, 0x803));
            assert_eq!(path, ip);
        }
        other => panic!("expected BadMagic, got {other:?}"),
    }
    let err = read_idx_labels(&lp).unwrap_err();
    assert!(
        matches!(
            err,
            DataError::BadMagic {
                found: 0x803,
                expected: 0x801,
                ..
            }
        ),
        "{err}"
    );
    let msg = err.to_string();
    assert!(
        msg.contains("0x00000803") && msg.contains("0x00000801"),
        "{msg}"
    );
}

#[test]
fn count_mismatch_is_reported() {
    let dir = tempfile::tempdir().unwrap();
    let ip = dir.path().join("imgs");
    let lp = dir.path().join("lbls");
    write(&ip, &images_bytes(0x803, 3, 2, 2, &[0; 12]), false);
    write(&lp, &labels_bytes(0x801, &[1, 2]), false);
    match read_idx_pair(&ip, &lp) {
        Err(DataError::CountMismatch { images, labels, .. }) => {
            assert_eq!((images, labels), (3, 2))
        }
        other => panic!("expected CountMismatch, got {other:?}"),
    }
}

#[test]
fn truncated_and_trailing_bytes_are_corrupt() {
    let dir = tempfile::tempdir().unwrap();
    let ip = dir.path().join("imgs.gz");
    // Header promises 4 images of 2x2 = 16 bytes, only 10 present.
    write(&ip, &images_bytes(0x803, 4, 2, 2, &[0; 10]), true);
    let err = read_idx_images(&ip).unwrap_err();
    assert!(matches!(err, DataError::Corrupt { .. }), "{err}");
    assert!(err.to_string().contains("truncated"), "{err}");

    write(&ip, &images_bytes(0x803, 1, 2, 2, &[0; 5]), true);
    assert!(read_idx_images(&ip)
        .unwrap_err()
        .to_string()
        .contains("trailing"));

    let short = dir.path().join("short");
    write(&short, &[0, 0, 8], false);
    assert!(matches!(
        read_idx_images(&short),
        Err(DataError::Corrupt { .. })
    ));

    // A huge count in the header with no data must not allocate or panic.
    write(&ip, &images_bytes(0x803, u32::MAX, 1000, 1000, &[]), false);
    assert!(matches!(
        read_idx_images(&ip),
        Err(DataError::Corrupt { .. })
    ));
}

/// A 16-byte header naming 2^22 images of 2^21 x 2^21 (a product that
/// overflows u64) is refused, not read as 0 images or a panic; so is a
/// header whose size exceeds the limit without overflowing.
#[test]
fn header_sizes_are_checked_arithmetic() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("huge-idx3-ubyte");
    write(
        &path,
        &images_bytes(0x0803, 1 << 22, 1 << 21, 1 << 21, &[]),
        false,
    );
    let err = read_idx_images(&path).unwrap_err().to_string();
    assert!(err.contains("at most 16384"), "{err}");
    write(
        &path,
        &images_bytes(0x0803, u32::MAX, 16_384, 16_384, &[]),
        false,
    );
    let err = read_idx_images(&path).unwrap_err().to_string();
    assert!(err.contains("limit"), "{err}");
}
