//! The matrix file: which kernels, architectures, vCPU counts and workloads to cross.
//!
//! Parsing is strict (unknown keys are errors) because a typo in a nightly matrix that silently
//! drops a dimension is worse than a run that refuses to start. Every error, of YAML or of
//! meaning, names the file, line and column of the node it is about: `FILE:LINE:COLUMN: message`.

mod locate;

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use anyhow::{anyhow, Context, Result};
use serde::{Deserialize, Serialize};

use crate::arch::Arch;
use crate::vocab::Kind;

pub(crate) use locate::node;
use locate::Positions;
pub use locate::{Pos, Seg};

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

/// How guests are accelerated (`accel:` in the matrix, `--accel` on the command line).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum AccelMode {
    /// KVM for x86_64 guests, but only after a Linux guest booted under it on this host (a
    /// `/dev/kvm` that opens can still fail to run a guest); TCG otherwise and for other arches.
    #[default]
    Auto,
    /// Always TCG: the same speed everywhere, e.g. to compare timings between hosts.
    Tcg,
    /// KVM for x86_64 guests without the boot probe (the host is known to be good); other
    /// arches always run under TCG.
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

/// A matrix as loaded: the parsed file plus where its relative paths and its nodes are.
#[derive(Debug, Clone)]
pub struct LoadedMatrix {
    pub path: PathBuf,
    pub matrix: Matrix,
    positions: Positions,
}

impl LoadedMatrix {
    pub fn recipe_paths(&self) -> Vec<PathBuf> {
        let dir = self.path.parent().unwrap_or(Path::new("."));
        self.matrix.kernels.iter().map(|k| dir.join(&k.recipe)).collect()
    }

    /// `FILE:LINE:COLUMN` of a node, for an error about what it names (a recipe that will not load).
    pub fn at(&self, path: &[Seg]) -> String {
        let Pos { line, column } = self.positions.locate(path);
        format!("{}:{line}:{column}", self.path.display())
    }
}

/// A matrix error, at the node it is about or where the YAML stops making sense. Shown as
/// `LINE:COLUMN: message`: `load` puts the file in front, as compilers do.
#[derive(Debug, thiserror::Error)]
#[error("{}:{}: {message}", at.line, at.column)]
pub struct MatrixError {
    pub at: Pos,
    pub message: String,
}

/// A value that deserialized but makes no sense, and the node that holds it.
#[derive(Debug)]
struct Invalid {
    path: Vec<Seg>,
    message: String,
}

impl Invalid {
    fn new(path: impl Into<Vec<Seg>>, message: String) -> Invalid {
        Invalid { path: path.into(), message }
    }
}

/// The vCPU counts QEMU's three machines all accept under TCG without extra topology options.
const MAX_VCPUS: u32 = 32;

/// A guest needs this much to boot the lab's kernels and run a workload.
const MIN_MEMORY_MIB: u32 = 128;

/// Each booted cell takes its guest's memory from the host (`--jobs` of them at once, on a host of
/// 24 GiB here), and no workload needs more than this.
const MAX_MEMORY_MIB: u32 = 16384;

/// Every timeout, in seconds, is at most this and at least 1 (0 leaves a guest no time at all). A
/// day is far beyond the slowest TCG boot: more is a typo (milliseconds?) that would hold a CI
/// runner.
const MAX_TIMEOUT_SECS: u64 = 86400;

pub fn load(path: &Path, known_programs: &BTreeSet<String>) -> Result<LoadedMatrix> {
    let text = std::fs::read_to_string(path).with_context(|| format!("cannot read matrix file {}", path.display()))?;
    let matrix = parse(&text, known_programs).map_err(|e| anyhow!("{}:{e}", path.display()))?;
    Ok(LoadedMatrix { path: path.to_path_buf(), matrix, positions: Positions::index(&text) })
}

pub fn parse(text: &str, known_programs: &BTreeSet<String>) -> Result<Matrix, MatrixError> {
    let matrix: Matrix = serde_yaml::from_str(text).map_err(serde_error)?;
    validate(&matrix, known_programs)
        .map_err(|e| MatrixError { at: Positions::index(text).locate(&e.path), message: e.message })?;
    Ok(matrix)
}

/// serde's position, out of its message (which ends `at line L column C`) and in front.
fn serde_error(e: serde_yaml::Error) -> MatrixError {
    let message = e.to_string();
    match e.location() {
        Some(l) => {
            let suffix = format!(" at line {} column {}", l.line(), l.column());
            MatrixError { at: Pos { line: l.line(), column: l.column() }, message: message.replacen(&suffix, "", 1) }
        }
        None => MatrixError { at: Pos { line: 1, column: 1 }, message },
    }
}

fn validate(m: &Matrix, known_programs: &BTreeSet<String>) -> Result<(), Invalid> {
    for (what, empty) in [
        ("kernels", m.kernels.is_empty()),
        ("arches", m.arches.is_empty()),
        ("vcpus", m.vcpus.is_empty()),
        ("workloads", m.workloads.is_empty()),
    ] {
        if empty {
            return Err(Invalid::new(
                node![what],
                format!("`{what}` is empty: a matrix needs at least one entry in each dimension"),
            ));
        }
    }
    let own_vcpus = m.workloads.iter().enumerate().flat_map(|(w, workload)| {
        workload.vcpus.iter().flatten().enumerate().map(move |(i, &n)| (node!["workloads", w, "vcpus", i].to_vec(), n))
    });
    let mut seen = BTreeSet::new();
    for (at, n) in m.vcpus.iter().enumerate().map(|(i, &n)| (node!["vcpus", i].to_vec(), n)).chain(own_vcpus) {
        if n == 0 || n > MAX_VCPUS {
            return Err(Invalid::new(at, format!("vcpus {n} is out of range: use 1 to {MAX_VCPUS}")));
        }
        // Counts are unique per list: the matrix's, or one workload's own.
        if !seen.insert((at[..at.len() - 1].to_vec(), n)) {
            return Err(Invalid::new(at, format!("vcpus {n} appears twice in the list: its cells would run twice")));
        }
    }
    let mut names = BTreeSet::new();
    for (i, w) in m.workloads.iter().enumerate() {
        let name_at = || node!["workloads", i, "name"];
        if !names.insert(w.name.as_str()) {
            return Err(Invalid::new(
                name_at(),
                format!("workload `{}` appears twice: give each entry its own `name` (and a `program`)", w.name),
            ));
        }
        if !w.name.chars().all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_') {
            return Err(Invalid::new(
                name_at(),
                format!("workload name `{}` may only hold letters, digits, `-` and `_`", w.name),
            ));
        }
        if !known_programs.contains(w.program()) {
            let known: Vec<_> = known_programs.iter().map(String::as_str).collect();
            return Err(Invalid::new(
                if w.program.is_some() { node!["workloads", i, "program"] } else { name_at() },
                format!(
                    "workload `{}` runs program `{}`, which is not in images/workloads/ (known: {})",
                    w.name,
                    w.program(),
                    known.join(", ")
                ),
            ));
        }
        if w.via == Via::Console && !w.fetch.is_empty() {
            return Err(Invalid::new(
                node!["workloads", i, "fetch"],
                format!(
                    "workload `{}`: `fetch` needs `via: ssh` (the init powers the guest off after the workload)",
                    w.name
                ),
            ));
        }
        let mut files = BTreeSet::new();
        for (j, path) in w.fetch.iter().enumerate() {
            if !path.starts_with('/') || path.ends_with('/') || path.chars().any(char::is_whitespace) {
                return Err(Invalid::new(
                    node!["workloads", i, "fetch", j],
                    format!("workload `{}`: fetch path `{path}` must be an absolute file path, without spaces", w.name),
                ));
            }
            if !files.insert(fetched_file_name(path)) {
                return Err(Invalid::new(
                    node!["workloads", i, "fetch", j],
                    format!(
                        "workload `{}`: fetch path `{path}` is saved as `{}`, like another one: fetch files with distinct names",
                        w.name,
                        fetched_file_name(path)
                    ),
                ));
            }
        }
        for (key, value) in &w.args {
            let ok_key = key.chars().all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_');
            if !ok_key || arg_value(value).is_none() {
                return Err(Invalid::new(
                    node!["workloads", i, "args", key.as_str()],
                    format!(
                        "workload `{}`: argument `{key}` must be a plain word and its value a \
                         number, boolean or string without spaces",
                        w.name
                    ),
                ));
            }
        }
    }
    let t = &m.timeouts;
    for (what, secs) in
        [("boot", t.boot), ("silence", t.silence), ("workload", t.workload), ("report_grace", t.report_grace)]
    {
        if secs == 0 || secs > MAX_TIMEOUT_SECS {
            return Err(Invalid::new(
                node!["timeouts", what],
                format!("timeouts.{what} {secs} is out of range: use 1 to {MAX_TIMEOUT_SECS} seconds"),
            ));
        }
    }
    if !(MIN_MEMORY_MIB..=MAX_MEMORY_MIB).contains(&m.memory_mib) {
        return Err(Invalid::new(
            node!["memory_mib"],
            format!(
                "memory_mib {} is out of range: a guest needs at least {MIN_MEMORY_MIB}, and more than {MAX_MEMORY_MIB} \
                 takes too much of the host",
                m.memory_mib
            ),
        ));
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

    /// Each bad matrix must fail at `LINE:COLUMN` with a message that contains the given words.
    fn check_err(text: &str, at: &str, expect: &[&str]) {
        let err = parse(text, &programs()).unwrap_err().to_string();
        assert!(err.starts_with(&format!("{at}: ")), "error `{err}` is not at {at}");
        for word in expect {
            assert!(err.contains(word), "error `{err}` lacks `{word}`");
        }
        assert!(!err.contains(" at line "), "error `{err}` gives its position twice");
    }

    #[test]
    fn bad_matrices_say_what_is_wrong_and_where() {
        check_err(&GOOD.replace("arches", "archs"), "3:1", &["unknown field `archs`"]);
        check_err(&GOOD.replace("ppc64le", "ppc64"), "3:18", &["unknown variant `ppc64`"]);
        check_err(&GOOD.replace("[1, 4]", "[1, 0]"), "4:12", &["vcpus 0 is out of range: use 1 to 32"]);
        check_err(&GOOD.replace("[2]", "[2, 33]"), "14:16", &["vcpus 33"]);
        check_err(&GOOD.replace("[1, 4]", "[]"), "4:8", &["`vcpus` is empty"]);
        check_err(&GOOD.replace("[1, 4]", "[4, 1, 4]"), "4:15", &["vcpus 4 appears twice"]);
        check_err(&GOOD.replace("[2]", "[2, 2]"), "14:16", &["vcpus 2 appears twice"]);
        check_err(&GOOD.replace("vcpus: [1, 4]\n", ""), "2:1", &["missing field `vcpus`"]);
        check_err(&GOOD.replace("program: lkdtm", "program: nosuch"), "11:14", &["nosuch", "known: lkdtm, smoke"]);
        check_err(&GOOD.replace("name: smoke", "name: nosuch"), "6:11", &["program `nosuch`"]);
        check_err(&GOOD.replace("hard-lockup", "hardlockup"), "13:13", &["unknown variant `hardlockup`"]);
        check_err(&GOOD.replace("selftest-hardlockup", "smoke"), "10:11", &["appears twice"]);
        check_err(&GOOD.replace("selftest-hardlockup", "self test"), "10:11", &["may only hold letters"]);
        check_err(&GOOD.replace("seconds: 5", "seconds: \"5 6\""), "7:21", &["argument `seconds`"]);
        check_err(&GOOD.replace("seconds: 5", "seconds: 5, a b: 1"), "7:29", &["argument `a b`"]);
        check_err("kernels: [", "2:1", &["did not find expected node content"]);
        check_err(&GOOD.replace("via: ssh", "via: telnet"), "8:10", &["unknown variant `telnet`"]);
        check_err(&GOOD.replace("via: ssh", "via: console"), "9:12", &["`fetch` needs `via: ssh`"]);
        check_err(&GOOD.replace("/tmp/out.txt", "out.txt"), "9:13", &["must be an absolute file path"]);
        check_err(
            &GOOD.replace("/tmp/out.txt", "/tmp/out.txt, /var/out.txt"),
            "9:27",
            &["saved as `out.txt`, like another one"],
        );
        check_err(
            &format!("{GOOD}timeouts: {{boot: 0}}\n"),
            "15:18",
            &["timeouts.boot 0 is out of range: use 1 to 86400 seconds"],
        );
        check_err(&format!("{GOOD}timeouts:\n  silence: 86401\n"), "16:12", &["timeouts.silence 86401"]);
        check_err(&format!("{GOOD}timeouts: {{boot: -1}}\n"), "15:18", &["timeouts.boot: invalid type: integer `-1`"]);
        check_err(&format!("{GOOD}memory_mib: 64\n"), "15:13", &["memory_mib 64 is out of range"]);
        check_err(&format!("{GOOD}memory_mib: 16385\n"), "15:13", &["memory_mib 16385 is out of range"]);
        check_err(
            &format!("{GOOD}accel: hvf\n"),
            "15:8",
            &["unknown variant `hvf`, expected one of `auto`, `tcg`, `kvm`"],
        );
    }

    #[test]
    fn accel_is_auto_unless_set() {
        let accel = |line: &str| parse(&format!("{GOOD}{line}"), &programs()).unwrap().accel;
        assert_eq!(accel(""), AccelMode::Auto);
        assert_eq!(accel("accel: tcg\n"), AccelMode::Tcg);
        assert_eq!(accel("accel: kvm\n"), AccelMode::Kvm);
    }
}
