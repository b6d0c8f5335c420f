//! pytorch-fid's Inception-v3: layout (parameter names and shapes of the
//! FID weights file), output shapes, and strict loading. The real weights
//! cannot be downloaded here, so the network runs with random weights.

use cm_eval::inception::{InceptionV3, FC_CLASSES, INPUT_SIZE, POOL3_DIM};
use cm_eval::EvalError;
use tch::{Device, Kind, Tensor};

#[test]
fn layout_matches_pytorch_fid_state_dict() {
    let net = InceptionV3::new(Device::Cpu);
    let vars = net.var_store().variables();
    // Shapes of a few tensors of pt_inception-2015-12-05-6726825d.pth.
    let expect: &[(&str, &[i64])] = &[
        ("Conv2d_1a_3x3.conv.weight", &[32, 3, 3, 3]),
        ("Conv2d_1a_3x3.bn.running_var", &[32]),
        ("Conv2d_4a_3x3.conv.weight", &[192, 80, 3, 3]),
        ("Mixed_5b.branch_pool.conv.weight", &[32, 192, 1, 1]),
        ("Mixed_5d.branch5x5_2.conv.weight", &[64, 48, 5, 5]),
        ("Mixed_6a.branch3x3.conv.weight", &[384, 288, 3, 3]),
        ("Mixed_6b.branch7x7_2.conv.weight", &[128, 128, 1, 7]),
        ("Mixed_6e.branch7x7dbl_5.conv.weight", &[192, 192, 1, 7]),
        ("Mixed_7a.branch3x3_2.conv.weight", &[320, 192, 3, 3]),
        ("Mixed_7b.branch3x3dbl_3b.conv.weight", &[384, 384, 3, 1]),
        ("Mixed_7c.branch_pool.conv.weight", &[192, 2048, 1, 1]),
        ("fc.weight", &[1008, 2048]),
        ("fc.bias", &[1008]),
    ];
    for (name, shape) in expect {
        let t = vars.get(*name).unwrap_or_else(|| panic!("missing {name}"));
        assert_eq!(t.size(), shape.to_vec(), "{name}");
    }
    // 94 BasicConv2d layers (conv weight + 4 batch-norm tensors) + fc.
    assert_eq!(vars.len(), 94 * 5 + 2);
    assert!(!vars.keys().any(|k| k.ends_with("conv.bias")));
    // torchvision documents 27,161,264 parameters for inception_v3 with
    // its auxiliary classifier (1000 classes). The aux head holds
    // 768*128 + 256 + 128*768*25 + 1536 + 768*1000 + 1000 = 3,326,696, so the
    // main network has 23,834,568; FID's 1008-way fc adds 8*2048 + 8.
    let learnable: usize = net
        .var_store()
        .trainable_variables()
        .iter()
        .map(|t| t.numel())
        .sum();
    assert_eq!(learnable, 27_161_264 - 3_326_696 + 8 * 2048 + 8);
}

#[test]
fn pool3_features_are_2048_d_for_any_input_size() {
    let net = InceptionV3::new(Device::Cpu);
    let x = Tensor::rand([3, 1, 28, 28], (Kind::Float, Device::Cpu)) * 2.0 - 1.0;
    let prepared = InceptionV3::prepare(&x).unwrap();
    assert_eq!(prepared.size(), [3, 3, INPUT_SIZE, INPUT_SIZE]);
    let (pool, logits) = tch::no_grad(|| net.forward(&prepared));
    assert_eq!(pool.size(), [3, POOL3_DIM]);
    assert_eq!(logits.size(), [3, FC_CLASSES]);
    // Pool3 follows ReLUs and an average: non-negative.
    assert!(pool.min().double_value(&[]) >= 0.0);
    let f = net
        .features(&(Tensor::rand([2, 3, 32, 32], (Kind::Float, Device::Cpu)) * 2.0 - 1.0))
        .unwrap();
    assert_eq!(f.size(), [2, POOL3_DIM]);
    assert!(
        InceptionV3::prepare(&Tensor::zeros([1, 2, 8, 8], (Kind::Float, Device::Cpu))).is_err()
    );
}

#[test]
fn loading_is_strict_and_names_the_problem() {
    let net = InceptionV3::new(Device::Cpu);
    let dir = tempfile::tempdir().unwrap();
    let mut named: Vec<(String, Tensor)> = net.var_store().variables().into_iter().collect();
    named.sort_by(|a, b| a.0.cmp(&b.0));
    // A PyTorch state dict also carries num_batches_tracked: ignored.
    named.push((
        "Conv2d_1a_3x3.bn.num_batches_tracked".into(),
        Tensor::from_slice(&[0i64]),
    ));
    let good = dir.path().join("good.safetensors");
    Tensor::write_safetensors(&named, &good).unwrap();
    let loaded = InceptionV3::load(&good, Device::Cpu).unwrap();
    let a = net.var_store().variables();
    let b = loaded.var_store().variables();
    assert!(a["Mixed_6c.branch7x7_3.conv.weight"].equal(&b["Mixed_6c.branch7x7_3.conv.weight"]));

    // Drop one tensor and mis-shape another.
    let bad: Vec<(String, Tensor)> = named
        .iter()
        .filter(|(n, _)| n != "Mixed_7c.branch1x1.bn.running_mean")
        .map(|(n, t)| {
            if n == "fc.bias" {
                (n.clone(), Tensor::zeros([1000], (Kind::Float, Device::Cpu)))
            } else {
                (n.clone(), t.shallow_clone())
            }
        })
        .collect();
    let bad_path = dir.path().join("bad.safetensors");
    Tensor::write_safetensors(&bad, &bad_path).unwrap();
    match InceptionV3::load(&bad_path, Device::Cpu) {
        Err(EvalError::WeightsMismatch { problems, .. }) => {
            let text = problems.join("\n");
            assert!(
                text.contains("Mixed_7c.branch1x1.bn.running_mean"),
                "{text}"
            );
            assert!(text.contains("fc.bias") && text.contains("1008"), "{text}");
            assert_eq!(problems.len(), 2);
        }
        other => panic!("expected a mismatch, got {other:?}"),
    }
    assert!(InceptionV3::load(&dir.path().join("absent.safetensors"), Device::Cpu).is_err());
}
