//! The words every stage and every reader of a finished run share: what a report is (`Kind`),
//! what a cell came to (`Verdict`), how its boot ended (`CellEnd`) and what the verdict rests on
//! (`Basis`). Vocabulary, not a stage: it imports nothing of the lab's, and each word is spelled
//! the same in logs, JSON and JUnit, by serde.

use std::fmt;

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Kind {
    HardLockup,
    SoftLockup,
    RcuStall,
    HungTask,
    WorkqueueLockup,
    Bug,
    Warning,
    Oops,
    Panic,
    Kasan,
    Lockdep,
    /// kmemleak's "unreferenced object": memory nobody points to any more, found by a scan.
    Kmemleak,
    /// A workload's own check failed (`NAME: VIOLATION check=...`): what user space relies on
    /// from rseq (an `mm_cid` unique among running threads, below the possible CPUs) is broken,
    /// whether or not the kernel noticed.
    RseqViolation,
    Silent,
    /// The workload ran over SSH and the guest stopped answering it.
    LostConnection,
    /// The guest never got going: not one console byte, or every vCPU outside the kernel image
    /// (firmware, the decompressor, real mode) before its ready line. The host's fault until
    /// shown otherwise, never a kernel verdict.
    BootHang,
    /// Every vCPU outside the kernel image after the guest was up, with nothing on the console to
    /// say why: the lab cannot tell a host fault from the kernel's here, so it judges nothing.
    Infra,
    Other,
}

impl Kind {
    /// The kind a signature starts with and an `expect:` is held to. The same fault opens with
    /// "BUG: kernel NULL pointer dereference" on x86 and powerpc and with "Unable to handle kernel
    /// NULL pointer dereference" (an Oops) on arm64.
    pub fn family(self) -> Kind {
        match self {
            Kind::Oops => Kind::Bug,
            kind => kind,
        }
    }

    /// Same spelling as the serde names, so logs, JSON and JUnit agree.
    pub fn name(self) -> &'static str {
        match self {
            Kind::HardLockup => "hard-lockup",
            Kind::SoftLockup => "soft-lockup",
            Kind::RcuStall => "rcu-stall",
            Kind::HungTask => "hung-task",
            Kind::WorkqueueLockup => "workqueue-lockup",
            Kind::Bug => "bug",
            Kind::Warning => "warning",
            Kind::Oops => "oops",
            Kind::Panic => "panic",
            Kind::Kasan => "kasan",
            Kind::Lockdep => "lockdep",
            Kind::Kmemleak => "kmemleak",
            Kind::RseqViolation => "rseq-violation",
            Kind::Silent => "silent",
            Kind::LostConnection => "lost-connection",
            Kind::BootHang => "boot-hang",
            Kind::Infra => "infra",
            Kind::Other => "other",
        }
    }
}

impl fmt::Display for Kind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// What a cell came to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Verdict {
    Pass,
    Fail,
    /// The lab could not judge the kernel: the build failed, QEMU would not start, the workload
    /// was misconfigured.
    Error,
    /// Deadline reached while the guest was still talking: too slow, not known to be broken.
    Timeout,
    /// The workload could not run here (missing kernel feature, too few CPUs); never a pass.
    Skip,
    /// A signal stopped the lab while the cell ran or before it started (`CellEnd` says which);
    /// like an error, it says nothing about the kernel.
    Interrupted,
}

impl Verdict {
    /// Its name in `result.json` and `summary.json`.
    pub fn name(self) -> &'static str {
        match self {
            Verdict::Pass => "pass",
            Verdict::Fail => "fail",
            Verdict::Error => "error",
            Verdict::Timeout => "timeout",
            Verdict::Skip => "skip",
            Verdict::Interrupted => "interrupted",
        }
    }

    /// Whether it says anything about the kernel: errors, skips and interrupted cells do not.
    pub fn judges_the_kernel(self) -> bool {
        matches!(self, Verdict::Pass | Verdict::Fail | Verdict::Timeout)
    }
}

impl fmt::Display for Verdict {
    fn fmt(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// How a cell's boot ended, as the VM stage saw it (`vm::End` without its details), or that a
/// signal stopped the cell or kept it from starting.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum CellEnd {
    /// QEMU exited by itself: power-off, or `-no-reboot` turning a panic's reboot into an exit.
    Exited,
    BootTimeout,
    WorkloadTimeout,
    Silent,
    StoppedAfterReport,
    QemuFailed,
    LostConnection,
    SshFailed,
    /// The host's live watch saw a vCPU stuck for good while the guest ran, and diagnosed it.
    Stuck,
    /// The cell never booted: its kernel or image could not be had, or it was skipped before.
    NotBooted,
    /// A signal kept the cell from starting (it has no directory).
    NotStarted,
    /// A signal stopped the cell while it ran.
    Interrupted,
}

impl CellEnd {
    /// Same spelling as the serde names.
    pub fn name(self) -> &'static str {
        match self {
            CellEnd::Exited => "exited",
            CellEnd::BootTimeout => "boot-timeout",
            CellEnd::WorkloadTimeout => "workload-timeout",
            CellEnd::Silent => "silent",
            CellEnd::StoppedAfterReport => "stopped-after-report",
            CellEnd::QemuFailed => "qemu-failed",
            CellEnd::LostConnection => "lost-connection",
            CellEnd::SshFailed => "ssh-failed",
            CellEnd::Stuck => "stuck",
            CellEnd::NotBooted => "not-booted",
            CellEnd::NotStarted => "not-started",
            CellEnd::Interrupted => "interrupted",
        }
    }
}

/// What a failure verdict rests on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum Basis {
    /// The kernel's own reports on the console.
    #[serde(rename = "guest")]
    Guest,
    /// The host's samples of the vCPUs, taken from outside a guest that said nothing.
    #[serde(rename = "host")]
    Host,
    #[serde(rename = "guest+host")]
    GuestAndHost,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_the_serde_names() {
        use Verdict::{Error, Fail, Pass, Skip, Timeout};
        for verdict in [Pass, Fail, Error, Timeout, Skip, Verdict::Interrupted] {
            assert_eq!(serde_json::to_value(verdict).unwrap(), verdict.name(), "{verdict:?}");
        }
        let kinds = [
            Kind::HardLockup,
            Kind::RcuStall,
            Kind::Kmemleak,
            Kind::RseqViolation,
            Kind::LostConnection,
            Kind::BootHang,
            Kind::Other,
        ];
        for kind in kinds {
            assert_eq!(serde_json::to_value(kind).unwrap(), kind.name(), "{kind:?}");
        }
        use CellEnd::*;
        let ends = [Exited, BootTimeout, WorkloadTimeout, Silent, StoppedAfterReport, QemuFailed, LostConnection];
        for end in ends.into_iter().chain([SshFailed, NotBooted, NotStarted, Interrupted]) {
            assert_eq!(serde_json::to_value(end).unwrap(), end.name(), "{end:?}");
        }
        assert_eq!(serde_json::to_value(Basis::GuestAndHost).unwrap(), "guest+host");
    }
}
