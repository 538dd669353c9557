//! Which frame of a stack is the guilty one, per kind of report: frames that are never guilty
//! (reporting, checking, instrumentation, generic helpers), the request a stalled CPU was serving,
//! and the function a hung task waits in.
//!
//! The names are the ones syzbot's titles agree on (`lab bench --agreement`), as this project's own
//! rules: a stall is named after the handler of the request that ran too long, a hang after the
//! function that waits rather than the sleeping primitive, anything else after the first frame
//! that is not machinery.

use crate::vocab::Kind;

use super::stack::{is_plumbing, matches_any};

/// Functions that never are the culprit on top of `stack::PLUMBING`: they check, report, count or
/// copy on behalf of their caller, which is where the bug is. A trailing `*` matches a prefix.
#[rustfmt::skip]
pub(super) const NEVER_GUILTY: &[&[&str]] = &[
    // Checkers that found the bug and report it: refcount, list and object debugging, usercopy and
    // fortify checks, preemption and sleep checks, spinlock debugging, the stack protector.
    &[
        "refcount_*", "__refcount_*", "__list_add_valid*", "__list_del_entry_valid*", "list_del_entry_valid*",
        "__list_valid_slowpath", "debug_print_object", "debug_object_*", "__debug_object_*",
        "debug_check_no_obj_freed", "__debug_check_no_obj_freed", "debug_check_no_locks_freed",
        "debug_check_no_locks_held", "check_preemption_disabled", "debug_smp_processor_id",
        "__this_cpu_preempt_check", "fortify_panic", "__fortify_panic", "__fortify_report", "fortify_*",
        "__check_object_size", "check_object_size", "__check_heap_object", "check_heap_object",
        "usercopy_abort", "usercopy_warn", "skb_panic", "skb_over_panic", "skb_under_panic", "spin_dump",
        "spin_bug", "rwlock_bug", "__might_sleep", "___might_sleep", "__might_fault", "might_fault",
        "__might_resched", "__schedule_bug", "schedule_debug", "__stack_chk_fail", "panic_bad_stack",
        "fixup_bug", "do_invalid_op", "invalid_op", "bad_page", "bad_page_fault", "check_new_page*",
        "free_pages_check*", "__dump_page", "dump_page", "ref_tracker_dir_exit", "__seqprop_assert",
        "__phys_addr", "__virt_to_phys", "warn_bogus_irq_restore",
    ],
    // Lockdep's and RCU's checking internals, and the stall detector's printers (older names).
    &[
        "register_lock_class", "hlock_class", "look_up_lock_class", "lock_is_held*", "check_flags",
        "debug_lockdep_rcu_enabled", "lockdep_rcu_suspicious", "rcu_read_lock_held*", "rcu_read_lock_sched_held", "rcu_read_lock_bh_held",
        "rcu_read_lock_any_held", "rcu_lockdep_*",
        "rcu_check_callbacks", "rcu_print_detail_task_stall*", "rcu_print_task_stall*", "print_cpu_stall_info",
        "dump_cpu_task", "rcu_check_gp_kthread_starvation", "rcu_dump_cpu_stacks", "sched_show_task",
        "print_unlock_imbalance_bug", "print_freed_lock_bug", "print_held_locks_bug", "print_lock_nested_lock_not_held",
        "print_irq_inversion_bug", "print_bad_irq_dependency", "print_lock_contention_bug", "check_usage*",
        "check_irq_usage*", "mark_held_locks", "reacquire_held_locks", "lockdep_init_map*",
        // UBSAN's handlers, under the __ubsan_handle_* entry the compiler called.
        "handle_overflow", "handle_null_ptr_deref", "handle_misaligned_access", "handle_object_size_mismatch",
        "ubsan_epilogue", "ubsan_prologue",
    ],
    // Sanitizer and coverage instrumentation: the compiler put these calls into every function.
    &[
        "__sanitizer_cov_*", "__sanitizer_*", "check_memory_region*", "kasan_*", "__kasan_*", "kmsan_*",
        "__msan_*", "msan_*", "kcsan_*", "__kcsan_*", "__tsan_*", "write_comp_data", "__kcov_*", "kcov_*",
        "preempt_count_add", "preempt_count_sub", "trace_hardirqs_*", "lockdep_hardirqs_*",
    ],
    // String, memory and copy helpers: they run their caller's loop on their caller's data.
    &[
        "memcpy*", "__memcpy*", "memset*", "__memset*", "memmove*", "__memmove*", "memcmp", "__memcmp",
        "bcmp", "memchr*", "memscan", "strlen", "strnlen", "strcmp", "strncmp", "strcpy", "strncpy",
        "strscpy*", "strlcpy", "strlcat", "strcat", "strncat", "strstr", "strnstr", "strchr", "strnchr",
        "strrchr", "strsep", "strcasecmp", "strncasecmp", "vsnprintf", "vscnprintf", "snprintf", "scnprintf",
        "sprintf", "vsprintf", "format_decode", "hex_string", "string", "pointer", "number", "widen_string",
        "hex_dump_to_buffer", "print_hex_dump", "_copy_to_user", "_copy_from_user", "__copy_to_user*",
        "__copy_from_user*", "copy_user_*", "raw_copy_*", "_copy_to_iter", "_copy_from_iter*", "copy_to_iter",
        "copy_from_iter*", "copyout", "copyin", "copy_page_to_iter", "copy_page_from_iter", "read_word_at_a_time",
        "__read_once_*", "atomic_*", "atomic64_*", "arch_atomic_*", "crc16", "crc32*", "__crc32*", "crc_t10dif*",
        "aes_encrypt", "aes_decrypt",
        // Buffer helpers: skb_put() and friends BUG when their caller asked for room it did not have.
        "skb_put", "__skb_put", "skb_push", "__skb_push", "skb_pull", "__skb_pull", "skb_put_data", "skb_put_zero",
    ],
    // Allocator and freeing entry points: whoever asked for (or gave back) the memory is the story.
    &[
        "kmalloc*", "__kmalloc*", "kmem_cache_alloc*", "kmem_cache_free*", "kmem_cache_zalloc", "kfree",
        "kfree_sensitive", "kvfree", "kvmalloc*", "__kvmalloc*", "kvzalloc*", "kzalloc*", "kcalloc*",
        "krealloc*", "__krealloc*", "kmemdup*", "kstrdup*", "kstrndup", "vmalloc*", "__vmalloc*", "vzalloc*",
        "vfree", "__vfree", "__alloc_pages*", "alloc_pages*", "__get_free_pages", "get_zeroed_page*",
        "__alloc_frozen_pages*", "folio_alloc*", "kmalloc_slab", "slab_alloc*", "slab_free*", "__slab_free",
        "___slab_alloc", "__slab_alloc*", "____cache_alloc*", "__cache_free", "cache_alloc_*", "post_alloc_hook",
        "prep_new_page", "get_page_from_freelist", "__set_page_owner", "kmemleak_alloc*", "create_object*",
        "__create_object", "sock_kmalloc", "sock_kzalloc", "kasprintf", "kvasprintf*",
        "alloc_inode", "__list_lru_init", "list_lru_init*", "kfree_skb*", "__kfree_skb", "consume_skb", "skb_release_all", "sk_free",
        "___kmalloc*", "__free_pages*", "free_pages*", "__free_pages_ok", "free_unref_page*", "free_unref_folios",
        "alloc_page_interleave", "alloc_pages_mpol*", "alloc_pages_bulk*", "__alloc_pages_bulk*", "page_pool_alloc*",
        "__page_pool_alloc*", "filemap_alloc_folio*", "__filemap_get_folio", "filemap_get_folio*", "pagecache_get_page",
        "__set_page_owner",
    ],
    // Page, inode, dentry and device references and page locks: the last put runs its caller's teardown,
    // and a page unlocked twice was unlocked by its caller.
    &[
        "put_page", "__put_page", "folio_put", "__folio_put", "get_page", "unlock_page", "folio_unlock", "lock_page",
        "iput", "dput", "fast_dput", "put_device", "get_device", "sock_put",
    ],
    // List, tree, bitmap and id helpers: generic data structure code that walks its caller's data.
    &[
        "__list_add", "__list_del", "__list_del_entry", "list_del", "list_del_init", "list_del_rcu",
        "list_del_init_careful", "list_add", "list_add_tail", "list_add_rcu", "list_add_tail_rcu", "list_move",
        "list_move_tail", "list_splice", "list_splice_init", "list_splice_tail", "list_splice_tail_init",
        "hlist_del", "hlist_del_init", "hlist_del_rcu", "hlist_add_head", "hlist_add_head_rcu", "__hlist_del", "rb_erase*", "rb_insert*", "__rb_*", "rb_next", "rb_prev", "rb_first*", "rb_last",
        "rb_replace_node*", "ida_free", "ida_alloc*", "ida_simple_*", "idr_*", "kobject_*", "kobj_*", "sysfs_remove_*",
        "sysfs_create_*", "sysfs_add_*", "proc_register", "kernfs_remove*", "__kernfs_remove", "kernfs_add_one",
        "__kobject_*", "proc_create*", "rhashtable_*", "__rhashtable_*", "rht_*", "rhltable_*",
    ],
    // The driver core and the USB core: they register, bind and remove devices and move URBs for
    // the driver that asked, where the bug is.
    &[
        "device_add", "device_del", "device_register", "device_unregister", "device_create_file",
        "device_remove_file", "device_release_driver*", "bus_remove_device", "bus_probe_device", "bus_add_device",
        "bus_for_each_drv", "__device_attach*", "device_attach", "really_probe", "driver_probe_device",
        "__driver_probe_device", "device_remove", "dpm_sysfs_remove", "dev_printk*", "dev_vprintk_emit", "__dev_printk",
        "_dev_info", "_dev_err", "_dev_warn", "_dev_notice", "va_format*", "__netdev_printk", "netdev_printk",
        "netdev_err", "netdev_warn", "netdev_info", "usb_submit_urb", "usb_kill_urb", "usb_poison_urb", "usb_unlink_urb",
        "usb_kill_anchored_urbs", "usb_poison_anchored_urbs", "usb_unlink_anchored_urbs", "usb_scuttle_anchored_urbs",
    ],
    // Deferred-work, timer and wait-queue APIs: they queue, cancel, arm and wake for their caller.
    &[
        "__queue_work", "queue_work_on", "__queue_delayed_work", "queue_delayed_work_on", "mod_delayed_work_on",
        "drain_workqueue", "destroy_workqueue", "__flush_work", "flush_work", "__flush_workqueue", "flush_workqueue",
        "work_is_static_object", "work_fixup_*", "lock_timer_base", "__try_to_del_timer_sync", "try_to_del_timer_sync",
        "__timer_delete*", "timer_delete*", "del_timer*", "__del_timer*", "mod_timer*", "__mod_timer", "add_timer*",
        "init_timer_key", "__init_timer*", "timer_fixup_*", "sk_stop_timer*", "sk_reset_timer", "__wake_up",
        "__wake_up_common*", "__wake_up_sync*", "__wake_up_locked*", "wake_up_bit", "__wake_up_bit", "wake_up_var",
        "complete", "complete_all", "swake_up_*",
    ],
    // Unwinding and section markers: how a stack was printed, not code that ran.
    &[
        "unwind_next_frame", "unwind_get_return_address", "stack_trace_save*", "save_stack*", "__save_stack_trace",
        "stack_depot_save*", "depot_save_stack", "__sched_text_start", "__irqentry_text_start",
        "__irqentry_text_end", "__softirqentry_text_start", "__softirqentry_text_end",
    ],
    // Old and architecture-specific names of the timer interrupt path that noticed the stall.
    &[
        "smp_apic_timer_interrupt*", "apic_timer_interrupt*", "local_apic_timer_interrupt", "run_local_timers",
        "retint_kernel", "ret_from_intr", "irq_exit", "__irq_exit_rcu", "handle_irq", "do_IRQ",
    ],
];

/// The interrupt that raised a stall or lockup report: what comes after it (outward) is the
/// context the CPU was interrupted in, what comes before it is the detector.
const INTERRUPT_ENTRY: &[&str] = &[
    // Old x86 names, with the labels kernels of the Meltdown era put inside them.
    "apic_timer_interrupt*",
    "smp_apic_timer_interrupt*",
    "asm_sysvec_apic_timer_interrupt",
    "sysvec_apic_timer_interrupt",
    "__sysvec_apic_timer_interrupt",
    "asm_common_interrupt",
    "common_interrupt",
    "ret_from_intr",
    "el1_interrupt",
    "el1h_64_irq*",
    "el1_irq",
    "__el1_irq",
    "decrementer_common*",
    "timer_interrupt",
    "__irq_svc",
    "__irq_usr",
];

/// Where a task preempted on its way back from an interrupt switched away: the frames inside are
/// the scheduler's, and the request the task served goes on past the interrupt's return.
const PREEMPTED_AT_INTERRUPT_RETURN: &[&str] = &["preempt_schedule_irq"];

/// The scheduler's own frames of a switch.
const SWITCH: &[&str] = &["__schedule", "schedule"];

/// Functions that call a handler chosen at run time, through a table or a function pointer: a
/// stalled CPU is serving the request of the handler they called (a syscall, a file's or socket's
/// operation, a netlink message, a network protocol, a work item, a timer). Innermost wins.
#[rustfmt::skip]
const DISPATCHERS: &[&str] = &[
    // Syscall tables, every architecture and era.
    "do_syscall_64", "x64_sys_call", "ia32_sys_call", "do_syscall_32_irqs_on", "do_int80_syscall_32",
    "__do_fast_syscall_32", "do_fast_syscall_32", "entry_SYSCALL_64_fastpath", "entry_SYSCALL_64_after_hwframe",
    "system_call_fastpath", "invoke_syscall", "el0_svc_common*", "system_call_exception", "syscall_exit_to_user_mode",
    // File operations.
    "vfs_ioctl", "do_vfs_ioctl", "vfs_write", "vfs_read", "__vfs_write", "__vfs_read", "new_sync_write", "new_sync_read",
    "do_iter_readv_writev", "do_loop_readv_writev", "do_dentry_open", "__fput", "mmap_region", "__do_fault",
    "full_proxy_*", "compat_SyS_ioctl", "compat_sys_ioctl", "__ia32_compat_sys_ioctl", "__x64_compat_sys_ioctl",
    "__do_compat_sys_ioctl", "__se_compat_sys_ioctl",
    // Sockets and netlink.
    "sock_sendmsg_nosec", "__sock_sendmsg", "sock_recvmsg_nosec", "sock_ioctl", "__sys_setsockopt",
    "__sys_getsockopt", "sock_common_setsockopt", "sock_common_getsockopt", "rtnetlink_rcv_msg", "genl_family_rcv_msg*", "genl_rcv_msg", "netlink_dump",
    "nfnetlink_rcv_msg",
    // Network receive: the protocol handler of a packet.
    "__netif_receive_skb_core", "__netif_receive_skb_one_core", "__netif_receive_skb_list_core",
    "__netif_receive_skb_list_ptype", "ip_protocol_deliver_rcu", "ip6_protocol_deliver_rcu",
    // Deferred work: work items, timers, hrtimers, tasklets, RCU callbacks.
    "process_one_work", "call_timer_fn", "__run_hrtimer", "__hrtimer_run_queues", "tasklet_action_common*",
    "rcu_do_batch",
    // The lab's own test harness: LKDTM's debugfs write runs the crash type it names (through
    // lkdtm_do_action, which x86 often shows only as a guess, being inlined or a tail call).
    "lkdtm_do_action", "direct_entry",
];

/// Where a task stops being in the request it served: it switched away, or a kernel thread began.
/// A dispatcher beyond these served some other, earlier part of the task's life.
const CONTEXT_ENDS: &[&str] = &["__schedule", "schedule", "preempt_schedule*", "kthread", "ret_from_fork*"];

/// Cross-CPU waits: a CPU stalled here waits for other CPUs to run a function, and that wait is
/// the story of the stall whatever request it served.
const CROSS_CPU_WAITS: &[&str] = &["smp_call_function*"];

/// How a hung task sleeps: waits on pages, bits, work, kthreads, tty and USB transfers. The task's
/// culprit is the function that called them.
#[rustfmt::skip]
const SLEEPS: &[&str] = &[
    "wait_on_page_bit*", "__wait_on_page*", "wait_on_page_*", "folio_wait_bit*", "folio_wait_*", "__folio_lock*",
    "__lock_page*", "lock_page*", "bit_wait*", "out_of_line_wait_on_bit*", "__wait_on_bit*", "wait_on_bit*",
    "__wait_on_buffer", "wait_on_buffer", "__flush_work", "flush_work", "__flush_workqueue", "kthread_stop*",
    "ldsem_down_*", "usb_start_wait_urb", "usb_kill_urb", "usb_poison_urb", "console_lock", "synchronize_net",
    "wait_event_*", "__wait_event*", "prepare_to_wait*", "finish_wait", "io_schedule*", "rwsem_*", "__rwsem_*",
    "msleep*", "schedule_hrtimeout*", "do_nanosleep", "hrtimer_nanosleep", "__cancel_work_timer", "__cancel_work*",
    "cancel_work_sync", "cancel_delayed_work_sync", "usb_control_msg", "usb_bulk_msg", "usb_interrupt_msg", "tty_ldisc_lock*", "tty_ldisc_ref_wait",
];

/// Waits for an RCU grace period: every task stuck in one is a victim of whatever stalls RCU, and the
/// wait itself is what a hang of this kind is known by.
const GRACE_PERIOD_WAITS: &[&str] =
    &["synchronize_rcu*", "synchronize_sched*", "__synchronize_srcu", "synchronize_srcu*", "rcu_barrier*"];

/// Functions that only take a lock for their caller: in a lockdep report every stack ends in one,
/// and the caller is the code whose locking order is in question.
#[rustfmt::skip]
const LOCK_WRAPPERS: &[&str] = &[
    "rtnl_lock*", "rtnl_nets_lock", "pipe_lock*", "pipe_double_lock", "__pipe_lock", "lock_sock*", "__lock_sock*",
    "console_lock", "genl_lock", "nl_lock", "inode_lock*", "lock_two_nondirectories", "lock_rename*",
    "flush_workqueue", "__flush_workqueue", "flush_work", "__flush_work", "start_flush_work", "touch_wq_lockdep_map",
    "complete", "__wake_up*", "down_write*", "down_read*", "up_write", "up_read", "up", "mutex_unlock*",
    "release_sock", "_atomic_dec_and_lock*", "atomic_dec_and_lock*", "refcount_dec_and_lock*",
];

/// Lockdep's own frames: a report raised inside them is about the lock being taken or released,
/// so the code that takes the lock is named as in a lockdep report.
#[rustfmt::skip]
const LOCKDEP: &[&str] = &[
    "lock_acquire*", "__lock_acquire*", "lock_release", "__lock_release", "register_lock_class", "hlock_class",
    "mark_lock*", "check_flags", "reacquire_held_locks", "lockdep_*",
];

/// The rule by which a report's stacks name their culprit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Rule {
    /// The first frame that is not machinery.
    Spot,
    /// A stall or soft lockup: the request the interrupted CPU was serving.
    Stall,
    /// A hung task: the function that waits.
    Hang,
    /// A lockdep report: the code that takes the lock, in the stack of the task that tripped the
    /// check, printed last ("stack backtrace:").
    Locking,
    /// An irq-safe lock ordered before an irq-unsafe one: the code that takes the irq-safe lock
    /// in interrupt context, in the first stack printed, which is what makes the order dangerous.
    IrqLockOrder,
    /// A lock still held when it must not be (freed, at exit, on return to user space): the code
    /// that took it, which the report prints as the lock's "at:" site before any stack.
    HeldLock,
}

/// Lockdep headlines (the report's subject) about a lock that stayed held.
const HELD_LOCK_REPORTS: &[&str] =
    &["held lock freed", "still has locks held", "lock held when returning to user space"];

impl Rule {
    /// The rule of a report of `kind` whose headline says `subject`.
    pub fn of(kind: Kind, subject: &str) -> Rule {
        match kind {
            Kind::RcuStall | Kind::SoftLockup => Rule::Stall,
            Kind::HungTask => Rule::Hang,
            Kind::Lockdep if subject.contains("-safe -> ") => Rule::IrqLockOrder,
            Kind::Lockdep if HELD_LOCK_REPORTS.contains(&subject) => Rule::HeldLock,
            Kind::Lockdep => Rule::Locking,
            _ => Rule::Spot,
        }
    }

    /// Whether a lock's "at:" site in the report names the culprit ahead of its stacks.
    pub fn lock_site_first(self) -> bool {
        self == Rule::HeldLock
    }

    /// The culprit of one stack given as function names, innermost first, machinery included.
    pub fn pick<'a>(self, functions: &[&'a str]) -> Option<&'a str> {
        match self {
            Rule::Spot => spot(functions),
            Rule::Stall => stalled(functions),
            Rule::Hang => hung(functions),
            Rule::Locking | Rule::IrqLockOrder | Rule::HeldLock => culprit_of(&without(LOCK_WRAPPERS, functions)),
        }
    }

    /// Whether the last stack a report printed tells its story rather than the first.
    pub fn last_stack_first(self) -> bool {
        matches!(self, Rule::Locking | Rule::HeldLock)
    }
}

/// The guilty function of a stack given as function names, innermost first. A `__foo` called
/// by `foo` is `foo`'s own inner half (`__mm_get_cid` under `mm_get_cid`): it is named as `foo`,
/// so that the same bug gets one title whether the compiler inlined the helper or not.
pub(super) fn culprit_of<'a>(functions: &[&'a str]) -> Option<&'a str> {
    let mut candidates = functions.iter().copied().filter(|function| !is_plumbing(function));
    let first = candidates.next()?;
    // The same function may come twice (arm64 prints `pc`, `lr` and the trace's first frame).
    Some(match candidates.find(|caller| *caller != first) {
        Some(caller) if is_inner_half(first, caller) => caller,
        _ => first,
    })
}

/// `__foo` and `foo`.
pub(super) fn is_inner_half(inner: &str, outer: &str) -> bool {
    inner.strip_prefix("__").is_some_and(|name| name == outer)
}

/// The frames of the context the CPU was interrupted in: past the interrupt's entry, when the
/// report was printed from inside the interrupt (the detector's frames come first, then the entry).
/// A frame before the detector's (a register line printed first, as a soft lockup does) is the
/// interrupted spot itself and is kept. The first entry counts: the interrupted context may itself
/// have been entered from an interrupt further out.
fn interrupted<'a>(functions: &[&'a str]) -> Vec<&'a str> {
    let Some(entry) = functions.iter().position(|function| matches_any(INTERRUPT_ENTRY, function)) else {
        return functions.to_vec();
    };
    let detector = functions[..entry].iter().position(|function| is_plumbing(function)).unwrap_or(entry);
    let rest = &functions[entry..];
    let entered = rest.iter().take_while(|function| matches_any(INTERRUPT_ENTRY, function) || is_plumbing(function));
    functions[..detector].iter().chain(&rest[entered.count()..]).copied().collect()
}

/// The first frame that is not machinery; past the lock API too when the report came from inside
/// lockdep (a lock taken or released wrongly is the fault of the code that takes it).
fn spot<'a>(functions: &[&'a str]) -> Option<&'a str> {
    let machinery = functions.iter().take_while(|function| is_plumbing(function));
    match machinery.clone().any(|function| matches_any(LOCKDEP, function)) {
        true => culprit_of(&without(LOCK_WRAPPERS, functions)),
        false => culprit_of(functions),
    }
}

/// The context a task preempted at an interrupt's return was in, when the CPU was caught switching
/// away from it: past the scheduler's frames and the return path.
fn past_preemption<'c, 'a>(context: &'c [&'a str]) -> &'c [&'a str] {
    let Some(end) = context.iter().position(|function| matches_any(CONTEXT_ENDS, function)) else {
        return context;
    };
    let preempted = context[end..].iter().position(|function| !matches_any(SWITCH, function));
    let Some(at) = preempted.map(|skipped| end + skipped) else {
        return context;
    };
    if at == end || !matches_any(PREEMPTED_AT_INTERRUPT_RETURN, context[at]) {
        return context;
    }
    let rest = &context[at + 1..];
    let returning = rest.iter().take_while(|function| matches_any(INTERRUPT_ENTRY, function) || is_plumbing(function));
    &rest[returning.count()..]
}

fn stalled<'a>(functions: &[&'a str]) -> Option<&'a str> {
    let interrupted = interrupted(functions);
    let context = past_preemption(&interrupted);
    // The innermost cross-CPU call is the one the CPU waits in.
    if let Some(wait) = context.iter().find(|function| matches_any(CROSS_CPU_WAITS, function)) {
        return Some(wait);
    }
    dispatched(context).or_else(|| culprit_of(context))
}

/// The handler the innermost dispatcher called, unless the task's request ended first.
fn dispatched<'a>(context: &[&'a str]) -> Option<&'a str> {
    for (at, function) in context.iter().enumerate() {
        if matches_any(CONTEXT_ENDS, function) {
            return None;
        }
        if matches_any(DISPATCHERS, function) {
            let inside = context[..at].iter().rev().copied().filter(|function| !is_plumbing(function));
            if let Some(handler) = inside.clone().find(|function| !matches_any(DISPATCHERS, function)) {
                return Some(handler);
            }
        }
    }
    None
}

/// The innermost wait: a grace period's when the task sleeps in one, else the caller of the
/// sleeping primitives (a grace-period wait further out belongs to someone else's stack).
fn hung<'a>(functions: &[&'a str]) -> Option<&'a str> {
    for function in functions {
        if matches_any(GRACE_PERIOD_WAITS, function) {
            return Some(function);
        }
        if !is_plumbing(function) && !matches_any(SLEEPS, function) {
            break;
        }
    }
    culprit_of(&without(SLEEPS, functions))
}

fn without<'a>(patterns: &[&str], functions: &[&'a str]) -> Vec<&'a str> {
    functions.iter().copied().filter(|function| !matches_any(patterns, function)).collect()
}

#[cfg(test)]
mod tests {
    use super::{Rule, NEVER_GUILTY};

    #[test]
    fn never_guilty_patterns_are_names_or_prefixes() {
        let lists =
            [super::INTERRUPT_ENTRY, super::DISPATCHERS, super::CONTEXT_ENDS, super::SLEEPS, super::LOCK_WRAPPERS];
        for pattern in NEVER_GUILTY.iter().chain(&lists).flat_map(|group| group.iter()).chain(super::LOCKDEP) {
            let name = pattern.strip_suffix('*').unwrap_or(pattern);
            assert!(!name.is_empty() && !name.contains('*'), "{pattern:?}: '*' only at the end");
        }
    }

    /// `stack`: function names innermost first, blank-separated; `expect`: the culprit or "-".
    fn check(rule: Rule, stack: &str, expect: &str) {
        let functions: Vec<&str> = stack.split_whitespace().collect();
        assert_eq!(rule.pick(&functions).unwrap_or("-"), expect, "{rule:?} {stack}");
    }

    #[test]
    fn never_guilty_frames_are_passed_over() {
        check(Rule::Spot, "refcount_warn_saturate sctp_wfree skb_release_head_state", "sctp_wfree");
        check(Rule::Spot, "__list_del_entry_valid tipc_nametbl_unsubscribe", "tipc_nametbl_unsubscribe");
        check(Rule::Spot, "debug_print_object debug_check_no_obj_freed kfree netdev_freemem", "netdev_freemem");
        check(Rule::Spot, "check_preemption_disabled __this_cpu_preempt_check ipcomp_init_state", "ipcomp_init_state");
        check(Rule::Spot, "fortify_panic ucma_join_ip_multicast ucma_write", "ucma_join_ip_multicast");
        check(
            Rule::Spot,
            "spin_dump do_raw_spin_unlock _raw_spin_unlock synchronize_sched_expedited_cpu_stop",
            "synchronize_sched_expedited_cpu_stop",
        );
        check(Rule::Spot, "___might_sleep.cold __might_sleep line6_pcm_acquire", "line6_pcm_acquire");
        check(Rule::Spot, "__sanitizer_cov_trace_pc check_memory_region memcpy icmp_send", "icmp_send");
        check(
            Rule::Spot,
            "register_lock_class __lock_acquire lock_acquire _raw_spin_lock tun_flow_cleanup",
            "tun_flow_cleanup",
        );
        check(Rule::Spot, "strnlen string vsnprintf do_ip_vs_set_ctl", "do_ip_vs_set_ctl");
        check(Rule::Spot, "kmalloc_slab __kmalloc_node kvmalloc_node cpu_map_update_elem", "cpu_map_update_elem");
        check(Rule::Spot, "rb_erase timerqueue_del __remove_hrtimer", "timerqueue_del");
        check(Rule::Spot, "skb_panic skb_push pfkey_send_acquire", "pfkey_send_acquire");
        check(Rule::Spot, "mm_get_cid mm_cid_switch_to __schedule", "mm_get_cid");
        check(
            Rule::Spot,
            "ubsan_epilogue handle_overflow __ubsan_handle_add_overflow ip_idents_reserve",
            "ip_idents_reserve",
        );
        check(
            Rule::Spot,
            "__alloc_pages alloc_page_interleave alloc_pages kmalloc_order netlbl_cipsov4_add",
            "netlbl_cipsov4_add",
        );
        check(Rule::Spot, "rhashtable_lookup_fast ila_nf_input nf_hook_slow", "ila_nf_input");
        check(Rule::Spot, "folio_unlock f2fs_sync_node_pages f2fs_write_node_pages", "f2fs_sync_node_pages");
        check(Rule::Spot, "fast_dput dput __fput task_work_run", "__fput");
        check(Rule::Spot, "refcount_warn_saturate kobject_put put_device hdm_disconnect", "hdm_disconnect");
        check(Rule::Spot, "proc_register proc_create_data clusterip_tg_check xt_check_target", "clusterip_tg_check");
        check(
            Rule::Spot,
            "kobject_add_internal kobject_add device_add netdev_register_kobject",
            "netdev_register_kobject",
        );
        check(
            Rule::Spot,
            "hex_string vsnprintf vprintk_emit dev_vprintk_emit __dev_printk _dev_info dlfb_probe",
            "dlfb_probe",
        );
        check(Rule::Spot, "usb_kill_anchored_urbs mcba_usb_disconnect usb_unbind_interface", "mcba_usb_disconnect");
        check(
            Rule::Spot,
            "work_is_static_object debug_object_activate __queue_work queue_work_on strp_check_rcv",
            "strp_check_rcv",
        );
        check(
            Rule::Spot,
            "lock_timer_base __timer_delete_sync sk_stop_timer_sync mptcp_pm_del_add_timer",
            "mptcp_pm_del_add_timer",
        );
        check(
            Rule::Spot,
            "debug_print_object __debug_object_init init_timer_key kobject_release kobject_put blk_mq_unregister_disk",
            "blk_mq_unregister_disk",
        );
        check(
            Rule::Spot,
            "__do_kernel_fault do_translation_fault do_mem_abort el1_abort nfc_llcp_unregister",
            "nfc_llcp_unregister",
        );
        check(
            Rule::Spot,
            "__list_del_entry_valid mutex_remove_waiter __mutex_lock iowarrior_disconnect",
            "iowarrior_disconnect",
        );
    }

    #[test]
    fn a_report_from_inside_lockdep_names_who_takes_the_lock() {
        check(
            Rule::Spot,
            "hlock_class mark_lock __lock_acquire lock_acquire _raw_spin_lock_bh lock_sock_nested l2cap_sock_teardown_cb",
            "l2cap_sock_teardown_cb",
        );
        check(Rule::Spot, "lock_release up_write destroy_unused_super sget_userns", "destroy_unused_super");
        check(
            Rule::Spot,
            "register_lock_class __lock_acquire lock_acquire _raw_spin_lock_irqsave __wake_up_common_lock usb_anchor_resume",
            "usb_anchor_resume",
        );
        // Without lockdep in between, a lock wrapper is where the fault was.
        check(Rule::Spot, "lock_sock_nested l2cap_sock_teardown_cb", "lock_sock_nested");
    }

    #[test]
    fn a_stall_names_the_request_the_interrupted_cpu_served() {
        // Printed from the timer interrupt: the detector, the entry, then the interrupted context.
        check(
            Rule::Stall,
            "rcu_check_callbacks update_process_times smp_apic_timer_interrupt apic_timer_interrupt \
             __sanitizer_cov_trace_pc __xfrm_decode_session rawv6_rcv ipv6_rcv __netif_receive_skb_core \
             process_backlog net_rx_action __do_softirq",
            "ipv6_rcv",
        );
        check(Rule::Stall, "foo kvm_vcpu_ioctl vfs_ioctl __x64_sys_ioctl do_syscall_64", "kvm_vcpu_ioctl");
        check(
            Rule::Stall,
            "d_walk shrink_dcache_parent do_rmdir __x64_sys_rmdir x64_sys_call do_syscall_64",
            "__x64_sys_rmdir",
        );
        check(
            Rule::Stall,
            "gc_loop bpf_map_free_deferred process_one_work worker_thread kthread",
            "bpf_map_free_deferred",
        );
        check(
            Rule::Stall,
            "csd_lock_wait smp_call_function_single smp_call_function_many smp_call_function ksys_ioctl",
            "smp_call_function_single",
        );
        check(
            Rule::Stall,
            "rcu_check_callbacks smp_apic_timer_interrupt smp_apic_timer_interrupt_entry_after_kaiser_bti \
             sched_ttwu_pending cpu_startup_entry",
            "sched_ttwu_pending",
        );
        // Preempted at an interrupt's return and caught switching away: the request goes on past it.
        check(
            Rule::Stall,
            "rcu_sched_clock_irq apic_timer_interrupt free_thread_stack finish_task_switch __schedule \
             preempt_schedule_irq retint_kernel quarantine_reduce kmem_cache_alloc_trace kernfs_fop_open do_dentry_open",
            "kernfs_fop_open",
        );
        // A softirq run on the return from an interrupt taken in preempt_schedule_irq: the softirq.
        check(
            Rule::Stall,
            "rcu_sched_clock_irq asm_sysvec_apic_timer_interrupt kmem_cache_alloc __build_skb hwsim_beacon_tx \
             hwsim_beacon __hrtimer_run_queues hrtimer_run_softirq __do_softirq irq_exit_rcu sysvec_apic_timer_interrupt \
             asm_sysvec_apic_timer_interrupt preempt_schedule_irq irqentry_exit sctp_sendmsg __sys_sendmsg do_syscall_64",
            "hwsim_beacon",
        );
        // 32-bit arm: the IRQ vector from kernel mode, a socket option of a protocol.
        check(
            Rule::Stall,
            "rcu_sched_clock_irq update_process_times gic_handle_irq __irq_svc do_tcp_setsockopt tcp_setsockopt \
             sock_common_setsockopt __sys_setsockopt sys_setsockopt ret_fast_syscall",
            "tcp_setsockopt",
        );
        check(Rule::Stall, "quarantine_reduce kvm_dev_ioctl kvm_mux_dev_ioctl compat_SyS_ioctl", "kvm_mux_dev_ioctl");
        // The soft lockup's register line comes before the watchdog's frames.
        check(
            Rule::Stall,
            "snd_virmidi_output_trigger watchdog_timer_fn __hrtimer_run_queues sysvec_apic_timer_interrupt \
             asm_sysvec_apic_timer_interrupt snd_rawmidi_kernel_write1 snd_rawmidi_write vfs_write",
            "snd_rawmidi_write",
        );
        // LKDTM's own dispatch names the crash type; no dispatcher: the spot.
        check(
            Rule::Stall,
            "lkdtm_SOFTLOCKUP lkdtm_do_action direct_entry full_proxy_write vfs_write",
            "lkdtm_SOFTLOCKUP",
        );
        check(Rule::Stall, "spin_in_user_copy", "spin_in_user_copy");
        // A task that switched away left its request: the scheduler path is the spot's story.
        check(
            Rule::Stall,
            "mm_get_cid mm_cid_switch_to __schedule schedule do_nanosleep __x64_sys_nanosleep do_syscall_64",
            "mm_get_cid",
        );
    }

    #[test]
    fn a_lockdep_report_names_who_takes_the_lock() {
        check(
            Rule::Locking,
            "lock_acquire __mutex_lock mutex_lock_nested rtnl_lock do_ip_setsockopt ip_setsockopt",
            "do_ip_setsockopt",
        );
        check(Rule::Locking, "lock_acquire lock_sock_nested l2cap_sock_teardown_cb", "l2cap_sock_teardown_cb");
        check(Rule::Locking, "lock_acquire flush_workqueue peer_remove_after_dead", "peer_remove_after_dead");
    }

    #[test]
    fn lockdep_reports_have_rules_of_their_own() {
        use crate::vocab::Kind;
        for (kind, subject, rule) in [
            (Kind::Lockdep, "possible circular locking dependency detected", Rule::Locking),
            (Kind::Lockdep, "HARDIRQ-safe -> HARDIRQ-unsafe lock order detected", Rule::IrqLockOrder),
            (Kind::Lockdep, "SOFTIRQ-safe -> SOFTIRQ-unsafe lock order detected", Rule::IrqLockOrder),
            (Kind::Lockdep, "lock held when returning to user space", Rule::HeldLock),
            (Kind::Lockdep, "held lock freed", Rule::HeldLock),
            (Kind::Warning, "held lock freed", Rule::Spot),
            (Kind::HungTask, "", Rule::Hang),
        ] {
            assert_eq!(Rule::of(kind, subject), rule, "{kind} {subject}");
        }
        assert!(Rule::HeldLock.lock_site_first() && !Rule::Locking.lock_site_first());
        assert!(!Rule::IrqLockOrder.last_stack_first() && Rule::Locking.last_stack_first());
    }

    #[test]
    fn a_hung_task_names_the_function_that_waits() {
        check(Rule::Hang, "__schedule schedule ldsem_down_write tty_ldisc_lock tty_ldisc_hangup", "tty_ldisc_hangup");
        check(
            Rule::Hang,
            "__schedule schedule schedule_timeout wait_for_completion kthread_stop set_current_rng",
            "set_current_rng",
        );
        check(
            Rule::Hang,
            "__schedule schedule bit_wait_io __wait_on_bit out_of_line_wait_on_bit jbd2_journal_commit_transaction",
            "jbd2_journal_commit_transaction",
        );
        check(
            Rule::Hang,
            "__schedule schedule wait_for_completion __wait_rcu_gp synchronize_rcu synchronize_net rollback_registered",
            "synchronize_rcu",
        );
        check(Rule::Hang, "__schedule schedule __flush_work p9_conn_destroy p9_fd_close", "p9_conn_destroy");
        check(Rule::Hang, "__schedule schedule __synchronize_srcu synchronize_srcu kvm_put_kvm", "__synchronize_srcu");
        check(Rule::Hang, "__schedule schedule mutex_lock lkdtm_HUNG_TASK", "lkdtm_HUNG_TASK");
        // Another task's grace-period wait further out is not this task's.
        check(
            Rule::Hang,
            "schedule mutex_lock_nested rtnl_lock ipv6_route_ioctl schedule wait_for_completion synchronize_sched",
            "rtnl_lock",
        );
        check(
            Rule::Hang,
            "schedule wait_for_completion_timeout usb_start_wait_urb usb_control_msg ld_usb_write",
            "ld_usb_write",
        );
    }
}
