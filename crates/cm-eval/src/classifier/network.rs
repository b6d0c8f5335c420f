//! The feature CNN of [`super`]: `conv3x3 BN ReLU maxpool2` twice,
//! `conv3x3 BN ReLU`, `linear(-> features) ReLU`, dropout and the class
//! head; features and logits are extracted in eval mode, without autograd,
//! in chunks of [`FEATURE_BATCH`].

use tch::{nn, nn::Module, nn::ModuleT, Device, Kind, Tensor};

use cm_data::ImageSplit;

use super::ClassifierConfig;
use crate::error::{EvalError, Result};

/// Images per forward pass when extracting features.
pub const FEATURE_BATCH: i64 = 500;

/// The feature CNN.
#[derive(Debug)]
pub struct FeatureNet {
    vs: nn::VarStore,
    convs: Vec<(nn::Conv2D, nn::BatchNorm)>,
    fc: nn::Linear,
    head: nn::Linear,
    dropout: f64,
    shape: [i64; 3],
}

impl FeatureNet {
    /// A freshly initialised network for `shape` images and `num_classes`.
    pub fn new(
        config: &ClassifierConfig,
        shape: [i64; 3],
        num_classes: i64,
        device: Device,
    ) -> Result<Self> {
        config.validate_at("classifier.")?;
        let [c, h, w] = shape;
        if c < 1 || h < 4 || w < 4 || num_classes < 2 {
            return Err(EvalError::InvalidInput(format!(
                "classifier for images {shape:?} and {num_classes} classes: expected H, W >= 4 and >= 2 classes"
            )));
        }
        let vs = nn::VarStore::new(device);
        let root = vs.root();
        let conv_cfg = nn::ConvConfig {
            padding: 1,
            bias: false,
            ..Default::default()
        };
        let mut convs = Vec::new();
        let mut cin = c;
        for (i, &cout) in config.channels.iter().enumerate() {
            convs.push((
                nn::conv2d(&root / format!("conv{i}"), cin, cout, 3, conv_cfg),
                nn::batch_norm2d(&root / format!("bn{i}"), cout, Default::default()),
            ));
            cin = cout;
        }
        let flat = config.channels[2] * (h / 4) * (w / 4);
        let fc = nn::linear(&root / "fc", flat, config.features, Default::default());
        let head = nn::linear(
            &root / "head",
            config.features,
            num_classes,
            Default::default(),
        );
        Ok(FeatureNet {
            vs,
            convs,
            fc,
            head,
            dropout: config.dropout,
            shape,
        })
    }

    /// `(features, logits)` of images `[B, C, H, W]` in [-1, 1].
    pub fn forward_t(&self, x: &Tensor, train: bool) -> (Tensor, Tensor) {
        let mut h = x.shallow_clone();
        for (i, (conv, bn)) in self.convs.iter().enumerate() {
            h = bn.forward_t(&conv.forward(&h), train).relu();
            if i < 2 {
                h = h.max_pool2d_default(2);
            }
        }
        let features = self.fc.forward(&h.flatten(1, -1)).relu();
        let logits = self.head.forward(&features.dropout(self.dropout, train));
        (features, logits)
    }

    /// The activations of the three conv blocks (after ReLU, before
    /// pooling: `[B, c_i, H_i, W_i]`) and the feature vector (`[B, D]`) of
    /// images `[B, C, H, W]` in [-1, 1], in eval mode (batch-norm running
    /// statistics, so each example is independent), keeping autograd
    /// through `x` (the perceptual distance is a training loss).
    pub fn layer_activations(&self, x: &Tensor) -> Vec<Tensor> {
        let mut out = Vec::with_capacity(self.convs.len() + 1);
        let mut h = x.shallow_clone();
        for (i, (conv, bn)) in self.convs.iter().enumerate() {
            h = bn.forward_t(&conv.forward(&h), false).relu();
            out.push(h.shallow_clone());
            if i < 2 {
                h = h.max_pool2d_default(2);
            }
        }
        out.push(self.fc.forward(&h.flatten(1, -1)).relu());
        out
    }

    /// The variables.
    pub fn var_store(&self) -> &nn::VarStore {
        &self.vs
    }

    /// The variables, mutably (to freeze them).
    pub fn var_store_mut(&mut self) -> &mut nn::VarStore {
        &mut self.vs
    }

    /// Input shape `[C, H, W]`.
    pub fn shape(&self) -> [i64; 3] {
        self.shape
    }

    /// Features `[N, D]` and logits `[N, K]` (f32, CPU) of images
    /// `[N, C, H, W]` in [-1, 1] (any float kind or device), in eval mode,
    /// without autograd, in chunks of [`FEATURE_BATCH`].
    pub fn features(&self, images: &Tensor) -> Result<(Tensor, Tensor)> {
        let size = images.size();
        if size.len() != 4 || size[1..] != self.shape[..] {
            return Err(EvalError::InvalidInput(format!(
                "the feature network takes images [N, {}, {}, {}], found {size:?}",
                self.shape[0], self.shape[1], self.shape[2]
            )));
        }
        let _guard = tch::no_grad_guard();
        let device = self.vs.device();
        let (mut feats, mut logits) = (Vec::new(), Vec::new());
        let mut start = 0;
        while start < size[0] {
            let len = FEATURE_BATCH.min(size[0] - start);
            let x = images
                .narrow(0, start, len)
                .to_device(device)
                .to_kind(Kind::Float);
            let (f, l) = self.forward_t(&x, false);
            feats.push(f.to_device(Device::Cpu));
            logits.push(l.to_device(Device::Cpu));
            start += len;
        }
        Ok((Tensor::cat(&feats, 0), Tensor::cat(&logits, 0)))
    }

    /// Features and logits of a u8 split (converted with `x / 127.5 - 1`).
    pub fn split_features(&self, split: &ImageSplit) -> Result<(Tensor, Tensor)> {
        self.features(&images_to_float(&split.to_tensor()))
    }

    /// Top-1 accuracy on a labelled split.
    pub fn accuracy(&self, split: &ImageSplit) -> Result<f64> {
        let labels = split
            .labels_tensor()
            .ok_or_else(|| EvalError::InvalidInput("accuracy needs a labelled split".into()))?;
        let (_, logits) = self.split_features(split)?;
        Ok(logits.accuracy_for_logits(&labels).double_value(&[]))
    }
}

/// u8 images `[N, C, H, W]` to f32 in [-1, 1], as the data loader does.
pub fn images_to_float(images: &Tensor) -> Tensor {
    images.to_kind(Kind::Float) / 127.5 - 1.0
}
