//! Reports from the host's samples of a silent guest: which vCPUs spin in the kernel, where, and
//! on whose behalf, told with the same kinds, titles and guilty frames as the kernel's own reports,
//! so that a live lock seen only from the host reads (and deduplicates) like one the guest printed.

use super::culprit;
use super::samples::{Frame, HostSamples, Irqs, Sample, VcpuSamples};
use super::stack::{self, Stacks};
use super::symbols::Symbols;
use super::{assemble, signature, CpuStack, FrameSite, Report, Source};
use crate::vocab::Kind;

/// A vCPU is stuck when at least this share of its samples is in the kernel, not idle, in the
/// same function near the top of the stack (`common_culprit`). A spinning CPU can be caught in a
/// helper of its loop now and then (`_find_first_zero_bit` under `mm_get_cid`); plumbing frames
/// are skipped before comparing.
const STUCK_SHARE: f64 = 0.75;
/// Frames shown per stack in a summary line.
const SHOWN_FRAMES: usize = 8;

#[derive(Debug, Clone, PartialEq)]
pub struct HostDiagnosis {
    /// One lockup report when some vCPU spins in the kernel; empty otherwise.
    pub reports: Vec<Report>,
    /// One line per vCPU (`vCPU 2: 8 of 8 samples in mm_get_cid+0x1c <- __schedule+0x5b9 <- ...`),
    /// then notes on how the samples were taken.
    pub summary: Vec<String>,
    /// The guilty functions of stuck vCPUs that only wait for a spinlock: a report from the guest
    /// titled after one of them tells the victim's side of what the host's report names.
    pub waiters: Vec<String>,
    /// Every vCPU was mostly outside the kernel image (firmware, the decompressor, real mode):
    /// the guest's kernel never ran there, so nothing about it can be judged.
    pub outside_kernel: bool,
    /// Some stuck vCPU cannot get out by itself: it spins with interrupts off, or waits for a
    /// spinlock. What the live watch acts on while the guest still talks (`stuck_for_good`).
    pub stuck_for_good: bool,
}

impl HostDiagnosis {
    pub fn spinning(&self) -> bool {
        !self.reports.is_empty()
    }
}

enum State {
    /// Most samples at a kernel-mode address `System.map` cannot name; `pc` is the first.
    Outside {
        share: usize,
        pc: u64,
    },
    Stuck {
        culprit: String,
        share: usize,
        stack: Vec<FrameSite>,
        irqs: Irqs,
    },
    Idle {
        function: String,
    },
    User {
        share: usize,
    },
    /// `places`: the guilty-frame candidates of its busy samples (none when they were all in
    /// interrupt or scheduler code); `idle`: how many samples were in the idle loop.
    Running {
        places: Vec<String>,
        idle: usize,
    },
}

struct Vcpu {
    index: u32,
    samples: usize,
    state: State,
}

/// Judges the samples. `line` is the console line reports point at (the host has no line of its own).
pub fn diagnose(samples: &HostSamples, symbols: &Symbols, line: usize) -> HostDiagnosis {
    let frozen = !samples.resumed && samples.status_before != "running";
    let vcpus: Vec<Vcpu> = samples.vcpus.iter().map(|v| classify(v, symbols)).collect();
    let mut summary: Vec<String> = vcpus.iter().map(describe).collect();
    if samples.resumed {
        summary.push("the VM was paused from outside when the lab came to sample; the lab resumed it first".into());
    }
    if let Some(alarm) = &samples.alarm {
        summary.push(format!("sampled while the guest still ran: the live watch saw a vCPU stuck in {alarm}"));
    }
    if frozen {
        summary.push(format!(
            "QEMU had stopped the VM ({}): one look at frozen vCPUs, no evidence of spinning",
            samples.status_before
        ));
    }
    summary.extend(samples.memory_dump.iter().map(|dump| format!("guest memory kept for crash(8): {dump}")));
    summary.extend(samples.errors.iter().cloned());
    let outside_kernel = !vcpus.is_empty() && vcpus.iter().all(|v| matches!(v.state, State::Outside { .. }));
    let stuck: Vec<&Vcpu> = vcpus.iter().filter(|v| matches!(v.state, State::Stuck { .. })).collect();
    if stuck.is_empty() || frozen {
        return HostDiagnosis {
            reports: Vec::new(),
            summary,
            waiters: Vec::new(),
            outside_kernel,
            stuck_for_good: false,
        };
    }
    let stuck_for_good = stuck.iter().any(|v| match &v.state {
        State::Stuck { irqs, stack, .. } => *irqs == Irqs::Off || stack::waits_on_spinlock(&names(stack)),
        _ => false,
    });
    let waiters = stuck
        .iter()
        .filter_map(|v| match &v.state {
            State::Stuck { culprit, stack, .. } if stack::waits_on_spinlock(&names(stack)) => Some(culprit.clone()),
            _ => None,
        })
        .collect();
    let mut stacks = Stacks::new(None);
    for vcpu in &stuck {
        if let State::Stuck { stack, culprit, .. } = &vcpu.state {
            stacks.start_section(Some(vcpu.index));
            // The loop's helpers above the culprit are not the story; lock waits above it are.
            let from = names(stack).iter().position(|f| f == culprit).unwrap_or(0);
            for (at, function) in names(stack).into_iter().enumerate() {
                if at >= from || stack::is_plumbing(function) {
                    stacks.push_named_frame(function);
                }
            }
        }
    }
    let culprit = stacks.culprit(Some(stuck[0].index), culprit::Rule::Spot).map(str::to_string);
    let cpu = stuck
        .iter()
        .find(|v| matches!(&v.state, State::Stuck { culprit: c, .. } if Some(c) == culprit.as_ref()))
        .map(|v| v.index);
    let irqs: Vec<Irqs> =
        stuck.iter().filter_map(|v| if let State::Stuck { irqs, .. } = v.state { Some(irqs) } else { None }).collect();
    // A CPU spinning with interrupts off is what the hard-lockup detector catches; one with
    // interrupts on, the soft-lockup detector. When the registers cannot tell, the kernel's
    // own detector would have fired first on the hard side: a stuck CPU holding a runqueue lock
    // has them off.
    let kind = if irqs.iter().all(|&i| i == Irqs::On) { Kind::SoftLockup } else { Kind::HardLockup };
    let frame_site = stuck.iter().find_map(|vcpu| match &vcpu.state {
        State::Stuck { stack, .. } => stack.iter().find(|f| Some(bare(&f.printed)) == culprit.as_deref()).cloned(),
        _ => None,
    });
    let report = Report {
        kind,
        title: assemble::title(kind, "", culprit.as_deref()),
        signature: signature(kind, culprit.as_deref(), ""),
        frame: culprit,
        frame_site,
        cpu,
        stuck_cpu: cpu,
        line,
        lines: summary.clone(),
        repeated: 0,
        source: Source::Host,
        missing: Vec::new(),
        stacks: stuck
            .iter()
            .filter_map(|vcpu| match &vcpu.state {
                State::Stuck { stack, .. } => Some(CpuStack {
                    cpu: Some(vcpu.index),
                    frames: names(stack).into_iter().map(str::to_owned).collect(),
                    sites: stack.clone(),
                    waits_on_lock: stack::waits_on_spinlock(&names(stack)),
                    idle: false,
                }),
                _ => None,
            })
            .collect(),
    };
    HostDiagnosis { reports: vec![report], summary, waiters, outside_kernel, stuck_for_good }
}

fn classify(vcpu: &VcpuSamples, symbols: &Symbols) -> Vcpu {
    let total = vcpu.samples.len();
    // Privileged code at an address the kernel's symbols do not cover is not the kernel: the
    // firmware, the bzImage decompressor, real mode (a guest that never started under a broken KVM).
    let outside: Vec<u64> =
        vcpu.samples.iter().filter(|s| s.kernel && symbols.locate(s.pc).is_none()).map(|s| s.pc).collect();
    let stacks: Vec<Option<Vec<FrameSite>>> = vcpu
        .samples
        .iter()
        .map(|s| (s.kernel && symbols.locate(s.pc).is_some()).then(|| named_stack(s, symbols)))
        .collect();
    let user = vcpu.samples.iter().filter(|s| !s.kernel).count();
    let idle = stacks.iter().flatten().find(|stack| stack::is_idle(&names(stack)));
    let busy: Vec<(usize, &Vec<FrameSite>)> = stacks
        .iter()
        .enumerate()
        .filter_map(|(i, s)| Some((i, s.as_ref()?)))
        .filter(|(_, s)| !stack::is_idle(&names(s)))
        .collect();
    let needed = (STUCK_SHARE * total as f64).ceil() as usize;
    let state = match common_culprit(&busy, needed) {
        Some((culprit, share, at)) if total > 0 && share >= needed => {
            // The interrupt mask of the samples in the spin, not of one that caught the timer interrupt.
            let in_spin = |s: &[FrameSite]| loop_candidates(s).iter().any(|k| k.function == culprit);
            let irqs = busy
                .iter()
                .filter(|(_, s)| in_spin(s))
                .map(|&(i, _)| vcpu.samples[i].irqs)
                .reduce(|a, b| if a == b { a } else { Irqs::Unknown })
                .unwrap_or(Irqs::Unknown);
            State::Stuck { culprit, share, stack: stacks[at].clone().unwrap_or_default(), irqs }
        }
        _ if outside.len() * 2 > total => State::Outside { share: outside.len(), pc: outside[0] },
        _ if user * 2 > total => State::User { share: user },
        _ if busy.is_empty() && idle.is_some() => State::Idle {
            function: idle.and_then(|s| s.first()).map(|f| bare(&f.printed).to_string()).unwrap_or_default(),
        },
        _ => {
            let mut places: Vec<String> =
                busy.iter().filter_map(|(_, s)| culprit::culprit_of(&names(s)).map(str::to_string)).collect();
            places.sort();
            places.dedup();
            let idle = stacks.iter().flatten().filter(|stack| stack::is_idle(&names(stack))).count();
            State::Running { places, idle }
        }
    };
    Vcpu { index: vcpu.index, samples: total, state }
}

/// How a frame the symbols cannot name is shown.
const UNNAMED: &str = "?";

/// How deep, in guilty-frame candidates (non-plumbing functions), a spinning vCPU's loop may sit:
/// a spin loop calls helpers (`__mm_get_cid` under `mm_get_cid`), and the sample catches either.
const LOOP_DEPTH: usize = 3;

/// The loop the vCPU does not leave: the innermost function that at least `needed` busy samples
/// have among their first `LOOP_DEPTH` candidates (more samples among equals), else the function
/// most samples have (the innermost of equals); with how many have it and the first sample that
/// does (one caught in the loop itself rather than in an interrupt over it, when there is one).
/// Innermost first, because the callers of a spin loop are in every sample that the loop is
/// in and more: a sample caught in an epilogue or a helper can miss the loop's own function
/// (powerpc's out-of-line register restore runs after the frame is gone; x86_64's spinner under
/// `__rcu_read_unlock`'s preemption was caught outside `mm_get_cid` once in eight), so the rule
/// counts rather than requiring all. Deeper common callers do not count: a busy vCPU runs many
/// different things under one syscall.
fn common_culprit(busy: &[(usize, &Vec<FrameSite>)], needed: usize) -> Option<(String, usize, usize)> {
    let candidates: Vec<Vec<Candidate>> = busy.iter().map(|(_, s)| loop_candidates(s)).collect();
    let has = |c: &[Candidate], function: &str| c.iter().any(|k| k.function == function);
    let mut best: Option<(&str, usize, usize)> = None;
    for candidate in candidates.iter().flatten() {
        let (function, depth) = (candidate.function, candidate.depth);
        let count = candidates.iter().filter(|c| has(c, function)).count();
        let better = match best {
            None => true,
            Some((_, n, d)) => match (count >= needed, n >= needed) {
                (true, true) => depth < d || (depth == d && count > n),
                (false, false) => count > n || (count == n && depth < d),
                (qualifies, _) => qualifies,
            },
        };
        if better {
            best = Some((function, count, depth));
        }
    }
    let (mut function, count, _) = best?;
    // `__foo` and its caller `foo` in as many samples: name the bug as the console triage does.
    if let Some(outer) = candidates.iter().flatten().map(|k| k.function).find(|f| culprit::is_inner_half(function, f)) {
        if candidates.iter().filter(|c| has(c, outer)).count() >= count {
            function = outer;
        }
    }
    let in_loop_itself = |c: &Vec<Candidate>| c.iter().any(|k| k.function == function && k.context == 0);
    let first =
        candidates.iter().position(in_loop_itself).or_else(|| candidates.iter().position(|c| has(c, function)))?;
    Some((function.to_string(), count, busy[first].0))
}

/// A function a sample may be looping in: `depth` among the guilty-frame candidates of its
/// `context` (0: the code the sample caught; 1, 2, ...: what each interrupt frame under it
/// interrupted).
struct Candidate<'a> {
    function: &'a str,
    context: usize,
    depth: usize,
}

/// The first `LOOP_DEPTH` guilty-frame candidates of each context of a sample. A sample caught in
/// an interrupt handler counts for the code it interrupted too: on powerpc the watchdog's soft-NMI
/// interrupts a CPU spinning with interrupts off and runs for seconds (it waits for the other
/// CPUs' backtraces), so most samples of a hard-locked CPU can be in the handler, over the loop.
fn loop_candidates(stack: &[FrameSite]) -> Vec<Candidate<'_>> {
    let (mut context, mut depth) = (0, 0);
    let mut candidates = Vec::new();
    for (at, frame) in stack.iter().enumerate() {
        // An interrupted pc starts a context: every other frame after the first is a return address.
        if at > 0 && !frame.return_address {
            (context, depth) = (context + 1, 0);
        }
        // A frame the symbols could not name ("?") is no function: it can never be the culprit.
        let function = bare(&frame.printed);
        if depth < LOOP_DEPTH && function != UNNAMED && !stack::is_plumbing(function) {
            candidates.push(Candidate { function, context, depth });
            depth += 1;
        }
    }
    candidates
}

/// Each context of the sample (the code it caught, then what each interrupt frame under it
/// interrupted): `function+0xoff` for its program counter, its link register when that names a
/// caller the frame chain does not (a function that has not saved it yet), then its return
/// addresses.
fn named_stack(sample: &Sample, symbols: &Symbols) -> Vec<FrameSite> {
    let mut stack = Vec::new();
    push_context(&mut stack, symbols, sample.pc, sample.lr, sample.frames.first());
    for (at, frame) in sample.frames.iter().enumerate() {
        match *frame {
            Frame::Return(address) => stack.push(site(symbols.locate_return(address), address, true)),
            Frame::Interrupted { interrupted, link } => {
                push_context(&mut stack, symbols, interrupted, link, sample.frames.get(at + 1))
            }
        }
    }
    stack
}

fn push_context(stack: &mut Vec<FrameSite>, symbols: &Symbols, pc: u64, lr: Option<u64>, next: Option<&Frame>) {
    let at = symbols.locate(pc);
    let next = next.and_then(|frame| match *frame {
        Frame::Return(ret) => symbols.locate_return(ret),
        Frame::Interrupted { interrupted, .. } => symbols.locate(interrupted),
    });
    stack.push(site(at.clone(), pc, false));
    if let Some((address, lr)) = lr.and_then(|address| Some((address, symbols.locate_return(address)?))) {
        let known = [at.as_ref(), next.as_ref()].into_iter().flatten().any(|l| l.function == lr.function);
        if !known {
            stack.push(site(Some(lr), address, true));
        }
    }
}

fn site(location: Option<super::symbols::Location>, address: u64, return_address: bool) -> FrameSite {
    FrameSite {
        address: Some(address),
        ..FrameSite::new(
            location.map_or_else(|| UNNAMED.to_string(), |l| format!("{}+{:#x}", l.function, l.offset)),
            return_address,
        )
    }
}

fn bare(frame: &str) -> &str {
    frame.split('+').next().unwrap_or(frame)
}

fn names(stack: &[FrameSite]) -> Vec<&str> {
    stack.iter().map(|f| bare(&f.printed)).collect()
}

fn describe(vcpu: &Vcpu) -> String {
    let n = vcpu.samples;
    let what = match &vcpu.state {
        State::Outside { share, pc } => {
            format!("outside the kernel image in {share} of {n} samples (pc {pc:#x}, which System.map cannot name: firmware, the decompressor or real mode)")
        }
        State::Stuck { culprit, share, stack, irqs } => {
            let shown: Vec<&str> = stack.iter().take(SHOWN_FRAMES).map(|f| f.printed.as_str()).collect();
            let irqs = match irqs {
                Irqs::On => "irqs on",
                Irqs::Off => "irqs off",
                Irqs::Unknown => "irq mask not in the registers",
            };
            format!("{share} of {n} samples in {culprit}: {} ({irqs})", shown.join(" <- "))
        }
        State::Idle { function } => format!("idle ({function}) in every kernel sample"),
        State::User { share } => format!("in user space in {share} of {n} samples"),
        State::Running { places, idle } => {
            let places = if places.is_empty() { String::new() } else { format!(": {}", places.join(", ")) };
            let idle = if *idle == 0 { String::new() } else { format!("; idle in {idle}") };
            format!("running, no function common to its {n} samples{places}{idle}")
        }
    };
    format!("vCPU {}: {what}", vcpu.index)
}

#[cfg(test)]
mod tests {
    use super::*;

    const TESTDATA: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/src/triage/testdata/host");

    /// `testdata/host/NAME.json` (a real `host-samples.json`) and `NAME.map` (the lines of the
    /// cell kernel's System.map these samples need) against `NAME.expected`.
    fn check(name: &str) {
        let dir = std::path::Path::new(TESTDATA);
        let samples: HostSamples =
            serde_json::from_str(&std::fs::read_to_string(dir.join(format!("{name}.json"))).unwrap()).unwrap();
        let symbols = Symbols::parse(&std::fs::read_to_string(dir.join(format!("{name}.map"))).unwrap());
        let diagnosis = diagnose(&samples, &symbols, 1);
        let mut actual: String = diagnosis.summary.iter().map(|l| format!("{l}\n")).collect();
        for r in &diagnosis.reports {
            let (cpu, frame, stacks) = (
                r.cpu.map_or("-".into(), |c| c.to_string()),
                r.frame.as_deref().unwrap_or("-"),
                crate::triage::tests::stacks(&r.stacks),
            );
            actual.push_str(&format!("{} cpu={cpu} frame={frame}{stacks} sig={} | {}\n", r.kind, r.signature, r.title));
        }
        actual.push_str(&format!("stuck for good (the live watch's rule): {}\n", diagnosis.stuck_for_good));
        let expected_path = dir.join(format!("{name}.expected"));
        if std::env::var_os("UPDATE_EXPECT").is_some_and(|v| v == "1") {
            std::fs::write(&expected_path, &actual).unwrap();
            return;
        }
        assert_eq!(actual, std::fs::read_to_string(&expected_path).unwrap_or_default(), "{name}");
    }

    #[test]
    fn golden() {
        let mut names: Vec<String> = std::fs::read_dir(TESTDATA)
            .unwrap()
            .filter_map(|e| e.ok()?.path().file_name()?.to_str()?.strip_suffix(".json").map(str::to_string))
            .collect();
        names.sort();
        assert!(!names.is_empty());
        for name in names {
            check(&name);
        }
    }
}
