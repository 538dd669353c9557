//! The matrix file: which kernels, architectures, vCPU counts and workloads to cross.
//!
//! Parsing is strict (unknown keys are errors, with line and column) because a typo in a nightly
//! matrix that silently drops a dimension is worse than a run that refuses to start.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use serde::Deserialize;

use crate::arch::Arch;
use crate::triage::Kind;

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Matrix {
    pub kernels: Vec<KernelEntry>,
    pub arches: Vec<Arch>,
    pub vcpus: Vec<u32>,
    pub workloads: Vec<Workload>,
    #[serde(default)]
    pub timeouts: Timeouts,
    #[serde(default = "default_memory_mib")]
    pub memory_mib: u32,
    /// Extra kernel parameters for every cell.
    #[serde(default)]
    pub cmdline: Vec<String>,
    #[serde(default)]
    pub accel: AccelMode,
}

/// What x86_64 guests run under (the others always run under TCG).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum AccelMode {
    /// KVM only after a Linux guest booted to its ready line under it on this host, else TCG.
    #[default]
    Auto,
    /// Always TCG.
    Tcg,
    /// KVM without the proof (a guest that hangs under it is a `boot-hang` error).
    Kvm,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KernelEntry {
    /// Path of the kernel recipe, relative to the matrix file.
    pub recipe: PathBuf,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Workload {
    /// The cell's workload name; also the program's unless `program` says otherwise.
    pub name: String,
    pub program: Option<String>,
    /// Passed to the program as `--KEY=VALUE`.
    #[serde(default)]
    pub args: BTreeMap<String, serde_yaml::Value>,
    /// A failure the workload provokes on purpose: the cell passes only if triage reports it.
    pub expect: Option<Kind>,
    /// Overrides the matrix's vCPU counts for this workload.
    pub vcpus: Option<Vec<u32>>,
    /// Who starts the workload: the guest's init (`console`, the default), or the lab over SSH
    /// (`ssh`: stdout, stderr and exit status captured in the cell, `fetch` saved after it).
    #[serde(default)]
    pub via: Via,
    /// With `via: ssh`, guest files saved into the cell directory after the workload (absolute
    /// paths; the guest's dmesg always is).
    #[serde(default)]
    pub fetch: Vec<String>,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Via {
    #[default]
    Console,
    Ssh,
}

/// The name a `fetch` file gets in the cell directory: its own.
pub fn fetched_file_name(path: &str) -> &str {
    path.rsplit('/').next().unwrap_or(path)
}

impl Workload {
    pub fn program(&self) -> &str {
        self.program.as_deref().unwrap_or(&self.name)
    }
}

/// Seconds. TCG is 10-50x slower than hardware: these defaults are sized for it.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Timeouts {
    /// From QEMU start to the guest's ready line.
    pub boot: u64,
    /// Without any console output before the guest counts as silent (hung).
    pub silence: u64,
    /// From the ready line to the result line.
    pub workload: u64,
    /// After a kernel report starts, how long to keep listening for the rest of it
    /// (other CPUs' backtraces) before the guest is stopped.
    pub report_grace: u64,
}

impl Default for Timeouts {
    fn default() -> Timeouts {
        Timeouts { boot: 180, silence: 60, workload: 600, report_grace: 20 }
    }
}

fn default_memory_mib() -> u32 {
    512
}

/// A matrix as loaded: the parsed file plus where its relative paths point.
#[derive(Debug, Clone)]
pub struct LoadedMatrix {
    pub path: PathBuf,
    pub matrix: Matrix,
}

impl LoadedMatrix {
    pub fn recipe_paths(&self) -> Vec<PathBuf> {
        let dir = self.path.parent().unwrap_or(Path::new("."));
        self.matrix.kernels.iter().map(|k| dir.join(&k.recipe)).collect()
    }
}

/// The vCPU counts QEMU's three machines all accept under TCG without extra topology options.
const MAX_VCPUS: u32 = 32;

pub fn load(path: &Path, known_programs: &BTreeSet<String>) -> Result<LoadedMatrix> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("cannot read matrix file {}", path.display()))?;
    let matrix = parse(&text, known_programs).with_context(|| format!("invalid matrix {}", path.display()))?;
    Ok(LoadedMatrix { path: path.to_path_buf(), matrix })
}

pub fn parse(text: &str, known_programs: &BTreeSet<String>) -> Result<Matrix> {
    let matrix: Matrix = serde_yaml::from_str(text)?;
    validate(&matrix, known_programs)?;
    Ok(matrix)
}

fn validate(m: &Matrix, known_programs: &BTreeSet<String>) -> Result<()> {
    for (what, empty) in [
        ("kernels", m.kernels.is_empty()),
        ("arches", m.arches.is_empty()),
        ("vcpus", m.vcpus.is_empty()),
        ("workloads", m.workloads.is_empty()),
    ] {
        if empty {
            bail!("`{what}` is empty: a matrix needs at least one entry in each dimension");
        }
    }
    let all_vcpus = m.vcpus.iter().chain(m.workloads.iter().flat_map(|w| w.vcpus.iter().flatten()));
    for &n in all_vcpus {
        if n == 0 || n > MAX_VCPUS {
            bail!("vcpus {n} is out of range: use 1 to {MAX_VCPUS}");
        }
    }
    let mut names = BTreeSet::new();
    for w in &m.workloads {
        if !names.insert(w.name.as_str()) {
            bail!("workload `{}` appears twice: give each entry its own `name` (and a `program`)", w.name);
        }
        if !w.name.chars().all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_') {
            bail!("workload name `{}` may only hold letters, digits, `-` and `_`", w.name);
        }
        if !known_programs.contains(w.program()) {
            let known: Vec<_> = known_programs.iter().map(String::as_str).collect();
            bail!(
                "workload `{}` runs program `{}`, which is not in images/workloads/ (known: {})",
                w.name,
                w.program(),
                known.join(", ")
            );
        }
        if w.via == Via::Console && !w.fetch.is_empty() {
            bail!("workload `{}`: `fetch` needs `via: ssh` (the init powers the guest off after the workload)", w.name);
        }
        if let Some(path) = w.fetch.iter().find(|p| !p.starts_with('/') || p.ends_with('/') || p.chars().any(char::is_whitespace)) {
            bail!("workload `{}`: fetch path `{path}` must be an absolute file path, without spaces", w.name);
        }
        let mut files = BTreeSet::new();
        if let Some(path) = w.fetch.iter().find(|p| !files.insert(fetched_file_name(p))) {
            bail!("workload `{}`: fetch path `{path}` is saved as `{}`, like another one: fetch files with distinct names", w.name, fetched_file_name(path));
        }
        for (key, value) in &w.args {
            let ok_key = key.chars().all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_');
            if !ok_key || arg_value(value).is_none() {
                bail!(
                    "workload `{}`: argument `{key}` must be a plain word and its value a \
                     number, boolean or string without spaces",
                    w.name
                );
            }
        }
    }
    if m.memory_mib < 128 {
        bail!("memory_mib {} is too small: a guest needs at least 128", m.memory_mib);
    }
    Ok(())
}

/// A workload argument as it travels on the kernel command line (no spaces allowed there).
pub fn arg_value(value: &serde_yaml::Value) -> Option<String> {
    let text = match value {
        serde_yaml::Value::String(s) => s.clone(),
        serde_yaml::Value::Number(n) => n.to_string(),
        serde_yaml::Value::Bool(b) => b.to_string(),
        _ => return None,
    };
    (!text.is_empty() && !text.chars().any(|c| c.is_whitespace() || c == '"')).then_some(text)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn programs() -> BTreeSet<String> {
        ["smoke", "lkdtm"].into_iter().map(String::from).collect()
    }

    const GOOD: &str = "
kernels: [{recipe: kernels/linux-7.3.yaml}]
arches: [x86_64, ppc64le]
vcpus: [1, 4]
workloads:
  - name: smoke
    args: {seconds: 5}
    via: ssh
    fetch: [/tmp/out.txt]
  - name: selftest-hardlockup
    program: lkdtm
    args: {crash: HARDLOCKUP}
    expect: hard-lockup
    vcpus: [2]
";

    #[test]
    fn good_matrix_parses() {
        let m = parse(GOOD, &programs()).unwrap();
        assert_eq!(m.arches, [Arch::X86_64, Arch::Ppc64le]);
        assert_eq!(m.workloads[1].program(), "lkdtm");
        assert_eq!((m.workloads[0].via, m.workloads[1].via), (Via::Ssh, Via::Console));
        assert_eq!(m.workloads[1].expect, Some(Kind::HardLockup));
        assert_eq!(m.timeouts.boot, Timeouts::default().boot);
    }

    /// Each bad matrix must fail with a message that contains the given words.
    fn check_err(text: &str, expect: &[&str]) {
        let err = format!("{:#}", parse(text, &programs()).unwrap_err());
        for word in expect {
            assert!(err.contains(word), "error `{err}` lacks `{word}`");
        }
    }

    #[test]
    fn bad_matrices_say_what_is_wrong() {
        check_err(&GOOD.replace("arches", "archs"), &["unknown field `archs`", "line 3"]);
        check_err(&GOOD.replace("ppc64le", "ppc64"), &["unknown variant `ppc64`", "line 3"]);
        check_err(&GOOD.replace("[1, 4]", "[0]"), &["vcpus 0"]);
        check_err(&GOOD.replace("[1, 4]", "[]"), &["`vcpus` is empty"]);
        check_err(&GOOD.replace("program: lkdtm", "program: nosuch"), &["nosuch", "known: lkdtm, smoke"]);
        check_err(&GOOD.replace("hard-lockup", "hardlockup"), &["unknown variant `hardlockup`"]);
        check_err(&GOOD.replace("selftest-hardlockup", "smoke"), &["appears twice"]);
        check_err(&GOOD.replace("seconds: 5", "seconds: \"5 6\""), &["argument `seconds`"]);
        check_err("kernels: [", &["line"]);
        check_err(&GOOD.replace("via: ssh", "via: telnet"), &["unknown variant `telnet`"]);
        check_err(&GOOD.replace("via: ssh", "via: console"), &["`fetch` needs `via: ssh`"]);
        check_err(&GOOD.replace("/tmp/out.txt", "out.txt"), &["must be an absolute file path"]);
        check_err(&GOOD.replace("/tmp/out.txt", "/tmp/out.txt, /var/out.txt"), &["saved as `out.txt`, like another one"]);
    }
}
