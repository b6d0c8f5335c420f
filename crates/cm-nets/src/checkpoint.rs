//! Atomic file writes, the checkpoint file layout (weights in
//! `NAME.safetensors`, the network config beside them in `NAME.toml`) and
//! the one strict safetensors loader every cm-rs network uses.

use std::collections::{BTreeMap, HashMap};
use std::io::Read;
use std::path::{Path, PathBuf};

use tch::{nn, Kind, Tensor};

use crate::error::{NetError, Result};

/// The config sidecar of a weights file: same name, extension `.toml`.
pub fn sidecar_path(weights: &Path) -> PathBuf {
    weights.with_extension("toml")
}

/// Writes a file atomically: `write` fills a temporary file in the same
/// folder, which is flushed to disk and then renamed over `path`. Readers see
/// the old file or the new one, never a torn one; on error the temporary file
/// is removed and `path` is untouched.
pub fn write_atomic<F>(path: &Path, write: F) -> Result<()>
where
    F: FnOnce(&Path) -> Result<()>,
{
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d.to_path_buf(),
        _ => PathBuf::from("."),
    };
    std::fs::create_dir_all(&dir).map_err(|source| NetError::Io {
        action: "cannot create folder",
        path: dir.clone(),
        source,
    })?;
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let tmp = dir.join(format!(".{name}.tmp-{}", std::process::id()));
    let result = write(&tmp).and_then(|()| {
        std::fs::File::open(&tmp)
            .and_then(|f| f.sync_all())
            .map_err(|source| NetError::Io {
                action: "cannot flush",
                path: tmp.clone(),
                source,
            })?;
        std::fs::rename(&tmp, path).map_err(|source| NetError::Io {
            action: "cannot rename into place",
            path: path.to_path_buf(),
            source,
        })
    });
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result
}

/// Loads the safetensors file `path` into every variable of `vs`, strictly:
/// see [`load_strict_tensors`] (no leftover tensors allowed).
pub fn load_strict(path: &Path, vs: &nn::VarStore) -> Result<()> {
    load_strict_tensors(path, vs.variables(), &[])
}

/// Loads the safetensors file `path` into `vars` (name, variable). Every
/// variable must be in the file with its shape and dtype; every tensor of the
/// file must be a variable, except those whose name ends with one of
/// `ignored_suffixes` (e.g. PyTorch's `num_batches_tracked`). Missing,
/// unexpected, mis-shaped and mis-typed tensors are all reported, each by
/// name, in one [`NetError::CheckpointMismatch`], and nothing is loaded
/// unless all match; values are copied under no-grad onto the variables'
/// devices.
pub fn load_strict_tensors(
    path: &Path,
    vars: impl IntoIterator<Item = (String, Tensor)>,
    ignored_suffixes: &[&str],
) -> Result<()> {
    load_strict_impl(path, vars, ignored_suffixes, false)
}

/// [`load_strict_tensors`], but a floating-point tensor of another float
/// dtype (f16, bf16, f64: published diffusers weights come in several) is
/// converted to the variable's dtype instead of refused.
pub fn load_strict_tensors_cast(
    path: &Path,
    vars: impl IntoIterator<Item = (String, Tensor)>,
    ignored_suffixes: &[&str],
) -> Result<()> {
    load_strict_impl(path, vars, ignored_suffixes, true)
}

fn load_strict_impl(
    path: &Path,
    vars: impl IntoIterator<Item = (String, Tensor)>,
    ignored_suffixes: &[&str],
    cast_floats: bool,
) -> Result<()> {
    if !path.is_file() {
        return Err(NetError::Io {
            action: "cannot read checkpoint",
            path: path.to_path_buf(),
            source: std::io::Error::new(std::io::ErrorKind::NotFound, "no such file"),
        });
    }
    let mut file: HashMap<String, Tensor> = Tensor::read_safetensors(path)?.into_iter().collect();
    let mut vars: Vec<(String, Tensor)> = vars.into_iter().collect();
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
            Some(t)
                if t.kind() != var.kind()
                    && cast_floats
                    && t.is_floating_point()
                    && var.is_floating_point() =>
            {
                matched.push((var, t))
            }
            Some(t) if t.kind() != var.kind() => problems.push(format!(
                "tensor `{name}`: expected dtype {:?}, found {:?}",
                var.kind(),
                t.kind()
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
        return Err(NetError::CheckpointMismatch {
            path: PathBuf::from(path),
            problems,
        });
    }
    tch::no_grad(|| {
        for (mut var, t) in matched {
            var.f_copy_(&t)?;
        }
        Ok::<(), tch::TchError>(())
    })?;
    Ok(())
}

/// The largest safetensors header [`read_metadata`] reads (the format's own
/// limit is 100 MB).
pub const MAX_HEADER_BYTES: u64 = 100_000_000;

/// The safetensors dtype of a tensor kind (the kinds cm-rs checkpoints hold).
fn dtype_of(kind: Kind) -> Option<safetensors::Dtype> {
    use safetensors::Dtype;
    Some(match kind {
        Kind::Bool => Dtype::BOOL,
        Kind::Uint8 => Dtype::U8,
        Kind::Int8 => Dtype::I8,
        Kind::Int16 => Dtype::I16,
        Kind::Int => Dtype::I32,
        Kind::Int64 => Dtype::I64,
        Kind::Half => Dtype::F16,
        Kind::BFloat16 => Dtype::BF16,
        Kind::Float => Dtype::F32,
        Kind::Double => Dtype::F64,
        _ => return None,
    })
}

/// Writes `named` tensors to the safetensors file `path` with string
/// `metadata` in its header (`__metadata__`, readable by any safetensors
/// reader, e.g. Python's `safe_open(path, "np").metadata()`). Tensors are
/// copied to the CPU in their row-major (contiguous) layout. Not atomic by
/// itself: wrap it in [`write_atomic`].
pub fn write_safetensors_with_metadata(
    named: &[(String, Tensor)],
    metadata: &BTreeMap<String, String>,
    path: &Path,
) -> Result<()> {
    let mut data = Vec::with_capacity(named.len());
    for (name, t) in named {
        let dtype = dtype_of(t.kind()).ok_or_else(|| {
            NetError::InvalidInput(format!(
                "tensor `{name}` has dtype {:?}, which safetensors cannot store",
                t.kind()
            ))
        })?;
        let t = t.to_device(tch::Device::Cpu).contiguous();
        let numel = t.numel();
        let mut bytes = vec![0u8; numel * t.kind().elt_size_in_bytes()];
        t.f_copy_data_u8(&mut bytes, numel)?;
        let shape: Vec<usize> = t.size().iter().map(|&d| d as usize).collect();
        data.push((name.clone(), dtype, shape, bytes));
    }
    let views = data
        .iter()
        .map(|(name, dtype, shape, bytes)| {
            safetensors::tensor::TensorView::new(*dtype, shape.clone(), bytes)
                .map(|v| (name.as_str(), v))
        })
        .collect::<std::result::Result<Vec<_>, _>>()
        .map_err(|e| NetError::InvalidInput(format!("{}: {e:?}", path.display())))?;
    let info: HashMap<String, String> = metadata.clone().into_iter().collect();
    safetensors::tensor::serialize_to_file(views, &Some(info), path).map_err(|e| NetError::Io {
        action: "cannot write",
        path: path.to_path_buf(),
        source: std::io::Error::other(format!("{e:?}")),
    })
}

/// The string metadata (`__metadata__`) of the safetensors file `path`, read
/// from its header alone (at most [`MAX_HEADER_BYTES`]); empty when the file
/// has none.
pub fn read_metadata(path: &Path) -> Result<BTreeMap<String, String>> {
    let header = read_header(path)?;
    let Some(meta) = header.get("__metadata__") else {
        return Ok(BTreeMap::new());
    };
    serde_json::from_value(meta.clone()).map_err(|e| {
        NetError::InvalidInput(format!(
            "{}: __metadata__ is not a table of strings ({e})",
            path.display()
        ))
    })
}

/// The tensor names and shapes a safetensors file declares, read from its
/// header alone (the header's size is bounded as for [`read_metadata`]).
pub fn read_shapes(path: &Path) -> Result<BTreeMap<String, Vec<i64>>> {
    let header = read_header(path)?;
    let bad = |what: String| NetError::InvalidInput(format!("{}: {what}", path.display()));
    let serde_json::Value::Object(entries) = header else {
        return Err(bad(
            "not a safetensors file: header is not a JSON object".into()
        ));
    };
    let mut shapes = BTreeMap::new();
    for (name, entry) in entries {
        if name == "__metadata__" {
            continue;
        }
        let shape = entry
            .get("shape")
            .and_then(|s| serde_json::from_value::<Vec<i64>>(s.clone()).ok())
            .ok_or_else(|| bad(format!("tensor `{name}` has no valid shape")))?;
        shapes.insert(name, shape);
    }
    Ok(shapes)
}

/// A safetensors file's JSON header, its length checked against the file
/// and [`MAX_HEADER_BYTES`] before it is read.
fn read_header(path: &Path) -> Result<serde_json::Value> {
    let io = |source: std::io::Error| NetError::Io {
        action: "cannot read checkpoint header",
        path: path.to_path_buf(),
        source,
    };
    let bad = |what: String| NetError::InvalidInput(format!("{}: {what}", path.display()));
    let mut file = std::fs::File::open(path).map_err(io)?;
    let len = file.metadata().map_err(io)?.len();
    let mut n = [0u8; 8];
    file.read_exact(&mut n).map_err(io)?;
    let n = u64::from_le_bytes(n);
    if n > MAX_HEADER_BYTES || n > len.saturating_sub(8) {
        return Err(bad(format!(
            "not a safetensors file: header length {n} (file of {len} bytes, limit {MAX_HEADER_BYTES})"
        )));
    }
    let mut header = vec![0u8; n as usize];
    file.read_exact(&mut header).map_err(io)?;
    serde_json::from_slice(&header)
        .map_err(|e| bad(format!("not a safetensors file: header is not JSON ({e})")))
}

#[cfg(test)]
mod tests {
    use super::*;
    use tch::{Device, Kind};

    fn store(width: i64, kind: Kind) -> nn::VarStore {
        let mut vs = nn::VarStore::new(Device::Cpu);
        let _ = nn::linear(vs.root() / "fc", 3, width, Default::default());
        vs.set_kind(kind);
        vs
    }

    fn save(vs: &nn::VarStore, path: &Path, extra: &[(&str, Tensor)]) {
        let mut named: Vec<(String, Tensor)> = vs.variables().into_iter().collect();
        named.extend(
            extra
                .iter()
                .map(|(n, t)| (n.to_string(), t.shallow_clone())),
        );
        Tensor::write_safetensors(&named, path).unwrap();
    }

    fn problems(result: Result<()>) -> Vec<String> {
        match result {
            Err(NetError::CheckpointMismatch { problems, .. }) => problems,
            other => panic!("expected a mismatch, got {other:?}"),
        }
    }

    #[test]
    fn strict_loading_names_every_problem_and_loads_nothing_on_error() {
        let dir = std::env::temp_dir().join(format!("cm-nets-strict-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("fc.safetensors");
        let saved = store(2, Kind::Float);
        save(&saved, &path, &[]);
        let loaded = store(2, Kind::Float);
        load_strict(&path, &loaded).unwrap();
        assert!(saved.variables()["fc.weight"].equal(&loaded.variables()["fc.weight"]));

        // Shape, then dtype, each by name with both values.
        let narrow = store(1, Kind::Float);
        let before = narrow.variables()["fc.bias"].copy();
        let p = problems(load_strict(&path, &narrow));
        assert_eq!(
            p,
            [
                "tensor `fc.bias`: expected shape [1], found [2]",
                "tensor `fc.weight`: expected shape [1, 3], found [2, 3]",
            ]
        );
        assert!(narrow.variables()["fc.bias"].equal(&before));
        let p = problems(load_strict(&path, &store(2, Kind::Double)));
        assert_eq!(
            p[1],
            "tensor `fc.weight`: expected dtype Double, found Float"
        );

        // Missing and unexpected; ignored suffixes may be left over.
        let extra = dir.join("extra.safetensors");
        save(&saved, &extra, &[("fc.count", Tensor::from_slice(&[0i64]))]);
        let p = problems(load_strict(&extra, &loaded));
        assert_eq!(
            p,
            ["unexpected tensor `fc.count` (shape [1]) is not in the network"]
        );
        load_strict_tensors(&extra, loaded.variables(), &["count"]).unwrap();
        let mut vars: Vec<(String, Tensor)> = loaded.variables().into_iter().collect();
        vars.push((
            "fc.gain".into(),
            Tensor::ones([2], (Kind::Float, Device::Cpu)),
        ));
        let p = problems(load_strict_tensors(&path, vars, &[]));
        assert_eq!(p, ["missing tensor `fc.gain` (expected shape [2])"]);

        // Absent and corrupt files are errors naming them.
        let err = load_strict(&dir.join("absent.safetensors"), &loaded).unwrap_err();
        assert!(err.to_string().contains("absent.safetensors"), "{err}");
        let corrupt = dir.join("corrupt.safetensors");
        std::fs::write(&corrupt, b"not a safetensors file").unwrap();
        let err = load_strict(&corrupt, &loaded).unwrap_err();
        assert!(err.to_string().contains("corrupt.safetensors"), "{err}");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
