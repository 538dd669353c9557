//! The verdict rules: what a boot's console, the host's samples and the VM's end say about the
//! kernel. Pure functions of values, so that every rule is a one-line case in the tests below.

use crate::plan::Cell;
use crate::triage::HostSamples;
use crate::triage::{self, Missing, Report, Source};
use crate::vm::{self, Boot, End};
use crate::vocab::{Basis, Kind, Verdict};

/// The verdict of one boot: what the guest reported (`guest`: the console's reports and those of
/// a workload's stdout over SSH, `in_time_order`), what the host's samples show, what the
/// workload said, how the VM ended. Reports come in the order things happened: the guest's up to
/// the host's sampling, the host's, then what the guest printed when asked (after the NMI).
/// Reports the lab adds itself (silence, no ready line, ...) point at the console's last line.
pub fn judge(
    cell: &Cell,
    boot: &Boot,
    guest: Vec<Report>,
    host: Option<&triage::HostDiagnosis>,
    silence_s: u64,
    last_line: usize,
) -> (Verdict, String, Vec<Report>) {
    let sampled_at = boot.host.last().map_or(usize::MAX, |s| s.console_line);
    // The guest's reports are in time order (`in_time_order`). A workload's report over SSH has no
    // console line: it stays with the console's report before it.
    let mut reports = guest;
    let answered = reports.iter().position(|r| r.source == Source::Console && r.line > sampled_at);
    let mut answers = reports.split_off(answered.unwrap_or(reports.len()));
    // A guest report that tells only the victim's side (its stuck CPU waits for a lock whose holder
    // no CPU dumped: powerpc under TCG ignores the backtrace IPI), or is titled after a vCPU the
    // host saw waiting for a lock: the host's report, which names the holder, leads.
    let victim_first = |h: &triage::HostDiagnosis| {
        reports.first().is_some_and(|r| {
            r.missing.contains(&Missing::LockHolder)
                || r.frame.as_ref().is_some_and(|f| h.waiters.contains(f))
                // A report that names no function (pseries' hard-lockup line) says less than the
                // host's that names the spinning one.
                || (r.frame.is_none() && h.reports.iter().any(|host| host.frame.is_some()))
        })
    };
    let at = if host.is_some_and(victim_first) { 0 } else { reports.len() };
    reports.splice(at..at, host.iter().flat_map(|h| h.reports.iter().cloned()));
    // And the other way: the host found no holder and titled its report after a waiter (a
    // spinner's samples can share no function, even counting the code under an interrupt), while
    // the guest's answer names a lockup in a function no vCPU waited in: that answer leads.
    let answer_first = host.and_then(|h| {
        let victim = h.reports.first()?.frame.as_ref().is_some_and(|f| h.waiters.contains(f));
        let culprit =
            |r: &Report| r.kind == Kind::HardLockup && r.frame.as_ref().is_some_and(|f| !h.waiters.contains(f));
        victim.then(|| answers.iter().position(culprit)).flatten()
    });
    if let Some(i) = answer_first {
        reports.insert(0, answers.remove(i));
    }
    reports.extend(answers);
    if let Some(fault) = reports.is_empty().then(|| never_started(boot, host, silence_s, last_line)).flatten() {
        return (Verdict::Error, fault.title.clone(), vec![fault]);
    }
    if boot.end == End::Silent {
        // The host's summary goes with the silence only when it found no spinning vCPU to report.
        let mut lines: Vec<String> = host.filter(|h| !h.spinning()).map(|h| h.summary.clone()).unwrap_or_default();
        lines.extend(boot.host_error.iter().map(|e| format!("host sampling failed: {e}")));
        let what =
            format!("no console output for {silence_s}s{}", if boot.ready.is_none() { " during boot" } else { "" });
        reports.push(Report::from_lab(Kind::Silent, format!("silent: {what}"), &what, last_line, lines));
    }
    if let End::LostConnection(why) = &boot.end {
        let lines = host.filter(|h| !h.spinning()).map(|h| h.summary.clone()).unwrap_or_default();
        reports.push(Report::from_lab(
            Kind::LostConnection,
            format!("lost connection: {}: {why}", cell.workload.name),
            "",
            last_line,
            lines,
        ));
    }
    let other = |title: String| Report::from_lab(Kind::Other, title.clone(), &title, last_line, Vec::new());
    if let End::QemuFailed(why) | End::SshFailed(why) = &boot.end {
        if reports.is_empty() {
            return (Verdict::Error, why.clone(), reports);
        }
    }
    if let Some(expected) = cell.workload.expect {
        return match reports.iter().find(|r| r.kind.family() == expected.family()) {
            Some(r) => (Verdict::Pass, format!("expected {expected} reported: {}", r.title), reports),
            None => {
                let got = reports.first().map(|r| r.title.clone()).unwrap_or_else(|| "no report".into());
                let reason = format!("expected a {expected} report, got: {got}");
                reports.insert(0, other(reason.clone()));
                (Verdict::Fail, reason, reports)
            }
        };
    }
    if let Some(first) = reports.first() {
        return (Verdict::Fail, first.title.clone(), reports);
    }
    let Some(ready) = &boot.ready else {
        let reason = match boot.end {
            End::BootTimeout => "no ready line: boot did not finish before the boot deadline".to_string(),
            _ => "no ready line: the guest stopped before its init started".to_string(),
        };
        reports.push(other(reason.clone()));
        let verdict = if boot.end == End::BootTimeout { Verdict::Timeout } else { Verdict::Fail };
        return (verdict, reason, reports);
    };
    let mismatch = [("arch", cell.arch.uname_machine().to_string()), ("cpus", cell.vcpus.to_string())]
        .into_iter()
        .find(|(key, want)| ready.get(key) != Some(want.as_str()));
    if let Some((key, want)) = mismatch {
        let reason =
            format!("the guest reports {key}={}, the cell asked for {want}", ready.get(key).unwrap_or("nothing"));
        reports.push(other(reason.clone()));
        return (Verdict::Fail, reason, reports);
    }
    let Some(result) = &boot.result else {
        let reason = match boot.end {
            End::WorkloadTimeout => format!("timeout: workload {} gave no result line in time", cell.workload.name),
            _ => format!("workload {} gave no result line before the guest stopped", cell.workload.name),
        };
        reports.push(other(reason.clone()));
        let verdict = if boot.end == End::WorkloadTimeout { Verdict::Timeout } else { Verdict::Fail };
        return (verdict, reason, reports);
    };
    let detail = result.get("detail").unwrap_or("");
    // Sampled and resumed, and the guest went on to finish: it had been paused from outside.
    let paused = if boot.host.iter().any(|s| s.resumed) {
        "; the VM had been paused from outside (host samples: no vCPU spinning)"
    } else {
        ""
    };
    match result.get("status") {
        Some("pass") => (
            Verdict::Pass,
            format!("{} passed in {} ms{paused}", cell.workload.name, result.get("elapsed_ms").unwrap_or("?")),
            reports,
        ),
        Some("skip") => (Verdict::Skip, format!("{} skipped: {detail}", cell.workload.name), reports),
        Some("error") => (Verdict::Error, format!("{} could not run: {detail}", cell.workload.name), reports),
        status => {
            let reason = format!("{} failed: status={} {detail}", cell.workload.name, status.unwrap_or("?"));
            reports.push(other(reason.clone()));
            (Verdict::Fail, reason, reports)
        }
    }
}

/// A guest that never got going, or whose vCPUs all sat outside the kernel image, with no report
/// from the kernel or the host to say otherwise: the host's fault until shown otherwise (a KVM that
/// runs a boot sector but hangs Linux in its decompressor), never a kernel verdict.
pub fn never_started(
    boot: &Boot,
    host: Option<&triage::HostDiagnosis>,
    silence_s: u64,
    last_line: usize,
) -> Option<Report> {
    if !matches!(boot.end, End::Silent | End::BootTimeout) {
        return None;
    }
    let outside = host.is_some_and(|h| h.outside_kernel);
    let lines = host.map(|h| h.summary.clone()).unwrap_or_default();
    let (kind, what) = match (boot.console_lines, outside, &boot.ready) {
        (0, true, _) => (
            Kind::BootHang,
            format!("the guest printed nothing in {silence_s}s and every vCPU is outside the kernel image"),
        ),
        (0, false, _) => (Kind::BootHang, format!("the guest printed nothing in {silence_s}s")),
        (_, true, None) => (Kind::BootHang, "every vCPU is outside the kernel image before the ready line".to_string()),
        (_, true, Some(_)) => {
            (Kind::Infra, format!("every vCPU is outside the kernel image and the console was silent for {silence_s}s"))
        }
        (_, false, _) => return None,
    };
    Some(Report::from_lab(kind, format!("{kind}: {what}"), &what, last_line, lines))
}

pub fn basis(reports: &[Report]) -> Option<Basis> {
    let guest = reports
        .iter()
        .any(|r| r.source != Source::Host && !matches!(r.kind, Kind::Silent | Kind::LostConnection | Kind::Other));
    let host = reports.iter().any(|r| r.source == Source::Host);
    match (guest, host) {
        (true, true) => Some(Basis::GuestAndHost),
        (true, false) => Some(Basis::Guest),
        (false, true) => Some(Basis::Host),
        (false, false) => None,
    }
}

/// The guest's stamped logs, which a report's `line` points into by its `source`.
pub struct Logs<'a> {
    pub console: &'a str,
    /// `workload.log`: a workload's stdout over SSH; empty when it ran on the console.
    pub workload: &'a str,
}

impl Logs<'_> {
    /// The host time (seconds since QEMU started) of the line that opens `report`; `None` for
    /// a report from the host's samples, which no log line opens.
    fn time(&self, report: &Report) -> Option<f64> {
        let log = match report.source {
            Source::Console => self.console,
            Source::Workload => self.workload,
            Source::Host => return None,
        };
        vm::console_time(log, report.line)
    }
}

/// The console's reports with the workload's over SSH among them, each where its time stamp puts
/// it: both logs are stamped by the one host clock, so the order is the order things happened.
/// The console's keep their own order (line order: a cut line joined again may carry an earlier
/// stamp than the kernel line before it); a tie goes to the console.
pub fn in_time_order(console: Vec<Report>, workload: Vec<Report>, logs: &Logs) -> Vec<Report> {
    let mut workload = workload.into_iter().peekable();
    let mut reports = Vec::new();
    for report in console {
        let at = logs.time(&report);
        let earlier = |w: &Report| logs.time(w).zip(at).is_some_and(|(w, at)| w < at);
        while let Some(earlier) = workload.next_if(earlier) {
            reports.push(earlier);
        }
        reports.push(report);
    }
    reports.extend(workload);
    reports
}

/// Seconds from the ready line to the first report: the host time that prefixes its line in the
/// log it came from, or, for a report from host samples, the time sampling began. Runs that failed
/// during boot have no ready line and no delay.
pub fn detection_delay(
    logs: &Logs,
    reports: &[Report],
    ready_at: Option<f64>,
    host: Option<&HostSamples>,
) -> Option<f64> {
    let first = reports.first()?;
    let at = match first.source {
        Source::Host => host?.started_s,
        _ => logs.time(first)?,
    };
    Some(at - ready_at?)
}

#[cfg(test)]
mod tests {
    use std::path::PathBuf;

    use super::*;
    use crate::arch::Arch;
    use crate::matrix;
    use crate::vm::ProtocolLine;

    fn cell(expect: Option<Kind>) -> Cell {
        let programs = ["smoke", "lkdtm"].into_iter().map(String::from).collect();
        let m = matrix::parse(
            "kernels: [{recipe: k.yaml}]\narches: [aarch64]\nvcpus: [2]\nworkloads: [{name: smoke}]\n",
            &programs,
        )
        .unwrap();
        let mut workload = m.workloads[0].clone();
        workload.expect = expect;
        Cell {
            id: "k-aarch64-2cpu-smoke".into(),
            kernel: 0,
            kernel_name: "k".into(),
            arch: Arch::Aarch64,
            vcpus: 2,
            workload,
        }
    }

    fn line(text: &str) -> Option<ProtocolLine> {
        Some(ProtocolLine {
            at: 1.0,
            fields: text
                .split_whitespace()
                .filter_map(|w| w.split_once('='))
                .map(|(k, v)| (k.into(), v.into()))
                .collect(),
        })
    }

    fn boot(end: End, ready: &str, result: &str) -> Boot {
        Boot {
            end,
            ready: if ready.is_empty() { None } else { line(ready) },
            result: if result.is_empty() { None } else { line(result) },
            console_log: PathBuf::from("/nonexistent"),
            workload_log: PathBuf::from("/nonexistent"),
            console_lines: 10,
            host: Vec::new(),
            host_error: None,
            ssh: None,
        }
    }

    fn mute(end: End) -> Boot {
        Boot { console_lines: 0, ..boot(end, "", "") }
    }

    fn lockup() -> Report {
        Report {
            kind: Kind::HardLockup,
            title: "hard LOCKUP in mm_get_cid".into(),
            signature: "hard-lockup:mm_get_cid".into(),
            frame: Some("mm_get_cid".into()),
            frame_site: None,
            cpu: Some(1),
            stuck_cpu: None,
            line: 7,
            lines: vec![],
            repeated: 0,
            source: Source::Console,
            missing: Vec::new(),
            stacks: Vec::new(),
        }
    }

    const READY: &str = "arch=aarch64 cpus=2";

    /// `check(expect, boot, reports, "verdict: reason")`
    fn check(expect: Option<Kind>, boot: Boot, reports: Vec<Report>, want: &str) {
        let (verdict, reason, _) = judge(&cell(expect), &boot, reports, None, 60, 100);
        assert_eq!(format!("{verdict:?}: {reason}"), want);
    }

    #[test]
    fn verdicts() {
        check(None, boot(End::Exited, READY, "status=pass elapsed_ms=5000"), vec![], "Pass: smoke passed in 5000 ms");
        check(None, boot(End::StoppedAfterReport, READY, ""), vec![lockup()], "Fail: hard LOCKUP in mm_get_cid");
        check(None, boot(End::Exited, READY, "status=pass"), vec![lockup()], "Fail: hard LOCKUP in mm_get_cid");
        check(None, boot(End::Silent, READY, ""), vec![], "Fail: silent: no console output for 60s");
        check(None, boot(End::Silent, "", ""), vec![], "Fail: silent: no console output for 60s during boot");
        check(
            None,
            boot(End::BootTimeout, "", ""),
            vec![],
            "Timeout: no ready line: boot did not finish before the boot deadline",
        );
        check(
            None,
            boot(End::Exited, "", ""),
            vec![],
            "Fail: no ready line: the guest stopped before its init started",
        );
        check(
            None,
            boot(End::Exited, "arch=aarch64 cpus=1", "status=pass"),
            vec![],
            "Fail: the guest reports cpus=1, the cell asked for 2",
        );
        check(
            None,
            boot(End::Exited, "arch=x86_64 cpus=2", "status=pass"),
            vec![],
            "Fail: the guest reports arch=x86_64, the cell asked for aarch64",
        );
        check(
            None,
            boot(End::WorkloadTimeout, READY, ""),
            vec![],
            "Timeout: timeout: workload smoke gave no result line in time",
        );
        check(None, boot(End::Exited, READY, "status=skip detail=no-rseq"), vec![], "Skip: smoke skipped: no-rseq");
        check(
            None,
            boot(End::Exited, READY, "status=fail detail=exit-1"),
            vec![],
            "Fail: smoke failed: status=fail exit-1",
        );
        check(None, boot(End::Exited, READY, "status=error detail=usage"), vec![], "Error: smoke could not run: usage");
        check(
            None,
            boot(End::QemuFailed("QEMU exited with exit status: 1: bad -M".into()), "", ""),
            vec![],
            "Error: QEMU exited with exit status: 1: bad -M",
        );
        // Not one byte: the host's fault until shown otherwise, whatever the cell expected.
        check(None, mute(End::Silent), vec![], "Error: boot-hang: the guest printed nothing in 60s");
        check(None, mute(End::BootTimeout), vec![], "Error: boot-hang: the guest printed nothing in 60s");
        check(Some(Kind::HardLockup), mute(End::Silent), vec![], "Error: boot-hang: the guest printed nothing in 60s");
        check(None, mute(End::Exited), vec![], "Fail: no ready line: the guest stopped before its init started");
        let hl = Some(Kind::HardLockup);
        check(
            hl,
            boot(End::StoppedAfterReport, READY, ""),
            vec![lockup()],
            "Pass: expected hard-lockup reported: hard LOCKUP in mm_get_cid",
        );
        check(
            hl,
            boot(End::Exited, READY, "status=skip"),
            vec![],
            "Fail: expected a hard-lockup report, got: no report",
        );
        check(
            hl,
            boot(End::Silent, READY, ""),
            vec![],
            "Fail: expected a hard-lockup report, got: silent: no console output for 60s",
        );
        // LKDTM EXCEPTION: an Oops on arm64, a BUG on x86_64 and powerpc; either passes either.
        let null = |kind| Report { title: "NULL deref in lkdtm_EXCEPTION".into(), ..at(kind, 5, Source::Console) };
        let exited = || boot(End::StoppedAfterReport, READY, "");
        check(
            Some(Kind::Oops),
            exited(),
            vec![null(Kind::Bug)],
            "Pass: expected oops reported: NULL deref in lkdtm_EXCEPTION",
        );
        check(
            Some(Kind::Bug),
            exited(),
            vec![null(Kind::Oops)],
            "Pass: expected bug reported: NULL deref in lkdtm_EXCEPTION",
        );
        check(
            Some(Kind::Warning),
            exited(),
            vec![null(Kind::Oops)],
            "Fail: expected a warning report, got: NULL deref in lkdtm_EXCEPTION",
        );
    }

    fn at(kind: Kind, line: usize, source: Source) -> Report {
        Report {
            kind,
            title: format!("{kind}@{line}"),
            signature: kind.to_string(),
            frame: None,
            frame_site: None,
            cpu: None,
            stuck_cpu: None,
            line,
            lines: vec![],
            repeated: 0,
            source,
            missing: Vec::new(),
            stacks: Vec::new(),
        }
    }

    fn quiet_host() -> triage::HostDiagnosis {
        triage::HostDiagnosis {
            reports: vec![],
            summary: vec!["vCPU 0: idle (default_idle) in every kernel sample".into()],
            waiters: vec![],
            outside_kernel: false,
            stuck_for_good: false,
        }
    }

    /// Reports in the order things happened: the console's before the host sampled, the host's,
    /// the guest's answer to the NMI, then the silence the lab saw.
    #[test]
    fn host_reports_take_their_place_in_time_and_set_the_basis() {
        let mut silent = boot(End::Silent, READY, "");
        silent.host = vec![HostSamples { console_line: 5, started_s: 30.0, ..HostSamples::default() }];
        let host = triage::HostDiagnosis {
            reports: vec![at(Kind::HardLockup, 5, Source::Host)],
            summary: vec!["vCPU 0: ...".into()],
            waiters: vec![],
            outside_kernel: false,
            stuck_for_good: true,
        };
        let console = vec![at(Kind::RcuStall, 3, Source::Console), at(Kind::Oops, 8, Source::Console)];
        let (verdict, reason, reports) = judge(&cell(None), &silent, console, Some(&host), 60, 9);
        let order: Vec<String> = reports.iter().map(|r| format!("{}/{:?}", r.title, r.source)).collect();
        assert_eq!(
            order,
            [
                "rcu-stall@3/Console",
                "hard-lockup@5/Host",
                "oops@8/Console",
                "silent: no console output for 60s/Console"
            ]
        );
        assert_eq!((verdict, reason.as_str()), (Verdict::Fail, "rcu-stall@3"));
        assert_eq!(basis(&reports), Some(Basis::GuestAndHost));
        let (_, reason, reports) = judge(&cell(None), &silent, vec![], Some(&host), 60, 9);
        assert_eq!(reason, "hard-lockup@5");
        assert_eq!(basis(&reports), Some(Basis::Host));
        assert!(reports[1].lines.is_empty(), "the silence does not repeat the host's lines");
        assert_eq!(
            detection_delay(&Logs { console: "", workload: "" }, &reports, Some(1.0), silent.host.last()),
            Some(29.0)
        );
        // The guest's report named a lock waiter the host saw: the host's holder leads.
        let mut waiter = at(Kind::HardLockup, 3, Source::Console);
        waiter.frame = Some("sched_mm_cid_fork".into());
        let holder = triage::HostDiagnosis { waiters: vec!["sched_mm_cid_fork".into()], ..host.clone() };
        let (_, reason, reports) = judge(&cell(None), &silent, vec![waiter], Some(&holder), 60, 9);
        assert_eq!((reason.as_str(), reports[1].frame.as_deref()), ("hard-lockup@5", Some("sched_mm_cid_fork")));
        // The guest's report says no dumped stack showed the holder: the host's report leads even
        // when the host no longer saw that waiter (it may have moved on to another lock).
        let mut victim = at(Kind::HardLockup, 3, Source::Console);
        victim.missing = vec![Missing::LockHolder];
        let (_, reason, _) = judge(&cell(None), &silent, vec![victim.clone()], Some(&host), 60, 9);
        assert_eq!(reason, "hard-lockup@5");
        let (_, reason, _) = judge(&cell(None), &silent, vec![victim], Some(&quiet_host()), 60, 9);
        assert_eq!(reason, "hard-lockup@3", "with nothing spinning on the host, the guest's report stays first");
        // The guest's report names no function, the host's does: the host's leads.
        let mut spinner = at(Kind::HardLockup, 5, Source::Host);
        spinner.frame = Some("mm_get_cid".into());
        let named = triage::HostDiagnosis { reports: vec![spinner], ..host.clone() };
        let unnamed = || at(Kind::HardLockup, 3, Source::Console);
        let (_, reason, _) = judge(&cell(None), &silent, vec![unnamed()], Some(&named), 60, 9);
        assert_eq!(reason, "hard-lockup@5");
        let (_, reason, _) = judge(&cell(None), &silent, vec![unnamed()], Some(&host), 60, 9);
        assert_eq!(reason, "hard-lockup@3", "neither names a function: the guest's report stays first");
        // The host titled its report after a waiter it saw; the guest's answer names the spinner.
        let mut waiting = at(Kind::HardLockup, 5, Source::Host);
        waiting.frame = Some("sched_mm_cid_fork".into());
        let victims =
            triage::HostDiagnosis { reports: vec![waiting], waiters: vec!["sched_mm_cid_fork".into()], ..host.clone() };
        let answer =
            |line, frame: &str| Report { frame: Some(frame.into()), ..at(Kind::HardLockup, line, Source::Console) };
        let (_, reason, reports) = judge(&cell(None), &silent, vec![answer(12, "mm_get_cid")], Some(&victims), 60, 9);
        assert_eq!((reason.as_str(), reports[1].title.as_str()), ("hard-lockup@12", "hard-lockup@5"));
        let (_, reason, _) = judge(&cell(None), &silent, vec![answer(12, "sched_mm_cid_fork")], Some(&victims), 60, 9);
        assert_eq!(reason, "hard-lockup@5", "an answer naming the same waiter does not lead");
        let (_, reason, _) = judge(&cell(None), &silent, vec![answer(12, "mm_get_cid")], Some(&named), 60, 9);
        assert_eq!(reason, "hard-lockup@5", "the host named a function no vCPU waited in: it leads");
        let quiet = quiet_host();
        let (_, reason, reports) = judge(&cell(None), &silent, vec![], Some(&quiet), 60, 9);
        assert_eq!(reason, "silent: no console output for 60s");
        assert_eq!(reports[0].lines, quiet.summary, "a silence with no spinning vCPU carries the host's view");
        assert_eq!(basis(&reports), None);
        let mut resumed = boot(End::Exited, READY, "status=pass elapsed_ms=20000");
        resumed.host = vec![HostSamples { resumed: true, ..HostSamples::default() }];
        let (verdict, reason, _) = judge(&cell(None), &resumed, vec![], Some(&quiet), 60, 9);
        assert_eq!(
            format!("{verdict:?}: {reason}"),
            "Pass: smoke passed in 20000 ms; the VM had been paused from outside (host samples: no vCPU spinning)"
        );
    }

    /// vCPUs outside the kernel image (the bzImage decompressor under a KVM that hangs Linux) are
    /// the host's; a vCPU the host could name spinning in the kernel is the kernel's, printed or not.
    #[test]
    fn a_guest_outside_its_kernel_is_an_error_and_a_named_spin_is_a_failure() {
        let outside = triage::HostDiagnosis {
            outside_kernel: true,
            summary: vec!["vCPU 0: outside the kernel image in 8 of 8 samples".into()],
            ..quiet_host()
        };
        let judge_host = |boot: &Boot, host: &triage::HostDiagnosis| {
            let (verdict, reason, reports) = judge(&cell(None), boot, vec![], Some(host), 60, 9);
            (format!("{verdict:?}: {reason}"), reports)
        };
        let (got, reports) = judge_host(&mute(End::Silent), &outside);
        assert_eq!(
            got,
            "Error: boot-hang: the guest printed nothing in 60s and every vCPU is outside the kernel image"
        );
        assert_eq!((reports.len(), reports[0].kind, &reports[0].lines), (1, Kind::BootHang, &outside.summary));
        assert_eq!(
            judge_host(&boot(End::Silent, "", ""), &outside).0,
            "Error: boot-hang: every vCPU is outside the kernel image before the ready line"
        );
        assert_eq!(
            judge_host(&boot(End::Silent, READY, ""), &outside).0,
            "Error: infra: every vCPU is outside the kernel image and the console was silent for 60s"
        );
        let spinning = triage::HostDiagnosis { reports: vec![lockup()], ..quiet_host() };
        assert_eq!(judge_host(&mute(End::Silent), &spinning).0, "Fail: hard LOCKUP in mm_get_cid");
        // The kernel's own report stands even when the vCPUs left its image afterwards.
        let (verdict, reason, _) =
            judge(&cell(None), &boot(End::Silent, READY, ""), vec![lockup()], Some(&outside), 60, 9);
        assert_eq!(format!("{verdict:?}: {reason}"), "Fail: hard LOCKUP in mm_get_cid");
    }

    /// A guest that stopped answering over SSH: its own report names the failure when it printed
    /// one, the lost connection follows; without SSH at all the cell could not run.
    #[test]
    fn lost_connections_and_ssh_failures() {
        let lost = boot(End::LostConnection("no reply over SSH for 20s".into()), READY, "");
        let (verdict, reason, reports) = judge(&cell(None), &lost, vec![], None, 60, 9);
        assert_eq!((verdict, reason.as_str()), (Verdict::Fail, "lost connection: smoke: no reply over SSH for 20s"));
        assert_eq!(reports[0].kind, Kind::LostConnection);
        let (_, reason, reports) = judge(&cell(None), &lost, vec![lockup()], None, 60, 9);
        assert_eq!((reason.as_str(), reports[1].kind), ("hard LOCKUP in mm_get_cid", Kind::LostConnection));
        let refused = boot(End::SshFailed("host key refused".into()), READY, "");
        let (verdict, reason, _) = judge(&cell(None), &refused, vec![], None, 60, 9);
        assert_eq!((verdict, reason.as_str()), (Verdict::Error, "host key refused"));
    }

    /// A workload's own check is a report: the verdict is the violation's, not the exit code's,
    /// and a kernel report beside it keeps its place in time.
    #[test]
    fn a_workload_violation_is_the_failure() {
        let violation = |line| Report {
            title: "mm_cid shared by two running threads (unique-cid)".into(),
            ..at(Kind::RseqViolation, line, Source::Console)
        };
        let failed = || boot(End::Exited, READY, "status=fail detail=exit-1");
        check(None, failed(), vec![violation(5)], "Fail: mm_cid shared by two running threads (unique-cid)");
        let stopped = || boot(End::StoppedAfterReport, READY, "");
        check(None, stopped(), vec![violation(5)], "Fail: mm_cid shared by two running threads (unique-cid)");
        let (_, reason, reports) = judge(&cell(None), &stopped(), vec![violation(5), lockup()], None, 60, 9);
        let kinds: Vec<Kind> = reports.iter().map(|r| r.kind).collect();
        assert_eq!(
            (reason.as_str(), kinds),
            ("mm_cid shared by two running threads (unique-cid)", vec![Kind::RseqViolation, Kind::HardLockup])
        );
        assert_eq!(basis(&reports), Some(Basis::Guest));
        let console = "    1.000s| LAB-READY arch=x86_64\n    1.250s| mmcid-churn: 60 s\n    2.400s| mmcid-churn: VIOLATION check=unique-cid cid=0\n";
        assert_eq!(detection_delay(&Logs { console, workload: "" }, &[violation(3)], Some(1.0), None), Some(1.4));
    }

    /// A workload's violations over SSH (`workload.log`) take their place among the console's
    /// reports by their host times, and are detected at theirs.
    #[test]
    fn a_workload_violation_over_ssh_takes_its_place_in_time() {
        let console = "    1.000s| LAB-READY arch=aarch64\n    2.000s| [ 1.9] BUG: a\n    4.000s| [ 3.9] BUG: b\n";
        let workload = "    1.500s| w: 60 s\n    2.000s| w: VIOLATION check=a\n    3.000s| w: VIOLATION check=b\n    5.000s| w: VIOLATION check=c\n";
        let logs = Logs { console, workload };
        let (c, w) = (|l| at(Kind::Bug, l, Source::Console), |l| at(Kind::RseqViolation, l, Source::Workload));
        let order = |console: &[usize], workload: &[usize]| {
            let console = console.iter().map(|&l| c(l)).collect();
            let merged = in_time_order(console, workload.iter().map(|&l| w(l)).collect(), &logs);
            let name = |r: &Report| format!("{}{}", if r.source == Source::Console { "c" } else { "w" }, r.line);
            merged.iter().map(name).collect::<Vec<_>>().join(" ")
        };
        assert_eq!(order(&[2, 3], &[3]), "c2 w3 c3");
        assert_eq!(order(&[2, 3], &[2]), "c2 w2 c3", "a tie goes to the console");
        assert_eq!(order(&[2, 3], &[4]), "c2 c3 w4");
        assert_eq!(order(&[3], &[2, 4]), "w2 c3 w4");
        assert_eq!(order(&[], &[3, 4]), "w3 w4");
        assert_eq!(order(&[2], &[9]), "c2 w9", "a line the log lacks keeps its report last");
        assert_eq!(detection_delay(&logs, &[w(3), c(2)], Some(1.0), None), Some(2.0));
        assert_eq!(basis(&[w(3)]), Some(Basis::Guest));
        // Sampled after console line 2: the host's report comes after the guest's before it.
        let mut silent = boot(End::Silent, READY, "");
        silent.host = vec![HostSamples { console_line: 2, started_s: 3.5, ..HostSamples::default() }];
        let host = triage::HostDiagnosis { reports: vec![at(Kind::HardLockup, 2, Source::Host)], ..quiet_host() };
        let guest = in_time_order(vec![c(2), c(3)], vec![w(3)], &logs);
        let (_, reason, reports) = judge(&cell(None), &silent, guest, Some(&host), 60, 9);
        let order: Vec<String> = reports.iter().map(|r| format!("{}/{:?}", r.title, r.source)).collect();
        assert_eq!(reason, "bug@2");
        assert_eq!(order[..4], ["bug@2/Console", "rseq-violation@3/Workload", "hard-lockup@2/Host", "bug@3/Console"]);
    }

    #[test]
    fn detection_delay_reads_the_host_time_of_the_report() {
        let console = "    1.000s| LAB-READY arch=x86_64\n    1.500s| lkdtm: writing\n   17.250s| [ 16.4] watchdog: CPU1: Watchdog detected hard LOCKUP on cpu 0\n";
        let mut report = lockup();
        report.line = 3;
        assert_eq!(detection_delay(&Logs { console, workload: "" }, &[report.clone()], Some(1.0), None), Some(16.25));
        assert_eq!(detection_delay(&Logs { console, workload: "" }, &[report.clone()], None, None), None);
        assert_eq!(detection_delay(&Logs { console, workload: "" }, &[], Some(1.0), None), None);
        report.line = 9;
        assert_eq!(detection_delay(&Logs { console, workload: "" }, &[report], Some(1.0), None), None);
    }
}
