//! The scheduler's side of the protocol (kernel/sched/sched.h): mm_cid_schedout(),
//! mm_cid_schedin() with mm_cid_from_cpu() / mm_cid_from_task(), mm_get_cid() and its spin,
//! mm_cid_converge(), and a migration between runqueues.

use super::state::{
    in_transit, on_cpu, on_task, show_cid, show_mode, Life, Spin, State, Word, MODE_ONCPU, MODE_TRANSIT, NO_TASK,
    ONCPU, TRANSIT, UNSET, VALUE,
};
use super::step::{name, Ctx, Fault};

/// __mm_get_cid(): the first free CID below `max`, taken; None is MM_CID_UNSET. The kernel's
/// find_first_zero_bit() + test_and_set_bit() can also fail when another CPU takes the bit in
/// between; that only adds a round to the loop, so the model takes the pair as one atomic step.
pub fn try_get(s: &mut State, max: u8) -> Option<u8> {
    let cid = (0..max.min(s.ncpus)).find(|b| s.bitmap & (1 << b) == 0)?;
    s.bitmap |= 1 << cid;
    Some(cid)
}

/// __schedule() on CPU `c` switching to `next`: rq->curr = next, then mm_cid_switch_to().
pub fn switch(s: &mut State, cx: &mut Ctx, c: u8, next: u8) {
    let prev = s.cpu(c).curr;
    s.cpu_mut(c).curr = next;
    if prev != NO_TASK {
        schedout(s, cx, c, prev);
        if s.task(prev).life == Life::Exiting {
            let cid = s.task(prev).cid;
            cx.say(|| format!("{} is gone.", name(s, prev)));
            if cid != UNSET {
                cx.fault.get_or_insert(Fault::Leak { task: s.task(prev).name, cid });
            }
            *s.task_mut(prev) = Default::default();
        }
    }
    if next == NO_TASK {
        cx.say(|| format!("CPU{c} goes idle."));
    } else {
        schedin(s, cx, c, next);
    }
}

/// mm_cid_schedout(): a CID in transit goes back to the pool, or, once the transition is over
/// and the CID is in range (patch 4/4), to the task and the CPU per the mode.
fn schedout(s: &mut State, cx: &mut Ctx, c: u8, prev: u8) {
    let cid = s.task(prev).cid;
    if !in_transit(cid) {
        cx.say(|| format!("{} schedules out of CPU{c}.", name(s, prev)));
        return;
    }
    let mode = s.read_mode(c);
    let mut cid = cid & !TRANSIT;
    let max = s.read(c, Word::MaxCids);
    if mode & MODE_TRANSIT == 0 && cid < max {
        if mode & MODE_ONCPU != 0 {
            cid |= ONCPU;
        }
        s.cpu_mut(c).pcp = cid;
        s.task_mut(prev).cid = cid;
        cx.say(|| {
            format!("{} schedules out, observes mode {}, keeps {}.", name(s, prev), show_mode(mode), show_cid(cid))
        });
    } else {
        cx.drop_cid(s, cid);
        s.task_mut(prev).cid = UNSET;
        cx.say(|| {
            format!(
                "{} schedules out, observes mode {}, drops CID {cid} into the pool.",
                name(s, prev),
                show_mode(mode)
            )
        });
    }
}

/// mm_cid_schedin(): the mode read once (READ_ONCE(mm->mm_cid.mode); in the two-field layouts
/// percpu and transit, taken here as one snapshot), then the per task or per CPU path.
fn schedin(s: &mut State, cx: &mut Ctx, c: u8, t: u8) {
    if !s.task(t).active {
        cx.say(|| format!("{} schedules in on CPU{c}.", name(s, t)));
        return;
    }
    let mode = s.read_mode(c);
    cx.say(|| {
        let percpu = if mode & MODE_ONCPU != 0 { "percpu == true" } else { "percpu == false" };
        let transit = if mode & MODE_TRANSIT != 0 { "transit set" } else { "transit clear" };
        format!("{} schedules in on CPU{c} and observes {percpu}, {transit};", name(s, t))
    });
    if mode & MODE_ONCPU == 0 {
        from_task(s, cx, c, t, mode & MODE_TRANSIT != 0);
    } else {
        from_cpu(s, cx, c, t, mode & MODE_TRANSIT != 0);
    }
}

/// mm_cid_from_cpu().
fn from_cpu(s: &mut State, cx: &mut Ctx, c: u8, t: u8, transit: bool) {
    let max = s.read(c, Word::MaxCids);
    let tcid = s.task(t).cid;
    let mut cpu_cid = s.cpu(c).pcp;
    if on_cpu(cpu_cid & tcid) {
        if cpu_cid & !ONCPU < max {
            s.task_mut(t).cid = cpu_cid;
            cx.say(|| format!("it keeps CPU{c}'s {}.", show_cid(cpu_cid)));
            return;
        }
        cpu_cid = converge(s, cpu_cid, max);
    } else {
        if on_task(tcid) {
            if on_cpu(cpu_cid) {
                s.task_mut(t).cid = UNSET;
                cx.drop_cid(s, tcid);
                cx.say(|| format!("CPU{c} has a CID, so it drops its own CID {tcid};"));
            } else {
                cpu_cid = tcid | ONCPU;
                cx.say(|| format!("it transfers its CID {tcid} to CPU{c};"));
            }
        }
        if !on_cpu(cpu_cid) {
            let or = if transit { TRANSIT } else { ONCPU };
            if !get_cid(s, cx, c, max, Spin::SchedIn { or }) {
                return;
            }
            cpu_cid = s.cpu(c).pcp | ONCPU;
        }
        if transit {
            cpu_cid = (cpu_cid & !ONCPU) | TRANSIT;
        }
    }
    s.cpu_mut(c).pcp = cpu_cid;
    s.task_mut(t).cid = cpu_cid;
    cx.say(|| format!("CPU{c} and {} now have {}.", name(s, t), show_cid(cpu_cid)));
}

/// mm_cid_from_task().
fn from_task(s: &mut State, cx: &mut Ctx, c: u8, t: u8, transit: bool) {
    let max = s.read(c, Word::MaxCids);
    let mut tcid = s.task(t).cid;
    let cpu_cid = s.cpu(c).pcp;
    if on_task(tcid | cpu_cid) {
        if tcid < max {
            s.cpu_mut(c).pcp = tcid;
            cx.say(|| format!("it keeps its CID {tcid}."));
            return;
        }
        tcid = converge(s, tcid, max);
    } else {
        if on_cpu(cpu_cid) {
            if on_task(tcid) {
                s.cpu_mut(c).pcp = cpu_cid & !ONCPU;
                cx.drop_cid(s, cpu_cid & !ONCPU);
                cx.say(|| format!("it has its own CID, so CPU{c}'s CID {} goes back to the pool;", cpu_cid & VALUE));
            } else {
                tcid = cpu_cid & !ONCPU;
                cx.say(|| format!("it takes over CPU{c}'s CID {tcid};"));
            }
        }
        if !on_task(tcid) {
            let or = if transit { TRANSIT } else { 0 };
            if !get_cid(s, cx, c, max, Spin::SchedIn { or }) {
                return;
            }
            tcid = s.cpu(c).pcp;
        }
        if transit {
            tcid |= TRANSIT;
        }
    }
    s.cpu_mut(c).pcp = tcid;
    s.task_mut(t).cid = tcid;
    cx.say(|| format!("{} now has {}.", name(s, t), show_cid(tcid)));
}

/// mm_get_cid()'s first round, below max_cids. On success the plain CID is left in the CPU's
/// pcp for the caller to finish with; on failure the CPU starts spinning (rounds below
/// num_possible_cpus(), `retry`) and the caller stops.
fn get_cid(s: &mut State, cx: &mut Ctx, c: u8, max: u8, spin: Spin) -> bool {
    match try_get(s, max) {
        Some(cid) => {
            s.cpu_mut(c).pcp = cid;
            cx.say(|| format!("it allocates CID {cid};"));
            true
        }
        None => {
            s.cpu_mut(c).spin = Some(spin);
            cx.say(|| format!("it must allocate a CID with CPU{c}'s runqueue lock held, but the pool is empty below max_cids {max}: it loops in mm_get_cid()."));
            false
        }
    }
}

/// mm_cid_converge(): a CID past max_cids is swapped for a free one below it, if there is one.
fn converge(s: &mut State, orig: u8, max: u8) -> u8 {
    let cid = orig & !ONCPU;
    if cid < max {
        return orig;
    }
    match try_get(s, max) {
        Some(new) => {
            s.bitmap &= !(1 << cid);
            new | (orig & ONCPU)
        }
        None => orig,
    }
}

/// A round of the mm_get_cid() loop on CPU `c` (the caller saw a free CID).
pub fn retry(s: &mut State, cx: &mut Ctx, c: u8) {
    let cid = try_get(s, s.ncpus).expect("retry without a free CID");
    let spin = s.cpu_mut(c).spin.take().expect("retry without a spinner");
    match spin {
        Spin::SchedIn { or } => {
            let t = s.cpu(c).curr;
            let cid = cid | or;
            s.cpu_mut(c).pcp = cid;
            s.task_mut(t).cid = cid;
            cx.say(|| {
                format!(
                    "CPU{c} finally gets a CID in mm_get_cid(): CPU{c} and {} now have {}.",
                    name(s, t),
                    show_cid(cid)
                )
            });
        }
        Spin::Child { .. } => super::ops::child_got_cid(s, cx, c, cid),
    }
}

/// The load balancer (or a wakeup) moves a task that is not running to CPU `c`.
pub fn migrate(s: &mut State, cx: &mut Ctx, c: u8, t: u8) {
    let from = s.task(t).cpu;
    s.task_mut(t).cpu = c;
    cx.say(|| format!("{} is migrated from CPU{from} to CPU{c}.", name(s, t)));
}
