//! Failures grouped by signature (`hard LOCKUP in mm_get_cid: 7 cells (x86_64 ×3, ...)`), and each
//! failed run in full: what the verdict rests on, the reports with their guilty frame and the
//! stacks of both sides of a live lock with source lines, the console excerpt with the reports'
//! own lines marked, and the cell's files.

use std::collections::BTreeMap;

use maud::{html, Markup};

use super::{anchor, clean, files, plural, run_name, verdict_class};
use crate::arch::Arch;
use crate::report::CellResult;
use crate::results::compare;
use crate::triage::{CpuStack, FrameSite, Missing, Report, Source};
use crate::vocab::Basis;

/// The failed runs of one signature.
pub struct Group<'a> {
    pub signature: String,
    /// The title a person reads, from its first run.
    pub title: String,
    pub runs: Vec<&'a CellResult>,
}

impl Group<'_> {
    /// `hard LOCKUP in mm_get_cid: 7 cells (x86_64 ×3, aarch64 ×2, ppc64le ×2; 4 vCPUs ×7)`, and
    /// the runs when a `--repeat` failed a cell more than once.
    pub fn headline(&self) -> String {
        let mut cells: Vec<(&str, Arch, u32)> = Vec::new();
        for run in &self.runs {
            if !cells.iter().any(|(id, ..)| *id == run.id) {
                cells.push((&run.id, run.arch, run.vcpus));
            }
        }
        let mut by_arch: BTreeMap<Arch, usize> = BTreeMap::new();
        let mut by_vcpus: BTreeMap<u32, usize> = BTreeMap::new();
        for &(_, arch, vcpus) in &cells {
            *by_arch.entry(arch).or_default() += 1;
            *by_vcpus.entry(vcpus).or_default() += 1;
        }
        let archs: Vec<String> = by_arch.iter().map(|(arch, n)| format!("{arch} ×{n}")).collect();
        let vcpus: Vec<String> = by_vcpus.iter().map(|(v, n)| format!("{v} vCPUs ×{n}")).collect();
        let mut count = plural(cells.len(), "cell");
        if self.runs.len() > cells.len() {
            count += &format!(", {}", plural(self.runs.len(), "run"));
        }
        format!("{}: {count} ({}; {})", self.title, archs.join(", "), vcpus.join(", "))
    }
}

/// The failed runs (`fail`, `timeout`) by signature, the most widespread first.
pub fn groups(cells: &[CellResult]) -> Vec<Group<'_>> {
    let mut groups: Vec<Group> = Vec::new();
    for cell in cells {
        let Some(signature) = compare::failure(cell) else { continue };
        match groups.iter_mut().find(|g| g.signature == signature) {
            Some(group) => group.runs.push(cell),
            None => {
                let title = cell.reports.first().map_or_else(|| cell.reason.clone(), |r| r.title.clone());
                groups.push(Group { signature, title, runs: vec![cell] });
            }
        }
    }
    groups.sort_by(|a, b| b.runs.len().cmp(&a.runs.len()).then_with(|| a.signature.cmp(&b.signature)));
    groups
}

pub fn section(cells: &[CellResult]) -> Markup {
    let groups = groups(cells);
    html! {
        section #failures {
            h2 { "Failures by signature" }
            @if groups.is_empty() { p.none { "No cell failed." } }
            @for (i, group) in groups.iter().enumerate() {
                section.signature #{"sig-" (i)} data-signature=(clean(&group.signature)) data-runs=(group.runs.len()) {
                    h3 { (clean(&group.headline())) }
                    p.signature-name { code { (clean(&group.signature)) } }
                    @for (j, run) in group.runs.iter().enumerate() { (failure(run, j == 0)) }
                }
            }
        }
    }
}

/// One failed run, open when it is the first of its group.
fn failure(cell: &CellResult, open: bool) -> Markup {
    // Sanitized when it was made, but the page does not take that on trust.
    let excerpt = clean(&cell.excerpt);
    html! {
        details.failure.(verdict_class(cell)) #(anchor(cell)) data-cell=(cell.id) open[open] {
            summary { (run_name(cell)) ": " (clean(&cell.reason)) }
            dl.facts {
                dt { "verdict" } dd { (cell.verdict) " (" (cell.end.name()) ")" }
                @if let Some(basis) = cell.basis { dt { "rests on" } dd.basis { (basis_text(basis)) } }
                @if let Some(detect) = cell.detect_s { dt { "detected" } dd { (format!("{detect:.1} s after ready")) } }
                dt { "files" } dd { (files(cell)) }
            }
            @for report in &cell.reports { (report_block(report)) }
            @if !excerpt.is_empty() {
                h4 { "Console" }
                pre.console {
                    @for (own, line) in marked(&excerpt, &cell.reports) {
                        @if own { mark.own { (line) } } @else { span { (line) } } "\n"
                    }
                }
            }
        }
    }
}

fn basis_text(basis: Basis) -> &'static str {
    match basis {
        Basis::Guest => "guest: the kernel's own reports on the console",
        Basis::Host => "host: the host's samples of the vCPUs, from outside a guest that said nothing",
        Basis::GuestAndHost => "guest+host: the kernel's reports and the host's samples agree",
    }
}

fn report_block(report: &Report) -> Markup {
    let source = match report.source {
        Source::Console => "console",
        Source::Host => "host samples",
        Source::Workload => "workload's output over SSH",
    };
    let guilty = report.frame_site.as_ref().map(FrameSite::faddr2line).unwrap_or_default();
    let mut stacks: Vec<(Role, &CpuStack)> = report.stacks.iter().map(|s| (role(report, s), s)).collect();
    stacks.sort_by_key(|(role, _)| *role);
    html! {
        div.report data-kind=(report.kind) data-source=(source) {
            h4 { (clean(&report.title)) span.source { " (" (report.kind) ", from the " (source) ")" } }
            @for missing in &report.missing { p.missing { "missing: " (missing_text(*missing)) } }
            @if !guilty.is_empty() { pre.guilty { "guilty frame " (clean(&guilty.join("\n  "))) } }
            @if let Some(line) = live_lock(report) { p.livelock { (line) } }
            @if !stacks.is_empty() {
                div.stacks { @for (role, stack) in stacks { (stack_block(role, stack)) } }
            }
        }
    }
}

fn missing_text(missing: Missing) -> &'static str {
    match missing {
        Missing::LockHolder => "the lock holder: no dumped stack shows who holds the lock the stuck CPU waits for",
        Missing::Truncated => "the rest of the report: the log ended while it still owed lines",
    }
}

/// What a CPU does in a report, in the order a reader wants them: the stuck one, those waiting for
/// its lock, the rest, the idle ones.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Role {
    Stuck,
    Waits,
    Runs,
    Idle,
}

impl Role {
    /// Its class on the page.
    fn key(self) -> &'static str {
        match self {
            Role::Stuck => "stuck",
            Role::Waits => "waits",
            Role::Runs => "runs",
            Role::Idle => "idle",
        }
    }

    fn name(self) -> &'static str {
        match self {
            Role::Stuck => "stuck",
            Role::Waits => "waits for a lock",
            Role::Runs => "running",
            Role::Idle => "idle",
        }
    }
}

fn role(report: &Report, stack: &CpuStack) -> Role {
    match stack {
        s if s.waits_on_lock => Role::Waits,
        s if s.idle => Role::Idle,
        s if s.cpu.is_some() && s.cpu == report.stuck_cpu => Role::Stuck,
        _ => Role::Runs,
    }
}

/// `live lock: CPU 2 stuck in mm_get_cid while CPUs 1, 3 wait for a lock`: both sides, when the
/// report shows both.
fn live_lock(report: &Report) -> Option<String> {
    let stuck = report.stacks.iter().find(|s| role(report, s) == Role::Stuck)?;
    let waiting: Vec<String> =
        report.stacks.iter().filter(|s| s.waits_on_lock).filter_map(|s| s.cpu).map(|cpu| cpu.to_string()).collect();
    if waiting.is_empty() {
        return None;
    }
    let cpus = if waiting.len() == 1 { "CPU" } else { "CPUs" };
    let wait = if waiting.len() == 1 { "waits" } else { "wait" };
    Some(clean(&format!(
        "live lock: CPU {} stuck in {} while {cpus} {} {wait} for a lock",
        stuck.cpu.unwrap_or_default(),
        stuck.frames.first().map_or("?", String::as_str),
        waiting.join(", ")
    )))
}

fn stack_block(role: Role, stack: &CpuStack) -> Markup {
    let whose = stack.cpu.map_or_else(|| "task".to_string(), |cpu| format!("CPU {cpu}"));
    html! {
        div.stack.{"role-" (role.key())} data-cpu=[stack.cpu] {
            h5 { (whose) " · " (role.name()) }
            ol {
                @for (i, frame) in stack.frames.iter().enumerate() {
                    @let site = stack.sites.get(i).filter(|_| stack.sites.len() == stack.frames.len());
                    li {
                        code { (clean(site.map_or(frame, |s| &s.printed))) }
                        @for line in site.map(FrameSite::faddr2line).unwrap_or_default().iter().skip(1) {
                            div.src { (clean(line)) }
                        }
                    }
                }
            }
        }
    }
}

/// The excerpt's lines, each with whether it is one of the reports' own: each report's lines are
/// looked for in order, a console line being one when it ends with the report's next line (the
/// console adds the host time and printk's prefix in front).
pub fn marked<'a>(excerpt: &'a str, reports: &[Report]) -> Vec<(bool, &'a str)> {
    let wanted: Vec<Vec<String>> = reports
        .iter()
        .map(|r| r.lines.iter().map(|l| clean(l).trim_end().to_string()).filter(|l| !l.is_empty()).collect())
        .collect();
    let mut next = vec![0; wanted.len()];
    excerpt
        .lines()
        .map(|line| {
            let text = line.trim_end();
            let mut own = false;
            for (lines, at) in wanted.iter().zip(next.iter_mut()) {
                if lines.get(*at).is_some_and(|want| text.ends_with(want.as_str())) {
                    *at += 1;
                    own = true;
                }
            }
            (own, line)
        })
        .collect()
}
