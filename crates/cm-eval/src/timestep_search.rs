//! `cm search-timesteps`: the intermediate times of 2-, 3-, ... step
//! consistency sampling chosen by FID (CM, Song et al. 2023, Section 6 and
//! Appendix C). [`run`] measures every probe of the greedy golden-section
//! search ([`cm_sample::search::search_timesteps`]) as the FID of a fixed set
//! of seeded samples in the project's feature space against the test split,
//! and returns the probes, the best times and the card with them stored.
//!
//! Limits ([`SearchOptions::validate`]): `max_steps` in
//! 2..=[`MAX_SEARCH_STEPS`], `rounds` in 1..=[`MAX_ROUNDS`], `samples` in
//! 2..=[`MAX_SAMPLES`].

use std::time::Instant;

use tch::{Device, Tensor};

use cm_core::CoreError;
use cm_core::NoiseRange;
use cm_data::ImageDataset;
use cm_nets::Model;
use cm_sample::search::{
    check_start_lower, search_start, search_timesteps, Probe, SearchConfig, SearchResult,
    StartSearch,
};
use cm_sample::{generate, ClassChoice, GenerateConfig, ModelCard};

use crate::classifier::{feature_space, ClassifierConfig};
use crate::error::{EvalError, Result};
use crate::frechet::{frechet_distance, FeatureStats};
use crate::progress::Progress;

/// Largest `max_steps`: each step count searched costs `rounds + 2` probes,
/// and the times of ever more steps crowd into the bracket's low end.
pub const MAX_SEARCH_STEPS: usize = 8;
/// Most golden-section rounds per time: 30 rounds shrink the bracket (in
/// `ln tau`) about 2e6-fold, far below the FID noise between probes.
pub const MAX_ROUNDS: usize = 30;
/// Most samples per probe (50,000: the size of the standard FID set).
pub const MAX_SAMPLES: usize = 50_000;

/// Settings of [`run`].
#[derive(Clone, Debug, PartialEq)]
pub struct SearchOptions {
    /// Search the times of 2-step sampling, then greedily 3-step, ... up to
    /// this many steps (2..=[`MAX_SEARCH_STEPS`]).
    pub max_steps: usize,
    /// Samples per probe, the same seeds for every probe
    /// (2..=[`MAX_SAMPLES`]).
    pub samples: usize,
    /// Golden-section rounds per time, each one more probe
    /// (1..=[`MAX_ROUNDS`]).
    pub rounds: usize,
    /// Lower end of the searched times (above the card's `sigma_min`).
    pub lower: f64,
    /// Upper end of the searched times (default `sigma_max / 2`, or half
    /// the searched start time).
    pub upper: Option<f64>,
    /// With a value, first search the 1-step start time `T` in
    /// `[start_lower, sigma_max]` ([`search_start`]: `sigma_max` kept unless
    /// a smaller time gives a lower FID), store it as the card's
    /// `sigma_max` (where sampling starts) and search the few-step times
    /// below it. `None` (the default): sampling starts at `sigma_max`, as
    /// in CM.
    pub start_lower: Option<f64>,
    /// Search each further time in every gap of the times found so far,
    /// not only below the last ([`cm_sample::search::SearchConfig::insert`]).
    pub insert: bool,
    /// Seed of the probes' samples.
    pub seed: u64,
    /// Samples per sampler call.
    pub batch_size: usize,
    /// The feature network (trained once on the data set, cached).
    pub classifier: ClassifierConfig,
}

impl Default for SearchOptions {
    /// 2- and 3-step times, 1,000 samples, 8 rounds over `[0.01,
    /// sigma_max / 2]`, seed 0, chunks of 250, the default feature network.
    fn default() -> Self {
        SearchOptions {
            max_steps: 3,
            samples: 1000,
            rounds: 8,
            lower: 0.01,
            upper: None,
            start_lower: None,
            insert: false,
            seed: 0,
            batch_size: 250,
            classifier: ClassifierConfig::default(),
        }
    }
}

impl SearchOptions {
    /// Checks the sizes against the documented limits (the bracket is
    /// checked against the card's noise range by [`run`]).
    pub fn validate(&self) -> Result<()> {
        Ok(self.validate_at("")?)
    }

    /// [`SearchOptions::validate`] with `prefix` before each field name
    /// (e.g. `search.` for a run config's `[search]`).
    pub fn validate_at(&self, prefix: &str) -> cm_core::Result<()> {
        let check = |field: &str, value: usize, lo: usize, hi: usize| {
            if (lo..=hi).contains(&value) {
                Ok(())
            } else {
                Err(CoreError::invalid(
                    format!("{prefix}{field}"),
                    value,
                    format!("{lo} to {hi}"),
                ))
            }
        };
        check("max_steps", self.max_steps, 2, MAX_SEARCH_STEPS)?;
        check("rounds", self.rounds, 1, MAX_ROUNDS)?;
        check("samples", self.samples, 2, MAX_SAMPLES)?;
        check("batch_size", self.batch_size, 1, MAX_SAMPLES)?;
        if let Some(lower) = self.start_lower {
            if !(lower.is_finite() && lower > 0.0) {
                return Err(CoreError::invalid(
                    format!("{prefix}start_lower"),
                    lower,
                    "a positive time below the card's sigma_max",
                ));
            }
        }
        Ok(())
    }

    /// Probes the search makes (at most, with `insert`: a gap too narrow
    /// to search is skipped): the 1-step reference, `rounds + 2` for the
    /// start time when searched, then `rounds + 2` for each step count
    /// from 2 to `max_steps`, times its `k - 1` gaps with `insert`.
    pub fn probes(&self) -> u64 {
        let start = if self.start_lower.is_some() {
            self.rounds + 2
        } else {
            0
        };
        let gaps: usize = if self.insert {
            (2..=self.max_steps).map(|k| k - 1).sum()
        } else {
            self.max_steps.saturating_sub(1)
        };
        1 + (start + gaps * (self.rounds + 2)) as u64
    }
}

/// What [`run`] found.
#[derive(Clone, Debug, PartialEq)]
pub struct SearchOutcome {
    /// FID of 1-step sampling from `sigma_max` on the same seeds (the
    /// reference point).
    pub one_step: f64,
    /// The start-time search, when [`SearchOptions::start_lower`] asked
    /// for it.
    pub start: Option<StartSearch>,
    /// Every probe and the best times per step count.
    pub result: SearchResult,
    /// Samples per probe.
    pub samples: usize,
    /// Wall time of the probes in seconds (the feature network excluded).
    pub seconds: f64,
    /// The input card with the best times stored under `[timesteps]`.
    pub card: ModelCard,
}

impl SearchOutcome {
    /// The probes as CSV (`steps,taus,fid`; the 1-step reference first,
    /// then the start-time probes as 1-step rows with the start time in
    /// `taus`, then the few-step probes, times separated by spaces).
    pub fn csv(&self) -> String {
        let mut csv = format!("steps,taus,fid\n1,,{}\n", self.one_step);
        if let Some(start) = &self.start {
            for (t, fid) in start.probes.iter().skip(1) {
                csv.push_str(&format!("1,{t},{fid}\n"));
            }
        }
        for p in &self.result.probes {
            let taus: Vec<String> = p.taus.iter().map(|t| format!("{t}")).collect();
            csv.push_str(&format!(
                "{},{},{}\n",
                p.taus.len() + 1,
                taus.join(" "),
                p.score
            ));
        }
        csv
    }

    /// For each searched step count `k` (2, 3, ...), the points `(searched
    /// time, FID)` of its probes sorted by time: the curves of FID against
    /// the time each probe added to the best `k - 1`-step times (the last
    /// time in CM's order; any position with `insert`).
    pub fn curves(&self) -> Vec<(usize, Vec<(f64, f64)>)> {
        let max_steps = self.result.best.iter().map(|(k, _)| *k).max().unwrap_or(1);
        (2..=max_steps)
            .map(|k| {
                let earlier: &[f64] = self
                    .result
                    .best
                    .iter()
                    .find(|(j, _)| *j + 1 == k)
                    .map_or(&[], |(_, p)| &p.taus);
                let mut points: Vec<(f64, f64)> = self
                    .result
                    .probes
                    .iter()
                    .filter(|p| p.taus.len() + 1 == k)
                    .map(|p| (searched_time(&p.taus, earlier), p.score))
                    .collect();
                points.sort_by(|a, b| a.0.total_cmp(&b.0));
                (k, points)
            })
            .collect()
    }

    /// The best times and FID per step count.
    pub fn best(&self) -> &[(usize, Probe)] {
        &self.result.best
    }
}

/// The time `taus` adds to the `earlier` ones (fixed times are copied into
/// each probe, so they compare equal); the last time when none differs.
fn searched_time(taus: &[f64], earlier: &[f64]) -> f64 {
    taus.iter()
        .copied()
        .find(|t| !earlier.contains(t))
        .or_else(|| taus.last().copied())
        .unwrap_or(1.0)
}

/// Runs the search for `card` (a consistency model; `model` its network)
/// against `data`'s test split on `device`: the feature network (trained
/// and cached on first use), the 1-step reference, then every probe, each
/// reported through `progress` (one unit per probe, a message with its
/// FID). The card itself is not written: store `SearchOutcome::card`.
pub fn run(
    card: &ModelCard,
    model: &Model,
    data: &ImageDataset,
    options: &SearchOptions,
    device: Device,
    progress: &mut dyn Progress,
) -> Result<SearchOutcome> {
    options.validate()?;
    let ModelCard::Consistency { consistency, .. } = card else {
        return Err(EvalError::InvalidInput(
            "an EDM model has no intermediate times to search (kind = \"edm\"); \
             pass a consistency model's card"
                .into(),
        ));
    };
    let (sigma_min, mut sigma_max) = (consistency.sigma_min, consistency.sigma_max);
    // A latent model's samples are compared as the images its decoder makes.
    let codec = card.load_codec(device)?;
    let shape = match &codec {
        Some(codec) => codec.image_shape(),
        None => model.config().sample_shape(),
    };
    if shape != data.shape().map(|s| s as i64) {
        return Err(EvalError::InvalidInput(format!(
            "the data set {} has images {:?}, the model makes {:?}: pass the data set it was trained on",
            data.name,
            data.shape(),
            shape
        )));
    }
    let bracket = |sigma_max: f64| -> Result<SearchConfig> {
        let config = SearchConfig {
            rounds: options.rounds,
            lower: options.lower,
            upper: options.upper.unwrap_or(sigma_max / 2.0),
            insert: options.insert,
        };
        config.check_bracket(
            NoiseRange {
                sigma_min,
                sigma_max,
            },
            "lower / upper",
        )?;
        Ok(config)
    };
    // Checked before any work, against the lowest start the search can
    // choose (golden-section never returns its bracket's lower end), so an
    // explicit `upper` cannot fail after the start probes; checked again
    // below the start found.
    bracket(options.start_lower.unwrap_or(sigma_max))?;
    if let Some(lower) = options.start_lower {
        check_start_lower(
            lower,
            NoiseRange {
                sigma_min,
                sigma_max,
            },
            "start_lower",
        )?;
    }
    let space = feature_space(data, &options.classifier, None, device, progress)?;
    let reference = &space.reference.stats;
    progress.start("search", options.probes());
    let started = Instant::now();
    let mut fid_of = |card: &ModelCard, taus: &[f64]| -> Result<f64> {
        let gen = GenerateConfig {
            count: options.samples,
            batch_size: options.batch_size,
            seed: options.seed,
            steps: taus.len() + 1,
            taus: Some(taus.to_vec()),
            // An LCM was never trained on the null class: a balanced set.
            classes: if card.embedded_guidance().is_some() {
                ClassChoice::Cycle
            } else {
                ClassChoice::None
            },
            guidance: None,
        };
        let mut feats = Vec::new();
        generate::<EvalError>(card, model, codec.as_ref(), &gen, device, &mut |chunk| {
            let (f, _) = space.net.features(&chunk.images)?;
            feats.push(f);
            Ok(())
        })?;
        let stats = FeatureStats::from_features(&Tensor::cat(&feats, 0))?;
        let fid = frechet_distance(&stats, reference)?;
        progress.advance(1);
        progress.message(&format!(
            "start {}, taus {:?}: FID {fid:.3}",
            (card.sigma_max() * 1e4).round() / 1e4,
            taus.iter()
                .map(|t| (t * 1e4).round() / 1e4)
                .collect::<Vec<_>>()
        ));
        Ok(fid)
    };
    let one_step = fid_of(card, &[])?;
    let mut card = card.clone();
    let start = match options.start_lower {
        None => None,
        Some(lower) => {
            let found = search_start(
                NoiseRange {
                    sigma_min,
                    sigma_max,
                },
                lower,
                options.rounds,
                &mut |t| {
                    if t == sigma_max {
                        // The reference, already measured on these seeds.
                        return Ok(one_step);
                    }
                    fid_of(&with_start(&card, t), &[])
                },
            )?;
            if found.start != sigma_max {
                // Times stored for another start were chosen for it: the
                // searched step counts get new ones, the others none.
                card = with_start(&card, found.start);
                if let ModelCard::Consistency { timesteps, .. } = &mut card {
                    timesteps.clear();
                }
            }
            sigma_max = found.start;
            Some(found)
        }
    };
    let config = bracket(sigma_max)?;
    let result = search_timesteps(
        options.max_steps,
        NoiseRange {
            sigma_min,
            sigma_max,
        },
        &config,
        &mut |taus| fid_of(&card, taus),
    )?;
    progress.finish();
    let seconds = started.elapsed().as_secs_f64();
    if let ModelCard::Consistency { timesteps, .. } = &mut card {
        for (k, best) in &result.best {
            timesteps.insert(k.to_string(), best.taus.clone());
        }
    }
    Ok(SearchOutcome {
        one_step,
        start,
        result,
        samples: options.samples,
        seconds,
        card,
    })
}

/// `card` with sampling starting at `start` (its `sigma_max`); stored
/// few-step times at or above `start` are dropped (they no longer fit).
pub(crate) fn with_start(card: &ModelCard, start: f64) -> ModelCard {
    let mut card = card.clone();
    if let ModelCard::Consistency {
        consistency,
        timesteps,
        ..
    } = &mut card
    {
        consistency.sigma_max = start;
        timesteps.retain(|_, taus| taus.iter().all(|&t| t < start));
    }
    card
}

#[cfg(test)]
mod tests {
    use super::*;
    use cm_core::ConsistencyConfig;

    #[test]
    fn options_are_bounded() {
        let ok = SearchOptions::default();
        ok.validate().unwrap();
        assert_eq!(ok.probes(), 1 + 2 * 10);
        let with_start = SearchOptions {
            start_lower: Some(5.0),
            ..ok.clone()
        };
        with_start.validate().unwrap();
        assert_eq!(with_start.probes(), 1 + 10 + 2 * 10);
        // Inserting: 1, 2, then 3 gaps of rounds + 2 = 10 probes for the
        // 2-, 3- and 4-step times.
        let inserting = SearchOptions {
            insert: true,
            max_steps: 4,
            ..ok.clone()
        };
        assert_eq!(inserting.probes(), 1 + (1 + 2 + 3) * 10);
        for bad in [0.0, -1.0, f64::NAN, f64::INFINITY] {
            let e = SearchOptions {
                start_lower: Some(bad),
                ..ok.clone()
            }
            .validate()
            .unwrap_err()
            .to_string();
            assert!(e.contains("start_lower"), "{bad}: {e}");
        }
        for (bad, field) in [
            (
                SearchOptions {
                    max_steps: 1,
                    ..ok.clone()
                },
                "max_steps",
            ),
            (
                SearchOptions {
                    max_steps: MAX_SEARCH_STEPS + 1,
                    ..ok.clone()
                },
                "max_steps",
            ),
            (
                SearchOptions {
                    rounds: 0,
                    ..ok.clone()
                },
                "rounds",
            ),
            (
                SearchOptions {
                    rounds: usize::MAX,
                    ..ok.clone()
                },
                "rounds",
            ),
            (
                SearchOptions {
                    samples: 1,
                    ..ok.clone()
                },
                "samples",
            ),
            (
                SearchOptions {
                    samples: MAX_SAMPLES + 1,
                    ..ok.clone()
                },
                "samples",
            ),
        ] {
            let e = bad.validate().unwrap_err().to_string();
            assert!(e.contains(field), "{e}");
        }
    }

    #[test]
    fn csv_and_curves_list_every_probe() {
        let probe = |taus: &[f64], score| Probe {
            taus: taus.to_vec(),
            score,
        };
        let out = SearchOutcome {
            one_step: 9.0,
            start: Some(StartSearch {
                start: 40.0,
                score: 8.5,
                probes: vec![(80.0, 9.0), (40.0, 8.5), (20.0, 8.75)],
            }),
            result: SearchResult {
                best: vec![(2, probe(&[0.5], 3.0)), (3, probe(&[0.5, 0.1], 2.0))],
                probes: vec![
                    probe(&[1.0], 4.0),
                    probe(&[0.5], 3.0),
                    probe(&[0.5, 0.2], 2.5),
                    probe(&[0.5, 0.1], 2.0),
                ],
            },
            samples: 10,
            seconds: 1.0,
            card: ModelCard::Consistency {
                weights: "w.safetensors".into(),
                consistency: ConsistencyConfig::default(),
                timesteps: Default::default(),
                scheduler: None,
                autoencoder: None,
                guidance: None,
                lora: Vec::new(),
            },
        };
        assert_eq!(
            out.csv(),
            "steps,taus,fid\n1,,9\n1,40,8.5\n1,20,8.75\n2,1,4\n2,0.5,3\n3,0.5 0.2,2.5\n3,0.5 0.1,2\n"
        );
        // The curves are the few-step ones only.
        assert_eq!(
            out.curves(),
            vec![
                (2, vec![(0.5, 3.0), (1.0, 4.0)]),
                (3, vec![(0.1, 2.0), (0.2, 2.5)]),
            ]
        );
        // With insert, a probe's new time may sit above the earlier ones:
        // the curve plots the added time, not the last.
        let mut inserted = out.clone();
        inserted.result.probes = vec![
            probe(&[0.5], 3.0),
            probe(&[2.0, 0.5], 2.2),
            probe(&[0.9, 0.5], 2.4),
            probe(&[0.5, 0.1], 2.0),
        ];
        assert_eq!(
            inserted.curves()[1],
            (3, vec![(0.1, 2.0), (0.9, 2.4), (2.0, 2.2)])
        );
    }
}
