//! Host requirements: what the lab needs, what is missing, how to get it, and whether KVM works.
//!
//! Everything comes from Debian packages. QEMU comes from bookworm-backports on bookworm, because
//! the preinstalled qemu-utils there is the backports build and breaks the plain bookworm QEMU.

use std::os::fd::AsRawFd;
use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use xshell::{cmd, Shell};

use crate::arch::Arch;
use crate::cache::Cache;
use crate::ui::Ui;

/// Packages from the plain suite: kernel build tools, cross toolchains, source handling, and for
/// SSH into guests: readelf (binutils) to find dropbear's libraries, dropbearkey for each image's
/// host key, ssh-keygen and ssh for the lab's client key and logging in by hand.
const BUILD_PACKAGES: &[&str] = &[
    "make",
    "flex",
    "bison",
    "bc",
    "libelf-dev",
    "libssl-dev",
    "perl",
    "xz-utils",
    "patch",
    "cpio",
    "dpkg-dev",
    "git",
    "ccache",
    "binutils",
    "dropbear-bin",
    "openssh-client",
];

const BACKPORTS_LIST: &str = "/etc/apt/sources.list.d/lab-bookworm-backports.list";

/// apt holds the first for a whole install or upgrade, dpkg the second while it unpacks.
const DPKG_LOCKS: &[&str] = &["/var/lib/dpkg/lock-frontend", "/var/lib/dpkg/lock"];

/// How long a check of the host's packages waits for another package manager to finish.
const PACKAGE_MANAGER_WAIT: Duration = Duration::from_secs(900);

/// A tree per kernel source is about 2 GiB, plus about 1 GiB of objects per architecture.
const MIN_FREE_GIB: u64 = 12;

pub struct Check {
    pub what: String,
    pub ok: bool,
    pub detail: String,
    /// The exact command that fixes it.
    pub fix: Option<String>,
}

pub fn required_packages() -> Vec<(&'static str, bool)> {
    let mut packages: Vec<(&str, bool)> = BUILD_PACKAGES.iter().map(|p| (*p, false)).collect();
    for arch in Arch::ALL {
        packages.extend(arch.toolchain_packages().iter().map(|p| (*p, false)));
        packages.push((arch.qemu_package(), true));
    }
    packages
}

/// Installed state of each package, in one dpkg-query call.
fn installed(sh: &Shell, packages: &[&str]) -> std::collections::BTreeSet<String> {
    let format = "${Package}\t${db:Status-Abbrev}\n";
    let out = cmd!(sh, "dpkg-query -W -f={format} {packages...}")
        .quiet()
        .ignore_status()
        .ignore_stderr()
        .read()
        .unwrap_or_default();
    out.lines()
        .filter_map(|l| l.split_once('\t'))
        .filter(|(_, status)| status.starts_with("ii"))
        .map(|(name, _)| name.split(':').next().unwrap_or(name).to_string())
        .collect()
}

fn codename() -> String {
    std::fs::read_to_string("/etc/os-release")
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("VERSION_CODENAME=").map(|v| v.trim_matches('"').to_string()))
        .unwrap_or_default()
}

/// (plain packages, backports packages) still to install.
pub fn missing(sh: &Shell) -> (Vec<&'static str>, Vec<&'static str>) {
    let packages = required_packages();
    let names: Vec<&str> = packages.iter().map(|(p, _)| *p).collect();
    let have = installed(sh, &names);
    let use_backports = codename() == "bookworm";
    let mut plain = Vec::new();
    let mut backports = Vec::new();
    for (p, wants_backports) in packages {
        if !have.contains(p) {
            if wants_backports && use_backports {
                backports.push(p)
            } else {
                plain.push(p)
            }
        }
    }
    (plain, backports)
}

/// The pid of a process holding a write lock on `path` (apt and dpkg lock with fcntl), if any.
fn lock_holder(path: &Path) -> Option<libc::pid_t> {
    let file = std::fs::File::open(path).ok()?;
    let mut lock: libc::flock = unsafe { std::mem::zeroed() };
    lock.l_type = libc::F_WRLCK as _;
    lock.l_whence = libc::SEEK_SET as _;
    let asked = unsafe { libc::fcntl(file.as_raw_fd(), libc::F_GETLK, &mut lock) } == 0;
    (asked && lock.l_type != libc::F_UNLCK as libc::c_short).then_some(lock.l_pid)
}

/// While apt or dpkg upgrades a package, dpkg reads it as not installed: on a fresh machine every
/// `lab` started during a test's `apt-get install chromium` failed on "missing host packages:
/// perl", mid-upgrade. So the host's packages are read only once no package manager runs.
fn await_package_manager(ui: &Ui) -> Result<()> {
    let start = Instant::now();
    let mut told = false;
    while let Some((path, pid)) = DPKG_LOCKS.iter().find_map(|p| lock_holder(Path::new(p)).map(|pid| (*p, pid))) {
        if start.elapsed() > PACKAGE_MANAGER_WAIT {
            bail!(
                "cannot check the host's packages: pid {pid} has held {path} for over {} min; \
                 wait for that package manager to finish (or stop it), then run this again",
                PACKAGE_MANAGER_WAIT.as_secs() / 60
            );
        }
        if !told {
            ui.note(format!("waiting for the package manager to finish (pid {pid} holds {path}) before checking the host's packages"));
            told = true;
        }
        std::thread::sleep(Duration::from_millis(500));
    }
    Ok(())
}

/// Refuses to start a run that would fail on a missing tool after minutes of work.
pub fn preflight(sh: &Shell, ui: &Ui) -> Result<()> {
    await_package_manager(ui)?;
    let (plain, backports) = missing(sh);
    if plain.is_empty() && backports.is_empty() {
        return Ok(());
    }
    let names: Vec<&str> = plain.iter().chain(&backports).copied().collect();
    bail!(
        "missing host packages: {}\nrun `lab setup` (or `lab run --setup`), or as root:\n    {}",
        names.join(" "),
        install_command(&plain, &backports)
    )
}

fn install_command(plain: &[&str], backports: &[&str]) -> String {
    let mut steps = Vec::new();
    if !backports.is_empty() {
        steps.push(format!("echo 'deb http://deb.debian.org/debian bookworm-backports main' > {BACKPORTS_LIST}"));
    }
    steps.push("apt-get update".to_string());
    if !plain.is_empty() {
        steps.push(format!("apt-get install -y {}", plain.join(" ")));
    }
    if !backports.is_empty() {
        steps.push(format!("apt-get install -y -t bookworm-backports {}", backports.join(" ")));
    }
    steps.join(" && ")
}

pub fn checks(sh: &Shell, cache: &Cache, images_dir: &Path, ui: &Ui) -> Vec<Check> {
    let mut checks = Vec::new();
    if let Err(e) = await_package_manager(ui) {
        checks.push(Check {
            what: "no package manager running".into(),
            ok: false,
            detail: format!("{e:#}"),
            fix: Some("let the running apt-get or dpkg finish, then run `lab doctor` again".into()),
        });
    }
    let (plain, backports) = missing(sh);
    for (p, _) in required_packages() {
        let absent = plain.contains(&p) || backports.contains(&p);
        let fix = absent.then(|| {
            let (pl, bp): (Vec<&str>, Vec<&str>) =
                if backports.contains(&p) { (vec![], vec![p]) } else { (vec![p], vec![]) };
            install_command(&pl, &bp)
        });
        checks.push(Check {
            what: format!("package {p}"),
            ok: !absent,
            detail: if absent { "missing".into() } else { "installed".into() },
            fix,
        });
    }
    for arch in Arch::ALL {
        let bin = arch.qemu_binary();
        let version = cmd!(sh, "{bin} --version")
            .quiet()
            .ignore_stderr()
            .read()
            .ok()
            .and_then(|v| v.lines().next().map(str::to_string));
        checks.push(Check {
            what: format!("{bin} runs"),
            ok: version.is_some(),
            detail: version.clone().unwrap_or_else(|| "not found".into()),
            fix: version.is_none().then(|| "lab setup".to_string()),
        });
    }
    let free = free_gib(cache.root());
    checks.push(Check {
        what: format!("free space under {}", cache.root().display()),
        ok: free.is_some_and(|f| f >= MIN_FREE_GIB),
        detail: free.map(|f| format!("{f} GiB free (needs {MIN_FREE_GIB})")).unwrap_or_else(|| "unknown".into()),
        fix: Some(format!(
            "free space there, or point the cache elsewhere: --cache-dir DIR or LAB_CACHE_DIR=DIR ({MIN_FREE_GIB} GiB)"
        ))
        .filter(|_| free.is_none_or(|f| f < MIN_FREE_GIB)),
    });
    let tcg = crate::accel::probe_boots(cache, &["-accel", "tcg"], std::time::Duration::from_secs(30));
    checks.push(Check {
        what: "TCG boots a test guest".into(),
        ok: tcg.is_ok(),
        detail: match &tcg {
            Ok(()) => "x86_64 boot sector printed its marker".into(),
            Err(e) => format!("{e:#}"),
        },
        fix: tcg.is_err().then(|| "reinstall QEMU: lab setup (check `qemu-system-x86_64 --version`)".into()),
    });
    checks.push(Check {
        what: "accelerator for x86_64 guests".into(),
        // TCG is a complete fallback: a broken KVM is information, not a failure.
        ok: true,
        detail: kvm_proof(sh, cache, images_dir, ui)
            .unwrap_or_else(|e| format!("KVM: not proven ({e:#}); x86_64 runs under TCG")),
        fix: None,
    });
    checks
}

fn free_gib(path: &Path) -> Option<u64> {
    let c = std::ffi::CString::new(path.as_os_str().as_encoded_bytes()).ok()?;
    let mut st: libc::statvfs = unsafe { std::mem::zeroed() };
    (unsafe { libc::statvfs(c.as_ptr(), &mut st) } == 0).then(|| (st.f_bavail as u64 * st.f_frsize as u64) >> 30)
}

pub fn setup(sh: &Shell, ui: &Ui, dry_run: bool) -> Result<String> {
    await_package_manager(ui)?;
    let (plain, backports) = missing(sh);
    if plain.is_empty() && backports.is_empty() {
        return Ok("all host packages are installed".into());
    }
    let command = install_command(&plain, &backports);
    if dry_run {
        return Ok(format!("would run: {command}"));
    }
    if unsafe { libc::geteuid() } != 0 {
        bail!("installing packages needs root; run as root:\n    {command}");
    }
    if !backports.is_empty() {
        std::fs::write(BACKPORTS_LIST, "deb http://deb.debian.org/debian bookworm-backports main\n")
            .with_context(|| format!("cannot write {BACKPORTS_LIST}"))?;
    }
    // A third-party source in the host's list that cannot be reached must not stop us: apt-get
    // update then only warns, and the Debian indexes it needs are still refreshed.
    let lock_timeout = format!("DPkg::Lock::Timeout={}", PACKAGE_MANAGER_WAIT.as_secs());
    let _ = cmd!(sh, "apt-get -o {lock_timeout} update -q").quiet().ignore_stdout().ignore_stderr().run();
    // One retry: dpkg on this machine kind has been seen to fail transiently on its temp files.
    let install = |args: &[&str]| -> Result<()> {
        let attempt = || {
            cmd!(sh, "apt-get -o {lock_timeout} install -y -q {args...}")
                .env("DEBIAN_FRONTEND", "noninteractive")
                .quiet()
                .ignore_stdout()
                .run()
        };
        attempt().or_else(|_| attempt()).with_context(|| format!("apt-get install {} failed", args.join(" ")))
    };
    if !plain.is_empty() {
        install(&plain)?;
    }
    if !backports.is_empty() {
        install(&[&["-t", "bookworm-backports"][..], &backports].concat())?;
    }
    Ok(format!("installed: {}", plain.iter().chain(&backports).copied().collect::<Vec<_>>().join(" ")))
}

/// What KVM proved here, in one line. Only a Linux guest booted to its ready line proves it (on
/// this machine kind a boot sector runs under KVM and Linux hangs): the newest x86_64 lab kernel
/// in the cache is booted, or the proof a run already made is reused.
fn kvm_proof(sh: &Shell, cache: &Cache, images_dir: &Path, ui: &Ui) -> Result<String> {
    if !Path::new("/dev/kvm").exists() {
        return Ok("KVM: /dev/kvm does not exist; x86_64 runs under TCG".into());
    }
    let Some(kernel) = crate::kernel::newest_built(cache, Arch::X86_64) else {
        return Ok(match crate::accel::probe_boots(cache, &["-accel", "kvm", "-cpu", "host"], Duration::from_secs(15)) {
            Err(e) => format!("KVM: a boot sector printed nothing under -accel kvm -cpu host ({e:#}); x86_64 runs under TCG"),
            Ok(()) => "KVM: a boot sector runs under it, but only a Linux guest proves it and no x86_64 lab kernel is built yet \
                       (`lab build --arch x86_64`; every run proves it first); until then x86_64 runs under TCG"
                .into(),
        });
    };
    let image = crate::image::build(sh, cache, images_dir, Arch::X86_64, ui)?;
    let proof = crate::accel::prove_kvm(cache, &crate::run::guest::probe_guest(&kernel, &image))?;
    Ok(proof.verdict())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn install_command_uses_backports_only_for_qemu() {
        assert_eq!(
            install_command(&["flex"], &["qemu-system-ppc"]),
            format!("echo 'deb http://deb.debian.org/debian bookworm-backports main' > {BACKPORTS_LIST} && apt-get update && apt-get install -y flex && apt-get install -y -t bookworm-backports qemu-system-ppc")
        );
        assert_eq!(install_command(&["bc"], &[]), "apt-get update && apt-get install -y bc");
    }

    /// apt's own kind of lock (fcntl, as Python's lockf takes it) held by another process is seen
    /// with that process's pid, and is gone with it.
    #[test]
    fn a_package_managers_lock_is_seen_with_its_holder() {
        let path = std::env::temp_dir().join(format!("lab-dpkg-lock-test-{}", std::process::id()));
        std::fs::write(&path, "").unwrap();
        assert_eq!(lock_holder(&path), None);
        let hold = "import fcntl, sys, time; f = open(sys.argv[1], 'w'); fcntl.lockf(f, fcntl.LOCK_EX); print(flush=True); time.sleep(60)";
        let mut child = std::process::Command::new("python3")
            .args(["-c", hold])
            .arg(&path)
            .stdout(std::process::Stdio::piped())
            .spawn()
            .expect("python3 runs");
        let mut locked = String::new();
        std::io::BufRead::read_line(&mut std::io::BufReader::new(child.stdout.take().unwrap()), &mut locked).unwrap();
        assert_eq!(lock_holder(&path), Some(child.id() as libc::pid_t));
        child.kill().unwrap();
        child.wait().unwrap();
        assert_eq!(lock_holder(&path), None);
        assert_eq!(lock_holder(Path::new("/nonexistent/lock")), None);
        std::fs::remove_file(&path).unwrap();
    }
}
