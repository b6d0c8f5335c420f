//! The LCM pipeline (`cm train-lcm`): the presets parse, validate and
//! build; the smoke preset runs autoencoder -> guided latent teacher -> LCD
//! end to end, its card samples decoded images in 1-4 steps at any `w`;
//! the LCM-LoRA smoke preset reuses both earlier stages and distills
//! adapters, and a style LoRA fine-tuned on the same teacher stacks on its
//! card; configs that cannot work are refused by field.

mod common;

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
            cm_distill::lcm_pipeline::student_config(&c.teacher.net, c.lcd.class_gate).unwrap(),
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
fn lcm_lora_presets_validate_and_fit_the_teacher() {
    let _rng = cm_runtime::lock_global_rng();
    for name in ["smoke", "fmnist"] {
        let path = Path::new(env!("CARGO_MANIFEST_DIR"))
            .join(format!("../../configs/lcm-lora/{name}.toml"));
        let c: LcmRunConfig = cm_core::load_toml(path).unwrap();
        c.validate().unwrap_or_else(|e| panic!("{name}: {e}"));
        let lora = c.lora.clone().expect("an LCM-LoRA preset has [lora]");
        // The same autoencoder as the LCM preset, and its teacher's network
        // and recipe; smoke shares the teacher itself, while Fashion-MNIST's
        // LCM preset trains its teacher 4x longer (LCM-LoRA is measured on
        // the 4,000-step one, docs/lcm-lora.md).
        let lcm = preset(name);
        assert_eq!(c.autoencoder, lcm.autoencoder, "{name}");
        assert_eq!(c.teacher.net, lcm.teacher.net, "{name}");
        assert_eq!(c.teacher.edm, lcm.teacher.edm, "{name}");
        if name == "smoke" {
            assert_eq!(c.teacher, lcm.teacher, "{name}");
        } else {
            assert_eq!(
                (c.teacher.train.steps, lcm.teacher.train.steps),
                (4000, 16000)
            );
        }
        // The adapters' card has no w-embedding student to search times for.
        let mut searched = c.clone();
        searched.search = Some(Default::default());
        let err = searched.validate().unwrap_err().to_string();
        assert!(err.contains("search") && err.contains("[lora]"), "{err}");
        // Adapters hold at most 10% of the teacher's parameters.
        let mut teacher = Model::new(c.teacher.net.clone(), Device::Cpu).unwrap();
        let base = teacher.num_params();
        teacher.add_adapter("lcm", &lora, 1.0).unwrap();
        teacher.set_adapters_only(true).unwrap();
        let adapters: i64 = teacher
            .trainable_variables()
            .iter()
            .map(|(_, t)| t.numel() as i64)
            .sum();
        assert!(
            (adapters as f64) <= 0.10 * base as f64,
            "{name}: {adapters} adapter parameters vs {base}"
        );
        // LCM-LoRA learns one scale.
        let mut bad = c.clone();
        bad.lcd.w_max = bad.lcd.w_min + 1.0;
        let err = bad.validate().unwrap_err().to_string();
        assert!(err.contains("lcd.w_max") && err.contains("fixed"), "{err}");
        // ... and has no w-embedding to gate the class with.
        let mut gated = c.clone();
        gated.lcd.class_gate = true;
        let err = gated.validate().unwrap_err().to_string();
        assert!(err.contains("lcd.class_gate"), "{err}");
    }
}

/// iCT's exponential grid schedule, `N` from `s0 + 1` to `s1 + 1` over
/// `total_steps`.
fn ict_schedule(s0: u64, s1: u64, total_steps: u64) -> cm_core::ScheduleConfig {
    cm_core::ScheduleConfig::IctExponential(cm_core::IctExponentialSchedule {
        s0,
        s1,
        total_steps,
    })
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
    c.search = Some(cm_train::TimestepSearchConfig {
        max_steps: 9,
        ..Default::default()
    });
    let err = c.validate().unwrap_err().to_string();
    assert!(err.contains("search.max_steps"), "{err}");
    // LCD samples from the schedule's sigma_max: no start search.
    let mut c = preset("smoke");
    c.search = Some(cm_train::TimestepSearchConfig {
        start_lower: Some(10.0),
        ..Default::default()
    });
    let err = c.validate().unwrap_err().to_string();
    assert!(err.contains("search.start_lower"), "{err}");
    let mut c = preset("smoke");
    c.lcd.skip = 40;
    let err = c.validate().unwrap_err().to_string();
    assert!(err.contains("lcd.skip"), "{err}");
    let mut c = preset("smoke");
    c.lcd.w_min = 4.0;
    let err = c.validate().unwrap_err().to_string();
    assert!(err.contains("lcd.w_min"), "{err}");
    let mut c = preset("smoke");
    // A growing grid must fit the skipping step (k = 4) from its first N.
    c.lcd.recipe.schedule = ict_schedule(2, 320, 100);
    let err = c.validate().unwrap_err().to_string();
    assert!(
        err.contains("lcd.skip") && err.contains("first grid has N = 3"),
        "{err}"
    );
    c.lcd.recipe.schedule = ict_schedule(4, 320, c.train.steps);
    c.validate().unwrap();
    // ... and be reached by the run (the card's times come from its last
    // grid): over ten times the run's steps, it ends on N = 5, not 321.
    c.lcd.recipe.schedule = ict_schedule(4, 320, 10 * c.train.steps);
    let err = c.validate().unwrap_err().to_string();
    assert!(
        err.contains("lcd.recipe.schedule.total_steps") && err.contains("(N = 321)"),
        "{err}"
    );
    // Reaching total_steps is not enough: with s1 / s0 < 2 the one doubling
    // comes at step total_steps = train.steps, which never runs (steps are
    // 0..train.steps), so the last trained grid is N = 33, not 49.
    c.lcd.recipe.schedule = ict_schedule(32, 48, c.train.steps);
    let err = c.validate().unwrap_err().to_string();
    assert!(
        err.contains("lcd.recipe.schedule.total_steps") && err.contains("trains on N = 33"),
        "{err}"
    );
    // One step earlier it is reached.
    c.lcd.recipe.schedule = ict_schedule(32, 48, c.train.steps - 1);
    c.validate().unwrap();
    let mut c = preset("smoke");
    c.teacher.net = cm_nets::NetConfig::preset("fmnist-unet").unwrap();
    let err = c.validate().unwrap_err().to_string();
    assert!(err.contains("teacher.net"), "{err}");
    // A method's teacher cannot be a LoRA fine-tune (its checkpoints hold
    // adapters only).
    let mut c = preset("smoke");
    c.teacher.fine_tune = Some(cm_train::LoraFineTune {
        base: "runs/teachers/x/model.toml".into(),
        lora: Default::default(),
    });
    let err = c.validate().unwrap_err().to_string();
    assert!(err.contains("teacher.fine_tune"), "{err}");
}

#[test]
fn the_smoke_pipeline_runs_and_its_card_samples_guided_images() {
    let _rng = cm_runtime::lock_global_rng();
    let mut config = preset("smoke");
    // The [search] stage after LCD, inserting, on a small feature network:
    // the 2- and 3-step times are searched, the 4- and 8-step ones stay
    // LCM's skipping-step times.
    config.search = Some(cm_train::TimestepSearchConfig {
        max_steps: 3,
        insert: true,
        samples: 64,
        rounds: 2,
        classifier: common::tiny_feature_network(),
        ..Default::default()
    });
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
    // The searched times: the 3-step pair keeps the 2-step time and adds
    // one in a gap (above or below it), all inside the bracket; the
    // report lists the 1 + 2 gaps' probes, 4 each (rounds + 2).
    let two = card.taus(2).unwrap();
    let three = card.taus(3).unwrap();
    assert_eq!((two.len(), three.len()), (1, 2));
    assert!(three.contains(&two[0]), "{two:?} {three:?}");
    assert!(
        three[0] > three[1] && three[1] > 0.01 && three[0] < 40.0,
        "{three:?}"
    );
    assert!(
        report.contains("few-step times searched by FID"),
        "{report}"
    );
    let probes = report
        .lines()
        .find_map(|l| l.split("probes (taus -> FID): ").nth(1))
        .expect("the report lists the probes");
    assert_eq!(probes.split(", ").count(), (1 + 2) * 4, "{probes}");
    assert!(
        report.contains(&format!("LCM, 2 steps (times {:.4})", two[0])),
        "the report's grid uses the searched time: {report}"
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

    // `cm search-timesteps` on the latent card: FID compares the decoded
    // 1x28x28 images with the data set's, not the 4x7x7 latents; the time
    // found is the best probe's, inside the searched bracket.
    let cm_data::Dataset::Images(images) = config.autoencoder.data.load(None).unwrap() else {
        panic!("images")
    };
    let options = cm_eval::SearchOptions {
        samples: 64,
        rounds: 2,
        classifier: common::tiny_feature_network(),
        ..Default::default()
    };
    let found = cm_eval::timestep_search::run(
        pipe.card(),
        pipe.model(),
        &images,
        &options,
        Device::Cpu,
        &mut cm_eval::Silent,
    )
    .unwrap();
    let (steps, best) = &found.best()[0];
    assert_eq!(*steps, 2);
    let tau = found.card.taus(2).unwrap()[0];
    assert_eq!(tau, best.taus[0]);
    assert!(
        tau >= options.lower && tau <= pipe.card().sigma_max() / 2.0,
        "{tau}"
    );

    // The LCM-LoRA smoke preset reuses the autoencoder and the teacher
    // (same stage configs) and distills adapters on the frozen teacher.
    let lora_config: LcmRunConfig = cm_core::load_toml(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../../configs/lcm-lora/smoke.toml"),
    )
    .unwrap();
    let again = run_lcm(
        &lora_config,
        &dir.path().join("lcm-lora"),
        &teachers,
        false,
        Device::Cpu,
        &AtomicBool::new(false),
        &mut Quiet,
    )
    .unwrap();
    assert!(again.autoencoder_reused && again.lcd.teacher_reused);
    assert_eq!(again.autoencoder_dir, out.autoencoder_dir);
    assert_eq!(again.lcd.teacher_dir, out.lcd.teacher_dir);
    let lora_card_path = again.lcd.card.clone().unwrap();
    let lora_card = ModelCard::load(&lora_card_path).unwrap();
    assert_eq!(lora_card.embedded_guidance(), None);
    assert_eq!(lora_card.lora().len(), 1);
    let report = std::fs::read_to_string(again.lcd.report.as_ref().unwrap()).unwrap();
    assert!(
        report.contains("LCM-LoRA") && report.contains("lcm_lora.safetensors"),
        "{report}"
    );
    let lcm_lora = Pipeline::load(&lora_card_path, Device::Cpu).unwrap();
    let mut g = GenerateConfig::new(6, 3);
    g.steps = 4;
    g.classes = ClassChoice::Cycle;
    let (fast, done) = lcm_lora.generate_with(&g).unwrap();
    assert_eq!((fast.size(), done.nfe), (vec![6, 1, 28, 28], 4));

    // A style LoRA: an EDM-loss fine-tune of the same teacher on the data
    // upside down, then stacked on the LCM-LoRA card.
    let mut style: cm_train::TeacherConfig = cm_core::load_toml(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../../configs/lcm/teacher/smoke.toml"),
    )
    .unwrap();
    style.data = cm_data::DataSource::StyledFashionMnist {
        style: cm_data::Style::FlipVertical,
    };
    style.latent = Some(cm_train::LatentConfig {
        autoencoder: out.autoencoder_dir.join("model.toml"),
    });
    style.fine_tune = Some(cm_train::LoraFineTune {
        base: out.lcd.teacher_dir.join("model.toml"),
        lora: cm_nets::LoraConfig {
            rank: 2,
            alpha: 2.0,
            ..Default::default()
        },
    });
    style.train.steps = 20;
    style.train.checkpoint_every = 20;
    let styled = cm_train::run_teacher(
        &style,
        &dir.path().join("style"),
        false,
        Device::Cpu,
        &AtomicBool::new(false),
        &mut Quiet,
    )
    .unwrap();
    let style_card = ModelCard::load(styled.card.as_ref().unwrap()).unwrap();
    assert_eq!(style_card.lora().len(), 1);
    let adapter = style_card.lora()[0].file.clone();
    assert!(adapter.is_file());
    let mut stacked = lora_card.clone();
    stacked
        .push_lora(&[cm_sample::LoraRef {
            file: adapter,
            weight: 1.0,
        }])
        .unwrap();
    let both = Pipeline::from_card(stacked, Device::Cpu).unwrap();
    assert_eq!(both.model().adapters().len(), 2);
    let (styled_fast, done) = both.generate_with(&g).unwrap();
    assert_eq!(done.nfe, 4);
    assert!(f64::try_from((&styled_fast - &fast).abs().max()).unwrap() > 1e-4);

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
