//! Image folders: PNGs of different sizes in class sub-folders, resized and
//! centre-cropped, labelled by sorted folder name; unlabelled folders; empty
//! and mixed folders.

use std::path::Path;

use cm_data::{load_image, load_image_folder, ColorMode, DataError, ImageFolderConfig, SplitRule};
use image::{Rgb, RgbImage};

/// A `w x h` PNG whose left half is red and right half blue.
fn save_png(path: &Path, w: u32, h: u32) {
    let img = RgbImage::from_fn(w, h, |x, _| {
        if x < w / 2 {
            Rgb([255, 0, 0])
        } else {
            Rgb([0, 0, 255])
        }
    });
    img.save(path).unwrap();
}

fn config(resolution: u32, color: ColorMode) -> ImageFolderConfig {
    ImageFolderConfig {
        resolution,
        color,
        split: SplitRule::NoTest,
    }
}

#[test]
fn class_folders_resize_crop_and_labels() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    for (class, sizes) in [
        ("zebra", vec![(40, 20)]),
        ("apple", vec![(16, 16), (20, 50)]),
        ("mango", vec![(8, 12)]),
    ] {
        std::fs::create_dir(d.join(class)).unwrap();
        for (i, (w, h)) in sizes.into_iter().enumerate() {
            save_png(&d.join(class).join(format!("{i}.png")), w, h);
        }
    }
    std::fs::write(d.join("apple").join("notes.txt"), "not an image").unwrap();
    std::fs::create_dir(d.join("empty-class")).unwrap();

    let ds = load_image_folder(d, &config(16, ColorMode::Rgb)).unwrap();
    assert_eq!(ds.class_names, vec!["apple", "mango", "zebra"]);
    assert_eq!(ds.num_classes, 3);
    assert_eq!(ds.shape(), [3, 16, 16]);
    assert_eq!(ds.train.len(), 4);
    assert!(ds.test.is_empty());
    assert_eq!(ds.train.class_counts(3), vec![2, 1, 1]);

    // The zebra image (40x20) becomes 32x16, cropped to its centre 16x16:
    // columns 8..24 of the resized image, left half red, right half blue.
    let zebra = (0..4).find(|&i| ds.train.label(i) == Some(2)).unwrap();
    let img = ds.train.image(zebra).unwrap();
    let (r, b) = (&img[0..256], &img[512..768]);
    assert_eq!(r[0], 255, "top-left is red");
    assert_eq!(b[0], 0);
    assert_eq!(r[15], 0, "top-right is blue");
    assert_eq!(b[15], 255);

    let grey = load_image_folder(d, &config(8, ColorMode::Grey)).unwrap();
    assert_eq!(grey.shape(), [1, 8, 8]);
    assert_eq!(grey.train.pixels().len(), 4 * 64);
}

#[test]
fn single_image_shapes() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("tall.png");
    save_png(&p, 10, 30);
    let rgb = load_image(&p, 7, ColorMode::Rgb).unwrap();
    assert_eq!(rgb.len(), 3 * 7 * 7);
    let grey = load_image(&p, 12, ColorMode::Grey).unwrap();
    assert_eq!(grey.len(), 144);

    let bad = dir.path().join("bad.png");
    std::fs::write(&bad, b"not a png at all").unwrap();
    match load_image(&bad, 8, ColorMode::Rgb) {
        Err(DataError::Corrupt { path, .. }) => assert_eq!(path, bad),
        other => panic!("expected Corrupt, got {other:?}"),
    }
}

#[test]
fn loose_images_are_unlabelled_and_split() {
    let dir = tempfile::tempdir().unwrap();
    for i in 0..7 {
        save_png(&dir.path().join(format!("{i}.PNG")), 10 + i, 9);
    }
    let cfg = ImageFolderConfig {
        resolution: 9,
        color: ColorMode::Grey,
        split: SplitRule::TestOneInEvery(3),
    };
    let ds = load_image_folder(dir.path(), &cfg).unwrap();
    assert_eq!(ds.num_classes, 0);
    assert!(!ds.is_labelled());
    assert_eq!((ds.train.len(), ds.test.len()), (5, 2));
    assert!(ds.train.labels().is_none());
}

#[test]
fn empty_and_mixed_folders_error() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir(dir.path().join("class-a")).unwrap();
    std::fs::write(dir.path().join("readme.txt"), "hi").unwrap();
    match load_image_folder(dir.path(), &ImageFolderConfig::default()) {
        Err(DataError::EmptyFolder { path, reason }) => {
            assert_eq!(path, dir.path());
            assert!(reason.contains("no PNG or JPEG"), "{reason}");
        }
        other => panic!("expected EmptyFolder, got {other:?}"),
    }
    save_png(&dir.path().join("class-a").join("x.png"), 4, 4);
    save_png(&dir.path().join("loose.png"), 4, 4);
    assert!(matches!(
        load_image_folder(dir.path(), &ImageFolderConfig::default()),
        Err(DataError::EmptyFolder { .. })
    ));
    assert!(matches!(
        load_image_folder(&dir.path().join("nope"), &ImageFolderConfig::default()),
        Err(DataError::MissingFile { .. })
    ));
    assert!(matches!(
        load_image_folder(dir.path(), &config(0, ColorMode::Rgb)),
        Err(DataError::InvalidConfig { .. })
    ));
}

/// Hostile folders: a `loop -> ..` link is not followed (it would read the
/// tree again and label one class's images as another's), a FIFO named like
/// an image is skipped instead of blocking the read, both counted; a strip
/// image is cropped before resizing (no huge intermediate) and one beyond
/// the decoder's side limit is refused with the file named.
#[test]
fn links_pipes_and_strips_are_handled() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    for class in ["a", "b"] {
        std::fs::create_dir(d.join(class)).unwrap();
        for i in 0..3 {
            save_png(&d.join(class).join(format!("{i}.png")), 10, 10);
        }
    }
    std::os::unix::fs::symlink("..", d.join("a").join("loop")).unwrap();
    let fifo = d.join("b").join("pipe.png");
    let made = std::process::Command::new("mkfifo")
        .arg(&fifo)
        .status()
        .unwrap();
    assert!(made.success());
    let ds = load_image_folder(d, &config(8, ColorMode::Rgb)).unwrap();
    assert_eq!(ds.train.len(), 6);
    assert_eq!(ds.train.class_counts(2), vec![3, 3]);
    assert_eq!(ds.skipped_rows, 2);

    // A 1 x 16,000 strip: cropped to 1 x 1 first, then resized.
    let strip = d.join("strip.png");
    image::GrayImage::from_pixel(1, 16_000, image::Luma([200]))
        .save(&strip)
        .unwrap();
    let px = load_image(&strip, 64, ColorMode::Rgb).unwrap();
    assert_eq!(px.len(), 3 * 64 * 64);
    assert!(px.iter().all(|&v| v == 200));
    // Beyond the side limit: refused by the decoder, naming the file.
    let long = d.join("long.png");
    image::GrayImage::from_pixel(1, 1_000_000, image::Luma([7]))
        .save(&long)
        .unwrap();
    let err = load_image(&long, 64, ColorMode::Rgb)
        .unwrap_err()
        .to_string();
    assert!(err.contains("long.png") && err.contains("16384"), "{err}");
    // The FIFO itself, named directly, is refused without blocking.
    let err = load_image(&fifo, 8, ColorMode::Grey)
        .unwrap_err()
        .to_string();
    assert!(err.contains("not a regular file"), "{err}");
}
