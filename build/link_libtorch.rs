//! Build script shared by every crate that links libtorch (through
//! `torch-sys`): cm-build gives the crate's binaries, tests, examples and
//! benchmarks an rpath to libtorch's `lib` folder (from
//! `DEP_TCH_LIBTORCH_LIB`, which `torch-sys` exports to direct dependents),
//! so they start with no `LD_LIBRARY_PATH`, and for a CUDA libtorch keeps
//! `libtorch_cuda.so` linked. Crates outside the workspace use the same
//! helper (docs/embedding.md).

fn main() {
    cm_build::link_libtorch();
}
