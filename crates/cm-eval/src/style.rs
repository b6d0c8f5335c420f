//! The style score of LCM-LoRA's universal-acceleration check: how many of
//! a row's samples a small classifier assigns to a style (a data set in a
//! visually distinct style, [`cm_data::Style`]) rather than to the base data.
//!
//! The classifier is Fisher's linear discriminant on the feature network's
//! features (the ones FID uses): with class means `mu_s` (style) and `mu_b`
//! (base) and the pooled within-class covariance `S` (ridge `eps tr(S)/D I`
//! added), `w = S^-1 (mu_s - mu_b)` and a sample is "style" when `w . (f -
//! (mu_s + mu_b) / 2) > 0` (equal priors). Closed form, deterministic, and
//! fitted on training images, measured on held-out ones: a linear probe of
//! the same features, so a row's score comes from its cached features
//! without sampling again.

use tch::{Kind, Tensor};

use crate::error::{EvalError, Result};

/// Relative ridge added to the pooled covariance.
const RIDGE: f64 = 1e-4;

/// A fitted linear discriminant between style and base features.
#[derive(Debug)]
pub struct StyleProbe {
    /// `[D]` discriminant direction.
    w: Tensor,
    /// `[D]` midpoint of the class means.
    mid: Tensor,
}

fn check(f: &Tensor, what: &str) -> Result<()> {
    if f.dim() != 2 || f.size()[0] < 2 {
        return Err(EvalError::InvalidInput(format!(
            "style probe: {what} features must be [N >= 2, D], found {:?}",
            f.size()
        )));
    }
    Ok(())
}

impl StyleProbe {
    /// Fits the discriminant on `style` `[N_s, D]` and `base` `[N_b, D]`
    /// features.
    pub fn fit(style: &Tensor, base: &Tensor) -> Result<Self> {
        check(style, "style")?;
        check(base, "base")?;
        if style.size()[1] != base.size()[1] {
            return Err(EvalError::InvalidInput(format!(
                "style probe: feature widths differ ({:?} vs {:?})",
                style.size(),
                base.size()
            )));
        }
        let (s, b) = (style.to_kind(Kind::Double), base.to_kind(Kind::Double));
        let (mu_s, mu_b) = (
            s.mean_dim(0, false, Kind::Double),
            b.mean_dim(0, false, Kind::Double),
        );
        let (cs, cb) = (&s - &mu_s, &b - &mu_b);
        let n = (style.size()[0] + base.size()[0] - 2) as f64;
        let d = style.size()[1];
        let pooled = (cs.transpose(0, 1).matmul(&cs) + cb.transpose(0, 1).matmul(&cb)) / n;
        let scale = f64::try_from(pooled.trace()).unwrap_or(1.0) / d as f64;
        let eye = Tensor::eye(d, (Kind::Double, pooled.device()));
        let reg = pooled + eye * (RIDGE * scale.max(1e-12));
        let diff = (&mu_s - &mu_b).unsqueeze(1);
        let w = Tensor::linalg_solve(&reg, &diff, true).squeeze_dim(1);
        Ok(StyleProbe {
            w,
            mid: (mu_s + mu_b) / 2.0,
        })
    }

    /// `[N]` booleans: whether each of `features` `[N, D]` is classified as
    /// the style.
    pub fn is_style(&self, features: &Tensor) -> Tensor {
        (features.to_kind(Kind::Double) - &self.mid)
            .matmul(&self.w)
            .gt(0.0)
    }

    /// The share of `features` classified as the style: a row's style score.
    pub fn score(&self, features: &Tensor) -> f64 {
        f64::try_from(
            self.is_style(features)
                .to_kind(Kind::Double)
                .mean(Kind::Double),
        )
        .unwrap_or(f64::NAN)
    }

    /// Balanced accuracy on held-out `style` and `base` features: the mean
    /// of the share of style called style and of base called base.
    pub fn accuracy(&self, style: &Tensor, base: &Tensor) -> f64 {
        0.5 * (self.score(style) + 1.0 - self.score(base))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The standard normal CDF by erf's series-free Abramowitz-Stegun 7.1.26
    /// (|error| < 1.5e-7), an independent route to Phi.
    fn phi(x: f64) -> f64 {
        let z = x / std::f64::consts::SQRT_2;
        let t = 1.0 / (1.0 + 0.327_591_1 * z.abs());
        let poly = t
            * (0.254_829_592
                + t * (-0.284_496_736
                    + t * (1.421_413_741 + t * (-1.453_152_027 + t * 1.061_405_429))));
        let erf = 1.0 - poly * (-z * z).exp();
        0.5 * (1.0 + erf.copysign(z))
    }

    /// Two Gaussian clouds with a shared, correlated covariance: LDA's
    /// held-out accuracy is the Bayes rate `Phi(delta / 2)`, delta the
    /// Mahalanobis distance of the means.
    #[test]
    fn lda_reaches_the_bayes_rate_of_two_gaussians() {
        tch::manual_seed(3);
        let d = 8;
        let n = 20_000;
        let mix = Tensor::randn([d, d], (Kind::Double, tch::Device::Cpu)) * 0.15
            + Tensor::eye(d, (Kind::Double, tch::Device::Cpu));
        let cov = mix.matmul(&mix.transpose(0, 1));
        let mahalanobis = |v: &Tensor| {
            let m = Tensor::linalg_solve(&cov, &v.unsqueeze(1), true).squeeze_dim(1);
            f64::try_from(v.dot(&m)).unwrap().sqrt()
        };
        // A direction scaled to Mahalanobis distance 2: Bayes rate Phi(1).
        let raw = Tensor::from_slice(&[1.0f64, -0.5, 0.25, 0.0, 0.0, 0.3, 0.0, 0.2]);
        let shift = &raw * (2.0 / mahalanobis(&raw));
        let draw = |mean: &Tensor| {
            Tensor::randn([n, d], (Kind::Double, tch::Device::Cpu)).matmul(&mix.transpose(0, 1))
                + mean
        };
        let zero = Tensor::zeros([d], (Kind::Double, tch::Device::Cpu));
        let (s_fit, b_fit) = (draw(&shift), draw(&zero));
        let (s_test, b_test) = (draw(&shift), draw(&zero));
        let probe = StyleProbe::fit(&s_fit, &b_fit).unwrap();
        let delta = mahalanobis(&shift);
        let bayes = phi(delta / 2.0);
        let got = probe.accuracy(&s_test, &b_test);
        assert!(
            (got - bayes).abs() < 0.01,
            "accuracy {got} vs Bayes {bayes} (delta {delta})"
        );
        assert!(
            (0.6..0.95).contains(&bayes),
            "a test that can fail: Bayes {bayes}"
        );
        // The score is the share called style.
        assert!((probe.score(&s_test) - got).abs() < 0.02);
    }

    #[test]
    fn bad_shapes_are_errors() {
        let a = Tensor::zeros([4, 3], (Kind::Float, tch::Device::Cpu));
        let b = Tensor::zeros([4, 2], (Kind::Float, tch::Device::Cpu));
        assert!(StyleProbe::fit(&a, &b)
            .unwrap_err()
            .to_string()
            .contains("widths"));
        let c = Tensor::zeros([1, 3], (Kind::Float, tch::Device::Cpu));
        assert!(StyleProbe::fit(&c, &a)
            .unwrap_err()
            .to_string()
            .contains("N >= 2"));
    }
}
