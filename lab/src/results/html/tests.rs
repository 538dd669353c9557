//! The page's pieces as tables of cases: hostile console text renders as text wherever a cell
//! puts it, failures group by signature with their counts, report lines are marked in excerpts.

use super::failures::{groups, marked};
use super::*;
use crate::arch::Arch;
use crate::report::sample_cell;
use crate::triage::Report;
use crate::vocab::{Kind, Verdict};

/// A failed cell on `arch` with `vcpus`, its report titled `title` under `signature`.
fn failed(arch: Arch, vcpus: u32, signature: &str, title: &str) -> CellResult {
    let mut cell = sample_cell(Verdict::Fail, title, "");
    cell.arch = arch;
    cell.vcpus = vcpus;
    cell.id = format!("k-{arch}-{vcpus}cpu-{}", signature.replace(':', "-"));
    let mut report = Report::from_lab(Kind::HardLockup, title.into(), "", 1, vec![]);
    report.signature = signature.into();
    cell.reports.push(report);
    cell
}

const HOSTILE: &str = "<script>alert(1)</script>\u{0}\u{1b}[31mred\u{1b}[0m</pre>\"'&amp;\u{fffd}";

/// Puts the hostile text where `place` says and renders the page.
fn page_with(place: &str) -> String {
    let mut cell = failed(Arch::X86_64, 2, "hard-lockup:mm_get_cid", "hard LOCKUP");
    match place {
        "reason" => cell.reason = HOSTILE.into(),
        "title" => cell.reports[0].title = HOSTILE.into(),
        "signature" => cell.reports[0].signature = HOSTILE.into(),
        "report line" => cell.reports[0].lines = vec![HOSTILE.into()],
        "excerpt" => cell.excerpt = HOSTILE.into(),
        "workload" => cell.workload = HOSTILE.into(),
        "kernel" => cell.kernel = HOSTILE.into(),
        _ => unreachable!("{place}"),
    }
    run_page(HOSTILE, &[sample_cell(Verdict::Pass, "ok", ""), cell])
}

#[test]
fn hostile_text_renders_as_text_wherever_a_cell_puts_it() {
    for place in ["reason", "title", "signature", "report line", "excerpt", "workload", "kernel"] {
        let page = page_with(place);
        assert_eq!(page.matches("<script>").count(), 1, "{place}: only the page's own script opens one");
        assert!(page.contains("&lt;script&gt;alert(1)&lt;/script&gt;"), "{place}: shown as text");
        assert!(!page.contains("</pre>\""), "{place}: a closing tag from the console");
        let controls: Vec<char> = page.chars().filter(|&c| c < ' ' && c != '\n').collect();
        assert!(controls.is_empty(), "{place}: control characters {controls:?}");
        assert!(page.contains("red"), "{place}: the text around an escape sequence stays");
    }
}

/// `check(cells, want)`: the groups' headlines, one a line, most widespread first.
fn check_groups(cells: &[CellResult], want: &[&str]) {
    let got: Vec<String> = groups(cells).iter().map(|g| g.headline()).collect();
    assert_eq!(got, want);
}

#[test]
fn failures_group_by_signature_with_counts_per_arch_and_vcpus() {
    let lockup = |arch, vcpus| failed(arch, vcpus, "hard-lockup:mm_get_cid", "hard LOCKUP in mm_get_cid");
    let panic = |arch| failed(arch, 2, "panic:lkdtm_PANIC", "panic: dumptest");
    let repeat = |mut cell: CellResult, n| {
        cell.run = Some(n);
        cell
    };
    use Arch::{Aarch64, Ppc64le, X86_64};
    check_groups(&[], &[]);
    check_groups(&[sample_cell(Verdict::Pass, "ok", ""), sample_cell(Verdict::Error, "QEMU failed", "")], &[]);
    check_groups(
        &[panic(X86_64), lockup(X86_64, 4), lockup(Ppc64le, 4), panic(Aarch64), lockup(Aarch64, 1)],
        &[
            "hard LOCKUP in mm_get_cid: 3 cells (x86_64 ×1, aarch64 ×1, ppc64le ×1; 1 vCPUs ×1, 4 vCPUs ×2)",
            "panic: dumptest: 2 cells (x86_64 ×1, aarch64 ×1; 2 vCPUs ×2)",
        ],
    );
    check_groups(
        &[repeat(lockup(X86_64, 4), 1), repeat(lockup(X86_64, 4), 2), repeat(lockup(Aarch64, 4), 1)],
        &["hard LOCKUP in mm_get_cid: 2 cells, 3 runs (x86_64 ×1, aarch64 ×1; 4 vCPUs ×2)"],
    );
    let timeout = sample_cell(Verdict::Timeout, "workload deadline", "");
    check_groups(&[timeout], &["workload deadline: 1 cell (x86_64 ×1; 2 vCPUs ×1)"]);
}

#[test]
fn the_reports_own_lines_are_marked_in_the_excerpt() {
    let check = |excerpt: &str, report_lines: &[&str], want: &str| {
        let mut report = Report::from_lab(Kind::HardLockup, String::new(), "", 1, vec![]);
        report.lines = report_lines.iter().map(|l| l.to_string()).collect();
        let got: Vec<String> =
            marked(excerpt, &[report]).iter().map(|(own, _)| if *own { "*" } else { "." }.to_string()).collect();
        assert_eq!(got.concat(), want, "{excerpt:?}");
    };
    check("", &["a"], "");
    check("1.0s| boot\n1.1s| [ 2.0] watchdog: hard LOCKUP\n1.2s| RIP: x", &["watchdog: hard LOCKUP", "RIP: x"], ".**");
    // In order: a line the report has only later is not taken before.
    check("RIP: x\nwatchdog: hard LOCKUP\nother\nRIP: x", &["watchdog: hard LOCKUP", "RIP: x"], ".*.*");
    check("a\nb", &[], "..");
}

#[test]
fn links_between_pages_are_relative() {
    let root = std::env::temp_dir().join(format!("lab-html-relative-{}", std::process::id()));
    for dir in ["runs/night-1/cells", "runs/night-2", "pages"] {
        std::fs::create_dir_all(root.join(dir)).unwrap();
    }
    let check = |from: &str, to: &str, want: Option<&str>| {
        let got = relative(&root.join(from), &root.join(to));
        assert_eq!(got.as_deref(), want.map(Path::new), "{from} -> {to}");
    };
    check("runs/night-1", "runs/night-2", Some("../night-2"));
    check("pages", "runs/night-1/cells", Some("../runs/night-1/cells"));
    check("runs", "runs/night-2", Some("night-2"));
    check("runs/night-1/cells", "runs", Some("../.."));
    check("runs", "gone", None);
    std::fs::remove_dir_all(&root).unwrap();
    let check = |path: &str, want: &str| assert_eq!(href(Path::new(path)), want);
    check("cells/k-x86_64-2cpu-smoke/console.log", "cells/k-x86_64-2cpu-smoke/console.log");
    check("../a b/#1?x", "../a%20b/%231%3Fx");
}
