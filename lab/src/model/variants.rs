//! The protocol variants `lab model` knows by name: stock 7.3 and 7.3 with one fix of the
//! 2026-01-29 "Cure mode transition woes" series (or of the fork() path) undone.

use std::fmt;

/// A kernel the model runs. Each undoes exactly one thing on top of stock 7.3, the way the lab's
/// known-bad kernels (kernels/*.yaml) do, so a verdict says what that one change is worth.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Variant {
    /// The Debian 7.3 tree as it is.
    Stock,
    /// Patch 1/4 undone: the task to CPU switch sets plain MM_CID_ONCPU (no transition phase) and
    /// the fixup hands task CIDs to CPUs with cid_to_cpu_cid(), as kernels/patches/mmcid-no-transit.
    NoTransit,
    /// Patch 2/4 undone: the per CPU mode and the transit flag in two fields (`percpu`,
    /// `transit`), stored transit first and read percpu first, as in the seed's description.
    TwoField,
    /// Patch 3/4 undone: an exit() that switches back to per task mode hands the CPU's CID to the
    /// exiting task with MM_CID_TRANSIT instead of dropping it.
    ExitReassign,
    /// mm_cid_fixup_cpus_to_tasks() leaves the CIDs of CPUs that do not run a task of the mm in
    /// place, as kernels/patches/mmcid-fork-stale (the 2025-11-11 watchdog panic's stale CIDs).
    ForkStale,
    /// The two-field layout with the stores in the order a weakly ordered CPU may perform them:
    /// the new mode first, the transit bit second, so the window exists under SC too.
    WeakOrder,
}

pub const ALL: [Variant; 6] = [
    Variant::Stock,
    Variant::NoTransit,
    Variant::TwoField,
    Variant::ExitReassign,
    Variant::ForkStale,
    Variant::WeakOrder,
];

/// How a mode switch is written to memory: what `WRITE_ONCE(mc->mode, ...)` became in the variant.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ModeLayout {
    /// One word holding MM_CID_ONCPU and MM_CID_TRANSIT: a switch is one store.
    OneWord,
    /// Two words; a switch stores `transit` then `percpu` (seed, before patch 2/4).
    TransitFirst,
    /// Two words; a switch stores `percpu` then `transit` (the reordering POWER allowed).
    PercpuFirst,
}

impl Variant {
    pub fn name(self) -> &'static str {
        match self {
            Variant::Stock => "stock",
            Variant::NoTransit => "no-transit",
            Variant::TwoField => "two-field",
            Variant::ExitReassign => "exit-reassign",
            Variant::ForkStale => "fork-stale",
            Variant::WeakOrder => "weak-order",
        }
    }

    pub fn parse(name: &str) -> Option<Variant> {
        ALL.into_iter().find(|v| v.name() == name)
    }

    pub fn what(self) -> &'static str {
        match self {
            Variant::Stock => "7.3 as shipped (all four patches of the series, smp_mb() around the fixups)",
            Variant::NoTransit => "patch 1/4 undone: task to CPU switch without MM_CID_TRANSIT",
            Variant::TwoField => "patch 2/4 undone: percpu and transit in two fields, transit stored first",
            Variant::ExitReassign => "patch 3/4 undone: exit() hands the CPU's CID to the exiting task in transit",
            Variant::ForkStale => "the CPU fixup walk leaves CIDs of CPUs without a task of the mm (stale CIDs)",
            Variant::WeakOrder => "two fields stored new mode first, transit second (POWER's order, in program order)",
        }
    }

    pub fn layout(self) -> ModeLayout {
        match self {
            Variant::TwoField => ModeLayout::TransitFirst,
            Variant::WeakOrder => ModeLayout::PercpuFirst,
            _ => ModeLayout::OneWord,
        }
    }

    /// Whether the task to CPU switch has its transition phase (patch 1/4).
    pub fn transit_to_cpu(self) -> bool {
        self != Variant::NoTransit
    }
}

impl fmt::Display for Variant {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_name_parses_back() {
        for v in ALL {
            assert_eq!(Variant::parse(v.name()), Some(v));
        }
        assert_eq!(Variant::parse("stok"), None);
    }
}
