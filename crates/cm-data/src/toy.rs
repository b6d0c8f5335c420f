//! 2-D toy distributions for quick experiments and mode-coverage metrics:
//! 8 Gaussians, two moons, checkerboard and Swiss roll, each standardised by
//! its exact (analytic) per-coordinate mean and standard deviation, so the
//! samples have zero mean and unit variance per coordinate up to sampling
//! noise.
//!
//! Raw distributions (before standardisation), with their sources:
//! - **8 Gaussians** (Metz et al. 2017, "Unrolled GANs", Sec. 3.1): modes
//!   evenly spaced on a circle of radius [`EIGHT_GAUSSIANS_RADIUS`] = 2 at
//!   angles `k * pi / 4`, `k = 0..8` chosen uniformly, isotropic std
//!   [`EIGHT_GAUSSIANS_STD`] = 0.02. Label: the mode `k`. Mode centres after
//!   scaling: [`eight_gaussians_modes`].
//! - **Two moons** (scikit-learn `make_moons`): `t ~ U[0, pi)`, upper moon
//!   `(cos t, sin t)`, lower moon `(1 - cos t, 1/2 - sin t)`, moon chosen by a
//!   fair coin, Gaussian noise std [`TWO_MOONS_NOISE`] = 0.1. Label: the moon.
//! - **Checkerboard** (Grathwohl et al. 2019, FFJORD's `checkerboard`): `x ~
//!   U[-2, 2)`, `y` uniform on the squares of a 4x4 board on `[-2, 2)^2`
//!   whose colour matches `x`'s column (8 of the 16 squares). Unlabelled.
//! - **Swiss roll** (FFJORD's `swissroll`, scikit-learn `make_swiss_roll`'s
//!   `(x, z)` plane): `t = 3 pi / 2 * (1 + 2u)`, `u ~ U[0, 1)`, point `(t cos
//!   t, t sin t)` plus Gaussian noise std [`SWISS_ROLL_NOISE`] = 1. Unlabelled.
//!
//! Sampling is seeded (ChaCha8 keyed by the seed, see [`crate::rng`]): the
//! train split is stream 0 and the held-out split stream 1 of the same key.

use std::f64::consts::PI;
use std::fmt;
use std::str::FromStr;
use std::sync::Arc;

use rand::Rng;
use rand_chacha::ChaCha8Rng;
use rand_distr::StandardNormal;
use serde::{Deserialize, Serialize};

use crate::dataset::PointSplit;
use crate::error::{DataError, Result};
use crate::rng::{self, Tag};

/// Radius of the 8-Gaussians circle before scaling.
pub const EIGHT_GAUSSIANS_RADIUS: f64 = 2.0;
/// Standard deviation of each of the 8 Gaussians before scaling.
pub const EIGHT_GAUSSIANS_STD: f64 = 0.02;
/// Noise standard deviation of two moons before scaling.
pub const TWO_MOONS_NOISE: f64 = 0.1;
/// Noise standard deviation of the Swiss roll before scaling.
pub const SWISS_ROLL_NOISE: f64 = 1.0;

/// A 2-D toy distribution.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum ToyKind {
    /// Eight Gaussians on a circle.
    EightGaussians,
    /// Two interleaved half circles.
    TwoMoons,
    /// Alternating squares of a 4x4 board.
    Checkerboard,
    /// A noisy spiral.
    SwissRoll,
}

impl ToyKind {
    /// Every toy distribution.
    pub const ALL: [ToyKind; 4] = [
        ToyKind::EightGaussians,
        ToyKind::TwoMoons,
        ToyKind::Checkerboard,
        ToyKind::SwissRoll,
    ];

    /// Kebab-case name, as in configs: `eight-gaussians`, `two-moons`,
    /// `checkerboard`, `swiss-roll`.
    pub fn name(&self) -> &'static str {
        match self {
            ToyKind::EightGaussians => "eight-gaussians",
            ToyKind::TwoMoons => "two-moons",
            ToyKind::Checkerboard => "checkerboard",
            ToyKind::SwissRoll => "swiss-roll",
        }
    }

    /// Number of classes of the labels: 8 (modes), 2 (moons), else 0.
    pub fn num_classes(&self) -> usize {
        match self {
            ToyKind::EightGaussians => 8,
            ToyKind::TwoMoons => 2,
            ToyKind::Checkerboard | ToyKind::SwissRoll => 0,
        }
    }

    /// Exact per-coordinate mean and standard deviation of the raw
    /// distribution, used to standardise it.
    pub fn raw_moments(&self) -> ([f64; 2], [f64; 2]) {
        match self {
            ToyKind::EightGaussians => {
                let s = (EIGHT_GAUSSIANS_RADIUS.powi(2) / 2.0 + EIGHT_GAUSSIANS_STD.powi(2)).sqrt();
                ([0.0, 0.0], [s, s])
            }
            ToyKind::TwoMoons => {
                let n2 = TWO_MOONS_NOISE.powi(2);
                // E[x] = 1/2, Var x = 3/4; E[y] = 1/4, Var y = 9/16 - 1/pi.
                (
                    [0.5, 0.25],
                    [(0.75 + n2).sqrt(), (0.5625 - 1.0 / PI + n2).sqrt()],
                )
            }
            ToyKind::Checkerboard => {
                // Both marginals are U[-2, 2): variance 16 / 12.
                let s = (4.0f64 / 3.0).sqrt();
                ([0.0, 0.0], [s, s])
            }
            ToyKind::SwissRoll => {
                let (a, b) = (1.5 * PI, 4.5 * PI);
                let len = b - a;
                // Antiderivatives of t cos t, t sin t, t^2 cos^2 t, t^2 sin^2 t.
                let f1 = |t: f64| t * t.sin() + t.cos();
                let g1 = |t: f64| -t * t.cos() + t.sin();
                let f2 = |t: f64| {
                    t.powi(3) / 6.0
                        + (t * t / 4.0 - 0.125) * (2.0 * t).sin()
                        + t * (2.0 * t).cos() / 4.0
                };
                let g2 = |t: f64| {
                    t.powi(3) / 6.0
                        - (t * t / 4.0 - 0.125) * (2.0 * t).sin()
                        - t * (2.0 * t).cos() / 4.0
                };
                let mx = (f1(b) - f1(a)) / len;
                let my = (g1(b) - g1(a)) / len;
                let vx = (f2(b) - f2(a)) / len - mx * mx + SWISS_ROLL_NOISE.powi(2);
                let vy = (g2(b) - g2(a)) / len - my * my + SWISS_ROLL_NOISE.powi(2);
                ([mx, my], [vx.sqrt(), vy.sqrt()])
            }
        }
    }

    /// One raw draw and its label (0 when unlabelled).
    fn draw(&self, rng: &mut ChaCha8Rng) -> ([f64; 2], i64) {
        match self {
            ToyKind::EightGaussians => {
                let k = rng::below(rng, 8);
                let angle = k as f64 * PI / 4.0;
                let nx: f64 = rng.sample(StandardNormal);
                let ny: f64 = rng.sample(StandardNormal);
                (
                    [
                        EIGHT_GAUSSIANS_RADIUS * angle.cos() + EIGHT_GAUSSIANS_STD * nx,
                        EIGHT_GAUSSIANS_RADIUS * angle.sin() + EIGHT_GAUSSIANS_STD * ny,
                    ],
                    k as i64,
                )
            }
            ToyKind::TwoMoons => {
                let moon = rng::below(rng, 2);
                let t = PI * rng::unit_f64(rng);
                let nx: f64 = rng.sample(StandardNormal);
                let ny: f64 = rng.sample(StandardNormal);
                let (x, y) = if moon == 0 {
                    (t.cos(), t.sin())
                } else {
                    (1.0 - t.cos(), 0.5 - t.sin())
                };
                (
                    [x + TWO_MOONS_NOISE * nx, y + TWO_MOONS_NOISE * ny],
                    moon as i64,
                )
            }
            ToyKind::Checkerboard => {
                let x = 4.0 * rng::unit_f64(rng) - 2.0;
                let row = rng::below(rng, 2) as f64;
                let column_parity = (x.floor() as i64).rem_euclid(2) as f64;
                let y = rng::unit_f64(rng) - 2.0 * row + column_parity;
                ([x, y], 0)
            }
            ToyKind::SwissRoll => {
                let t = 1.5 * PI * (1.0 + 2.0 * rng::unit_f64(rng));
                let nx: f64 = rng.sample(StandardNormal);
                let ny: f64 = rng.sample(StandardNormal);
                (
                    [
                        t * t.cos() + SWISS_ROLL_NOISE * nx,
                        t * t.sin() + SWISS_ROLL_NOISE * ny,
                    ],
                    0,
                )
            }
        }
    }

    /// `n` standardised points from stream `stream` of `seed` (stream 0 is
    /// what [`ToyDataset`] trains on, stream 1 its held-out split).
    pub fn sample(&self, n: usize, seed: u64, stream: u64) -> PointSplit {
        let mut rng = rng::chacha(seed, Tag::Toy, stream);
        let (mean, std) = self.raw_moments();
        let mut points = Vec::with_capacity(2 * n);
        let mut labels = Vec::with_capacity(if self.num_classes() > 0 { n } else { 0 });
        for _ in 0..n {
            let (p, label) = self.draw(&mut rng);
            points.push(((p[0] - mean[0]) / std[0]) as f32);
            points.push(((p[1] - mean[1]) / std[1]) as f32);
            if self.num_classes() > 0 {
                labels.push(label);
            }
        }
        let labels = (self.num_classes() > 0).then_some(labels);
        PointSplit::from_parts(points, labels)
    }
}

impl fmt::Display for ToyKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for ToyKind {
    type Err = DataError;
    fn from_str(s: &str) -> Result<Self> {
        let key = s.trim().to_ascii_lowercase().replace('_', "-");
        let key = match key.as_str() {
            "8gaussians" | "8-gaussians" => "eight-gaussians",
            "moons" => "two-moons",
            "swissroll" => "swiss-roll",
            other => other,
        };
        ToyKind::ALL
            .into_iter()
            .find(|k| k.name() == key)
            .ok_or_else(|| {
                DataError::invalid(
                    "toy distribution",
                    s,
                    "one of eight-gaussians, two-moons, checkerboard, swiss-roll",
                )
            })
    }
}

/// Centres of the 8 Gaussians after standardisation, mode `k` at angle
/// `k * pi / 4` (radius `2 / sqrt(2 + 0.02^2)`, about 1.414).
pub fn eight_gaussians_modes() -> [[f32; 2]; 8] {
    let (_, std) = ToyKind::EightGaussians.raw_moments();
    std::array::from_fn(|k| {
        let angle = k as f64 * PI / 4.0;
        [
            (EIGHT_GAUSSIANS_RADIUS * angle.cos() / std[0]) as f32,
            (EIGHT_GAUSSIANS_RADIUS * angle.sin() / std[1]) as f32,
        ]
    })
}

/// Standard deviation of each of the 8 Gaussians after standardisation
/// (about 0.0141).
pub fn eight_gaussians_mode_std() -> f64 {
    let (_, std) = ToyKind::EightGaussians.raw_moments();
    EIGHT_GAUSSIANS_STD / std[0]
}

/// Options of a toy data set.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ToyConfig {
    /// Which distribution.
    pub distribution: ToyKind,
    /// Training points (default 100,000).
    #[serde(default = "default_n_train")]
    pub n_train: usize,
    /// Held-out points (default 10,000).
    #[serde(default = "default_n_test")]
    pub n_test: usize,
    /// Seed of both splits (default 0).
    #[serde(default)]
    pub seed: u64,
}

fn default_n_train() -> usize {
    100_000
}

fn default_n_test() -> usize {
    10_000
}

impl ToyConfig {
    /// The default sizes for `distribution` and `seed`.
    pub fn new(distribution: ToyKind, seed: u64) -> Self {
        ToyConfig {
            distribution,
            n_train: default_n_train(),
            n_test: default_n_test(),
            seed,
        }
    }

    /// Checks the sizes: at least one training point, at most 100 M each.
    pub fn validate(&self) -> Result<()> {
        const MAX: usize = 100_000_000;
        if self.n_train == 0 || self.n_train > MAX {
            return Err(DataError::invalid(
                "toy.n_train",
                self.n_train,
                format!("1..={MAX}"),
            ));
        }
        if self.n_test > MAX {
            return Err(DataError::invalid(
                "toy.n_test",
                self.n_test,
                format!("0..={MAX}"),
            ));
        }
        Ok(())
    }
}

/// A 2-D toy data set: train and held-out points from two streams of one seed.
#[derive(Clone, Debug)]
pub struct ToyDataset {
    /// The distribution.
    pub kind: ToyKind,
    /// The seed both splits came from.
    pub seed: u64,
    /// Training points (stream 0).
    pub train: Arc<PointSplit>,
    /// Held-out points (stream 1).
    pub test: Arc<PointSplit>,
}

impl ToyDataset {
    /// Samples both splits as configured.
    pub fn generate(config: &ToyConfig) -> Result<Self> {
        config.validate()?;
        let kind = config.distribution;
        Ok(ToyDataset {
            kind,
            seed: config.seed,
            train: Arc::new(kind.sample(config.n_train, config.seed, 0)),
            test: Arc::new(kind.sample(config.n_test, config.seed, 1)),
        })
    }

    /// Number of label classes (see [`ToyKind::num_classes`]).
    pub fn num_classes(&self) -> usize {
        self.kind.num_classes()
    }
}
