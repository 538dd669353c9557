//! Which accelerator a guest runs under, and the proof behind KVM.
//!
//! On this project's machine kind `/dev/kvm` can exist, run a 512-byte boot sector, and still hang
//! a Linux guest in its decompressor without a byte on the console (ENVIRONMENT.md). So KVM is
//! trusted only after a real lab kernel and initramfs booted to the init's ready line under it;
//! the answer is cached per host boot, QEMU version and kernel, with the reason. Everything else
//! runs under TCG, and only x86_64 guests ever use KVM (the hosts are x86_64).
//!
//! The decisions (`choose`, `retry_under_tcg`) are pure; `prove_kvm` is the one that boots.

use std::io::Read;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Result};
use serde::{Deserialize, Serialize};

use crate::arch::Arch;
use crate::cache::{Cache, KeyBuilder};
pub use crate::matrix::AccelMode;
use crate::process::{Group, Waited};
use crate::vm::{Accel, Machine};

/// A Linux guest under working KVM reaches its ready line in about a second; TCG needs 3 s.
const PROBE_DEADLINE: Duration = Duration::from_secs(15);
const READY: &[u8] = b"LAB-READY";

/// What booting Linux under KVM showed.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct KvmProof {
    pub works: bool,
    /// How it was proven, in words for `lab doctor` and the run's log.
    pub how: String,
}

impl KvmProof {
    fn refused(how: impl Into<String>) -> KvmProof {
        KvmProof { works: false, how: how.into() }
    }

    /// One line: what was proven, and what x86_64 guests therefore run under.
    pub fn verdict(&self) -> String {
        match self.works {
            true => format!("KVM: {}; x86_64 runs under KVM", self.how),
            false => format!("KVM: {}; x86_64 runs under TCG", self.how),
        }
    }
}

/// The accelerator for a guest of `arch`: `auto` takes KVM only with a proof that it works.
pub fn choose(mode: AccelMode, arch: Arch, proof: Option<&KvmProof>) -> Accel {
    match (mode, arch) {
        (_, Arch::Aarch64 | Arch::Ppc64le) | (AccelMode::Tcg, _) => Accel::Tcg,
        (AccelMode::Kvm, Arch::X86_64) => Accel::Kvm,
        (AccelMode::Auto, Arch::X86_64) => match proof {
            Some(p) if p.works => Accel::Kvm,
            _ => Accel::Tcg,
        },
    }
}

/// Under `auto`, a KVM boot whose guest never got going (not one console byte, or every vCPU
/// outside the kernel image) runs again under TCG, once: the proof can pass and a cell still meet
/// the broken KVM (another vCPU count, another kernel). A KVM the user asked for is not overruled.
pub fn retry_under_tcg(mode: AccelMode, used: Accel, never_started: bool) -> bool {
    mode == AccelMode::Auto && used == Accel::Kvm && never_started
}

/// The accelerator for a guest of `arch` booting `guest`, proving KVM first when `auto` needs it;
/// with the proof, when one was sought.
pub fn for_guest(cache: &Cache, mode: AccelMode, arch: Arch, guest: &ProbeGuest) -> Result<(Accel, Option<KvmProof>)> {
    let proof = match (mode, arch) {
        (AccelMode::Auto, Arch::X86_64) => Some(prove_kvm(cache, guest)?),
        _ => None,
    };
    Ok((choose(mode, arch, proof.as_ref()), proof))
}

/// A guest booted to prove KVM: the kernel's image and a label for it, and an initramfs whose
/// init prints the ready line.
pub struct ProbeGuest<'a> {
    pub kernel: &'a Path,
    /// The kernel's content key: a proof holds for the kernel it booted.
    pub kernel_key: &'a str,
    pub label: String,
    pub initramfs: &'a Path,
}

/// Boots `guest` under KVM to its ready line, or finds the answer cached for this host boot, this
/// QEMU and this kernel. `/dev/kvm` absent or a boot sector that cannot even run say no at once.
pub fn prove_kvm(cache: &Cache, guest: &ProbeGuest) -> Result<KvmProof> {
    if !Path::new("/dev/kvm").exists() {
        return Ok(KvmProof::refused("/dev/kvm does not exist"));
    }
    let file = cache.dir("probe")?.join(format!("kvm-{}.json", proof_key(guest.kernel_key)));
    if let Some(proof) = std::fs::read(&file).ok().and_then(|b| serde_json::from_slice::<KvmProof>(&b).ok()) {
        return Ok(proof);
    }
    let proof = match probe_boots(cache, &["-accel", "kvm", "-cpu", "host"], PROBE_DEADLINE) {
        // A signal is no answer: it must neither be cached nor read as a broken KVM.
        Err(e) if e.downcast_ref::<crate::process::Interrupted>().is_some() => return Err(e),
        Err(e) => KvmProof::refused(format!("a boot sector printed nothing under -accel kvm -cpu host: {e:#}")),
        Ok(()) => boot_linux(guest)?,
    };
    crate::cache::write_atomic(&file, serde_json::to_string_pretty(&proof)?.as_bytes())?;
    Ok(proof)
}

/// Proofs are cached per host boot (a reboot may bring another KVM module), QEMU version and kernel.
fn proof_key(kernel_key: &str) -> String {
    let boot_id = std::fs::read_to_string("/proc/sys/kernel/random/boot_id").unwrap_or_default();
    let qemu = std::process::Command::new(Arch::X86_64.qemu_binary())
        .arg("--version")
        .output()
        .map(|o| o.stdout)
        .unwrap_or_default();
    KeyBuilder::default()
        .part("boot", boot_id.trim().as_bytes())
        .part("qemu", &qemu)
        .part("kernel", kernel_key.as_bytes())
        .finish()
}

fn boot_linux(guest: &ProbeGuest) -> Result<KvmProof> {
    let arch = Arch::X86_64;
    // No workload: the init prints its ready line, then a result line, and powers off.
    let cmdline = std::iter::once(format!("console={} panic=-1", arch.console()))
        .chain(arch.kernel_params().iter().map(|p| p.to_string()))
        .collect::<Vec<_>>()
        .join(" ");
    let machine = Machine {
        arch,
        accel: Accel::Kvm,
        vcpus: 2,
        memory_mib: 256,
        kernel: guest.kernel,
        initramfs: Some(guest.initramfs),
        cmdline: &cmdline,
        ssh_port: None,
    };
    let mut command = machine.command();
    command.stdin(Stdio::null()).stdout(Stdio::piped()).stderr(Stdio::piped());
    let start = Instant::now();
    let mut group = Group::spawn(command)?;
    let waited = group.wait_for_output(READY, PROBE_DEADLINE)?;
    group.kill();
    let secs = start.elapsed().as_secs_f64();
    let what = format!("a Linux guest ({}) under -accel kvm -cpu host", guest.label);
    Ok(match waited {
        Waited::Found => KvmProof { works: true, how: format!("{what} reached its ready line in {secs:.1} s") },
        Waited::TimedOut { printed: 0 } => KvmProof::refused(format!("{what} printed nothing in {secs:.0} s")),
        Waited::TimedOut { printed } => {
            KvmProof::refused(format!("{what} printed {printed} bytes but no ready line in {secs:.0} s"))
        }
        Waited::Ended { printed } => {
            let mut stderr = String::new();
            if let Some(mut pipe) = group.child_mut().stderr.take() {
                let _ = pipe.read_to_string(&mut stderr);
            }
            let why = stderr.lines().find(|l| !l.trim().is_empty()).unwrap_or("no message");
            KvmProof::refused(format!("{what} ended after {printed} bytes without a ready line: {why}"))
        }
    })
}

/// A 512-byte x86 boot sector that prints a marker on COM1 and halts: SeaBIOS boots it in
/// milliseconds, so seeing the marker proves KVM runs guest code here.
fn probe_boot_sector() -> Vec<u8> {
    const MARKER_OFFSET: u16 = 23;
    let mut code = vec![
        0xFC, // cld
        0x31, 0xC0, // xor ax, ax
        0x8E, 0xD8, // mov ds, ax
        0xBA, 0xF8, 0x03, // mov dx, 0x3f8
        0xBE, 0, 0,    // mov si, marker
        0xAC, // next: lodsb
        0x84, 0xC0, // test al, al
        0x74, 0x03, // jz done
        0xEE, // out dx, al
        0xEB, 0xF8, // jmp next
        0xFA, // done: cli
        0xF4, // halt: hlt
        0xEB, 0xFD, // jmp halt
    ];
    let marker_addr = 0x7C00 + MARKER_OFFSET;
    code[9..11].copy_from_slice(&marker_addr.to_le_bytes());
    assert_eq!(code.len(), MARKER_OFFSET as usize);
    code.extend_from_slice(KVM_MARKER.as_bytes());
    code.extend_from_slice(b"\r\n\0");
    code.resize(510, 0);
    code.extend_from_slice(&[0x55, 0xAA]);
    code
}

const KVM_MARKER: &str = "LAB-KVM-OK";

/// Boots the probe sector under the given accelerator and waits for the marker.
pub fn probe_boots(cache: &Cache, accel: &[&str], timeout: Duration) -> Result<()> {
    let disk = cache.dir("probe")?.join("kvm-probe.img");
    std::fs::write(&disk, probe_boot_sector())?;
    let mut command = Command::new(Arch::X86_64.qemu_binary());
    // i440fx: SeaBIOS boots its IDE disk directly (q35's AHCI path did not boot the sector here).
    command.args(["-M", "pc", "-display", "none", "-nodefaults", "-no-user-config", "-serial", "stdio", "-no-reboot"]);
    command.args(accel).arg("-drive").arg(format!("file={},format=raw,if=ide", disk.display()));
    command.stdin(Stdio::null()).stdout(Stdio::piped()).stderr(Stdio::piped());
    let mut group = crate::process::Group::spawn(command)?;
    let start = Instant::now();
    let waited = group.wait_for_output(KVM_MARKER.as_bytes(), timeout)?;
    group.kill();
    if waited == crate::process::Waited::Found {
        return Ok(());
    }
    let mut err = String::new();
    if let Some(mut stderr) = group.child_mut().stderr.take() {
        let _ = std::io::Read::read_to_string(&mut stderr, &mut err);
    }
    let err = err.lines().find(|l| !l.trim().is_empty()).unwrap_or("no output").to_string();
    bail!("a test guest printed nothing in {:.0}s ({err})", start.elapsed().as_secs_f64())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn proof(works: bool) -> Option<KvmProof> {
        Some(KvmProof { works, how: String::new() })
    }

    /// `check(mode, arch, proof, expected accelerator)`
    fn check(mode: AccelMode, arch: Arch, proof: Option<KvmProof>, want: Accel) {
        assert_eq!(choose(mode, arch, proof.as_ref()), want, "{mode:?} {arch} {proof:?}");
    }

    #[test]
    fn kvm_only_for_x86_64_and_only_when_proven_or_asked_for() {
        use AccelMode::*;
        check(Auto, Arch::X86_64, proof(true), Accel::Kvm);
        check(Auto, Arch::X86_64, proof(false), Accel::Tcg);
        check(Auto, Arch::X86_64, None, Accel::Tcg);
        check(Auto, Arch::Aarch64, proof(true), Accel::Tcg);
        check(Auto, Arch::Ppc64le, proof(true), Accel::Tcg);
        check(Tcg, Arch::X86_64, proof(true), Accel::Tcg);
        check(Kvm, Arch::X86_64, None, Accel::Kvm);
        check(Kvm, Arch::X86_64, proof(false), Accel::Kvm);
        check(Kvm, Arch::Aarch64, None, Accel::Tcg);
    }

    #[test]
    fn only_auto_retries_a_kvm_guest_that_never_started_under_tcg() {
        use AccelMode::*;
        let cases = [
            (Auto, Accel::Kvm, true, true),
            (Auto, Accel::Kvm, false, false),
            (Auto, Accel::Tcg, true, false),
            (Kvm, Accel::Kvm, true, false),
            (Tcg, Accel::Tcg, true, false),
        ];
        for (mode, used, never_started, want) in cases {
            assert_eq!(retry_under_tcg(mode, used, never_started), want, "{mode:?} {used:?} {never_started}");
        }
    }

    #[test]
    fn verdicts_say_what_x86_64_runs_under() {
        let no =
            KvmProof::refused("a Linux guest (linux-7.3 x86_64) under -accel kvm -cpu host printed nothing in 15 s");
        assert_eq!(no.verdict(), "KVM: a Linux guest (linux-7.3 x86_64) under -accel kvm -cpu host printed nothing in 15 s; x86_64 runs under TCG");
        let yes = KvmProof { works: true, how: "a Linux guest reached its ready line in 0.9 s".into() };
        assert_eq!(yes.verdict(), "KVM: a Linux guest reached its ready line in 0.9 s; x86_64 runs under KVM");
    }

    #[test]
    fn boot_sector_is_bootable() {
        let sector = probe_boot_sector();
        assert_eq!(sector.len(), 512);
        assert_eq!(&sector[510..], &[0x55, 0xAA]);
        assert_eq!(&sector[23..33], KVM_MARKER.as_bytes());
    }
}
