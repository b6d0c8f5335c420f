//! `cm bench`: the rows of the side-by-side with PyTorch (docs/benchmarks.md)
//! timed through the library exactly as the commands use it: the
//! `fmnist-unet` preset's forward pass, forward + backward, one EDM teacher
//! training step and one CD training step (objective, Adam with clipping,
//! EMAs, as `cm-train`'s loop runs them) and 1-step sampling through
//! `cm_sample::Pipeline`.
//!
//! Alone it prints median / min milliseconds per row. With `--serve` it is
//! the Rust worker of `cargo xtask bench --vs-pytorch`, which interleaves it
//! with the PyTorch port (xtask/pytorch/cm_port.py) round by round: JSON
//! lines on stdin and stdout, the same protocol as the port's.

use std::collections::BTreeMap;
use std::io::{BufRead, Write};
use std::path::PathBuf;
use std::time::Instant;

use anyhow::{bail, Context, Result};
use serde::{Deserialize, Serialize};
use tch::{Device, Kind, Tensor};

use cm_core::{Conditioning, ConsistencyConfig, EdmConfig, PseudoHuber};
use cm_distill::{CdConfig, CdObjective};
use cm_nets::{Model, NetConfig};
use cm_sample::{ModelCard, Pipeline};
use cm_train::{
    Batch, EdmObjective, EdmObjectiveConfig, Ema, Objective, Optimizer, OptimizerConfig,
};

/// The rows, in table order.
pub(crate) const ROWS: &[&str] = &[
    "forward_b1",
    "forward_b64",
    "forward_backward_b64",
    "edm_step_b64",
    "cd_step_b64",
    "sample_1step_b1",
    "sample_1step_b64",
];

/// Largest `--reps` (each rep of the slowest row takes about a second).
const MAX_REPS: usize = 10_000;

#[derive(Debug, clap::Args)]
pub(crate) struct BenchArgs {
    /// Rows to time (comma-separated; default all): forward_b1, forward_b64,
    /// forward_backward_b64, edm_step_b64, cd_step_b64, sample_1step_b1,
    /// sample_1step_b64.
    #[arg(long, value_delimiter = ',')]
    rows: Vec<String>,
    /// Timed repetitions per row (1 to 10,000), after 2 untimed ones.
    #[arg(long, default_value_t = 20)]
    reps: usize,
    /// libtorch threads: `auto` (cm-rs's policy, see docs/benchmarks.md) or
    /// a count.
    #[arg(long, default_value = "auto")]
    threads: cm_runtime::Threads,
    /// Run inference through libtorch's operations only, without the
    /// U-Net's small-batch path (for A/B timing; docs/benchmarks.md).
    #[arg(long)]
    eager: bool,
    /// Serve the rows over stdin/stdout as JSON lines (the Rust worker of
    /// `cargo xtask bench --vs-pytorch`).
    #[arg(long)]
    serve: bool,
    /// With --serve: where to write the weights and the reference
    /// input/output the PyTorch port checks itself against.
    #[arg(long, default_value = "target/vs-pytorch")]
    dir: PathBuf,
}

/// Everything the rows need, built once (weights random, seeded).
struct Rows {
    net: Model,
    x1: Tensor,
    s1: Tensor,
    x64: Tensor,
    s64: Tensor,
    data: Tensor,
    train_net: Model,
    edm: Trainer<EdmObjective>,
    cd: Trainer<CdObjective>,
    pipeline: Pipeline,
    step: u64,
}

/// One objective on the training loop's per-step work: loss, backward,
/// gradient norm, clipped Adam, the objective's own update, the EMA.
struct Trainer<O> {
    objective: O,
    online: Model,
    optimizer: Optimizer,
    ema: Ema,
    lr: f64,
}

impl<O: Objective> Trainer<O> {
    fn new(objective: O, online: Model, lr: f64) -> Result<Self> {
        let config = OptimizerConfig {
            lr,
            grad_clip: Some(1.0),
            ..OptimizerConfig::default()
        };
        let optimizer = Optimizer::new(online.trainable_variables(), config);
        let mut ema_model = Model::new(online.config().clone(), Device::Cpu)?;
        ema_model.copy_from(&online)?;
        Ok(Trainer {
            objective,
            online,
            optimizer,
            ema: Ema {
                rate: 0.999,
                warmup: false,
                model: ema_model,
            },
            lr,
        })
    }

    fn step(&mut self, batch: &Batch, step: u64) -> Result<()> {
        self.optimizer.zero_grad();
        let loss = self.objective.loss(&self.online, batch, step)?;
        let _ = loss.double_value(&[]); // the loop reads the loss every step
        loss.backward();
        let norm = self.optimizer.grad_norm();
        self.optimizer.step(self.lr, norm);
        self.objective.after_step(&self.online, step)?;
        self.ema.update(&self.online, step);
        Ok(())
    }
}

impl Rows {
    fn new(dir: &std::path::Path) -> Result<Rows> {
        tch::manual_seed(0);
        let config = NetConfig::preset("fmnist-unet").expect("a built-in preset");
        let mut base = Model::new(config.clone(), Device::Cpu)?;
        // Every weight perturbed, so the zero-initialised layers cost in the
        // forward pass what they do after training.
        tch::no_grad(|| {
            for mut v in base.var_store().trainable_variables() {
                let _ = v.g_add_(&(v.randn_like() * 0.02));
            }
        });
        let copy = |m: &Model| -> Result<Model> {
            let mut out = Model::new(config.clone(), Device::Cpu)?;
            out.copy_from(m)?;
            Ok(out)
        };
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        let weights = dir.join("weights.safetensors");
        base.save(&weights)?;
        base.var_store_mut().freeze();
        let shape = [1i64, 28, 28];
        let with_batch = |b: i64| [b, shape[0], shape[1], shape[2]];
        let opts = (Kind::Float, Device::Cpu);
        let x1 = Tensor::randn(with_batch(1), opts);
        let x64 = Tensor::randn(with_batch(64), opts);
        let s1 = Tensor::randn([1], opts).exp();
        let s64 = Tensor::randn([64], opts).exp();
        let data = Tensor::rand(with_batch(64), opts) * 2.0 - 1.0;

        let edm_config = EdmObjectiveConfig::default();
        let edm = Trainer::new(EdmObjective { config: edm_config }, copy(&base)?, 4e-4)?;
        let student = copy(&base)?;
        let teacher = copy(&base)?;
        let metric = Box::new(PseudoHuber::for_dim(28 * 28));
        let cd_objective = CdObjective::new(
            CdConfig::default(),
            teacher,
            EdmConfig::default(),
            &student,
            metric,
        )?;
        let cd = Trainer::new(cd_objective, student, 2e-4)?;
        let card = ModelCard::Consistency {
            weights,
            consistency: ConsistencyConfig::default(),
            timesteps: BTreeMap::new(),
            scheduler: None,
            autoencoder: None,
            guidance: None,
            lora: Vec::new(),
        };
        let pipeline = Pipeline::new(card, copy(&base)?);

        // The reference the port checks itself against: same input, same output.
        let io_x = Tensor::randn(with_batch(4), opts);
        let io_c = Tensor::randn([4], opts);
        let io_y = tch::no_grad(|| base.forward_t(&io_x, &io_c, Conditioning::none(), false));
        Tensor::write_safetensors(
            &[("x", &io_x), ("c_noise", &io_c), ("y", &io_y.contiguous())],
            dir.join("io.safetensors"),
        )?;
        let train_net = copy(&base)?;
        Ok(Rows {
            net: base,
            x1,
            s1,
            x64,
            s64,
            data,
            train_net,
            edm,
            cd,
            pipeline,
            step: 0,
        })
    }

    fn run(&mut self, row: &str) -> Result<()> {
        let batch = || Batch {
            x: self.data.shallow_clone(),
            labels: None,
        };
        let _out: Tensor = match row {
            "forward_b1" => tch::no_grad(|| {
                self.net
                    .forward_t(&self.x1, &self.s1, Conditioning::none(), false)
            }),
            "forward_b64" => tch::no_grad(|| {
                self.net
                    .forward_t(&self.x64, &self.s64, Conditioning::none(), false)
            }),
            "forward_backward_b64" => {
                for v in self.train_net.var_store().trainable_variables() {
                    let mut v = v;
                    v.zero_grad();
                }
                let c = self.s64.log() * 0.25;
                let out = self
                    .train_net
                    .forward_t(&self.x64, &c, Conditioning::none(), true);
                out.mean(Kind::Float).backward();
                out
            }
            "edm_step_b64" => {
                let b = batch();
                self.edm.step(&b, self.step)?;
                self.step += 1;
                Tensor::new()
            }
            "cd_step_b64" => {
                let b = batch();
                self.cd.step(&b, self.step)?;
                self.step += 1;
                Tensor::new()
            }
            "sample_1step_b1" => self.pipeline.generate(1, 1, self.step)?,
            "sample_1step_b64" => self.pipeline.generate(64, 1, self.step)?,
            other => bail!("unknown row {other:?}: expected one of {}", ROWS.join(", ")),
        };
        Ok(())
    }

    fn time(&mut self, row: &str, reps: usize) -> Result<Vec<f64>> {
        let mut ms = Vec::with_capacity(reps);
        for _ in 0..reps {
            let t = Instant::now();
            self.run(row)?;
            ms.push(t.elapsed().as_secs_f64() * 1e3);
        }
        Ok(ms)
    }
}

/// Median and minimum of a list of times.
pub(crate) fn median_min(ms: &[f64]) -> (f64, f64) {
    let mut v = ms.to_vec();
    v.sort_by(f64::total_cmp);
    let median = if v.is_empty() {
        f64::NAN
    } else if v.len() % 2 == 1 {
        v[v.len() / 2]
    } else {
        (v[v.len() / 2 - 1] + v[v.len() / 2]) / 2.0
    };
    (median, v.first().copied().unwrap_or(f64::NAN))
}

#[derive(Debug, Deserialize)]
#[serde(tag = "cmd", rename_all = "snake_case")]
enum Request {
    Run { row: String, reps: usize },
    Quit,
}

#[derive(Debug, Serialize)]
struct Ready {
    ok: bool,
    weights: PathBuf,
    io: PathBuf,
    threads: i32,
    policy: String,
    params: i64,
    flops_per_sample: u64,
}

pub(crate) fn bench(args: &BenchArgs) -> Result<()> {
    if !(1..=MAX_REPS).contains(&args.reps) {
        bail!("--reps {}: expected 1 to {MAX_REPS}", args.reps);
    }
    let applied = cm_runtime::apply_threads(args.threads)?;
    cm_nets::unet::small_batch::set_enabled(!args.eager);
    let rows: Vec<String> = if args.rows.is_empty() {
        ROWS.iter().map(|r| r.to_string()).collect()
    } else {
        args.rows.clone()
    };
    for r in &rows {
        if !ROWS.contains(&r.as_str()) {
            bail!("--rows: unknown row {r:?}: expected {}", ROWS.join(", "));
        }
    }
    let mut state = Rows::new(&args.dir)?;
    if args.serve {
        let ready = Ready {
            ok: true,
            weights: args.dir.join("weights.safetensors"),
            io: args.dir.join("io.safetensors"),
            threads: tch::get_num_threads(),
            policy: applied.describe(),
            params: state.net.num_params(),
            flops_per_sample: state.net.flops_per_sample(),
        };
        let mut out = std::io::stdout().lock();
        writeln!(out, "{}", serde_json::to_string(&ready)?)?;
        out.flush()?;
        for line in std::io::stdin().lock().lines() {
            let line = line.context("reading a request")?;
            let request: Request = serde_json::from_str(&line)
                .with_context(|| format!("a request that is not understood: {line}"))?;
            match request {
                Request::Run { row, reps } => {
                    if !(1..=MAX_REPS).contains(&reps) {
                        bail!("reps {reps}: expected 1 to {MAX_REPS}");
                    }
                    let ms = state.time(&row, reps)?;
                    writeln!(out, "{}", serde_json::json!({ "ms": ms }))?;
                    out.flush()?;
                }
                Request::Quit => break,
            }
        }
        return Ok(());
    }
    eprintln!(
        "cm bench: fmnist-unet, {}, small-batch path {}",
        applied.describe(),
        if args.eager { "off" } else { "on" }
    );
    println!("| row | median ms | min ms |");
    println!("| --- | ---: | ---: |");
    for row in &rows {
        state.time(row, 2)?;
        let (median, min) = median_min(&state.time(row, args.reps)?);
        println!("| {row} | {median:.2} | {min:.2} |");
    }
    Ok(())
}
