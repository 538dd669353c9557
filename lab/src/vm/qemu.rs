//! The QEMU command line for a guest: one profile per architecture, nothing host-specific.

use std::path::Path;
use std::process::Command;

use crate::arch::Arch;

#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Accel {
    /// Multi-threaded TCG: one host thread per vCPU.
    Tcg,
    /// Only for x86_64 guests, and only after `doctor::kvm_works` booted a guest under it.
    Kvm,
}

#[derive(Clone)]
pub struct Machine<'a> {
    pub arch: Arch,
    pub accel: Accel,
    pub vcpus: u32,
    pub memory_mib: u32,
    pub kernel: &'a Path,
    pub initramfs: Option<&'a Path>,
    pub cmdline: &'a str,
    /// Host port forwarded (on 127.0.0.1 only) to the guest's SSH port.
    pub ssh_port: Option<u16>,
}

impl Machine<'_> {
    pub fn command(&self) -> Command {
        let mut c = Command::new(self.arch.qemu_binary());
        let [m, machine, cpu_flag, cpu] = self.arch.qemu_machine();
        c.args([m, machine]);
        match self.accel {
            Accel::Kvm => c.args(["-accel", "kvm", "-cpu", "host"]),
            Accel::Tcg => c.args([cpu_flag, cpu, "-accel", "tcg,thread=multi"]),
        };
        c.args(["-smp", &self.vcpus.to_string(), "-m", &self.memory_mib.to_string()]);
        c.arg("-kernel").arg(self.kernel);
        if let Some(initramfs) = self.initramfs {
            c.arg("-initrd").arg(initramfs);
        }
        c.args(["-append", self.cmdline]);
        // No default devices (VGA, NIC, ...): the console is the one serial port, on our stdio,
        // where the lab reads it. `-no-reboot` turns the guest's panic-reboot into QEMU's exit.
        c.args(["-nodefaults", "-no-user-config", "-display", "none", "-monitor", "none"]);
        c.args(["-chardev", "stdio,id=console,signal=off", "-serial", "chardev:console", "-no-reboot"]);
        if let Some(port) = self.ssh_port {
            c.args(["-netdev", &format!("user,id=net0,hostfwd=tcp:127.0.0.1:{port}-:22"), "-device", &format!("{},netdev=net0", self.arch.nic())]);
        }
        c
    }
}

/// A port on 127.0.0.1 free right now. Another process may take it before QEMU binds it: QEMU
/// then fails to start (`is_port_clash`) and the caller tries another.
pub fn free_local_port() -> std::io::Result<u16> {
    Ok(std::net::TcpListener::bind(("127.0.0.1", 0))?.local_addr()?.port())
}

/// Did QEMU fail because the forwarded host port was taken?
pub fn is_port_clash(qemu_error: &str) -> bool {
    qemu_error.contains("Could not set up host forwarding rule")
}

/// The command as a shell line anyone can paste to boot the same guest by hand.
pub fn shell_line(command: &Command) -> String {
    std::iter::once(command.get_program())
        .chain(command.get_args())
        .map(|a| {
            let a = a.to_string_lossy();
            if !a.is_empty() && a.chars().all(|c| c.is_ascii_alphanumeric() || "-_=,./:+".contains(c)) {
                a.into_owned()
            } else {
                format!("'{}'", a.replace('\'', r"'\''"))
            }
        })
        .collect::<Vec<_>>()
        .join(" ")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn line(arch: Arch, accel: Accel) -> String {
        let m = Machine { arch, accel, vcpus: 4, memory_mib: 512, kernel: Path::new("/k/image"), initramfs: Some(Path::new("/i/initramfs.cpio")), cmdline: "console=hvc0 panic=-1", ssh_port: None };
        shell_line(&m.command())
    }

    #[test]
    fn profiles() {
        let ppc = line(Arch::Ppc64le, Accel::Tcg);
        assert!(ppc.starts_with("qemu-system-ppc64 -M pseries,x-vof=on -cpu power9 -accel tcg,thread=multi -smp 4 -m 512 -kernel /k/image -initrd /i/initramfs.cpio -append 'console=hvc0 panic=-1'"), "{ppc}");
        assert!(ppc.ends_with("-serial chardev:console -no-reboot"), "{ppc}");
        let arm = line(Arch::Aarch64, Accel::Tcg);
        assert!(arm.contains("-M virt,gic-version=3 -cpu max,pauth-impdef=on -accel tcg,thread=multi"), "{arm}");
        let kvm = line(Arch::X86_64, Accel::Kvm);
        assert!(kvm.contains("-M q35 -accel kvm -cpu host -smp 4") && !kvm.contains("tcg"), "{kvm}");
    }
}
