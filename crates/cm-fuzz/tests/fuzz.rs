//! The fuzz run of CI: `CI_CASES` cases of every target from the committed
//! seed must give values or errors, never a panic, and the whole run must
//! stay under 1 GiB of resident memory (one test, so this process's peak is
//! the run's).

#[test]
fn every_parser_survives_the_committed_fuzz_run() {
    tch::set_num_threads(1);
    let mut failed = Vec::new();
    for target in cm_fuzz::TARGETS {
        let report = cm_fuzz::fuzz(target, cm_fuzz::CI_CASES, cm_fuzz::DEFAULT_SEED, None).unwrap();
        eprintln!("{report}");
        // A target whose every case errs tests nothing past the first check.
        assert!(
            report.values > 0,
            "{target}: no mutated input was accepted; the seeds or mutations are too harsh"
        );
        if report.panics > 0 {
            failed.push(report.to_string());
        }
    }
    assert!(failed.is_empty(), "panics:\n{}", failed.join("\n"));
    let peak = cm_fuzz::peak_rss_bytes().expect("/proc/self/status reports VmHWM on Linux");
    eprintln!("peak resident memory: {}", cm_fuzz::peak_rss());
    assert!(
        peak < cm_fuzz::MAX_PEAK_RSS,
        "peak resident memory {} above 1 GiB",
        cm_fuzz::peak_rss()
    );
}
