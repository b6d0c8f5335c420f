//! Strict safetensors weights for the evaluation networks (the feature
//! classifier, Inception-v3): saving atomically, and loading only when every
//! tensor matches by name and shape.

use std::collections::HashMap;
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

/// Loads `path` into `vs`. Every variable must be present with its shape;
/// tensors of the file whose name ends with one of `ignored_suffixes` (e.g.
/// PyTorch's `num_batches_tracked`) may be left over; any other unexpected
/// tensor is an error. Every problem is listed; nothing is loaded unless all
/// match. Values are converted to the variables' dtype.
pub fn load_var_store(vs: &nn::VarStore, path: &Path, ignored_suffixes: &[&str]) -> Result<()> {
    if !path.is_file() {
        return Err(EvalError::io("cannot read weights", path, "no such file"));
    }
    let mut file: HashMap<String, Tensor> = Tensor::read_safetensors(path)
        .map_err(|e| EvalError::io("cannot read weights", path, e))?
        .into_iter()
        .collect();
    let mut vars: Vec<(String, Tensor)> = vs.variables().into_iter().collect();
    vars.sort_by(|a, b| a.0.cmp(&b.0));
    let mut problems = Vec::new();
    let mut matched = Vec::new();
    for (name, var) in vars {
        match file.remove(&name) {
            None => problems.push(format!(
                "missing tensor `{name}` (expected shape {:?})",
                var.size()
            )),
            Some(t) if t.size() != var.size() => problems.push(format!(
                "tensor `{name}`: expected shape {:?}, found {:?}",
                var.size(),
                t.size()
            )),
            Some(t) => matched.push((var, t)),
        }
    }
    let mut unexpected: Vec<_> = file
        .into_iter()
        .filter(|(n, _)| !ignored_suffixes.iter().any(|s| n.ends_with(s)))
        .collect();
    unexpected.sort_by(|a, b| a.0.cmp(&b.0));
    for (name, t) in unexpected {
        problems.push(format!(
            "unexpected tensor `{name}` (shape {:?}) is not in the network",
            t.size()
        ));
    }
    if !problems.is_empty() {
        return Err(EvalError::WeightsMismatch {
            path: path.to_path_buf(),
            problems,
        });
    }
    tch::no_grad(|| {
        for (mut var, t) in matched {
            var.f_copy_(&t.to_kind(var.kind()))?;
        }
        Ok::<(), tch::TchError>(())
    })?;
    Ok(())
}
