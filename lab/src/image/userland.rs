//! The guest's userland, from Debian bookworm for the guest's architecture: busybox (a shell and
//! the tools an SSH session expects) and dropbear (the SSH server), with the shared libraries
//! dropbear links and its dynamic loader, at the paths and through the symlinks the packages use.
//!
//! The packages come through the lab's private apt state (`crate::apt`, SHA256 checked) and are
//! unpacked with dpkg-deb. `userland/<arch>-<key>/` keeps only what the guest gets: the files
//! under `root/` and the list of entries in `userland.json`; the key is the packages' versions
//! and digests, so a new Debian upload makes a new entry (after `lab build --refresh`).

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use serde::{Deserialize, Serialize};
use xshell::{cmd, Shell};

use super::cpio;
use crate::apt::{Apt, Repo};
use crate::arch::Arch;
use crate::cache::{self, Cache, KeyBuilder};

const MIRROR: &str = "http://deb.debian.org/debian";
const SUITE: &str = "bookworm";

/// busybox-static and dropbear-bin, and the packages of every library dropbear needs
/// (`readelf -d`, followed to the end). A library none of them has fails the build by name.
const PACKAGES: &[&str] =
    &["busybox-static", "dropbear-bin", "libc6", "libcrypt1", "zlib1g", "libtomcrypt1", "libtommath1", "libgmp10"];

/// Where images/init/init.c starts the SSH server.
const DROPBEAR: &str = "/usr/sbin/dropbear";
const BUSYBOX: &str = "/bin/busybox";

/// The busybox applets linked into /bin: a shell and what one expects beside it. All are in
/// Debian's busybox-static (one configuration for every architecture); `busybox NAME` reaches the
/// others.
const APPLETS: &[&str] = &[
    "sh",
    "ash",
    "cat",
    "cp",
    "mv",
    "rm",
    "ln",
    "ls",
    "mkdir",
    "rmdir",
    "touch",
    "chmod",
    "chown",
    "stat",
    "readlink",
    "realpath",
    "find",
    "xargs",
    "grep",
    "egrep",
    "fgrep",
    "sed",
    "awk",
    "head",
    "tail",
    "wc",
    "sort",
    "uniq",
    "cut",
    "tr",
    "tee",
    "diff",
    "cmp",
    "od",
    "hexdump",
    "xxd",
    "strings",
    "echo",
    "printf",
    "test",
    "[",
    "true",
    "false",
    "sleep",
    "usleep",
    "timeout",
    "time",
    "watch",
    "env",
    "id",
    "whoami",
    "uname",
    "nproc",
    "hostname",
    "date",
    "uptime",
    "free",
    "top",
    "ps",
    "pidof",
    "kill",
    "killall",
    "taskset",
    "ionice",
    "renice",
    "dmesg",
    "sync",
    "poweroff",
    "reboot",
    "halt",
    "mount",
    "umount",
    "df",
    "du",
    "ip",
    "ifconfig",
    "route",
    "ping",
    "netstat",
    "nc",
    "sysctl",
    "tar",
    "gzip",
    "gunzip",
    "zcat",
    "vi",
    "less",
    "more",
    "clear",
    "reset",
    "stty",
    "tty",
    "seq",
    "yes",
    "which",
    "basename",
    "dirname",
    "mktemp",
    "md5sum",
    "sha256sum",
    "setsid",
    "nsenter",
    "unshare",
    "dd",
    "truncate",
    "mkfifo",
    "mknod",
];

/// Bump when the selection or the layout changes in a way the packages do not show.
const USERLAND_VERSION: &str = "1";

#[derive(Debug, Serialize, Deserialize)]
pub struct Userland {
    pub key: String,
    /// `name=version:sha256:digest` of every package.
    pub packages: Vec<String>,
    entries: Vec<Entry>,
    root: PathBuf,
}

/// One path in the guest, parents before children.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "lowercase")]
enum Entry {
    Dir { path: String },
    File { path: String, mode: u32 },
    Symlink { path: String, target: String },
}

impl Userland {
    pub fn add_to(&self, archive: &mut cpio::Archive) -> Result<()> {
        for entry in &self.entries {
            match entry {
                Entry::Dir { path } => archive.dir(path, 0o755),
                Entry::File { path, mode } => {
                    let file = self.root.join(relative(path));
                    archive.file(
                        path,
                        *mode,
                        &fs::read(&file).with_context(|| format!("cannot read {}", file.display()))?,
                    );
                }
                Entry::Symlink { path, target } => archive.symlink(path, target),
            }
        }
        Ok(())
    }
}

/// The userland for `arch`, from the cache or built. Needs the network only when the private
/// index or a package is not in the cache yet.
pub fn get(sh: &Shell, cache: &Cache, arch: Arch) -> Result<Userland> {
    let apt = Apt::open(cache, &Repo { mirror: MIRROR, suite: SUITE, arch: Some(arch.debian_arch()) })?;
    let packages = apt.resolve(sh, PACKAGES)?;
    let ids: Vec<String> = packages.iter().map(|p| p.id()).collect();
    let mut key =
        KeyBuilder::default().part("version", USERLAND_VERSION.as_bytes()).part("arch", arch.name().as_bytes());
    for id in &ids {
        key = key.part("package", id.as_bytes());
    }
    for applet in APPLETS {
        key = key.part("applet", applet.as_bytes());
    }
    let key = key.finish();
    let dir = cache.dir("userland")?.join(format!("{arch}-{key}"));
    if let Ok(userland) = serde_json::from_slice::<Userland>(&fs::read(dir.join("userland.json")).unwrap_or_default()) {
        return Ok(userland);
    }

    let tmp = cache::temp_sibling(&dir);
    cache::remove_dir_if_present(&tmp)?;
    let unpacked = tmp.join("unpacked");
    let assembled = (|| -> Result<Vec<Entry>> {
        fs::create_dir_all(&unpacked)?;
        for package in &packages {
            let deb = apt.fetch(sh, cache, package)?;
            cmd!(sh, "dpkg-deb -x {deb} {unpacked}")
                .quiet()
                .run()
                .with_context(|| format!("dpkg-deb cannot unpack {}", deb.display()))?;
        }
        let entries = select(sh, &unpacked, arch)?;
        for entry in &entries {
            if let Entry::File { path, .. } = entry {
                let to = tmp.join("root").join(relative(path));
                fs::create_dir_all(to.parent().unwrap_or(&tmp))?;
                fs::copy(unpacked.join(relative(path)), &to)
                    .with_context(|| format!("cannot copy {path} out of the packages"))?;
            }
        }
        cache::remove_dir_if_present(&unpacked)?;
        Ok(entries)
    })();
    let entries = assembled.inspect_err(|_| {
        let _ = cache::remove_dir_if_present(&tmp);
    })?;
    let userland = Userland { key, packages: ids, entries, root: dir.join("root") };
    fs::write(tmp.join("userland.json"), serde_json::to_string_pretty(&userland)?)?;
    cache::remove_dir_if_present(&dir)?;
    fs::rename(&tmp, &dir)?;
    Ok(userland)
}

/// What the guest gets from the unpacked packages: busybox and its applet links, dropbear, every
/// library it needs (recursively) and the dynamic loader, then the directories they sit in.
fn select(sh: &Shell, unpacked: &Path, arch: Arch) -> Result<Vec<Entry>> {
    let lib_dirs = [format!("/lib/{}", arch.debian_multiarch()), format!("/usr/lib/{}", arch.debian_multiarch())];
    let mut taken = BTreeMap::new();
    let mut queue = vec![BUSYBOX.to_string(), DROPBEAR.to_string()];
    while let Some(path) = queue.pop() {
        if taken.contains_key(&path) {
            continue;
        }
        let file = take(unpacked, &path, &mut taken)?;
        let (interpreter, needed) = elf_dependencies(sh, &unpacked.join(relative(&file)))?;
        queue.extend(interpreter);
        for library in needed {
            let found = lib_dirs
                .iter()
                .map(|dir| format!("{dir}/{library}"))
                .find(|candidate| unpacked.join(relative(candidate)).symlink_metadata().is_ok())
                .with_context(|| {
                    format!(
                        "{file} needs {library}, which none of {} has in {}",
                        PACKAGES.join(" "),
                        lib_dirs.join(" or ")
                    )
                })?;
            queue.push(found);
        }
    }
    for applet in APPLETS {
        let path = format!("/bin/{applet}");
        taken.entry(path.clone()).or_insert(Entry::Symlink { path, target: "busybox".into() });
    }
    let dirs: BTreeSet<String> = taken.keys().flat_map(|path| ancestors(path)).collect();
    Ok(dirs.into_iter().map(|path| Entry::Dir { path }).chain(taken.into_values()).collect())
}

/// Takes `path` as the packages have it: a symlink stays a symlink, and its target is taken too.
/// Returns the regular file the chain ends at.
fn take(unpacked: &Path, path: &str, taken: &mut BTreeMap<String, Entry>) -> Result<String> {
    let mut path = path.to_string();
    for _ in 0..16 {
        let on_host = unpacked.join(relative(&path));
        let meta = on_host.symlink_metadata().with_context(|| format!("none of {} has {path}", PACKAGES.join(" ")))?;
        if meta.is_file() {
            taken.insert(path.clone(), Entry::File { path: path.clone(), mode: meta.mode() & 0o7777 });
            return Ok(path);
        }
        if !meta.is_symlink() {
            bail!("{path} is neither a file nor a symlink in the packages");
        }
        let target = fs::read_link(&on_host)?
            .to_str()
            .with_context(|| format!("{path} links to a name that is not UTF-8"))?
            .to_string();
        let next = resolve(&path, &target);
        taken.insert(path.clone(), Entry::Symlink { path, target });
        path = next;
    }
    bail!("{path}: more than 16 symlinks in a row")
}

/// The program interpreter and the NEEDED libraries of an ELF file, as `readelf` lists them (it
/// reads every architecture's ELF). A static program has neither.
fn elf_dependencies(sh: &Shell, file: &Path) -> Result<(Option<String>, Vec<String>)> {
    let text = cmd!(sh, "readelf -W --program-headers --dynamic {file}")
        .quiet()
        .read()
        .with_context(|| format!("readelf cannot read {}", file.display()))?;
    let interpreter = text
        .lines()
        .find_map(|l| l.trim().strip_prefix("[Requesting program interpreter: ")?.strip_suffix(']'))
        .map(str::to_string);
    let needed = text
        .lines()
        .filter(|l| l.contains("(NEEDED)"))
        .filter_map(|l| l.split_once("Shared library: [")?.1.strip_suffix(']'))
        .map(str::to_string)
        .collect();
    Ok((interpreter, needed))
}

/// Where the symlink at `link` points, as an absolute guest path, worked out by name only (the
/// unpacked tree is not the guest's root, so the host must not follow the link).
fn resolve(link: &str, target: &str) -> String {
    let mut parts: Vec<&str> =
        if target.starts_with('/') { Vec::new() } else { link.split('/').filter(|p| !p.is_empty()).collect() };
    if !target.starts_with('/') {
        parts.pop();
    }
    for part in target.split('/') {
        match part {
            "" | "." => {}
            ".." => {
                parts.pop();
            }
            name => parts.push(name),
        }
    }
    format!("/{}", parts.join("/"))
}

/// `/usr/lib/x/libz.so.1` -> `/usr`, `/usr/lib`, `/usr/lib/x`.
fn ancestors(path: &str) -> Vec<String> {
    let parts: Vec<&str> = path.split('/').filter(|p| !p.is_empty()).collect();
    (1..parts.len()).map(|n| format!("/{}", parts[..n].join("/"))).collect()
}

fn relative(path: &str) -> &str {
    path.trim_start_matches('/')
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn symlinks_resolve_by_name() {
        let check =
            |link: &str, target: &str, expect: &str| assert_eq!(resolve(link, target), expect, "{link} -> {target}");
        check(
            "/lib64/ld-linux-x86-64.so.2",
            "/lib/x86_64-linux-gnu/ld-linux-x86-64.so.2",
            "/lib/x86_64-linux-gnu/ld-linux-x86-64.so.2",
        );
        check(
            "/lib/ld-linux-aarch64.so.1",
            "aarch64-linux-gnu/ld-linux-aarch64.so.1",
            "/lib/aarch64-linux-gnu/ld-linux-aarch64.so.1",
        );
        check("/lib/x/libz.so.1", "libz.so.1.2.13", "/lib/x/libz.so.1.2.13");
        check("/usr/lib/dropbear/dropbearconvert", "../../bin/dropbearconvert", "/usr/bin/dropbearconvert");
        check("/a/b", "./c/../d", "/a/d");
    }

    #[test]
    fn ancestors_parents_first() {
        assert_eq!(ancestors("/usr/lib/x/libz.so.1"), ["/usr", "/usr/lib", "/usr/lib/x"]);
        assert!(ancestors("/init").is_empty());
    }

    #[test]
    fn take_keeps_symlinks_and_their_targets() {
        let root = std::env::temp_dir().join(format!("lab-userland-test-{}", std::process::id()));
        let _ = fs::remove_dir_all(&root);
        fs::create_dir_all(root.join("lib/x")).unwrap();
        fs::write(root.join("lib/x/libz.so.1.2.13"), "z").unwrap();
        fs::set_permissions(root.join("lib/x/libz.so.1.2.13"), std::os::unix::fs::PermissionsExt::from_mode(0o644))
            .unwrap();
        std::os::unix::fs::symlink("libz.so.1.2.13", root.join("lib/x/libz.so.1")).unwrap();
        let mut taken = BTreeMap::new();
        assert_eq!(take(&root, "/lib/x/libz.so.1", &mut taken).unwrap(), "/lib/x/libz.so.1.2.13");
        assert_eq!(
            taken.into_values().collect::<Vec<_>>(),
            [
                Entry::Symlink { path: "/lib/x/libz.so.1".into(), target: "libz.so.1.2.13".into() },
                Entry::File { path: "/lib/x/libz.so.1.2.13".into(), mode: 0o644 },
            ]
        );
        let err = take(&root, "/lib/x/libc.so.6", &mut BTreeMap::new()).unwrap_err().to_string();
        assert!(err.contains("/lib/x/libc.so.6"), "{err}");
        fs::remove_dir_all(&root).unwrap();
    }
}
