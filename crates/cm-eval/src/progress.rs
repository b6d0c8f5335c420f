//! Progress reporting without a UI dependency: long work (classifier
//! training, sampling, feature extraction) calls these hooks; the CLI draws
//! bars with them.

/// Receives progress of long evaluation work. Every method has a no-op
/// default.
pub trait Progress {
    /// A phase named `label` with `total` units of work begins.
    fn start(&mut self, _label: &str, _total: u64) {}
    /// `units` more units of the current phase are done.
    fn advance(&mut self, _units: u64) {}
    /// The current phase is over.
    fn finish(&mut self) {}
    /// A line of information.
    fn message(&mut self, _message: &str) {}
}

/// Reports nothing.
#[derive(Debug, Default, Clone, Copy)]
pub struct Silent;

impl Progress for Silent {}

/// Prints messages (not progress units) to stderr: for tests and logs.
#[derive(Debug, Default, Clone, Copy)]
pub struct Log;

impl Progress for Log {
    fn message(&mut self, message: &str) {
        eprintln!("{message}");
    }
}
