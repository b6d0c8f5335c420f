//! Draws one of each picture into a folder, to look at:
//! `cargo run -p cm-report --example gallery -- OUT_DIR`.

use std::path::PathBuf;

use cm_report::{LinePlot, LineSeries, SERIES_COLORS};
use tch::{Device, Kind, Tensor};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let out = PathBuf::from(std::env::args().nth(1).unwrap_or_else(|| "gallery".into()));
    tch::manual_seed(0);
    let losses: Vec<(u64, f64)> = (1..=3000u64)
        .map(|s| {
            let noise = 1.0 + 0.3 * ((s as f64 * 12.9898).sin() * 43758.5453).fract();
            (s * 10, (0.02 + 2.0 / (1.0 + s as f64 / 50.0)) * noise)
        })
        .collect();
    cm_report::write_loss_plot(&losses, &out.join("loss.png"))?;
    let teacher = vec![(35.0, 13.3), (17.0, 13.9), (9.0, 23.3), (5.0, 149.7)];
    let cd = vec![(1.0, 23.2), (2.0, 20.2), (4.0, 19.7)];
    let series = vec![
        LineSeries {
            label: "teacher (EDM Heun)".into(),
            points: teacher,
            color: SERIES_COLORS[0],
        },
        LineSeries {
            label: "CD".into(),
            points: cd,
            color: SERIES_COLORS[1],
        },
    ];
    let plot = LinePlot {
        log_x: true,
        legend_title: Some("model".into()),
        title: Some("FID against NFE".into()),
        ..LinePlot::new("NFE (log scale)", "FID")
    };
    cm_report::write_line_plot(&series, &plot, &out.join("lines.png"))?;
    let pts = Tensor::randn([2000, 2], (Kind::Float, Device::Cpu)) * 1.5;
    cm_report::write_scatter(&pts, &out.join("scatter.png"))?;
    let imgs = Tensor::rand([10, 3, 28, 28], (Kind::Float, Device::Cpu)) * 2.0 - 1.0;
    cm_report::write_image_grid(&imgs, &out.join("grid.png"))?;
    Ok(())
}
