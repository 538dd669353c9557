//! Console-log triage: finds the kernel failure reports (lockups, stalls, BUGs, oopses, panics, ...)
//! in a guest's serial console and names the guilty function of each.
//!
//! The kernel's own printk formats (7.3 source tree) are the authority for what a report looks like;
//! `testdata/README.md` says where each format comes from.

mod assemble;
mod console;
mod culprit;
mod debuginfo;
mod header;
mod host;
mod samples;
mod sanitize;
mod signature;
mod stack;
mod symbols;
#[cfg(test)]
mod tests;

pub use debuginfo::{DebugInfo, SourceLine};
pub use host::{diagnose as diagnose_host, HostDiagnosis};
/// The input of host diagnosis, filled by the VM stage.
pub use samples::{Frame, HostSamples, Irqs, Sample, VcpuSamples};
pub use sanitize::sanitize;
pub use signature::signature;
pub use symbols::Symbols;

use crate::vocab::Kind;

#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Report {
    pub kind: Kind,
    pub title: String,
    /// The same failure's name in every run, on any vCPU count or architecture (`signature`).
    #[serde(default)]
    pub signature: String,
    pub frame: Option<String>,
    /// Where the guilty frame was when the kernel printed it, and its source lines once
    /// symbolized against the cell's vmlinux (`DebugInfo::symbolize`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub frame_site: Option<FrameSite>,
    /// The CPU that reported (a buddy watchdog, the RCU stall detector) or, for a report a CPU
    /// made about itself, that CPU.
    pub cpu: Option<u32>,
    /// The CPU found stuck, where the report names it: a hard lockup's victim ("on cpu N"), a soft
    /// lockup's CPU, the vCPU the host saw spinning. Null when the report names none, like
    /// `frame` and `cpu`: a reader finds the three always there.
    #[serde(default)]
    pub stuck_cpu: Option<u32>,
    pub line: usize,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub lines: Vec<String>,
    /// How many more times the same report was printed after the one kept: a workload prints a
    /// line per violation it finds, and one check broken is one report, its first line the evidence.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub repeated: u32,
    /// What the report rests on: the guest's console, the host's samples of its vCPUs, or the
    /// stdout of a workload run over SSH; and so which log `line` counts in.
    #[serde(default)]
    pub source: Source,
    /// What the report could not show: its title then tells part of the story.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub missing: Vec<Missing>,
    /// The stacks the report printed, the reporter's and every other CPU's it dumped, in order.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub stacks: Vec<CpuStack>,
}

/// One CPU's (or task's) stack in a report.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct CpuStack {
    /// None for a task's stack (a hung task, the RCU grace-period kthread).
    pub cpu: Option<u32>,
    /// Function names, innermost first: the interrupted function, then the call trace (from the
    /// host: the sampled stack). Frames the unwinder only guessed are left out when it found
    /// reliable ones, except from a powerpc CPU seen through its paca, whose guess is where it spun.
    pub frames: Vec<String>,
    /// `frames` as printed, one for one, with their source lines once symbolized.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub sites: Vec<FrameSite>,
    /// It spins for a lock someone else holds: the waiting side of a live lock.
    pub waits_on_lock: bool,
    /// It waits for work in the idle loop.
    pub idle: bool,
}

/// A frame as the kernel printed it, which is what a vmlinux with debug info turns into source lines.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct FrameSite {
    /// `mm_get_cid+0x5c/0x60` (`%pS`); from the host's samples, without the size.
    pub printed: String,
    /// A caller's frame: the address after its call, looked up in the call instruction. False
    /// for the instruction the CPU was interrupted at (`RIP`, `pc`, `NIP`).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub return_address: bool,
    /// Innermost first: the functions inlined at this address, then the printed function.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub source: Vec<SourceLine>,
    /// The address itself, when known (the host read it from the vCPU): it tells apart static
    /// functions of one name, which the printed form cannot. Used where it is known, not kept.
    #[serde(skip)]
    pub address: Option<u64>,
}

impl FrameSite {
    pub fn new(printed: String, return_address: bool) -> FrameSite {
        FrameSite { printed, return_address, source: Vec::new(), address: None }
    }

    /// What the kernel's `scripts/faddr2line` prints: the frame, then each function at it, the
    /// inlined ones first. Empty when the frame has no source lines.
    pub fn faddr2line(&self) -> Vec<String> {
        if self.source.is_empty() {
            return Vec::new();
        }
        let functions = self.source.iter().enumerate().map(|(at, line)| {
            let inlined_by = if at == 0 { "" } else { "(inlined by) " };
            format!("{inlined_by}{} at {}:{}", line.function, line.file, line.line)
        });
        std::iter::once(format!("{}:", self.printed)).chain(functions).collect()
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Missing {
    /// The stuck CPU waits for a spinlock and no dumped stack shows who holds it (powerpc under
    /// TCG ignores the backtrace IPI; a holder spinning with interrupts off cannot answer one
    /// without an NMI). The title names the waiter: the victim, not the culprit.
    LockHolder,
    /// The log ended while the report still owed lines: its end marker, a CPU's stack that was
    /// announced, the stuck CPU's answer to the backtrace NMI, or the rest of its last line. The
    /// console died or the log was cut; what the report names rests on the part that came.
    Truncated,
}

impl Report {
    /// A report the lab makes itself, not the kernel (silence, a lost connection, a missing
    /// result line): no frame, no CPU, no stacks; `words` is what its signature rests on.
    pub fn from_lab(kind: Kind, title: String, words: &str, line: usize, lines: Vec<String>) -> Report {
        Report {
            kind,
            signature: signature(kind, None, words),
            title,
            frame: None,
            frame_site: None,
            cpu: None,
            stuck_cpu: None,
            line,
            lines,
            repeated: 0,
            source: Source::Console,
            missing: Vec::new(),
            stacks: Vec::new(),
        }
    }
}

fn is_zero(count: &u32) -> bool {
    *count == 0
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Source {
    /// The kernel said it (or the lab read it off the console: silence, a missing result line).
    #[default]
    Console,
    /// The host sampled the vCPUs (`vm::sample`) and named what they were stuck in.
    Host,
    /// A workload run over SSH said it in its stdout (`workload.log`, which `line` counts in):
    /// its own check's violation.
    Workload,
}

/// Judges a whole console log. Never panics, never hangs, on any bytes. `debug`: the debug info of
/// the kernel that printed it, which names the caller behind a frame printed under the next
/// function's name (arm64 and powerpc, after a call to a noreturn function), so that its
/// culprit and signature are the ones x86 gives; without it such a frame is passed over.
pub fn triage(log: &[u8], debug: Option<&DebugInfo>) -> Vec<Report> {
    let mut assembler = assemble::Assembler::default();
    // The newline ends the last line; it does not start an empty one. printk prints whole lines,
    // so a log without it was cut in the middle of one.
    let (log, cut_mid_line) = match log.strip_suffix(b"\n") {
        Some(lines) => (lines, false),
        None => (log, !log.is_empty()),
    };
    for (index, raw) in log.split(|&byte| byte == b'\n').enumerate() {
        assembler.push(index + 1, raw);
    }
    assembler.finish(cut_mid_line, &|site| debug.and_then(|debug| debug.caller_behind(site)))
}

/// The reports of a workload's own checks in its stdout over SSH (`workload.log`, stamped as the
/// console is), one per check as on the console. Only the workload's: whatever else it printed is
/// not the kernel's word, which is on the console.
pub fn workload_reports(log: &[u8]) -> Vec<Report> {
    let own = |report: &Report| report.kind == Kind::RseqViolation;
    triage(log, None).into_iter().filter(own).map(|report| Report { source: Source::Workload, ..report }).collect()
}

/// Who reports a failure on the console: the kernel, or a workload whose own check failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Origin {
    Kernel,
    Workload,
}

/// Whose report this single console line (prefix-stripped or not) opens, if it opens one.
pub fn report_origin(line: &str) -> Option<Origin> {
    let line = console::ConsoleLine::parse(line);
    if line.is_from_guest() {
        return None;
    }
    header::classify(line.text).map(|header| match header.role {
        header::Role::Violation => Origin::Workload,
        _ => Origin::Kernel,
    })
}

/// True when this single console line (prefix-stripped or not) opens a report: what the tests
/// hold triage's reports and the VM stage's view of a line to.
#[cfg(test)]
pub fn starts_report(line: &str) -> bool {
    report_origin(line).is_some()
}
