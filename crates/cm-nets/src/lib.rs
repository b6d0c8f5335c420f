//! cm-nets: the networks consistency models and their teachers are built
//! from, on `tch`.
//!
//! - [`UNet`]: an ADM / EDM-style U-Net (`DhariwalUNet`, with `SongUNet`'s
//!   options), for 1 or 3 channels at 28, 32 or 64 pixels.
//! - [`DiT`]: a Diffusion Transformer with adaLN-Zero conditioning.
//! - [`ResidualMlp`]: a residual MLP for 2-D toy data.
//! - [`DiffusersUNet`]: diffusers' `UNet2DModel`, built from a diffusers
//!   folder's `config.json` so the published consistency models load name
//!   for name ([`Model::from_diffusers`]).
//!
//! - [`Autoencoder`]: a KL-regularised convolutional autoencoder (the
//!   latent-diffusion VAE's design), for latent consistency models.
//!
//! All implement [`Network`]: `F(x_in, c_noise, class, train)` with the
//! output shaped like the input; cm-core's parameterizations wrap them.
//! [`Model`] owns a network's `VarStore` and config and reads and writes
//! strict safetensors checkpoints with a TOML config sidecar. Configs are
//! serde structs ([`NetConfig`]) with named presets ([`NetConfig::preset`],
//! `configs/nets/*.toml`).

pub mod autoencoder;
pub mod checkpoint;
pub mod config;
pub mod denoiser;
pub mod diffusers;
pub mod diffusers_export;
pub mod dit;
pub mod error;
mod kernels;
pub mod layers;
pub mod limits;
pub mod lora;
pub mod mlp;
pub mod model;
pub mod network;
pub mod unet;

pub use autoencoder::{Autoencoder, DiagonalGaussian};
pub use checkpoint::{
    load_strict, load_strict_tensors, load_strict_tensors_cast, read_metadata, sidecar_path,
    write_atomic, write_safetensors_with_metadata,
};
pub use config::{
    AutoencoderConfig, DiTConfig, MlpConfig, NetConfig, Resample, UNetConfig, MAX_DIM, MAX_PARAMS,
    MAX_RESOLUTION, MAX_TOKENS, PRESETS,
};
pub use denoiser::Preconditioned;
pub use diffusers::{DiffusersUNet, DiffusersUNetConfig, SampleSize, UNET_2D_CLASS};
pub use dit::DiT;
pub use error::{NetError, Result};
pub use layers::NoiseEmbedding;
pub use lora::{AdapterInfo, LoraConfig};
pub use mlp::ResidualMlp;
pub use model::Model;
pub use model::{DIFFUSERS_CONFIG, META_ADAPTERS_ONLY, META_NET, META_VERSION};
pub use network::Network;
pub use unet::UNet;
