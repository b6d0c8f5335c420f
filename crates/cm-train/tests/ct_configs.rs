//! The CT / iCT presets parse and validate; the ablation ladder walks from
//! the CT preset to the iCT preset one change at a time and ends exactly at
//! the iCT preset; the iCT presets carry the paper's switches.

use cm_core::{ConsistencyRecipe, IndexSamplerConfig, MetricConfig, ScheduleConfig, Weighting};
use cm_nets::{NetConfig, NoiseEmbedding};
use cm_train::{ict_ablation, CtRunConfig};

fn load(name: &str) -> CtRunConfig {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../configs/ct")
        .join(name);
    cm_core::load_toml(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

fn unet(net: &NetConfig) -> &cm_nets::UNetConfig {
    match net {
        NetConfig::Unet(u) => u,
        other => panic!("expected a U-Net, got {other:?}"),
    }
}

#[test]
fn presets_pair_up_and_ict_has_the_papers_switches() {
    for preset in ["toy", "fmnist", "cifar10"] {
        let ct = load(&format!("{preset}-ct.toml"));
        let ict = load(&format!("{preset}-ict.toml"));
        // iCT, Section 3: mu = 0, pseudo-Huber, 1/(t_{n+1} - t_n), lognormal
        // pairs (P_mean -1.1, P_std 2.0), exponential curriculum from s0 = 10.
        let r = ict.ct.recipe;
        assert_eq!(r.weighting, Weighting::InverseStep, "{preset}");
        assert!(
            matches!(r.metric, MetricConfig::PseudoHuber { .. }),
            "{preset}"
        );
        assert_eq!(r.noise, ConsistencyRecipe::ict().noise, "{preset}");
        let ScheduleConfig::IctExponential(s) = r.schedule else {
            panic!("{preset}: iCT needs the exponential curriculum");
        };
        assert_eq!(s.s0, 10, "{preset}");
        assert_eq!(
            s.total_steps, ict.train.steps,
            "{preset}: curriculum length"
        );
        // CT (CM Alg. 3): the adaptive schedule with an EMA target, L2, uniform.
        let c = ct.ct.recipe;
        let ScheduleConfig::CtAdaptive(a) = c.schedule else {
            panic!("{preset}: CT needs the adaptive schedule");
        };
        assert_eq!((a.s0, a.s1, a.mu0), (2, 150, 0.9), "{preset}");
        assert_eq!(a.total_steps, ct.train.steps, "{preset}: schedule length");
        assert_eq!(c.metric, MetricConfig::L2, "{preset}");
        assert_eq!(
            c.noise,
            IndexSamplerConfig::Uniform(cm_core::UniformIndex {})
        );
        assert_eq!(c.weighting, Weighting::Uniform);
        // Same data and parameterization range for the pair.
        assert_eq!(ct.data, ict.data, "{preset}");
        assert_eq!(
            c.consistency.sigma_data, r.consistency.sigma_data,
            "{preset}"
        );
    }
    // The image iCT presets: Fourier embedding of scale 0.02 and dropout.
    for (preset, dropout) in [("fmnist", 0.1), ("cifar10", 0.3)] {
        let ict = load(&format!("{preset}-ict.toml"));
        let u = unet(&ict.net);
        assert_eq!(u.noise_embedding, NoiseEmbedding::Fourier, "{preset}");
        assert_eq!(u.fourier_scale, 0.02, "{preset}");
        assert_eq!(u.dropout, dropout, "{preset}");
    }
    // The CPU preset is the fmnist-unet network apart from those switches.
    let mut net = unet(&load("fmnist-ict.toml").net).clone();
    let NetConfig::Unet(preset) = NetConfig::preset("fmnist-unet").unwrap() else {
        unreachable!()
    };
    net.noise_embedding = preset.noise_embedding;
    net.fourier_scale = preset.fourier_scale;
    net.dropout = preset.dropout;
    assert_eq!(net, preset);
    // CIFAR-10: the paper's batch, optimizer and evaluation EMA.
    let cifar = load("cifar10-ict.toml");
    assert_eq!(cifar.train.batch_size, 1024);
    assert_eq!(cifar.train.ema_rates, vec![0.99993]);
    assert_eq!(cifar.train.optimizer.lr, 1e-4);
}

#[test]
fn ladder_changes_one_thing_at_a_time_and_ends_at_ict() {
    for preset in ["toy", "fmnist"] {
        let ct = load(&format!("{preset}-ct.toml"));
        let ict = load(&format!("{preset}-ict.toml"));
        let rungs = ict_ablation(&ct, &ict).unwrap();
        assert_eq!(rungs.len(), 7);
        assert_eq!(rungs[0].1, ct);
        assert_eq!(
            rungs.last().unwrap().1,
            ict,
            "{preset}: the last rung must be iCT"
        );
        let recipe = |i: usize| rungs[i].1.ct.recipe;
        // Rung 1: only mu0 -> 0.
        let (ScheduleConfig::CtAdaptive(a), ScheduleConfig::CtAdaptive(b)) =
            (recipe(0).schedule, recipe(1).schedule)
        else {
            panic!("rungs 0 and 1 keep the adaptive schedule");
        };
        assert_eq!((a.mu0, b.mu0), (0.9, 0.0));
        assert_eq!((a.s0, a.s1, a.total_steps), (b.s0, b.s1, b.total_steps));
        // Each later rung changes exactly one recipe field.
        let fields = |r: ConsistencyRecipe| {
            [
                format!("{:?}", r.schedule),
                format!("{:?}", r.metric),
                format!("{:?}", r.weighting),
                format!("{:?}", r.noise),
            ]
        };
        for (i, changed) in [(2, 1), (3, 2), (4, 3), (5, 0)] {
            let (before, after) = (fields(recipe(i - 1)), fields(recipe(i)));
            for f in 0..4 {
                assert_eq!(
                    before[f] != after[f],
                    f == changed,
                    "{preset} rung {i} ({}): field {f}",
                    rungs[i].0
                );
            }
            assert_eq!(
                rungs[i].1.net, ct.net,
                "{preset} rung {i} keeps the CT network"
            );
        }
    }
}

#[test]
fn ladder_refuses_mismatched_runs() {
    let ct = load("toy-ct.toml");
    let mut ict = load("toy-ict.toml");
    ict.train.steps += 1;
    let err = ict_ablation(&ct, &ict).unwrap_err().to_string();
    assert!(err.contains("train"), "{err}");
    let err = ict_ablation(&ct, &load("fmnist-ict.toml"))
        .unwrap_err()
        .to_string();
    assert!(err.contains("data"), "{err}");
}

#[test]
fn bad_ct_values_name_the_field() {
    let path =
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../configs/ct/toy-ict.toml");
    let text = std::fs::read_to_string(path).unwrap();
    let bad = text.replace("two_step_tau = 0.821", "two_step_tau = 200.0");
    let err = cm_core::parse_toml::<CtRunConfig>(&bad, "toy-ict.toml").unwrap_err();
    assert!(err.to_string().contains("ct.two_step_tau"), "{err}");
    let bad = text.replace("p_std = 2.0", "p_std = -2.0");
    let err = cm_core::parse_toml::<CtRunConfig>(&bad, "toy-ict.toml").unwrap_err();
    assert!(err.to_string().contains("ct.recipe.noise.p_std"), "{err}");
    let bad = text.replace("[ct.recipe]", "[ct.recipe]\nweighting_typo = 1");
    let err = cm_core::parse_toml::<CtRunConfig>(&bad, "toy-ict.toml").unwrap_err();
    assert!(err.to_string().contains("weighting_typo"), "{err}");
}
