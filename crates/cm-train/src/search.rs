//! The FID search of few-step sampling times as a run's last stage
//! (`[search]` of a run config): CM (Song et al. 2023, Section 6 and
//! Appendix C) chooses the intermediate time of 2-step sampling by FID,
//! and the best time depends on the model, not only on the data set (0.821
//! for the paper's CIFAR-10 CD, 1.8-2.4 for this project's Fashion-MNIST
//! CD runs). Run after training, the search stores the time it finds in
//! the run's model card, so `cm sample --steps 2`, `cm eval` and the
//! report's 2-step grid use it without a separate `cm search-timesteps`.
//!
//! The measurement is cm-eval's ([`cm_eval::timestep_search::run`]): FID in
//! the project's feature space of a fixed set of seeded samples per probe
//! against the test split, golden-section over `ln tau`.

use cm_data::Dataset;
use cm_eval::timestep_search;
use cm_eval::{ClassifierConfig, SearchOptions};
use cm_nets::Model;
use cm_sample::ModelCard;
use serde::{Deserialize, Serialize};

use crate::error::Result;
use crate::metric::Messages;
use crate::observer::Observer;

/// `[search]`: the few-step times searched by FID once training ends.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TimestepSearchConfig {
    /// Search the time of 2-step sampling, then greedily 3-step, ... up to
    /// this many steps (2 to [`timestep_search::MAX_SEARCH_STEPS`]).
    pub max_steps: usize,
    /// Samples per probe, the same seeds for every probe (2 to
    /// [`timestep_search::MAX_SAMPLES`]; 1,000 gives a probe-to-probe FID noise well under
    /// the differences that matter, with common random numbers).
    pub samples: usize,
    /// Golden-section rounds per time (1 to [`timestep_search::MAX_ROUNDS`]; 10 shrink the
    /// bracket `[0.01, sigma_max / 2]` to within 7% of the optimum's time).
    pub rounds: usize,
    /// With a value, first search the 1-step start time `T` in
    /// `[start_lower, sigma_max]` by 1-step FID (`sigma_max`, CM's start,
    /// is kept unless a smaller time measures better), store it as the
    /// card's `sigma_max` (where sampling starts), and search the few-step
    /// times below it. Absent (the default): sampling starts at
    /// `sigma_max`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub start_lower: Option<f64>,
    /// Search each further time in every gap of the times found so far,
    /// not only below the last as CM does
    /// ([`cm_sample::search::SearchConfig::insert`]). Written only when
    /// set, so earlier configs keep their folders' keys.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub insert: bool,
    /// Seed of the probes' samples. 1, not the evaluation's 0, so that an
    /// N = 5,000 evaluation of seed 0 is not measured on the samples the
    /// time was chosen on.
    pub seed: u64,
    /// The feature network FID is measured in (the one `cm eval` uses by
    /// default; trained once per data set and cached).
    pub classifier: ClassifierConfig,
}

impl Default for TimestepSearchConfig {
    /// 2-step time, 1,000 samples of seed 1, 10 rounds, the default
    /// feature network (as `cm search-timesteps --max-steps 2 --rounds 10
    /// --seed 1`).
    fn default() -> Self {
        TimestepSearchConfig {
            max_steps: 2,
            samples: 1000,
            rounds: 10,
            start_lower: None,
            insert: false,
            seed: 1,
            classifier: ClassifierConfig::default(),
        }
    }
}

impl TimestepSearchConfig {
    /// Checks the sizes against their documented limits; `prefix` is the
    /// dotted path of the section.
    pub fn validate_at(&self, prefix: &str) -> cm_core::Result<()> {
        self.options().validate_at(prefix)?;
        self.classifier.validate_at(&format!("{prefix}classifier."))
    }

    /// Checks `start_lower` against the model's noise range: the start
    /// searched lies in `(sigma_min, sigma_max)`.
    pub fn check_start_in(&self, prefix: &str, range: cm_core::NoiseRange) -> cm_core::Result<()> {
        match self.start_lower {
            Some(lower) => {
                cm_sample::search::check_start_lower(lower, range, &format!("{prefix}start_lower"))
            }
            None => Ok(()),
        }
    }

    /// cm-eval's options for these settings (bracket `[0.01, sigma_max /
    /// 2]`, chunks of 250 samples).
    pub fn options(&self) -> SearchOptions {
        SearchOptions {
            max_steps: self.max_steps,
            samples: self.samples,
            rounds: self.rounds,
            start_lower: self.start_lower,
            insert: self.insert,
            seed: self.seed,
            classifier: self.classifier.clone(),
            ..SearchOptions::default()
        }
    }
}

/// What the stage found: the card with the best times stored, and the
/// report's lines (the settings, the best time per step count with its FID,
/// every probe).
#[derive(Clone, Debug, PartialEq)]
pub struct SearchStage {
    /// The input card with `[timesteps]` replaced for each searched step
    /// count.
    pub card: ModelCard,
    /// Report lines.
    pub lines: Vec<String>,
}

/// Searches the few-step times of `card` (its network `eval`, the run's
/// evaluation network) on `data`'s test split. `data` must be an image
/// data set; the caller's config validation refuses the others before
/// training.
pub fn search_times(
    config: &TimestepSearchConfig,
    card: &ModelCard,
    eval: &Model,
    data: &Dataset,
    observer: &mut dyn Observer,
) -> Result<SearchStage> {
    let Dataset::Images(images) = data else {
        return Err(cm_core::CoreError::invalid(
            "search",
            "a [search] section",
            "an image data set (FID needs images; 2-D points and latents have no feature network)",
        )
        .into());
    };
    observer.on_message(&format!(
        "searching the {}-step time{} by FID ({} samples of seed {} per probe, {} rounds)",
        if config.max_steps == 2 {
            "2".to_string()
        } else {
            format!("2- to {}", config.max_steps)
        },
        if config.max_steps == 2 { "" } else { "s" },
        config.samples,
        config.seed,
        config.rounds
    ));
    // No no-grad guard here: a missing feature network is trained first
    // (sampling turns autograd off itself).
    let out = timestep_search::run(
        card,
        eval,
        images,
        &config.options(),
        eval.device(),
        &mut Messages(observer),
    )?;
    let mut lines = vec![format!(
        "few-step times searched by FID (CM Section 6): {} samples of seed {} per probe, \
         {} golden-section rounds over ln tau{}, feature-space FID against the test split, \
         {:.0} s; 1 step on these samples: FID {:.3}",
        out.samples,
        config.seed,
        config.rounds,
        if config.insert {
            ", each further time inserted in the best gap of the earlier ones"
        } else {
            ", each further time below the last"
        },
        out.seconds,
        out.one_step
    )];
    if let Some(start) = &out.start {
        lines.push(format!(
            "1-step start time searched in [{}, {}]: T = {}, FID {:.3} (at sigma_max {}: FID {:.3}), \
             stored as the card's sigma_max",
            config.start_lower.unwrap_or(f64::NAN),
            start.probes[0].0,
            round4(start.start),
            start.score,
            start.probes[0].0,
            out.one_step
        ));
        let probes: Vec<String> = start
            .probes
            .iter()
            .map(|(t, fid)| format!("{} -> {fid:.3}", round4(*t)))
            .collect();
        lines.push(format!("start probes (T -> FID): {}", probes.join(", ")));
    }
    for (k, best) in out.best() {
        lines.push(format!(
            "{k} steps: searched taus {:?}, FID {:.3} (stored in the model card)",
            best.taus.iter().map(|t| round4(*t)).collect::<Vec<_>>(),
            best.score
        ));
    }
    let probes: Vec<String> = out
        .result
        .probes
        .iter()
        .map(|p| {
            let taus: Vec<String> = p.taus.iter().map(|t| format!("{}", round4(*t))).collect();
            format!("{} -> {:.3}", taus.join("/"), p.score)
        })
        .collect();
    lines.push(format!("probes (taus -> FID): {}", probes.join(", ")));
    Ok(SearchStage {
        card: out.card,
        lines,
    })
}

/// A searched card's few-step times and consistency settings.
pub type SearchedTimes = (
    std::collections::BTreeMap<String, Vec<f64>>,
    cm_core::ConsistencyConfig,
);

impl SearchStage {
    /// The searched card's few-step times and consistency settings (its
    /// `sigma_max` the searched start when one was searched), `None` for a
    /// card without them, and the report lines: what a method keeps for its
    /// card and report.
    pub fn into_parts(self) -> (Option<SearchedTimes>, Vec<String>) {
        let times = match self.card {
            ModelCard::Consistency {
                timesteps,
                consistency,
                ..
            } => Some((timesteps, consistency)),
            ModelCard::Edm { .. } => None,
        };
        (times, self.lines)
    }
}

fn round4(t: f64) -> f64 {
    (t * 1e4).round() / 1e4
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn search_settings_are_bounded_by_field() {
        assert!(TimestepSearchConfig::default()
            .validate_at("search.")
            .is_ok());
        let cases = [
            (
                TimestepSearchConfig {
                    max_steps: 1,
                    ..Default::default()
                },
                "search.max_steps",
            ),
            (
                TimestepSearchConfig {
                    max_steps: timestep_search::MAX_SEARCH_STEPS + 1,
                    ..Default::default()
                },
                "search.max_steps",
            ),
            (
                TimestepSearchConfig {
                    samples: timestep_search::MAX_SAMPLES + 1,
                    ..Default::default()
                },
                "search.samples",
            ),
            (
                TimestepSearchConfig {
                    rounds: 0,
                    ..Default::default()
                },
                "search.rounds",
            ),
        ];
        for (config, field) in cases {
            let err = config.validate_at("search.").unwrap_err().to_string();
            assert!(err.contains(field), "{field}: {err}");
        }
        for lower in [0.0, -5.0, f64::NAN] {
            let err = TimestepSearchConfig {
                start_lower: Some(lower),
                ..Default::default()
            }
            .validate_at("search.")
            .unwrap_err()
            .to_string();
            assert!(err.contains("search.start_lower"), "{err}");
        }
        let mut bad = TimestepSearchConfig::default();
        bad.classifier.features = 0;
        let err = bad.validate_at("search.").unwrap_err().to_string();
        assert!(err.contains("search.classifier.features"), "{err}");
    }

    #[test]
    fn options_carry_every_setting() {
        let config = TimestepSearchConfig {
            max_steps: 3,
            samples: 500,
            rounds: 7,
            start_lower: Some(10.0),
            insert: true,
            seed: 9,
            classifier: ClassifierConfig {
                steps: 5,
                ..Default::default()
            },
        };
        let o = config.options();
        assert!(o.insert);
        assert_eq!((o.max_steps, o.samples, o.rounds, o.seed), (3, 500, 7, 9));
        assert_eq!(o.classifier, config.classifier);
        assert_eq!(o.start_lower, Some(10.0));
        assert!(o.validate().is_ok());
    }

    #[test]
    fn insert_is_written_only_when_set() {
        // Earlier configs keep their text, and so their run folders' keys.
        let plain = toml::to_string(&TimestepSearchConfig::default()).unwrap();
        assert!(!plain.contains("insert"), "{plain}");
        let inserting = TimestepSearchConfig {
            insert: true,
            ..Default::default()
        };
        let text = toml::to_string(&inserting).unwrap();
        assert!(text.contains("insert = true"), "{text}");
        let back: TimestepSearchConfig = toml::from_str(&text).unwrap();
        assert_eq!(back, inserting);
    }
}
