//! Stage: kernel recipe -> built kernel for one architecture, cached by content.
//!
//! Cache layout (below the lab cache root):
//! - `trees/<tree key>/src/`: the source with the recipe's patches applied; the key hashes the
//!   source identity and the patches. Build directories are *direct* subdirectories of it
//!   (`src/o-<arch>-<config key>`), because then Kbuild names the source `..` in every command
//!   line: a copy of the whole tree builds incrementally, where a copy of an `O=` directory that
//!   points at another absolute source path rebuilds everything.
//! - A recipe that only adds patches to an already built one starts from a copy (`cp -a`, mtimes
//!   kept) of the tree with the longest matching patch prefix, build directories included, and
//!   applies the rest: Kbuild then recompiles only what the patches touch.
//! - `kernels/<name>-<arch>-<kernel key>/`: the finished kernel (boot image, vmlinux, .config,
//!   System.map, build log, kernel.json). It exists only when complete (renamed into place), and
//!   its key covers the tree key, the config inputs, the architecture and the compiler version.
//! - `selftests/<arch>-<key>/`: the tree's rseq selftests (selftests.rs), keyed by the tree rather
//!   than the config, found or built with every kernel of the tree, read from `src/` only.

pub mod config;
pub mod recipe;
mod selftests;
pub mod series;
mod source;

use std::fs::{self, File};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

use anyhow::{bail, Context, Result};
use serde::{Deserialize, Serialize};
use xshell::{cmd, Shell};

use crate::apt;
use crate::arch::Arch;
use crate::cache::{self, Cache, KeyBuilder, Lock};
use crate::process;
use crate::ui::{Event, Ui};
pub use recipe::Recipe;
pub use selftests::Selftests;

/// Bump when the way a kernel is built changes in a way its inputs do not show.
const BUILD_RECIPE_VERSION: &str = "1";

/// A built kernel, ready to boot.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Kernel {
    pub recipe: String,
    pub arch: Arch,
    pub key: String,
    pub dir: PathBuf,
    /// What QEMU's `-kernel` takes.
    pub image: PathBuf,
    pub vmlinux: PathBuf,
    pub config: PathBuf,
    pub source: String,
    pub patches: Vec<String>,
    pub toolchain: String,
    pub build_seconds: f64,
    /// The tree's rseq selftests for this architecture: an artifact of their own (kernels built
    /// before them, or with other configs, share them), found or built with the kernel.
    #[serde(skip)]
    pub selftests: Selftests,
    /// True when this call found it in the cache.
    #[serde(skip)]
    pub cached: bool,
}

impl Kernel {
    /// The kernel's text symbols, for naming addresses read from the guest.
    pub fn system_map(&self) -> PathBuf {
        self.dir.join("System.map")
    }
}

#[derive(Debug, Serialize, Deserialize)]
struct TreeInfo {
    source: String,
    /// Content keys of the applied patches, in order.
    patches: Vec<String>,
    /// Their `-pN` levels, kept by the walking tree, which takes patches off again.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    strips: Vec<u32>,
}

#[derive(Clone, Copy)]
pub struct BuildOptions {
    pub jobs: usize,
    /// Compile through ccache when it is installed.
    pub ccache: bool,
    /// Re-read the Debian package index instead of trusting the cached one.
    pub refresh: bool,
    /// Build in the source's one walking tree, moved to this recipe's patches in place (the
    /// patches it has beyond ours taken off, ours put on), instead of a tree per patch list:
    /// a series step costs the files its patch touches, not a copy of the tree.
    pub in_place: bool,
}

pub fn build(sh: &Shell, cache: &Cache, recipe: &Recipe, arch: Arch, opts: &BuildOptions, ui: &Ui) -> Result<Kernel> {
    let task = format!("{} {arch}", recipe.name);
    ui.stage(
        &task,
        "kernel",
        || build_inner(sh, cache, recipe, arch, opts, ui, &task),
        |k| {
            let selftests = if k.selftests.cached {
                String::new()
            } else {
                format!(", {} rseq selftests built", k.selftests.programs.len())
            };
            match k.cached {
                true => format!("cached ({}){selftests}", k.dir.display()),
                false => format!("built in {:.0}s ({}){selftests}", k.build_seconds, k.dir.display()),
            }
        },
    )
    .with_context(|| format!("kernel {} for {arch}", recipe.name))
}

fn build_inner(
    sh: &Shell,
    cache: &Cache,
    recipe: &Recipe,
    arch: Arch,
    opts: &BuildOptions,
    ui: &Ui,
    task: &str,
) -> Result<Kernel> {
    let gcc = arch.gcc();
    let toolchain = cmd!(sh, "{gcc} --version")
        .quiet()
        .read()
        .ok()
        .and_then(|v| v.lines().next().map(str::to_string))
        .with_context(|| {
            format!("{gcc} is not installed: run `lab setup` (or install {})", arch.toolchain_packages().join(" "))
        })?;
    if opts.refresh {
        apt::forget_indexes(cache)?;
    }
    ui.send(Event::Progress { task: task.to_string(), message: "resolving source".into() });
    let fetched = source::fetch(sh, cache, &recipe.source)?;
    let patch_keys: Vec<String> = recipe
        .patches
        .iter()
        .map(|p| KeyBuilder::default().part("patch", &p.contents).part("strip", &p.strip.to_le_bytes()).finish())
        .collect();
    let tree_key = patch_keys
        .iter()
        .fold(KeyBuilder::default().part("source", fetched.id.as_bytes()), |k, p| k.part("patch", p.as_bytes()))
        .finish();
    let mut requested = config::Symbols::new();
    let mut config_key = KeyBuilder::default()
        .part("base", recipe.base_config.as_bytes())
        .part("arch", arch.name().as_bytes())
        .part("toolchain", toolchain.as_bytes())
        .part("recipe-version", BUILD_RECIPE_VERSION.as_bytes());
    for fragment in recipe.fragments(arch) {
        config_key = config_key.part("fragment", fragment.text.as_bytes());
        requested.extend(config::parse_fragment(&fragment.text)?);
    }
    let config_key = config_key.finish();
    let kernel_key =
        KeyBuilder::default().part("tree", tree_key.as_bytes()).part("config", config_key.as_bytes()).finish();
    let dir = cache.dir("kernels")?.join(format!("{}-{arch}-{kernel_key}", recipe.name));
    // Keyed by the patches that can change them: a series step that touches the scheduler runs
    // the selftests its base built.
    let selftests_tree = recipe
        .patches
        .iter()
        .zip(&patch_keys)
        .filter(|(p, _)| touches_selftest_inputs(p))
        .fold(KeyBuilder::default().part("source", fetched.id.as_bytes()), |k, (_, key)| {
            k.part("patch", key.as_bytes())
        });
    let selftests_key = selftests::key(&selftests_tree.finish(), arch, &toolchain);
    let trees = cache.dir("trees")?;
    let tree = match opts.in_place {
        true => trees.join(format!("walk-{}", KeyBuilder::default().part("source", fetched.id.as_bytes()).finish())),
        false => trees.join(&tree_key),
    };
    let src = tree.join("src");
    let ready_tree = || -> Result<Lock> {
        let lock = Lock::acquire(&tree.with_extension("lock"))?;
        if opts.in_place {
            walk_tree(sh, &trees, &tree, &fetched, recipe, &patch_keys, ui, task)?;
        } else if !tree.join("tree.json").exists() {
            ui.send(Event::Progress { task: task.to_string(), message: "preparing source tree".into() });
            prepare_tree(sh, &trees, &tree, &fetched, recipe, &patch_keys)?;
        }
        Ok(lock)
    };
    if let Some(mut kernel) = read_kernel(&dir) {
        kernel.cached = true;
        kernel.selftests = match selftests::cached(cache, arch, &selftests_key)? {
            Some(selftests) => selftests,
            None => {
                let _tree_lock = ready_tree()?;
                selftests::build(sh, cache, &src, arch, &selftests_key, ui, task)?
            }
        };
        return Ok(kernel);
    }

    let _tree_lock = ready_tree()?;
    let out_name = format!("o-{arch}-{config_key}");
    let out = src.join(&out_name);
    // A tree made before this configuration was built anywhere has no build directory for it.
    // Once a tree with fewer of its patches has one, the tree is made again from that donor, its
    // patches reapplied after the copy (so they are newer than the copied objects): an incremental
    // build instead of a cold one after every change of the config fragments.
    let donor_built = |donor: &Path| donor.join("src").join(&out_name).join("vmlinux").exists();
    if !opts.in_place
        && !out.join(".lab-config-ok").exists()
        && best_donor(&trees, &fetched.id, &patch_keys, &tree).is_some_and(|(donor, _)| donor_built(&donor))
    {
        ui.send(Event::Progress {
            task: task.to_string(),
            message: "copying the tree of fewer patches, built with this config".into(),
        });
        prepare_tree(sh, &trees, &tree, &fetched, recipe, &patch_keys)?;
    }
    let started = Instant::now();
    let (kernel_arch, cross, jobs) = (arch.kernel_arch(), arch.cross_compile(), opts.jobs.to_string());
    let make = |target: &str| -> Command {
        let mut c = Command::from(cmd!(
            sh,
            "make -C {src} O={out_name} ARCH={kernel_arch} CROSS_COMPILE={cross} -j{jobs} {target}"
        ));
        if opts.ccache && which("ccache") {
            c.arg(format!("CC=ccache {gcc}"));
            c.env("CCACHE_DIR", cache.root().join("ccache")).env("CCACHE_NOHASHDIR", "1");
        }
        // Fixed build identity: a rebuild with nothing changed reproduces the same objects.
        c.env("KBUILD_BUILD_USER", "lab").env("KBUILD_BUILD_HOST", "lab").env("KBUILD_BUILD_TIMESTAMP", "1970-01-01");
        c
    };
    let stamp = out.join(".lab-config-ok");
    let config_log = tree.join(format!("{out_name}.config.log"));
    if !stamp.exists() {
        ui.send(Event::Progress { task: task.to_string(), message: format!("configuring ({})", recipe.base_config) });
        fs::create_dir_all(&out)?;
        process::run_logged(make(&recipe.base_config), &config_log, |_| ())?;
        let mut dot_config = fs::read_to_string(out.join(".config")).context("the base config made no .config")?;
        for fragment in recipe.fragments(arch) {
            dot_config.push_str(&format!("\n# lab fragment {}\n{}\n", fragment.path.display(), fragment.text));
        }
        fs::write(out.join(".config"), dot_config)?;
        process::run_logged(make("olddefconfig"), &config_log, |_| ())?;
        let final_config = fs::read_to_string(out.join(".config"))?;
        let missing = config::mismatches(&requested, &final_config);
        if !missing.is_empty() {
            let list: Vec<String> =
                missing.iter().map(|(n, w, g)| format!("    {n}: requested {w}, got {g}")).collect();
            bail!(
                "{} requested config symbol(s) did not stick after olddefconfig (a dependency is off; \
                 `make menuconfig`, then `/` and the symbol, shows what it depends on):\n{}\nconfig: {}",
                missing.len(),
                list.join("\n"),
                out.join(".config").display()
            );
        }
        fs::write(&stamp, "")?;
    }
    let (target, image_rel) = arch.kernel_target();
    let build_log = tree.join(format!("{out_name}.build.log"));
    ui.send(Event::Progress { task: task.to_string(), message: format!("make {target}") });
    let mut compiled = 0usize;
    process::run_logged(make(target), &build_log, |line| {
        ui.send(Event::Output { task: task.to_string(), line: line.to_string() });
        if line.starts_with("  CC") || line.starts_with("  LD") || line.starts_with("  AR") {
            compiled += 1;
            if compiled.is_multiple_of(50) {
                ui.send(Event::Progress {
                    task: task.to_string(),
                    message: format!("make {target}: {compiled} steps: {}", line.trim()),
                });
            }
        }
    })
    .with_context(|| format!("the kernel build failed (arch {arch}, tree {})", src.display()))?;

    let tmp = cache::temp_sibling(&dir);
    cache::remove_dir_if_present(&tmp)?;
    fs::create_dir_all(&tmp)?;
    for (from, to) in
        [(image_rel, "image"), ("vmlinux", "vmlinux"), (".config", "config"), ("System.map", "System.map")]
    {
        fs::copy(out.join(from), tmp.join(to)).with_context(|| format!("the build made no {from}"))?;
    }
    fs::copy(&build_log, tmp.join("build.log"))?;
    let kernel = Kernel {
        recipe: recipe.name.clone(),
        arch,
        key: kernel_key,
        image: dir.join("image"),
        vmlinux: dir.join("vmlinux"),
        config: dir.join("config"),
        dir: dir.clone(),
        source: fetched.id.clone(),
        patches: recipe.patches.iter().map(|p| p.name.clone()).collect(),
        toolchain,
        build_seconds: started.elapsed().as_secs_f64(),
        selftests: Selftests::default(),
        cached: false,
    };
    cache::write_atomic(&tmp.join("kernel.json"), serde_json::to_string_pretty(&kernel)?.as_bytes())?;
    cache::remove_dir_if_present(&dir)?;
    fs::rename(&tmp, &dir)?;
    Ok(Kernel { selftests: selftests::build(sh, cache, &src, arch, &selftests_key, ui, task)?, ..kernel })
}

/// Whether a patch touches what the rseq selftests are built from: `tools/` (their sources, the
/// tools headers) or a uapi header.
fn touches_selftest_inputs(patch: &recipe::Patch) -> bool {
    String::from_utf8_lossy(&patch.contents)
        .lines()
        .filter_map(|l| l.strip_prefix("+++ ").or_else(|| l.strip_prefix("--- ")))
        .any(|path| path.contains("tools/") || path.contains("/uapi/"))
}

/// The most recently built kernel for `arch` in the cache, of any recipe (`lab doctor` boots it
/// to prove KVM without building one).
pub fn newest_built(cache: &Cache, arch: Arch) -> Option<Kernel> {
    let entries = fs::read_dir(cache.dir("kernels").ok()?).ok()?;
    let kernels =
        entries.flatten().filter_map(|e| Some((e.metadata().ok()?.modified().ok()?, read_kernel(&e.path())?)));
    kernels.filter(|(_, k)| k.arch == arch).max_by_key(|(modified, _)| *modified).map(|(_, k)| k)
}

fn read_kernel(dir: &Path) -> Option<Kernel> {
    let kernel: Kernel = serde_json::from_slice(&fs::read(dir.join("kernel.json")).ok()?).ok()?;
    [&kernel.image, &kernel.vmlinux, &kernel.config].iter().all(|p| p.exists()).then_some(kernel)
}

/// Creates `tree` (source plus patches) in a temporary directory and renames it into place, so a
/// patch that does not apply leaves no tree behind.
fn prepare_tree(
    sh: &Shell,
    trees: &Path,
    tree: &Path,
    fetched: &source::Fetched,
    recipe: &Recipe,
    patch_keys: &[String],
) -> Result<()> {
    let tmp = cache::temp_sibling(tree);
    cache::remove_dir_if_present(&tmp)?;
    fs::create_dir_all(&tmp)?;
    let result = (|| -> Result<()> {
        let src = tmp.join("src");
        let applied = match best_donor(trees, &fetched.id, patch_keys, tree) {
            Some((donor, applied)) => {
                let _donor_lock = Lock::acquire(&donor.with_extension("lock"))?;
                let from = donor.join("src");
                cmd!(sh, "cp -a --reflink=auto {from} {src}").quiet().run().context("cannot copy the donor tree")?;
                rebase_tool_paths(&src, &from, &tree.join("src"))?;
                applied
            }
            None => {
                source::unpack(sh, fetched, &src)?;
                0
            }
        };
        for patch in &recipe.patches[applied..] {
            apply_patch(sh, &src, patch, Direction::Forward)?;
        }
        let strips = recipe.patches.iter().map(|p| p.strip).collect();
        let info = TreeInfo { source: fetched.id.clone(), patches: patch_keys.to_vec(), strips };
        fs::write(tmp.join("tree.json"), serde_json::to_string_pretty(&info)?)?;
        Ok(())
    })();
    if let Err(e) = result {
        cache::remove_dir_if_present(&tmp)?;
        return Err(e);
    }
    cache::remove_dir_if_present(tree)?;
    fs::rename(&tmp, tree).with_context(|| format!("cannot move the new tree to {}", tree.display()))
}

/// Kbuild builds its host tools (objtool on x86_64) with absolute source paths, and every object
/// depends on the objtool binary: in a copied tree the recorded commands name the donor, objtool
/// is rebuilt, and with it the whole kernel (measured: 1032 files for a comment-only patch). The
/// copy's tool metadata is pointed at the tree's final path, with mtimes kept, so Kbuild sees
/// nothing to redo.
fn rebase_tool_paths(src: &Path, donor: &Path, destination: &Path) -> Result<()> {
    let (from, to) = (donor.as_os_str().as_encoded_bytes(), destination.as_os_str().as_encoded_bytes());
    let mut pending: Vec<PathBuf> = fs::read_dir(src)?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.file_name().and_then(|n| n.to_str()).is_some_and(|n| n.starts_with("o-")))
        .map(|p| p.join("tools"))
        .collect();
    while let Some(path) = pending.pop() {
        let meta = match fs::symlink_metadata(&path) {
            Ok(meta) => meta,
            Err(_) => continue,
        };
        if meta.is_dir() {
            pending.extend(fs::read_dir(&path)?.filter_map(|e| e.ok().map(|e| e.path())));
            continue;
        }
        // Only text metadata (.cmd, .d, feature dumps): binaries are rebuilt from it if needed.
        if !meta.is_file() || meta.len() > 1 << 20 {
            continue;
        }
        let bytes = fs::read(&path)?;
        if bytes.contains(&0) || !bytes.windows(from.len()).any(|w| w == from) {
            continue;
        }
        let rewritten = replace_all(&bytes, from, to);
        fs::write(&path, rewritten)?;
        File::options().write(true).open(&path)?.set_modified(meta.modified()?)?;
    }
    Ok(())
}

fn replace_all(haystack: &[u8], from: &[u8], to: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(haystack.len());
    let mut rest = haystack;
    while let Some(at) = rest.windows(from.len()).position(|w| w == from) {
        out.extend_from_slice(&rest[..at]);
        out.extend_from_slice(to);
        rest = &rest[at + from.len()..];
    }
    out.extend_from_slice(rest);
    out
}

/// The finished tree of the same source, other than `tree`, whose patches are the longest prefix
/// of ours.
fn best_donor(trees: &Path, source: &str, patches: &[String], tree: &Path) -> Option<(PathBuf, usize)> {
    fs::read_dir(trees)
        .ok()?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|dir| dir != tree)
        .filter_map(|dir| {
            let info: TreeInfo = serde_json::from_slice(&fs::read(dir.join("tree.json")).ok()?).ok()?;
            let prefix =
                info.source == source && info.patches.len() <= patches.len() && patches.starts_with(&info.patches);
            prefix.then_some((dir, info.patches.len()))
        })
        .max_by_key(|(_, n)| *n)
}

/// Keeps the walking tree at the patches it has, in their order.
fn write_walk_info(tree: &Path, source: &str, applied: &[(String, u32)]) -> Result<()> {
    let info = TreeInfo {
        source: source.to_string(),
        patches: applied.iter().map(|(k, _)| k.clone()).collect(),
        strips: applied.iter().map(|(_, s)| *s).collect(),
    };
    cache::write_atomic(&tree.join("tree.json"), serde_json::to_string_pretty(&info)?.as_bytes())
}

/// Moves the walking tree to `recipe`'s patches: first made as a copy of the best donor (once),
/// then the patches beyond the common prefix taken off, newest first, and ours put on. Every
/// patch is tried before it is applied, so one that does not apply leaves the tree as it was.
#[allow(clippy::too_many_arguments)]
fn walk_tree(
    sh: &Shell,
    trees: &Path,
    tree: &Path,
    fetched: &source::Fetched,
    recipe: &Recipe,
    patch_keys: &[String],
    ui: &Ui,
    task: &str,
) -> Result<()> {
    let saved = |key: &str| tree.join("applied").join(key);
    let info: Option<TreeInfo> =
        fs::read(tree.join("tree.json")).ok().and_then(|b| serde_json::from_slice(&b).ok()).filter(|i: &TreeInfo| {
            i.source == fetched.id && i.strips.len() == i.patches.len() && i.patches.iter().all(|k| saved(k).exists())
        });
    let Some(info) = info else {
        ui.send(Event::Progress { task: task.to_string(), message: "making the walking tree for series".into() });
        prepare_tree(sh, trees, tree, fetched, recipe, patch_keys)?;
        fs::create_dir_all(tree.join("applied"))?;
        for (key, patch) in patch_keys.iter().zip(&recipe.patches) {
            fs::write(saved(key), &patch.contents)?;
        }
        return Ok(());
    };
    let src = tree.join("src");
    let common = info.patches.iter().zip(patch_keys).take_while(|(a, b)| a == b).count();
    let mut applied: Vec<(String, u32)> = info.patches.into_iter().zip(info.strips).collect();
    while applied.len() > common {
        let (key, strip) = applied.last().cloned().unwrap_or_default();
        let contents = fs::read(saved(&key))?;
        let patch = recipe::Patch { name: format!("{key} (taken off)"), contents, strip };
        apply_patch(sh, &src, &patch, Direction::Reverse)
            .with_context(|| format!("the walking tree {} cannot go back: remove it", tree.display()))?;
        applied.pop();
        write_walk_info(tree, &fetched.id, &applied)?;
    }
    for (key, patch) in patch_keys[common..].iter().zip(&recipe.patches[common..]) {
        ui.send(Event::Progress { task: task.to_string(), message: format!("applying {}", patch.name) });
        apply_patch(sh, &src, patch, Direction::Forward)?;
        fs::write(saved(key), &patch.contents)?;
        applied.push((key.clone(), patch.strip));
        write_walk_info(tree, &fetched.id, &applied)?;
    }
    Ok(())
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Direction {
    Forward,
    Reverse,
}

/// A patch that does not apply, named with its file and hunk: a series stops there, a build
/// error does not stop it.
#[derive(Debug, thiserror::Error)]
#[error("patch {patch} does not apply:\n{why}")]
pub struct PatchDoesNotApply {
    pub patch: String,
    pub why: String,
}

/// Tries the patch first (`--dry-run`) so that one that fails changes nothing.
fn apply_patch(sh: &Shell, src: &Path, patch: &recipe::Patch, direction: Direction) -> Result<()> {
    let file = cache::temp_sibling(&src.with_extension("patch"));
    fs::write(&file, &patch.contents)?;
    let strip = format!("-p{}", patch.strip);
    let way = match direction {
        Direction::Forward => "--forward",
        Direction::Reverse => "--reverse",
    };
    let attempt = |dry: &[&str]| {
        cmd!(sh, "patch -d {src} {strip} --batch {way} --no-backup-if-mismatch {dry...} -i {file}")
            .quiet()
            .ignore_status()
            .output()
            .context("cannot run `patch`: install it (`lab setup`)")
    };
    let output = attempt(&["--dry-run"]).and_then(|tried| match tried.status.success() {
        true => attempt(&[]),
        false => Ok(tried),
    });
    let _ = fs::remove_file(&file);
    let output = output?;
    if output.status.success() {
        return Ok(());
    }
    let text = String::from_utf8_lossy(&output.stdout).into_owned() + &String::from_utf8_lossy(&output.stderr);
    Err(PatchDoesNotApply { patch: patch.name.clone(), why: explain_patch_failure(&text) }.into())
}

/// Turns GNU patch's chatter into `file: hunk #N FAILED at L` lines.
fn explain_patch_failure(output: &str) -> String {
    let mut file = "";
    let mut failures = Vec::new();
    for line in output.lines() {
        if let Some(f) = line.strip_prefix("patching file ").or_else(|| line.strip_prefix("checking file ")) {
            file = f.trim_matches(|c| c == '\'' || c == '`');
        } else if line.starts_with("Hunk #") && line.contains("FAILED") {
            failures.push(format!("    {file}: {}", line.trim_end_matches('.').to_lowercase()));
        } else if line.contains("can't find file")
            || line.contains("Reversed (or previously applied)")
            || line.contains("malformed")
            || line.contains("Only garbage")
        {
            failures.push(format!("    {}{line}", if file.is_empty() { String::new() } else { format!("{file}: ") }));
        }
    }
    if failures.is_empty() {
        failures
            .push(output.lines().rev().take(5).collect::<Vec<_>>().into_iter().rev().collect::<Vec<_>>().join("\n"));
    }
    failures.join("\n")
}

fn which(program: &str) -> bool {
    std::env::var_os("PATH").is_some_and(|paths| std::env::split_paths(&paths).any(|d| d.join(program).is_file()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_donor_is_the_tree_with_the_longest_prefix_of_our_patches_never_the_tree_itself() {
        let trees = std::env::temp_dir().join(format!("lab-donor-{}", std::process::id()));
        for (name, source, patches) in [
            ("stock", "s", vec![]),
            ("one", "s", vec!["p1"]),
            ("other", "t", vec!["p1"]),
            ("both", "s", vec!["p1", "p2"]),
        ] {
            fs::create_dir_all(trees.join(name)).unwrap();
            let info = TreeInfo {
                source: source.into(),
                patches: patches.into_iter().map(String::from).collect(),
                strips: Vec::new(),
            };
            fs::write(trees.join(name).join("tree.json"), serde_json::to_string(&info).unwrap()).unwrap();
        }
        let donor = |patches: &[&str], tree: &str| {
            let patches: Vec<String> = patches.iter().map(|p| p.to_string()).collect();
            best_donor(&trees, "s", &patches, &trees.join(tree))
                .map(|(dir, n)| format!("{}+{n}", dir.file_name().unwrap().to_string_lossy()))
        };
        assert_eq!(donor(&["p1", "p2"], "new").as_deref(), Some("both+2"));
        assert_eq!(donor(&["p1", "p2"], "both").as_deref(), Some("one+1"));
        assert_eq!(donor(&["p1"], "one").as_deref(), Some("stock+0"));
        assert_eq!(donor(&["p2"], "new").as_deref(), Some("stock+0"));
        assert_eq!(donor(&[], "stock"), None);
        fs::remove_dir_all(trees).unwrap();
    }

    #[test]
    fn copied_trees_point_tool_metadata_at_themselves() {
        let root = std::env::temp_dir().join(format!("lab-rebase-{}", std::process::id()));
        let cmd_file = root.join("new/src/o-x86_64-k/tools/objtool/.check.o.cmd");
        fs::create_dir_all(cmd_file.parent().unwrap()).unwrap();
        fs::write(&cmd_file, "cmd := gcc -I/c/trees/aaaa/src/tools/include /c/trees/aaaa/src/tools/objtool/check.c\n")
            .unwrap();
        let binary = cmd_file.with_file_name("objtool");
        fs::write(&binary, b"\x7fELF\0/c/trees/aaaa/src").unwrap();
        let old = std::time::SystemTime::UNIX_EPOCH + std::time::Duration::from_secs(1_000_000);
        File::options().write(true).open(&cmd_file).unwrap().set_modified(old).unwrap();
        rebase_tool_paths(&root.join("new/src"), Path::new("/c/trees/aaaa/src"), Path::new("/c/trees/bbbb/src"))
            .unwrap();
        assert_eq!(
            fs::read_to_string(&cmd_file).unwrap(),
            "cmd := gcc -I/c/trees/bbbb/src/tools/include /c/trees/bbbb/src/tools/objtool/check.c\n"
        );
        assert_eq!(fs::metadata(&cmd_file).unwrap().modified().unwrap(), old, "mtime kept");
        assert_eq!(fs::read(&binary).unwrap(), b"\x7fELF\0/c/trees/aaaa/src", "binaries untouched");
        fs::remove_dir_all(root).unwrap();
    }

    #[test]
    fn patches_that_change_the_selftests() {
        let patch = |paths: &[&str]| recipe::Patch {
            name: "p".into(),
            contents: paths
                .iter()
                .map(|p| format!("--- a/{p}\n+++ b/{p}\n@@ -1 +1 @@\n-a\n+b\n"))
                .collect::<String>()
                .into_bytes(),
            strip: 1,
        };
        for (paths, touches) in [
            (&["kernel/sched/core.c"][..], false),
            (&["include/linux/rseq.h", "kernel/rseq.c"], false),
            (&["include/uapi/linux/rseq.h"], true),
            (&["tools/testing/selftests/rseq/param_test.c"], true),
            (&["arch/arm64/include/uapi/asm/unistd.h"], true),
        ] {
            assert_eq!(touches_selftest_inputs(&patch(paths)), touches, "{paths:?}");
        }
    }

    #[test]
    fn patch_failures_name_file_and_hunk() {
        let output = "patching file kernel/sched/core.c\nHunk #1 succeeded at 10432 (offset 3 lines).\nHunk #2 FAILED at 10510.\n1 out of 2 hunks FAILED -- saving rejects to file kernel/sched/core.c.rej\n";
        assert_eq!(explain_patch_failure(output), "    kernel/sched/core.c: hunk #2 failed at 10510");
        let missing = "can't find file to patch at input line 5\nPerhaps you used the wrong -p or --strip option?\n";
        assert!(explain_patch_failure(missing).contains("can't find file to patch"));
    }
}
