//! The mm side of the protocol (kernel/sched/core.c): sched_mm_cid_fork(), sched_mm_cid_exit(),
//! mm_update_max_cids() and its mode switch, both fixup walks, mm_update_cpus_allowed() and the
//! deferred mm_cid_work_fn(). Each holds mm_cid::mutex for its whole run; a walk takes one
//! runqueue lock per step, so it interleaves with everything else and can wait.

use super::state::{
    in_transit, on_cpu, on_task, show_cid, show_mode, Life, OpKind, Pc, Spin, State, Store, Word, MODE_ONCPU,
    MODE_TRANSIT, NO_TASK, ONCPU, TRANSIT, UNSET,
};
use super::step::{name, Ctx};
use super::variants::{ModeLayout, Variant};

/// fork() by rq->curr of CPU `c`: sched_mm_cid_fork() up to the mode switch decision.
pub fn fork(s: &mut State, cx: &mut Ctx, c: u8) {
    let parent = s.cpu(c).curr;
    let child = (0..s.ntasks).find(|&t| s.task(t).life == Life::Free).expect("fork without a free slot");
    s.forks_left -= 1;
    let child_name = s.next_name;
    s.next_name += 1;
    // sched_mm_cid_add_user(): active, at the head of the user list, counted.
    *s.task_mut(child) = super::state::Task { life: Life::Forking, active: true, cid: UNSET, cpu: c, name: child_name };
    s.list.copy_within(0..s.users as usize, 1);
    s.list[0] = child;
    s.users += 1;
    s.cpu_mut(c).op = Some((OpKind::Fork { child }, Pc::Release));
    cx.say(|| format!("{} runs fork() and creates {} (users {}).", name(s, parent), name(s, child), s.users));
    match update_max_cids(s, cx, c) {
        Some(to_percpu) => s.cpu_mut(c).op = Some((OpKind::Fork { child }, Pc::ModeStore { done: 0, to_percpu })),
        None if s.read_mode(c) & MODE_ONCPU == 0 => child_cid(s, cx, c, child, true),
        None => finish(s, cx, c),
    }
}

/// exit() by rq->curr of CPU `c` (never the last user): sched_mm_cid_exit() to the decision.
pub fn exit(s: &mut State, cx: &mut Ctx, c: u8) {
    let t = s.cpu(c).curr;
    s.exits_left -= 1;
    // sched_mm_cid_remove_user(): inactive, transit bit cleared, a task owned CID dropped.
    let cid = s.task(t).cid & !TRANSIT;
    let task = s.task_mut(t);
    task.active = false;
    task.life = Life::Exiting;
    task.cid = UNSET;
    if on_task(cid) {
        cx.drop_cid(s, cid);
    }
    let pos = s.users().iter().position(|&u| u == t).expect("an exiting task is a user");
    s.list.copy_within(pos + 1..s.users as usize, pos);
    s.users -= 1;
    s.cpu_mut(c).op = Some((OpKind::Exit, Pc::Release));
    cx.say(|| format!("{} runs exit() (users {}) and gives up {}.", name(s, t), s.users, show_cid(cid)));
    match update_max_cids(s, cx, c) {
        // Exit only ever switches back to per task mode; the other way is a WARN_ON_ONCE() there.
        Some(false) => s.cpu_mut(c).op = Some((OpKind::Exit, Pc::ModeStore { done: 0, to_percpu: false })),
        _ => finish(s, cx, c),
    }
}

/// mm_update_cpus_allowed() by rq->curr of CPU `c`, which widens the mm's mask to every CPU
/// (under its runqueue lock and mm_cid::lock, so one step; its stores are released with them).
pub fn affinity(s: &mut State, cx: &mut Ctx, c: u8) {
    s.nr_cpus_allowed = s.ncpus;
    let opt = s.nr_cpus_allowed.min(s.users);
    s.perform(Store { word: Word::MaxCids, value: (opt + opt / 4).min(s.ncpus) });
    cx.say(|| format!("{} widens its affinity: nr_cpus_allowed {}.", name(s, s.cpu(c).curr), s.ncpus));
    if s.mode & MODE_ONCPU == 0 {
        return;
    }
    s.pcpu_thrs = calc_pcpu_thrs(s);
    if s.users >= s.pcpu_thrs || s.update_deferred {
        return;
    }
    s.update_deferred = true;
    s.work_queued = true;
    cx.say(|| "The switch back to per-task mode is deferred to mm_cid_work_fn().".into());
}

/// mm_cid_work_fn() in a kworker on idle CPU `c`.
pub fn work(s: &mut State, cx: &mut Ctx, c: u8) {
    s.work_queued = false;
    s.cpu_mut(c).op = Some((OpKind::Work, Pc::Release));
    cx.say(|| format!("A kworker on CPU{c} runs mm_cid_work_fn()."));
    if !s.update_deferred {
        return finish(s, cx, c);
    }
    match update_max_cids(s, cx, c) {
        Some(false) => s.cpu_mut(c).op = Some((OpKind::Work, Pc::ModeStore { done: 0, to_percpu: false })),
        _ => finish(s, cx, c),
    }
}

fn calc_pcpu_thrs(s: &State) -> u8 {
    let opt = s.nr_cpus_allowed.min(s.users);
    (opt - opt / 4).min(s.ncpus / 2).max(1)
}

/// mm_update_max_cids() under mm_cid::lock: Some(to_percpu) when the mode must switch.
fn update_max_cids(s: &mut State, cx: &mut Ctx, c: u8) -> Option<bool> {
    let percpu = s.read_mode(c) & MODE_ONCPU != 0;
    s.update_deferred = false;
    let opt = s.nr_cpus_allowed.min(s.users);
    let max = (opt + opt / 4).min(s.ncpus);
    s.store(c, cx.weak, Store { word: Word::MaxCids, value: max });
    if !percpu {
        if s.users > max {
            s.pcpu_thrs = calc_pcpu_thrs(s);
        }
    } else if s.users < s.pcpu_thrs {
        s.pcpu_thrs = 0;
    }
    if percpu == (s.pcpu_thrs != 0) {
        cx.say(|| format!("max_cids {max}, no mode change."));
        return None;
    }
    let to = !percpu;
    cx.say(|| format!("max_cids {max}: switch to {} mode.", if to { "per-CPU" } else { "per-task" }));
    Some(to)
}

/// The stores of a mode switch, in the variant's layout and order.
fn mode_stores(variant: Variant, to_percpu: bool) -> Vec<Store> {
    let percpu = if to_percpu { MODE_ONCPU } else { 0 };
    match variant.layout() {
        ModeLayout::OneWord if !variant.transit_to_cpu() && to_percpu => {
            vec![Store { word: Word::Mode, value: MODE_ONCPU }]
        }
        ModeLayout::OneWord => vec![Store { word: Word::Mode, value: percpu | MODE_TRANSIT }],
        ModeLayout::TransitFirst => {
            vec![Store { word: Word::Transit, value: MODE_TRANSIT }, Store { word: Word::Percpu, value: percpu }]
        }
        ModeLayout::PercpuFirst => {
            vec![Store { word: Word::Percpu, value: percpu }, Store { word: Word::Transit, value: MODE_TRANSIT }]
        }
    }
}

/// The store of mm_cid_complete_transit(), if the variant has a transition to end.
fn complete_store(variant: Variant, to_percpu: bool) -> Option<Store> {
    match variant.layout() {
        ModeLayout::OneWord if to_percpu && !variant.transit_to_cpu() => None,
        ModeLayout::OneWord => Some(Store { word: Word::Mode, value: if to_percpu { MODE_ONCPU } else { 0 } }),
        _ => Some(Store { word: Word::Transit, value: 0 }),
    }
}

/// Whether the operation on CPU `c` can take its next step.
pub fn step_enabled(s: &State, c: u8) -> bool {
    let (_, pc) = s.cpu(c).op.expect("a step without an operation");
    match pc {
        Pc::ModeStore { .. } => true,
        // smp_mb(), and a lock release, wait until the CPU's stores are visible.
        Pc::Barrier { .. } | Pc::Complete { .. } | Pc::Release => s.buffer_empty(c),
        Pc::WalkTasks(_) => blocked_on_rq(s, c).is_none() && s.buffer_empty(c),
        // Each CPU is a `visits` action; the step ends the walk.
        Pc::WalkCpus { done, .. } => done == all_cpus(s),
    }
}

fn all_cpus(s: &State) -> u8 {
    ((1u16 << s.ncpus) - 1) as u8
}

/// The CPUs the CPU walk on `c` may visit next: the one it waits for, else any not visited yet
/// (the allowed ones first, as index order has them first).
pub fn visits(s: &State, c: u8) -> Vec<u8> {
    let Some((_, Pc::WalkCpus { done, next })) = s.cpu(c).op else { return Vec::new() };
    if !s.buffer_empty(c) {
        return Vec::new();
    }
    if next != NO_TASK {
        return if s.rq_locked(next) { Vec::new() } else { vec![next] };
    }
    let pending: Vec<u8> = (0..s.ncpus).filter(|k| done & (1 << k) == 0).collect();
    let allowed: Vec<u8> = pending.iter().copied().filter(|&k| k < s.nr_cpus_allowed).collect();
    if allowed.is_empty() {
        pending
    } else {
        allowed
    }
}

/// The runqueue lock the walk on CPU `c` waits for, if its next lock is held.
pub fn blocked_on_rq(s: &State, c: u8) -> Option<u8> {
    let rq = match s.cpu(c).op?.1 {
        Pc::WalkTasks(i) => s.task(next_walk_task(s, c, i)?).cpu,
        Pc::WalkCpus { next, .. } if next != NO_TASK => next,
        _ => return None,
    };
    s.rq_locked(rq).then_some(rq)
}

/// The next user the task walk visits from position `i`: it skips current, which transferred
/// its own CID before the walk.
fn next_walk_task(s: &State, c: u8, i: u8) -> Option<u8> {
    s.users()[i as usize..].iter().copied().find(|&t| t != s.cpu(c).curr)
}

/// The next step of the operation on CPU `c`.
pub fn step(s: &mut State, cx: &mut Ctx, c: u8) {
    let (kind, pc) = s.cpu(c).op.expect("a step without an operation");
    let set = |s: &mut State, pc: Pc| s.cpu_mut(c).op = Some((kind, pc));
    match pc {
        Pc::ModeStore { done, to_percpu } => {
            let stores = mode_stores(cx.variant, to_percpu);
            let store = stores[done as usize];
            s.store(c, cx.weak, store);
            let buffered = if cx.weak { " (into its store buffer)" } else { "" };
            cx.say(|| format!("{} sets {:?} = {}{buffered}.", actor(s, c), store.word, store.value));
            let done = done + 1;
            set(
                s,
                if done as usize == stores.len() {
                    Pc::Barrier { to_percpu }
                } else {
                    Pc::ModeStore { done, to_percpu }
                },
            );
        }
        Pc::Barrier { to_percpu } => barrier(s, cx, c, kind, to_percpu),
        Pc::WalkTasks(i) => walk_task(s, cx, c, i),
        Pc::WalkCpus { .. } => {
            s.cpu_mut(c).op = Some((kind, Pc::Complete { to_percpu: false }));
            step(s, cx, c)
        }
        Pc::Complete { to_percpu } => {
            if let Some(store) = complete_store(cx.variant, to_percpu) {
                s.store(c, cx.weak, store);
            }
            cx.say(|| format!("{} ends the transition: mode {}.", actor(s, c), show_mode(s.read_mode(c))));
            match kind {
                OpKind::Fork { child } if !to_percpu => child_cid(s, cx, c, child, false),
                _ => finish(s, cx, c),
            }
        }
        Pc::Release => finish(s, cx, c),
    }
}

fn actor(s: &State, c: u8) -> String {
    match s.cpu(c).op {
        Some((OpKind::Work, _)) => format!("The kworker on CPU{c}"),
        _ => name(s, s.cpu(c).curr),
    }
}

/// After the switch's smp_mb(): current's own CID handed over (fork) or CPU `c`'s dropped
/// (exit), mm_cid::lock released, and the walk begins.
fn barrier(s: &mut State, cx: &mut Ctx, c: u8, kind: OpKind, to_percpu: bool) {
    let curr = s.cpu(c).curr;
    match kind {
        OpKind::Fork { .. } if to_percpu => transit_to_cpu(s, cx, curr, c),
        OpKind::Fork { .. } => transit_to_task(s, cx, curr, c),
        OpKind::Exit if cx.variant == Variant::ExitReassign => {
            // Interpretation: 3/4's message says the leftover "reassigns the per CPU CID to the
            // exiting task with the transition bit set"; 7.3's mm_cid_transit_to_task() would
            // find the exiting task's CID already unset, so the pre-3/4 code is taken to read the
            // CPU's CID, as the message describes.
            let pcp = s.cpu(c).pcp;
            if on_cpu(pcp) {
                let cid = (pcp & !ONCPU) | TRANSIT;
                s.task_mut(curr).cid = cid;
                s.cpu_mut(c).pcp = cid;
                cx.say(|| format!("{} takes CPU{c}'s CID back as {}.", name(s, curr), show_cid(cid)));
            }
        }
        OpKind::Exit => drop_cid_on_cpu(s, cx, c),
        OpKind::Work => {}
    }
    let pc = if to_percpu { Pc::WalkTasks(0) } else { Pc::WalkCpus { done: 0, next: NO_TASK } };
    s.cpu_mut(c).op = Some((kind, pc));
    cx.say(|| format!("{} starts the fixup walk.", actor(s, c)));
}

/// mm_cid_transit_to_cpu() (mm_cid_transfer_to_cpu() without patch 1/4).
fn transit_to_cpu(s: &mut State, cx: &mut Ctx, t: u8, c: u8) {
    let cid = s.task(t).cid;
    if on_task(cid) {
        let new = if cx.variant.transit_to_cpu() { cid | TRANSIT } else { cid | ONCPU };
        s.task_mut(t).cid = new;
        s.cpu_mut(c).pcp = new;
        cx.say(|| format!("{} hands its CID {cid} to CPU{c} as {}.", name(s, t), show_cid(new)));
    }
}

/// mm_cid_transit_to_task().
fn transit_to_task(s: &mut State, cx: &mut Ctx, t: u8, c: u8) {
    let cid = s.task(t).cid;
    if on_cpu(cid) {
        let new = (cid & !ONCPU) | TRANSIT;
        s.task_mut(t).cid = new;
        s.cpu_mut(c).pcp = new;
        cx.say(|| format!("CPU{c}'s CID goes to {} as {}.", name(s, t), show_cid(new)));
    }
}

/// mm_drop_cid_on_cpu(): ONCPU cleared (the value stays), the CID back in the pool.
fn drop_cid_on_cpu(s: &mut State, cx: &mut Ctx, c: u8) {
    let pcp = s.cpu(c).pcp;
    if on_cpu(pcp) {
        s.cpu_mut(c).pcp = pcp & !ONCPU;
        cx.drop_cid(s, pcp & !ONCPU);
        cx.say(|| format!("CPU{c}'s CID {} goes back to the pool.", pcp & !ONCPU));
    }
}

/// One task of mm_cid_fixup_tasks_to_cpus(): mm_cid_fixup_task_to_cpu() under task_rq_lock().
fn walk_task(s: &mut State, cx: &mut Ctx, c: u8, i: u8) {
    let (kind, _) = s.cpu(c).op.unwrap();
    let Some(t) = next_walk_task(s, c, i) else {
        s.cpu_mut(c).op = Some((kind, Pc::Complete { to_percpu: true }));
        return step(s, cx, c);
    };
    let pos = s.users().iter().position(|&u| u == t).unwrap() as u8;
    s.cpu_mut(c).op = Some((kind, Pc::WalkTasks(pos + 1)));
    let cid = s.task(t).cid;
    let rq = s.task(t).cpu;
    cx.say(|| format!("{}'s fixup walk locks CPU{rq}'s runqueue for {}:", actor(s, c), name(s, t)));
    if !on_task(cid) {
        cx.say(|| format!("{} has {}, nothing to do.", name(s, t), show_cid(cid)));
    } else if s.cpu(rq).curr == t {
        transit_to_cpu(s, cx, t, rq);
    } else {
        s.task_mut(t).cid = UNSET;
        cx.drop_cid(s, cid);
        cx.say(|| format!("{} is not running, its CID {cid} goes back to the pool.", name(s, t)));
    }
}

/// CPU `k` in mm_cid_fixup_cpus_to_tasks() on CPU `c`: under `k`'s runqueue lock, or, when
/// another CPU holds it, the walk starts waiting for it.
pub fn visit(s: &mut State, cx: &mut Ctx, c: u8, k: u8) {
    let Some((kind, Pc::WalkCpus { done, .. })) = s.cpu(c).op else { unreachable!("a visit outside a CPU walk") };
    if s.rq_locked(k) {
        s.cpu_mut(c).op = Some((kind, Pc::WalkCpus { done, next: k }));
        cx.say(|| format!("{}'s fixup walk waits for CPU{k}'s runqueue lock.", actor(s, c)));
        return;
    }
    s.cpu_mut(c).op = Some((kind, Pc::WalkCpus { done: done | 1 << k, next: NO_TASK }));
    cx.say(|| format!("{}'s fixup walk locks CPU{k}'s runqueue:", actor(s, c)));
    let curr = s.cpu(k).curr;
    let ours = curr != NO_TASK && s.task(curr).active;
    let pcp = s.cpu(k).pcp;
    if on_cpu(pcp) {
        if ours {
            transit_to_task(s, cx, curr, k);
        } else if cx.variant == Variant::ForkStale {
            cx.say(|| format!("CPU{k} keeps its stale CID {}.", pcp & !ONCPU));
        } else {
            drop_cid_on_cpu(s, cx, k);
        }
    } else if ours {
        let cid = s.task(curr).cid;
        if cid != UNSET && !in_transit(cid) {
            let cid = cid | TRANSIT;
            s.task_mut(curr).cid = cid;
            s.cpu_mut(k).pcp = cid;
            cx.say(|| format!("{} on CPU{k} keeps its CID in transit: {}.", name(s, curr), show_cid(cid)));
        }
    }
}

/// The child's `t->mm_cid.cid = mm_get_cid(mm)` in sched_mm_cid_fork(); `locked`: under
/// mm_cid::lock (no mode change), else after mm_cid_fixup_cpus_to_tasks().
fn child_cid(s: &mut State, cx: &mut Ctx, c: u8, child: u8, locked: bool) {
    let max = s.read(c, Word::MaxCids);
    match super::sched::try_get(s, max) {
        Some(cid) => child_got_cid(s, cx, c, cid),
        None => {
            s.cpu_mut(c).spin = Some(Spin::Child { locked });
            cx.say(|| format!("{}'s CID must come from mm_get_cid(), but the pool is empty: CPU{c} loops in mm_get_cid() under sched_mm_cid_fork(){}.", name(s, child), if locked { " with mm_cid::lock held and interrupts off" } else { "" }));
        }
    }
}

/// The child has its CID: sched_mm_cid_fork() returns.
pub fn child_got_cid(s: &mut State, cx: &mut Ctx, c: u8, cid: u8) {
    let Some((OpKind::Fork { child }, _)) = s.cpu(c).op else { unreachable!("a child CID outside fork") };
    s.task_mut(child).cid = cid;
    cx.say(|| format!("{} gets CID {cid}.", name(s, child)));
    finish(s, cx, c);
}

/// The operation on CPU `c` returns: mm_cid::lock and mm_cid::mutex released (after the CPU's
/// stores are visible: a release orders them), the child runnable on CPU `c`.
fn finish(s: &mut State, cx: &mut Ctx, c: u8) {
    let (kind, _) = s.cpu(c).op.unwrap();
    if !s.buffer_empty(c) {
        s.cpu_mut(c).op = Some((kind, Pc::Release));
        return;
    }
    s.cpu_mut(c).op = None;
    match kind {
        OpKind::Fork { child } => {
            s.task_mut(child).life = Life::Live;
            cx.say(|| format!("fork() returns, {} is runnable on CPU{c}.", name(s, child)));
        }
        OpKind::Exit => cx.say(|| format!("exit() continues on CPU{c}.")),
        OpKind::Work => cx.say(|| format!("The kworker on CPU{c} is done.")),
    }
}
