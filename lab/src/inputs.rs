//! What a run was started with, kept as `run.json` in its directory: the matrix (by content),
//! each kernel recipe (by what it puts into its kernels), the filters and options, every cell the
//! filters select and the part of them a shard runs. `lab merge` holds shards to one run's
//! inputs with it, and says what differs when they do not agree.

use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use clap::ValueEnum;
use serde::{Deserialize, Serialize};

use crate::cache;
use crate::matrix::AccelMode;
use crate::plan::Shard;

/// A change that an older reader would misread takes the next number.
pub const INPUTS_VERSION: u32 = 1;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RunInputs {
    pub version: u32,
    pub matrix: PathBuf,
    pub matrix_sha256: String,
    /// Each kernel recipe's name and `Recipe::fingerprint`, in the matrix's order.
    pub kernels: Vec<(String, String)>,
    pub filters: Vec<String>,
    pub repeat: u32,
    pub until_fail: bool,
    pub host_samples: u32,
    /// `--live-every` (milliseconds, 0: off); a run recorded before the live watch had none.
    #[serde(default)]
    pub live_every: u64,
    pub dump_memory: bool,
    pub accel: AccelMode,
    /// Every cell the matrix and filters select, in plan order, before any sharding.
    pub plan: Vec<String>,
    pub shard: Option<Shard>,
    /// The cells this run runs: the plan, or a shard's part of it.
    pub cells: Vec<String>,
}

impl RunInputs {
    /// What makes two runs results of one matrix run: everything but which part of it each ran.
    /// One line per difference, naming it and both values.
    pub fn differences(&self, other: &RunInputs) -> Vec<String> {
        let mut out = Vec::new();
        let mut differ = |what: &str, a: String, b: String| {
            if a != b {
                out.push(format!("{what}: {a} vs {b}"));
            }
        };
        differ("matrix", self.matrix_sha256.clone(), other.matrix_sha256.clone());
        let names = |k: &[(String, String)]| k.iter().map(|(n, _)| n.clone()).collect::<Vec<_>>().join(", ");
        differ("kernels", names(&self.kernels), names(&other.kernels));
        for ((name, a), (_, b)) in self.kernels.iter().zip(&other.kernels) {
            differ(&format!("kernel {name} (source, patches or config)"), a.clone(), b.clone());
        }
        differ("filters", self.filters.join(" "), other.filters.join(" "));
        differ("--repeat", self.repeat.to_string(), other.repeat.to_string());
        differ("--until-fail", self.until_fail.to_string(), other.until_fail.to_string());
        differ("--host-samples", self.host_samples.to_string(), other.host_samples.to_string());
        differ("--live-every", self.live_every.to_string(), other.live_every.to_string());
        differ("--dump-memory", self.dump_memory.to_string(), other.dump_memory.to_string());
        let accel = |mode: AccelMode| mode.to_possible_value().map(|v| v.get_name().to_string()).unwrap_or_default();
        differ("--accel", accel(self.accel), accel(other.accel));
        differ("planned cells", self.plan.len().to_string(), other.plan.len().to_string());
        if out.is_empty() && self.plan != other.plan {
            out.push("planned cells: the same number, different cells".to_string());
        }
        out
    }

    pub fn write(&self, dir: &Path) -> Result<()> {
        cache::write_atomic(&dir.join("run.json"), serde_json::to_string_pretty(self)?.as_bytes())
    }

    pub fn read(dir: &Path) -> Result<RunInputs> {
        let path = dir.join("run.json");
        let text = std::fs::read_to_string(&path).with_context(|| {
            format!("cannot read {}: a run directory of a lab that records its inputs has one", path.display())
        })?;
        let inputs: RunInputs = serde_json::from_str(&text).with_context(|| format!("{}", path.display()))?;
        if inputs.version != INPUTS_VERSION {
            bail!("{}: version {} is not the {INPUTS_VERSION} this lab reads", path.display(), inputs.version);
        }
        Ok(inputs)
    }
}

/// The hash the inputs record for a matrix file.
pub fn matrix_sha256(path: &Path) -> Result<String> {
    cache::sha256_file(path)
}

#[cfg(test)]
pub fn sample(shard: Option<Shard>, cells: &[&str]) -> RunInputs {
    RunInputs {
        version: INPUTS_VERSION,
        matrix: PathBuf::from("matrix.yaml"),
        matrix_sha256: "m1".into(),
        kernels: vec![("linux-7.3".into(), "k1".into())],
        filters: vec!["arch=x86_64".into()],
        repeat: 1,
        until_fail: false,
        host_samples: 8,
        live_every: 1000,
        dump_memory: false,
        accel: AccelMode::Auto,
        plan: ["a", "b", "c"].iter().map(|s| s.to_string()).collect(),
        shard,
        cells: cells.iter().map(|s| s.to_string()).collect(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn differences_name_what_changed_and_ignore_the_shard() {
        let base = sample(None, &["a", "b", "c"]);
        let check = |change: &dyn Fn(&mut RunInputs), want: &[&str]| {
            let mut other = base.clone();
            change(&mut other);
            assert_eq!(base.differences(&other), want);
        };
        check(&|_| {}, &[]);
        check(&|o| (o.shard, o.cells) = (Some(Shard { index: 2, total: 3 }), vec!["b".into()]), &[]);
        check(&|o| o.matrix_sha256 = "m2".into(), &["matrix: m1 vs m2"]);
        check(&|o| o.kernels[0].1 = "k2".into(), &["kernel linux-7.3 (source, patches or config): k1 vs k2"]);
        check(&|o| o.filters.push("vcpus=4".into()), &["filters: arch=x86_64 vs arch=x86_64 vcpus=4"]);
        check(&|o| (o.repeat, o.accel) = (20, AccelMode::Tcg), &["--repeat: 1 vs 20", "--accel: auto vs tcg"]);
        check(&|o| o.plan[2] = "d".into(), &["planned cells: the same number, different cells"]);
    }
}
