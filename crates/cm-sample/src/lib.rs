//! cm-sample: every way to get samples out of a trained model.
//!
//! This crate will hold the EDM Euler, Heun and stochastic samplers (Karras et
//! al. 2022, Algorithms 1 and 2), consistency one-step and multistep sampling
//! (Song et al. 2023, Algorithm 1) and zero-shot editing (Algorithm 4) behind
//! one sampler trait. It is delivered by the teacher and cm-sample issues; until
//! then the crate is intentionally empty.
