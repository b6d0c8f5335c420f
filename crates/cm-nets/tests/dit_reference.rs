//! DiT's pieces against the reference implementation's conventions:
//! `get_2d_sincos_pos_embed` of facebookresearch/DiT (values computed by a
//! plain-Python transcription of it, below), and patchify / unpatchify being
//! inverse permutations.

use cm_nets::dit::sincos_2d;
use tch::{Device, Kind, Tensor};

/// DiT's `get_2d_sincos_pos_embed(embed_dim=8, grid_size=3)`, transcribed:
/// `grid = np.meshgrid(grid_w, grid_h)`; first half embeds `grid[0]` (the
/// column), second half `grid[1]` (the row), each `[sin, cos](pos * omega)`
/// with `omega = 1 / 10000^(i / (dim/4))`.
#[rustfmt::skip]
const REFERENCE: [f64; 72] = [
    0.0, 0.0, 1.0, 1.0, 0.0, 0.0, 1.0, 1.0,
    0.841470984808, 0.009999833334, 0.540302305868, 0.999950000417, 0.0, 0.0, 1.0, 1.0,
    0.909297426826, 0.019998666693, -0.416146836547, 0.999800006667, 0.0, 0.0, 1.0, 1.0,
    0.0, 0.0, 1.0, 1.0, 0.841470984808, 0.009999833334, 0.540302305868, 0.999950000417,
    0.841470984808, 0.009999833334, 0.540302305868, 0.999950000417, 0.841470984808, 0.009999833334, 0.540302305868, 0.999950000417,
    0.909297426826, 0.019998666693, -0.416146836547, 0.999800006667, 0.841470984808, 0.009999833334, 0.540302305868, 0.999950000417,
    0.0, 0.0, 1.0, 1.0, 0.909297426826, 0.019998666693, -0.416146836547, 0.999800006667,
    0.841470984808, 0.009999833334, 0.540302305868, 0.999950000417, 0.909297426826, 0.019998666693, -0.416146836547, 0.999800006667,
    0.909297426826, 0.019998666693, -0.416146836547, 0.999800006667, 0.909297426826, 0.019998666693, -0.416146836547, 0.999800006667,
];

#[test]
fn sincos_matches_dit_reference() {
    let got = Vec::<f64>::try_from(sincos_2d(8, 3).to_kind(Kind::Double).flatten(0, -1)).unwrap();
    assert_eq!(got.len(), REFERENCE.len());
    for (i, (g, w)) in got.iter().zip(REFERENCE).enumerate() {
        assert!(
            (g - w).abs() < 1e-6,
            "pos_embed[{}][{}]: {g} vs {w}",
            i / 8,
            i % 8
        );
    }
}

#[test]
fn unpatchify_inverts_patchify() {
    // DiT's patchify (conv with stride p, here an identity kernel) followed by
    // its unpatchify ('nhwpqc->nchpwq') must give back the image.
    let (b, c, p, g) = (2i64, 3i64, 4i64, 7i64);
    let x = Tensor::randn([b, c, g * p, g * p], (Kind::Float, Device::Cpu));
    // Patchify into tokens of (p, q, c) order, as DiT's final linear emits.
    let tokens = x
        .reshape([b, c, g, p, g, p])
        .permute([0, 2, 4, 3, 5, 1])
        .reshape([b, g * g, p * p * c]);
    let back = tokens
        .reshape([b, g, g, p, p, c])
        .permute([0, 5, 1, 3, 2, 4])
        .reshape([b, c, g * p, g * p]);
    assert!(back.equal(&x));
}
