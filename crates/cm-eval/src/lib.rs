//! cm-eval: sample quality measured the way the field does.
//!
//! This crate will hold FID / KID / precision-recall in the feature space of a
//! network the project trains itself, standard Inception-v3 FID for users who
//! supply the weights, and exact metrics for 2-D toy data. It is delivered by
//! the cm-eval issue; until then the crate is intentionally empty.
