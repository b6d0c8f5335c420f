//! The error type of cm-train.

use std::path::PathBuf;

/// Errors returned by cm-train.
#[derive(Debug, thiserror::Error)]
pub enum TrainError {
    /// The loss became NaN or infinite; the last good checkpoint is kept.
    #[error(
        "loss is {loss} at step {step}: training stopped; {}",
        kept(last_checkpoint)
    )]
    NonFiniteLoss {
        /// The step.
        step: u64,
        /// The loss value.
        loss: f64,
        /// The newest checkpoint on disk, if any.
        last_checkpoint: Option<PathBuf>,
    },
    /// The gradient norm became NaN or infinite; no update was applied and
    /// the last good checkpoint is kept.
    #[error(
        "gradient norm is {norm} at step {step}: training stopped before the update; {}",
        kept(last_checkpoint)
    )]
    NonFiniteGradient {
        /// The step.
        step: u64,
        /// The gradient norm.
        norm: f64,
        /// The newest checkpoint on disk, if any.
        last_checkpoint: Option<PathBuf>,
    },
    /// Training diverged: the loss or the weights grew far beyond their
    /// running range (finite, so the NaN checks do not see it).
    #[error(
        "training diverged at step {step}: {what}; stopped (lower the learning rate?); {}",
        kept(last_checkpoint)
    )]
    Diverged {
        /// The step.
        step: u64,
        /// What grew, by how much.
        what: String,
        /// The newest healthy checkpoint on disk, if any.
        last_checkpoint: Option<PathBuf>,
    },
    /// A run folder already holds another run, or a resumed run's config
    /// differs from the one it was started with.
    #[error("run folder {path}: {reason}")]
    RunFolder {
        /// The folder or its config file.
        path: PathBuf,
        /// What is wrong and what to do.
        reason: String,
    },
    /// A checkpoint folder is missing a file or holds inconsistent state.
    #[error("checkpoint {path}: {reason}")]
    Checkpoint {
        /// The file or folder.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
    /// One training run of the CT -> iCT ablation failed.
    #[error("ablation rung {rung} ({name}), seed {seed}")]
    AblationRun {
        /// The rung's index.
        rung: usize,
        /// The rung's name.
        name: String,
        /// The seed index.
        seed: u64,
        /// What went wrong.
        #[source]
        source: Box<TrainError>,
    },
    /// Data-parallel ranks hold different parameters: a rank computed
    /// something the others did not (a non-deterministic kernel, a
    /// corrupted message). Checked at every checkpoint, before saving.
    #[error(
        "data-parallel ranks diverged at step {step}: the {what} differ across ranks \
         (checksums {min:#018x} .. {max:#018x}); stopped without saving; {}",
        kept(last_checkpoint)
    )]
    RanksDiverged {
        /// The step.
        step: u64,
        /// What differs.
        what: &'static str,
        /// The smallest checksum across ranks.
        min: u64,
        /// The largest.
        max: u64,
        /// The newest checkpoint on disk, if any.
        last_checkpoint: Option<PathBuf>,
    },
    /// The feature network of the perceptual distance (cm-eval).
    #[error(transparent)]
    Eval(#[from] cm_eval::EvalError),
    /// A collective failed (cm-dist).
    #[error(transparent)]
    Dist(#[from] cm_dist::DistError),
    /// A batch does not fit the network or the objective.
    #[error("batch: {0}")]
    Batch(String),
    /// Config or math errors from cm-core.
    #[error(transparent)]
    Core(#[from] cm_core::CoreError),
    /// Network or checkpoint-tensor errors from cm-nets.
    #[error(transparent)]
    Net(#[from] cm_nets::NetError),
    /// A file could not be read or written.
    #[error("{action} {path}: {source}")]
    Io {
        /// What was being done.
        action: &'static str,
        /// The file.
        path: PathBuf,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },
    /// Model-card or sampling errors from cm-sample.
    #[error(transparent)]
    Sample(#[from] cm_sample::SampleError),
    /// A sample grid or plot could not be drawn or written (cm-report).
    #[error(transparent)]
    Report(#[from] cm_report::ReportError),
    /// A libtorch operation failed.
    #[error(transparent)]
    Tch(#[from] tch::TchError),
}

impl TrainError {
    /// A closure turning an I/O error into [`TrainError::Io`] for `path`.
    pub fn io(
        action: &'static str,
        path: impl Into<PathBuf>,
    ) -> impl FnOnce(std::io::Error) -> TrainError {
        let path = path.into();
        move |source| TrainError::Io {
            action,
            path,
            source,
        }
    }
}

/// Result alias of cm-train.
pub type Result<T, E = TrainError> = std::result::Result<T, E>;

/// The end of a stopped-run message: which checkpoint a resume would use.
fn kept(last: &Option<PathBuf>) -> String {
    match last {
        Some(p) => format!("the last good checkpoint is kept ({})", p.display()),
        None => "no checkpoint was written yet, so a resume starts over".to_string(),
    }
}
