//! `lab model`: an executable model of the mm_cid ownership-mode protocol of Linux 7.3 (per task
//! and per CPU CIDs, the mode switch at fork() and exit() with its fixup walks) and a checker over
//! every interleaving of T tasks on C CPUs, to show which of the seed threads' bugs a variant has.
//!
//! `state.rs` is the state, `sched.rs` and `ops.rs` the kernel's steps, `step.rs` the actions,
//! `variants.rs` the variants, `check.rs` the search, `timeline.rs` the counterexample.

mod check;
mod ops;
mod sched;
mod state;
mod step;
mod timeline;
mod variants;

pub use check::{check, Config, Counterexample, Start};
pub use state::State;
pub use timeline::{explain, final_state_of, render, replay, TraceFile};
pub use variants::{Variant, ALL as VARIANTS};

/// The state a counterexample ends in, in words (its last line is the violation).
pub fn verdict_words(cfg: &Config, cex: &Counterexample) -> String {
    let steps = timeline::narrate(cfg, &cex.root, &cex.actions);
    let last = steps.last().map(|(_, _, s)| s.clone()).unwrap_or_else(|| cex.root.clone());
    explain(&cex.violation, &last)
}
