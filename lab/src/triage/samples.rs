//! What the host saw of a guest's vCPUs (`host-samples.json`): the input of host diagnosis.
//!
//! The VM stage fills these in (`vm::sample`) and keeps addresses raw; triage owns the shape,
//! since it reads them, also back from the files of earlier runs (`lab triage --system-map`):
//! any change here must keep old files readable.

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct HostSamples {
    /// QEMU's run state when the lab came to sample: `running`, `paused`, `internal-error`, ...
    pub status_before: String,
    /// The VM was paused by someone else (a QMP client, a debugger) and the lab resumed it: a
    /// frozen guest proves nothing about spinning, and its silence was not the kernel's.
    pub resumed: bool,
    /// Host seconds since QEMU started, when sampling began and when it ended.
    pub started_s: f64,
    pub finished_s: f64,
    pub interval_ms: u64,
    pub vcpus: Vec<VcpuSamples>,
    /// How many console lines had arrived when sampling began: later lines are the guest's answer.
    #[serde(default)]
    pub console_line: usize,
    /// Why the host sampled a guest that still talked: the live watch's rounds that saw a vCPU
    /// stuck (`3 rounds 1.0 s apart from 12.3 s`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub alarm: Option<String>,
    /// What asking the guest for its own report did (`NMI injected`, or why not).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub asked: Option<String>,
    /// The guest memory dump kept in the cell, and its size.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub memory_dump: Option<String>,
    /// What went wrong on the way (a stack that could not be read, ...): recorded, not fatal.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub errors: Vec<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct VcpuSamples {
    pub index: u32,
    pub samples: Vec<Sample>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Sample {
    pub pc: u64,
    pub sp: u64,
    /// The link register (arm64 x30, powerpc LR): the caller of a function that has not saved it yet.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lr: Option<u64>,
    /// In the kernel (x86 CPL 0, arm64 EL1, powerpc MSR[PR] clear), not in user space.
    pub kernel: bool,
    pub irqs: Irqs,
    /// The frame chain, innermost first (kernel samples only).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub frames: Vec<Frame>,
}

/// One step of the frame chain: a return address (a number in JSON), or the program counter an
/// interrupt frame saved (`{"interrupted": pc, "link": lr}`): where the code under an interrupt
/// was, and its link register (powerpc), which names its caller before the caller's frame does.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum Frame {
    Return(u64),
    Interrupted {
        interrupted: u64,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        link: Option<u64>,
    },
}

/// Whether the vCPU takes interrupts, as far as the registers can tell.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Irqs {
    On,
    Off,
    /// arm64 with pseudo-NMI masks interrupts in ICC_PMR_EL1 and powerpc masks them in the paca
    /// (MSR[EE] stays set until an interrupt arrives): the registers QEMU shows cannot say "on".
    Unknown,
}
