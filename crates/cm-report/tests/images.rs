//! Image grids and single PNGs from known tensors: sizes, the gap colour and
//! exact pixel values (`round(clamp((x + 1) * 127.5, 0, 255))`), and shape
//! errors that name what is wrong.

use cm_report::{write_image_grid, write_image_grid_with_columns, write_png, ReportError};
use tch::Tensor;

fn rgb(path: &std::path::Path) -> image::RgbImage {
    image::open(path).expect("a PNG").to_rgb8()
}

#[test]
fn grey_grid_has_exact_sizes_gaps_and_pixels() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("grid.png");
    // 3 images of 2x2: square-ish grid of 2 columns, 2 rows.
    let values = [
        -1.0f32, 1.0, 0.0, 0.5, // image 0
        -0.2, 2.0, -3.0, 0.999, // image 1 (clamped values)
        0.25, -0.25, 0.75, -0.75, // image 2
    ];
    let images = Tensor::from_slice(&values).reshape([3, 1, 2, 2]);
    write_image_grid(&images, &path).unwrap();
    let img = rgb(&path);
    // 2 columns x (2 + 2) + 2 = 10 wide, 2 rows x (2 + 2) + 2 = 10 high.
    assert_eq!(img.dimensions(), (10, 10));
    let expect = |x: f32| ((x + 1.0) * 127.5).clamp(0.0, 255.0).round_ties_even() as u8;
    assert_eq!(expect(0.0), 128);
    let cell = |i: u32, y: u32, x: u32| {
        let (r, c) = (i / 2, i % 2);
        img.get_pixel(2 + c * 4 + x, 2 + r * 4 + y).0
    };
    for i in 0..3u32 {
        for y in 0..2u32 {
            for x in 0..2u32 {
                let v = expect(values[(i * 4 + y * 2 + x) as usize]);
                assert_eq!(cell(i, y, x), [v; 3], "image {i} pixel ({y}, {x})");
            }
        }
    }
    assert_eq!(cell(0, 0, 0), [0; 3]);
    assert_eq!(cell(0, 0, 1), [255; 3]);
    assert_eq!(cell(0, 1, 1), [191; 3]);
    assert_eq!(cell(1, 0, 0), [102; 3]);
    // Gaps and the empty fourth cell are dark grey.
    for (x, y) in [(0, 0), (1, 5), (4, 2), (9, 9), (6, 6), (7, 7)] {
        assert_eq!(img.get_pixel(x, y).0, [40, 40, 40], "gap at ({x}, {y})");
    }
}

#[test]
fn rgb_grid_with_columns_keeps_channels() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("rgb.png");
    // 2 images of 1x1, one row of 3 columns.
    let images = Tensor::from_slice(&[1.0f32, -1.0, 0.0, -1.0, 0.5, 1.0]).reshape([2, 3, 1, 1]);
    write_image_grid_with_columns(&images, 3, &path).unwrap();
    let img = rgb(&path);
    assert_eq!(img.dimensions(), (3 * 3 + 2, 3 + 2));
    assert_eq!(img.get_pixel(2, 2).0, [255, 0, 128]);
    assert_eq!(img.get_pixel(5, 2).0, [0, 191, 255]);
    assert_eq!(img.get_pixel(8, 2).0, [40, 40, 40]);
}

#[test]
fn png_is_grey_or_rgb_at_its_own_size() {
    let dir = tempfile::tempdir().unwrap();
    let grey = dir.path().join("sub/grey.png");
    let image = Tensor::from_slice(&[-1.0f32, 0.0, 1.0, 0.5, -0.5, 0.2]).reshape([1, 2, 3]);
    write_png(&image, &grey).unwrap();
    let g = image::open(&grey).unwrap();
    assert_eq!(g.color(), image::ColorType::L8);
    assert_eq!(g.to_luma8().into_raw(), vec![0, 128, 255, 191, 64, 153]);
    let color = dir.path().join("rgb.png");
    write_png(&Tensor::zeros([3, 4, 5], tch::kind::FLOAT_CPU), &color).unwrap();
    let c = image::open(&color).unwrap();
    assert_eq!(c.color(), image::ColorType::Rgb8);
    assert_eq!((c.width(), c.height()), (5, 4));
}

/// The message of an InvalidInput error, failing on any other result.
fn invalid<T: std::fmt::Debug>(r: cm_report::Result<T>) -> String {
    match r {
        Err(e @ ReportError::InvalidInput { .. }) => e.to_string(),
        other => panic!("expected InvalidInput, got {other:?}"),
    }
}

#[test]
fn wrong_shapes_are_errors_naming_the_shape() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("x.png");
    let three = Tensor::zeros([3, 8, 8], tch::kind::FLOAT_CPU);
    let msg = invalid(write_image_grid(&three, &path));
    assert!(
        msg.contains("[N, C, H, W]") && msg.contains("[3, 8, 8]"),
        "{msg}"
    );
    let two_channels = Tensor::zeros([4, 2, 8, 8], tch::kind::FLOAT_CPU);
    let msg = invalid(write_image_grid(&two_channels, &path));
    assert!(msg.contains("channels") && msg.contains('2'), "{msg}");
    let ok = Tensor::zeros([4, 1, 8, 8], tch::kind::FLOAT_CPU);
    let msg = invalid(write_image_grid_with_columns(&ok, 0, &path));
    assert!(msg.contains("column"), "{msg}");
    let msg = invalid(write_png(&ok, &path));
    assert!(
        msg.contains("[C, H, W]") && msg.contains("[4, 1, 8, 8]"),
        "{msg}"
    );
    let msg = invalid(write_png(
        &Tensor::zeros([4, 8, 8], tch::kind::FLOAT_CPU),
        &path,
    ));
    assert!(msg.contains("channels") && msg.contains('4'), "{msg}");
    assert!(!path.exists(), "no file after an error");
}
