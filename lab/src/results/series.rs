//! A patch series judged step by step (`lab series`): what each step's cells showed, which
//! signatures appear or go at each patch, the first patch that breaks and the first that fixes,
//! each with how sure the answer is when the bug hits only some runs; and which step a bisection
//! tries next. Pure: the command runs the steps, this decides what they mean.
//!
//! Confidence, in the spirit of syzkaller's bisection: a step with a hit of a signature is bad
//! for it (a lockup named in a guest is no chance event); a step without is clean only as far as
//! its runs go. If the bad step hits at rate p in a cell and the clean step ran that cell n times,
//! a clean step as bad as the bad one would have shown nothing with probability (1 - p)^n; the
//! confidence is one minus the product of that over the cells.

use std::collections::{BTreeMap, BTreeSet};

use serde::{Deserialize, Serialize};

use super::compare::Side;
use crate::arch::Arch;
use crate::report::CellResult;

pub const SERIES_VERSION: u32 = 1;

/// `series.json`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Series {
    pub version: u32,
    /// The base recipe's name.
    pub base: String,
    pub patches: Vec<PatchInfo>,
    /// How the steps were chosen: `linear` (every step) or `bisect`.
    pub walk: Walk,
    /// In the order they were run (a bisection's probes are not in patch order).
    pub steps: Vec<Step>,
    pub first_bad: Option<Finding>,
    pub first_fix: Option<Finding>,
    /// Why the series stopped before its last patch (a patch that does not apply).
    pub stopped: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Walk {
    Linear,
    Bisect,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct PatchInfo {
    pub index: usize,
    pub subject: String,
    pub sha256: String,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Step {
    /// 0 for the base, k for the base plus patches 1..=k.
    pub index: usize,
    /// The subject of patch `index` (none for the base).
    pub patch: Option<String>,
    /// The step's run directory, relative to the series directory.
    pub dir: String,
    pub kernel: BTreeMap<Arch, Build>,
    pub cells: Vec<CellStat>,
    /// Against the judged step before it in patch order (empty for the base).
    pub new_signatures: Vec<String>,
    pub fixed_signatures: Vec<String>,
    /// What the lab cannot see at this step, said where a reader looks.
    pub notes: Vec<String>,
}

/// What building the step's kernel for one architecture came to.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Build {
    pub ok: bool,
    pub cached: bool,
    pub seconds: f64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct CellStat {
    pub id: String,
    pub arch: Arch,
    pub vcpus: u32,
    pub workload: String,
    /// Runs that judged the kernel (errors and skips are not counted).
    pub runs: u32,
    pub hits: u32,
    pub hit_rate: f64,
    /// With no hit: the hit rate that 95 % of such runs would still have shown.
    pub bound_95: Option<f64>,
    /// Hits by signature.
    pub signatures: BTreeMap<String, u32>,
    /// Runs that could not judge the kernel.
    pub errors: u32,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Finding {
    /// The 1-based patch number.
    pub index: usize,
    pub subject: String,
    pub signature: String,
    pub confidence: f64,
}

/// The same cell at every step: ids carry the step's kernel name, this does not.
fn cell_key(c: &CellStat) -> (Arch, u32, &str) {
    (c.arch, c.vcpus, c.workload.as_str())
}

/// A step's runs, per cell in the order first seen, counted as `lab compare` counts a side.
pub fn cell_stats(results: &[CellResult]) -> Vec<CellStat> {
    crate::report::by_cell(results)
        .into_iter()
        .map(|runs| {
            let mut side = Side::default();
            runs.iter().for_each(|r| side.add(r));
            (runs[0], side)
        })
        .map(|(r, side)| CellStat {
            id: r.id.clone(),
            arch: r.arch,
            vcpus: r.vcpus,
            workload: r.workload.clone(),
            runs: side.judged,
            hits: side.failed,
            hit_rate: if side.judged == 0 { 0.0 } else { f64::from(side.failed) / f64::from(side.judged) },
            bound_95: (side.failed == 0 && side.judged > 0).then(|| 1.0 - 0.05f64.powf(1.0 / f64::from(side.judged))),
            signatures: side.signatures,
            errors: side.unjudged,
        })
        .collect()
}

/// Whether any cell of the step judged the kernel: a step whose kernel did not build says
/// nothing, and the steps around it are compared with each other instead.
pub fn judged(step: &Step) -> bool {
    step.cells.iter().any(|c| c.runs > 0)
}

pub fn signatures(step: &Step) -> BTreeSet<String> {
    step.cells.iter().flat_map(|c| c.signatures.keys().cloned()).collect()
}

/// Of `candidates`, the signature `step` hit most often (on a tie, the first by name): what a
/// change is named by, in a walk and in a bisection alike.
pub fn most_hit<'a>(step: &Step, candidates: impl IntoIterator<Item = &'a String>) -> Option<&'a String> {
    let hits = |s: &String| step.cells.iter().map(|c| c.signatures.get(s).copied().unwrap_or(0)).sum::<u32>();
    candidates.into_iter().max_by_key(|s| (hits(s), std::cmp::Reverse(*s)))
}

/// The steps that judged the kernel, in patch order.
fn judged_in_order(steps: &[Step]) -> Vec<&Step> {
    let mut judged_steps: Vec<&Step> = steps.iter().filter(|s| judged(s)).collect();
    judged_steps.sort_by_key(|s| s.index);
    judged_steps
}

fn subject_of(patches: &[PatchInfo], index: usize) -> String {
    patches.iter().find(|p| p.index == index).map_or_else(String::new, |p| p.subject.clone())
}

/// The confidence that `clean` really lacks `signature`, given the rate `bad` shows it at.
pub fn confidence(bad: &Step, clean: &Step, signature: &str) -> f64 {
    let mut missed = 1.0;
    for b in bad.cells.iter().filter(|c| c.runs > 0) {
        let rate = f64::from(b.signatures.get(signature).copied().unwrap_or(0)) / f64::from(b.runs);
        let runs = clean.cells.iter().find(|c| cell_key(c) == cell_key(b)).map_or(0, |c| c.runs);
        missed *= (1.0 - rate).powi(runs as i32);
    }
    1.0 - missed
}

/// Fills each step's new and fixed signatures against the judged step before it in patch order.
pub fn compare_steps(steps: &mut [Step]) {
    let mut order: Vec<usize> = (0..steps.len()).collect();
    order.sort_by_key(|&i| steps[i].index);
    let mut before: Option<usize> = None;
    for i in order {
        steps[i].new_signatures.clear();
        steps[i].fixed_signatures.clear();
        if !judged(&steps[i]) {
            continue;
        }
        if let Some(b) = before {
            let (was, is) = (signatures(&steps[b]), signatures(&steps[i]));
            steps[i].new_signatures = is.difference(&was).cloned().collect();
            steps[i].fixed_signatures = was.difference(&is).cloned().collect();
        }
        before = Some(i);
    }
}

/// The first patch after which a signature appears (`Change::Bad`) or goes (`Change::Fix`), by
/// the judged steps in patch order; of several signatures there, the one with the most hits.
/// The confidence is that of the step on the clean side.
pub fn first(steps: &[Step], patches: &[PatchInfo], change: Change) -> Option<Finding> {
    judged_in_order(steps).windows(2).find_map(|pair| {
        let (before, after) = (pair[0], pair[1]);
        let (bad, clean, listed) = match change {
            Change::Bad => (after, before, &after.new_signatures),
            Change::Fix => (before, after, &after.fixed_signatures),
        };
        let signature = most_hit(bad, listed)?;
        Some(Finding {
            index: after.index,
            subject: subject_of(patches, after.index),
            signature: signature.clone(),
            confidence: confidence(bad, clean, signature),
        })
    })
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Change {
    Bad,
    Fix,
}

/// Steps whose hits must be measured to a rate (run to all their runs, not stopped at the
/// first hit): the bad side of every change, since the confidence rests on its rate.
pub fn to_measure(steps: &[Step]) -> BTreeSet<usize> {
    let mut out = BTreeSet::new();
    for pair in judged_in_order(steps).windows(2) {
        if !pair[1].new_signatures.is_empty() {
            out.insert(pair[1].index);
        }
        if !pair[1].fixed_signatures.is_empty() {
            out.insert(pair[0].index);
        }
    }
    out
}

/// A bisection over steps lo..=hi where `lo` and `hi` differ in `signature` (known), by what the
/// probed steps showed: the next step to run, or None when `hi` is next to `lo` (the answer).
/// A step with a hit of the signature is on the top's side only if the top has it.
pub fn bisect_next(shown: &BTreeMap<usize, bool>, lo: usize, hi: usize) -> Option<usize> {
    let (mut lo, mut hi) = (lo, hi);
    let top = shown.get(&hi).copied()?;
    while hi > lo + 1 {
        let mid = lo + (hi - lo) / 2;
        match shown.get(&mid) {
            None => return Some(mid),
            Some(&has) if has == top => hi = mid,
            Some(_) => lo = mid,
        }
    }
    None
}

/// The answer of a bisection: the first step on the top's side, with the product of the
/// confidences of every probe judged on the base's side (a false clean there would have moved
/// the answer).
pub fn bisect_finding(steps: &[Step], patches: &[PatchInfo], signature: &str, change: Change) -> Option<Finding> {
    let has = |s: &Step| signatures(s).contains(signature);
    let probes = judged_in_order(steps);
    let top_has = change == Change::Bad;
    let answer = probes.iter().find(|s| has(s) == top_has && s.index > 0)?;
    let bad_side: Vec<&&Step> = probes.iter().filter(|s| has(s)).collect();
    let mut confidence = 1.0;
    for clean in probes.iter().filter(|s| !has(s)) {
        // The nearest step with the signature gives the rate the clean one is judged against.
        let bad = bad_side.iter().min_by_key(|b| b.index.abs_diff(clean.index))?;
        confidence *= self::confidence(bad, clean, signature);
    }
    Some(Finding {
        index: answer.index,
        subject: subject_of(patches, answer.index),
        signature: signature.to_string(),
        confidence,
    })
}

/// Kernel primitives that order memory; a patch that adds or removes one guards against a
/// reordering.
const ORDERING: [&str; 12] = [
    "smp_mb",
    "smp_rmb",
    "smp_wmb",
    "smp_store_release",
    "smp_load_acquire",
    "smp_cond_load_acquire",
    "_acquire(",
    "_release(",
    "smp_mb__after_atomic",
    "smp_mb__before_atomic",
    "smp_mb__after_spinlock",
    "memory_order",
];

/// What a patch's subject says when it cures a reordering (lowercase), whatever its code does
/// about it (a barrier, or two fields folded into one word).
const ORDERING_WORDS: [&str; 6] =
    ["weakly ordered", "weak ordering", "memory ordering", "reorder", "memory barrier", "out of order"];

/// What a clean result of this patch cannot show: a patch about memory ordering (its subject
/// says so, or it changes a barrier) cures reorderings that TCG on an x86_64 host never makes
/// (guest accesses run as the host's, in total store order: only a store may pass a later load).
pub fn ordering_note(subject: &str, patch: &[u8], host_arch: &str) -> Option<String> {
    if host_arch != "x86_64" {
        return None;
    }
    let text = String::from_utf8_lossy(patch);
    let is_diff = |l: &str| l.starts_with("diff ") || l.starts_with("--- a/");
    // The subject says what a patch is for; a body may mention ordering in passing.
    let subject = subject.to_lowercase();
    let changed = text
        .lines()
        .skip_while(|l| !is_diff(l))
        .filter(|l| (l.starts_with('+') || l.starts_with('-')) && !l.starts_with("+++") && !l.starts_with("---"));
    let mut found: Vec<String> = ORDERING_WORDS
        .iter()
        .find(|w| subject.contains(*w))
        .map(|w| format!("its subject says \"{w}\""))
        .into_iter()
        .collect();
    let mut primitives: Vec<&str> = Vec::new();
    for line in changed {
        for primitive in ORDERING.iter().filter(|p| line.contains(*p)) {
            if !primitives.contains(primitive) {
                primitives.push(primitive);
            }
        }
    }
    if !primitives.is_empty() {
        found.push(format!("it changes {}", primitives.join(", ")));
    }
    if found.is_empty() {
        return None;
    }
    Some(format!(
        "this patch is about memory ordering ({}): the guests run under TCG on an x86_64 host, whose \
         total store order lets only a store pass a later load, so the weak-ordering faults it guards \
         against cannot happen here and a clean step says nothing about them (run it on arm64 or POWER \
         hardware)",
        found.join("; ")
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A step from cells written `arch:runs:hits:signature` (hits all of one signature).
    fn step(index: usize, cells: &[&str]) -> Step {
        let cells = cells
            .iter()
            .map(|spec| {
                let parts: Vec<&str> = spec.split(':').collect();
                let (runs, hits): (u32, u32) = (parts[1].parse().unwrap(), parts[2].parse().unwrap());
                let mut signatures = BTreeMap::new();
                if hits > 0 {
                    signatures.insert(parts[3].to_string(), hits);
                }
                CellStat {
                    id: format!("k+{index}-{}", parts[0]),
                    arch: parts[0].parse().unwrap(),
                    vcpus: 4,
                    workload: "mmcid-churn".into(),
                    runs,
                    hits,
                    hit_rate: if runs == 0 { 0.0 } else { f64::from(hits) / f64::from(runs) },
                    bound_95: None,
                    signatures,
                    errors: 0,
                }
            })
            .collect();
        Step {
            index,
            patch: (index > 0).then(|| format!("patch {index}")),
            dir: String::new(),
            kernel: BTreeMap::new(),
            cells,
            new_signatures: Vec::new(),
            fixed_signatures: Vec::new(),
            notes: Vec::new(),
        }
    }

    fn patches(n: usize) -> Vec<PatchInfo> {
        (1..=n).map(|i| PatchInfo { index: i, subject: format!("patch {i}"), sha256: String::new() }).collect()
    }

    /// `first_bad` and `first_fix` of a linear walk, as `index signature confidence`.
    fn walk(steps: &[&[&str]]) -> (String, String) {
        let mut steps: Vec<Step> = steps.iter().enumerate().map(|(i, cells)| step(i, cells)).collect();
        compare_steps(&mut steps);
        let show =
            |f: Option<Finding>| f.map_or("-".into(), |f| format!("{} {} {:.3}", f.index, f.signature, f.confidence));
        let p = patches(steps.len() - 1);
        (show(first(&steps, &p, Change::Bad)), show(first(&steps, &p, Change::Fix)))
    }

    #[test]
    fn first_bad_and_first_fix_with_confidence() {
        let cases: &[(&[&[&str]], &str, &str)] = &[
            // Clean, clean, bad on every run: sure.
            (&[&["x86_64:3:0:-"], &["x86_64:3:0:-"], &["x86_64:3:3:L"]], "2 L 1.000", "-"),
            // Bad at half the runs after three clean runs: 1 - 0.5^3.
            (&[&["x86_64:3:0:-"], &["x86_64:4:2:L"]], "1 L 0.875", "-"),
            // Two arches add their evidence: 1 - 0.5^3 * 0.5^3.
            (&[&["x86_64:3:0:-", "aarch64:3:0:-"], &["x86_64:2:1:L", "aarch64:2:1:L"]], "1 L 0.984", "-"),
            // The base fails, patch 1 fixes it, the rest stay clean (demo 1's shape).
            (&[&["x86_64:5:5:L"], &["x86_64:5:0:-"], &["x86_64:5:0:-"]], "-", "1 L 1.000"),
            // A rare bug: one hit in 10; 5 clean runs after it are weak evidence of a fix.
            (&[&["x86_64:10:1:L"], &["x86_64:5:0:-"]], "-", "1 L 0.410"),
            // A step that did not build is skipped: the fix is at the next judged step.
            (&[&["x86_64:2:2:L"], &["x86_64:0:0:-"], &["x86_64:2:0:-"]], "-", "2 L 1.000"),
            // One bug replaced by another at the same patch.
            (&[&["x86_64:2:2:A"], &["x86_64:2:2:B"]], "1 B 1.000", "1 A 1.000"),
            // Clean throughout.
            (&[&["x86_64:3:0:-"], &["x86_64:3:0:-"]], "-", "-"),
            // A cell the clean step did not run gives no evidence.
            (&[&["x86_64:3:0:-"], &["x86_64:3:0:-", "ppc64le:2:2:L"]], "1 L 0.000", "-"),
        ];
        for (steps, bad, fix) in cases {
            assert_eq!(walk(steps), (bad.to_string(), fix.to_string()), "{steps:?}");
        }
    }

    #[test]
    fn the_bad_side_of_each_change_is_measured() {
        let mut steps = vec![step(0, &["x86_64:5:0:-"]), step(1, &["x86_64:1:1:L"]), step(2, &["x86_64:1:1:L"])];
        compare_steps(&mut steps);
        assert_eq!(to_measure(&steps), BTreeSet::from([1]));
        let mut steps = vec![step(0, &["x86_64:1:1:L"]), step(1, &["x86_64:5:0:-"])];
        compare_steps(&mut steps);
        assert_eq!(to_measure(&steps), BTreeSet::from([0]));
    }

    /// What the probes showed (step, has the top's signature), lo, hi, the next probe.
    type Probe = (&'static [(usize, bool)], usize, usize, Option<usize>);

    #[test]
    fn bisection_probes() {
        let cases: &[Probe] = &[
            (&[(0, false), (8, true)], 0, 8, Some(4)),
            (&[(0, false), (4, true), (8, true)], 0, 8, Some(2)),
            (&[(0, false), (2, false), (4, true), (8, true)], 0, 8, Some(3)),
            (&[(0, false), (2, false), (3, true), (4, true), (8, true)], 0, 8, None),
            // A fix: the top lacks it; a step without it is on the top's side.
            (&[(0, true), (4, false), (8, false)], 0, 8, Some(2)),
            (&[(0, true), (1, false), (2, false), (4, false), (8, false)], 0, 8, None),
            (&[(0, false), (1, true)], 0, 1, None),
            (&[(0, false)], 0, 1, None),
        ];
        for (shown, lo, hi, next) in cases {
            let shown: BTreeMap<usize, bool> = shown.iter().copied().collect();
            assert_eq!(bisect_next(&shown, *lo, *hi), *next, "{shown:?}");
        }
    }

    #[test]
    fn a_bisection_finds_what_the_linear_walk_finds_with_the_product_of_its_confidences() {
        let steps = vec![
            step(0, &["x86_64:3:0:-"]),
            step(4, &["x86_64:4:2:L"]),
            step(2, &["x86_64:3:0:-"]),
            step(3, &["x86_64:2:1:L"]),
        ];
        let found = bisect_finding(&steps, &patches(4), "L", Change::Bad).unwrap();
        assert_eq!((found.index, found.signature.as_str()), (3, "L"));
        // Step 0 and step 2 judged clean against the nearest bad steps (4 at 0.5; 3 at 0.5).
        assert!((found.confidence - 0.875 * 0.875).abs() < 1e-9, "{found:?}");
        let fix = vec![step(0, &["x86_64:2:2:L"]), step(2, &["x86_64:3:0:-"]), step(1, &["x86_64:3:0:-"])];
        let found = bisect_finding(&fix, &patches(2), "L", Change::Fix).unwrap();
        assert_eq!(found.index, 1);
    }

    #[test]
    fn notes_on_memory_ordering() {
        let patch = |line: &str| {
            format!("Subject: x\n\nWhy.\n---\ndiff --git a/f b/f\n--- a/f\n+++ b/f\n@@ -1 +1 @@\n{line}\n")
        };
        for (subject, line, host, noted) in [
            ("x", "+\tsmp_mb();", "x86_64", Some("smp_mb")),
            ("x", "-\tsmp_store_release(&a, 1);", "x86_64", Some("smp_store_release")),
            ("x", "+\tatomic_set_release(&a, 1);", "x86_64", Some("_release(")),
            ("x", "+\tWRITE_ONCE(a, 1);", "x86_64", None),
            ("x", " \tsmp_mb();", "x86_64", None),
            ("x", "+\tsmp_mb();", "aarch64", None),
            (
                "sched/mmcid: Protect transition on weakly ordered systems",
                "+\tWRITE_ONCE(a, 1);",
                "x86_64",
                Some("weakly ordered"),
            ),
            ("Fix a reorder of stores", "+\tWRITE_ONCE(a, 1);", "x86_64", Some("reorder")),
        ] {
            let note = ordering_note(subject, patch(line).as_bytes(), host);
            assert_eq!(note.is_some(), noted.is_some(), "{subject} {line} on {host}");
            if let (Some(note), Some(why)) = (note, noted) {
                assert!(note.contains(why), "{note}");
            }
        }
    }
}
