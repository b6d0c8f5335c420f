//! Criterion benchmarks of sampling on the CPU preset networks
//! (`fmnist-unet`, the Fashion-MNIST teacher / CD / CT network, and
//! `toy-mlp`, the 2-D toy network): consistency
//! 1-step and 2-step sampling (CM Algorithm 1) against the teacher's EDM
//! Heun sampler with 18 steps (35 NFE), at batch 1 (latency) and batch 64
//! (throughput), without autograd, all cores.
//!
//! `cargo xtask bench -- -p cm-sample`; reports in `target/criterion`.

use cm_core::Conditioning;
use std::time::Duration;

use cm_core::{ConsistencyConfig, EdmConfig};
use cm_nets::{Model, NetConfig, Preconditioned};
use cm_sample::{consistency_sample_with, edm_sample, EdmSampler, SeededNoise};
use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use tch::{Device, Kind};

fn bench_sampling(c: &mut Criterion) {
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get() as i32);
    tch::set_num_threads(cores);
    for preset in ["toy-mlp", "fmnist-unet"] {
        bench_preset(c, preset);
    }
}

fn bench_preset(c: &mut Criterion, preset: &str) {
    tch::manual_seed(0);
    let model = Model::new(
        NetConfig::preset(preset).expect("known preset"),
        Device::Cpu,
    )
    .unwrap();
    // Random weights everywhere, so zero-initialised layers cost what they
    // do in a trained model.
    tch::no_grad(|| {
        for mut v in model.var_store().trainable_variables() {
            let _ = v.g_add_(&(v.randn_like() * 0.02));
        }
    });
    let cm = ConsistencyConfig::default();
    let f = Preconditioned::eval(&model, cm.parameterization());
    let edm = EdmConfig::default();
    let d = Preconditioned::eval(&model, edm.preconditioning());
    let heun = EdmSampler::default();
    let shape = model.config().sample_shape();

    let mut group = c.benchmark_group(preset);
    group
        .sample_size(10)
        .warm_up_time(Duration::from_secs(2))
        .measurement_time(Duration::from_secs(8));
    for batch in [1usize, 64] {
        let mut noise = SeededNoise::for_range(0, 0, batch);
        let z = noise.draw(&shape, Kind::Float, Device::Cpu);
        group.throughput(Throughput::Elements(batch as u64));
        for (name, taus) in [("cm_1step", vec![]), ("cm_2step", vec![0.821])] {
            group.bench_with_input(BenchmarkId::new(name, batch), &batch, |b, _| {
                b.iter(|| {
                    consistency_sample_with(
                        &f,
                        &z,
                        cm.range(),
                        &taus,
                        Conditioning::none(),
                        &mut noise,
                    )
                    .unwrap()
                })
            });
        }
        group.bench_with_input(BenchmarkId::new("edm_heun_35nfe", batch), &batch, |b, _| {
            b.iter(|| edm_sample(&d, &z, &edm.grid(), &heun, Conditioning::none()).unwrap())
        });
    }
    group.finish();
}

criterion_group!(benches, bench_sampling);
criterion_main!(benches);
