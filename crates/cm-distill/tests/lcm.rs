//! The LCM pipeline (`cm train-lcm`): the presets parse, validate and
//! build; the smoke preset runs autoencoder -> guided latent teacher -> LCD
//! end to end, its card samples decoded images in 1-4 steps at any `w`,
//! a second run reuses both earlier stages; configs that cannot work are
//! refused by field.

use std::path::Path;
use std::sync::atomic::AtomicBool;

use cm_core::Validate;
use cm_distill::{run_lcm, LcmRunConfig};
use cm_nets::Model;
use cm_sample::{ClassChoice, GenerateConfig, ModelCard, Pipeline};
use cm_train::Quiet;
use tch::Device;

fn preset(name: &str) -> LcmRunConfig {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join(format!("../../configs/lcm/{name}.toml"));
    cm_core::load_toml(path).unwrap()
}

#[test]
fn presets_parse_validate_and_build() {
    let _rng = cm_runtime::lock_global_rng();
    for name in ["smoke", "fmnist", "cifar10"] {
        let c = preset(name);
        c.validate().unwrap_or_else(|e| panic!("{name}: {e}"));
        // Every network of the preset can be built (the student is the
        // teacher's U-Net with the w-embedding).
        Model::new(c.autoencoder.net.clone(), Device::Cpu).unwrap();
        let teacher = Model::new(c.teacher.net.clone(), Device::Cpu).unwrap();
        let student = Model::new(
            cm_distill::lcm_pipeline::student_config(&c.teacher.net).unwrap(),
            Device::Cpu,
        )
        .unwrap();
        assert!(student.config().embeds_guidance(), "{name}");
        assert!(student.num_params() > teacher.num_params(), "{name}");
        for steps in [2, 4, 8] {
            let times = c.lcd.times(steps).unwrap();
            assert_eq!(times.len(), steps);
            assert_eq!(times[0], c.lcd.recipe.consistency.sigma_max, "{name}");
            assert!(times.windows(2).all(|w| w[1] < w[0]), "{name}: {times:?}");
        }
    }
}

#[test]
fn configs_that_cannot_work_are_refused_by_field() {
    let mut c = preset("smoke");
    c.teacher.edm.label_dropout = 0.0;
    let err = c.validate().unwrap_err().to_string();
    assert!(err.contains("teacher.edm.label_dropout"), "{err}");
    let mut c = preset("smoke");
    c.teacher.latent = Some(cm_train::LatentConfig {
        autoencoder: "elsewhere/model.toml".into(),
    });
    let err = c.validate().unwrap_err().to_string();
    assert!(err.contains("teacher.latent.autoencoder"), "{err}");
    let mut c = preset("smoke");
    c.lcd.skip = 40;
    let err = c.validate().unwrap_err().to_string();
    assert!(err.contains("lcd.skip"), "{err}");
    let mut c = preset("smoke");
    c.lcd.w_min = 4.0;
    let err = c.validate().unwrap_err().to_string();
    assert!(err.contains("lcd.w_min"), "{err}");
    let mut c = preset("smoke");
    c.lcd.recipe.schedule = toml::from_str("kind = \"ct_adaptive\"").unwrap();
    let err = c.validate().unwrap_err().to_string();
    assert!(err.contains("lcd.recipe.schedule.kind"), "{err}");
    let mut c = preset("smoke");
    c.teacher.net = cm_nets::NetConfig::preset("fmnist-unet").unwrap();
    let err = c.validate().unwrap_err().to_string();
    assert!(err.contains("teacher.net"), "{err}");
}

#[test]
fn the_smoke_pipeline_runs_and_its_card_samples_guided_images() {
    let _rng = cm_runtime::lock_global_rng();
    let config = preset("smoke");
    let dir = tempfile::tempdir().unwrap();
    let teachers = dir.path().join("teachers");
    let run = |name: &str| {
        run_lcm(
            &config,
            &dir.path().join(name),
            &teachers,
            false,
            Device::Cpu,
            &AtomicBool::new(false),
            &mut Quiet,
        )
        .unwrap()
    };
    let out = run("lcm");
    assert!(!out.autoencoder_reused && !out.lcd.teacher_reused);
    assert_eq!(out.lcd.train.step, 60);
    let report = std::fs::read_to_string(out.lcd.report.as_ref().unwrap()).unwrap();
    for needle in [
        "latent consistency distillation",
        "latent space of the autoencoder",
        "samples_teacher_heun35.png",
        "samples_lcm_1step.png",
        "samples_lcm_4step.png",
    ] {
        assert!(report.contains(needle), "report lacks {needle}: {report}");
    }
    let card_path = out.lcd.card.clone().unwrap();
    let card = ModelCard::load(&card_path).unwrap();
    assert_eq!(card.embedded_guidance(), Some(1.5));
    assert!(card.autoencoder().is_some());
    assert_eq!(
        card.taus(4).unwrap(),
        config.lcd.times(4).unwrap()[1..].to_vec()
    );

    // Sampling through the card: decoded 28x28 images, one evaluation per
    // step whatever w, and w changes the samples.
    let pipe = Pipeline::load(&card_path, Device::Cpu).unwrap();
    assert_eq!(pipe.sample_shape(), vec![1, 28, 28]);
    let sample = |w: f64, steps: usize| {
        let mut g = GenerateConfig::new(6, 3);
        g.steps = steps;
        g.classes = ClassChoice::Cycle;
        g.guidance = Some(w);
        pipe.generate_with(&g).unwrap()
    };
    let (a, done) = sample(1.0, 4);
    assert_eq!(a.size(), [6, 1, 28, 28]);
    assert_eq!(done.nfe, 4);
    assert!(f64::try_from(a.abs().max()).unwrap() <= 1.0);
    let (b, _) = sample(3.0, 4);
    assert!(f64::try_from((&a - &b).abs().max()).unwrap() > 1e-4);
    let (one, done) = sample(1.0, 1);
    assert_eq!((one.size(), done.nfe), (vec![6, 1, 28, 28], 1));
    // The student never saw the null class: sampling without classes is
    // refused rather than answered with untrained outputs.
    let err = pipe.generate(2, 1, 0).unwrap_err().to_string();
    assert!(err.contains("classes"), "{err}");

    // A second run reuses the autoencoder and the teacher.
    let again = run("lcm-again");
    assert!(again.autoencoder_reused && again.lcd.teacher_reused);
    assert_eq!(again.autoencoder_dir, out.autoencoder_dir);

    // The latent cache of the smoke autoencoder is not left behind.
    let ae = cm_sample::AutoencoderCard::load(out.autoencoder_dir.join("model.toml")).unwrap();
    let cm_data::Dataset::Images(images) = config.autoencoder.data.load(None).unwrap() else {
        panic!("images")
    };
    let cache = cm_train::latent::latent_cache_file(
        &cm_eval::classifier::default_cache_root().unwrap(),
        &images,
        &ae.weights,
        ae.scaling_factor.unwrap(),
    )
    .unwrap();
    let _ = std::fs::remove_file(cache);
}
