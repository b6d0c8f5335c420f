//! LoRA: low-rank adapters (Hu et al. 2021) on a network's linear and
//! convolution layers, as LCM-LoRA (Luo et al. 2023) trains them.
//!
//! An adapter on a layer with weight `W` adds `lambda (alpha / r) B A`:
//! for a linear layer `A` is `[r, in]` and `B` is `[out, r]`; for a `k x k`
//! convolution `A` is a `k x k` convolution to `r` channels (the layer's
//! stride, padding and dilation) and `B` a 1x1 convolution back, so `B A`
//! reshapes to `W`'s shape. `A` starts uniform in `+-1/sqrt(fan_in)` (PEFT's
//! `kaiming_uniform_(a = sqrt(5))`), `B` at zero, so a fresh adapter leaves
//! the network unchanged. Optional dropout acts on the adapter's input.
//!
//! Layers that can carry adapters are built as [`Adapted`] (a tch layer and
//! a slot); which ones get one is chosen by module-path patterns
//! ([`LoraConfig::targets`], `*` matching any run of characters). The
//! adapter's weights are variables of the model's own `VarStore`, named as
//! PEFT names them in memory (`<module>.lora_A.<adapter>.weight`), so the
//! shared training loop, its parameter groups, EMAs and checkpoints handle
//! them like any weight; adapter files hold only them, under PEFT's file
//! names (`<module>.lora_A.weight`). Any number of adapters stack, each with
//! its own weight `lambda`; [`crate::Model::merge_adapter`] folds one into
//! the base weights and [`crate::Model::unmerge_adapter`] takes it out again.

use std::cell::RefCell;
use std::collections::BTreeMap;
use std::path::Path;
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::{Arc, Mutex};

use serde::{Deserialize, Serialize};
use tch::nn::{self, Module};
use tch::Tensor;

use cm_core::{CoreError, Validate};

use crate::checkpoint::{
    read_metadata, read_shapes, write_atomic, write_safetensors_with_metadata,
};
use crate::error::{NetError, Result};
use crate::model::Model;

/// The largest rank an adapter may have.
pub const MAX_LORA_RANK: usize = 1024;
/// The most target patterns a config may list.
pub const MAX_LORA_TARGETS: usize = 64;
/// The longest target pattern or adapter name, in bytes.
pub const MAX_LORA_NAME: usize = 256;

/// Adapter-file metadata key: the [`LoraConfig`] as JSON.
pub const META_LORA: &str = "cm_rs.lora";
/// Adapter-file metadata key: the hash of the base weights the adapter was
/// trained on ([`crate::Model::base_hash`]).
pub const META_LORA_BASE: &str = "cm_rs.lora.base";
/// Model metadata key: comma-separated base hashes the model derives from
/// (a model with merged adapters keeps its base's hash here, so adapters of
/// that base still load into it).
pub const META_LINEAGE: &str = "cm_rs.lineage";

/// PEFT's name of an adapter's down-projection.
pub const LORA_A: &str = "lora_A";
/// PEFT's name of an adapter's up-projection.
pub const LORA_B: &str = "lora_B";

/// The module-path patterns of LCM-LoRA's targets (diffusers'
/// `train_lcm_distill_lora_sd.py`: `to_q`, `to_k`, `to_v`, `to_out.0`,
/// `conv1`, `conv2`, `conv_shortcut`, `downsamplers.0.conv`,
/// `upsamplers.0.conv`, `time_emb_proj`, the transformer projections), in
/// this project's names: the U-Net's attention `qkv` / `proj`, each block's
/// `conv0` (which resamples in down and up blocks; a learned transposed
/// up-sampling convolution takes no adapter), `conv1`, `skip` and embedding
/// projection `affine`; the DiT's attention and MLP (`mlp.fc1`, `mlp.fc2`);
/// the toy MLP's `fc1`, `fc2` and `emb`.
pub const LCM_LORA_TARGETS: [&str; 9] = [
    "*.attn.qkv",
    "*.attn.proj",
    "*.conv0",
    "*.conv1",
    "*.skip",
    "*.affine",
    "*.fc1",
    "*.fc2",
    "*.emb",
];

/// An adapter's shape (`[lora]` of a config, or an adapter file's
/// metadata).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LoraConfig {
    /// The rank `r`.
    pub rank: usize,
    /// `alpha`: the adapter is scaled by `alpha / r`.
    pub alpha: f64,
    /// Module-path patterns of the layers that get an adapter (`*` matches
    /// any run of characters, the whole path must match).
    pub targets: Vec<String>,
    /// Dropout on the adapter's input in training.
    pub dropout: f64,
}

impl Default for LoraConfig {
    /// Rank 8, `alpha = r` (scale 1), LCM-LoRA's targets, no dropout.
    fn default() -> Self {
        LoraConfig {
            rank: 8,
            alpha: 8.0,
            targets: LCM_LORA_TARGETS.iter().map(|s| s.to_string()).collect(),
            dropout: 0.0,
        }
    }
}

impl LoraConfig {
    /// `alpha / r`.
    pub fn scale(&self) -> f64 {
        self.alpha / self.rank as f64
    }

    /// Whether `module` (a dotted path) is a target.
    pub fn targets_module(&self, module: &str) -> bool {
        self.targets.iter().any(|p| glob_match(p, module))
    }

    /// Checks the ranges; `prefix` is the dotted path of the section.
    pub fn validate_at(&self, prefix: &str) -> cm_core::Result<()> {
        if !(1..=MAX_LORA_RANK).contains(&self.rank) {
            return Err(CoreError::invalid(
                format!("{prefix}rank"),
                self.rank,
                format!("a rank in 1..={MAX_LORA_RANK}"),
            ));
        }
        if !(self.alpha.is_finite() && self.alpha > 0.0 && self.alpha <= 1e6) {
            return Err(CoreError::invalid(
                format!("{prefix}alpha"),
                self.alpha,
                "a finite alpha in (0, 1e6]",
            ));
        }
        if !(0.0..1.0).contains(&self.dropout) {
            return Err(CoreError::invalid(
                format!("{prefix}dropout"),
                self.dropout,
                "a probability in [0, 1)",
            ));
        }
        if self.targets.is_empty() || self.targets.len() > MAX_LORA_TARGETS {
            return Err(CoreError::invalid(
                format!("{prefix}targets"),
                self.targets.len(),
                format!("1..={MAX_LORA_TARGETS} module-path patterns"),
            ));
        }
        for t in &self.targets {
            let ok = !t.is_empty()
                && t.len() <= MAX_LORA_NAME
                && t.chars()
                    .all(|c| c.is_ascii_alphanumeric() || "._-*".contains(c));
            if !ok {
                return Err(CoreError::invalid(
                    format!("{prefix}targets"),
                    format!("{t:?}"),
                    format!(
                        "module-path patterns of at most {MAX_LORA_NAME} letters, digits, '.', \
                         '_', '-' and '*'"
                    ),
                ));
            }
        }
        Ok(())
    }
}

impl Validate for LoraConfig {
    fn validate(&self) -> cm_core::Result<()> {
        self.validate_at("lora.")
    }
}

/// Checks an adapter's name: it becomes a component of variable names.
pub fn check_adapter_name(name: &str) -> cm_core::Result<()> {
    let ok = !name.is_empty()
        && name.len() <= MAX_LORA_NAME
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-');
    if ok {
        Ok(())
    } else {
        Err(CoreError::invalid(
            "adapter name",
            format!("{name:?}"),
            format!("1..={MAX_LORA_NAME} letters, digits, '_' or '-'"),
        ))
    }
}

/// Whether `text` matches `pattern` in full, `*` matching any run of
/// characters (dots included).
pub fn glob_match(pattern: &str, text: &str) -> bool {
    let (p, t) = (pattern.as_bytes(), text.as_bytes());
    // Iterative wildcard matching with one backtrack point: linear in
    // practice, never exponential.
    let (mut pi, mut ti) = (0, 0);
    let mut star: Option<(usize, usize)> = None;
    while ti < t.len() {
        if pi < p.len() && p[pi] == b'*' {
            star = Some((pi, ti));
            pi += 1;
        } else if pi < p.len() && p[pi] == t[ti] {
            pi += 1;
            ti += 1;
        } else if let Some((sp, st)) = star {
            pi = sp + 1;
            ti = st + 1;
            star = Some((sp, st + 1));
        } else {
            return false;
        }
    }
    p[pi..].iter().all(|&c| c == b'*')
}

/// How a layer applies its weight (and so its adapters).
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) enum Geometry {
    Linear,
    /// An embedding table `[N, D]`, adapted as the linear map from one-hot
    /// `N` to `D` it is (PEFT's `lora_embedding_A` `[r, N]` and
    /// `lora_embedding_B` `[D, r]`): the registered weight is the whole
    /// table (`[N, D]`) and [`LayerHandle::weight`] gives its transposed
    /// view `[D, N]` when asked, so `B A` adds to it in place.
    Embedding,
    Conv {
        stride: [i64; 2],
        padding: [i64; 2],
        dilation: [i64; 2],
    },
}

/// One adapter applied on the fly.
#[derive(Debug)]
struct Active {
    name: String,
    a: Tensor,
    b: Tensor,
    /// `lambda alpha / r`.
    scale: f64,
    dropout: f64,
}

/// A layer's adapters (shared between the layer and its model).
#[derive(Debug, Default)]
pub(crate) struct SlotState {
    adapters: Vec<Active>,
}

/// Bumped whenever a slot changes (adapters added, re-weighted, merged):
/// caches keyed by weight versions include it.
static GENERATION: AtomicI64 = AtomicI64::new(0);

/// A layer that can carry adapters: the tch layer, with a slot the model
/// fills.
#[derive(Debug)]
pub struct Adapted<L> {
    /// The base layer.
    pub base: L,
    slot: Arc<Mutex<SlotState>>,
    geometry: Geometry,
}

/// One adaptable layer of a model, as the model's registry holds it.
#[derive(Debug)]
pub(crate) struct LayerHandle {
    slot: Arc<Mutex<SlotState>>,
    geometry: Geometry,
    /// The base variable (`[out, in]`, `[out, in, k, k]`, or an embedding
    /// table `[N, D]`).
    weight: Tensor,
}

impl LayerHandle {
    fn shallow(&self) -> LayerHandle {
        LayerHandle {
            slot: self.slot.clone(),
            geometry: self.geometry,
            weight: self.weight.shallow_clone(),
        }
    }
}

thread_local! {
    /// The layers registered while a [`crate::Model`] is built on this
    /// thread: [`Adapted`] layers register here so the model can find
    /// them by path without every constructor passing a registry along.
    static REGISTRY: RefCell<Option<BTreeMap<String, LayerHandle>>> = const { RefCell::new(None) };
}

/// Collects the adaptable layers built on this thread until
/// [`RegistryScope::finish`]; an enclosing scope's collection (a model
/// built while another is) is put back when this one ends.
pub(crate) struct RegistryScope {
    /// The enclosing scope's collection, until this scope ends.
    outer: Option<Option<BTreeMap<String, LayerHandle>>>,
}

impl RegistryScope {
    pub(crate) fn begin() -> RegistryScope {
        let outer = REGISTRY.with(|r| r.borrow_mut().replace(BTreeMap::new()));
        RegistryScope { outer: Some(outer) }
    }

    /// This scope's layers; the enclosing collection is back in place.
    pub(crate) fn finish(mut self) -> BTreeMap<String, LayerHandle> {
        let outer = self.outer.take().flatten();
        REGISTRY.with(|r| std::mem::replace(&mut *r.borrow_mut(), outer).unwrap_or_default())
    }
}

impl Drop for RegistryScope {
    fn drop(&mut self) {
        // Still set only when building panicked before `finish`.
        if let Some(outer) = self.outer.take() {
            REGISTRY.with(|r| *r.borrow_mut() = outer);
        }
    }
}

fn register(path: &nn::Path, weight: &Tensor, geometry: Geometry) -> Arc<Mutex<SlotState>> {
    let slot = Arc::new(Mutex::new(SlotState::default()));
    let name = path.components().collect::<Vec<_>>().join(".");
    REGISTRY.with(|r| {
        if let Some(map) = r.borrow_mut().as_mut() {
            map.insert(
                name,
                LayerHandle {
                    slot: slot.clone(),
                    geometry,
                    weight: weight.shallow_clone(),
                },
            );
        }
    });
    slot
}

/// A linear layer that can carry adapters.
pub type AdaptedLinear = Adapted<nn::Linear>;
/// An embedding table (class labels) that can carry adapters.
pub type AdaptedEmbedding = Adapted<nn::Embedding>;
/// A 2-D convolution that can carry adapters.
pub type AdaptedConv2d = Adapted<nn::Conv2D>;

/// Wraps a linear layer built at `p`.
pub fn adapted_linear(p: &nn::Path, base: nn::Linear) -> AdaptedLinear {
    let slot = register(p, &base.ws, Geometry::Linear);
    Adapted {
        base,
        slot,
        geometry: Geometry::Linear,
    }
}

/// Wraps an embedding table built at `p`: its adapters take the labels'
/// one-hot rows, `E[y] + lambda (alpha/r) B A[:, y]`, and no dropout.
pub fn adapted_embedding(p: &nn::Path, base: nn::Embedding) -> AdaptedEmbedding {
    let slot = register(p, &base.ws, Geometry::Embedding);
    Adapted {
        base,
        slot,
        geometry: Geometry::Embedding,
    }
}

/// Builds a linear layer at `p` with `build` and wraps it.
pub fn adapted(p: nn::Path, build: impl FnOnce(&nn::Path) -> nn::Linear) -> AdaptedLinear {
    let base = build(&p);
    adapted_linear(&p, base)
}

/// Builds a `k x k` convolution at `p` (`config.groups` must be 1) that can
/// carry adapters.
pub fn adapted_conv(
    p: &nn::Path,
    cin: i64,
    cout: i64,
    k: i64,
    config: nn::ConvConfig,
) -> AdaptedConv2d {
    assert_eq!(config.groups, 1, "LoRA adapts ungrouped convolutions");
    assert!(
        matches!(config.padding_mode, nn::PaddingMode::Zeros),
        "LoRA's A convolution pads with zeros like the layer"
    );
    let geometry = Geometry::Conv {
        stride: [config.stride; 2],
        padding: [config.padding; 2],
        dilation: [config.dilation; 2],
    };
    let base = nn::conv2d(p, cin, cout, k, config);
    let slot = register(p, &base.ws, geometry);
    Adapted {
        base,
        slot,
        geometry,
    }
}

impl<L: Module> Adapted<L> {
    /// The base layer's output plus each active adapter's; `train` switches
    /// the adapters' dropout on.
    pub fn forward_t(&self, x: &Tensor, train: bool) -> Tensor {
        let out = self.base.forward(x);
        // A panic while the lock was held leaves valid data behind.
        let slot = self.slot.lock().unwrap_or_else(|e| e.into_inner());
        slot.adapters.iter().fold(out, |acc, ad| {
            let delta = match self.geometry {
                Geometry::Linear => crate::layers::dropout(x, ad.dropout, train)
                    .linear::<Tensor>(&ad.a, None)
                    .linear::<Tensor>(&ad.b, None),
                // x holds labels: the one-hot product is a column lookup.
                Geometry::Embedding => {
                    ad.a.tr()
                        .index_select(0, &x.reshape([-1]))
                        .linear::<Tensor>(&ad.b, None)
                        .reshape(out_shape(x, &ad.b))
                }
                Geometry::Conv {
                    stride,
                    padding,
                    dilation,
                } => crate::layers::dropout(x, ad.dropout, train)
                    .conv2d::<Tensor>(&ad.a, None, stride, padding, dilation, 1)
                    .conv2d::<Tensor>(&ad.b, None, [1, 1], [0, 0], [1, 1], 1),
            };
            acc + delta * ad.scale
        })
    }

    /// Whether no adapter is applied on the fly (none attached, or all
    /// merged into the base weights): the layer is its base layer.
    pub fn is_plain(&self) -> bool {
        self.slot
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .adapters
            .is_empty()
    }

    /// Version counters of what the output depends on besides the input
    /// (the base variables given, the adapters' weights, the slot's
    /// configuration), for caches of derived values.
    pub fn versions(&self, base: &[&Tensor], out: &mut Vec<i64>) {
        out.extend(base.iter().map(|t| t.internal_version()));
        out.push(GENERATION.load(Ordering::Relaxed));
        let slot = self.slot.lock().unwrap_or_else(|e| e.into_inner());
        for ad in &slot.adapters {
            out.push(ad.a.internal_version());
            out.push(ad.b.internal_version());
        }
    }
}

/// The shape of an embedding lookup of labels `x`: `x`'s shape plus `D`.
fn out_shape(x: &Tensor, b: &Tensor) -> Vec<i64> {
    let mut shape = x.size();
    shape.push(b.size()[0]);
    shape
}

impl Adapted<nn::Embedding> {
    /// Version counters of the table and adapters.
    pub fn all_versions(&self, out: &mut Vec<i64>) {
        self.versions(&[&self.base.ws], out);
    }
}

impl Adapted<nn::Linear> {
    /// Version counters of the weight, bias and adapters.
    pub fn all_versions(&self, out: &mut Vec<i64>) {
        let mut base = vec![&self.base.ws];
        base.extend(self.base.bs.iter());
        self.versions(&base, out);
    }
}

impl<L: Module> Module for Adapted<L> {
    /// Evaluation-mode forward (no adapter dropout).
    fn forward(&self, x: &Tensor) -> Tensor {
        self.forward_t(x, false)
    }
}

/// An adapter a model carries.
#[derive(Debug, Clone, PartialEq)]
pub struct AdapterInfo {
    /// Its shape.
    pub config: LoraConfig,
    /// `lambda`: the adapter adds `lambda (alpha / r) B A`.
    pub weight: f64,
    /// Whether it is folded into the base weights (then not applied on the
    /// fly).
    pub merged: bool,
    /// The layers it adapts, by module path.
    pub modules: Vec<String>,
    /// The base hash its file named (or the model's, for a fresh adapter).
    pub base_hash: String,
}

/// The adapters of a model: its adaptable layers and what is attached.
#[derive(Debug, Default)]
pub(crate) struct Adapters {
    pub(crate) layers: BTreeMap<String, LayerHandle>,
    pub(crate) attached: BTreeMap<String, AdapterInfo>,
}

impl Adapters {
    /// The adaptable layers, cloned shallowly (for a model of the same
    /// architecture).
    pub(crate) fn layer(&self, module: &str) -> Option<LayerHandle> {
        self.layers.get(module).map(LayerHandle::shallow)
    }
}

/// The variable names of adapter `name` on `module`: `(A, B)`.
pub fn variable_names(module: &str, name: &str) -> (String, String) {
    (
        format!("{module}.{LORA_A}.{name}.weight"),
        format!("{module}.{LORA_B}.{name}.weight"),
    )
}

/// The adapter-file keys of `module`: `(A, B)` (PEFT's file names).
pub fn file_keys(module: &str) -> (String, String) {
    (
        format!("{module}.{LORA_A}.weight"),
        format!("{module}.{LORA_B}.weight"),
    )
}

/// Whether a model variable belongs to an adapter.
pub fn is_adapter_variable(name: &str) -> bool {
    name.contains(&format!(".{LORA_A}.")) || name.contains(&format!(".{LORA_B}."))
}

/// The shapes of `(A, B)` for a base weight of `weight_shape`.
pub(crate) fn adapter_shapes(weight_shape: &[i64], rank: i64) -> (Vec<i64>, Vec<i64>) {
    match weight_shape {
        [out, inp] => (vec![rank, *inp], vec![*out, rank]),
        [out, inp, kh, kw] => (vec![rank, *inp, *kh, *kw], vec![*out, rank, 1, 1]),
        other => unreachable!("adaptable layers have 2-D or 4-D weights, found {other:?}"),
    }
}

/// `B A` in the shape of the base weight.
pub(crate) fn delta_weight(a: &Tensor, b: &Tensor, weight_shape: &[i64]) -> Tensor {
    let r = a.size()[0];
    let out = b.size()[0];
    b.reshape([out, r])
        .matmul(&a.reshape([r, -1]))
        .reshape(weight_shape)
}

impl LayerHandle {
    /// The weight as its adapters see it, sharing the variable's storage:
    /// `[out, in]` or `[out, in, k, k]`; an embedding table transposed to
    /// `[D, N]`. Taken from the variable each time, so a `set_data` on it
    /// (a device or dtype change) is followed.
    pub(crate) fn weight(&self) -> Tensor {
        match self.geometry {
            Geometry::Embedding => self.weight.tr(),
            _ => self.weight.shallow_clone(),
        }
    }

    /// Attaches (or with `scale = None`, detaches) adapter `name` on the
    /// fly.
    pub(crate) fn set_active(&self, name: &str, ab: Option<(&Tensor, &Tensor, f64, f64)>) {
        let mut slot = self.slot.lock().unwrap_or_else(|e| e.into_inner());
        slot.adapters.retain(|a| a.name != name);
        if let Some((a, b, scale, dropout)) = ab {
            slot.adapters.push(Active {
                name: name.to_string(),
                a: a.shallow_clone(),
                b: b.shallow_clone(),
                scale,
                dropout,
            });
            // Stable order whatever the attach order: sums are then
            // reproducible across models.
            slot.adapters.sort_by(|x, y| x.name.cmp(&y.name));
        }
        GENERATION.fetch_add(1, Ordering::Relaxed);
    }
}

fn adapter_err(adapter: impl Into<String>, reason: impl Into<String>) -> NetError {
    NetError::Adapter {
        adapter: adapter.into(),
        reason: reason.into(),
    }
}

impl Model {
    /// The module paths of the layers that can carry adapters.
    pub fn adaptable_modules(&self) -> Vec<String> {
        self.adapters.layers.keys().cloned().collect()
    }

    /// The adapters attached, by name.
    pub fn adapters(&self) -> &BTreeMap<String, AdapterInfo> {
        &self.adapters.attached
    }

    /// The modules `config` selects, in path order; none is an error that
    /// lists what can be adapted.
    pub fn adapter_targets(&self, config: &LoraConfig) -> Result<Vec<String>> {
        let modules: Vec<String> = self
            .adapters
            .layers
            .iter()
            .filter(|(m, layer)| match layer.geometry {
                // A class table is chosen only by its exact path: patterns
                // written before tables were adaptable ("*", "map_*") keep
                // meaning the layers they meant, so old files still load.
                Geometry::Embedding => config.targets.iter().any(|t| t == *m),
                _ => config.targets_module(m),
            })
            .map(|(m, _)| m.clone())
            .collect();
        if modules.is_empty() {
            let known = self.adaptable_modules();
            let shown: Vec<&str> = known.iter().take(12).map(String::as_str).collect();
            return Err(adapter_err(
                "targets",
                format!(
                    "no layer matches {:?}; this network's adaptable layers include {}{}",
                    config.targets,
                    shown.join(", "),
                    if known.len() > shown.len() {
                        ", ..."
                    } else {
                        ""
                    }
                ),
            ));
        }
        Ok(modules)
    }

    /// A hash of the base weights (every variable but the adapters', by
    /// name, shape and value), hex: adapter files name the base they were
    /// trained on with it.
    pub fn base_hash(&self) -> String {
        use sha2::{Digest, Sha256};
        let mut vars: Vec<(String, Tensor)> = self
            .vs
            .variables()
            .into_iter()
            .filter(|(n, _)| !is_adapter_variable(n))
            .collect();
        vars.sort_by(|a, b| a.0.cmp(&b.0));
        let mut h = Sha256::new();
        for (name, t) in vars {
            h.update(name.as_bytes());
            h.update(format!("{:?}", t.size()).as_bytes());
            let values = t
                .to_device(tch::Device::Cpu)
                .to_kind(tch::Kind::Float)
                .contiguous()
                .view([-1]);
            let values = Vec::<f32>::try_from(&values).unwrap_or_default();
            for v in values {
                h.update(v.to_le_bytes());
            }
        }
        let digest = h.finalize();
        digest.iter().take(16).map(|b| format!("{b:02x}")).collect()
    }

    /// The base hashes this model derives from (its [`META_LINEAGE`]
    /// metadata), besides its own.
    pub fn lineage(&self) -> Vec<String> {
        self.metadata
            .get(META_LINEAGE)
            .map(|s| {
                s.split(',')
                    .filter(|h| !h.is_empty())
                    .map(str::to_string)
                    .collect()
            })
            .unwrap_or_default()
    }

    /// Adds a fresh adapter `name` (`A` random, `B` zero: the network's
    /// output is unchanged) on every layer `config` targets, applied on the
    /// fly with weight `lambda`. Its variables train unless frozen with
    /// [`Model::set_trainable`]. Returns how many layers it adapts.
    pub fn add_adapter(&mut self, name: &str, config: &LoraConfig, lambda: f64) -> Result<usize> {
        let base_hash = self.base_hash();
        self.add_adapter_with_base(name, config, lambda, base_hash)
    }

    fn add_adapter_with_base(
        &mut self,
        name: &str,
        config: &LoraConfig,
        lambda: f64,
        base_hash: String,
    ) -> Result<usize> {
        check_adapter_name(name)?;
        config.validate_at("lora.")?;
        check_lambda(name, lambda)?;
        if self.adapters.attached.contains_key(name) {
            return Err(adapter_err(
                name,
                "an adapter of this name is already attached",
            ));
        }
        let marker = format!(".{LORA_A}.{name}.");
        if self.vs.variables().keys().any(|k| k.contains(&marker)) {
            // Left by a load that failed: variables cannot be removed.
            return Err(adapter_err(
                name,
                "this name was used by an adapter that failed to load; choose another",
            ));
        }
        let modules = self.adapter_targets(config)?;
        let rank = config.rank as i64;
        let channels_last = self.channels_last();
        for module in &modules {
            let layer = self.adapters.layer(module).expect("listed module");
            let shape = layer.weight().size();
            let (a_shape, b_shape) = adapter_shapes(&shape, rank);
            let fan_in: i64 = a_shape[1..].iter().product();
            let bound = 1.0 / (fan_in as f64).sqrt();
            let mut path = self.vs.root();
            for part in module.split('.') {
                path = path.sub(part);
            }
            let a = path.sub(LORA_A).sub(name).var(
                "weight",
                &a_shape,
                nn::Init::Uniform {
                    lo: -bound,
                    up: bound,
                },
            );
            let b = path
                .sub(LORA_B)
                .sub(name)
                .var("weight", &b_shape, nn::Init::Const(0.0));
            if channels_last && a.dim() == 4 {
                tch::no_grad(|| {
                    for mut t in [a.shallow_clone(), b.shallow_clone()] {
                        let nhwc = t.permute([0, 2, 3, 1]).contiguous().permute([0, 3, 1, 2]);
                        t.set_data(&nhwc);
                    }
                });
            }
            layer.set_active(
                name,
                Some((&a, &b, lambda * config.scale(), config.dropout)),
            );
        }
        let count = modules.len();
        self.adapters.attached.insert(
            name.to_string(),
            AdapterInfo {
                config: config.clone(),
                weight: lambda,
                merged: false,
                modules,
                base_hash,
            },
        );
        Ok(count)
    }

    /// The `(A, B)` variables of adapter `name` on `module`.
    fn adapter_tensors(&self, name: &str, module: &str) -> Result<(Tensor, Tensor)> {
        let vars = self.vs.variables();
        let (a, b) = variable_names(module, name);
        match (vars.get(&a), vars.get(&b)) {
            (Some(a), Some(b)) => Ok((a.shallow_clone(), b.shallow_clone())),
            _ => Err(adapter_err(
                name,
                format!("no adapter variables on `{module}`"),
            )),
        }
    }

    fn attached(&self, name: &str) -> Result<AdapterInfo> {
        self.adapters.attached.get(name).cloned().ok_or_else(|| {
            adapter_err(
                name,
                format!(
                    "no such adapter; attached: {:?}",
                    self.adapters.attached.keys().collect::<Vec<_>>()
                ),
            )
        })
    }

    /// Sets adapter `name`'s weight `lambda` (applied on the fly; a merged
    /// adapter must be unmerged first).
    pub fn set_adapter_weight(&mut self, name: &str, lambda: f64) -> Result<()> {
        check_lambda(name, lambda)?;
        let info = self.attached(name)?;
        if info.merged {
            return Err(adapter_err(
                name,
                "merged into the base weights: unmerge it first",
            ));
        }
        for module in &info.modules {
            let (a, b) = self.adapter_tensors(name, module)?;
            let layer = self.adapters.layer(module).expect("adapted module");
            let scale = lambda * info.config.scale();
            layer.set_active(name, Some((&a, &b, scale, info.config.dropout)));
        }
        if let Some(i) = self.adapters.attached.get_mut(name) {
            i.weight = lambda;
        }
        Ok(())
    }

    /// Folds adapter `name` into the base weights, `W <- W + lambda (alpha
    /// / r) B A`, and stops applying it on the fly. The base's hash joins
    /// the model's lineage ([`META_LINEAGE`]), so adapters trained on it
    /// still load.
    pub fn merge_adapter(&mut self, name: &str) -> Result<()> {
        self.fold(name, true)
    }

    /// Takes a merged adapter `name` out of the base weights again, `W <-
    /// W - lambda (alpha / r) B A` (the base back within float rounding),
    /// and applies it on the fly again.
    pub fn unmerge_adapter(&mut self, name: &str) -> Result<()> {
        self.fold(name, false)
    }

    fn fold(&mut self, name: &str, merge: bool) -> Result<()> {
        let info = self.attached(name)?;
        if info.merged == merge {
            let state = if merge {
                "already merged"
            } else {
                "not merged"
            };
            return Err(adapter_err(name, state));
        }
        if merge {
            // The model now derives from its current base: adapters of that
            // base must still load ([`Model::check_adapter_file`]).
            let hash = self.base_hash();
            let mut lineage = self.lineage();
            if !lineage.contains(&hash) {
                lineage.insert(0, hash);
                self.metadata
                    .insert(META_LINEAGE.to_string(), lineage.join(","));
            }
        }
        let scale = info.weight * info.config.scale();
        for module in &info.modules {
            let (a, b) = self.adapter_tensors(name, module)?;
            let layer = self.adapters.layer(module).expect("adapted module");
            let mut w = layer.weight();
            tch::no_grad(|| {
                let delta = delta_weight(&a, &b, &w.size()) * if merge { scale } else { -scale };
                let _ = w.g_add_(&delta);
            });
            let active = (!merge).then_some((&a, &b, scale, info.config.dropout));
            layer.set_active(name, active);
        }
        if let Some(i) = self.adapters.attached.get_mut(name) {
            i.merged = merge;
        }
        Ok(())
    }

    /// Switches checkpoints to adapters only ([`Model::save`] and
    /// [`Model::load_weights`] then read and write the adapters' variables
    /// alone) and freezes everything else: adapter training. Switching it
    /// off changes only the checkpoints (use [`Model::set_trainable`] to
    /// train the base again).
    pub fn set_adapters_only(&mut self, on: bool) -> Result<()> {
        if on && self.adapters.attached.is_empty() {
            return Err(adapter_err(
                "(none)",
                "adapter-only mode needs an attached adapter",
            ));
        }
        self.adapters_only = on;
        if on {
            self.set_trainable(is_adapter_variable);
        }
        Ok(())
    }

    /// Whether checkpoints hold the adapters only.
    pub fn adapters_only(&self) -> bool {
        self.adapters_only
    }

    /// A new model of the same architecture with the same adapters
    /// attached (same names, shapes, weights and merge state) and the same
    /// checkpoint mode and trainable group, its weights freshly initialised:
    /// copy them with [`Model::copy_from`]. EMAs and target networks of an
    /// adapted model are built this way.
    pub fn new_like(&self) -> Result<Model> {
        let mut m = Model::new(self.config.clone(), self.device())?;
        for (name, info) in &self.adapters.attached {
            m.add_adapter_with_base(name, &info.config, info.weight, info.base_hash.clone())?;
            if info.merged {
                // The weights copied in carry the merged delta already.
                for module in &info.modules {
                    m.adapters
                        .layer(module)
                        .expect("same architecture")
                        .set_active(name, None);
                }
                if let Some(i) = m.adapters.attached.get_mut(name) {
                    i.merged = true;
                }
            }
        }
        m.adapters_only = self.adapters_only;
        let trains: std::collections::HashSet<String> = self
            .trainable_variables()
            .into_iter()
            .map(|(n, _)| n)
            .collect();
        m.set_trainable(|n| trains.contains(n));
        Ok(m)
    }

    /// Writes adapter `name` to `path` as a safetensors file holding only
    /// its tensors, under PEFT's keys (`<module>.lora_A.weight`,
    /// `<module>.lora_B.weight`), with its config ([`META_LORA`], JSON),
    /// the base's hash ([`META_LORA_BASE`]) and the cm-rs version in the
    /// metadata. Atomic.
    pub fn save_adapter(&self, name: &str, path: impl AsRef<Path>) -> Result<usize> {
        let info = self.attached(name)?;
        let mut named = Vec::new();
        for module in &info.modules {
            let (a, b) = self.adapter_tensors(name, module)?;
            let (ka, kb) = file_keys(module);
            named.push((ka, a.contiguous()));
            named.push((kb, b.contiguous()));
        }
        named.sort_by(|x, y| x.0.cmp(&y.0));
        let mut meta = BTreeMap::new();
        meta.insert("format".to_string(), "pt".to_string());
        meta.insert(
            crate::model::META_VERSION.to_string(),
            env!("CARGO_PKG_VERSION").to_string(),
        );
        meta.insert(
            META_LORA.to_string(),
            serde_json::to_string(&info.config).expect("LoRA configs serialize"),
        );
        meta.insert(META_LORA_BASE.to_string(), info.base_hash.clone());
        let path = path.as_ref();
        write_atomic(path, |tmp| {
            write_safetensors_with_metadata(&named, &meta, tmp)
        })?;
        Ok(named.len())
    }

    /// Reads an adapter file's config and base hash, checking them and the
    /// tensors' names and shapes against this model: a file of another
    /// base, rank or architecture is a clear error before anything is
    /// attached.
    pub fn check_adapter_file(&self, path: impl AsRef<Path>) -> Result<(LoraConfig, String)> {
        let path = path.as_ref();
        let file = path.display().to_string();
        let meta = read_metadata(path)?;
        let Some(json) = meta.get(META_LORA) else {
            return Err(adapter_err(
                file,
                format!("not a cm-rs adapter file: its metadata has no `{META_LORA}`"),
            ));
        };
        let config: LoraConfig = serde_json::from_str(json).map_err(|e| {
            adapter_err(
                &file,
                format!("metadata `{META_LORA}` is not a LoRA config ({e})"),
            )
        })?;
        config
            .validate_at(&format!("{file}: {META_LORA}."))
            .map_err(NetError::from)?;
        let base = meta.get(META_LORA_BASE).cloned().unwrap_or_default();
        let own = self.base_hash();
        let lineage = self.lineage();
        if base != own && !lineage.contains(&base) {
            return Err(adapter_err(
                file,
                format!(
                    "trained on base weights {base:?}, but this model's are {own:?}{}: it belongs \
                     to another model",
                    if lineage.is_empty() {
                        String::new()
                    } else {
                        format!(" (derived from {})", lineage.join(", "))
                    }
                ),
            ));
        }
        let modules = self.adapter_targets(&config)?;
        let shapes = read_shapes(path)?;
        let rank = config.rank as i64;
        let mut problems = Vec::new();
        let mut expected = std::collections::BTreeSet::new();
        for module in &modules {
            let layer = self.adapters.layer(module).expect("listed module");
            let (a_shape, b_shape) = adapter_shapes(&layer.weight().size(), rank);
            let (ka, kb) = file_keys(module);
            for (key, want) in [(ka, a_shape), (kb, b_shape)] {
                match shapes.get(&key) {
                    None => problems.push(format!("missing `{key}`")),
                    Some(got) if *got != want => problems.push(format!(
                        "`{key}` is {got:?}, rank {rank} on this layer needs {want:?}"
                    )),
                    Some(_) => {}
                }
                expected.insert(key);
            }
        }
        for key in shapes.keys().filter(|k| !expected.contains(*k)) {
            problems.push(format!(
                "unexpected `{key}` (not a target of {:?} on this network)",
                config.targets
            ));
        }
        if !problems.is_empty() {
            return Err(adapter_err(
                file,
                format!(
                    "does not fit this network (rank {rank}, alpha {}): {}",
                    config.alpha,
                    problems.join("; ")
                ),
            ));
        }
        Ok((config, base))
    }

    /// Loads an adapter file ([`Model::save_adapter`]) as adapter `name`
    /// with weight `lambda`, applied on the fly. Checked first
    /// ([`Model::check_adapter_file`]); returns how many layers it adapts.
    pub fn load_adapter(
        &mut self,
        path: impl AsRef<Path>,
        name: &str,
        lambda: f64,
    ) -> Result<usize> {
        let path = path.as_ref();
        let (config, base) = self.check_adapter_file(path)?;
        let count = self.add_adapter_with_base(name, &config, lambda, base)?;
        let info = self.attached(name)?;
        let mut vars = Vec::new();
        for module in &info.modules {
            let (a, b) = self.adapter_tensors(name, module)?;
            let (ka, kb) = file_keys(module);
            vars.push((ka, a));
            vars.push((kb, b));
        }
        // fp16 / bf16 adapter files (PEFT's usual) are converted.
        if let Err(e) = crate::checkpoint::load_strict_tensors_cast(path, vars, &[]) {
            // Nothing stays attached (its zero-initialised variables remain
            // unused in the store).
            for module in &info.modules {
                self.adapters
                    .layer(module)
                    .expect("adapted module")
                    .set_active(name, None);
            }
            self.adapters.attached.remove(name);
            return Err(e);
        }
        Ok(count)
    }
}

fn check_lambda(name: &str, lambda: f64) -> Result<()> {
    if lambda.is_finite() && lambda.abs() <= 100.0 {
        Ok(())
    } else {
        Err(adapter_err(
            name,
            format!("weight {lambda} is not a finite adapter weight in [-100, 100]"),
        ))
    }
}
