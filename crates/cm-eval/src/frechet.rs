//! The Fréchet distance between Gaussians fitted to two feature sets
//! (Heusel et al. 2017, "GANs trained by a two time-scale update rule",
//! Eq. 6): with means `mu_1, mu_2` and covariances `S_1, S_2`,
//!
//! ```text
//! d^2 = |mu_1 - mu_2|^2 + tr(S_1) + tr(S_2) - 2 tr( (S_1 S_2)^{1/2} )
//! ```
//!
//! FID is this distance on Inception-v3 pool features; the project's FID
//! uses its own feature network (see [`crate::classifier`]).
//!
//! Everything is float64. The trace term uses the identity
//! `tr (S_1 S_2)^{1/2} = tr (S_1^{1/2} S_2 S_1^{1/2})^{1/2}`: both matrices
//! have the same (non-negative) eigenvalues, and the second is symmetric
//! positive semi-definite, so two symmetric eigendecompositions with
//! eigenvalues clamped at 0 give a square root that is stable for singular
//! covariances (fewer samples than dimensions, dead features), where
//! pytorch-fid's `scipy.linalg.sqrtm(S_1 S_2)` needs an `eps * I` offset and
//! drops an imaginary part. The test `frechet_fixture` checks this against
//! scipy on committed statistics to 1e-6 relative.

use std::path::Path;

use tch::{Kind, Tensor};

use crate::error::{EvalError, Result};

/// Mean and covariance of a feature set, float64 on the CPU.
#[derive(Debug)]
pub struct FeatureStats {
    /// Mean `[D]`.
    pub mu: Tensor,
    /// Unbiased covariance `[D, D]` (divided by `N - 1`, as `numpy.cov`).
    pub sigma: Tensor,
    /// Number of feature vectors they were computed from.
    pub n: i64,
}

impl Clone for FeatureStats {
    fn clone(&self) -> Self {
        FeatureStats {
            mu: self.mu.copy(),
            sigma: self.sigma.copy(),
            n: self.n,
        }
    }
}

impl FeatureStats {
    /// Mean and unbiased covariance of `features` `[N, D]` (N >= 2), in float64.
    pub fn from_features(features: &Tensor) -> Result<Self> {
        let size = features.size();
        if size.len() != 2 || size[0] < 2 || size[1] < 1 {
            return Err(EvalError::InvalidInput(format!(
                "feature statistics need features [N, D] with N >= 2 and D >= 1, found {size:?}"
            )));
        }
        let _guard = tch::no_grad_guard();
        let f = features.to_device(tch::Device::Cpu).to_kind(Kind::Double);
        let mu = f.mean_dim(0, false, Kind::Double);
        let centred = &f - mu.unsqueeze(0);
        let sigma = centred.tr().matmul(&centred) / (size[0] - 1) as f64;
        Ok(FeatureStats {
            mu,
            sigma,
            n: size[0],
        })
    }

    /// Feature dimension `D`.
    pub fn dim(&self) -> i64 {
        self.mu.size()[0]
    }

    /// Writes `mu`, `sigma` and `n` as safetensors, atomically.
    pub fn save(&self, path: &Path) -> Result<()> {
        let named = [
            ("mu".to_string(), self.mu.copy()),
            ("sigma".to_string(), self.sigma.copy()),
            ("n".to_string(), Tensor::from_slice(&[self.n])),
        ];
        cm_nets::write_atomic(path, |tmp| Ok(Tensor::write_safetensors(&named, tmp)?))?;
        Ok(())
    }

    /// Reads statistics written by [`FeatureStats::save`], checking shapes.
    pub fn load(path: &Path) -> Result<Self> {
        let tensors = Tensor::read_safetensors(path)
            .map_err(|e| EvalError::io("cannot read feature statistics", path, e))?;
        let get = |name: &str| {
            tensors
                .iter()
                .find(|(n, _)| n == name)
                .map(|(_, t)| t.shallow_clone())
                .ok_or_else(|| EvalError::io("missing tensor", path, format!("`{name}`")))
        };
        let (mu, sigma, n) = (get("mu")?, get("sigma")?, get("n")?);
        let d = mu.size().first().copied().unwrap_or(0);
        if mu.dim() != 1 || sigma.size() != [d, d] || n.numel() != 1 {
            return Err(EvalError::io(
                "malformed feature statistics",
                path,
                format!(
                    "mu {:?}, sigma {:?}: expected [D] and [D, D]",
                    mu.size(),
                    sigma.size()
                ),
            ));
        }
        Ok(FeatureStats {
            mu: mu.to_kind(Kind::Double),
            sigma: sigma.to_kind(Kind::Double),
            n: n.int64_value(&[0]),
        })
    }
}

/// Symmetric eigendecomposition of `(a + a^T) / 2` (float64): eigenvalues
/// clamped at 0 and eigenvectors.
fn eigh_psd(a: &Tensor) -> (Tensor, Tensor) {
    let sym = (a + a.tr()) * 0.5;
    let (values, vectors) = sym.linalg_eigh("L");
    (values.clamp_min(0.0), vectors)
}

/// The principal square root of a symmetric positive semi-definite matrix,
/// `V diag(sqrt(max(lambda, 0))) V^T`, in float64.
pub fn sqrtm_psd(a: &Tensor) -> Tensor {
    let a = a.to_kind(Kind::Double);
    let (values, vectors) = eigh_psd(&a);
    (&vectors * values.sqrt().unsqueeze(0)).matmul(&vectors.tr())
}

/// `tr (S_1 S_2)^{1/2}` for symmetric PSD `S_1, S_2`, computed as
/// `sum_i sqrt(max(lambda_i, 0))` over the eigenvalues of
/// `S_1^{1/2} S_2 S_1^{1/2}`.
pub fn trace_sqrt_product(s1: &Tensor, s2: &Tensor) -> f64 {
    let root = sqrtm_psd(s1);
    let m = root.matmul(&s2.to_kind(Kind::Double)).matmul(&root);
    let (values, _) = eigh_psd(&m);
    values.sqrt().sum(Kind::Double).double_value(&[])
}

/// The Fréchet distance `d^2` between the Gaussians of `a` and `b` (module
/// docs). Fails when the feature dimensions differ or a value is not finite.
pub fn frechet_distance(a: &FeatureStats, b: &FeatureStats) -> Result<f64> {
    if a.dim() != b.dim() {
        return Err(EvalError::InvalidInput(format!(
            "Fréchet distance between {}-d and {}-d feature statistics",
            a.dim(),
            b.dim()
        )));
    }
    let _guard = tch::no_grad_guard();
    let (mu1, mu2) = (a.mu.to_kind(Kind::Double), b.mu.to_kind(Kind::Double));
    let (s1, s2) = (a.sigma.to_kind(Kind::Double), b.sigma.to_kind(Kind::Double));
    let mean_term = (&mu1 - &mu2).square().sum(Kind::Double).double_value(&[]);
    let traces = s1.trace().double_value(&[]) + s2.trace().double_value(&[]);
    let d2 = mean_term + traces - 2.0 * trace_sqrt_product(&s1, &s2);
    if !d2.is_finite() {
        return Err(EvalError::InvalidInput(
            "Fréchet distance is not finite (non-finite features?)".into(),
        ));
    }
    // Rounding can leave a tiny negative value for identical statistics.
    Ok(d2.max(0.0))
}

/// Fréchet distance between two feature sets `[N, D]` and `[M, D]`.
pub fn frechet_distance_features(a: &Tensor, b: &Tensor) -> Result<f64> {
    frechet_distance(
        &FeatureStats::from_features(a)?,
        &FeatureStats::from_features(b)?,
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sqrtm_of_a_diagonal_matrix_is_elementwise() {
        let a = Tensor::from_slice(&[4.0f64, 9.0, 0.0]).diag(0);
        let r = sqrtm_psd(&a);
        let want = Tensor::from_slice(&[2.0f64, 3.0, 0.0]).diag(0);
        assert!((r - want).abs().max().double_value(&[]) < 1e-12);
    }

    #[test]
    fn one_dimensional_gaussians_have_the_closed_form() {
        // d^2 = (m1 - m2)^2 + (s1 - s2)^2 for 1-D Gaussians with std s1, s2.
        let a = FeatureStats {
            mu: Tensor::from_slice(&[1.0f64]),
            sigma: Tensor::from_slice(&[4.0f64]).reshape([1, 1]),
            n: 10,
        };
        let b = FeatureStats {
            mu: Tensor::from_slice(&[-2.0f64]),
            sigma: Tensor::from_slice(&[0.25f64]).reshape([1, 1]),
            n: 10,
        };
        let d = frechet_distance(&a, &b).unwrap();
        assert!((d - (9.0 + 1.5f64 * 1.5)).abs() < 1e-12, "{d}");
    }

    #[test]
    fn mismatched_dimensions_are_an_error() {
        let a = FeatureStats::from_features(&Tensor::ones([3, 2], (Kind::Float, tch::Device::Cpu)))
            .unwrap();
        let b = FeatureStats::from_features(&Tensor::ones([3, 4], (Kind::Float, tch::Device::Cpu)))
            .unwrap();
        assert!(frechet_distance(&a, &b).is_err());
        assert!(FeatureStats::from_features(&Tensor::ones(
            [1, 4],
            (Kind::Float, tch::Device::Cpu)
        ))
        .is_err());
    }
}
