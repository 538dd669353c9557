//! The kernel's own rseq selftests (tools/testing/selftests/rseq), built from the tree under test
//! for one architecture, so that a guest of that kernel can run them.
//!
//! The selftests' Makefile links every test against a shared librseq.so; the guest has no dynamic
//! loader, so here each program is one static link of its source and rseq.c (librseq), with the
//! Makefile's flags: the selftests' headers, the tree's tools/include and
//! tools/arch/<SRCARCH>/include, and the tree's own uapi headers (`make headers` in a scratch build
//! directory outside the tree, which stays untouched). Cached by content under
//! `selftests/<arch>-<key>/`: the source and the patches that touch `tools/` or a uapi header (a
//! scheduler patch leaves them as its base built them), the architecture, the compiler and the
//! program table.

use std::collections::BTreeSet;
use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{bail, Context, Result};
use serde::{Deserialize, Serialize};
use xshell::{cmd, Shell};

use crate::arch::Arch;
use crate::cache::{self, Cache, KeyBuilder};
use crate::process;
use crate::ui::{Event, Ui};

/// Bump when the way the programs are built changes in a way the key's inputs do not show.
const SELFTESTS_VERSION: &str = "1";

/// Program, source, extra flags: the variants of 7.3's selftests Makefile that the workload
/// `rseq-selftests` (images/workloads/rseq-selftests.c) runs, without the benchmark builds.
const PROGRAMS: &[(&str, &str, &[&str])] = &[
    ("basic_test", "basic_test.c", &[]),
    ("basic_percpu_ops_test", "basic_percpu_ops_test.c", &[]),
    ("basic_percpu_ops_mm_cid_test", "basic_percpu_ops_test.c", &["-DBUILDOPT_RSEQ_PERCPU_MM_CID"]),
    ("param_test", "param_test.c", &[]),
    ("param_test_compare_twice", "param_test.c", &["-DRSEQ_COMPARE_TWICE"]),
    ("param_test_mm_cid", "param_test.c", &["-DBUILDOPT_RSEQ_PERCPU_MM_CID"]),
    ("param_test_mm_cid_compare_twice", "param_test.c", &["-DBUILDOPT_RSEQ_PERCPU_MM_CID", "-DRSEQ_COMPARE_TWICE"]),
    ("syscall_errors_test", "syscall_errors_test.c", &[]),
    ("legacy_check", "legacy_check.c", &[]),
    ("check_optimized", "check_optimized.c", &[]),
    ("slice_test", "slice_test.c", &[]),
];

/// The selftest programs of one kernel tree for one architecture.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Selftests {
    pub key: String,
    /// Holds one static executable per program.
    pub dir: PathBuf,
    /// Those of the table the tree's Makefile lists (older trees have fewer, none before rseq).
    pub programs: Vec<String>,
    /// True when this call found them in the cache.
    #[serde(skip)]
    pub cached: bool,
}

/// The cache key of the selftests of tree `tree_key` (the source and the patches that can change
/// them) for `arch`, built with `toolchain`.
pub(super) fn key(tree_key: &str, arch: Arch, toolchain: &str) -> String {
    let mut key = KeyBuilder::default()
        .part("version", SELFTESTS_VERSION.as_bytes())
        .part("tree", tree_key.as_bytes())
        .part("arch", arch.name().as_bytes())
        .part("toolchain", toolchain.as_bytes());
    for (name, source, flags) in PROGRAMS {
        key = key
            .part("program", name.as_bytes())
            .part("source", source.as_bytes())
            .part("flags", flags.join(" ").as_bytes());
    }
    key.finish()
}

fn cache_dir(cache: &Cache, arch: Arch, key: &str) -> Result<PathBuf> {
    Ok(cache.dir("selftests")?.join(format!("{arch}-{key}")))
}

/// The selftests of `key`, if they are in the cache: then the tree is not needed.
pub(super) fn cached(cache: &Cache, arch: Arch, key: &str) -> Result<Option<Selftests>> {
    let json = fs::read(cache_dir(cache, arch, key)?.join("selftests.json")).unwrap_or_default();
    Ok(serde_json::from_slice::<Selftests>(&json).ok().map(|selftests| Selftests { cached: true, ..selftests }))
}

/// Builds the selftests of the tree at `src` (the caller holds its lock) unless they are cached.
pub(super) fn build(
    sh: &Shell,
    cache: &Cache,
    src: &Path,
    arch: Arch,
    key: &str,
    ui: &Ui,
    task: &str,
) -> Result<Selftests> {
    if let Some(selftests) = cached(cache, arch, key)? {
        return Ok(selftests);
    }
    let dir = cache_dir(cache, arch, key)?;
    let rseq = src.join("tools/testing/selftests/rseq");
    let listed = match fs::read_to_string(rseq.join("Makefile")) {
        Ok(makefile) => listed_programs(&makefile),
        Err(_) => BTreeSet::new(),
    };
    let programs: Vec<&(&str, &str, &[&str])> =
        PROGRAMS.iter().filter(|(name, source, _)| listed.contains(*name) && rseq.join(source).exists()).collect();
    let tmp = cache::temp_sibling(&dir);
    cache::remove_dir_if_present(&tmp)?;
    fs::create_dir_all(&tmp)?;
    if !programs.is_empty() {
        let log = tmp.join("build.log");
        let scratch = tmp.join("o");
        ui.send(Event::Progress { task: task.to_string(), message: "rseq selftests: uapi headers".into() });
        let mut make = Command::new("make");
        make.arg("-C").arg(src).arg(format!("O={}", scratch.display()));
        make.args([
            format!("ARCH={}", arch.kernel_arch()),
            format!("CROSS_COMPILE={}", arch.cross_compile()),
            "headers".to_string(),
        ]);
        process::run_logged(make, &log, |_| ())
            .with_context(|| format!("the uapi headers of {} for {arch}", src.display()))?;
        let gcc = arch.gcc();
        let flags = [
            "-O2".to_string(),
            "-Wall".to_string(),
            "-static".to_string(),
            "-D_GNU_SOURCE=".to_string(),
            format!("-I{}", rseq.display()),
            "-isystem".to_string(),
            scratch.join("usr/include").display().to_string(),
            format!("-I{}", src.join("tools/include").display()),
            format!("-I{}", src.join("tools/arch").join(arch.src_arch()).join("include").display()),
            format!("-I{}", src.join("tools/testing/selftests").display()),
        ];
        fs::create_dir_all(tmp.join("bin"))?;
        for (name, source, defines) in &programs {
            ui.send(Event::Progress { task: task.to_string(), message: format!("rseq selftests: {name}") });
            let (out, source, librseq, defines) =
                (tmp.join("bin").join(name), rseq.join(source), rseq.join("rseq.c"), defines.iter());
            let flags = flags.iter();
            let output = cmd!(sh, "{gcc} {flags...} {defines...} -o {out} {source} {librseq} -lpthread -ldl")
                .quiet()
                .ignore_status()
                .output()?;
            let text = String::from_utf8_lossy(&output.stderr);
            let mut log = fs::OpenOptions::new()
                .append(true)
                .open(&log)
                .with_context(|| format!("cannot append to {}", log.display()))?;
            write!(log, "== {name}\n{text}")?;
            if !output.status.success() {
                bail!(
                    "{gcc} cannot build the rseq selftest {name} of {}:\n{}",
                    src.display(),
                    process::first_error(&text)
                );
            }
        }
        cache::remove_dir_if_present(&scratch)?;
    }
    let selftests = Selftests {
        key: key.to_string(),
        dir: dir.join("bin"),
        programs: programs.iter().map(|(name, _, _)| name.to_string()).collect(),
        cached: false,
    };
    fs::write(tmp.join("selftests.json"), serde_json::to_string_pretty(&selftests)?)?;
    cache::remove_dir_if_present(&dir)?;
    fs::rename(&tmp, &dir).with_context(|| format!("cannot move the selftests to {}", dir.display()))?;
    Ok(selftests)
}

/// The programs a selftests Makefile builds: the words of its `TEST_GEN_PROGS` and
/// `TEST_GEN_PROGS_EXTENDED` assignments, continuation lines included.
fn listed_programs(makefile: &str) -> BTreeSet<String> {
    let joined = makefile.replace("\\\n", " ");
    joined
        .lines()
        .filter_map(|line| {
            let (name, value) = line.split_once('=')?;
            let name = name.trim_end_matches([':', '+', '?']).trim();
            matches!(name, "TEST_GEN_PROGS" | "TEST_GEN_PROGS_EXTENDED").then_some(value)
        })
        .flat_map(str::split_whitespace)
        .map(str::to_string)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(makefile: &str, expect: &[&str]) {
        assert_eq!(
            listed_programs(makefile),
            expect.iter().map(|s| s.to_string()).collect::<BTreeSet<_>>(),
            "{makefile:?}"
        );
    }

    #[test]
    fn programs_come_from_the_makefiles_lists() {
        check("TEST_GEN_PROGS = basic_test param_test\n", &["basic_test", "param_test"]);
        check(
            "TEST_GEN_PROGS = a \\\n\t\t b\nTEST_GEN_PROGS_EXTENDED = librseq.so \\\n\tc\n",
            &["a", "b", "librseq.so", "c"],
        );
        check("TEST_GEN_PROGS := a\nTEST_GEN_PROGS += b\n", &["a", "b"]);
        check("TEST_PROGS = run_param_test.sh\nCFLAGS += -O2\n", &[]);
        check("$(OUTPUT)/param_test: param_test.c\n\t$(CC) -DX=1 $< -o $@\n", &[]);
        check("", &[]);
    }
}
