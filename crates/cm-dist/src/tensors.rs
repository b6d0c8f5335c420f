//! Tensors through a [`Communicator`]: the bucketed gradient all-reduce,
//! broadcasting state from rank 0, and the cross-rank checksum.
//!
//! Buffers go through host memory (`Vec<f32>`): a CPU tensor is copied out
//! and back, a CUDA tensor is copied to the host and back (the NCCL plan in
//! docs/scale.md would reduce on the device instead).

use tch::{Device, Kind, Tensor};

use crate::{Communicator, DistError, Result};

/// Elements per all-reduce bucket: 4 Mi `f32` (16 MiB), the order of
/// PyTorch DDP's 25 MB default. Small models go in one bucket; a large one
/// is reduced in pieces so the host buffers stay bounded.
pub const BUCKET_ELEMENTS: usize = 4 << 20;

/// Consecutive runs of `sizes` whose element counts add up to at most
/// `bucket` (a single larger entry gets a bucket of its own), as index
/// ranges.
pub fn buckets(sizes: &[usize], bucket: usize) -> Vec<std::ops::Range<usize>> {
    let mut out = Vec::new();
    let (mut start, mut total) = (0, 0);
    for (i, &n) in sizes.iter().enumerate() {
        if i > start && total + n > bucket {
            out.push(start..i);
            start = i;
            total = 0;
        }
        total += n;
    }
    if start < sizes.len() {
        out.push(start..sizes.len());
    }
    out
}

/// Sums `tensors` (gradients, any shapes, `f32` or `f64`, any device)
/// across ranks in place, flattened into buckets of at most `bucket`
/// elements. Every rank must pass tensors of the same shapes in the same
/// order. One rank: nothing to do.
pub fn all_reduce_sum(comm: &dyn Communicator, tensors: &[Tensor], bucket: usize) -> Result<()> {
    if comm.size() == 1 || tensors.is_empty() {
        return Ok(());
    }
    let _guard = tch::no_grad_guard();
    let sizes: Vec<usize> = tensors.iter().map(|t| t.numel()).collect();
    for range in buckets(&sizes, bucket.max(1)) {
        let part = &tensors[range.clone()];
        let flat = Tensor::cat(
            &part
                .iter()
                .map(|t| t.reshape([-1]).to_kind(Kind::Float))
                .collect::<Vec<_>>(),
            0,
        )
        .to_device(Device::Cpu);
        let mut host = Vec::<f32>::try_from(&flat)?;
        comm.all_reduce_sum_f32(&mut host);
        let summed = Tensor::from_slice(&host);
        let mut offset = 0i64;
        for t in part {
            let n = t.numel() as i64;
            let piece = summed
                .narrow(0, offset, n)
                .reshape(t.size())
                .to_device(t.device())
                .to_kind(t.kind());
            let mut dst = t.shallow_clone();
            dst.copy_(&piece);
            offset += n;
        }
    }
    Ok(())
}

/// Copies rank 0's values of `tensors` (named, in the same order on every
/// rank; `f32` or `f64`) into every rank's tensors, in place.
pub fn broadcast_from_root(comm: &dyn Communicator, tensors: &[(String, Tensor)]) -> Result<()> {
    if comm.size() == 1 {
        return Ok(());
    }
    let _guard = tch::no_grad_guard();
    for (name, t) in tensors {
        let host = t.reshape([-1]).to_device(Device::Cpu);
        let mut bytes: Vec<u8> = match t.kind() {
            Kind::Float => Vec::<f32>::try_from(&host)?
                .iter()
                .flat_map(|x| x.to_le_bytes())
                .collect(),
            Kind::Double => Vec::<f64>::try_from(&host)?
                .iter()
                .flat_map(|x| x.to_le_bytes())
                .collect(),
            kind => {
                return Err(DistError::Tensor(tch::TchError::Kind(format!(
                    "cannot broadcast `{name}`: dtype {kind:?} (expected f32 or f64)"
                ))))
            }
        };
        comm.broadcast_bytes(&mut bytes);
        let values = match t.kind() {
            Kind::Float => Tensor::from_slice(
                &bytes
                    .chunks_exact(4)
                    .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
                    .collect::<Vec<_>>(),
            ),
            _ => Tensor::from_slice(
                &bytes
                    .chunks_exact(8)
                    .map(|c| f64::from_le_bytes(c.try_into().expect("8-byte chunks")))
                    .collect::<Vec<_>>(),
            ),
        };
        let mut dst = t.shallow_clone();
        dst.copy_(&values.reshape(t.size()).to_device(t.device()));
    }
    Ok(())
}

/// Copies rank 0's `value` to every rank.
pub fn broadcast_u64(comm: &dyn Communicator, value: u64) -> u64 {
    let mut bytes = value.to_le_bytes();
    comm.broadcast_bytes(&mut bytes);
    u64::from_le_bytes(bytes)
}

/// A 64-bit FNV-1a hash of the names and exact bytes (as `f32`, little
/// endian) of `tensors`: equal on two ranks exactly when their values are
/// bit-identical (up to hash collisions).
pub fn checksum(tensors: &[(String, Tensor)]) -> Result<u64> {
    let _guard = tch::no_grad_guard();
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    let mut eat = |bytes: &[u8]| {
        for &b in bytes {
            h = (h ^ b as u64).wrapping_mul(0x0100_0000_01b3);
        }
    };
    for (name, t) in tensors {
        eat(name.as_bytes());
        let host = t.reshape([-1]).to_device(Device::Cpu).to_kind(Kind::Float);
        for x in Vec::<f32>::try_from(&host)? {
            eat(&x.to_le_bytes());
        }
    }
    Ok(h)
}

/// True on every rank when `hash` is the same on all ranks.
pub fn same_on_all_ranks(comm: &dyn Communicator, hash: u64) -> bool {
    let (min, max) = comm.all_reduce_min_max_u64(hash);
    min == max
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::cell::RefCell;

    /// Plays `k` ranks that hold what this one holds (sums multiply by
    /// `k`), recording every reduction's length; broadcasts overwrite with
    /// a root value that is this rank's plus one.
    struct Mirror {
        k: usize,
        lengths: RefCell<Vec<usize>>,
    }

    impl Communicator for Mirror {
        fn rank(&self) -> usize {
            1
        }
        fn size(&self) -> usize {
            self.k
        }
        fn all_reduce_sum_f32(&self, buf: &mut [f32]) {
            self.lengths.borrow_mut().push(buf.len());
            buf.iter_mut().for_each(|x| *x *= self.k as f32);
        }
        fn all_reduce_sum_f64(&self, buf: &mut [f64]) {
            buf.iter_mut().for_each(|x| *x *= self.k as f64);
        }
        fn all_reduce_min_max_u64(&self, value: u64) -> (u64, u64) {
            (value, value + 1)
        }
        fn broadcast_bytes(&self, buf: &mut [u8]) {
            // Root's f32 values: this rank's plus one.
            for c in buf.chunks_exact_mut(4) {
                let v = f32::from_le_bytes([c[0], c[1], c[2], c[3]]) + 1.0;
                c.copy_from_slice(&v.to_le_bytes());
            }
        }
        fn barrier(&self) {}
        fn abort(&self, code: i32) -> ! {
            panic!("abort {code}")
        }
        fn describe(&self) -> String {
            "mirror".into()
        }
    }

    #[test]
    fn buckets_split_runs_at_the_bound_and_isolate_large_entries() {
        assert_eq!(buckets(&[3, 3, 3], 6), vec![0..2, 2..3]);
        assert_eq!(buckets(&[10, 1, 1], 4), vec![0..1, 1..3]);
        assert_eq!(buckets(&[1, 10, 1], 4), vec![0..1, 1..2, 2..3]);
        assert_eq!(buckets(&[2, 2], 100), vec![0..2]);
        assert!(buckets(&[], 4).is_empty());
    }

    #[test]
    fn the_bucketed_all_reduce_sums_every_element_of_every_shape_in_place() {
        tch::manual_seed(3);
        let shapes: [&[i64]; 4] = [&[3, 4], &[5], &[2, 3, 2], &[7]];
        let tensors: Vec<Tensor> = shapes
            .iter()
            .map(|s| Tensor::randn(*s, (Kind::Float, Device::Cpu)))
            .collect();
        let before: Vec<Tensor> = tensors.iter().map(|t| t.copy()).collect();
        let comm = Mirror {
            k: 3,
            lengths: RefCell::new(Vec::new()),
        };
        all_reduce_sum(&comm, &tensors, 13).unwrap();
        // 12 | 5 | 12 | 7 elements with a 13-element bound: four buckets.
        assert_eq!(*comm.lengths.borrow(), vec![12, 5, 12, 7]);
        for (a, b) in tensors.iter().zip(&before) {
            assert_eq!(a.size(), b.size());
            let diff = (a - b * 3.0).abs().max().double_value(&[]);
            assert!(diff < 1e-6, "{diff}");
        }
        // One bucket when it all fits.
        let comm = Mirror {
            k: 2,
            lengths: RefCell::new(Vec::new()),
        };
        all_reduce_sum(&comm, &tensors, BUCKET_ELEMENTS).unwrap();
        assert_eq!(*comm.lengths.borrow(), vec![36]);
    }

    #[test]
    fn broadcast_overwrites_with_the_roots_values_and_checksums_see_one_bit() {
        let t = Tensor::from_slice(&[1.0f32, 2.0, 3.0, 4.0]).reshape([2, 2]);
        let named = vec![("w".to_string(), t.shallow_clone())];
        let comm = Mirror {
            k: 2,
            lengths: RefCell::new(Vec::new()),
        };
        broadcast_from_root(&comm, &named).unwrap();
        assert_eq!(
            Vec::<f32>::try_from(&t.reshape([-1])).unwrap(),
            vec![2.0, 3.0, 4.0, 5.0]
        );

        let a = checksum(&named).unwrap();
        assert_eq!(a, checksum(&[("w".to_string(), t.copy())]).unwrap());
        let nudged = t.copy();
        let _ = nudged
            .get(0)
            .get(0)
            .fill_(f64::from(f32::from_bits(2.0f32.to_bits() + 1)));
        assert_ne!(a, checksum(&[("w".to_string(), nudged)]).unwrap());
        assert_ne!(a, checksum(&[("v".to_string(), t.copy())]).unwrap());
        assert!(!same_on_all_ranks(&comm, a));
    }
}
