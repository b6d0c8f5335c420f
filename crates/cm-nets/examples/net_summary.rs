//! Prints a markdown table of the network presets: parameters, estimated
//! forward GFLOPs per image, and measured times on this machine: a training
//! step (forward + backward + Adam) at batch 64 for the CPU presets, a
//! no-grad forward at batch 1 for all.
//!
//! `cargo run --release -p cm-nets --example net_summary [-- STEPS [PRESET ...]]`
//! (with `cargo xtask env` exported). The table in docs/nets.md comes from it.

use cm_core::Conditioning;
use std::time::Instant;

use cm_nets::{Model, NetConfig, PRESETS};
use tch::nn::OptimizerConfig;
use tch::{nn, Device, Kind, Tensor};

const CPU_PRESETS: &[&str] = &["toy-mlp", "fmnist-unet", "fmnist-dit"];

fn inputs(model: &Model, batch: i64) -> (Tensor, Tensor) {
    let mut shape = vec![batch];
    shape.extend(model.config().sample_shape());
    (
        Tensor::randn(shape, (Kind::Float, Device::Cpu)),
        Tensor::randn([batch], (Kind::Float, Device::Cpu)),
    )
}

/// Median of `runs` timings of `f`, in seconds, after one warm-up call.
fn time_median(runs: usize, mut f: impl FnMut()) -> f64 {
    f();
    let mut times: Vec<f64> = (0..runs)
        .map(|_| {
            let t = Instant::now();
            f();
            t.elapsed().as_secs_f64()
        })
        .collect();
    times.sort_by(|a, b| a.total_cmp(b));
    times[times.len() / 2]
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let steps: usize = match args.first().map(|s| s.parse()) {
        None => 10,
        Some(Ok(n)) if n > 0 => n,
        Some(_) => {
            eprintln!(
                "usage: net_summary [STEPS [PRESET ...]]   (STEPS >= 1; presets: {PRESETS:?})"
            );
            std::process::exit(2);
        }
    };
    let names: Vec<String> = if args.len() > 1 {
        args[1..].to_vec()
    } else {
        PRESETS.iter().map(|s| s.to_string()).collect()
    };
    let threads = std::thread::available_parallelism().map_or(1, |n| n.get() as i32);
    tch::set_num_threads(threads);
    println!("{threads} threads, median of {steps} runs\n");
    println!("| preset | parameters | MFLOPs / image (forward) | train step, batch 64 (s) | forward, batch 1 (ms) |");
    println!("| --- | ---: | ---: | ---: | ---: |");
    for name in &names {
        let Some(config) = NetConfig::preset(name) else {
            eprintln!("unknown preset `{name}`; presets: {PRESETS:?}");
            std::process::exit(2);
        };
        tch::manual_seed(0);
        let model = Model::new(config, Device::Cpu).expect("presets are valid");
        let step = if CPU_PRESETS.contains(&name.as_str()) {
            let mut opt = nn::Adam::default()
                .build(model.var_store(), 2e-4)
                .expect("optimizer");
            let (x, s) = inputs(&model, 64);
            let t = time_median(steps, || {
                let loss = model
                    .forward_t(&x, &s, Conditioning::none(), true)
                    .square()
                    .mean(Kind::Float);
                opt.backward_step(&loss);
            });
            format!("{t:.3}")
        } else {
            "GPU preset".to_string()
        };
        let (x, s) = inputs(&model, 1);
        let classes = model.null_class().map(|n| Tensor::from_slice(&[n]));
        let fwd = time_median(steps.min(5), || {
            let _guard = tch::no_grad_guard();
            let _ = model.forward_t(&x, &s, Conditioning::from_class(classes.as_ref()), false);
        });
        println!(
            "| `{name}` | {:.2} M | {:.2} | {step} | {:.1} |",
            model.num_params() as f64 / 1e6,
            model.flops_per_sample() as f64 / 1e6,
            fwd * 1e3
        );
    }
}
