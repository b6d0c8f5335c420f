//! What every method that trains LoRA adapters on a frozen model shares
//! (LCM-LoRA in cm-distill, the `[fine_tune]` of the EDM teacher here):
//! attaching the trainable adapter, and writing the finished run's adapter
//! file beside the report.

use std::path::Path;

use cm_nets::{LoraConfig, Model};

use crate::error::Result;
use crate::observer::Observer;

/// Attaches a fresh adapter `name` of `config` to `model` (weight 1),
/// freezes everything else and makes checkpoints adapter-only. Returns the
/// report line: rank, alpha, layers and the share of the base's parameters.
pub fn attach_trainable_adapter(
    model: &mut Model,
    name: &str,
    config: &LoraConfig,
) -> Result<String> {
    let base = model.num_params();
    let layers = model.add_adapter(name, config, 1.0)?;
    model.set_adapters_only(true)?;
    let trained: i64 = model
        .trainable_variables()
        .iter()
        .map(|(_, t)| t.numel() as i64)
        .sum();
    Ok(format!(
        "LoRA rank {}, alpha {} on {layers} layers: {trained} trainable parameters, {:.1}% of \
         the base's {base}",
        config.rank,
        config.alpha,
        100.0 * trained as f64 / base as f64
    ))
}

/// Writes adapter `name` of the evaluation network `eval` to
/// `run_dir/file` (PEFT keys, config and base hash) and returns the report
/// line.
pub fn write_adapter_file(
    eval: &Model,
    name: &str,
    run_dir: &Path,
    file: &str,
    observer: &mut dyn Observer,
) -> Result<Vec<String>> {
    let path = run_dir.join(file);
    let tensors = eval.save_adapter(name, &path)?;
    let bytes = std::fs::metadata(&path).map(|m| m.len()).unwrap_or(0);
    observer.on_message(&format!("wrote the adapter {}", path.display()));
    let info = &eval.adapters()[name];
    Ok(vec![format!(
        "adapter: `{file}`, {tensors} tensors on {} layers, {:.1} KiB, base {}",
        info.modules.len(),
        bytes as f64 / 1024.0,
        info.base_hash
    )])
}
