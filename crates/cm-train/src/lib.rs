//! cm-train: the training loop shared by every objective.
//!
//! This crate will hold one training loop (optimizer state, warm-up, gradient
//! clipping, EMA copies, atomic checkpoints, exact resume, Ctrl-C handling,
//! metrics logging) with a small objective trait, and the EDM teacher,
//! consistency training (CT, Song et al. 2023, Algorithm 3) and improved
//! consistency training (iCT, Song & Dhariwal 2023) objectives. It is delivered
//! by the data/teacher and CT/iCT issues; until then the crate is intentionally
//! empty.
