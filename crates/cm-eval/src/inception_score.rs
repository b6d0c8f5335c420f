//! The Inception Score (Salimans et al. 2016, "Improved techniques for
//! training GANs", Sec. 4): `exp( E_x KL( p(y|x) || p(y) ) )`, computed in
//! `splits` equal parts (the reference code uses 10) and reported as mean
//! and standard deviation over the parts. Here `p(y|x)` is the softmax of
//! the project's own classifier, so the value is "IS-like": it lies in
//! `[1, number of classes]` and is comparable only within one classifier.

use tch::{Kind, Tensor};

use crate::error::{EvalError, Result};

/// IS-like score: mean and standard deviation over splits.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct InceptionScore {
    /// Mean over splits.
    pub mean: f64,
    /// Standard deviation over splits (0 for one split).
    pub std: f64,
}

/// The score of classifier `logits` `[N, K]` in `splits` parts (the last
/// part takes the remainder).
pub fn inception_score(logits: &Tensor, splits: usize) -> Result<InceptionScore> {
    let size = logits.size();
    if size.len() != 2 || splits == 0 || size[0] < splits as i64 || size[1] < 2 {
        return Err(EvalError::InvalidInput(format!(
            "inception score of logits {size:?} in {splits} splits: expected [N, K] with N >= splits >= 1, K >= 2"
        )));
    }
    let _guard = tch::no_grad_guard();
    let log_p = logits.to_kind(Kind::Double).log_softmax(1, Kind::Double);
    let n = size[0];
    let per = n / splits as i64;
    let mut scores = Vec::with_capacity(splits);
    for s in 0..splits as i64 {
        let len = if s == splits as i64 - 1 {
            n - s * per
        } else {
            per
        };
        let lp = log_p.narrow(0, s * per, len);
        let p = lp.exp();
        let log_marginal = p.mean_dim(0, true, Kind::Double).log();
        let kl = (&p * (&lp - log_marginal)).sum_dim_intlist(1, false, Kind::Double);
        scores.push(kl.mean(Kind::Double).double_value(&[]).exp());
    }
    let mean = scores.iter().sum::<f64>() / scores.len() as f64;
    let std = (scores.iter().map(|v| (v - mean).powi(2)).sum::<f64>() / scores.len() as f64).sqrt();
    Ok(InceptionScore { mean, std })
}
