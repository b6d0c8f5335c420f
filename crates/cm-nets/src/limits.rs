//! The bounds every network config is checked against before anything is
//! allocated (shared by the cm-rs architectures and diffusers' U-Net).

/// The largest any single size field of a network config may be (widths,
/// depths, resolutions, counts); [`MAX_PARAMS`] then bounds the whole.
pub const MAX_DIM: usize = 1 << 16;

/// The most parameters a config may describe (about 8 GB of f32 weights,
/// before gradients and optimizer state), checked on an estimate before
/// anything is allocated. The largest preset, `imagenet64-adm`, is about
/// 0.3 G by the same estimate.
pub const MAX_PARAMS: f64 = 2e9;

/// The most tokens an attention layer may attend over (a DiT's
/// `(resolution / patch_size)^2`, a U-Net attention level's `res^2`):
/// attention holds a tokens x tokens matrix per head.
pub const MAX_TOKENS: usize = 16_384;

/// The largest image side a network may be built for (the image loaders'
/// limit too).
pub const MAX_RESOLUTION: usize = 4096;
