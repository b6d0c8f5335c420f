//! cm-distill: the objectives that learn from a teacher. Today consistency
//! distillation (CD, Song et al. 2023, Algorithm 2).
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

pub mod cd;
pub mod pipeline;

pub use cd::{CdConfig, CdObjective};
pub use pipeline::{run_cd, teacher_dir, CdMethod, CdOutcome, CdRunConfig};
