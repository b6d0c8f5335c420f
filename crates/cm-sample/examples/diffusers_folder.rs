//! Writes a diffusers consistency-model folder (`model_index.json`,
//! `unet/config.json`, `unet/diffusion_pytorch_model.safetensors`,
//! `scheduler/scheduler_config.json`) with the given configs and random
//! weights: a stand-in for a published checkpoint (none is reachable from
//! the build machines) to time `cm sample --diffusers` on.
//!
//! ```text
//! cargo run --release -p cm-sample --example diffusers_folder -- \
//!     crates/cm-sample/tests/fixtures/diffusers/imagenet64-cd-config.json \
//!     crates/cm-sample/tests/fixtures/diffusers/imagenet64-cd-scheduler_config.json \
//!     /tmp/cd_imagenet64
//! cm sample --diffusers /tmp/cd_imagenet64 --class 3 --count 8 --batch-size 1 --out /tmp/s
//! ```
use std::path::Path;

use cm_nets::{DiffusersUNetConfig, Model, NetConfig};
use cm_sample::{tch, CmSchedulerConfig};
use tch::{Device, Kind, Tensor};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().collect();
    let [_, unet_config, scheduler_config, out] = args.as_slice() else {
        return Err(
            "usage: diffusers_folder UNET_CONFIG.json SCHEDULER_CONFIG.json OUT_DIR".into(),
        );
    };
    let text = std::fs::read_to_string(unet_config)?;
    let config = DiffusersUNetConfig::from_json(&text, unet_config)?;
    let scheduler = CmSchedulerConfig::from_json(
        &std::fs::read_to_string(scheduler_config)?,
        scheduler_config,
    )?;
    let out = Path::new(out);
    std::fs::create_dir_all(out.join("unet"))?;
    std::fs::create_dir_all(out.join("scheduler"))?;
    std::fs::write(
        out.join("model_index.json"),
        cm_sample::diffusers::MODEL_INDEX_JSON,
    )?;
    std::fs::write(out.join("unet/config.json"), config.to_json())?;
    std::fs::write(
        out.join("scheduler/scheduler_config.json"),
        scheduler.to_json(),
    )?;
    tch::manual_seed(0);
    let model = Model::new(NetConfig::DiffusersUnet2d(config), Device::Cpu)?;
    // Random weights small enough that activations stay finite through the
    // depth (the default init keeps every layer's scale).
    let named: Vec<(String, Tensor)> = model
        .var_store()
        .variables()
        .into_iter()
        .map(|(n, t)| (n, t.to_kind(Kind::Float).contiguous()))
        .collect();
    Tensor::write_safetensors(&named, out.join("unet/diffusion_pytorch_model.safetensors"))?;
    println!(
        "{}: {} parameters, {:.1} GFLOP per image",
        out.display(),
        model.num_params(),
        model.flops_per_sample() as f64 / 1e9
    );
    Ok(())
}
