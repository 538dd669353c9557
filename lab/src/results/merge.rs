//! `lab merge`: the directories of one run's shards made one run directory again, equal to the
//! run unsharded: its cells in plan order, its inputs without the shard, its reports. Shards of
//! different runs, a shard given twice and a missing shard are refused before anything is
//! written.

use std::fs;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};

use super::Run;
use crate::inputs::RunInputs;

/// The inputs of the merged run, when `shards` are every shard of one run, each once.
pub fn check(shards: &[(PathBuf, RunInputs)]) -> Result<RunInputs> {
    let Some((first_dir, first)) = shards.first() else { bail!("no shard directory given") };
    let shard_of = |dir: &Path, inputs: &RunInputs| {
        inputs.shard.ok_or_else(|| {
            anyhow::anyhow!("{} is a whole run, not a shard (it ran without --shard): nothing to merge", dir.display())
        })
    };
    let total = shard_of(first_dir, first)?.total;
    let mut given: Vec<Option<&Path>> = vec![None; total as usize];
    for (dir, inputs) in shards {
        let shard = shard_of(dir, inputs)?;
        if shard.total != total {
            bail!(
                "{} is shard {shard} but {} is of {total}: shards of different splits",
                dir.display(),
                first_dir.display()
            );
        }
        let differences = first.differences(inputs);
        if !differences.is_empty() {
            bail!(
                "{} is not a shard of the same run as {}: {}",
                dir.display(),
                first_dir.display(),
                differences.join("; ")
            );
        }
        let slot = &mut given[shard.index as usize - 1];
        if let Some(other) = slot.replace(dir) {
            bail!("shard {shard} is given twice: {} and {}", other.display(), dir.display());
        }
    }
    let missing: Vec<String> =
        (1..=total).filter(|i| given[*i as usize - 1].is_none()).map(|i| format!("{i}/{total}")).collect();
    if !missing.is_empty() {
        bail!("shard {} of the run is missing: merge every shard's directory", missing.join(", "));
    }
    let mut ran: Vec<&String> = shards.iter().flat_map(|(_, inputs)| &inputs.cells).collect();
    ran.sort();
    let mut planned: Vec<&String> = first.plan.iter().collect();
    planned.sort();
    if ran != planned {
        bail!("the shards' cells are not the run's plan, each once: were they split by different lab versions?");
    }
    Ok(RunInputs { shard: None, cells: first.plan.clone(), ..first.clone() })
}

/// Reads the shards in `dirs`, checks them, and copies their cells into `out` (new or empty);
/// the merged run's cells come in plan order. Writes the inputs; the caller writes the reports.
pub fn merge(out: &Path, dirs: &[PathBuf]) -> Result<Run> {
    let shards = dirs.iter().map(|d| Ok((d.clone(), RunInputs::read(d)?))).collect::<Result<Vec<_>>>()?;
    let inputs = check(&shards)?;
    let runs = dirs.iter().map(|d| super::read(d)).collect::<Result<Vec<Run>>>()?;
    fs::create_dir_all(out.join("cells")).with_context(|| format!("cannot create {}", out.display()))?;
    let mut cells = Vec::new();
    for id in &inputs.plan {
        for run in &runs {
            for cell in run.cells.iter().filter(|c| &c.id == id) {
                let mut cell = cell.clone();
                let from = std::mem::replace(&mut cell.dir, crate::report::cell_dir(out, &cell.id, cell.run));
                // A cell a signal kept from starting has no directory.
                if from.is_dir() {
                    copy_dir(&from, &cell.dir)?;
                }
                cells.push(cell);
            }
        }
    }
    inputs.write(out)?;
    Ok(Run { dir: out.to_path_buf(), cells })
}

fn copy_dir(from: &Path, to: &Path) -> Result<()> {
    fs::create_dir_all(to).with_context(|| format!("cannot create {}", to.display()))?;
    for entry in fs::read_dir(from).with_context(|| format!("cannot list {}", from.display()))? {
        let entry = entry?;
        let (src, dst) = (entry.path(), to.join(entry.file_name()));
        // Sockets and other special files of a finished QEMU are not results.
        match entry.file_type()? {
            t if t.is_dir() => copy_dir(&src, &dst)?,
            t if t.is_file() => {
                fs::copy(&src, &dst).with_context(|| format!("cannot copy {} to {}", src.display(), dst.display()))?;
            }
            _ => {}
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::inputs::sample;
    use crate::plan::Shard;

    fn shard(dir: &str, index: u32, total: u32, cells: &[&str]) -> (PathBuf, RunInputs) {
        (PathBuf::from(dir), sample(Some(Shard { index, total }), cells))
    }

    fn check_merge(shards: Vec<(PathBuf, RunInputs)>, want: &str) {
        let got = match check(&shards) {
            Ok(inputs) => format!("ok {:?} {}", inputs.shard, inputs.cells.join(",")),
            Err(e) => e.to_string(),
        };
        assert_eq!(got, want);
    }

    #[test]
    fn only_every_shard_of_one_run_merges() {
        let (s1, s2, s3) = (shard("s1", 1, 3, &["a"]), shard("s2", 2, 3, &["b"]), shard("s3", 3, 3, &["c"]));
        check_merge(vec![s1.clone(), s2.clone(), s3.clone()], "ok None a,b,c");
        check_merge(vec![s3.clone(), s1.clone(), s2.clone()], "ok None a,b,c");
        check_merge(vec![s1.clone(), s3.clone()], "shard 2/3 of the run is missing: merge every shard's directory");
        check_merge(vec![s1.clone(), s2.clone(), s2.clone(), s3.clone()], "shard 2/3 is given twice: s2 and s2");
        check_merge(
            vec![s1.clone(), shard("t", 2, 2, &["b", "c"])],
            "t is shard 2/2 but s1 is of 3: shards of different splits",
        );
        let mut other = shard("o", 2, 3, &["b"]);
        other.1.matrix_sha256 = "m2".into();
        check_merge(vec![s1.clone(), other, s3.clone()], "o is not a shard of the same run as s1: matrix: m1 vs m2");
        check_merge(
            vec![(PathBuf::from("w"), sample(None, &["a", "b", "c"]))],
            "w is a whole run, not a shard (it ran without --shard): nothing to merge",
        );
        check_merge(
            vec![s1, shard("s2", 2, 3, &["b", "c"]), s3],
            "the shards' cells are not the run's plan, each once: were they split by different lab versions?",
        );
    }
}
