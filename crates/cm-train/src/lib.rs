//! cm-train: the training loop shared by every objective, and the EDM
//! teacher objective.
//!
//! - [`trainer`]: [`train`] runs any [`Objective`] on batches from any
//!   [`BatchSource`]: Adam / RAdam with saved state ([`optim`]), warm-up,
//!   gradient clipping, EMA copies ([`ema`]), atomic checkpoints with
//!   retention, exact resume (libtorch's generator is reseeded from
//!   `(seed, step)` every step and batches are a pure function of the step),
//!   a stop flag for Ctrl-C that saves first, NaN detection, a metrics CSV,
//!   sample grids and a loss plot (drawn by cm-report).
//! - [`teacher`]: the EDM teacher pipeline ([`run_teacher`]) configured by
//!   [`TeacherConfig`] (`configs/teacher/*.toml`).
//! - [`edm`]: the EDM teacher (Karras et al. 2022): lognormal noise levels,
//!   `lambda`-weighted denoising loss, label dropout for classifier-free
//!   guidance.
//!
//! - [`ct`]: consistency training (CT, Algorithm 3) and, through the recipe's
//!   switches, iCT; [`ConsistencyCore`] is what CT and consistency
//!   distillation (cm-distill) share. All run on this loop.
//! - [`ct_pipeline`]: the CT / iCT pipeline ([`run_ct`]) configured by
//!   [`CtRunConfig`] (`configs/ct/*.toml`), and the CT-to-iCT ablation.

pub mod ct;
pub mod ct_pipeline;
pub mod edm;
pub mod ema;
pub mod error;
pub mod objective;
pub mod optim;
pub mod teacher;
pub mod trainer;

pub use ct::{ConsistencyCore, CtObjective};
pub use ct_pipeline::{ict_ablation, run_ct, CtConfig, CtOutcome, CtRunConfig};
pub use edm::{EdmObjective, EdmObjectiveConfig};
pub use ema::{ema_update, Ema};
pub use error::{Result, TrainError};
pub use objective::{Batch, BatchSource, Objective, TensorSource};
pub use optim::{Optimizer, OptimizerConfig, OptimizerKind};
pub use teacher::{run_teacher, LoaderOptions, LoaderSource, TeacherConfig};
pub use trainer::{
    latest_checkpoint, mix_seed, train, Observer, Quiet, StepInfo, TrainConfig, TrainOutcome,
};
