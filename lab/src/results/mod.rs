//! Finished runs read back: a run directory's `summary.json` (versioned) and its cells'
//! `result.json`, as the same typed `CellResult`s the run wrote, and the page that shows them
//! (`html`). What reads runs (`lab compare`, `lab report`) lives here, below `report`, and never
//! drives the pipeline.
//!
//! A run directory may have been moved (a CI artifact unpacked elsewhere): a cell's `dir` is
//! taken from where its files are now, never from the path that was written.

pub mod compare;
pub mod html;
pub mod kcidb;
pub mod merge;
pub mod series;

use std::fs;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use serde::Deserialize;

use crate::report::{self, CellResult, SUMMARY_VERSION};

/// A finished (or interrupted) run.
#[derive(Debug)]
pub struct Run {
    pub dir: PathBuf,
    /// In the order the run planned them; a `--repeat` run's runs one after another.
    pub cells: Vec<CellResult>,
}

impl Run {
    /// Whether the run repeated its cells (`--repeat`): its reports carry reproducer statistics.
    pub fn repeated(&self) -> bool {
        self.cells.iter().any(|c| c.run.is_some())
    }
}

#[derive(Deserialize)]
struct Version {
    version: Option<u32>,
}

#[derive(Deserialize)]
struct Summary {
    cells: Vec<CellResult>,
}

/// The run in `dir`, from its `summary.json`.
pub fn read(dir: &Path) -> Result<Run> {
    read_summary(dir, true)
}

/// Every report of a run directory from its cells: `summary.json` and `junit.xml` (`report`) and
/// `report.html`. What a run writes after each cell.
pub fn write_all(dir: &Path, cells: &[CellResult], repeated: bool) -> Result<()> {
    report::write_summary(dir, cells, repeated)?;
    html::write_run(dir, cells)
}

/// With `versioned` false, a summary of another version is read as far as its cells still
/// parse as this lab's (to keep its order when `gather` writes it again).
fn read_summary(dir: &Path, versioned: bool) -> Result<Run> {
    let path = dir.join("summary.json");
    if !dir.is_dir() {
        bail!("{} is not a run directory (it does not exist or is not a directory)", dir.display());
    }
    let text = fs::read_to_string(&path).with_context(|| {
        format!("cannot read {}: is {} a run directory of `lab run`?", path.display(), dir.display())
    })?;
    let Version { version } = parse(&path, &text)?;
    match version {
        _ if !versioned => {}
        Some(SUMMARY_VERSION) => {}
        Some(v) if v > SUMMARY_VERSION => bail!(
            "{}: version {v} is newer than this lab reads ({SUMMARY_VERSION}): read it with the lab that wrote it",
            path.display()
        ),
        _ => bail!(
            "{}: written by a lab older than summary version {SUMMARY_VERSION}: run `lab report {}` to rewrite it \
             from the cells' result.json",
            path.display(),
            dir.display()
        ),
    }
    let Summary { mut cells } = parse(&path, &text)?;
    for cell in &mut cells {
        relocate(dir, cell);
    }
    Ok(Run { dir: dir.to_path_buf(), cells })
}

/// The run in `dir`, from its cells' own `result.json` files, in the order of its `summary.json`
/// where that still reads (which also keeps the cells a signal kept from starting: they have no
/// files). Cells the summary does not know come last, by id and run. The second value says why
/// the summary could not give the order, when it could not.
pub fn gather(dir: &Path) -> Result<(Run, Option<String>)> {
    let (listed, why) = match read_summary(dir, false) {
        Ok(run) => (run.cells, None),
        Err(e) => (Vec::new(), Some(format!("{e:#}"))),
    };
    let mut found = Vec::new();
    let cells_dir = dir.join("cells");
    for path in result_files(&cells_dir)? {
        let text = fs::read_to_string(&path).with_context(|| format!("cannot read {}", path.display()))?;
        let mut cell: CellResult = parse(&path, &text)?;
        relocate(dir, &mut cell);
        found.push(cell);
    }
    if listed.is_empty() && found.is_empty() {
        bail!("{} holds no cells (no summary.json, nothing under cells/): is it a run directory?", dir.display());
    }
    found.sort_by(|a, b| (&a.id, a.run).cmp(&(&b.id, b.run)));
    let mut cells: Vec<CellResult> = listed
        .into_iter()
        .map(|old| match found.iter().position(|f| f.id == old.id && f.run == old.run) {
            Some(i) => found.remove(i),
            None => old,
        })
        .collect();
    cells.append(&mut found);
    Ok((Run { dir: dir.to_path_buf(), cells }, why))
}

/// Writes the run's reports (summary.json, junit.xml, report.html) again, each failure's console
/// excerpt taken from its cell's console.log as a run would take it.
pub fn write_reports(run: &mut Run) -> Result<()> {
    add_excerpts(run);
    write_all(&run.dir, &run.cells, run.repeated())
}

/// Each cell's console excerpt, which summary.json does not keep, from its console.log.
pub fn add_excerpts(run: &mut Run) {
    for cell in &mut run.cells {
        if let Ok(console) = fs::read(cell.dir.join("console.log")) {
            cell.excerpt = report::excerpt(&String::from_utf8_lossy(&console), &cell.reports);
        }
    }
}

/// `cells/<id>/result.json` and `cells/<id>/run-NNN/result.json`.
fn result_files(cells_dir: &Path) -> Result<Vec<PathBuf>> {
    let mut files = Vec::new();
    let Ok(entries) = fs::read_dir(cells_dir) else { return Ok(files) };
    for cell in entries {
        let cell = cell.with_context(|| format!("cannot list {}", cells_dir.display()))?.path();
        if cell.join("result.json").is_file() {
            files.push(cell.join("result.json"));
        }
        let Ok(runs) = fs::read_dir(&cell) else { continue };
        for run in runs.flatten() {
            let result = run.path().join("result.json");
            if run.file_name().to_string_lossy().starts_with("run-") && result.is_file() {
                files.push(result);
            }
        }
    }
    Ok(files)
}

fn relocate(dir: &Path, cell: &mut CellResult) {
    cell.dir = report::cell_dir(dir, &cell.id, cell.run);
}

/// JSON errors as `FILE:LINE:COLUMN: message`, like the matrix's.
fn parse<T: serde::de::DeserializeOwned>(path: &Path, text: &str) -> Result<T> {
    serde_json::from_str(text).map_err(|e| {
        let message = e.to_string();
        // serde_json appends " at line L column C"; the position goes in front instead.
        let message = message.split(" at line ").next().unwrap_or(&message);
        anyhow::anyhow!("{}:{}:{}: {message}", path.display(), e.line(), e.column())
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run_dir(name: &str, summary: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("lab-results-{}-{name}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(&dir).unwrap();
        fs::write(dir.join("summary.json"), summary).unwrap();
        dir
    }

    fn check_read(name: &str, summary: &str, want: &str) {
        let dir = run_dir(name, summary);
        let got = match read(&dir) {
            Ok(run) => format!("{} cells", run.cells.len()),
            Err(e) => format!("{e:#}").replace(&dir.display().to_string(), "DIR"),
        };
        fs::remove_dir_all(&dir).unwrap();
        assert_eq!(got, want, "{summary}");
    }

    #[test]
    fn a_summary_is_read_at_its_version_only() {
        check_read("current", r#"{"version": 2, "cells": []}"#, "0 cells");
        check_read(
            "newer",
            r#"{"version": 3, "cells": []}"#,
            "DIR/summary.json: version 3 is newer than this lab reads (2): read it with the lab that wrote it",
        );
        for (case, older) in [("older", r#"{"cells": []}"#), ("version 1", r#"{"version": 1, "cells": []}"#)] {
            check_read(
                case,
                older,
                "DIR/summary.json: written by a lab older than summary version 2: run `lab report DIR` to rewrite it \
                 from the cells' result.json",
            );
        }
        check_read("broken", "{\"version\": 2,\n \"cells\": [}", "DIR/summary.json:2:12: expected value");
        check_read(
            "wrong",
            "{\"version\": 2, \"cells\": [{\"id\": 3}]}",
            "DIR/summary.json:1:33: invalid type: integer `3`, expected a string",
        );
    }
}
