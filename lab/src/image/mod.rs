//! Stage: `images/` sources -> an initramfs per architecture, cached by content.
//!
//! The image holds `/init` (images/init/init.c) and every workload program
//! (images/workloads/NAME.c -> /lab/workloads/NAME), each compiled static with the Debian cross
//! compiler. Code that several workloads share lives in headers under images/workloads/include/.
//! Adding a workload is adding a `.c` file: nothing here or in the runner names one.
//!
//! Every image can be logged into over SSH: it carries busybox and dropbear from Debian for its
//! architecture (`userland.rs`), root's account, the lab's client key in
//! `/root/.ssh/authorized_keys` (`crate::ssh_keys`, part of the cache key), and a dropbear host
//! key made fresh when the image is built, at `/etc/dropbear/dropbear_ed25519_host_key`. Its
//! public half is in `Image::ssh`, so the host knows whom it talks to before the guest boots. The
//! guest's init starts dropbear when the guest has a NIC (images/workloads/README.md).
//!
//! A kernel's own selftests (built by the kernel stage from its tree) go into a second newc
//! archive appended to the base image, one image per kernel and architecture: Linux unpacks
//! concatenated archives one after the other into the same root.

mod cpio;
mod userland;

use std::collections::BTreeSet;
use std::fs;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use serde::{Deserialize, Serialize};
use xshell::{cmd, Shell};

use crate::arch::Arch;
use crate::cache::{self, Cache, KeyBuilder};
use crate::kernel::Selftests;
use crate::ssh_keys;
use crate::ui::Ui;

/// Bump when the image layout changes in a way the sources do not show.
const IMAGE_VERSION: &str = "2";

/// Where images/init/init.c tells dropbear to find its host key.
const HOST_KEY: &str = "/etc/dropbear/dropbear_ed25519_host_key";

/// Where the guest finds the rseq selftests (images/workloads/rseq-selftests.c reads them there).
const RSEQ_SELFTESTS_DIR: &str = "/lab/selftests/rseq";

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Image {
    pub arch: Arch,
    pub key: String,
    pub initramfs: PathBuf,
    pub programs: Vec<String>,
    pub ssh: SshIdentity,
    #[serde(skip)]
    pub cached: bool,
}

/// How to log into a guest booted from the image (with a NIC: `vm::Machine::ssh_port`): as `user`,
/// with the lab's client key (`ssh_keys::client_key`), to a server that must present `host_key`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SshIdentity {
    /// The server's public host key, type and base64 as in an OpenSSH public key line
    /// (`ssh-ed25519 AAAAC3...`): a known_hosts line is `[127.0.0.1]:PORT <host_key>`.
    pub host_key: String,
    /// `root`: a guest has no other account.
    pub user: String,
}

/// The workload programs an image will carry, by name.
pub fn workload_programs(images_dir: &Path) -> Result<BTreeSet<String>> {
    Ok(sources(&images_dir.join("workloads"))?.into_iter().map(|(name, _)| name).collect())
}

fn sources(dir: &Path) -> Result<Vec<(String, PathBuf)>> {
    let mut out: Vec<(String, PathBuf)> = fs::read_dir(dir)
        .with_context(|| format!("cannot list {}", dir.display()))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|e| e == "c"))
        .filter_map(|p| Some((p.file_stem()?.to_str()?.to_string(), p)))
        .collect();
    out.sort();
    Ok(out)
}

pub fn build(sh: &Shell, cache: &Cache, images_dir: &Path, arch: Arch, ui: &Ui) -> Result<Image> {
    ui.stage(
        &format!("image {arch}"),
        "initramfs",
        || build_inner(sh, cache, images_dir, arch),
        |i| match i.cached {
            true => "cached".to_string(),
            false => format!("{} programs, {}", i.programs.len(), i.initramfs.display()),
        },
    )
    .with_context(|| format!("guest image for {arch}"))
}

fn build_inner(sh: &Shell, cache: &Cache, images_dir: &Path, arch: Arch) -> Result<Image> {
    let init = images_dir.join("init/init.c");
    let workloads = sources(&images_dir.join("workloads"))?;
    if workloads.is_empty() {
        bail!("{} holds no workload (*.c)", images_dir.join("workloads").display());
    }
    let gcc = arch.gcc();
    let toolchain = cmd!(sh, "{gcc} --version")
        .quiet()
        .read()
        .with_context(|| format!("{gcc} is not installed: run `lab setup`"))?;
    let include = images_dir.join("workloads/include");
    let headers: Vec<(String, PathBuf)> = match fs::read_dir(&include) {
        Ok(entries) => {
            let mut h: Vec<(String, PathBuf)> = entries
                .filter_map(|e| e.ok().map(|e| e.path()))
                .filter(|p| p.extension().is_some_and(|e| e == "h"))
                .filter_map(|p| Some((p.file_name()?.to_str()?.to_string(), p)))
                .collect();
            h.sort();
            h
        }
        Err(_) => Vec::new(),
    };
    let userland = userland::get(sh, cache, arch)?;
    let client_key = ssh_keys::client_key(sh, cache)?;
    let mut key = KeyBuilder::default()
        .part("version", IMAGE_VERSION.as_bytes())
        .part("toolchain", toolchain.as_bytes())
        .part("arch", arch.name().as_bytes())
        .part("userland", userland.key.as_bytes())
        .part("authorized_keys", client_key.public_line.as_bytes());
    let sources_and_headers =
        std::iter::once(("init".to_string(), init.clone())).chain(workloads.iter().cloned()).chain(headers);
    for (name, path) in sources_and_headers {
        let text = fs::read(&path).with_context(|| format!("cannot read {}", path.display()))?;
        key = key.part("name", name.as_bytes()).part("source", &text);
    }
    let key = key.finish();
    let dir = cache.dir("images")?.join(format!("{arch}-{key}"));
    if let Ok(mut image) = serde_json::from_slice::<Image>(&fs::read(dir.join("image.json")).unwrap_or_default()) {
        image.cached = true;
        return Ok(image);
    }

    let tmp = cache::temp_sibling(&dir);
    cache::remove_dir_if_present(&tmp)?;
    fs::create_dir_all(tmp.join("bin"))?;
    let compile = |source: &Path, name: &str| -> Result<Vec<u8>> {
        let out = tmp.join("bin").join(name);
        let include_flag = format!("-I{}", include.display());
        let output =
            cmd!(sh, "{gcc} -std=gnu11 -O2 -Wall -Wextra -Werror -static -pthread {include_flag} -o {out} {source}")
                .quiet()
                .ignore_status()
                .output()?;
        if !output.status.success() {
            bail!("{gcc} cannot compile {}:\n{}", source.display(), String::from_utf8_lossy(&output.stderr).trim_end());
        }
        fs::read(&out).with_context(|| format!("cannot read {}", out.display()))
    };
    let mut archive = cpio::Archive::new();
    for dir in ["/dev", "/proc", "/sys", "/tmp", "/run", "/lab", "/lab/workloads", "/etc", "/etc/dropbear"] {
        archive.dir(dir, 0o755);
    }
    // The kernel opens /dev/console for init before devtmpfs is mounted.
    archive.char_device("/dev/console", 0o600, 5, 1);
    archive.file("/init", 0o755, &compile(&init, "init")?);
    for (name, source) in &workloads {
        archive.file(&format!("/lab/workloads/{name}"), 0o755, &compile(source, name)?);
    }
    userland.add_to(&mut archive)?;
    archive.file("/etc/passwd", 0o644, b"root:x:0:0:root:/root:/bin/sh\n");
    archive.file("/etc/group", 0o644, b"root:x:0:\n");
    // dropbear lets in only users whose shell is listed here.
    archive.file("/etc/shells", 0o644, b"/bin/sh\n");
    // dropbear refuses an authorized_keys file that others could write, or that sits below such a directory.
    archive.dir("/root", 0o700);
    archive.dir("/root/.ssh", 0o700);
    archive.file("/root/.ssh/authorized_keys", 0o600, format!("{}\n", client_key.public_line).as_bytes());
    let (host_key, host_key_public) = make_host_key(sh, &tmp)?;
    archive.file(HOST_KEY, 0o600, &host_key);
    write_initramfs(&tmp.join("initramfs.cpio"), &archive.finish())?;
    let image = Image {
        arch,
        key,
        initramfs: dir.join("initramfs.cpio"),
        programs: workloads.into_iter().map(|(n, _)| n).collect(),
        ssh: SshIdentity { host_key: host_key_public, user: "root".into() },
        cached: false,
    };
    fs::write(tmp.join("image.json"), serde_json::to_string_pretty(&image)?)?;
    cache::remove_dir_if_present(&dir)?;
    fs::rename(&tmp, &dir)?;
    Ok(image)
}

/// Readable by its owner only: the image holds the guest's private host key, and whoever can read
/// it can pose as the guest to the lab's SSH client.
fn write_initramfs(path: &Path, bytes: &[u8]) -> Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mut file = fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .with_context(|| format!("cannot create {}", path.display()))?;
    file.write_all(bytes).with_context(|| format!("cannot write {}", path.display()))
}

/// A new ed25519 host key in dropbear's format, made with the host's dropbearkey, and its public
/// half as `type base64`. Only the image holds the private half.
fn make_host_key(sh: &Shell, scratch: &Path) -> Result<(Vec<u8>, String)> {
    let file = scratch.join("dropbear_ed25519_host_key");
    let made = cmd!(sh, "dropbearkey -t ed25519 -f {file}")
        .quiet()
        .ignore_status()
        .output()
        .context("dropbearkey cannot run: it makes the guest's host key (package dropbear-bin: `lab setup`)")?;
    if !made.status.success() {
        bail!("dropbearkey cannot make the guest's host key:\n{}", String::from_utf8_lossy(&made.stderr).trim_end());
    }
    let listing = cmd!(sh, "dropbearkey -y -f {file}").quiet().ignore_stderr().read()?;
    let public = listing
        .lines()
        .find_map(|l| {
            let mut fields = l.split_whitespace();
            Some(format!("{} {}", fields.next().filter(|t| *t == "ssh-ed25519")?, fields.next()?))
        })
        .with_context(|| format!("dropbearkey -y printed no ssh-ed25519 line:\n{listing}"))?;
    let private = fs::read(&file)?;
    fs::remove_file(&file)?;
    Ok((private, public))
}

/// `base` with the kernel's rseq selftests appended, cached by both keys; `base` itself when the
/// kernel's tree has none.
pub fn with_selftests(cache: &Cache, base: &Image, selftests: &Selftests, ui: &Ui) -> Result<Image> {
    if selftests.programs.is_empty() {
        return Ok(base.clone());
    }
    let task = format!("image {} +selftests", base.arch);
    ui.stage(
        &task,
        "initramfs",
        || with_selftests_inner(cache, base, selftests),
        |i| match i.cached {
            true => "cached".to_string(),
            false => format!("{} rseq selftests, {}", selftests.programs.len(), i.initramfs.display()),
        },
    )
    .with_context(|| format!("guest image for {} with the rseq selftests of {}", base.arch, selftests.dir.display()))
}

fn with_selftests_inner(cache: &Cache, base: &Image, selftests: &Selftests) -> Result<Image> {
    let key = KeyBuilder::default()
        .part("version", IMAGE_VERSION.as_bytes())
        .part("base", base.key.as_bytes())
        .part("selftests", selftests.key.as_bytes())
        .finish();
    let dir = cache.dir("images")?.join(format!("{}-{key}", base.arch));
    if let Ok(mut image) = serde_json::from_slice::<Image>(&fs::read(dir.join("image.json")).unwrap_or_default()) {
        image.cached = true;
        return Ok(image);
    }
    let mut archive = cpio::Archive::new();
    for dir in ["/lab/selftests", RSEQ_SELFTESTS_DIR] {
        archive.dir(dir, 0o755);
    }
    for name in &selftests.programs {
        let path = selftests.dir.join(name);
        let bytes = fs::read(&path).with_context(|| format!("cannot read {}", path.display()))?;
        archive.file(&format!("{RSEQ_SELFTESTS_DIR}/{name}"), 0o755, &bytes);
    }
    let mut initramfs =
        fs::read(&base.initramfs).with_context(|| format!("cannot read {}", base.initramfs.display()))?;
    initramfs.extend(archive.finish());
    let tmp = cache::temp_sibling(&dir);
    cache::remove_dir_if_present(&tmp)?;
    fs::create_dir_all(&tmp)?;
    write_initramfs(&tmp.join("initramfs.cpio"), &initramfs)?;
    let image = Image { key, initramfs: dir.join("initramfs.cpio"), cached: false, ..base.clone() };
    fs::write(tmp.join("image.json"), serde_json::to_string_pretty(&image)?)?;
    cache::remove_dir_if_present(&dir)?;
    fs::rename(&tmp, &dir)?;
    Ok(image)
}
