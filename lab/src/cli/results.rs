//! `lab compare` and `lab report`: finished runs read back (`results`), the comparison rendered
//! as lines, as JUnit and as a page, the reports of a run written again.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{Context, Result};
use junit_report::{Duration, ReportBuilder, TestCaseBuilder, TestSuiteBuilder};

use crate::cache;
use crate::report;
use crate::results::compare::{self, CellChange, Change, Comparison, FailureChange, Side};
use crate::results::{self, kcidb, Run};
use crate::triage;
use sha2::{Digest, Sha256};

pub fn compare(base: &Path, new: &Path, junit_file: Option<&Path>, html_file: Option<&Path>) -> Result<ExitCode> {
    let (base_run, new_run) = (results::read(base)?, results::read(new)?);
    let comparison = compare::compare(&base_run.cells, &new_run.cells);
    if comparison.cells.is_empty() {
        anyhow::bail!(
            "{} and {} have no cell in common: they ran different matrices or filters",
            base.display(),
            new.display()
        );
    }
    for line in render(&comparison, &base_run, &new_run) {
        println!("{line}");
    }
    if let Some(file) = junit_file {
        let mut xml = Vec::new();
        junit(&comparison).write_xml(&mut xml).context("cannot render the comparison as JUnit")?;
        cache::write_atomic(file, &xml)?;
    }
    if let Some(file) = html_file {
        results::html::write_comparison(file, &comparison, base, new)?;
    }
    Ok(ExitCode::from(u8::from(comparison.regressed())))
}

pub fn report(dir: &Path) -> Result<ExitCode> {
    let (mut run, why) = results::gather(dir)?;
    if let Some(why) = why {
        eprintln!("lab: the cells are in id order: {why}");
    }
    results::write_reports(&mut run)?;
    println!("{}: summary.json, junit.xml and report.html written again from {} cells", dir.display(), run.cells.len());
    Ok(ExitCode::SUCCESS)
}

pub fn export_kcidb(dir: &Path, origin: &str) -> Result<ExitCode> {
    let (mut run, inputs) = (results::read(dir)?, crate::inputs::RunInputs::read(dir)?);
    results::add_excerpts(&mut run);
    let filter =
        inputs.filters.iter().map(|f| f.parse().map_err(|e: String| anyhow::anyhow!(e))).collect::<Result<_>>()?;
    let recipes = super::load(&super::args::Select { matrix: Some(inputs.matrix.clone()), filter })?.recipes;
    let now: Vec<(String, String)> = recipes.iter().map(|r| (r.name.clone(), r.fingerprint())).collect();
    if now != inputs.kernels {
        anyhow::bail!(
            "{}: the kernel recipes of {} changed since the run: its checkouts cannot be described",
            dir.display(),
            inputs.matrix.display()
        );
    }
    let kernels = recipes
        .iter()
        .filter(|recipe| run.cells.iter().any(|c| c.kernel == recipe.name))
        .map(|recipe| kcidb::KernelSource {
            name: recipe.name.clone(),
            source: recipe.source.to_string(),
            patch_sha256: recipe.patches.iter().map(|p| crate::cache::hex(&Sha256::digest(&p.contents))).collect(),
        })
        .collect::<Vec<_>>();
    println!("{}", serde_json::to_string_pretty(&kcidb::submission(&run, &kernels, origin))?);
    Ok(ExitCode::SUCCESS)
}

pub fn merge(out: &Path, shards: &[PathBuf]) -> Result<ExitCode> {
    crate::run::check_out_dir(out)?;
    let mut run = results::merge::merge(out, shards)?;
    results::write_reports(&mut run)?;
    let tally: Vec<String> = report::tally(&run.cells).iter().map(|(k, n)| format!("{n} {k}")).collect();
    println!("{} shards merged: {}; reports in {}", shards.len(), tally.join(", "), out.display());
    Ok(ExitCode::SUCCESS)
}

/// What a person reads: the counts, then each cell that did not pass on both sides, the failures
/// by signature, and the cells the two runs do not share.
fn render(c: &Comparison, base: &Run, new: &Run) -> Vec<String> {
    let mut lines = vec![format!(
        "{} -> {}: {} cells in common: {}",
        base.dir.display(),
        new.dir.display(),
        c.cells.len(),
        c.counts()
    )];
    if let Some((from, to)) = &c.kernels {
        lines.push(format!("kernel {from} -> {to}: cells matched by arch, vCPUs and workload"));
    }
    lines.extend(c.cells.iter().filter(|cell| cell.change != Change::Passing).map(cell_line));
    if !c.failures.is_empty() {
        lines.push("failures:".to_string());
        lines.extend(c.failures.iter().map(failure_line));
    }
    for (name, ids) in [("base", &c.only_base), ("new", &c.only_new)] {
        if !ids.is_empty() {
            lines.push(format!("only in the {name} run ({}, not compared): {}", ids.len(), ids.join(", ")));
        }
    }
    lines
}

/// `new: ID: pass -> fail: hard LOCKUP in mm_get_cid`, or with repeats
/// `new: ID: 0/20 -> 19/20 runs failed (p = 0.000): hard LOCKUP in mm_get_cid`.
fn cell_line(cell: &CellChange) -> String {
    let (base, new) = (&cell.base, &cell.new);
    let what = match cell.p {
        None => format!("{} -> {}", verdict(base), verdict(new)),
        Some(p) => format!("{}/{} -> {}/{} runs failed (p = {p:.3})", base.failed, base.judged, new.failed, new.judged),
    };
    format!("{}: {}: {what}: {}", cell.change.name(), cell.id, triage::sanitize(&cell.reason()))
}

fn verdict(side: &Side) -> &'static str {
    side.verdict.map_or("-", |v| v.name())
}

/// `new failure hard-lockup:mm_get_cid (hard LOCKUP in mm_get_cid): 3 cells (x86_64 4cpu ×1, ...)`.
fn failure_line(f: &FailureChange) -> String {
    let mut line = format!("  {} {} ({})", f.status(), f.signature, triage::sanitize(&f.title));
    if f.new_cells.is_empty() {
        line += &format!(": was in {} cells", f.base_cells.len());
    } else {
        let places: Vec<String> =
            f.new_where.iter().map(|((arch, vcpus), n)| format!("{arch} {vcpus}cpu ×{n}")).collect();
        line += &format!(": {} cells ({})", f.new_cells.len(), places.join(", "));
        if !f.base_cells.is_empty() {
            line += &format!(", was in {}", f.base_cells.len());
        }
    }
    line
}

/// One test case per common cell, failing when it is new or worse: what a CI job's JUnit view
/// shows as the night's regressions.
fn junit(c: &Comparison) -> junit_report::Report {
    let mut suite = TestSuiteBuilder::new("lab-compare");
    for cell in &c.cells {
        let line = triage::sanitize(&cell_line(cell));
        let mut case = match cell.change {
            change if change.is_regression() => {
                TestCaseBuilder::failure(&cell.id, Duration::ZERO, change.name(), &line)
            }
            Change::Unjudged => TestCaseBuilder::skipped_with_cause(&cell.id, "unjudged", &line),
            _ => TestCaseBuilder::success(&cell.id, Duration::ZERO),
        };
        case.set_classname(&format!("lab-compare.{}", cell.arch));
        case.set_system_out(&line);
        suite.add_testcase(case.build());
    }
    let mut report = ReportBuilder::new();
    report.add_testsuite(suite.build());
    report.build()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::arch::Arch;
    use crate::vocab::Verdict;

    fn side(verdict: Verdict, failed: u32, judged: u32, reason: &str) -> Side {
        Side { judged, failed, verdict: Some(verdict), reason: reason.into(), ..Side::default() }
    }

    #[test]
    fn lines_of_a_comparison() {
        let cell = |change, p, base, new| CellChange {
            id: "linux-7.3-x86_64-4cpu-mmcid-churn".into(),
            arch: Arch::X86_64,
            change,
            p,
            base,
            new,
        };
        let pass = side(Verdict::Pass, 0, 1, "ok");
        let lockup = side(Verdict::Fail, 1, 1, "hard LOCKUP in mm_get_cid");
        let check = |c: CellChange, want: &str| assert_eq!(cell_line(&c), want);
        check(
            cell(Change::New, None, pass.clone(), lockup.clone()),
            "new: linux-7.3-x86_64-4cpu-mmcid-churn: pass -> fail: hard LOCKUP in mm_get_cid",
        );
        check(
            cell(Change::Fixed, None, lockup.clone(), pass),
            "fixed: linux-7.3-x86_64-4cpu-mmcid-churn: fail -> pass: was: hard LOCKUP in mm_get_cid",
        );
        check(
            cell(Change::NotSignificant, Some(1.0), side(Verdict::Pass, 0, 5, "ok"), side(Verdict::Fail, 1, 5, "x")),
            "not significant at 5 %: linux-7.3-x86_64-4cpu-mmcid-churn: 0/5 -> 1/5 runs failed (p = 1.000): x",
        );
        let failure = FailureChange {
            signature: "hard-lockup:mm_get_cid".into(),
            title: "hard LOCKUP in mm_get_cid".into(),
            base_cells: vec![],
            new_cells: vec!["a".into(), "b".into(), "c".into()],
            new_where: [((Arch::X86_64, 4), 2), ((Arch::Ppc64le, 4), 1)].into_iter().collect(),
        };
        assert_eq!(
            failure_line(&failure),
            "  new failure hard-lockup:mm_get_cid (hard LOCKUP in mm_get_cid): 3 cells (x86_64 4cpu ×2, ppc64le 4cpu ×1)"
        );
    }
}
