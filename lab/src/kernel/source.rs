//! Getting a kernel source tree: a Debian package, a local git ref or a local tarball.
//!
//! The Debian path uses a private apt state below the cache (its own sources.list, lists and
//! archives), so the host's apt configuration is neither read for sources nor modified. The .deb's
//! SHA256 is checked against the digest in the signed index apt published, by the lab itself.

use std::fs;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use xshell::{cmd, Shell};

use super::recipe::Source;
use crate::cache::{self, Cache, KeyBuilder, Lock};

/// A source pinned down to exact content: `id` changes whenever the tree would.
pub struct Fetched {
    pub id: String,
    what: Unpack,
}

enum Unpack {
    Deb(PathBuf),
    Git { repo: PathBuf, commit: String },
    Tarball(PathBuf),
}

pub fn fetch(sh: &Shell, cache: &Cache, source: &Source) -> Result<Fetched> {
    match source {
        Source::Debian { package, suite, mirror, version } => debian(sh, cache, package, suite, mirror, version.as_deref()),
        Source::Git { repo, git_ref } => {
            let spec = format!("{git_ref}^{{commit}}");
            let commit = cmd!(sh, "git -C {repo} rev-parse --verify --quiet {spec}")
                .quiet()
                .read()
                .with_context(|| format!("`{git_ref}` is not a commit in the git repository {}", repo.display()))?;
            Ok(Fetched { id: format!("git:{commit}"), what: Unpack::Git { repo: repo.clone(), commit } })
        }
        Source::Tarball { path } => {
            let digest = cache::sha256_file(path)?;
            Ok(Fetched { id: format!("tarball:sha256:{digest}"), what: Unpack::Tarball(path.clone()) })
        }
    }
}

/// Extracts the tree into `dest` (which must not exist), the kernel's top-level files directly in it.
pub fn unpack(sh: &Shell, fetched: &Fetched, dest: &Path) -> Result<()> {
    fs::create_dir_all(dest)?;
    let scratch = cache::temp_sibling(&dest.with_extension("unpack"));
    cache::remove_dir_if_present(&scratch)?;
    fs::create_dir_all(&scratch)?;
    let result = (|| -> Result<()> {
        let tarball = match &fetched.what {
            Unpack::Tarball(path) => path.clone(),
            Unpack::Deb(deb) => {
                cmd!(sh, "dpkg-deb -x {deb} {scratch}").quiet().run().context("dpkg-deb cannot unpack the source package")?;
                find_tarball(&scratch.join("usr/src"))?
            }
            Unpack::Git { repo, commit } => {
                let tar = scratch.join("source.tar");
                cmd!(sh, "git -C {repo} archive --format=tar --prefix=linux/ -o {tar} {commit}").quiet().run()?;
                tar
            }
        };
        cmd!(sh, "tar -xf {tarball} -C {dest} --strip-components=1")
            .quiet()
            .run()
            .with_context(|| format!("cannot extract {}", tarball.display()))?;
        if !dest.join("Makefile").exists() || !dest.join("kernel/sched").is_dir() {
            bail!("{} does not hold a kernel tree at its top level", tarball.display());
        }
        Ok(())
    })();
    cache::remove_dir_if_present(&scratch)?;
    result
}

fn find_tarball(dir: &Path) -> Result<PathBuf> {
    fs::read_dir(dir)
        .with_context(|| format!("the package has no {}", dir.display()))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .find(|p| p.file_name().and_then(|n| n.to_str()).is_some_and(|n| n.starts_with("linux-source") && n.contains(".tar")))
        .with_context(|| format!("no linux-source-*.tar.* in {}", dir.display()))
}

fn debian(sh: &Shell, cache: &Cache, package: &str, suite: &str, mirror: &str, version: Option<&str>) -> Result<Fetched> {
    let state = cache.dir("apt")?.join(KeyBuilder::default().part("mirror", mirror.as_bytes()).part("suite", suite.as_bytes()).finish());
    let _lock = Lock::acquire(&state.with_extension("lock"))?;
    for sub in ["lists/partial", "archives/partial", "sources.list.d", "preferences.d"] {
        fs::create_dir_all(state.join(sub))?;
    }
    fs::write(state.join("sources.list"), format!("deb {mirror} {suite} main\n"))?;
    let apt = AptState { dir: state };
    let spec = match version {
        Some(v) => format!("{package}={v}"),
        None => package.to_string(),
    };
    // The lists are refreshed only when the package is not in them, so a cached build needs no
    // network; a new upload is picked up by `lab build --refresh` (it empties the lists).
    let fields = match apt.show(sh, &spec) {
        Ok(fields) => fields,
        Err(_) => {
            apt.update(sh)?;
            apt.show(sh, &spec).with_context(|| format!("`{spec}` is not in {mirror} {suite}"))?
        }
    };
    let downloads = cache.dir("downloads")?;
    let deb = downloads.join(fields.filename.rsplit('/').next().unwrap_or(&fields.filename));
    let verified = deb.with_extension("deb.sha256");
    if fs::read_to_string(&verified).ok().as_deref() != Some(fields.sha256.as_str()) || !deb.exists() {
        apt.download(sh, &spec, &downloads)?;
        let digest = cache::sha256_file(&deb)?;
        if digest != fields.sha256 {
            let _ = fs::remove_file(&deb);
            bail!("{} has SHA256 {digest}, but the signed index says {}: removed it, try again", deb.display(), fields.sha256);
        }
        fs::write(&verified, &digest)?;
    }
    Ok(Fetched { id: format!("debian:{package}={}:sha256:{}", fields.version, fields.sha256), what: Unpack::Deb(deb) })
}

struct AptState {
    dir: PathBuf,
}

struct PackageFields {
    version: String,
    sha256: String,
    filename: String,
}

impl AptState {
    /// Every path apt would read or write points into the private state; only the archive keyrings
    /// (to verify signatures) come from the host.
    fn options(&self) -> Vec<String> {
        let d = self.dir.display();
        [
            format!("Dir::Etc::sourcelist={d}/sources.list"),
            format!("Dir::Etc::sourceparts={d}/sources.list.d"),
            format!("Dir::Etc::preferences={d}/preferences"),
            format!("Dir::Etc::preferencesparts={d}/preferences.d"),
            format!("Dir::State::Lists={d}/lists"),
            format!("Dir::State::status={d}/status"),
            format!("Dir::Cache={d}"),
            format!("Dir::Cache::archives={d}/archives"),
            "APT::Default-Release=".to_string(),
            "APT::Sandbox::User=root".to_string(),
            "Acquire::Languages=none".to_string(),
        ]
        .into_iter()
        .flat_map(|o| ["-o".to_string(), o])
        .collect()
    }

    fn update(&self, sh: &Shell) -> Result<()> {
        fs::write(self.dir.join("status"), "")?;
        let opts = self.options();
        cmd!(sh, "apt-get {opts...} -q update").quiet().ignore_stdout().run().context("apt-get update of the private source index failed: check the network and the mirror")
    }

    fn show(&self, sh: &Shell, spec: &str) -> Result<PackageFields> {
        if !self.dir.join("status").exists() {
            bail!("no index yet");
        }
        let opts = self.options();
        let text = cmd!(sh, "apt-cache {opts...} show --no-all-versions {spec}").quiet().ignore_stderr().read()?;
        let field = |name: &str| {
            text.lines()
                .find_map(|l| l.strip_prefix(name)?.strip_prefix(": ").map(str::to_string))
                .with_context(|| format!("apt-cache show {spec} has no {name} field"))
        };
        Ok(PackageFields { version: field("Version")?, sha256: field("SHA256")?, filename: field("Filename")? })
    }

    fn download(&self, sh: &Shell, spec: &str, into: &Path) -> Result<()> {
        let opts = self.options();
        let _dir = sh.push_dir(into);
        cmd!(sh, "apt-get {opts...} -q download {spec}").quiet().ignore_stdout().run().with_context(|| format!("apt-get download {spec} failed"))
    }
}

/// Forgets the private package index so the next fetch asks the mirror again.
pub fn forget_indexes(cache: &Cache) -> Result<()> {
    cache::remove_dir_if_present(&cache.root().join("apt"))
}
