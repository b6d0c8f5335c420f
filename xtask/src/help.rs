//! `cargo xtask help`: the usage text, with the preset lists read from the
//! `configs/` folder so they match what the commands accept.

use std::path::Path;

use crate::presets;

/// The usage text; `{teacher}`, `{cd}`, `{pd}`, `{ect}`, `{lcm}`, `{lcm-lora}`, `{ct}`, `{recipes}` and `{eval}`
/// stand for the preset lists.
const TEMPLATE: &str = "\
cargo xtask: the cm-rs task runner

USAGE:
    cargo xtask <COMMAND> [--cuda] [--procs N [--hostfile FILE]] [-- <extra arguments>]

    Extra arguments after `--` go to cargo for `test` and `bench`
    (`cargo xtask test -- -p cm-core`; a target selection such as `--test NAME`
    skips the doc tests) and to `cm` for the training and eval commands
    (`cargo xtask train-cd -- --threads 1 --tensorboard`). `setup`, `env`,
    `bench --vs-pytorch`, `bench-scale` and `bench-report` refuse them.

COMMANDS:
    setup [--mpi]
             Install libtorch 2.13.0 (what tch 0.26 builds against) from the PyPI
             `torch` wheel into the per-user cache (CPU subset by default, the
             full CUDA stack with --cuda). Idempotent: a second run is instant.
             --mpi: also Open MPI and libclang (apt-get as root; otherwise it
             says what to run), for data-parallel training.
    env [--cargo-config]
             Print the shell exports that let plain `cargo` build the workspace;
             with --cargo-config, the `[env]` table that lets a crate outside
             the workspace build against the same libtorch with no shell
             variable (put it in that crate's .cargo/config.toml;
             docs/embedding.md).
    test     Set-up, then the whole test suite (README's test command). Installs
             Open MPI when it can and then runs the MPI tests too (CM_REQUIRE_MPI=1:
             fail instead of skipping them).
    bench [--quick]
             Set-up, then the criterion benchmarks (reports in target/criterion;
             --quick: criterion's quick mode, what CI's bench job runs).
    bench --vs-pytorch [--rounds N] [--threads N] [--python PY] [--quick]
             cm-rs against a PyTorch 2.13 eager port of the CPU U-Net
             (xtask/pytorch/cm_port.py, checked against cm-rs's output),
             interleaved round by round: forward, forward + backward, EDM and
             CD training steps, 1-step sampling; median / min ms, ratios,
             GFLOP/s (target/vs-pytorch/table.md; docs/benchmarks.md). Makes a
             Python with torch in the cm-rs cache on first use (about 3 GB).
    bench-report
             Criterion's changes against the previous run (target/criterion),
             slowdowns above 10% flagged; reports, never fails (CI bench job).
    bench-scale [--preset {teacher}] [--out DIR]
             Images/s of the teacher and CD steps on 1 process x 1 thread,
             1 x 2 and 2 MPI processes x 1 thread, the all-reduce's share, and
             a model of 8 and 64 ranks at 10 / 100 Gb/s (runs/scale-<preset>/
             scale.md; docs/scale.md). Needs the preset's finished teacher.
    train-cd [--preset {cd}] [--config FILE] [--run-dir DIR] [--resume]
             The main job: consistency distillation on Fashion-MNIST (default).
             Trains the EDM teacher (or reuses a finished one with the same
             config from runs/teachers/), distills it, chooses the 2-step
             time by FID ([search], stored in model.toml), writes 1-step and
             2-step grids and runs/cd-<preset>/report.md. ~55 min on 2 cores;
             `--preset smoke` under 2 minutes.
    train-pd [--preset {pd}] [--config FILE] [--run-dir DIR] [--resume]
             Progressive distillation (Salimans & Ho 2022), the papers'
             baseline: the same teacher, then stages halving the student's
             steps (64 -> 1 by default), each with its grids, report and
             model card in runs/pd-<preset>/steps-NNN; runs/pd-<preset>/report.md.
    train-ect [--preset {ect}] [--config FILE] [--run-dir DIR] [--resume]
             Easy consistency tuning (Geng et al. 2024): the same teacher,
             then a consistency model started from its weights and tuned with
             ECT's continuous pairs; 1-step and 2-step grids, report and model
             card in runs/ect-<preset>.
    train-lcm [--preset {lcm}] [--config FILE] [--run-dir DIR] [--resume]
             Latent consistency model (Luo et al. 2023): the autoencoder,
             the class-conditional latent teacher (both reused when finished,
             under runs/teachers), then latent consistency distillation with
             classifier-free guidance and (fmnist) the few-step times searched
             by FID; decoded 1-, 2- and 4-step grids, report and model card
             in runs/lcm-<preset> (docs/lcm.md).
    train-lcm-lora [--preset {lcm-lora}] [--config FILE] [--run-dir DIR] [--resume]
             LCM-LoRA (Luo et al. 2023): the same autoencoder and teacher
             network (reused when finished; fmnist's teacher trains 4,000
             steps, LCM's 16,000), then LCD into LoRA adapters on the
             frozen teacher at one guidance scale; the adapter file
             lcm_lora.safetensors, grids, report and a card (teacher +
             adapter) in runs/lcm-lora-<preset> (docs/lcm-lora.md).
    train-teacher [--preset {teacher}] [--config FILE] [--run-dir DIR] [--resume]
             Train the EDM teacher alone (runs/teacher-<preset>).
    train-ct [--preset {ct}] [--recipe {recipes}] [--config FILE] [--run-dir DIR] [--resume]
             Consistency training from data alone, no teacher: iCT (default)
             or CT from configs/ct/<preset>-<recipe>.toml into
             runs/<recipe>-<preset>: grids, report.md, model card model.toml.
             Fashion-MNIST iCT takes ~35 min on 2 idle cores; `--preset toy` ~25 s.
    ct-ablation
             The CT -> iCT ablation on 2-D toy data (configs/ct/toy-{ct,ict}.toml):
             every rung, 3 seeds, exact distances; runs/ct-ablation/ablation.md.
             Its options (`cm ct-ablation --help`) go after `--`.
    eval [--preset {eval}] [--config FILE] [--out DIR]
             Sample quality of the configured model cards (FID, KID,
             precision/recall, IS-like in the project's feature space)
             against NFE and time: runs/eval-<preset>/results.md, results.csv,
             fid_vs_nfe.png. Trains the feature network on first use.
    compare [--preset fmnist|smoke] [--out DIR] [--resume]
             The papers' comparison table: trains or reuses every run of the
             preset (teacher + CD, PD, iCT, CT, ECT), then `cm eval` with
             configs/eval/compare-<preset>.toml into runs/compare-<preset>
             (FID, KID, precision/recall, teacher, training time, time per
             sample; sample features cached, so a second call only samples
             what changed) and pastes the table and the FID-against-NFE plot
             into docs/results.md. fmnist: about 3 hours on 2 cores. Extra
             `cm` flags after `--` go to every command: use ones they all
             take (`-- --threads 1`).
    edit-grids [--run-dir DIR] [--out DIR]
             Every zero-shot editing grid of docs/sampling.md (inpainting with
             four masks, colorization, super-resolution x2 and x4, denoising,
             interpolation, SDEdit) from the coloured Fashion-MNIST iCT model
             (default runs/ict-cfmnist, made by `train-ct --preset cfmnist`)
             into docs/images (or --out).
    help     Print this help.

DATA PARALLEL:
    --procs N on train-cd, train-pd, train-ect, train-lcm, train-teacher, train-ct and compare's
    training runs builds `cm` with MPI and runs it as N ranks through
    `mpirun --bind-to none --oversubscribe -n N` (one libtorch thread per rank
    unless `-- --threads T`); --hostfile FILE runs on the machines it lists
    (docs/scale.md). The preset's batch_size is the global batch.

PRESETS:
    A preset NAME of a command is the file configs/<group>/NAME.toml (train-cd:
    cd, train-pd: pd, train-teacher: teacher, eval: eval; train-ct:
    ct/NAME-RECIPE.toml),
    read when the command runs: add a file to add a preset. Without --preset
    the preset is fmnist (and the recipe ict).

OPTIONS:
    --cuda   Use the CUDA libtorch (also: CM_RS_CUDA=1). Builds go to
             target/cuda so CPU and CUDA builds do not evict each other.

ENVIRONMENT:
    LIBTORCH        Use this libtorch 2.13.0 folder instead of installing one.
    CM_RS_CACHE     Cache folder (default $XDG_CACHE_HOME/cm-rs or ~/.cache/cm-rs).
    CM_RS_PYTHON    Python used to run pip (default python3).

Runs build the `cm` binary in release mode (`cargo run --release -p cm-cli`)
in the workspace xtask was started in.
";

/// The help text with the presets found under `root` (`NAME` where the
/// workspace or a group's folder was not found).
pub fn text(root: Option<&Path>) -> String {
    let alternatives = |names: Vec<String>| {
        if names.is_empty() {
            "NAME".to_string()
        } else {
            names.join("|")
        }
    };
    let group = |g: &str| alternatives(root.map(|r| presets::available(r, g)).unwrap_or_default());
    let ct_presets = root
        .map(|r| {
            let mut all: Vec<String> = presets::ct_recipes(r)
                .iter()
                .flat_map(|recipe| presets::ct_presets(r, recipe))
                .collect();
            all.sort();
            all.dedup();
            all
        })
        .unwrap_or_default();
    let recipes = root.map(presets::ct_recipes).unwrap_or_default();
    TEMPLATE
        .replace("{teacher}", &group("teacher"))
        .replace("{cd}", &group("cd"))
        .replace("{pd}", &group("pd"))
        .replace("{ect}", &group("ect"))
        .replace("{lcm}", &group("lcm"))
        .replace("{lcm-lora}", &group("lcm-lora"))
        .replace("{eval}", &group("eval"))
        .replace("{ct}", &alternatives(ct_presets))
        .replace("{recipes}", &alternatives(recipes))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::workspace;

    #[test]
    fn help_lists_every_preset_file_and_command() {
        let root = workspace::root().unwrap();
        let help = text(Some(&root));
        for group in ["teacher", "cd", "pd", "ect", "lcm", "lcm-lora", "eval"] {
            let names = presets::available(&root, group);
            assert!(!names.is_empty(), "no presets in configs/{group}");
            assert!(help.contains(&names.join("|")), "{group}: {help}");
        }
        assert!(help.contains("[--preset cfmnist|cifar10|fmnist|toy] [--recipe ct|ict]"));
        for command in crate::COMMANDS {
            assert!(help.contains(&format!("\n    {command}")), "{command}");
        }
        for placeholder in [
            "{teacher}",
            "{cd}",
            "{pd}",
            "{ect}",
            "{lcm}",
            "{lcm-lora}",
            "{ct}",
            "{recipes}",
            "{eval}",
        ] {
            assert!(!help.contains(placeholder), "{placeholder}");
        }
        let bare = text(None);
        assert!(bare.contains("[--preset NAME]"), "{bare}");
    }
}
