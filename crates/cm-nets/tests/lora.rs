//! LoRA adapters (cm-nets `lora`): a fresh adapter is the identity; on the
//! fly and merged agree; merge then unmerge restores the base; adapter files
//! carry PEFT keys and metadata and refuse another base, rank or
//! architecture with a clear error; adapter-only checkpoints hold only the
//! adapters and restore them exactly; only adapters train.

use std::collections::BTreeMap;

use cm_core::Conditioning;
use cm_nets::lora::{self, LoraConfig, META_LINEAGE, META_LORA, META_LORA_BASE};
use cm_nets::{DiTConfig, MlpConfig, Model, NetConfig, UNetConfig};
use tch::{Device, Kind, Tensor};

fn unet() -> NetConfig {
    NetConfig::Unet(UNetConfig {
        model_channels: 16,
        channel_mult: vec![1, 2],
        attn_resolutions: vec![14],
        num_classes: 3,
        dropout: 0.0,
        ..UNetConfig::default()
    })
}

fn dit() -> NetConfig {
    NetConfig::Dit(DiTConfig {
        depth: 2,
        hidden_size: 64,
        ..DiTConfig::default()
    })
}

fn mlp() -> NetConfig {
    NetConfig::Mlp(MlpConfig::default())
}

fn build(config: &NetConfig, seed: i64) -> Model {
    tch::manual_seed(seed);
    Model::new(config.clone(), Device::Cpu).unwrap()
}

/// Every variable random (zero-initialised layers would hide mistakes).
fn randomize(model: &Model, seed: i64) {
    tch::manual_seed(seed);
    let mut vars: Vec<(String, Tensor)> = model.var_store().variables().into_iter().collect();
    vars.sort_by(|a, b| a.0.cmp(&b.0));
    tch::no_grad(|| {
        for (name, mut v) in vars {
            if !name.ends_with("freqs") && !lora::is_adapter_variable(&name) {
                let r = v.randn_like() * 0.2;
                v.copy_(&r);
            }
        }
    });
}

/// Random adapter weights (`B` starts at zero).
fn randomize_adapter(model: &Model, name: &str, seed: i64) {
    tch::manual_seed(seed);
    let mut vars: Vec<(String, Tensor)> = model.var_store().variables().into_iter().collect();
    vars.sort_by(|a, b| a.0.cmp(&b.0));
    tch::no_grad(|| {
        for (n, mut v) in vars {
            if lora::is_adapter_variable(&n) && n.contains(&format!(".{name}.")) {
                let r = v.randn_like() * 0.3;
                v.copy_(&r);
            }
        }
    });
}

fn output(model: &Model, config: &NetConfig) -> Tensor {
    tch::manual_seed(7);
    let shape: Vec<i64> = std::iter::once(3)
        .chain(config.sample_shape().iter().copied())
        .collect();
    let x = Tensor::randn(&shape, (Kind::Float, Device::Cpu));
    let c = Tensor::from_slice(&[0.3f32, -0.5, 1.1]);
    let labels = Tensor::from_slice(&[0i64, 2, 1]);
    let cond = if config.num_classes() > 0 {
        Conditioning::class(&labels)
    } else {
        Conditioning::none()
    };
    tch::no_grad(|| model.forward_t(&x, &c, cond, false))
}

fn max_diff(a: &Tensor, b: &Tensor) -> f64 {
    (a - b).abs().max().double_value(&[])
}

fn base_weights(model: &Model) -> BTreeMap<String, Tensor> {
    model
        .var_store()
        .variables()
        .into_iter()
        .filter(|(n, _)| !lora::is_adapter_variable(n))
        .map(|(n, t)| (n, t.copy()))
        .collect()
}

fn config(rank: usize, alpha: f64) -> LoraConfig {
    LoraConfig {
        rank,
        alpha,
        ..LoraConfig::default()
    }
}

#[test]
fn patterns_match_whole_paths() {
    assert!(lora::glob_match("*.conv0", "enc.14x14_down.conv0"));
    assert!(lora::glob_match("*.attn.qkv", "dec.7x7_in0.attn.qkv"));
    assert!(!lora::glob_match("*.conv0", "enc.14x14_down.conv0.extra"));
    assert!(!lora::glob_match("*.conv", "enc.14x14_down.conv0"));
    assert!(lora::glob_match("map_layer*", "map_layer0"));
    assert!(lora::glob_match("*", "anything.at.all"));
    assert!(!lora::glob_match("enc.*.skip", "dec.x.skip"));
    assert!(lora::glob_match("a*b*c", "axxbyyc"));
    assert!(!lora::glob_match("a*b*c", "axxbyy"));
}

#[test]
fn lcm_lora_targets_cover_the_layers_diffusers_trains() {
    let _rng = cm_runtime::lock_global_rng();
    let model = build(&unet(), 0);
    let targets = model.adapter_targets(&LoraConfig::default()).unwrap();
    for kind in ["attn.qkv", "attn.proj", "conv0", "conv1", "skip", "affine"] {
        assert!(
            targets.iter().any(|m| m.ends_with(kind)),
            "{kind} missing from {targets:?}"
        );
    }
    // The down and up blocks' conv0 resample.
    assert!(targets.iter().any(|m| m.ends_with("_down.conv0")));
    assert!(targets.iter().any(|m| m.ends_with("_up.conv0")));
    // Input and output convolutions and the noise MLP are not LCM-LoRA
    // targets (diffusers trains neither conv_in, conv_out nor
    // time_embedding).
    assert!(!targets
        .iter()
        .any(|m| m.contains("conv_in") || m.contains("out_conv") || m.starts_with("map_layer")));
    let dit_model = build(&dit(), 0);
    let dit_targets = dit_model.adapter_targets(&LoraConfig::default()).unwrap();
    assert!(dit_targets.iter().any(|m| m.ends_with("attn.qkv")));
    assert!(dit_targets.iter().any(|m| m.ends_with("mlp.fc2")));
}

#[test]
fn a_fresh_adapter_leaves_every_network_unchanged() {
    let _rng = cm_runtime::lock_global_rng();
    // Both passes through libtorch's operations: the U-Net's small-batch
    // path runs only adapter-free networks, and its rounding differs from
    // libtorch's, while a zero adapter adds exactly zero.
    cm_nets::unet::small_batch::set_enabled(false);
    for net in [unet(), dit(), mlp()] {
        let mut model = build(&net, 1);
        randomize(&model, 2);
        let before = output(&model, &net);
        let layers = model.add_adapter("fresh", &config(4, 8.0), 1.0).unwrap();
        assert!(layers > 0);
        let after = output(&model, &net);
        assert_eq!(max_diff(&before, &after), 0.0, "{net:?}");
        // And the adapter is live: random B changes the output.
        randomize_adapter(&model, "fresh", 3);
        assert!(max_diff(&before, &output(&model, &net)) > 1e-3);
    }
}

#[test]
fn merged_and_on_the_fly_agree_and_unmerge_restores_the_base() {
    let _rng = cm_runtime::lock_global_rng();
    for net in [unet(), dit(), mlp()] {
        let mut model = build(&net, 4);
        randomize(&model, 5);
        let base = base_weights(&model);
        let base_out = output(&model, &net);
        model.add_adapter("style", &config(4, 4.0), 0.7).unwrap();
        let narrow = LoraConfig {
            rank: 2,
            alpha: 6.0,
            targets: vec!["*.conv1".into(), "*.attn.proj".into(), "*.fc2".into()],
            dropout: 0.0,
        };
        model.add_adapter("fast", &narrow, 1.3).unwrap();
        randomize_adapter(&model, "style", 6);
        randomize_adapter(&model, "fast", 7);
        let on_the_fly = output(&model, &net);
        assert!(max_diff(&on_the_fly, &base_out) > 1e-3);

        model.merge_adapter("style").unwrap();
        model.merge_adapter("fast").unwrap();
        assert!(model.adapters().values().all(|a| a.merged));
        let merged = output(&model, &net);
        let scale = on_the_fly.abs().max().double_value(&[]).max(1.0);
        assert!(
            max_diff(&merged, &on_the_fly) < 1e-4 * scale,
            "{net:?}: merged vs on the fly {}",
            max_diff(&merged, &on_the_fly)
        );

        model.unmerge_adapter("fast").unwrap();
        model.unmerge_adapter("style").unwrap();
        model.set_adapter_weight("style", 0.0).unwrap();
        model.set_adapter_weight("fast", 0.0).unwrap();
        for (name, w) in base_weights(&model) {
            let d = max_diff(&w, &base[&name]);
            assert!(d < 1e-5, "{name} differs by {d} after unmerge");
        }
        assert!(max_diff(&output(&model, &net), &base_out) < 1e-4);
        // Errors name the state.
        let err = model.unmerge_adapter("fast").unwrap_err().to_string();
        assert!(err.contains("fast") && err.contains("not merged"), "{err}");
    }
}

/// The on-the-fly adapter of one linear layer against a copy of the
/// network whose weight is `W + lambda (alpha/r) B A`, written out by hand.
#[test]
fn a_linear_adapter_adds_lambda_alpha_over_r_b_a() {
    let _rng = cm_runtime::lock_global_rng();
    let net = mlp();
    let mut model = build(&net, 8);
    randomize(&model, 9);
    let base_out = output(&model, &net);
    let only_output = LoraConfig {
        rank: 3,
        alpha: 6.0,
        targets: vec!["output".into()],
        dropout: 0.0,
    };
    assert_eq!(model.add_adapter("x", &only_output, 0.5).unwrap(), 1);
    randomize_adapter(&model, "x", 10);
    let vars = model.var_store().variables();
    let (a, b) = (
        &vars["output.lora_A.x.weight"],
        &vars["output.lora_B.x.weight"],
    );
    assert_eq!((a.size(), b.size()), (vec![3, 128], vec![2, 3]));
    let with = output(&model, &net);

    let by_hand = build(&net, 8);
    randomize(&by_hand, 9);
    tch::no_grad(|| {
        let mut w = by_hand.var_store().variables()["output.weight"].shallow_clone();
        let _ = w.g_add_(&(b.matmul(a) * (0.5 * 6.0 / 3.0)));
    });
    let expected = output(&by_hand, &net);
    assert!(
        max_diff(&with, &expected) < 1e-5,
        "{}",
        max_diff(&with, &expected)
    );
    assert!(
        max_diff(&with, &base_out) > 1e-3,
        "the adapter changed nothing"
    );
}

#[test]
fn adapter_files_hold_only_adapters_under_peft_keys_with_metadata() {
    let _rng = cm_runtime::lock_global_rng();
    let net = unet();
    let dir = tempfile::tempdir().unwrap();
    let mut model = build(&net, 11);
    randomize(&model, 12);
    model.add_adapter("lcm", &config(4, 4.0), 1.0).unwrap();
    randomize_adapter(&model, "lcm", 13);
    let path = dir.path().join("lcm.safetensors");
    let written = model.save_adapter("lcm", &path).unwrap();
    let info = &model.adapters()["lcm"];
    assert_eq!(written, 2 * info.modules.len());

    let shapes = cm_nets::checkpoint::read_shapes(&path).unwrap();
    assert_eq!(shapes.len(), written);
    for key in shapes.keys() {
        assert!(
            key.ends_with(".lora_A.weight") || key.ends_with(".lora_B.weight"),
            "{key}"
        );
        let module = key.rsplitn(3, '.').nth(2).unwrap();
        assert!(info.modules.iter().any(|m| m == module), "{key}");
    }
    let meta = cm_nets::read_metadata(&path).unwrap();
    let stored: LoraConfig = serde_json::from_str(&meta[META_LORA]).unwrap();
    assert_eq!(stored, info.config);
    assert_eq!(meta[META_LORA_BASE], model.base_hash());
    assert_eq!(meta["format"], "pt");

    // Loaded into another copy of the same base, outputs agree.
    let mut other = build(&net, 11);
    randomize(&other, 12);
    let layers = other.load_adapter(&path, "lcm", 1.0).unwrap();
    assert_eq!(layers, info.modules.len());
    assert!(max_diff(&output(&model, &net), &output(&other, &net)) < 1e-6);
}

#[test]
fn mismatched_adapter_files_are_clear_errors() {
    let _rng = cm_runtime::lock_global_rng();
    let net = unet();
    let dir = tempfile::tempdir().unwrap();
    let mut model = build(&net, 14);
    randomize(&model, 15);
    model.add_adapter("a", &config(4, 4.0), 1.0).unwrap();
    let path = dir.path().join("a.safetensors");
    model.save_adapter("a", &path).unwrap();

    // Another base.
    let mut stranger = build(&net, 16);
    let err = stranger
        .load_adapter(&path, "a", 1.0)
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("trained on base weights") && err.contains(&model.base_hash()),
        "{err}"
    );
    assert!(stranger.adapters().is_empty(), "nothing attached on error");

    // A model that derives from the base (merged style) accepts it.
    let mut derived = build(&net, 16);
    derived.set_metadata(META_LINEAGE, model.base_hash());
    derived.load_adapter(&path, "a", 1.0).unwrap();

    // So does the base with another adapter merged into its weights.
    let mut merged = build(&net, 14);
    randomize(&merged, 15);
    merged.add_adapter("style", &config(2, 2.0), 1.0).unwrap();
    randomize_adapter(&merged, "style", 20);
    merged.merge_adapter("style").unwrap();
    assert_ne!(merged.base_hash(), model.base_hash());
    merged.load_adapter(&path, "a", 1.0).unwrap();

    // Rank in the metadata that does not match the tensors.
    let twin = || {
        let m = build(&net, 14);
        randomize(&m, 15);
        m
    };
    let rewrite = |meta_rank: usize, alpha: f64, file: &str| {
        let tensors = Tensor::read_safetensors(&path).unwrap();
        let mut meta: BTreeMap<String, String> = cm_nets::read_metadata(&path).unwrap();
        let mut cfg: LoraConfig = serde_json::from_str(&meta[META_LORA]).unwrap();
        cfg.rank = meta_rank;
        cfg.alpha = alpha;
        meta.insert(META_LORA.into(), serde_json::to_string(&cfg).unwrap());
        let out = dir.path().join(file);
        cm_nets::write_safetensors_with_metadata(&tensors, &meta, &out).unwrap();
        out
    };
    let wrong_rank = rewrite(8, 4.0, "rank.safetensors");
    let err = twin()
        .load_adapter(&wrong_rank, "a", 1.0)
        .unwrap_err()
        .to_string();
    assert!(err.contains("rank 8") && err.contains("lora_A"), "{err}");
    let bad_alpha = rewrite(4, -1.0, "alpha.safetensors");
    let err = twin()
        .load_adapter(&bad_alpha, "a", 1.0)
        .unwrap_err()
        .to_string();
    assert!(err.contains("alpha"), "{err}");

    // A file without adapter metadata (a plain checkpoint).
    let plain = dir.path().join("plain.safetensors");
    twin().save(&plain).unwrap();
    let err = twin()
        .load_adapter(&plain, "a", 1.0)
        .unwrap_err()
        .to_string();
    assert!(err.contains("not a cm-rs adapter file"), "{err}");

    // Targets that match nothing, duplicate names, bad weights.
    let none = LoraConfig {
        targets: vec!["nowhere.*".into()],
        ..LoraConfig::default()
    };
    let mut m = twin();
    let err = m.add_adapter("n", &none, 1.0).unwrap_err().to_string();
    assert!(
        err.contains("no layer matches") && err.contains("conv"),
        "{err}"
    );
    m.add_adapter("n", &config(2, 2.0), 1.0).unwrap();
    let err = m
        .add_adapter("n", &config(2, 2.0), 1.0)
        .unwrap_err()
        .to_string();
    assert!(err.contains("already attached"), "{err}");
    let err = m.set_adapter_weight("n", f64::NAN).unwrap_err().to_string();
    assert!(err.contains("weight"), "{err}");
    let err = m
        .add_adapter("bad.name", &config(2, 2.0), 1.0)
        .unwrap_err()
        .to_string();
    assert!(err.contains("adapter name"), "{err}");
    let err = m
        .add_adapter("r0", &config(0, 2.0), 1.0)
        .unwrap_err()
        .to_string();
    assert!(err.contains("lora.rank"), "{err}");
}

#[test]
fn adapter_only_checkpoints_hold_and_restore_only_adapters_and_only_adapters_train() {
    let _rng = cm_runtime::lock_global_rng();
    let net = unet();
    let dir = tempfile::tempdir().unwrap();
    let mut model = build(&net, 17);
    randomize(&model, 18);
    let base_params = model.num_params();
    model.add_adapter("lcm", &config(4, 4.0), 1.0).unwrap();
    model.set_adapters_only(true).unwrap();
    let trainable = model.trainable_variables();
    assert!(!trainable.is_empty());
    assert!(trainable.iter().all(|(n, _)| lora::is_adapter_variable(n)));
    let adapter_params: i64 = trainable.iter().map(|(_, t)| t.numel() as i64).sum();
    // r (fan_in + out) per adapted layer, fan_in = in k k.
    let vars = model.var_store().variables();
    let closed_form: i64 = model.adapters()["lcm"]
        .modules
        .iter()
        .map(|m| {
            let w = vars[&format!("{m}.weight")].size();
            4 * (w[1..].iter().product::<i64>() + w[0])
        })
        .sum();
    assert_eq!(adapter_params, closed_form);
    assert!(
        adapter_params < base_params / 2,
        "{adapter_params} of {base_params}"
    );

    // Gradients reach the adapters only (B gets one even at zero).
    let x = Tensor::randn([2, 1, 28, 28], (Kind::Float, Device::Cpu));
    let c = Tensor::zeros([2], (Kind::Float, Device::Cpu));
    let labels = Tensor::from_slice(&[0i64, 1]);
    model
        .forward_t(&x, &c, Conditioning::class(&labels), true)
        .square()
        .sum(Kind::Float)
        .backward();
    for (name, var) in model.var_store().variables() {
        assert_eq!(
            var.grad().defined(),
            lora::is_adapter_variable(&name),
            "{name}"
        );
    }

    randomize_adapter(&model, "lcm", 19);
    let path = dir.path().join("online.safetensors");
    model.save(&path).unwrap();
    let shapes = cm_nets::checkpoint::read_shapes(&path).unwrap();
    assert!(shapes.keys().all(|k| lora::is_adapter_variable(k)));
    assert_eq!(shapes.len(), trainable.len());

    // A model built like it restores the adapters bit for bit.
    let mut copy = model.new_like().unwrap();
    assert!(copy.adapters_only());
    let base_only: Vec<(String, Tensor)> = base_weights(&model).into_iter().collect();
    tch::no_grad(|| {
        let vars = copy.var_store().variables();
        for (n, t) in &base_only {
            vars[n].shallow_clone().copy_(t);
        }
    });
    copy.load_weights(&path).unwrap();
    assert_eq!(max_diff(&output(&model, &net), &output(&copy, &net)), 0.0);

    // The file is not a model on its own, and does not resume onto
    // another base.
    let err = Model::from_checkpoint(&path, Device::Cpu)
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("adapters only") && err.contains("model.toml"),
        "{err}"
    );
    let mut other = build(&net, 99);
    other.add_adapter("lcm", &config(4, 4.0), 1.0).unwrap();
    other.set_adapters_only(true).unwrap();
    let err = other.load_weights(&path).unwrap_err().to_string();
    assert!(err.contains("base changed"), "{err}");
}

/// A failed load attaches nothing; a half-precision adapter file (PEFT's
/// usual) loads.
#[test]
fn a_failed_load_attaches_nothing_and_half_precision_files_load() {
    let _rng = cm_runtime::lock_global_rng();
    let net = mlp();
    let dir = tempfile::tempdir().unwrap();
    let mut model = build(&net, 21);
    randomize(&model, 22);
    model.add_adapter("a", &config(4, 4.0), 1.0).unwrap();
    randomize_adapter(&model, "a", 23);
    let path = dir.path().join("a.safetensors");
    model.save_adapter("a", &path).unwrap();
    let twin = || {
        let m = build(&net, 21);
        randomize(&m, 22);
        m
    };
    // Half precision, same keys and metadata.
    let meta = cm_nets::read_metadata(&path).unwrap();
    let half: Vec<(String, Tensor)> = Tensor::read_safetensors(&path)
        .unwrap()
        .into_iter()
        .map(|(n, t)| (n, t.to_kind(Kind::Half)))
        .collect();
    let half_path = dir.path().join("half.safetensors");
    cm_nets::write_safetensors_with_metadata(&half, &meta, &half_path).unwrap();
    let mut m = twin();
    m.load_adapter(&half_path, "a", 1.0).unwrap();
    assert!(max_diff(&output(&m, &net), &output(&model, &net)) < 1e-2);

    // A file whose tensors are not numbers of a float kind fails after the
    // checks: nothing stays attached.
    let ints: Vec<(String, Tensor)> = Tensor::read_safetensors(&path)
        .unwrap()
        .into_iter()
        .map(|(n, t)| (n, t.to_kind(Kind::Int64)))
        .collect();
    let int_path = dir.path().join("int.safetensors");
    cm_nets::write_safetensors_with_metadata(&ints, &meta, &int_path).unwrap();
    let mut m = twin();
    let before = output(&m, &net);
    assert!(m.load_adapter(&int_path, "a", 1.0).is_err());
    assert!(m.adapters().is_empty());
    assert_eq!(max_diff(&before, &output(&m, &net)), 0.0);
    let err = m.load_adapter(&path, "a", 1.0).unwrap_err().to_string();
    assert!(err.contains("choose another"), "{err}");
    m.load_adapter(&path, "b", 1.0).unwrap();
}

/// A class-embedding adapter (the conditioning path, as LCM-LoRA adapts
/// SD's cross-attention keys and values): each label's row moves by
/// `lambda (alpha/r) (B A)[:, y]`, against a copy whose table is edited by
/// hand; merged and on the fly agree, unmerge restores it, the file
/// round-trips, and re-weighting reaches the U-Net's embedding cache. The
/// same for every network with a class table: the U-Net's and the toy MLP's
/// `map_label`, the DiT's `y_embedder`.
#[test]
fn a_class_embedding_adapter_moves_each_label_row_by_its_column_of_b_a() {
    let _rng = cm_runtime::lock_global_rng();
    let dit = NetConfig::Dit(DiTConfig {
        depth: 2,
        hidden_size: 64,
        num_classes: 3,
        ..DiTConfig::default()
    });
    let mlp = NetConfig::Mlp(MlpConfig {
        num_classes: 3,
        ..MlpConfig::default()
    });
    for (net, table) in [
        (unet(), "map_label"),
        (dit, "y_embedder"),
        (mlp, "map_label"),
    ] {
        class_embedding_adapter_case(net, table);
    }
}

fn class_embedding_adapter_case(net: NetConfig, table: &str) {
    let mut model = build(&net, 11);
    randomize(&model, 12);
    let base_out = output(&model, &net);
    let labels_only = LoraConfig {
        rank: 2,
        alpha: 4.0,
        targets: vec![table.into()],
        dropout: 0.0,
    };
    // Only its exact path picks a class table: a wildcard means layers.
    let everything = LoraConfig {
        targets: vec!["*".into()],
        ..labels_only.clone()
    };
    assert!(!model
        .adapter_targets(&everything)
        .unwrap()
        .contains(&table.to_string()));
    assert_eq!(model.add_adapter("cls", &labels_only, 0.5).unwrap(), 1);
    randomize_adapter(&model, "cls", 13);
    let vars = model.var_store().variables();
    let (a, b) = (
        &vars[&format!("{table}.lora_A.cls.weight")],
        &vars[&format!("{table}.lora_B.cls.weight")],
    );
    // PEFT's embedding shapes: A [r, classes + 1], B [channels, r].
    let channels = vars[&format!("{table}.weight")].size()[1];
    assert_eq!(
        (a.size(), b.size()),
        (vec![2, 4], vec![channels, 2]),
        "{table}"
    );
    let with = output(&model, &net);
    assert!(
        max_diff(&with, &base_out) > 1e-3,
        "{table}: the adapter changed nothing"
    );

    let by_hand = build(&net, 11);
    randomize(&by_hand, 12);
    tch::no_grad(|| {
        let mut weights =
            by_hand.var_store().variables()[&format!("{table}.weight")].shallow_clone();
        // lambda (alpha / r): weight 0.5, alpha 4, rank 2.
        let (lambda, alpha, rank) = (0.5, labels_only.alpha, labels_only.rank as f64);
        let _ = weights.g_add_(&(b.matmul(a).tr() * (lambda * alpha / rank)));
    });
    let expected = output(&by_hand, &net);
    assert!(
        max_diff(&with, &expected) < 1e-5,
        "{table}: {}",
        max_diff(&with, &expected)
    );

    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("cls.safetensors");
    assert_eq!(model.save_adapter("cls", &file).unwrap(), 2);
    let mut fresh = build(&net, 11);
    randomize(&fresh, 12);
    fresh.load_adapter(&file, "cls", 0.5).unwrap();
    assert!(max_diff(&output(&fresh, &net), &with) < 1e-6);

    // Merging adds B A to the float32 table and unmerging subtracts it, so
    // the table comes back within its rounding, which the network scales
    // with its outputs: the bound is relative to them.
    let tol = 1e-5 * (1.0 + base_out.abs().max().double_value(&[]));
    assert!(
        max_diff(&with, &base_out) > 100.0 * tol,
        "{table}: the adapter's effect is within the bound"
    );
    model.merge_adapter("cls").unwrap();
    let d = max_diff(&output(&model, &net), &with);
    assert!(d < tol, "{table}: merged {d} (bound {tol})");
    model.unmerge_adapter("cls").unwrap();
    model.set_adapter_weight("cls", 0.0).unwrap();
    let d = max_diff(&output(&model, &net), &base_out);
    assert!(d < tol, "{table}: unmerged at weight 0: {d} (bound {tol})");
    model.set_adapter_weight("cls", 0.5).unwrap();
    let d = max_diff(&output(&model, &net), &with);
    assert!(d < tol, "{table}: re-weighted {d} (bound {tol})");
}
