//! A direct 3x3 convolution (stride 1, zero padding 1) on channels-last
//! `f32` buffers, register-blocked for AVX-512: the small-batch path's
//! convolutions without im2col and without a library call.
//!
//! Why: at batch 1 the CPU preset's convolutions are GEMMs with 24 or 48
//! output channels and 49-784 rows. MKL runs those at 80-105 GFLOP/s per
//! core on this AMD EPYC (its kernels are tuned for larger blocks), and
//! im2col writes 9 copies of every input value first. Here a tile of `P`
//! output pixels by up to 48 output channels (`NV` 16-lane vectors) stays
//! in `P x NV <= 24` registers for the whole reduction over the 9 taps and
//! the input channels: per input value, one broadcast and `NV` fused
//! multiply-adds, the weights streamed from a copy packed per 16-channel
//! vector ([`DirectConv`]).
//!
//! The input is read from a zero-padded copy (`[batch, h + 2, w + 2, c]`,
//! [`pad1`]), so no tile needs a border case.

use std::ffi::c_void;

use super::{parallel, parallel_copy};

/// Output channels per weight vector.
const LANES: usize = 16;

/// The most vectors a tile spans (48 output channels), and the most
/// accumulators (`P x NV`) it keeps: 24 of the 32 vector registers, the
/// rest for the weights and the broadcast input value.
const MAX_NV: usize = 3;
const MAX_ACC: usize = 24;

/// One 64-byte-aligned vector of weights (aligned loads never split a
/// cache line).
#[derive(Clone, Copy, Debug)]
#[repr(C, align(64))]
struct Lane([f32; LANES]);

/// A 3x3 convolution's weights and bias packed for [`conv3x3_direct`]:
/// the output channels in chunks of up to [`MAX_NV`] vectors, each chunk
/// `[9 cin, NV]` vectors (rows in `(ky, kx, channel)` order, channels past
/// `cout` zero).
#[derive(Debug)]
pub(crate) struct DirectConv {
    cin: usize,
    cout: usize,
    /// `(first output channel, vectors, weights)` per chunk.
    chunks: Vec<(usize, usize, Vec<Lane>)>,
    bias: Vec<f32>,
}

impl DirectConv {
    /// From `w` (`[9 cin, cout]`, rows in `(ky, kx, channel)` order, as
    /// the GEMM path's operand) and `bias` (`cout` values).
    ///
    /// # Panics
    /// If the lengths disagree with `cin` and `cout`.
    pub(crate) fn new(w: &[f32], bias: &[f32], cin: usize, cout: usize) -> DirectConv {
        assert!(w.len() == 9 * cin * cout && bias.len() == cout && cout > 0);
        let vectors = cout.div_ceil(LANES);
        // Chunks as even as possible, each at most MAX_NV vectors: 3 + 3
        // rather than 4 + 2 (fewer tiles with one-vector accumulators).
        let count = vectors.div_ceil(MAX_NV);
        let mut chunks = Vec::with_capacity(count);
        let mut first_vec = 0;
        for i in 0..count {
            let nv = vectors * (i + 1) / count - vectors * i / count;
            let mut lanes = vec![Lane([0.0; LANES]); 9 * cin * nv];
            for r in 0..9 * cin {
                for v in 0..nv {
                    for l in 0..LANES {
                        let co = (first_vec + v) * LANES + l;
                        if co < cout {
                            lanes[r * nv + v].0[l] = w[r * cout + co];
                        }
                    }
                }
            }
            chunks.push((first_vec * LANES, nv, lanes));
            first_vec += nv;
        }
        DirectConv {
            cin,
            cout,
            chunks,
            bias: bias.to_vec(),
        }
    }
}

/// Whether [`conv3x3_direct`] runs here (the CPU has AVX-512F).
pub(crate) fn direct_available() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        std::is_x86_feature_detected!("avx512f")
    }
    #[cfg(not(target_arch = "x86_64"))]
    false
}

/// `x` (`[batch, h, w, c]`) into `out` (`[batch, h + 2, w + 2, c]`) with
/// a border of zeros.
///
/// # Panics
/// If the lengths disagree with the sizes.
pub(crate) fn pad1(x: &[f32], batch: usize, h: usize, w: usize, c: usize, out: &mut [f32]) {
    let (hp, wp) = (h + 2, w + 2);
    assert!(x.len() == batch * h * w * c && out.len() == batch * hp * wp * c);
    let row = w * c;
    // By padded rows: zeros, or a zero pixel, the input row, a zero pixel.
    parallel_copy(out, wp * c, &|offset, piece| {
        for (i, o) in piece.chunks_exact_mut(wp * c).enumerate() {
            let r = offset / (wp * c) + i;
            let (n, y) = (r / hp, r % hp);
            if y == 0 || y == hp - 1 {
                o.fill(0.0);
                continue;
            }
            let src = (n * h + y - 1) * row;
            o[..c].fill(0.0);
            o[c..c + row].copy_from_slice(&x[src..src + row]);
            o[c + row..].fill(0.0);
        }
    });
}

/// The widest tile (pixels) for `nv` vectors.
fn max_tile(nv: usize) -> usize {
    (MAX_ACC / nv).min(16)
}

/// The 3x3 convolution of `xp` (`[batch, h + 2, w + 2, cin]`, zero border:
/// [`pad1`]) with `conv`, into `out` (`[batch, h, w, cout]`): the bias
/// added when `accumulate` is false, else the convolution added to what
/// `out` holds.
///
/// # Panics
/// If the lengths disagree with the sizes, or the CPU lacks AVX-512F
/// (callers check [`direct_available`]).
pub(crate) fn conv3x3_direct(
    xp: &[f32],
    batch: usize,
    h: usize,
    w: usize,
    conv: &DirectConv,
    out: &mut [f32],
    accumulate: bool,
) {
    let (cin, cout) = (conv.cin, conv.cout);
    assert!(xp.len() == batch * (h + 2) * (w + 2) * cin && out.len() == batch * h * w * cout);
    assert!(direct_available(), "conv3x3_direct needs AVX-512F");
    // Work units: (chunk, sample, row, tile); a row's tiles as even as
    // the widest tile allows (28 = 4 x 7 at 8, not 8 + 8 + 8 + 4).
    let tiles = |nv: usize| w.div_ceil(max_tile(nv));
    let total: usize = conv.chunks.iter().map(|c| batch * h * tiles(c.1)).sum();
    let out_ptr = SendPtr(out.as_mut_ptr() as *mut c_void);
    let work = batch * h * w * cout * 9 * cin / LANES;
    parallel(work, &|part, parts| {
        let out = out_ptr;
        let (start, end) = (total * part / parts, total * (part + 1) / parts);
        let mut unit = 0;
        for &(co0, nv, ref lanes) in &conv.chunks {
            let t = tiles(nv);
            let n_units = batch * h * t;
            let lo = start.max(unit);
            let hi = end.min(unit + n_units);
            for u in lo..hi {
                let local = u - unit;
                let (row, k) = (local / t, local % t);
                let (n, y) = (row / h, row % h);
                let (x0, x1) = (w * k / t, w * (k + 1) / t);
                let p = x1 - x0;
                let x_at = ((n * (h + 2) + y) * (w + 2) + x0) * cin;
                let o_at = ((n * h + y) * w + x0) * cout + co0;
                let valid = cout - co0;
                // SAFETY: the CPU has AVX-512F (asserted above). The tile
                // reads rows y..y+3 and columns x0..x0+p+2 of sample n of
                // `xp` (inside it: y < h, x0 + p <= w, and `xp` holds
                // batch x (h+2) x (w+2) x cin values), `nv` vectors of
                // `lanes` per weight row (its length is 9 cin nv), and
                // `bias[co0..]` or `out`'s channels co0..min(co0 + 16 nv,
                // cout) of pixels x0..x0+p of row y, which it writes:
                // masked to `valid` channels, so inside `out`. Units are
                // disjoint (chunk, sample, row, tile) cells, each run by
                // one thread, so no two threads write the same value.
                unsafe {
                    tile_dispatch(
                        nv,
                        p,
                        TileArgs {
                            x: xp.as_ptr().add(x_at),
                            row_stride: (w + 2) * cin,
                            cin,
                            wts: lanes.as_ptr() as *const f32,
                            out: (out.0 as *mut f32).add(o_at),
                            pixel_stride: cout,
                            valid,
                            init: conv.bias.as_ptr().add(co0),
                            accumulate,
                        },
                    );
                }
            }
            unit += n_units;
        }
    });
}

/// A raw output pointer handed to the threads of [`parallel`], which write
/// disjoint parts of it (see [`conv3x3_direct`]).
#[derive(Clone, Copy)]
struct SendPtr(*mut c_void);
// SAFETY: the pointer is only dereferenced for disjoint writes while the
// buffer it points into is exclusively borrowed by `conv3x3_direct`.
unsafe impl Send for SendPtr {}
// SAFETY: as above.
unsafe impl Sync for SendPtr {}

/// One tile's operands (raw: the tile reads and writes through them).
struct TileArgs {
    /// The padded input at the tile's top-left window corner, channel 0.
    x: *const f32,
    /// Values per padded input row.
    row_stride: usize,
    cin: usize,
    /// The chunk's packed weights, `[9 cin, NV, 16]`.
    wts: *const f32,
    /// The output at the tile's first pixel, the chunk's first channel.
    out: *mut f32,
    /// Values per output pixel (`cout`).
    pixel_stride: usize,
    /// Output channels from the chunk's first to `cout` (masks the last
    /// vector).
    valid: usize,
    /// The bias at the chunk's first channel.
    init: *const f32,
    accumulate: bool,
}

/// [`tile`] for `nv` vectors and `p` pixels (both within the instantiated
/// ranges: `nv <= 3`, `p <= max_tile(nv)`).
///
/// # Safety
/// The CPU has AVX-512F; `a` addresses memory as [`tile`] requires.
#[cfg(target_arch = "x86_64")]
unsafe fn tile_dispatch(nv: usize, p: usize, a: TileArgs) {
    macro_rules! by_p {
        ($nv:literal; $($p:literal)*) => {
            match p {
                $($p => tile::<$nv, $p>(&a),)*
                _ => unreachable!("tile width {p} for {} vectors", $nv),
            }
        };
    }
    match nv {
        1 => by_p!(1; 1 2 3 4 5 6 7 8 9 10 11 12 13 14 15 16),
        2 => by_p!(2; 1 2 3 4 5 6 7 8 9 10 11 12),
        3 => by_p!(3; 1 2 3 4 5 6 7 8),
        _ => unreachable!("{nv} vectors per chunk"),
    }
}

#[cfg(not(target_arch = "x86_64"))]
unsafe fn tile_dispatch(_nv: usize, _p: usize, _a: TileArgs) {
    unreachable!("conv3x3_direct runs on x86_64 only")
}

/// `P` output pixels by `NV` vectors of output channels: accumulators
/// start at the bias (or the output's values), take the 9 taps x `cin`
/// input channels, and are stored once.
///
/// # Safety
/// The CPU has AVX-512F. `a.x` reads 3 rows (stride `a.row_stride`) of
/// `P + 2` pixels of `a.cin` values; `a.wts` reads `9 cin NV` 16-value
/// vectors; `a.init` reads and `a.out` reads and writes the first
/// `min(16 NV, a.valid)` values of `P` pixels (stride `a.pixel_stride`).
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
unsafe fn tile<const NV: usize, const P: usize>(a: &TileArgs) {
    use std::arch::x86_64::*;
    let masks: [__mmask16; NV] = std::array::from_fn(|v| {
        let lanes = a.valid.saturating_sub(v * LANES).min(LANES);
        ((1u32 << lanes) - 1) as __mmask16
    });
    let mut acc = [[_mm512_setzero_ps(); NV]; P];
    for (p, acc) in acc.iter_mut().enumerate() {
        for (v, acc) in acc.iter_mut().enumerate() {
            let src = if a.accumulate {
                a.out.add(p * a.pixel_stride + v * LANES) as *const f32
            } else {
                a.init.add(v * LANES)
            };
            *acc = _mm512_maskz_loadu_ps(masks[v], src);
        }
    }
    let cin = a.cin;
    for ky in 0..3 {
        for kx in 0..3 {
            let xb = a.x.add(ky * a.row_stride + kx * cin);
            let wb = a.wts.add((ky * 3 + kx) * cin * NV * LANES);
            for ci in 0..cin {
                let wr = wb.add(ci * NV * LANES);
                let wv: [__m512; NV] = std::array::from_fn(|v| _mm512_load_ps(wr.add(v * LANES)));
                for (p, acc) in acc.iter_mut().enumerate() {
                    let xv = _mm512_set1_ps(*xb.add(p * cin + ci));
                    for (acc, &wv) in acc.iter_mut().zip(&wv) {
                        *acc = _mm512_fmadd_ps(xv, wv, *acc);
                    }
                }
            }
        }
    }
    for (p, acc) in acc.iter().enumerate() {
        for (v, &acc) in acc.iter().enumerate() {
            _mm512_mask_storeu_ps(a.out.add(p * a.pixel_stride + v * LANES), masks[v], acc);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tch::{Kind, Tensor};

    /// libtorch's convolution in f64 of `[batch, h, w, cin]` values with
    /// `[9 cin, cout]` weights, as `[batch, h, w, cout]`.
    fn reference(
        x: &[f32],
        batch: usize,
        h: usize,
        w: usize,
        cin: usize,
        wts: &[f32],
        bias: &[f32],
    ) -> Vec<f64> {
        let cout = bias.len();
        let (b, h_, w_, ci, co) = (batch as i64, h as i64, w as i64, cin as i64, cout as i64);
        let xt = Tensor::from_slice(x)
            .view([b, h_, w_, ci])
            .permute([0, 3, 1, 2])
            .to_kind(Kind::Double);
        // [ky, kx, cin, cout] -> [cout, cin, ky, kx]
        let wt = Tensor::from_slice(wts)
            .view([3, 3, ci, co])
            .permute([3, 2, 0, 1])
            .to_kind(Kind::Double);
        let bt = Tensor::from_slice(bias).to_kind(Kind::Double);
        let y = xt.conv2d(&wt, Some(&bt), [1, 1], [1, 1], [1, 1], 1);
        Vec::<f64>::try_from(&y.permute([0, 2, 3, 1]).contiguous().view([-1])).unwrap()
    }

    fn values(n: usize, seed: u64) -> Vec<f32> {
        // A small LCG: deterministic values in [-1, 1).
        let mut s = seed
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        (0..n)
            .map(|_| {
                s = s
                    .wrapping_mul(6364136223846793005)
                    .wrapping_add(1442695040888963407);
                ((s >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0
            })
            .collect()
    }

    #[test]
    fn pad1_puts_zeros_around_each_sample() {
        let (batch, h, w, c) = (2, 3, 4, 5);
        let x = values(batch * h * w * c, 1);
        let mut out = vec![f32::NAN; batch * (h + 2) * (w + 2) * c];
        pad1(&x, batch, h, w, c, &mut out);
        for n in 0..batch {
            for y in 0..h + 2 {
                for xx in 0..w + 2 {
                    for ch in 0..c {
                        let got = out[((n * (h + 2) + y) * (w + 2) + xx) * c + ch];
                        let inside = (1..=h).contains(&y) && (1..=w).contains(&xx);
                        let want = if inside {
                            x[((n * h + y - 1) * w + xx - 1) * c + ch]
                        } else {
                            0.0
                        };
                        assert_eq!(
                            got, want,
                            "sample {n}, padded pixel ({y}, {xx}), channel {ch}"
                        );
                    }
                }
            }
        }
    }

    #[test]
    fn direct_conv_matches_libtorch_in_f64() {
        if !direct_available() {
            // The kernel is never called on such a CPU (the path keeps
            // im2col + GEMM there, tests/small_batch.rs).
            eprintln!("skipped: this CPU has no AVX-512F (the direct kernel does not run here)");
            return;
        }
        // Shapes: the preset's (24 / 48 channels at 28, 14, 7), one input
        // channel, output channels that leave a partial vector (8, 40) or
        // split into uneven chunks (100: 7 vectors = 2 + 2 + 3), widths
        // that are not multiples of any tile, and batches of 1-3.
        let shapes = [
            (1, 28, 28, 1, 24),
            (1, 28, 28, 24, 24),
            (2, 14, 14, 48, 48),
            (3, 7, 7, 96, 48),
            (1, 5, 13, 3, 8),
            (2, 1, 1, 7, 40),
            (1, 9, 6, 16, 100),
            (1, 4, 17, 5, 17),
            // The widest tiles: 16 pixels at one vector, 12 at two, 8 at
            // three; and one vector across both threads.
            (1, 3, 16, 5, 16),
            (1, 3, 12, 6, 32),
            (2, 4, 8, 7, 48),
            (1, 40, 40, 16, 16),
        ];
        for threads in [1, 2] {
            tch::set_num_threads(threads);
            for (i, &(batch, h, w, cin, cout)) in shapes.iter().enumerate() {
                let x = values(batch * h * w * cin, 10 + i as u64);
                let wts: Vec<f32> = values(9 * cin * cout, 20 + i as u64)
                    .iter()
                    .map(|v| v * 0.2)
                    .collect();
                let bias = values(cout, 30 + i as u64);
                let conv = DirectConv::new(&wts, &bias, cin, cout);
                let mut xp = vec![0.0; batch * (h + 2) * (w + 2) * cin];
                pad1(&x, batch, h, w, cin, &mut xp);
                let want = reference(&x, batch, h, w, cin, &wts, &bias);
                let scale = want.iter().fold(1.0f64, |m, v| m.max(v.abs()));
                let mut out = vec![f32::NAN; batch * h * w * cout];
                conv3x3_direct(&xp, batch, h, w, &conv, &mut out, false);
                // Accumulating on top of values already there (the
                // residual path): those values plus the convolution.
                let base = values(out.len(), 40 + i as u64);
                let mut acc = base.clone();
                conv3x3_direct(&xp, batch, h, w, &conv, &mut acc, true);
                for (j, &r) in want.iter().enumerate() {
                    let err = (f64::from(out[j]) - r).abs();
                    assert!(
                        err <= 1e-5 * scale,
                        "{threads} threads, shape {:?}, value {j}: {} against {r}",
                        shapes[i],
                        out[j]
                    );
                    let with_base = r - f64::from(bias[j % cout]) + f64::from(base[j]);
                    let err = (f64::from(acc[j]) - with_base).abs();
                    assert!(
                        err <= 1e-5 * scale,
                        "{threads} threads, shape {:?}, accumulated value {j}",
                        shapes[i]
                    );
                }
            }
        }
    }
}
