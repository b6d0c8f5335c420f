//! cm-nets: the networks consistency models and their teachers are built from.
//!
//! This crate will hold, on `tch`: an ADM / EDM-style U-Net (DhariwalUNet,
//! SongUNet), a DiT with adaLN-Zero conditioning, and a residual MLP for 2-D toy
//! data, behind one network trait (scaled input, `c_noise`, optional class
//! labels, train/eval mode), with safetensors checkpoints. It is delivered by
//! the cm-nets issue; until then the crate is intentionally empty.
