//! The lab's SSH client key: one ed25519 pair per lab state directory (`<cache root>/ssh/`),
//! made on first use with ssh-keygen. Every guest image authorizes its public half for root (so
//! the public line is part of each image's cache key); the host logs in with the private half.
//!
//! The private half is in OpenSSH's own format (`-----BEGIN OPENSSH PRIVATE KEY-----`): ssh(1)
//! reads it, and so does libssh2 1.11 with its OpenSSL backend (the `ssh2` crate).

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use xshell::{cmd, Shell};

use crate::cache::{self, Cache, Lock};

const NAME: &str = "id_ed25519";

pub struct ClientKey {
    /// Mode 0600, or `client_key` fails.
    pub private: PathBuf,
    /// The public key as one authorized_keys line: `ssh-ed25519 AAAA... lab`.
    pub public_line: String,
}

/// The state directory's key pair, created if there is none. Safe against lab processes starting
/// at once: one creates the pair under a lock and renames it into place, private half first, so a
/// pair whose `.pub` exists is complete.
pub fn client_key(sh: &Shell, cache: &Cache) -> Result<ClientKey> {
    let dir = cache.dir("ssh")?;
    if let Some(key) = read(&dir)? {
        return Ok(key);
    }
    let _lock = Lock::acquire(&dir.join(format!("{NAME}.lock")))?;
    if let Some(key) = read(&dir)? {
        return Ok(key);
    }
    fs::set_permissions(&dir, fs::Permissions::from_mode(0o700))?;
    let tmp = cache::temp_sibling(&dir.join("new"));
    cache::remove_dir_if_present(&tmp)?;
    fs::create_dir(&tmp)?;
    let made = (|| -> Result<()> {
        let private = tmp.join(NAME);
        cmd!(sh, "ssh-keygen -t ed25519 -N '' -q -C lab -f {private}")
            .quiet()
            .ignore_stdout()
            .run()
            .context("ssh-keygen cannot make the lab's SSH client key (package openssh-client: `lab setup`)")?;
        fs::rename(&private, dir.join(NAME))?;
        fs::rename(private.with_extension("pub"), dir.join(NAME).with_extension("pub"))?;
        Ok(())
    })();
    cache::remove_dir_if_present(&tmp)?;
    made?;
    read(&dir)?.with_context(|| format!("the new SSH client key is not in {}", dir.display()))
}

fn read(dir: &Path) -> Result<Option<ClientKey>> {
    let private = dir.join(NAME);
    let public = private.with_extension("pub");
    if !public.exists() {
        return Ok(None);
    }
    let mode = fs::metadata(&private)
        .with_context(|| format!("{} exists, but not {}", public.display(), private.display()))?
        .permissions()
        .mode()
        & 0o777;
    if mode != 0o600 {
        bail!(
            "{} has mode {mode:03o}, expected 600 (only its owner may read a private key): chmod 600 it",
            private.display()
        );
    }
    let public_line =
        fs::read_to_string(&public).with_context(|| format!("cannot read {}", public.display()))?.trim().to_string();
    if !public_line.starts_with("ssh-ed25519 ") || public_line.lines().count() != 1 {
        bail!("{} is not one ssh-ed25519 public key line", public.display());
    }
    Ok(Some(ClientKey { private, public_line }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn made_once_then_reused_and_checked() {
        let root = std::env::temp_dir().join(format!("lab-ssh-keys-test-{}", std::process::id()));
        let cache = Cache::new(Some(root.clone())).unwrap();
        let sh = Shell::new().unwrap();
        let first = client_key(&sh, &cache).unwrap();
        assert!(
            first.public_line.starts_with("ssh-ed25519 ") && first.public_line.ends_with(" lab"),
            "{}",
            first.public_line
        );
        assert_eq!(fs::metadata(&first.private).unwrap().permissions().mode() & 0o777, 0o600);
        assert!(fs::read_to_string(&first.private).unwrap().starts_with("-----BEGIN OPENSSH PRIVATE KEY-----"));
        assert_eq!(client_key(&sh, &cache).unwrap().public_line, first.public_line, "the pair is made once");
        fs::set_permissions(&first.private, fs::Permissions::from_mode(0o644)).unwrap();
        let err = client_key(&sh, &cache).err().unwrap().to_string();
        assert!(err.contains("mode 644"), "{err}");
        fs::remove_dir_all(&root).unwrap();
    }
}
