//! Getting a kernel source tree: a Debian package, a local git ref or a local tarball.
//!
//! The Debian path goes through the lab's private apt state (`crate::apt`): the host's apt
//! configuration is neither read for sources nor modified, and the .deb's SHA256 is checked.

use std::fs;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use xshell::{cmd, Shell};

use super::recipe::TreeSource;
use crate::apt;
use crate::cache::{self, Cache};

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

pub fn fetch(sh: &Shell, cache: &Cache, source: &TreeSource) -> Result<Fetched> {
    match source {
        TreeSource::Debian { package, suite, mirror, version } => {
            debian(sh, cache, package, suite, mirror, version.as_deref())
        }
        TreeSource::Git { repo, git_ref } => {
            let spec = format!("{git_ref}^{{commit}}");
            let commit = cmd!(sh, "git -C {repo} rev-parse --verify --quiet {spec}")
                .quiet()
                .read()
                .with_context(|| format!("`{git_ref}` is not a commit in the git repository {}", repo.display()))?;
            Ok(Fetched { id: format!("git:{commit}"), what: Unpack::Git { repo: repo.clone(), commit } })
        }
        TreeSource::Tarball { path } => {
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
                cmd!(sh, "dpkg-deb -x {deb} {scratch}")
                    .quiet()
                    .run()
                    .context("dpkg-deb cannot unpack the source package")?;
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
        .find(|p| {
            p.file_name().and_then(|n| n.to_str()).is_some_and(|n| n.starts_with("linux-source") && n.contains(".tar"))
        })
        .with_context(|| format!("no linux-source-*.tar.* in {}", dir.display()))
}

fn debian(
    sh: &Shell,
    cache: &Cache,
    package: &str,
    suite: &str,
    mirror: &str,
    version: Option<&str>,
) -> Result<Fetched> {
    let apt = apt::Apt::open(cache, &apt::Repo { mirror, suite, arch: None })?;
    let spec = match version {
        Some(v) => format!("{package}={v}"),
        None => package.to_string(),
    };
    let package = apt.resolve(sh, &[&spec])?.remove(0);
    let deb = apt.fetch(sh, cache, &package)?;
    Ok(Fetched { id: format!("debian:{}", package.id()), what: Unpack::Deb(deb) })
}
