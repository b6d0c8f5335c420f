//! cm-train: the training engine every method runs on, and the objectives
//! that learn from data.
//!
//! The engine:
//! - [`run`]: the run skeleton every pipeline is ([`run::run`] with a
//!   [`Method`]): config check and resume check, data, network and
//!   objective, training, report grids, `report.md`, model card.
//! - [`trainer`]: [`train`] runs any [`Objective`] on batches from any
//!   [`BatchSource`] ([`source`]): Adam / RAdam with saved state
//!   ([`optim`]) over a parameter group, warm-up, gradient clipping, EMA
//!   copies ([`ema`]), atomic checkpoints with retention ([`checkpoint`]),
//!   exact resume (libtorch's generator is reseeded from `(seed, step)`
//!   every step and batches are a pure function of the step), a stop flag
//!   for Ctrl-C that saves first, NaN detection, a metrics CSV
//!   ([`metrics`]), sample grids and a loss plot.
//! - [`config`]: the loop settings `[train]`; [`observer`]: progress;
//!   [`tensorboard`]: TensorBoard event files of the same metrics.
//!
//! The objectives that learn from data, each a method on the skeleton:
//! - [`teacher`] / [`edm`]: the EDM teacher (Karras et al. 2022), and
//!   [`prepare_teacher`], which methods that learn from a teacher use.
//! - [`ct`] / [`ct_pipeline`]: consistency training (CT, CM Algorithm 3)
//!   and, through the recipe's switches, iCT, with the CT-to-iCT ablation.
//! - [`ect`] / [`ect_pipeline`]: easy consistency tuning (ECT, Geng et
//!   al. 2024): consistency training started from the EDM teacher's
//!   weights, with continuous pairs that tighten over stages.
//! - [`consistency`]: [`ConsistencyCore`], the machinery CT and consistency
//!   distillation (cm-distill) share.
//! - [`autoencoder`]: the KL autoencoder of latent consistency models
//!   ([`run_autoencoder`]), its scaling factor and reconstruction FID.
//! - [`latent`]: any method in an autoencoder's latent space (`[latent]`):
//!   the data encoded once and cached, grids decoded.
//! - [`ablation`]: the CT-to-iCT ablation run ([`run_ablation`]): every
//!   rung for several seeds, measured by a caller-supplied 2-D metric.

pub mod ablation;
pub mod adapters;
pub mod autoencoder;
pub mod checkpoint;
pub mod config;
pub mod consistency;
pub mod ct;
pub mod ct_pipeline;
pub mod ect;
pub mod ect_pipeline;
pub mod edm;
pub mod ema;
pub mod error;
pub mod latent;
pub mod metric;
pub mod metrics;
pub mod objective;
pub mod observer;
pub mod optim;
pub mod run;
pub mod search;
pub mod source;
pub mod teacher;
pub mod tensorboard;
pub mod trainer;

pub use ablation::{
    run_ablation, AblationObserver, AblationOptions, AblationOutcome, PointScores, RunScores,
};
pub use adapters::{attach_trainable_adapter, write_adapter_file};
pub use autoencoder::{
    run_autoencoder, AutoencoderMethod, AutoencoderObjective, AutoencoderObjectiveConfig,
    AutoencoderOutcome, AutoencoderRunConfig, Reconstruction,
};
pub use checkpoint::{
    checkpoint_name, evaluation_weights_file, final_weights, latest_checkpoint, list_checkpoints,
};
pub use config::TrainConfig;
pub use consistency::ConsistencyCore;
pub use ct::CtObjective;
pub use ct_pipeline::{
    consistency_report_samplers, ict_ablation, run_ct, CtConfig, CtMethod, CtOutcome, CtRunConfig,
};
pub use ect::{AdaptiveWeighting, EctConfig, EctObjective};
pub use ect_pipeline::{run_ect, EctMethod, EctOutcome, EctRunConfig};
pub use edm::{EdmObjective, EdmObjectiveConfig};
pub use ema::{ema_update, Ema};
pub use error::{Result, TrainError};
pub use latent::{latent_dataset, Decoding, LatentConfig};
pub use metric::build_metric;
pub use metrics::{read_losses, read_metrics, MAX_METRICS_BYTES};
pub use objective::{Batch, BatchSource, Objective};
pub use observer::{Observer, Quiet, StepInfo};
pub use optim::{LrSchedule, Optimizer, OptimizerConfig, OptimizerKind};
pub use run::{
    check_run_folder, run, write_run_config, Method, ReportSampler, RunCard, RunConfig, RunContext,
    RunOutcome, SamplerRow,
};
pub use search::{search_times, SearchStage, SearchedTimes, TimestepSearchConfig};
pub use source::{loader_for, LoaderOptions, LoaderSource, TensorSource};
pub use teacher::{
    check_student_noise, prepare_teacher, run_from_teacher, run_teacher, teacher_dir,
    teacher_report_samplers, FromTeacherOutcome, LoraFineTune, ReadyTeacher, TeacherConfig,
    TeacherMethod, TeacherOutcome, TeacherStage, FINE_TUNE_ADAPTER, FINE_TUNE_FILE,
};
pub use trainer::{eval_model, fixed_latents, mix_seed, train, TrainOutcome};
