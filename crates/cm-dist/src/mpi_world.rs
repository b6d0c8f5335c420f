//! `MPI_COMM_WORLD` through rsmpi (feature `mpi`).

use mpi::collective::SystemOperation;
use mpi::topology::{Communicator as _, SimpleCommunicator};
use mpi::traits::*;

use crate::{Communicator, DistError, Result};

/// The MPI world of this process. Dropping it finalises MPI.
pub struct MpiWorld {
    world: SimpleCommunicator,
    // Declared last so it drops (MPI_Finalize) after the communicator.
    _universe: mpi::environment::Universe,
}

impl std::fmt::Debug for MpiWorld {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "MpiWorld({})", self.describe())
    }
}

impl MpiWorld {
    /// Initialises MPI (thread level "single": only the training thread
    /// calls MPI) and takes its world.
    pub fn initialize() -> Result<Self> {
        let universe = mpi::initialize()
            .ok_or_else(|| DistError::Init("MPI was already initialised in this process".into()))?;
        let world = universe.world();
        Ok(MpiWorld {
            world,
            _universe: universe,
        })
    }
}

impl Communicator for MpiWorld {
    fn rank(&self) -> usize {
        self.world.rank() as usize
    }

    fn size(&self) -> usize {
        self.world.size() as usize
    }

    fn all_reduce_sum_f32(&self, buf: &mut [f32]) {
        // rsmpi has no MPI_IN_PLACE: reduce from a copy.
        let send = buf.to_vec();
        self.world
            .all_reduce_into(&send[..], buf, SystemOperation::sum());
    }

    fn all_reduce_sum_f64(&self, buf: &mut [f64]) {
        let send = buf.to_vec();
        self.world
            .all_reduce_into(&send[..], buf, SystemOperation::sum());
    }

    fn all_reduce_min_max_u64(&self, value: u64) -> (u64, u64) {
        let (mut min, mut max) = (0u64, 0u64);
        self.world
            .all_reduce_into(&value, &mut min, SystemOperation::min());
        self.world
            .all_reduce_into(&value, &mut max, SystemOperation::max());
        (min, max)
    }

    fn broadcast_bytes(&self, buf: &mut [u8]) {
        self.world.process_at_rank(0).broadcast_into(buf);
    }

    fn barrier(&self) {
        self.world.barrier();
    }

    fn abort(&self, code: i32) -> ! {
        self.world.abort(code)
    }

    fn describe(&self) -> String {
        let version = mpi::environment::library_version()
            .ok()
            .and_then(|v| {
                v.lines()
                    .next()
                    .map(|l| l.trim().trim_end_matches(',').to_string())
            })
            .unwrap_or_else(|| "MPI".into());
        format!("{version}, {} ranks", self.size())
    }
}
