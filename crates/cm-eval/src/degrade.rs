//! Controlled degradations of images in [-1, 1], for checking that a
//! metric responds to them (FID must grow with noise and blur, Heusel et
//! al. 2017, Fig. 1).

use tch::{Kind, Tensor};

use crate::error::{EvalError, Result};

/// `images + std * noise`, clamped to [-1, 1]. Pass the same `noise`
/// (standard normal, shaped like `images`) for every level to get a
/// monotone family.
pub fn add_noise(images: &Tensor, noise: &Tensor, std: f64) -> Result<Tensor> {
    if images.size() != noise.size() {
        return Err(EvalError::InvalidInput(format!(
            "noise {:?} does not match images {:?}",
            noise.size(),
            images.size()
        )));
    }
    Ok((images + noise * std).clamp(-1.0, 1.0))
}

/// Separable Gaussian blur of `[N, C, H, W]` images with standard deviation
/// `sigma` pixels (kernel radius `ceil(3 sigma)`, replicate padding).
/// `sigma = 0` returns a copy.
pub fn gaussian_blur(images: &Tensor, sigma: f64) -> Result<Tensor> {
    if images.dim() != 4 || !(sigma.is_finite() && sigma >= 0.0) {
        return Err(EvalError::InvalidInput(format!(
            "blur of {:?} with sigma {sigma}: expected [N, C, H, W] and sigma >= 0",
            images.size()
        )));
    }
    if sigma == 0.0 {
        return Ok(images.copy());
    }
    let _guard = tch::no_grad_guard();
    let radius = (3.0 * sigma).ceil() as i64;
    let taps: Vec<f32> = (-radius..=radius)
        .map(|i| (-(i * i) as f64 / (2.0 * sigma * sigma)).exp() as f32)
        .collect();
    let total: f32 = taps.iter().sum();
    let kernel = Tensor::from_slice(&taps.iter().map(|t| t / total).collect::<Vec<_>>())
        .to_device(images.device());
    let c = images.size()[1];
    let k = 2 * radius + 1;
    let kx = kernel.reshape([1, 1, 1, k]).repeat([c, 1, 1, 1]);
    let ky = kernel.reshape([1, 1, k, 1]).repeat([c, 1, 1, 1]);
    let x = images.to_kind(Kind::Float);
    let x = x.pad([radius, radius, 0, 0], "replicate", None).conv2d(
        &kx,
        None::<Tensor>,
        [1, 1],
        [0, 0],
        [1, 1],
        c,
    );
    let x = x.pad([0, 0, radius, radius], "replicate", None).conv2d(
        &ky,
        None::<Tensor>,
        [1, 1],
        [0, 0],
        [1, 1],
        c,
    );
    Ok(x)
}
