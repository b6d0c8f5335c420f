//! Progress for long runs: an indicatif bar with loss, steps/s, images/s and
//! ETA when stderr is a terminal, plain log lines otherwise.

use std::io::IsTerminal;

use indicatif::{ProgressBar, ProgressStyle};

use cm_eval::Progress;
use cm_train::{Observer, StepInfo};

/// Shows training progress.
pub struct BarObserver {
    label: &'static str,
    bar: Option<ProgressBar>,
}

impl BarObserver {
    /// A bar (terminal) or log lines (pipes, CI).
    pub fn new(label: &'static str) -> Self {
        BarObserver { label, bar: None }
    }

    /// Closes the bar.
    pub fn finish(&mut self) {
        if let Some(bar) = self.bar.take() {
            bar.finish();
        }
    }
}

impl Observer for BarObserver {
    fn on_start(&mut self, step: u64, total: u64) {
        if std::io::stderr().is_terminal() {
            let bar = ProgressBar::new(total);
            bar.set_style(
                ProgressStyle::with_template(
                    "{prefix} [{elapsed_precise}] {wide_bar} {pos}/{len} ({eta}) {msg}",
                )
                .expect("valid template"),
            );
            bar.set_prefix(self.label);
            bar.set_position(step);
            self.bar = Some(bar);
        } else {
            eprintln!("{}: starting at step {step} of {total}", self.label);
        }
    }

    fn on_step(&mut self, i: &StepInfo) {
        let msg = format!(
            "loss {:.4} lr {:.1e} |g| {:.2} {:.2} steps/s {:.0} img/s",
            i.loss, i.lr, i.grad_norm, i.steps_per_s, i.images_per_s
        );
        match &self.bar {
            Some(bar) => {
                bar.set_position(i.step);
                bar.set_message(msg);
            }
            None => {
                let eta = (i.total - i.step) as f64 / i.steps_per_s.max(1e-9);
                eprintln!(
                    "{}: step {}/{} {msg} eta {:.0}s",
                    self.label, i.step, i.total, eta
                );
            }
        }
    }

    fn on_message(&mut self, message: &str) {
        match &self.bar {
            Some(bar) => bar.println(format!("{}: {message}", self.label)),
            None => eprintln!("{}: {message}", self.label),
        }
    }
}

/// A rate rounded for reading: no decimals from 100 up (340.5 -> "341"),
/// one from 10 (12.34 -> "12.3"), two below (0.5 -> "0.50").
pub fn format_rate(per_s: f64) -> String {
    if !per_s.is_finite() {
        return "-".to_string();
    }
    match per_s.abs() {
        r if r >= 100.0 => format!("{per_s:.0}"),
        r if r >= 10.0 => format!("{per_s:.1}"),
        _ => format!("{per_s:.2}"),
    }
}

/// `n` and its noun, singular for one: `count(1, "image", "images")` is
/// "1 image", `count(3, ...)` "3 images".
pub fn count(n: u64, one: &str, many: &str) -> String {
    format!("{n} {}", if n == 1 { one } else { many })
}

/// Counted work outside training (evaluation rows, sampling, the timestep
/// search): a bar with rate and ETA on a terminal, a log line per quarter
/// otherwise.
pub struct Bars {
    bar: Option<ProgressBar>,
    label: String,
    total: u64,
    done: u64,
    next_log: u64,
}

impl Bars {
    /// No bar yet: `start` opens one.
    pub fn new() -> Self {
        Bars {
            bar: None,
            label: String::new(),
            total: 0,
            done: 0,
            next_log: 0,
        }
    }
}

impl Progress for Bars {
    fn start(&mut self, label: &str, total: u64) {
        self.label = label.to_string();
        (self.total, self.done, self.next_log) = (total, 0, total / 4);
        if std::io::stderr().is_terminal() {
            let bar = ProgressBar::new(total);
            bar.set_style(
                ProgressStyle::with_template(
                    "{prefix} [{elapsed_precise}] {wide_bar} {pos}/{len} {rate} ({eta})",
                )
                .expect("valid template")
                // indicatif's {per_sec} prints four decimals ("340.5312/s").
                .with_key(
                    "rate",
                    |state: &indicatif::ProgressState, w: &mut dyn std::fmt::Write| {
                        let _ = write!(w, "{}/s", format_rate(state.per_sec()));
                    },
                ),
            );
            bar.set_prefix(label.to_string());
            self.bar = Some(bar);
        } else {
            eprintln!("{label}: 0/{total}");
        }
    }

    fn advance(&mut self, units: u64) {
        self.done += units;
        match &self.bar {
            Some(bar) => bar.inc(units),
            None if self.done >= self.next_log && self.done < self.total => {
                eprintln!("{}: {}/{}", self.label, self.done, self.total);
                self.next_log += (self.total / 4).max(1);
            }
            None => {}
        }
    }

    fn finish(&mut self) {
        match self.bar.take() {
            Some(bar) => bar.finish_and_clear(),
            None => eprintln!("{}: {}/{} done", self.label, self.done, self.total),
        }
    }

    fn message(&mut self, message: &str) {
        match &self.bar {
            Some(bar) => bar.println(message),
            None => eprintln!("{message}"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::{count, format_rate};

    #[test]
    fn counts_take_the_singular_for_one() {
        assert_eq!(count(1, "image", "images"), "1 image");
        assert_eq!(count(0, "image", "images"), "0 images");
        assert_eq!(count(3, "row", "rows"), "3 rows");
    }

    #[test]
    fn rates_have_three_significant_figures() {
        assert_eq!(format_rate(340.5312), "341");
        assert_eq!(format_rate(12.345), "12.3");
        assert_eq!(format_rate(0.5), "0.50");
        assert_eq!(format_rate(f64::NAN), "-");
    }
}
