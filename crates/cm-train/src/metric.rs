//! Builds the distance metric `d(x, y)` of a consistency objective (CD,
//! CT, iCT, ECT) from its config: the closed-form ones from cm-core, and
//! `feature` (the LPIPS-style distance, cm-eval's [`FeatureDistance`]) on
//! the data set's feature network, the same cached classifier `cm eval`
//! measures FID with (trained on first use, about 40 s for Fashion-MNIST
//! on 2 cores).

use cm_core::{DistanceMetric, MetricConfig};
use cm_data::{DataSource, Dataset};
use cm_eval::{feature_space, ClassifierConfig, FeatureDistance, Progress};
use tch::Device;

use crate::error::{Result, TrainError};
use crate::observer::Observer;

/// Passes cm-eval's messages to an [`Observer`].
pub(crate) struct Messages<'a>(pub(crate) &'a mut dyn Observer);

impl Progress for Messages<'_> {
    fn message(&mut self, message: &str) {
        self.0.on_message(message);
    }
}

/// The metric `config` (at dotted path `prefix`) for samples of
/// `sample_shape` from `data`. `feature` loads (or trains, on rank 0 first
/// when data-parallel) the data set's feature network on `device`.
pub fn build_metric(
    config: &MetricConfig,
    prefix: &str,
    sample_shape: &[i64],
    data: &DataSource,
    device: Device,
    observer: &mut dyn Observer,
) -> Result<Box<dyn DistanceMetric + Send>> {
    if *config != MetricConfig::Feature {
        let dim = sample_shape.iter().product::<i64>() as usize;
        return Ok(config.build(dim, prefix)?);
    }
    let Dataset::Images(images) = data
        .load(None)
        .map_err(|e| TrainError::Batch(e.to_string()))?
    else {
        return Err(cm_core::CoreError::invalid(
            format!("{prefix}kind"),
            "feature",
            "l2, l1 or pseudo_huber for point data (the feature distance is a network on images)",
        )
        .into());
    };
    let comm = cm_dist::world();
    // One rank trains a missing feature network; the others then read it.
    let build = |observer: &mut dyn Observer| -> Result<FeatureDistance> {
        let space = feature_space(
            &images,
            &ClassifierConfig::default(),
            None,
            device,
            &mut Messages(observer),
        )?;
        Ok(FeatureDistance::new(space.net))
    };
    let metric = if comm.rank() == 0 {
        let m = build(observer);
        comm.barrier();
        m?
    } else {
        comm.barrier();
        build(observer)?
    };
    metric.check_shape(sample_shape).map_err(|e| {
        cm_core::CoreError::invalid(format!("{prefix}kind"), "feature", e.to_string())
    })?;
    observer.on_message(&format!(
        "distance: the feature network's LPIPS-style distance ({} layers)",
        cm_eval::LAYER_WEIGHTS.len()
    ));
    Ok(Box::new(metric))
}
