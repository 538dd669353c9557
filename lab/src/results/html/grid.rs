//! The matrix as a grid: a row per kernel and arch, a column per workload and vCPU count, a tile
//! per cell coloured by its verdict or, over a `--repeat`, by how often it failed. The axes are
//! values the caller derives from a cell, so other layouts (a series' steps as columns) fit.

use std::collections::HashMap;
use std::path::Path;

use maud::{html, Markup};

use super::{anchor, clean, href, verdict_class};
use crate::report::{self, CellResult};
use crate::vocab::Verdict;

/// A row's or column's place: the group it is shown under, its own label, and its rank in the
/// group (vCPU counts in numeric order); groups keep the order the run first met them in.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Axis {
    pub group: String,
    pub label: String,
    pub rank: u32,
}

pub struct Grid<'a> {
    rows: Vec<Axis>,
    cols: Vec<Axis>,
    /// The runs at each row and column, in run order.
    tiles: HashMap<(Axis, Axis), Vec<&'a CellResult>>,
}

impl<'a> Grid<'a> {
    /// Kernel × arch rows, workload × vCPUs columns.
    pub fn of_run(cells: &'a [CellResult]) -> Grid<'a> {
        Grid::build(
            cells,
            |c| Axis { group: c.kernel.clone(), label: c.arch.to_string(), rank: 0 },
            |c| Axis { group: c.workload.clone(), label: c.vcpus.to_string(), rank: c.vcpus },
        )
    }

    pub fn build(
        cells: &'a [CellResult],
        row: impl Fn(&CellResult) -> Axis,
        col: impl Fn(&CellResult) -> Axis,
    ) -> Grid<'a> {
        let (mut rows, mut cols) = (Vec::new(), Vec::new());
        let mut tiles: HashMap<(Axis, Axis), Vec<&CellResult>> = HashMap::new();
        for cell in cells {
            let (r, c) = (row(cell), col(cell));
            for (axes, axis) in [(&mut rows, &r), (&mut cols, &c)] {
                if !axes.contains(axis) {
                    axes.push(axis.clone());
                }
            }
            tiles.entry((r, c)).or_default().push(cell);
        }
        sort(&mut rows);
        sort(&mut cols);
        Grid { rows, cols, tiles }
    }

    pub fn render(&self) -> Markup {
        html! {
            table.grid #grid {
                thead {
                    tr {
                        th.corner colspan="2" rowspan="2" {}
                        @for (group, span) in spans(&self.cols) { th.group colspan=(span) { (clean(group)) } }
                    }
                    tr { @for col in &self.cols { th.label { (clean(&col.label)) } } }
                }
                tbody {
                    @for (i, row) in self.rows.iter().enumerate() {
                        tr {
                            @if i == 0 || self.rows[i - 1].group != row.group {
                                th.group rowspan=(spans(&self.rows[i..])[0].1) { (clean(&row.group)) }
                            }
                            th.label { (clean(&row.label)) }
                            @for col in &self.cols {
                                @match self.tiles.get(&(row.clone(), col.clone())) {
                                    Some(runs) => (tile(runs)),
                                    None => td.empty {},
                                }
                            }
                        }
                    }
                }
            }
        }
    }
}

/// Groups in first-seen order (a stable sort keeps it), ranks in order within a group.
fn sort(axes: &mut [Axis]) {
    let mut groups: Vec<String> = Vec::new();
    for axis in axes.iter() {
        if !groups.contains(&axis.group) {
            groups.push(axis.group.clone());
        }
    }
    axes.sort_by_key(|a| (groups.iter().position(|g| *g == a.group), a.rank));
}

/// Each run of equal groups, with its length.
fn spans(axes: &[Axis]) -> Vec<(&str, usize)> {
    let mut spans: Vec<(&str, usize)> = Vec::new();
    for axis in axes {
        match spans.last_mut() {
            Some((group, n)) if *group == axis.group => *n += 1,
            _ => spans.push((&axis.group, 1)),
        }
    }
    spans
}

/// One cell's tile: its verdict, or `failed/judged` over its runs.
fn tile(runs: &[&CellResult]) -> Markup {
    let first = runs[0];
    if first.run.is_none() {
        let target = match first.verdict {
            Verdict::Fail | Verdict::Timeout => Some(format!("#{}", anchor(first))),
            _ if first.dir.join("console.log").is_file() => {
                Some(href(&report::cell_dir(Path::new(""), &first.id, None).join("console.log")))
            }
            _ => None,
        };
        return html! {
            td.tile.(verdict_class(first)) #{"tile-" (first.id)} data-cell=(first.id) data-verdict=(first.verdict)
                title=(clean(&first.reason)) {
                @match target {
                    Some(target) => a href=(target) { (first.verdict) },
                    None => (first.verdict),
                }
            }
        };
    }
    let judged: Vec<&&CellResult> = runs.iter().filter(|c| c.verdict.judges_the_kernel()).collect();
    let failed = judged.iter().filter(|c| matches!(c.verdict, Verdict::Fail | Verdict::Timeout)).count();
    let style = match judged.len() {
        0 => String::new(),
        n => format!("background: {}", rate_colour(failed as f64 / n as f64)),
    };
    html! {
        td.tile.repeated.v-error[judged.is_empty()] #{"tile-" (first.id)} data-cell=(first.id)
            data-failed=(failed) data-judged=(judged.len()) style=(style)
            title=(format!("{failed} of {} judged runs failed ({} runs)", judged.len(), runs.len())) {
            a href={"#repro-" (first.id)} { (failed) "/" (judged.len()) }
        }
    }
}

/// Green for never, red for always, amber between: any failure at all is visible.
fn rate_colour(rate: f64) -> String {
    if rate == 0.0 {
        return "var(--pass)".to_string();
    }
    let hue = 45.0 * (1.0 - rate);
    format!("hsl({hue:.0}, 85%, {:.0}%)", 72.0 - 12.0 * rate)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::report::sample_cell;

    /// `check(cells, want)`: the grid's rows and columns as `group/label` and where each cell's
    /// tile is, `id@row,col`.
    fn check(cells: &[(&str, u32, &str)], want: &str) {
        let cells: Vec<CellResult> = cells
            .iter()
            .map(|&(arch, vcpus, workload)| {
                let mut cell = sample_cell(Verdict::Pass, "ok", "");
                (cell.arch, cell.vcpus, cell.workload) = (arch.parse().unwrap(), vcpus, workload.into());
                cell.id = format!("k-{arch}-{vcpus}cpu-{workload}");
                cell
            })
            .collect();
        let grid = Grid::of_run(&cells);
        let names = |axes: &[Axis]| axes.iter().map(|a| format!("{}/{}", a.group, a.label)).collect::<Vec<_>>();
        let got = format!("rows {:?} cols {:?}", names(&grid.rows), names(&grid.cols));
        assert_eq!(got, want);
    }

    #[test]
    fn rows_by_kernel_and_arch_columns_by_workload_then_vcpus() {
        check(&[], "rows [] cols []");
        check(
            &[("x86_64", 4, "smoke"), ("x86_64", 1, "smoke"), ("x86_64", 4, "churn"), ("aarch64", 16, "smoke")],
            r#"rows ["k/x86_64", "k/aarch64"] cols ["smoke/1", "smoke/4", "smoke/16", "churn/4"]"#,
        );
    }

    #[test]
    fn repeats_are_coloured_by_how_often_they_failed() {
        let check = |rate: f64, want: &str| assert_eq!(rate_colour(rate), want, "{rate}");
        check(0.0, "var(--pass)");
        check(0.05, "hsl(43, 85%, 71%)");
        check(0.5, "hsl(22, 85%, 66%)");
        check(1.0, "hsl(0, 85%, 60%)");
    }
}
