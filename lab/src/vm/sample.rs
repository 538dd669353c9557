//! Host-side sampling of a guest that stopped talking: every vCPU's registers and kernel stack,
//! read through QMP while the VM is stopped, several times over a few seconds.
//!
//! The VM is stopped for each sample so that the registers are exact (a TCG vCPU only writes its
//! program counter back at block boundaries) and the stack does not move while it is read; it runs
//! between samples, so a vCPU that makes progress shows it. Addresses stay raw here: naming them is
//! triage's job, with the kernel's System.map.

use std::path::Path;
use std::sync::LazyLock;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use regex::Regex;
use serde_json::json;

use super::qmp::{Qmp, Refused};
use crate::arch::Arch;
use crate::triage::{Frame, HostSamples, Irqs, Sample, VcpuSamples};

/// Every kernel stack (task, IRQ, softirq) is THREAD_SIZE-aligned and 16 KiB on the lab's three
/// configurations, so the frames above `sp` end at the next 16 KiB boundary.
const STACK_SIZE: u64 = 16 * 1024;
/// A frame chain longer than this is a loop in corrupted memory, not a stack.
const MAX_FRAMES: usize = 64;
/// The stacks one chain may run through: an NMI's (powerpc's soft-NMI watchdog runs on its own
/// emergency stack), an interrupt's, the task's. A chain that leaves the block it is in for a
/// block not read yet is followed there, so that a sample caught in a handler still shows what
/// the handler interrupted.
const MAX_STACK_BLOCKS: usize = 3;

/// powerpc64 ELFv2 interrupt frames (arch/powerpc/include/asm/ptrace.h): the marker word at
/// `sp + STACK_INT_FRAME_MARKER` (32) says "REGS" (either byte order), and `struct pt_regs`
/// starts at `sp + STACK_INT_FRAME_REGS` (48) with 32 GPRs, then `nip`.
const PPC_REGS_MARKER: [u64; 2] = [0x5245_4753, 0x5347_4552];
const PPC_MARKER_OFFSET: u64 = 32;
const PPC_NIP_OFFSET: u64 = 48 + 32 * 8;
/// `pt_regs.link` (after nip, msr, orig_gpr3 and ctr): the interrupted code's link register, which
/// names its caller while the interrupted function has not saved it (a leaf, or its prologue).
const PPC_LINK_OFFSET: u64 = PPC_NIP_OFFSET + 4 * 8;
/// Where the powerpc64 kernel's linear map (and text) begins.
const PPC_KERNEL_BASE: u64 = 0xc000_0000_0000_0000;

pub struct Sampling {
    pub count: u32,
    pub interval: Duration,
}

/// Samples every vCPU `count` times. `clock` gives host seconds since QEMU started; `scratch` is a
/// directory QEMU can write `memsave` files into.
pub fn sample(
    qmp: &mut Qmp,
    arch: Arch,
    sampling: &Sampling,
    scratch: &Path,
    clock: impl Fn() -> f64,
) -> Result<HostSamples> {
    let mut out = begin(qmp, sampling.interval, &clock)?;
    let mut count = sampling.count;
    match out.status_before.as_str() {
        "running" => {}
        "paused" => {
            qmp.execute("cont", json!({}))?;
            out.resumed = true;
            std::thread::sleep(Duration::from_secs(1));
        }
        // internal-error, guest-panicked, shutdown, ...: QEMU will not run it again; one look at
        // the frozen state is all there is.
        _ => count = 1,
    }
    let stop_for_samples = out.status_before == "running" || out.resumed;
    for round in 0..count {
        let began = Instant::now();
        read_round(qmp, arch, scratch, &mut out, stop_for_samples)?;
        if round + 1 < count {
            std::thread::sleep(sampling.interval.saturating_sub(began.elapsed()));
        }
    }
    out.finished_s = clock();
    Ok(out)
}

/// One sample of every vCPU of a running guest, for the live watch; `None` when QEMU does not
/// run it (paused from outside, stopped by an error): that is for the silence deadline to find,
/// and the live watch must not resume a VM someone else paused. A `stop` from outside that lands
/// while the round has the VM stopped is undone by its `cont`: QEMU does not say who stopped it.
pub fn round(
    qmp: &mut Qmp,
    arch: Arch,
    every: Duration,
    scratch: &Path,
    clock: impl Fn() -> f64,
) -> Result<Option<HostSamples>> {
    let mut out = begin(qmp, every, &clock)?;
    if out.status_before != "running" {
        return Ok(None);
    }
    read_round(qmp, arch, scratch, &mut out, true)?;
    out.finished_s = clock();
    Ok(Some(out))
}

/// The guest's run state and its vCPUs, before the first round.
fn begin(qmp: &mut Qmp, interval: Duration, clock: impl Fn() -> f64) -> Result<HostSamples> {
    let mut out =
        HostSamples { started_s: clock(), interval_ms: interval.as_millis() as u64, ..HostSamples::default() };
    let status = qmp.execute("query-status", json!({}))?;
    out.status_before = status.get("status").and_then(|s| s.as_str()).unwrap_or("unknown").to_string();
    let cpus = qmp.execute("query-cpus-fast", json!({}))?;
    let indices: Vec<u32> =
        cpus.as_array().into_iter().flatten().filter_map(|c| c.get("cpu-index")?.as_u64()).map(|i| i as u32).collect();
    if indices.is_empty() {
        bail!("QMP query-cpus-fast listed no vCPUs: {cpus}");
    }
    out.vcpus = indices.iter().map(|&index| VcpuSamples { index, samples: Vec::new() }).collect();
    Ok(out)
}

/// One sample of every vCPU, the VM stopped while it is read when `stop` (a running guest).
fn read_round(qmp: &mut Qmp, arch: Arch, scratch: &Path, out: &mut HostSamples, stop: bool) -> Result<()> {
    if stop {
        qmp.execute("stop", json!({}))?;
    }
    let read = read_all(qmp, arch, scratch, out);
    if stop {
        qmp.execute("cont", json!({}))?;
    }
    read
}

/// The rounds of the live watch as one set of samples, each vCPU's in order, for the host rule.
pub fn window<'a>(rounds: impl IntoIterator<Item = &'a HostSamples>) -> HostSamples {
    let mut rounds = rounds.into_iter();
    let Some(first) = rounds.next() else { return HostSamples::default() };
    let mut out = first.clone();
    for round in rounds {
        out.finished_s = round.finished_s;
        out.errors.extend(round.errors.iter().cloned());
        for vcpu in &round.vcpus {
            match out.vcpus.iter_mut().find(|v| v.index == vcpu.index) {
                Some(kept) => kept.samples.extend(vcpu.samples.iter().cloned()),
                None => out.vcpus.push(vcpu.clone()),
            }
        }
    }
    out
}

fn read_all(qmp: &mut Qmp, arch: Arch, scratch: &Path, out: &mut HostSamples) -> Result<()> {
    for vcpu in &mut out.vcpus {
        let text = qmp.hmp("info registers", Some(vcpu.index))?;
        let registers = parse_registers(arch, &text)
            .with_context(|| format!("vCPU {}: cannot read the registers QEMU printed", vcpu.index))?;
        let mut sample = Sample {
            pc: registers.pc,
            sp: registers.sp,
            lr: registers.lr,
            kernel: registers.kernel,
            irqs: registers.irqs,
            frames: Vec::new(),
        };
        if registers.kernel {
            let mut stack = Stack::default();
            let mut at = registers.sp;
            loop {
                match read_block(qmp, vcpu.index, at, scratch) {
                    Ok((base, bytes)) => stack.blocks.push((base, bytes)),
                    Err(e) => {
                        out.errors.push(format!("vCPU {}: stack at {at:#x}: {e:#}", vcpu.index));
                        break;
                    }
                }
                let walked = walk(arch, &registers, &stack);
                sample.frames = walked.frames;
                match walked.next_block {
                    Some(next) if stack.blocks.len() < MAX_STACK_BLOCKS => at = next,
                    _ => break,
                }
            }
        }
        vcpu.samples.push(sample);
    }
    Ok(())
}

/// The stack from `sp` to the end of its 16 KiB block, through the vCPU's own address translation:
/// where it starts, and its bytes.
fn read_block(qmp: &mut Qmp, cpu: u32, sp: u64, scratch: &Path) -> Result<(u64, Vec<u8>)> {
    let top = (sp | (STACK_SIZE - 1)).wrapping_add(1);
    let file = scratch.join(format!("stack-{cpu}.bin"));
    qmp.execute("memsave", json!({ "val": sp, "size": top - sp, "filename": file, "cpu-index": cpu }))?;
    let bytes = std::fs::read(&file).with_context(|| format!("cannot read {}", file.display()))?;
    let _ = std::fs::remove_file(&file);
    Ok((sp, bytes))
}

/// Writes the guest's memory as an ELF core (what `crash` reads with the cell's vmlinux) and
/// returns its size. QEMU writes it while the VM is stopped; it takes about as long as the
/// guest's memory takes to copy.
pub fn dump_memory(qmp: &mut Qmp, file: &Path) -> Result<u64> {
    qmp.execute("dump-guest-memory", json!({ "paging": false, "protocol": format!("file:{}", file.display()) }))?;
    Ok(std::fs::metadata(file).with_context(|| format!("QEMU wrote no {}", file.display()))?.len())
}

/// What `HostSamples::asked` says when the guest got its NMI (and the lab then listens).
pub const NMI_INJECTED: &str = "NMI injected";

/// Asks the guest for its own report where the machine has an NMI: x86_64 takes an NMI on every
/// vCPU, pseries a system reset (the kernel prints each CPU's registers and stack). Says what it
/// did, for the record.
pub fn ask_guest(qmp: &mut Qmp, arch: Arch) -> String {
    if arch == Arch::Aarch64 {
        return "no NMI: QEMU's virt machine cannot inject one".to_string();
    }
    match qmp.execute("inject-nmi", json!({})) {
        Ok(_) => NMI_INJECTED.to_string(),
        Err(e) => match e.downcast_ref::<Refused>() {
            Some(refused) => format!("no NMI: {}", refused.desc),
            None => format!("no NMI: {e:#}"),
        },
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Registers {
    pc: u64,
    sp: u64,
    /// The frame pointer (x86 rbp, arm64 x29); powerpc walks its back chain from `sp`.
    fp: u64,
    lr: Option<u64>,
    kernel: bool,
    irqs: Irqs,
}

static REGISTER: LazyLock<Regex> =
    LazyLock::new(|| Regex::new(r"\b([A-Z][A-Z0-9]*)\s*[= ]\s*([0-9a-f]{8,16})\b").expect("register pattern is valid"));

/// Reads the registers out of `info registers` (x86 `RIP=...`, arm64 `PC=...`, powerpc `NIP ...`
/// with the GPRs four to a line).
fn parse_registers(arch: Arch, text: &str) -> Result<Registers> {
    let named: std::collections::HashMap<&str, u64> = REGISTER
        .captures_iter(text)
        .filter_map(|c| Some((c.get(1)?.as_str(), u64::from_str_radix(c.get(2)?.as_str(), 16).ok()?)))
        .collect();
    let get = |name: &str| {
        named
            .get(name)
            .copied()
            .with_context(|| format!("no {name} in: {}", text.lines().take(3).collect::<Vec<_>>().join(" / ")))
    };
    Ok(match arch {
        Arch::X86_64 => {
            let cpl = text.split("CPL=").nth(1).and_then(|s| s.chars().next()).context("no CPL")?;
            Registers {
                pc: get("RIP")?,
                sp: get("RSP")?,
                fp: get("RBP")?,
                lr: None,
                kernel: cpl == '0',
                irqs: if get("RFL")? & 0x200 != 0 { Irqs::On } else { Irqs::Off },
            }
        }
        Arch::Aarch64 => {
            let level = text.split(" EL").nth(1).and_then(|s| s.chars().next()).context("no exception level")?;
            Registers {
                pc: get("PC")?,
                sp: get("SP")?,
                fp: get("X29")?,
                lr: Some(get("X30")?),
                kernel: level != '0',
                irqs: if get("PSTATE")? & 0x80 != 0 { Irqs::Off } else { Irqs::Unknown },
            }
        }
        Arch::Ppc64le => {
            let gpr0 = text.lines().find_map(|l| l.trim_start().strip_prefix("GPR00 ")).context("no GPR00 line")?;
            let r1 = gpr0
                .split_whitespace()
                .nth(1)
                .and_then(|v| u64::from_str_radix(v, 16).ok())
                .context("no r1 on the GPR00 line")?;
            let msr = get("MSR")?;
            Registers {
                pc: get("NIP")?,
                sp: r1,
                fp: r1,
                lr: Some(get("LR")?),
                kernel: msr & 0x4000 == 0,
                irqs: if msr & 0x8000 == 0 { Irqs::Off } else { Irqs::Unknown },
            }
        }
    })
}

/// The parts of kernel stacks read so far: where each starts, and its bytes.
#[derive(Default)]
struct Stack {
    blocks: Vec<(u64, Vec<u8>)>,
}

impl Stack {
    fn word(&self, address: u64) -> Option<u64> {
        self.blocks.iter().find_map(|(base, bytes)| {
            let offset = usize::try_from(address.checked_sub(*base)?).ok()?;
            let bytes = bytes.get(offset..offset.checked_add(8)?)?;
            Some(u64::from_le_bytes(bytes.try_into().ok()?))
        })
    }

    fn has_block_of(&self, address: u64) -> bool {
        self.blocks.iter().any(|(base, _)| block(*base) == block(address))
    }
}

fn block(address: u64) -> u64 {
    address & !(STACK_SIZE - 1)
}

/// Where the kernel's own addresses begin: a frame pointer below it is the end of the chain.
fn kernel_space(arch: Arch) -> u64 {
    match arch {
        Arch::X86_64 => 0xffff_8000_0000_0000,
        Arch::Aarch64 => 0xffff_0000_0000_0000,
        Arch::Ppc64le => PPC_KERNEL_BASE,
    }
}

struct Walk {
    frames: Vec<Frame>,
    /// The chain went on into a kernel stack block that was not read: an address in it.
    next_block: Option<u64>,
}

/// The frame chain as the kernel's own unwinder would walk it, stopping where it stops growing
/// upwards within a stack or leaves the stacks that were read; a step into another stack block
/// (from an interrupt's stack to the interrupted one) is taken once per block.
fn walk(arch: Arch, registers: &Registers, stack: &Stack) -> Walk {
    let mut frames = Vec::new();
    let mut frame = registers.fp;
    let mut visited = vec![block(frame)];
    let unread = |address: u64| (address >= kernel_space(arch) && !stack.has_block_of(address)).then_some(address);
    while frames.len() < MAX_FRAMES {
        // x86_64 and arm64 frame records: [fp] = caller's fp, [fp + 8] = return address.
        // powerpc: [sp] = back chain to the caller's frame, whose LR save slot (+16) holds the
        // return address into the caller; an interrupt frame holds the interrupted pc instead.
        let (next, ret) = match arch {
            Arch::X86_64 | Arch::Aarch64 => match (stack.word(frame), stack.word(frame + 8)) {
                (Some(next), Some(ret)) => (next, ret),
                _ => return Walk { frames, next_block: unread(frame) },
            },
            Arch::Ppc64le => match stack.word(frame) {
                Some(next) => match stack.word(next + 16) {
                    Some(ret) => (next, ret),
                    None => return Walk { frames, next_block: unread(next) },
                },
                None => return Walk { frames, next_block: unread(frame) },
            },
        };
        if ret == 0 && arch != Arch::Ppc64le {
            break;
        }
        // An interrupt from user space (a system call) has nothing to add below it.
        let interrupted = (arch == Arch::Ppc64le
            && stack.word(next + PPC_MARKER_OFFSET).is_some_and(|m| PPC_REGS_MARKER.contains(&m)))
        .then(|| stack.word(next + PPC_NIP_OFFSET))
        .flatten()
        .filter(|&nip| nip >= PPC_KERNEL_BASE);
        if let Some(nip) = interrupted {
            let link = stack.word(next + PPC_LINK_OFFSET).filter(|&lr| lr >= PPC_KERNEL_BASE);
            frames.push(Frame::Interrupted { interrupted: nip, link });
        } else if ret != 0 {
            frames.push(Frame::Return(ret));
        }
        let switched = block(next) != block(frame);
        if next % 8 != 0 || (!switched && next <= frame) || (switched && visited.contains(&block(next))) {
            break;
        }
        visited.push(block(next));
        frame = next;
    }
    Walk { frames, next_block: None }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Real `info registers` dumps and stacks of the no-transit live lock (testdata/host/), captured
    /// with `memsave` from guests stopped by QMP.
    fn capture(arch: &str, cpu: u32) -> (Registers, Stack) {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("src/vm/testdata").join(arch);
        let arch_value: Arch = arch.parse().unwrap();
        let text = std::fs::read_to_string(dir.join(format!("cpu{cpu}.regs"))).unwrap();
        let registers = parse_registers(arch_value, &text).unwrap();
        let bytes = std::fs::read(dir.join(format!("cpu{cpu}.stack"))).unwrap();
        (registers, Stack { blocks: vec![(registers.sp, bytes)] })
    }

    fn render(arch: &str, cpu: u32) -> String {
        let (registers, stack) = capture(arch, cpu);
        let frames = walk(arch.parse().unwrap(), &registers, &stack).frames;
        let frames: Vec<String> = frames.iter().map(show).collect();
        format!(
            "{arch} cpu{cpu}: pc={:x} kernel={} irqs={:?} frames={}",
            registers.pc,
            registers.kernel,
            registers.irqs,
            frames.join(",")
        )
    }

    fn show(frame: &Frame) -> String {
        match frame {
            Frame::Return(ret) => format!("{ret:x}"),
            Frame::Interrupted { interrupted, link: Some(link) } => format!("irq@{interrupted:x}/lr@{link:x}"),
            Frame::Interrupted { interrupted, link: None } => format!("irq@{interrupted:x}"),
        }
    }

    /// The frames were checked against System.map by hand when the captures were added; the
    /// symbolized forms are triage's golden cases (triage/testdata/host/).
    #[test]
    fn walks_real_stacks() {
        let expect: &[&str] = &[
            "x86_64 cpu0: pc=ffffffff8129485b kernel=true irqs=Off frames=ffffffff81294576,ffffffff810627aa,ffffffff81067024,ffffffff8106ce1e,ffffffff8106db14,ffffffff81048b7a,ffffffff8129497b,ffffffff81048cf4,ffffffff81048e67,ffffffff8128d927",
            "x86_64 cpu1: pc=ffffffff810620c0 kernel=true irqs=Off frames=ffffffff8129085c,ffffffff81290963,ffffffff810aaedb,ffffffff810ab3cf,ffffffff810ab483,ffffffff810a861c,ffffffff810a87bf,ffffffff81002f5f,ffffffff8128bf14,ffffffff810000ac",
            "x86_64 cpu2: pc=ffffffff81294871 kernel=true irqs=Off frames=ffffffff81294576,ffffffff810627aa,ffffffff810627bf,ffffffff81062c88,ffffffff81062eee,ffffffff81064431,ffffffff81043560,ffffffff810438a0,ffffffff81043b41,ffffffff81043ca7,ffffffff810034d2,ffffffff8128bf14,ffffffff810000ac",
            "x86_64 cpu3: pc=ffffffff8129485b kernel=true irqs=Off frames=ffffffff81294576,ffffffff810627aa,ffffffff81067024,ffffffff8106ce1e,ffffffff8106db14,ffffffff81048b7a,ffffffff8129497b,ffffffff81048cf4,ffffffff81048e67,ffffffff8128d927",
            "aarch64 cpu0: pc=ffff800080213f74 kernel=true irqs=Off frames=ffff800080214094,ffff8000800573bc,ffff800080057574,ffff8000802141c0,ffff800080300e60,ffff80008030751c",
            "aarch64 cpu1: pc=ffff800080048420 kernel=true irqs=Unknown frames=ffff800080214f8c,ffff800080215180,ffff800080057338,ffff800080057574,ffff80008001b940,ffff80008001dab0",
            "aarch64 cpu2: pc=ffff800080219af8 kernel=true irqs=Unknown frames=ffff800080064fd4,ffff800080219264,ffff800080048d08,ffff80008004d8f8,ffff800080052de8,ffff8000800539dc,ffff80008002ac04,ffff800080010364,ffff800080013bc8,ffff800080013ba0",
            "aarch64 cpu3: pc=ffff800080219a58 kernel=true irqs=Unknown frames=ffff800080064fd4,ffff800080219264,ffff800080048d08,ffff800080048d24,ffff800080049184,ffff8000800493c4,ffff80008004a8bc,ffff800080025418,ffff8000800256e0,ffff8000800258b8,ffff800080025ab4,ffff80008001c5f8,ffff800080211740,ffff8000802129d0,ffff800080011620",
            "ppc64le cpu0: pc=c0000000000192d8 kernel=true irqs=Off frames=c00000000001e32c,c0000000002e2104,c00000000001e6ac,c0000000002e1e44,c0000000000afcc4,c0000000000ecdc8,c0000000000f27f0,c0000000000fb4a4,c00000000010be68,c0000000000fc060,c0000000000fccec,c00000000001971c,irq@c00000000006ce64/lr@c0000000000711f0,c000000000016b38,c0000000002f0bd0,c0000000000bd10c,c0000000000bd2fc,c00000000000fc6c,c000000000400f08,c00000000000e788",
            "ppc64le cpu1: pc=c0000000000498ec kernel=true irqs=Unknown frames=c0000000000ce9f8,c0000000000aacb8,c0000000000ab860,c0000000000ed878,c0000000000ee9e0,c0000000000f1c2c,c0000000000a3450,c00000000000dcd8",
            "ppc64le cpu2: pc=c00000000006ce58 kernel=true irqs=Off frames=c0000000002f6b80,c0000000000ce9f8,c0000000000aacb8,c0000000000ab1c0,c0000000000ab434,c00000000007f174,c00000000007f474,c00000000007f6a0,c00000000001e920,c00000000000ce5c",
            "ppc64le cpu3: pc=c0000000000aa30c kernel=true irqs=Off frames=c0000000002f12b8,c0000000002f1364,c0000000000a8de8,c0000000000a3450,c00000000000dcd8",
        ];
        let got: Vec<String> =
            ["x86_64", "aarch64", "ppc64le"].iter().flat_map(|arch| (0..4).map(move |cpu| render(arch, cpu))).collect();
        assert_eq!(got.join("\n"), expect.join("\n"));
    }

    /// powerpc's soft-NMI handler runs on its own stack: the chain reaches the interrupt frame
    /// there, and its back chain leads into the interrupted task's stack, another block.
    #[test]
    fn follows_a_chain_from_an_interrupts_stack_into_the_interrupted_one() {
        const NMI: u64 = 0xc000_0000_1ff7_8000;
        const TASK: u64 = 0xc000_0000_06a5_8000;
        let mut nmi = vec![0u64; 2048];
        let mut task = vec![0u64; 2048];
        let word = |block: &mut Vec<u64>, base: u64, address: u64, value: u64| {
            block[((address - base) / 8) as usize] = value;
        };
        // The handler's frame at sp, its caller's at +0x100 (whose LR slot says where the
        // handler returns), then the interrupt frame at +0x200, whose back chain is the task's r1.
        let sp = NMI + 0x1a90;
        word(&mut nmi, NMI, sp, sp + 0x100);
        word(&mut nmi, NMI, sp + 0x100 + 16, 0xc000_0000_0004_0b4c);
        word(&mut nmi, NMI, sp + 0x100, sp + 0x200);
        let regs = sp + 0x200;
        word(&mut nmi, NMI, regs, TASK + 0x1cf0);
        word(&mut nmi, NMI, regs + PPC_MARKER_OFFSET, PPC_REGS_MARKER[0]);
        word(&mut nmi, NMI, regs + PPC_NIP_OFFSET, 0xc000_0000_0022_5a2c);
        word(&mut nmi, NMI, regs + PPC_LINK_OFFSET, 0xc000_0000_0022_5b5c);
        // The interrupted function's frame on the task stack, and two callers above it.
        word(&mut task, TASK, TASK + 0x1cf0, TASK + 0x1d80);
        word(&mut task, TASK, TASK + 0x1d80 + 16, 0xc000_0000_0122_33c8);
        word(&mut task, TASK, TASK + 0x1d80, TASK + 0x1e00);
        word(&mut task, TASK, TASK + 0x1e00 + 16, 0xc000_0000_0122_3a4c);
        let bytes = |block: &[u64], from: u64| -> Vec<u8> {
            block[(from / 8) as usize..].iter().flat_map(|w| w.to_le_bytes()).collect()
        };
        let registers = Registers { pc: 0xc000_0000_0003_2100, sp, fp: sp, lr: None, kernel: true, irqs: Irqs::Off };
        let mut stack = Stack { blocks: vec![(sp, bytes(&nmi, sp - NMI))] };
        let first = walk(Arch::Ppc64le, &registers, &stack);
        let shown: Vec<String> = first.frames.iter().map(show).collect();
        assert_eq!(shown, ["c000000000040b4c", "irq@c000000000225a2c/lr@c000000000225b5c"]);
        assert_eq!(first.next_block.map(block), Some(TASK), "the task's stack is the block to read next");
        stack.blocks.push((TASK + 0x1cf0, bytes(&task, 0x1cf0)));
        let whole = walk(Arch::Ppc64le, &registers, &stack);
        let shown: Vec<String> = whole.frames.iter().map(show).collect();
        assert_eq!(
            shown,
            ["c000000000040b4c", "irq@c000000000225a2c/lr@c000000000225b5c", "c0000000012233c8", "c000000001223a4c"]
        );
        assert_eq!(whole.next_block, None, "the chain ends inside what was read");
    }

    #[test]
    fn parses_user_mode_and_interrupt_state() {
        let x86 = "RIP=0000000000401000 RFL=00000246 [---Z-P-] CPL=3 II=0\nRSP=00007ffd00000000 RBP=0000000000000000";
        let r = parse_registers(Arch::X86_64, x86).unwrap();
        assert_eq!((r.kernel, r.irqs), (false, Irqs::On));
        assert!(parse_registers(Arch::X86_64, "garbage").is_err());
    }
}
