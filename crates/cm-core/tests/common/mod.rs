//! Helpers shared by cm-core's integration tests: the committed fixtures and
//! tensor-to-`Vec<f64>` conversion.

#![allow(dead_code)]

use serde_json::Value;
use tch::{Kind, Tensor};

/// The values `tests/fixtures/make_fixtures.py` computed independently.
pub fn fixtures() -> Value {
    let text = include_str!("../fixtures/fixtures.json");
    serde_json::from_str(text).expect("fixtures.json is valid JSON")
}

/// A JSON array of numbers as `Vec<f64>`.
pub fn floats(v: &Value) -> Vec<f64> {
    v.as_array()
        .expect("array")
        .iter()
        .map(|x| x.as_f64().expect("number"))
        .collect()
}

/// A tensor's values, flattened, as `f64`.
pub fn to_vec(t: &Tensor) -> Vec<f64> {
    Vec::<f64>::try_from(t.to_kind(Kind::Double).flatten(0, -1)).expect("tensor to Vec<f64>")
}

/// Asserts `|a - b| <= rel * max(|a|, |b|) + abs` elementwise.
pub fn assert_close(got: &[f64], want: &[f64], rel: f64, abs: f64, what: &str) {
    assert_eq!(got.len(), want.len(), "{what}: length");
    for (i, (g, w)) in got.iter().zip(want).enumerate() {
        let tol = rel * g.abs().max(w.abs()) + abs;
        assert!(
            (g - w).abs() <= tol,
            "{what}[{i}]: got {g}, want {w} (tol {tol})"
        );
    }
}
