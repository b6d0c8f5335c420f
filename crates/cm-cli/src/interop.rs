//! `cm export-diffusers`: a cm-rs U-Net model as a diffusers folder
//! (docs/interop.md), where its architecture maps to `UNet2DModel`.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use tch::{Device, Kind, Tensor};

use cm_core::{Conditioning, NoiseConditioning};
use cm_sample::diffusers::{DIFFUSERS_SCHEDULER_CONFIG, DIFFUSERS_WEIGHTS, MODEL_INDEX_JSON};
use cm_sample::{CmSchedulerConfig, ModelCard};

use crate::sample::load_card;

/// Arguments of `cm export-diffusers`.
#[derive(Debug, clap::Args)]
pub struct ExportDiffusersArgs {
    /// Model card of a cm-rs U-Net (teacher, CD, CT or iCT run).
    #[arg(long)]
    pub card: PathBuf,
    /// Output folder: unet/config.json and
    /// unet/diffusion_pytorch_model.safetensors; for a consistency model
    /// with `noise_conditioning = "adm"` also scheduler/ and
    /// model_index.json (a ConsistencyModelPipeline folder); and
    /// cm_rs_probe.safetensors, inputs and cm-rs's outputs for the Python
    /// round-trip check (crates/cm-sample/tests/fixtures/diffusers/check_export.py).
    #[arg(long)]
    pub out: PathBuf,
    /// Where to load the model and compute the probe outputs.
    #[arg(long, value_enum, default_value = "cpu")]
    pub device: crate::DeviceArg,
    /// libtorch intra-op threads: `auto` (one per core available to this
    /// process) or a count.
    #[arg(long, default_value = "auto")]
    pub threads: cm_runtime::Threads,
}

fn write(path: &Path, text: &str) -> Result<()> {
    cm_nets::write_atomic(path, |tmp| {
        std::fs::write(tmp, text).map_err(|source| cm_nets::NetError::Io {
            action: "cannot write",
            path: tmp.to_path_buf(),
            source,
        })
    })
    .with_context(|| format!("writing {}", path.display()))
}

fn write_tensors(path: &Path, tensors: &[(String, Tensor)]) -> Result<()> {
    let meta = [("format".to_string(), "pt".to_string())].into();
    cm_nets::write_atomic(path, |tmp| {
        cm_nets::write_safetensors_with_metadata(tensors, &meta, tmp)
    })
    .with_context(|| format!("writing {}", path.display()))
}

/// Runs `cm export-diffusers`.
pub fn export(args: &ExportDiffusersArgs) -> Result<()> {
    crate::set_threads(args.threads)?;
    let device = crate::device(args.device)?;
    let (card, model) = load_card(&args.card, device)?;
    if let Some(ae) = card.autoencoder() {
        anyhow::bail!(
            "{}: the model works in the latent space of the autoencoder {}; a diffusers \
             UNet2DModel pipeline samples pixels (exporting latent models is not built)",
            args.card.display(),
            ae.display()
        );
    }
    let (config, tensors) = cm_nets::diffusers_export::to_diffusers(&model).with_context(|| {
        format!(
            "{}: the network has no UNet2DModel equivalent",
            args.card.display()
        )
    })?;
    let unet = args.out.join("unet");
    std::fs::create_dir_all(&unet).with_context(|| format!("creating {}", unet.display()))?;
    write(&unet.join("config.json"), &config.to_json())?;
    write_tensors(&unet.join(DIFFUSERS_WEIGHTS), &tensors)?;

    // A consistency pipeline only where diffusers' scheduler feeds the
    // network what it was trained on (250 ln sigma).
    let pipeline = match &card {
        ModelCard::Consistency { consistency, .. }
            if consistency.noise_conditioning == NoiseConditioning::Adm =>
        {
            let scheduler = CmSchedulerConfig {
                sigma_min: consistency.sigma_min,
                sigma_max: consistency.sigma_max,
                sigma_data: consistency.sigma_data,
                rho: consistency.rho,
                // cm-rs does not clip between steps (the final image is
                // clipped either way).
                clip_denoised: false,
                ..CmSchedulerConfig::default()
            };
            let dir = args.out.join("scheduler");
            std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
            write(
                &dir.join(cm_sample::diffusers::DIFFUSERS_SCHEDULER_CONFIG),
                &scheduler.to_json(),
            )?;
            write(&args.out.join("model_index.json"), MODEL_INDEX_JSON)?;
            None
        }
        ModelCard::Consistency { .. } => Some(
            "the card's noise conditioning is \"edm\" (c_noise = ln(sigma) / 4), and diffusers' \
             CMStochasticIterativeScheduler feeds 250 ln(sigma): only unet/ is written; call it \
             with timestep = ln(sigma) / 4",
        ),
        ModelCard::Edm { .. } => Some(
            "an EDM teacher: only unet/ is written (diffusers has no EDM-preconditioned \
             scheduler for UNet2DModel); call it with timestep = ln(sigma) / 4 and wrap it in \
             EDM's preconditioning",
        ),
    };

    if pipeline.is_some() {
        // An earlier export into this folder may have left a pipeline
        // behind that would now sample this network with the wrong times.
        for stale in [
            args.out.join("model_index.json"),
            args.out.join("scheduler").join(DIFFUSERS_SCHEDULER_CONFIG),
        ] {
            if stale.is_file() {
                std::fs::remove_file(&stale)
                    .with_context(|| format!("removing the stale {}", stale.display()))?;
                eprintln!("removed the stale {}", stale.display());
            }
        }
    }

    // Inputs and cm-rs's outputs, for the Python side to compare.
    tch::manual_seed(0);
    let shape = model.config().sample_shape();
    let x = Tensor::randn(
        [2, shape[0], shape[1], shape[2]],
        (Kind::Float, Device::Cpu),
    );
    let t = Tensor::from_slice(&[1.5f64, -0.5]);
    let num_classes = model.config().num_classes() as i64;
    let class = (num_classes > 0).then(|| Tensor::from_slice(&[0i64, num_classes]));
    let out = tch::no_grad(|| {
        model.forward_t(
            &x,
            &t.to_kind(Kind::Float),
            Conditioning::from_class(class.as_ref()),
            false,
        )
    });
    let mut probe = vec![
        ("x".to_string(), x),
        ("t".to_string(), t),
        ("out".to_string(), out),
    ];
    if let Some(c) = class {
        probe.push(("class".into(), c));
    }
    write_tensors(&args.out.join("cm_rs_probe.safetensors"), &probe)?;
    eprintln!(
        "{} -> {} ({} tensors, {} parameters{})",
        args.card.display(),
        args.out.display(),
        tensors.len(),
        model.num_params(),
        if pipeline.is_none() {
            "; a ConsistencyModelPipeline folder"
        } else {
            ""
        }
    );
    if let Some(note) = pipeline {
        eprintln!("note: {note}");
    }
    Ok(())
}
