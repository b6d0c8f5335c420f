//! [`Model`]: a network with its own `VarStore`, config, parameter count,
//! FLOP estimate, parameter groups (which variables train) and strict
//! safetensors checkpoints of all or part of its variables.

use std::collections::BTreeMap;
use std::path::Path;

use cm_core::Conditioning;
use tch::{nn, Device, Kind, Tensor};

use crate::autoencoder::Autoencoder;
use crate::checkpoint::{
    read_metadata, sidecar_path, write_atomic, write_safetensors_with_metadata,
};
use crate::config::NetConfig;
use crate::diffusers::{DiffusersUNet, DiffusersUNetConfig};
use crate::dit::DiT;
use crate::error::{NetError, Result};
use crate::layers::MacCounter;
use crate::mlp::ResidualMlp;
use crate::network::Network;
use crate::unet::UNet;

/// Checkpoint metadata key: the cm-rs version that wrote the file.
pub const META_VERSION: &str = "cm_rs.version";
/// Checkpoint metadata key: the network config as JSON (what the `.toml`
/// sidecar holds), so a file can be rebuilt without its sidecar.
pub const META_NET: &str = "cm_rs.net";

/// Checkpoint metadata key of an adapter-only checkpoint
/// ([`Model::set_adapters_only`]): the file holds adapters, not a model.
pub const META_ADAPTERS_ONLY: &str = "cm_rs.adapters_only";

/// The file name of a diffusers model's config, beside its weights.
pub const DIFFUSERS_CONFIG: &str = "config.json";

/// What a [`Model`] holds: a denoising network, or an autoencoder (kept as
/// its type, so [`Model::autoencoder`] can hand out its encoder and
/// decoder).
#[derive(Debug)]
enum Net {
    Denoiser(Box<dyn Network>),
    Autoencoder(Box<Autoencoder>),
}

/// A network with its weights, config and bookkeeping. Teacher, student and
/// target networks are each a `Model` (one `VarStore` per role).
#[derive(Debug)]
pub struct Model {
    pub(crate) vs: nn::VarStore,
    net: Net,
    pub(crate) config: NetConfig,
    macs: u64,
    /// Extra checkpoint metadata (e.g. the parameterization), written by
    /// every save beside the standard keys.
    pub(crate) metadata: BTreeMap<String, String>,
    /// The layers that can carry LoRA adapters and the adapters attached
    /// ([`crate::lora`]).
    pub(crate) adapters: crate::lora::Adapters,
    /// When true, checkpoints ([`Model::save`], [`Model::load_weights`])
    /// hold only the adapters: the base is frozen and comes from elsewhere.
    pub(crate) adapters_only: bool,
}

impl Model {
    /// Builds a freshly initialised network on `device` (initialisation uses
    /// libtorch's generator: seed it with `tch::manual_seed` for
    /// reproducibility). The config is validated first.
    pub fn new(config: NetConfig, device: Device) -> Result<Self> {
        cm_core::Validate::validate(&config)?;
        let vs = nn::VarStore::new(device);
        let mut macs = MacCounter::default();
        let root = vs.root();
        let registry = crate::lora::RegistryScope::begin();
        let net = match &config {
            NetConfig::Unet(c) => Net::Denoiser(Box::new(UNet::new(&root, c, &mut macs))),
            NetConfig::Dit(c) => Net::Denoiser(Box::new(DiT::new(&root, c, &mut macs))),
            NetConfig::Mlp(c) => Net::Denoiser(Box::new(ResidualMlp::new(&root, c, &mut macs))),
            NetConfig::DiffusersUnet2d(c) => {
                Net::Denoiser(Box::new(DiffusersUNet::new(&root, c, &mut macs)))
            }
            NetConfig::Autoencoder(c) => {
                Net::Autoencoder(Box::new(Autoencoder::new(&root, c, &mut macs)))
            }
        };
        let layers = registry.finish();
        let model = Model {
            vs,
            net,
            config,
            macs: macs.macs,
            metadata: BTreeMap::new(),
            adapters: crate::lora::Adapters {
                layers,
                attached: BTreeMap::new(),
            },
            adapters_only: false,
        };
        if model.channels_last() {
            // Measured faster on CPU (docs/benchmarks.md): the U-Net's
            // convolutions run in NHWC when their weights are channels-last.
            model.to_channels_last();
        }
        Ok(model)
    }

    /// Whether the model keeps its 4-D weights channels-last.
    pub(crate) fn channels_last(&self) -> bool {
        matches!(
            self.config,
            NetConfig::Unet(_) | NetConfig::DiffusersUnet2d(_) | NetConfig::Autoencoder(_)
        )
    }

    /// Stores every 4-D weight with NHWC strides (channels-last); libtorch
    /// then runs the convolutions in that layout. Values are unchanged, and
    /// in-place updates (optimizer, EMA, loading) keep the layout.
    pub fn to_channels_last(&self) {
        tch::no_grad(|| {
            for (_, mut v) in self.vs.variables() {
                if v.dim() == 4 {
                    let nhwc = v.permute([0, 2, 3, 1]).contiguous().permute([0, 3, 1, 2]);
                    v.set_data(&nhwc);
                }
            }
        });
    }

    /// `F(x, c_noise, cond)`; see [`Network`] for the shape contract. Call
    /// [`Model::check_input`] first on data from outside the program.
    pub fn forward_t(
        &self,
        x: &Tensor,
        c_noise: &Tensor,
        cond: Conditioning<'_>,
        train: bool,
    ) -> Tensor {
        match &self.net {
            Net::Denoiser(net) => net.forward_t(x, c_noise, cond, train),
            Net::Autoencoder(ae) => ae.forward_t(x, c_noise, cond, train),
        }
    }

    /// The encoder and decoder when the network is an autoencoder
    /// (`arch = "autoencoder"`), else `None`.
    pub fn autoencoder(&self) -> Option<&Autoencoder> {
        match &self.net {
            Net::Autoencoder(ae) => Some(ae),
            Net::Denoiser(_) => None,
        }
    }

    /// Checks `x` (`[B, ...sample_shape]`, floating point) and `cond`
    /// (class labels `[B]` int64 in `0..=num_classes`, only for
    /// class-conditional networks; no guidance scale: these networks do not
    /// embed one) against the network's contract.
    pub fn check_input(&self, x: &Tensor, cond: Conditioning<'_>) -> Result<()> {
        if let Some(w) = cond.guidance {
            if !self.config.embeds_guidance() {
                return Err(NetError::InvalidInput(
                    "this network does not embed a guidance scale: apply classifier-free guidance \
                     around the denoiser instead (cm_core::ClassifierFreeGuidance)"
                        .into(),
                ));
            }
            let b = x.size().first().copied().unwrap_or(0);
            if w.size() != [b] || !w.is_floating_point() {
                return Err(NetError::InvalidInput(format!(
                    "expected floating-point guidance scales of shape [{b}], found {:?} {:?}",
                    w.kind(),
                    w.size()
                )));
            }
        }
        let class = cond.class;
        let want = self.config.sample_shape();
        let got = x.size();
        if got.len() != want.len() + 1 || got[1..] != want[..] || got[0] == 0 {
            return Err(NetError::InvalidInput(format!(
                "expected a batch of shape [B, {}] (B >= 1), found {got:?}",
                want.iter()
                    .map(|d| d.to_string())
                    .collect::<Vec<_>>()
                    .join(", ")
            )));
        }
        if !x.is_floating_point() {
            return Err(NetError::InvalidInput(format!(
                "expected floating-point samples, found {:?}",
                x.kind()
            )));
        }
        let n = self.config.num_classes() as i64;
        let has_null = self.config.has_null_class();
        if class.is_none() && n > 0 && !has_null {
            return Err(NetError::InvalidInput(format!(
                "this network is class-conditional without a null class: pass a label in 0..{n} \
                 for every sample"
            )));
        }
        if let Some(labels) = class {
            if n == 0 {
                return Err(NetError::InvalidInput(
                    "this network is unconditional: pass no class labels".into(),
                ));
            }
            if labels.size() != [got[0]] || labels.kind() != Kind::Int64 {
                return Err(NetError::InvalidInput(format!(
                    "expected int64 labels of shape [{}], found {:?} {:?}",
                    got[0],
                    labels.kind(),
                    labels.size()
                )));
            }
            let (lo, hi) = (labels.min().int64_value(&[]), labels.max().int64_value(&[]));
            if lo < 0 || hi > n || (hi == n && !has_null) {
                return Err(NetError::InvalidInput(if has_null {
                    format!("labels must lie in 0..={n} ({n} = null class), found {lo}..={hi}")
                } else {
                    format!("labels must lie in 0..{n} (this network has no null class), found {lo}..={hi}")
                }));
            }
        }
        Ok(())
    }

    /// The config the network was built from.
    pub fn config(&self) -> &NetConfig {
        &self.config
    }

    /// The weights.
    pub fn var_store(&self) -> &nn::VarStore {
        &self.vs
    }

    /// The weights, mutably (freezing, optimizers, device moves).
    pub fn var_store_mut(&mut self) -> &mut nn::VarStore {
        &mut self.vs
    }

    /// The device the weights live on.
    pub fn device(&self) -> Device {
        self.vs.device()
    }

    /// Number of parameters (all of them, whichever group trains; see
    /// [`Model::trainable_variables`] for the ones that train now).
    pub fn num_params(&self) -> i64 {
        self.vs
            .trainable_variables()
            .iter()
            .map(Tensor::numel)
            .sum::<usize>() as i64
    }

    /// Estimated floating-point operations of one forward pass per sample
    /// (2 per multiply-accumulate of the convolutions, linear layers and
    /// attention; normalisation and activations are not counted).
    pub fn flops_per_sample(&self) -> u64 {
        2 * self.macs
    }

    /// The null class label (`num_classes`), for classifier-free guidance;
    /// none for an unconditional network or one without a null class.
    pub fn null_class(&self) -> Option<i64> {
        let n = self.config.num_classes();
        (n > 0 && self.config.has_null_class()).then_some(n as i64)
    }

    /// Copies every weight from `other` (same architecture), e.g. to start a
    /// student or target network from a teacher.
    /// The metadata is not copied: a copy plays another role (a target
    /// network is not the model a card describes); see
    /// [`Model::copy_metadata_from`].
    pub fn copy_from(&mut self, other: &Model) -> Result<()> {
        self.vs.copy(&other.vs)?;
        Ok(())
    }

    /// Copies every weight `other` has into the same-named weight here and
    /// returns the names of the weights `other` lacks (left as initialised):
    /// a student that adds layers to its teacher (LCM's w-embedding
    /// projection, zero-initialised) starts from the teacher's weights. A
    /// weight of `other` missing here, or of another shape, is an error.
    pub fn copy_matching_from(&mut self, other: &Model) -> Result<Vec<String>> {
        let mine = self.vs.variables();
        let theirs = other.vs.variables();
        for (name, t) in &theirs {
            match mine.get(name) {
                Some(v) if v.size() == t.size() => {}
                Some(v) => {
                    return Err(NetError::InvalidInput(format!(
                        "weight `{name}` is {:?} in the source and {:?} here",
                        t.size(),
                        v.size()
                    )))
                }
                None => {
                    return Err(NetError::InvalidInput(format!(
                        "the source has weight `{name}`, this network has not"
                    )))
                }
            }
        }
        let mut missing = Vec::new();
        tch::no_grad(|| {
            for (name, mut v) in mine {
                match theirs.get(&name) {
                    Some(t) => {
                        v.copy_(t);
                    }
                    None => missing.push(name),
                }
            }
        });
        missing.sort();
        Ok(missing)
    }

    /// Takes `other`'s extra metadata (e.g. an EMA copy of the online
    /// network describes the same model).
    pub fn copy_metadata_from(&mut self, other: &Model) {
        self.metadata = other.metadata.clone();
    }

    /// Adds a string to the metadata every checkpoint of this model carries
    /// in its safetensors header (a run stores its parameterization this
    /// way, so a reader needs nothing but the file). `format`,
    /// [`META_VERSION`] and [`META_NET`] are always written and cannot be
    /// replaced.
    pub fn set_metadata(&mut self, key: impl Into<String>, value: impl Into<String>) {
        self.metadata.insert(key.into(), value.into());
    }

    /// The extra metadata (what [`Model::set_metadata`] added, or what the
    /// loaded checkpoint carried beyond the standard keys).
    pub fn metadata(&self) -> &BTreeMap<String, String> {
        &self.metadata
    }

    /// The full header metadata a save writes: the extras, then `format =
    /// "pt"` (the safetensors convention for PyTorch tensors), the cm-rs
    /// version and the network config as JSON.
    pub fn checkpoint_metadata(&self) -> BTreeMap<String, String> {
        let mut meta = self.metadata.clone();
        meta.insert("format".into(), "pt".into());
        meta.insert(META_VERSION.into(), env!("CARGO_PKG_VERSION").into());
        meta.insert(
            META_NET.into(),
            serde_json::to_string(&self.config).expect("network configs serialize to JSON"),
        );
        if self.adapters_only {
            // The file is not a model on its own: say so, and name the base.
            meta.insert(META_ADAPTERS_ONLY.into(), "true".into());
            meta.insert(crate::lora::META_LORA_BASE.into(), self.base_hash());
        }
        meta
    }

    /// Writes the weights to `path` (safetensors) and the config to the
    /// sidecar `path` with extension `.toml`, each atomically (temporary file,
    /// then rename), so an interrupted save never leaves a torn file.
    ///
    /// A model in adapter-only mode ([`Model::set_adapters_only`]) writes
    /// only its adapters' variables, without a sidecar. Otherwise the
    /// adapters' variables are left out (merged ones live in the weights);
    /// an adapter still applied on the fly is an error, not a silent loss.
    pub fn save(&self, path: impl AsRef<Path>) -> Result<()> {
        let path = path.as_ref();
        if self.adapters_only {
            return self
                .save_subset(path, crate::lora::is_adapter_variable)
                .map(|_| ());
        }
        if let Some((name, _)) = self.adapters.attached.iter().find(|(_, a)| !a.merged) {
            return Err(NetError::Adapter {
                adapter: name.clone(),
                reason: format!(
                    "applied on the fly: write it with save_adapter, or merge it, before saving \
                     the base weights to {}",
                    path.display()
                ),
            });
        }
        let sidecar = sidecar_path(path);
        let config = toml::to_string(&self.config).expect("network configs serialize to TOML");
        write_atomic(&sidecar, |tmp| {
            std::fs::write(tmp, config.as_bytes()).map_err(|source| NetError::Io {
                action: "cannot write",
                path: tmp.to_path_buf(),
                source,
            })
        })?;
        // safetensors stores contiguous (NCHW) data whatever the memory
        // layout. Merged adapters live in the base weights: their own
        // variables are not part of the model file.
        let mut named: Vec<(String, Tensor)> = self
            .vs
            .variables()
            .into_iter()
            .filter(|(n, _)| !crate::lora::is_adapter_variable(n))
            .map(|(n, t)| (n, t.contiguous()))
            .collect();
        named.sort_by(|a, b| a.0.cmp(&b.0));
        let meta = self.checkpoint_metadata();
        write_atomic(path, |tmp| {
            write_safetensors_with_metadata(&named, &meta, tmp)
        })
    }

    /// Builds the network described by the sidecar config of `path` (or,
    /// without a sidecar, by the file's [`META_NET`] metadata) and loads its
    /// weights; the file's extra metadata is kept on the model.
    ///
    /// A weights file with neither, but a diffusers `config.json` beside it
    /// (a diffusers model folder), is read as that model
    /// ([`Model::from_diffusers`]).
    pub fn from_checkpoint(path: impl AsRef<Path>, device: Device) -> Result<Self> {
        let path = path.as_ref();
        let sidecar = sidecar_path(path);
        let meta = read_metadata(path)?;
        if meta.contains_key(META_ADAPTERS_ONLY) {
            return Err(NetError::InvalidInput(format!(
                "{} holds LoRA adapters only (a checkpoint of an adapter run), not a model: load \
                 the run's model.toml, which names the base and the adapter file",
                path.display()
            )));
        }
        let diffusers_config = path.with_file_name(DIFFUSERS_CONFIG);
        if !sidecar.exists() && !meta.contains_key(META_NET) && diffusers_config.is_file() {
            return Self::from_diffusers(path, device);
        }
        let config: NetConfig = if sidecar.exists() || !meta.contains_key(META_NET) {
            cm_core::load_toml(&sidecar)?
        } else {
            let config: NetConfig = serde_json::from_str(&meta[META_NET]).map_err(|e| {
                NetError::InvalidInput(format!(
                    "{}: metadata `{META_NET}` is not a network config ({e})",
                    path.display()
                ))
            })?;
            cm_core::Validate::validate(&config)?;
            config
        };
        let mut model = Model::new(config, device)?;
        model.load_weights(path)?;
        model.metadata = meta
            .into_iter()
            .filter(|(k, _)| k != "format" && k != META_VERSION && k != META_NET)
            .collect();
        Ok(model)
    }

    /// Loads a diffusers `UNet2DModel` from its weights file `weights`
    /// (`diffusion_pytorch_model.safetensors`, f32, f16 or bf16) and the
    /// `config.json` beside it: the network is built from the config
    /// ([`DiffusersUNetConfig::from_json`]: unknown or unsupported options
    /// are errors naming the field) and the weights loaded strictly (every
    /// missing, unexpected or mis-shaped tensor named), converted to f32.
    pub fn from_diffusers(weights: impl AsRef<Path>, device: Device) -> Result<Self> {
        let weights = weights.as_ref();
        let config = DiffusersUNetConfig::load(&weights.with_file_name(DIFFUSERS_CONFIG))?;
        let model = Model::new(NetConfig::DiffusersUnet2d(config), device)?;
        crate::checkpoint::load_strict_tensors_cast(weights, model.vs.variables(), &[])?;
        Ok(model)
    }

    /// Marks which variables train (a parameter group): those `trains`
    /// accepts by name keep gradients, the others are frozen. Adapters train
    /// alone this way, the base weights frozen. Returns how many variables
    /// train. (`VarStore::freeze` / `unfreeze` act on every parameter and so
    /// replace the group.)
    pub fn set_trainable(&mut self, trains: impl Fn(&str) -> bool) -> usize {
        let mut count = 0;
        let params = self.trainable_names();
        for (name, var) in self.vs.variables() {
            // Buffers (created without gradients) never train.
            if params.binary_search(&name).is_err() {
                continue;
            }
            let on = trains(&name);
            let _ = var.set_requires_grad(on);
            count += on as usize;
        }
        count
    }

    /// Names of the variables registered as parameters (not buffers).
    fn trainable_names(&self) -> Vec<String> {
        let params: std::collections::HashSet<usize> = self
            .vs
            .trainable_variables()
            .iter()
            .filter(|p| p.numel() > 0)
            .map(|p| p.data_ptr() as usize)
            .collect();
        let mut names: Vec<String> = self
            .vs
            .variables()
            .into_iter()
            .filter(|(_, t)| t.numel() > 0 && params.contains(&(t.data_ptr() as usize)))
            .map(|(n, _)| n)
            .collect();
        names.sort();
        names
    }

    /// The variables that train now, by name, sorted by name: what an
    /// optimizer takes (see [`Model::set_trainable`]).
    pub fn trainable_variables(&self) -> Vec<(String, Tensor)> {
        let mut vars: Vec<(String, Tensor)> = self
            .vs
            .variables()
            .into_iter()
            .filter(|(_, t)| t.requires_grad())
            .collect();
        vars.sort_by(|a, b| a.0.cmp(&b.0));
        vars
    }

    /// Writes only the variables `keep` accepts (e.g. adapters) to `path`
    /// (safetensors, atomically), without a config sidecar: a partial
    /// checkpoint belongs to a model built from elsewhere. Returns how many
    /// tensors were written; an empty selection is an error.
    pub fn save_subset(
        &self,
        path: impl AsRef<Path>,
        keep: impl Fn(&str) -> bool,
    ) -> Result<usize> {
        let path = path.as_ref();
        let mut named: Vec<(String, Tensor)> = self
            .vs
            .variables()
            .into_iter()
            .filter(|(n, _)| keep(n))
            .map(|(n, t)| (n, t.contiguous()))
            .collect();
        if named.is_empty() {
            return Err(NetError::InvalidInput(format!(
                "no variable of the network is selected for {}",
                path.display()
            )));
        }
        named.sort_by(|a, b| a.0.cmp(&b.0));
        let meta = self.checkpoint_metadata();
        write_atomic(path, |tmp| {
            write_safetensors_with_metadata(&named, &meta, tmp)
        })?;
        Ok(named.len())
    }

    /// Loads weights from a safetensors file into this network. Every
    /// tensor must match by name, shape and dtype: missing, unexpected and
    /// mis-shaped tensors are all reported, each by name, and nothing is
    /// loaded unless all match.
    ///
    /// A model in adapter-only mode loads only its adapters' variables.
    pub fn load_weights(&mut self, path: impl AsRef<Path>) -> Result<()> {
        if self.adapters_only {
            let path = path.as_ref();
            let meta = read_metadata(path)?;
            if let Some(base) = meta.get(crate::lora::META_LORA_BASE) {
                let own = self.base_hash();
                if *base != own && !self.lineage().contains(base) {
                    return Err(NetError::Adapter {
                        adapter: path.display().to_string(),
                        reason: format!(
                            "adapters trained on base weights {base:?}, but this model's are \
                             {own:?}: the base changed since the checkpoint was written"
                        ),
                    });
                }
            }
            return self.load_subset(path, crate::lora::is_adapter_variable);
        }
        self.load_subset(path, |n| !crate::lora::is_adapter_variable(n))
    }

    /// Loads the variables `keep` accepts from a file that holds exactly
    /// those (a partial checkpoint written by [`Model::save_subset`]), with
    /// the checks of [`Model::load_weights`].
    pub fn load_subset(
        &mut self,
        path: impl AsRef<Path>,
        keep: impl Fn(&str) -> bool,
    ) -> Result<()> {
        let vars: Vec<(String, Tensor)> = self
            .vs
            .variables()
            .into_iter()
            .filter(|(n, _)| keep(n))
            .collect();
        if vars.is_empty() {
            return Err(NetError::InvalidInput(format!(
                "no variable of the network is selected to load from {}",
                path.as_ref().display()
            )));
        }
        crate::checkpoint::load_strict_tensors(path.as_ref(), vars, &[])
    }
}
