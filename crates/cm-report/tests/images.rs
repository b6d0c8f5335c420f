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

#[test]
fn pngs_are_numbered_from_first() {
    let dir = tempfile::tempdir().unwrap();
    // Image i is filled with a distinct grey level, so the files can be told apart.
    let levels = Tensor::from_slice(&[-1.0f32, 0.0, 1.0]).view([3, 1, 1, 1]);
    let images = levels.expand([3, 1, 4, 6], true).contiguous();
    let paths = cm_report::write_pngs(&images, dir.path(), 7).unwrap();
    let names: Vec<String> = paths
        .iter()
        .map(|p| p.file_name().unwrap().to_string_lossy().into_owned())
        .collect();
    assert_eq!(names, ["000007.png", "000008.png", "000009.png"]);
    for (path, want) in paths.iter().zip([0u8, 128, 255]) {
        let img = image::open(path).unwrap().to_luma8();
        assert_eq!(img.dimensions(), (6, 4));
        assert!(img.pixels().all(|p| p.0[0] == want), "{}", path.display());
    }
    assert!(cm_report::write_pngs(
        &Tensor::zeros([3, 4, 4], tch::kind::FLOAT_CPU),
        dir.path(),
        0
    )
    .is_err());
}

#[test]
fn points_csv_round_trips_values_and_classes() {
    let dir = tempfile::tempdir().unwrap();
    let values = [0.1f32, -2.5, 1e-7, 3.25, -0.0, 7.0];
    let points = Tensor::from_slice(&values).view([3, 2]);
    let classes = Tensor::from_slice(&[2i64, 0, 1]);
    let path = dir.path().join("samples.csv");
    cm_report::write_points_csv(&points, Some(&classes), &path).unwrap();
    let text = std::fs::read_to_string(&path).unwrap();
    let mut lines = text.lines();
    assert_eq!(lines.next(), Some("x0,x1,class"));
    let mut read = Vec::new();
    let mut labels = Vec::new();
    for line in lines {
        let cells: Vec<&str> = line.split(',').collect();
        assert_eq!(cells.len(), 3, "{line}");
        read.push(cells[0].parse::<f32>().unwrap());
        read.push(cells[1].parse::<f32>().unwrap());
        labels.push(cells[2].parse::<i64>().unwrap());
    }
    assert_eq!(read, values);
    assert_eq!(labels, [2, 0, 1]);
    // Without classes: no class column; wrong label count: an error.
    cm_report::write_points_csv(&points, None, &path).unwrap();
    assert!(std::fs::read_to_string(&path)
        .unwrap()
        .starts_with("x0,x1\n"));
    let err = cm_report::write_points_csv(&points, Some(&Tensor::from_slice(&[1i64])), &path);
    assert!(err.unwrap_err().to_string().contains("[3] class labels"));
}
