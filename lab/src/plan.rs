//! From a matrix to the list of cells to run: kernel x arch x vcpus x workload, filtered.
//!
//! Pure data: nothing here touches the disk, so every rule is unit-tested.

use std::str::FromStr;

use anyhow::{bail, Result};

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

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Filter {
    key: FilterKey,
    value: String,
}

impl FromStr for Filter {
    type Err = String;

    fn from_str(s: &str) -> Result<Filter, String> {
        let (key, value) = s.split_once('=').ok_or_else(|| format!("`{s}` is not KEY=VALUE"))?;
        let key = match key {
            "kernel" => FilterKey::Kernel,
            "arch" => FilterKey::Arch,
            "vcpus" => FilterKey::Vcpus,
            "workload" => FilterKey::Workload,
            _ => return Err(format!("unknown filter key `{key}`: use kernel, arch, vcpus or workload")),
        };
        if key == FilterKey::Arch {
            value.parse::<Arch>().map_err(|e| e.to_string())?;
        }
        if key == FilterKey::Vcpus && value.parse::<u32>().is_err() {
            return Err(format!("vcpus filter `{value}` is not a number"));
        }
        Ok(Filter { key, value: value.to_string() })
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
        [FilterKey::Kernel, FilterKey::Arch, FilterKey::Vcpus, FilterKey::Workload].into_iter().all(|key| {
            let mut wanted = filters.iter().filter(|f| f.key == key).peekable();
            wanted.peek().is_none() || wanted.any(|f| f.value == self.field(key))
        })
    }
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
}
