//! Pictures and files from samples, without any training code: images in
//! `[-1, 1]` to 8-bit pixels ([`to_u8`]), one PNG per image ([`write_pngs`],
//! [`write_png`]), a grid ([`write_image_grid`]), and for 2-D toy models a
//! scatter plot and a CSV ([`write_scatter`], [`write_points_csv`]).
//! [`write_samples`] picks the grid or the scatter plot by shape. These are
//! cm-report's writers (atomic: temporary file, then rename), re-exported so
//! that a program embedding the sampler needs this crate alone.
//!
//! A whole embedding round trip: a network saved with its card, loaded
//! back, sampled, written as PNGs and a grid (an untrained network stands
//! in for a trained one):
//!
//! ```
//! use cm_nets::{Model, NetConfig, UNetConfig};
//! use cm_sample::{images, ModelCard, Pipeline};
//!
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let dir = tempfile::tempdir()?;
//! // A small 1x28x28 U-Net, saved as weights plus config sidecar, and its card.
//! let net = NetConfig::Unet(UNetConfig { model_channels: 16, ..UNetConfig::default() });
//! Model::new(net, tch::Device::Cpu)?.save(dir.path().join("ema.safetensors"))?;
//! let card = ModelCard::Consistency {
//!     weights: "ema.safetensors".into(),
//!     consistency: Default::default(),
//!     timesteps: Default::default(),
//!     scheduler: None,
//!     autoencoder: None,
//!     guidance: None,
//!     lora: Vec::new(),
//! };
//! card.save(dir.path().join("model.toml"))?;
//!
//! let pipe = Pipeline::load(dir.path().join("model.toml"), tch::Device::Cpu)?;
//! let samples = pipe.generate(4, 1, 0)?;
//! assert_eq!(samples.size(), [4, 1, 28, 28]);
//! let pixels = images::to_u8(&samples); // [4, 1, 28, 28] u8
//! assert_eq!(pixels.kind(), tch::Kind::Uint8);
//! let files = images::write_pngs(&samples, &dir.path().join("png"), 0)?;
//! assert_eq!(files.len(), 4);
//! images::write_image_grid(&samples, &dir.path().join("grid.png"))?;
//! # Ok(())
//! # }
//! ```

pub use cm_report::{
    to_u8, write_image_grid, write_image_grid_with_columns, write_png, write_pngs,
    write_points_csv, write_samples, write_scatter, ReportError,
};
