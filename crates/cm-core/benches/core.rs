//! Criterion benchmarks of cm-core's per-step math on a batch of 64 images
//! (3x32x32, float32, CPU): consistency scalings and parameterization, the
//! pseudo-Huber distance, pair sampling from the iCT lognormal, and the whole
//! per-step loss arithmetic around a (free) network.
//!
//! `cargo xtask bench -- -p cm-core`; reports in `target/criterion`.

use cm_core::{
    adjacent_pairs, grid_tensor, ConsistencyConfig, DistanceMetric, IndexSampler, KarrasGrid,
    LognormalIndex, LossWeighting, Parameterization, PseudoHuber, Weighting,
};
use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use tch::{Device, Kind, Tensor};

const BATCH: i64 = 64;

fn bench_core(c: &mut Criterion) {
    tch::set_num_threads(std::thread::available_parallelism().map_or(1, |n| n.get() as i32));
    let _guard = tch::no_grad_guard();
    tch::manual_seed(0);
    let opts = (Kind::Float, Device::Cpu);
    let x = Tensor::randn([BATCH, 3, 32, 32], opts);
    let y = Tensor::randn([BATCH, 3, 32, 32], opts);
    let sigma = Tensor::rand([BATCH], opts) * 80.0 + 0.002;
    let param = ConsistencyConfig::default().parameterization();
    let metric = PseudoHuber::for_dim(3 * 32 * 32);
    let grid = KarrasGrid::default().training_sigmas(1281).unwrap();
    let grid_t = grid_tensor(&grid, Kind::Float, Device::Cpu);
    let weighting = Weighting::InverseStep.bind(0.5).unwrap();
    let sampler = LognormalIndex::default();

    let mut group = c.benchmark_group("cm_core_batch64_3x32x32");
    group.throughput(Throughput::Elements(BATCH as u64));
    group.bench_function("scalings", |b| b.iter(|| param.scalings(&sigma)));
    group.bench_function("parameterize_output", |b| {
        b.iter(|| param.apply(&x, &sigma, |xin, _| xin.shallow_clone()))
    });
    group.bench_function("pseudo_huber", |b| b.iter(|| metric.distance(&x, &y)));
    group.bench_function("lognormal_pairs_n1281", |b| {
        b.iter(|| {
            let idx = sampler.sample(&grid, BATCH, Device::Cpu);
            adjacent_pairs(&grid_t, &idx)
        })
    });
    // Everything of a consistency step except the network: draw pairs, noise
    // both points with one z, parameterize both, weight the distance.
    group.bench_function("consistency_step_math", |b| {
        b.iter(|| {
            let idx = sampler.sample(&grid, BATCH, Device::Cpu);
            let (t_n, t_next) = adjacent_pairs(&grid_t, &idx);
            let z = Tensor::randn_like(&x);
            let x_next = &x + &z * cm_core::append_dims(&t_next, 4);
            let x_n = &x + &z * cm_core::append_dims(&t_n, 4);
            let online = param.apply(&x_next, &t_next, |xin, _| xin.shallow_clone());
            let target = param.apply(&x_n, &t_n, |xin, _| xin.shallow_clone());
            (weighting.weight(&t_n, &t_next) * metric.distance(&online, &target)).mean(Kind::Float)
        })
    });
    group.finish();
}

criterion_group!(benches, bench_core);
criterion_main!(benches);
