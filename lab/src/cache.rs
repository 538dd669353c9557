//! The lab's state directory: downloads, kernel trees, built kernels and images, keys.
//!
//! Invariants:
//! - Everything lives below one root outside the checkout (`--cache-dir`, `$LAB_CACHE_DIR`, or
//!   `$XDG_CACHE_HOME/lab`, or `~/.cache/lab`), so a clean clone and `git clean` never lose a build.
//! - A finished artifact directory appears by `rename` of a completed temporary one: a crash
//!   leaves a `*.tmp-*` directory behind, never a half-written artifact that looks complete.
//! - Whoever writes into a shared directory holds its lock file; locks are advisory `flock`s that
//!   the kernel drops when the process dies, so a crash never leaves a stale lock.

use std::fmt::Write as _;
use std::fs::{self, File};
use std::io::{Read, Write};
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use sha2::{Digest, Sha256};

#[derive(Debug, Clone)]
pub struct Cache {
    root: PathBuf,
}

impl Cache {
    pub fn new(explicit: Option<PathBuf>) -> Result<Cache> {
        let root = match explicit.or_else(|| std::env::var_os("LAB_CACHE_DIR").map(PathBuf::from)) {
            Some(root) => root,
            None => {
                let base = std::env::var_os("XDG_CACHE_HOME")
                    .map(PathBuf::from)
                    .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache")))
                    .context("neither HOME nor XDG_CACHE_HOME is set: pass --cache-dir")?;
                base.join("lab")
            }
        };
        let root = std::path::absolute(&root).with_context(|| format!("bad cache dir {}", root.display()))?;
        fs::create_dir_all(&root).with_context(|| format!("cannot create cache dir {}", root.display()))?;
        Ok(Cache { root })
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    /// A subdirectory of the cache for one concern (`downloads`, `kernels`, ...), created on demand.
    pub fn dir(&self, name: &str) -> Result<PathBuf> {
        let dir = self.root.join(name);
        fs::create_dir_all(&dir).with_context(|| format!("cannot create {}", dir.display()))?;
        Ok(dir)
    }
}

/// Held while a process writes into a shared cache location.
pub struct Lock {
    _file: File,
}

impl Lock {
    /// Waits while another process holds the lock (a kernel build holds its tree's for minutes),
    /// polling so that a signal is honoured meanwhile: a blocking `flock` is restarted after the
    /// handler and would outwait it.
    pub fn acquire(path: &Path) -> Result<Lock> {
        let file = File::create(path).with_context(|| format!("cannot create lock {}", path.display()))?;
        loop {
            match file.try_lock() {
                Ok(()) => return Ok(Lock { _file: file }),
                Err(fs::TryLockError::WouldBlock) => {}
                Err(fs::TryLockError::Error(e)) => {
                    return Err(e).with_context(|| format!("cannot lock {}", path.display()))
                }
            }
            crate::process::check_interrupted()?;
            std::thread::sleep(std::time::Duration::from_millis(100));
        }
    }
}

/// Builds a content key from labelled parts, so that two different inputs cannot collide by
/// concatenation ("ab"+"c" vs "a"+"bc").
#[derive(Default)]
pub struct KeyBuilder {
    hasher: Sha256,
}

impl KeyBuilder {
    pub fn part(mut self, label: &str, bytes: &[u8]) -> KeyBuilder {
        for chunk in [label.as_bytes(), &(bytes.len() as u64).to_le_bytes(), bytes] {
            self.hasher.update(chunk);
        }
        self
    }

    /// 16 hex digits: short enough for a path, long enough never to collide in one cache.
    pub fn finish(self) -> String {
        hex(&self.hasher.finalize()[..8])
    }
}

pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().fold(String::new(), |mut s, b| {
        let _ = write!(s, "{b:02x}");
        s
    })
}

pub fn sha256_file(path: &Path) -> Result<String> {
    let mut file = File::open(path).with_context(|| format!("cannot open {}", path.display()))?;
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = file.read(&mut buf).with_context(|| format!("cannot read {}", path.display()))?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
    }
    Ok(hex(&hasher.finalize()))
}

/// Writes a file so that readers see the old content or the new, never a torn one.
pub fn write_atomic(path: &Path, contents: &[u8]) -> Result<()> {
    let tmp = temp_sibling(path);
    let mut file = File::create(&tmp).with_context(|| format!("cannot create {}", tmp.display()))?;
    file.write_all(contents)
        .and_then(|()| file.sync_all())
        .with_context(|| format!("cannot write {}", tmp.display()))?;
    fs::rename(&tmp, path).with_context(|| format!("cannot rename {} to {}", tmp.display(), path.display()))
}

/// `dir/name.tmp-<pid>`: unique per process, and recognisably debris if a crash leaves it.
pub fn temp_sibling(path: &Path) -> PathBuf {
    let mut name = path.file_name().unwrap_or_default().to_os_string();
    name.push(format!(".tmp-{}", std::process::id()));
    path.with_file_name(name)
}

/// Removes a directory tree if it exists.
pub fn remove_dir_if_present(path: &Path) -> Result<()> {
    match fs::remove_dir_all(path) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
            Err(e).with_context(|| format!("cannot remove {}", path.display()))
        }
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_separate_parts() {
        let ab_c = KeyBuilder::default().part("x", b"ab").part("y", b"c").finish();
        let a_bc = KeyBuilder::default().part("x", b"a").part("y", b"bc").finish();
        assert_ne!(ab_c, a_bc);
        assert_eq!(ab_c.len(), 16);
        assert_eq!(ab_c, KeyBuilder::default().part("x", b"ab").part("y", b"c").finish());
    }

    #[test]
    fn atomic_write_replaces() {
        let dir = std::env::temp_dir().join(format!("lab-cache-test-{}", std::process::id()));
        fs::create_dir_all(&dir).unwrap();
        let file = dir.join("summary.json");
        write_atomic(&file, b"one").unwrap();
        write_atomic(&file, b"two").unwrap();
        assert_eq!(fs::read(&file).unwrap(), b"two");
        assert_eq!(fs::read_dir(&dir).unwrap().count(), 1, "no temporary file left behind");
        fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn a_lock_waits_for_its_holder() {
        let path = std::env::temp_dir().join(format!("lab-lock-test-{}.lock", std::process::id()));
        let held = Lock::acquire(&path).unwrap();
        // flock belongs to the open file: a second open in the same process waits like another process.
        let waiter = std::thread::spawn({
            let path = path.clone();
            move || Lock::acquire(&path).map(|_| ())
        });
        std::thread::sleep(std::time::Duration::from_millis(300));
        assert!(!waiter.is_finished(), "taken while held");
        drop(held);
        waiter.join().unwrap().unwrap();
        fs::remove_file(path).unwrap();
    }
}
