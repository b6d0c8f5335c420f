//! diffusers' `UNet2DModel`: the architecture, options and weight names of
//! the published consistency models (openai's ImageNet-64 and LSUN-256 CD /
//! CT checkpoints converted to diffusers folders), built from a folder's
//! `config.json` so their `diffusion_pytorch_model.safetensors` loads
//! strictly, name for name.
//!
//! Supported (docs/interop.md has the table): down blocks `DownBlock2D`,
//! `ResnetDownsampleBlock2D`, `AttnDownBlock2D`; up blocks `UpBlock2D`,
//! `ResnetUpsampleBlock2D`, `AttnUpBlock2D`; the mid block `UNetMidBlock2D`
//! (with or without attention) or none; up/down-sampling by convolution or by
//! a residual block (`downsample_type` / `upsample_type`), nearest-neighbour
//! and average-pool resampling inside residual blocks;
//! `resnet_time_scale_shift` `default` or `scale_shift`; positional or
//! Gaussian Fourier time embeddings; a learned class embedding
//! (`num_class_embeds`); activations `silu` / `swish`, `mish`, `gelu`,
//! `relu`. Everything else (the score-SDE skip blocks, cross-attention,
//! `learned` time embeddings, `timestep` / `identity` class embeddings) is a
//! clear error naming the field.
//!
//! The network is `F(x_in, c_noise, class)` with `c_noise` the timestep the
//! diffusers scheduler feeds (`CMStochasticIterativeScheduler`: `1000 * 0.25
//! ln sigma`, cm-core's `NoiseConditioning::Adm`), so it plugs into the
//! consistency parameterization like any cm-rs network.

use serde::{Deserialize, Serialize};
use tch::nn::{self, Module};
use tch::{Kind, Tensor};

use cm_core::{Conditioning, CoreError, Validate};

use crate::layers::MacCounter;
use crate::limits::{MAX_DIM, MAX_PARAMS, MAX_RESOLUTION, MAX_TOKENS};
use crate::network::Network;

/// The `_class_name` of the configs this module reads.
pub const UNET_2D_CLASS: &str = "UNet2DModel";

/// The config of a diffusers `UNet2DModel`, field for field as in its
/// `config.json` (defaults are diffusers' own, applied when the JSON lacks
/// a key, see [`DiffusersUNetConfig::from_json`]).
///
/// In cm-rs's own TOML form (a checkpoint sidecar), an absent optional field
/// means JSON `null`: TOML has no null.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DiffusersUNetConfig {
    /// Image side (`int`) or `[height, width]`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub sample_size: Option<SampleSize>,
    /// Input channels.
    pub in_channels: usize,
    /// Output channels.
    pub out_channels: usize,
    /// Maps the input from [0, 1] to [-1, 1] first (`2 x - 1`).
    pub center_input_sample: bool,
    /// `positional` (sinusoidal) or `fourier` (Gaussian Fourier features of
    /// `ln t`, output divided by `t`).
    pub time_embedding_type: String,
    /// Width of the time embedding (default `4 block_out_channels[0]`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub time_embedding_dim: Option<usize>,
    /// Frequency shift of the positional embedding (`downscale_freq_shift`).
    pub freq_shift: f64,
    /// `[cos, sin]` instead of `[sin, cos]` (positional embedding only).
    pub flip_sin_to_cos: bool,
    /// One per level, from the input resolution down.
    pub down_block_types: Vec<String>,
    /// `UNetMidBlock2D` or none.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub mid_block_type: Option<String>,
    /// One per level, from the lowest resolution up.
    pub up_block_types: Vec<String>,
    /// Width of each level.
    pub block_out_channels: Vec<usize>,
    /// Residual blocks per down level (up levels have one more).
    pub layers_per_block: usize,
    /// The mid block's output scale (residual sums are divided by it).
    pub mid_block_scale_factor: f64,
    /// Padding of strided-convolution down-sampling (0: pad right/bottom by 1).
    pub downsample_padding: usize,
    /// `conv` or `resnet` (for `AttnDownBlock2D`).
    pub downsample_type: String,
    /// `conv` or `resnet` (for `AttnUpBlock2D`).
    pub upsample_type: String,
    /// Dropout in the residual blocks (training only).
    pub dropout: f64,
    /// Activation of the residual blocks.
    pub act_fn: String,
    /// Channels per attention head (none: one head over all channels).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub attention_head_dim: Option<usize>,
    /// GroupNorm groups.
    pub norm_num_groups: usize,
    /// GroupNorm groups of the mid block's attention (none: `norm_num_groups`
    /// with the `default` time shift, no norm with `scale_shift`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub attn_norm_num_groups: Option<usize>,
    /// GroupNorm epsilon.
    pub norm_eps: f64,
    /// `default` (add the embedding) or `scale_shift` (`h (1 + s) + b`).
    pub resnet_time_scale_shift: String,
    /// Attention in the mid block.
    pub add_attention: bool,
    /// Only none is supported (a learned table with `num_class_embeds`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub class_embed_type: Option<String>,
    /// Number of classes of a class-conditional model.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub num_class_embeds: Option<usize>,
    /// Only for `learned` time embeddings (unsupported); kept for the round trip.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub num_train_timesteps: Option<usize>,
}

/// `sample_size`: one side or `[height, width]`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum SampleSize {
    /// Square images.
    Square(usize),
    /// `[height, width]`.
    Rect([usize; 2]),
}

impl SampleSize {
    /// `(height, width)`.
    pub fn hw(self) -> (usize, usize) {
        match self {
            SampleSize::Square(s) => (s, s),
            SampleSize::Rect([h, w]) => (h, w),
        }
    }
}

impl Default for DiffusersUNetConfig {
    /// diffusers' defaults (`UNet2DModel.__init__`), but with the optional
    /// fields absent (see the type's note on TOML).
    fn default() -> Self {
        DiffusersUNetConfig {
            sample_size: None,
            in_channels: 3,
            out_channels: 3,
            center_input_sample: false,
            time_embedding_type: "positional".into(),
            time_embedding_dim: None,
            freq_shift: 0.0,
            flip_sin_to_cos: true,
            down_block_types: [
                "DownBlock2D",
                "AttnDownBlock2D",
                "AttnDownBlock2D",
                "AttnDownBlock2D",
            ]
            .map(String::from)
            .to_vec(),
            mid_block_type: None,
            up_block_types: [
                "AttnUpBlock2D",
                "AttnUpBlock2D",
                "AttnUpBlock2D",
                "UpBlock2D",
            ]
            .map(String::from)
            .to_vec(),
            block_out_channels: vec![224, 448, 672, 896],
            layers_per_block: 2,
            mid_block_scale_factor: 1.0,
            downsample_padding: 1,
            downsample_type: "conv".into(),
            upsample_type: "conv".into(),
            dropout: 0.0,
            act_fn: "silu".into(),
            attention_head_dim: None,
            norm_num_groups: 32,
            attn_norm_num_groups: None,
            norm_eps: 1e-5,
            resnet_time_scale_shift: "default".into(),
            add_attention: true,
            class_embed_type: None,
            num_class_embeds: None,
            num_train_timesteps: None,
        }
    }
}

fn invalid(field: &str, value: impl std::fmt::Debug, expected: impl Into<String>) -> CoreError {
    CoreError::invalid_debug(field, value, expected)
}

impl DiffusersUNetConfig {
    /// Reads a diffusers `config.json` (text `json`, from `source` for
    /// messages): `_`-prefixed keys are bookkeeping and skipped, a
    /// `_class_name` other than `UNet2DModel` is refused, absent keys take
    /// diffusers' defaults, and an unknown key is an error naming it. The
    /// result is validated.
    pub fn from_json(json: &str, source: &str) -> cm_core::Result<Self> {
        cm_core::parse_diffusers_json(json, source, UNET_2D_CLASS, &Self::json_defaults())
    }

    /// Reads a diffusers `config.json` file ([`DiffusersUNetConfig::from_json`]).
    pub fn load(path: &std::path::Path) -> cm_core::Result<Self> {
        cm_core::load_diffusers_json(path, UNET_2D_CLASS, &Self::json_defaults())
    }

    /// The two optional fields whose diffusers default is not null.
    fn json_defaults() -> [(&'static str, serde_json::Value); 2] {
        [
            ("attention_head_dim", serde_json::Value::from(8)),
            ("mid_block_type", serde_json::Value::from("UNetMidBlock2D")),
        ]
    }

    /// The config as diffusers' `config.json` (with `_class_name`; nulls
    /// written out), for exporting a folder.
    pub fn to_json(&self) -> String {
        let mut value = serde_json::to_value(self).expect("configs serialize to JSON");
        let map = value
            .as_object_mut()
            .expect("a struct serializes to an object");
        for key in [
            "sample_size",
            "time_embedding_dim",
            "mid_block_type",
            "attention_head_dim",
            "attn_norm_num_groups",
            "class_embed_type",
            "num_class_embeds",
            "num_train_timesteps",
        ] {
            map.entry(key).or_insert(serde_json::Value::Null);
        }
        map.insert("_class_name".into(), UNET_2D_CLASS.into());
        serde_json::to_string_pretty(&value).expect("JSON values print")
    }

    /// `(height, width)` of a sample (validated configs have a size).
    pub fn hw(&self) -> (usize, usize) {
        self.sample_size.map(SampleSize::hw).unwrap_or((0, 0))
    }

    /// Width of the time embedding.
    pub fn time_embed_dim(&self) -> usize {
        self.time_embedding_dim
            .unwrap_or(4 * self.block_out_channels.first().copied().unwrap_or(0))
    }

    /// Number of classes (0 for an unconditional model). These networks
    /// have no null class.
    pub fn num_classes(&self) -> usize {
        self.num_class_embeds.unwrap_or(0)
    }

    fn fourier(&self) -> bool {
        self.time_embedding_type == "fourier"
    }

    fn scale_shift(&self) -> bool {
        self.resnet_time_scale_shift == "scale_shift"
    }

    /// The architecture as a list of layers with their widths: what both
    /// validation (every GroupNorm divides its channels, every attention has
    /// a head) and the builder walk.
    fn plan(&self) -> cm_core::Result<Plan> {
        let levels = self.block_out_channels.len();
        if levels == 0
            || self.down_block_types.len() != levels
            || self.up_block_types.len() != levels
        {
            return Err(invalid(
                "down_block_types / up_block_types / block_out_channels",
                (
                    self.down_block_types.len(),
                    self.up_block_types.len(),
                    levels,
                ),
                "one block type of each kind per level, at least one level",
            ));
        }
        let boc = |i: usize| self.block_out_channels[i] as i64;
        let (h, w) = self.hw();
        let mut res = (h as i64, w as i64);
        let mut down = Vec::new();
        let mut output_channel = boc(0);
        for (i, kind) in self.down_block_types.iter().enumerate() {
            let input_channel = output_channel;
            output_channel = boc(i);
            let last = i + 1 == levels;
            let (attention, resample) = self.block_kind(i, kind, Side::Down)?;
            let resnets = (0..self.layers_per_block)
                .map(|j| {
                    (
                        if j == 0 {
                            input_channel
                        } else {
                            output_channel
                        },
                        output_channel,
                    )
                })
                .collect();
            down.push(LevelPlan {
                resnets,
                attention,
                channels: output_channel,
                resample: (!last).then_some(resample),
                res,
            });
            if !last {
                res = (res.0 / 2, res.1 / 2);
            }
        }
        let mid = match self.mid_block_type.as_deref() {
            None => None,
            Some("UNetMidBlock2D") => Some(res),
            Some(other) => {
                return Err(invalid(
                    "mid_block_type",
                    other,
                    "\"UNetMidBlock2D\" or null",
                ))
            }
        };
        let mut up = Vec::new();
        let rev: Vec<i64> = self
            .block_out_channels
            .iter()
            .rev()
            .map(|&c| c as i64)
            .collect();
        let mut output_channel = rev[0];
        for (i, kind) in self.up_block_types.iter().enumerate() {
            let prev_output_channel = output_channel;
            output_channel = rev[i];
            let input_channel = rev[(i + 1).min(levels - 1)];
            let last = i + 1 == levels;
            let (attention, resample) = self.block_kind(i, kind, Side::Up)?;
            let n = self.layers_per_block + 1;
            let resnets = (0..n)
                .map(|j| {
                    let skip = if j + 1 == n {
                        input_channel
                    } else {
                        output_channel
                    };
                    let input = if j == 0 {
                        prev_output_channel
                    } else {
                        output_channel
                    };
                    (input + skip, output_channel)
                })
                .collect();
            up.push(LevelPlan {
                resnets,
                attention,
                channels: output_channel,
                resample: (!last).then_some(resample),
                res,
            });
            if !last {
                res = (res.0 * 2, res.1 * 2);
            }
        }
        Ok(Plan { down, mid, up })
    }

    /// Whether level `i`'s block type `kind` has attention, and how it
    /// resamples (diffusers' `get_down_block` / `get_up_block`; the
    /// `UNetRes` prefix is dropped as there).
    fn block_kind(&self, i: usize, kind: &str, side: Side) -> cm_core::Result<(bool, Resample)> {
        let kind = kind.strip_prefix("UNetRes").unwrap_or(kind);
        let (plain, resnet, attn, types, field, kind_field) = match side {
            Side::Down => (
                "DownBlock2D",
                "ResnetDownsampleBlock2D",
                "AttnDownBlock2D",
                &self.downsample_type,
                "down_block_types",
                "downsample_type",
            ),
            Side::Up => (
                "UpBlock2D",
                "ResnetUpsampleBlock2D",
                "AttnUpBlock2D",
                &self.upsample_type,
                "up_block_types",
                "upsample_type",
            ),
        };
        if kind == plain {
            Ok((false, Resample::Conv))
        } else if kind == resnet {
            Ok((false, Resample::Resnet))
        } else if kind == attn {
            match types.as_str() {
                "conv" => Ok((true, Resample::Conv)),
                "resnet" => Ok((true, Resample::Resnet)),
                other => Err(invalid(kind_field, other, "\"conv\" or \"resnet\"")),
            }
        } else {
            Err(invalid(
                &format!("{field}[{i}]"),
                kind,
                format!(
                    "{plain}, {resnet} or {attn} (the block types of the published consistency \
                     models)"
                ),
            ))
        }
    }

    /// Parameter count from the plan, exact (the ImageNet-64 test checks
    /// it against diffusers' count).
    pub fn num_params(&self) -> cm_core::Result<f64> {
        let plan = self.plan()?;
        let temb = self.time_embed_dim() as f64;
        let shift = if self.scale_shift() { 2.0 } else { 1.0 };
        let resnet = |cin: i64, cout: i64| -> f64 {
            let (cin, cout) = (cin as f64, cout as f64);
            2.0 * cin // norm1
                + cin * cout * 9.0 + cout // conv1
                + temb * shift * cout + shift * cout // time_emb_proj
                + 2.0 * cout // norm2
                + cout * cout * 9.0 + cout // conv2
                + if cin != cout { cin * cout + cout } else { 0.0 } // conv_shortcut
        };
        let attn = |c: i64, norm: bool| -> f64 {
            let d = self.attention_head_dim.map(|d| d as i64).unwrap_or(c);
            let inner = ((c / d.max(1)) * d) as f64;
            let c = c as f64;
            3.0 * (c * inner + inner) + inner * c + c + if norm { 2.0 * c } else { 0.0 }
        };
        let c0 = *self.block_out_channels.first().unwrap_or(&0) as f64;
        let tin = if self.fourier() { 2.0 * c0 } else { c0 };
        let mut total = self.in_channels as f64 * c0 * 9.0 + c0; // conv_in
        total += tin * temb + temb + temb * temb + temb; // time_embedding
        if self.fourier() {
            total += c0; // time_proj.weight
        }
        total += self.num_classes() as f64 * temb;
        for level in plan.down.iter().chain(&plan.up) {
            for &(cin, cout) in &level.resnets {
                total += resnet(cin, cout);
                if level.attention {
                    total += attn(cout, true);
                }
            }
            match level.resample {
                Some(Resample::Resnet) => total += resnet(level.channels, level.channels),
                Some(Resample::Conv) => {
                    let c = level.channels as f64;
                    total += c * c * 9.0 + c;
                }
                None => {}
            }
        }
        if plan.mid.is_some() {
            let c = *self.block_out_channels.last().unwrap_or(&0) as i64;
            total += 2.0 * resnet(c, c);
            if self.add_attention {
                total += attn(c, self.mid_attention_groups().is_some());
            }
        }
        total += 2.0 * c0 + c0 * self.out_channels as f64 * 9.0 + self.out_channels as f64;
        Ok(total)
    }
}

impl Validate for DiffusersUNetConfig {
    fn validate(&self) -> cm_core::Result<()> {
        let Some(size) = self.sample_size else {
            return Err(invalid(
                "sample_size",
                "null",
                "the image side (or [height, width]) the model was trained at",
            ));
        };
        let (h, w) = size.hw();
        let levels = self.block_out_channels.len();
        for (field, v) in [
            ("in_channels", self.in_channels),
            ("out_channels", self.out_channels),
            ("layers_per_block", self.layers_per_block),
            ("norm_num_groups", self.norm_num_groups),
        ] {
            if v == 0 || v > MAX_DIM {
                return Err(invalid(field, v, format!("1 to {MAX_DIM}")));
            }
        }
        if levels == 0 || levels > 8 {
            return Err(invalid(
                "block_out_channels",
                &self.block_out_channels,
                "1 to 8 levels",
            ));
        }
        if self.down_block_types.len() != levels || self.up_block_types.len() != levels {
            return Err(invalid(
                "down_block_types / up_block_types",
                (self.down_block_types.len(), self.up_block_types.len()),
                format!("one block type per level ({levels}, as block_out_channels)"),
            ));
        }
        for (i, &c) in self.block_out_channels.iter().enumerate() {
            if c == 0 || c > MAX_DIM {
                return Err(invalid(
                    &format!("block_out_channels[{i}]"),
                    c,
                    format!("1 to {MAX_DIM}"),
                ));
            }
        }
        let step = 1usize << (levels - 1);
        for (field, side) in [("sample_size (height)", h), ("sample_size (width)", w)] {
            if side == 0 || side > MAX_RESOLUTION || side % step != 0 {
                return Err(invalid(
                    field,
                    side,
                    format!(
                        "1 to {MAX_RESOLUTION}, a multiple of 2^(levels - 1) = {step} \
                         (every level halves it)"
                    ),
                ));
            }
        }
        match self.time_embedding_type.as_str() {
            "positional" | "fourier" => {}
            other => {
                return Err(invalid(
                    "time_embedding_type",
                    other,
                    "\"positional\" or \"fourier\" (a `learned` table needs integer timesteps; \
                     consistency models use continuous ones)",
                ))
            }
        }
        if let Some(d) = self.time_embedding_dim {
            if d == 0 || d > MAX_DIM {
                return Err(invalid("time_embedding_dim", d, format!("1 to {MAX_DIM}")));
            }
        }
        if !(self.freq_shift.is_finite()
            && (self.block_out_channels[0] / 2) as f64 != self.freq_shift)
        {
            return Err(invalid(
                "freq_shift",
                self.freq_shift,
                "a finite shift other than half the embedding width",
            ));
        }
        if Act::parse(&self.act_fn).is_none() {
            return Err(invalid(
                "act_fn",
                &self.act_fn,
                "\"silu\" (\"swish\"), \"mish\", \"gelu\" or \"relu\"",
            ));
        }
        if self.out_channels != self.in_channels {
            return Err(invalid(
                "out_channels",
                self.out_channels,
                format!(
                    "in_channels = {} (cm-rs networks map a sample to a sample of its shape)",
                    self.in_channels
                ),
            ));
        }
        match self.resnet_time_scale_shift.as_str() {
            "default" | "scale_shift" => {}
            other => {
                return Err(invalid(
                    "resnet_time_scale_shift",
                    other,
                    "\"default\" or \"scale_shift\"",
                ))
            }
        }
        if let Some(kind) = &self.class_embed_type {
            return Err(invalid(
                "class_embed_type",
                kind,
                "null (a learned class table of num_class_embeds rows; `timestep`, `identity` \
                 and projections are not supported)",
            ));
        }
        if let Some(n) = self.num_class_embeds {
            if n == 0 || n > MAX_DIM {
                return Err(invalid(
                    "num_class_embeds",
                    n,
                    format!("null or 1 to {MAX_DIM}"),
                ));
            }
        }
        if !(self.norm_eps.is_finite() && self.norm_eps > 0.0) {
            return Err(invalid("norm_eps", self.norm_eps, "a positive number"));
        }
        if !(self.mid_block_scale_factor.is_finite() && self.mid_block_scale_factor > 0.0) {
            return Err(invalid(
                "mid_block_scale_factor",
                self.mid_block_scale_factor,
                "a positive number",
            ));
        }
        if !(0.0..1.0).contains(&self.dropout) {
            return Err(invalid("dropout", self.dropout, "a probability in [0, 1)"));
        }
        if self.downsample_padding > 1 {
            return Err(invalid(
                "downsample_padding",
                self.downsample_padding,
                "0 or 1 (a stride-2 3x3 convolution must halve the side)",
            ));
        }
        if let Some(d) = self.attention_head_dim {
            if d == 0 || d > MAX_DIM {
                return Err(invalid(
                    "attention_head_dim",
                    d,
                    format!("null or 1 to {MAX_DIM}"),
                ));
            }
        }
        let plan = self.plan()?;
        // Every GroupNorm must divide its channels; every attention needs a head.
        let groups = self.norm_num_groups as i64;
        let check_groups = |field: &str, channels: i64, groups: i64| {
            if channels % groups != 0 {
                Err(invalid(
                    field,
                    groups,
                    format!("a group count dividing the {channels} channels it normalises"),
                ))
            } else {
                Ok(())
            }
        };
        let check_heads = |channels: i64, res: (i64, i64)| -> cm_core::Result<()> {
            let d = self
                .attention_head_dim
                .map(|d| d as i64)
                .unwrap_or(channels);
            if channels / d == 0 {
                return Err(invalid(
                    "attention_head_dim",
                    d,
                    format!("at most the {channels} channels of an attention layer"),
                ));
            }
            if (res.0 * res.1) as usize > MAX_TOKENS {
                return Err(invalid(
                    "sample_size",
                    size,
                    format!("attention over at most {MAX_TOKENS} positions per level"),
                ));
            }
            Ok(())
        };
        for level in plan.down.iter().chain(&plan.up) {
            for &(cin, cout) in &level.resnets {
                check_groups("norm_num_groups", cin, groups)?;
                check_groups("norm_num_groups", cout, groups)?;
                if level.attention {
                    check_heads(cout, level.res)?;
                }
            }
        }
        let c0 = self.block_out_channels[0] as i64;
        check_groups("norm_num_groups", c0, groups)?;
        if let Some(res) = plan.mid {
            let c = *self.block_out_channels.last().unwrap_or(&1) as i64;
            if self.add_attention {
                check_heads(c, res)?;
                if let Some(g) = self.mid_attention_groups() {
                    if g == 0 || g > MAX_DIM as i64 {
                        return Err(invalid(
                            "attn_norm_num_groups",
                            g,
                            format!("1 to {MAX_DIM}"),
                        ));
                    }
                    check_groups("attn_norm_num_groups", c, g)?;
                }
            }
        }
        let params = self.num_params()?;
        if params > MAX_PARAMS {
            return Err(invalid(
                "block_out_channels",
                format!("about {params:.2e} parameters"),
                format!("at most {MAX_PARAMS:.0e} parameters"),
            ));
        }
        Ok(())
    }
}

impl DiffusersUNetConfig {
    /// Groups of the mid block's attention norm (none: no norm), diffusers'
    /// rule.
    fn mid_attention_groups(&self) -> Option<i64> {
        match self.attn_norm_num_groups {
            Some(g) => Some(g as i64),
            None if !self.scale_shift() => Some(self.norm_num_groups as i64),
            None => None,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq)]
enum Side {
    Down,
    Up,
}

#[derive(Debug, Clone, Copy, PartialEq)]
enum Resample {
    Conv,
    Resnet,
}

#[derive(Debug)]
struct LevelPlan {
    /// `(in, out)` channels of each residual block.
    resnets: Vec<(i64, i64)>,
    attention: bool,
    channels: i64,
    resample: Option<Resample>,
    /// Resolution the level's blocks run at (before its resampling).
    res: (i64, i64),
}

#[derive(Debug)]
struct Plan {
    down: Vec<LevelPlan>,
    mid: Option<(i64, i64)>,
    up: Vec<LevelPlan>,
}

/// The residual blocks' activation.
#[derive(Debug, Clone, Copy)]
enum Act {
    Silu,
    Mish,
    Gelu,
    Relu,
}

impl Act {
    /// diffusers' `get_activation` names cm-rs supports.
    fn parse(name: &str) -> Option<Act> {
        Some(match name {
            "silu" | "swish" => Act::Silu,
            "mish" => Act::Mish,
            "gelu" => Act::Gelu,
            "relu" => Act::Relu,
            _ => return None,
        })
    }

    fn apply(self, x: &Tensor) -> Tensor {
        match self {
            Act::Silu => x.silu(),
            Act::Mish => x.mish(),
            Act::Gelu => x.gelu("none"),
            Act::Relu => x.relu(),
        }
    }
}

fn group_norm(p: nn::Path, groups: i64, channels: i64, eps: f64) -> nn::GroupNorm {
    nn::group_norm(
        p,
        groups,
        channels,
        nn::GroupNormConfig {
            eps,
            ..Default::default()
        },
    )
}

fn conv(p: nn::Path, cin: i64, cout: i64, k: i64, stride: i64, padding: i64) -> nn::Conv2D {
    nn::conv2d(
        p,
        cin,
        cout,
        k,
        nn::ConvConfig {
            stride,
            padding,
            ..Default::default()
        },
    )
}

/// diffusers' `ResnetBlock2D`: GroupNorm, act, (resample both paths), conv;
/// the embedding added (`default`) or as scale and shift after the second
/// norm (`scale_shift`); act, dropout, conv; 1x1 shortcut when the width
/// changes; `(shortcut + h) / output_scale_factor`.
#[derive(Debug)]
struct ResnetBlock {
    norm1: nn::GroupNorm,
    conv1: nn::Conv2D,
    time_emb_proj: nn::Linear,
    norm2: nn::GroupNorm,
    conv2: nn::Conv2D,
    conv_shortcut: Option<nn::Conv2D>,
    resample: Option<Updown>,
    scale_shift: bool,
    output_scale_factor: f64,
    dropout: f64,
    act: Act,
}

#[derive(Debug, Clone, Copy)]
enum Updown {
    Up,
    Down,
}

struct Ctx<'a> {
    config: &'a DiffusersUNetConfig,
    temb: i64,
    act: Act,
}

impl ResnetBlock {
    #[allow(clippy::too_many_arguments)]
    fn new(
        p: nn::Path,
        ctx: &Ctx,
        cin: i64,
        cout: i64,
        resample: Option<Updown>,
        output_scale_factor: f64,
        res: (i64, i64),
        macs: &mut MacCounter,
    ) -> Self {
        let c = ctx.config;
        let groups = c.norm_num_groups as i64;
        let shift = if c.scale_shift() { 2 } else { 1 };
        let out_res = match resample {
            Some(Updown::Up) => (res.0 * 2, res.1 * 2),
            Some(Updown::Down) => (res.0 / 2, res.1 / 2),
            None => res,
        };
        macs.conv(cin, cout, 3, out_res.0, out_res.1);
        macs.conv(cout, cout, 3, out_res.0, out_res.1);
        macs.linear(ctx.temb, shift * cout, 1);
        if cin != cout {
            macs.conv(cin, cout, 1, out_res.0, out_res.1);
        }
        ResnetBlock {
            norm1: group_norm(&p / "norm1", groups, cin, c.norm_eps),
            conv1: conv(&p / "conv1", cin, cout, 3, 1, 1),
            time_emb_proj: nn::linear(
                &p / "time_emb_proj",
                ctx.temb,
                shift * cout,
                Default::default(),
            ),
            norm2: group_norm(&p / "norm2", groups, cout, c.norm_eps),
            conv2: conv(&p / "conv2", cout, cout, 3, 1, 1),
            conv_shortcut: (cin != cout).then(|| conv(&p / "conv_shortcut", cin, cout, 1, 1, 0)),
            resample,
            scale_shift: c.scale_shift(),
            output_scale_factor,
            dropout: c.dropout,
            act: ctx.act,
        }
    }

    /// `temb_act` is `act(emb)`, shared by every block.
    fn forward(&self, x: &Tensor, temb_act: &Tensor, train: bool) -> Tensor {
        let h = self.act.apply(&self.norm1.forward(x));
        let (x, h) = match self.resample {
            None => (x.shallow_clone(), h),
            Some(Updown::Up) => (upsample_nearest(x), upsample_nearest(&h)),
            Some(Updown::Down) => (avg_pool(x), avg_pool(&h)),
        };
        let h = self.conv1.forward(&h);
        let emb = self
            .time_emb_proj
            .forward(temb_act)
            .unsqueeze(-1)
            .unsqueeze(-1);
        let h = if self.scale_shift {
            let parts = emb.chunk(2, 1);
            self.norm2.forward(&h) * (&parts[0] + 1.0) + &parts[1]
        } else {
            self.norm2.forward(&(h + emb))
        };
        let h = crate::layers::dropout(&self.act.apply(&h), self.dropout, train);
        let h = self.conv2.forward(&h);
        let x = match &self.conv_shortcut {
            Some(c) => c.forward(&x),
            None => x,
        };
        let out = x + h;
        if self.output_scale_factor == 1.0 {
            out
        } else {
            out / self.output_scale_factor
        }
    }
}

fn upsample_nearest(x: &Tensor) -> Tensor {
    let (_, _, h, w) = x.size4().expect("feature maps are 4-D");
    x.upsample_nearest2d([2 * h, 2 * w], None, None)
}

fn avg_pool(x: &Tensor) -> Tensor {
    x.avg_pool2d([2, 2], [2, 2], [0, 0], false, true, None::<i64>)
}

/// diffusers' `Attention` as the U-Net blocks build it
/// (`_from_deprecated_attn_block`): optional GroupNorm, `to_q` / `to_k` /
/// `to_v` / `to_out.0` linear layers over channels, residual connection,
/// division by `rescale_output_factor`.
#[derive(Debug)]
struct Attention {
    group_norm: Option<nn::GroupNorm>,
    to_q: nn::Linear,
    to_k: nn::Linear,
    to_v: nn::Linear,
    to_out: nn::Linear,
    heads: i64,
    head_dim: i64,
    rescale_output_factor: f64,
}

impl Attention {
    fn new(
        p: nn::Path,
        ctx: &Ctx,
        channels: i64,
        groups: Option<i64>,
        rescale_output_factor: f64,
        res: (i64, i64),
        macs: &mut MacCounter,
    ) -> Self {
        let head_dim = ctx
            .config
            .attention_head_dim
            .map(|d| d as i64)
            .unwrap_or(channels);
        let heads = channels / head_dim;
        let inner = heads * head_dim;
        let tokens = res.0 * res.1;
        macs.linear(channels, 3 * inner, tokens);
        macs.attention(tokens, inner);
        macs.linear(inner, channels, tokens);
        Attention {
            group_norm: groups
                .map(|g| group_norm(&p / "group_norm", g, channels, ctx.config.norm_eps)),
            to_q: nn::linear(&p / "to_q", channels, inner, Default::default()),
            to_k: nn::linear(&p / "to_k", channels, inner, Default::default()),
            to_v: nn::linear(&p / "to_v", channels, inner, Default::default()),
            to_out: nn::linear(&p / "to_out" / 0, inner, channels, Default::default()),
            heads,
            head_dim,
            rescale_output_factor,
        }
    }

    fn forward(&self, x: &Tensor) -> Tensor {
        let (b, c, h, w) = x.size4().expect("feature maps are 4-D");
        let normed = match &self.group_norm {
            Some(n) => n.forward(x),
            None => x.shallow_clone(),
        };
        // [B, C, H, W] -> [B, HW, C]
        let tokens = normed.reshape([b, c, h * w]).transpose(1, 2);
        let split = |t: Tensor| {
            t.reshape([b, h * w, self.heads, self.head_dim])
                .transpose(1, 2)
        };
        let q = split(self.to_q.forward(&tokens));
        let k = split(self.to_k.forward(&tokens));
        let v = split(self.to_v.forward(&tokens));
        let out = crate::layers::attention(&q, &k, &v)
            .transpose(1, 2)
            .reshape([b, h * w, self.heads * self.head_dim]);
        let out = self
            .to_out
            .forward(&out)
            .transpose(1, 2)
            .reshape([b, c, h, w]);
        let out = out + x;
        if self.rescale_output_factor == 1.0 {
            out
        } else {
            out / self.rescale_output_factor
        }
    }
}

#[derive(Debug)]
// One per resampling layer, built once: its size does not matter.
#[allow(clippy::large_enum_variant)]
enum Sampler {
    /// Strided 3x3 convolution (down; `pad` pads right/bottom by one first)
    /// or nearest x2 then 3x3 convolution (up).
    Conv { conv: nn::Conv2D, pad: bool },
    /// A residual block that resamples.
    Resnet(ResnetBlock),
}

#[derive(Debug)]
struct Level {
    resnets: Vec<ResnetBlock>,
    attentions: Vec<Attention>,
    sampler: Option<Sampler>,
}

/// How the time is embedded before the MLP.
#[derive(Debug)]
enum TimeProj {
    /// diffusers' `get_timestep_embedding` (max period 10000).
    Positional {
        dim: i64,
        flip_sin_to_cos: bool,
        freq_shift: f64,
    },
    /// `GaussianFourierProjection(scale = 16, log = True)`: `[sin, cos](2 pi
    /// w ln t)`; the weights are a saved, non-trained buffer.
    Fourier { weight: Tensor },
}

impl TimeProj {
    fn forward(&self, t: &Tensor) -> Tensor {
        match self {
            TimeProj::Positional {
                dim,
                flip_sin_to_cos,
                freq_shift,
            } => {
                let half = dim / 2;
                // The same operations, in the same order and precision, as
                // diffusers (f32 throughout), so outputs agree to rounding.
                let exponent =
                    Tensor::arange(half, (Kind::Float, t.device())) * (-(10_000f64.ln()));
                let exponent = exponent / (half as f64 - freq_shift);
                let freqs = exponent.exp();
                let emb = t.to_kind(Kind::Float).unsqueeze(1) * freqs.unsqueeze(0);
                let (sin, cos) = (emb.sin(), emb.cos());
                let emb = if *flip_sin_to_cos {
                    Tensor::cat(&[cos, sin], 1)
                } else {
                    Tensor::cat(&[sin, cos], 1)
                };
                if dim % 2 == 1 {
                    emb.constant_pad_nd([0, 1, 0, 0])
                } else {
                    emb
                }
            }
            TimeProj::Fourier { weight } => {
                let x = t.to_kind(Kind::Float).log().unsqueeze(1)
                    * weight.unsqueeze(0)
                    * (2.0 * std::f64::consts::PI);
                Tensor::cat(&[x.sin(), x.cos()], 1)
            }
        }
    }
}

/// diffusers' `UNet2DModel` (see the module docs).
#[derive(Debug)]
pub struct DiffusersUNet {
    conv_in: nn::Conv2D,
    time_proj: TimeProj,
    linear_1: nn::Linear,
    linear_2: nn::Linear,
    class_embedding: Option<nn::Embedding>,
    down: Vec<Level>,
    mid: Option<(ResnetBlock, Option<Attention>, ResnetBlock)>,
    up: Vec<Level>,
    conv_norm_out: nn::GroupNorm,
    conv_out: nn::Conv2D,
    center_input_sample: bool,
    fourier: bool,
    /// The residual blocks' activation, also applied to the embedding
    /// before each block's projection.
    act: Act,
}

impl DiffusersUNet {
    /// Builds the network under `p` with diffusers' parameter names. The
    /// config must be valid ([`Validate`]); weights are freshly initialised
    /// (load a checkpoint over them).
    pub fn new(p: &nn::Path, c: &DiffusersUNetConfig, macs: &mut MacCounter) -> Self {
        let plan = c.plan().expect("validated configs have a plan");
        let ctx = Ctx {
            config: c,
            temb: c.time_embed_dim() as i64,
            act: Act::parse(&c.act_fn).expect("validated configs name a supported activation"),
        };
        let (h, w) = c.hw();
        let (h, w) = (h as i64, w as i64);
        let c0 = c.block_out_channels[0] as i64;
        macs.conv(c.in_channels as i64, c0, 3, h, w);
        let time_proj = if c.fourier() {
            // A buffer (diffusers: a parameter with requires_grad = False),
            // N(0, 16^2) as `GaussianFourierProjection(scale = 16)`.
            let weight = (p / "time_proj").zeros_no_train("weight", &[c0]);
            let init = Tensor::randn([c0], (Kind::Float, p.device())) * 16.0;
            tch::no_grad(|| weight.shallow_clone().copy_(&init));
            TimeProj::Fourier { weight }
        } else {
            TimeProj::Positional {
                dim: c0,
                flip_sin_to_cos: c.flip_sin_to_cos,
                freq_shift: c.freq_shift,
            }
        };
        let tin = if c.fourier() { 2 * c0 } else { c0 };
        let te = p / "time_embedding";
        let linear_1 = nn::linear(&te / "linear_1", tin, ctx.temb, Default::default());
        let linear_2 = nn::linear(&te / "linear_2", ctx.temb, ctx.temb, Default::default());
        let class_embedding = c.num_class_embeds.map(|n| {
            nn::embedding(
                p / "class_embedding",
                n as i64,
                ctx.temb,
                Default::default(),
            )
        });
        let groups = c.norm_num_groups as i64;
        let build_level = |p: nn::Path, level: &LevelPlan, up: bool, macs: &mut MacCounter| {
            let mut resnets = Vec::new();
            let mut attentions = Vec::new();
            for (j, &(cin, cout)) in level.resnets.iter().enumerate() {
                resnets.push(ResnetBlock::new(
                    &p / "resnets" / j as i64,
                    &ctx,
                    cin,
                    cout,
                    None,
                    1.0,
                    level.res,
                    macs,
                ));
                if level.attention {
                    attentions.push(Attention::new(
                        &p / "attentions" / j as i64,
                        &ctx,
                        cout,
                        Some(groups),
                        1.0,
                        level.res,
                        macs,
                    ));
                }
            }
            let ch = level.channels;
            let (rh, rw) = level.res;
            let sampler = level.resample.map(|kind| {
                let sp = if up {
                    &p / "upsamplers" / 0
                } else {
                    &p / "downsamplers" / 0
                };
                match kind {
                    Resample::Resnet => Sampler::Resnet(ResnetBlock::new(
                        sp,
                        &ctx,
                        ch,
                        ch,
                        Some(if up { Updown::Up } else { Updown::Down }),
                        1.0,
                        level.res,
                        macs,
                    )),
                    Resample::Conv if up => {
                        macs.conv(ch, ch, 3, 2 * rh, 2 * rw);
                        Sampler::Conv {
                            conv: conv(&sp / "conv", ch, ch, 3, 1, 1),
                            pad: false,
                        }
                    }
                    Resample::Conv => {
                        macs.conv(ch, ch, 3, rh / 2, rw / 2);
                        let padding = c.downsample_padding as i64;
                        Sampler::Conv {
                            conv: conv(&sp / "conv", ch, ch, 3, 2, padding),
                            pad: padding == 0,
                        }
                    }
                }
            });
            Level {
                resnets,
                attentions,
                sampler,
            }
        };
        let down = plan
            .down
            .iter()
            .enumerate()
            .map(|(i, l)| build_level(p / "down_blocks" / i as i64, l, false, macs))
            .collect();
        let mid = plan.mid.map(|res| {
            let mp = p / "mid_block";
            let ch = *c.block_out_channels.last().expect("validated") as i64;
            let scale = c.mid_block_scale_factor;
            let first = ResnetBlock::new(&mp / "resnets" / 0, &ctx, ch, ch, None, scale, res, macs);
            let attention = c.add_attention.then(|| {
                Attention::new(
                    &mp / "attentions" / 0,
                    &ctx,
                    ch,
                    c.mid_attention_groups(),
                    scale,
                    res,
                    macs,
                )
            });
            let second =
                ResnetBlock::new(&mp / "resnets" / 1, &ctx, ch, ch, None, scale, res, macs);
            (first, attention, second)
        });
        let up = plan
            .up
            .iter()
            .enumerate()
            .map(|(i, l)| build_level(p / "up_blocks" / i as i64, l, true, macs))
            .collect();
        macs.conv(c0, c.out_channels as i64, 3, h, w);
        DiffusersUNet {
            conv_in: conv(p / "conv_in", c.in_channels as i64, c0, 3, 1, 1),
            time_proj,
            linear_1,
            linear_2,
            class_embedding,
            down,
            mid,
            up,
            conv_norm_out: group_norm(p / "conv_norm_out", groups, c0, c.norm_eps),
            conv_out: conv(p / "conv_out", c0, c.out_channels as i64, 3, 1, 1),
            center_input_sample: c.center_input_sample,
            fourier: c.fourier(),
            act: ctx.act,
        }
    }
}

impl Network for DiffusersUNet {
    /// `UNet2DModel.forward(x, timestep = c_noise, class_labels)`. A
    /// class-conditional network needs labels in `0..num_class_embeds`
    /// (no null class; `Model::check_input` refuses the rest).
    fn forward_t(
        &self,
        x: &Tensor,
        c_noise: &Tensor,
        cond: Conditioning<'_>,
        train: bool,
    ) -> Tensor {
        let x = if self.center_input_sample {
            x * 2.0 - 1.0
        } else {
            x.shallow_clone()
        };
        let t_emb = self.time_proj.forward(c_noise);
        let mut emb = self.linear_2.forward(&self.linear_1.forward(&t_emb).silu());
        if let Some(table) = &self.class_embedding {
            let labels = cond
                .class
                .expect("class-conditional diffusers networks are given labels (checked on input)");
            emb += table.forward(&labels.to_device(emb.device()));
        }
        // Every residual block applies its activation (`act_fn`) to the
        // embedding first (`skip_time_act = False`); compute it once.
        let temb = self.act.apply(&emb);
        let temb_act = &temb;
        let mut h = self.conv_in.forward(&x);
        let mut skips = vec![h.shallow_clone()];
        for level in &self.down {
            for (j, resnet) in level.resnets.iter().enumerate() {
                h = resnet.forward(&h, temb_act, train);
                if let Some(attn) = level.attentions.get(j) {
                    h = attn.forward(&h);
                }
                skips.push(h.shallow_clone());
            }
            if let Some(sampler) = &level.sampler {
                h = match sampler {
                    Sampler::Resnet(r) => r.forward(&h, temb_act, train),
                    Sampler::Conv { conv, pad } => {
                        let input = if *pad {
                            h.constant_pad_nd([0, 1, 0, 1])
                        } else {
                            h
                        };
                        conv.forward(&input)
                    }
                };
                skips.push(h.shallow_clone());
            }
        }
        if let Some((first, attention, second)) = &self.mid {
            h = first.forward(&h, temb_act, train);
            if let Some(attn) = attention {
                h = attn.forward(&h);
            }
            h = second.forward(&h, temb_act, train);
        }
        for level in &self.up {
            for (j, resnet) in level.resnets.iter().enumerate() {
                let skip = skips.pop().expect("one skip per up-block residual block");
                h = resnet.forward(&Tensor::cat(&[&h, &skip], 1), temb_act, train);
                if let Some(attn) = level.attentions.get(j) {
                    h = attn.forward(&h);
                }
            }
            if let Some(sampler) = &level.sampler {
                h = match sampler {
                    Sampler::Resnet(r) => r.forward(&h, temb_act, train),
                    Sampler::Conv { conv, .. } => conv.forward(&upsample_nearest(&h)),
                };
            }
        }
        let out = self
            .conv_out
            .forward(&self.conv_norm_out.forward(&h).silu());
        if self.fourier {
            let t = c_noise.to_kind(out.kind()).reshape([-1, 1, 1, 1]);
            out / t
        } else {
            out
        }
    }
}
