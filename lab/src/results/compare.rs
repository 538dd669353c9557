//! Two runs compared cell by cell and failure by failure: what is new, fixed, still failing or
//! flaky. SQUAD's regression and fix semantics for single runs; with repeats, the failure counts
//! decide, and a change counts only when Fisher's exact test says the two rates differ at 5 %.
//!
//! A cell fails when its verdict is `fail` or `timeout` (for a cell that provokes a report on
//! purpose, a pass is the report it wanted). Errors, skips and interrupted runs say nothing about
//! the kernel: a cell with no judged run on one side is listed as unjudged, never as new.

use std::collections::BTreeMap;

use crate::arch::Arch;
use crate::report::CellResult;
use crate::vocab::Verdict;

/// Below this a difference in failure rate counts.
pub const SIGNIFICANCE: f64 = 0.05;

/// One cell's runs in one of the two run directories.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Side {
    /// Runs with a verdict on the kernel.
    pub judged: u32,
    pub failed: u32,
    /// Runs that could not judge the kernel (errors, skips, signals).
    pub unjudged: u32,
    /// The verdict and reason of the last run, what a single run shows.
    pub verdict: Option<Verdict>,
    pub reason: String,
    /// Failures by signature (`timeout` for a timeout without a report).
    pub signatures: BTreeMap<String, u32>,
}

impl Side {
    pub(super) fn add(&mut self, cell: &CellResult) {
        self.verdict = Some(cell.verdict);
        self.reason = cell.reason.clone();
        if !cell.verdict.judges_the_kernel() {
            self.unjudged += 1;
            return;
        }
        self.judged += 1;
        if let Some(signature) = failure(cell) {
            self.failed += 1;
            *self.signatures.entry(signature).or_insert(0) += 1;
        }
    }

    fn single(&self) -> bool {
        self.judged == 1
    }
}

/// The signature a cell's run failed with, None when it did not fail.
pub fn failure(cell: &CellResult) -> Option<String> {
    match cell.verdict {
        Verdict::Fail | Verdict::Timeout => {
            Some(cell.reports.first().map_or_else(|| cell.verdict.name().to_string(), |r| r.signature.clone()))
        }
        _ => None,
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Change {
    /// Passed in the base, fails now (significantly, with repeats).
    New,
    /// Failed in both, significantly more often now.
    Worse,
    /// Failed in the base, passes now (significantly, with repeats).
    Fixed,
    /// Failed in both, significantly less often now.
    Better,
    /// Failures on one side only, too few to tell a change from chance.
    NotSignificant,
    /// Some runs fail and some pass, on both sides, at rates that do not differ significantly.
    Flaky,
    StillFailing,
    Passing,
    /// No run on one side said anything about the kernel.
    Unjudged,
}

impl Change {
    /// The order a reader takes them in: what to act on first.
    pub const ORDER: [Change; 9] = [
        Change::New,
        Change::Worse,
        Change::Fixed,
        Change::Better,
        Change::NotSignificant,
        Change::Flaky,
        Change::StillFailing,
        Change::Passing,
        Change::Unjudged,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Change::New => "new",
            Change::Worse => "worse",
            Change::Fixed => "fixed",
            Change::Better => "better",
            Change::NotSignificant => "not significant at 5 %",
            Change::Flaky => "flaky",
            Change::StillFailing => "still failing",
            Change::Passing => "passing",
            Change::Unjudged => "unjudged",
        }
    }

    /// What a CI job pages someone for.
    pub fn is_regression(self) -> bool {
        matches!(self, Change::New | Change::Worse)
    }
}

/// The change from `base` to `new` and, when either side repeated, the two-sided p-value of
/// Fisher's exact test on the failure counts.
pub fn classify(base: &Side, new: &Side) -> (Change, Option<f64>) {
    if base.judged == 0 || new.judged == 0 {
        return (Change::Unjudged, None);
    }
    let (b, n) = (base.failed, new.failed);
    if base.single() && new.single() {
        let change = match (b, n) {
            (0, 0) => Change::Passing,
            (0, _) => Change::New,
            (_, 0) => Change::Fixed,
            _ => Change::StillFailing,
        };
        return (change, None);
    }
    let p = fishers_exact::fishers_exact(&[b, base.judged - b, n, new.judged - n])
        .map(|p| p.two_tail_pvalue)
        .unwrap_or(1.0);
    let (rate_b, rate_n) = (f64::from(b) / f64::from(base.judged), f64::from(n) / f64::from(new.judged));
    let change = match (p < SIGNIFICANCE, rate_n > rate_b) {
        (true, true) if b == 0 => Change::New,
        (true, true) => Change::Worse,
        (true, false) if n == 0 => Change::Fixed,
        (true, false) => Change::Better,
        _ if b == 0 && n == 0 => Change::Passing,
        _ if b == base.judged && n == new.judged => Change::StillFailing,
        _ if b == 0 || n == 0 => Change::NotSignificant,
        _ => Change::Flaky,
    };
    (change, Some(p))
}

#[derive(Debug, Clone)]
pub struct CellChange {
    pub id: String,
    pub arch: Arch,
    pub change: Change,
    pub p: Option<f64>,
    pub base: Side,
    pub new: Side,
}

impl CellChange {
    /// Why, in one line: the new run's reason, or the base's for a cell that no longer fails.
    pub fn reason(&self) -> String {
        match self.change {
            Change::Fixed | Change::Better | Change::Passing => format!("was: {}", self.base.reason),
            _ => self.new.reason.clone(),
        }
    }
}

/// A failure (by signature) across the common cells.
#[derive(Debug, Clone, PartialEq)]
pub struct FailureChange {
    pub signature: String,
    /// The title a person reads, from the newest run that has it.
    pub title: String,
    /// The cells it failed in, per side.
    pub base_cells: Vec<String>,
    pub new_cells: Vec<String>,
    /// The new run's cells per architecture and vCPU count.
    pub new_where: BTreeMap<(Arch, u32), u32>,
}

impl FailureChange {
    /// Where the failure stands in the new run: new, gone or still there.
    pub fn status(&self) -> &'static str {
        match (self.base_cells.len(), self.new_cells.len()) {
            (0, _) => "new failure",
            (_, 0) => "gone",
            _ => "still",
        }
    }
}

#[derive(Debug, Clone)]
pub struct Comparison {
    /// The base and new kernels, when each run has one and they differ: the cells are then
    /// matched by architecture, vCPUs and workload (two kernels, two steps of a series).
    pub kernels: Option<(String, String)>,
    pub cells: Vec<CellChange>,
    pub failures: Vec<FailureChange>,
    /// Cells in one run only: different matrices are compared on what they share.
    pub only_base: Vec<String>,
    pub only_new: Vec<String>,
}

impl Comparison {
    pub fn regressed(&self) -> bool {
        self.cells.iter().any(|c| c.change.is_regression())
    }

    pub fn count(&self, change: Change) -> usize {
        self.cells.iter().filter(|c| c.change == change).count()
    }

    /// `3 new, 1 fixed, 20 passing`: the changes that occur, in `Change::ORDER`.
    pub fn counts(&self) -> String {
        let counts: Vec<String> = Change::ORDER
            .iter()
            .filter(|&&ch| self.count(ch) > 0)
            .map(|&ch| format!("{} {}", self.count(ch), ch.name()))
            .collect();
        counts.join(", ")
    }
}

/// What a cell is matched by: its kernel (unless two kernels are compared), arch, vCPUs, workload.
type Key = (Option<String>, Arch, u32, String);

/// Compares two runs' cells (each run's results in planned order, repeats included).
pub fn compare(base: &[CellResult], new: &[CellResult]) -> Comparison {
    let kernels = match (one_kernel(base), one_kernel(new)) {
        (Some(b), Some(n)) if b != n => Some((b.to_string(), n.to_string())),
        _ => None,
    };
    let across_kernels = kernels.is_some();
    let key = |cell: &CellResult| -> Key {
        let kernel = (!across_kernels).then(|| cell.kernel.clone());
        (kernel, cell.arch, cell.vcpus, cell.workload.clone())
    };
    let (base_sides, new_sides) = (sides(base, &key), sides(new, &key));
    let only = |a: &BTreeMap<Key, (String, Side)>, b: &BTreeMap<Key, (String, Side)>| {
        a.iter().filter(|(k, _)| !b.contains_key(*k)).map(|(_, (id, _))| id.clone()).collect()
    };
    let (only_base, only_new) = (only(&base_sides, &new_sides), only(&new_sides, &base_sides));
    let mut cells = Vec::new();
    for (k, (id, new_side)) in &new_sides {
        let Some((_, base_side)) = base_sides.get(k) else { continue };
        let (change, p) = classify(base_side, new_side);
        cells.push(CellChange { id: id.clone(), arch: k.1, change, p, base: base_side.clone(), new: new_side.clone() });
    }
    cells.sort_by(|a, b| (a.change, &a.id).cmp(&(b.change, &b.id)));
    let common = |cell: &CellResult| base_sides.contains_key(&key(cell)) && new_sides.contains_key(&key(cell));
    Comparison { kernels, failures: failures(base, new, &common), cells, only_base, only_new }
}

fn one_kernel(results: &[CellResult]) -> Option<&str> {
    let first = &results.first()?.kernel;
    results.iter().all(|c| c.kernel == *first).then_some(first.as_str())
}

/// Each cell's side by key, with the id it is shown by (the run's own).
fn sides(results: &[CellResult], key: &dyn Fn(&CellResult) -> Key) -> BTreeMap<Key, (String, Side)> {
    let mut sides: BTreeMap<Key, (String, Side)> = BTreeMap::new();
    for cell in results {
        sides.entry(key(cell)).or_insert_with(|| (cell.id.clone(), Side::default())).1.add(cell);
    }
    sides
}

fn failures(base: &[CellResult], new: &[CellResult], common: &dyn Fn(&CellResult) -> bool) -> Vec<FailureChange> {
    let mut by_signature: BTreeMap<String, FailureChange> = BTreeMap::new();
    for (side, results) in [(0, base), (1, new)] {
        for cell in results.iter().filter(|c| common(c)) {
            let Some(signature) = failure(cell) else { continue };
            let entry = by_signature.entry(signature.clone()).or_insert_with(|| FailureChange {
                signature,
                title: String::new(),
                base_cells: Vec::new(),
                new_cells: Vec::new(),
                new_where: BTreeMap::new(),
            });
            entry.title = cell.reports.first().map_or_else(|| cell.reason.clone(), |r| r.title.clone());
            let cells = if side == 0 { &mut entry.base_cells } else { &mut entry.new_cells };
            if !cells.contains(&cell.id) {
                cells.push(cell.id.clone());
                if side == 1 {
                    *entry.new_where.entry((cell.arch, cell.vcpus)).or_insert(0) += 1;
                }
            }
        }
    }
    by_signature.into_values().collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `side("3/10")`: 3 failing runs of 10 judged ones.
    fn side(runs: &str) -> Side {
        let (failed, judged) = runs.split_once('/').unwrap();
        let (failed, judged) = (failed.parse().unwrap(), judged.parse().unwrap());
        Side { judged, failed, ..Side::default() }
    }

    fn check(base: &str, new: &str, want: Change, want_p: Option<&str>) {
        let (change, p) = classify(&side(base), &side(new));
        assert_eq!((change, p.map(|p| format!("{p:.3}")).as_deref()), (want, want_p), "{base} -> {new}");
    }

    #[test]
    fn changes_by_failure_counts() {
        use Change::*;
        check("0/1", "0/1", Passing, None);
        check("0/1", "1/1", New, None);
        check("1/1", "0/1", Fixed, None);
        check("1/1", "1/1", StillFailing, None);
        check("0/0", "1/1", Unjudged, None);
        check("1/1", "0/0", Unjudged, None);
        check("0/20", "0/20", Passing, Some("1.000"));
        check("0/20", "19/20", New, Some("0.000"));
        check("0/20", "6/20", New, Some("0.020"));
        check("0/20", "4/20", NotSignificant, Some("0.106"));
        check("0/5", "1/5", NotSignificant, Some("1.000"));
        check("20/20", "0/20", Fixed, Some("0.000"));
        check("3/20", "0/20", NotSignificant, Some("0.231"));
        check("2/20", "18/20", Worse, Some("0.000"));
        check("18/20", "2/20", Better, Some("0.000"));
        check("5/20", "7/20", Flaky, Some("0.731"));
        check("20/20", "19/20", Flaky, Some("1.000"));
        check("20/20", "18/20", Flaky, Some("0.487"));
        check("0/1", "5/20", NotSignificant, Some("1.000"));
        check("1/1", "0/20", Fixed, Some("0.048"));
    }

    /// A run's cells from `"arch/vcpus/workload=verdicts"` (one letter a run: p pass, f fail,
    /// e error), all of kernel `kernel`; a failure's signature is `hard-lockup:<workload>`.
    fn run(kernel: &str, cells: &[&str]) -> Vec<CellResult> {
        let mut results = Vec::new();
        for spec in cells {
            let (place, verdicts) = spec.split_once('=').unwrap();
            let mut parts = place.split('/');
            let arch: Arch = parts.next().unwrap().parse().unwrap();
            let vcpus: u32 = parts.next().unwrap().parse().unwrap();
            let workload = parts.next().unwrap();
            let repeated = verdicts.len() > 1;
            for (n, v) in verdicts.chars().enumerate() {
                let verdict = match v {
                    'p' => Verdict::Pass,
                    'f' => Verdict::Fail,
                    _ => Verdict::Error,
                };
                let mut cell = crate::report::sample_cell(verdict, "", "");
                cell.id = format!("{kernel}-{arch}-{vcpus}cpu-{workload}");
                (cell.kernel, cell.arch, cell.vcpus, cell.workload) = (kernel.into(), arch, vcpus, workload.into());
                cell.run = repeated.then_some(n as u32 + 1);
                if verdict == Verdict::Fail {
                    let mut report = crate::triage::Report::from_lab(
                        crate::vocab::Kind::HardLockup,
                        format!("hard LOCKUP in {workload}"),
                        "",
                        1,
                        Vec::new(),
                    );
                    report.signature = format!("hard-lockup:{workload}");
                    cell.reports.push(report);
                }
                results.push(cell);
            }
        }
        results
    }

    /// `cell-change` lines in order, then `failure: signature base->new cells`, then the rest.
    fn summary(c: &Comparison) -> Vec<String> {
        let mut lines: Vec<String> = c.cells.iter().map(|cell| format!("{} {}", cell.change.name(), cell.id)).collect();
        lines.extend(
            c.failures.iter().map(|f| format!("failure {} {}->{}", f.signature, f.base_cells.len(), f.new_cells.len())),
        );
        lines.extend(c.only_base.iter().map(|id| format!("only base {id}")));
        lines.extend(c.only_new.iter().map(|id| format!("only new {id}")));
        if let Some((b, n)) = &c.kernels {
            lines.push(format!("kernels {b} {n}"));
        }
        lines
    }

    #[test]
    fn runs_compared_cell_by_cell_and_failure_by_failure() {
        let check = |base: Vec<CellResult>, new: Vec<CellResult>, regressed: bool, want: &[&str]| {
            let c = compare(&base, &new);
            assert_eq!((summary(&c), c.regressed()), (want.iter().map(|s| s.to_string()).collect(), regressed));
        };
        let nightly = |cells: &[&str]| run("k", cells);
        check(
            nightly(&["x86_64/4/churn=p", "aarch64/4/churn=f", "ppc64le/2/smoke=p", "x86_64/1/smoke=p"]),
            nightly(&["x86_64/4/churn=f", "aarch64/4/churn=p", "ppc64le/2/smoke=e", "x86_64/2/smoke=p"]),
            true,
            &[
                "new k-x86_64-4cpu-churn",
                "fixed k-aarch64-4cpu-churn",
                "unjudged k-ppc64le-2cpu-smoke",
                "failure hard-lockup:churn 1->1",
                "only base k-x86_64-1cpu-smoke",
                "only new k-x86_64-2cpu-smoke",
            ],
        );
        let (clean, rare, often) = ("pppppppppppppppppppp", "ppppppppppppppppfppp", "fffffffpffffffffffff");
        check(
            nightly(&[&format!("x86_64/4/churn={clean}"), &format!("aarch64/4/churn={clean}")]),
            nightly(&[&format!("x86_64/4/churn={often}"), &format!("aarch64/4/churn={rare}")]),
            true,
            &[
                "new k-x86_64-4cpu-churn",
                "not significant at 5 % k-aarch64-4cpu-churn",
                "failure hard-lockup:churn 0->2",
            ],
        );
        check(
            nightly(&[&format!("x86_64/4/churn={rare}"), "x86_64/4/smoke=ffff"]),
            nightly(&[&format!("x86_64/4/churn={rare}"), "x86_64/4/smoke=ffff"]),
            false,
            &[
                "flaky k-x86_64-4cpu-churn",
                "still failing k-x86_64-4cpu-smoke",
                "failure hard-lockup:churn 1->1",
                "failure hard-lockup:smoke 1->1",
            ],
        );
        check(
            run("linux-7.3", &["x86_64/4/churn=p", "ppc64le/4/churn=p"]),
            run("linux-7.3-mmcid-fork-stale", &["x86_64/4/churn=f"]),
            true,
            &[
                "new linux-7.3-mmcid-fork-stale-x86_64-4cpu-churn",
                "failure hard-lockup:churn 0->1",
                "only base linux-7.3-ppc64le-4cpu-churn",
                "kernels linux-7.3 linux-7.3-mmcid-fork-stale",
            ],
        );
    }
}
