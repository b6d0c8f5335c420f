//! Input checks shared by the transforms and tasks of zero-shot editing
//! (Song et al. 2023, "Consistency Models", Algorithm 4): image batch shapes
//! and kinds, and class-label rows.

use cm_core::CoreError;
use tch::Tensor;

/// Checks that `shape` is `[B, C, H, W]` with every size positive.
pub(crate) fn check_image_shape(field: &str, shape: &[i64]) -> cm_core::Result<()> {
    if shape.len() != 4 || shape.iter().any(|&s| s <= 0) {
        return Err(CoreError::invalid(
            field,
            format!("{shape:?}"),
            "an image batch [B, C, H, W] with positive sizes",
        ));
    }
    Ok(())
}

/// Checks that `x` is a floating-point `[B, C, H, W]` batch.
pub(crate) fn check_images(field: &str, x: &Tensor) -> cm_core::Result<()> {
    check_image_shape(&format!("{field}.shape"), &x.size())?;
    if !x.is_floating_point() {
        return Err(CoreError::invalid(
            format!("{field}.kind"),
            format!("{:?}", x.kind()),
            "a floating-point tensor",
        ));
    }
    Ok(())
}

/// Checks that `class`, when given, has `batch` rows.
pub(crate) fn check_class(class: Option<&Tensor>, batch: i64) -> cm_core::Result<()> {
    if let Some(c) = class {
        let rows = c.size().first().copied().unwrap_or(0);
        if rows != batch {
            return Err(CoreError::invalid(
                "class",
                format!("shape {:?}", c.size()),
                format!("one label row per image ({batch})"),
            ));
        }
    }
    Ok(())
}
