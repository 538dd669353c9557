//! The three guest architectures and the facts every stage needs about them.
//!
//! This is vocabulary, not a stage: it knows names, toolchains and QEMU machine choices, and
//! nothing about caches or runs. Adding an architecture means adding a variant and filling in
//! each `match` below; the compiler lists every place.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Arch {
    X86_64,
    Aarch64,
    Ppc64le,
}

impl Arch {
    pub const ALL: [Arch; 3] = [Arch::X86_64, Arch::Aarch64, Arch::Ppc64le];

    pub fn name(self) -> &'static str {
        match self {
            Arch::X86_64 => "x86_64",
            Arch::Aarch64 => "aarch64",
            Arch::Ppc64le => "ppc64le",
        }
    }

    /// Kbuild's `ARCH=`.
    pub fn kernel_arch(self) -> &'static str {
        match self {
            Arch::X86_64 => "x86_64",
            Arch::Aarch64 => "arm64",
            Arch::Ppc64le => "powerpc",
        }
    }

    /// Kbuild's `SRCARCH`: the directory under `arch/` and `tools/arch/`.
    pub fn src_arch(self) -> &'static str {
        match self {
            Arch::X86_64 => "x86",
            Arch::Aarch64 => "arm64",
            Arch::Ppc64le => "powerpc",
        }
    }

    /// The GNU triplet prefix of the Debian cross toolchain; empty on the native x86_64 host.
    pub fn cross_compile(self) -> &'static str {
        match self {
            Arch::X86_64 => "",
            Arch::Aarch64 => "aarch64-linux-gnu-",
            Arch::Ppc64le => "powerpc64le-linux-gnu-",
        }
    }

    pub fn gcc(self) -> String {
        format!("{}gcc", self.cross_compile())
    }

    /// The Kbuild target that produces the image QEMU boots, and where it lands in `O=`.
    pub fn kernel_target(self) -> (&'static str, &'static str) {
        match self {
            Arch::X86_64 => ("bzImage", "arch/x86/boot/bzImage"),
            Arch::Aarch64 => ("Image", "arch/arm64/boot/Image"),
            // pseries with QEMU's VOF firmware boots the ELF vmlinux directly.
            Arch::Ppc64le => ("vmlinux", "vmlinux"),
        }
    }

    /// The Debian packages that provide the cross C toolchain and its static glibc.
    pub fn toolchain_packages(self) -> &'static [&'static str] {
        match self {
            Arch::X86_64 => &["gcc", "libc6-dev"],
            Arch::Aarch64 => &["gcc-aarch64-linux-gnu", "libc6-dev-arm64-cross"],
            Arch::Ppc64le => &["gcc-powerpc64le-linux-gnu", "libc6-dev-ppc64el-cross"],
        }
    }

    /// Debian's name of the architecture, for the guest's userland packages.
    pub fn debian_arch(self) -> &'static str {
        match self {
            Arch::X86_64 => "amd64",
            Arch::Aarch64 => "arm64",
            Arch::Ppc64le => "ppc64el",
        }
    }

    /// Debian's multiarch directory (`/lib/<this>`, `/usr/lib/<this>`): where its libraries live.
    pub fn debian_multiarch(self) -> &'static str {
        match self {
            Arch::X86_64 => "x86_64-linux-gnu",
            Arch::Aarch64 => "aarch64-linux-gnu",
            Arch::Ppc64le => "powerpc64le-linux-gnu",
        }
    }

    pub fn qemu_binary(self) -> &'static str {
        match self {
            Arch::X86_64 => "qemu-system-x86_64",
            Arch::Aarch64 => "qemu-system-aarch64",
            Arch::Ppc64le => "qemu-system-ppc64",
        }
    }

    pub fn qemu_package(self) -> &'static str {
        match self {
            Arch::X86_64 => "qemu-system-x86",
            Arch::Aarch64 => "qemu-system-arm",
            Arch::Ppc64le => "qemu-system-ppc",
        }
    }

    /// `-M` and `-cpu` for TCG. Why these: q35 with ACPI gives SMP and power-off; virt with GICv3
    /// is what arm64 CI uses, and `pauth-impdef` keeps TCG's pointer authentication cheap; pseries
    /// with VOF instead of SLOF boots in about 2 s instead of 11 s (measured on this host).
    pub fn qemu_machine(self) -> [&'static str; 4] {
        match self {
            Arch::X86_64 => ["-M", "q35", "-cpu", "max"],
            Arch::Aarch64 => ["-M", "virt,gic-version=3", "-cpu", "max,pauth-impdef=on"],
            Arch::Ppc64le => ["-M", "pseries,x-vof=on", "-cpu", "power9"],
        }
    }

    /// The NIC for the guest's SSH server, on QEMU's user-mode network (`-netdev user,id=net0`).
    /// The kernel fragment of each architecture carries its driver (kernels/config/ARCH.config).
    pub fn qemu_nic(self) -> &'static str {
        match self {
            Arch::X86_64 => "virtio-net-pci",
            Arch::Aarch64 => "virtio-net-device",
            Arch::Ppc64le => "spapr-vlan",
        }
    }

    pub fn console(self) -> &'static str {
        match self {
            Arch::X86_64 => "ttyS0",
            Arch::Aarch64 => "ttyAMA0",
            Arch::Ppc64le => "hvc0",
        }
    }

    /// Kernel parameters every guest of this architecture needs.
    pub fn kernel_params(self) -> &'static [&'static str] {
        match self {
            // Pseudo-NMI lets a CPU spinning with interrupts off still dump its stack on a lockup.
            Arch::Aarch64 => &["irqchip.gicv3_pseudo_nmi=1"],
            Arch::X86_64 | Arch::Ppc64le => &[],
        }
    }

    /// What `uname -m` says inside the guest, to check that the right kernel booted.
    pub fn uname_machine(self) -> &'static str {
        match self {
            Arch::X86_64 => "x86_64",
            Arch::Aarch64 => "aarch64",
            Arch::Ppc64le => "ppc64le",
        }
    }
}

impl fmt::Display for Arch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

#[derive(Debug, thiserror::Error)]
#[error("unknown architecture `{0}`: expected one of x86_64, aarch64, ppc64le")]
pub struct UnknownArch(String);

impl FromStr for Arch {
    type Err = UnknownArch;

    fn from_str(s: &str) -> Result<Arch, UnknownArch> {
        Arch::ALL.into_iter().find(|a| a.name() == s).ok_or_else(|| UnknownArch(s.to_string()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip() {
        for arch in Arch::ALL {
            assert_eq!(arch.name().parse::<Arch>().unwrap(), arch);
        }
        let err = "arm64".parse::<Arch>().unwrap_err().to_string();
        assert!(err.contains("arm64") && err.contains("aarch64"), "{err}");
    }
}
