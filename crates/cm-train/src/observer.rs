//! How the loop reports progress: [`Observer`] receives step statistics and
//! messages; binaries show a progress bar, libraries and tests stay
//! [`Quiet`].

/// What the loop reports about a step.
#[derive(Debug, Clone, Copy)]
pub struct StepInfo {
    /// The step just finished (1-based count of updates).
    pub step: u64,
    /// Total steps of the run.
    pub total: u64,
    /// Its loss.
    pub loss: f64,
    /// Its learning rate.
    pub lr: f64,
    /// Gradient norm before clipping.
    pub grad_norm: f64,
    /// Steps per second over this session.
    pub steps_per_s: f64,
    /// Examples per second over this session.
    pub images_per_s: f64,
}

/// Receives progress; binaries show a bar or log lines, libraries stay quiet.
pub trait Observer {
    /// A training stage begins (a pipeline may have several: CD trains or
    /// reuses its teacher first); `name` is a short slug such as
    /// `edm-teacher` or `consistency-distillation`.
    fn on_stage(&mut self, _name: &str) {}
    /// Training (re)starts at `step` of `total`.
    fn on_start(&mut self, _step: u64, _total: u64) {}
    /// A step finished (called every `log_every` steps and at the end).
    fn on_step(&mut self, _info: &StepInfo) {}
    /// Something worth telling (checkpoint written, resumed, stopped).
    fn on_message(&mut self, _message: &str) {}
}

impl<O: Observer + ?Sized> Observer for &mut O {
    fn on_stage(&mut self, name: &str) {
        (**self).on_stage(name);
    }
    fn on_start(&mut self, step: u64, total: u64) {
        (**self).on_start(step, total);
    }
    fn on_step(&mut self, info: &StepInfo) {
        (**self).on_step(info);
    }
    fn on_message(&mut self, message: &str) {
        (**self).on_message(message);
    }
}

/// An observer that ignores everything.
#[derive(Debug, Default)]
pub struct Quiet;

impl Observer for Quiet {}
