//! LCD's skipping-step pairs as the objective draws them (LCM Algorithm 1
//! with iCT's lognormal over the pairs): every pair is `k` points apart on
//! the step's grid, and the pairs' frequencies over many draws match the
//! lognormal mass each pair spans, `Phi(z(t_(n+k))) - Phi(z(t_n))`
//! normalised, computed here by Simpson integration of the normal density
//! (independent of cm-core's erf form); LCM's uniform draw stays uniform
//! over the `N - k` pairs.

use cm_core::{
    IctExponentialSchedule, IndexSamplerConfig, LognormalIndex, ScheduleConfig, Validate,
};
use cm_distill::{LcdObjective, LcdRunConfig};
use cm_nets::Model;
use tch::{Device, Kind, Tensor};

const DRAWS: i64 = 200_000;

fn toy_config() -> LcdRunConfig {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../configs/lcd/toy.toml");
    cm_core::load_toml(path).unwrap()
}

/// The standard normal CDF by composite Simpson over [-12, x] (1e-10 here).
fn normal_cdf(x: f64) -> f64 {
    let a = -12.0;
    if x <= a {
        return 0.0;
    }
    let n = 4000;
    let h = (x - a) / n as f64;
    let pdf = |u: f64| (-0.5 * u * u).exp() / (2.0 * std::f64::consts::PI).sqrt();
    let mut sum = pdf(a) + pdf(x);
    for i in 1..n {
        sum += pdf(a + i as f64 * h) * if i % 2 == 1 { 4.0 } else { 2.0 };
    }
    sum * h / 3.0
}

/// An objective on the toy teacher with `noise`, skipping step `k`, and
/// iCT's doubling grid 11 -> 321 over 2,000 steps; the student is the
/// teacher's network (no w-embedding, so one fixed `w`).
fn objective(noise: IndexSamplerConfig, k: usize) -> (LcdObjective, LcdRunConfig) {
    let mut config = toy_config();
    config.lcd.skip = k;
    config.lcd.recipe.schedule = ScheduleConfig::IctExponential(IctExponentialSchedule {
        s0: 10,
        s1: 320,
        total_steps: 2000,
    });
    config.train.steps = 2000;
    config.lcd.recipe.noise = noise;
    (config.lcd.w_min, config.lcd.w_max) = (config.lcd.guidance, config.lcd.guidance);
    config.validate().unwrap();
    let teacher = Model::new(config.teacher.net.clone(), Device::Cpu).unwrap();
    let student = Model::new(config.teacher.net.clone(), Device::Cpu).unwrap();
    let metric = config
        .lcd
        .recipe
        .metric
        .build(2, "lcd.recipe.metric.")
        .unwrap();
    let objective = LcdObjective::new(
        config.lcd,
        teacher,
        config.teacher.edm.edm,
        &student,
        metric,
    )
    .unwrap();
    (objective, config)
}

/// Draws `DRAWS` pairs at `step`; checks each is `k` apart on the step's
/// grid and returns the grid and the frequency of each `n` in `0..N-k`.
fn frequencies(
    objective: &mut LcdObjective,
    config: &LcdRunConfig,
    step: u64,
) -> (Vec<f64>, Vec<f64>) {
    let n = cm_core::DiscretizationSchedule::at(&config.lcd.recipe.schedule, step).n;
    let grid = config
        .lcd
        .recipe
        .consistency
        .grid()
        .training_sigmas(n)
        .unwrap();
    let k = config.lcd.skip;
    let (t_n, t_next) = objective.draw_pairs(DRAWS, step, Device::Cpu).unwrap();
    assert_eq!((t_n.size(), t_next.size()), (vec![DRAWS], vec![DRAWS]));
    let grid32 = Tensor::from_slice(&grid).to_kind(Kind::Float);
    // The index of each t_n on the grid (exact: both are the grid's f32 values).
    let index = t_n
        .unsqueeze(1)
        .eq_tensor(&grid32.unsqueeze(0))
        .to_kind(Kind::Int64)
        .argmax(1, false);
    let on_grid = t_n.eq_tensor(&grid32.index_select(0, &index));
    assert!(bool::try_from(on_grid.all()).unwrap(), "t_n off the grid");
    let want_next = grid32.index_select(0, &(&index + k as i64).clamp_max(n as i64 - 1));
    assert!(
        bool::try_from(t_next.eq_tensor(&want_next).all()).unwrap(),
        "t_(n+k) is not k = {k} points above t_n"
    );
    assert!(
        i64::try_from(index.max()).unwrap() < (n - k) as i64,
        "n beyond N - k - 1"
    );
    let counts = Vec::<i64>::try_from(index.bincount::<Tensor>(None, (n - k) as i64)).unwrap();
    assert_eq!(counts.len(), n - k);
    let freq = counts.iter().map(|&c| c as f64 / DRAWS as f64).collect();
    (grid, freq)
}

/// `|f - p| <= 5 sigma` of a binomial frequency, plus a floor for tiny p.
fn assert_close(freq: &[f64], p: &[f64], what: &str) {
    assert_eq!(freq.len(), p.len(), "{what}");
    for (n, (&f, &q)) in freq.iter().zip(p).enumerate() {
        let tol = 5.0 * (q * (1.0 - q) / DRAWS as f64).sqrt() + 2e-5;
        assert!(
            (f - q).abs() <= tol,
            "{what}: pair {n}: frequency {f:.5} vs mass {q:.5}"
        );
    }
}

#[test]
fn lognormal_skipping_pairs_take_the_mass_they_span() {
    let _rng = cm_runtime::lock_global_rng();
    tch::manual_seed(7);
    let (p_mean, p_std) = (-0.4, 2.0);
    let noise = IndexSamplerConfig::Lognormal(LognormalIndex { p_mean, p_std });
    for k in [1, 2, 3] {
        let (mut objective, config) = objective(noise, k);
        // The first grid (N = 11), a middle one and the last (N = 321).
        for step in [0, 1000, 1999] {
            let (grid, freq) = frequencies(&mut objective, &config, step);
            let phi = |t: f64| normal_cdf((t.ln() - p_mean) / p_std);
            let mass: Vec<f64> = (0..grid.len() - k)
                .map(|n| phi(grid[n + k]) - phi(grid[n]))
                .collect();
            let total: f64 = mass.iter().sum();
            let p: Vec<f64> = mass.iter().map(|m| m / total).collect();
            assert_close(
                &freq,
                &p,
                &format!("k = {k}, step {step}, N = {}", grid.len()),
            );
        }
    }
}

#[test]
fn uniform_skipping_pairs_stay_uniform_over_the_n_minus_k_pairs() {
    let _rng = cm_runtime::lock_global_rng();
    tch::manual_seed(8);
    let (mut objective, config) = objective(IndexSamplerConfig::Uniform(Default::default()), 2);
    for step in [0, 1999] {
        let (grid, freq) = frequencies(&mut objective, &config, step);
        let p = vec![1.0 / (grid.len() - 2) as f64; grid.len() - 2];
        assert_close(&freq, &p, &format!("uniform, step {step}"));
    }
}
