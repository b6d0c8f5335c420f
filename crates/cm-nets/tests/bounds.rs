//! Network sizes a user can set are bounded before anything is allocated:
//! the parameter estimate bounds the real count from above for every preset
//! (and is within a small factor of it), and the sizes a fuzzer found to
//! crash libtorch's allocator are refused with the field named.

use cm_core::Validate;
use cm_nets::{Model, NetConfig, MAX_PARAMS, PRESETS};
use tch::Device;

#[test]
fn the_estimate_bounds_every_preset_from_above() {
    for name in PRESETS {
        let config = NetConfig::preset(name).unwrap();
        let estimate = config.approx_params();
        assert!(estimate < MAX_PARAMS, "{name}: {estimate}");
        // The big GPU presets take seconds to build on CPU; the estimate's
        // formula is the same for them.
        if estimate > 5e7 {
            continue;
        }
        let actual = Model::new(config, Device::Cpu).unwrap().num_params() as f64;
        assert!(
            estimate >= actual && estimate <= 8.0 * actual,
            "{name}: estimate {estimate:.3e}, actual {actual:.3e}"
        );
    }
}

fn refused(toml_text: &str) -> String {
    let config: NetConfig = toml::from_str(toml_text).expect("parses");
    // Refused by validation, before Model::new allocates anything.
    let err = config.validate().expect_err("must be refused").to_string();
    assert!(Model::new(config, Device::Cpu).is_err());
    err
}

#[test]
fn hostile_sizes_are_refused_with_the_field() {
    let err = refused("arch = \"mlp\"\nhidden = 10000000");
    assert!(err.contains("hidden"), "{err}");
    let err = refused("arch = \"unet\"\nmodel_channels = 100000");
    assert!(err.contains("model_channels"), "{err}");
    let err = refused("arch = \"unet\"\nmodel_channels = 4096\nchannel_mult = [8, 8]");
    assert!(err.contains("parameters"), "{err}");
    let err = refused("arch = \"dit\"\nresolution = 67296\npatch_size = 2");
    assert!(err.contains("resolution"), "{err}");
    let err = refused("arch = \"dit\"\nfrequency_embedding_size = 4294967296");
    assert!(err.contains("frequency_embedding_size"), "{err}");
    let err = refused("arch = \"unet\"\nchannel_mult = [1, 1, 1, 1, 1, 1, 1, 1, 1, 1]");
    assert!(err.contains("channel_mult"), "{err}");
    let err = refused("arch = \"mlp\"\ndepth = 4000\nhidden = 65536");
    assert!(err.contains("parameters"), "{err}");
    // Activations: a U-Net attending at 4096 x 4096 (2.8e14 attention
    // entries), or an image side beyond the loaders' limit.
    let err = refused(
        "arch = \"unet\"\nresolution = 4096\nmodel_channels = 8\nchannel_mult = [1, 1]\nattn_resolutions = [4096]",
    );
    assert!(err.contains("attn_resolutions"), "{err}");
    let err = refused("arch = \"unet\"\nresolution = 65536\nmodel_channels = 8");
    assert!(err.contains("resolution"), "{err}");
}
