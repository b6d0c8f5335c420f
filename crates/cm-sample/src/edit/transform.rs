//! The orthogonal transforms `A` of zero-shot editing (Song et al. 2023,
//! "Consistency Models", Algorithm 4): the [`Transform`] trait and its three
//! maps, [`Identity`] (inpainting), [`LumaChroma`] (colorization) and
//! [`PatchBasis`] (super-resolution).

use cm_core::CoreError;
use tch::{Device, Kind, Tensor};

use super::checks::check_image_shape;

/// An orthogonal linear map on image batches: the `A` of Algorithm 4.
///
/// Orthogonality makes the projection of Algorithm 4 an exact orthogonal
/// projection onto the images that agree with `y` on the known coordinates,
/// and makes `inverse` simply the transpose (no solve, no conditioning
/// issues). `forward` and `inverse` may panic on shapes that
/// [`Transform::output_shape`] rejects; [`zero_shot_edit`] checks first.
///
/// [`zero_shot_edit`]: super::zero_shot_edit
pub trait Transform {
    /// A short name (`identity`, `luma-chroma`, `patch-dct`).
    fn name(&self) -> &'static str;
    /// The shape of `forward(x)` for an input of shape `input`
    /// (`[B, C, H, W]`), or an error if the transform does not apply.
    fn output_shape(&self, input: &[i64]) -> cm_core::Result<Vec<i64>>;
    /// `A x`.
    fn forward(&self, x: &Tensor) -> Tensor;
    /// `A^-1 y = A^T y`.
    fn inverse(&self, y: &Tensor) -> Tensor;
}

/// The identity: inpainting's `A`, masks live in pixel space.
#[derive(Clone, Copy, Debug, Default)]
pub struct Identity;

impl Transform for Identity {
    fn name(&self) -> &'static str {
        "identity"
    }

    fn output_shape(&self, input: &[i64]) -> cm_core::Result<Vec<i64>> {
        check_image_shape("image.shape", input)?;
        Ok(input.to_vec())
    }

    fn forward(&self, x: &Tensor) -> Tensor {
        x.shallow_clone()
    }

    fn inverse(&self, y: &Tensor) -> Tensor {
        y.shallow_clone()
    }
}

/// The per-pixel orthogonal colour transform of colorization: RGB to one
/// luma and two chroma coordinates.
///
/// Row 0 of the 3x3 matrix `Q` is the Rec. 601 luma direction
/// `(0.299, 0.587, 0.114)` normalised to unit length, so a grayscale image
/// fixes exactly output channel 0. Rows 1 and 2 complete an orthonormal basis
/// by Gram–Schmidt of the fixed vectors blue `(0, 0, 1)` and red `(1, 0, 0)`
/// against the rows before them (a blue-difference and a red-difference
/// axis), so the matrix is the same on every run. Output channel 0 is luma,
/// 1 and 2 chroma; the input's kind and device are kept.
#[derive(Clone, Copy, Debug, Default)]
pub struct LumaChroma;

impl LumaChroma {
    /// The Rec. 601 luma weights, before normalisation.
    pub const LUMA: [f64; 3] = [0.299, 0.587, 0.114];

    /// The orthogonal matrix `Q` (rows: luma, blue-difference,
    /// red-difference), computed in f64.
    pub fn matrix() -> [[f64; 3]; 3] {
        fn dot(a: &[f64; 3], b: &[f64; 3]) -> f64 {
            a.iter().zip(b).map(|(x, y)| x * y).sum()
        }
        fn normalised(a: [f64; 3]) -> [f64; 3] {
            let n = dot(&a, &a).sqrt();
            a.map(|x| x / n)
        }
        let mut rows = [normalised(Self::LUMA), [0.0; 3], [0.0; 3]];
        for (i, start) in [[0.0, 0.0, 1.0], [1.0, 0.0, 0.0]].into_iter().enumerate() {
            let mut v = start;
            // Modified Gram–Schmidt: subtract each earlier row in turn.
            for prev in rows.iter().take(i + 1) {
                let d = dot(&v, prev);
                for k in 0..3 {
                    v[k] -= d * prev[k];
                }
            }
            rows[i + 1] = normalised(v);
        }
        rows
    }

    /// `Q` as a `[3, 3]` tensor of the given kind and device.
    fn tensor(kind: Kind, device: Device) -> Tensor {
        let flat: Vec<f64> = Self::matrix().iter().flatten().copied().collect();
        square_matrix(&flat, 3, kind, device)
    }
}

impl Transform for LumaChroma {
    fn name(&self) -> &'static str {
        "luma-chroma"
    }

    fn output_shape(&self, input: &[i64]) -> cm_core::Result<Vec<i64>> {
        check_image_shape("image.shape", input)?;
        if input[1] != 3 {
            return Err(CoreError::invalid(
                "image.channels",
                input[1],
                "3 (RGB) for the luma/chroma transform of colorization",
            ));
        }
        Ok(input.to_vec())
    }

    fn forward(&self, x: &Tensor) -> Tensor {
        let q = Self::tensor(x.kind(), x.device());
        Tensor::einsum("ij,bjhw->bihw", &[&q, x], None::<i64>)
    }

    fn inverse(&self, y: &Tensor) -> Tensor {
        // Q orthogonal: the inverse is the transpose.
        let q = Self::tensor(y.kind(), y.device());
        Tensor::einsum("ji,bjhw->bihw", &[&q, y], None::<i64>)
    }
}

/// The per-patch orthonormal 2-D DCT-II basis of super-resolution.
///
/// Every channel is cut into non-overlapping `factor x factor` patches, and
/// each patch is expressed in the Kronecker product of two 1-D orthonormal
/// DCT-II bases. The first basis vector is the constant `1 / factor`, so
/// coefficient 0 of a patch is `factor x` its mean: a low-resolution image
/// (the patch means) fixes exactly coefficient 0 of every patch.
///
/// Layout: `[B, C, H, W]` maps to `[B, C * f * f, H / f, W / f]` (`f` =
/// `factor`); channel `c * f * f + u * f + v` holds the coefficient of
/// vertical frequency `u` and horizontal frequency `v` of channel `c`, so the
/// mean coordinate of channel `c` is output channel `c * f * f` (the same
/// channel order as `pixel_unshuffle`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PatchBasis {
    /// Patch side, at least 2; must divide the image height and width.
    pub factor: i64,
}

impl PatchBasis {
    /// A basis of `factor x factor` patches; `factor` must be at least 2.
    pub fn new(factor: i64) -> cm_core::Result<Self> {
        if factor < 2 {
            return Err(CoreError::invalid(
                "factor",
                factor,
                "a patch side of at least 2",
            ));
        }
        Ok(PatchBasis { factor })
    }

    /// The `f^2 x f^2` matrix `D[(u, v), (i, j)] = C[u][i] C[v][j]`, `C` the
    /// orthonormal 1-D DCT-II matrix, as a tensor of the given kind/device.
    fn matrix(&self, kind: Kind, device: Device) -> Tensor {
        let f = self.factor as usize;
        let n = f as f64;
        let c = |k: usize, i: usize| {
            let scale = if k == 0 {
                (1.0 / n).sqrt()
            } else {
                (2.0 / n).sqrt()
            };
            scale * (std::f64::consts::PI * (2 * i + 1) as f64 * k as f64 / (2.0 * n)).cos()
        };
        let mut d = Vec::with_capacity(f.pow(4));
        for u in 0..f {
            for v in 0..f {
                for i in 0..f {
                    for j in 0..f {
                        d.push(c(u, i) * c(v, j));
                    }
                }
            }
        }
        square_matrix(&d, (f * f) as i64, kind, device)
    }
}

impl Transform for PatchBasis {
    fn name(&self) -> &'static str {
        "patch-dct"
    }

    fn output_shape(&self, input: &[i64]) -> cm_core::Result<Vec<i64>> {
        check_image_shape("image.shape", input)?;
        let f = self.factor;
        if f < 2 || input[2] % f != 0 || input[3] % f != 0 {
            return Err(CoreError::invalid(
                "factor",
                f,
                format!(
                    "a patch side >= 2 dividing the image height {} and width {}",
                    input[2], input[3]
                ),
            ));
        }
        Ok(vec![input[0], input[1] * f * f, input[2] / f, input[3] / f])
    }

    fn forward(&self, x: &Tensor) -> Tensor {
        let f = self.factor;
        let (b, c, h, w) = x.size4().expect("PatchBasis::forward takes [B, C, H, W]");
        let d = self.matrix(x.kind(), x.device());
        // pixel_unshuffle puts in-patch pixel (i, j) of channel c at channel
        // c*f*f + i*f + j; the DCT then mixes those f*f in-patch positions.
        let patches = x.pixel_unshuffle(f).reshape([b, c, f * f, h / f, w / f]);
        Tensor::einsum("kp,bcphw->bckhw", &[&d, &patches], None::<i64>).reshape([
            b,
            c * f * f,
            h / f,
            w / f,
        ])
    }

    fn inverse(&self, y: &Tensor) -> Tensor {
        let f = self.factor;
        let (b, cff, h, w) = y
            .size4()
            .expect("PatchBasis::inverse takes [B, C*f*f, H/f, W/f]");
        let d = self.matrix(y.kind(), y.device());
        let coeffs = y.reshape([b, cff / (f * f), f * f, h, w]);
        // D orthogonal: the inverse is the transpose (contract over k).
        Tensor::einsum("kp,bckhw->bcphw", &[&d, &coeffs], None::<i64>)
            .reshape([b, cff, h, w])
            .pixel_shuffle(f)
    }
}

/// A row-major `side x side` f64 matrix as a tensor of `kind` on `device`.
fn square_matrix(values: &[f64], side: i64, kind: Kind, device: Device) -> Tensor {
    Tensor::from_slice(values)
        .reshape([side, side])
        .to_kind(kind)
        .to_device(device)
}
