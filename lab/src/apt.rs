//! Debian packages through a private apt state below the cache: the kernel stage fetches
//! linux-source with it, the image stage the guest's userland for each architecture.
//!
//! Every (mirror, suite, architecture) has its own state (sources.list, lists, archives), so the
//! host's apt configuration is neither read for sources nor modified, and no foreign architecture
//! has to be added to dpkg. A .deb's SHA256 is checked against the digest in the signed index apt
//! published, by the lab itself, and the verified file is kept in `downloads/`.

use std::fs;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use xshell::{cmd, Shell};

use crate::cache::{self, Cache, KeyBuilder, Lock};

pub struct Repo<'a> {
    pub mirror: &'a str,
    pub suite: &'a str,
    /// A Debian architecture (`arm64`, `ppc64el`, ...); `None` is the host's.
    pub arch: Option<&'a str>,
}

/// A package as the index lists it.
pub struct Package {
    pub name: String,
    pub version: String,
    pub sha256: String,
    filename: String,
}

impl Package {
    /// Changes whenever the package's content could.
    pub fn id(&self) -> String {
        format!("{}={}:sha256:{}", self.name, self.version, self.sha256)
    }
}

/// One private state, locked while open: apt must not run twice on the same lists.
pub struct Apt {
    dir: PathBuf,
    repo_line: String,
    arch: Option<String>,
    _lock: Lock,
}

impl Apt {
    pub fn open(cache: &Cache, repo: &Repo) -> Result<Apt> {
        let mut key = KeyBuilder::default().part("mirror", repo.mirror.as_bytes()).part("suite", repo.suite.as_bytes());
        if let Some(arch) = repo.arch {
            key = key.part("arch", arch.as_bytes());
        }
        let dir = cache.dir("apt")?.join(key.finish());
        let lock = Lock::acquire(&dir.with_extension("lock"))?;
        for sub in ["lists/partial", "archives/partial", "sources.list.d", "preferences.d"] {
            fs::create_dir_all(dir.join(sub))?;
        }
        let options = repo.arch.map(|a| format!("[arch={a}] ")).unwrap_or_default();
        fs::write(dir.join("sources.list"), format!("deb {options}{} {} main\n", repo.mirror, repo.suite))?;
        let repo_line =
            format!("{} {}{}", repo.mirror, repo.suite, repo.arch.map(|a| format!(" ({a})")).unwrap_or_default());
        Ok(Apt { dir, repo_line, arch: repo.arch.map(str::to_string), _lock: lock })
    }

    /// The index entries for `specs` (`name` or `name=version`), in their order, from one
    /// apt-cache run. The lists are refreshed only when a package is not in them, so a cached build
    /// needs no network; a new upload is picked up after `forget_indexes` (`lab build --refresh`).
    pub fn resolve(&self, sh: &Shell, specs: &[&str]) -> Result<Vec<Package>> {
        match self.show(sh, specs) {
            Ok(packages) => Ok(packages),
            Err(_) => {
                self.update(sh)?;
                self.show(sh, specs).with_context(|| format!("after refreshing the index of {}", self.repo_line))
            }
        }
    }

    /// The package's .deb in the cache's `downloads/`, downloaded unless already verified there.
    pub fn fetch(&self, sh: &Shell, cache: &Cache, package: &Package) -> Result<PathBuf> {
        let downloads = cache.dir("downloads")?;
        let deb = downloads.join(package.filename.rsplit('/').next().unwrap_or(&package.filename));
        let verified = deb.with_extension("deb.sha256");
        if fs::read_to_string(&verified).ok().as_deref() == Some(package.sha256.as_str()) && deb.exists() {
            return Ok(deb);
        }
        // apt names the file after the version with its epoch escaped (`1%3a1.35.0...`): download
        // into a directory of its own and rename to the index's name.
        let scratch = cache::temp_sibling(&deb);
        cache::remove_dir_if_present(&scratch)?;
        fs::create_dir_all(&scratch)?;
        let digest = (|| -> Result<String> {
            self.download(sh, &format!("{}={}", package.name, package.version), &scratch)?;
            let got = fs::read_dir(&scratch)?
                .filter_map(|e| e.ok().map(|e| e.path()))
                .find(|p| p.extension().is_some_and(|e| e == "deb"))
                .with_context(|| format!("apt-get download {} left no .deb", package.name))?;
            let digest = cache::sha256_file(&got)?;
            if digest != package.sha256 {
                bail!(
                    "{} has SHA256 {digest}, but the signed index says {}: removed it, try again",
                    got.display(),
                    package.sha256
                );
            }
            fs::rename(&got, &deb)?;
            Ok(digest)
        })();
        cache::remove_dir_if_present(&scratch)?;
        fs::write(&verified, digest?)?;
        Ok(deb)
    }

    /// Every path apt would read or write points into the private state; only the archive keyrings
    /// (to verify signatures) and apt.conf come from the host.
    fn options(&self) -> Vec<String> {
        let d = self.dir.display();
        let mut options = vec![
            format!("Dir::Etc::sourcelist={d}/sources.list"),
            format!("Dir::Etc::sourceparts={d}/sources.list.d"),
            format!("Dir::Etc::preferences={d}/preferences"),
            format!("Dir::Etc::preferencesparts={d}/preferences.d"),
            format!("Dir::State::Lists={d}/lists"),
            format!("Dir::State::status={d}/status"),
            format!("Dir::Cache={d}"),
            format!("Dir::Cache::archives={d}/archives"),
            // apt's binary cache of the lists: without it (some hosts turn it off) every
            // apt-cache run parses the whole index again, most of a second.
            format!("Dir::Cache::pkgcache={d}/pkgcache.bin"),
            "Dir::Cache::srcpkgcache=".to_string(),
            "APT::Default-Release=".to_string(),
            "APT::Sandbox::User=root".to_string(),
            "Acquire::Languages=none".to_string(),
        ];
        // The state's only architecture is its native one: plain package names mean that one.
        if let Some(arch) = &self.arch {
            options.push(format!("APT::Architecture={arch}"));
            options.push(format!("APT::Architectures={arch}"));
        }
        options.into_iter().flat_map(|o| ["-o".to_string(), o]).collect()
    }

    fn update(&self, sh: &Shell) -> Result<()> {
        fs::write(self.dir.join("status"), "")?;
        let opts = self.options();
        cmd!(sh, "apt-get {opts...} -q update").quiet().ignore_stdout().run().with_context(|| {
            format!(
                "apt-get update of the private index of {} failed: check the network and the mirror",
                self.repo_line
            )
        })
    }

    fn show(&self, sh: &Shell, specs: &[&str]) -> Result<Vec<Package>> {
        if !self.dir.join("status").exists() {
            bail!("no index yet");
        }
        let opts = self.options();
        // Exits non-zero when a package is missing, after listing the others: judged below.
        let text = cmd!(sh, "apt-cache {opts...} show --no-all-versions {specs...}")
            .quiet()
            .ignore_stderr()
            .ignore_status()
            .read()?;
        let stanzas: Vec<&str> = text.split("\n\n").filter(|s| !s.trim().is_empty()).collect();
        specs
            .iter()
            .map(|spec| {
                let name = spec.split('=').next().unwrap_or(spec);
                let stanza = stanzas
                    .iter()
                    .find(|s| s.lines().any(|l| l.strip_prefix("Package: ") == Some(name)))
                    .with_context(|| format!("`{spec}` is not in the index"))?;
                let field = |field: &str| {
                    stanza
                        .lines()
                        .find_map(|l| l.strip_prefix(field)?.strip_prefix(": ").map(str::to_string))
                        .with_context(|| format!("apt-cache show {spec} has no {field} field"))
                };
                Ok(Package {
                    name: name.to_string(),
                    version: field("Version")?,
                    sha256: field("SHA256")?,
                    filename: field("Filename")?,
                })
            })
            .collect()
    }

    fn download(&self, sh: &Shell, spec: &str, into: &Path) -> Result<()> {
        let opts = self.options();
        let _dir = sh.push_dir(into);
        cmd!(sh, "apt-get {opts...} -q download {spec}")
            .quiet()
            .ignore_stdout()
            .run()
            .with_context(|| format!("apt-get download {spec} failed"))
    }
}

/// Forgets the private package indexes so the next fetch asks the mirror again.
pub fn forget_indexes(cache: &Cache) -> Result<()> {
    cache::remove_dir_if_present(&cache.root().join("apt"))
}
