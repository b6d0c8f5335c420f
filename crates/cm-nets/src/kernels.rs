//! CPU kernels of the U-Net's small-batch inference path
//! ([`crate::unet`]): fused GroupNorm + affine + SiLU, 3x3 im2col,
//! 2x2 resampling and channel concatenation on channels-last `f32`
//! buffers, and slices of libtorch tensors' memory for them.
//!
//! Why they exist: at batch 1 the CPU U-Net's activations hold a few
//! thousand to 40,000 values, and a pass is about 200 libtorch operations,
//! each with its dispatch, output allocation and a pass over memory. The
//! convolutions are the only work worth a library call; everything between
//! them is fused here into one pass per normalisation (docs/benchmarks.md).
//!
//! This is the one module of the workspace that uses `unsafe` (the
//! workspace lint denies it elsewhere): to call the AVX2 / AVX-512 builds
//! of the loops after checking the CPU has them, to read and write the
//! memory of the path's own libtorch tensors ([`HostTensor`]), to run loops
//! on libtorch's OpenMP team (`GOMP_parallel`, found with `dlsym`), and to
//! read libtorch's grad mode. Each use says why it is sound.
#![allow(unsafe_code)]

use std::ffi::{c_char, c_int, c_uint, c_void};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Mutex, OnceLock};

use tch::{Device, Kind, Tensor};

mod conv;
pub(crate) use conv::{conv3x3_direct, direct_available, pad1, DirectConv};

/// Runs `$body` (a call of an `#[inline(always)]` function) compiled for
/// AVX-512F, AVX2 + FMA, or the baseline, whichever the CPU has.
macro_rules! multiversion {
    ($name:ident ( $($arg:ident : $ty:ty),* ) => $body:expr) => {
        pub(crate) fn $name($($arg: $ty),*) {
            #[cfg(target_arch = "x86_64")]
            {
                #[target_feature(enable = "avx512f,avx2,fma")]
                unsafe fn avx512($($arg: $ty),*) { $body }
                #[target_feature(enable = "avx2,fma")]
                unsafe fn avx2($($arg: $ty),*) { $body }
                if std::is_x86_feature_detected!("avx512f")
                    && std::is_x86_feature_detected!("avx2")
                    && std::is_x86_feature_detected!("fma")
                {
                    // SAFETY: the CPU has AVX-512F, AVX2 and FMA (checked just now).
                    return unsafe { avx512($($arg),*) };
                }
                if std::is_x86_feature_detected!("avx2") && std::is_x86_feature_detected!("fma") {
                    // SAFETY: the CPU has AVX2 and FMA (checked just now).
                    return unsafe { avx2($($arg),*) };
                }
            }
            $body
        }
    };
}

/// libgomp's entry points, looked up in the process (libtorch loads
/// libgomp; cm-rs does not link it itself).
struct Omp {
    parallel: unsafe extern "C" fn(extern "C" fn(*mut c_void), *mut c_void, c_uint, c_uint),
    thread_num: unsafe extern "C" fn() -> c_int,
    num_threads: unsafe extern "C" fn() -> c_int,
}

extern "C" {
    fn dlsym(handle: *mut c_void, symbol: *const c_char) -> *mut c_void;
}

fn omp() -> Option<&'static Omp> {
    static OMP: OnceLock<Option<Omp>> = OnceLock::new();
    OMP.get_or_init(|| {
        #[cfg(target_os = "linux")]
        {
            // SAFETY: dlsym with RTLD_DEFAULT (null on glibc) looks the
            // names up among the loaded objects and returns null when one
            // is missing; a non-null result is the libgomp function of
            // that name, whose C signature the field types restate
            // (GOMP_parallel(fn, data, num_threads, flags), omp_get_*()).
            unsafe {
                let find = |name: &std::ffi::CStr| dlsym(std::ptr::null_mut(), name.as_ptr());
                let (p, t, n) = (
                    find(c"GOMP_parallel"),
                    find(c"omp_get_thread_num"),
                    find(c"omp_get_num_threads"),
                );
                if p.is_null() || t.is_null() || n.is_null() {
                    return None;
                }
                Some(Omp {
                    parallel: std::mem::transmute::<
                        *mut c_void,
                        unsafe extern "C" fn(extern "C" fn(*mut c_void), *mut c_void, c_uint, c_uint),
                    >(p),
                    thread_num: std::mem::transmute::<*mut c_void, unsafe extern "C" fn() -> c_int>(t),
                    num_threads: std::mem::transmute::<*mut c_void, unsafe extern "C" fn() -> c_int>(n),
                })
            }
        }
        #[cfg(not(target_os = "linux"))]
        None
    })
    .as_ref()
}

/// What [`parallel`] hands each thread of the team.
struct Job<'a> {
    f: &'a (dyn Fn(usize, usize) + Sync),
    omp: &'static Omp,
    panicked: AtomicBool,
}

extern "C" fn run_job(data: *mut c_void) {
    // SAFETY: `data` is the `Job` that `parallel` passed to GOMP_parallel,
    // alive until GOMP_parallel returns (after every thread is done).
    let job = unsafe { &*(data as *const Job<'_>) };
    // SAFETY: inside the parallel region libgomp's queries are valid.
    let (part, parts) = unsafe { ((job.omp.thread_num)(), (job.omp.num_threads)()) };
    let run = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        (job.f)(part.max(0) as usize, parts.max(1) as usize)
    }));
    if run.is_err() {
        job.panicked.store(true, Ordering::Relaxed);
    }
}

/// Values of work below which a kernel runs on the calling thread: a
/// parallel region costs a few microseconds.
const MIN_PARALLEL_WORK: usize = 16_384;

/// Runs `f(part, parts)` for `part` in `0..parts` on libtorch's OpenMP
/// team (its threads, already spinning between operations: a second pool
/// would fight them for the cores), or `f(0, 1)` on this thread when the
/// work is small, libtorch has one thread, or libgomp is not there.
fn parallel(work: usize, f: &(dyn Fn(usize, usize) + Sync)) {
    let threads = tch::get_num_threads();
    let omp = omp().filter(|_| threads > 1 && work >= MIN_PARALLEL_WORK);
    let Some(omp) = omp else {
        f(0, 1);
        return;
    };
    let job = Job {
        f,
        omp,
        panicked: AtomicBool::new(false),
    };
    // SAFETY: GOMP_parallel runs `run_job(&job)` on each thread of a team
    // of `threads` and returns when all are done, so `job` outlives every
    // use; `run_job` catches panics (they must not unwind into C).
    unsafe {
        (omp.parallel)(
            run_job,
            &job as *const Job<'_> as *mut c_void,
            threads as c_uint,
            0,
        );
    }
    assert!(
        !job.panicked.load(Ordering::Relaxed),
        "a small-batch kernel panicked on an OpenMP thread"
    );
}

/// Splits `out` into `parts` pieces whose lengths are multiples of
/// `align` and runs `f(offset, piece)` on each in parallel ([`parallel`],
/// which takes `work` to decide whether a team is worth waking).
fn parallel_chunks<T: Send>(
    out: &mut [T],
    align: usize,
    work: usize,
    f: &(dyn Fn(usize, &mut [T]) + Sync),
) {
    let units = out.len() / align;
    let pieces = Mutex::new(Vec::new());
    let out = Mutex::new(Some(out));
    parallel(work, &|part, parts| {
        // The first thread in splits the buffer for all.
        let mine = {
            let mut pieces = pieces.lock().unwrap_or_else(|e| e.into_inner());
            if pieces.is_empty() {
                let mut rest = out
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .take()
                    .unwrap_or_default();
                let mut offset = 0;
                for p in 0..parts {
                    let len = (units * (p + 1) / parts - units * p / parts) * align;
                    let len = if p + 1 == parts { rest.len() } else { len };
                    let (head, tail) = std::mem::take(&mut rest).split_at_mut(len);
                    pieces.push(Some((offset, head)));
                    offset += len;
                    rest = tail;
                }
            }
            pieces.get_mut(part).and_then(Option::take)
        };
        if let Some((offset, piece)) = mine {
            f(offset, piece);
        }
    });
}

/// Values below which a memory-bound pass (a copy, an add) runs on the
/// calling thread: waking the team costs about as much as copying this
/// many values.
const MIN_PARALLEL_COPY: usize = 65_536;

/// [`parallel_chunks`] for a pass over `out` that costs a copy per value.
fn parallel_copy(out: &mut [f32], align: usize, f: &(dyn Fn(usize, &mut [f32]) + Sync)) {
    if out.len() < MIN_PARALLEL_COPY {
        f(0, out);
    } else {
        parallel_chunks(out, align, out.len(), f);
    }
}

/// `exp(x)` in `f32` to about 1 ulp (Cephes' `expf`: `x = n ln 2 + r`,
/// a degree-6 polynomial for `exp(r)`, `2^n` from the exponent bits),
/// written without branches or library calls so the loops around it
/// vectorise. Inputs are clamped to `[-86, 89]`: results are normal
/// floats, or infinity where `exp` overflows `f32` (above about 88.72).
#[inline(always)]
fn exp_f32(x: f32) -> f32 {
    const LOG2E: f32 = std::f32::consts::LOG2_E;
    // ln 2 split in two so that n * C1 is exact (Cephes).
    const C1: f32 = 0.693_359_4;
    const C2: f32 = -2.121_944_4e-4;
    // 1.5 * 2^23: adding and subtracting it rounds to the nearest integer.
    const ROUND: f32 = 12_582_912.0;
    let x = x.clamp(-86.0, 89.0);
    let t = x * LOG2E + ROUND;
    let n = t - ROUND;
    let r = x - n * C1 - n * C2;
    let mut p = 1.987_569_1e-4_f32;
    p = p * r + 1.398_199_9e-3;
    p = p * r + 8.333_452e-3;
    p = p * r + 4.166_579_6e-2;
    p = p * r + 1.666_666_5e-1;
    p = p * r + 5.000_000_1e-1;
    let e = p * r * r + r + 1.0;
    // n, an integer in [-124, 128], sits in the low bits of t (whose
    // exponent is that of ROUND): integer operations on the bits, not a
    // float-to-int conversion, which does not vectorise. 2^(n-1) is a
    // normal float, and the last doubling overflows to infinity only
    // where exp(x) does.
    let n_bits = t.to_bits().wrapping_sub(ROUND.to_bits());
    let half = f32::from_bits(n_bits.wrapping_add(126) << 23);
    (e * half) * 2.0
}

/// `x sigmoid(x)`.
#[inline(always)]
fn silu_f32(x: f32) -> f32 {
    x / (1.0 + exp_f32(-x))
}

/// `exp` of each value (for the tests of [`exp_f32`]).
#[cfg(test)]
fn exp_all(x: &mut [f32]) {
    for v in x {
        *v = exp_f32(*v);
    }
}

multiversion!(channel_sums(x: &[f32], c: usize, sum: &mut [f64], sumsq: &mut [f64]) => {
    channel_sums_impl(x, c, sum, sumsq)
});

/// Per-channel sums and sums of squares of one sample's `[pixels, c]`
/// values, accumulated in `f64` (a few thousand `f32` terms per channel).
#[inline(always)]
fn channel_sums_impl(x: &[f32], c: usize, sum: &mut [f64], sumsq: &mut [f64]) {
    let (sum, sumsq) = (&mut sum[..c], &mut sumsq[..c]);
    sum.fill(0.0);
    sumsq.fill(0.0);
    for px in x.chunks_exact(c) {
        for ((s, q), &v) in sum.iter_mut().zip(sumsq.iter_mut()).zip(px) {
            let v = f64::from(v);
            *s += v;
            *q += v * v;
        }
    }
}

multiversion!(affine_act(x: &[f32], out: &mut [f32], a: &[f32], b: &[f32], silu: bool) => {
    affine_act_impl(x, out, a, b, silu)
});

/// `out = act(a x + b)` over rows of `a.len()` values; `a` and `b` are
/// one channel period repeated (see [`group_norm_act`]) so the inner loop
/// runs over whole vectors.
#[inline(always)]
fn affine_act_impl(x: &[f32], out: &mut [f32], a: &[f32], b: &[f32], silu: bool) {
    let period = a.len();
    for (o, px) in out.chunks_mut(period).zip(x.chunks(period)) {
        if silu {
            for (((o, &v), &a), &b) in o.iter_mut().zip(px).zip(a).zip(b) {
                *o = silu_f32(v * a + b);
            }
        } else {
            for (((o, &v), &a), &b) in o.iter_mut().zip(px).zip(a).zip(b) {
                *o = v * a + b;
            }
        }
    }
}

/// A GroupNorm's parameters, and the per-sample modulation applied after
/// it (`(1 + scale, shift)` of a scale-shift block).
pub(crate) struct NormSpec<'a> {
    pub groups: usize,
    pub eps: f64,
    pub gamma: &'a [f32],
    pub beta: &'a [f32],
}

/// GroupNorm of `x` (`[batch, pixels, c]` channels-last), then per sample
/// `y (1 + scale) + shift` when `modulation` gives `(1 + scale, shift)`
/// (`[batch, c]` each), then SiLU when `silu`; into `out`.
///
/// Statistics as libtorch's: biased variance over each group's
/// `pixels x c / groups` values, `rstd = 1 / sqrt(var + eps)`; they are
/// accumulated in `f64` and the whole chain folds into one `a x + b` per
/// channel, so the result differs from libtorch's three operations only by
/// rounding.
pub(crate) fn group_norm_act(
    x: &[f32],
    out: &mut [f32],
    batch: usize,
    c: usize,
    norm: &NormSpec<'_>,
    modulation: Option<(&[f32], &[f32])>,
    silu: bool,
) {
    assert!(
        batch > 0 && c > 0 && x.len() % (batch * c) == 0 && out.len() == x.len(),
        "group_norm_act: {} values in, {} out, for batch {batch} x {c} channels",
        x.len(),
        out.len()
    );
    let per = x.len() / batch;
    let pixels = per / c;
    let cpg = c / norm.groups;
    let count = (pixels * cpg) as f64;
    // The coefficients repeated to a whole number of 16-lane vectors.
    let period = c * (16 / gcd(c, 16));
    // Each sample's pixels in `pieces` parts, so that a batch smaller than
    // the team still sums in parallel.
    let threads = tch::get_num_threads().max(1) as usize;
    let pieces = (2 * threads).div_ceil(batch).clamp(1, pixels.max(1));
    SCRATCH.with(|scratch| {
        let mut scratch = scratch.borrow_mut();
        let Scratch {
            partial,
            a_rep,
            b_rep,
        } = &mut *scratch;
        // Phase 1: per (sample, piece) channel sums and sums of squares.
        partial.clear();
        partial.resize(batch * pieces * 2 * c, 0.0);
        parallel_chunks(partial, 2 * c, x.len(), &|offset, sums| {
            for (i, unit) in sums.chunks_exact_mut(2 * c).enumerate() {
                let u = offset / (2 * c) + i;
                let (n, j) = (u / pieces, u % pieces);
                let (lo, hi) = (pixels * j / pieces, pixels * (j + 1) / pieces);
                let xs = &x[n * per + lo * c..n * per + hi * c];
                let (sum, sumsq) = unit.split_at_mut(c);
                channel_sums(xs, c, sum, sumsq);
            }
        });
        // Phase 2: per sample and group, the statistics, folded with the
        // affine and the modulation into one `a x + b` per channel,
        // repeated over a period (pieces start at whole pixels, so at
        // channel 0 of the pattern).
        a_rep.resize(batch * period, 0.0);
        b_rep.resize(batch * period, 0.0);
        for n in 0..batch {
            let units = &partial[n * pieces * 2 * c..(n + 1) * pieces * 2 * c];
            for g in 0..norm.groups {
                let range = g * cpg..(g + 1) * cpg;
                let (mut s, mut q) = (0.0, 0.0);
                for unit in units.chunks_exact(2 * c) {
                    s += unit[range.clone()].iter().sum::<f64>();
                    q += unit[c + range.start..c + range.end].iter().sum::<f64>();
                }
                let mean = s / count;
                let var = (q / count - mean * mean).max(0.0);
                let rstd = 1.0 / (var + norm.eps).sqrt();
                for ch in range {
                    let (s1, shift) = match modulation {
                        Some((s1, shift)) => {
                            (f64::from(s1[n * c + ch]), f64::from(shift[n * c + ch]))
                        }
                        None => (1.0, 0.0),
                    };
                    let gain = f64::from(norm.gamma[ch]) * rstd * s1;
                    let bias = (f64::from(norm.beta[ch]) * s1 + shift) - mean * gain;
                    for rep in (n * period + ch..(n + 1) * period).step_by(c) {
                        a_rep[rep] = gain as f32;
                        b_rep[rep] = bias as f32;
                    }
                }
            }
        }
        // Phase 3: the pass over the values, split at whole pixels.
        let (a_rep, b_rep) = (&*a_rep, &*b_rep);
        parallel_chunks(out, c, x.len(), &|offset, piece| {
            let mut at = offset;
            let end = offset + piece.len();
            while at < end {
                let n = at / per;
                let stop = end.min((n + 1) * per);
                let coef = n * period..(n + 1) * period;
                affine_act(
                    &x[at..stop],
                    &mut piece[at - offset..stop - offset],
                    &a_rep[coef.clone()],
                    &b_rep[coef],
                    silu,
                );
                at = stop;
            }
        });
    });
}

/// [`group_norm_act`]'s small buffers, kept per thread.
#[derive(Default)]
struct Scratch {
    /// `[batch, pieces, 2, c]`: sums, then sums of squares.
    partial: Vec<f64>,
    a_rep: Vec<f32>,
    b_rep: Vec<f32>,
}

thread_local! {
    static SCRATCH: std::cell::RefCell<Scratch> = std::cell::RefCell::new(Scratch::default());
}

/// Whether libtorch records operations for autograd on this thread (no
/// `no_grad` guard in force).
pub(crate) fn grad_mode_enabled() -> bool {
    // SAFETY: `at_grad_set_enabled` sets the thread's grad mode and
    // returns the previous one, catching C++ exceptions (it raises none);
    // the second call puts the mode back as it was.
    unsafe {
        let previous = torch_sys::at_grad_set_enabled(0);
        torch_sys::at_grad_set_enabled(previous);
        previous != 0
    }
}

fn gcd(a: usize, b: usize) -> usize {
    if b == 0 {
        a
    } else {
        gcd(b, a % b)
    }
}

/// A contiguous `f32` CPU tensor whose values Rust reads and writes as
/// slices. Checked once when made; the handle is only lent out as
/// `&Tensor`, so it cannot be resized or re-pointed (`set_data`) through
/// this type.
pub(crate) struct HostTensor {
    t: Tensor,
    len: usize,
}

impl HostTensor {
    /// # Panics
    /// If `t` is not a contiguous f32 CPU tensor (the small-batch path
    /// makes all its tensors so).
    pub(crate) fn new(t: Tensor) -> HostTensor {
        assert!(
            t.kind() == Kind::Float && t.device() == Device::Cpu && t.is_contiguous(),
            "small-batch path: a contiguous f32 CPU tensor was expected"
        );
        let len = t.numel();
        HostTensor { t, len }
    }

    /// The tensor (for libtorch operations and views).
    pub(crate) fn tensor(&self) -> &Tensor {
        &self.t
    }

    /// The handle back (for the caller, or the pool).
    pub(crate) fn into_tensor(self) -> Tensor {
        self.t
    }

    pub(crate) fn len(&self) -> usize {
        self.len
    }

    pub(crate) fn slice(&self) -> &[f32] {
        if self.len == 0 {
            return &[];
        }
        // SAFETY: the tensor is a contiguous f32 CPU tensor of `len`
        // values (checked in `new`; this type never resizes it), so its
        // data pointer addresses `len` initialised, aligned f32s, and the
        // borrow of `self` keeps the storage alive. The small-batch path
        // writes only to tensors it made and shares with nothing; one that
        // views the caller's input (a channels-last or 1-channel `x`) is
        // only read, while the caller's call is in progress.
        unsafe { std::slice::from_raw_parts(self.t.data_ptr() as *const f32, self.len) }
    }

    pub(crate) fn slice_mut(&mut self) -> &mut [f32] {
        if self.len == 0 {
            return &mut [];
        }
        // SAFETY: as in `slice`; the path takes mutable slices only of
        // tensors it made and shares with nothing, and the exclusive borrow
        // of `self` makes this slice the only access while it lives.
        unsafe { std::slice::from_raw_parts_mut(self.t.data_ptr() as *mut f32, self.len) }
    }
}

/// SiLU in place (for the tests; the path fuses it into [`group_norm_act`]).
#[cfg(test)]
fn silu_all(x: &mut [f32]) {
    for v in x {
        *v = silu_f32(*v);
    }
}

/// 3x3, stride 1, zero padding 1 patches of `x` (`[batch, h, w, c]`) as
/// rows of `out` (`[batch h w, 9 c]`, column `(ky 3 + kx) c + channel`).
pub(crate) fn im2col3x3(x: &[f32], batch: usize, h: usize, w: usize, c: usize, out: &mut [f32]) {
    let row = 9 * c;
    let out = &mut out[..batch * h * w * row];
    parallel_chunks(out, row, out.len(), &|offset, piece| {
        let first = offset / row;
        for (i, o) in piece.chunks_exact_mut(row).enumerate() {
            let px = first + i;
            let (n, y, xx) = (px / (h * w), px / w % h, px % w);
            let img = &x[n * h * w * c..(n + 1) * h * w * c];
            // Per kernel row, the three taps are three neighbouring pixels:
            // one copy of 3c values inside the image, zeros at its edges.
            for ky in 0..3 {
                let dst = &mut o[ky * 3 * c..(ky + 1) * 3 * c];
                let sy = y + ky;
                if sy == 0 || sy > h {
                    dst.fill(0.0);
                    continue;
                }
                let src_row = &img[(sy - 1) * w * c..sy * w * c];
                let (lo, hi) = (xx.saturating_sub(1), (xx + 2).min(w));
                let skip = if xx == 0 { c } else { 0 };
                dst[..skip].fill(0.0);
                let len = (hi - lo) * c;
                dst[skip..skip + len].copy_from_slice(&src_row[lo * c..hi * c]);
                dst[skip + len..].fill(0.0);
            }
        }
    });
}

/// 2x2 average pooling, stride 2 (`[batch, h, w, c]` -> `[batch, h/2,
/// w/2, c]`), summed in libtorch's order (row by row) and divided by 4.
pub(crate) fn avg_pool2(x: &[f32], batch: usize, h: usize, w: usize, c: usize, out: &mut [f32]) {
    let (ho, wo) = (h / 2, w / 2);
    let out = &mut out[..batch * ho * wo * c];
    parallel_copy(out, c, &|offset, piece| {
        for (i, o) in piece.chunks_exact_mut(c).enumerate() {
            let px = offset / c + i;
            let (n, y, xx) = (px / (ho * wo), px / wo % ho, px % wo);
            let at = |dy: usize, dx: usize| {
                let at = ((n * h + 2 * y + dy) * w + 2 * xx + dx) * c;
                &x[at..at + c]
            };
            let (a, b, d, e) = (at(0, 0), at(0, 1), at(1, 0), at(1, 1));
            for ch in 0..c {
                o[ch] = (a[ch] + b[ch] + d[ch] + e[ch]) / 4.0;
            }
        }
    });
}

/// Nearest-neighbour 2x up-sampling (`[batch, h, w, c]` -> `[batch, 2h,
/// 2w, c]`).
pub(crate) fn upsample2(x: &[f32], batch: usize, h: usize, w: usize, c: usize, out: &mut [f32]) {
    let (ho, wo) = (2 * h, 2 * w);
    let out = &mut out[..batch * ho * wo * c];
    parallel_copy(out, c, &|offset, piece| {
        for (i, o) in piece.chunks_exact_mut(c).enumerate() {
            let px = offset / c + i;
            let (n, y, xx) = (px / (ho * wo), px / wo % ho, px % wo);
            let at = ((n * h + y / 2) * w + xx / 2) * c;
            o.copy_from_slice(&x[at..at + c]);
        }
    });
}

/// Channel concatenation of `[pixels, ca]` and `[pixels, cb]` into
/// `[pixels, ca + cb]`.
pub(crate) fn cat_channels(a: &[f32], ca: usize, b: &[f32], cb: usize, out: &mut [f32]) {
    let c = ca + cb;
    assert!(a.len() / ca == out.len() / c && b.len() / cb == out.len() / c);
    parallel_copy(out, c, &|offset, piece| {
        let first = offset / c;
        for (i, o) in piece.chunks_exact_mut(c).enumerate() {
            let px = first + i;
            o[..ca].copy_from_slice(&a[px * ca..(px + 1) * ca]);
            o[ca..].copy_from_slice(&b[px * cb..(px + 1) * cb]);
        }
    });
}

/// `out[r] = bias` for every row of `out` (`[rows, bias.len()]`).
pub(crate) fn fill_rows(out: &mut [f32], bias: &[f32]) {
    parallel_copy(out, bias.len(), &|_, piece| {
        for o in piece.chunks_exact_mut(bias.len()) {
            o.copy_from_slice(bias);
        }
    });
}

/// `out += x`, value by value.
pub(crate) fn add_in_place(out: &mut [f32], x: &[f32]) {
    assert_eq!(out.len(), x.len());
    parallel_copy(out, 16, &|offset, piece| {
        for (o, &x) in piece.iter_mut().zip(&x[offset..]) {
            *o += x;
        }
    });
}

/// `out[r] += bias` for every row of `out` (`[rows, bias.len()]`).
pub(crate) fn add_bias_rows(out: &mut [f32], bias: &[f32]) {
    parallel_copy(out, bias.len(), &|_, piece| {
        for o in piece.chunks_exact_mut(bias.len()) {
            for (o, &b) in o.iter_mut().zip(bias) {
                *o += b;
            }
        }
    });
}

/// `out *= k`, value by value.
pub(crate) fn scale_in_place(out: &mut [f32], k: f32) {
    parallel_copy(out, 16, &|_, piece| {
        for o in piece.iter_mut() {
            *o *= k;
        }
    });
}

/// `out[r] = x[r] + bias` for every row (`[rows, bias.len()]`).
pub(crate) fn add_rows(x: &[f32], bias: &[f32], out: &mut [f32]) {
    let c = bias.len();
    assert_eq!(out.len(), x.len());
    parallel_copy(out, c, &|offset, piece| {
        for (o, x) in piece.chunks_exact_mut(c).zip(x[offset..].chunks_exact(c)) {
            for ((o, &x), &b) in o.iter_mut().zip(x).zip(bias) {
                *o = x + b;
            }
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exp_matches_std_to_2_ulp() {
        let mut xs: Vec<f32> = (-8600..=8870).map(|i| i as f32 * 0.01).collect();
        xs.extend([-1e-7, 1e-7, 0.0, 0.346_573_6, -0.346_573_6]);
        let mut got = xs.clone();
        exp_all(&mut got);
        for (&x, &g) in xs.iter().zip(&got) {
            let want = (x as f64).exp();
            if want > f32::MAX as f64 {
                assert_eq!(g, f32::INFINITY, "exp({x})");
                continue;
            }
            let ulp = (want as f32).abs() * f32::EPSILON;
            assert!(
                ((g as f64) - want).abs() <= 2.0 * ulp as f64,
                "exp({x}) = {g}, want {want}"
            );
        }
    }

    #[test]
    fn silu_matches_f64_and_saturates() {
        let xs: Vec<f32> = (-2000..=2000).map(|i| i as f32 * 0.05).collect();
        let mut got = xs.clone();
        silu_all(&mut got);
        for (&x, &g) in xs.iter().zip(&got) {
            let x64 = x as f64;
            let want = x64 / (1.0 + (-x64).exp());
            assert!(
                ((g as f64) - want).abs() <= 4e-7 * want.abs().max(1e-3),
                "silu({x}) = {g}, want {want}"
            );
        }
        let mut big = [-1e4f32, 1e4, f32::MAX, -f32::MAX];
        silu_all(&mut big);
        assert_eq!(big[1], 1e4);
        assert!(big[0].abs() < 1e-30 && big[3].abs() < 1e-30 && big[2] == f32::MAX);
    }

    /// GroupNorm + modulation + SiLU against a direct f64 computation.
    #[test]
    fn group_norm_act_matches_reference() {
        // Small (one thread), then large enough to split across threads
        // inside a sample, at a pixel that does not start a 16-lane
        // coefficient period (12 channels: 4 pixels; 1,003 per sample).
        for (threads, (batch, pixels, c, groups)) in [
            (1, (2, 13, 12, 3)),
            (2, (3, 1003, 12, 3)),
            // Batch 1 (4 pieces at 2 threads), and pieces clamped to 2 pixels.
            (2, (1, 1501, 12, 4)),
            (2, (1, 2, 12, 3)),
        ] {
            tch::set_num_threads(threads);
            check_group_norm_act(batch, pixels, c, groups);
        }
    }

    fn check_group_norm_act(batch: usize, pixels: usize, c: usize, groups: usize) {
        let x: Vec<f32> = (0..batch * pixels * c)
            .map(|i| ((i * 7919 % 1009) as f32 / 1009.0 - 0.3) * 3.0 + 1.5)
            .collect();
        let gamma: Vec<f32> = (0..c).map(|i| 0.5 + i as f32 * 0.1).collect();
        let beta: Vec<f32> = (0..c).map(|i| -0.2 + i as f32 * 0.05).collect();
        let s1: Vec<f32> = (0..batch * c).map(|i| 1.0 + i as f32 * 0.03).collect();
        let shift: Vec<f32> = (0..batch * c).map(|i| 0.1 - i as f32 * 0.02).collect();
        let norm = NormSpec {
            groups,
            eps: 1e-5,
            gamma: &gamma,
            beta: &beta,
        };
        let mut out = vec![0f32; x.len()];
        group_norm_act(&x, &mut out, batch, c, &norm, Some((&s1, &shift)), true);
        let cpg = c / groups;
        for n in 0..batch {
            for g in 0..groups {
                let vals: Vec<f64> = (0..pixels)
                    .flat_map(|p| (g * cpg..(g + 1) * cpg).map(move |ch| (p, ch)))
                    .map(|(p, ch)| x[(n * pixels + p) * c + ch] as f64)
                    .collect();
                let mean = vals.iter().sum::<f64>() / vals.len() as f64;
                let var = vals.iter().map(|v| (v - mean).powi(2)).sum::<f64>() / vals.len() as f64;
                for p in 0..pixels {
                    for ch in g * cpg..(g + 1) * cpg {
                        let i = (n * pixels + p) * c + ch;
                        let y = (x[i] as f64 - mean) / (var + 1e-5).sqrt() * gamma[ch] as f64
                            + beta[ch] as f64;
                        let y = y * s1[n * c + ch] as f64 + shift[n * c + ch] as f64;
                        let want = y / (1.0 + (-y).exp());
                        assert!(
                            (out[i] as f64 - want).abs() < 2e-6,
                            "n {n} p {p} ch {ch}: {} vs {want}",
                            out[i]
                        );
                    }
                }
            }
        }
    }

    #[test]
    fn im2col_pool_upsample_cat_match_index_formulas() {
        let (b, h, w, c) = (2, 4, 6, 3);
        let x: Vec<f32> = (0..b * h * w * c).map(|i| i as f32).collect();
        let at = |n: usize, y: usize, xx: usize, ch: usize| x[((n * h + y) * w + xx) * c + ch];
        let mut cols = vec![f32::NAN; b * h * w * 9 * c];
        im2col3x3(&x, b, h, w, c, &mut cols);
        for n in 0..b {
            for y in 0..h {
                for xx in 0..w {
                    for ky in 0..3i64 {
                        for kx in 0..3i64 {
                            for ch in 0..c {
                                let (sy, sx) = (y as i64 + ky - 1, xx as i64 + kx - 1);
                                let want = if sy < 0 || sx < 0 || sy >= h as i64 || sx >= w as i64 {
                                    0.0
                                } else {
                                    at(n, sy as usize, sx as usize, ch)
                                };
                                let col = (ky as usize * 3 + kx as usize) * c + ch;
                                assert_eq!(cols[((n * h + y) * w + xx) * 9 * c + col], want);
                            }
                        }
                    }
                }
            }
        }
        let mut pooled = vec![0f32; b * h * w * c / 4];
        avg_pool2(&x, b, h, w, c, &mut pooled);
        let mut up = vec![0f32; b * h * w * c * 4];
        upsample2(&x, b, h, w, c, &mut up);
        for n in 0..b {
            for ch in 0..c {
                for y in 0..h / 2 {
                    for xx in 0..w / 2 {
                        let want = (at(n, 2 * y, 2 * xx, ch)
                            + at(n, 2 * y, 2 * xx + 1, ch)
                            + at(n, 2 * y + 1, 2 * xx, ch)
                            + at(n, 2 * y + 1, 2 * xx + 1, ch))
                            / 4.0;
                        assert_eq!(pooled[((n * h / 2 + y) * w / 2 + xx) * c + ch], want);
                    }
                }
                for y in 0..2 * h {
                    for xx in 0..2 * w {
                        assert_eq!(
                            up[((n * 2 * h + y) * 2 * w + xx) * c + ch],
                            at(n, y / 2, xx / 2, ch)
                        );
                    }
                }
            }
        }
        let other: Vec<f32> = (0..b * h * w * 2).map(|i| -(i as f32)).collect();
        let mut cat = vec![0f32; b * h * w * (c + 2)];
        cat_channels(&x, c, &other, 2, &mut cat);
        for p in 0..b * h * w {
            assert_eq!(&cat[p * (c + 2)..p * (c + 2) + c], &x[p * c..(p + 1) * c]);
            assert_eq!(
                &cat[p * (c + 2) + c..(p + 1) * (c + 2)],
                &other[p * 2..(p + 1) * 2]
            );
        }
    }
}
