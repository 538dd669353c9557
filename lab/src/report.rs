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
use serde::{Deserialize, Serialize};

use crate::arch::Arch;
use crate::cache;
use crate::triage::{self, Report};
use crate::vm::Accel;
use crate::vocab::{Basis, CellEnd, Kind, Verdict};

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct CellResult {
    pub id: String,
    /// The run number in reproducer mode (`--repeat`), 1-based.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub run: Option<u32>,
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
    /// Seconds from QEMU start to the lab's first login over SSH (cells whose workload runs
    /// over SSH; the rest never log in).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ssh_ready_s: Option<f64>,
    /// Seconds from the guest's ready line to the first report.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub detect_s: Option<f64>,
    /// What the verdict rests on, for a cell with reports.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub basis: Option<Basis>,
    /// What the guest ran under.
    pub accel: Accel,
    /// Under `--accel auto`, why the cell ran again under TCG: its KVM guest never got going.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub kvm_fallback: Option<String>,
    /// How the boot ended, as the VM stage saw it, or what kept it from ending by itself.
    pub end: CellEnd,
    pub dir: PathBuf,
    /// The console text shown with a failure (sanitized).
    #[serde(skip)]
    pub excerpt: String,
}

impl CellResult {
    /// What a reproducer counts: the failure it hunts for (for a cell that provokes a report on
    /// purpose, that report). Errors, skips and interrupted runs say nothing about the kernel.
    pub fn is_hit(&self) -> bool {
        match self.expect {
            Some(_) => self.verdict == Verdict::Pass,
            None => matches!(self.verdict, Verdict::Fail | Verdict::Timeout),
        }
    }

    /// The report a hit is counted by: the one the cell provokes on purpose, else the first.
    /// None for a hit without one (a timeout) and for a run that is no hit.
    pub fn hit_report(&self) -> Option<&Report> {
        if !self.is_hit() {
            return None;
        }
        self.reports.iter().find(|rep| Some(rep.kind) == self.expect).or(self.reports.first())
    }
}

/// Reproducer statistics of one cell over its runs.
#[derive(Debug, Clone, Serialize)]
pub struct Repro {
    pub id: String,
    pub runs: usize,
    pub hits: usize,
    /// Runs that could not judge the kernel (build, QEMU, workload set-up, a signal).
    pub errors: usize,
    pub hit_rate: f64,
    pub hits_by_kind: BTreeMap<String, usize>,
    /// Seconds from the ready line to detection, for each hit in run order.
    pub detect_s: Vec<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub detect_median_s: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub detect_min_s: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub detect_max_s: Option<f64>,
    /// With no hit: the failure rate that `runs` clean runs still allow at 95% confidence,
    /// 1 - 0.05^(1/runs) (about 3/runs).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub upper_bound_95: Option<f64>,
}

pub fn repro(results: &[CellResult]) -> Vec<Repro> {
    let mut by_cell: Vec<(String, Vec<&CellResult>)> = Vec::new();
    for r in results {
        match by_cell.iter_mut().find(|(id, _)| *id == r.id) {
            Some((_, runs)) => runs.push(r),
            None => by_cell.push((r.id.clone(), vec![r])),
        }
    }
    by_cell
        .into_iter()
        .map(|(id, runs)| {
            let judged: Vec<&&CellResult> = runs.iter().filter(|r| r.verdict.judges_the_kernel()).collect();
            let hits: Vec<&&&CellResult> = judged.iter().filter(|r| r.is_hit()).collect();
            let mut hits_by_kind = BTreeMap::new();
            for r in &hits {
                *hits_by_kind
                    .entry(r.hit_report().map(|k| k.kind.to_string()).unwrap_or_else(|| "timeout".into()))
                    .or_insert(0) += 1;
            }
            let detect_s: Vec<f64> = hits.iter().filter_map(|r| r.detect_s).collect();
            let mut sorted = detect_s.clone();
            sorted.sort_by(f64::total_cmp);
            let n = judged.len();
            Repro {
                id,
                runs: n,
                hits: hits.len(),
                errors: runs.len() - n,
                hit_rate: if n == 0 { 0.0 } else { hits.len() as f64 / n as f64 },
                hits_by_kind,
                detect_median_s: median(&sorted),
                detect_min_s: sorted.first().copied(),
                detect_max_s: sorted.last().copied(),
                upper_bound_95: (hits.is_empty() && n > 0).then(|| 1.0 - 0.05f64.powf(1.0 / n as f64)),
                detect_s,
            }
        })
        .collect()
}

fn median(sorted: &[f64]) -> Option<f64> {
    let n = sorted.len();
    match n {
        0 => None,
        _ if n % 2 == 1 => Some(sorted[n / 2]),
        _ => Some((sorted[n / 2 - 1] + sorted[n / 2]) / 2.0),
    }
}

/// One line per cell for the terminal.
pub fn repro_line(r: &Repro) -> String {
    let mut line = format!("{}: {} of {} runs hit ({:.0}%)", r.id, r.hits, r.runs, r.hit_rate * 100.0);
    if !r.hits_by_kind.is_empty() {
        let kinds: Vec<String> = r.hits_by_kind.iter().map(|(k, n)| format!("{n} {k}")).collect();
        line += &format!(" [{}]", kinds.join(", "));
    }
    if let (Some(med), Some(min), Some(max)) = (r.detect_median_s, r.detect_min_s, r.detect_max_s) {
        line += &format!("; detected {med:.1}s after ready (median; {min:.1}-{max:.1}s)");
    }
    if let Some(bound) = r.upper_bound_95 {
        line += &format!("; no hit: failure rate below {:.1}% at 95% confidence", bound * 100.0);
    }
    if r.errors > 0 {
        line += &format!("; {} runs could not be judged", r.errors);
    }
    line
}

/// The shape of `summary.json` that this lab writes and reads. A change that an older reader
/// would misread (a field renamed, a meaning changed) takes the next number.
pub const SUMMARY_VERSION: u32 = 1;

#[derive(Serialize)]
struct Summary<'a> {
    version: u32,
    cells: &'a [CellResult],
    #[serde(skip_serializing_if = "Option::is_none")]
    repro: Option<Vec<Repro>>,
}

/// Where a cell's files go in a run directory: `cells/<id>`, and `run-NNN` below it for each run
/// of a `--repeat`.
pub fn cell_dir(out: &Path, id: &str, run: Option<u32>) -> PathBuf {
    let dir = out.join("cells").join(id);
    match run {
        Some(n) => dir.join(format!("run-{n:03}")),
        None => dir,
    }
}

pub fn write_cell(result: &CellResult) -> Result<()> {
    cache::write_atomic(&result.dir.join("result.json"), serde_json::to_string_pretty(result)?.as_bytes())
}

pub fn write_summary(out: &Path, results: &[CellResult], repeated: bool) -> Result<()> {
    let summary = Summary { version: SUMMARY_VERSION, cells: results, repro: repeated.then(|| repro(results)) };
    cache::write_atomic(&out.join("summary.json"), serde_json::to_string_pretty(&summary)?.as_bytes())?;
    write_junit(&out.join("junit.xml"), results)
}

/// `results` as JUnit: a testsuite per kernel and arch (so a series, a kernel per step, gets one
/// per step and arch).
pub fn write_junit(path: &Path, results: &[CellResult]) -> Result<()> {
    let mut xml = Vec::new();
    junit(results).write_xml(&mut xml).with_context(|| format!("cannot render {}", path.display()))?;
    cache::write_atomic(path, &xml)
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
            let mut name = format!("{}cpu-{}", r.vcpus, r.workload);
            if let Some(n) = r.run {
                name += &format!("#{n}");
            }
            let time = Duration::milliseconds((r.duration_s * 1000.0) as i64);
            let kind = r.reports.first().map(|rep| rep.kind.to_string()).unwrap_or_else(|| "other".to_string());
            let message = triage::sanitize(&r.reason);
            let mut case = match r.verdict {
                Verdict::Pass => TestCaseBuilder::success(&name, time),
                Verdict::Skip => TestCaseBuilder::skipped_with_cause(&name, "skip", &message),
                Verdict::Fail => TestCaseBuilder::failure(&name, time, &kind, &message),
                Verdict::Timeout => TestCaseBuilder::failure(&name, time, "timeout", &message),
                // The lab's own kinds (boot-hang, infra) say what kept it from judging the kernel.
                Verdict::Error => TestCaseBuilder::error(
                    &name,
                    time,
                    r.reports.first().map_or("error", |rep| rep.kind.name()),
                    &message,
                ),
                Verdict::Interrupted if r.end == CellEnd::NotStarted => {
                    TestCaseBuilder::skipped_with_cause(&name, "interrupted", &message)
                }
                Verdict::Interrupted => TestCaseBuilder::error(&name, time, "interrupted", &message),
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

/// The console lines a reader needs: around the first report, else the tail; a report from the
/// host's samples comes first with its per-vCPU lines. Sanitized.
pub fn excerpt(console: &str, reports: &[Report]) -> String {
    let lines: Vec<&str> = console.lines().collect();
    let (from, to) = match reports.first() {
        Some(r) if r.line > 0 => (r.line.saturating_sub(10), (r.line + 120).min(lines.len())),
        _ => (lines.len().saturating_sub(60), lines.len()),
    };
    let mut text = String::new();
    if let Some(source) = reports
        .first()
        .and_then(|r| r.frame_site.as_ref())
        .map(triage::FrameSite::faddr2line)
        .filter(|lines| !lines.is_empty())
    {
        text = format!("guilty frame {}\n", source.join("\n  "));
    }
    if let Some(host) = reports.first().filter(|r| r.source == triage::Source::Host) {
        text += &format!("{} (from the host's samples of the vCPUs)\n{}\n", host.title, host.lines.join("\n"));
    }
    if !text.is_empty() {
        text += "--- console ---\n";
    }
    text.push_str(&lines[from.min(lines.len())..to].join("\n"));
    triage::sanitize(&text)
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
            Verdict::Interrupted => "interrupted",
        };
        *counts.entry(name).or_insert(0) += 1;
    }
    counts
}

/// A cell result for tests: one run of `k-x86_64-2cpu-smoke`, under TCG.
#[cfg(test)]
pub fn sample_cell(verdict: Verdict, reason: &str, excerpt: &str) -> CellResult {
    CellResult {
        id: "k-x86_64-2cpu-smoke".into(),
        run: None,
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
        ssh_ready_s: None,
        detect_s: None,
        basis: None,
        accel: Accel::Tcg,
        kvm_fallback: None,
        end: CellEnd::Exited,
        dir: PathBuf::from("/nonexistent"),
        excerpt: excerpt.into(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hit(detect: f64) -> CellResult {
        let mut c = sample_cell(Verdict::Fail, "hard LOCKUP in mm_get_cid", "");
        c.reports = vec![Report {
            kind: Kind::HardLockup,
            title: c.reason.clone(),
            signature: "hard-lockup:mm_get_cid".into(),
            frame: None,
            frame_site: None,
            cpu: None,
            stuck_cpu: None,
            line: 1,
            lines: vec![],
            repeated: 0,
            source: Default::default(),
            missing: Vec::new(),
            stacks: Vec::new(),
        }];
        c.detect_s = Some(detect);
        c
    }

    fn check_repro(results: Vec<CellResult>, expect: &str) {
        let got: Vec<String> = repro(&results).iter().map(repro_line).collect();
        assert_eq!(got.join("\n"), expect);
    }

    #[test]
    fn reproducer_statistics() {
        let pass = || sample_cell(Verdict::Pass, "ok", "");
        check_repro(vec![hit(12.0), pass(), hit(5.0), hit(30.0)], "k-x86_64-2cpu-smoke: 3 of 4 runs hit (75%) [3 hard-lockup]; detected 12.0s after ready (median; 5.0-30.0s)");
        check_repro(
            vec![hit(4.0), hit(6.0)],
            "k-x86_64-2cpu-smoke: 2 of 2 runs hit (100%) [2 hard-lockup]; detected 5.0s after ready (median; 4.0-6.0s)",
        );
        check_repro(
            (0..20).map(|_| pass()).collect(),
            "k-x86_64-2cpu-smoke: 0 of 20 runs hit (0%); no hit: failure rate below 13.9% at 95% confidence",
        );
        let error = sample_cell(Verdict::Error, "QEMU failed", "");
        check_repro(vec![pass(), error], "k-x86_64-2cpu-smoke: 0 of 1 runs hit (0%); no hit: failure rate below 95.0% at 95% confidence; 1 runs could not be judged");
        let stopped = sample_cell(Verdict::Interrupted, "interrupted by SIGTERM after 12.3s", "");
        check_repro(vec![hit(3.0), stopped], "k-x86_64-2cpu-smoke: 1 of 1 runs hit (100%) [1 hard-lockup]; detected 3.0s after ready (median; 3.0-3.0s); 1 runs could not be judged");
        let mut expected = sample_cell(Verdict::Pass, "expected", "");
        expected.expect = Some(Kind::HardLockup);
        expected.reports = hit(1.0).reports;
        expected.detect_s = Some(15.0);
        check_repro(vec![expected], "k-x86_64-2cpu-smoke: 1 of 1 runs hit (100%) [1 hard-lockup]; detected 15.0s after ready (median; 15.0-15.0s)");
    }

    #[test]
    fn the_excerpt_opens_with_the_guilty_frames_source_lines() {
        let console = "boot\nwatchdog: CPU1: Watchdog detected hard LOCKUP on cpu 1\nRIP: 0010:mm_get_cid+0x1c/0x2a\n";
        let mut reports = hit(1.0).reports;
        assert_eq!(excerpt(console, &reports), console.trim_end(), "no site, no header");
        let line = |function: &str, line| triage::SourceLine {
            function: function.into(),
            file: "kernel/sched/sched.h".into(),
            line,
        };
        reports[0].frame_site = Some(triage::FrameSite {
            source: vec![line("__mm_get_cid", 3950), line("mm_get_cid", 3972)],
            ..triage::FrameSite::new("mm_get_cid+0x1c/0x2a".into(), false)
        });
        let expect = "guilty frame mm_get_cid+0x1c/0x2a:\n  __mm_get_cid at kernel/sched/sched.h:3950\n  (inlined by) mm_get_cid at kernel/sched/sched.h:3972\n--- console ---\n";
        assert_eq!(excerpt(console, &reports), format!("{expect}{}", console.trim_end()));
    }

    fn interrupted(end: CellEnd, reason: &str) -> CellResult {
        CellResult { end, ..sample_cell(Verdict::Interrupted, reason, "") }
    }

    /// `check_junit(result, element)`: the testcase's verdict element in junit.xml.
    fn check_junit(result: CellResult, element: &str) {
        let mut xml = Vec::new();
        junit(&[result]).write_xml(&mut xml).unwrap();
        let xml = String::from_utf8(xml).unwrap();
        let got =
            regex::Regex::new("<(failure|error|skipped)[^>]*>").unwrap().find(&xml).map_or("(none)", |m| m.as_str());
        assert_eq!(got, element, "{xml}");
    }

    #[test]
    fn junit_elements_by_verdict() {
        check_junit(sample_cell(Verdict::Pass, "ok", ""), "(none)");
        check_junit(sample_cell(Verdict::Fail, "hard LOCKUP", ""), r#"<failure type="other" message="hard LOCKUP"/>"#);
        check_junit(sample_cell(Verdict::Timeout, "too slow", ""), r#"<failure type="timeout" message="too slow"/>"#);
        check_junit(sample_cell(Verdict::Error, "QEMU failed", ""), r#"<error type="error" message="QEMU failed"/>"#);
        check_junit(sample_cell(Verdict::Skip, "no rseq", ""), r#"<skipped type="skip" message="no rseq"/>"#);
        check_junit(
            interrupted(CellEnd::Interrupted, "interrupted by SIGTERM after 12.3s"),
            r#"<error type="interrupted" message="interrupted by SIGTERM after 12.3s"/>"#,
        );
        check_junit(
            interrupted(CellEnd::NotStarted, "not started: the run was interrupted by SIGHUP"),
            r#"<skipped type="interrupted" message="not started: the run was interrupted by SIGHUP"/>"#,
        );
    }

    #[test]
    fn the_tally_counts_every_verdict() {
        let check = |verdicts: &[Verdict], want: &str| {
            let results: Vec<CellResult> = verdicts.iter().map(|&v| sample_cell(v, "", "")).collect();
            let got: Vec<String> = tally(&results).iter().map(|(k, n)| format!("{n} {k}")).collect();
            assert_eq!(got.join(", "), want);
        };
        check(&[], "");
        check(&[Verdict::Pass, Verdict::Pass, Verdict::Fail], "1 failed, 2 passed");
        check(&[Verdict::Pass, Verdict::Interrupted, Verdict::Interrupted], "2 interrupted, 1 passed");
        check(&[Verdict::Error, Verdict::Timeout, Verdict::Skip], "1 errors, 1 skipped, 1 timed out");
    }

    #[test]
    fn junit_is_valid_xml_whatever_the_console_held() {
        let nasty = triage::sanitize("]]> <tag> & \u{1b}[31mred\u{1b}[0m \u{0} \u{7} \u{fffe} done");
        let results = [
            sample_cell(Verdict::Pass, "ok", ""),
            sample_cell(Verdict::Fail, "hard LOCKUP in <mm_get_cid> & \u{1}", &nasty),
        ];
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
        if let Ok(out) = std::process::Command::new("python3")
            .args(["-c", "import sys, xml.dom.minidom as m; m.parse(sys.argv[1])"])
            .arg(&path)
            .output()
        {
            assert!(out.status.success(), "python rejects the XML: {}", String::from_utf8_lossy(&out.stderr));
        }
        std::fs::remove_file(path).unwrap();
    }
}
