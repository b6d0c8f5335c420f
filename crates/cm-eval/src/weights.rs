//! Safetensors weights for the evaluation networks (the feature classifier,
//! Inception-v3): saving atomically, and loading through cm-nets' strict
//! loader ([`cm_nets::load_strict_tensors`]: every tensor must match by name,
//! shape and dtype).

use std::path::Path;

use tch::{nn, Tensor};

use crate::error::{EvalError, Result};

/// Writes every variable of `vs` (sorted by name, contiguous) as
/// safetensors, atomically.
pub fn save_var_store(vs: &nn::VarStore, path: &Path) -> Result<()> {
    let mut named: Vec<(String, Tensor)> = vs
        .variables()
        .into_iter()
        .map(|(n, t)| (n, t.contiguous()))
        .collect();
    named.sort_by(|a, b| a.0.cmp(&b.0));
    cm_nets::write_atomic(path, |tmp| Ok(Tensor::write_safetensors(&named, tmp)?))?;
    Ok(())
}

/// Loads `path` into `vs`. Every variable must be present with its shape and
/// dtype; tensors of the file whose name ends with one of `ignored_suffixes`
/// (e.g. PyTorch's `num_batches_tracked`) may be left over; any other
/// unexpected tensor is an error. Every problem is listed by name in
/// [`EvalError::WeightsMismatch`]; nothing is loaded unless all match.
pub fn load_var_store(vs: &nn::VarStore, path: &Path, ignored_suffixes: &[&str]) -> Result<()> {
    cm_nets::load_strict_tensors(path, vs.variables(), ignored_suffixes).map_err(|e| match e {
        cm_nets::NetError::CheckpointMismatch { path, problems } => {
            EvalError::WeightsMismatch { path, problems }
        }
        cm_nets::NetError::Io { source, .. } => EvalError::io("cannot read weights", path, source),
        cm_nets::NetError::Tch(e) => EvalError::io("cannot read weights", path, e),
        other => EvalError::Net(other),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use tch::{Device, Kind};

    fn linear_store(kind: Kind) -> nn::VarStore {
        let mut vs = nn::VarStore::new(Device::Cpu);
        let _ = nn::linear(vs.root() / "fc", 3, 2, Default::default());
        vs.set_kind(kind);
        vs
    }

    #[test]
    fn round_trip_and_wrong_dtype_is_named() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("fc.safetensors");
        let saved = linear_store(Kind::Float);
        save_var_store(&saved, &path).unwrap();
        let loaded = linear_store(Kind::Float);
        load_var_store(&loaded, &path, &[]).unwrap();
        let (a, b) = (saved.variables(), loaded.variables());
        assert!(a["fc.weight"].equal(&b["fc.weight"]));

        // Same names and shapes, float64 in the file: every tensor is
        // reported by name with both dtypes, and nothing is loaded.
        let doubles = linear_store(Kind::Double);
        let doubled = dir.path().join("fc64.safetensors");
        save_var_store(&doubles, &doubled).unwrap();
        let target = linear_store(Kind::Float);
        let before = target.variables()["fc.bias"].copy();
        match load_var_store(&target, &doubled, &[]) {
            Err(EvalError::WeightsMismatch { problems, .. }) => {
                assert_eq!(problems.len(), 2, "{problems:?}");
                let text = problems.join("\n");
                assert!(
                    text.contains("tensor `fc.weight`: expected dtype Float, found Double"),
                    "{text}"
                );
                assert!(text.contains("`fc.bias`"), "{text}");
            }
            other => panic!("expected a dtype mismatch, got {other:?}"),
        }
        assert!(target.variables()["fc.bias"].equal(&before));

        let absent = dir.path().join("absent.safetensors");
        let err = load_var_store(&target, &absent, &[]).unwrap_err();
        assert!(matches!(err, EvalError::Io { .. }), "{err}");
        assert!(err.to_string().contains("absent.safetensors"), "{err}");
    }
}
