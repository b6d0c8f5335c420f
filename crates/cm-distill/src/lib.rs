//! cm-distill: the objectives that learn from a teacher: consistency
//! distillation (CD, Song et al. 2023, Algorithm 2) and progressive
//! distillation (PD, Salimans & Ho 2022), the papers' baseline.
//!
//! - [`cd`]: the CD objective on cm-train's shared loop: one teacher PF-ODE
//!   step (Euler or Heun, `cm_core::Solver`) from `t_{n+1}` to `t_n`, an EMA
//!   target network (`mu` from the discretization schedule, `mu = 0`
//!   allowed), the distance metric and weighting from cm-core; the teacher
//!   frozen and run without autograd; the student initialised from the
//!   teacher.
//! - [`pipeline`]: `run_cd`, the `cargo xtask train-cd` pipeline: teacher
//!   (trained or reused), then CD as a method on cm-train's run skeleton
//!   ([`CdMethod`]): side-by-side sample grids, a report and a model card.
//! - [`lcd`]: latent consistency distillation (LCM Algorithm 1): CD from a
//!   classifier-free-guided teacher with per-example `w`, a skipping step
//!   `k`, and a student that embeds `w`.
//! - [`lcm_pipeline`]: `run_lcd`, the LCD stage of `cargo xtask train-lcm`
//!   on the run skeleton (in the teacher's latent space).
//! - [`pd`]: the PD objective: one student Euler step on the nested grid
//!   matches two teacher steps, as a denoiser target.
//! - [`pd_pipeline`]: `run_pd`, the `cargo xtask train-pd` pipeline: the
//!   teacher, then one stage per halving of the step count, each on the run
//!   skeleton with its own report and model card.

pub mod cd;
pub mod lcd;
pub mod lcm_pipeline;
pub mod pd;
pub mod pd_pipeline;
pub mod pipeline;

pub use cd::{CdConfig, CdObjective, CdPairs, EctPairs, GridPairs};
pub use lcd::{swap_labels, GuidanceSampler, LcdConfig, LcdObjective, LcdTarget};
pub use lcm_pipeline::{
    autoencoder_dir, run_lcd, run_lcm, LcdMethod, LcdOutcome, LcdRunConfig, LcmOutcome,
    LcmRunConfig,
};
pub use pd::{pd_sampler, pd_target, PdConfig, PdObjective, MAX_PD_STEPS};
pub use pd_pipeline::{run_pd, stage_dir, PdOutcome, PdRunConfig, PdStage, PdStageMethod};
pub use pipeline::{run_cd, teacher_dir, CdMethod, CdOutcome, CdRunConfig};
