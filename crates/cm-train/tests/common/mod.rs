//! Helpers shared by cm-train's tests: a toy data set and an observer that
//! raises the stop flag at a chosen step.

#![allow(dead_code)]

use std::sync::atomic::{AtomicBool, Ordering};

use cm_train::{Observer, StepInfo};
use tch::{Device, Kind, Tensor};

/// `n` points of a mixture of 8 Gaussians on a circle of radius 2 (std 0.1),
/// from libtorch's generator seeded with `seed`; and the 8 centres.
pub fn eight_gaussians(n: i64, seed: i64) -> (Tensor, Tensor) {
    tch::manual_seed(seed);
    let angles = Tensor::arange(8, (Kind::Float, Device::Cpu)) * (std::f64::consts::PI / 4.0);
    let centers = Tensor::stack(&[angles.cos(), angles.sin()], 1) * 2.0;
    let which = Tensor::randint(8, [n], (Kind::Int64, Device::Cpu));
    let points =
        centers.index_select(0, &which) + Tensor::randn([n, 2], (Kind::Float, Device::Cpu)) * 0.1;
    (points, centers)
}

/// Raises `flag` once step `at` has been reported (needs `log_every = 1`).
pub struct StopAt<'a> {
    pub flag: &'a AtomicBool,
    pub at: u64,
}

impl Observer for StopAt<'_> {
    fn on_step(&mut self, info: &StepInfo) {
        if info.step >= self.at {
            self.flag.store(true, Ordering::SeqCst);
        }
    }
}

/// A fresh temporary folder.
pub fn temp_dir(tag: &str) -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(format!("cm-train-{tag}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}
