//! Config loading: the TOML presets under `configs/core/` equal the code's
//! presets, round-trip through TOML, and bad values or fields give errors that
//! name the field, the value and what was expected.

use cm_core::{
    load_toml, parse_toml, ConsistencyRecipe, CoreError, DiscretizationSchedule, EdmConfig,
    IndexSamplerConfig, MetricConfig, ScheduleConfig,
};

fn configs_dir() -> std::path::PathBuf {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../configs/core")
}

#[test]
fn preset_files_equal_code_presets() {
    let dir = configs_dir();
    let cases = [
        ("cd.toml", ConsistencyRecipe::cd()),
        ("ct.toml", ConsistencyRecipe::ct()),
        ("ict.toml", ConsistencyRecipe::ict()),
    ];
    for (file, preset) in cases {
        let loaded: ConsistencyRecipe = load_toml(dir.join(file)).unwrap();
        assert_eq!(loaded, preset, "{file}");
    }
    let edm: EdmConfig = load_toml(dir.join("edm.toml")).unwrap();
    assert_eq!(edm, EdmConfig::default());
}

#[test]
fn presets_round_trip_through_toml() {
    for preset in [
        ConsistencyRecipe::cd(),
        ConsistencyRecipe::ct(),
        ConsistencyRecipe::ict(),
    ] {
        let text = toml::to_string(&preset).unwrap();
        let back: ConsistencyRecipe = parse_toml(&text, "round trip").unwrap();
        assert_eq!(back, preset, "{text}");
    }
}

#[test]
fn missing_sections_and_fields_take_paper_defaults() {
    let r: ConsistencyRecipe = parse_toml("", "empty").unwrap();
    assert_eq!(r, ConsistencyRecipe::cd());
    let r: ConsistencyRecipe =
        parse_toml("[schedule]\nkind = \"ct_adaptive\"\ns1 = 200\n", "partial").unwrap();
    match r.schedule {
        ScheduleConfig::CtAdaptive(s) => {
            assert_eq!((s.s0, s.s1, s.mu0, s.total_steps), (2, 200, 0.9, 800_000));
        }
        other => panic!("wrong schedule {other:?}"),
    }
    assert_eq!(r.schedule.at(0).n, 2);
    let r: ConsistencyRecipe = parse_toml("[noise]\nkind = \"lognormal\"\n", "noise").unwrap();
    assert!(
        matches!(r.noise, IndexSamplerConfig::Lognormal(s) if s.p_mean == -1.1 && s.p_std == 2.0)
    );
    let r: ConsistencyRecipe =
        parse_toml("[metric]\nkind = \"pseudo_huber\"\nc = 0.03\n", "metric").unwrap();
    assert_eq!(r.metric, MetricConfig::PseudoHuber { c: Some(0.03) });
}

/// Parses `text`, expects an invalid-value error, returns (field, message).
fn invalid(text: &str) -> (String, String) {
    match parse_toml::<ConsistencyRecipe>(text, "test.toml") {
        Err(e @ CoreError::InvalidConfig { .. }) => {
            let CoreError::InvalidConfig { ref field, .. } = e else {
                unreachable!()
            };
            (field.clone(), e.to_string())
        }
        other => panic!("expected an invalid-value error for {text:?}, got {other:?}"),
    }
}

#[test]
fn bad_values_name_field_value_and_expectation() {
    let cases = [
        ("[consistency]\nrho = 0.0\n", "consistency.rho", "0"),
        ("[consistency]\nrho = -7.0\n", "consistency.rho", "-7"),
        (
            "[consistency]\nsigma_min = 90.0\n",
            "consistency.sigma_max",
            "80",
        ),
        (
            "[consistency]\nsigma_min = 0.0\n",
            "consistency.sigma_min",
            "0",
        ),
        (
            "[consistency]\nsigma_data = -0.5\n",
            "consistency.sigma_data",
            "-0.5",
        ),
        (
            "[consistency]\nsigma_max = nan\n",
            "consistency.sigma_max",
            "NaN",
        ),
        (
            "[schedule]\nkind = \"ct_adaptive\"\ns0 = 10\ns1 = 5\n",
            "schedule.s1",
            "5",
        ),
        (
            "[schedule]\nkind = \"ct_adaptive\"\ns0 = 0\n",
            "schedule.s0",
            "0",
        ),
        (
            "[schedule]\nkind = \"ct_adaptive\"\nmu0 = 1.0\n",
            "schedule.mu0",
            "1",
        ),
        (
            "[schedule]\nkind = \"ct_adaptive\"\nmu0 = -0.1\n",
            "schedule.mu0",
            "-0.1",
        ),
        (
            "[schedule]\nkind = \"ct_adaptive\"\ntotal_steps = 0\n",
            "schedule.total_steps",
            "0",
        ),
        ("[schedule]\nkind = \"fixed\"\nn = 1\n", "schedule.n", "1"),
        (
            "[schedule]\nkind = \"fixed\"\nmu = 1.5\n",
            "schedule.mu",
            "1.5",
        ),
        (
            "[schedule]\nkind = \"ict_exponential\"\ntotal_steps = 3\n",
            "schedule.total_steps",
            "3",
        ),
        (
            "[noise]\nkind = \"lognormal\"\np_std = 0.0\n",
            "noise.p_std",
            "0",
        ),
        (
            "[metric]\nkind = \"pseudo_huber\"\nc = -1.0\n",
            "metric.c",
            "-1",
        ),
    ];
    for (text, field, value) in cases {
        let (got_field, message) = invalid(text);
        assert_eq!(got_field, field, "{text}");
        assert!(
            message.contains(field) && message.contains(value),
            "{message}"
        );
        assert!(
            message.contains("expected") || message.contains(':'),
            "{message}"
        );
    }
}

#[test]
fn parse_errors_name_the_file_and_field() {
    let cases = [
        ("[schedule]\nkind = \"fixed\"\nnn = 18\n", "schedule", "nn"),
        ("[schedule]\nkind = \"cosine\"\n", "schedule.kind", "cosine"),
        (
            "[consistency]\nrho = \"seven\"\n",
            "consistency.rho",
            "string",
        ),
        ("weighting = \"snr\"\n", "weighting", "snr"),
        ("[metrics]\nkind = \"l2\"\n", "metrics", "expected one of"),
    ];
    for (text, field, detail) in cases {
        match parse_toml::<ConsistencyRecipe>(text, "runs/x/config.toml") {
            Err(e @ CoreError::Parse { .. }) => {
                let msg = e.to_string();
                assert!(msg.contains("runs/x/config.toml"), "{msg}");
                assert!(
                    msg.contains(&format!("`{field}`")),
                    "want field {field}: {msg}"
                );
                assert!(msg.contains(detail), "want {detail}: {msg}");
            }
            other => panic!("expected a parse error for {text:?}, got {other:?}"),
        }
    }
}

#[test]
fn missing_file_is_an_io_error_naming_the_path() {
    let err = load_toml::<EdmConfig>("/nonexistent/edm.toml").unwrap_err();
    assert!(matches!(err, CoreError::Io { .. }));
    assert!(err.to_string().contains("/nonexistent/edm.toml"), "{err}");
}

#[test]
fn edm_config_validates_its_fields() {
    let err = parse_toml::<EdmConfig>("p_std = -1.2\n", "edm.toml").unwrap_err();
    assert!(err.to_string().contains("`p_std` = -1.2"), "{err}");
    let err = parse_toml::<EdmConfig>("sigma_max = 0.001\n", "edm.toml").unwrap_err();
    assert!(err.to_string().contains("`sigma_max` = 0.001"), "{err}");
}

#[test]
fn same_file_sees_through_dot_dot_and_links_only() {
    let dir = tempfile::tempdir().unwrap();
    let a = dir.path().join("a.safetensors");
    let b = dir.path().join("b.safetensors");
    std::fs::write(&a, b"x").unwrap();
    std::fs::write(&b, b"x").unwrap();
    std::fs::create_dir(dir.path().join("sub")).unwrap();
    let via_parent = dir.path().join("sub/../a.safetensors");
    assert!(cm_core::same_file(&a, &via_parent));
    #[cfg(unix)]
    {
        let link = dir.path().join("link.safetensors");
        std::os::unix::fs::symlink(&a, &link).unwrap();
        assert!(cm_core::same_file(&link, &a));
    }
    // Same contents, other file; and a missing file equals only itself.
    assert!(!cm_core::same_file(&a, &b));
    let missing = dir.path().join("missing");
    assert!(cm_core::same_file(&missing, &missing));
    assert!(!cm_core::same_file(&missing, &a));
}
