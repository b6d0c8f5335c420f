//! `cm lora`: LoRA adapter files (cm-nets `lora`). `merge` folds adapters
//! into a model's weights (`W + lambda (alpha/r) B A` for each) and writes a
//! new model card; `show` prints an adapter file's config, base and layers.

use std::path::PathBuf;

use anyhow::{bail, Context, Result};
use tch::Device;

use cm_nets::lora::{META_LORA, META_LORA_BASE};
use cm_sample::{LoraRef, ModelCard, CARD_FILE};

/// `cm lora` subcommands.
#[derive(Debug, clap::Subcommand)]
pub enum LoraCommand {
    /// Merge adapters into a model: load the base card (with any adapters it
    /// lists), fold every adapter into the weights with its weight lambda,
    /// and write OUT/weights.safetensors and OUT/model.toml (the base card's
    /// settings, no adapters left). The merged model remembers its base, so
    /// adapters trained on that base still load into it.
    Merge(MergeArgs),
    /// Print an adapter file's rank, alpha, targets, base hash and layers.
    Show(ShowArgs),
}

/// Arguments of `cm lora merge`.
#[derive(Debug, clap::Args)]
pub struct MergeArgs {
    /// The base model card (its own adapters are merged too).
    #[arg(long)]
    pub base: PathBuf,
    /// An adapter file and its weight lambda (default 1), `FILE[:WEIGHT]`;
    /// repeat to stack adapters (at most 16 in all); naming an adapter the
    /// base card lists sets its weight.
    #[arg(long = "adapter", value_parser = parse_lora, required = true)]
    pub adapters: Vec<LoraRef>,
    /// Output folder (created; an existing model.toml there is refused).
    #[arg(long)]
    pub out: PathBuf,
}

/// Arguments of `cm lora show`.
#[derive(Debug, clap::Args)]
pub struct ShowArgs {
    /// The adapter file.
    pub file: PathBuf,
}

/// Parses `FILE[:WEIGHT]` for clap.
pub fn parse_lora(text: &str) -> std::result::Result<LoraRef, String> {
    LoraRef::parse(text, "adapter")
}

/// Runs `cm lora`.
pub fn lora(cmd: &LoraCommand) -> Result<()> {
    match cmd {
        LoraCommand::Merge(args) => merge(args),
        LoraCommand::Show(args) => show(args),
    }
}

fn merge(args: &MergeArgs) -> Result<()> {
    let card_path = args.out.join(CARD_FILE);
    if card_path.exists() {
        bail!(
            "--out {}: it already holds a model card; choose a new folder",
            args.out.display()
        );
    }
    let mut card = ModelCard::load(&args.base)?;
    card.push_lora(&args.adapters)
        .with_context(|| format!("stacking --adapter on {}", args.base.display()))?;
    let mut model = card
        .load_model(Device::Cpu)
        .with_context(|| format!("loading the base {} with its adapters", args.base.display()))?;
    // Adapters applied on the fly leave the base weights as they are;
    // merging records this hash in the model's lineage.
    let base_hash = model.base_hash();
    let names: Vec<String> = model.adapters().keys().cloned().collect();
    for name in &names {
        model.merge_adapter(name)?;
    }
    let merged: Vec<String> = card
        .lora()
        .iter()
        .map(|a| format!("{}:{}", a.file.display(), a.weight))
        .collect();
    std::fs::create_dir_all(&args.out)
        .with_context(|| format!("creating {}", args.out.display()))?;
    let weights = args.out.join("weights.safetensors");
    card.set_weights(PathBuf::from("weights.safetensors"));
    card.clear_lora();
    if let Some(ae) = card.autoencoder().map(|p| p.to_path_buf()) {
        // Absolute: the new card lives elsewhere.
        card.set_autoencoder(Some(std::fs::canonicalize(&ae).unwrap_or(ae)));
    }
    model.set_metadata("cm_rs.merged", merged.join(","));
    // The weights file carries the new card (the base's would be stale).
    model.set_metadata(cm_sample::META_CARD, card.metadata_json());
    model.save(&weights)?;
    card.save(&card_path)?;
    say!(
        "merged {} adapter(s) into the base {base_hash}: {}; card {}",
        names.len(),
        weights.display(),
        card_path.display()
    );
    Ok(())
}

fn show(args: &ShowArgs) -> Result<()> {
    let meta = cm_nets::read_metadata(&args.file)?;
    let Some(config) = meta.get(META_LORA) else {
        bail!(
            "{}: not a cm-rs adapter file (no `{META_LORA}` metadata)",
            args.file.display()
        );
    };
    let shapes = cm_nets::checkpoint::read_shapes(&args.file)?;
    let params: i64 = shapes.values().map(|s| s.iter().product::<i64>()).sum();
    println!("file: {}", args.file.display());
    println!("config: {config}");
    println!(
        "base: {}",
        meta.get(META_LORA_BASE).map(String::as_str).unwrap_or("?")
    );
    println!("tensors: {} ({params} parameters)", shapes.len());
    for (name, shape) in &shapes {
        println!("  {name} {shape:?}");
    }
    Ok(())
}
