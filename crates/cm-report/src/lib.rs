//! Pictures of cm-rs runs: sample grids and single PNGs from `[-1, 1]`
//! image tensors ([`images`]), and plots drawn with plotters ([`plot`]): the
//! loss curve, line plots such as FID against NFE (log-scale NFE), and
//! scatter plots of 2-D samples.
//!
//! Every plot is written twice: as PNG at the given path (text rasterised
//! with an embedded DejaVu Sans, so no system font is needed) and as SVG
//! beside it (same stem, `.svg`, text kept as text); a path ending in `.svg`
//! gets the SVG only. Every file is written atomically (temporary file, then
//! rename). Bad input (wrong tensor rank, empty or non-finite series) is a
//! [`ReportError`] naming what is wrong, never a panic.

mod error;
mod figure;
mod fsio;
pub mod images;
pub mod plot;
pub mod ticks;

pub use error::{ReportError, Result};
pub use figure::svg_path;
pub use images::{
    to_u8, write_image_grid, write_image_grid_with_columns, write_png, write_pngs,
    write_points_csv, write_samples,
};
pub use plot::{
    write_line_plot, write_loss_plot, write_scatter, LinePlot, LineSeries, SERIES_COLORS,
};
