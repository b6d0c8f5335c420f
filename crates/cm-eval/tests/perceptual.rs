//! The LPIPS-style feature distance on the Fashion-MNIST feature network
//! (trained on first use and cached, shared with the FID tests): zero for
//! equal images, symmetric, growing with Gaussian noise and with blur on
//! every layer, a per-example value independent of the rest of the batch,
//! and gradients that reach the input (it is a training loss).

use cm_core::DistanceMetric;
use cm_data::NpmDataset;
use cm_eval::classifier::images_to_float;
use cm_eval::{degrade, feature_space, ClassifierConfig, FeatureDistance, Log};
use tch::{Device, Kind, Tensor};

fn mean(t: &Tensor) -> f64 {
    t.mean(Kind::Double).double_value(&[])
}

#[test]
fn the_feature_distance_is_a_distance_that_grows_with_noise_and_blur() {
    tch::set_num_threads(1);
    let data = NpmDataset::FashionMnist.load(None).expect("Fashion-MNIST");
    let space = feature_space(
        &data,
        &ClassifierConfig::default(),
        None,
        Device::Cpu,
        &mut Log,
    )
    .expect("feature network");
    let d = FeatureDistance::new(space.net);
    let x = images_to_float(&data.test.to_tensor().narrow(0, 0, 256));
    tch::manual_seed(3);
    let y = images_to_float(&data.test.to_tensor().narrow(0, 256, 256));

    // Zero on equal images, exactly; positive on different ones.
    let same = d.distance(&x, &x);
    assert_eq!(same.size(), [256]);
    assert_eq!(same.abs().max().double_value(&[]), 0.0);
    let xy = d.distance(&x, &y);
    assert!(bool::try_from(xy.gt(0.0).all()).unwrap());
    // Symmetric.
    let yx = d.distance(&y, &x);
    assert!((&xy - &yx).abs().max().double_value(&[]) < 1e-6);
    // Per example: a pair's distance does not depend on the batch around it.
    let alone = d.distance(&x.narrow(0, 5, 1), &y.narrow(0, 5, 1));
    assert!((alone.double_value(&[0]) - xy.double_value(&[5])).abs() < 1e-6);

    // Grows with noise and with blur, overall and on every layer.
    let noise = x.randn_like();
    let noisy: Vec<Tensor> = [0.05, 0.1, 0.2, 0.4]
        .iter()
        .map(|&s| degrade::add_noise(&x, &noise, s).unwrap())
        .collect();
    let blurred: Vec<Tensor> = [0.5, 1.0, 1.5, 2.0]
        .iter()
        .map(|&s| degrade::gaussian_blur(&x, s).unwrap())
        .collect();
    for (what, series) in [("noise", &noisy), ("blur", &blurred)] {
        let totals: Vec<f64> = series.iter().map(|z| mean(&d.distance(&x, z))).collect();
        assert!(totals.windows(2).all(|w| w[1] > w[0]), "{what}: {totals:?}");
        let layers: Vec<Vec<f64>> = series
            .iter()
            .map(|z| d.layer_distances(&x, z).iter().map(mean).collect())
            .collect();
        for l in 0..4 {
            let per: Vec<f64> = layers.iter().map(|v| v[l]).collect();
            assert!(
                per.windows(2).all(|w| w[1] > w[0]),
                "{what}, layer {l}: {per:?}"
            );
            assert!(
                per.iter().all(|&v| (0.0..=2.0).contains(&v)),
                "{what}, layer {l}: {per:?}"
            );
        }
        eprintln!("feature distance vs {what}: {totals:?}");
    }

    // Gradients reach the input, and only the input (the network is frozen).
    let z = noisy[1].detach().set_requires_grad(true);
    d.distance(&z, &x).sum(Kind::Float).backward();
    let g = z.grad();
    assert!(g.defined() && g.abs().sum(Kind::Double).double_value(&[]) > 0.0);
    // Wrong shapes are refused by name.
    assert!(d
        .check_shape(&[3, 32, 32])
        .unwrap_err()
        .to_string()
        .contains("[1, 28, 28]"));
}
