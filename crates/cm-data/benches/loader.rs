//! Criterion benchmark of the batch loader's batch assembly at batch 64:
//! gather, scale to [-1, 1] and build the tensor, for 1x28x28 images (60,000,
//! Fashion-MNIST sized; plain and with flip + 28->32 padding) and 3x32x32
//! images (50,000, CIFAR-10 sized; with flip), plus the first batch of an
//! epoch, which also draws the epoch's permutation. Synthetic pixels, so no
//! download is needed.
//!
//! `cargo xtask bench -- -p cm-data`; reports in `target/criterion`.

use std::hint::black_box;
use std::sync::Arc;

use cm_data::{BatchLoader, ImageSplit, LoaderConfig};
use criterion::{criterion_group, criterion_main, Criterion, Throughput};

const BATCH: usize = 64;

fn split(n: usize, shape: [usize; 3]) -> Arc<ImageSplit> {
    let per: usize = shape.iter().product();
    let mut state = 0x2545_f491_4f6c_dd1du64;
    let pixels = (0..n * per)
        .map(|_| {
            // xorshift64: cheap deterministic filler.
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            (state >> 56) as u8
        })
        .collect();
    let labels = (0..n as i64).map(|i| i % 10).collect();
    Arc::new(ImageSplit::new(pixels, Some(labels), shape).expect("valid split"))
}

fn bench_loader(c: &mut Criterion) {
    // Batch assembly is single-threaded Rust; the one libtorch call (the
    // tensor's creation, a zero-fill plus memcpy) runs on one thread too, so
    // the figure does not hinge on waking a thread pool on a busy machine
    // (with the default pool, a loaded 2-core box measured milliseconds).
    tch::set_num_threads(1);
    let mut group = c.benchmark_group("loader_batch64");
    group.throughput(Throughput::Elements(BATCH as u64));
    let cases = [
        (
            "1x28x28",
            split(60_000, [1, 28, 28]),
            LoaderConfig::new(BATCH, 0),
        ),
        (
            "1x28x28_flip_pad32",
            split(60_000, [1, 28, 28]),
            LoaderConfig::new(BATCH, 0).with_hflip(true).with_pad(2),
        ),
        (
            "3x32x32_flip",
            split(50_000, [3, 32, 32]),
            LoaderConfig::new(BATCH, 0).with_hflip(true),
        ),
    ];
    for (name, data, config) in cases {
        let loader = BatchLoader::new(data, config).expect("valid loader");
        let bpe = loader.batches_per_epoch();
        // Steps within one epoch: the epoch's permutation is computed once
        // (what training sees), then every batch is assembled from scratch.
        let mut step = 0u64;
        group.bench_function(name, |b| {
            b.iter(|| {
                step = (step + 1) % bpe;
                black_box(loader.batch(step).expect("batch"))
            })
        });
    }
    // The first batch of an epoch also draws the epoch's permutation.
    let loader = BatchLoader::new(split(60_000, [1, 28, 28]), LoaderConfig::new(BATCH, 0))
        .expect("valid loader");
    let bpe = loader.batches_per_epoch();
    let mut epoch = 0u64;
    group.bench_function("1x28x28_new_epoch_permutation", |b| {
        b.iter(|| {
            epoch += 1;
            black_box(loader.batch(epoch * bpe).expect("batch"))
        })
    });
    group.finish();
}

criterion_group!(benches, bench_loader);
criterion_main!(benches);
