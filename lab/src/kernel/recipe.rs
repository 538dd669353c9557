//! Kernel recipes: where the source comes from, which patches go on it, which config fragments.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use serde::Deserialize;

use crate::arch::Arch;

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
struct RecipeFile {
    name: String,
    #[serde(default)]
    description: String,
    /// Another recipe whose source, config and patches this one starts from; its own patches are
    /// applied after the parent's. A patched variant is then one line plus a patch directory.
    extends: Option<PathBuf>,
    source: Option<SourceFile>,
    /// A directory of `git format-patch`/mbox files applied in name order, or holding a quilt
    /// `series` file that gives the order.
    patches: Option<PathBuf>,
    config: Option<ConfigFile>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
struct ConfigFile {
    /// The Kbuild target that makes the starting `.config` (`tinyconfig`, `defconfig`, ...).
    base: String,
    fragments: Vec<PathBuf>,
    #[serde(default)]
    arch: BTreeMap<Arch, Vec<PathBuf>>,
}

/// `source:` in YAML: a map with exactly one of these keys. (serde_yaml would want a `!debian`
/// tag for an enum, which reads worse in a recipe.)
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
struct SourceFile {
    debian: Option<DebianSource>,
    git: Option<GitSource>,
    tarball: Option<TarballSource>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
struct DebianSource {
    package: String,
    suite: String,
    #[serde(default = "default_mirror")]
    mirror: String,
    version: Option<String>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
struct GitSource {
    repo: PathBuf,
    #[serde(rename = "ref")]
    git_ref: String,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
struct TarballSource {
    path: PathBuf,
}

/// Where a recipe's kernel tree comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TreeSource {
    /// A Debian `linux-source-X.Y` package, fetched with a private apt configuration.
    Debian {
        package: String,
        suite: String,
        mirror: String,
        /// Pins one version; without it the suite's current one is used.
        version: Option<String>,
    },
    /// A local git repository at a ref.
    Git { repo: PathBuf, git_ref: String },
    /// A local `linux-*.tar.{gz,xz,zst}` with one top-level directory.
    Tarball { path: PathBuf },
}

fn default_mirror() -> String {
    "http://deb.debian.org/debian".to_string()
}

/// A recipe with every file it names read and checked, so later stages cannot fail on a
/// missing patch halfway through a run.
#[derive(Debug, Clone)]
pub struct Recipe {
    pub name: String,
    pub description: String,
    pub source: TreeSource,
    pub patches: Vec<Patch>,
    pub base_config: String,
    fragments: Vec<Fragment>,
    arch_fragments: BTreeMap<Arch, Vec<Fragment>>,
}

#[derive(Debug, Clone)]
pub struct Patch {
    pub name: String,
    pub contents: Vec<u8>,
    /// The `-pN` strip level (quilt series lines may give it; default 1).
    pub strip: u32,
}

#[derive(Debug, Clone)]
pub struct Fragment {
    pub path: PathBuf,
    pub text: String,
}

impl std::fmt::Display for TreeSource {
    fn fmt(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        match self {
            TreeSource::Debian { package, suite, mirror, version } => {
                write!(
                    f,
                    "Debian {package}{} from {suite} ({mirror})",
                    version.as_ref().map_or(String::new(), |v| format!("={v}"))
                )
            }
            TreeSource::Git { repo, git_ref } => write!(f, "git {} at {git_ref}", repo.display()),
            TreeSource::Tarball { path } => write!(f, "tarball {}", path.display()),
        }
    }
}

impl Recipe {
    /// A key over everything the recipe puts into its kernels (source, patches, config), so that
    /// a run can tell whether the kernels it was started with are still the ones it would build.
    pub fn fingerprint(&self) -> String {
        let mut key = crate::cache::KeyBuilder::default()
            .part("name", self.name.as_bytes())
            .part("source", format!("{:?}", self.source).as_bytes())
            .part("base", self.base_config.as_bytes());
        for patch in &self.patches {
            key = key.part("patch", patch.name.as_bytes()).part("strip", &patch.strip.to_le_bytes());
            key = key.part("contents", &patch.contents);
        }
        let arch_fragments = self.arch_fragments.iter().flat_map(|(arch, f)| f.iter().map(move |f| (arch.name(), f)));
        for (arch, fragment) in self.fragments.iter().map(|f| ("all", f)).chain(arch_fragments) {
            key = key.part("fragment", arch.as_bytes()).part("text", fragment.text.as_bytes());
        }
        key.finish()
    }

    /// This recipe with `patches` applied after its own, under another name: a series step.
    pub fn extended(&self, name: String, description: String, patches: &[Patch]) -> Recipe {
        let mut recipe = self.clone();
        recipe.name = name;
        recipe.description = description;
        recipe.patches.extend_from_slice(patches);
        recipe
    }

    /// The common fragments followed by the architecture's own: later lines win.
    pub fn fragments(&self, arch: Arch) -> impl Iterator<Item = &Fragment> {
        self.fragments.iter().chain(self.arch_fragments.get(&arch).into_iter().flatten())
    }
}

pub fn load(path: &Path) -> Result<Recipe> {
    load_nested(path, 0)
}

/// Deep enough for any sensible family of variants, shallow enough to stop a cycle.
const MAX_EXTENDS_DEPTH: usize = 8;

fn load_nested(path: &Path, depth: usize) -> Result<Recipe> {
    if depth > MAX_EXTENDS_DEPTH {
        bail!("`extends` goes more than {MAX_EXTENDS_DEPTH} recipes deep at {}: is there a cycle?", path.display());
    }
    let text =
        std::fs::read_to_string(path).with_context(|| format!("cannot read kernel recipe {}", path.display()))?;
    let file: RecipeFile =
        serde_yaml::from_str(&text).with_context(|| format!("invalid kernel recipe {}", path.display()))?;
    resolve(file, path, depth).with_context(|| format!("kernel recipe {}", path.display()))
}

fn resolve(file: RecipeFile, path: &Path, depth: usize) -> Result<Recipe> {
    if file.name.is_empty() || !file.name.chars().all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c)) {
        bail!("name `{}` may only hold letters, digits, `-`, `_` and `.`", file.name);
    }
    let dir = path.parent().unwrap_or(Path::new("."));
    let own_patches = match &file.patches {
        Some(p) => series(&existing(dir, p)?)?,
        None => Vec::new(),
    };
    let (source_file, config) = match (file.extends, file.source, file.config) {
        (Some(parent), None, None) => {
            let mut recipe = load_nested(&existing(dir, &parent)?, depth + 1)?;
            recipe.name = file.name;
            recipe.description = file.description;
            recipe.patches.extend(own_patches);
            return Ok(recipe);
        }
        (Some(_), _, _) => {
            bail!("a recipe that `extends` another takes `source` and `config` from it: remove them here")
        }
        (None, Some(source), Some(config)) => (source, config),
        (None, _, _) => bail!("a recipe needs `source` and `config` (or `extends` another recipe)"),
    };
    let source = match source_file {
        SourceFile { debian: Some(d), git: None, tarball: None } => {
            TreeSource::Debian { package: d.package, suite: d.suite, mirror: d.mirror, version: d.version }
        }
        SourceFile { debian: None, git: Some(g), tarball: None } => {
            TreeSource::Git { repo: existing(dir, &g.repo)?, git_ref: g.git_ref }
        }
        SourceFile { debian: None, git: None, tarball: Some(t) } => {
            TreeSource::Tarball { path: existing(dir, &t.path)? }
        }
        _ => bail!("`source` must name exactly one of `debian`, `git`, `tarball`"),
    };
    let read_fragments = |paths: &[PathBuf]| -> Result<Vec<Fragment>> {
        paths
            .iter()
            .map(|p| {
                let path = existing(dir, p)?;
                let text = std::fs::read_to_string(&path).with_context(|| format!("cannot read {}", path.display()))?;
                super::config::parse_fragment(&text).with_context(|| format!("config fragment {}", path.display()))?;
                Ok(Fragment { path, text })
            })
            .collect()
    };
    Ok(Recipe {
        name: file.name,
        description: file.description,
        source,
        patches: own_patches,
        base_config: config.base,
        fragments: read_fragments(&config.fragments)?,
        arch_fragments: config.arch.iter().map(|(a, p)| Ok((*a, read_fragments(p)?))).collect::<Result<_>>()?,
    })
}

fn existing(dir: &Path, path: &Path) -> Result<PathBuf> {
    let full = dir.join(path);
    if !full.exists() {
        bail!("{} does not exist (paths in a recipe are relative to the recipe file)", full.display());
    }
    Ok(full)
}

/// The patches of a series directory, in the order they must be applied.
pub(super) fn series(dir: &Path) -> Result<Vec<Patch>> {
    let read = |name: &str, strip: u32| -> Result<Patch> {
        let path = dir.join(name);
        let contents = std::fs::read(&path).with_context(|| format!("cannot read patch {}", path.display()))?;
        Ok(Patch { name: name.to_string(), contents, strip })
    };
    let series_file = dir.join("series");
    if series_file.exists() {
        let text = std::fs::read_to_string(&series_file)?;
        return parse_series(&text)
            .with_context(|| format!("quilt series {}", series_file.display()))?
            .into_iter()
            .map(|(name, strip)| read(&name, strip))
            .collect();
    }
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .with_context(|| format!("cannot list patch directory {}", dir.display()))?
        .filter_map(|e| e.ok()?.file_name().into_string().ok())
        .filter(|n| [".patch", ".diff", ".mbox", ".eml"].iter().any(|ext| n.ends_with(ext)))
        .collect();
    names.sort();
    if names.is_empty() {
        bail!("patch directory {} holds no *.patch, *.diff, *.mbox or *.eml file and no quilt `series`", dir.display());
    }
    names.iter().map(|n| read(n, 1)).collect()
}

/// Quilt's format: one patch per line, `#` comments, an optional `-pN` after the name.
fn parse_series(text: &str) -> Result<Vec<(String, u32)>> {
    let mut out = Vec::new();
    for (i, line) in text.lines().enumerate() {
        let line = line.split('#').next().unwrap_or("").trim();
        let mut words = line.split_whitespace();
        let Some(name) = words.next() else { continue };
        let strip = match words.next() {
            None => 1,
            Some(opt) => opt
                .strip_prefix("-p")
                .and_then(|n| n.parse().ok())
                .with_context(|| format!("line {}: `{opt}` is not a -pN option", i + 1))?,
        };
        out.push((name.to_string(), strip));
    }
    if out.is_empty() {
        bail!("the series names no patch");
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quilt_series() {
        let text = "# fixes first\n0001-a.patch\n\n0002-b.patch -p0 # old style\n";
        assert_eq!(parse_series(text).unwrap(), [("0001-a.patch".into(), 1), ("0002-b.patch".into(), 0)]);
        assert!(format!("{:#}", parse_series("x.patch -q\n").unwrap_err()).contains("line 1"));
        assert!(parse_series("# nothing\n").is_err());
    }

    #[test]
    fn recipe_errors_name_the_problem() {
        let bad =
            "name: x\nsource: {debian: {package: p, suite: s}}\nconfig: {base: tinyconfig, fragments: []}\nextra: 1\n";
        let err = serde_yaml::from_str::<RecipeFile>(bad).unwrap_err().to_string();
        assert!(err.contains("unknown field `extra`") && err.contains("line 4"), "{err}");
        let two =
            "name: x\nsource: {git: {repo: ., ref: HEAD}, tarball: {path: x.tar}}\nconfig: {base: t, fragments: []}\n";
        let err = format!("{:#}", resolve(serde_yaml::from_str(two).unwrap(), Path::new("r.yaml"), 0).unwrap_err());
        assert!(err.contains("exactly one of"), "{err}");
        let bad_arch =
            "name: x\nsource: {git: {repo: ., ref: HEAD}}\nconfig: {base: t, fragments: [], arch: {arm64: []}}\n";
        let err = serde_yaml::from_str::<RecipeFile>(bad_arch).unwrap_err().to_string();
        assert!(err.contains("arm64"), "{err}");
    }
}
