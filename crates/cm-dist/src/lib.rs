//! cm-dist: data-parallel communication for cm-rs training.
//!
//! Training in several processes (ranks) is data parallelism as in
//! openai's consistency-models code (MPI + `torch.distributed`): every rank
//! holds the whole model, computes the gradient of its shard of the global
//! batch, and the gradients are summed across ranks before the optimizer
//! step, so optimizer state and EMA stay identical everywhere. This crate is
//! the seam the training engine (cm-train) talks to:
//!
//! - [`Communicator`]: the few collectives the engine needs (sum of `f32`
//!   and `f64` buffers, min / max of a `u64`, byte broadcast, barrier,
//!   abort), on host memory.
//! - [`SingleProcess`]: the one-rank communicator (every collective is the
//!   identity): what a plain `cm` run uses.
//! - [`MpiWorld`] (feature `mpi`): `MPI_COMM_WORLD` through rsmpi.
//! - [`tensors`]: what the engine does with them: a bucketed all-reduce of
//!   gradient tensors, broadcasting named tensors from rank 0, and a
//!   byte-exact checksum of a model's variables for the cross-rank check.
//!
//! The communicator of a process is a per-process fact (MPI's world is), so
//! it lives in [`world`], set once by the binary with [`set_world`] (or
//! [`init_from_env`]) and read by the engine; a library or test that never
//! sets it trains as one process.

#[cfg(feature = "mpi")]
mod mpi_world;
pub mod tensors;

use std::cell::RefCell;
use std::rc::Rc;

#[cfg(feature = "mpi")]
pub use mpi_world::MpiWorld;

/// Errors of cm-dist.
#[derive(Debug, thiserror::Error)]
pub enum DistError {
    /// The process was started by an MPI launcher but this build has no MPI.
    #[error("{0}")]
    NoMpi(String),
    /// MPI could not be initialised.
    #[error("MPI initialisation failed: {0}")]
    Init(String),
    /// A tensor could not be moved through a host buffer.
    #[error("{0}")]
    Tensor(#[from] tch::TchError),
}

/// Result type of cm-dist.
pub type Result<T> = std::result::Result<T, DistError>;

/// The collectives data-parallel training needs. Every rank must call the
/// same collectives in the same order with buffers of the same length; a
/// rank that does not (an error on one rank only) must [`abort`] rather
/// than return, or the others wait forever.
///
/// [`abort`]: Communicator::abort
pub trait Communicator {
    /// This process's rank, `0..size`.
    fn rank(&self) -> usize;
    /// The number of ranks.
    fn size(&self) -> usize;
    /// Sums `buf` element-wise across ranks, in place on every rank.
    fn all_reduce_sum_f32(&self, buf: &mut [f32]);
    /// Sums `buf` element-wise across ranks, in place on every rank.
    fn all_reduce_sum_f64(&self, buf: &mut [f64]);
    /// `(min, max)` of `value` across ranks.
    fn all_reduce_min_max_u64(&self, value: u64) -> (u64, u64);
    /// Copies rank 0's `buf` into every rank's `buf`.
    fn broadcast_bytes(&self, buf: &mut [u8]);
    /// Waits until every rank has called it.
    fn barrier(&self);
    /// Ends every rank of the job with `code` (MPI_Abort): the way out of an
    /// error that only some ranks saw.
    fn abort(&self, code: i32) -> !;
    /// The communicator in words, for reports ("MPI (Open MPI v4.1.4), 2
    /// ranks").
    fn describe(&self) -> String;

    /// True on every rank when `flag` is true on any (the stop flag: every
    /// rank stops at the same step).
    fn any(&self, flag: bool) -> bool {
        if self.size() == 1 {
            return flag;
        }
        let mut buf = [flag as u8 as f64];
        self.all_reduce_sum_f64(&mut buf);
        buf[0] > 0.0
    }
}

/// One process: every collective is the identity.
#[derive(Debug, Default, Clone, Copy)]
pub struct SingleProcess;

impl Communicator for SingleProcess {
    fn rank(&self) -> usize {
        0
    }
    fn size(&self) -> usize {
        1
    }
    fn all_reduce_sum_f32(&self, _buf: &mut [f32]) {}
    fn all_reduce_sum_f64(&self, _buf: &mut [f64]) {}
    fn all_reduce_min_max_u64(&self, value: u64) -> (u64, u64) {
        (value, value)
    }
    fn broadcast_bytes(&self, _buf: &mut [u8]) {}
    fn barrier(&self) {}
    fn abort(&self, code: i32) -> ! {
        std::process::exit(code)
    }
    fn describe(&self) -> String {
        "1 process".into()
    }
}

thread_local! {
    // The training loop runs on the thread that set the world (MPI is
    // initialised with MPI_THREAD_SINGLE), so the communicator is
    // per-thread; other threads (tests) see one process.
    static WORLD: RefCell<Option<Rc<dyn Communicator>>> = const { RefCell::new(None) };
}

/// This thread's communicator: the one [`set_world`] installed, else
/// [`SingleProcess`].
pub fn world() -> Rc<dyn Communicator> {
    WORLD.with(|w| {
        w.borrow()
            .clone()
            .unwrap_or_else(|| Rc::new(SingleProcess) as Rc<dyn Communicator>)
    })
}

/// Installs `comm` as this thread's communicator.
pub fn set_world(comm: Rc<dyn Communicator>) {
    WORLD.with(|w| *w.borrow_mut() = Some(comm));
}

/// Removes this thread's communicator (and with it, for MPI, the last
/// reference to the MPI universe, which finalises MPI). Call before the
/// process exits: Open MPI reports a rank that exits without
/// `MPI_Finalize` as failed.
pub fn finalize() {
    WORLD.with(|w| w.borrow_mut().take());
}

/// The environment variables MPI launchers set in every rank: Open MPI's
/// `mpirun`, then PMI / PMIx launchers (MPICH's hydra, Slurm's `srun`).
const LAUNCHER_SIZE_VARS: &[&str] = &["OMPI_COMM_WORLD_SIZE", "PMI_SIZE", "PMIX_SIZE"];

/// The world size an MPI launcher announced in the environment, if the
/// process was started by one.
pub fn launcher_size() -> Option<usize> {
    LAUNCHER_SIZE_VARS
        .iter()
        .find_map(|v| std::env::var(v).ok()?.parse().ok())
}

/// Sets up this process's world: under an MPI launcher (see
/// [`launcher_size`]) initialises MPI and installs [`MpiWorld`]; otherwise
/// keeps [`SingleProcess`]. Returns the world. A build without the `mpi`
/// feature started by a launcher with more than one rank is an error that
/// says how to build one with MPI (it would otherwise train the whole
/// batch on every rank and race on the run folder).
pub fn init_from_env() -> Result<Rc<dyn Communicator>> {
    let Some(size) = launcher_size() else {
        return Ok(world());
    };
    #[cfg(feature = "mpi")]
    {
        let _ = size;
        let comm: Rc<dyn Communicator> = Rc::new(MpiWorld::initialize()?);
        set_world(comm.clone());
        Ok(comm)
    }
    #[cfg(not(feature = "mpi"))]
    {
        if size > 1 {
            return Err(DistError::NoMpi(format!(
                "started by an MPI launcher with {size} ranks, but this `cm` was built without MPI; \
                 build it with `--features mpi` (`cargo xtask setup --mpi` installs Open MPI; \
                 `cargo xtask train-cd --procs N` builds and launches it)"
            )));
        }
        Ok(world())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_default_world_is_one_process_whose_collectives_are_the_identity() {
        let w = world();
        assert_eq!((w.rank(), w.size()), (0, 1));
        let mut a = [1.5f32, -2.0];
        w.all_reduce_sum_f32(&mut a);
        assert_eq!(a, [1.5, -2.0]);
        let mut b = [3u8, 4];
        w.broadcast_bytes(&mut b);
        assert_eq!(b, [3, 4]);
        assert_eq!(w.all_reduce_min_max_u64(7), (7, 7));
        assert!(w.any(true));
        assert!(!w.any(false));
    }
}
