//! Serde config structs for the EDM teacher's math and the consistency
//! recipes (CD, CT, iCT), with the papers' defaults, TOML loading that names
//! the failing field, and validation on load.
//!
//! The files under `configs/core/` are these structs written out; the other
//! crates embed them as sections of their own configs and load them through
//! [`parse_toml`] / [`load_toml`].

use std::path::Path;

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use crate::error::{CoreError, Result};
use crate::metric::MetricConfig;
use crate::noise::{IndexSampler, LognormalIndex, LognormalSigma, UniformIndex};
use crate::precond::{ConsistencyParameterization, EdmPreconditioning, NoiseConditioning};
use crate::schedule::{
    CtAdaptiveSchedule, Discretization, DiscretizationSchedule, FixedSchedule,
    IctExponentialSchedule,
};
use crate::sigmas::{KarrasGrid, NoiseRange};
use crate::weighting::Weighting;

/// A config that can check its own values.
pub trait Validate {
    /// Returns the first invalid field, by its dotted path, with the value
    /// found and what was expected.
    fn validate(&self) -> Result<()>;
}

/// The key of a table that pulls in another TOML file (see [`load_toml`]).
pub const INCLUDE_KEY: &str = "include";

/// Include files nested deeper than this are refused (a cycle, most likely).
pub const MAX_INCLUDE_DEPTH: usize = 8;

/// Parses TOML `text` into `T` and validates it. `origin` (a path or other
/// label) is named in errors, together with the dotted path of the field that
/// failed, e.g. `schedule.s1`. Text parsed this way cannot use `include`
/// (there is no folder to resolve it against): use [`load_toml`].
pub fn parse_toml<T: DeserializeOwned + Validate>(text: &str, origin: &str) -> Result<T> {
    parse_toml_in(text, origin, None)
}

/// [`parse_toml`] with includes resolved against `dir`. Text without any
/// `include` is deserialized straight from the text, so errors keep their
/// line and column.
fn parse_toml_in<T: DeserializeOwned + Validate>(
    text: &str,
    origin: &str,
    dir: Option<&Path>,
) -> Result<T> {
    let table = parse_table(text, origin)?;
    if !has_include(&table) {
        return deserialize(toml::Deserializer::new(text), origin);
    }
    let table = resolve_includes(table, dir, origin, 0)?;
    deserialize(toml::Value::Table(table), origin)
}

/// Whether two paths name the same file: equal as written, or equal once
/// links and `..` are resolved (both must exist for the second).
pub fn same_file(a: &Path, b: &Path) -> bool {
    a == b
        || matches!(
            (std::fs::canonicalize(a), std::fs::canonicalize(b)),
            (Ok(x), Ok(y)) if x == y
        )
}

/// Reads, parses and validates a TOML config file.
///
/// Any table may name another file with `include = "path.toml"` (relative
/// to the including file): that file's tables are the base and the keys
/// written beside `include` override them, recursively. This is how a
/// distillation config names its teacher's config instead of copying it:
///
/// ```toml
/// [teacher]
/// include = "../teacher/toy.toml"
/// ```
///
/// Only regular files of at most [`MAX_CONFIG_BYTES`] are read (a device
/// such as `/dev/zero` or a FIFO is refused before reading). A parse error
/// quotes the offending line only when the file (after links) is named
/// `*.toml`: a sidecar linked to another kind of file does not have that
/// file's contents printed.
pub fn load_toml<T: DeserializeOwned + Validate>(path: impl AsRef<Path>) -> Result<T> {
    let path = path.as_ref();
    let text = read_text(path)?;
    parse_toml_in(&text, &path.display().to_string(), path.parent())
        .map_err(|e| redact_unless_toml(e, path))
}

/// `e` as it is for a file named `*.toml` (after links), else without its
/// quoted source lines.
fn redact_unless_toml(e: CoreError, path: &Path) -> CoreError {
    let is_toml = std::fs::canonicalize(path)
        .ok()
        .is_some_and(|p| p.extension().is_some_and(|x| x == "toml"));
    if is_toml {
        e
    } else {
        redact(e)
    }
}

/// Parses a diffusers-style JSON config (`config.json`,
/// `scheduler_config.json`; text `json`, named `origin` in messages) into
/// `T`: `_`-prefixed keys are diffusers' bookkeeping and skipped, a
/// `_class_name` other than `class_name` is refused, keys in `defaults` that
/// the file lacks are added first (diffusers' defaults where `T`'s differ),
/// and an unknown key is an error naming it (`T` denies unknown fields).
/// The result is validated.
pub fn parse_diffusers_json<T: DeserializeOwned + Validate>(
    json: &str,
    origin: &str,
    class_name: &str,
    defaults: &[(&str, serde_json::Value)],
) -> Result<T> {
    let bad = |value: String, expected: String| CoreError::invalid(origin, value, expected);
    let value: serde_json::Value =
        serde_json::from_str(json).map_err(|e| bad("the file".into(), format!("JSON ({e})")))?;
    let serde_json::Value::Object(mut map) = value else {
        return Err(bad("the file".into(), "a JSON object".into()));
    };
    if let Some(class) = map.get("_class_name") {
        if class.as_str() != Some(class_name) {
            return Err(CoreError::invalid(
                format!("{origin}: _class_name"),
                class.to_string(),
                format!("\"{class_name}\""),
            ));
        }
    }
    map.retain(|k, _| !k.starts_with('_'));
    for (key, value) in defaults {
        map.entry(key.to_string()).or_insert_with(|| value.clone());
    }
    let config: T = serde_json::from_value(serde_json::Value::Object(map))
        .map_err(|e| bad("the config".into(), format!("a {class_name} config ({e})")))?;
    config.validate()?;
    Ok(config)
}

/// [`parse_diffusers_json`] of the file `path` (a regular file of at most
/// [`MAX_CONFIG_BYTES`]).
pub fn load_diffusers_json<T: DeserializeOwned + Validate>(
    path: impl AsRef<Path>,
    class_name: &str,
    defaults: &[(&str, serde_json::Value)],
) -> Result<T> {
    let path = path.as_ref();
    let text = read_text(path)?;
    parse_diffusers_json(&text, &path.display().to_string(), class_name, defaults)
}

/// The largest config, card or sidecar file read (real ones are a few KB).
pub const MAX_CONFIG_BYTES: u64 = 4 << 20;

/// The largest training log (`metrics.csv`) or CSV table read back: a row
/// is about 60 bytes, so some 17 million logged steps.
pub const MAX_METRICS_BYTES: u64 = 1 << 30;

fn read_text(path: &Path) -> Result<String> {
    let bytes =
        read_bounded(path, MAX_CONFIG_BYTES, "a config file").map_err(|source| CoreError::Io {
            path: path.to_path_buf(),
            source,
        })?;
    String::from_utf8(bytes).map_err(|_| CoreError::Io {
        path: path.to_path_buf(),
        source: std::io::Error::new(std::io::ErrorKind::InvalidData, "not UTF-8 text"),
    })
}

/// Reads a whole file that must be a regular file (not a folder, device or
/// pipe: `/dev/zero` or a FIFO would read forever or hang) of at most
/// `max_bytes`; `what` names the expected file in the refusal. A file that
/// grows past the limit while being read is refused too. Refusals are
/// `InvalidInput` errors.
pub fn read_bounded(path: &Path, max_bytes: u64, what: &str) -> std::io::Result<Vec<u8>> {
    use std::io::Read;
    let refuse = |why: String| std::io::Error::new(std::io::ErrorKind::InvalidInput, why);
    let meta = std::fs::metadata(path)?;
    if !meta.is_file() {
        return Err(refuse(format!(
            "not a regular file (a folder, device or pipe); expected {what}"
        )));
    }
    if meta.len() > max_bytes {
        return Err(refuse(format!(
            "{} bytes, above the {max_bytes}-byte limit for {what}",
            meta.len()
        )));
    }
    let mut bytes = Vec::with_capacity(meta.len() as usize);
    std::fs::File::open(path)?
        .take(max_bytes + 1)
        .read_to_end(&mut bytes)?;
    if bytes.len() as u64 > max_bytes {
        return Err(refuse(format!(
            "grew past the {max_bytes}-byte limit for {what} while being read"
        )));
    }
    Ok(bytes)
}

/// [`read_bounded`] for UTF-8 text.
pub fn read_bounded_text(path: &Path, max_bytes: u64, what: &str) -> std::io::Result<String> {
    String::from_utf8(read_bounded(path, max_bytes, what)?).map_err(|_| {
        std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            format!("not UTF-8 text; expected {what}"),
        )
    })
}

/// A parse error without the quoted source lines (those of toml's message
/// that draw the snippet: `  |`, `1 | text`).
fn redact(e: CoreError) -> CoreError {
    match e {
        CoreError::Parse {
            origin,
            field,
            message,
        } => CoreError::Parse {
            origin,
            field,
            message: message
                .lines()
                .filter(|l| !l.contains('|'))
                .collect::<Vec<_>>()
                .join("\n"),
        },
        other => other,
    }
}

fn read_table(path: &Path) -> Result<toml::Table> {
    parse_table(&read_text(path)?, &path.display().to_string())
        .map_err(|e| redact_unless_toml(e, path))
}

fn parse_table(text: &str, origin: &str) -> Result<toml::Table> {
    text.parse::<toml::Table>().map_err(|e| CoreError::Parse {
        origin: origin.to_string(),
        field: ".".to_string(),
        message: e.to_string(),
    })
}

fn has_include(table: &toml::Table) -> bool {
    table.iter().any(|(key, value)| {
        key == INCLUDE_KEY || matches!(value, toml::Value::Table(t) if has_include(t))
    })
}

fn deserialize<'de, T, D>(de: D, origin: &str) -> Result<T>
where
    T: DeserializeOwned + Validate,
    D: serde::Deserializer<'de>,
    D::Error: std::fmt::Display,
{
    let value: T = serde_path_to_error::deserialize(de).map_err(|e| {
        let field = e.path().to_string();
        CoreError::Parse {
            origin: origin.to_string(),
            field,
            message: e.into_inner().to_string(),
        }
    })?;
    value.validate()?;
    Ok(value)
}

/// Replaces every `include = "file"` in `table` (at any depth) by the
/// included file's tables, overridden by the keys beside it.
fn resolve_includes(
    table: toml::Table,
    dir: Option<&Path>,
    origin: &str,
    depth: usize,
) -> Result<toml::Table> {
    // The keys written here, their own includes resolved first, so that an
    // include in a sub-table wins over the outer include's values.
    let mut local = toml::Table::new();
    let mut include = None;
    for (key, value) in table {
        if key == INCLUDE_KEY {
            include = Some(value);
            continue;
        }
        let value = match value {
            toml::Value::Table(inner) => {
                toml::Value::Table(resolve_includes(inner, dir, origin, depth)?)
            }
            other => other,
        };
        local.insert(key, value);
    }
    let Some(include) = include else {
        return Ok(local);
    };
    let toml::Value::String(file) = include else {
        return Err(CoreError::invalid(
            format!("{origin}: {INCLUDE_KEY}"),
            include,
            "a path to a TOML file (a string)",
        ));
    };
    let Some(dir) = dir else {
        return Err(CoreError::invalid(
            format!("{origin}: {INCLUDE_KEY}"),
            file,
            "no include in text that is not read from a file (use load_toml)",
        ));
    };
    if depth >= MAX_INCLUDE_DEPTH {
        return Err(CoreError::invalid(
            format!("{origin}: {INCLUDE_KEY}"),
            file,
            format!("at most {MAX_INCLUDE_DEPTH} nested includes (is there a cycle?)"),
        ));
    }
    let path = dir.join(&file);
    let base = read_table(&path)?;
    let base = resolve_includes(base, path.parent(), &path.display().to_string(), depth + 1)?;
    Ok(merge(base, local))
}

/// `over`'s keys replace `base`'s, merging tables key by key.
fn merge(mut base: toml::Table, over: toml::Table) -> toml::Table {
    for (key, value) in over {
        let merged = match (base.remove(&key), value) {
            (Some(toml::Value::Table(b)), toml::Value::Table(o)) => toml::Value::Table(merge(b, o)),
            (_, value) => value,
        };
        base.insert(key, merged);
    }
    base
}

fn check_sigma_data(field: &str, sigma_data: f64) -> Result<()> {
    crate::sigmas::check_sigma(field, sigma_data, "a data standard deviation")
}

/// The EDM teacher's math (Karras et al. 2022, Table 1): preconditioning,
/// training noise distribution and sampling grid.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct EdmConfig {
    /// Data standard deviation.
    pub sigma_data: f64,
    /// Smallest sampling noise level.
    pub sigma_min: f64,
    /// Largest sampling noise level.
    pub sigma_max: f64,
    /// Sampling grid exponent.
    pub rho: f64,
    /// Mean of the training `ln sigma`.
    pub p_mean: f64,
    /// Standard deviation of the training `ln sigma`.
    pub p_std: f64,
}

impl Default for EdmConfig {
    /// EDM's values: sd = 0.5, sigma in [0.002, 80], rho = 7, P_mean = -1.2, P_std = 1.2.
    fn default() -> Self {
        let grid = KarrasGrid::default();
        let noise = LognormalSigma::default();
        EdmConfig {
            sigma_data: 0.5,
            sigma_min: grid.sigma_min,
            sigma_max: grid.sigma_max,
            rho: grid.rho,
            p_mean: noise.p_mean,
            p_std: noise.p_std,
        }
    }
}

impl EdmConfig {
    /// The preconditioning.
    pub fn preconditioning(&self) -> EdmPreconditioning {
        EdmPreconditioning {
            sigma_data: self.sigma_data,
        }
    }

    /// The noise range `[sigma_min, sigma_max]`.
    pub fn range(&self) -> NoiseRange {
        self.grid().range()
    }

    /// The sampling grid.
    pub fn grid(&self) -> KarrasGrid {
        KarrasGrid {
            sigma_min: self.sigma_min,
            sigma_max: self.sigma_max,
            rho: self.rho,
        }
    }

    /// The training noise-level distribution.
    pub fn noise(&self) -> LognormalSigma {
        LognormalSigma {
            p_mean: self.p_mean,
            p_std: self.p_std,
        }
    }

    /// Validates with a dotted-path prefix (`""` at the root, `"edm."` in a section).
    pub fn validate_at(&self, prefix: &str) -> Result<()> {
        check_sigma_data(&format!("{prefix}sigma_data"), self.sigma_data)?;
        self.grid().validate(prefix)?;
        self.noise().validate(prefix)
    }
}

impl Validate for EdmConfig {
    fn validate(&self) -> Result<()> {
        self.validate_at("")
    }
}

/// The consistency function's parameterization and noise range (CM, Section 5
/// and Appendix C).
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ConsistencyConfig {
    /// Data standard deviation.
    pub sigma_data: f64,
    /// `eps`: the boundary `f(x, eps) = x`.
    pub sigma_min: f64,
    /// `T`: one-step sampling starts from `T z`.
    pub sigma_max: f64,
    /// Grid exponent.
    pub rho: f64,
    /// How `t` is encoded for the network.
    pub noise_conditioning: NoiseConditioning,
}

impl Default for ConsistencyConfig {
    /// CM's values: sd = 0.5, eps = 0.002, T = 80, rho = 7, `c_noise = ln(t)/4`.
    fn default() -> Self {
        let grid = KarrasGrid::default();
        ConsistencyConfig {
            sigma_data: 0.5,
            sigma_min: grid.sigma_min,
            sigma_max: grid.sigma_max,
            rho: grid.rho,
            noise_conditioning: NoiseConditioning::Edm,
        }
    }
}

impl ConsistencyConfig {
    /// The boundary-respecting parameterization.
    pub fn parameterization(&self) -> ConsistencyParameterization {
        ConsistencyParameterization {
            sigma_data: self.sigma_data,
            sigma_min: self.sigma_min,
            noise_conditioning: self.noise_conditioning,
        }
    }

    /// The noise range `[eps, T]`.
    pub fn range(&self) -> NoiseRange {
        self.grid().range()
    }

    /// The training / sampling grid.
    pub fn grid(&self) -> KarrasGrid {
        KarrasGrid {
            sigma_min: self.sigma_min,
            sigma_max: self.sigma_max,
            rho: self.rho,
        }
    }

    /// Validates with a dotted-path prefix.
    pub fn validate_at(&self, prefix: &str) -> Result<()> {
        check_sigma_data(&format!("{prefix}sigma_data"), self.sigma_data)?;
        self.grid().validate(prefix)
    }
}

/// A discretization schedule as written in a config, selected by `kind`.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum ScheduleConfig {
    /// `kind = "fixed"`: [`FixedSchedule`].
    Fixed(FixedSchedule),
    /// `kind = "ct_adaptive"`: [`CtAdaptiveSchedule`].
    CtAdaptive(CtAdaptiveSchedule),
    /// `kind = "ict_exponential"`: [`IctExponentialSchedule`].
    IctExponential(IctExponentialSchedule),
}

impl Default for ScheduleConfig {
    fn default() -> Self {
        ScheduleConfig::Fixed(FixedSchedule::default())
    }
}

impl ScheduleConfig {
    /// Validates with a dotted-path prefix.
    pub fn validate_at(&self, prefix: &str) -> Result<()> {
        match self {
            ScheduleConfig::Fixed(s) => s.validate(prefix),
            ScheduleConfig::CtAdaptive(s) => s.validate(prefix),
            ScheduleConfig::IctExponential(s) => s.validate(prefix),
        }
    }
}

impl DiscretizationSchedule for ScheduleConfig {
    fn at(&self, step: u64) -> Discretization {
        match self {
            ScheduleConfig::Fixed(s) => s.at(step),
            ScheduleConfig::CtAdaptive(s) => s.at(step),
            ScheduleConfig::IctExponential(s) => s.at(step),
        }
    }
}

/// How the pair index `n` is drawn, selected by `kind`.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum IndexSamplerConfig {
    /// `kind = "uniform"`: [`UniformIndex`].
    Uniform(UniformIndex),
    /// `kind = "lognormal"`: [`LognormalIndex`] (iCT).
    Lognormal(LognormalIndex),
}

impl Default for IndexSamplerConfig {
    fn default() -> Self {
        IndexSamplerConfig::Uniform(UniformIndex {})
    }
}

impl IndexSamplerConfig {
    /// Validates with a dotted-path prefix.
    pub fn validate_at(&self, prefix: &str) -> Result<()> {
        match self {
            IndexSamplerConfig::Uniform(_) => Ok(()),
            IndexSamplerConfig::Lognormal(s) => s.validate(prefix),
        }
    }
}

impl IndexSampler for IndexSamplerConfig {
    fn probabilities(&self, grid: &[f64]) -> Vec<f64> {
        match self {
            IndexSamplerConfig::Uniform(s) => s.probabilities(grid),
            IndexSamplerConfig::Lognormal(s) => s.probabilities(grid),
        }
    }

    fn sample(&self, grid: &[f64], batch: i64, device: tch::Device) -> tch::Tensor {
        match self {
            IndexSamplerConfig::Uniform(s) => s.sample(grid, batch, device),
            IndexSamplerConfig::Lognormal(s) => s.sample(grid, batch, device),
        }
    }
}

/// Everything a consistency objective (CD, CT, iCT) takes from cm-core: the
/// parameterization, the discretization schedule, how pairs are drawn, the
/// loss weighting and the distance metric. Missing sections take the values
/// of [`ConsistencyRecipe::cd`].
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ConsistencyRecipe {
    /// `lambda(t_n)`.
    pub weighting: Weighting,
    /// Parameterization and noise range.
    pub consistency: ConsistencyConfig,
    /// `N(k)` and `mu(k)`.
    pub schedule: ScheduleConfig,
    /// How the pair index is drawn.
    pub noise: IndexSamplerConfig,
    /// `d(x, y)`.
    pub metric: MetricConfig,
}

impl Default for ConsistencyRecipe {
    fn default() -> Self {
        ConsistencyRecipe::cd()
    }
}

impl ConsistencyRecipe {
    /// Consistency distillation as in the CM paper's CIFAR-10 runs (N = 18,
    /// mu = 0.95, uniform pairs and weights), with pseudo-Huber in place of
    /// LPIPS, whose pretrained VGG weights cannot be had here.
    pub fn cd() -> Self {
        ConsistencyRecipe {
            weighting: Weighting::Uniform,
            consistency: ConsistencyConfig::default(),
            schedule: ScheduleConfig::Fixed(FixedSchedule::default()),
            noise: IndexSamplerConfig::Uniform(UniformIndex {}),
            metric: MetricConfig::PseudoHuber { c: None },
        }
    }

    /// Consistency training as in the CM paper's CIFAR-10 runs (adaptive
    /// N(k), mu(k) with s0 = 2, s1 = 150, mu0 = 0.9), with squared L2 in
    /// place of LPIPS: the starting point of the iCT ablation.
    pub fn ct() -> Self {
        ConsistencyRecipe {
            schedule: ScheduleConfig::CtAdaptive(CtAdaptiveSchedule::default()),
            metric: MetricConfig::L2,
            ..ConsistencyRecipe::cd()
        }
    }

    /// Improved consistency training (Song & Dhariwal 2023): no EMA target
    /// (mu = 0 through the exponential curriculum), pseudo-Huber, `1/(t_{n+1}
    /// - t_n)` weighting and discrete lognormal pairs.
    pub fn ict() -> Self {
        ConsistencyRecipe {
            weighting: Weighting::InverseStep,
            consistency: ConsistencyConfig::default(),
            schedule: ScheduleConfig::IctExponential(IctExponentialSchedule::default()),
            noise: IndexSamplerConfig::Lognormal(LognormalIndex::default()),
            metric: MetricConfig::PseudoHuber { c: None },
        }
    }

    /// Validates with a dotted-path prefix.
    pub fn validate_at(&self, prefix: &str) -> Result<()> {
        self.consistency
            .validate_at(&format!("{prefix}consistency."))?;
        self.schedule.validate_at(&format!("{prefix}schedule."))?;
        self.noise.validate_at(&format!("{prefix}noise."))?;
        self.metric.validate(&format!("{prefix}metric."))
    }
}

impl Validate for ConsistencyRecipe {
    fn validate(&self) -> Result<()> {
        self.validate_at("")
    }
}

/// The recipes in words and numbers, for reports (never Rust `Debug`).
impl ConsistencyRecipe {
    /// One line per part of the recipe: schedule, pairs, weighting, metric,
    /// parameterization.
    pub fn describe(&self) -> Vec<String> {
        let c = &self.consistency;
        vec![
            format!("discretization: {}", describe_schedule(&self.schedule)),
            format!("pairs: {}", describe_pairs(&self.noise)),
            format!("weighting: {}", describe_weighting(self.weighting)),
            format!("distance: {}", describe_metric(&self.metric)),
            format!(
                "parameterization: consistency boundary f(x, eps) = x, sigma_data = {}, \
                 eps = {}, T = {}, rho = {}, c_noise = {}",
                c.sigma_data,
                c.sigma_min,
                c.sigma_max,
                c.rho,
                describe_noise_conditioning(c.noise_conditioning)
            ),
        ]
    }
}

impl EdmConfig {
    /// The EDM settings in words and numbers.
    pub fn describe(&self) -> String {
        format!(
            "EDM preconditioning with sigma_data = {}; training ln(sigma) ~ N({}, {}^2); \
             sampling grid sigma in [{}, {}], rho = {}",
            self.sigma_data, self.p_mean, self.p_std, self.sigma_min, self.sigma_max, self.rho
        )
    }
}

fn describe_schedule(s: &ScheduleConfig) -> String {
    match s {
        ScheduleConfig::Fixed(f) if f.mu == 0.0 => format!(
            "fixed N = {} grid points, target = stop-gradient copy of the student (mu = 0)",
            f.n
        ),
        ScheduleConfig::Fixed(f) => format!(
            "fixed N = {} grid points, target network EMA mu = {}",
            f.n, f.mu
        ),
        ScheduleConfig::CtAdaptive(a) => format!(
            "CT adaptive N(k) from s0 = {} to s1 = {} over {} steps, target EMA mu(k) from mu0 = {} (CM Alg. 3)",
            a.s0, a.s1, a.total_steps, a.mu0
        ),
        ScheduleConfig::IctExponential(e) => format!(
            "iCT exponential curriculum N(k) = min(s0 2^floor(k/K'), s1) + 1 with s0 = {}, s1 = {} over {} steps, \
             no EMA target (mu = 0)",
            e.s0, e.s1, e.total_steps
        ),
    }
}

fn describe_pairs(n: &IndexSamplerConfig) -> String {
    match n {
        IndexSamplerConfig::Uniform(_) => "n ~ uniform over the grid".to_string(),
        IndexSamplerConfig::Lognormal(l) => format!(
            "discrete lognormal n (iCT), P_mean = {}, P_std = {}",
            l.p_mean, l.p_std
        ),
    }
}

/// A loss weighting in words, for reports.
pub fn describe_weighting(w: crate::weighting::Weighting) -> &'static str {
    use crate::weighting::Weighting;
    match w {
        Weighting::Uniform => "lambda = 1",
        Weighting::Edm => "EDM lambda(t_n) = (t_n^2 + sigma_data^2) / (t_n sigma_data)^2",
        Weighting::InverseStep => "iCT lambda(t_n) = 1 / (t_{n+1} - t_n)",
    }
}

/// A distance metric in words, for reports.
pub fn describe_metric(m: &MetricConfig) -> String {
    match m {
        MetricConfig::L2 => "squared L2 (mean over values)".to_string(),
        MetricConfig::L1 => "L1 (mean over values)".to_string(),
        MetricConfig::PseudoHuber { c: None } => {
            "pseudo-Huber, c = 0.00054 sqrt(dim) (iCT)".to_string()
        }
        MetricConfig::PseudoHuber { c: Some(c) } => format!("pseudo-Huber, c = {c}"),
        MetricConfig::Feature => {
            "learned perceptual (LPIPS-style, the data set's feature network; docs/ect.md)"
                .to_string()
        }
    }
}

/// A noise conditioning in words, for reports.
pub fn describe_noise_conditioning(n: NoiseConditioning) -> &'static str {
    match n {
        NoiseConditioning::Edm => "ln(t)/4 (EDM)",
        NoiseConditioning::Adm => "250 ln(t) (ADM, reference code)",
    }
}
