//! From a matrix to the list of cells to run: kernel x arch x vcpus x workload, filtered.
//!
//! Pure data: nothing here touches the disk, so every rule is unit-tested.

use std::str::FromStr;

use anyhow::{bail, Result};
use serde::{Deserialize, Serialize};

use crate::arch::Arch;
use crate::matrix::{Matrix, Workload};

#[derive(Debug, Clone)]
pub struct Cell {
    /// Stable, file-name-safe: `<kernel>-<arch>-<n>cpu-<workload>`.
    pub id: String,
    /// Index into the run's kernel recipes, and the recipe's name.
    pub kernel: usize,
    pub kernel_name: String,
    pub arch: Arch,
    pub vcpus: u32,
    pub workload: Workload,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FilterKey {
    Kernel,
    Arch,
    Vcpus,
    Workload,
}

impl FilterKey {
    const ALL: [FilterKey; 4] = [FilterKey::Kernel, FilterKey::Arch, FilterKey::Vcpus, FilterKey::Workload];

    /// As written on the command line, and in run.json.
    fn name(self) -> &'static str {
        match self {
            FilterKey::Kernel => "kernel",
            FilterKey::Arch => "arch",
            FilterKey::Vcpus => "vcpus",
            FilterKey::Workload => "workload",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Filter {
    key: FilterKey,
    value: String,
}

impl FromStr for Filter {
    type Err = String;

    fn from_str(s: &str) -> Result<Filter, String> {
        let (key, value) = s.split_once('=').ok_or_else(|| format!("`{s}` is not KEY=VALUE"))?;
        let key = FilterKey::ALL
            .into_iter()
            .find(|k| k.name() == key)
            .ok_or_else(|| format!("unknown filter key `{key}`: use kernel, arch, vcpus or workload"))?;
        if key == FilterKey::Arch {
            value.parse::<Arch>().map_err(|e| e.to_string())?;
        }
        if key == FilterKey::Vcpus && value.parse::<u32>().is_err() {
            return Err(format!("vcpus filter `{value}` is not a number"));
        }
        Ok(Filter { key, value: value.to_string() })
    }
}

impl std::fmt::Display for Filter {
    fn fmt(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        write!(f, "{}={}", self.key.name(), self.value)
    }
}

impl Cell {
    fn field(&self, key: FilterKey) -> String {
        match key {
            FilterKey::Kernel => self.kernel_name.clone(),
            FilterKey::Arch => self.arch.to_string(),
            FilterKey::Vcpus => self.vcpus.to_string(),
            FilterKey::Workload => self.workload.name.clone(),
        }
    }

    /// Filters with the same key are alternatives; different keys must all hold.
    fn selected_by(&self, filters: &[Filter]) -> bool {
        FilterKey::ALL.into_iter().all(|key| {
            let mut wanted = filters.iter().filter(|f| f.key == key).peekable();
            wanted.peek().is_none() || wanted.any(|f| f.value == self.field(key))
        })
    }
}

/// `--shard K/N`: the K-th of N parts of a run, numbered from 1 as CI runners number their jobs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Shard {
    pub index: u32,
    pub total: u32,
}

impl FromStr for Shard {
    type Err = String;

    fn from_str(s: &str) -> Result<Shard, String> {
        let (k, n) = s.split_once('/').ok_or_else(|| format!("shard `{s}` is not K/N (e.g. 2/3)"))?;
        let number = |v: &str| v.trim().parse::<u32>().map_err(|_| format!("shard `{s}`: `{v}` is not a number"));
        let (index, total) = (number(k)?, number(n)?);
        if total == 0 || index == 0 || index > total {
            return Err(format!("shard `{s}`: K must be 1 to N (shards are numbered from 1)"));
        }
        Ok(Shard { index, total })
    }
}

impl std::fmt::Display for Shard {
    fn fmt(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        write!(f, "{}/{}", self.index, self.total)
    }
}

/// Host CPU-seconds a cell is expected to take when no earlier run says: its vCPUs (each a host
/// thread under TCG) times a boot and its workload's `seconds:` (30 when it has none).
pub fn expected_cost(cell: &Cell) -> f64 {
    const BOOT_S: f64 = 15.0;
    let seconds = cell.workload.args.get("seconds").and_then(|v| v.as_f64()).unwrap_or(30.0);
    f64::from(cell.vcpus) * (BOOT_S + seconds)
}

/// How many cells boot at once (`--jobs`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Jobs {
    /// As many as keep the running guests' vCPUs within `VCPUS_PER_CORE` per host core.
    Auto,
    /// Up to this many cells, whatever their vCPUs.
    Cells(usize),
}

impl FromStr for Jobs {
    type Err = String;

    fn from_str(s: &str) -> Result<Jobs, String> {
        match s {
            "auto" => Ok(Jobs::Auto),
            _ => match s.parse::<usize>() {
                Ok(n) if n >= 1 => Ok(Jobs::Cells(n)),
                _ => Err(format!("`{s}` is neither `auto` nor a number of cells (1 or more)")),
            },
        }
    }
}

/// Guest vCPUs per host core that `--jobs auto` keeps running. Under TCG each vCPU is a host
/// thread: at two per core each still gets half a core when all spin, far from starving the
/// guest's 10 s lockup or 21 s RCU stall detectors, while boots, SSH waits and idle vCPUs leave
/// room a single guest would waste (measured in BENCHMARKS.md, "The host's cores").
pub const VCPUS_PER_CORE: u32 = 2;

/// What may run at once.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Capacity {
    pub cells: usize,
    pub vcpus: u32,
}

impl Jobs {
    pub fn capacity(self, cores: usize) -> Capacity {
        match self {
            Jobs::Auto => Capacity { cells: usize::MAX, vcpus: VCPUS_PER_CORE * cores.max(1) as u32 },
            Jobs::Cells(n) => Capacity { cells: n, vcpus: u32::MAX },
        }
    }
}

/// The queue's order: costliest first (`expected_cost`), plan order among equals, so the long
/// cells start early and the short ones fill the gaps at the end (longest processing time first).
pub fn by_cost(cells: &[Cell]) -> Vec<usize> {
    let mut order: Vec<usize> = (0..cells.len()).collect();
    order.sort_by(|&a, &b| expected_cost(&cells[b]).total_cmp(&expected_cost(&cells[a])).then(a.cmp(&b)));
    order
}

/// Which queued run boots next, given each queued run's vCPUs in queue order and what runs
/// already: the first that fits in what is left; with nothing running, the first whatever its
/// size (a cell larger than the capacity runs alone). None: wait for a running cell to end.
pub fn next_fit(queued: &[u32], running_cells: usize, running_vcpus: u32, capacity: Capacity) -> Option<usize> {
    match (queued.is_empty(), running_cells) {
        (true, _) => None,
        (false, 0) => Some(0),
        (false, n) if n >= capacity.cells => None,
        (false, _) => queued.iter().position(|&v| running_vcpus.saturating_add(v) <= capacity.vcpus),
    }
}

/// The cells of `shard`, in plan order. Every cell goes to exactly one shard and to the same one
/// on every runner, since the assignment depends only on the cells and their costs: heaviest
/// first (equal costs in the order of a hash of the id), each to the shard with the least cost
/// so far (the lowest-numbered among equals).
pub fn shard(cells: Vec<Cell>, shard: Shard, cost: &dyn Fn(&Cell) -> f64) -> Vec<Cell> {
    let hash = |id: &str| crate::cache::KeyBuilder::default().part("cell", id.as_bytes()).finish();
    let mut order: Vec<(f64, String, usize)> =
        cells.iter().enumerate().map(|(i, c)| (cost(c), hash(&c.id), i)).collect();
    order.sort_by(|a, b| b.0.total_cmp(&a.0).then_with(|| a.1.cmp(&b.1)));
    let mut load = vec![0.0f64; shard.total as usize];
    let mut mine = vec![false; cells.len()];
    for (c, _, i) in order {
        let least = (0..load.len()).min_by(|&a, &b| load[a].total_cmp(&load[b])).unwrap_or(0);
        load[least] += c;
        mine[i] = least + 1 == shard.index as usize;
    }
    cells.into_iter().zip(mine).filter_map(|(cell, mine)| mine.then_some(cell)).collect()
}

/// `kernel_names[i]` is the name of the matrix's i-th kernel recipe.
pub fn cells(matrix: &Matrix, kernel_names: &[String], filters: &[Filter]) -> Result<Vec<Cell>> {
    let mut ids = std::collections::BTreeSet::new();
    let mut cells = Vec::new();
    for (kernel, kernel_name) in kernel_names.iter().enumerate() {
        for &arch in &matrix.arches {
            for workload in &matrix.workloads {
                for &vcpus in workload.vcpus.as_ref().unwrap_or(&matrix.vcpus) {
                    let id = format!("{kernel_name}-{arch}-{vcpus}cpu-{}", workload.name);
                    if !ids.insert(id.clone()) {
                        bail!("cell `{id}` appears twice: two kernel recipes share a name, or vcpus repeats");
                    }
                    let cell =
                        Cell { id, kernel, kernel_name: kernel_name.clone(), arch, vcpus, workload: workload.clone() };
                    if cell.selected_by(filters) {
                        cells.push(cell);
                    }
                }
            }
        }
    }
    if cells.is_empty() {
        bail!("no cell of the matrix matches the filters; `lab run --list` shows the cells");
    }
    Ok(cells)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::matrix::parse;

    const MATRIX: &str = "
kernels: [{recipe: a.yaml}, {recipe: b.yaml}]
arches: [x86_64, aarch64, ppc64le]
vcpus: [1, 2, 4]
workloads:
  - name: smoke
  - name: hl
    program: lkdtm
    vcpus: [2]
";

    #[test]
    fn the_next_run_to_boot() {
        let auto = Jobs::Auto.capacity(2);
        assert_eq!(auto, Capacity { cells: usize::MAX, vcpus: 4 });
        // (queued vCPUs, running cells, running vCPUs, capacity, the run that boots)
        type Case = (&'static [u32], usize, u32, Capacity, Option<usize>);
        let cases: &[Case] = &[
            (&[], 0, 0, auto, None),
            (&[4, 2, 1], 0, 0, auto, Some(0)),
            (&[8], 0, 0, auto, Some(0)),
            (&[4, 2, 1], 1, 2, auto, Some(1)),
            (&[4, 2, 1], 1, 3, auto, Some(2)),
            (&[4, 2, 2], 2, 4, auto, None),
            (&[4], 1, 1, auto, None),
            (&[4, 4], 1, 4, Jobs::Cells(2).capacity(2), Some(0)),
            (&[1], 2, 2, Jobs::Cells(2).capacity(2), None),
            (&[1], 1, 1, Jobs::Cells(1).capacity(2), None),
        ];
        for &(queued, cells, vcpus, capacity, want) in cases {
            assert_eq!(next_fit(queued, cells, vcpus, capacity), want, "{queued:?} {cells} {vcpus} {capacity:?}");
        }
    }

    #[test]
    fn jobs_from_the_command_line() {
        assert_eq!("auto".parse(), Ok(Jobs::Auto));
        assert_eq!("3".parse(), Ok(Jobs::Cells(3)));
        for bad in ["0", "-1", "two", ""] {
            let err = bad.parse::<Jobs>().unwrap_err();
            assert!(err.contains("neither `auto` nor a number of cells"), "{bad}: {err}");
        }
    }

    #[test]
    fn cells_queue_costliest_first() {
        let programs = ["smoke", "lkdtm"].into_iter().map(String::from).collect();
        let matrix = parse(
            "kernels: [{recipe: a.yaml}]\narches: [x86_64]\nvcpus: [1, 4]\nworkloads:\n  - name: smoke\n    args: {seconds: 5}\n  - name: hl\n    program: lkdtm\n    vcpus: [2]\n",
            &programs,
        )
        .unwrap();
        let cells = cells(&matrix, &["k".to_string()], &[]).unwrap();
        let order: Vec<&str> = by_cost(&cells).into_iter().map(|i| cells[i].id.as_str()).collect();
        // hl at 2 vCPUs has no seconds: 2 x (15 + 30) = 90; smoke 4 x 20 = 80, 1 x 20 = 20.
        assert_eq!(order, ["k-x86_64-2cpu-hl", "k-x86_64-4cpu-smoke", "k-x86_64-1cpu-smoke"]);
    }

    fn check(filters: &[&str], expect: &[&str]) {
        let programs = ["smoke", "lkdtm"].into_iter().map(String::from).collect();
        let matrix = parse(MATRIX, &programs).unwrap();
        let filters: Vec<Filter> = filters.iter().map(|f| f.parse().unwrap()).collect();
        let names = ["stock".to_string(), "bad".to_string()];
        let got: Vec<String> = match cells(&matrix, &names, &filters) {
            Ok(cells) => cells.into_iter().map(|c| c.id).collect(),
            Err(e) => vec![format!("error: {e}")],
        };
        assert_eq!(got, expect);
    }

    #[test]
    fn filters_select_cells() {
        check(&["kernel=bad", "arch=ppc64le", "workload=hl"], &["bad-ppc64le-2cpu-hl"]);
        check(
            &["kernel=stock", "arch=aarch64", "workload=smoke"],
            &["stock-aarch64-1cpu-smoke", "stock-aarch64-2cpu-smoke", "stock-aarch64-4cpu-smoke"],
        );
        check(
            &["kernel=stock", "vcpus=4", "arch=x86_64", "arch=aarch64"],
            &["stock-x86_64-4cpu-smoke", "stock-aarch64-4cpu-smoke"],
        );
        check(
            &["vcpus=4", "workload=hl"],
            &["error: no cell of the matrix matches the filters; `lab run --list` shows the cells"],
        );
    }

    #[test]
    fn whole_matrix_counts() {
        let programs = ["smoke", "lkdtm"].into_iter().map(String::from).collect();
        let matrix = parse(MATRIX, &programs).unwrap();
        let names = ["stock".to_string(), "bad".to_string()];
        // 2 kernels x 3 arches x (3 smoke vcpus + 1 hl vcpus)
        assert_eq!(cells(&matrix, &names, &[]).unwrap().len(), 24);
    }

    #[test]
    fn bad_filters_are_refused() {
        for (input, expect) in [
            ("arch", "is not KEY=VALUE"),
            ("cpu=4", "unknown filter key `cpu`"),
            ("arch=arm64", "unknown architecture `arm64`"),
            ("vcpus=four", "not a number"),
        ] {
            assert!(input.parse::<Filter>().unwrap_err().contains(expect), "{input}");
        }
    }

    #[test]
    fn shards_split_the_cells_once_each_balanced_by_cost() {
        let programs = ["smoke", "lkdtm"].into_iter().map(String::from).collect();
        let matrix = parse(MATRIX, &programs).unwrap();
        let all = cells(&matrix, &["stock".to_string(), "bad".to_string()], &[]).unwrap();
        let cost = |c: &Cell| f64::from(c.vcpus);
        for total in [1, 2, 3, 5, 24, 30] {
            let parts: Vec<Vec<Cell>> =
                (1..=total).map(|index| shard(all.clone(), Shard { index, total }, &cost)).collect();
            let mut ids: Vec<&str> = parts.iter().flatten().map(|c| c.id.as_str()).collect();
            ids.sort();
            let mut want: Vec<&str> = all.iter().map(|c| c.id.as_str()).collect();
            want.sort();
            assert_eq!(ids, want, "{total} shards: every cell once");
            let loads: Vec<f64> = parts.iter().map(|p| p.iter().map(cost).sum()).collect();
            let (max, min) =
                (loads.iter().cloned().fold(0.0, f64::max), loads.iter().cloned().fold(f64::MAX, f64::min));
            assert!(max - min <= 4.0, "{total} shards unbalanced: {loads:?}");
        }
        // 24 cells of 2 kernels x 3 arches x (1+2+4 smoke, 2 hl): cost 54, 18 a shard.
        let three: Vec<f64> =
            (1..=3).map(|index| shard(all.clone(), Shard { index, total: 3 }, &cost).iter().map(cost).sum()).collect();
        assert_eq!(three, [18.0, 18.0, 18.0]);
        let again = shard(all.clone(), Shard { index: 2, total: 3 }, &cost);
        let ids = |cells: &[Cell]| cells.iter().map(|c| c.id.clone()).collect::<Vec<_>>();
        assert_eq!(ids(&again), ids(&shard(all.clone(), Shard { index: 2, total: 3 }, &cost)), "stable");
        let plan_order: Vec<String> = ids(&all).into_iter().filter(|id| ids(&again).contains(id)).collect();
        assert_eq!(ids(&again), plan_order, "in plan order");
    }

    #[test]
    fn shard_arguments() {
        let check = |s: &str, want: Result<(u32, u32), &str>| {
            let got = s.parse::<Shard>().map(|sh| (sh.index, sh.total));
            assert_eq!(got.map_err(|e| e.to_string()), want.map_err(String::from), "{s}");
        };
        check("1/1", Ok((1, 1)));
        check("3/8", Ok((3, 8)));
        check("0/3", Err("shard `0/3`: K must be 1 to N (shards are numbered from 1)"));
        check("4/3", Err("shard `4/3`: K must be 1 to N (shards are numbered from 1)"));
        check("2", Err("shard `2` is not K/N (e.g. 2/3)"));
        check("a/3", Err("shard `a/3`: `a` is not a number"));
    }
}
