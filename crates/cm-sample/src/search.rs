//! The search for the intermediate times of few-step consistency sampling.
//!
//! CM (Song et al. 2023, Section 6 and Appendix C) picks the times of 2- and
//! 3-step sampling by minimising FID: a ternary search for `tau_1` of
//! 2-step sampling, then, greedily, `tau_2` of 3-step sampling with `tau_1`
//! fixed. Here the search is a golden-section search (the ternary search
//! that reuses one of its two probes each round) over `ln tau`, since good
//! times span decades (0.8 for Fashion-MNIST-sized models, 0.661 and 1.2
//! ... in the paper's runs). The metric is any closure: the CLI passes FID
//! in the project's feature space on a fixed set of seeds (common random
//! numbers, so the differences between probes are not swamped by sampling
//! noise), tests pass closed forms.

use cm_core::{CoreError, NoiseRange};

/// Settings of the search.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct SearchConfig {
    /// Golden-section rounds per searched time; each round shrinks the
    /// bracket (in `ln tau`) by 0.618 and costs one metric evaluation.
    pub rounds: usize,
    /// Lower end of the bracket (must exceed `sigma_min`).
    pub lower: f64,
    /// Upper end of the bracket (must be below `sigma_max`).
    pub upper: f64,
    /// Where each further time may go. `false` (CM): below the previous
    /// one, the earlier times fixed. `true`: into any gap of the times
    /// found so far (above the first, between two, below the last), each
    /// gap searched and the best kept; CM's order is one of the gaps, so
    /// at each step, given the same earlier times, it scores no worse than
    /// CM's (later steps then follow their own greedy path). Good
    /// 4-step times need not nest the 2- and 3-step ones from the top: an
    /// LCM's 3-step times `[1.27, 0.74]` gain most from a time above them
    /// (docs/lcm.md).
    pub insert: bool,
}

impl SearchConfig {
    /// The bracket `[max(2 sigma_min, 0.01), sigma_max / 2]` with 10 rounds
    /// (bracket shrunk ~123x in `ln tau`: from [0.01, 40] to within 7% of
    /// the optimum's time).
    pub fn for_range(range: NoiseRange) -> Self {
        SearchConfig {
            rounds: 10,
            lower: (2.0 * range.sigma_min).max(0.01),
            upper: range.sigma_max / 2.0,
            insert: false,
        }
    }
}

impl SearchConfig {
    /// Checks `sigma_min < lower < upper < sigma_max`; `field` names the
    /// bracket in the error.
    pub fn check_bracket(&self, range: NoiseRange, field: &str) -> Result<(), CoreError> {
        let NoiseRange {
            sigma_min,
            sigma_max,
        } = range;
        if self.lower > sigma_min && self.lower < self.upper && self.upper < sigma_max {
            return Ok(());
        }
        Err(CoreError::invalid(
            field,
            format!("[{}, {}]", self.lower, self.upper),
            format!("sigma_min = {sigma_min} < lower < upper < sigma_max = {sigma_max}"),
        ))
    }
}

/// One evaluated candidate: the intermediate times and the metric there.
#[derive(Clone, Debug, PartialEq)]
pub struct Probe {
    /// `tau_1 > ... > tau_{k-1}`.
    pub taus: Vec<f64>,
    /// The metric (lower is better).
    pub score: f64,
}

/// What the search found.
#[derive(Clone, Debug, PartialEq)]
pub struct SearchResult {
    /// The best times found for each step count searched, keyed by `k`
    /// (`2 -> [tau_1]`, `3 -> [tau_1, tau_2]`, ...), with their score.
    pub best: Vec<(usize, Probe)>,
    /// Every evaluation in order, for a plot or a table.
    pub probes: Vec<Probe>,
}

/// Greedy search of the times of 2-, ..., `max_steps`-step sampling
/// (CM Section 6): `tau_1` for 2 steps over the bracket, then each further
/// time over `(lower, previous tau)` with the earlier ones fixed, or, with
/// [`SearchConfig::insert`], over every gap of the times found so far.
/// `metric` gets the full list of intermediate times (decreasing) and
/// returns a score to minimise (an error stops the search).
pub fn search_timesteps<E: From<CoreError>>(
    max_steps: usize,
    range: NoiseRange,
    config: &SearchConfig,
    metric: &mut dyn FnMut(&[f64]) -> Result<f64, E>,
) -> Result<SearchResult, E> {
    if max_steps < 2 {
        return Err(CoreError::invalid(
            "steps",
            max_steps,
            "at least 2 (1-step sampling has no times)",
        )
        .into());
    }
    range.validate()?;
    config.check_bracket(range, "search bracket")?;
    if config.rounds == 0 {
        return Err(CoreError::invalid("rounds", 0, "at least 1").into());
    }
    // Decreasing: tau_1 > tau_2 > ...
    let mut fixed: Vec<f64> = Vec::new();
    let mut probes = Vec::new();
    let mut best = Vec::new();
    for steps in 2..=max_steps {
        // The gaps (hi, lo) a new time may go into, as the index it takes.
        let mut bounds = vec![config.upper];
        bounds.extend(&fixed);
        bounds.push(config.lower);
        let gaps: Vec<usize> = if config.insert {
            (0..=fixed.len()).collect()
        } else {
            vec![fixed.len()]
        };
        let open: Vec<usize> = gaps
            .into_iter()
            .filter(|&i| bounds[i] > bounds[i + 1] * 1.0001)
            .collect();
        if open.is_empty() {
            return Err(CoreError::invalid(
                "steps",
                max_steps,
                format!(
                    "at most {} here: the times {fixed:?} leave no room in [{}, {}]",
                    steps - 1,
                    config.lower,
                    config.upper
                ),
            )
            .into());
        }
        let mut found: Option<(Vec<f64>, f64)> = None;
        for at in open {
            let with = |tau: f64| {
                let mut taus = fixed.clone();
                taus.insert(at, tau);
                taus
            };
            let (u, score) = golden_section(
                bounds[at + 1].ln(),
                bounds[at].ln(),
                config.rounds,
                &mut |u| -> Result<f64, E> {
                    let taus = with(u.exp());
                    let score = metric(&taus)?;
                    probes.push(Probe { taus, score });
                    Ok(score)
                },
            )?;
            if found.as_ref().map_or(true, |(_, s)| score < *s) {
                found = Some((with(u.exp()), score));
            }
        }
        let (taus, score) = found.expect("at least one gap was searched");
        fixed = taus;
        best.push((
            steps,
            Probe {
                taus: fixed.clone(),
                score,
            },
        ));
    }
    Ok(SearchResult { best, probes })
}

/// What [`search_start`] found: the best 1-step start time and its score,
/// and every probe `(T, score)` in order (`sigma_max` first).
#[derive(Clone, Debug, PartialEq)]
pub struct StartSearch {
    /// The best start time found.
    pub start: f64,
    /// The metric there.
    pub score: f64,
    /// Every evaluation in order.
    pub probes: Vec<(f64, f64)>,
}

/// Checks the lower end of the start-time search, `field` in the error:
/// inside `(sigma_min, sigma_max)`.
pub fn check_start_lower(lower: f64, range: NoiseRange, field: &str) -> Result<(), CoreError> {
    if lower > range.sigma_min && lower < range.sigma_max {
        return Ok(());
    }
    Err(CoreError::invalid(
        field,
        lower,
        format!(
            "a time in (sigma_min, sigma_max) = ({}, {})",
            range.sigma_min, range.sigma_max
        ),
    ))
}

/// Search of the 1-step start time `T`: where 1-step sampling `f(T z, T)`
/// begins. CM starts at `sigma_max`, where `N(0, T^2 I)` is the noisy
/// marginal to within `sigma_data^2 / (2 T^2)` of its standard deviation; a somewhat
/// smaller `T` keeps that approximation (8e-5 at T = 40 for `sigma_data` =
/// 0.5) and can meet a network trained better there (consistency training
/// and distillation draw times near `sigma_max` rarely). `sigma_max` is
/// probed first and kept unless a golden-section search over `ln T` in
/// `[lower, sigma_max]` (`rounds` evaluations after its first two) finds a
/// strictly better time.
pub fn search_start<E: From<CoreError>>(
    range: NoiseRange,
    lower: f64,
    rounds: usize,
    metric: &mut dyn FnMut(f64) -> Result<f64, E>,
) -> Result<StartSearch, E> {
    range.validate()?;
    check_start_lower(lower, range, "start_lower")?;
    if rounds == 0 {
        return Err(CoreError::invalid("rounds", 0, "at least 1").into());
    }
    let mut probes = vec![(range.sigma_max, metric(range.sigma_max)?)];
    let (u, score) = golden_section::<E>(lower.ln(), range.sigma_max.ln(), rounds, &mut |u| {
        let score = metric(u.exp())?;
        probes.push((u.exp(), score));
        Ok(score)
    })?;
    let (start, score) = if score < probes[0].1 {
        (u.exp(), score)
    } else {
        probes[0]
    };
    Ok(StartSearch {
        start,
        score,
        probes,
    })
}

/// Golden-section search for a minimum of `g` on `[a, b]`: `rounds`
/// evaluations after the first two, returning the best point evaluated and
/// its value (a unimodal `g` has its minimum within the last bracket).
fn golden_section<E>(
    mut a: f64,
    mut b: f64,
    rounds: usize,
    g: &mut dyn FnMut(f64) -> Result<f64, E>,
) -> Result<(f64, f64), E> {
    let inv_phi = (5f64.sqrt() - 1.0) / 2.0;
    let mut c = b - inv_phi * (b - a);
    let mut d = a + inv_phi * (b - a);
    let (mut gc, mut gd) = (g(c)?, g(d)?);
    let mut best = if gc <= gd { (c, gc) } else { (d, gd) };
    for _ in 0..rounds {
        if gc <= gd {
            b = d;
            (d, gd) = (c, gc);
            c = b - inv_phi * (b - a);
            gc = g(c)?;
            if gc < best.1 {
                best = (c, gc);
            }
        } else {
            a = c;
            (c, gc) = (d, gd);
            d = a + inv_phi * (b - a);
            gd = g(d)?;
            if gd < best.1 {
                best = (d, gd);
            }
        }
    }
    Ok(best)
}
