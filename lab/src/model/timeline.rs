//! A counterexample for people: the steps as a timeline with one column per CPU, in the words
//! of the seed's scenario; and the trace file that `--save` writes and `--replay` reads back,
//! checking each step is enabled as it goes.

use std::fmt::Write;

use serde::{Deserialize, Serialize};

use super::check::{self, Config, Counterexample, Start, Violation};
use super::state::{show_cid, State};
use super::step::{self, Action, Ctx};
use super::variants::Variant;

const COLUMN: usize = 36;

/// What `--save` writes: the configuration, the start, the steps, what they break.
#[derive(Serialize, Deserialize)]
pub struct TraceFile {
    pub variant: String,
    pub cpus: u8,
    pub tasks: u8,
    pub allowed: u8,
    pub max_forks: u8,
    pub max_exits: u8,
    pub weak: bool,
    pub start: Start,
    /// The property the last step breaks, in words (informative; replay checks it again).
    pub violation: String,
    pub steps: Vec<Action>,
}

impl TraceFile {
    pub fn new(cfg: &Config, cex: &Counterexample) -> TraceFile {
        TraceFile {
            variant: cfg.variant.name().to_string(),
            cpus: cfg.cpus,
            tasks: cfg.tasks,
            allowed: cfg.allowed,
            max_forks: cfg.max_forks,
            max_exits: cfg.max_exits,
            weak: cfg.weak,
            start: cex.start,
            violation: explain(&cex.violation, &final_state(cfg, cex)),
            steps: cex.actions.clone(),
        }
    }

    /// The configuration the trace was found with (the step bound is its length).
    pub fn config(&self) -> Result<Config, String> {
        let variant = Variant::parse(&self.variant).ok_or_else(|| format!("unknown variant `{}`", self.variant))?;
        Ok(Config {
            variant,
            cpus: self.cpus,
            tasks: self.tasks,
            allowed: self.allowed,
            max_steps: self.steps.len() as u32,
            max_forks: self.max_forks,
            max_exits: self.max_exits,
            weak: self.weak,
            start: self.start,
        })
    }
}

fn final_state(cfg: &Config, cex: &Counterexample) -> State {
    cex.actions.iter().fold(cex.root.clone(), |s, &a| {
        let mut cx = Ctx { variant: cfg.variant, weak: cfg.weak, log: None, fault: None };
        step::apply(&s, a, &mut cx)
    })
}

/// The violation in words, with the final state's pool.
pub fn explain(v: &Violation, s: &State) -> String {
    let pool = (0..s.ncpus).map(|b| b.to_string()).collect::<Vec<_>>().join(",");
    match *v {
        Violation::LiveLock { spinner, waiter } => {
            let mut text = format!(
                "live lock: CPU{spinner} loops in mm_get_cid() with its runqueue lock held, every CID ({pool}) is taken"
            );
            if let Some(w) = waiter {
                let _ = write!(text, ", and CPU{w}'s fixup walk waits for CPU{spinner}'s runqueue lock");
            }
            text.push_str("; no interleaving frees a CID");
            text
        }
        Violation::ForkLockup { spinner } => format!(
            "hard lockup: CPU{spinner} loops in mm_get_cid() under sched_mm_cid_fork(), every CID ({pool}) is taken and no interleaving frees one"
        ),
        Violation::Duplicate { cid } => format!("two running tasks have CID {cid}"),
        Violation::OutOfRange { cid } => format!("CID {cid} is not below the {} possible CPUs", s.ncpus),
        Violation::Fault(ref f) => match *f {
            step::Fault::DropFree { cid } => format!("CID {cid} is dropped into the pool but was not taken: it had two owners"),
            step::Fault::DropInvalid { cid } => format!("mm_drop_cid() of {}: clear_bit() out of bounds", show_cid(cid)),
            step::Fault::Leak { task, cid } => {
                format!("T{task} is gone after exit() but still holds {}: the CID is lost to the pool", show_cid(cid))
            }
        },
    }
}

/// Wraps `text` into lines of at most `width` characters.
fn wrap(text: &str, width: usize) -> Vec<String> {
    let mut lines = vec![String::new()];
    for word in text.split_whitespace() {
        let line = lines.last_mut().unwrap();
        if !line.is_empty() && line.len() + 1 + word.len() > width {
            lines.push(word.to_string());
        } else {
            if !line.is_empty() {
                line.push(' ');
            }
            line.push_str(word);
        }
    }
    lines
}

/// Each step's narration, by replaying the actions from the root.
pub fn narrate(cfg: &Config, root: &State, actions: &[Action]) -> Vec<(u8, String, State)> {
    let mut s = root.clone();
    let mut out = Vec::new();
    for &a in actions {
        let mut log = String::new();
        let mut cx = Ctx { variant: cfg.variant, weak: cfg.weak, log: Some(&mut log), fault: None };
        s = step::apply(&s, a, &mut cx);
        out.push((a.cpu(), log, s.clone()));
    }
    out
}

/// The timeline: a header row of CPUs, then each step's words in its CPU's column.
pub fn render(cfg: &Config, cex: &Counterexample) -> String {
    let mut out = String::new();
    let _ = writeln!(out, "Start ({}):", start_words(cex.start));
    for line in step::describe(&cex.root) {
        let _ = writeln!(out, "  {line}");
    }
    out.push('\n');
    let _ = write!(out, "{:>5} ", "step");
    for c in 0..cfg.cpus {
        let _ = write!(out, "{:<COLUMN$}", format!("CPU{c}"));
    }
    out.push('\n');
    let steps = narrate(cfg, &cex.root, &cex.actions);
    for (k, (cpu, text, _)) in steps.iter().enumerate() {
        for (i, line) in wrap(text, COLUMN - 2).iter().enumerate() {
            let number = if i == 0 { format!("{}", k + 1) } else { String::new() };
            let _ = writeln!(out, "{number:>5} {}{line}", " ".repeat(COLUMN * *cpu as usize)).map(|_| ());
        }
    }
    let last = steps.last().map(|(_, _, s)| s.clone()).unwrap_or_else(|| cex.root.clone());
    let _ = writeln!(out, "\nViolation: {}.", explain(&cex.violation, &last));
    let _ = writeln!(out, "Final state:");
    for line in step::describe(&last) {
        let _ = writeln!(out, "  {line}");
    }
    out
}

pub fn start_words(start: Start) -> &'static str {
    match start {
        Start::Task => "per-task mode, tasks-1 users with their own CIDs, T0 running on CPU0",
        Start::Cpu => "per-CPU mode at the switch-back threshold, every CPU owning a CID, reached by a fork, a task on every CPU and exits",
        Start::Both => "both starts",
    }
}

/// `--replay`: each step must be enabled where it comes; prints the narration and the state
/// after every step. Returns the violation the trace ends in, if it still does.
pub fn replay(file: &TraceFile, out: &mut String) -> Result<Option<Violation>, String> {
    let cfg = file.config()?;
    let roots = check::roots(&Config { start: file.start, ..cfg.clone() })?;
    let (_, mut s) = roots.into_iter().next().ok_or("no start state")?;
    let _ = writeln!(
        out,
        "Replaying {} steps of `{}` on {} CPUs, {} tasks{}, from the {}:",
        file.steps.len(),
        cfg.variant,
        cfg.cpus,
        cfg.tasks,
        if cfg.weak { ", weak memory" } else { "" },
        start_words(file.start)
    );
    for line in step::describe(&s) {
        let _ = writeln!(out, "  {line}");
    }
    for (k, &a) in file.steps.iter().enumerate() {
        if !step::enabled(&s, cfg.weak).contains(&a) {
            return Err(format!("step {} ({a:?}) is not enabled in the state before it", k + 1));
        }
        let mut log = String::new();
        let mut cx = Ctx { variant: cfg.variant, weak: cfg.weak, log: Some(&mut log), fault: None };
        s = step::apply(&s, a, &mut cx);
        let fault = cx.fault.take();
        let _ = writeln!(out, "\n{:>3}. CPU{}: {log}", k + 1, a.cpu());
        for line in step::describe(&s) {
            let _ = writeln!(out, "     {line}");
        }
        if let Some(f) = fault {
            return Ok(Some(Violation::Fault(f)));
        }
    }
    Ok(check::safety(&s).or_else(|| check::hang(&s, &cfg)))
}

/// The state a saved trace ends in.
pub fn final_state_of(file: &TraceFile) -> Result<State, String> {
    let cfg = file.config()?;
    let (_, root) =
        check::roots(&Config { start: file.start, ..cfg.clone() })?.into_iter().next().ok_or("no start state")?;
    Ok(final_state(
        &cfg,
        &Counterexample {
            violation: Violation::Duplicate { cid: 0 },
            start: file.start,
            root,
            actions: file.steps.clone(),
        },
    ))
}
