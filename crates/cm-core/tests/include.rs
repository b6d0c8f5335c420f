//! `include = "file.toml"` in configs: the included file is the base, the
//! keys beside `include` override it (recursively), paths resolve against
//! the including file, and every failure names the file and what was
//! expected.

use cm_core::{load_toml, parse_toml, ConsistencyRecipe, EdmConfig, ScheduleConfig};

/// A scratch folder with a `sub/` folder, removed when the guard drops.
fn scratch(name: &str) -> tempfile::TempDir {
    let dir = tempfile::Builder::new()
        .prefix(&format!("cm-core-include-{name}-"))
        .tempdir()
        .unwrap();
    std::fs::create_dir_all(dir.path().join("sub")).unwrap();
    dir
}

#[derive(Debug, PartialEq, serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct Pair {
    edm: EdmConfig,
    recipe: ConsistencyRecipe,
}

impl cm_core::Validate for Pair {
    fn validate(&self) -> cm_core::Result<()> {
        self.edm.validate_at("edm.")?;
        self.recipe.validate_at("recipe.")
    }
}

#[test]
fn included_tables_are_the_base_and_local_keys_override() {
    let guard = scratch("override");
    let dir = guard.path();
    std::fs::write(
        dir.join("sub/base.toml"),
        "sigma_data = 1.0\nsigma_max = 40.0\n",
    )
    .unwrap();
    std::fs::write(
        dir.join("sub/recipe.toml"),
        "[schedule]\nkind = \"fixed\"\nn = 30\nmu = 0.9\n",
    )
    .unwrap();
    std::fs::write(
        dir.join("run.toml"),
        "[edm]\ninclude = \"sub/base.toml\"\nsigma_max = 20.0\n\n\
         [recipe]\ninclude = \"sub/recipe.toml\"\n[recipe.schedule]\nmu = 0.5\n",
    )
    .unwrap();
    let pair: Pair = load_toml(dir.join("run.toml")).unwrap();
    // From the included file, the local override, and the default.
    assert_eq!(pair.edm.sigma_data, 1.0);
    assert_eq!(pair.edm.sigma_max, 20.0);
    assert_eq!(pair.edm.sigma_min, EdmConfig::default().sigma_min);
    // Nested tables merge key by key: n from the file, mu from the override.
    match pair.recipe.schedule {
        ScheduleConfig::Fixed(f) => assert_eq!((f.n, f.mu), (30, 0.5)),
        other => panic!("expected a fixed schedule, got {other:?}"),
    }
}

#[test]
fn includes_resolve_against_the_including_file() {
    let guard = scratch("nested");
    let dir = guard.path();
    // sub/a.toml includes b.toml from its own folder, not the caller's.
    std::fs::write(dir.join("sub/b.toml"), "rho = 5.0\n").unwrap();
    std::fs::write(
        dir.join("sub/a.toml"),
        "include = \"b.toml\"\nsigma_data = 0.7\n",
    )
    .unwrap();
    std::fs::write(dir.join("run.toml"), "include = \"sub/a.toml\"\n").unwrap();
    let edm: EdmConfig = load_toml(dir.join("run.toml")).unwrap();
    assert_eq!((edm.rho, edm.sigma_data), (5.0, 0.7));
}

#[test]
fn include_errors_name_the_file_and_the_problem() {
    let guard = scratch("errors");
    let dir = guard.path();
    std::fs::write(dir.join("run.toml"), "include = \"missing.toml\"\n").unwrap();
    let err = load_toml::<EdmConfig>(dir.join("run.toml"))
        .unwrap_err()
        .to_string();
    assert!(err.contains("missing.toml"), "{err}");

    std::fs::write(dir.join("loop.toml"), "include = \"loop.toml\"\n").unwrap();
    let err = load_toml::<EdmConfig>(dir.join("loop.toml"))
        .unwrap_err()
        .to_string();
    assert!(err.contains("nested includes"), "{err}");

    std::fs::write(dir.join("num.toml"), "include = 3\n").unwrap();
    let err = load_toml::<EdmConfig>(dir.join("num.toml"))
        .unwrap_err()
        .to_string();
    assert!(err.contains("include") && err.contains("string"), "{err}");

    // An included file's bad value is reported with its field path.
    std::fs::write(dir.join("sub/bad.toml"), "sigma_data = -1.0\n").unwrap();
    std::fs::write(dir.join("top.toml"), "include = \"sub/bad.toml\"\n").unwrap();
    let err = load_toml::<EdmConfig>(dir.join("top.toml"))
        .unwrap_err()
        .to_string();
    assert!(err.contains("sigma_data"), "{err}");

    // Text that is not read from a file has nothing to resolve against.
    let err = parse_toml::<EdmConfig>("include = \"x.toml\"\n", "inline").unwrap_err();
    assert!(err.to_string().contains("load_toml"), "{err}");
}

#[test]
fn an_include_in_a_sub_table_wins_over_the_outer_include() {
    let guard = scratch("order");
    let dir = guard.path();
    std::fs::write(
        dir.join("sub/outer.toml"),
        "[edm]\nsigma_data = 2.0\nrho = 3.0\n[recipe.consistency]\nsigma_data = 2.0\n",
    )
    .unwrap();
    std::fs::write(dir.join("sub/edm.toml"), "sigma_data = 0.25\n").unwrap();
    std::fs::write(
        dir.join("run.toml"),
        "include = \"sub/outer.toml\"\n[edm]\ninclude = \"sub/edm.toml\"\n",
    )
    .unwrap();
    let pair: Pair = load_toml(dir.join("run.toml")).unwrap();
    // Written here (through its own include) beats the outer file; what
    // this file does not say comes from the outer file.
    assert_eq!((pair.edm.sigma_data, pair.edm.rho), (0.25, 3.0));
    assert_eq!(pair.recipe.consistency.sigma_data, 2.0);
}
