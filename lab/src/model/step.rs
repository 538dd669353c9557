//! The atomic steps: what each CPU may do next in a state (`enabled`) and what doing it changes
//! (`apply`), with the kernel's own words for it when a person reads along.

use std::fmt::Write;

use serde::{Deserialize, Serialize};

use super::ops;
use super::sched;
use super::state::{Life, Spin, State, Word, NO_TASK, VALUE};
use super::variants::Variant;

/// One atomic action of one CPU. Tasks are named by their slot in the state.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "do", rename_all = "kebab-case")]
pub enum Action {
    /// __schedule() on `cpu`: rq->curr becomes `next` (None: idle); mm_cid_schedout() of the
    /// previous task and mm_cid_schedin() of the next, under the runqueue lock.
    Switch { cpu: u8, next: Option<u8> },
    /// `task`, not running, moves to `cpu`'s runqueue (both runqueue locks held).
    Migrate { cpu: u8, task: u8 },
    /// Another round of the mm_get_cid() loop.
    Retry { cpu: u8 },
    /// rq->curr calls fork(): sched_mm_cid_fork() takes mm_cid::mutex and mm_cid::lock.
    Fork { cpu: u8 },
    /// rq->curr calls exit(): sched_mm_cid_exit().
    Exit { cpu: u8 },
    /// The next step of the fork(), exit() or work running on `cpu`.
    Step { cpu: u8 },
    /// The CPU fixup walk on `cpu` goes to CPU `rq`: takes its runqueue lock and fixes its CID
    /// up, or starts waiting for the lock.
    Visit { cpu: u8, rq: u8 },
    /// rq->curr widens its affinity to every CPU: mm_update_cpus_allowed().
    Affinity { cpu: u8 },
    /// A kworker on idle `cpu` runs mm_cid_work_fn().
    Work { cpu: u8 },
    /// The oldest buffered store of `cpu` to `word` becomes visible to all CPUs.
    Flush { cpu: u8, word: Word },
}

impl Action {
    pub fn cpu(&self) -> u8 {
        match *self {
            Action::Switch { cpu, .. }
            | Action::Migrate { cpu, .. }
            | Action::Retry { cpu }
            | Action::Fork { cpu }
            | Action::Exit { cpu }
            | Action::Step { cpu }
            | Action::Visit { cpu, .. }
            | Action::Affinity { cpu }
            | Action::Work { cpu }
            | Action::Flush { cpu, .. } => cpu,
        }
    }
}

/// Something a step did that the protocol must never do.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Fault {
    /// mm_drop_cid() of a CID that is not allocated: two owners had it.
    DropFree { cid: u8 },
    /// mm_drop_cid() of MM_CID_UNSET or a value past the bitmap (clear_bit() out of bounds).
    DropInvalid { cid: u8 },
    /// A task scheduled out for the last time after exit() still holds a CID: it is lost.
    Leak { task: u8, cid: u8 },
}

/// What a step runs with: the variant, the memory model, and a narration when a person reads.
pub struct Ctx<'a> {
    pub variant: Variant,
    pub weak: bool,
    pub log: Option<&'a mut String>,
    pub fault: Option<Fault>,
}

impl Ctx<'_> {
    pub fn say(&mut self, text: impl FnOnce() -> String) {
        if let Some(log) = self.log.as_deref_mut() {
            if !log.is_empty() {
                log.push(' ');
            }
            log.push_str(&text());
        }
    }

    /// mm_drop_cid(): clear_bit() in the CID bitmap.
    pub fn drop_cid(&mut self, s: &mut State, cid: u8) {
        if cid & !VALUE != 0 || cid >= s.ncpus {
            self.fault.get_or_insert(Fault::DropInvalid { cid });
            return;
        }
        if s.bitmap & (1 << cid) == 0 {
            self.fault.get_or_insert(Fault::DropFree { cid });
        }
        s.bitmap &= !(1 << cid);
    }
}

/// A task's name for people.
pub fn name(s: &State, t: u8) -> String {
    if t == NO_TASK {
        "idle".into()
    } else {
        format!("T{}", s.task(t).name)
    }
}

/// Every action enabled in `s`. A CPU spinning in mm_get_cid() with the pool empty has none:
/// its next round changes nothing.
pub fn enabled(s: &State, weak: bool) -> Vec<Action> {
    let mut out = Vec::new();
    for c in 0..s.ncpus {
        let cpu = s.cpu(c);
        if weak {
            flushes(s, c, &mut out);
        }
        if cpu.spin.is_some() {
            if s.bitmap.count_ones() < s.ncpus as u32 {
                out.push(Action::Retry { cpu: c });
            }
        } else if cpu.op.is_some() {
            if ops::step_enabled(s, c) {
                out.push(Action::Step { cpu: c });
            }
            out.extend(ops::visits(s, c).into_iter().map(|rq| Action::Visit { cpu: c, rq }));
        } else {
            free_cpu(s, c, &mut out);
        }
    }
    out
}

/// A store may overtake older stores to other words, never one to its own word.
fn flushes(s: &State, c: u8, out: &mut Vec<Action>) {
    let buf = &s.cpu(c).buf;
    for (i, store) in buf.iter().enumerate() {
        if let Some(store) = store {
            if !buf[..i].iter().flatten().any(|older| older.word == store.word) {
                out.push(Action::Flush { cpu: c, word: store.word });
            }
        }
    }
}

fn free_cpu(s: &State, c: u8, out: &mut Vec<Action>) {
    let curr = s.cpu(c).curr;
    if curr != NO_TASK {
        out.push(Action::Switch { cpu: c, next: None });
    }
    for t in 0..s.ntasks {
        let task = s.task(t);
        if task.life != Life::Live || t == curr || s.running_on(t).is_some() {
            continue;
        }
        if task.cpu == c {
            out.push(Action::Switch { cpu: c, next: Some(t) });
        } else if c < s.nr_cpus_allowed && !s.rq_locked(task.cpu) {
            out.push(Action::Migrate { cpu: c, task: t });
        }
    }
    let mutex_free = s.mutex_holder().is_none();
    if curr != NO_TASK && s.task(curr).life == Life::Live {
        if mutex_free && s.forks_left > 0 && (0..s.ntasks).any(|t| s.task(t).life == Life::Free) {
            out.push(Action::Fork { cpu: c });
        }
        if mutex_free && s.exits_left > 0 && s.users > 1 {
            out.push(Action::Exit { cpu: c });
        }
        if s.nr_cpus_allowed < s.ncpus && s.lock_holder().is_none() {
            out.push(Action::Affinity { cpu: c });
        }
    }
    if curr == NO_TASK && s.work_queued && mutex_free {
        out.push(Action::Work { cpu: c });
    }
}

/// `s` after `action`. The caller makes sure it is enabled.
pub fn apply(s: &State, action: Action, cx: &mut Ctx) -> State {
    let mut s = s.clone();
    match action {
        Action::Switch { cpu, next } => sched::switch(&mut s, cx, cpu, next.unwrap_or(NO_TASK)),
        Action::Migrate { cpu, task } => sched::migrate(&mut s, cx, cpu, task),
        Action::Retry { cpu } => sched::retry(&mut s, cx, cpu),
        Action::Fork { cpu } => ops::fork(&mut s, cx, cpu),
        Action::Exit { cpu } => ops::exit(&mut s, cx, cpu),
        Action::Step { cpu } => ops::step(&mut s, cx, cpu),
        Action::Visit { cpu, rq } => ops::visit(&mut s, cx, cpu, rq),
        Action::Affinity { cpu } => ops::affinity(&mut s, cx, cpu),
        Action::Work { cpu } => ops::work(&mut s, cx, cpu),
        Action::Flush { cpu, word } => flush(&mut s, cx, cpu, word),
    }
    s
}

fn flush(s: &mut State, cx: &mut Ctx, c: u8, word: Word) {
    let buf = &mut s.cpu_mut(c).buf;
    let i = buf.iter().position(|st| st.is_some_and(|st| st.word == word)).expect("flush of an empty word");
    let store = buf[i].take().unwrap();
    // Keep the buffer packed, oldest first.
    buf[i..].rotate_left(1);
    s.perform(store);
    cx.say(|| format!("CPU{c}'s store {:?} = {} becomes visible to all CPUs.", store.word, store.value));
}

/// The CPUs a spinner's runqueue lock keeps waiting: their operation's next step needs it.
pub fn waiters_on_rq(s: &State, rq: u8) -> Vec<u8> {
    (0..s.ncpus).filter(|&c| s.cpu(c).spin.is_none() && ops::blocked_on_rq(s, c) == Some(rq)).collect()
}

/// The state as lines for people.
pub fn describe(s: &State) -> Vec<String> {
    let mut lines = Vec::new();
    let mut mm = format!(
        "mm: mode {}, max_cids {}, users {}, pcpu_thrs {}, CIDs taken {{",
        super::state::show_mode(s.mode),
        s.max_cids,
        s.users,
        s.pcpu_thrs
    );
    let taken: Vec<String> = (0..s.ncpus).filter(|b| s.bitmap & (1 << b) != 0).map(|b| b.to_string()).collect();
    mm.push_str(&taken.join(","));
    mm.push('}');
    lines.push(mm);
    for c in 0..s.ncpus {
        let cpu = s.cpu(c);
        let mut l = format!("CPU{c}: curr {}, pcp {}", name(s, cpu.curr), super::state::show_cid(cpu.pcp));
        match cpu.spin {
            Some(Spin::SchedIn { .. }) => l.push_str(", spinning in mm_get_cid() with its rq lock held"),
            Some(Spin::Child { locked }) => {
                let _ = write!(
                    l,
                    ", spinning in mm_get_cid() for a child{}",
                    if locked { " with mm_cid::lock held" } else { "" }
                );
            }
            None => {}
        }
        if let Some((kind, pc)) = cpu.op {
            let _ = write!(l, ", in {kind:?} at {pc:?}");
        }
        let buffered: Vec<String> = cpu.buf.iter().flatten().map(|st| format!("{:?}={}", st.word, st.value)).collect();
        if !buffered.is_empty() {
            let _ = write!(l, ", store buffer [{}]", buffered.join(", "));
        }
        lines.push(l);
    }
    for t in 0..s.ntasks {
        let task = s.task(t);
        if task.life != Life::Free {
            lines.push(format!(
                "{}: {:?}{}, {}, on CPU{}",
                name(s, t),
                task.life,
                if task.active { "" } else { " (inactive)" },
                super::state::show_cid(task.cid),
                task.cpu
            ));
        }
    }
    lines
}

/// The per CPU start: from the task start, a fork past max_cids switches the mm to per CPU
/// mode, a task runs on every CPU so each owns a CID, then exits take the users down to
/// pcpu_thrs, where one more exit switches back. Every step is the model's own, so the state is
/// one the protocol reaches.
pub fn cpu_start(task_start: &State, variant: Variant) -> Result<State, String> {
    let mut s = task_start.clone();
    let (forks, exits) = (s.forks_left, s.exits_left);
    s.forks_left = 1;
    s.exits_left = u8::MAX;
    let mut cx = Ctx { variant, weak: false, log: None, fault: None };
    let mut run = |s: &mut State, a: Action| -> Result<(), String> {
        if !enabled(s, false).contains(&a) {
            return Err(format!("the per-CPU start needs {a:?}, which is not enabled"));
        }
        *s = apply(s, a, &mut cx);
        Ok(())
    };
    let finish = |s: &mut State, run: &mut dyn FnMut(&mut State, Action) -> Result<(), String>, c: u8| {
        while s.cpu(c).op.is_some() {
            let a = match ops::visits(s, c).first() {
                Some(&rq) => Action::Visit { cpu: c, rq },
                None => Action::Step { cpu: c },
            };
            run(s, a)?;
        }
        Ok::<(), String>(())
    };
    run(&mut s, Action::Fork { cpu: 0 })?;
    finish(&mut s, &mut run, 0)?;
    if s.mode & super::state::MODE_ONCPU == 0 {
        return Err(format!(
            "{} tasks on {} CPUs never leave per-task mode: the per-CPU start needs more tasks than CPUs",
            s.users, s.ncpus
        ));
    }
    for c in 1..s.ncpus {
        let t = (1..s.ntasks)
            .find(|&t| s.task(t).life == Life::Live && s.running_on(t).is_none())
            .ok_or("not enough tasks to run one on every CPU")?;
        run(&mut s, Action::Migrate { cpu: c, task: t })?;
        run(&mut s, Action::Switch { cpu: c, next: Some(t) })?;
    }
    let mut c = s.ncpus - 1;
    while s.users > s.pcpu_thrs && c > 0 {
        run(&mut s, Action::Exit { cpu: c })?;
        finish(&mut s, &mut run, c)?;
        run(&mut s, Action::Switch { cpu: c, next: None })?;
        c -= 1;
    }
    s.forks_left = forks;
    s.exits_left = exits;
    Ok(s)
}

/// Whether `s` has a spinner in mm_get_cid() right now, on which CPU.
pub fn spinner(s: &State) -> Option<u8> {
    (0..s.ncpus).find(|&c| s.cpu(c).spin.is_some() && s.bitmap.count_ones() >= s.ncpus as u32)
}
