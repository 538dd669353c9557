//! `lab model`: runs the mm_cid protocol checker (or replays a saved counterexample) and prints
//! the verdict, the search's figures and a counterexample's timeline, as text or JSON.

use std::process::ExitCode;

use anyhow::{Context, Result};
use serde::Serialize;

use super::args::ModelArgs;
use crate::model::{self, Config, TraceFile};

#[derive(Serialize)]
struct Json<'a> {
    variant: &'a str,
    cpus: u8,
    tasks: u8,
    weak: bool,
    start: model::Start,
    max_steps: u32,
    states: u64,
    transitions: u64,
    depth: u32,
    seconds: f64,
    states_per_second: f64,
    /// The step bound cut the search short (false: every reachable state within the fork and
    /// exit bounds was explored).
    bound_hit: bool,
    verdict: &'static str,
    violation: Option<String>,
    steps: Option<usize>,
}

pub fn model(args: ModelArgs) -> Result<ExitCode> {
    if let Some(path) = &args.replay {
        return replay(path);
    }
    let allowed = args.allowed.unwrap_or(args.cpus);
    if allowed == 0 || allowed > args.cpus {
        anyhow::bail!("--allowed {allowed} must be between 1 and --cpus {}", args.cpus);
    }
    let cfg = Config {
        variant: args.variant,
        cpus: args.cpus,
        tasks: args.tasks,
        allowed,
        max_steps: args.max_steps,
        max_forks: args.max_forks,
        max_exits: args.max_exits,
        weak: args.weak,
        start: args.start,
    };
    let outcome = model::check(&cfg).map_err(anyhow::Error::msg).context("cannot set up the model's start")?;
    let stats = &outcome.stats;
    let rate = stats.states as f64 / stats.seconds.max(1e-9);
    if let (Some(cex), Some(path)) = (&outcome.counterexample, &args.save) {
        let text = serde_json::to_string_pretty(&TraceFile::new(&cfg, cex))?;
        std::fs::write(path, text + "\n").with_context(|| format!("cannot write {}", path.display()))?;
    }
    if args.json {
        let doc = Json {
            variant: cfg.variant.name(),
            cpus: cfg.cpus,
            tasks: cfg.tasks,
            weak: cfg.weak,
            start: cfg.start,
            max_steps: cfg.max_steps,
            states: stats.states,
            transitions: stats.transitions,
            depth: stats.depth,
            seconds: stats.seconds,
            states_per_second: rate,
            bound_hit: stats.bound_hit,
            verdict: if outcome.counterexample.is_some() { "counterexample" } else { "clean" },
            violation: outcome.counterexample.as_ref().map(|c| model::verdict_words(&cfg, c)),
            steps: outcome.counterexample.as_ref().map(|c| c.actions.len()),
        };
        println!("{}", serde_json::to_string_pretty(&doc)?);
    } else {
        println!(
            "lab model: variant {} ({}), {} CPUs, {} tasks, {} memory, start {:?}, bounds: {} steps, {} forks, {} exits",
            cfg.variant,
            cfg.variant.what(),
            cfg.cpus,
            cfg.tasks,
            if cfg.weak { "weak (store buffers)" } else { "sequentially consistent" },
            cfg.start,
            cfg.max_steps,
            cfg.max_forks,
            cfg.max_exits
        );
        if let Some(cex) = &outcome.counterexample {
            println!("\n{}", model::render(&cfg, cex));
        }
        let scope = match (&outcome.counterexample, stats.bound_hit) {
            (Some(_), _) => "search stopped at the first violation".to_string(),
            (None, true) => format!("the step bound ({}) cut the search short", cfg.max_steps),
            (None, false) => "the whole bounded space was explored (the step bound was not reached)".to_string(),
        };
        println!(
            "Explored {} states ({} transitions) to depth {} in {:.2} s ({:.0} states/s); {scope}.",
            stats.states, stats.transitions, stats.depth, stats.seconds, rate
        );
        match &outcome.counterexample {
            Some(cex) => {
                println!("Verdict: counterexample in {} steps: {}.", cex.actions.len(), model::verdict_words(&cfg, cex))
            }
            None => println!("Verdict: clean within the bounds."),
        }
        if let (Some(_), Some(path)) = (&outcome.counterexample, &args.save) {
            println!("Saved to {}; replay with `lab model --replay {}`.", path.display(), path.display());
        }
    }
    Ok(ExitCode::from(if outcome.counterexample.is_some() { 1 } else { 0 }))
}

fn replay(path: &std::path::Path) -> Result<ExitCode> {
    let text = std::fs::read_to_string(path).with_context(|| format!("cannot read {}", path.display()))?;
    let file: TraceFile =
        serde_json::from_str(&text).with_context(|| format!("{} is not a `lab model --save` trace", path.display()))?;
    let mut out = String::new();
    let result = model::replay(&file, &mut out);
    print!("{out}");
    let violation = result.map_err(anyhow::Error::msg).with_context(|| format!("cannot replay {}", path.display()))?;
    match violation {
        Some(v) => {
            println!("\nThe trace ends in a violation: {}.", model::explain(&v, &final_of(&file)?));
            Ok(ExitCode::from(1))
        }
        None => {
            println!("\nThe trace ends in no violation.");
            Ok(ExitCode::SUCCESS)
        }
    }
}

/// The state a trace ends in, for the violation's words.
fn final_of(file: &TraceFile) -> Result<model::State> {
    model::final_state_of(file).map_err(anyhow::Error::msg)
}
