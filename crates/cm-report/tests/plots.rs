//! Plots as SVG and PNG: axis titles and legend labels are in the SVG as
//! text, NFE 1, 2, 4, 35 land at log-spaced x positions on a log axis (and
//! evenly by value on a linear one), PNGs have their sizes, and bad series
//! are errors naming the series and point.

use std::path::Path;

use cm_report::ticks::{format_tick, Axis, LabelRoom, Scale};
use cm_report::{
    svg_path, write_line_plot, write_loss_plot, write_samples, write_scatter, LinePlot, LineSeries,
    ReportError, SERIES_COLORS,
};
use tch::Tensor;

/// The text elements of an SVG, trimmed.
fn svg_texts(svg: &str) -> Vec<String> {
    svg.split("<text")
        .skip(1)
        .filter_map(|t| {
            let body = &t[t.find('>')? + 1..];
            Some(body[..body.find("</text>")?].trim().to_string())
        })
        .collect()
}

/// `(cx, cy)` of the SVG's circles with fill `fill` (e.g. "#1F77B4").
fn circles(svg: &str, fill: &str) -> Vec<(f64, f64)> {
    let attr = |c: &str, name: &str| -> Option<f64> {
        let start = c.find(&format!(" {name}=\""))? + name.len() + 3;
        c[start..].split('"').next()?.parse().ok()
    };
    svg.split("<circle")
        .skip(1)
        .filter(|c| c.contains(&format!("fill=\"{fill}\"")))
        .filter_map(|c| Some((attr(c, "cx")?, attr(c, "cy")?)))
        .collect()
}

fn read(path: &Path) -> String {
    std::fs::read_to_string(path).expect("the SVG was written")
}

fn series(label: &str, points: &[(f64, f64)], color: usize) -> LineSeries {
    LineSeries {
        label: label.into(),
        points: points.to_vec(),
        color: SERIES_COLORS[color],
    }
}

#[test]
fn line_plot_has_titles_legend_and_both_files() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("fid.png");
    let plot = LinePlot {
        log_x: true,
        legend_title: Some("model".into()),
        ..LinePlot::new("NFE", "FID")
    };
    let s = [
        series("teacher", &[(35.0, 13.3), (17.0, 13.9), (9.0, 23.3)], 0),
        series("CD", &[(1.0, 23.2), (2.0, 20.2), (4.0, 19.7)], 1),
    ];
    write_line_plot(&s, &plot, &path).unwrap();
    let png = image::open(&path).unwrap();
    assert!(
        png.width() > 760 && png.height() == 480,
        "{:?}",
        (png.width(), png.height())
    );
    let texts = svg_texts(&read(&svg_path(&path)));
    for t in [
        "NFE", "FID", "model", "teacher", "CD", "1", "2", "4", "9", "17", "35",
    ] {
        assert!(texts.iter().any(|x| x == t), "no text {t:?} in {texts:?}");
    }
}

/// x pixel of NFE 1, 2, 4, 35 in a one-series plot.
fn nfe_positions(log_x: bool) -> [f64; 4] {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("p.svg");
    let plot = LinePlot {
        log_x,
        ..LinePlot::new("NFE", "FID")
    };
    let pts = [(1.0, 10.0), (2.0, 10.0), (4.0, 10.0), (35.0, 10.0)];
    write_line_plot(&[series("", &pts, 2)], &plot, &path).unwrap();
    assert!(
        !path.with_extension("png").exists(),
        "a .svg path writes SVG only"
    );
    let mut xs: Vec<f64> = circles(&read(&path), "#2CA02C")
        .iter()
        .map(|c| c.0)
        .collect();
    xs.sort_by(f64::total_cmp);
    assert_eq!(xs.len(), 4, "one marker per point: {xs:?}");
    [xs[0], xs[1], xs[2], xs[3]]
}

#[test]
fn log_x_places_nfe_at_log_spaced_positions() {
    let [a, b, c, d] = nfe_positions(true);
    let octave = b - a;
    assert!(octave > 50.0, "{octave}");
    // 1 -> 2 and 2 -> 4 are one octave each; 4 -> 35 is log2(35 / 4) octaves.
    assert!((c - b - octave).abs() <= 1.5, "{a} {b} {c} {d}");
    let want = octave * (35.0f64 / 4.0).log2();
    assert!((d - c - want).abs() <= 2.0, "{a} {b} {c} {d}: want {want}");
    // On a linear axis the same points are spaced by value: 1, 2, 31.
    let [a, b, c, d] = nfe_positions(false);
    assert!(((c - b) / (b - a) - 2.0).abs() < 0.1, "{a} {b} {c} {d}");
    assert!(((d - c) / (b - a) - 31.0).abs() < 1.0, "{a} {b} {c} {d}");
}

#[test]
fn scale_maps_log_values_by_their_logarithm() {
    let f = |v| Scale::Log.fraction(1.0, 32.0, v);
    assert!((f(2.0) - 0.2).abs() < 1e-12);
    assert!((f(4.0) - 0.4).abs() < 1e-12);
    assert!((Scale::Linear.fraction(0.0, 40.0, 35.0) - 0.875).abs() < 1e-12);
}

#[test]
fn ticks_are_short_and_do_not_overlap() {
    assert_eq!(format_tick(35.000000000001), "35");
    assert_eq!(format_tick(0.30000000000000004), "0.3");
    assert_eq!(format_tick(0.07), "0.07");
    assert_eq!(format_tick(47.5), "47.5");
    assert_eq!(format_tick(200_000.0), "200k");
    assert_eq!(format_tick(2500.0), "2.5k");
    assert_eq!(format_tick(0.0), "0");
    assert_eq!(format_tick(1e-5), "1e-5");
    let room = |pixels| LabelRoom {
        pixels,
        font_px: 14.0,
        horizontal: true,
    };
    let nfe = [1.0, 2.0, 4.0, 5.0, 9.0, 17.0, 35.0];
    let wide = Axis::log(0.9, 40.0, Some(&nfe), room(600.0));
    assert_eq!(wide.ticks, nfe);
    // On a narrow axis 4 and 5 (and more) would overlap: some are dropped,
    // and every remaining pair is clear of each other.
    let narrow = Axis::log(0.9, 40.0, Some(&nfe), room(150.0));
    assert!(
        narrow.ticks.len() < nfe.len() && narrow.ticks.len() >= 2,
        "{narrow:?}"
    );
    let px = |t: f64| Scale::Log.fraction(narrow.lo, narrow.hi, t) * 150.0;
    for w in narrow.ticks.windows(2) {
        let need = 0.64 * 14.0 * (format_tick(w[0]).len() + format_tick(w[1]).len()) as f64 / 2.0;
        assert!(px(w[1]) - px(w[0]) >= need, "{:?}", narrow.ticks);
    }
    let lin = Axis::linear(0.0, 160.0, room(600.0));
    assert!(lin.ticks.len() >= 4 && lin.ticks.contains(&0.0), "{lin:?}");
}

#[test]
fn loss_plot_has_log_y_titles_and_legend() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("loss.png");
    let points: Vec<(u64, f64)> = (1..=500u64)
        .map(|s| (s * 10, 1.0 / s as f64))
        .chain([(5010, f64::NAN), (5020, 0.0)])
        .collect();
    write_loss_plot(&points, &path).unwrap();
    assert_eq!(
        image::open(&path).unwrap().into_rgb8().dimensions(),
        (800, 480)
    );
    let texts = svg_texts(&read(&svg_path(&path)));
    for t in [
        "step",
        "loss (log scale)",
        "loss",
        "moving average",
        "0.01",
        "0.1",
        "1",
    ] {
        assert!(texts.iter().any(|x| x == t), "no text {t:?} in {texts:?}");
    }
    // No finite loss yet (first checkpoint before the first log line): an
    // empty frame that says so, not an error.
    let empty = dir.path().join("empty.png");
    write_loss_plot(&[(0, f64::NAN)], &empty).unwrap();
    assert!(read(&svg_path(&empty)).contains("no finite positive loss"));
}

#[test]
fn scatter_is_square_with_axis_titles() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("toy.png");
    let pts =
        Tensor::from_slice(&[0.0f32, 0.0, 1.0, -1.0, 9.0, 0.0, f32::NAN, 1.0]).reshape([4, 2]);
    write_samples(&pts, &path).unwrap();
    assert_eq!(
        image::open(&path).unwrap().into_rgb8().dimensions(),
        (560, 560)
    );
    let svg = read(&svg_path(&path));
    let texts = svg_texts(&svg);
    assert!(texts.iter().any(|t| t == "x[1]"), "{texts:?}");
    let x_title = texts
        .iter()
        .find(|t| t.starts_with("x[0]"))
        .expect("x title");
    assert!(
        x_title.contains("1 of 4 points outside") && x_title.contains("1 of 4 points NaN"),
        "{x_title}"
    );
    // Equal aspect: one unit is as many pixels across as up.
    let c = circles(&svg, "#1450C8");
    assert_eq!(c.len(), 2, "{c:?}");
    let (o, p) = if c[0].0 < c[1].0 {
        (c[0], c[1])
    } else {
        (c[1], c[0])
    };
    assert!(((p.0 - o.0) - (p.1 - o.1)).abs() <= 1.0, "{o:?} {p:?}");
}

/// The message of an InvalidInput error, failing on any other result.
fn invalid(r: cm_report::Result<()>) -> String {
    match r {
        Err(e @ ReportError::InvalidInput { .. }) => e.to_string(),
        other => panic!("expected InvalidInput, got {other:?}"),
    }
}

#[test]
fn bad_series_are_errors_naming_what_is_wrong() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("bad.png");
    let log = LinePlot {
        log_x: true,
        ..LinePlot::new("NFE", "FID")
    };
    let msg = invalid(write_line_plot(&[], &log, &path));
    assert!(msg.contains("no series"), "{msg}");
    let msg = invalid(write_line_plot(&[series("iCT", &[], 0)], &log, &path));
    assert!(msg.contains("'iCT'") && msg.contains("no points"), "{msg}");
    let nan = series("CD", &[(1.0, 20.0), (2.0, f64::NAN)], 0);
    let msg = invalid(write_line_plot(&[nan], &log, &path));
    assert!(
        msg.contains("'CD', point 1") && msg.contains("NaN"),
        "{msg}"
    );
    let zero = series("data", &[(0.0, 0.5)], 0);
    let msg = invalid(write_line_plot(std::slice::from_ref(&zero), &log, &path));
    assert!(
        msg.contains("'data', point 0") && msg.contains("log axis"),
        "{msg}"
    );
    // The same point is fine on a linear axis.
    write_line_plot(&[zero], &LinePlot::new("NFE", "FID"), &path).unwrap();
    let msg = invalid(write_scatter(
        &Tensor::zeros([5, 3], tch::kind::FLOAT_CPU),
        &path,
    ));
    assert!(msg.contains("[N, 2]") && msg.contains("[5, 3]"), "{msg}");
}
