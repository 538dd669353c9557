//! `lab triage`: saved console logs, or a cell's host samples, judged outside a run; one line per
//! report (with the guilty frame's source lines under it), or one JSON document.

use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{Context, Result};
use serde::Serialize;

use super::args::TriageArgs;
use crate::triage::{sanitize, DebugInfo, FrameSite, HostSamples, Missing, Report, Symbols};

pub fn triage(args: TriageArgs) -> Result<ExitCode> {
    let TriageArgs { files, json, system_map, vmlinux } = args;
    let debug = vmlinux.as_deref().map(load_debug_info).transpose()?;
    match system_map {
        Some(map) => host_samples(&files, &map, json, debug.as_ref()),
        None => console_logs(&files, json, debug.as_ref()),
    }
}

fn load_debug_info(vmlinux: &Path) -> Result<DebugInfo> {
    DebugInfo::load(vmlinux)?.with_context(|| {
        format!(
            "{} has no debug info (no .debug_info section): build the kernel with CONFIG_DEBUG_INFO \
             (the lab's kernels/config/lab.config has it)",
            vmlinux.display()
        )
    })
}

/// `--json`: one document for all the files. A report is `triage::Report` as summary.json
/// has it, so its fields and when each is left out are said once, there.
#[derive(Serialize)]
struct Files<F> {
    files: Vec<F>,
}

#[derive(Serialize)]
struct ConsoleLogFile<'a> {
    file: &'a str,
    reports: &'a [Report],
}

#[derive(Serialize)]
struct HostSamplesFile<'a> {
    file: &'a str,
    /// A line per vCPU, then how the samples were taken: what the text output prints first.
    vcpus: &'a [String],
    reports: &'a [Report],
}

fn host_samples(files: &[PathBuf], system_map: &Path, json: bool, debug: Option<&DebugInfo>) -> Result<ExitCode> {
    let symbols = Symbols::load(system_map)?;
    let mut out = Vec::new();
    for file in files {
        let what = file.display();
        let text = std::fs::read_to_string(file).with_context(|| format!("cannot read {what}"))?;
        let rounds: Vec<HostSamples> =
            serde_json::from_str(&text).with_context(|| format!("{what} is not a host-samples.json"))?;
        let last = rounds.last().with_context(|| format!("{what} holds no sampling round"))?;
        let mut diagnosis = crate::triage::diagnose_host(last, &symbols, last.console_line);
        if let Some(debug) = debug {
            debug.symbolize(&mut diagnosis.reports);
        }
        out.push((what.to_string(), diagnosis));
    }
    if json {
        let files: Vec<HostSamplesFile> =
            out.iter().map(|(file, d)| HostSamplesFile { file, vcpus: &d.summary, reports: &d.reports }).collect();
        println!("{}", serde_json::to_string_pretty(&Files { files })?);
        return Ok(ExitCode::SUCCESS);
    }
    for (file, diagnosis) in &out {
        for line in &diagnosis.summary {
            println!("{file}: {line}");
        }
        match diagnosis.reports.first() {
            Some(r) => {
                println!("{file}: {}: {}", r.kind, r.title);
                print_guilty_source(r);
            }
            None => println!("{file}: no vCPU spinning in the kernel"),
        }
    }
    Ok(ExitCode::SUCCESS)
}

fn console_logs(files: &[PathBuf], json: bool, debug: Option<&DebugInfo>) -> Result<ExitCode> {
    let mut out = Vec::new();
    for file in files {
        let bytes = if file == Path::new("-") {
            let mut b = Vec::new();
            std::io::stdin().read_to_end(&mut b).context("cannot read stdin")?;
            b
        } else {
            std::fs::read(file).with_context(|| format!("cannot read {}", file.display()))?
        };
        let mut reports = crate::triage::triage(&bytes, debug);
        if let Some(debug) = debug {
            debug.symbolize(&mut reports);
        }
        out.push((file.display().to_string(), reports));
    }
    if json {
        let files: Vec<ConsoleLogFile> = out.iter().map(|(file, reports)| ConsoleLogFile { file, reports }).collect();
        println!("{}", serde_json::to_string_pretty(&Files { files })?);
        return Ok(ExitCode::SUCCESS);
    }
    for (file, reports) in &out {
        if reports.is_empty() {
            println!("{file}: no reports");
        }
        for r in reports {
            println!("{}", report_line(file, r));
            print_guilty_source(r);
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// `FILE:LINE: KIND cpu N: TITLE`, then what the report could not show.
fn report_line(file: &str, r: &Report) -> String {
    let cpu = r.cpu.map(|c| format!(" cpu {c}")).unwrap_or_default();
    let missing: String = r
        .missing
        .iter()
        .map(|what| match what {
            Missing::LockHolder => " (no dumped stack shows the lock holder)",
            Missing::Truncated => " (cut short: the log ends inside it)",
        })
        .collect();
    format!("{file}:{}: {}{cpu}: {}{missing}", r.line, r.kind, sanitize(&r.title))
}

/// The guilty frame's source lines, indented under the report, in scripts/faddr2line's words.
fn print_guilty_source(report: &Report) {
    for line in report.frame_site.iter().flat_map(FrameSite::faddr2line) {
        println!("  {}", sanitize(&line));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::vocab::Kind;

    fn report(kind: Kind, title: &str, cpu: Option<u32>, missing: &[Missing]) -> Report {
        let mut r = Report::from_lab(kind, title.into(), title, 12, Vec::new());
        r.cpu = cpu;
        r.missing = missing.to_vec();
        r
    }

    #[test]
    fn one_line_per_report() {
        let check = |r: Report, want: &str| assert_eq!(report_line("console.log", &r), want);
        use Missing::*;
        let lockup = "hard LOCKUP in mm_get_cid";
        check(
            report(Kind::HardLockup, lockup, Some(1), &[]),
            "console.log:12: hard-lockup cpu 1: hard LOCKUP in mm_get_cid",
        );
        check(report(Kind::Silent, "silent for 30s", None, &[]), "console.log:12: silent: silent for 30s");
        check(
            report(Kind::HardLockup, lockup, Some(0), &[LockHolder]),
            "console.log:12: hard-lockup cpu 0: hard LOCKUP in mm_get_cid (no dumped stack shows the lock holder)",
        );
        check(
            report(Kind::Bug, "BUG: x", None, &[Truncated]),
            "console.log:12: bug: BUG: x (cut short: the log ends inside it)",
        );
        check(
            report(Kind::SoftLockup, "soft lockup", Some(3), &[LockHolder, Truncated]),
            "console.log:12: soft-lockup cpu 3: soft lockup (no dumped stack shows the lock holder) (cut short: the log ends inside it)",
        );
        check(report(Kind::Panic, "panic: \u{1b}[31mred\u{1b}[0m", None, &[]), "console.log:12: panic: panic: red");
    }

    #[test]
    fn the_json_is_each_file_with_its_reports_as_summary_json_has_them() {
        let reports = [report(Kind::Silent, "silent", None, &[Missing::Truncated])];
        let check = |json: serde_json::Result<String>, want: &str| assert_eq!(json.unwrap(), want);
        check(
            serde_json::to_string(&Files { files: vec![ConsoleLogFile { file: "console.log", reports: &reports }] }),
            concat!(
                r#"{"files":[{"file":"console.log","reports":[{"kind":"silent","title":"silent","signature":"silent:silent","#,
                r#""frame":null,"cpu":null,"stuck_cpu":null,"line":12,"source":"console","missing":["truncated"]}]}]}"#
            ),
        );
        let vcpus = ["vCPU 0: 8 of 8 samples in mm_get_cid".to_string()];
        check(
            serde_json::to_string(&Files {
                files: vec![HostSamplesFile { file: "h.json", vcpus: &vcpus, reports: &[] }],
            }),
            r#"{"files":[{"file":"h.json","vcpus":["vCPU 0: 8 of 8 samples in mm_get_cid"],"reports":[]}]}"#,
        );
    }
}
