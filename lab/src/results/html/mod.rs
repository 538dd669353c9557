//! `report.html`: a run, or the comparison of two, as one self-contained page (inline CSS, JS and
//! SVG; no fetch, so it opens from a file:// URL and works offline), written beside junit.xml.
//!
//! Whatever a guest printed reaches the page through `clean` (`triage::sanitize`: no control
//! characters, no terminal escapes) and maud's escaping, which is on for every `(expr)`: console
//! text renders as text and can never open a tag or a script. Only the page's own CSS and JS go in
//! unescaped.

mod compare;
mod failures;
mod grid;
mod repro;

use std::path::{Component, Path, PathBuf};

use anyhow::Result;
use maud::{html, Markup, PreEscaped, DOCTYPE};

use crate::cache;
use crate::report::{self, CellResult};
use crate::results::compare::Comparison;
use crate::triage;

const STYLE: &str = include_str!("style.css");
const SCRIPT: &str = include_str!("script.js");

/// The files of a cell a reader may want, linked when the cell has them.
const CELL_FILES: [&str; 5] = ["console.log", "workload.log", "result.json", "host-samples.json", "qemu-command.sh"];

/// Writes `dir/report.html` for the run whose cells are `cells` (in planned order).
pub fn write_run(dir: &Path, cells: &[CellResult]) -> Result<()> {
    let name = dir.file_name().map_or_else(|| dir.display().to_string(), |n| n.to_string_lossy().into_owned());
    cache::write_atomic(&dir.join("report.html"), run_page(&name, cells).as_bytes())
}

/// Writes the comparison of the runs in `base` and `new` to `file`.
pub fn write_comparison(file: &Path, c: &Comparison, base: &Path, new: &Path) -> Result<()> {
    let title = format!("lab compare {} {}", base.display(), new.display());
    let at = file.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new("."));
    cache::write_atomic(file, page(&title, compare::body(c, base, new, at)).as_bytes())
}

fn run_page(name: &str, cells: &[CellResult]) -> String {
    let title = format!("lab run {name}");
    let tally: Vec<String> = report::tally(cells).iter().map(|(verdict, n)| format!("{n} {verdict}")).collect();
    let body = html! {
        header {
            h1 { (clean(&title)) }
            p.tally #tally { (cells.len()) " runs: " (tally.join(", ")) }
        }
        section #matrix {
            h2 { "Matrix" }
            (grid::Grid::of_run(cells).render())
        }
        (failures::section(cells))
        (repro::section(cells))
        (all_cells(cells))
    };
    page(&title, body)
}

fn page(title: &str, body: Markup) -> String {
    html! {
        (DOCTYPE)
        html lang="en" {
            head {
                meta charset="utf-8";
                meta name="viewport" content="width=device-width, initial-scale=1";
                title { (clean(title)) }
                style { (PreEscaped(STYLE)) }
            }
            body {
                (body)
                script { (PreEscaped(SCRIPT)) }
            }
        }
    }
    .into_string()
}

/// Every run, one row each: what the grid and the failures do not say (errors, skips, reasons).
fn all_cells(cells: &[CellResult]) -> Markup {
    html! {
        section #cells {
            h2 { "Cells" }
            table.cells {
                thead { tr { th { "cell" } th { "verdict" } th { "why" } th { "seconds" } th { "files" } } }
                tbody {
                    @for cell in cells {
                        tr.(verdict_class(cell)) data-cell=(cell.id) {
                            td { (run_name(cell)) }
                            td.verdict { (cell.verdict) }
                            td { (clean(&cell.reason)) }
                            td.num { (format!("{:.1}", cell.duration_s)) }
                            td { (files(cell)) }
                        }
                    }
                }
            }
        }
    }
}

/// Console text made safe to show: `triage::sanitize`, before maud escapes it.
fn clean(text: &str) -> String {
    triage::sanitize(text)
}

fn verdict_class(cell: &CellResult) -> String {
    format!("v-{}", cell.verdict.name())
}

/// `ID` or `ID run 3`.
fn run_name(cell: &CellResult) -> String {
    match cell.run {
        Some(n) => format!("{} run {n}", cell.id),
        None => cell.id.clone(),
    }
}

/// The id of a run's failure on the page, which the grid links to.
fn anchor(cell: &CellResult) -> String {
    match cell.run {
        Some(n) => format!("run-{}-{n}", cell.id),
        None => format!("run-{}", cell.id),
    }
}

fn plural(n: usize, word: &str) -> String {
    match n {
        1 => format!("1 {word}"),
        _ => format!("{n} {word}s"),
    }
}

/// `to` as seen from the directory `from`, both made absolute first (`../night-2/report.html`);
/// None when either cannot be resolved.
fn relative(from: &Path, to: &Path) -> Option<PathBuf> {
    let (from, to) = (from.canonicalize().ok()?, to.canonicalize().ok()?);
    let common = from.components().zip(to.components()).take_while(|(a, b)| a == b).count();
    let up = from.components().skip(common).map(|_| Component::ParentDir);
    Some(up.chain(to.components().skip(common)).collect())
}

/// Links to the cell's files that exist, relative to the run directory the page is in.
fn files(cell: &CellResult) -> Markup {
    let relative = report::cell_dir(Path::new(""), &cell.id, cell.run);
    html! {
        span.files {
            @for file in CELL_FILES.iter().filter(|f| cell.dir.join(f).is_file()) {
                a href=(href(&relative.join(file))) { (file) } " "
            }
        }
    }
}

/// A relative path as a URL: separators kept, every other byte outside the unreserved set
/// percent-encoded (a cell id is a matrix name, and may hold `#` or `?`).
fn href(path: &Path) -> String {
    let mut url = String::new();
    for byte in path.to_string_lossy().bytes() {
        match byte {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'~' | b'/' => url.push(byte as char),
            _ => url.push_str(&format!("%{byte:02X}")),
        }
    }
    url
}

#[cfg(test)]
mod tests;
