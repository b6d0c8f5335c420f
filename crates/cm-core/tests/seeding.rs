//! The samplers reproduce their draws under `tch::manual_seed`. Alone in its
//! own test binary: libtorch's generator is process-global, so tests running
//! in parallel threads would interleave their draws.

use cm_core::{IndexSampler, KarrasGrid, LognormalIndex, LognormalSigma, UniformIndex};
use tch::{Device, Kind};

#[test]
fn samplers_reproduce_under_a_seed() {
    let grid = KarrasGrid::default().training_sigmas(18).unwrap();
    let samplers: [(&str, &dyn IndexSampler); 2] = [
        ("uniform", &UniformIndex {}),
        ("lognormal", &LognormalIndex::default()),
    ];
    for (name, sampler) in samplers {
        tch::manual_seed(7);
        let a = sampler.sample(&grid, 1000, Device::Cpu);
        tch::manual_seed(7);
        let b = sampler.sample(&grid, 1000, Device::Cpu);
        tch::manual_seed(8);
        let c = sampler.sample(&grid, 1000, Device::Cpu);
        assert!(a.equal(&b), "{name}: same seed, different draws");
        assert!(!a.equal(&c), "{name}: different seeds, same draws");
    }
    let dist = LognormalSigma::default();
    tch::manual_seed(1);
    let a = dist.sample(100, Kind::Float, Device::Cpu);
    tch::manual_seed(1);
    assert!(a.equal(&dist.sample(100, Kind::Float, Device::Cpu)));
}
