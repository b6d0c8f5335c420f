//! Running a method in an autoencoder's latent space (latent consistency
//! models, Luo et al. 2023): `[latent] autoencoder = "runs/ae/model.toml"`
//! in a run config. The run skeleton then encodes the image data set once
//! to scaled latents `scaling_factor * mean(q(z | x))` ([`latent_dataset`]),
//! caches them on disk keyed by the autoencoder's weights and the data set,
//! and feeds them to the same loader; sample grids are decoded to images
//! before they are written ([`Decoding`]).

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use tch::{Kind, Tensor};

use cm_core::Conditioning;
use cm_data::{Dataset, FloatDataset, FloatSplit, ImageDataset, ImageSplit};
use cm_nets::Model;
use cm_sample::{AutoencoderCard, LatentCodec};

use crate::error::{Result, TrainError};
use crate::objective::{Batch, Objective};
use crate::observer::Observer;

/// Bumped when the cache layout changes.
const CACHE_VERSION: u32 = 1;

/// `[latent]`: the autoencoder whose latent space the method runs in.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LatentConfig {
    /// The autoencoder's card (`model.toml` of a `cm train-autoencoder`
    /// run), relative to the working directory or absolute.
    pub autoencoder: PathBuf,
}

impl LatentConfig {
    /// Loads the autoencoder's card and network.
    pub fn load_codec(&self, device: tch::Device) -> Result<LatentCodec> {
        let card = AutoencoderCard::load(&self.autoencoder)?;
        Ok(card.load_codec(device)?)
    }
}

/// The cache file of `images` encoded by `codec` (whose weights are the
/// file `weights`): `<root>/latents/<name>-<16 hex digits>.safetensors`,
/// the hash over the cache version, the weights' bytes, the scaling factor
/// and the data set's name, shape, split sizes, pixels and labels.
pub fn latent_cache_file(
    root: &Path,
    images: &ImageDataset,
    weights: &Path,
    scaling_factor: f64,
) -> Result<PathBuf> {
    let bytes =
        std::fs::read(weights).map_err(TrainError::io("cannot read the autoencoder", weights))?;
    // The images themselves, not just the data set's name: two folders of
    // the same name, or coloured Fashion-MNIST under another seed, differ.
    let content = |split: &ImageSplit| {
        let labels: Vec<u8> = split
            .labels()
            .map(|l| l.iter().flat_map(|v| v.to_le_bytes()).collect())
            .unwrap_or_default();
        (cm_core::fnv1a64(split.pixels()), cm_core::fnv1a64(&labels))
    };
    let key = format!(
        "v{CACHE_VERSION}|{:016x}|{:016x}|{}|{:?}|{}|{}|{:?}|{:?}",
        cm_core::fnv1a64(&bytes),
        scaling_factor.to_bits(),
        images.name,
        images.shape(),
        images.train.len(),
        images.test.len(),
        content(&images.train),
        content(&images.test)
    );
    let slug: String = images
        .name
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() { c } else { '-' })
        .collect();
    Ok(root.join("latents").join(format!(
        "{slug}-{:016x}.safetensors",
        cm_core::fnv1a64(key.as_bytes())
    )))
}

fn encode_split(codec: &LatentCodec, split: &ImageSplit) -> Result<FloatSplit> {
    let shape = codec.latent_shape();
    if split.is_empty() {
        return FloatSplit::new(
            Vec::new(),
            shape.iter().map(|&d| d as usize).collect(),
            split.labels().map(|_| Vec::new()),
        )
        .map_err(|e| TrainError::Batch(e.to_string()));
    }
    let x = cm_eval::classifier::images_to_float(&split.to_tensor());
    let z = codec.encode(&x)?;
    FloatSplit::from_tensor(&z, split.labels_tensor().as_ref())
        .map_err(|e| TrainError::Batch(e.to_string()))
}

fn split_tensors(prefix: &str, split: &FloatSplit) -> Vec<(String, Tensor)> {
    let mut out = vec![(format!("{prefix}.latents"), split.to_tensor())];
    if let Some(labels) = split.labels_tensor() {
        out.push((format!("{prefix}.labels"), labels));
    }
    out
}

/// Reads a cached split back, checking its shape.
fn read_split(
    tensors: &[(String, Tensor)],
    prefix: &str,
    shape: &[i64],
    len: usize,
) -> Option<FloatSplit> {
    let find = |name: String| tensors.iter().find(|(n, _)| *n == name).map(|(_, t)| t);
    let z = find(format!("{prefix}.latents"))?;
    let size = z.size();
    if size.len() != shape.len() + 1 || size[1..] != *shape || size[0] != len as i64 {
        return None;
    }
    if z.kind() != Kind::Float {
        return None;
    }
    let labels = find(format!("{prefix}.labels"));
    FloatSplit::from_tensor(z, labels).ok()
}

/// The image data set `data` encoded by `codec` to scaled latents, from the
/// cache under `cache_root` when a matching file is there (written
/// atomically on first use).
pub fn latent_dataset(
    data: &Dataset,
    codec: &LatentCodec,
    weights: &Path,
    cache_root: &Path,
    observer: &mut dyn Observer,
) -> Result<Dataset> {
    let Dataset::Images(images) = data else {
        return Err(cm_core::CoreError::invalid(
            "teacher.latent.autoencoder",
            weights.display(),
            "a run on image data (an autoencoder encodes images)",
        )
        .into());
    };
    let want = codec.image_shape();
    let got: Vec<i64> = images.shape().iter().map(|&d| d as i64).collect();
    if got != want {
        return Err(cm_core::CoreError::invalid(
            "teacher.latent.autoencoder",
            weights.display(),
            format!("an autoencoder for images {got:?} (this one takes {want:?})"),
        )
        .into());
    }
    let file = latent_cache_file(cache_root, images, weights, codec.scaling_factor())?;
    let shape = codec.latent_shape();
    let cached = file
        .is_file()
        .then(|| Tensor::read_safetensors(&file).ok())
        .flatten()
        .and_then(|t| {
            Some((
                read_split(&t, "train", &shape, images.train.len())?,
                read_split(&t, "test", &shape, images.test.len())?,
            ))
        });
    let (train, test) = match cached {
        Some(splits) => {
            observer.on_message(&format!("latents reused from {}", file.display()));
            splits
        }
        None => {
            observer.on_message(&format!(
                "encoding {} training and {} test images to latents {shape:?}",
                images.train.len(),
                images.test.len()
            ));
            let train = encode_split(codec, &images.train)?;
            let test = encode_split(codec, &images.test)?;
            let dir = file.parent().unwrap_or(Path::new("."));
            std::fs::create_dir_all(dir)
                .map_err(TrainError::io("cannot create the latent cache", dir))?;
            let mut tensors = split_tensors("train", &train);
            tensors.extend(split_tensors("test", &test));
            cm_nets::write_atomic(&file, |tmp| {
                Tensor::write_safetensors(&tensors, tmp).map_err(cm_nets::NetError::from)
            })?;
            observer.on_message(&format!("latents cached in {}", file.display()));
            (train, test)
        }
    };
    Ok(Dataset::Latents(FloatDataset {
        name: format!("{} latents", images.name),
        train: train.into(),
        test: test.into(),
        num_classes: images.num_classes,
    }))
}

/// An objective whose sample grids are decoded from latents to images: the
/// training loop's periodic grids of a latent run.
pub struct Decoding<'a> {
    /// The objective in latent space.
    pub inner: &'a mut dyn Objective,
    /// The autoencoder.
    pub codec: &'a LatentCodec,
}

impl Objective for Decoding<'_> {
    fn name(&self) -> &str {
        self.inner.name()
    }

    fn loss(&mut self, online: &Model, batch: &Batch, step: u64) -> Result<Tensor> {
        self.inner.loss(online, batch, step)
    }

    fn after_step(&mut self, online: &Model, step: u64) -> Result<()> {
        self.inner.after_step(online, step)
    }

    fn extra_models(&self) -> Vec<(&'static str, &Model)> {
        self.inner.extra_models()
    }

    fn extra_models_mut(&mut self) -> Vec<(&'static str, &mut Model)> {
        self.inner.extra_models_mut()
    }

    fn sample(&self, model: &Model, latents: &Tensor, cond: Conditioning<'_>) -> Result<Tensor> {
        let z = self.inner.sample(model, latents, cond)?;
        Ok(self.codec.decode(&z)?)
    }

    fn grid_chunk(&self, batch_size: usize) -> Option<usize> {
        self.inner.grid_chunk(batch_size)
    }
}
