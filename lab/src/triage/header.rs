//! Report headlines: the one console line with which the kernel opens each kind of report.
//!
//! Every pattern is anchored at the start of the (prefix-stripped) line and built from the printk
//! format in the 7.3 source named next to it, so that a normal boot log never matches.
//! `testdata/formats.tsv` lists every such format (and older kernels' forms, and lines that must not
//! match) with what `classify` must make of it; `tests/formats.rs` checks each row, and the
//! end-to-end suite proves the 7.3 rows verbatim in the stock tree.

use std::sync::LazyLock;

use regex::{Captures, Regex, RegexSet};

use crate::vocab::Kind;

/// What a headline does to the report it arrives in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Role {
    Opens,
    /// "cut here": a WARN/BUG/UBSAN report whose real headline follows within a few lines.
    CutHere,
    /// A die() banner: the tail of the BUG/KASAN/fault report it follows, a report of its own otherwise.
    Die,
    /// powerpc NMI-IPI dump of a CPU that another CPU's watchdog found stuck: part of that report.
    StuckCpuDump,
    /// `kind` is the report this panic concludes (`Kind::Panic` when the reason does not say).
    Panic,
    /// A workload's own check failed: a report of one line, printed by user space between the
    /// kernel's lines, which neither opens nor ends any of the kernel's reports.
    Violation,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Header {
    pub kind: Kind,
    pub role: Role,
    /// The CPU that printed the headline, when the headline says.
    pub cpu: Option<u32>,
    /// Hard lockups: the CPU whose stack tells the story (the reporter, or the one it found stuck).
    pub stuck_cpu: Option<u32>,
    /// A function the headline itself names (`@ %pS`, `in %pS`, `at %pS`), offsets removed.
    pub frame: Option<String>,
    /// Title material: bug message, panic reason, lockdep headline, or the comm of a stuck task.
    pub subject: String,
}

/// Prefixes that `pr_fmt` puts in front of watchdog, RCU and x86 trap headlines (older kernels: "NMI
/// watchdog: "; arch/x86/kernel/traps.c: KBUILD_MODNAME).
const SUBSYSTEM_PREFIX: &str = r"^(?:(?:NMI )?watchdog: |rcu: |traps: )?";

/// Named groups: `cpu`, `stuck`, `frame` (a `%pS`), `subject`. Earlier rows win over later ones.
const HEADLINES: &[(Kind, Role, &str)] = &[
    // kernel/watchdog.c: "CPU%u: Watchdog detected hard LOCKUP on cpu %u\n"
    (Kind::HardLockup, Role::Opens, r"CPU(?P<cpu>\d+): Watchdog detected hard LOCKUP on cpu (?P<stuck>\d+)"),
    // before 6.x: "Watchdog detected hard LOCKUP on cpu %d", printed by the stuck CPU itself.
    (Kind::HardLockup, Role::Opens, r"Watchdog detected hard LOCKUP on cpu (?P<cpu>\d+)"),
    // arch/powerpc/kernel/watchdog.c: "CPU %d self-detected hard LOCKUP @ %pS\n"
    (Kind::HardLockup, Role::Opens, r"CPU (?P<cpu>\d+) self-detected hard LOCKUP @ (?P<frame>\S+)"),
    // arch/powerpc/kernel/watchdog.c: "CPU %d detected hard LOCKUP on other CPUs %*pbl\n"
    (Kind::HardLockup, Role::Opens, r"CPU (?P<cpu>\d+) detected hard LOCKUP on other CPUs (?P<stuck>\d+)"),
    // arch/powerpc/kernel/watchdog.c: "CPU %d Hard LOCKUP\n"
    (Kind::HardLockup, Role::StuckCpuDump, r"CPU (?P<cpu>\d+) Hard LOCKUP\s*$"),
    // kernel/watchdog.c: "BUG: soft lockup - CPU#%d stuck for %us! [%s:%d]\n"
    (Kind::SoftLockup, Role::Opens, r"BUG: soft lockup - CPU#(?P<cpu>\d+) stuck for \d+s! \[(?P<subject>.*):\d+\]"),
    // kernel/rcu/tree_stall.h: "INFO: %s detected stalls on CPUs/tasks:\n", "INFO: %s self-detected stall
    // on CPU\n", "INFO: %s detected stall, but suppressed full report due to a stuck CSD-lock.\n";
    // kernel/rcu/tree_exp.h: "INFO: %s detected expedited stalls on CPUs/tasks: {", "INFO: %s detected
    // expedited stalls, but suppressed ..."; kernel/rcu/tasks.h: "INFO: rcu_tasks detected stalls on tasks:\n"
    (
        Kind::RcuStall,
        Role::Opens,
        r"INFO: \S+ (?:self-detected stall on CPU|detected (?:expedited )?stalls?(?: on |, but ))",
    ),
    // kernel/hung_task.c: "INFO: task %s:%d blocked%s for more than %ld seconds.\n" (%s: "" or " in I/O wait")
    (Kind::HungTask, Role::Opens, r"INFO: task (?P<subject>.+):\d+ blocked(?: in I/O wait)? for more than \d+ seconds"),
    // The same line when the task's name (`comm`, any bytes a task set) holds a newline: the line
    // ends inside the name, before any ':'.
    (Kind::HungTask, Role::Opens, r"INFO: task (?P<subject>[^:]*)$"),
    // kernel/workqueue.c: "BUG: workqueue lockup - pool" + pool info + " stuck for %us!\n"
    (Kind::WorkqueueLockup, Role::Opens, r"BUG: workqueue lockup - pool"),
    // mm/kasan/report.c: "BUG: KASAN: %s in %pS\n", "BUG: KASAN: invalid-access\n"
    (Kind::Kasan, Role::Opens, r"BUG: (?P<subject>KASAN: [\w-]+)(?: in (?P<frame>\S+))?"),
    // mm/kfence/report.c: "BUG: KFENCE: out-of-bounds %s in %pS\n\n" and friends; kernel/kcsan/report.c:
    // "BUG: KCSAN: %s in %pS\n", "BUG: KCSAN: %s in %ps / %ps\n"; mm/kmsan/report.c: "BUG: KMSAN: %s in
    // %pSb\n". The bug type belongs to the message, though it follows a colon.
    (Kind::Bug, Role::Opens, r"(?P<subject>BUG: K(?:FENCE|CSAN|MSAN): .+?) in (?P<frame>\S+)"),
    // kernel/locking/lockdep.c: pr_warn("WARNING: <headline>\n"), "[ BUG: Invalid wait context ]",
    // "INFO: trying to register non-static key.\n"
    (
        Kind::Lockdep,
        Role::Opens,
        r"(?:WARNING: (?:\S+/\d+ )?|\[ (?:BUG|INFO|WARNING): |INFO: )(?P<subject>possible circular locking dependency detected|\S+-safe -> \S+-unsafe lock order detected|possible recursive locking detected|chain_key collision|inconsistent lock state|possible irq lock inversion dependency detected|Nested lock was not taken|bad unlock balance detected|bad contention detected|held lock freed|still has locks held|lock held when returning to user space|suspicious RCU usage|Invalid wait context|trying to register non-static key)",
    ),
    // mm/kmemleak.c print_unreferenced: "unreferenced object 0x%08lx (size %zu):", one block per
    // object a scan found (with "kmemleak: " when printed to the console), under a "BUG: memory leak"
    // line when a harness (syzkaller) announces it.
    (Kind::Kmemleak, Role::Opens, r"(?:kmemleak: )?unreferenced object 0x[0-9a-f]+ \(size \d+\):"),
    (Kind::Kmemleak, Role::Opens, r"BUG: memory leak\s*$"),
    // lib/bug.c: "kernel BUG at %s:%u!\n", "kernel BUG at %pB [verbose debug info unavailable]\n"
    (Kind::Bug, Role::Opens, r"(?P<subject>kernel BUG) at "),
    // Everything else that says "BUG: <message>": the message ends where addresses, names and
    // counts begin, so that the same bug gets the same title every time.
    (Kind::Bug, Role::Opens, r"(?P<subject>BUG: .+?)(?:: |, | at | for | in | on CPU| \[| \(|!|\s*$)"),
    // kernel/panic.c __warn: "WARNING: %s:%d at %pS, CPU#%d: %s/%d\n", "WARNING: at %pS, CPU#%d: %s/%d\n"
    (Kind::Warning, Role::Opens, r"WARNING: (?:\S+:\d+ )?at (?P<frame>[^\s,]+),? CPU#(?P<cpu>\d+)"),
    // 3.10 to 6.x: "WARNING: CPU: %d PID: %d at %s:%d %pS\n" and "... at %pS\n" (3.x: "%pS()");
    // 2.6: "WARNING: at %s:%d %pS()\n". The file and line come before the function; without "CPU:",
    // they are what tells the headline from user space's "WARNING: at least ...".
    (Kind::Warning, Role::Opens, r"WARNING: (?:CPU: (?P<cpu>\d+) PID: \d+ at (?:\S+:\d+ )?|at \S+:\d+ )(?P<frame>\S+)"),
    // include/asm-generic/bug.h CUT_HERE: "------------[ cut here ]------------\n"
    (Kind::Warning, Role::CutHere, r"-+\[ cut here \]-+\s*$"),
    // lib/ubsan.c: "UBSAN: %s in %s:%d:%d\n"; arch/x86/kernel/traps.c (CONFIG_UBSAN_TRAP): "%s at %pS\n"
    // with the reason from lib/ubsan.c report_ubsan_failure ("UBSAN: array index out of bounds").
    (Kind::Other, Role::Opens, r"(?P<subject>UBSAN: .+?) (?:in \S+:\d+|at (?P<frame>\S+))"),
    // arch/arm64/mm/fault.c die_kernel_fault: "Unable to handle kernel %s at virtual address %016lx\n",
    // the opening of an arm64 oops whose die() banner follows.
    (Kind::Oops, Role::Opens, r"Unable to handle kernel .+ at virtual address "),
    // arch/arm/mm/fault.c do_DataAbort/do_PrefetchAbort: "Unhandled fault: %s (0x%03x) at 0x%08lx\n",
    // then die() unless user space faulted.
    (Kind::Oops, Role::Opens, r"Unhandled (?:prefetch abort|fault): .+ at 0x[0-9a-f]+"),
    // net/core/dev.c netdev_wait_allrefs_any: "unregister_netdevice: waiting for %s to become free. Usage
    // count = %d\n", every 10 s while a device's references never drop.
    (Kind::Other, Role::Opens, r"(?P<subject>unregister_netdevice: waiting for) \S+ to become free"),
    // arch/x86/kernel/traps.c exc_double_fault: "PANIC: double fault, error_code: 0x%lx\n", then die().
    (Kind::Oops, Role::Opens, r"PANIC: double fault, "),
    // x86 __die_header "Oops: %s: %04lx [#%d]...", powerpc die "Oops: %s, sig: %ld [#%d]\n" (e.g. "Oops:
    // Kernel access of bad area"), arm64 __die "Internal error: %s: %016lx [#%d] " (str "Oops", "Oops -
    // BUG", a UBSAN reason, a fault name; 5.x: "%x"); x86 up to 6.x: "%s: %04lx [#%d]..." without
    // "Oops: " ("general protection fault, ...: 0000 [#1]", "invalid opcode: 0000 [#1]").
    (
        Kind::Oops,
        Role::Die,
        r"(?:Oops(?: - [\w ]+)?: |Internal error: .*: [0-9a-f]+ \[#\d+\]|[\w ,/-]+: [0-9a-f]{4} \[#\d+\])",
    ),
    // kernel/panic.c: "Kernel panic - not syncing: %s\n"
    (Kind::Panic, Role::Panic, r"Kernel panic - not syncing: (?P<subject>.*)"),
    // Not the kernel's: a workload's check, "NAME: VIOLATION check=<check> key=value..."
    // (images/workloads/README.md, the workload contract). The subject is the check's name.
    (Kind::RseqViolation, Role::Violation, r"[\w.-]+: VIOLATION check=(?P<subject>[\w.-]+)(?:\s|$)"),
];

/// Panic reasons that conclude a report of a more specific kind (prefixes of the `panic()` strings).
const PANIC_REASONS: &[(&str, Kind)] = &[
    ("Hard LOCKUP", Kind::HardLockup), // kernel/watchdog.c, arch/powerpc/kernel/watchdog.c
    ("Watchdog detected hard LOCKUP", Kind::HardLockup), // before 6.x
    ("softlockup: hung tasks", Kind::SoftLockup), // kernel/watchdog.c
    ("hung_task: blocked tasks", Kind::HungTask), // kernel/hung_task.c
    ("RCU Stall", Kind::RcuStall),     // kernel/rcu/tree_stall.h
    ("workqueue: ", Kind::WorkqueueLockup), // kernel/workqueue.c panic_on_wq_watchdog
    ("kasan.fault=panic", Kind::Kasan), // mm/kasan/report.c
    ("KASAN: panic_on_warn set", Kind::Kasan), // kernel/panic.c check_panic_on_warn
    ("kernel: panic_on_warn set", Kind::Warning), // kernel/panic.c check_panic_on_warn from __warn
];

struct Patterns {
    any: RegexSet,
    each: Vec<Regex>,
}

static PATTERNS: LazyLock<Patterns> = LazyLock::new(|| {
    let sources: Vec<String> = HEADLINES.iter().map(|(_, _, pattern)| format!("{SUBSYSTEM_PREFIX}{pattern}")).collect();
    Patterns {
        any: RegexSet::new(&sources).expect("headline patterns are valid"),
        each: sources.iter().map(|source| Regex::new(source).expect("headline patterns are valid")).collect(),
    }
});

/// The report headline on this prefix-stripped line, if it is one.
pub(super) fn classify(text: &str) -> Option<Header> {
    let patterns = &*PATTERNS;
    let row = patterns.any.matches(text).into_iter().next()?;
    let (kind, role, _) = HEADLINES[row];
    let captures = patterns.each[row].captures(text)?;
    Some(build(kind, role, &captures))
}

fn build(kind: Kind, role: Role, captures: &Captures<'_>) -> Header {
    let number = |name: &str| captures.name(name).and_then(|m| m.as_str().parse::<u32>().ok());
    let subject = captures.name("subject").map_or("", |m| m.as_str().trim()).to_owned();
    let cpu = number("cpu");
    let kind = if role == Role::Panic { panic_kind(&subject) } else { kind };
    Header {
        kind,
        role,
        cpu,
        stuck_cpu: if kind == Kind::HardLockup { number("stuck").or(cpu) } else { None },
        frame: captures.name("frame").and_then(|m| super::stack::symbol_name(m.as_str())).map(str::to_owned),
        subject,
    }
}

/// A headline as the tests write it: "kind role cpu=.. stuck=.. frame=.. | subject", or "-" for none.
#[cfg(test)]
pub(super) fn describe(header: Option<Header>) -> String {
    let Some(header) = header else {
        return "-".to_owned();
    };
    let number = |n: Option<u32>| n.map_or("-".to_owned(), |n| n.to_string());
    format!(
        "{} {:?} cpu={} stuck={} frame={} | {}",
        header.kind,
        header.role,
        number(header.cpu),
        number(header.stuck_cpu),
        header.frame.as_deref().unwrap_or("-"),
        header.subject
    )
}

fn panic_kind(reason: &str) -> Kind {
    PANIC_REASONS.iter().find(|(prefix, _)| reason.starts_with(prefix)).map_or(Kind::Panic, |&(_, kind)| kind)
}

#[cfg(test)]
mod tests {
    use super::{classify, describe};
    use crate::triage::starts_report;
    use crate::vocab::Kind;

    /// `expect`: `describe` of the line's headline.
    fn check(line: &str, expect: &str) {
        assert_eq!(describe(classify(line)), expect, "line {line:?}");
        assert_eq!(starts_report(line), expect != "-", "starts_report({line:?})");
    }

    #[test]
    fn hard_lockups() {
        check("watchdog: CPU2: Watchdog detected hard LOCKUP on cpu 3", "hard-lockup Opens cpu=2 stuck=3 frame=- | ");
        check("NMI watchdog: Watchdog detected hard LOCKUP on cpu 1", "hard-lockup Opens cpu=1 stuck=1 frame=- | ");
        check(
            "watchdog: CPU 23 self-detected hard LOCKUP @ mm_get_cid+0xe8/0x188",
            "hard-lockup Opens cpu=23 stuck=23 frame=mm_get_cid | ",
        );
        check(
            "watchdog: CPU 11 detected hard LOCKUP on other CPUs 23-24,30",
            "hard-lockup Opens cpu=11 stuck=23 frame=- | ",
        );
        check("watchdog: CPU 23 Hard LOCKUP", "hard-lockup StuckCpuDump cpu=23 stuck=23 frame=- | ");
        check("Kernel panic - not syncing: Hard LOCKUP", "hard-lockup Panic cpu=- stuck=- frame=- | Hard LOCKUP");
    }

    #[test]
    fn other_headlines() {
        check(
            "watchdog: BUG: soft lockup - CPU#3 stuck for 26s! [kworker/3:1:123]",
            "soft-lockup Opens cpu=3 stuck=- frame=- | kworker/3:1",
        );
        check("rcu: INFO: rcu_preempt detected stalls on CPUs/tasks:", "rcu-stall Opens cpu=- stuck=- frame=- | ");
        check("rcu: INFO: rcu_sched self-detected stall on CPU", "rcu-stall Opens cpu=- stuck=- frame=- | ");
        check(
            "rcu: INFO: rcu_preempt detected expedited stalls on CPUs/tasks: { 3-.... } 21002 jiffies s: 253 root: 0x8/.",
            "rcu-stall Opens cpu=- stuck=- frame=- | ",
        );
        check("INFO: rcu_tasks detected stalls on tasks:", "rcu-stall Opens cpu=- stuck=- frame=- | ");
        check(
            "INFO: task kworker/u8:2:45 blocked for more than 122 seconds.",
            "hung-task Opens cpu=- stuck=- frame=- | kworker/u8:2",
        );
        check(
            "INFO: task sh:1 blocked in I/O wait for more than 30 seconds.",
            "hung-task Opens cpu=- stuck=- frame=- | sh",
        );
        check(
            "BUG: workqueue lockup - pool cpus=1 node=0 flags=0x0 nice=0 stuck for 31s!",
            "workqueue-lockup Opens cpu=- stuck=- frame=- | ",
        );
        check(
            "BUG: KASAN: slab-use-after-free in lkdtm_UAF+0x1c/0x40 [lkdtm]",
            "kasan Opens cpu=- stuck=- frame=lkdtm_UAF | KASAN: slab-use-after-free",
        );
        check("BUG: KASAN: invalid-access", "kasan Opens cpu=- stuck=- frame=- | KASAN: invalid-access");
        check(
            "BUG: KFENCE: use-after-free read in test_uaf+0x10/0x20",
            "bug Opens cpu=- stuck=- frame=test_uaf | BUG: KFENCE: use-after-free read",
        );
        check("kernel BUG at mm/slub.c:123!", "bug Opens cpu=- stuck=- frame=- | kernel BUG");
        check(
            "WARNING: kernel/sched/core.c:1234 at mm_cid_get+0x1c/0x40, CPU#3: bash/123",
            "warning Opens cpu=3 stuck=- frame=mm_cid_get | ",
        );
        check("WARNING: at foo+0x1/0x2, CPU#0: swapper/0/1", "warning Opens cpu=0 stuck=- frame=foo | ");
        check(
            "WARNING: CPU: 1 PID: 42 at foo.isra.0+0x1/0x2 [lkdtm]",
            "warning Opens cpu=1 stuck=- frame=foo.isra.0 | ",
        );
        check(
            "WARNING: CPU: 1 PID: 0 at net/sched/sch_generic.c:525 dev_watchdog+0x21e/0x230",
            "warning Opens cpu=1 stuck=- frame=dev_watchdog | ",
        );
        check(
            "WARNING: at net/ipv4/tcp_input.c:2269 tcp_fastretrans_alert+0x1a1/0xa20()",
            "warning Opens cpu=- stuck=- frame=tcp_fastretrans_alert | ",
        );
        check("------------[ cut here ]------------", "warning CutHere cpu=- stuck=- frame=- | ");
        check(
            "UBSAN: array-index-out-of-bounds in drivers/misc/lkdtm/bugs.c:342:16",
            "other Opens cpu=- stuck=- frame=- | UBSAN: array-index-out-of-bounds",
        );
        check(
            "traps: UBSAN: array index out of bounds at lkdtm_ARRAY_BOUNDS+0x4b/0x90",
            "other Opens cpu=- stuck=- frame=lkdtm_ARRAY_BOUNDS | UBSAN: array index out of bounds",
        );
        check(
            "BUG: KCSAN: data-race in test_kernel_read / test_kernel_write",
            "bug Opens cpu=- stuck=- frame=- | BUG: KCSAN: data-race",
        );
        check(
            "Kernel panic - not syncing: softlockup: hung tasks",
            "soft-lockup Panic cpu=- stuck=- frame=- | softlockup: hung tasks",
        );
        check(
            "Kernel panic - not syncing: hung_task: blocked tasks",
            "hung-task Panic cpu=- stuck=- frame=- | hung_task: blocked tasks",
        );
        check("Kernel panic - not syncing: RCU Stall", "rcu-stall Panic cpu=- stuck=- frame=- | RCU Stall");
        check("Kernel panic - not syncing: Fatal exception", "panic Panic cpu=- stuck=- frame=- | Fatal exception");
        check(
            "Kernel panic - not syncing: VFS: Unable to mount root fs on unknown-block(0,0)",
            "panic Panic cpu=- stuck=- frame=- | VFS: Unable to mount root fs on unknown-block(0,0)",
        );
    }

    /// A workload's check, not the kernel's: the check's name is the subject.
    #[test]
    fn workload_violations() {
        let violation = |check: &str| format!("rseq-violation Violation cpu=- stuck=- frame=- | {check}");
        check(
            "mmcid-churn: VIOLATION check=unique-cid cid=0 thread=3 cpu=3 thread=1 cpu=2 (both running at once)",
            &violation("unique-cid"),
        );
        check(
            "mmcid-affinity: VIOLATION check=cid-range cid=9 possible_cpus=4 thread=2 cpu=1",
            &violation("cid-range"),
        );
        check("my-test: VIOLATION check=no_lost.wakeups", &violation("no_lost.wakeups"));
        check("VIOLATION check=unique-cid cid=0", "-");
        check("mmcid-churn: VIOLATION check= cid=0", "-");
        check("mmcid-churn: VIOLATION found in round 3", "-");
        check("mmcid-churn: rounds=3 violations=2", "-");
    }

    #[test]
    fn bug_messages_lose_their_variable_parts() {
        let subject = |line: &str| classify(line).map(|header| (header.kind, header.subject));
        let bug = |message: &str| Some((Kind::Bug, message.to_owned()));
        assert_eq!(
            subject("BUG: unable to handle page fault for address: ffff888000000000"),
            bug("BUG: unable to handle page fault")
        );
        assert_eq!(
            subject("BUG: kernel NULL pointer dereference, address: 0000000000000000"),
            bug("BUG: kernel NULL pointer dereference")
        );
        assert_eq!(
            subject("BUG: Kernel NULL pointer dereference on read at 0x00000000"),
            bug("BUG: Kernel NULL pointer dereference on read")
        );
        assert_eq!(
            subject("BUG: scheduling while atomic: swapper/0/0/0x00000002"),
            bug("BUG: scheduling while atomic")
        );
        assert_eq!(subject("BUG: spinlock lockup suspected on CPU#0, bash/123"), bug("BUG: spinlock lockup suspected"));
        assert_eq!(
            subject("BUG: sleeping function called from invalid context at kernel/locking/mutex.c:580"),
            bug("BUG: sleeping function called from invalid context")
        );
        assert_eq!(subject("BUG: MAX_LOCKDEP_KEYS too low!"), bug("BUG: MAX_LOCKDEP_KEYS too low"));
        assert_eq!(
            subject("BUG: Unable to handle kernel instruction fetch (NULL pointer?)"),
            bug("BUG: Unable to handle kernel instruction fetch")
        );
        assert_eq!(subject("BUG: Bad page state in process bash  pfn:1234"), bug("BUG: Bad page state"));
    }

    #[test]
    fn lockdep_headlines() {
        let lockdep =
            |line: &str, headline: &str| check(line, &format!("lockdep Opens cpu=- stuck=- frame=- | {headline}"));
        lockdep(
            "WARNING: possible circular locking dependency detected",
            "possible circular locking dependency detected",
        );
        lockdep("WARNING: possible recursive locking detected", "possible recursive locking detected");
        lockdep("WARNING: inconsistent lock state", "inconsistent lock state");
        lockdep(
            "WARNING: HARDIRQ-safe -> HARDIRQ-unsafe lock order detected",
            "HARDIRQ-safe -> HARDIRQ-unsafe lock order detected",
        );
        lockdep("WARNING: bash/123 still has locks held!", "still has locks held");
        lockdep("WARNING: suspicious RCU usage", "suspicious RCU usage");
        lockdep("[ BUG: Invalid wait context ]", "Invalid wait context");
        lockdep("INFO: trying to register non-static key.", "trying to register non-static key");
    }

    #[test]
    fn oopses() {
        let oops = |line: &str| check(line, "oops Die cpu=- stuck=- frame=- | ");
        oops("Oops: general protection fault, probably for non-canonical address 0xdffffc0000000001: 0000 [#1] SMP KASAN NOPTI");
        oops("Oops: Oops: 0002 [#1] PREEMPT SMP NOPTI");
        oops("Oops: invalid opcode: 0000 [#1] SMP NOPTI");
        oops("Oops: Kernel access of bad area, sig: 11 [#1]");
        oops("Oops: Exception in kernel mode, sig: 5 [#1]");
        oops("Internal error: Oops: 0000000096000005 [#1] PREEMPT SMP");
        oops("Internal error: Oops - BUG: 00000000f2000800 [#1] SMP");
        oops("general protection fault: 0000 [#1] SMP");
        oops("invalid opcode: 0000 [#1] PREEMPT SMP NOPTI");
        oops("Internal error: UBSAN: shift out of bounds: 00000000f2005514 [#1]  SMP");
        oops("Internal error: Oops: 96000005 [#1] PREEMPT SMP");
        let fault = |line: &str| check(line, "oops Opens cpu=- stuck=- frame=- | ");
        fault("Unable to handle kernel NULL pointer dereference at virtual address 0000000000000000");
        fault("Unable to handle kernel paging request at virtual address dead000000000108");
        fault("traps: PANIC: double fault, error_code: 0x0");
    }

    /// Boot banners and lines that mention the same words without being reports.
    #[test]
    fn look_alikes_are_not_headlines() {
        for line in [
            "NMI watchdog: Enabled. Permanently consumes one hw-PMU counter.",
            "watchdog: CPU0: Watchdog detected hard LOCKUP on cpu",
            "watchdog: Delayed init of the lockup detector failed: -19",
            "watchdog: Hard watchdog permanently disabled",
            "Kernel command line: console=ttyS0 panic=-1 hung_task_panic=1 softlockup_panic=1 nmi_watchdog=1",
            "rcu: \tRCU CPU stall warnings timeout set to 21 (rcu_cpu_stall_timeout).",
            "rcu: \tRCU lockdep checking is enabled.",
            "\tTasks-RCU CPU stall warnings timeout set to 120000 (rcu_task_stall_timeout).",
            "INFO: task sh:1 is blocked on a mutex likely owned by task x:2.",
            "INFO: Stall ended before state dump start",
            "INFO: lockdep is turned off.",
            "---[ end trace 0000000000000000 ]---",
            "---[ end Kernel panic - not syncing: Hard LOCKUP ]---",
            "Lock dependency validator: Copyright (c) 2006 Red Hat, Inc., Ingo Molnar",
            "LAB-RESULT fail BUG: soft lockup - CPU#1 stuck for 22s! [x:1]",
            "LAB-PROGRESS kernel panic test 3/10",
            "printk: console [ttyS0] enabled",
            "    ACPI BIOS Error (bug): Could not resolve symbol",
            "  with BUG: in the middle",
            "Oopsie: not an oops",
            "WARNING: at least one cpu is offline",
            "traps: sh[1] general protection fault ip:4011d6 sp:7ffd0c0 error:0 in sh[401000+9000]",
            "",
        ] {
            check(line, "-");
        }
    }

    #[test]
    fn starts_report_strips_prefixes() {
        assert!(starts_report("    1.234s| [   12.000000][    C3] watchdog: CPU 3 Hard LOCKUP\r"));
        assert!(starts_report("[   12.000000] Kernel panic - not syncing: Fatal exception"));
        assert!(!starts_report("    1.234s| LAB-READY x86_64 7.3.4"));
    }
}
