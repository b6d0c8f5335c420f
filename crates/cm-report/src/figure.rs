//! Drawing a plot twice, as PNG (plotters' bitmap backend, text rasterised
//! with the embedded DejaVu Sans font, so no system font is needed) and as
//! SVG (text kept as text), and writing both atomically.

use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use plotters::coord::Shift;
use plotters::prelude::{BitMapBackend, DrawingArea, DrawingAreaErrorKind, DrawingBackend};
use plotters::prelude::{IntoDrawingArea, SVGBackend};
use plotters::style::FontStyle;

use crate::error::{ReportError, Result};
use crate::fsio::{save_png, save_text};

/// DejaVu Sans (Bitstream Vera licence, `assets/DejaVuSans-LICENSE.txt`).
static FONT: &[u8] = include_bytes!("../assets/DejaVuSans.ttf");

/// The font family name plots use.
pub(crate) const FAMILY: &str = "sans-serif";

/// Registers the embedded font with plotters once per process.
fn register_font() -> Result<()> {
    static DONE: OnceLock<bool> = OnceLock::new();
    let ok = *DONE.get_or_init(|| {
        plotters::style::register_font(FAMILY, FontStyle::Normal, FONT).is_ok()
            && plotters::style::register_font(FAMILY, FontStyle::Bold, FONT).is_ok()
    });
    if ok {
        Ok(())
    } else {
        Err(ReportError::invalid(
            "embedded font",
            "DejaVuSans.ttf could not be parsed",
        ))
    }
}

/// The error type of a plotters drawing on backend `DB`.
pub(crate) type DrawResult<DB> =
    std::result::Result<(), DrawingAreaErrorKind<<DB as DrawingBackend>::ErrorType>>;

/// A plot that can be drawn on any plotters backend.
pub(crate) trait Figure {
    /// Width and height in pixels.
    fn size(&self) -> (u32, u32);
    /// Draws the whole plot on `root`.
    fn draw<DB: DrawingBackend>(&self, root: &DrawingArea<DB, Shift>) -> DrawResult<DB>;
}

/// The SVG written beside a PNG: the same path with extension `svg`.
pub fn svg_path(path: &Path) -> PathBuf {
    path.with_extension("svg")
}

/// The figure as an SVG document.
pub(crate) fn render_svg(fig: &impl Figure, path: &Path) -> Result<String> {
    register_font()?;
    let draw_err = |e: String| ReportError::Draw {
        path: path.to_path_buf(),
        message: e,
    };
    let mut svg = String::new();
    {
        let root = SVGBackend::with_string(&mut svg, fig.size()).into_drawing_area();
        fig.draw(&root).map_err(|e| draw_err(e.to_string()))?;
        root.present().map_err(|e| draw_err(e.to_string()))?;
    }
    Ok(svg)
}

/// The figure as RGB pixels.
pub(crate) fn render_png(fig: &impl Figure, path: &Path) -> Result<image::RgbImage> {
    register_font()?;
    let draw_err = |e: String| ReportError::Draw {
        path: path.to_path_buf(),
        message: e,
    };
    let (w, h) = fig.size();
    let mut buf = vec![255u8; w as usize * h as usize * 3];
    {
        let root = BitMapBackend::with_buffer(&mut buf, (w, h)).into_drawing_area();
        fig.draw(&root).map_err(|e| draw_err(e.to_string()))?;
        root.present().map_err(|e| draw_err(e.to_string()))?;
    }
    image::RgbImage::from_raw(w, h, buf)
        .ok_or_else(|| ReportError::invalid("plot", format!("bitmap does not fit {w}x{h}")))
}

/// Writes `fig` as a PNG at `path` and as an SVG beside it ([`svg_path`]);
/// a `path` ending in `.svg` gets the SVG only.
pub(crate) fn write_figure(fig: &impl Figure, path: &Path) -> Result<()> {
    let svg_only = path
        .extension()
        .is_some_and(|e| e.eq_ignore_ascii_case("svg"));
    if !svg_only {
        save_png(&render_png(fig, path)?, path)?;
    }
    let svg = svg_path(path);
    save_text(&render_svg(fig, &svg)?, &svg)
}
