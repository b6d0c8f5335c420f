//! `DataSource` configs: TOML spellings of every source, defaults, unknown
//! fields, and loading a toy source.

use std::path::PathBuf;

use cm_data::{ColorMode, DataSource, Dataset, LoaderConfig, SplitRule, ToyConfig, ToyKind};

fn parse<T: serde::de::DeserializeOwned>(text: &str) -> Result<T, toml::de::Error> {
    toml::from_str(text)
}

#[test]
fn toml_spellings() {
    assert_eq!(DataSource::default(), DataSource::FashionMnist);
    assert_eq!(
        parse::<DataSource>("kind = \"fashion-mnist\"").unwrap(),
        DataSource::FashionMnist
    );
    assert_eq!(
        parse::<DataSource>("kind = \"mnist\"").unwrap(),
        DataSource::Mnist
    );
    assert_eq!(
        parse::<DataSource>("kind = \"idx\"\ndir = \"/d\"").unwrap(),
        DataSource::Idx {
            dir: PathBuf::from("/d")
        }
    );
    assert_eq!(
        parse::<DataSource>("kind = \"cifar10\"\ndir = \"/c\"").unwrap(),
        DataSource::Cifar10 {
            dir: PathBuf::from("/c")
        }
    );
    assert_eq!(
        parse::<DataSource>(
            "kind = \"image-folder\"\ndir = \"/f\"\nresolution = 64\ncolor = \"grey\"\nsplit = { test-one-in-every = 10 }"
        )
        .unwrap(),
        DataSource::ImageFolder {
            dir: PathBuf::from("/f"),
            resolution: 64,
            color: ColorMode::Grey,
            split: SplitRule::TestOneInEvery(10),
        }
    );
    assert_eq!(
        parse::<DataSource>("kind = \"image-folder\"\ndir = \"/f\"").unwrap(),
        DataSource::ImageFolder {
            dir: PathBuf::from("/f"),
            resolution: 32,
            color: ColorMode::Rgb,
            split: SplitRule::NoTest,
        }
    );
    assert_eq!(
        parse::<DataSource>("kind = \"toy\"\ndistribution = \"swiss-roll\"\nseed = 3").unwrap(),
        DataSource::Toy(ToyConfig {
            distribution: ToyKind::SwissRoll,
            n_train: 100_000,
            n_test: 10_000,
            seed: 3,
        })
    );
    assert!(parse::<DataSource>("kind = \"svhn\"").is_err());
    assert!(parse::<DataSource>("kind = \"idx\"\ndir = \"/d\"\ndri = 1").is_err());
    assert!(parse::<DataSource>("kind = \"image-folder\"\ndir = \"/d\"\nresolutoin = 1").is_err());
    assert!(parse::<DataSource>("kind = \"toy\"\ndistribution = \"two-moons\"\nsede = 3").is_err());

    let loader: LoaderConfig = parse("batch_size = 128\nhflip = true\npad = 2").unwrap();
    assert_eq!(
        loader,
        LoaderConfig::new(128, 0).with_hflip(true).with_pad(2)
    );
    assert!(parse::<LoaderConfig>("batch = 3").is_err());
}

#[test]
fn load_a_toy_source() {
    let src = DataSource::Toy(ToyConfig {
        distribution: ToyKind::EightGaussians,
        n_train: 500,
        n_test: 50,
        seed: 1,
    });
    let ds = src.load(None).unwrap();
    assert!(matches!(ds, Dataset::Points(_)));
    assert_eq!(ds.num_classes(), 8);
    assert_eq!(ds.example_shape(), vec![2]);
    assert_eq!(ds.train().len(), 500);
    assert_eq!(ds.test().len(), 50);
}

/// Error messages show a source as the user writes it: a TOML inline table,
/// `kind` first, that parses back to the same source (no Rust type names).
#[test]
fn sources_display_as_toml_inline_tables() {
    #[derive(serde::Deserialize)]
    struct Holder {
        data: DataSource,
    }
    let sources = [
        DataSource::FashionMnist,
        DataSource::ColoredFashionMnist {
            seed: 3,
            hue_jitter: 12.5,
        },
        DataSource::ImageFolder {
            dir: PathBuf::from("/data/faces"),
            resolution: 64,
            color: ColorMode::Rgb,
            split: SplitRule::NoTest,
        },
        DataSource::Toy(ToyConfig::new(ToyKind::TwoMoons, 7)),
    ];
    for source in sources {
        let shown = source.to_string();
        assert!(shown.starts_with("{ kind = \""), "{shown}");
        assert!(
            !shown.contains("Mnist") && !shown.contains("Toy("),
            "{shown}"
        );
        let back: Holder = parse(&format!("data = {shown}")).unwrap();
        assert_eq!(back.data, source, "{shown}");
    }
    assert_eq!(
        DataSource::ColoredFashionMnist {
            seed: 0,
            hue_jitter: 20.0
        }
        .to_string(),
        "{ kind = \"colored-fashion-mnist\", hue_jitter = 20.0, seed = 0 }"
    );
}
