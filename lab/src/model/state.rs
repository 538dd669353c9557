//! The state of one mm's CID protocol as 7.3 keeps it (include/linux/rseq_types.h struct mm_mm_cid,
//! struct sched_mm_cid, struct mm_cid_pcpu), plus what each CPU is in the middle of, small enough
//! to hash by the million; and its canonical form under task and CPU renaming.

pub const MAX_CPUS: usize = 6;
pub const MAX_TASKS: usize = 8;
pub const NO_TASK: u8 = u8::MAX;

// A CID in one byte, with the flag bits in the kernel's order (MM_CID_TRANSIT < MM_CID_ONCPU <
// MM_CID_UNSET) so that cid_on_task()'s `cid < MM_CID_TRANSIT` reads the same.
pub const TRANSIT: u8 = 0x10;
pub const ONCPU: u8 = 0x20;
pub const UNSET: u8 = 0x40;
pub const VALUE: u8 = 0x0f;

pub fn on_cpu(cid: u8) -> bool {
    cid & ONCPU != 0
}
pub fn in_transit(cid: u8) -> bool {
    cid & TRANSIT != 0
}
pub fn on_task(cid: u8) -> bool {
    cid < TRANSIT
}

/// mm_cid::mode's bits (or the `percpu` and `transit` fields of the two-field layout).
pub const MODE_ONCPU: u8 = 1;
pub const MODE_TRANSIT: u8 = 2;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Default)]
pub enum Life {
    /// No task in this slot (never forked, or exited and scheduled out for the last time).
    #[default]
    Free,
    /// A user of the mm, on `cpu`'s runqueue or running there.
    Live,
    /// Being forked: a user already (sched_mm_cid_add_user), not runnable until fork returns.
    Forking,
    /// Past sched_mm_cid_exit(): still running its last instructions, never scheduled in again.
    Exiting,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Default)]
pub struct Task {
    pub life: Life,
    /// sched_mm_cid::active.
    pub active: bool,
    /// sched_mm_cid::cid.
    pub cid: u8,
    /// task_cpu().
    pub cpu: u8,
    /// The task's name for people (T0, T1, ... in creation order); not part of the canonical form.
    pub name: u8,
}

/// Who spins in mm_get_cid() on a CPU, and what the CID becomes once it has one.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Spin {
    /// mm_cid_schedin() of rq->curr with the runqueue lock held; `or` is OR'ed on the new CID
    /// (MM_CID_ONCPU from mm_cid_from_cpu(), MM_CID_TRANSIT from the mode snapshot).
    SchedIn { or: u8 },
    /// sched_mm_cid_fork() allocating the child's CID; `locked`: with mm_cid::lock held and
    /// interrupts off (no mode change), else after the fixup, with only the mutex.
    Child { locked: bool },
}

/// A fork(), exit() or the deferred work running on a CPU: they hold mm_cid::mutex throughout.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum OpKind {
    Fork {
        child: u8,
    },
    Exit,
    /// mm_cid_work_fn() in a kworker (rq->curr is not a task of the mm).
    Work,
}

/// Where an operation is, between its atomic steps.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Pc {
    /// The mode switch's stores, `done` of them performed (mm_update_max_cids(), under mm_cid::lock).
    ModeStore { done: u8, to_percpu: bool },
    /// smp_mb() after the switch, current's CID transferred or dropped, mm_cid::lock released.
    Barrier { to_percpu: bool },
    /// mm_cid_fixup_tasks_to_cpus(): the next user to visit, by position in the user list.
    WalkTasks(u8),
    /// mm_cid_fixup_cpus_to_tasks(): `done`, the CPUs visited (a mask); `next`, the CPU whose
    /// runqueue lock it waits for, or NO_TASK. The kernel visits them in index order; CPUs are
    /// interchangeable, so the model lets the walk take them in any order (every order is index
    /// order after renaming the CPUs), which keeps CPU symmetry while a walk runs. It commits to
    /// a CPU when it finds its lock held, as the kernel spins on that lock.
    WalkCpus { done: u8, next: u8 },
    /// mm_cid_complete_transit(): smp_mb() and the store that ends the transition.
    Complete { to_percpu: bool },
    /// Done: mm_cid::lock and mm_cid::mutex are released once the CPU's stores are visible.
    Release,
}

/// A word of the mm that a store buffer holds stores to.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Word {
    /// mm_cid::mode, both bits in one store.
    Mode,
    /// The two-field layout's `percpu`.
    Percpu,
    /// The two-field layout's `transit`.
    Transit,
    /// mm_cid::max_cids.
    MaxCids,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Store {
    pub word: Word,
    pub value: u8,
}

pub const BUF: usize = 3;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Cpu {
    /// rq->curr: a task slot, or NO_TASK (idle, or a kworker: no task of the mm).
    pub curr: u8,
    /// mm_cid_pcpu::cid.
    pub pcp: u8,
    /// Spinning in mm_get_cid().
    pub spin: Option<Spin>,
    /// The fork(), exit() or work this CPU runs, if any.
    pub op: Option<(OpKind, Pc)>,
    /// Stores not yet visible to other CPUs, oldest first (weak memory mode only).
    pub buf: [Option<Store>; BUF],
}

impl Default for Cpu {
    fn default() -> Cpu {
        Cpu { curr: NO_TASK, pcp: UNSET, spin: None, op: None, buf: [None; BUF] }
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct State {
    pub ncpus: u8,
    pub ntasks: u8,
    pub tasks: [Task; MAX_TASKS],
    /// mm_cid::user_list, head first (hlist_add_head: the newest user is visited first).
    pub list: [u8; MAX_TASKS],
    /// mm_cid::users, the length of `list`.
    pub users: u8,
    pub cpus: [Cpu; MAX_CPUS],
    /// mm_cidmask(): bit n set when CID n is taken.
    pub bitmap: u8,
    /// mm_cid::mode as memory holds it (MODE_ONCPU, MODE_TRANSIT).
    pub mode: u8,
    pub max_cids: u8,
    pub pcpu_thrs: u8,
    pub nr_cpus_allowed: u8,
    pub update_deferred: bool,
    /// The irq_work / work item of mm_update_cpus_allowed() is queued.
    pub work_queued: bool,
    pub forks_left: u8,
    pub exits_left: u8,
    pub next_name: u8,
}

/// Hashing is most of the search's time: the state goes into a byte array first and is hashed a
/// word at a time, instead of field by field.
impl std::hash::Hash for State {
    fn hash<H: std::hash::Hasher>(&self, h: &mut H) {
        let mut b = [0u8; 8 * 24];
        let mut n = 0;
        let mut put = |x: u8| {
            b[n] = x;
            n += 1;
        };
        for t in &self.tasks[..self.ntasks as usize] {
            put(t.life as u8 | (t.active as u8) << 3);
            put(t.cid);
            put(t.cpu);
            put(t.name);
        }
        for &t in &self.list[..self.users as usize] {
            put(t);
        }
        for c in &self.cpus[..self.ncpus as usize] {
            put(c.curr);
            put(c.pcp);
            put(match c.spin {
                None => 0,
                Some(Spin::SchedIn { or }) => 1 | or,
                Some(Spin::Child { locked }) => 2 | (locked as u8) << 2,
            });
            let (kind, child, pc, a, b2) = match c.op {
                None => (0, 0, 0, 0, 0),
                Some((kind, pc)) => {
                    let (k, child) = match kind {
                        OpKind::Fork { child } => (1, child),
                        OpKind::Exit => (2, 0),
                        OpKind::Work => (3, 0),
                    };
                    let (p, a, b2) = match pc {
                        Pc::ModeStore { done, to_percpu } => (1, done, to_percpu as u8),
                        Pc::Barrier { to_percpu } => (2, to_percpu as u8, 0),
                        Pc::WalkTasks(i) => (3, i, 0),
                        Pc::WalkCpus { done, next } => (4, done, next),
                        Pc::Complete { to_percpu } => (5, to_percpu as u8, 0),
                        Pc::Release => (6, 0, 0),
                    };
                    (k, child, p, a, b2)
                }
            };
            put(kind | pc << 2);
            put(child);
            put(a);
            put(b2);
            for st in &c.buf {
                put(st.map_or(0, |st| 1 + st.word as u8));
                put(st.map_or(0, |st| st.value));
            }
        }
        for x in [
            self.users,
            self.bitmap,
            self.mode,
            self.max_cids,
            self.pcpu_thrs,
            self.nr_cpus_allowed,
            self.update_deferred as u8 | (self.work_queued as u8) << 1,
            self.forks_left,
            self.exits_left,
            self.next_name,
        ] {
            put(x);
        }
        for chunk in b[..n].chunks(8) {
            let mut w = [0u8; 8];
            w[..chunk.len()].copy_from_slice(chunk);
            h.write_u64(u64::from_le_bytes(w));
        }
    }
}

/// A state's rendering for people: one line per CPU and per task.
impl State {
    /// `cpus` CPUs, `users` tasks T0.. in per task mode, each with its own CID (thread creation
    /// order), T0 running on CPU0, the others asleep on CPU0's runqueue: the seed's starting point.
    pub fn task_start(cpus: u8, tasks: u8, allowed: u8, forks: u8, exits: u8) -> State {
        let users = tasks - 1;
        let mut s = State {
            ncpus: cpus,
            ntasks: tasks,
            tasks: [Task::default(); MAX_TASKS],
            list: [0; MAX_TASKS],
            users,
            cpus: [Cpu::default(); MAX_CPUS],
            bitmap: 0,
            mode: 0,
            max_cids: 0,
            pcpu_thrs: 0,
            nr_cpus_allowed: allowed,
            update_deferred: false,
            work_queued: false,
            forks_left: forks,
            exits_left: exits,
            next_name: users,
        };
        for t in 0..users {
            s.tasks[t as usize] = Task { life: Life::Live, active: true, cid: t, cpu: 0, name: t };
            s.bitmap |= 1 << t;
            // hlist_add_head: the newest first.
            s.list[(users - 1 - t) as usize] = t;
        }
        let opt = allowed.min(users);
        s.max_cids = (opt + opt / 4).min(cpus);
        s.cpus[0].curr = 0;
        s.cpus[0].pcp = 0;
        s
    }

    pub fn task(&self, t: u8) -> &Task {
        &self.tasks[t as usize]
    }
    pub fn task_mut(&mut self, t: u8) -> &mut Task {
        &mut self.tasks[t as usize]
    }
    pub fn cpu(&self, c: u8) -> &Cpu {
        &self.cpus[c as usize]
    }
    pub fn cpu_mut(&mut self, c: u8) -> &mut Cpu {
        &mut self.cpus[c as usize]
    }
    pub fn users(&self) -> &[u8] {
        &self.list[..self.users as usize]
    }

    /// The CPU a task runs on, if it is some CPU's rq->curr.
    pub fn running_on(&self, t: u8) -> Option<u8> {
        (0..self.ncpus).find(|&c| self.cpu(c).curr == t)
    }

    /// Whether `c`'s runqueue lock is held between steps: only a CPU spinning in
    /// mm_cid_schedin() holds it that long, every other holder takes and drops it in one step.
    pub fn rq_locked(&self, c: u8) -> bool {
        matches!(self.cpu(c).spin, Some(Spin::SchedIn { .. }))
    }

    /// mm_cid::mutex's holder (fork, exit and the work hold it for the whole operation).
    pub fn mutex_holder(&self) -> Option<u8> {
        (0..self.ncpus).find(|&c| self.cpu(c).op.is_some())
    }

    /// mm_cid::lock's holder: the mode switch until its barrier step, a locked child allocation.
    pub fn lock_holder(&self) -> Option<u8> {
        (0..self.ncpus).find(|&c| {
            let cpu = self.cpu(c);
            matches!(cpu.op, Some((_, Pc::ModeStore { .. } | Pc::Barrier { .. })))
                || cpu.spin == Some(Spin::Child { locked: true })
        })
    }

    /// A word's value as CPU `c` sees it: its own newest buffered store, else memory.
    pub fn read(&self, c: u8, word: Word) -> u8 {
        let own = self
            .cpu(c)
            .buf
            .iter()
            .flatten()
            .filter(|s| s.word == word || (word != Word::MaxCids && s.word == Word::Mode));
        let memory = self.memory(word);
        own.fold(memory, |v, s| apply_store(v, word, *s))
    }

    fn memory(&self, word: Word) -> u8 {
        match word {
            Word::MaxCids => self.max_cids,
            _ => self.mode,
        }
    }

    /// The mode bits CPU `c` sees. In the two-field layouts each bit comes from its own word.
    pub fn read_mode(&self, c: u8) -> u8 {
        let percpu = self.read(c, Word::Percpu) & MODE_ONCPU;
        let transit = self.read(c, Word::Transit) & MODE_TRANSIT;
        percpu | transit
    }

    /// A store by CPU `c`: into its buffer in weak mode, else straight to memory.
    pub fn store(&mut self, c: u8, weak: bool, store: Store) {
        if weak {
            let slot = self.cpu_mut(c).buf.iter_mut().find(|s| s.is_none()).expect("store buffer overflow");
            *slot = Some(store);
        } else {
            self.perform(store);
        }
    }

    /// A store becomes visible to every CPU.
    pub fn perform(&mut self, store: Store) {
        match store.word {
            Word::MaxCids => self.max_cids = store.value,
            word => self.mode = apply_store(self.mode, word, store),
        }
    }

    pub fn buffer_empty(&self, c: u8) -> bool {
        self.cpu(c).buf.iter().all(Option::is_none)
    }
}

fn apply_store(old: u8, word: Word, s: Store) -> u8 {
    match (word, s.word) {
        (Word::MaxCids, _) => s.value,
        (_, Word::Mode) => s.value,
        (_, Word::Percpu) => (old & !MODE_ONCPU) | (s.value & MODE_ONCPU),
        (_, Word::Transit) => (old & !MODE_TRANSIT) | (s.value & MODE_TRANSIT),
        (_, Word::MaxCids) => old,
    }
}

/// The state with tasks named by their place in the user list (then exiting and forking tasks,
/// then free slots) and interchangeable CPUs sorted, so that states which differ only in names
/// hash alike. Task names for people are cleared: they are not part of the protocol.
pub fn canonical(s: &State) -> State {
    // Tasks: list order first, then those past exit() (in any order for now), free slots last.
    let mut order: Vec<u8> = s.users().to_vec();
    order.extend((0..s.ntasks).filter(|t| !s.users().contains(t) && s.task(*t).life != Life::Free));
    let mut c = rename_tasks(s, &order);
    for (i, slot) in c.list.iter_mut().enumerate() {
        *slot = if i < s.users as usize { i as u8 } else { 0 };
    }
    c.next_name = 0;
    // CPU keys name tasks past exit() by content, so the CPUs' order does not depend on theirs;
    // then those tasks are ordered by content with the CPUs' final names.
    sort_cpus(&mut c);
    let mut order: Vec<u8> = (0..c.users).collect();
    let mut rest: Vec<u8> = (c.users..c.ntasks).filter(|&t| c.task(t).life != Life::Free).collect();
    rest.sort_by_key(|&t| *c.task(t));
    order.extend(rest);
    rename_tasks(&c, &order)
}

/// `s` with task `order[i]` in slot i (the slots not named become free), references renamed.
fn rename_tasks(s: &State, order: &[u8]) -> State {
    let mut c = s.clone();
    let mut rename = [NO_TASK; MAX_TASKS];
    for (new, &old) in order.iter().enumerate() {
        rename[old as usize] = new as u8;
    }
    let map = |t: u8| if t == NO_TASK { NO_TASK } else { rename[t as usize] };
    for new in 0..s.ntasks as usize {
        c.tasks[new] = match order.get(new) {
            Some(&old) => Task { name: 0, ..*s.task(old) },
            None => Task::default(),
        };
    }
    for i in 0..s.users as usize {
        c.list[i] = map(s.list[i]);
    }
    for cpu in c.cpus[..s.ncpus as usize].iter_mut() {
        cpu.curr = map(cpu.curr);
        if let Some((OpKind::Fork { child }, pc)) = cpu.op {
            cpu.op = Some((OpKind::Fork { child: map(child) }, pc));
        }
    }
    c
}

/// Renames interchangeable CPUs (those on the same side of the allowed mask) by their content,
/// whether a CPU walk has visited them, and the tasks queued on them.
fn sort_cpus(c: &mut State) {
    let n = c.ncpus as usize;
    let walk = c.cpus[..n].iter().find_map(|cpu| match cpu.op {
        Some((_, Pc::WalkCpus { done, next })) => Some((done, next)),
        _ => None,
    });
    let key = |s: &State, i: usize| {
        let visited = walk.map(|(done, next)| (done >> i & 1, next as usize == i));
        let queued: u8 =
            (0..s.ntasks).filter(|&t| t < s.users && s.task(t).cpu as usize == i).fold(0, |m, t| m | 1 << t);
        let mut cpu = s.cpus[i];
        let mut past_exit = None;
        if cpu.curr != NO_TASK && cpu.curr >= s.users {
            // A task past exit() by its content, not its (yet to be decided) name.
            past_exit = Some(Task { cpu: 0, ..*s.task(cpu.curr) });
            cpu.curr = NO_TASK - 1;
        }
        (visited, cpu, past_exit, queued)
    };
    let mut perm: Vec<usize> = (0..n).collect();
    for allowed in [true, false] {
        let slots: Vec<usize> = (0..n).filter(|&i| (i < c.nr_cpus_allowed as usize) == allowed).collect();
        let mut members = slots.clone();
        members.sort_by_key(|&i| key(c, i));
        for (slot, member) in slots.iter().zip(members) {
            perm[*slot] = member;
        }
    }
    if perm.iter().enumerate().all(|(i, &p)| i == p) {
        return;
    }
    let mut to_new = [0u8; MAX_CPUS];
    for (new, &old) in perm.iter().enumerate() {
        to_new[old] = new as u8;
    }
    let old = c.cpus;
    for (new, &o) in perm.iter().enumerate() {
        c.cpus[new] = old[o];
    }
    for t in 0..c.ntasks as usize {
        if c.tasks[t].life != Life::Free {
            c.tasks[t].cpu = to_new[c.tasks[t].cpu as usize];
        }
    }
    for cpu in c.cpus[..n].iter_mut() {
        if let Some((kind, Pc::WalkCpus { done, next })) = cpu.op {
            let done = (0..n).filter(|&o| done >> o & 1 != 0).fold(0u8, |m, o| m | 1 << to_new[o]);
            let next = if next == NO_TASK { NO_TASK } else { to_new[next as usize] };
            cpu.op = Some((kind, Pc::WalkCpus { done, next }));
        }
    }
}

/// A CID for people: "CID 2", "CID 2 (ONCPU)", "CID 1 (TRANSIT)", "UNSET".
pub fn show_cid(cid: u8) -> String {
    if cid & UNSET != 0 {
        return "UNSET".into();
    }
    let mut s = format!("CID {}", cid & VALUE);
    if on_cpu(cid) {
        s.push_str(" (ONCPU)");
    }
    if in_transit(cid) {
        s.push_str(" (TRANSIT)");
    }
    s
}

pub fn show_mode(mode: u8) -> String {
    let base = if mode & MODE_ONCPU != 0 { "per-CPU" } else { "per-task" };
    if mode & MODE_TRANSIT != 0 {
        format!("{base} | TRANSIT")
    } else {
        base.to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cid_bits_read_as_the_kernel_reads_them() {
        // (cid, on_task, on_cpu, in_transit)
        let cases = [
            (3, true, false, false),
            (3 | ONCPU, false, true, false),
            (3 | TRANSIT, false, false, true),
            (UNSET, false, false, false),
        ];
        for (cid, task, cpu, transit) in cases {
            assert_eq!((on_task(cid), on_cpu(cid), in_transit(cid)), (task, cpu, transit), "{}", show_cid(cid));
        }
    }

    #[test]
    fn renamed_states_are_one_canonical_state() {
        let a = State::task_start(4, 5, 4, 1, 1);
        let mut b = a.clone();
        // The same state with CPU0's contents on CPU3.
        b.cpus.swap(0, 3);
        for t in 0..4 {
            b.tasks[t].cpu = 3;
        }
        assert_eq!(canonical(&a), canonical(&b));
    }
}
