//! `lab compare --html`: the comparison of two runs as a page, each common cell with its change
//! (new, fixed, flaky, not significant, ...) and each failure signature new, still or gone.

use std::path::Path;

use maud::{html, Markup};

use super::{clean, href, plural, relative};
use crate::results::compare::{CellChange, Comparison, FailureChange, Side};

/// The page of `c`, to be written into the directory `at` (its links to the two runs' pages are
/// relative to it).
pub fn body(c: &Comparison, base: &Path, new: &Path, at: &Path) -> Markup {
    html! {
        header {
            h1 { "lab compare" }
            p { "base " (run_link(base, at)) " → new " (run_link(new, at)) }
            p.tally #tally { (plural(c.cells.len(), "cell")) " in common: " (c.counts()) }
            @if let Some((from, to)) = &c.kernels {
                p { "kernel " (from) " → " (to) ": cells matched by arch, vCPUs and workload" }
            }
        }
        section #changes {
            h2 { "Cells" }
            table.changes {
                thead { tr { th { "change" } th { "cell" } th { "base" } th { "new" } th { "p" } th { "why" } } }
                tbody { @for cell in &c.cells { (cell_row(cell)) } }
            }
        }
        @if !c.failures.is_empty() {
            section #failures {
                h2 { "Failures by signature" }
                ul { @for f in &c.failures { (failure_item(f)) } }
            }
        }
        @for (name, ids) in [("base", &c.only_base), ("new", &c.only_new)] {
            @if !ids.is_empty() {
                section.only data-side=(name) {
                    h2 { "Only in the " (name) " run (not compared)" }
                    p { (ids.join(", ")) }
                }
            }
        }
    }
}

/// The run's directory, linked to its `report.html` when it has one.
fn run_link(run: &Path, at: &Path) -> Markup {
    let page = run.join("report.html");
    html! {
        @match relative(at, &page).filter(|_| page.is_file()) {
            Some(link) => a href=(href(&link)) { code { (run.display()) } },
            None => code { (run.display()) },
        }
    }
}

fn cell_row(cell: &CellChange) -> Markup {
    let class = format!("change-{}", cell.change.name().split(' ').next().unwrap_or_default());
    html! {
        tr.(class) .regression[cell.change.is_regression()] data-cell=(cell.id) data-change=(cell.change.name()) {
            td.change { (cell.change.name()) }
            td { (cell.id) }
            td { (side(&cell.base, cell.p.is_some())) }
            td { (side(&cell.new, cell.p.is_some())) }
            td.num { @if let Some(p) = cell.p { (format!("{p:.3}")) } }
            td { (clean(&cell.reason())) }
        }
    }
}

/// A single run's verdict, or with repeats `failed/judged runs failed`.
fn side(side: &Side, repeated: bool) -> String {
    match (repeated, side.verdict) {
        (true, _) => format!("{}/{} failed", side.failed, side.judged),
        (false, Some(verdict)) => verdict.name().to_string(),
        (false, None) => "–".to_string(),
    }
}

fn failure_item(f: &FailureChange) -> Markup {
    let places: Vec<String> =
        f.new_where.iter().map(|((arch, vcpus), n)| format!("{arch} {vcpus} vCPUs ×{n}")).collect();
    html! {
        li.failure-change data-signature=(clean(&f.signature)) data-status=(f.status()) {
            strong { (f.status()) } " " code { (clean(&f.signature)) } " " (clean(&f.title)) ": "
            @if f.new_cells.is_empty() {
                "was in " (plural(f.base_cells.len(), "cell"))
            } @else {
                (plural(f.new_cells.len(), "cell")) " (" (places.join(", ")) ")"
                @if !f.base_cells.is_empty() { ", was in " (f.base_cells.len()) }
            }
        }
    }
}
