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
use quick_xml::events::{BytesEnd, BytesStart, BytesText, Event};
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

/// Results by cell, in the order each cell first appears: a `--repeat` cell's runs together.
pub fn by_cell(results: &[CellResult]) -> Vec<Vec<&CellResult>> {
    let mut cells: Vec<Vec<&CellResult>> = Vec::new();
    for r in results {
        match cells.iter_mut().find(|runs| runs[0].id == r.id) {
            Some(runs) => runs.push(r),
            None => cells.push(vec![r]),
        }
    }
    cells
}

pub fn repro(results: &[CellResult]) -> Vec<Repro> {
    by_cell(results)
        .into_iter()
        .map(|runs| {
            let id = runs[0].id.clone();
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
/// would misread (a field renamed, a meaning changed, a value it does not know) takes the next
/// number. 2: a cell's `end` may be `stuck` (the live watch), a report's `source` `workload`.
pub const SUMMARY_VERSION: u32 = 2;

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
    let (report, reruns) = junit(results);
    let mut xml = Vec::new();
    report.write_xml(&mut xml).with_context(|| format!("cannot render {}", path.display()))?;
    let xml = with_reruns(&xml, &reruns).with_context(|| format!("cannot render {}", path.display()))?;
    cache::write_atomic(path, &xml)
}

/// A testcase's `system-out` is kept below this many bytes (GitLab's JUnit parser gives up on very
/// large ones); the rest is in the cell's console.log, which the text names.
const SYSTEM_OUT_BYTES: usize = 64 * 1024;
/// The same for each further run of a `--repeat` cell.
const RERUN_OUT_BYTES: usize = 8 * 1024;

/// `text` cut to at most `max` bytes (at a character boundary), ending with where the whole
/// console is when it was cut.
pub fn bounded(text: &str, max: usize, console: &Path) -> String {
    if text.len() <= max {
        return text.to_string();
    }
    let mut cut = max;
    while !text.is_char_boundary(cut) {
        cut -= 1;
    }
    format!("{}\n[cut at {max} bytes: the whole console is {}]", &text[..cut], console.display())
}

/// A run's console, named relative to the run directory, as a reader of the report finds it.
pub fn console_of(r: &CellResult) -> PathBuf {
    cell_dir(Path::new(""), &r.id, r.run).join("console.log")
}

/// What a run says in JUnit terms.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Outcome {
    Success,
    Failure,
    Error,
    Skipped,
}

fn outcome(r: &CellResult) -> Outcome {
    match r.verdict {
        Verdict::Pass => Outcome::Success,
        Verdict::Fail | Verdict::Timeout => Outcome::Failure,
        Verdict::Interrupted if r.end == CellEnd::NotStarted => Outcome::Skipped,
        Verdict::Error | Verdict::Interrupted => Outcome::Error,
        Verdict::Skip => Outcome::Skipped,
    }
}

/// The `type` attribute of a run's failure, error or skip.
fn junit_type(r: &CellResult) -> String {
    match r.verdict {
        Verdict::Pass => String::new(),
        Verdict::Fail => r.reports.first().map(|rep| rep.kind.to_string()).unwrap_or_else(|| "other".to_string()),
        Verdict::Timeout => "timeout".into(),
        // The lab's own kinds (boot-hang, infra) say what kept it from judging the kernel.
        Verdict::Error => r.reports.first().map_or("error", |rep| rep.kind.name()).into(),
        Verdict::Skip => "skip".into(),
        Verdict::Interrupted => "interrupted".into(),
    }
}

/// Surefire's elements for the runs of a repeated test beyond the one its result rests on, which
/// nextest writes too and junit-report does not know.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum RerunElement {
    /// A further failing run of a failing testcase.
    RerunFailure,
    /// A run that could not judge the kernel, in a testcase that failed or errored.
    RerunError,
    /// A run that could not judge the kernel, in a testcase whose other runs passed.
    FlakyError,
}

impl RerunElement {
    fn tag(self) -> &'static str {
        match self {
            RerunElement::RerunFailure => "rerunFailure",
            RerunElement::RerunError => "rerunError",
            RerunElement::FlakyError => "flakyError",
        }
    }
}

#[derive(Debug, Clone)]
struct Rerun {
    element: RerunElement,
    kind: String,
    message: String,
    output: String,
}

/// The element of each run beyond the first of a repeated testcase whose result is `case`.
/// A run that hit a kernel failure is never written as flaky: a JUnit reader counts a testcase
/// with only `flakyFailure`s as passed, and a lockup seen once in twenty runs is a kernel bug. Only
/// the host's errors are flaky, when the kernel passed in the other runs.
fn rerun_element(case: Outcome, run: Outcome) -> Option<RerunElement> {
    match (case, run) {
        (Outcome::Failure, Outcome::Failure) => Some(RerunElement::RerunFailure),
        (Outcome::Failure | Outcome::Error, Outcome::Error) => Some(RerunElement::RerunError),
        (Outcome::Success, Outcome::Error) => Some(RerunElement::FlakyError),
        _ => None,
    }
}

/// What a repeated cell's testcase says, from its runs' outcomes: failed when any run failed,
/// else passed when any run passed, else errored when any run errored, else skipped.
fn case_outcome(runs: &[Outcome]) -> Outcome {
    [Outcome::Failure, Outcome::Success, Outcome::Error]
        .into_iter()
        .find(|o| runs.contains(o))
        .unwrap_or(Outcome::Skipped)
}

/// One testsuite per kernel+arch, one testcase per vcpus+workload: a `--repeat` cell's runs are
/// one testcase, its result the first run with the case's outcome and the others as rerun or
/// flaky elements (given apart, testcase by testcase in document order, for `with_reruns`).
fn junit(results: &[CellResult]) -> (junit_report::Report, Vec<Vec<Rerun>>) {
    let mut suites: BTreeMap<(String, Arch), Vec<Vec<&CellResult>>> = BTreeMap::new();
    for runs in by_cell(results) {
        suites.entry((runs[0].kernel.clone(), runs[0].arch)).or_default().push(runs);
    }
    let mut report = ReportBuilder::new();
    let mut reruns = Vec::new();
    for ((kernel, arch), cells) in suites {
        let mut suite = TestSuiteBuilder::new(&format!("{kernel}.{arch}"));
        for runs in cells {
            let outcomes: Vec<Outcome> = runs.iter().map(|r| outcome(r)).collect();
            let case_is = case_outcome(&outcomes);
            let lead = runs[outcomes.iter().position(|&o| o == case_is).unwrap_or(0)];
            let name = format!("{}cpu-{}", lead.vcpus, lead.workload);
            let seconds: f64 = runs.iter().map(|r| r.duration_s).sum();
            let time = Duration::milliseconds((seconds * 1000.0) as i64);
            let mut message = triage::sanitize(&lead.reason);
            if runs.len() > 1 && case_is != Outcome::Success {
                let failed = outcomes.iter().filter(|&&o| o == case_is).count();
                message = format!("{failed} of {} runs: {message}", runs.len());
            }
            let kind = junit_type(lead);
            let mut case = match case_is {
                Outcome::Success => TestCaseBuilder::success(&name, time),
                Outcome::Failure => TestCaseBuilder::failure(&name, time, &kind, &message),
                Outcome::Error => TestCaseBuilder::error(&name, time, &kind, &message),
                Outcome::Skipped => TestCaseBuilder::skipped_with_cause(&name, &kind, &message),
            };
            case.set_classname(&format!("{kernel}.{arch}"));
            if case_is != Outcome::Success {
                case.set_system_out(&bounded(&lead.excerpt, SYSTEM_OUT_BYTES, &console_of(lead)));
            }
            suite.add_testcase(case.build());
            let more = runs.iter().zip(&outcomes).filter(|(r, _)| !std::ptr::eq(**r, lead));
            reruns.push(
                more.filter_map(|(r, &o)| {
                    Some(Rerun {
                        element: rerun_element(case_is, o)?,
                        kind: junit_type(r),
                        message: format!("run {}: {}", r.run.unwrap_or(1), triage::sanitize(&r.reason)),
                        output: bounded(&r.excerpt, RERUN_OUT_BYTES, &console_of(r)),
                    })
                })
                .collect(),
            );
        }
        report.add_testsuite(suite.build());
    }
    (report.build(), reruns)
}

/// `element` with its `time` in seconds to the millisecond: junit-report prints an f64's shortest
/// text, which now and then has more decimals than Surefire's schema allows (31.951999999999998).
fn millisecond_time(element: &BytesStart) -> Result<BytesStart<'static>> {
    let mut out = BytesStart::new(String::from_utf8(element.name().as_ref().to_vec())?);
    for attribute in element.attributes() {
        let attribute = attribute?;
        match attribute.key.as_ref() {
            b"time" => {
                let seconds: f64 = std::str::from_utf8(&attribute.value)?.parse()?;
                out.push_attribute(("time", format!("{seconds:.3}").as_str()));
            }
            _ => out.push_attribute(attribute),
        }
    }
    Ok(out)
}

/// junit-report's document with each testcase's rerun elements (`reruns`, one list per testcase
/// in document order) written into it as it streams through, and its times to the millisecond.
fn with_reruns(xml: &[u8], reruns: &[Vec<Rerun>]) -> Result<Vec<u8>> {
    let mut reader = quick_xml::Reader::from_reader(xml);
    let mut writer = quick_xml::Writer::new(Vec::with_capacity(xml.len()));
    let mut cases = reruns.iter();
    let mut current: &[Rerun] = &[];
    let write_reruns = |w: &mut quick_xml::Writer<Vec<u8>>, reruns: &[Rerun]| -> Result<()> {
        for rerun in reruns {
            w.create_element(rerun.element.tag())
                .with_attributes([("type", rerun.kind.as_str()), ("message", rerun.message.as_str())])
                .write_inner_content(|w| {
                    w.create_element("system-out").write_text_content(BytesText::new(&rerun.output)).map(drop)
                })?;
        }
        Ok(())
    };
    let mut buf = Vec::new();
    loop {
        let event = reader.read_event_into(&mut buf)?;
        match event {
            Event::Eof => break,
            Event::Empty(e) if e.name().as_ref() == b"testcase" => {
                let e = millisecond_time(&e)?;
                let reruns = cases.next().map_or(&[][..], Vec::as_slice);
                if reruns.is_empty() {
                    writer.write_event(Event::Empty(e))?;
                } else {
                    writer.write_event(Event::Start(e))?;
                    write_reruns(&mut writer, reruns)?;
                    writer.write_event(Event::End(BytesEnd::new("testcase")))?;
                }
            }
            Event::Start(e) if e.name().as_ref() == b"testcase" => {
                current = cases.next().map_or(&[][..], Vec::as_slice);
                writer.write_event(Event::Start(millisecond_time(&e)?))?;
            }
            Event::Start(e) if e.name().as_ref() == b"testsuite" => {
                writer.write_event(Event::Start(millisecond_time(&e)?))?;
            }
            Event::Empty(e) if e.name().as_ref() == b"testsuite" => {
                writer.write_event(Event::Empty(millisecond_time(&e)?))?;
            }
            Event::End(e) if e.name().as_ref() == b"testcase" => {
                write_reruns(&mut writer, current)?;
                current = &[];
                writer.write_event(Event::End(e))?;
            }
            other => writer.write_event(other)?,
        }
        buf.clear();
    }
    Ok(writer.into_inner())
}

/// The console lines a reader needs: around the first report, else the tail (a workload's report
/// over SSH has no console line); a report from the host's samples or from a workload's output
/// over SSH comes first with its own lines. Sanitized.
pub fn excerpt(console: &str, reports: &[Report]) -> String {
    let lines: Vec<&str> = console.lines().collect();
    let (from, to) = match reports.first() {
        Some(r) if r.line > 0 && r.source != triage::Source::Workload => {
            (r.line.saturating_sub(10), (r.line + 120).min(lines.len()))
        }
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
    // A first report from outside the console says its own lines before the console's tail.
    let outside = reports.first().and_then(|r| match r.source {
        triage::Source::Console => None,
        triage::Source::Host => Some((r, "the host's samples of the vCPUs".to_owned())),
        triage::Source::Workload => Some((r, format!("the workload's output over SSH, workload.log line {}", r.line))),
    });
    if let Some((report, from)) = outside {
        text += &format!("{} (from {from})\n{}\n", report.title, report.lines.join("\n"));
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
        // Over SSH the violation's line is the workload's: it comes first, then the console's tail.
        let violation = triage::Report {
            kind: Kind::RseqViolation,
            title: "mm_cid shared by two running threads (unique-cid)".into(),
            line: 2,
            lines: vec!["mmcid-churn: VIOLATION check=unique-cid cid=0".into()],
            source: triage::Source::Workload,
            frame_site: None,
            ..reports[0].clone()
        };
        let expect = "mm_cid shared by two running threads (unique-cid) (from the workload's output over SSH, workload.log line 2)\nmmcid-churn: VIOLATION check=unique-cid cid=0\n--- console ---\n";
        assert_eq!(excerpt(console, &[violation]), format!("{expect}{}", console.trim_end()));
    }

    fn interrupted(end: CellEnd, reason: &str) -> CellResult {
        CellResult { end, ..sample_cell(Verdict::Interrupted, reason, "") }
    }

    fn junit_text(results: &[CellResult]) -> String {
        let path = std::env::temp_dir().join(format!("lab-junit-{}-{}.xml", std::process::id(), results.len()));
        write_junit(&path, results).unwrap();
        let xml = std::fs::read_to_string(&path).unwrap();
        std::fs::remove_file(path).unwrap();
        xml
    }

    /// `check_junit(result, element)`: the testcase's verdict element in junit.xml.
    fn check_junit(result: CellResult, element: &str) {
        let xml = junit_text(&[result]);
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
    fn a_repeated_cells_outcome_and_its_other_runs() {
        use Outcome::*;
        // (runs, the testcase's outcome, the element of each run but the one it rests on)
        let check = |runs: &[Outcome], case: Outcome, others: &[Option<RerunElement>]| {
            assert_eq!(case_outcome(runs), case, "{runs:?}");
            let lead = runs.iter().position(|&o| o == case).unwrap_or(0);
            let got: Vec<Option<RerunElement>> =
                runs.iter().enumerate().filter(|&(i, _)| i != lead).map(|(_, &o)| rerun_element(case, o)).collect();
            assert_eq!(got, others, "{runs:?}");
        };
        use RerunElement::*;
        check(&[Success, Success], Success, &[None]);
        check(&[Success, Failure, Failure], Failure, &[None, Some(RerunFailure)]);
        check(&[Failure, Success, Success], Failure, &[None, None]);
        check(&[Failure, Error, Failure], Failure, &[Some(RerunError), Some(RerunFailure)]);
        check(&[Success, Error, Success], Success, &[Some(FlakyError), None]);
        check(&[Error, Error], Error, &[Some(RerunError)]);
        check(&[Error, Skipped], Error, &[None]);
        check(&[Skipped, Skipped], Skipped, &[None]);
        check(&[Skipped, Success], Success, &[None]);
    }

    #[test]
    fn a_repeated_cell_is_one_testcase_with_its_further_runs_inside() {
        let run = |n: u32, verdict: Verdict, reason: &str| CellResult {
            run: Some(n),
            ..sample_cell(verdict, reason, &format!("console of run {n}"))
        };
        let mut other = run(1, Verdict::Pass, "ok");
        other.id = "k-x86_64-4cpu-smoke".into();
        other.vcpus = 4;
        let results = [
            run(1, Verdict::Pass, "ok"),
            run(2, Verdict::Fail, "hard LOCKUP"),
            run(3, Verdict::Error, "QEMU died"),
            run(4, Verdict::Fail, "hard LOCKUP again"),
            other.clone(),
            CellResult { run: Some(2), ..other.clone() },
            CellResult { run: Some(3), ..sample_cell(Verdict::Error, "disk full", "") },
        ];
        let mut results = results.to_vec();
        results[6].id = other.id.clone();
        results[6].vcpus = 4;
        let xml = junit_text(&results);
        let cases: Vec<&str> = xml.split("<testcase ").skip(1).collect();
        assert_eq!(cases.len(), 2, "{xml}");
        let expect_2cpu = [
            r#"<failure type="other" message="2 of 4 runs: hard LOCKUP"/>"#,
            "<system-out><![CDATA[console of run 2]]></system-out>",
            r#"<rerunError type="error" message="run 3: QEMU died"><system-out>console of run 3</system-out></rerunError>"#,
            r#"<rerunFailure type="other" message="run 4: hard LOCKUP again"><system-out>console of run 4</system-out></rerunFailure>"#,
        ];
        for part in expect_2cpu {
            assert!(cases[0].contains(part), "{part} in {}", cases[0]);
        }
        assert!(cases[0].starts_with(r#"name="2cpu-smoke" time="#) && !cases[0].contains("#"), "{}", cases[0]);
        assert!(!cases[1].contains("<failure") && !cases[1].contains("<error"), "{}", cases[1]);
        assert!(
            cases[1].contains(r#"<flakyError type="error" message="run 3: disk full"><system-out></system-out></flakyError></testcase>"#),
            "{}",
            cases[1]
        );
        assert!(xml.contains(r#"tests="2" errors="0" failures="1""#), "{xml}");
    }

    #[test]
    fn a_long_excerpt_is_cut_and_names_the_whole_console() {
        let console = Path::new("cells/k/console.log");
        assert_eq!(bounded("short", 10, console), "short");
        let cut = bounded("ééééé", 5, console);
        assert_eq!(cut, "éé\n[cut at 5 bytes: the whole console is cells/k/console.log]");
        let mut long = sample_cell(Verdict::Fail, "hard LOCKUP", &"x".repeat(SYSTEM_OUT_BYTES * 3));
        long.run = None;
        let xml = junit_text(&[long]);
        assert!(xml.len() < SYSTEM_OUT_BYTES + 2048, "{} bytes", xml.len());
        assert!(xml.contains("the whole console is cells/k-x86_64-2cpu-smoke/console.log]"));
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
            // Another cell: one id is one cell, whose runs are one testcase.
            CellResult {
                id: "k-x86_64-4cpu-smoke".into(),
                vcpus: 4,
                duration_s: 31.952,
                ..sample_cell(Verdict::Fail, "hard LOCKUP in <mm_get_cid> & \u{1}", &nasty)
            },
        ];
        let xml = junit_text(&results);
        assert!(!xml.chars().any(|c| c < ' ' && !"\t\n\r".contains(c)), "control characters in {xml}");
        assert_eq!(xml.matches("]]>").count(), xml.matches("<![CDATA[").count(), "{xml}");
        assert!(xml.contains("<testsuite ") && xml.contains("name=\"k.x86_64\""), "{xml}");
        assert!(xml.contains("tests=\"2\"") && xml.contains("failures=\"1\""), "{xml}");
        // Three decimals at most (Surefire's schema): 31.952 alone prints as 31.951999999999998.
        assert!(xml.contains(r#"time="31.952""#) && xml.contains(r#"time="33.452""#), "{xml}");
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
