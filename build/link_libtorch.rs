//! Build script shared by every crate that links libtorch (through `torch-sys`).
//!
//! - Gives the crate's binaries, tests and benchmarks an rpath to libtorch's
//!   `lib` folder, which `torch-sys` exports to direct dependents as
//!   `DEP_TCH_LIBTORCH_LIB` (its `links = "tch"` metadata), so they start with
//!   no `LD_LIBRARY_PATH`.
//! - For a CUDA libtorch, keeps `libtorch_cuda.so` in the binary's needed
//!   libraries: under the default `--as-needed` linking it is dropped because
//!   no symbol of it is referenced directly, and `tch::Cuda::is_available()`
//!   then reports false (a known tch-rs issue).

fn main() {
    println!("cargo:rerun-if-env-changed=LIBTORCH");
    if let Ok(lib) = std::env::var("DEP_TCH_LIBTORCH_LIB") {
        println!("cargo:rustc-link-arg=-Wl,-rpath,{lib}");
        if std::path::Path::new(&lib).join("libtorch_cuda.so").exists() {
            println!("cargo:rustc-link-arg=-Wl,--no-as-needed,-ltorch_cuda,--as-needed");
        }
    }
}
