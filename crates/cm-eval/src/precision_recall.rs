//! Improved precision and recall (Kynkäänniemi et al. 2019, "Improved
//! precision and recall metric for assessing generative models", Eqs. 1-2).
//!
//! Each feature set approximates its manifold by the union of balls around
//! its points, the radius of a point's ball being the distance to its k-th
//! nearest neighbour in the same set (the paper uses k = 3):
//! `f(phi, Phi) = 1` if `|phi - phi'| <= |phi' - NN_k(phi')|` for some
//! `phi'` in `Phi`. Precision is the fraction of generated features inside
//! the real manifold, recall the fraction of real features inside the
//! generated one. Use sets of equal size: the radii shrink as a set grows.

use tch::{Kind, Tensor};

use crate::error::{EvalError, Result};

/// The paper's neighbourhood size.
pub const DEFAULT_K: usize = 3;

/// Rows per chunk of the pairwise-distance computations.
const CHUNK: i64 = 1024;

/// Precision and recall, each in [0, 1].
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct PrecisionRecall {
    /// Fraction of generated samples within the real manifold.
    pub precision: f64,
    /// Fraction of real samples within the generated manifold.
    pub recall: f64,
}

/// For each row of `x` `[N, D]`, the Euclidean distance to its k-th nearest
/// other row (the (k+1)-th smallest distance, counting itself at 0), float64.
pub fn knn_radii(x: &Tensor, k: usize) -> Result<Tensor> {
    let n = x.size()[0];
    if x.dim() != 2 || k == 0 || (k as i64) >= n {
        return Err(EvalError::InvalidInput(format!(
            "k-NN radii need [N, D] features with N > k = {k}, found {:?}",
            x.size()
        )));
    }
    let _guard = tch::no_grad_guard();
    let x = x.to_kind(Kind::Double);
    let mut parts = Vec::new();
    let mut start = 0;
    while start < n {
        let len = CHUNK.min(n - start);
        let d = Tensor::cdist(&x.narrow(0, start, len), &x, 2.0, None::<i64>);
        let (vals, _) = d.topk(k as i64 + 1, 1, false, true);
        parts.push(vals.select(1, k as i64));
        start += len;
    }
    Ok(Tensor::cat(&parts, 0))
}

/// Fraction of `queries` `[Q, D]` inside at least one ball of `support`
/// `[S, D]` with `radii` `[S]` (boundary included).
pub fn manifold_coverage(queries: &Tensor, support: &Tensor, radii: &Tensor) -> Result<f64> {
    let (q, s) = (queries.size(), support.size());
    if q.len() != 2 || s.len() != 2 || q[1] != s[1] || radii.size() != [s[0]] || q[0] == 0 {
        return Err(EvalError::InvalidInput(format!(
            "manifold coverage of queries {q:?} by support {s:?} with radii {:?}",
            radii.size()
        )));
    }
    let _guard = tch::no_grad_guard();
    let (queries, support) = (queries.to_kind(Kind::Double), support.to_kind(Kind::Double));
    let radii = radii.to_kind(Kind::Double).unsqueeze(0);
    let mut inside = 0i64;
    let mut start = 0;
    while start < q[0] {
        let len = CHUNK.min(q[0] - start);
        let d = Tensor::cdist(&queries.narrow(0, start, len), &support, 2.0, None::<i64>);
        inside += d
            .le_tensor(&radii)
            .any_dim(1, false)
            .sum(Kind::Int64)
            .int64_value(&[]);
        start += len;
    }
    Ok(inside as f64 / q[0] as f64)
}

/// Precision and recall of `fake` against `real` with k-NN balls.
pub fn precision_recall(real: &Tensor, fake: &Tensor, k: usize) -> Result<PrecisionRecall> {
    let real_radii = knn_radii(real, k)?;
    let fake_radii = knn_radii(fake, k)?;
    Ok(PrecisionRecall {
        precision: manifold_coverage(fake, real, &real_radii)?,
        recall: manifold_coverage(real, fake, &fake_radii)?,
    })
}
