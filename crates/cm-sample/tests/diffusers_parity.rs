//! Parity with diffusers (`UNet2DModel`, `CMStochasticIterativeScheduler`,
//! `ConsistencyModelPipeline`) against the committed fixtures of
//! `tests/fixtures/diffusers/make_fixtures.py` (run by hand with torch and
//! diffusers from PyPI): network outputs, scheduler sigmas and timesteps,
//! and 1-, 2- and 3-step sampling trajectories.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};

use cm_core::{Conditioning, Validate};
use cm_nets::{DiffusersUNetConfig, Model, NetConfig};
use cm_sample::{
    consistency_sample_with, CmSchedulerConfig, CmStochasticIterativeScheduler, DiffusersFolder,
    ModelCard, NoiseSource, TauSource,
};
use tch::{Device, Kind, Tensor};

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/diffusers")
}

fn io(name: &str) -> HashMap<String, Tensor> {
    Tensor::read_safetensors(fixtures().join(name).join("io.safetensors"))
        .unwrap()
        .into_iter()
        .collect()
}

/// `max |a - b| / max |b|`.
fn rel_err(a: &Tensor, b: &Tensor) -> f64 {
    let a = a.to_kind(Kind::Double);
    let b = b.to_kind(Kind::Double);
    (&a - &b).abs().max().double_value(&[]) / b.abs().max().double_value(&[])
}

fn max_abs(a: &Tensor, b: &Tensor) -> f64 {
    (a.to_kind(Kind::Double) - b.to_kind(Kind::Double))
        .abs()
        .max()
        .double_value(&[])
}

#[test]
fn network_outputs_match_diffusers() {
    for name in [
        "imagenet-like",
        "lsun-like",
        "conv-variants",
        "fourier-variants",
    ] {
        let weights = fixtures()
            .join(name)
            .join("unet/diffusion_pytorch_model.safetensors");
        let model = Model::from_diffusers(&weights, Device::Cpu).unwrap();
        let io = io(name);
        let class = io.get("class");
        let cond = Conditioning::from_class(class);
        model.check_input(&io["x"], cond).unwrap();
        let out = tch::no_grad(|| model.forward_t(&io["x"], &io["t"], cond, false));
        let err = rel_err(&out, &io["out"]);
        println!("{name}: network output relative error {err:.1e}");
        assert!(err < 1e-5, "{name}: relative error {err:e}");
        // Loaded through the generic checkpoint reader too (config.json
        // beside the weights, no sidecar).
        let again = Model::from_checkpoint(&weights, Device::Cpu).unwrap();
        assert_eq!(again.config(), model.config());
    }
}

/// The exact published configs of openai's ImageNet-64 CD model (random
/// weights: 296 M parameters, 1.2 GB, allocated once here): every parameter
/// has diffusers' name and shape, the folder loads (from f16 weights) and
/// samples one step.
#[test]
fn the_published_imagenet64_cd_config_loads_and_samples() {
    let text = std::fs::read_to_string(fixtures().join("imagenet64-cd-config.json")).unwrap();
    let config = DiffusersUNetConfig::from_json(&text, "imagenet64-cd-config.json").unwrap();
    let params: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(fixtures().join("imagenet64-cd-params.json")).unwrap(),
    )
    .unwrap();
    // diffusers' own count, against the plan's.
    assert_eq!(
        config.num_params().unwrap(),
        params["num_params"].as_f64().unwrap()
    );
    let want: BTreeMap<String, Vec<i64>> = params["tensors"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| {
            (
                e[0].as_str().unwrap().to_string(),
                e[1].as_array()
                    .unwrap()
                    .iter()
                    .map(|d| d.as_i64().unwrap())
                    .collect(),
            )
        })
        .collect();
    let dir = tempfile::tempdir().unwrap();
    let unet = dir.path().join("unet");
    std::fs::create_dir_all(&unet).unwrap();
    std::fs::create_dir_all(dir.path().join("scheduler")).unwrap();
    std::fs::write(dir.path().join("model_index.json"), "{}").unwrap();
    std::fs::copy(
        fixtures().join("imagenet64-cd-config.json"),
        unet.join("config.json"),
    )
    .unwrap();
    std::fs::copy(
        fixtures().join("imagenet64-cd-scheduler_config.json"),
        dir.path().join("scheduler/scheduler_config.json"),
    )
    .unwrap();
    {
        let model = Model::new(NetConfig::DiffusersUnet2d(config.clone()), Device::Cpu).unwrap();
        let got: BTreeMap<String, Vec<i64>> = model
            .var_store()
            .variables()
            .into_iter()
            .map(|(n, t)| (n, t.size()))
            .collect();
        assert_eq!(got, want);
        println!(
            "imagenet64 CD: {} parameters, {:.1} GFLOP per image",
            model.num_params(),
            model.flops_per_sample() as f64 / 1e9
        );
        // Written in f16 as the published fp16 variants are (half the disk).
        let halves: Vec<(String, Tensor)> = model
            .var_store()
            .variables()
            .into_iter()
            .map(|(n, t)| (n, t.to_kind(Kind::Half).contiguous()))
            .collect();
        Tensor::write_safetensors(&halves, unet.join("diffusion_pytorch_model.safetensors"))
            .unwrap();
    }
    let card = DiffusersFolder::open(dir.path())
        .unwrap()
        .card(&[("2".to_string(), vec![22, 0])].into())
        .unwrap();
    let model = card.load_model(Device::Cpu).unwrap();
    let z = Tensor::randn([1, 3, 64, 64], (Kind::Float, Device::Cpu));
    let class = Tensor::from_slice(&[3i64]);
    let started = std::time::Instant::now();
    let sampled = card
        .sample(&model, &z, 1, Conditioning::from_class(Some(&class)))
        .unwrap();
    println!(
        "imagenet64 CD, 1 step at batch 1: {:.2} s",
        started.elapsed().as_secs_f64()
    );
    assert_eq!(sampled.x.size(), [1, 3, 64, 64]);
    assert_eq!(sampled.nfe, 1);
    let x = &sampled.x;
    assert!(bool::try_from(x.isfinite().all()).unwrap());
    // clip_denoised: the output lies in [-1, 1].
    assert!(x.abs().max().double_value(&[]) <= 1.0);
}

fn scheduler_config(case: &serde_json::Value) -> CmSchedulerConfig {
    let mut config = CmSchedulerConfig::default();
    let c = &case["config"];
    if let Some(n) = c.get("num_train_timesteps") {
        config.num_train_timesteps = n.as_u64().unwrap() as usize;
    }
    for (key, field) in [
        ("sigma_min", &mut config.sigma_min),
        ("sigma_max", &mut config.sigma_max),
        ("rho", &mut config.rho),
    ] {
        if let Some(v) = c.get(key) {
            *field = v.as_f64().unwrap();
        }
    }
    config
}

#[test]
fn scheduler_sigmas_and_timesteps_are_exact() {
    let table: Vec<serde_json::Value> =
        serde_json::from_str(&std::fs::read_to_string(fixtures().join("scheduler.json")).unwrap())
            .unwrap();
    assert!(table.len() >= 20);
    let floats = |v: &serde_json::Value| -> Vec<f64> {
        v.as_array()
            .unwrap()
            .iter()
            .map(|x| x.as_f64().unwrap())
            .collect()
    };
    // f64 values agree to within 2 units in the last place: numpy computes
    // `**` and `log` of arrays with its own SIMD routines (on AVX-512
    // machines), Rust with libm; each is within an ulp of the true value.
    // The f32 sampling sigmas, what sampling uses, agree exactly.
    let mut worst = 0u64;
    let mut close = |got: &[f64], want: &[f64], what: &str| {
        assert_eq!(got.len(), want.len(), "{what}");
        for (g, w) in got.iter().zip(want) {
            let ulps = (g.to_bits() as i64 - w.to_bits() as i64).unsigned_abs();
            assert!(ulps <= 2 && g.signum() == w.signum(), "{what}: {g} vs {w}");
            worst = worst.max(ulps);
        }
    };
    for case in &table {
        let config = scheduler_config(case);
        let (sigmas, timesteps) = CmStochasticIterativeScheduler::training(&config).unwrap();
        close(
            &sigmas,
            &floats(&case["train"]["sigmas"]),
            "training sigmas",
        );
        close(
            &timesteps,
            &floats(&case["train"]["timesteps"]),
            "training timesteps",
        );
        let set = &case["set"];
        let s = match set.get("timesteps") {
            Some(ts) => {
                let ts: Vec<usize> = ts
                    .as_array()
                    .unwrap()
                    .iter()
                    .map(|t| t.as_u64().unwrap() as usize)
                    .collect();
                CmStochasticIterativeScheduler::with_timesteps(config.clone(), &ts).unwrap()
            }
            None => CmStochasticIterativeScheduler::with_steps(
                config.clone(),
                set["num_inference_steps"].as_u64().unwrap() as usize,
            )
            .unwrap(),
        };
        let sigmas: Vec<f64> = s.sigmas.iter().map(|&x| x as f64).collect();
        assert_eq!(sigmas, floats(&case["sigmas"]), "{case}");
        close(&s.timesteps, &floats(&case["timesteps"]), "timesteps");
    }
    println!("largest difference from numpy: {worst} ulp");
}

#[test]
fn scheduler_refuses_what_diffusers_refuses() {
    let c = CmSchedulerConfig::default();
    for bad in [&[0usize, 22][..], &[22, 22, 0], &[40, 0], &[]] {
        assert!(
            CmStochasticIterativeScheduler::with_timesteps(c.clone(), bad).is_err(),
            "{bad:?}"
        );
    }
    assert!(CmStochasticIterativeScheduler::with_steps(c.clone(), 41).is_err());
    assert!(CmStochasticIterativeScheduler::with_steps(c.clone(), 0).is_err());
    // Sampling starts at sigma_max: the last timestep must be 0.
    let err = c.taus_for(&[30, 10]).unwrap_err().to_string();
    assert!(err.contains("ending with 0"), "{err}");
    assert_eq!(c.taus_for(&[0]).unwrap(), Vec::<f64>::new());
    let bad = CmSchedulerConfig {
        s_noise: 1.01,
        ..c.clone()
    };
    assert!(bad.validate().unwrap_err().to_string().contains("s_noise"));
    let err = CmSchedulerConfig::from_json(r#"{"num_train_timesteps": 40, "karras": 1}"#, "s.json")
        .unwrap_err()
        .to_string();
    assert!(err.contains("karras"), "{err}");
    let err = CmSchedulerConfig::from_json(r#"{"_class_name": "DDPMScheduler"}"#, "s.json")
        .unwrap_err()
        .to_string();
    assert!(err.contains("DDPMScheduler"), "{err}");
}

/// Replays recorded noise draws in order.
struct Replay(Vec<Tensor>);

impl NoiseSource for Replay {
    fn standard_normal(&mut self, like: &Tensor) -> Tensor {
        let next = self.0.remove(0);
        assert_eq!(next.size(), like.size());
        next
    }
}

#[test]
fn sampling_trajectories_match_the_pipeline() {
    for (name, cases) in [
        (
            "imagenet-like",
            vec![(1, None), (2, Some(vec![22, 0])), (3, None)],
        ),
        ("lsun-like", vec![(1, None), (2, Some(vec![62, 0]))]),
    ] {
        let folder = DiffusersFolder::open(fixtures().join(name)).unwrap();
        let io = io(name);
        let explicit: BTreeMap<String, Vec<usize>> = cases
            .iter()
            .filter_map(|(k, ts)| ts.clone().map(|ts| (k.to_string(), ts)))
            .collect();
        let card = folder.card(&explicit).unwrap();
        let model = card.load_model(Device::Cpu).unwrap();
        let f = card.denoiser(&model);
        for (k, ts) in &cases {
            let (taus, source) = card.taus_or_karras(*k).unwrap();
            let want_source = if ts.is_some() || *k == 1 {
                TauSource::Stored
            } else {
                TauSource::Scheduler
            };
            assert_eq!(source, want_source, "{name} {k}");
            let z = &io[&format!("z.{k}")];
            let noise: Vec<Tensor> = (0..k - 1)
                .map(|i| io[&format!("noise.{k}.{i}")].shallow_clone())
                .collect();
            let cond = Conditioning::from_class(io.get("class"));
            let sampled = consistency_sample_with(
                f.as_ref(),
                z,
                card.range(),
                &taus,
                cond,
                &mut Replay(noise),
            )
            .unwrap();
            assert_eq!(sampled.nfe, *k);
            let err = max_abs(&sampled.x, &io[&format!("final.{k}")]);
            println!("{name} {k}-step: max abs error {err:.1e}");
            assert!(err < 1e-4, "{name} {k}-step: max abs error {err:e}");
        }
    }
}

#[test]
fn a_diffusers_card_file_names_the_folder() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("model.toml");
    std::fs::write(
        &path,
        format!(
            "kind = \"diffusers\"\nfolder = {:?}\n\n[timesteps]\n2 = [22, 0]\n",
            fixtures().join("imagenet-like").display().to_string()
        ),
    )
    .unwrap();
    let card = ModelCard::load(&path).unwrap();
    let folder = DiffusersFolder::open(fixtures().join("imagenet-like")).unwrap();
    let direct = folder
        .card(&[("2".to_string(), vec![22, 0])].into())
        .unwrap();
    assert_eq!(card, direct);
    let ModelCard::Consistency {
        consistency,
        scheduler,
        ..
    } = &card
    else {
        panic!("a diffusers card samples as a consistency model")
    };
    assert_eq!(
        consistency.noise_conditioning,
        cm_core::NoiseConditioning::Adm
    );
    assert!(scheduler.as_ref().unwrap().clip_denoised);
    // sigma at index 22 of the 40-level grid, as diffusers computes it.
    let s = CmStochasticIterativeScheduler::with_timesteps(scheduler.clone().unwrap(), &[22, 0])
        .unwrap();
    assert_eq!(card.taus(2).unwrap(), vec![s.sigmas[1] as f64]);

    // A step count written "02" is step count 2.
    std::fs::write(
        &path,
        format!(
            "kind = \"diffusers\"\nfolder = {:?}\n\n[timesteps]\n02 = [22, 0]\n",
            fixtures().join("imagenet-like").display().to_string()
        ),
    )
    .unwrap();
    assert_eq!(ModelCard::load(&path).unwrap(), direct);

    // Bad card files and folders: errors that name the problem.
    let bad = |text: &str| {
        std::fs::write(&path, text).unwrap();
        ModelCard::load(&path).unwrap_err().to_string()
    };
    let err = bad("kind = \"diffusers\"\nfolder = \"nowhere\"\n");
    assert!(
        err.contains("nowhere") && err.contains("not a folder"),
        "{err}"
    );
    let err = bad(&format!(
        "kind = \"diffusers\"\nfolder = {:?}\nextra = 1\n",
        fixtures().display().to_string()
    ));
    assert!(err.contains("extra"), "{err}");
    let err = bad(&format!(
        "kind = \"diffusers\"\nfolder = {:?}\n",
        fixtures().join("conv-variants").display().to_string()
    ));
    assert!(err.contains("scheduler_config.json"), "{err}");
    let err = bad(&format!(
        "kind = \"diffusers\"\nfolder = {:?}\n[timesteps]\n2 = [0, 22]\n",
        fixtures().join("imagenet-like").display().to_string()
    ));
    assert!(err.contains("descending"), "{err}");
}

/// A copy of a fixture folder in a temporary folder, to damage.
fn copy_unet(name: &str) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    for file in ["config.json", "diffusion_pytorch_model.safetensors"] {
        std::fs::copy(
            fixtures().join(name).join("unet").join(file),
            dir.path().join(file),
        )
        .unwrap();
    }
    dir
}

#[test]
fn bad_configs_and_weights_are_named() {
    let dir = copy_unet("lsun-like");
    let config = dir.path().join("config.json");
    let weights = dir.path().join("diffusion_pytorch_model.safetensors");
    let original = std::fs::read_to_string(&config).unwrap();
    let edit = |from: &str, to: &str| {
        assert!(original.contains(from), "{from}");
        std::fs::write(&config, original.replace(from, to)).unwrap();
        Model::from_diffusers(&weights, Device::Cpu)
            .unwrap_err()
            .to_string()
    };
    for (from, to, named) in [
        (
            "\"act_fn\"",
            "\"mystery_option\": 1, \"act_fn\"",
            "mystery_option",
        ),
        (
            "\"ResnetDownsampleBlock2D\"",
            "\"SkipDownBlock2D\"",
            "down_block_types[0]",
        ),
        ("\"default\"", "\"spatial\"", "resnet_time_scale_shift"),
        ("\"positional\"", "\"learned\"", "time_embedding_type"),
        (
            "\"norm_num_groups\": 8",
            "\"norm_num_groups\": 7",
            "norm_num_groups",
        ),
        ("\"sample_size\": 16", "\"sample_size\": 18", "sample_size"),
        (
            "\"class_embed_type\": null",
            "\"class_embed_type\": \"identity\"",
            "class_embed_type",
        ),
        (
            "\"_class_name\": \"UNet2DModel\"",
            "\"_class_name\": \"UNet2DConditionModel\"",
            "_class_name",
        ),
        (
            "\"attention_head_dim\": 16",
            "\"attention_head_dim\": 64",
            "attention_head_dim",
        ),
        ("\"out_channels\": 3", "\"out_channels\": 1", "out_channels"),
        ("\"act_fn\": \"silu\"", "\"act_fn\": \"tanh\"", "act_fn"),
    ] {
        let err = edit(from, to);
        assert!(err.contains(named), "{from} -> {to}: {err}");
    }
    std::fs::write(&config, &original).unwrap();

    // Weights: a missing, an unexpected and a mis-shaped tensor, each named.
    let mut tensors = Tensor::read_safetensors(&weights).unwrap();
    tensors.retain(|(n, _)| n != "conv_out.bias");
    for (n, t) in tensors.iter_mut() {
        if n == "conv_in.bias" {
            *t = Tensor::zeros([5], (Kind::Float, Device::Cpu));
        }
    }
    tensors.push((
        "extra.weight".into(),
        Tensor::zeros([2], (Kind::Float, Device::Cpu)),
    ));
    Tensor::write_safetensors(&tensors, &weights).unwrap();
    let err = Model::from_diffusers(&weights, Device::Cpu)
        .unwrap_err()
        .to_string();
    for named in ["conv_out.bias", "extra.weight", "conv_in.bias"] {
        assert!(err.contains(named), "{named}: {err}");
    }
}

#[test]
fn half_precision_weights_load_as_f32() {
    let dir = copy_unet("lsun-like");
    let weights = dir.path().join("diffusion_pytorch_model.safetensors");
    let full = Model::from_diffusers(&weights, Device::Cpu).unwrap();
    let halves: Vec<(String, Tensor)> = Tensor::read_safetensors(&weights)
        .unwrap()
        .into_iter()
        .map(|(n, t)| (n, t.to_kind(Kind::Half)))
        .collect();
    Tensor::write_safetensors(&halves, &weights).unwrap();
    let half = Model::from_diffusers(&weights, Device::Cpu).unwrap();
    for ((n, a), (_, b)) in full
        .var_store()
        .variables()
        .into_iter()
        .collect::<BTreeMap<_, _>>()
        .into_iter()
        .zip(
            half.var_store()
                .variables()
                .into_iter()
                .collect::<BTreeMap<_, _>>(),
        )
    {
        assert_eq!(b.kind(), Kind::Float, "{n}");
        let want = a.to_kind(Kind::Half).to_kind(Kind::Float);
        assert_eq!(max_abs(&b, &want), 0.0, "{n}");
    }
}

#[test]
fn class_conditional_diffusers_models_need_labels() {
    let weights = fixtures().join("imagenet-like/unet/diffusion_pytorch_model.safetensors");
    let model = Model::from_diffusers(&weights, Device::Cpu).unwrap();
    assert!(matches!(model.config(), NetConfig::DiffusersUnet2d(_)));
    assert_eq!(model.null_class(), None);
    let x = Tensor::zeros([2, 3, 16, 16], (Kind::Float, Device::Cpu));
    let err = model.check_input(&x, Conditioning::none()).unwrap_err();
    assert!(err.to_string().contains("null class"), "{err}");
    let ten = Tensor::from_slice(&[0i64, 10]);
    let err = model
        .check_input(&x, Conditioning::from_class(Some(&ten)))
        .unwrap_err();
    assert!(err.to_string().contains("0..10"), "{err}");
    let ok = Tensor::from_slice(&[0i64, 9]);
    model
        .check_input(&x, Conditioning::from_class(Some(&ok)))
        .unwrap();
    // Training needs a null class (label dropout, unlabelled previews).
    let err = model.config().check_trainable().unwrap_err().to_string();
    assert!(err.contains("null class"), "{err}");
}
