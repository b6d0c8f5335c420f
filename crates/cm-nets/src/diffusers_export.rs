//! cm-rs's U-Net as a diffusers `UNet2DModel`, where the architecture maps.
//!
//! cm-rs's [`crate::UNet`] is the ADM layout (EDM's `DhariwalUNet`) that
//! diffusers' conversion of openai's checkpoints also targets: with
//! positional noise embeddings, resampling inside residual blocks
//! (`resample = "filter"`), no skip scaling and one GroupNorm group count
//! throughout, each block is a `ResnetBlock2D`, each attention an
//! `Attention`, the down-sampling blocks `downsamplers.0` residual blocks,
//! and the two middle blocks `UNetMidBlock2D`. [`to_diffusers`] checks every
//! condition (naming the one that fails) and renames the weights:
//! `qkv` splits into `to_q` / `to_k` / `to_v`, 1x1 convolutions become
//! linear weights, and the class table keeps its null-class row (label
//! `num_classes` stays the null class).

use std::collections::BTreeMap;

use tch::Tensor;

use cm_core::{CoreError, Validate};

use crate::config::{NetConfig, Resample, UNetConfig};
use crate::diffusers::{DiffusersUNetConfig, SampleSize};
use crate::layers::{group_count, NoiseEmbedding};
use crate::model::Model;

fn unsupported(field: &str, value: impl std::fmt::Debug, expected: &str) -> CoreError {
    CoreError::invalid(
        field,
        format!("{value:?}"),
        format!("{expected} to map to diffusers' UNet2DModel"),
    )
}

/// The `UNet2DModel` config equivalent to a cm-rs U-Net config, or the
/// option that has no equivalent.
pub fn unet_to_diffusers_config(c: &UNetConfig) -> cm_core::Result<DiffusersUNetConfig> {
    if c.noise_embedding != NoiseEmbedding::Positional {
        return Err(unsupported(
            "noise_embedding",
            c.noise_embedding,
            "\"positional\" (diffusers' Fourier projection takes ln t and divides the output by t)",
        ));
    }
    if c.resample != Resample::Filter {
        return Err(unsupported(
            "resample",
            c.resample,
            "\"filter\" (resampling inside residual blocks)",
        ));
    }
    if c.skip_scale != 1.0 {
        return Err(unsupported("skip_scale", c.skip_scale, "1"));
    }
    if c.guidance_embedding {
        return Err(unsupported(
            "guidance_embedding",
            true,
            "false (UNet2DModel has no guidance-scale embedding)",
        ));
    }
    // cm-rs's input convolution and noise embedding are `model_channels`
    // wide, diffusers' `block_out_channels[0]`.
    if c.channel_mult.first() != Some(&1) {
        return Err(unsupported(
            "channel_mult",
            &c.channel_mult,
            "a first multiplier of 1",
        ));
    }
    let mc = c.model_channels as i64;
    let widths: Vec<i64> = c.channel_mult.iter().map(|&m| mc * m as i64).collect();
    let levels = widths.len();
    let res0 = c.resolution as i64;
    let attn: Vec<bool> = (0..levels)
        .map(|l| c.attn_resolutions.contains(&((res0 >> l) as usize)))
        .collect();
    let cph = c.channels_per_head as i64;
    // Attention: cm-rs uses max(1, C / cph) heads of C / heads channels;
    // diffusers C / head_dim heads of head_dim: equal when cph divides C.
    for (l, &w) in widths.iter().enumerate() {
        let at_level = attn[l] || l + 1 == levels;
        if at_level && w % cph != 0 {
            return Err(unsupported(
                "channels_per_head",
                cph,
                &format!("a divisor of the {w} channels of every attention level"),
            ));
        }
    }
    // One GroupNorm group count for every norm (diffusers has one
    // `norm_num_groups`); cm-rs picks min(32, C / 4) per width.
    let mut widths_normed: Vec<i64> = widths.clone();
    widths_normed.push(mc);
    let mut skips = vec![mc];
    let mut cout = mc;
    for (l, &w) in widths.iter().enumerate() {
        if l > 0 {
            skips.push(cout);
        }
        for _ in 0..c.num_res_blocks {
            cout = w;
            skips.push(cout);
        }
    }
    for &w in widths.iter().rev() {
        for _ in 0..=c.num_res_blocks {
            let skip = skips.pop().unwrap_or(0);
            widths_normed.push(cout + skip);
            cout = w;
        }
    }
    let groups = group_count(widths_normed[0]);
    if let Some(&w) = widths_normed.iter().find(|&&w| group_count(w) != groups) {
        return Err(unsupported(
            "model_channels / channel_mult",
            (c.model_channels, &c.channel_mult),
            &format!(
                "widths whose GroupNorms all have the same group count (cm-rs uses min(32, C / 4): \
                 {} groups at {} channels, {} at {w}; widths of 128 and more all use 32)",
                groups,
                widths_normed[0],
                group_count(w)
            ),
        ));
    }
    let config = DiffusersUNetConfig {
        sample_size: Some(SampleSize::Square(c.resolution)),
        in_channels: c.in_channels,
        out_channels: c.in_channels,
        time_embedding_dim: Some(c.model_channels * c.emb_mult),
        down_block_types: attn
            .iter()
            .map(|&a| {
                if a {
                    "AttnDownBlock2D"
                } else {
                    "ResnetDownsampleBlock2D"
                }
                .to_string()
            })
            .collect(),
        mid_block_type: Some("UNetMidBlock2D".into()),
        up_block_types: attn
            .iter()
            .rev()
            .map(|&a| {
                if a {
                    "AttnUpBlock2D"
                } else {
                    "ResnetUpsampleBlock2D"
                }
                .to_string()
            })
            .collect(),
        block_out_channels: widths.iter().map(|&w| w as usize).collect(),
        layers_per_block: c.num_res_blocks,
        downsample_type: "resnet".into(),
        upsample_type: "resnet".into(),
        dropout: c.dropout,
        attention_head_dim: Some(c.channels_per_head),
        norm_num_groups: groups as usize,
        attn_norm_num_groups: Some(groups as usize),
        norm_eps: 1e-5,
        resnet_time_scale_shift: if c.scale_shift {
            "scale_shift"
        } else {
            "default"
        }
        .into(),
        num_class_embeds: (c.num_classes > 0).then_some(c.num_classes + 1),
        ..DiffusersUNetConfig::default()
    };
    config.validate()?;
    Ok(config)
}

/// The diffusers prefix of a cm-rs U-Net block, by its cm-rs path.
fn block_prefix(c: &UNetConfig, path: &str) -> Option<String> {
    let levels = c.channel_mult.len();
    let level_of = |res: &str| -> Option<usize> {
        let side: usize = res.split('x').next()?.parse().ok()?;
        (0..levels).find(|&l| c.resolution >> l == side)
    };
    let (part, name) = path.split_once('.')?;
    let (res, kind) = name.split_once('_')?;
    let level = level_of(res)?;
    let up_index = levels - 1 - level;
    Some(match (part, kind) {
        ("enc", "down") => format!("down_blocks.{}.downsamplers.0", level - 1),
        ("enc", k) => format!("down_blocks.{level}.resnets.{}", k.strip_prefix("block")?),
        ("dec", "in0") => "mid_block.resnets.0".into(),
        ("dec", "in1") => "mid_block.resnets.1".into(),
        ("dec", "up") => format!("up_blocks.{}.upsamplers.0", up_index - 1),
        ("dec", k) => format!("up_blocks.{up_index}.resnets.{}", k.strip_prefix("block")?),
        _ => return None,
    })
}

/// The model's config and weights as a diffusers `UNet2DModel` (config and
/// state dict with diffusers' names), for a cm-rs U-Net whose architecture
/// maps ([`unet_to_diffusers_config`]).
pub fn to_diffusers(
    model: &Model,
) -> cm_core::Result<(DiffusersUNetConfig, Vec<(String, Tensor)>)> {
    let NetConfig::Unet(c) = model.config() else {
        return Err(CoreError::invalid(
            "arch",
            format!("{:?}", model.config().arch()),
            "\"unet\" (only cm-rs's U-Net maps to diffusers' UNet2DModel)",
        ));
    };
    let config = unet_to_diffusers_config(c)?;
    let vars: BTreeMap<String, Tensor> = model.var_store().variables().into_iter().collect();
    let mut out = Vec::new();
    let linear = |t: &Tensor| t.flatten(1, -1).contiguous();
    for (name, t) in &vars {
        let t = t.detach();
        let renamed: Vec<(String, Tensor)> = match name.as_str() {
            "map_noise.freqs" => Vec::new(), // diffusers computes them
            n if n.starts_with("map_layer0.") => {
                vec![(n.replacen("map_layer0", "time_embedding.linear_1", 1), t)]
            }
            n if n.starts_with("map_layer1.") => {
                vec![(n.replacen("map_layer1", "time_embedding.linear_2", 1), t)]
            }
            "map_label.weight" => vec![("class_embedding.weight".into(), t)],
            n if n.starts_with("enc.conv_in.") => {
                vec![(n.replacen("enc.conv_in", "conv_in", 1), t)]
            }
            n if n.starts_with("dec.out_norm.") => {
                vec![(n.replacen("dec.out_norm", "conv_norm_out", 1), t)]
            }
            n if n.starts_with("dec.out_conv.") => {
                vec![(n.replacen("dec.out_conv", "conv_out", 1), t)]
            }
            n => {
                // enc.RESxRES_KIND.LAYER[.SUB].PARAM
                let mut parts = n.splitn(3, '.');
                let (part, block, rest) = (
                    parts.next().unwrap_or(""),
                    parts.next().unwrap_or(""),
                    parts.next().unwrap_or(""),
                );
                let prefix = block_prefix(c, &format!("{part}.{block}"))
                    .ok_or_else(|| CoreError::invalid("weights", n, "a cm-rs U-Net variable"))?;
                let (layer, param) = rest.rsplit_once('.').unwrap_or((rest, ""));
                let resnet =
                    |new: &str| vec![(format!("{prefix}.{new}.{param}"), t.shallow_clone())];
                match layer {
                    "norm0" => resnet("norm1"),
                    "conv0" => resnet("conv1"),
                    "affine" => resnet("time_emb_proj"),
                    "norm1" => resnet("norm2"),
                    "conv1" => resnet("conv2"),
                    "skip" => resnet("conv_shortcut"),
                    a if a.starts_with("attn") => {
                        let attn = prefix.replace("resnets.", "attentions.");
                        match a {
                            "attn.norm" => vec![(format!("{attn}.group_norm.{param}"), t)],
                            "attn.proj" if param == "weight" => {
                                vec![(format!("{attn}.to_out.0.{param}"), linear(&t))]
                            }
                            "attn.proj" => vec![(format!("{attn}.to_out.0.{param}"), t)],
                            "attn.qkv" => {
                                let chunks = t.chunk(3, 0);
                                ["to_q", "to_k", "to_v"]
                                    .iter()
                                    .zip(chunks)
                                    .map(|(k, w)| {
                                        let w = if param == "weight" {
                                            linear(&w)
                                        } else {
                                            w.contiguous()
                                        };
                                        (format!("{attn}.{k}.{param}"), w)
                                    })
                                    .collect()
                            }
                            _ => {
                                return Err(CoreError::invalid(
                                    "weights",
                                    n,
                                    "a cm-rs U-Net variable",
                                ))
                            }
                        }
                    }
                    _ => return Err(CoreError::invalid("weights", n, "a cm-rs U-Net variable")),
                }
            }
        };
        out.extend(renamed.into_iter().map(|(n, t)| (n, t.contiguous())));
    }
    out.sort_by(|a, b| a.0.cmp(&b.0));
    Ok((config, out))
}
