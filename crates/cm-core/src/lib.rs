//! cm-core: the mathematics shared by every cm-rs objective and sampler, on
//! `tch` tensors.
//!
//! - [`precond`]: EDM preconditioning (Karras et al. 2022, Table 1) and the
//!   consistency-model boundary scalings (Song et al. 2023, Eq. 6), behind
//!   [`Parameterization`].
//! - [`sigmas`]: Karras noise grids, descending for sampling and ascending
//!   `t_1..t_N` for consistency training.
//! - [`schedule`]: `N(k)` and `mu(k)` over training, behind
//!   [`DiscretizationSchedule`]: fixed, CT adaptive, iCT exponential.
//! - [`noise`]: which noise levels a loss is evaluated at, behind
//!   [`IndexSampler`]: uniform pairs, iCT lognormal pairs, EDM lognormal sigma.
//! - [`ect`]: ECT's continuous pairs: the `t -> r` mapping
//!   ([`EctMapping`]), its stage schedule ([`EctStages`]) and the truncated
//!   lognormal `t` ([`TruncatedLognormal`]).
//! - [`cond`]: what an evaluation is conditioned on ([`Conditioning`]:
//!   class labels, a guidance scale); [`guidance`]: classifier-free
//!   guidance as a denoiser wrapper ([`ClassifierFreeGuidance`]).
//! - [`ode`]: the PF-ODE of a [`Denoiser`] and its one-step solvers
//!   (Euler, Heun) behind [`OdeSolver`].
//! - [`weighting`]: `lambda(t_n)`, behind [`LossWeighting`].
//! - [`metric`]: `d(x, y)`, behind [`DistanceMetric`]: squared L2, L1,
//!   pseudo-Huber, and any learned feature-space metric.
//! - [`seed`]: SplitMix64 seed mixing ([`mix_seed`], [`SplitMix64`]) and
//!   FNV-1a ([`fnv1a64`]), shared by every crate that keys random streams or
//!   names caches.
//! - [`config`]: serde configs with the papers' defaults, validated on load.
//!
//! Noise levels that vary per example are `[B]` tensors; grid values and
//! hyper-parameters are `f64`.

pub mod cond;
pub mod config;
pub mod ect;
pub mod error;
pub mod guidance;
pub mod metric;
pub mod noise;
pub mod ode;
pub mod precond;
pub mod schedule;
pub mod seed;
pub mod sigmas;
pub mod weighting;

pub use cond::Conditioning;
pub use config::{
    load_diffusers_json, load_toml, parse_diffusers_json, parse_toml, read_bounded,
    read_bounded_text, same_file, ConsistencyConfig, ConsistencyRecipe, EdmConfig,
    IndexSamplerConfig, ScheduleConfig, Validate, MAX_CONFIG_BYTES, MAX_METRICS_BYTES,
};
pub use ect::{EctMapping, EctStages, TruncatedLognormal, MAX_ECT_STAGE, MIN_DECAY};
pub use error::{CoreError, Result};
pub use guidance::{
    check_guidance_scale, ClassifierFreeGuidance, PerExampleGuidance, MAX_GUIDANCE, MIN_GUIDANCE,
};
pub use metric::{DistanceMetric, MetricConfig, PseudoHuber, SquaredL2, L1};
pub use noise::{
    skipping_probabilities, IndexSampler, LognormalIndex, LognormalSigma, UniformIndex,
};
pub use ode::{euler_to_denoiser, ode_derivative, Denoiser, OdeSolver, Solver};
pub use precond::{
    append_dims, ConsistencyParameterization, EdmPreconditioning, NoiseConditioning,
    Parameterization, Scalings,
};
pub use schedule::{
    CtAdaptiveSchedule, Discretization, DiscretizationSchedule, FixedSchedule,
    IctExponentialSchedule,
};
pub use seed::{fnv1a64, mix_seed, splitmix64, SplitMix64};
pub use sigmas::{
    adjacent_pairs, check_sigma, grid_tensor, lcm_times, skipping_pairs, KarrasGrid, NoiseRange,
    MAX_GRID_POINTS, MAX_SIGMA, MIN_SIGMA,
};
pub use weighting::{BoundWeighting, LossWeighting, Weighting};
