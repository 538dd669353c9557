//! Stacks inside a report: frame lines of the three architectures, which CPU each stack belongs to,
//! and which frame is the guilty one.

use std::sync::LazyLock;

use regex::Regex;

use super::culprit::{Rule, NEVER_GUILTY};
use super::{CpuStack, FrameSite};

/// Functions that are never the culprit: they are how the CPU got to the culprit, how it waits for
/// something the culprit holds, or how the kernel reports on it. A trailing `*` matches a prefix.
#[rustfmt::skip]
const PLUMBING: &[&[&str]] = &[
    // Locking primitives: a CPU spinning or sleeping in a lock is the victim; the caller that takes the
    // lock (or the holder, in another report) is where the problem is.
    &[
        "_raw_*", "raw_spin_*", "do_raw_*", "arch_spin_*", "queued_spin_*", "native_queued_spin_*",
        "__pv_queued_spin_*", "pv_queued_spin_*", "queued_read_lock_slowpath", "queued_write_lock_slowpath",
        "try_to_steal_lock", "task_rq_lock", "__task_rq_lock", "_task_rq_lock", "rq_lock*", "double_rq_lock",
        "_double_lock_balance", "double_lock_balance", "mutex_lock*", "__mutex_lock*", "mutex_spin_on_owner",
        "down", "down_*", "__down*", "rwsem_down_*", "rt_mutex*", "__rt_mutex*", "rt_spin_lock*",
        "percpu_down_*", "__percpu_down_*", "percpu_rwsem_wait", "bit_spin_lock", "mutex_remove_waiter",
        "__mutex_remove_waiter", "__mutex_add_waiter",
    ],
    // Lockdep's own bookkeeping sits between every lock call and the lock.
    &[
        "lock_acquire*", "__lock_acquire*", "lock_release", "__lock_release", "lock_acquired", "lock_contended",
        "lockdep_*", "validate_chain", "check_prev_add", "check_prevs_add", "check_noncircular",
        "print_circular_bug*", "check_deadlock", "print_deadlock_bug", "mark_lock*", "print_usage_bug",
        "valid_state", "mark_usage", "check_irq_usage",
    ],
    // Generic library helpers: a CPU interrupted inside a bit search or a copy is running its
    // caller's loop (the live lock in mm_get_cid is often caught in _find_first_zero_bit).
    &[
        "_find_first_bit", "_find_first_zero_bit", "_find_next_bit", "_find_next_zero_bit", "_find_last_bit",
        "find_first_bit", "find_next_bit", "find_first_zero_bit", "find_next_zero_bit",
        "__bitmap_*", "bitmap_*",
    ],
    // Compiler and ABI helpers: powerpc's out-of-line register save and restore, x86's return and
    // indirect-branch thunks. They run on behalf of the function that called them.
    &[
        "_savegpr*", "_restgpr*", "_save32gpr*", "_rest32gpr*", "_savefpr*", "_restfpr*", "_savevr*", "_restvr*",
        "__x86_return_thunk", "__x86_indirect_thunk_*", "__x86_indirect_call_thunk_*",
    ],
    // stop_machine: CPUs spinning in multi_cpu_stop wait for the others to arrive.
    &["stop_machine_yield", "multi_cpu_stop", "cpu_stopper_thread", "stop_machine*", "stop_cpus*", "smpboot_thread_fn"],
    // Busy-wait helpers and hypervisor calls: where a waiting vCPU burns time or yields to the host.
    &[
        "cpu_relax", "__cpu_relax", "delay_tsc", "delay_halt*", "__delay", "__udelay", "__const_udelay",
        "__ndelay", "udelay", "__cmpwait*", "plpar_hcall*", "yield_count_of", "vcpu_is_preempted",
        "__kvm_vcpu_is_preempted", "__raw_callee_save_*", "pv_wait", "pv_kick", "kvm_wait", "kvm_kick_cpu",
        "splpar_spin_yield", "splpar_rw_yield", "__spin_yield", "yield_to_preempted", "yield_to_locked_owner",
        "yield_head_to_locked_owner", "propagate_yield_cpu",
    ],
    // Scheduler entry and blocking waits: a task that sleeps here is waiting for someone else.
    &[
        "__schedule", "schedule*", "__switch_to", "context_switch", "finish_task_switch*", "preempt_schedule*", "io_schedule*", "__cond_resched", "_cond_resched",
        "wait_for_completion*", "__wait_for_common", "wait_for_common*", "do_wait_for_common",
        "__wait_rcu_gp", "synchronize_rcu*", "rcu_gp_fqs_loop", "rcu_gp_kthread",
    ],
    // Idle loop and CPU bring-up: the bottom of every idle or secondary CPU's stack.
    &[
        "do_idle", "cpu_startup_entry", "start_secondary*", "secondary_startup*", "rest_init", "start_kernel",
        "kernel_init", "do_one_initcall", "common_startup_64", "start_here_common", "start_here_multiplatform",
        "start_secondary_prolog", "x86_64_start_*", "__primary_switched", "__primary_switch", "__secondary_switched", "secondary_start_kernel",
        "arch_local_irq_restore",
    ],
    IDLE,
    // Interrupt, NMI and exception entry: they interrupted the culprit, they are not it.
    &[
        "asm_*", "exc_*", "sysvec_*", "__sysvec_*", "common_interrupt", "__common_interrupt", "irq_exit*",
        "__irq_exit_rcu", "irqentry_*", "handle_softirqs", "__do_softirq", "do_softirq*", "handle_irq_event*",
        "handle_edge_irq", "handle_fasteoi_irq", "handle_level_irq", "handle_percpu_devid_irq",
        "generic_handle_*", "__handle_irq_event_percpu", "default_do_nmi", "nmi_handle", "do_nmi",
        "end_repeat_nmi", "repeat_nmi", "handle_bug", "do_error_trap", "do_trap", "die", "__die", "__die_body",
        "die_addr", "oops_end", "page_fault_oops", "kernelmode_fixup_or_oops", "__bad_area_nosemaphore",
        "bad_area_nosemaphore", "do_user_addr_fault", "handle_page_fault", "do_page_fault", "___do_page_fault",
        "bad_page_fault", "__bad_page_fault", "do_mem_abort", "el1_*", "el1h_*", "__el1_*", "call_on_irq_stack",
        "do_interrupt_handler", "handle_irq_desc", "call_on_irq_stack", "el1h_*", "el1_interrupt", "__el1_irq",
        "__el1_pnmi", "gic_handle_irq", "handle_domain_irq", "ipi_handler", "do_handle_IPI",
        "call_el1_break_hook", "brk_handler", "bug_brk_handler", "do_debug_exception", "arm64_notify_die",
        "interrupt_return*", "decrementer_common*", "hardware_interrupt_common*", "soft_nmi_common",
        "system_reset_common", "program_check_common*", "timer_interrupt", "__do_irq", "do_IRQ", "__do_IRQ",
        "soft_nmi_interrupt", "replay_soft_interrupts*", "__replay_soft_interrupts", "program_check_exception",
        "do_program_check", "system_reset_exception", "smp_ipi_demux*", "doorbell_exception",
        "__flush_smp_call_function_queue", "generic_smp_call_function_single_interrupt",
        // 32-bit arm's vectors and fault handlers, and the arm64 fault handlers under do_mem_abort.
        "__irq_svc", "__irq_usr", "__dabt_svc", "__pabt_svc", "__und_svc", "do_DataAbort", "do_PrefetchAbort",
        "__do_kernel_fault", "do_bad_area", "do_translation_fault", "do_sect_fault", "do_tag_check_fault",
        "do_alignment",
    ],
    // Timer ticks and the perf NMI: the interrupts that noticed the lockup.
    &[
        "update_process_times", "tick_*", "hrtimer_*", "__hrtimer_*", "__run_hrtimer", "sched_tick",
        "scheduler_tick", "run_timer_softirq", "__run_timers", "call_timer_fn", "arch_timer_handler_*",
        "perf_event_overflow", "__perf_event_overflow", "perf_event_nmi_handler", "handle_pmi_common",
        "intel_pmu_handle_irq", "x86_pmu_handle_irq", "amd_pmu_handle_irq", "armv8pmu_handle_irq",
        "perf_event_interrupt", "performance_monitor_exception*",
    ],
    // Detectors and reporting machinery: watchdogs, RCU stall checks, printk, dump_stack, panic, WARN,
    // sanitizers. They print the report; the culprit is below them.
    &[
        "watchdog*", "__watchdog*", "wd_*", "softlockup_fn", "check_hung_*", "wq_watchdog_*", "rcu_sched_clock_irq",
        "rcu_pending", "check_cpu_stall", "print_cpu_stall*", "print_other_cpu_stall", "rcu_dump_cpu_stacks",
        "rcu_check_gp_start_stall", "rcu_stall_kick_kthreads", "_printk", "printk*", "vprintk*", "__printk*",
        "dump_stack*", "show_stack*", "show_regs*", "__show_regs*", "show_trace_log_lvl", "sched_show_task",
        "dump_backtrace", "arch_stack_walk", "stack_trace_*", "kunwind_*", "nmi_cpu_backtrace*",
        "nmi_trigger_cpumask_backtrace", "arch_trigger_cpumask_backtrace", "trigger_single_cpu_backtrace",
        "trigger_all_cpu_backtrace", "trigger_allbutcpu_cpu_backtrace", "cpumask_backtrace", "panic",
        "vpanic", "nmi_panic", "__warn", "warn_slowpath*", "__warn_printk", "report_bug*", "__report_bug",
        "check_panic_on_warn", "sys_info", "kasan_*", "__kasan_*", "__asan_*", "__hwasan_*", "check_region*",
        "print_report", "print_address_description*", "kfence_*", "ubsan_*", "__ubsan_*",
        // powerpc's backtrace IPI: the reporting CPU waits here for CPUs that never answer.
        "raise_backtrace_ipi", "smp_send_nmi_ipi", "__smp_send_nmi_ipi", "smp_send_safe_nmi_ipi",
        "soft_nmi_interrupt", "watchdog_timer_interrupt",
    ],
    // Syscall, kernel-thread and workqueue entry: the bottom of a task's stack.
    &[
        "do_syscall_64", "entry_SYSCALL*", "x64_sys_call", "do_int80_syscall_32", "__do_fast_syscall_32",
        "do_fast_syscall_32", "entry_SYSENTER*", "syscall_exit_*", "exit_to_user_mode*", "syscall_trace_enter",
        "invoke_syscall", "do_el0_svc*", "el0t_*", "el0_*", "system_call_exception",
        "system_call_vectored_*", "system_call_common*", "ret_from_fork*", "ret_from_kernel_user_thread",
        "start_kernel_thread", "kthread", "worker_thread", "process_one_work", "process_scheduled_works",
        "ret_fast_syscall", "ret_slow_syscall", "vector_swi", "ret_to_user*",
    ],
];

/// Where an idle CPU waits for work: a vCPU the host finds in one of these is not spinning.
#[rustfmt::skip]
const IDLE: &[&str] = &[
    "default_idle*", "arch_cpu_idle*", "cpuidle_*", "acpi_idle*", "poll_idle", "cpu_idle_poll",
    "native_safe_halt", "pv_native_safe_halt", "power7_idle*", "power9_idle*", "pseries_lpar_idle",
    "cpu_do_idle", "cede_processor", "dedicated_cede_loop", "shared_cede_loop",
];

/// Spinning lock waits: a CPU stopped in one of these is a victim of whoever holds the lock.
const SPIN_WAITS: &[&str] = &[
    "queued_spin_lock_slowpath",
    "native_queued_spin_lock_slowpath",
    "__pv_queued_spin_lock_slowpath",
    "pv_queued_spin_lock_slowpath",
    "do_raw_spin_lock",
    "arch_spin_lock",
    "queued_read_lock_slowpath",
    "queued_write_lock_slowpath",
    "__cmpwait*",
];

/// How far below the interrupted instruction a lock wait may sit (hypervisor yields and busy-wait
/// helpers come above it on powerpc and arm64).
const SPIN_WAIT_DEPTH: usize = 4;

/// Lines a dump prints between its announcement and its first frame: powerpc's register dump is
/// the longest, about 20.
const DUMP_HEADER_LINES: usize = 40;

pub(super) fn matches_any(patterns: &[&str], function: &str) -> bool {
    // Compiler clones (.isra.0, .constprop.0, .cold, .part.0) are the same function for this purpose.
    let function = function.split('.').next().unwrap_or(function);
    patterns.iter().any(|pattern| match pattern.strip_suffix('*') {
        Some(prefix) => function.starts_with(prefix),
        None => function == *pattern,
    })
}

pub(super) fn is_plumbing(function: &str) -> bool {
    PLUMBING.iter().chain(NEVER_GUILTY).any(|group| matches_any(group, function))
}

/// `name` of "name+0xoff/0xsize" (what `%pS` prints), if `text` starts with one.
pub(super) fn symbol_name(text: &str) -> Option<&str> {
    let (name, offset) = text.split_once("+0x")?;
    let valid_start = name.starts_with(|c: char| c.is_ascii_alphabetic() || c == '_' || c == '.' || c == '$');
    let valid_name = name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '.' || c == '$');
    (valid_start && valid_name && offset.contains("/0x")).then_some(name)
}

/// The function where lockdep says a lock was taken: its lock lines end in ", at: %pS" (older
/// kernels: ", at: [<%p>] %pS").
pub(super) fn lock_site(text: &str) -> Option<&str> {
    let (_, site) = text.rsplit_once(", at: ")?;
    let site = match site.strip_prefix("[<") {
        Some(address) => address.split_once("] ")?.1,
        None => site,
    };
    symbol_name(site.split_whitespace().next()?)
}

#[derive(Debug, PartialEq, Eq)]
struct Frame {
    function: String,
    /// The unwinder only guessed it (x86 "? ", powerpc "(unreliable)").
    guessed: bool,
    /// A return address at offset 0: the call before it was its function's last instruction (a
    /// noreturn callee such as `panic`), so the printed name is the next function's (arm64 prints
    /// `lkdtm_PANIC`'s call to panic as `lkdtm_PANIC_STOP_IRQOFF+0x0/0x2c`). Only the kernel's
    /// debug info names the caller (`Stacks::name_callers`); until then the name is no evidence.
    past_the_end: bool,
    /// False for the link register (the caller, or the function itself again) and for a function
    /// a headline names: candidates for the culprit, but not links of the printed call chain.
    in_chain: bool,
    /// As printed; None for a function a headline names.
    site: Option<FrameSite>,
}

impl Frame {
    fn reliable(&self) -> bool {
        !self.guessed && !self.past_the_end
    }
}

/// A frame line in any of the forms the three architectures print; the whole line has to be the frame,
/// so that headlines and free text mentioning a symbol are not mistaken for stacks.
static FRAME_LINE: LazyLock<Regex> = LazyLock::new(|| {
    Regex::new(concat!(
        r"^\s*(?:",
        // Registers: x86 "RIP: 0010:%pS", arm64 "pc : %pS"/"lr : %pS", powerpc "NIP [%lx] %pS" and the
        // e-mail form "NIP: %pS".
        // Older kernels: x86 "RIP: 0010:[<%p>]  [<%p>] %pS" and "IP: %pS", arm "PC is at %pS"/"LR is at %pS".
        r"(?P<register>(?:RIP|EIP):\s*(?:[0-9a-f]{4}:)?(?:\[<[0-9a-f]+>\]\s*)*|IP:\s*|(?:pc|lr)\s*:\s*|(?:PC|LR) is at\s+",
        r"|(?:NIP|LR)(?::\s*|\s*\[[0-9a-f]+\]\s*))",
        // Call trace: powerpc "[%lx] [%lx] %pS", old x86/arm "[<%p>] ", x86 "? " for guesses.
        r"|(?:\[<?[0-9a-f]+>?\]\s*)*(?P<guess>\?\s+)?",
        // 32-bit arm "[<%08lx>] (%ps) from [<%08lx>] (%pS)": the callee, then the return address
        // into its caller, which is the frame (the callee was the line before's caller).
        r"|\[<[0-9a-f]+>\]\s*\([\w.$]+\) from \[<[0-9a-f]+>\]\s*(?P<arm>\()",
        r")",
        r"(?P<site>(?P<function>[A-Za-z_.$][\w.$]*)\+0x(?P<offset>[0-9a-f]+)/0x[0-9a-f]+)",
        // Module and build id: " [lkdtm]", " [lkdtm 0123abcd]".
        r"(?:\s+\[[^\]]*\])?",
        // arm64 unwinder source " (P)", powerpc " (unreliable)".
        r"(?:\s+\((?P<note>[A-Za-z]+)\))?",
        // Source location, where the log was symbolized: " net/core/sock.c:1774".
        r"(?:\s+[\w./+-]+:\d+(?::\d+)?)?",
        r"(?P<close>\))?\s*$",
    ))
    .expect("frame pattern is valid")
});

fn parse_frame(text: &str) -> Option<Frame> {
    // Every form has a "%pS" in it; most lines of a report (registers, code, messages) do not, and
    // the substring search is much cheaper than the pattern.
    if !text.contains("+0x") {
        return None;
    }
    let captures = FRAME_LINE.captures(text)?;
    let register = captures.name("register").map(|m| m.as_str());
    let link_register = register.is_some_and(|name| name.starts_with(['l', 'L']));
    let note = captures.name("note").map(|m| m.as_str());
    if captures.name("arm").is_some() != captures.name("close").is_some() {
        return None;
    }
    // Every trace frame is a return address but arm64's "(P)", the interrupted pc from pt_regs.
    let return_address = link_register || (register.is_none() && note != Some("P"));
    Some(Frame {
        function: captures["function"].to_owned(),
        guessed: register.is_none() && (captures.name("guess").is_some() || note == Some("unreliable")),
        // arm64 prints `secondary_start_kernel`'s return into idle as `cpu_die_early+0x0`.
        past_the_end: return_address && &captures["offset"] == "0",
        in_chain: !link_register,
        site: Some(FrameSite::new(captures["site"].to_owned(), return_address)),
    })
}

/// Lines that say whose stack comes next, or that one will not come.
static STACK_OWNER: LazyLock<Regex> = LazyLock::new(|| {
    Regex::new(concat!(
        r"^(?:rcu: )?\s*(?:",
        // lib/nmi_backtrace.c; an idle CPU says so in one line instead of dumping its stack.
        r"NMI backtrace for cpu (?P<nmi>\d+)(?P<skipped> skipped: idling)?",
        r"|CPU: (?P<dump>\d+) (?:UID: \d+ )?PID: ", // lib/dump_stack.c dump_stack_print_info
        r"|(?P<task>task:.* state:)",               // kernel/sched/core.c sched_show_task
        r"|\(detected by (?P<reporter>\d+), ",      // kernel/rcu/tree_stall.h
        r"|Sending NMI from CPU (?P<sender>\d+) to CPUs ", // lib/nmi_backtrace.c
        // arch/powerpc/kernel/stacktrace.c: a CPU deaf to the IPI, shown from its saved r1.
        r"|CPU (?P<paca>\d+) didn't respond to backtrace IPI, inspecting paca",
        // lib/nmi_backtrace.c: the sender stops waiting for CPUs that did not answer.
        r"|(?P<unanswered>After \d+ seconds, these CPUS still haven't responded to the NMI)",
        r")",
    ))
    .expect("stack owner pattern is valid")
});

#[derive(Debug, Default)]
struct Section {
    cpu: Option<u32>,
    frames: Vec<Frame>,
    /// A powerpc CPU that did not answer the backtrace IPI, shown from the stack pointer it last
    /// saved. Its first frame is printed "(unreliable)" because it is an LR save slot, and it is
    /// the best there is: where the deaf CPU was spinning.
    from_paca: bool,
    /// Opened by a line that promises this CPU's or task's frames next (a backtrace header,
    /// dump_stack's banner, sched_show_task's task line, a paca note).
    announced: bool,
}

impl Section {
    /// Reliable frames first: with only the guess unwinder every trace frame is a guess, and then the
    /// guesses are all there is.
    /// An idle CPU's guesses are stray stack slots (powerpc's system-reset dump of an idle CPU
    /// shows the variable `cpu_idle_force_poll+0x0` as "(unreliable)"): it has no culprit. So are
    /// the guesses among a call chain the unwinder walked reliably (a sleeping kthread's), but for a
    /// paca's, whose first frame is where the deaf CPU spun.
    fn culprit(&self, rule: Rule) -> Option<&str> {
        // A CPU spinning for a lock is the victim, whatever the report's kind: the lock's caller is
        // where to look when the holder is not seen (`Stacks::culprit` names it when it is).
        let rule = if self.waits_on_spinlock() { Rule::Spot } else { rule };
        let guesses_count = !self.idles() && (self.from_paca || !self.walked());
        self.first_culprit(rule, true).or_else(|| if guesses_count { self.first_culprit(rule, false) } else { None })
    }

    /// True when the unwinder walked reliably past the interrupted instruction: some reliable frame
    /// is a caller's.
    fn walked(&self) -> bool {
        self.frames.iter().any(|frame| frame.reliable() && frame.site.as_ref().is_some_and(|site| site.return_address))
    }

    fn first_culprit(&self, rule: Rule, reliable_only: bool) -> Option<&str> {
        let functions: Vec<&str> = self
            .frames
            .iter()
            .filter(|frame| frame.reliable() || !reliable_only)
            .map(|frame| frame.function.as_str())
            .collect();
        rule.pick(&functions)
    }

    fn functions(&self) -> Vec<&str> {
        self.frames.iter().map(|frame| frame.function.as_str()).collect()
    }

    fn idles(&self) -> bool {
        is_idle(&self.functions())
    }

    fn waits_on_spinlock(&self) -> bool {
        waits_on_spinlock(&self.functions())
    }

    /// The printed call chain, innermost first, without guesses unless guesses are all there is
    /// (x86's guess unwinder) or the best there is (a paca), and without immediate repeats (arm64
    /// prints the interrupted function as `pc` and again as the trace's first frame).
    fn chain(&self) -> Vec<&Frame> {
        let chained = self.frames.iter().filter(|frame| frame.in_chain);
        let trust_guesses = self.from_paca || !chained.clone().any(Frame::reliable);
        let mut chain: Vec<&Frame> = chained.filter(|frame| frame.reliable() || trust_guesses).collect();
        chain.dedup_by(|frame, previous| frame.function == previous.function);
        chain
    }
}

/// True when a stack, innermost first, spins for a lock someone else holds.
pub(super) fn waits_on_spinlock(functions: &[&str]) -> bool {
    functions.iter().take(SPIN_WAIT_DEPTH).any(|function| matches_any(SPIN_WAITS, function))
}

/// True when a stack, innermost first, is an idle CPU waiting for work.
pub(super) fn is_idle(functions: &[&str]) -> bool {
    functions.iter().take(SPIN_WAIT_DEPTH).any(|function| matches_any(IDLE, function))
}

/// The stacks of one report, split by the CPU or task they belong to.
#[derive(Debug)]
pub(super) struct Stacks {
    sections: Vec<Section>,
    /// The CPU of the first dump_stack/show_regs banner: who printed the report when the headline
    /// does not say.
    pub first_dump_cpu: Option<u32>,
    /// The CPU that found other CPUs stuck and asked them for their stacks.
    pub reporter_cpu: Option<u32>,
    /// A backtrace NMI went out and the sender has not yet given up on the CPUs that did not
    /// answer: until it does (after 10 s), their stacks are still to come.
    pub nmi_pending: bool,
    /// Lines fed since the current section began.
    lines_in_section: usize,
}

impl Stacks {
    pub fn new(cpu: Option<u32>) -> Self {
        Stacks {
            sections: vec![Section { cpu, ..Section::default() }],
            first_dump_cpu: None,
            reporter_cpu: None,
            nmi_pending: false,
            lines_in_section: 0,
        }
    }

    /// A new stack begins unless the current one has no frames yet and does not belong to another CPU.
    pub fn start_section(&mut self, cpu: Option<u32>) {
        self.lines_in_section = 0;
        let current = self.sections.last_mut().expect("there is always a section");
        let other_cpu = cpu.is_some() && current.cpu.is_some() && cpu != current.cpu;
        if current.frames.is_empty() && !other_cpu {
            current.cpu = current.cpu.or(cpu);
        } else {
            self.sections.push(Section { cpu, ..Section::default() });
        }
    }

    /// A function named by the headline itself: as good as a register.
    pub fn push_named_frame(&mut self, function: &str) {
        self.push(Frame {
            function: function.to_owned(),
            guessed: false,
            past_the_end: false,
            in_chain: false,
            site: None,
        });
    }

    pub fn feed(&mut self, text: &str) {
        self.lines_in_section += 1;
        if let Some(frame) = parse_frame(text) {
            self.push(frame);
            return;
        }
        let Some(captures) = STACK_OWNER.captures(text) else {
            return;
        };
        let number = |name: &str| captures.name(name).and_then(|m| m.as_str().parse::<u32>().ok());
        if let Some(cpu) = number("nmi") {
            self.start_announced(Some(cpu), captures.name("skipped").is_none());
        } else if let Some(cpu) = number("paca") {
            self.start_announced(Some(cpu), true);
            self.sections.last_mut().expect("there is always a section").from_paca = true;
        } else if let Some(cpu) = number("dump") {
            self.first_dump_cpu = self.first_dump_cpu.or(Some(cpu));
            self.start_announced(Some(cpu), true);
        } else if captures.name("task").is_some() {
            self.start_announced(None, true);
        } else if let Some(cpu) = number("reporter") {
            self.reporter_cpu = self.reporter_cpu.or(Some(cpu));
        } else if let Some(cpu) = number("sender") {
            self.reporter_cpu = self.reporter_cpu.or(Some(cpu));
            self.nmi_pending = true;
        } else if captures.name("unanswered").is_some() {
            self.nmi_pending = false;
        }
    }

    fn start_announced(&mut self, cpu: Option<u32>, frames_follow: bool) {
        self.start_section(cpu);
        self.sections.last_mut().expect("there is always a section").announced = frames_follow;
    }

    /// Renames each frame printed under the next function's name (`Frame::past_the_end`) after
    /// the function whose call it returns from, where `caller_of` knows it (from the kernel's
    /// debug info), so that the culprit is the same function on every architecture: x86 prints
    /// return addresses one byte back (`%pB`), arm64 and powerpc as they are (`%pS`).
    pub fn name_callers(&mut self, caller_of: &dyn Fn(&FrameSite) -> Option<String>) {
        let frames = self.sections.iter_mut().flat_map(|section| &mut section.frames);
        for frame in frames.filter(|frame| frame.past_the_end) {
            if let Some(caller) = frame.site.as_ref().and_then(caller_of) {
                frame.function = caller;
                frame.past_the_end = false;
            }
        }
    }

    /// True when the last stack was announced a few lines ago and not one of its frames came.
    pub fn awaits_frames(&self) -> bool {
        let last = self.sections.last().expect("there is always a section");
        last.announced && last.frames.is_empty() && self.lines_in_section <= DUMP_HEADER_LINES
    }

    /// Every printed stack, in order, with what it shows: both sides of a live lock, the idle CPUs.
    pub fn cpu_stacks(&self) -> Vec<CpuStack> {
        self.sections
            .iter()
            .map(|section| {
                let chain = section.chain();
                CpuStack {
                    cpu: section.cpu,
                    frames: chain.iter().map(|frame| frame.function.clone()).collect(),
                    // Every chained frame was printed (only headline-named frames lack a site).
                    sites: chain.iter().filter_map(|frame| frame.site.clone()).collect(),
                    waits_on_lock: section.waits_on_spinlock(),
                    idle: section.idles(),
                }
            })
            .filter(|stack| !stack.frames.is_empty())
            .collect()
    }

    /// True when some frame of `cpu`'s stack came.
    pub fn dumped(&self, cpu: u32) -> bool {
        self.preferred(Some(cpu)).any(|section| !section.frames.is_empty())
    }

    fn push(&mut self, frame: Frame) {
        self.sections.last_mut().expect("there is always a section").frames.push(frame);
    }

    /// The first non-plumbing frame of the stack that tells the story: `preferred_cpu`'s when it was
    /// dumped, otherwise the first stack that has a culprit at all. When the preferred CPU only
    /// waits for a spinlock, the story is the other side of a live lock: the lock holder (see
    /// `holder`) when one was dumped.
    pub fn culprit(&self, preferred_cpu: Option<u32>, rule: Rule) -> Option<&str> {
        let holder = match self.waits_for_lock(preferred_cpu) {
            true => self.holder(preferred_cpu),
            false => None,
        };
        let in_order: Box<dyn Iterator<Item = &Section>> = match rule.last_stack_first() {
            true => Box::new(self.sections.iter().rev()),
            false => Box::new(self.sections.iter()),
        };
        holder.or_else(|| self.preferred(preferred_cpu).chain(in_order).find_map(|section| section.culprit(rule)))
    }

    /// Where `function` was printed, `preferred_cpu`'s stack first: the guilty frame's address.
    pub fn site_of(&self, function: &str, preferred_cpu: Option<u32>) -> Option<FrameSite> {
        self.preferred(preferred_cpu)
            .chain(&self.sections)
            .flat_map(|section| &section.frames)
            .filter(|frame| frame.function == function)
            .find_map(|frame| frame.site.clone())
    }

    /// True when `preferred_cpu` only waits for a spinlock and no other CPU's stack shows who holds
    /// it: the title then names the victim, and the report says so rather than pass for the whole story.
    pub fn holder_unseen(&self, preferred_cpu: Option<u32>) -> bool {
        self.waits_for_lock(preferred_cpu) && self.holder(preferred_cpu).is_none()
    }

    fn preferred(&self, preferred_cpu: Option<u32>) -> impl Iterator<Item = &Section> {
        self.sections.iter().filter(move |section| preferred_cpu.is_some() && section.cpu == preferred_cpu)
    }

    fn waits_for_lock(&self, preferred_cpu: Option<u32>) -> bool {
        self.preferred(preferred_cpu).any(Section::waits_on_spinlock)
    }

    /// The first other dumped CPU that neither waits for a lock nor idles (with every CPU's
    /// backtrace, the lock holder). A holder is named from reliable frames only (an idle CPU's stack
    /// holds stray guesses), except a powerpc CPU seen through its paca, where the first frame is
    /// all there is.
    fn holder(&self, preferred_cpu: Option<u32>) -> Option<&str> {
        self.sections
            .iter()
            .filter(|section| {
                section.cpu.is_some()
                    && section.cpu != preferred_cpu
                    && !section.waits_on_spinlock()
                    && !section.idles()
            })
            .find_map(|section| section.first_culprit(Rule::Spot, !section.from_paca))
    }
}

#[cfg(test)]
mod tests {
    use super::{is_plumbing, lock_site, parse_frame, symbol_name, CpuStack, Frame, Rule, Stacks, PLUMBING};

    fn check(line: &str, expect: &str) {
        let render = |frame: Frame| format!("{}{}", if frame.reliable() { "" } else { "? " }, frame.function);
        assert_eq!(parse_frame(line).map_or("-".to_owned(), render), expect, "line {line:?}");
    }

    #[test]
    fn x86_frames() {
        check("RIP: 0010:mm_get_cid+0x1c/0x2a", "mm_get_cid");
        check("RIP: mm_get_cid+0x1c/0x2a", "mm_get_cid");
        check(" mm_get_cid+0x1c/0x2a", "mm_get_cid");
        check(" cpu_die_early+0x0/0x84", "? cpu_die_early");
        check("pc : secondary_entry+0x0/0x4", "secondary_entry");
        check(" ? __schedule+0x3a4/0x9c0", "? __schedule");
        check(" lkdtm_HARDLOCKUP+0x2b/0x30 [lkdtm]", "lkdtm_HARDLOCKUP");
        check(" ? lkdtm_HARDLOCKUP+0x2b/0x30 [lkdtm 4ad7e2c8c3b58e0f]", "? lkdtm_HARDLOCKUP");
        check(" do_one.constprop.0+0x10/0x20", "do_one.constprop.0");
        check(" [<ffffffff81234567>] old_style+0x10/0x20", "old_style");
        check(" <NMI>", "-");
        check("Call Trace:", "-");
        check("RIP: 0033:0x7f1234567890", "-");
        check("RSP: 0018:ffffc90000003e48 EFLAGS: 00000046", "-");
    }

    #[test]
    fn arm64_frames() {
        check("pc : mm_get_cid+0x1c/0x2a", "mm_get_cid");
        check("lr : mm_cid_switch_to+0x40/0x80", "mm_cid_switch_to");
        check(" mm_get_cid+0x1c/0x2a (P)", "mm_get_cid");
        check(" lkdtm_do_action+0x1c/0x38 [lkdtm]", "lkdtm_do_action");
        check("pc : 0000ffff8a1b2c3d", "-");
        check("sp : ffff80008000bd30", "-");
    }

    #[test]
    fn powerpc_frames() {
        check("NIP [c000000000123456] mm_get_cid+0xe8/0x188", "mm_get_cid");
        check("LR [c000000000123400] mm_get_cid+0x108/0x188", "mm_get_cid");
        check("NIP: mm_get_cid+0xe8/0x188", "mm_get_cid");
        check("LR: queued_spin_lock_slowpath+0xd88/0x15d0", "queued_spin_lock_slowpath");
        check("[c00000000a1b3c40] [c000000000123456] mm_get_cid+0xe8/0x188 (unreliable)", "? mm_get_cid");
        check("[c00000000a1b3c40] [c000000000123456] mm_get_cid+0xe8/0x188", "mm_get_cid");
        check("[c00000000a1b3c40] [c008000001230000] lkdtm_x+0x8/0x10 [lkdtm]", "lkdtm_x");
        check("mm_cid_switch_to+0x3c4/0x52c", "mm_cid_switch_to");
        check("NIP:  c000000000123456 LR: c000000000123400 CTR: c0000000001e2c40", "-");
        check("--- interrupt: 900 at mm_get_cid+0xe8/0x188", "-");
    }

    #[test]
    fn arm_frames() {
        check("[<80de0078>] (dump_backtrace) from [<80de0574>] (show_stack+0x28/0x2c)", "show_stack");
        check("[<8163f850>] (vhci_shutdown_connection) from [<8163b930>] (event_handler+0xd0/0x1c0)", "event_handler");
        check(
            "[<817b2604>] (show_stack) from [<817cec84>] (dump_stack_lvl+0x48/0x54 lib/dump_stack.c:106)",
            "dump_stack_lvl",
        );
        check("[<817b2ff4>] (panic) from [<802422ec>] (print_tainted+0x0/0xa0 kernel/panic.c:236)", "? print_tainted");
        check("[<817b2604>] (show_stack) from [<817cec84>] (__dump_stack lib/dump_stack.c:88 [inline])", "-");
        check("PC is at kthread_stop+0x60/0x524", "kthread_stop");
        check(" show_stack+0x28/0x2c)", "-");
        check("[<80de0078>] (dump_backtrace) from [<80de0574>] show_stack+0x28/0x2c", "-");
    }

    #[test]
    fn text_mentioning_a_symbol_is_not_a_frame() {
        check("watchdog: CPU 23 self-detected hard LOCKUP @ mm_get_cid+0xe8/0x188", "-");
        check("BUG: KASAN: slab-use-after-free in foo+0x1/0x2", "-");
        check("Workqueue: events foo_work_fn", "-");
        check("", "-");
    }

    #[test]
    fn lock_sites() {
        let check = |line: &str, expect: &str| assert_eq!(lock_site(line).unwrap_or("-"), expect, "{line:?}");
        check(" #0: 00000000a3b01fa0 (&fi->mutex){+.+.}, at: fuse_lock_inode+0xaf/0xe0", "fuse_lock_inode");
        check(" (kacpid){+.+.+.}, at: [<ffffffff8105bbd0>] flush_workqueue+0x0/0xb0", "flush_workqueue");
        check("ffff88803c86db70 (&sb->s_type->i_lock_key#36){+.+.}-{2:2}, at: evict+0x90/0x334 fs/inode.c:1", "evict");
        check(" (&fi->mutex){+.+.}, at: 0xffffffff8105bbd0", "-");
        check("held by syz-executor0/17896:", "-");
    }

    #[test]
    fn symbol_names() {
        assert_eq!(symbol_name("mm_get_cid+0xe8/0x188"), Some("mm_get_cid"));
        assert_eq!(symbol_name("foo.cold+0x0/0x10,"), Some("foo.cold"));
        assert_eq!(symbol_name("0xffffffff81000000"), None);
        assert_eq!(symbol_name("foo+0x10"), None);
        assert_eq!(symbol_name("+0x1/0x2"), None);
    }

    #[test]
    fn plumbing_patterns_are_names_or_prefixes() {
        for pattern in PLUMBING.iter().flat_map(|group| group.iter()) {
            let name = pattern.strip_suffix('*').unwrap_or(pattern);
            assert!(!name.is_empty() && !name.contains('*'), "{pattern:?}: '*' only at the end");
        }
    }

    #[test]
    fn plumbing() {
        for function in [
            "_raw_spin_lock",
            "_raw_spin_lock_irqsave",
            "queued_spin_lock_slowpath",
            "native_queued_spin_lock_slowpath",
            "do_raw_spin_lock",
            "raw_spin_rq_lock_nested",
            "_task_rq_lock",
            "cpu_relax",
            "plpar_hcall_norets_notrace",
            "yield_count_of",
            "vcpu_is_preempted",
            "asm_sysvec_apic_timer_interrupt",
            "watchdog_timer_fn",
            "_printk",
            "panic",
            "dump_stack_lvl",
            "show_regs",
            "nmi_cpu_backtrace",
            "__schedule",
            "schedule_idle",
            "do_idle",
            "cpu_startup_entry",
            "start_secondary",
            "start_secondary_prolog",
            "__warn",
            "report_bug",
            "do_syscall_64",
            "entry_SYSCALL_64_after_hwframe",
            "system_call_exception",
            "__mutex_lock.constprop.0",
        ] {
            assert!(is_plumbing(function), "{function} is plumbing");
        }
        for function in
            ["mm_get_cid", "mm_cid_fixup_cpus_to_tasks", "lkdtm_HARDLOCKUP", "do_exit", "panic_foo", "dieharder"]
        {
            assert!(!is_plumbing(function), "{function} is not plumbing");
        }
    }

    fn culprit(lines: &[&str], preferred_cpu: Option<u32>) -> Option<String> {
        let mut stacks = Stacks::new(None);
        lines.iter().for_each(|line| stacks.feed(line));
        stacks.culprit(preferred_cpu, Rule::Spot).map(str::to_owned)
    }

    #[test]
    fn guess_unwinder_trusts_the_register() {
        let lines = [
            "RIP: 0010:mm_get_cid+0x1c/0x2a",
            "Call Trace:",
            " <TASK>",
            " ? __schedule+0x3a4/0x9c0",
            " ? mm_cid_switch_to+0x10/0x40",
        ];
        assert_eq!(culprit(&lines, None).as_deref(), Some("mm_get_cid"));
    }

    #[test]
    fn reliable_frames_beat_guesses() {
        let lines = [
            "RIP: 0010:native_queued_spin_lock_slowpath+0x6e/0x2c0",
            " ? stale_guess+0x1/0x2",
            " _raw_spin_lock+0x30/0x40",
            " culprit_fn+0x10/0x20",
        ];
        assert_eq!(culprit(&lines, None).as_deref(), Some("culprit_fn"));
        let only_guesses = [
            "RIP: 0010:native_queued_spin_lock_slowpath+0x6e/0x2c0",
            " ? _raw_spin_lock+0x1/0x2",
            " ? guessed_fn+0x1/0x2",
        ];
        assert_eq!(culprit(&only_guesses, None).as_deref(), Some("guessed_fn"));
        assert_eq!(culprit(&[" ? __schedule+0x1/0x2"], None), None);
        // A chain walked reliably: its guesses are stale slots.
        let walked = [" ? stale_fn+0x1/0x2", " __schedule+0x1/0x2", " schedule+0x1/0x2", " rcu_gp_kthread+0x1/0x2"];
        assert_eq!(culprit(&walked, None), None);
        assert_eq!(
            culprit(
                &[
                    "NIP [c0] arch_cpu_idle+0x48/0x100",
                    "[c1] [c2] cpu_idle_force_poll+0x0/0x4 (unreliable)",
                    "[c3] [c4] do_idle+0x108/0x128"
                ],
                None
            ),
            None
        );
    }

    /// `expect`: "cpu: frames innermost first [lock] [idle]" per stack, joined by "; ".
    fn check_stacks(lines: &[&str], expect: &str) {
        let mut stacks = Stacks::new(None);
        lines.iter().for_each(|line| stacks.feed(line));
        let render = |stack: &CpuStack| {
            let cpu = stack.cpu.map_or("-".to_owned(), |cpu| cpu.to_string());
            let lock = if stack.waits_on_lock { " lock" } else { "" };
            let idle = if stack.idle { " idle" } else { "" };
            format!("{cpu}: {}{lock}{idle}", stack.frames.join(" < "))
        };
        let actual: Vec<String> = stacks.cpu_stacks().iter().map(render).collect();
        assert_eq!(actual.join("; "), expect, "lines {lines:?}");
    }

    #[test]
    fn stacks_of_a_live_lock() {
        check_stacks(&[], "");
        check_stacks(&["NMI backtrace for cpu 1", "CPU: 1 PID: 0 Comm: swapper/1"], "");
        check_stacks(
            &["NMI backtrace for cpu 0", "RIP: 0010:native_queued_spin_lock_slowpath+0x1/0x2", " ? stale+0x1/0x2", " _raw_spin_lock+0x1/0x2", " sched_mm_cid_fork+0x1/0x2",
              "NMI backtrace for cpu 2", "RIP: 0010:mm_get_cid+0x1/0x2", " __schedule+0x1/0x2",
              "NMI backtrace for cpu 3", "RIP: 0010:default_idle+0x1/0x2", " do_idle+0x1/0x2"],
            "0: native_queued_spin_lock_slowpath < _raw_spin_lock < sched_mm_cid_fork lock; 2: mm_get_cid < __schedule; 3: default_idle < do_idle idle",
        );
        check_stacks(&["RIP: 0010:mm_get_cid+0x1/0x2", " ? a+0x1/0x2", " ? b+0x1/0x2"], "-: mm_get_cid");
        check_stacks(&["Call Trace:", " ? a+0x1/0x2", " ? b+0x1/0x2"], "-: a < b");
        check_stacks(
            &[
                "pc : mm_get_cid+0x1/0x2",
                "lr : mm_get_cid+0x3/0x4",
                " mm_get_cid+0x1/0x2 (P)",
                " sched_mm_cid_fork+0x1/0x2",
            ],
            "-: mm_get_cid < sched_mm_cid_fork",
        );
        check_stacks(
            &[
                "CPU 3 didn't respond to backtrace IPI, inspecting paca.",
                "[c0] [c1] mm_get_cid+0x5c/0x60 (unreliable)",
                "[c2] [c3] __schedule+0x1/0x2",
            ],
            "3: mm_get_cid < __schedule",
        );
        check_stacks(
            &["task:rcu_sched state:R stack:0", " __schedule+0x1/0x2", " rcu_gp_kthread+0x1/0x2"],
            "-: __schedule < rcu_gp_kthread",
        );
    }

    #[test]
    fn preferred_cpu_stack_wins() {
        let lines = [
            "CPU: 2 UID: 0 PID: 0 Comm: swapper/2",
            " reporter_fn+0x1/0x2",
            "NMI backtrace for cpu 3",
            "CPU: 3 UID: 0 PID: 77 Comm: spin",
            "RIP: 0010:stuck_fn+0x1/0x2",
        ];
        assert_eq!(culprit(&lines, Some(3)).as_deref(), Some("stuck_fn"));
        assert_eq!(culprit(&lines, Some(2)).as_deref(), Some("reporter_fn"));
        assert_eq!(culprit(&lines, Some(9)).as_deref(), Some("reporter_fn"));
    }
}
