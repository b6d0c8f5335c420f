//! Model cards: TOML round trip, relative weights, validation, and sampling
//! through a card equals calling the samplers directly.

use cm_core::Conditioning;
use cm_core::{ConsistencyConfig, EdmConfig, KarrasGrid, Solver};
use cm_nets::{Model, NetConfig, Preconditioned};
use cm_sample::{consistency_sample, edm_sample, EdmSampler, ModelCard, CARD_FILE};
use tch::{Device, Kind, Tensor};

fn consistency_card(timesteps: &[(&str, Vec<f64>)]) -> ModelCard {
    ModelCard::Consistency {
        weights: "ckpt/ema.safetensors".into(),
        consistency: ConsistencyConfig::default(),
        timesteps: timesteps
            .iter()
            .map(|(k, v)| (k.to_string(), v.clone()))
            .collect(),
        scheduler: None,
        autoencoder: None,
        guidance: None,
        lora: Vec::new(),
    }
}

#[test]
fn round_trip_resolves_relative_weights() {
    let _rng = cm_runtime::lock_global_rng();
    let dir = tempfile::tempdir().unwrap();
    let card = consistency_card(&[("2", vec![0.821]), ("3", vec![5.0, 0.5])]);
    let path = dir.path().join(CARD_FILE);
    card.save(&path).unwrap();
    let text = std::fs::read_to_string(&path).unwrap();
    assert!(text.contains("kind = \"consistency\""), "{text}");
    let loaded = ModelCard::load(&path).unwrap();
    assert_eq!(loaded.weights(), dir.path().join("ckpt/ema.safetensors"));
    assert_eq!(loaded.taus(1).unwrap(), Vec::<f64>::new());
    assert_eq!(loaded.taus(2).unwrap(), vec![0.821]);
    assert_eq!(loaded.taus(3).unwrap(), vec![5.0, 0.5]);
    let err = loaded.taus(4).unwrap_err().to_string();
    assert!(err.contains("1, 2, 3"), "{err}");
}

#[test]
fn invalid_cards_name_the_field() {
    let _rng = cm_runtime::lock_global_rng();
    let dir = tempfile::tempdir().unwrap();
    for (card, field) in [
        (consistency_card(&[("2", vec![0.5, 0.4])]), "timesteps.2"),
        (consistency_card(&[("two", vec![0.5])]), "timesteps.two"),
        (consistency_card(&[("3", vec![0.5, 4.0])]), "timesteps.3"),
        (consistency_card(&[("2", vec![100.0])]), "timesteps.2"),
    ] {
        let err = card
            .save(dir.path().join("bad.toml"))
            .unwrap_err()
            .to_string();
        assert!(err.contains(field), "{err}");
    }
    let path = dir.path().join("typo.toml");
    std::fs::write(
        &path,
        "kind = \"edm\"\nweights = \"w.safetensors\"\n[edm]\nsigma_dta = 0.5\n",
    )
    .unwrap();
    let err = ModelCard::load(&path).unwrap_err().to_string();
    assert!(
        err.contains("sigma_dta") && err.contains("typo.toml"),
        "{err}"
    );
    std::fs::write(&path, "kind = \"gan\"\nweights = \"w.safetensors\"\n").unwrap();
    let err = ModelCard::load(&path).unwrap_err().to_string();
    assert!(err.contains("gan"), "{err}");
}

#[test]
fn sampling_through_a_card_matches_the_samplers() {
    let _rng = cm_runtime::lock_global_rng();
    let dir = tempfile::tempdir().unwrap();
    tch::manual_seed(3);
    let model = Model::new(NetConfig::preset("toy-mlp").unwrap(), Device::Cpu).unwrap();
    let weights = dir.path().join("w.safetensors");
    model.save(&weights).unwrap();
    let latents = Tensor::randn([16, 2], (Kind::Float, Device::Cpu));

    let c = ConsistencyConfig {
        sigma_data: 1.0,
        ..Default::default()
    };
    let card = ModelCard::Consistency {
        weights: "w.safetensors".into(),
        consistency: c,
        timesteps: [("2".to_string(), vec![0.821])].into(),
        scheduler: None,
        autoencoder: None,
        guidance: None,
        lora: Vec::new(),
    };
    card.save(dir.path().join("cm.toml")).unwrap();
    let card = ModelCard::load(dir.path().join("cm.toml")).unwrap();
    let loaded = card.load_model(Device::Cpu).unwrap();
    let f = Preconditioned::eval(&model, c.parameterization());
    let direct = consistency_sample(&f, &latents, c.range(), &[], Conditioning::none()).unwrap();
    let via = card
        .sample(&loaded, &latents, 1, Conditioning::none())
        .unwrap();
    assert_eq!(via.nfe, 1);
    assert_eq!(
        f64::try_from((&via.x - &direct.x).abs().max()).unwrap(),
        0.0
    );
    tch::manual_seed(9);
    let two = card
        .sample(&loaded, &latents, 2, Conditioning::none())
        .unwrap();
    tch::manual_seed(9);
    let two_direct =
        consistency_sample(&f, &latents, c.range(), &[0.821], Conditioning::none()).unwrap();
    assert_eq!(two.nfe, 2);
    assert_eq!(
        f64::try_from((&two.x - &two_direct.x).abs().max()).unwrap(),
        0.0
    );

    let edm = EdmConfig::default();
    let card = ModelCard::Edm {
        weights: weights.clone(),
        edm,
        sampler: EdmSampler {
            solver: Solver::Heun,
            ..Default::default()
        },
        autoencoder: None,
        lora: Vec::new(),
    };
    let d = Preconditioned::eval(&model, edm.preconditioning());
    let via = card
        .sample(&loaded, &latents, 4, Conditioning::none())
        .unwrap();
    let direct = edm_sample(
        &d,
        &latents,
        &KarrasGrid::default(),
        &EdmSampler {
            steps: 4,
            ..Default::default()
        },
        Conditioning::none(),
    )
    .unwrap();
    assert_eq!(via.nfe, 7);
    assert_eq!(
        f64::try_from((&via.x - &direct.x).abs().max()).unwrap(),
        0.0
    );
    assert!(card.taus(2).is_err());
}

/// A weights file written with the card in its metadata samples with no
/// `model.toml` and no sidecar: `ModelCard::from_weights` plus the network
/// config from the same header.
#[test]
fn a_weights_file_alone_is_enough_to_sample() {
    let _rng = cm_runtime::lock_global_rng();
    use cm_sample::{ModelCard, Pipeline, META_CARD};
    let dir = tempfile::tempdir().unwrap();
    let card = ModelCard::Consistency {
        weights: "ignored.safetensors".into(),
        consistency: cm_core::ConsistencyConfig {
            sigma_max: 40.0,
            ..Default::default()
        },
        timesteps: [("2".to_string(), vec![0.5])].into(),
        scheduler: None,
        autoencoder: None,
        guidance: None,
        lora: Vec::new(),
    };
    let json = card.metadata_json();
    assert!(!json.contains("ignored"), "{json}");
    let mut model = cm_nets::Model::new(
        cm_nets::NetConfig::preset("toy-mlp").unwrap(),
        tch::Device::Cpu,
    )
    .unwrap();
    model.set_metadata(META_CARD, json);
    let path = dir.path().join("ema.safetensors");
    model.save(&path).unwrap();
    std::fs::remove_file(cm_nets::sidecar_path(&path)).unwrap();
    let read = ModelCard::from_weights(&path).unwrap();
    let mut want = card.clone();
    want.set_weights(path.clone());
    assert_eq!(read, want);
    let pipe = Pipeline::new(read.clone(), read.load_model(tch::Device::Cpu).unwrap());
    let twice = (
        pipe.generate(5, 2, 3).unwrap(),
        pipe.generate(5, 2, 3).unwrap(),
    );
    assert_eq!(twice.0.size(), [5, 2]);
    assert_eq!(twice.0, twice.1);
    // A file without the card says what to pass instead.
    let plain = dir.path().join("plain.safetensors");
    cm_nets::Model::new(
        cm_nets::NetConfig::preset("toy-mlp").unwrap(),
        tch::Device::Cpu,
    )
    .unwrap()
    .save(&plain)
    .unwrap();
    let err = ModelCard::from_weights(&plain).unwrap_err().to_string();
    assert!(
        err.contains(META_CARD) && err.contains("model.toml"),
        "{err}"
    );
}

/// `Pipeline::generate` for a step count the card stores no times for uses
/// the default Karras times, and gives exactly what the consistency sampler
/// gives on the same per-sample noise; 2-D points are not clamped to
/// [-1, 1] the way images are; guidance changes class-conditional samples
/// and is counted as two evaluations.
#[test]
fn pipeline_matches_the_sampler_with_karras_times_and_guidance() {
    let _rng = cm_runtime::lock_global_rng();
    use cm_sample::{consistency_sample_with, ClassChoice, GenerateConfig, Pipeline, SeededNoise};
    tch::manual_seed(5);
    let model = Model::new(NetConfig::preset("toy-mlp").unwrap(), Device::Cpu).unwrap();
    // Large weights: outputs well outside [-1, 1].
    tch::no_grad(|| {
        for mut v in model.var_store().trainable_variables() {
            let _ = v.g_add_(&(v.randn_like() * 0.5));
        }
    });
    let card = ModelCard::Consistency {
        weights: "unused.safetensors".into(),
        consistency: ConsistencyConfig::default(),
        timesteps: Default::default(),
        scheduler: None,
        autoencoder: None,
        guidance: None,
        lora: Vec::new(),
    };
    let taus = card.karras_taus(3, None).unwrap();
    let f = card.denoiser(&model);
    let mut noise = SeededNoise::for_range(11, 0, 6);
    let z = noise.draw(&[2], Kind::Float, Device::Cpu);
    let want = tch::no_grad(|| {
        consistency_sample_with(
            f.as_ref(),
            &z,
            ConsistencyConfig::default().range(),
            &taus,
            Conditioning::none(),
            &mut noise,
        )
        .unwrap()
        .x
    });
    drop(f);
    let pipe = Pipeline::new(card, model);
    let got = pipe.generate(6, 3, 11).unwrap();
    assert_eq!(got, want);
    let largest = f64::try_from(got.abs().max()).unwrap();
    assert!(largest > 1.0, "points were clamped: max |x| = {largest}");

    // Class-conditional: guidance changes samples, doubles the NFE, and
    // w = 0 is the conditional model exactly.
    let net = NetConfig::Mlp(cm_nets::MlpConfig {
        num_classes: 4,
        ..Default::default()
    });
    let model = Model::new(net, Device::Cpu).unwrap();
    tch::no_grad(|| {
        for mut v in model.var_store().trainable_variables() {
            let _ = v.g_add_(&(v.randn_like() * 0.2));
        }
    });
    let pipe = Pipeline::new(
        ModelCard::Consistency {
            weights: "unused.safetensors".into(),
            consistency: ConsistencyConfig::default(),
            timesteps: Default::default(),
            scheduler: None,
            autoencoder: None,
            guidance: None,
            lora: Vec::new(),
        },
        model,
    );
    let config = |w: Option<f64>| GenerateConfig {
        classes: ClassChoice::Cycle,
        guidance: w,
        ..GenerateConfig::new(8, 2)
    };
    let (plain, p) = pipe.generate_with(&config(None)).unwrap();
    let (zero, z) = pipe.generate_with(&config(Some(0.0))).unwrap();
    let (guided, g) = pipe.generate_with(&config(Some(2.0))).unwrap();
    assert_eq!((p.nfe, z.nfe, g.nfe), (1, 1, 2));
    assert_eq!(plain, zero);
    assert_ne!(plain, guided);
    // Guidance without classes names the problem.
    let err = pipe
        .generate_with(&GenerateConfig {
            guidance: Some(1.0),
            ..GenerateConfig::new(2, 0)
        })
        .unwrap_err()
        .to_string();
    assert!(err.contains("guidance") && err.contains("class"), "{err}");
}
