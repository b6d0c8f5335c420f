//! Criterion benchmarks of the CPU presets (`toy-mlp`, `fmnist-unet`,
//! `fmnist-dit`): forward at batch 1 and 64 without autograd, and forward +
//! backward at batch 64 (a training step without the optimizer update), with
//! all cores; the U-Net also with channels-last tensors and with one thread.
//!
//! `cargo xtask bench -- -p cm-nets`; reports in `target/criterion`.

use cm_core::Conditioning;
use std::time::Duration;

use cm_nets::{Model, NetConfig};
use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use tch::{Device, Kind, Tensor};

fn inputs(model: &Model, batch: i64) -> (Tensor, Tensor) {
    let mut shape = vec![batch];
    shape.extend(model.config().sample_shape());
    (
        Tensor::randn(shape, (Kind::Float, Device::Cpu)),
        Tensor::randn([batch], (Kind::Float, Device::Cpu)),
    )
}

/// Rewrites a 4-D tensor with NHWC strides (channels-last); libtorch picks
/// the memory format of a convolution from its operands' strides.
fn channels_last(t: &Tensor) -> Tensor {
    if t.dim() == 4 {
        t.permute([0, 2, 3, 1]).contiguous().permute([0, 3, 1, 2])
    } else {
        t.shallow_clone()
    }
}

fn to_channels_last(model: &Model) {
    tch::no_grad(|| {
        for mut v in model.var_store().trainable_variables() {
            if v.dim() == 4 {
                let cl = channels_last(&v);
                v.set_data(&cl);
            }
        }
    });
}

fn bench_preset(c: &mut Criterion, name: &str, variant: &str, threads: i32, cl: bool) {
    tch::set_num_threads(threads);
    tch::manual_seed(0);
    let model = Model::new(NetConfig::preset(name).expect("known preset"), Device::Cpu).unwrap();
    // Random weights everywhere, so zero-initialised layers cost what they will in training.
    tch::no_grad(|| {
        for mut v in model.var_store().trainable_variables() {
            let _ = v.g_add_(&(v.randn_like() * 0.02));
        }
    });
    if cl {
        to_channels_last(&model);
    }
    let mut group = c.benchmark_group(format!("{name}{variant}"));
    group
        .sample_size(10)
        .warm_up_time(Duration::from_secs(2))
        .measurement_time(Duration::from_secs(6));
    for batch in [1i64, 64] {
        let (x, s) = inputs(&model, batch);
        let x = if cl { channels_last(&x) } else { x };
        group.throughput(Throughput::Elements(batch as u64));
        group.bench_with_input(
            BenchmarkId::new("forward_no_grad", batch),
            &batch,
            |b, _| {
                b.iter(|| {
                    let _guard = tch::no_grad_guard();
                    model.forward_t(&x, &s, Conditioning::none(), false)
                })
            },
        );
        // A U-Net on the CPU takes the small-batch path above (batch 64
        // too where the direct convolution runs); the same pass through
        // libtorch's operations, for comparison.
        if name.contains("unet") {
            group.bench_with_input(
                BenchmarkId::new("forward_no_grad_libtorch", batch),
                &batch,
                |b, _| {
                    cm_nets::unet::small_batch::set_enabled(false);
                    b.iter(|| {
                        let _guard = tch::no_grad_guard();
                        model.forward_t(&x, &s, Conditioning::none(), false)
                    });
                    cm_nets::unet::small_batch::set_enabled(true);
                },
            );
        }
    }
    let (x, s) = inputs(&model, 64);
    let x = if cl { channels_last(&x) } else { x };
    group.throughput(Throughput::Elements(64));
    group.bench_function(BenchmarkId::new("forward_backward", 64), |b| {
        b.iter(|| {
            let loss = model
                .forward_t(&x, &s, Conditioning::none(), true)
                .square()
                .mean(Kind::Float);
            loss.backward();
            for mut v in model.var_store().trainable_variables() {
                v.zero_grad();
            }
        })
    });
    group.finish();
}

fn bench_nets(c: &mut Criterion) {
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get() as i32);
    bench_preset(c, "toy-mlp", "", cores, false);
    bench_preset(c, "fmnist-unet", "", cores, false);
    bench_preset(c, "fmnist-unet", "/channels_last", cores, true);
    bench_preset(c, "fmnist-unet", "/1_thread", 1, false);
    bench_preset(c, "fmnist-dit", "", cores, false);
}

/// Dropout on the U-Net's largest activation (batch 64, 24 x 28 x 28,
/// channels-last): libtorch's `bernoulli_` mask against cm-nets' hashed
/// mask (`layers::dropout`).
fn bench_dropout(c: &mut Criterion) {
    tch::set_num_threads(2);
    let x = channels_last(&Tensor::randn([64, 24, 28, 28], (Kind::Float, Device::Cpu)));
    let mut group = c.benchmark_group("dropout");
    group
        .sample_size(20)
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(3))
        .throughput(Throughput::Elements(x.numel() as u64));
    group.bench_function("libtorch_bernoulli", |b| b.iter(|| x.dropout(0.1, true)));
    group.bench_function("hashed", |b| {
        b.iter(|| cm_nets::layers::dropout(&x, 0.1, true))
    });
    group.bench_function("mask_only", |b| {
        b.iter(|| cm_nets::layers::dropout_mask(x.numel(), 0.1, 7))
    });
    group.finish();
}

criterion_group!(benches, bench_nets, bench_dropout);
criterion_main!(benches);
