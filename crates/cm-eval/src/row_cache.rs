//! The sample-feature cache of `cm eval`: each row's features, logits,
//! first samples, NFE and sampling time in `row-<key>.safetensors`, keyed
//! by everything that decides them (the card's text, its weights' and
//! sidecar's bytes, the sampler, N, seed, batch size, device, the feature
//! network and this crate's version), so a second evaluation samples only
//! what changed. Files are written atomically and checked on read: a
//! damaged one is reported and sampled again.

use std::path::Path;

use tch::{Kind, Tensor};

use cm_sample::ModelCard;

use crate::error::{EvalError, Result};
use crate::progress::Progress;

/// Images per sample grid.
pub const GRID_IMAGES: i64 = 64;

/// A row's samples, as features.
pub(crate) struct SampledRow {
    pub(crate) features: Tensor,
    pub(crate) logits: Tensor,
    /// The first [`GRID_IMAGES`] samples (CPU, [-1, 1]).
    pub(crate) grid: Tensor,
    pub(crate) nfe: usize,
    pub(crate) sampling_seconds: f64,
    /// Top-1 accuracy of the feature classifier against the requested class,
    /// for class-conditional samples.
    pub(crate) class_accuracy: Option<f64>,
    /// The share of samples the style classifier calls the style (an eval
    /// with `style_base`; stored as an optional `style` tensor).
    pub(crate) style_score: Option<f64>,
}

/// The card's text and its weights' bytes (and, for a model in an
/// autoencoder's latent space, the autoencoder card's text and weights),
/// for cache keys: a retrained or edited model, or an autoencoder retrained
/// in place, never reuses old features.
pub(crate) fn model_identity(card_path: &Path, card: &ModelCard) -> Result<String> {
    let read = |path: &Path| {
        std::fs::read(path).map_err(|e| EvalError::Io {
            action: "cannot read",
            path: path.to_path_buf(),
            message: e.to_string(),
        })
    };
    let text = read(card_path)?;
    let weights = read(card.weights())?;
    // An architecture sidecar beside the weights, if any, shapes the network.
    let sidecar = cm_nets::sidecar_path(card.weights());
    let sidecar = if sidecar.is_file() {
        read(&sidecar)?
    } else {
        Vec::new()
    };
    let mut identity = format!(
        "{:016x}|{:016x}|{}|{:016x}",
        cm_core::fnv1a64(&text),
        cm_core::fnv1a64(&weights),
        weights.len(),
        cm_core::fnv1a64(&sidecar)
    );
    // Adapters applied on the fly change the model: their files and
    // weights are part of it (a card without adapters keeps its key).
    for adapter in card.lora() {
        let bytes = read(&adapter.file)?;
        identity.push_str(&format!(
            "|lora {:016x}|{}|{}",
            cm_core::fnv1a64(&bytes),
            bytes.len(),
            adapter.weight
        ));
    }
    if let Some(path) = card.autoencoder() {
        let ae = cm_sample::AutoencoderCard::load(path)?;
        let (text, weights) = (read(path)?, read(&ae.weights)?);
        identity.push_str(&format!(
            "|autoencoder {:016x}|{:016x}|{}",
            cm_core::fnv1a64(&text),
            cm_core::fnv1a64(&weights),
            weights.len()
        ));
    }
    Ok(identity)
}

/// FNV-1a over `parts`, separated so that no two part lists collide by
/// concatenation.
pub(crate) fn row_key(parts: &[&[u8]]) -> u64 {
    // The crate version: a new release may sample or measure differently
    // (v3: class-conditional rows cycle through the classes).
    let mut bytes = format!("cm-eval row cache v3 {}", env!("CARGO_PKG_VERSION")).into_bytes();
    for part in parts {
        bytes.extend_from_slice(&(part.len() as u64).to_le_bytes());
        bytes.extend_from_slice(part);
    }
    cm_core::fnv1a64(&bytes)
}

/// The shapes a cached row must have: `n` samples of `features`-wide
/// features and `classes` logits, and sample images `[C, H, W]`.
#[derive(Debug, Clone, Copy)]
pub(crate) struct RowShape<'a> {
    pub(crate) n: usize,
    pub(crate) features: i64,
    pub(crate) classes: i64,
    pub(crate) image: &'a [i64],
}

/// A cached row, if `path` holds one of `shape`; a damaged file is
/// reported and ignored (the row is sampled again and the file replaced).
pub(crate) fn read_cached_row(
    path: &Path,
    shape: RowShape<'_>,
    progress: &mut dyn Progress,
) -> Option<SampledRow> {
    let n = shape.n;
    if !path.is_file() {
        return None;
    }
    let parsed = (|| -> std::result::Result<SampledRow, String> {
        let tensors = Tensor::read_safetensors(path).map_err(|e| e.to_string())?;
        let get = |name: &str| {
            tensors
                .iter()
                .find(|(k, _)| k == name)
                .map(|(_, t)| t.shallow_clone())
                .ok_or_else(|| format!("no `{name}` tensor"))
        };
        let (features, logits, grid, meta) =
            (get("features")?, get("logits")?, get("grid")?, get("meta")?);
        let grid_ok = grid.numel() == 0
            || (grid.dim() == 4
                && grid.size()[0] <= GRID_IMAGES
                && grid.size()[1..] == *shape.image);
        if features.size() != [n as i64, shape.features]
            || logits.size() != [n as i64, shape.classes]
            || meta.size() != [3]
            || !grid_ok
            || [&features, &logits, &grid, &meta]
                .iter()
                .any(|t| t.kind() != Kind::Float && t.kind() != Kind::Double)
        {
            return Err(format!(
                "shapes {:?} / {:?} / {:?} / {:?} are not {n} samples' features [{n}, {}], logits [{n}, {}], a grid of {:?} images and [NFE, seconds, class accuracy]",
                features.size(),
                logits.size(),
                grid.size(),
                meta.size(),
                shape.features,
                shape.classes,
                shape.image
            ));
        }
        let (nfe, seconds, accuracy) = (
            meta.double_value(&[0]),
            meta.double_value(&[1]),
            meta.double_value(&[2]),
        );
        if !(nfe >= 1.0 && nfe.fract() == 0.0 && seconds.is_finite() && seconds >= 0.0)
            || !(accuracy.is_nan() || (0.0..=1.0).contains(&accuracy))
        {
            return Err(format!(
                "meta [{nfe}, {seconds}, {accuracy}] is not [NFE, seconds, class accuracy]"
            ));
        }
        let style_score = match tensors.iter().find(|(n, _)| n == "style") {
            None => None,
            Some((_, t)) if t.size() == [1] && (0.0..=1.0).contains(&t.double_value(&[0])) => {
                Some(t.double_value(&[0]))
            }
            Some((_, t)) => return Err(format!("style {t:?} is not [share in 0..=1]")),
        };
        Ok(SampledRow {
            features,
            logits,
            grid,
            nfe: nfe as usize,
            sampling_seconds: seconds,
            class_accuracy: (!accuracy.is_nan()).then_some(accuracy),
            style_score,
        })
    })();
    match parsed {
        Ok(row) => Some(row),
        Err(why) => {
            progress.message(&format!(
                "ignoring the damaged cache file {} ({why}); sampling again",
                path.display()
            ));
            None
        }
    }
}

/// Writes a row's features atomically (temp file, then rename).
pub(crate) fn write_cached_row(path: &Path, row: &SampledRow) -> Result<()> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).map_err(|e| EvalError::Io {
            action: "cannot create",
            path: dir.to_path_buf(),
            message: e.to_string(),
        })?;
    }
    let meta = Tensor::from_slice(&[
        row.nfe as f64,
        row.sampling_seconds,
        row.class_accuracy.unwrap_or(f64::NAN),
    ]);
    let mut named = vec![
        ("features".to_string(), row.features.shallow_clone()),
        ("logits".to_string(), row.logits.shallow_clone()),
        ("grid".to_string(), row.grid.shallow_clone()),
        ("meta".to_string(), meta),
    ];
    if let Some(share) = row.style_score {
        named.push(("style".to_string(), Tensor::from_slice(&[share])));
    }
    cm_nets::write_atomic(path, |tmp| {
        cm_nets::write_safetensors_with_metadata(&named, &Default::default(), tmp)
    })?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::progress::Silent;
    use tch::Device;

    struct Messages(Vec<String>);

    impl Progress for Messages {
        fn message(&mut self, message: &str) {
            self.0.push(message.to_string());
        }
    }

    fn row(n: i64) -> SampledRow {
        SampledRow {
            features: Tensor::randn([n, 4], (Kind::Float, Device::Cpu)),
            logits: Tensor::randn([n, 3], (Kind::Float, Device::Cpu)),
            grid: Tensor::rand([2, 1, 4, 4], (Kind::Float, Device::Cpu)),
            nfe: 35,
            sampling_seconds: 1.25,
            class_accuracy: Some(0.75),
            style_score: Some(0.5),
        }
    }

    #[test]
    fn the_identity_of_a_latent_model_covers_its_autoencoder_weights() {
        let dir = tempfile::tempdir().unwrap();
        let write = |name: &str, bytes: &[u8]| {
            let path = dir.path().join(name);
            std::fs::write(&path, bytes).unwrap();
            path
        };
        write("ae.safetensors", b"autoencoder weights");
        let ae_card = write(
            "ae.toml",
            b"kind = \"autoencoder\"\nweights = \"ae.safetensors\"\nscaling_factor = 0.9\n",
        );
        write("model.safetensors", b"model weights");
        let card_text = |autoencoder: bool| {
            let mut text = String::from("kind = \"edm\"\nweights = \"model.safetensors\"\n");
            if autoencoder {
                text.push_str(&format!(
                    "autoencoder = {:?}\n",
                    ae_card.display().to_string()
                ));
            }
            text.push_str(
                "[edm]\nsigma_data = 1.0\nsigma_min = 0.002\nsigma_max = 80.0\nrho = 7.0\n\
                 p_mean = -1.2\np_std = 1.2\n",
            );
            text
        };
        let identity = |autoencoder: bool| {
            let path = write("model.toml", card_text(autoencoder).as_bytes());
            let card = ModelCard::load(&path).unwrap();
            model_identity(&path, &card).unwrap()
        };
        let plain = identity(false);
        let latent = identity(true);
        assert!(!plain.contains("autoencoder") && latent.contains("autoencoder"));
        // The autoencoder retrained in place: same paths, other weights.
        write("ae.safetensors", b"retrained autoencoder weights");
        assert_ne!(identity(true), latent);
        // Its card edited (another scaling factor).
        write(
            "ae.toml",
            b"kind = \"autoencoder\"\nweights = \"ae.safetensors\"\nscaling_factor = 0.8\n",
        );
        let rescaled = identity(true);
        write("ae.safetensors", b"retrained autoencoder weights");
        assert_eq!(identity(true), rescaled);
        assert_ne!(rescaled, latent);
    }

    #[test]
    fn cached_rows_round_trip_and_damaged_ones_are_resampled() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("cache/row-1.safetensors");
        let written = row(6);
        write_cached_row(&path, &written).unwrap();
        let shape = RowShape {
            n: 6,
            features: 4,
            classes: 3,
            image: &[1, 4, 4],
        };
        let read = read_cached_row(&path, shape, &mut Silent).unwrap();
        assert!(read.features.equal(&written.features));
        assert!(read.logits.equal(&written.logits));
        assert!(read.grid.equal(&written.grid));
        assert_eq!((read.nfe, read.sampling_seconds), (35, 1.25));
        // Another N, feature width, class count or image shape, a missing
        // file, a damaged file: not used, and said.
        for other in [
            RowShape { n: 7, ..shape },
            RowShape {
                features: 5,
                ..shape
            },
            RowShape {
                classes: 10,
                ..shape
            },
            RowShape {
                image: &[3, 4, 4],
                ..shape
            },
        ] {
            let mut said = Messages(Vec::new());
            assert!(
                read_cached_row(&path, other, &mut said).is_none(),
                "{other:?}"
            );
            assert!(said.0[0].contains("damaged cache file"), "{:?}", said.0);
        }
        assert!(read_cached_row(&dir.path().join("none"), shape, &mut Silent).is_none());
        std::fs::write(&path, b"not a safetensors file").unwrap();
        let mut said = Messages(Vec::new());
        assert!(read_cached_row(&path, shape, &mut said).is_none());
        assert!(said.0[0].contains("damaged cache file"), "{:?}", said.0);
    }

    #[test]
    fn row_keys_separate_their_parts() {
        assert_ne!(row_key(&[b"ab", b"c"]), row_key(&[b"a", b"bc"]));
        assert_eq!(row_key(&[b"ab", b"c"]), row_key(&[b"ab", b"c"]));
    }
}
