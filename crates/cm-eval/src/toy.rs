//! Distances between two sets of 2-D points, computed exactly on the
//! samples: the sliced 2-Wasserstein distance over evenly spaced directions
//! (Rabin et al. 2011), the energy distance (Székely & Rizzo 2013), and mode
//! coverage for mixtures with known centres.

use tch::{Kind, Tensor};

/// Sliced 2-Wasserstein distance between `a` and `b` (`[N, D]` each, same
/// N): the root mean, over `directions` unit vectors, of the squared
/// 1-D Wasserstein-2 distance of the projections (sorted-sample matching).
/// In 2-D the directions are evenly spaced angles in [0, π), so the value is
/// deterministic. Returns `None` if the shapes differ or are not 2-D.
pub fn sliced_wasserstein(a: &Tensor, b: &Tensor, directions: usize) -> Option<f64> {
    if a.size() != b.size() || a.dim() != 2 || a.size()[1] != 2 || directions == 0 {
        return None;
    }
    let angles = Tensor::arange(directions as i64, (Kind::Double, a.device()))
        * (std::f64::consts::PI / directions as f64);
    let dirs = Tensor::stack(&[angles.cos(), angles.sin()], 0); // [2, P]
    let pa = a.to_kind(Kind::Double).matmul(&dirs).sort(0, false).0;
    let pb = b.to_kind(Kind::Double).matmul(&dirs).sort(0, false).0;
    Some(
        (pa - pb)
            .square()
            .mean(Kind::Double)
            .double_value(&[])
            .sqrt(),
    )
}

/// The energy distance `2 E|X - Y| - E|X - X'| - E|Y - Y'|` between the
/// empirical distributions of `a` `[N, D]` and `b` `[M, D]` (V-statistics,
/// all pairs), which is zero only for equal distributions.
pub fn energy_distance(a: &Tensor, b: &Tensor) -> f64 {
    let (a, b) = (a.to_kind(Kind::Double), b.to_kind(Kind::Double));
    let mean_dist = |x: &Tensor, y: &Tensor| {
        Tensor::cdist(x, y, 2.0, None::<i64>)
            .mean(Kind::Double)
            .double_value(&[])
    };
    2.0 * mean_dist(&a, &b) - mean_dist(&a, &a) - mean_dist(&b, &b)
}

/// For each of `centers` (`[K, D]`), whether at least `min_count` samples lie
/// within `radius` of it; returns the number of covered modes and the
/// fraction of samples within `radius` of some centre.
pub fn mode_coverage(
    samples: &Tensor,
    centers: &Tensor,
    radius: f64,
    min_count: i64,
) -> (usize, f64) {
    let d = Tensor::cdist(
        &samples.to_kind(Kind::Double),
        &centers.to_kind(Kind::Double),
        2.0,
        None::<i64>,
    );
    let near = d.le(radius);
    let per_mode = near.sum_dim_intlist(0, false, Kind::Int64);
    let covered = per_mode.ge(min_count).sum(Kind::Int64).int64_value(&[]) as usize;
    let in_any = near
        .any_dim(1, false)
        .to_kind(Kind::Double)
        .mean(Kind::Double)
        .double_value(&[]);
    (covered, in_any)
}
