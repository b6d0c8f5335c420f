//! PNG in and out for the editing commands: `cm export-images` writes data
//! set images as PNG files (inputs to try `cm edit` on), and [`read_images`]
//! reads PNGs into a batch shaped for a model.

use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use tch::{Kind, Tensor};

use cm_data::{load_image, ColorMode};
use cm_report::write_png;

use crate::sample::DataArg;

/// Which split `cm export-images` reads.
#[derive(Debug, Clone, Copy, clap::ValueEnum)]
pub enum SplitArg {
    /// The training split.
    Train,
    /// The held-out test split.
    Test,
}

/// Arguments of `cm export-images`.
#[derive(Debug, clap::Args)]
pub struct ExportArgs {
    /// The data set.
    #[arg(long, value_enum, default_value = "fashion-mnist")]
    pub data: DataArg,
    /// The split.
    #[arg(long, value_enum, default_value = "test")]
    pub split: SplitArg,
    /// Index of the first image.
    #[arg(long, default_value_t = 0)]
    pub first: usize,
    /// Number of images.
    #[arg(long, default_value_t = 8)]
    pub count: usize,
    /// Output folder: <data>-<split>-<index>.png.
    #[arg(long)]
    pub out: PathBuf,
    /// Write simulated stroke paintings instead (inputs for `cm edit
    /// sdedit`): each image averaged over 4x4 blocks, quantised to 4 levels
    /// per channel and blown up again, like a coarse paint sketch.
    #[arg(long)]
    pub strokes: bool,
}

/// A coarse "stroke painting" of images in [-1, 1]: 4x4 block means,
/// quantised to 4 levels per channel, nearest-neighbour upsampled (the
/// stroke simulation of SDEdit, Meng et al. 2022, Section 5, simplified).
pub fn stroke_painting(images: &Tensor) -> Tensor {
    let coarse = images.avg_pool2d([4, 4], [4, 4], [0, 0], false, true, None::<i64>);
    let levels = 3.0;
    let quantised = (((coarse + 1.0) / 2.0 * levels).round() / levels) * 2.0 - 1.0;
    let (h, w) = (images.size()[2], images.size()[3]);
    quantised.upsample_nearest2d([h, w], None, None)
}

/// Runs `cm export-images`.
pub fn export(args: &ExportArgs) -> Result<()> {
    let data = args.data.load()?;
    let (split, name) = match args.split {
        SplitArg::Train => (&data.train, "train"),
        SplitArg::Test => (&data.test, "test"),
    };
    let images = data_images(split, args.first, args.count)
        .with_context(|| format!("{} {name} split", data.name))?;
    let (images, kind) = if args.strokes {
        (stroke_painting(&images), "strokes-")
    } else {
        (images, "")
    };
    std::fs::create_dir_all(&args.out)
        .with_context(|| format!("creating {}", args.out.display()))?;
    for i in 0..args.count {
        let path = args.out.join(format!(
            "{kind}{}-{name}-{:05}.png",
            data.name,
            args.first + i
        ));
        write_png(&images.get(i as i64), &path)
            .with_context(|| format!("writing {}", path.display()))?;
        println!("{}", path.display());
    }
    Ok(())
}

/// Images `first .. first + count` of a split as f32 in [-1, 1].
pub fn data_images(split: &cm_data::ImageSplit, first: usize, count: usize) -> Result<Tensor> {
    let end = first
        .checked_add(count)
        .filter(|&e| count > 0 && e <= split.len());
    let Some(end) = end else {
        bail!(
            "images {first}..{first}+{count} requested; the split has {} (expected count >= 1 within it)",
            split.len()
        );
    };
    let indices: Vec<usize> = (first..end).collect();
    let picked = split.select(&indices)?;
    Ok(picked.to_tensor().to_kind(Kind::Float) / 127.5 - 1.0)
}

/// Reads PNG / JPEG files into `[N, C, H, W]` f32 in [-1, 1] for a model
/// making `shape = [C, H, W]` images (square): centre-cropped to a square,
/// resized, and converted to grey or RGB as the model needs.
pub fn read_images(paths: &[PathBuf], shape: &[i64]) -> Result<Tensor> {
    let (c, h, w) = match shape {
        [c, h, w] => (*c, *h, *w),
        _ => bail!("the model makes {shape:?}-shaped samples, not images"),
    };
    if h != w {
        bail!("the model makes {h}x{w} images; only square images can be read");
    }
    let color = match c {
        1 => ColorMode::Grey,
        3 => ColorMode::Rgb,
        _ => bail!("the model makes {c}-channel images; only 1 or 3 can be read from PNG"),
    };
    let mut images = Vec::with_capacity(paths.len());
    for path in paths {
        let pixels = load_image(path, h as u32, color)
            .with_context(|| format!("reading the image {}", path.display()))?;
        images.push(Tensor::from_slice(&pixels).reshape([c, h, w]));
    }
    if images.is_empty() {
        bail!("no input images");
    }
    Ok(Tensor::stack(&images, 0).to_kind(Kind::Float) / 127.5 - 1.0)
}

/// Reads a mask PNG (white = to generate) at the model's resolution as
/// `[1, 1, H, W]` 0/1 f32.
pub fn read_mask(path: &Path, resolution: i64) -> Result<Tensor> {
    let pixels = load_image(path, resolution as u32, ColorMode::Grey)
        .with_context(|| format!("reading the mask {}", path.display()))?;
    Ok(Tensor::from_slice(&pixels)
        .reshape([1, 1, resolution, resolution])
        .gt(127)
        .to_kind(Kind::Float))
}
