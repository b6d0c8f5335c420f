//! One-step samples from a cm-rs model card, as a PNG grid.
use cm_sample::{images, runtime, tch, Pipeline};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().collect();
    let (card, out) = match args.as_slice() {
        [_, card, out] => (card, out),
        _ => return Err("usage: my-sampler MODEL.toml OUT.png".into()),
    };
    // cm-rs's CPU set-up: glibc's allocator settings (one re-execution,
    // first thing) and libtorch threads that follow the machine's load.
    runtime::prepare_process()?;
    runtime::apply_threads(runtime::Threads::Auto)?;
    let pipe = Pipeline::load(card, tch::Device::Cpu)?;
    // 16 samples, 1 network step, seed 0: [16, C, H, W] in [-1, 1].
    let samples = pipe.generate(16, 1, 0)?;
    if pipe.is_image() {
        images::write_image_grid(&samples, out.as_ref())?;
    } else {
        images::write_scatter(&samples, out.as_ref())?; // a 2-D toy model
    }
    println!(
        "{} samples {:?} -> {out}",
        samples.size()[0],
        pipe.sample_shape()
    );
    Ok(())
}
