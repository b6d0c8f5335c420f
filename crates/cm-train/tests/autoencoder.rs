//! The autoencoder run (`cm train-autoencoder`) end to end on Fashion-MNIST
//! with the smoke preset: it learns (the loss falls), the card carries a
//! scaling factor that gives the encoded training latents unit standard
//! deviation, the codec's round trip is the network's reconstruction, and
//! configs that cannot work are refused by field.

use std::path::Path;
use std::sync::atomic::AtomicBool;

use cm_core::Validate;
use cm_data::{DataSource, Dataset};
use cm_sample::{AutoencoderCard, ModelCard};
use cm_train::{run_autoencoder, run_teacher, AutoencoderRunConfig, Quiet, TeacherConfig};
use tch::{Device, Kind, Tensor};

fn preset(name: &str) -> AutoencoderRunConfig {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join(format!("../../configs/autoencoder/{name}.toml"));
    cm_core::load_toml(path).unwrap()
}

#[test]
fn the_smoke_autoencoder_learns_and_its_card_scales_latents_to_unit_variance() {
    let _rng = cm_runtime::lock_global_rng();
    let config = preset("smoke");
    let dir = tempfile::tempdir().unwrap();
    let run_dir = dir.path().join("ae");
    let out = run_autoencoder(
        &config,
        &run_dir,
        false,
        Device::Cpu,
        &AtomicBool::new(false),
        &mut Quiet,
    )
    .unwrap();
    assert_eq!(out.train.step, 60);
    let losses = &out.train.losses;
    let first: f64 = losses[..5].iter().map(|l| l.1).sum::<f64>() / 5.0;
    let last: f64 = losses[losses.len() - 5..].iter().map(|l| l.1).sum::<f64>() / 5.0;
    assert!(last < 0.8 * first, "loss {first} -> {last}");

    let report = std::fs::read_to_string(out.report.unwrap()).unwrap();
    for needle in [
        "scaling_factor",
        "PSNR",
        "reconstruction FID",
        "reconstructions.png",
    ] {
        assert!(report.contains(needle), "report lacks {needle}: {report}");
    }
    assert!(run_dir.join("reconstructions.png").is_file());

    let card_path = out.card.unwrap();
    let card = AutoencoderCard::load(&card_path).unwrap();
    let codec = card.load_codec(Device::Cpu).unwrap();
    assert_eq!(codec.latent_shape(), vec![4, 7, 7]);
    // The factor is 1 / std of the first 4096 training images' latent
    // means: re-encoding them gives unit standard deviation.
    let Dataset::Images(images) = DataSource::FashionMnist.load(None).unwrap() else {
        panic!("Fashion-MNIST is images")
    };
    let indices: Vec<usize> = (0..4096).collect();
    let x =
        cm_eval::classifier::images_to_float(&images.train.select(&indices).unwrap().to_tensor());
    let z = codec.encode(&x).unwrap();
    let std = f64::try_from(z.to_kind(Kind::Double).std(true)).unwrap();
    assert!((std - 1.0).abs() < 1e-3, "latent std {std}");
    // decode(encode(x)) is the network's own reconstruction.
    let x8 = x.narrow(0, 0, 8);
    let round = codec.decode(&codec.encode(&x8).unwrap()).unwrap();
    let direct = tch::no_grad(|| {
        codec.model().forward_t(
            &x8,
            &Tensor::zeros([8], (Kind::Float, Device::Cpu)),
            cm_core::Conditioning::none(),
            false,
        )
    });
    let diff = f64::try_from((round - direct).abs().max()).unwrap();
    assert!(diff < 1e-4, "round trip differs by {diff}");
    // Shapes are checked.
    let err = codec.decode(&x8).unwrap_err().to_string();
    assert!(err.contains("latents"), "{err}");

    // The sampler's card loader points at what to do with it.
    let err = ModelCard::load(&card_path).unwrap_err().to_string();
    assert!(
        err.contains("autoencoder") && err.contains("[latent]"),
        "{err}"
    );

    // Resuming the finished run changes nothing.
    let before = std::fs::read_to_string(&card_path).unwrap();
    let again = run_autoencoder(
        &config,
        &run_dir,
        true,
        Device::Cpu,
        &AtomicBool::new(false),
        &mut Quiet,
    )
    .unwrap();
    assert_eq!(again.train.step, 60);
    assert_eq!(std::fs::read_to_string(&card_path).unwrap(), before);

    // The latent route: a class-conditional EDM teacher on the encoded
    // data (encoded once and cached), its grids decoded to images.
    let teacher: TeacherConfig = toml::from_str(&format!(
        r#"
        [latent]
        autoencoder = {card:?}
        [net]
        arch = "unet"
        in_channels = 4
        resolution = 7
        model_channels = 16
        channel_mult = [1]
        num_res_blocks = 1
        attn_resolutions = [7]
        channels_per_head = 16
        dropout = 0.0
        num_classes = 10
        [train]
        steps = 20
        batch_size = 16
        ema_rates = [0.9]
        checkpoint_every = 20
        sample_count = 4
        [edm]
        label_dropout = 0.1
        [edm.edm]
        sigma_data = 1.0
        "#,
        card = card_path.display().to_string()
    ))
    .unwrap();
    let cache = cm_train::latent::latent_cache_file(
        &cm_eval::classifier::default_cache_root().unwrap(),
        &images,
        &card.weights,
        card.scaling_factor.unwrap(),
    )
    .unwrap();
    let out = run_teacher(
        &teacher,
        &dir.path().join("latent-teacher"),
        false,
        Device::Cpu,
        &AtomicBool::new(false),
        &mut Quiet,
    )
    .unwrap();
    assert_eq!(out.train.step, 20);
    assert!(cache.is_file(), "no latent cache at {}", cache.display());
    // The cached latents are the codec's encoding of the data.
    let cached = Tensor::read_safetensors(&cache).unwrap();
    let train = &cached.iter().find(|(n, _)| n == "train.latents").unwrap().1;
    assert_eq!(train.size(), [images.train.len() as i64, 4, 7, 7]);
    let direct = codec.encode(&x.narrow(0, 0, 16)).unwrap();
    let diff = f64::try_from((train.narrow(0, 0, 16) - direct).abs().max()).unwrap();
    assert!(diff < 1e-4, "cached latents differ by {diff}");
    // The grid is decoded: 4 images of 28x28 in a 2x2 grid with 2-pixel gaps.
    let png = std::fs::read(dir.path().join("latent-teacher/samples_heun35.png")).unwrap();
    // PNG: 8-byte signature, IHDR length and type, then width and height.
    let be = |at: usize| u32::from_be_bytes(png[at..at + 4].try_into().unwrap());
    assert_eq!((be(16), be(20)), (2 * 30 + 2, 2 * 30 + 2));
    let report = std::fs::read_to_string(out.report.unwrap()).unwrap();
    assert!(
        report.contains("latent space of the autoencoder"),
        "{report}"
    );
    let _ = std::fs::remove_file(&cache);
}

#[test]
fn configs_that_cannot_train_an_autoencoder_are_refused_by_field() {
    for name in ["smoke", "fmnist"] {
        preset(name)
            .validate()
            .unwrap_or_else(|e| panic!("{name}: {e}"));
    }
    let mut c = preset("smoke");
    c.net = cm_nets::NetConfig::preset("fmnist-unet").unwrap();
    let err = c.validate().unwrap_err().to_string();
    assert!(err.contains("net.arch"), "{err}");
    let mut c = preset("smoke");
    c.data = toml::from_str("kind = \"toy\"\ndistribution = \"two-moons\"").unwrap();
    let err = c.validate().unwrap_err().to_string();
    assert!(err.contains("data.kind"), "{err}");
    let mut c = preset("smoke");
    c.autoencoder.kl_weight = -1.0;
    let err = c.validate().unwrap_err().to_string();
    assert!(err.contains("autoencoder.kl_weight"), "{err}");
    // A card without a scaling factor (a run that has not finished) is
    // refused rather than used at the wrong scale.
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("model.toml");
    AutoencoderCard::new("w.safetensors".into(), None)
        .save(&path)
        .unwrap();
    let err = AutoencoderCard::load(&path).unwrap_err().to_string();
    assert!(err.contains("scaling_factor"), "{err}");
}

#[test]
fn the_latent_cache_key_changes_with_the_weights_the_scale_and_the_images() {
    let dir = tempfile::tempdir().unwrap();
    let (w1, w2) = (
        dir.path().join("a.safetensors"),
        dir.path().join("b.safetensors"),
    );
    std::fs::write(&w1, b"weights one").unwrap();
    std::fs::write(&w2, b"weights two").unwrap();
    let split = |pixels: Vec<u8>, labels: Vec<i64>| {
        std::sync::Arc::new(cm_data::ImageSplit::new(pixels, Some(labels), [1, 2, 2]).unwrap())
    };
    let images = |train: Vec<u8>, labels: Vec<i64>| cm_data::ImageDataset {
        name: "tiny".into(),
        train: split(train, labels),
        test: split(vec![9; 4], vec![1]),
        num_classes: 2,
        class_names: vec!["a".into(), "b".into()],
        skipped_rows: 0,
    };
    let root = dir.path();
    let key = |d: &cm_data::ImageDataset, w: &Path, s: f64| {
        cm_train::latent::latent_cache_file(root, d, w, s).unwrap()
    };
    let base = images(vec![1, 2, 3, 4, 5, 6, 7, 8], vec![0, 1]);
    let same = images(vec![1, 2, 3, 4, 5, 6, 7, 8], vec![0, 1]);
    assert_eq!(key(&base, &w1, 0.5), key(&same, &w1, 0.5));
    assert!(key(&base, &w1, 0.5).starts_with(root.join("latents")));
    // Other weights, another scale, other pixels (same name and size),
    // other labels: each gets its own latents.
    assert_ne!(key(&base, &w1, 0.5), key(&base, &w2, 0.5));
    assert_ne!(key(&base, &w1, 0.5), key(&base, &w1, 0.25));
    let repainted = images(vec![1, 2, 3, 4, 5, 6, 7, 0], vec![0, 1]);
    assert_ne!(key(&base, &w1, 0.5), key(&repainted, &w1, 0.5));
    let relabelled = images(vec![1, 2, 3, 4, 5, 6, 7, 8], vec![1, 1]);
    assert_ne!(key(&base, &w1, 0.5), key(&relabelled, &w1, 0.5));
    // Unreadable weights are an error naming the file, not a panic.
    let err = cm_train::latent::latent_cache_file(root, &base, &root.join("none"), 0.5)
        .unwrap_err()
        .to_string();
    assert!(err.contains("none"), "{err}");
}
