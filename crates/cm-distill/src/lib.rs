//! cm-distill: consistency distillation (CD, Song et al. 2023, Algorithm 2).
//!
//! This crate will hold the CD objective on the shared training loop of
//! `cm-train`: one teacher ODE step from `t_{n+1}` to `t_n` (Euler or Heun behind
//! a solver trait), an EMA target network, and the `train-cd` pipeline. It is
//! delivered by the distillation issue; until then the crate is intentionally
//! empty.
