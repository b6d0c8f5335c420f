//! The `cm eval` config: the committed files load, and invalid values are
//! reported by field.

use cm_eval::EvalConfig;

fn parse(text: &str) -> Result<EvalConfig, String> {
    cm_core::parse_toml::<EvalConfig>(text, "test.toml").map_err(|e| e.to_string())
}

const MODELS: &str = r#"
[[models]]
name = "CD"
card = "runs/cd/model.toml"
steps = [1, 2]
"#;

#[test]
fn committed_configs_load() {
    let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/../../configs/eval");
    let mut n = 0;
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_some_and(|e| e == "toml") {
            let c: EvalConfig =
                cm_core::load_toml(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
            assert!(!c.models.is_empty());
            n += 1;
        }
    }
    assert!(n >= 2);
    let f: EvalConfig = cm_core::load_toml(format!("{dir}/fmnist.toml")).unwrap();
    assert_eq!(
        f.models.iter().map(|m| m.name.as_str()).collect::<Vec<_>>(),
        ["teacher", "CD", "iCT"]
    );
    assert!(f.models[2].optional && !f.models[1].optional);
}

#[test]
fn defaults_fill_everything_but_the_models() {
    let c = parse(MODELS).unwrap();
    assert_eq!(
        (c.samples, c.k, c.is_splits, c.batch_size),
        (2000, 3, 10, 250)
    );
    assert_eq!(c.kid, cm_eval::KidConfig::default());
    assert_eq!(c.classifier, cm_eval::ClassifierConfig::default());
    assert!(c.data_row);
}

#[test]
fn invalid_values_name_the_field() {
    let e = parse(&format!("samples = 1\n{MODELS}")).unwrap_err();
    assert!(e.contains("`samples`"), "{e}");
    let e = parse(&format!("[kid]\nsubsets = 0\n{MODELS}")).unwrap_err();
    assert!(e.contains("kid.subsets"), "{e}");
    let e = parse(&format!("[classifier]\ndropout = 1.5\n{MODELS}")).unwrap_err();
    assert!(e.contains("classifier.dropout"), "{e}");
    let e = parse("[[models]]\nname = \"x\"\ncard = \"m.toml\"\nsteps = [1, 0]\n").unwrap_err();
    assert!(e.contains("models[0].steps"), "{e}");
    let e = parse("[[models]]\nname = \"x\"\ncard = \"m.toml\"\nsteps = [1]\nguidance = -1.5\n")
        .unwrap_err();
    assert!(
        e.contains("models[0].guidance") && e.contains("[-1, 100]"),
        "{e}"
    );
    // w = -1 is the unconditional model, a valid scale.
    assert!(
        parse("[[models]]\nname = \"x\"\ncard = \"m.toml\"\nsteps = [1]\nguidance = -1.0\n")
            .is_ok()
    );
    // Times for 3 steps on an entry without a 3-step row.
    let e =
        parse("[[models]]\nname = \"x\"\ncard = \"m.toml\"\nsteps = [1, 2]\ntaus = [2.0, 0.5]\n")
            .unwrap_err();
    assert!(e.contains("models[0].taus") && e.contains("3 steps"), "{e}");
    assert!(parse(
        "[[models]]\nname = \"x\"\ncard = \"m.toml\"\nsteps = [1, 3]\ntaus = [2.0, 0.5]\n"
    )
    .is_ok());
    let e = parse("samples = 10\n").unwrap_err();
    assert!(e.contains("models"), "{e}");
    let e = parse(&format!("sample = 10\n{MODELS}")).unwrap_err();
    assert!(e.contains("sample"), "{e}");
    let e = parse(&format!(
        "[data]\nkind = \"toy\"\ndistribution = \"two-moons\"\n{MODELS}"
    ));
    assert!(e.unwrap_err().contains("data.kind"));
}
