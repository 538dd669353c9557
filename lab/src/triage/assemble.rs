//! Groups console lines into reports: which headline opens a report and which one only continues or
//! concludes the report before it, and which lines belong to which report when CPUs interleave.

use super::console::{Caller, ConsoleLine};
use super::culprit::Rule;
use super::header::{self, Header, Role};
use super::sanitize;
use super::stack::{self, Stacks};
use super::{signature, FrameSite, Missing, Report, Source};
use crate::vocab::Kind;

/// Lines kept per report for people to read.
const MAX_REPORT_LINES: usize = 80;
/// Lines per report scanned for stacks: an all-CPU backtrace of a big guest is long, and the stack
/// that matters may be far down, but a stuck kernel can repeat itself forever.
const MAX_SCANNED_LINES: usize = 5000;
/// How far after "cut here" the real headline may come (a WARN's message can come first).
const CUT_HERE_WINDOW: usize = 8;
/// A panic this soon after a report was closed by its end marker is that report's ending
/// ("---[ end trace ]---" then "Kernel panic - not syncing: Fatal exception").
const PANIC_GRACE_LINES: usize = 30;
/// A report that owes its end marker is cut short only when the log ends this soon after its
/// headline: a long oops (modules, registers, a deep stack, an interrupt stack) is well under it,
/// and a log that went on longer than that went on without the marker for some other reason.
const END_MARKER_WINDOW: usize = 200;

struct Draft {
    kind: Kind,
    subject: String,
    line: usize,
    owner: Option<Caller>,
    cpu: Option<u32>,
    stuck_cpu: Option<u32>,
    named_frame: Option<String>,
    /// Lockdep's first lock line's "at:" site: where the lock in question was taken.
    lock_site: Option<String>,
    lines: Vec<String>,
    scanned: usize,
    stacks: Stacks,
    awaiting_headline: bool,
    /// Opened by "cut here", which only a WARN or a BUG() prints: both end with a marker.
    cut_here: bool,
    has_die: bool,
    has_panic: bool,
    /// Where the report's end marker was, if it had one.
    ended_at: Option<usize>,
    /// The number of the last console line the report took.
    last_line: usize,
    /// Lines of the same workload check after the first (`Report::repeated`).
    repeated: u32,
}

impl Draft {
    fn new(number: usize, caller: Option<Caller>, header: Header) -> Self {
        let caller_cpu = match caller {
            Some(Caller::Cpu(cpu)) => Some(cpu),
            _ => None,
        };
        let mut draft = Draft {
            kind: header.kind,
            subject: String::new(),
            line: number,
            owner: caller,
            cpu: caller_cpu,
            stuck_cpu: None,
            named_frame: None,
            lock_site: None,
            lines: Vec::new(),
            scanned: 0,
            stacks: Stacks::new(None),
            awaiting_headline: false,
            cut_here: header.role == Role::CutHere,
            has_die: header.role == Role::Die,
            has_panic: header.role == Role::Panic,
            ended_at: None,
            last_line: number,
            repeated: 0,
        };
        let awaiting_headline = header.role == Role::CutHere;
        draft.take_headline(header);
        draft.awaiting_headline = awaiting_headline;
        draft
    }

    /// Adopts what a headline says; also used when the headline follows "cut here".
    fn take_headline(&mut self, header: Header) {
        self.kind = header.kind;
        // A panic that turned out to conclude a specific kind of report whose headline is missing
        // (e.g. the log starts mid-report) has nothing to say beyond the kind.
        if header.role != Role::Panic || header.kind == Kind::Panic {
            self.subject = header.subject;
        }
        self.cpu = header.cpu.or(self.cpu);
        self.stuck_cpu = header.stuck_cpu;
        self.stacks.start_section(header.cpu);
        if let Some(frame) = &header.frame {
            self.stacks.push_named_frame(frame);
        }
        self.named_frame = header.frame;
        self.awaiting_headline = false;
    }

    fn record(&mut self, number: usize, text: &str) {
        self.last_line = number;
        if self.lines.len() < MAX_REPORT_LINES {
            self.lines.push(text.to_owned());
        }
        if self.scanned < MAX_SCANNED_LINES {
            self.scanned += 1;
            self.stacks.feed(text);
        }
        if self.kind == Kind::Lockdep && self.lock_site.is_none() {
            self.lock_site = stack::lock_site(text).map(str::to_owned);
        }
    }

    fn is_waiting_for_headline(&self) -> bool {
        self.awaiting_headline && self.lines.len() <= CUT_HERE_WINDOW
    }

    /// Reports about CPUs other than the reporter take those CPUs' own dumps.
    fn expects_other_cpus(&self) -> bool {
        self.kind == Kind::HardLockup && self.stuck_cpu.is_some() && self.stuck_cpu != self.cpu
    }

    fn ends_with(&self, text: &str) -> bool {
        text.starts_with("---[ end trace")
            || text.starts_with("---[ end Kernel panic")
            // KASAN frames its report with lines of '='.
            || (self.kind == Kind::Kasan && text.len() >= 16 && text.bytes().all(|byte| byte == b'='))
    }

    /// "---[ end trace" closes every `__warn`, die() (`oops_exit`) and UBSAN report; KASAN closes
    /// its ruler. Other reports (lockups, stalls, "BUG: scheduling while atomic") just stop.
    fn expects_end_marker(&self) -> bool {
        self.cut_here
            || self.has_die
            || matches!(self.kind, Kind::Warning | Kind::Kasan | Kind::Oops)
            || self.subject.starts_with("UBSAN: ")
    }

    /// Whether this report, still open when the log ended at `last_line`, owed more lines.
    fn was_cut(&self, last_line: usize, cut_mid_line: bool) -> bool {
        let owes_marker = self.expects_end_marker() && !self.has_panic && last_line - self.line < END_MARKER_WINDOW;
        // The stuck CPU answers the backtrace NMI, or the sender says it did not (after 10 s).
        let owes_stuck_cpu = self.kind == Kind::HardLockup
            && !self.has_panic
            && self.stacks.nmi_pending
            && self.stuck_cpu.is_some_and(|cpu| !self.stacks.dumped(cpu));
        (cut_mid_line && self.last_line == last_line) || owes_marker || owes_stuck_cpu || self.stacks.awaits_frames()
    }

    fn into_report(mut self, truncated: bool, caller_of: &dyn Fn(&FrameSite) -> Option<String>) -> Report {
        self.stacks.name_callers(caller_of);
        let preferred_cpu = if self.kind == Kind::HardLockup { self.stuck_cpu } else { None };
        let rule = Rule::of(self.kind, &self.subject);
        let from_stacks = self.stacks.culprit(preferred_cpu, rule).map(str::to_owned);
        // A lockdep report cut short before its stacks still said where its lock was taken.
        let frame = match rule.lock_site_first() {
            true => self.lock_site.or(from_stacks),
            false => from_stacks.or(self.named_frame).or(self.lock_site),
        };
        let missing =
            [(self.stacks.holder_unseen(preferred_cpu), Missing::LockHolder), (truncated, Missing::Truncated)]
                .into_iter()
                .filter_map(|(lacking, what)| lacking.then_some(what))
                .collect();
        let cpu = self.cpu.or(self.stacks.reporter_cpu).or(self.stacks.first_dump_cpu);
        let frame_site = frame.as_deref().and_then(|frame| self.stacks.site_of(frame, preferred_cpu));
        Report {
            kind: self.kind,
            title: title(self.kind, &self.subject, frame.as_deref()),
            signature: signature(self.kind, frame.as_deref(), &self.subject),
            cpu,
            stuck_cpu: self.stuck_cpu.or(cpu.filter(|_| self.kind == Kind::SoftLockup)),
            frame,
            frame_site,
            line: self.line,
            lines: self.lines,
            repeated: self.repeated,
            source: Source::Console,
            missing,
            stacks: self.stacks.cpu_stacks(),
        }
    }
}

pub(super) fn title(kind: Kind, subject: &str, frame: Option<&str>) -> String {
    let or = |label: &'static str| if subject.is_empty() { label } else { subject };
    let label = match kind {
        Kind::HardLockup => "hard LOCKUP",
        Kind::SoftLockup => "soft lockup",
        Kind::RcuStall => "RCU stall",
        Kind::HungTask => "hung task",
        Kind::Warning => "WARNING",
        Kind::Oops => "Oops",
        Kind::Bug => or("BUG"),
        Kind::Kasan => or("KASAN"),
        Kind::Other => or("other"),
        Kind::Kmemleak => "memory leak",
        Kind::Silent => "silent",
        Kind::LostConnection => "lost connection",
        Kind::BootHang => "boot hang",
        Kind::Infra => "infra",
        Kind::WorkqueueLockup => return "workqueue lockup".to_owned(),
        Kind::Panic => return format!("panic: {subject}"),
        Kind::Lockdep => return format!("lockdep: {subject}"),
        Kind::RseqViolation => return violation_title(subject),
    };
    // Without a stack, a soft lockup or a hung task still names the task it caught.
    let task = matches!(kind, Kind::SoftLockup | Kind::HungTask).then_some(subject).filter(|task| !task.is_empty());
    match frame.or(task) {
        Some(culprit) => format!("{label} in {culprit}"),
        None => label.to_owned(),
    }
}

/// What a workload's check found broken, by the check's name (`check=` in its VIOLATION line).
const CHECKS: &[(&str, &str)] = &[
    // images/workloads/include/mmcid_check.h, check (b)
    ("unique-cid", "mm_cid shared by two running threads"),
    // the same, check (a)
    ("cid-range", "mm_cid above possible CPUs"),
];

/// Titled by what broke, with the check's name: the same title in every run and on every arch.
fn violation_title(check: &str) -> String {
    let what = CHECKS.iter().find(|(name, _)| *name == check).map_or("workload check failed", |(_, what)| what);
    format!("{what} ({check})")
}

#[derive(Default)]
pub(super) struct Assembler {
    drafts: Vec<Draft>,
    /// Indices of reports still taking lines, most recently active last.
    open: Vec<usize>,
    last_line: usize,
}

impl Assembler {
    pub fn push(&mut self, number: usize, raw: &[u8]) {
        self.last_line = number;
        let decoded = String::from_utf8_lossy(raw);
        let clean = sanitize::clean(&decoded);
        let line = ConsoleLine::parse(&clean);
        if line.is_from_guest() {
            self.open.clear();
            return;
        }
        match header::classify(line.text) {
            Some(header) if header.role == Role::Violation => self.on_violation(number, &line, header),
            Some(header) => self.on_headline(number, &line, header),
            None => self.on_line(number, &line),
        }
    }

    /// The reports; `cut_mid_line` when the log's last line has no newline; `caller_of`: the
    /// function a return address printed as `next_function+0x0` returns into, where it is known.
    pub fn finish(self, cut_mid_line: bool, caller_of: &dyn Fn(&FrameSite) -> Option<String>) -> Vec<Report> {
        let Assembler { drafts, open, last_line } = self;
        drafts
            .into_iter()
            .enumerate()
            .map(|(index, draft)| {
                let cut = open.contains(&index) && draft.was_cut(last_line, cut_mid_line);
                draft.into_report(cut, caller_of)
            })
            .collect()
    }

    /// The open report a line from `caller` belongs to: the one that caller opened, else the most
    /// recently active one (NMI backtraces are printed by the CPUs they are about, not by the reporter).
    fn route(&self, caller: Option<Caller>) -> Option<usize> {
        let owned =
            caller.and_then(|caller| self.open.iter().rev().copied().find(|&i| self.drafts[i].owner == Some(caller)));
        owned.or_else(|| self.open.last().copied())
    }

    fn on_line(&mut self, number: usize, line: &ConsoleLine<'_>) {
        let Some(index) = self.route(line.caller) else {
            return;
        };
        let draft = &mut self.drafts[index];
        draft.record(number, line.text);
        if draft.ends_with(line.text) {
            draft.ended_at = Some(number);
            self.open.retain(|&i| i != index);
        }
    }

    /// One report per check broken: the first line is its evidence, the later ones are counted.
    /// The kernel's open reports go on taking their lines around it.
    fn on_violation(&mut self, number: usize, line: &ConsoleLine<'_>, header: Header) {
        let same = |draft: &&mut Draft| draft.kind == header.kind && draft.subject == header.subject;
        if let Some(draft) = self.drafts.iter_mut().find(same) {
            draft.repeated += 1;
            return;
        }
        let mut draft = Draft::new(number, line.caller, header);
        draft.record(number, line.text);
        self.drafts.push(draft);
    }

    fn on_headline(&mut self, number: usize, line: &ConsoleLine<'_>, header: Header) {
        match self.continued_report(number, line.caller, &header) {
            Some(index) => self.continue_report(index, number, line, header),
            None => self.open_report(number, line, header),
        }
    }

    /// The report this headline belongs to, if it does not open one of its own.
    fn continued_report(&self, number: usize, caller: Option<Caller>, header: &Header) -> Option<usize> {
        if header.role == Role::Panic {
            return self.report_concluded_by_panic(number, caller, header.kind);
        }
        let index = self.route(caller)?;
        let draft = &self.drafts[index];
        let continues = match header.role {
            _ if draft.is_waiting_for_headline() => header.role != Role::CutHere,
            Role::Die => matches!(draft.kind, Kind::Bug | Kind::Kasan | Kind::Oops | Kind::Other) && !draft.has_die,
            Role::StuckCpuDump => draft.expects_other_cpus(),
            // One watchdog pass prints one line per stuck pool, one kmemleak scan one block per object.
            Role::Opens => matches!(header.kind, Kind::WorkqueueLockup | Kind::Kmemleak) && draft.kind == header.kind,
            Role::CutHere | Role::Panic | Role::Violation => false,
        };
        continues.then_some(index)
    }

    /// A panic whose reason names a kind concludes the latest report of that kind; any other panic
    /// concludes the report in progress, or one whose end marker was just printed.
    fn report_concluded_by_panic(&self, number: usize, caller: Option<Caller>, kind: Kind) -> Option<usize> {
        let candidate = if kind == Kind::Panic {
            self.route(caller).or_else(|| {
                let last = self.drafts.len().checked_sub(1)?;
                let ended_at = self.drafts[last].ended_at?;
                (number - ended_at <= PANIC_GRACE_LINES).then_some(last)
            })
        } else {
            self.drafts.iter().rposition(|draft| draft.kind == kind)
        };
        candidate.filter(|&index| !self.drafts[index].has_panic)
    }

    fn continue_report(&mut self, index: usize, number: usize, line: &ConsoleLine<'_>, header: Header) {
        let (role, cpu) = (header.role, header.cpu);
        let draft = &mut self.drafts[index];
        match role {
            Role::Panic => draft.has_panic = true,
            _ if draft.is_waiting_for_headline() => draft.take_headline(header),
            Role::Die => draft.has_die = true,
            _ => {}
        }
        // What follows a panic, a die banner or a stuck CPU's dump is another stack.
        draft.stacks.start_section(cpu);
        draft.record(number, line.text);
        if role == Role::Panic && line.caller.is_none() {
            // The panic stops every other CPU; without caller ids, what follows can only be the panic's.
            self.open.clear();
        }
        self.open.retain(|&i| i != index);
        self.open.push(index);
    }

    fn open_report(&mut self, number: usize, line: &ConsoleLine<'_>, header: Header) {
        // A new headline ends the reports its printer had open; without caller ids, all of them.
        let caller = line.caller;
        let drafts = &self.drafts;
        self.open.retain(|&i| {
            let owner = drafts[i].owner;
            caller.is_some() && owner.is_some() && owner != caller
        });
        let mut draft = Draft::new(number, caller, header);
        draft.record(number, line.text);
        self.open.push(self.drafts.len());
        self.drafts.push(draft);
    }
}

#[cfg(test)]
mod tests {
    use crate::triage::{triage, Missing};

    /// `expect`: "kind@line title" per report, joined by "; ".
    fn check(log: &str, expect: &str) {
        let reports = triage(log.as_bytes(), None);
        let actual: Vec<String> =
            reports.iter().map(|report| format!("{}@{} {}", report.kind, report.line, report.title)).collect();
        assert_eq!(actual.join("; "), expect, "log:\n{log}");
    }

    #[test]
    fn headline_frame_is_the_fallback() {
        check(
            "watchdog: CPU 11 self-detected hard LOCKUP @ plpar_hcall_norets_notrace+0x18/0x2c\n",
            "hard-lockup@1 hard LOCKUP in plpar_hcall_norets_notrace",
        );
        check("watchdog: CPU2: Watchdog detected hard LOCKUP on cpu 3\n", "hard-lockup@1 hard LOCKUP");
    }

    #[test]
    fn cut_here_takes_the_headline_that_follows() {
        check("------------[ cut here ]------------\n", "warning@1 WARNING");
        check(
            "------------[ cut here ]------------\nmessage\nWARNING: at f+0x1/0x2, CPU#0: sh/1\n",
            "warning@1 WARNING in f",
        );
        check(
            "------------[ cut here ]------------\n------------[ cut here ]------------\nkernel BUG at x.c:1!\n",
            "warning@1 WARNING; bug@2 kernel BUG",
        );
        let far = format!("------------[ cut here ]------------\n{}kernel BUG at x.c:1!\n", "text\n".repeat(10));
        check(&far, "warning@1 WARNING; bug@12 kernel BUG");
    }

    #[test]
    fn panics_conclude_the_report_they_belong_to() {
        check("Kernel panic - not syncing: Hard LOCKUP\n", "hard-lockup@1 hard LOCKUP");
        check(
            "BUG: soft lockup - CPU#0 stuck for 22s! [sh:1]\n f+0x1/0x2\nKernel panic - not syncing: softlockup: hung tasks\n",
            "soft-lockup@1 soft lockup in f",
        );
        check(
            "Oops: 0000 [#1] SMP\n f+0x1/0x2\n---[ end trace 0000000000000000 ]---\nKernel panic - not syncing: Fatal exception\n",
            "oops@1 Oops in f",
        );
        let late = format!(
            "Oops: 0000 [#1] SMP\n---[ end trace 0000000000000000 ]---\n{}Kernel panic - not syncing: Fatal exception\n",
            "text\n".repeat(40)
        );
        check(&late, "oops@1 Oops; panic@43 panic: Fatal exception");
        check(
            "BUG: soft lockup - CPU#0 stuck for 22s! [sh:1]\nLAB-PROGRESS round 3\nKernel panic - not syncing: Attempted to kill init! exitcode=0x00000100\n",
            "soft-lockup@1 soft lockup in sh; panic@3 panic: Attempted to kill init! exitcode=0x00000100",
        );
        check(
            "Kernel panic - not syncing: Fatal exception\nKernel panic - not syncing: Fatal exception\n",
            "panic@1 panic: Fatal exception; panic@2 panic: Fatal exception",
        );
    }

    #[test]
    fn die_banners_belong_to_the_fault_before_them() {
        check(
            "BUG: kernel NULL pointer dereference, address: 0\nOops: Oops: 0000 [#1] SMP\n",
            "bug@1 BUG: kernel NULL pointer dereference",
        );
        check("Oops: 0000 [#1] SMP\nOops: 0000 [#2] SMP\n", "oops@1 Oops; oops@2 Oops");
        check(
            "BUG: soft lockup - CPU#0 stuck for 22s! [sh:1]\nOops: 0000 [#1] SMP\n",
            "soft-lockup@1 soft lockup in sh; oops@2 Oops",
        );
    }

    /// A workload's check: one report per check, titled by what broke, among the kernel's reports
    /// without taking or ending their lines.
    #[test]
    fn workload_violations_are_one_report_per_check() {
        const SHARED: &str = "mmcid-churn: VIOLATION check=unique-cid cid=0 thread=3 cpu=3 thread=1 cpu=2\n";
        const RANGE: &str = "mmcid-churn: VIOLATION check=cid-range cid=9 possible_cpus=4 thread=2 cpu=1\n";
        const SOFT: &str = "BUG: soft lockup - CPU#0 stuck for 22s! [sh:1]\n";
        check(SHARED, "rseq-violation@1 mm_cid shared by two running threads (unique-cid)");
        check(RANGE, "rseq-violation@1 mm_cid above possible CPUs (cid-range)");
        check("t: VIOLATION check=lost-wakeup task=3\n", "rseq-violation@1 workload check failed (lost-wakeup)");
        check(
            &format!("{SHARED}{SHARED}{RANGE}{SHARED}"),
            "rseq-violation@1 mm_cid shared by two running threads (unique-cid); \
             rseq-violation@3 mm_cid above possible CPUs (cid-range)",
        );
        check(
            &format!("{SOFT}{SHARED} f+0x1/0x2\n"),
            "soft-lockup@1 soft lockup in f; rseq-violation@2 mm_cid shared by two running threads (unique-cid)",
        );
        check(
            &format!("{SHARED}{SOFT}"),
            "rseq-violation@1 mm_cid shared by two running threads (unique-cid); soft-lockup@2 soft lockup in sh",
        );
        let repeated = |log: &str| triage(log.as_bytes(), None).iter().map(|r| r.repeated).collect::<Vec<_>>();
        assert_eq!(repeated(&format!("{SHARED}{SHARED}{RANGE}{SHARED}")), [2, 0]);
        let kept = triage(format!("{SHARED}{SHARED}").as_bytes(), None).remove(0);
        assert_eq!(
            (kept.lines, kept.signature.as_str()),
            (vec![SHARED.trim_end().to_owned()], "rseq-violation:unique-cid")
        );
    }

    #[test]
    fn repeated_watchdog_lines_are_separate_reports_except_workqueue_pools() {
        check(
            "watchdog: CPU 1 Hard LOCKUP\nwatchdog: CPU 2 Hard LOCKUP\n",
            "hard-lockup@1 hard LOCKUP; hard-lockup@2 hard LOCKUP",
        );
        check(
            "BUG: workqueue lockup - pool cpus=0 stuck for 31s!\nBUG: workqueue lockup - pool cpus=1 stuck for 31s!\n",
            "workqueue-lockup@1 workqueue lockup",
        );
    }

    /// `expect`: "cut" or "whole" per report, joined by " ".
    fn check_cut(log: &str, expect: &str) {
        let reports = triage(log.as_bytes(), None);
        let actual: Vec<&str> = reports
            .iter()
            .map(|report| match report.missing.contains(&Missing::Truncated) {
                true => "cut",
                false => "whole",
            })
            .collect();
        assert_eq!(actual.join(" "), expect, "log:\n{log}");
    }

    #[test]
    fn reports_the_log_cut_short_say_so() {
        const WARN: &str = "WARNING: at f+0x1/0x2, CPU#0: sh/1\n f+0x1/0x2\n";
        const LOCKUP: &str = "watchdog: CPU2: Watchdog detected hard LOCKUP on cpu 3\n";
        const SENT: &str =
            "watchdog: CPU2: Watchdog detected hard LOCKUP on cpu 3\nSending NMI from CPU 2 to CPUs 3:\n";
        const SOFT: &str = "BUG: soft lockup - CPU#0 stuck for 22s! [sh:1]\n";
        check_cut(WARN, "cut");
        check_cut(&format!("{WARN}---[ end trace 0000000000000000 ]---\n"), "whole");
        check_cut(&format!("{WARN}{}", "text\n".repeat(300)), "whole");
        check_cut(&format!("{WARN}Kernel panic - not syncing: kernel: panic_on_warn set ...\n"), "whole");
        check_cut(&format!("{WARN}{SOFT}"), "whole whole");
        check_cut("------------[ cut here ]------------\nkernel BUG at x.c:1!\n", "cut");
        check_cut("BUG: KASAN: slab-use-after-free in f+0x1/0x2\n f+0x1/0x2\n", "cut");
        check_cut("BUG: scheduling while atomic: sh/1/0x00000002\n f+0x1/0x2\n", "whole");
        check_cut(LOCKUP, "whole");
        check_cut(SENT, "cut");
        check_cut(&format!("{SENT}After 10 seconds, these CPUS still haven't responded to the NMI: 3\n"), "whole");
        check_cut(&format!("{SENT}NMI backtrace for cpu 3\n"), "cut");
        check_cut(&format!("{SENT}NMI backtrace for cpu 3\nRIP: 0010:f+0x1/0x2\n"), "whole");
        check_cut(&format!("{SENT}Kernel panic - not syncing: Hard LOCKUP\n"), "whole");
        check_cut(&format!("{SOFT}NMI backtrace for cpu 1 skipped: idling at default_idle+0x1/0x2\n"), "whole");
        check_cut(&format!("{SOFT}CPU: 0 PID: 1 Comm: sh\n"), "cut");
        check_cut(&format!("{SOFT}CPU: 0 PID: 1 Comm: sh\n{}", "text\n".repeat(50)), "whole");
        check_cut(&format!("{SOFT} f+0x1/0x2"), "cut");
        check_cut(&format!("{SOFT} f+0x1/0x2\nLAB-RESULT fail"), "whole");
        check_cut("Kernel panic - not syncing: Fatal exc", "cut");
    }

    /// `expect`: the first report's frame, or "-".
    fn check_frame(log: &str, expect: &str) {
        let reports = triage(log.as_bytes(), None);
        let frame = reports.first().and_then(|report| report.frame.as_deref());
        assert_eq!(frame.unwrap_or("-"), expect, "log:\n{log}");
    }

    #[test]
    fn a_lockdep_report_names_where_its_lock_was_taken() {
        const HELD: &str = "WARNING: lock held when returning to user space!\n1 lock held by a/1:\n \
            #0: 00000000a3b01fa0 (&fi->mutex){+.+.}, at: fuse_lock_inode+0xaf/0xe0\n";
        check_frame(HELD, "fuse_lock_inode");
        check_frame(&format!("{HELD}stack backtrace:\n dump_stack+0x1/0x2\n other_fn+0x1/0x2\n"), "fuse_lock_inode");
        const CUT: &str = "[ INFO: possible recursive locking detected ]\n \
            (audit_cmd_mutex){+.+.+.}, at: [<ffffffff81585f59>] audit_receive+0x79/0x360\n";
        check_frame(CUT, "audit_receive");
        check_frame(&format!("{CUT}stack backtrace:\n dump_stack+0x1/0x2\n other_fn+0x1/0x2\n"), "other_fn");
    }

    #[test]
    fn guest_and_empty_input_make_no_reports() {
        check("", "");
        check("\n\n\n", "");
        check("LAB-RESULT fail: saw BUG: soft lockup - CPU#0 stuck for 22s! [sh:1]\n", "");
    }
}
