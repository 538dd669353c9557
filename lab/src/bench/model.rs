//! `lab bench --model`: the protocol checker on every variant, under sequential consistency and
//! in weak mode, at its defaults (4 CPUs, 5 tasks, both starts): its verdict, the states it
//! explored, how deep, in what time and at what peak memory. Each check runs as a child
//! `lab model --json` so that its peak RSS is its own (`wait4`), and the targets issue 19 set
//! are printed beside the figures.

use std::process::{Command, ExitCode, Stdio};

use anyhow::{bail, Context, Result};
use serde::Deserialize;

use crate::model::{Variant, VARIANTS};

/// What `lab model --json` prints that the table shows.
#[derive(Deserialize)]
struct Checked {
    verdict: String,
    violation: Option<String>,
    steps: Option<usize>,
    states: u64,
    depth: u32,
    seconds: f64,
    states_per_second: f64,
    bound_hit: bool,
}

/// Seconds a check may take, and what it must find, where issue 19 says so.
fn target(variant: Variant, weak: bool) -> Option<(&'static str, f64)> {
    match (variant, weak) {
        (Variant::Stock, false) => Some(("clean", 60.0)),
        (Variant::NoTransit | Variant::ForkStale, false) => Some(("counterexample", 10.0)),
        (Variant::TwoField, false) => Some(("clean", f64::INFINITY)),
        (Variant::TwoField, true) => Some(("counterexample", f64::INFINITY)),
        _ => None,
    }
}

pub fn run() -> Result<ExitCode> {
    let lab = std::env::current_exe().context("cannot find the lab's own executable")?;
    println!("# lab bench --model: `lab model --variant NAME [--weak] --json` at its defaults, one child each\n");
    println!("| variant | memory | verdict | states | depth | seconds | states/s | peak RSS | target |");
    println!("| --- | --- | --- | --- | --- | --- | --- | --- | --- |");
    let mut missed = 0;
    for variant in VARIANTS {
        for weak in [false, true] {
            let mut command = Command::new(&lab);
            command.args(["model", "--json", "--variant", variant.name()]).stdout(Stdio::piped());
            if weak {
                command.arg("--weak");
            }
            let (stdout, peak_kib) = run_measured(command)?;
            let checked: Checked = serde_json::from_slice(&stdout)
                .with_context(|| format!("`lab model --variant {}` printed no JSON verdict", variant.name()))?;
            let verdict = match (&checked.violation, checked.steps) {
                (Some(violation), Some(steps)) => format!("{violation}, {steps} steps"),
                _ if checked.bound_hit => "clean (step bound reached)".to_string(),
                _ => "clean (whole space)".to_string(),
            };
            let target = match target(variant, weak) {
                None => "-".to_string(),
                Some((want, limit)) => {
                    let met = checked.verdict == want && checked.seconds <= limit;
                    missed += usize::from(!met);
                    let within = if limit.is_finite() { format!(" in <= {limit} s") } else { String::new() };
                    format!("{want}{within}: {}", if met { "met" } else { "MISSED" })
                }
            };
            println!(
                "| {} | {} | {verdict} | {} | {} | {:.2} | {:.0} | {} MB | {target} |",
                variant.name(),
                if weak { "weak" } else { "SC" },
                checked.states,
                checked.depth,
                checked.seconds,
                checked.states_per_second,
                peak_kib / 1024
            );
        }
    }
    Ok(if missed == 0 { ExitCode::SUCCESS } else { ExitCode::FAILURE })
}

/// Runs `command` to its end: its stdout and its own peak resident set in KiB.
fn run_measured(mut command: Command) -> Result<(Vec<u8>, i64)> {
    let mut child = command.spawn().context("cannot start `lab model`")?;
    let mut stdout = Vec::new();
    std::io::Read::read_to_end(&mut child.stdout.take().context("no stdout pipe")?, &mut stdout)?;
    let mut status = 0;
    let mut usage = std::mem::MaybeUninit::<libc::rusage>::zeroed();
    // SAFETY: the child is ours and not yet reaped; wait4 fills `status` and `usage`.
    let (pid, usage) = unsafe {
        let pid = libc::wait4(child.id() as libc::pid_t, &mut status, 0, usage.as_mut_ptr());
        (pid, usage.assume_init())
    };
    if pid < 0 {
        bail!("cannot wait for `lab model`: {}", std::io::Error::last_os_error());
    }
    if !libc::WIFEXITED(status) || libc::WEXITSTATUS(status) > 1 {
        bail!("`lab model` failed (wait status {status})");
    }
    Ok((stdout, usage.ru_maxrss))
}
