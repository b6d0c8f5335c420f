//! FID in the project's feature space on real data: the Fashion-MNIST
//! feature network reaches 90% test accuracy; FID of the test split against
//! itself is 0; FID grows monotonically with added Gaussian noise and with
//! blur. Trains the network on first use (about 2 minutes on 2 CPU cores)
//! and reuses it from the cache afterwards. Its two tests seed libtorch's
//! global generator and share the network: they run one at a time.

use cm_data::NpmDataset;
use cm_eval::classifier::images_to_float;
use cm_eval::frechet::{frechet_distance, FeatureStats};
use cm_eval::{degrade, feature_space, ClassifierConfig, Log, Silent};
use tch::{Device, Tensor};

/// The two tests share the cached feature network (the first trains it)
/// and libtorch's generator: run them one after the other.
static SERIAL: std::sync::Mutex<()> = std::sync::Mutex::new(());

fn strictly_increasing(v: &[f64]) -> bool {
    v.windows(2).all(|w| w[1] > w[0])
}

#[test]
fn fid_is_zero_on_the_test_split_and_grows_with_noise_and_blur() {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    // One intra-op thread: on a shared, oversubscribed CPU, libtorch's
    // OpenMP threads wait for each other at every small op (measured: the
    // classifier trained in 41 s with 1 thread, 1143 s with 2).
    tch::set_num_threads(1);
    let data = NpmDataset::FashionMnist.load(None).expect("Fashion-MNIST");
    let space = feature_space(
        &data,
        &ClassifierConfig::default(),
        None,
        Device::Cpu,
        &mut Log,
    )
    .expect("feature network");
    eprintln!(
        "feature network: test accuracy {:.4}, trained in {:.0} s ({})",
        space.card.test_accuracy,
        space.card.train_seconds,
        space.dir.display()
    );
    assert!(
        space.card.test_accuracy >= 0.90,
        "{}",
        space.card.test_accuracy
    );
    let reference = &space.reference.stats;
    assert_eq!(reference.n, 10_000);

    let test = images_to_float(&data.test.to_tensor());
    let (features, logits) = space.net.features(&test).unwrap();
    // The accuracy in the card is reproduced from these logits.
    let labels = data.test.labels_tensor().unwrap();
    let acc = logits.accuracy_for_logits(&labels).double_value(&[]);
    assert!((acc - space.card.test_accuracy).abs() < 1e-6);

    let fid =
        |f: &Tensor| frechet_distance(reference, &FeatureStats::from_features(f).unwrap()).unwrap();
    let self_fid = fid(&features);
    assert!(self_fid < 1e-6, "FID(test, test) = {self_fid}");
    // Two disjoint halves of the test split: small, but not 0.
    let even = Tensor::arange_start_step(0, 10_000, 2, (tch::Kind::Int64, Device::Cpu));
    let odd = &even + 1;
    let halves = frechet_distance(
        &FeatureStats::from_features(&features.index_select(0, &even)).unwrap(),
        &FeatureStats::from_features(&features.index_select(0, &odd)).unwrap(),
    )
    .unwrap();

    let subset = test.narrow(0, 0, 5000);
    tch::manual_seed(0);
    let z = subset.randn_like();
    let noise_levels = [0.0, 0.05, 0.1, 0.2, 0.4, 0.8];
    let noise_fid: Vec<f64> = noise_levels
        .iter()
        .map(|&s| {
            fid(&space
                .net
                .features(&degrade::add_noise(&subset, &z, s).unwrap())
                .unwrap()
                .0)
        })
        .collect();
    let blur_levels = [0.0, 0.5, 0.75, 1.0, 1.5, 2.0];
    let blur_fid: Vec<f64> = blur_levels
        .iter()
        .map(|&s| {
            fid(&space
                .net
                .features(&degrade::gaussian_blur(&subset, s).unwrap())
                .unwrap()
                .0)
        })
        .collect();
    eprintln!("FID(test halves) = {halves:.4}");
    eprintln!("noise {noise_levels:?}: FID {noise_fid:?}");
    eprintln!("blur {blur_levels:?}: FID {blur_fid:?}");
    assert!(strictly_increasing(&noise_fid), "{noise_fid:?}");
    assert!(strictly_increasing(&blur_fid), "{blur_fid:?}");
    // Half the test split against all of it stays far below visible damage.
    assert!(noise_fid[0] < 0.5 * noise_fid[2], "{noise_fid:?}");
    assert!(halves < noise_fid[2], "{halves} vs {noise_fid:?}");
}

/// `cm eval`'s pipeline end to end on an untrained tiny consistency model
/// (no stored times: 2 steps use the Karras-grid default), reusing the
/// cached feature network: rows, NFE, notes and tables.
#[test]
fn evaluate_runs_end_to_end_on_a_model_card() {
    use cm_eval::pipeline::{results_csv, results_markdown};
    use cm_eval::{evaluate, EvalConfig, ModelEntry};
    use cm_nets::{Model, NetConfig, UNetConfig};
    use cm_sample::ModelCard;

    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    tch::set_num_threads(1);
    let dir = tempfile::tempdir().unwrap();
    let net = NetConfig::Unet(UNetConfig {
        model_channels: 8,
        channel_mult: vec![1, 1],
        attn_resolutions: vec![],
        ..UNetConfig::default()
    });
    let model = Model::new(net, Device::Cpu).unwrap();
    model.save(dir.path().join("w.safetensors")).unwrap();
    let card = ModelCard::Consistency {
        weights: "w.safetensors".into(),
        consistency: Default::default(),
        timesteps: Default::default(),
        scheduler: None,
        autoencoder: None,
        guidance: None,
        lora: Vec::new(),
    };
    let card_path = dir.path().join("model.toml");
    card.save(&card_path).unwrap();
    let mut config: EvalConfig = cm_core::parse_toml(
        "samples = 60\nbatch_size = 25\nis_splits = 2\n[kid]\nsubsets = 5\nsubset_size = 50\n[[models]]\nname = \"x\"\ncard = \"x\"\nsteps = [1]\n",
        "inline",
    )
    .unwrap();
    let entry = |name: &str, card: std::path::PathBuf, steps: Vec<usize>| ModelEntry {
        name: name.into(),
        card,
        steps,
        solver: None,
        ancestral: None,
        samples: None,
        teacher: None,
        guidance: None,
        training: Vec::new(),
        optional: false,
        lora: Vec::new(),
        taus: Vec::new(),
        start: None,
    };
    config.models = vec![
        entry("tiny", card_path.clone(), vec![1, 2]),
        ModelEntry {
            taus: vec![1.5],
            ..entry("tiny at given times", card_path.clone(), vec![2])
        },
        // A start time: the card's own (80) gives the same samples, 40
        // other ones from the same latents.
        ModelEntry {
            start: Some(80.0),
            ..entry("tiny from 80", card_path.clone(), vec![1])
        },
        ModelEntry {
            start: Some(40.0),
            ..entry("tiny from 40", card_path.clone(), vec![1])
        },
        ModelEntry {
            optional: true,
            ..entry("absent", dir.path().join("none/model.toml"), vec![1])
        },
    ];
    let out = evaluate(&config, Device::Cpu, &mut Log).unwrap();
    assert_eq!(out.rows.len(), 6);
    assert_eq!(
        out.rows.iter().map(|r| r.nfe).collect::<Vec<_>>(),
        [0, 1, 2, 2, 1, 1]
    );
    assert_eq!(out.rows[4].fid, out.rows[1].fid, "{:?}", out.rows);
    assert!(out.rows[5].fid != out.rows[1].fid, "{:?}", out.rows);
    assert!(
        out.rows[5].sampler.contains("start T = 40"),
        "{}",
        out.rows[5].sampler
    );
    // Given times replace the default ones: another re-noising level, other
    // samples from the same latents.
    assert!(
        out.rows[3].sampler.contains("given times: 1.500"),
        "{}",
        out.rows[3].sampler
    );
    assert!(out.rows[3].fid != out.rows[2].fid, "{:?}", out.rows);
    assert_eq!(out.grids[1].size(), [60, 1, 28, 28]);
    // An untrained network's samples are far from the data; the data row is not.
    assert!(out.rows[1].fid > 5.0 * out.rows[0].fid, "{:?}", out.rows);
    assert!(out.rows[0].precision > 0.5 && out.rows[0].recall > 0.5);
    // Real images are classified as labelled (the classifier's accuracy);
    // an unconditional model's samples have no requested class.
    let data_accuracy = out.rows[0].class_accuracy.unwrap();
    assert!(data_accuracy > 0.8, "{data_accuracy}");
    assert!(out.rows[1].class_accuracy.is_none());
    assert_eq!(out.skipped.len(), 1);
    assert!(out
        .notes
        .iter()
        .any(|n| n.contains("3-level EDM sampling grid")));
    assert!(out.rows[2].sampler.contains("Karras times"));
    let md = results_markdown(&out, "cm eval ...");
    assert!(
        md.contains("| tiny | consistency, 1 step | 1 | 1 |"),
        "{md}"
    );
    assert!(md.contains("skipped `absent`"));
    assert!(md.contains("class accuracy"), "{md}");
    let csv = results_csv(&out);
    assert_eq!(csv.lines().count(), 7);
    assert!(
        csv.starts_with("model,sampler,")
            && csv
                .lines()
                .next()
                .unwrap()
                .ends_with(",class_accuracy,style_score")
    );
    // The data row has a class accuracy, the unconditional model row none.
    let data_line = csv.lines().nth(1).unwrap();
    assert!(data_line.starts_with("\"data\","), "{data_line}");
    assert!(
        data_line.ends_with(&format!(",{data_accuracy:.4},")),
        "{data_line}"
    );
    assert!(csv.lines().nth(2).unwrap().ends_with(",,"), "{csv}");
    // Times the model cannot sample at are an error naming the entry.
    config.models[1].taus = vec![500.0];
    let e = evaluate(&config, Device::Cpu, &mut Silent)
        .unwrap_err()
        .to_string();
    assert!(e.contains("models[1].taus"), "{e}");
    config.models.remove(1);
    // A start at or below the card's sigma_min (0.002) is an error naming
    // the entry.
    config.models[2].start = Some(0.001);
    let e = evaluate(&config, Device::Cpu, &mut Silent)
        .unwrap_err()
        .to_string();
    assert!(e.contains("models[2].start"), "{e}");
    config.models[2].start = Some(40.0);
    // The same missing card without `optional` is an error naming it.
    config.models.last_mut().unwrap().optional = false;
    let e = evaluate(&config, Device::Cpu, &mut Silent)
        .unwrap_err()
        .to_string();
    assert!(e.contains("absent") && e.contains("not found"), "{e}");
}
