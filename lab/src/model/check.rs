//! The explicit-state checker: breadth first over every interleaving from the start states,
//! canonical states in a hash table, a liveness search where a CPU spins in mm_get_cid(), and the
//! shortest path to a violation turned back into the model's actions with stable task names.

use std::hash::{BuildHasher, Hash, Hasher};
use std::time::Instant;

use hashbrown::HashTable;

use super::state::{canonical, Spin, State, NO_TASK, UNSET, VALUE};
use super::step::{self, Action, Ctx, Fault};
use super::variants::Variant;

/// Which start states the search begins from.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize, clap::ValueEnum)]
#[serde(rename_all = "kebab-case")]
pub enum Start {
    /// Per task mode, tasks-1 users each with its own CID: the seed's fork() scenario.
    Task,
    /// Per CPU mode at the switch-back threshold, every CPU owning a CID: the exit() scenarios.
    Cpu,
    /// Both.
    Both,
}

#[derive(Clone, Debug)]
pub struct Config {
    pub variant: Variant,
    pub cpus: u8,
    pub tasks: u8,
    pub allowed: u8,
    pub max_steps: u32,
    pub max_forks: u8,
    pub max_exits: u8,
    pub weak: bool,
    pub start: Start,
}

/// A property the protocol must keep.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Violation {
    /// CPU `spinner` loops in mm_get_cid() with its runqueue lock held, CPU `waiter` waits for
    /// that lock in a fixup walk, and no interleaving ever frees a CID.
    LiveLock { spinner: u8, waiter: Option<u8> },
    /// CPU `spinner` loops in mm_get_cid() under sched_mm_cid_fork() and no interleaving ever
    /// frees a CID.
    ForkLockup { spinner: u8 },
    /// Two running tasks of the mm have the same CID.
    Duplicate { cid: u8 },
    /// A CID at or past the number of possible CPUs.
    OutOfRange { cid: u8 },
    /// A step did something the protocol must never do.
    Fault(Fault),
}

#[derive(Clone, Debug)]
pub struct Stats {
    pub states: u64,
    pub transitions: u64,
    pub depth: u32,
    pub seconds: f64,
    /// The step bound cut the search short: some state at the bound has an unexplored successor.
    pub bound_hit: bool,
}

#[derive(Clone, Debug)]
pub struct Counterexample {
    pub violation: Violation,
    pub start: Start,
    /// The start state (raw, with task names) and the actions from it.
    pub root: State,
    pub actions: Vec<Action>,
}

pub struct Outcome {
    pub stats: Stats,
    pub counterexample: Option<Counterexample>,
}

/// FxHash: the states are small and hashed by the million.
#[derive(Default, Clone, Copy)]
struct Fx(u64);

impl Hasher for Fx {
    fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.write_u64(b as u64);
        }
    }
    fn write_u8(&mut self, i: u8) {
        self.write_u64(i as u64)
    }
    fn write_u64(&mut self, i: u64) {
        self.0 = (self.0.rotate_left(5) ^ i).wrapping_mul(0x51_7c_c1_b7_27_22_0a_95);
    }
    fn finish(&self) -> u64 {
        self.0
    }
}

#[derive(Default, Clone, Copy)]
struct FxBuild;
impl BuildHasher for FxBuild {
    type Hasher = Fx;
    fn build_hasher(&self) -> Fx {
        Fx::default()
    }
}

fn hash(s: &State) -> u64 {
    let mut h = Fx::default();
    s.hash(&mut h);
    h.finish()
}

/// The visited set: canonical states, each with the node it was first reached from.
struct Graph {
    nodes: Vec<State>,
    parents: Vec<u32>,
    /// Each node's hash, so that growing the table does not hash every state again.
    hashes: Vec<u64>,
    table: HashTable<u32>,
}

impl Graph {
    fn new() -> Graph {
        Graph { nodes: Vec::new(), parents: Vec::new(), hashes: Vec::new(), table: HashTable::new() }
    }

    fn contains(&self, s: &State) -> bool {
        self.table.find(hash(s), |&i| self.nodes[i as usize] == *s).is_some()
    }

    /// Adds `s` if new; its index either way, and whether it was new.
    fn insert(&mut self, s: State, parent: u32) -> (u32, bool) {
        let h = hash(&s);
        if let Some(&i) = self.table.find(h, |&i| self.nodes[i as usize] == s) {
            return (i, false);
        }
        let i = self.nodes.len() as u32;
        self.nodes.push(s);
        self.parents.push(parent);
        self.hashes.push(h);
        let hashes = &self.hashes;
        self.table.insert_unique(h, i, |&j| hashes[j as usize]);
        (i, true)
    }

    fn path(&self, mut i: u32) -> Vec<u32> {
        let mut path = vec![i];
        while self.parents[i as usize] != u32::MAX {
            i = self.parents[i as usize];
            path.push(i);
        }
        path.reverse();
        path
    }
}

/// The start states of a configuration, raw (with task names), each with its kind.
pub fn roots(cfg: &Config) -> Result<Vec<(Start, State)>, String> {
    let task = State::task_start(cfg.cpus, cfg.tasks, cfg.allowed, cfg.max_forks, cfg.max_exits);
    let mut out = Vec::new();
    if matches!(cfg.start, Start::Task | Start::Both) {
        out.push((Start::Task, task.clone()));
    }
    if matches!(cfg.start, Start::Cpu | Start::Both) {
        let full = State::task_start(cfg.cpus, cfg.tasks, cfg.cpus, cfg.max_forks, cfg.max_exits);
        out.push((Start::Cpu, step::cpu_start(&full, cfg.variant)?));
    }
    Ok(out)
}

/// Explores every interleaving within the bounds; the first violation found at the smallest
/// depth ends the search.
pub fn check(cfg: &Config) -> Result<Outcome, String> {
    let started = Instant::now();
    let roots = roots(cfg)?;
    let mut g = Graph::new();
    let mut root_of = Vec::new();
    for (start, raw) in &roots {
        let (i, _) = g.insert(canonical(raw), u32::MAX);
        root_of.push((i, *start, raw.clone()));
    }
    let mut transitions = 0u64;
    let mut stuck_memo = LiveMemo::default();
    let (mut lo, mut hi) = (0usize, g.nodes.len());
    let mut depth = 0u32;
    let mut bound_hit = false;
    let mut found: Option<(u32, Option<Action>, Violation)> = None;
    'levels: while lo < hi {
        if depth == cfg.max_steps {
            bound_hit = (lo..hi).any(|i| has_new_successor(&g, &g.nodes[i], cfg));
            break;
        }
        for i in lo..hi {
            let s = g.nodes[i].clone();
            for a in step::enabled(&s, cfg.weak) {
                transitions += 1;
                let mut cx = Ctx { variant: cfg.variant, weak: cfg.weak, log: None, fault: None };
                let next = step::apply(&s, a, &mut cx);
                if let Some(fault) = cx.fault {
                    found = Some((i as u32, Some(a), Violation::Fault(fault)));
                    break 'levels;
                }
                let (j, new) = g.insert(canonical(&next), i as u32);
                if !new {
                    continue;
                }
                if let Some(v) = safety(&next).or_else(|| liveness(&next, cfg, &mut stuck_memo)) {
                    found = Some((j, None, v));
                    break 'levels;
                }
            }
        }
        depth += 1;
        (lo, hi) = (hi, g.nodes.len());
    }
    let stats =
        Stats { states: g.nodes.len() as u64, transitions, depth, seconds: started.elapsed().as_secs_f64(), bound_hit };
    let counterexample = found.map(|(node, last, violation)| rebuild(&g, &root_of, node, last, violation, cfg));
    Ok(Outcome { stats, counterexample })
}

fn has_new_successor(g: &Graph, s: &State, cfg: &Config) -> bool {
    step::enabled(s, cfg.weak).into_iter().any(|a| {
        let mut cx = Ctx { variant: cfg.variant, weak: cfg.weak, log: None, fault: None };
        !g.contains(&canonical(&step::apply(s, a, &mut cx)))
    })
}

/// CIDs unique among running tasks, every CID below the number of possible CPUs.
pub fn safety(s: &State) -> Option<Violation> {
    let mut seen = 0u16;
    for c in 0..s.ncpus {
        let cpu = s.cpu(c);
        if cpu.pcp & UNSET == 0 && cpu.pcp & VALUE >= s.ncpus {
            return Some(Violation::OutOfRange { cid: cpu.pcp & VALUE });
        }
        let t = cpu.curr;
        if t == NO_TASK || cpu.spin.is_some() || !s.task(t).active {
            continue;
        }
        let cid = s.task(t).cid;
        if cid & UNSET != 0 {
            continue;
        }
        let v = cid & VALUE;
        if v >= s.ncpus {
            return Some(Violation::OutOfRange { cid: v });
        }
        if seen & (1 << v) != 0 {
            return Some(Violation::Duplicate { cid: v });
        }
        seen |= 1 << v;
    }
    None
}

/// Canonical states already known to let a spinner get a CID sooner or later.
type LiveMemo = std::collections::HashSet<State, FxBuild>;

/// A CPU spinning in mm_get_cid() with the pool empty is a hang when no interleaving from here
/// ever frees a CID: every other CPU may still run, so this searches all it can reach.
fn liveness(s: &State, cfg: &Config, memo: &mut LiveMemo) -> Option<Violation> {
    let spinner = step::spinner(s)?;
    let key = canonical(s);
    if memo.contains(&key) || greedy_progress(&key, cfg) {
        return None;
    }
    let mut seen = std::collections::HashSet::with_hasher(FxBuild);
    let mut queue = std::collections::VecDeque::from([key.clone()]);
    seen.insert(key.clone());
    while let Some(x) = queue.pop_front() {
        if memo.contains(&x) || x.bitmap.count_ones() < x.ncpus as u32 {
            memo.insert(key);
            return None;
        }
        for a in step::enabled(&x, cfg.weak) {
            let mut cx = Ctx { variant: cfg.variant, weak: cfg.weak, log: None, fault: None };
            let y = canonical(&step::apply(&x, a, &mut cx));
            if seen.insert(y.clone()) {
                queue.push_back(y);
            }
        }
    }
    Some(match s.cpu(spinner).spin {
        Some(Spin::SchedIn { .. }) => {
            Violation::LiveLock { spinner, waiter: step::waiters_on_rq(s, spinner).first().copied() }
        }
        _ => Violation::ForkLockup { spinner },
    })
}

/// A quick try before the full search: the operations run on, CPUs switch to idle (which drops
/// CIDs in transit), and so on, one action at a time; a free CID on the way proves progress.
fn greedy_progress(s: &State, cfg: &Config) -> bool {
    let rank = |a: &Action| match a {
        Action::Flush { .. } | Action::Retry { .. } => 0,
        Action::Step { .. } | Action::Visit { .. } => 1,
        Action::Switch { next: None, .. } => 2,
        _ => 3,
    };
    let mut x = s.clone();
    let mut seen = std::collections::HashSet::with_hasher(FxBuild);
    for _ in 0..64 {
        if x.bitmap.count_ones() < x.ncpus as u32 {
            return true;
        }
        let Some(a) = step::enabled(&x, cfg.weak)
            .into_iter()
            .filter(|&a| {
                let mut cx = Ctx { variant: cfg.variant, weak: cfg.weak, log: None, fault: None };
                !seen.contains(&step::apply(&x, a, &mut cx))
            })
            .min_by_key(rank)
        else {
            return false;
        };
        let mut cx = Ctx { variant: cfg.variant, weak: cfg.weak, log: None, fault: None };
        x = step::apply(&x, a, &mut cx);
        seen.insert(x.clone());
    }
    false
}

/// The path to a violation as actions on raw states: each canonical step is matched by an
/// action of the raw state that leads to the same canonical state, so tasks keep their names.
fn rebuild(
    g: &Graph,
    roots: &[(u32, Start, State)],
    node: u32,
    last: Option<Action>,
    violation: Violation,
    cfg: &Config,
) -> Counterexample {
    let path = g.path(node);
    let (_, start, root) = roots.iter().find(|(i, _, _)| *i == path[0]).expect("a path starts at a root").clone();
    let mut raw = root.clone();
    let mut actions = Vec::new();
    let apply = |s: &State, a: Action| {
        let mut cx = Ctx { variant: cfg.variant, weak: cfg.weak, log: None, fault: None };
        let next = step::apply(s, a, &mut cx);
        (next, cx.fault)
    };
    for &next in &path[1..] {
        let target = &g.nodes[next as usize];
        let a = step::enabled(&raw, cfg.weak)
            .into_iter()
            .find(|&a| canonical(&apply(&raw, a).0) == *target)
            .expect("a canonical step has a raw counterpart");
        raw = apply(&raw, a).0;
        actions.push(a);
    }
    if let (Some(_), Violation::Fault(fault)) = (last, &violation) {
        let a = step::enabled(&raw, cfg.weak)
            .into_iter()
            .find(|&a| {
                apply(&raw, a).1.as_ref().is_some_and(|f| std::mem::discriminant(f) == std::mem::discriminant(fault))
            })
            .expect("a faulting step has a raw counterpart");
        actions.push(a);
    }
    let mut violation = violation;
    if let Violation::LiveLock { spinner, waiter: None } = violation {
        // Name the spinner as the raw state does, and walk on to where a fixup waits for it.
        let spinner = step::spinner(&raw).unwrap_or(spinner);
        let (more, waiter) = to_waiter(&raw, spinner, cfg);
        actions.extend(more);
        violation = Violation::LiveLock { spinner, waiter };
    } else if let Violation::LiveLock { waiter, .. } = violation {
        violation = Violation::LiveLock { spinner: step::spinner(&raw).unwrap_or(0), waiter };
    } else if let Violation::ForkLockup { .. } = violation {
        violation = Violation::ForkLockup { spinner: step::spinner(&raw).unwrap_or(0) };
    }
    Counterexample { violation, start, root, actions }
}

/// From a state where CPU `spinner` can never get a CID: the fewest further steps (of other
/// CPUs) until a fixup walk waits for its runqueue lock, which is the seed's full live lock.
fn to_waiter(s: &State, spinner: u8, cfg: &Config) -> (Vec<Action>, Option<u8>) {
    let mut seen = std::collections::HashSet::with_hasher(FxBuild);
    let mut queue = std::collections::VecDeque::from([(s.clone(), Vec::new())]);
    seen.insert(canonical(s));
    while let Some((x, path)) = queue.pop_front() {
        if let Some(&w) = step::waiters_on_rq(&x, spinner).first() {
            return (path, Some(w));
        }
        if path.len() >= 32 {
            continue;
        }
        for a in step::enabled(&x, cfg.weak) {
            let mut cx = Ctx { variant: cfg.variant, weak: cfg.weak, log: None, fault: None };
            let y = step::apply(&x, a, &mut cx);
            if seen.insert(canonical(&y)) {
                let mut p = path.clone();
                p.push(a);
                queue.push_back((y, p));
            }
        }
    }
    (Vec::new(), None)
}

/// Whether `s` is a hang (a spinner no interleaving ever gives a CID), for a replayed state.
pub fn hang(s: &State, cfg: &Config) -> Option<Violation> {
    liveness(s, cfg, &mut LiveMemo::default())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// What a search ends in, for the table.
    #[derive(Debug, PartialEq)]
    enum Verdict {
        Clean,
        LiveLock,
        ForkLockup,
        Leak,
    }

    fn run(variant: &str, weak: bool, start: Start, steps: u32) -> (Verdict, Option<Counterexample>, Config) {
        let cfg = Config {
            variant: Variant::parse(variant).unwrap(),
            cpus: 4,
            tasks: 5,
            allowed: 4,
            max_steps: steps,
            max_forks: 2,
            max_exits: 1,
            weak,
            start,
        };
        let out = check(&cfg).unwrap();
        let verdict = match out.counterexample.as_ref().map(|c| &c.violation) {
            None => Verdict::Clean,
            Some(Violation::LiveLock { waiter: Some(_), .. }) => Verdict::LiveLock,
            Some(Violation::ForkLockup { .. }) => Verdict::ForkLockup,
            Some(Violation::Fault(Fault::Leak { .. })) => Verdict::Leak,
            Some(other) => panic!("{variant}: unexpected {other:?}"),
        };
        (verdict, out.counterexample, cfg)
    }

    /// Each variant's verdict at 4 CPUs and 5 tasks, with step bounds small enough for a unit
    /// test; `lab model` runs them deeper (README.md, BENCHMARKS.md).
    #[test]
    fn each_variant_has_its_verdict() {
        #[rustfmt::skip]
        let cases = [
            // (variant, weak, start, steps, verdict)
            ("stock", false, Start::Task, 9, Verdict::Clean),
            ("stock", false, Start::Cpu, 12, Verdict::Clean),
            ("stock", true, Start::Task, 10, Verdict::Clean),
            ("no-transit", false, Start::Task, 12, Verdict::LiveLock),
            ("two-field", false, Start::Task, 9, Verdict::Clean),
            ("two-field", true, Start::Task, 15, Verdict::LiveLock),
            ("weak-order", false, Start::Task, 12, Verdict::LiveLock),
            ("fork-stale", false, Start::Cpu, 10, Verdict::ForkLockup),
            ("exit-reassign", false, Start::Cpu, 10, Verdict::Leak),
        ];
        for (variant, weak, start, steps, want) in cases {
            let (got, _, _) = run(variant, weak, start, steps);
            assert_eq!(got, want, "{variant} weak={weak} start={start:?} steps={steps}");
        }
    }

    /// The seed's scenario: the spinner's CPU got there by a migration after handing its CID to
    /// another CPU, and the counterexample replays from its file to the same violation.
    #[test]
    fn the_no_transit_counterexample_is_the_seeds_and_replays() {
        let (_, cex, cfg) = run("no-transit", false, Start::Task, 12);
        let cex = cex.unwrap();
        assert!(cex.actions.iter().any(|a| matches!(a, Action::Migrate { .. })));
        let file = super::super::timeline::TraceFile::new(&cfg, &cex);
        let text = serde_json::to_string(&file).unwrap();
        let back: super::super::timeline::TraceFile = serde_json::from_str(&text).unwrap();
        let mut out = String::new();
        let v = super::super::timeline::replay(&back, &mut out).unwrap();
        assert!(matches!(v, Some(Violation::LiveLock { .. })), "{v:?}\n{out}");
        assert!(out.contains("observes percpu == true"), "{out}");
    }
}
