//! cm-eval: sample quality measured the way the field does.
//!
//! - [`frechet`]: feature statistics and the Fréchet distance (FID's
//!   formula) in float64 with a stable symmetric matrix square root.
//! - [`kid`]: Kernel Inception Distance, the unbiased polynomial-kernel
//!   MMD^2 over subsets (Bińkowski et al. 2018).
//! - [`precision_recall`]: improved precision and recall with k-NN
//!   manifolds (Kynkäänniemi et al. 2019, k = 3).
//! - [`inception_score`]: the Inception Score formula (Salimans et al. 2016)
//!   on any classifier's logits.
//! - [`classifier`]: the project's own feature network (a small CNN trained
//!   on the real training split, cached with the test split's reference
//!   statistics), standing in for Inception-v3, which cannot be downloaded
//!   here.
//! - [`inception`]: pytorch-fid's Inception-v3 for standard FID, from a
//!   user-supplied safetensors file.
//! - [`pipeline`]: `cm eval`: N samples per model card and step count, a
//!   results table against NFE, time, training time and whether a teacher
//!   is needed; [`row_cache`]: each row's sample features cached, so a
//!   second evaluation samples only what changed.
//! - [`timestep_search`]: `cm search-timesteps`: the intermediate times of
//!   few-step consistency sampling by FID (CM Section 6), stored in the card.
//! - [`degrade`]: noise and blur, to check that metrics respond.
//! - [`toy`]: exact distances between 2-D sample sets (sliced Wasserstein,
//!   energy distance) and mode coverage, for the toy experiments.
//!
//! Every feature extraction runs in eval mode, without autograd, in chunks.

pub mod classifier;
pub mod degrade;
pub mod error;
pub mod frechet;
pub mod inception;
pub mod inception_score;
pub mod kid;
pub mod perceptual;
pub mod pipeline;
pub mod precision_recall;
pub mod progress;
pub mod row_cache;
pub mod style;
pub mod timestep_search;
pub mod toy;
pub mod weights;

pub use classifier::{feature_space, ClassifierCard, ClassifierConfig, FeatureNet, FeatureSpace};
pub use error::{EvalError, Result};
pub use frechet::{frechet_distance, frechet_distance_features, sqrtm_psd, FeatureStats};
pub use inception::InceptionV3;
pub use inception_score::{inception_score, InceptionScore};
pub use kid::{kid, mmd2_unbiased, Kid, KidConfig};
pub use perceptual::{FeatureDistance, LAYER_WEIGHTS};
pub use pipeline::{
    evaluate, evaluate_cached, training_seconds, EvalConfig, EvalOutput, EvalRow, ModelEntry,
};
pub use precision_recall::{precision_recall, PrecisionRecall};
pub use progress::{Log, Progress, Silent};
pub use style::style_dataset;
pub use timestep_search::{SearchOptions, SearchOutcome};
pub use toy::{energy_distance, mode_coverage, sliced_wasserstein};
