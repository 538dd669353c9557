//! The QEMU command line for a guest: one profile per architecture, nothing host-specific.

use std::path::Path;
use std::process::Command;

use crate::arch::Arch;

#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
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
    /// A NIC on QEMU's user-mode network whose only way in is this host port, on 127.0.0.1,
    /// forwarded to the guest's SSH server (port 22). `None`: no NIC at all.
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
        if let Some(port) = self.ssh_port {
            // Bound to the host's loopback only: nothing off this host reaches the guest. And the
            // guest reaches nothing (`restrict=on`): a kernel under test has no business on the
            // network, and the forward still carries SSH in.
            c.args(["-netdev", &format!("user,id=net0,restrict=on,hostfwd=tcp:127.0.0.1:{port}-:22")]);
            c.args(["-device", &format!("{},netdev=net0", self.arch.qemu_nic())]);
        }
        // No default devices (VGA, NIC, ...): the console is the one serial port, on our stdio,
        // where the lab reads it. `-no-reboot` turns the guest's panic-reboot into QEMU's exit.
        c.args(["-nodefaults", "-no-user-config", "-display", "none", "-monitor", "none"]);
        c.args(["-chardev", "stdio,id=console,signal=off", "-serial", "chardev:console", "-no-reboot"]);
        c
    }
}

/// What QEMU 10 prints on stderr, exiting with status 1 before the guest starts, when it cannot
/// listen on the port of a host forward (`-netdev user,...,hostfwd=...`).
const PORT_CLASH: &str = "Could not set up host forwarding rule";

/// Did QEMU fail at start because `Machine::ssh_port` was taken? Then boot again on a new port.
pub fn is_port_clash(qemu_stderr: &str) -> bool {
    qemu_stderr.contains(PORT_CLASH)
}

/// A TCP port on 127.0.0.1 that was free a moment ago, for `Machine::ssh_port`. Racy by nature:
/// the port is released before QEMU binds it, and another process may take it in between; QEMU
/// then exits at once (`is_port_clash`), and the caller asks for another port and retries.
pub fn free_local_port() -> std::io::Result<u16> {
    Ok(std::net::TcpListener::bind(("127.0.0.1", 0))?.local_addr()?.port())
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
        ssh_line(arch, accel, None)
    }

    fn ssh_line(arch: Arch, accel: Accel, ssh_port: Option<u16>) -> String {
        let m = Machine {
            arch,
            accel,
            vcpus: 4,
            memory_mib: 512,
            kernel: Path::new("/k/image"),
            initramfs: Some(Path::new("/i/initramfs.cpio")),
            cmdline: "console=hvc0 panic=-1",
            ssh_port,
        };
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
        assert!(!ppc.contains("-netdev") && !ppc.contains("-device"), "no NIC without an SSH port: {ppc}");
    }

    #[test]
    fn ssh_port_adds_one_nic_forwarded_from_the_host_loopback() {
        for (arch, nic) in
            [(Arch::X86_64, "virtio-net-pci"), (Arch::Aarch64, "virtio-net-device"), (Arch::Ppc64le, "spapr-vlan")]
        {
            let line = ssh_line(arch, Accel::Tcg, Some(40022));
            let expect = format!("-append 'console=hvc0 panic=-1' -netdev user,id=net0,restrict=on,hostfwd=tcp:127.0.0.1:40022-:22 -device {nic},netdev=net0 -nodefaults ");
            assert!(line.contains(&expect), "{line}");
            assert_eq!(line.matches("-netdev").count() + line.matches("hostfwd").count(), 2, "{line}");
        }
    }

    #[test]
    fn port_clash_is_recognised() {
        // QEMU 10.0.2 with a host forward on a port another process listens on.
        let stderr = "qemu-system-x86_64: -netdev user,id=net0,restrict=off,hostfwd=tcp:127.0.0.1:58325-:22: Could not set up host forwarding rule 'tcp:127.0.0.1:58325-:22'\n";
        assert!(is_port_clash(stderr));
        assert!(!is_port_clash("qemu-system-x86_64: -kernel /k/image: No such file or directory\n"));
    }

    #[test]
    fn free_local_port_can_be_bound() {
        let port = free_local_port().unwrap();
        assert_ne!(port, 0);
        std::net::TcpListener::bind(("127.0.0.1", port)).unwrap();
    }
}
