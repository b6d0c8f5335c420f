//! Checkpoint metadata: every saved file carries the cm-rs version and the
//! network config as JSON in its safetensors header (read back here by a
//! header parser written independently of cm-nets' reader), and a file
//! without its TOML sidecar loads from that metadata alone.

use std::collections::BTreeMap;
use std::io::Read;
use std::path::Path;

use cm_nets::{Model, NetConfig, UNetConfig, META_NET, META_VERSION};
use tch::{Device, Kind, Tensor};

/// The `__metadata__` table of a safetensors file, parsed by hand: u64 LE
/// header length, then the JSON header.
fn header(path: &Path) -> serde_json::Value {
    let mut f = std::fs::File::open(path).unwrap();
    let mut n = [0u8; 8];
    f.read_exact(&mut n).unwrap();
    let mut h = vec![0u8; u64::from_le_bytes(n) as usize];
    f.read_exact(&mut h).unwrap();
    serde_json::from_slice(&h).unwrap()
}

fn small_unet() -> NetConfig {
    NetConfig::Unet(UNetConfig {
        model_channels: 16,
        num_classes: 3,
        ..UNetConfig::default()
    })
}

#[test]
fn saved_files_carry_version_config_and_extras() {
    let _rng = cm_runtime::lock_global_rng();
    let dir = tempfile::tempdir().unwrap();
    let mut model = Model::new(small_unet(), Device::Cpu).unwrap();
    model.set_metadata("cm_rs.card", r#"{"kind":"edm"}"#);
    let path = dir.path().join("w.safetensors");
    model.save(&path).unwrap();
    let h = header(&path);
    let meta = h["__metadata__"].as_object().unwrap();
    assert_eq!(meta["format"], "pt");
    assert_eq!(meta[META_VERSION], env!("CARGO_PKG_VERSION"));
    assert_eq!(meta["cm_rs.card"], r#"{"kind":"edm"}"#);
    let net: NetConfig = serde_json::from_str(meta[META_NET].as_str().unwrap()).unwrap();
    assert_eq!(&net, model.config());
    // Every variable is in the header with its shape and dtype.
    for (name, t) in model.var_store().variables() {
        let entry = &h[name.as_str()];
        assert_eq!(entry["dtype"], "F32", "{name}");
        let shape: Vec<i64> = serde_json::from_value(entry["shape"].clone()).unwrap();
        assert_eq!(shape, t.size(), "{name}");
    }
    // cm-nets' own reader agrees.
    let read: BTreeMap<String, String> = cm_nets::read_metadata(&path).unwrap();
    assert_eq!(read.len(), 4);
    assert_eq!(read["cm_rs.card"], r#"{"kind":"edm"}"#);
}

#[test]
fn a_file_without_its_sidecar_loads_from_metadata() {
    let _rng = cm_runtime::lock_global_rng();
    let dir = tempfile::tempdir().unwrap();
    tch::manual_seed(7);
    let mut model = Model::new(small_unet(), Device::Cpu).unwrap();
    model.set_metadata("note", "kept");
    let path = dir.path().join("w.safetensors");
    model.save(&path).unwrap();
    std::fs::remove_file(cm_nets::sidecar_path(&path)).unwrap();
    let loaded = Model::from_checkpoint(&path, Device::Cpu).unwrap();
    assert_eq!(loaded.config(), model.config());
    assert_eq!(
        loaded.metadata().get("note").map(String::as_str),
        Some("kept")
    );
    assert!(!loaded.metadata().contains_key(META_NET));
    // Same weights: the same output on the same input.
    let x = Tensor::randn([2, 1, 28, 28], (Kind::Float, Device::Cpu));
    let c = Tensor::from_slice(&[0.1f32, 1.0]);
    let cond = cm_core::Conditioning::none();
    let a = model.forward_t(&x, &c, cond, false);
    let b = loaded.forward_t(&x, &c, cond, false);
    assert_eq!(a, b);
    // A safetensors file written by tch (no metadata) and no sidecar: the
    // error names the sidecar that is missing.
    let bare = dir.path().join("bare.safetensors");
    let named: Vec<(String, Tensor)> = model
        .var_store()
        .variables()
        .into_iter()
        .map(|(n, t)| (n, t.contiguous()))
        .collect();
    Tensor::write_safetensors(&named, &bare).unwrap();
    assert!(cm_nets::read_metadata(&bare).unwrap().is_empty());
    let err = Model::from_checkpoint(&bare, Device::Cpu)
        .unwrap_err()
        .to_string();
    assert!(err.contains("bare.toml"), "{err}");
}

#[test]
fn a_non_safetensors_file_is_refused_by_the_header_reader() {
    let _rng = cm_runtime::lock_global_rng();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("junk.safetensors");
    // A header length far beyond the file.
    let mut bytes = u64::MAX.to_le_bytes().to_vec();
    bytes.extend_from_slice(b"{}");
    std::fs::write(&path, &bytes).unwrap();
    let err = cm_nets::read_metadata(&path).unwrap_err().to_string();
    assert!(err.contains("not a safetensors file"), "{err}");
    std::fs::write(&path, [2u8, 0, 0, 0, 0, 0, 0, 0, b'[', b']']).unwrap();
    assert!(cm_nets::read_metadata(&path).unwrap().is_empty());
    std::fs::write(&path, [1u8, 0, 0, 0, 0, 0, 0, 0, b'x']).unwrap();
    let err = cm_nets::read_metadata(&path).unwrap_err().to_string();
    assert!(err.contains("not JSON"), "{err}");
}
