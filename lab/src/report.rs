//! Stage: cell results -> `summary.json`, `junit.xml`, `cells/<id>/result.json`.
//!
//! Invariant: both summary files are rewritten (atomically) after every finished cell, so an
//! interrupted or crashed run still leaves valid reports of everything that finished. Console
//! text reaches the JUnit file only through `triage::sanitize`, because junit-report writes
//! system-out as raw CDATA and a guest can print anything.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use junit_report::{Duration, ReportBuilder, TestCaseBuilder, TestSuiteBuilder};
use serde::Serialize;

use crate::arch::Arch;
use crate::cache;
use crate::triage::{self, Kind, Report};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
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
}

#[derive(Debug, Clone, Serialize)]
pub struct CellResult {
    pub id: String,
    pub kernel: String,
    pub arch: Arch,
    pub vcpus: u32,
    pub workload: String,
    pub verdict: Verdict,
    /// One line: why this verdict.
    pub reason: String,
    pub duration_s: f64,
    pub reports: Vec<Report>,
    /// The failure kind the workload provokes on purpose, if any.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub expect: Option<Kind>,
    /// Seconds from QEMU start to the guest's ready line.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ready_s: Option<f64>,
    /// How the boot ended, as the VM stage saw it.
    pub end: String,
    pub dir: PathBuf,
    /// The console text shown with a failure (sanitized).
    #[serde(skip)]
    pub excerpt: String,
}

#[derive(Serialize)]
struct Summary<'a> {
    cells: &'a [CellResult],
}

pub fn write_cell(result: &CellResult) -> Result<()> {
    cache::write_atomic(&result.dir.join("result.json"), serde_json::to_string_pretty(result)?.as_bytes())
}

pub fn write_summary(out: &Path, results: &[CellResult]) -> Result<()> {
    cache::write_atomic(&out.join("summary.json"), serde_json::to_string_pretty(&Summary { cells: results })?.as_bytes())?;
    let mut xml = Vec::new();
    junit(results).write_xml(&mut xml).context("cannot render junit.xml")?;
    cache::write_atomic(&out.join("junit.xml"), &xml)
}

/// One testsuite per kernel+arch, one testcase per vcpus+workload.
fn junit(results: &[CellResult]) -> junit_report::Report {
    let mut suites: BTreeMap<(String, Arch), Vec<&CellResult>> = BTreeMap::new();
    for r in results {
        suites.entry((r.kernel.clone(), r.arch)).or_default().push(r);
    }
    let mut report = ReportBuilder::new();
    for ((kernel, arch), cells) in suites {
        let mut suite = TestSuiteBuilder::new(&format!("{kernel}.{arch}"));
        for r in cells {
            let name = format!("{}cpu-{}", r.vcpus, r.workload);
            let time = Duration::milliseconds((r.duration_s * 1000.0) as i64);
            let kind = r.reports.first().map(|rep| rep.kind.to_string()).unwrap_or_else(|| "other".to_string());
            let message = triage::sanitize(&r.reason);
            let mut case = match r.verdict {
                Verdict::Pass => TestCaseBuilder::success(&name, time),
                Verdict::Skip => TestCaseBuilder::skipped_with_cause(&name, "skip", &message),
                Verdict::Fail => TestCaseBuilder::failure(&name, time, &kind, &message),
                Verdict::Timeout => TestCaseBuilder::failure(&name, time, "timeout", &message),
                Verdict::Error => TestCaseBuilder::error(&name, time, "error", &message),
            };
            case.set_classname(&format!("{kernel}.{arch}"));
            if r.verdict != Verdict::Pass {
                case.set_system_out(&r.excerpt);
            }
            suite.add_testcase(case.build());
        }
        report.add_testsuite(suite.build());
    }
    report.build()
}

/// The console lines a reader needs: around the first report, else the tail. Sanitized.
pub fn excerpt(console: &str, reports: &[Report]) -> String {
    let lines: Vec<&str> = console.lines().collect();
    let (from, to) = match reports.first() {
        Some(r) if r.line > 0 => (r.line.saturating_sub(10), (r.line + 120).min(lines.len())),
        _ => (lines.len().saturating_sub(60), lines.len()),
    };
    triage::sanitize(&lines[from.min(lines.len())..to].join("\n"))
}

/// Counts by verdict, for the closing line.
pub fn tally(results: &[CellResult]) -> BTreeMap<&'static str, usize> {
    let mut counts = BTreeMap::new();
    for r in results {
        let name = match r.verdict {
            Verdict::Pass => "passed",
            Verdict::Fail => "failed",
            Verdict::Error => "errors",
            Verdict::Timeout => "timed out",
            Verdict::Skip => "skipped",
        };
        *counts.entry(name).or_insert(0) += 1;
    }
    counts
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cell(verdict: Verdict, reason: &str, excerpt: &str) -> CellResult {
        CellResult {
            id: "k-x86_64-2cpu-smoke".into(),
            kernel: "k".into(),
            arch: Arch::X86_64,
            vcpus: 2,
            workload: "smoke".into(),
            verdict,
            reason: reason.into(),
            duration_s: 1.5,
            reports: vec![],
            expect: None,
            ready_s: Some(1.0),
            end: "exited".into(),
            dir: PathBuf::from("/nonexistent"),
            excerpt: excerpt.into(),
        }
    }

    #[test]
    fn junit_is_valid_xml_whatever_the_console_held() {
        let nasty = triage::sanitize("]]> <tag> & \u{1b}[31mred\u{1b}[0m \u{0} \u{7} \u{fffe} done");
        let results = [cell(Verdict::Pass, "ok", ""), cell(Verdict::Fail, "hard LOCKUP in <mm_get_cid> & \u{1}", &nasty)];
        let mut xml = Vec::new();
        junit(&results).write_xml(&mut xml).unwrap();
        let xml = String::from_utf8(xml).unwrap();
        assert!(!xml.chars().any(|c| c < ' ' && !"\t\n\r".contains(c)), "control characters in {xml}");
        assert_eq!(xml.matches("]]>").count(), xml.matches("<![CDATA[").count(), "{xml}");
        assert!(xml.contains("<testsuite ") && xml.contains("name=\"k.x86_64\""), "{xml}");
        assert!(xml.contains("tests=\"2\"") && xml.contains("failures=\"1\""), "{xml}");
        // A real XML parser must accept it, when one is installed.
        let path = std::env::temp_dir().join(format!("lab-junit-{}.xml", std::process::id()));
        std::fs::write(&path, &xml).unwrap();
        if let Ok(out) = std::process::Command::new("python3").args(["-c", "import sys, xml.dom.minidom as m; m.parse(sys.argv[1])"]).arg(&path).output() {
            assert!(out.status.success(), "python rejects the XML: {}", String::from_utf8_lossy(&out.stderr));
        }
        std::fs::remove_file(path).unwrap();
    }
}
