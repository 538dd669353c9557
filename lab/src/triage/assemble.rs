//! Groups console lines into reports: which headline opens a report and which one only continues or
//! concludes the report before it, and which lines belong to which report when CPUs interleave.

use super::console::{Caller, ConsoleLine};
use super::header::{self, Header, Role};
use super::sanitize;
use super::stack::Stacks;
use super::{Kind, Report};

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

struct Draft {
    kind: Kind,
    subject: String,
    line: usize,
    owner: Option<Caller>,
    cpu: Option<u32>,
    stuck_cpu: Option<u32>,
    named_frame: Option<String>,
    lines: Vec<String>,
    scanned: usize,
    stacks: Stacks,
    awaiting_headline: bool,
    has_die: bool,
    has_panic: bool,
    closed_at: Option<usize>,
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
            lines: Vec::new(),
            scanned: 0,
            stacks: Stacks::new(None),
            awaiting_headline: false,
            has_die: header.role == Role::Die,
            has_panic: header.role == Role::Panic,
            closed_at: None,
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

    fn record(&mut self, text: &str) {
        if self.lines.len() < MAX_REPORT_LINES {
            self.lines.push(text.to_owned());
        }
        if self.scanned < MAX_SCANNED_LINES {
            self.scanned += 1;
            self.stacks.feed(text);
        }
    }

    fn is_waiting_for_headline(&self) -> bool {
        self.awaiting_headline && self.lines.len() <= CUT_HERE_WINDOW
    }

    fn ends_with(&self, text: &str) -> bool {
        text.starts_with("---[ end trace")
            || text.starts_with("---[ end Kernel panic")
            // KASAN frames its report with lines of '='.
            || (self.kind == Kind::Kasan && text.len() >= 16 && text.bytes().all(|byte| byte == b'='))
    }

    fn into_report(self) -> Report {
        let preferred_cpu = if self.kind == Kind::HardLockup {
            self.stuck_cpu
        } else {
            None
        };
        let frame = self
            .stacks
            .culprit(preferred_cpu)
            .map(str::to_owned)
            .or(self.named_frame);
        Report {
            kind: self.kind,
            title: title(self.kind, &self.subject, frame.as_deref()),
            cpu: self
                .cpu
                .or(self.stacks.reporter_cpu)
                .or(self.stacks.first_dump_cpu),
            frame,
            line: self.line,
            lines: self.lines,
        }
    }
}

fn title(kind: Kind, subject: &str, frame: Option<&str>) -> String {
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
        Kind::Silent => "silent",
        Kind::WorkqueueLockup => return "workqueue lockup".to_owned(),
        Kind::Panic => return format!("panic: {subject}"),
        Kind::Lockdep => return format!("lockdep: {subject}"),
    };
    // Without a stack, a soft lockup or a hung task still names the task it caught.
    let task = matches!(kind, Kind::SoftLockup | Kind::HungTask)
        .then_some(subject)
        .filter(|task| !task.is_empty());
    match frame.or(task) {
        Some(culprit) => format!("{label} in {culprit}"),
        None => label.to_owned(),
    }
}

#[derive(Default)]
pub(super) struct Assembler {
    drafts: Vec<Draft>,
    /// Indices of reports still taking lines, most recently active last.
    open: Vec<usize>,
}

impl Assembler {
    pub fn push(&mut self, number: usize, raw: &[u8]) {
        let decoded = String::from_utf8_lossy(raw);
        let clean = sanitize::clean(&decoded);
        let line = ConsoleLine::parse(&clean);
        if line.is_from_guest() {
            self.close_where(number, |_, _| true);
            return;
        }
        match header::classify(line.text) {
            Some(header) => self.on_headline(number, &line, header),
            None => self.on_line(number, &line),
        }
    }

    pub fn finish(self) -> Vec<Report> {
        self.drafts.into_iter().map(Draft::into_report).collect()
    }

    /// The open report a line from `caller` belongs to: the one that caller opened, else the most
    /// recently active one (NMI backtraces are printed by the CPUs they are about, not by the reporter).
    fn route(&self, caller: Option<Caller>) -> Option<usize> {
        let owned = caller.and_then(|caller| {
            self.open
                .iter()
                .rev()
                .copied()
                .find(|&i| self.drafts[i].owner == Some(caller))
        });
        owned.or_else(|| self.open.last().copied())
    }

    fn on_line(&mut self, number: usize, line: &ConsoleLine<'_>) {
        let Some(index) = self.route(line.caller) else {
            return;
        };
        let draft = &mut self.drafts[index];
        draft.record(line.text);
        if draft.ends_with(line.text) {
            self.close_where(number, |i, _| i == index);
        }
    }

    fn on_headline(&mut self, number: usize, line: &ConsoleLine<'_>, header: Header) {
        match self.continued_report(number, line.caller, &header) {
            Some(index) => self.continue_report(index, line, header),
            None => self.open_report(number, line, header),
        }
    }

    /// The report this headline belongs to, if it does not open one of its own.
    fn continued_report(
        &self,
        number: usize,
        caller: Option<Caller>,
        header: &Header,
    ) -> Option<usize> {
        if header.role == Role::Panic {
            return self.report_concluded_by_panic(number, caller, header.kind);
        }
        let index = self.route(caller)?;
        let draft = &self.drafts[index];
        let continues = match header.role {
            _ if draft.is_waiting_for_headline() => header.role != Role::CutHere,
            Role::Die => {
                matches!(
                    draft.kind,
                    Kind::Bug | Kind::Kasan | Kind::Oops | Kind::Other
                ) && !draft.has_die
            }
            Role::StuckCpuDump => draft.kind == Kind::HardLockup,
            // One watchdog pass prints one line per stuck pool.
            Role::Opens => {
                header.kind == Kind::WorkqueueLockup && draft.kind == Kind::WorkqueueLockup
            }
            Role::CutHere | Role::Panic => false,
        };
        continues.then_some(index)
    }

    /// A panic whose reason names a kind concludes the latest report of that kind; any other panic
    /// concludes the report in progress (or one that just ended).
    fn report_concluded_by_panic(
        &self,
        number: usize,
        caller: Option<Caller>,
        kind: Kind,
    ) -> Option<usize> {
        let candidate = if kind == Kind::Panic {
            self.route(caller).or_else(|| {
                let last = self.drafts.len().checked_sub(1)?;
                let closed_at = self.drafts[last].closed_at?;
                (number - closed_at <= PANIC_GRACE_LINES).then_some(last)
            })
        } else {
            self.drafts.iter().rposition(|draft| draft.kind == kind)
        };
        candidate.filter(|&index| !self.drafts[index].has_panic)
    }

    fn continue_report(&mut self, index: usize, line: &ConsoleLine<'_>, header: Header) {
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
        draft.record(line.text);
        if role == Role::Panic && line.caller.is_none() {
            // The panic stops every other CPU; without caller ids, what follows can only be the panic's.
            self.open.clear();
        }
        self.open.retain(|&i| i != index);
        self.open.push(index);
        self.drafts[index].closed_at = None;
    }

    fn open_report(&mut self, number: usize, line: &ConsoleLine<'_>, header: Header) {
        // A new headline ends the reports its printer had open; without caller ids, all of them.
        let caller = line.caller;
        self.close_where(number, |_, owner| {
            caller.is_none() || owner.is_none() || owner == caller
        });
        let mut draft = Draft::new(number, caller, header);
        draft.record(line.text);
        self.open.push(self.drafts.len());
        self.drafts.push(draft);
    }

    fn close_where(&mut self, number: usize, closes: impl Fn(usize, Option<Caller>) -> bool) {
        let drafts = &mut self.drafts;
        self.open.retain(|&index| {
            let draft = &mut drafts[index];
            let close = closes(index, draft.owner);
            if close {
                draft.closed_at = Some(number);
            }
            !close
        });
    }
}
