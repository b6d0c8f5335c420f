//! Exponential moving averages of network weights, under no-grad:
//! `ema <- rate ema + (1 - rate) online` after every optimizer step, with an
//! optional warm-up `rate_k = min(rate, (1 + k) / (10 + k))` so that early
//! averages do not cling to the (zero-initialised) starting weights. Used for
//! the evaluation EMA of every objective and the target network of CD / CT.

use cm_nets::Model;

/// Blends `target <- rate target + (1 - rate) source`, parameter by
/// parameter (the two models must share an architecture). `rate = 0`
/// copies.
pub fn ema_update(target: &Model, source: &Model, rate: f64) {
    let _guard = tch::no_grad_guard();
    let src = source.var_store().variables();
    for (name, mut t) in target.var_store().variables() {
        let s = &src[&name];
        if rate == 0.0 {
            t.copy_(s);
        } else {
            // t + (1 - rate)(s - t) = rate t + (1 - rate) s, in place.
            let _ = t.lerp_(s, 1.0 - rate);
        }
    }
}

/// The warmed-up rate at step `k` (0-based): `min(rate, (1 + k) / (10 + k))`.
pub fn warmed_rate(rate: f64, step: u64) -> f64 {
    rate.min((1.0 + step as f64) / (10.0 + step as f64))
}

/// A weight average kept beside the online network.
#[derive(Debug)]
pub struct Ema {
    /// The nominal rate.
    pub rate: f64,
    /// Whether the warm-up applies.
    pub warmup: bool,
    /// The averaged network.
    pub model: Model,
}

impl Ema {
    /// Folds the online weights into the average after step `k`.
    pub fn update(&self, online: &Model, step: u64) {
        let rate = if self.warmup {
            warmed_rate(self.rate, step)
        } else {
            self.rate
        };
        ema_update(&self.model, online, rate);
    }

    /// The checkpoint file stem, e.g. `ema_0.9999`.
    pub fn name(&self) -> String {
        Ema::file_stem(self.rate)
    }

    /// The checkpoint file stem of the EMA of `rate`: `ema_RATE`.
    pub fn file_stem(rate: f64) -> String {
        format!("ema_{rate}")
    }
}

/// Largest absolute difference between two models' weights (for tests and
/// diagnostics).
pub fn max_weight_difference(a: &Model, b: &Model) -> f64 {
    let vb = b.var_store().variables();
    a.var_store()
        .variables()
        .iter()
        .map(|(n, t)| (t - &vb[n]).abs().max().double_value(&[]))
        .fold(0.0, f64::max)
}
